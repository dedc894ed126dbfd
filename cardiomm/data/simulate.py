"""Simulate a fully sampled multi-coil Cartesian cine acquisition from magnitude images.

Model (per slice)::

    kspace[c, t] = F( S_c * x[t] ) + n[c, t]        (SenseOp without a mask: A = F S)

* ``x`` is the complex ground truth: the magnitude images times a smooth background phase
  (a random 2nd-order polynomial over the field of view whose coefficients drift slowly and
  periodically over the cardiac cycle);
* ``S`` are simulated coil maps (:func:`recon.coil_simulation.simulate_coil_maps`)
  normalised to ``sum_c |S_c|^2 = 1`` at every pixel, with a random constant phase per coil;
* ``F`` is the centred orthonormal 2D FFT of :mod:`recon.conventions`;
* ``n`` is complex Gaussian noise with coil covariance ``sigma^2 Psi`` (``Psi`` has unit
  diagonal; coil-coil correlation set by ``noise_correlation``).

Signal-to-noise ratio
---------------------
``snr_db = 20 log10(mean |x| over the signal region / sigma)``, where ``sigma`` is the noise
standard deviation of one complex k-space sample of one coil (``E|n|^2 = sigma^2``).  With the
orthonormal FFT and unit-norm coil maps this ``sigma`` is also the noise standard deviation of
the coil-combined image ``sum_c conj(S_c) ifft2c(kspace_c)`` (exactly for uncorrelated noise,
approximately for correlated noise).  The signal region is ``signal_mask`` when given, else
the pixels whose time-averaged magnitude exceeds 10 % of the 99th percentile of the stack (the
body, without air and lungs).

Readout oversampling
--------------------
With ``readout_oversampling=2`` the field of view is doubled along x (readout, ``kx``): the
images are zero-padded to ``2 nx`` columns, the coil maps are computed on that larger grid,
and ``kspace`` has ``2 nx`` readout samples; cropping the central ``nx`` columns of
``ifft2c(kspace)`` undoes it.  :attr:`SimulatedAcquisition.sens` and ``image`` are always on
the reconstructed ``[y, x]`` grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cardiomm.atomic import atomic_path, write_json_atomic
from cardiomm.data.metadata import KSpaceScan, ScanMetadata
from cardiomm.data.phantom import PhantomCine
from recon.conventions import as_complex_tensor, rss, shape_str
from recon.coil_simulation import COIL_KINDS, normalize_maps, simulate_coil_maps
from recon.operators import SenseOp
from segment.biomarkers import CardiacBiomarkers

__all__ = [
    "PHASE_KINDS",
    "SimulatedAcquisition",
    "simulate_kspace",
    "smooth_phase",
    "noise_covariance_matrix",
    "signal_region",
    "write_simulated_scan",
    "noise_free_as_read",
]

PHASE_KINDS: tuple[str, ...] = ("smooth", "none")
SNR_DEFINITION = (
    "snr_db = 20*log10(mean |image| over the signal region / sigma); sigma = std of the complex noise of one "
    "k-space sample of one coil (E|n|^2 = sigma^2) = noise std of the image combined with the true unit-norm maps"
)


@dataclass
class SimulatedAcquisition:
    """A simulated fully sampled multi-coil cine acquisition.

    Attributes:
        kspace: complex64 ``[slice, coil, time, ky, kx]``, ``kx = readout_oversampling * nx``.
        sens: complex64 ``[coil, y, x]`` true coil maps on the reconstructed grid,
            ``sum_c |S_c|^2 = 1`` at every pixel.
        sens_encoded: complex64 ``[coil, y, kx]`` the same maps on the encoded (oversampled) grid.
        image: complex64 ``[slice, time, y, x]`` ground truth (magnitude x background phase).
        noise_std: ``sigma``, std of the complex noise of one k-space sample per coil (0 if noiseless).
        noise_covariance: complex128 ``[coil, coil]`` covariance of the added k-space noise
            (``sigma^2 Psi``; zeros if noiseless).
        noise_scan: complex64 ``[coil, samples]`` noise-only samples with that covariance
            (what a noise pre-scan records); empty when noiseless.
        snr_db: requested SNR (None = noiseless).
        signal_level: mean ``|image|`` over the signal region (the numerator of the SNR).
        readout_oversampling: 1 or 2.
        metadata: :class:`ScanMetadata` (``simulated=True``; simulation settings in ``extra``).
    """

    kspace: torch.Tensor
    sens: torch.Tensor
    sens_encoded: torch.Tensor
    image: torch.Tensor
    noise_std: float
    noise_covariance: torch.Tensor
    noise_scan: torch.Tensor
    snr_db: float | None
    signal_level: float
    readout_oversampling: int
    metadata: ScanMetadata

    def to_kspace_scan(self) -> KSpaceScan:
        """The acquisition as a fully sampled :class:`KSpaceScan` (numpy arrays, mask all True).

        Readout oversampling is kept (the k-space is returned as acquired).
        """
        s, _, t, ky, kx = self.kspace.shape
        return KSpaceScan(
            kspace=self.kspace.numpy(),
            mask=np.ones((s, t, ky, kx), dtype=bool),
            metadata=self.metadata,
            acs=None,
            noise_covariance=self.noise_covariance.numpy() if self.noise_std > 0 else None,
            prewhitened=False,
        )


def _as_stack(images: Any) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
    else:
        try:
            t = torch.as_tensor(np.asarray(images))
        except (TypeError, ValueError) as err:
            raise ValueError(f"images must be an array [slice, frame, y, x], got {type(images).__name__}") from err
    if t.ndim != 4 or min(t.shape) == 0:
        raise ValueError(f"images must be a non-empty array [slice, frame, y, x], got shape {shape_str(t.shape)}")
    if t.dtype == torch.bool:
        raise ValueError(f"images must be numeric, got bool with shape {shape_str(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"images of shape {shape_str(t.shape)} contain NaN or inf")
    if not t.is_complex() and bool((t < 0).any()):
        raise ValueError(
            f"magnitude images of shape {shape_str(t.shape)} have negative values (min {float(t.min()):g}); "
            "pass magnitudes or complex images"
        )
    return as_complex_tensor(t, torch.complex64)


def signal_region(magnitude: torch.Tensor | np.ndarray, fraction: float = 0.1) -> torch.Tensor:
    """Default signal region of a magnitude stack ``[slice, time, y, x]``: bool ``[slice, 1, y, x]``
    where the time-averaged magnitude exceeds ``fraction`` x the stack's 99th percentile."""
    mag = torch.as_tensor(np.asarray(magnitude) if not isinstance(magnitude, torch.Tensor) else magnitude)
    mean = mag.abs().to(torch.float64).mean(dim=1, keepdim=True)
    ref = float(torch.quantile(mean.flatten()[:: max(1, mean.numel() // 1_000_000)], 0.99))
    return mean > fraction * ref


def smooth_phase(
    n_slices: int, n_frames: int, shape: tuple[int, int], rng: np.random.Generator, *, temporal_rad: float = 0.15
) -> torch.Tensor:
    """Smooth background phase (rad) ``float32 [slice, time, y, x]``.

    A 2nd-order polynomial in normalised coordinates ``(y, x) in [-1, 1]^2`` with random
    coefficients (offset uniform in [-pi, pi), linear terms up to 1 rad, quadratic up to 0.5 rad
    over the half field of view); each coefficient drifts periodically over the cycle by up to
    ``temporal_rad`` (one sine period per cycle).
    """
    ny, nx = shape
    yy = torch.linspace(-1, 1, ny, dtype=torch.float64)[:, None]
    xx = torch.linspace(-1, 1, nx, dtype=torch.float64)[None, :]
    basis = torch.stack([torch.ones(ny, nx, dtype=torch.float64), yy.expand(ny, nx), xx.expand(ny, nx),
                         (yy**2).expand(ny, nx), (yy * xx), (xx**2).expand(ny, nx)])  # [6, y, x]
    scale = np.array([0.0, 1.0, 1.0, 0.5, 0.5, 0.5])
    out = torch.empty(n_slices, n_frames, ny, nx, dtype=torch.float32)
    phase_t = 2 * np.pi * np.arange(n_frames) / max(n_frames, 1)
    for s in range(n_slices):
        base = rng.uniform(-1, 1, size=6) * scale
        base[0] = rng.uniform(-np.pi, np.pi)
        amp = rng.uniform(-1, 1, size=6) * temporal_rad / 6
        lag = rng.uniform(0, 2 * np.pi, size=6)
        coeff = base[None] + amp[None] * np.sin(phase_t[:, None] + lag[None])  # [T, 6]
        out[s] = torch.einsum("tk,kyx->tyx", torch.from_numpy(coeff), basis).to(torch.float32)
    return out


def noise_covariance_matrix(n_coils: int, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Random coil noise covariance ``Psi`` (complex128 ``[coil, coil]``, Hermitian positive definite).

    ``Psi = D ((1 - rho) I + rho W) D`` with ``W`` a random rank-3 complex correlation matrix
    (unit diagonal) and ``D`` per-coil gains ``1 + rho * U(-0.3, 0.3)``, scaled to unit mean
    diagonal; ``rho = 0`` gives the identity.
    """
    if not 0 <= correlation < 1:
        raise ValueError(f"noise_correlation must lie in [0, 1), got {correlation!r}")
    if correlation == 0:
        return np.eye(n_coils, dtype=np.complex128)
    k = min(3, n_coils)
    c = rng.standard_normal((n_coils, k)) + 1j * rng.standard_normal((n_coils, k))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    w = c @ c.conj().T
    gains = 1 + correlation * rng.uniform(-0.3, 0.3, size=n_coils)
    psi = gains[:, None] * ((1 - correlation) * np.eye(n_coils) + correlation * w) * gains[None, :]
    psi = 0.5 * (psi + psi.conj().T)
    return psi / np.real(np.trace(psi)) * n_coils


def _complex_normal(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Circular complex Gaussian samples with ``E|z|^2 = 1`` (complex64)."""
    return torch.randn(shape, dtype=torch.complex64, generator=gen)


def simulate_kspace(
    images: np.ndarray | torch.Tensor | PhantomCine,
    *,
    n_coils: int = 10,
    seed: int = 0,
    snr_db: float | None = 30.0,
    coil_kind: str = "birdcage",
    phase: str = "smooth",
    readout_oversampling: int = 1,
    noise_correlation: float = 0.2,
    signal_mask: np.ndarray | torch.Tensor | None = None,
    pixel_spacing_mm: tuple[float, float] | None = None,
    slice_thickness_mm: float | None = None,
    slice_spacing_mm: float | None = None,
    heart_rate_bpm: float | None = None,
    source: str | None = None,
    metadata: ScanMetadata | None = None,
    n_noise_samples: int = 256,
) -> SimulatedAcquisition:
    """Simulate fully sampled multi-coil cine k-space ``[slice, coil, time, ky, kx]``.

    Args:
        images: magnitude (or complex) stack ``[slice, frame, y, x]`` (numpy/torch), or a
            :class:`~cardiomm.data.phantom.PhantomCine` (its spacing, heart rate and
            description fill the metadata).
        n_coils: number of receive coils.
        seed: seed of the background phase, coil phases, noise covariance and noise.
        snr_db: SNR in dB as defined in the module docstring; ``None`` for noiseless data.
        coil_kind: ``"birdcage"`` or ``"biot_savart"`` (see :mod:`recon.coil_simulation`).
        phase: ``"smooth"`` (random smooth, slowly varying background phase) or ``"none"``.
        readout_oversampling: 1, or 2 to double the field of view along x (readout).
        noise_correlation: coil-coil noise correlation ``rho`` in [0, 1) (0 = white, equal coils).
        signal_mask: bool ``[slice, y, x]`` or ``[slice, frame|1, y, x]`` region over which the
            mean signal of the SNR is taken; default :func:`signal_region`.
        pixel_spacing_mm, slice_thickness_mm, slice_spacing_mm, heart_rate_bpm: geometry for
            the metadata (taken from a PhantomCine when not given).
        source: what the images were (phantom description, DICOM folder...).
        metadata: a :class:`ScanMetadata` to start from (e.g. read from DICOM); its fields are
            kept unless the simulation defines them.
        n_noise_samples: samples per coil of the simulated noise pre-scan.

    Returns:
        :class:`SimulatedAcquisition`.
    """
    if isinstance(images, PhantomCine):
        phantom = images
        pixel_spacing_mm = pixel_spacing_mm or phantom.pixel_spacing_mm
        slice_thickness_mm = slice_thickness_mm or phantom.slice_thickness_mm
        slice_spacing_mm = slice_spacing_mm or phantom.slice_spacing_mm
        heart_rate_bpm = heart_rate_bpm or phantom.heart_rate_bpm
        source = source or phantom.description
        stack = _as_stack(phantom.images)
    else:
        stack = _as_stack(images)
    if isinstance(n_coils, bool) or not isinstance(n_coils, (int, np.integer)) or n_coils < 1:
        raise ValueError(f"n_coils must be a positive integer, got {n_coils!r}")
    if coil_kind not in COIL_KINDS:
        raise ValueError(f"unknown coil_kind {coil_kind!r}; choose one of {COIL_KINDS}")
    if phase not in PHASE_KINDS:
        raise ValueError(f"unknown phase {phase!r}; choose one of {PHASE_KINDS}")
    if readout_oversampling not in (1, 2):
        raise ValueError(f"readout_oversampling must be 1 or 2, got {readout_oversampling!r}")
    if snr_db is not None and not np.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of dB or None, got {snr_db!r}")
    if n_noise_samples < 0:
        raise ValueError(f"n_noise_samples must be >= 0, got {n_noise_samples}")
    n_slices, n_frames, ny, nx = (int(v) for v in stack.shape)
    nx_enc = readout_oversampling * nx
    rng = np.random.default_rng(int(seed))

    # --- ground truth ---------------------------------------------------------------
    if phase == "smooth":
        phi = smooth_phase(n_slices, n_frames, (ny, nx), rng)
        image = stack * torch.polar(torch.ones_like(phi), phi)
    else:
        image = stack.clone()

    # --- coil maps: on the encoded grid, random constant phase per coil, unit RSS --------
    maps = simulate_coil_maps(int(n_coils), (ny, nx_enc), kind=coil_kind, dtype=torch.complex128)
    coil_phase = torch.from_numpy(np.exp(1j * rng.uniform(-np.pi, np.pi, size=int(n_coils))))
    maps = normalize_maps(maps * coil_phase[:, None, None], coil_dim=-3)
    x0 = nx_enc // 2 - nx // 2  # keeps pixel n//2 of the image at the centre of the larger grid
    sens_encoded = maps.to(torch.complex64)
    sens = sens_encoded[..., x0 : x0 + nx].contiguous()

    # --- noise model ----------------------------------------------------------------
    if signal_mask is None:
        mask = signal_region(image.abs())
    else:
        mask = torch.as_tensor(np.asarray(signal_mask) if not isinstance(signal_mask, torch.Tensor) else signal_mask)
        if mask.ndim == 3:
            mask = mask[:, None]
        if mask.ndim != 4 or mask.shape[0] != n_slices or tuple(mask.shape[-2:]) != (ny, nx) or mask.shape[1] not in (1, n_frames):
            raise ValueError(
                f"signal_mask of shape {shape_str(mask.shape)} must be [slice, y, x] or [slice, frame|1, y, x] "
                f"matching images {shape_str(stack.shape)}"
            )
        mask = mask.to(torch.bool)
    mask_full = mask.expand(n_slices, n_frames, ny, nx)
    if not bool(mask_full.any()):
        raise ValueError(f"the signal region is empty for images of shape {shape_str(stack.shape)}")
    signal_level = float(image.abs()[mask_full].to(torch.float64).mean())
    if snr_db is None:
        sigma = 0.0
        psi = np.zeros((n_coils, n_coils), dtype=np.complex128)
        chol = None
    else:
        sigma = signal_level / 10 ** (float(snr_db) / 20)
        psi_unit = noise_covariance_matrix(int(n_coils), float(noise_correlation), rng)
        psi = sigma**2 * psi_unit
        chol = torch.from_numpy(np.linalg.cholesky(psi_unit).astype(np.complex64)) * sigma
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))

    # --- forward model, one slice at a time ------------------------------------------
    op = SenseOp(sens_encoded[:, None])  # A = F S, sens [coil, 1, y, kx]
    kspace = torch.empty((n_slices, n_coils, n_frames, ny, nx_enc), dtype=torch.complex64)
    for s in range(n_slices):
        x = image[s]
        if readout_oversampling > 1:
            x = torch.nn.functional.pad(x, (x0, nx_enc - nx - x0))
        k = op(x)
        if chol is not None:
            z = _complex_normal(gen, (n_coils, n_frames * ny * nx_enc))
            k += (chol @ z).reshape(n_coils, n_frames, ny, nx_enc)
        kspace[s] = k
    if chol is not None and n_noise_samples > 0:
        noise_scan = chol @ _complex_normal(gen, (n_coils, int(n_noise_samples)))
    else:
        noise_scan = torch.zeros((n_coils, 0), dtype=torch.complex64)

    # --- metadata ---------------------------------------------------------------------
    dy, dx = (float(v) for v in pixel_spacing_mm) if pixel_spacing_mm is not None else (None, None)
    thickness = float(slice_thickness_mm) if slice_thickness_mm is not None else None
    sim_info = {
        "snr_db": None if snr_db is None else float(snr_db),
        "snr_definition": SNR_DEFINITION,
        "noise_std": sigma,
        "signal_level": signal_level,
        "noise_correlation": float(noise_correlation),
        "coil_kind": coil_kind,
        "phase": phase,
        "readout_oversampling": int(readout_oversampling),
        "seed": int(seed),
    }
    base = metadata if metadata is not None else ScanMetadata()
    what = source or base.source
    if what in (None, "", "unknown"):
        what = f"images {shape_str(stack.shape)}"
    fov_z = thickness if thickness is not None else (base.encoded_fov_mm[2] if base.encoded_fov_mm else 0.0)
    meta = base.with_updates(
        source=f"simulated {n_coils}-coil k-space from {what}",
        simulated=True,
        modality=base.modality or "cine",
        view=base.view or ("sax" if isinstance(images, PhantomCine) else None),
        trajectory="cartesian",
        n_coils=int(n_coils),
        n_frames=n_frames,
        n_slices=n_slices,
        encoded_matrix=(ny, nx_enc),
        recon_matrix=(ny, nx),
        encoded_fov_mm=(nx_enc * dx, ny * dy, fov_z) if dx is not None else base.encoded_fov_mm,
        recon_fov_mm=(nx * dx, ny * dy, fov_z) if dx is not None else base.recon_fov_mm,
        pixel_spacing_mm=(dy, dx) if dy is not None else base.pixel_spacing_mm,
        slice_thickness_mm=thickness if thickness is not None else base.slice_thickness_mm,
        slice_spacing_mm=float(slice_spacing_mm) if slice_spacing_mm is not None else (thickness or base.slice_spacing_mm),
        heart_rate_bpm=float(heart_rate_bpm) if heart_rate_bpm is not None else base.heart_rate_bpm,
        acceleration=1.0,
        mask_pattern=None,
        extra={**base.extra, "simulation": sim_info},
    )
    return SimulatedAcquisition(
        kspace=kspace,
        sens=sens,
        sens_encoded=sens_encoded,
        image=image.to(torch.complex64),
        noise_std=sigma,
        noise_covariance=torch.from_numpy(psi),
        noise_scan=noise_scan.to(torch.complex64),
        snr_db=None if snr_db is None else float(snr_db),
        signal_level=signal_level,
        readout_oversampling=int(readout_oversampling),
        metadata=meta,
    )


def _sidecar(path: Path, suffix: str) -> Path:
    name = path.name
    stem = name[: -len(".h5")] if name.endswith(".h5") else path.stem
    return path.with_name(stem + suffix)


def write_simulated_scan(
    path: str | os.PathLike[str],
    acquisition: SimulatedAcquisition,
    *,
    labels: np.ndarray | torch.Tensor | PhantomCine | None = None,
    truth: CardiacBiomarkers | dict[str, Any] | None = None,
    ground_truth: bool = False,
) -> dict[str, Path]:
    """Write a simulated scan as ISMRMRD raw data plus its labels and true biomarkers.

    Files (each written atomically: temporary file, then ``os.replace``)::

        <stem>.h5              ISMRMRD raw data (cardiomm.data.ismrmrd_raw.write_ismrmrd_raw),
                               with the noise pre-scan
        <stem>_labels.npz      labels uint8 [slice, frame, y, x], pixel_spacing_mm, slice_spacing_mm
        <stem>_truth.json      CardiacBiomarkers.to_dict() (units in the keys)
        <stem>_groundtruth.npz image complex64 [slice, time, y, x], sens complex64 [coil, y, x]
                               (only with ground_truth=True)

    Args:
        path: the ``.h5`` file to write.
        acquisition: from :func:`simulate_kspace`.
        labels: ``[slice, frame, y, x]`` label maps matching the acquisition, or the
            :class:`PhantomCine` it was simulated from (gives labels and, by default, truth).
        truth: true biomarkers (a :class:`CardiacBiomarkers` or its ``to_dict()``).
        ground_truth: also save the complex ground-truth image and coil maps.

    Returns:
        ``{"raw": ..., "labels": ..., "truth": ..., "ground_truth": ...}`` paths actually written.
    """
    from cardiomm.data.ismrmrd_raw import write_ismrmrd_raw  # lazy: written by the ISMRMRD module

    path = Path(path)
    if isinstance(labels, PhantomCine):
        truth = labels.truth if truth is None else truth
        labels = labels.labels
    n_slices, _, n_frames, ny, _ = acquisition.kspace.shape
    nx = acquisition.image.shape[-1]
    lab = None
    if labels is not None:
        lab = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        if lab.shape != (n_slices, n_frames, ny, nx):
            raise ValueError(
                f"labels of shape {list(lab.shape)} do not match the acquisition's images "
                f"[slice, frame, y, x] = {[n_slices, n_frames, ny, nx]} (writing {path})"
            )
        lab = lab.astype(np.uint8)
    truth_dict = truth.to_dict() if isinstance(truth, CardiacBiomarkers) else truth

    written: dict[str, Path] = {}
    noise = acquisition.noise_scan.numpy() if acquisition.noise_scan.shape[-1] > 0 else None
    with atomic_path(path) as tmp:
        tmp.unlink()  # let the writer create the file itself
        write_ismrmrd_raw(tmp, acquisition.kspace.numpy(), acquisition.metadata, noise=noise)
    written["raw"] = path
    spacing = acquisition.metadata.pixel_spacing_mm
    if lab is not None:
        out = _sidecar(path, "_labels.npz")
        with atomic_path(out) as tmp:
            np.savez_compressed(
                tmp,
                labels=lab,
                pixel_spacing_mm=np.asarray(spacing if spacing is not None else (np.nan, np.nan), dtype=np.float64),
                slice_spacing_mm=np.float64(acquisition.metadata.slice_spacing_mm or np.nan),
            )
        written["labels"] = out
    if truth_dict is not None:
        written["truth"] = write_json_atomic(_sidecar(path, "_truth.json"), truth_dict)
    if ground_truth:
        out = _sidecar(path, "_groundtruth.npz")
        with atomic_path(out) as tmp:
            np.savez_compressed(tmp, image=acquisition.image.numpy(), sens=acquisition.sens.numpy())
        written["ground_truth"] = out
    return written


def noise_free_as_read(acquisition: SimulatedAcquisition, read_metadata: ScanMetadata) -> np.ndarray:
    """The truth of a simulated scan in the units of its raw file as read back, float32 ``[slice, time, y, x]``.

    A raw file written by :func:`write_simulated_scan` cannot hold the noiseless image, and
    :func:`~cardiomm.data.ismrmrd_raw.read_ismrmrd_raw` whitens the coils with the file's noise
    scan, so the truth on the read-back scale is the RSS of the *whitened* noiseless coil images
    ``W (S x)``.  ``W`` is rebuilt as the reader built it, from the noise samples the file was written
    with (``acquisition.noise_scan``) and the scale the reader recorded in ``read_metadata`` (the
    metadata of the scan as read back), so the file is not read a second time.

    Args:
        acquisition: what was written (without readout oversampling).
        read_metadata: the read-back scan's metadata (``extra["ismrmrd"]["prewhitening_scale"]``:
            None when the reader did not whiten).
    """
    from cardiomm.data.ismrmrd_raw import estimate_noise_covariance, prewhitening_matrix

    if acquisition.readout_oversampling != 1:
        raise ValueError("noise_free_as_read needs an acquisition without readout oversampling")
    scale = (read_metadata.extra.get("ismrmrd") or {}).get("prewhitening_scale")
    coils = acquisition.sens[None, :, None] * acquisition.image[:, None]  # [slice, coil, time, y, x]
    if scale is not None and acquisition.noise_scan.shape[-1] > 0:
        w = prewhitening_matrix(estimate_noise_covariance(acquisition.noise_scan.numpy()), scale)
        coils = torch.einsum("cd,sdtyx->sctyx", torch.from_numpy(w).to(torch.complex64), coils)
    return rss(coils, dim=1).numpy().astype(np.float32)
