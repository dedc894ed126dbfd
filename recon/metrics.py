"""Image-quality metrics on magnitude images: PSNR, SSIM, NMSE.

Two normalisations are offered; every report must say which one it used.

``"volume"`` (default, fastMRI-style; :func:`image_metrics`)
    Reconstruction and reference are compared as they are (no rescaling: both are in the
    units of the data model).  For a 2D+t magnitude volume ``[time, y, x]`` (or a stack
    ``[..., time, y, x]``): ``NMSE = ||ref - rec||^2 / ||ref||^2`` over the whole volume,
    ``PSNR = 10 log10(max(ref)^2 / MSE)`` over the whole volume (``max(ref)`` of that volume),
    ``SSIM`` = mean over frames of the 2D SSIM (scikit-image, 7x7 Gaussian-free window,
    ``data_range = max(ref)`` of the volume).

``"cmrxrecon"`` (:func:`image_metrics` with ``normalization="cmrxrecon"``)
    The CMRxRecon 2024 variant: every 2D frame of reference and reconstruction is first
    z-scored by its own mean and standard deviation, then per frame
    ``NMSE = ||ref_z - rec_z||^2 / ||ref_z||^2``, ``PSNR = 10 log10(range(ref_z)^2 / MSE)``
    with ``range = max - min`` of the z-scored reference frame and SSIM with that
    ``data_range``; the three are averaged over frames.  Insensitive to a global intensity
    scale or offset, which makes numbers comparable across methods that scale differently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from skimage.metrics import structural_similarity

NORMALIZATIONS = ("volume", "cmrxrecon")


@dataclass(frozen=True)
class ImageMetrics:
    """PSNR (dB), SSIM (unitless, <= 1) and NMSE (unitless) of one reconstruction."""

    psnr_db: float
    ssim: float
    nmse: float
    normalization: str

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def _magnitude_numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.abs() if torch.is_complex(x) else x
        x = x.to(torch.float64).numpy()
    else:
        x = np.abs(np.asarray(x)).astype(np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name} must be an image [..., y, x], got shape {list(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf values")
    return x


def _prepare(reference, reconstruction) -> tuple[np.ndarray, np.ndarray]:
    ref = _magnitude_numpy(reference, "reference")
    rec = _magnitude_numpy(reconstruction, "reconstruction")
    if ref.shape != rec.shape:
        raise ValueError(f"reference {list(ref.shape)} and reconstruction {list(rec.shape)} differ in shape")
    if ref.ndim == 2:
        ref, rec = ref[None], rec[None]
    return ref, rec


def nmse(reference, reconstruction) -> float:
    """``||ref - rec||^2 / ||ref||^2`` on magnitudes over all axes (unitless)."""
    ref, rec = _prepare(reference, reconstruction)
    denom = float(np.sum(ref**2))
    if denom == 0:
        raise ValueError("reference image is all zeros: NMSE is undefined")
    return float(np.sum((ref - rec) ** 2) / denom)


def psnr(reference, reconstruction, data_range: float | None = None) -> float:
    """``10 log10(data_range^2 / MSE)`` in dB on magnitudes; ``data_range`` defaults to ``max(ref)``."""
    ref, rec = _prepare(reference, reconstruction)
    peak = float(ref.max()) if data_range is None else float(data_range)
    if peak <= 0:
        raise ValueError("reference image is all zeros: PSNR is undefined")
    mse = float(np.mean((ref - rec) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def ssim(reference, reconstruction, data_range: float | None = None) -> float:
    """Mean 2D SSIM over all frames of ``[..., y, x]`` magnitudes (scikit-image, 7x7 window)."""
    ref, rec = _prepare(reference, reconstruction)
    peak = float(ref.max()) if data_range is None else float(data_range)
    if peak <= 0:
        raise ValueError("reference image is all zeros: SSIM is undefined")
    ref2 = ref.reshape(-1, *ref.shape[-2:])
    rec2 = rec.reshape(-1, *rec.shape[-2:])
    win = min(7, *ref.shape[-2:])
    win -= 1 - win % 2  # odd window
    values = [structural_similarity(a, b, data_range=peak, win_size=win) for a, b in zip(ref2, rec2)]
    return float(np.mean(values))


def _zscore_frames(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True)
    return (x - mean) / np.where(std > 0, std, 1.0)


def image_metrics(reference, reconstruction, normalization: str = "volume") -> ImageMetrics:
    """PSNR, SSIM and NMSE of a magnitude (or complex) reconstruction against its reference.

    Args:
        reference, reconstruction: ``[..., time, y, x]`` or ``[y, x]``, numpy or torch,
            real or complex (the magnitude is used).  For ``"volume"`` each call is one
            volume: pass one 2D+t slice at a time to get per-slice numbers.
        normalization: ``"volume"`` or ``"cmrxrecon"`` (see the module docstring).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")
    ref, rec = _prepare(reference, reconstruction)
    if normalization == "volume":
        return ImageMetrics(psnr(ref, rec), ssim(ref, rec), nmse(ref, rec), normalization)
    ref_z = _zscore_frames(ref.reshape(-1, *ref.shape[-2:]))
    rec_z = _zscore_frames(rec.reshape(-1, *rec.shape[-2:]))
    p, s, n = [], [], []
    for a, b in zip(ref_z, rec_z):
        rng = float(a.max() - a.min())
        if rng <= 0:
            raise ValueError("a reference frame is constant: CMRxRecon metrics are undefined for it")
        mse = float(np.mean((a - b) ** 2))
        p.append(float("inf") if mse == 0 else 10 * np.log10(rng**2 / mse))
        win = min(7, *a.shape)
        win -= 1 - win % 2
        s.append(structural_similarity(a, b, data_range=rng, win_size=win))
        n.append(float(np.sum((a - b) ** 2) / np.sum(a**2)))
    return ImageMetrics(float(np.mean(p)), float(np.mean(s)), float(np.mean(n)), normalization)
