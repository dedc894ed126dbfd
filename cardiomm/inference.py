"""Reconstruct undersampled multi-coil cine k-space with a trained CardioMM checkpoint.

::

    from cardiomm.inference import load_reconstructor

    recon = load_reconstructor()                      # the checkpoint shipped with the package
    images = recon(kspace, mask, acs, metadata)       # complex [slice, time, y, x]

The reconstructor applies what the training data went through
(:class:`cardiomm.data.datasets.CineSliceDataset`): every slice's k-space is divided by
:func:`cardiomm.data.datasets.normalisation_scale` of its undersampled data before the network
and the reconstruction is multiplied back, so the output is in the caller's k-space scale
(``ifft2c`` units, coil-combined with the network's normalised coil maps).  The network is
fully convolutional and pads internally, so any matrix size and number of frames work.

The acquisition context the network is conditioned on comes from what the data show (number
of coils, effective acceleration, calibration kind) and, when given, from a
:class:`~cardiomm.data.metadata.ScanMetadata` (modality, view, field strength, vendor, mask
pattern).  ``context="unknown"`` hides everything (the ablation of the benchmark).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cardiomm.data.datasets import normalisation_scale
from cardiomm.data.metadata import ScanMetadata
from cardiomm.model import CardioMMNet
from cardiomm.model.context import ContextBatch
from cardiomm.training.checkpoint import load_cardiomm_checkpoint, read_checkpoint
from recon.coil_sensitivity import fully_sampled_centre
from recon.conventions import shape_str

__all__ = ["DEFAULT_CHECKPOINT", "CardioMMReconstructor", "load_reconstructor", "resolve_device"]

#: The trained checkpoint shipped inside the package (see ``cardiomm/checkpoints/README.md``).
DEFAULT_CHECKPOINT: Path = Path(__file__).resolve().parent / "checkpoints" / "cardiomm_small.ckpt"

#: Smallest fully sampled centred k-space square (side, samples) accepted as a calibration
#: region when no per-frame ACS is given (the coil maps come from the time-averaged k-space).
MIN_CALIBRATION_SIDE = 4

ContextMode = Literal["auto", "unknown"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err


@dataclass
class CardioMMReconstructor:
    """A trained :class:`~cardiomm.model.CardioMMNet` wrapped for reconstruction of whole scans.

    Attributes:
        model: the network (eval mode) on ``device``.
        device: where the network runs.
        checkpoint_path: the file it was loaded from (None when built from a model object).
        training_data: the data description stored in the checkpoint (``cardiomm_data``), or None.
        context: ``"auto"`` (context from data and metadata) or ``"unknown"`` (every field hidden).
    """

    model: CardioMMNet
    device: torch.device
    checkpoint_path: Path | None = None
    training_data: dict[str, Any] | None = None
    context: ContextMode = "auto"

    def __post_init__(self) -> None:
        if self.context not in ("auto", "unknown"):
            raise ValueError(f"context must be 'auto' or 'unknown', got {self.context!r}")
        self.model = self.model.to(self.device).eval()

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters of the network."""
        return sum(p.numel() for p in self.model.parameters())

    def context_for(
        self, mask: torch.Tensor, acs: torch.Tensor | None, n_coils: int, metadata: ScanMetadata | None
    ) -> dict[str, Any]:
        """The context dict of one slice (keys of :data:`cardiomm.data.datasets.CONTEXT_KEYS`).

        Args:
            mask: bool ``[time, ky, kx]`` of the slice.
            acs: bool ``[time, ky, kx]`` calibration region, or None.
            n_coils: receive coils of the k-space.
            metadata: what else is known about the scan, or None.
        Returns:
            ``{}`` when ``self.context == "unknown"`` (all fields unknown), else the known fields.
        """
        if self.context == "unknown":
            return {}
        sampled = int(mask.sum())
        r_effective = mask.numel() / sampled if sampled else None
        has_acs = acs is not None and bool(acs.any())
        context: dict[str, Any] = {
            "n_coils": int(n_coils),
            "r_effective": r_effective,
            "calibration": "acs" if has_acs else "time_average",
        }
        if metadata is not None:
            context.update(
                modality=metadata.modality,
                view=metadata.view,
                field_strength_t=metadata.field_strength_t,
                vendor=metadata.vendor,
                pattern=metadata.mask_pattern,
            )
        return context

    @torch.inference_mode()
    def __call__(
        self,
        kspace: torch.Tensor | np.ndarray,
        mask: torch.Tensor | np.ndarray,
        acs: torch.Tensor | np.ndarray | None = None,
        metadata: ScanMetadata | None = None,
        batch_size: int = 1,
        progress: bool = False,
    ) -> torch.Tensor:
        """Reconstruct every slice of an undersampled multi-coil cine.

        Args:
            kspace: complex ``[slice, coil, time, ky, kx]``, zeros where not sampled (any scale).
            mask: bool ``[time, ky, kx]`` (shared by all slices) or ``[slice, time, ky, kx]``.
            acs: bool calibration region like ``mask`` (per-frame ACS lines), or None: the coil
                maps then come from the time-averaged k-space, whose centre must be fully sampled.
            metadata: acquisition context (modality, view, field strength, vendor, pattern), or None.
            batch_size: slices per network call (all slices of a scan share one shape).
            progress: show a progress bar (rich).
        Returns:
            complex64 ``[slice, time, y, x]`` on the device of ``kspace``, in the caller's scale.
        Raises:
            ValueError: wrong shapes or dtypes, a mask that samples nothing, no calibration region.
        """
        kspace = torch.as_tensor(kspace)
        out_device = kspace.device
        if not kspace.is_complex():
            raise ValueError(f"k-space must be complex, got dtype {kspace.dtype}")
        if kspace.ndim != 5:
            raise ValueError(
                f"k-space must be [slice, coil, time, ky, kx], got shape {shape_str(kspace.shape)}"
                + (" (add a leading slice axis for one slice)" if kspace.ndim == 4 else "")
            )
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n_slices, n_coils, t, ny, nx = kspace.shape
        masks = _per_slice(mask, "sampling mask", (n_slices, t, ny, nx))
        acss = None if acs is None else _per_slice(acs, "acs mask", (n_slices, t, ny, nx))
        for s in range(n_slices):
            _check_calibration(masks[s], None if acss is None else acss[s], s)

        outputs = []
        starts = range(0, n_slices, int(batch_size))
        for start in _progress(starts, progress, n_slices, int(batch_size)):
            stop = min(n_slices, start + int(batch_size))
            k = kspace[start:stop].to(torch.complex64)
            m = masks[start:stop]
            a = None if acss is None else acss[start:stop]
            scales = torch.tensor(
                [normalisation_scale(k[i].cpu(), m[i].cpu()) for i in range(stop - start)], dtype=torch.float32
            )
            context = ContextBatch.from_context(
                [self.context_for(m[i], None if a is None else a[i], n_coils, metadata) for i in range(stop - start)],
                stop - start,
            )
            k_norm = (k / scales.reshape(-1, 1, 1, 1, 1).to(k.device)).to(self.device)
            image = self.model(
                k_norm, m.to(self.device), None if a is None else a.to(self.device), context.to(self.device)
            )
            image = image * scales.to(self.device).reshape(-1, 1, 1, 1)
            outputs.append(image.to(out_device, torch.complex64))
        return torch.cat(outputs)


def _per_slice(m: torch.Tensor | np.ndarray, name: str, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Bool ``[slice, time, ky, kx]`` from a ``[time, ky, kx]`` or ``[slice, time, ky, kx]`` mask."""
    m = torch.as_tensor(m).cpu() != 0
    if m.ndim == 3:
        m = m.unsqueeze(0)
    if m.ndim != 4 or tuple(m.shape[1:]) != shape[1:] or m.shape[0] not in (1, shape[0]):
        raise ValueError(
            f"{name} must be [time, ky, kx] = {shape_str(shape[1:])} or [slice, time, ky, kx] = "
            f"{shape_str(shape)} to match the k-space, got {shape_str(m.shape)}"
        )
    return m.expand(shape)


def _check_calibration(mask: torch.Tensor, acs: torch.Tensor | None, s: int) -> None:
    """Raise ValueError when slice ``s`` has neither an ACS region nor a fully sampled time-averaged centre."""
    if not bool(mask.any()):
        raise ValueError(f"slice {s}: the sampling mask samples nothing")
    if acs is not None and bool(acs.any()):
        return
    side = fully_sampled_centre(mask.any(dim=0), MIN_CALIBRATION_SIDE)
    if side < MIN_CALIBRATION_SIDE:
        raise ValueError(
            f"slice {s}: no calibration region: no ACS mask was given and the k-space centre is not fully "
            f"sampled even when averaged over frames (largest centred square: {side}x{side} samples, need "
            f"{MIN_CALIBRATION_SIDE}x{MIN_CALIBRATION_SIDE}); coil maps cannot be estimated"
        )


def _progress(starts: range, show: bool, n_slices: int, batch_size: int) -> Any:
    """Iterate ``starts``, with a rich progress bar when ``show``."""
    if not show:
        return starts
    from rich.progress import track

    return track(starts, description=f"CardioMM: {n_slices} slices, {batch_size} per call")


def load_reconstructor(
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
    *,
    context: ContextMode = "auto",
) -> CardioMMReconstructor:
    """Load a CardioMM checkpoint for reconstruction.

    Args:
        checkpoint: ``.ckpt`` file written by CardioMM training (or a stripped copy of one);
            None = :data:`DEFAULT_CHECKPOINT`, the one shipped with the package.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        context: ``"auto"`` or ``"unknown"`` (see :class:`CardioMMReconstructor`).
    Raises:
        FileNotFoundError: the checkpoint does not exist (for the default one: the package was
            installed without it).
        ValueError: corrupted file, another architecture, or weights that do not fit.
    """
    path = Path(DEFAULT_CHECKPOINT if checkpoint is None else checkpoint)
    if not path.is_file():
        hint = (
            " (the shipped checkpoint is missing: reinstall the package, or train one, see "
            "cardiomm/checkpoints/README.md)"
            if checkpoint is None
            else ""
        )
        raise FileNotFoundError(f"CardioMM checkpoint {path} does not exist{hint}")
    target = resolve_device(device)
    model = load_cardiomm_checkpoint(path, map_location=target)
    data = read_checkpoint(path, map_location="cpu").get("cardiomm_data")
    return CardioMMReconstructor(
        model, target, checkpoint_path=path, training_data=data if isinstance(data, dict) else None, context=context
    )
