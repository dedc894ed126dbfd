"""Reconstruction methods by name, behind one call signature, for the demo and the benchmarks.

``cardiomm`` is the learned network (:mod:`cardiomm.inference`, the shipped checkpoint unless
another is given); every other name is a classical method of :mod:`recon.classical`, run
through :func:`recon.pipeline.reconstruct` with coil maps estimated from the undersampled data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cardiomm.data.metadata import ScanMetadata
from cardiomm.inference import resolve_device
from recon.classical import METHOD_LABELS as CLASSICAL_LABELS
from recon.classical import METHODS
from recon.masks import SamplingMask

#: Every method name the benchmarks accept, learned first.
METHOD_NAMES: tuple[str, ...] = ("cardiomm", *METHODS)

#: Human-readable names for figures and tables.
METHOD_LABELS: dict[str, str] = {"cardiomm": "CardioMM", **CLASSICAL_LABELS}


@dataclass
class MethodRunner:
    """Reconstructs every slice of a scan with one method.

    Call it with ``kspace [slice, coil, time, ky, kx]`` (complex, fully sampled or not: it is
    multiplied by the mask), a :class:`SamplingMask` and the scan's metadata; it returns the
    complex images ``[slice, time, y, x]`` and records the seconds spent per slice.
    """

    name: str
    device: torch.device
    run_slices: Callable[[torch.Tensor, SamplingMask, ScanMetadata | None], torch.Tensor]
    seconds_per_slice: list[float] = field(default_factory=list)

    def __call__(self, kspace: torch.Tensor, sampling: SamplingMask, metadata: ScanMetadata | None = None) -> torch.Tensor:
        if kspace.ndim != 5:
            raise ValueError(f"{self.name}: k-space must be [slice, coil, time, ky, kx], got {list(kspace.shape)}")
        t0 = time.perf_counter()
        images = self.run_slices(kspace, sampling, metadata)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds_per_slice.append((time.perf_counter() - t0) / kspace.shape[0])
        return images


def _device(device: str | torch.device) -> torch.device:
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return dev


def make_method(
    name: str,
    device: str | torch.device = "auto",
    *,
    checkpoint: str | Path | None = None,
    batch_size: int = 1,
    **params: object,
) -> MethodRunner:
    """Build the runner of method ``name`` (see :data:`METHOD_NAMES`).

    Args:
        name: ``cardiomm`` or a classical method name.
        device: ``auto``, ``cpu``, ``cuda``.
        checkpoint: CardioMM checkpoint (default: the shipped one).
        batch_size: slices per network call (CardioMM).
        **params: options of the classical method (e.g. ``max_iter``).
    """
    dev = _device(device)
    if name == "cardiomm":
        from cardiomm.inference import load_reconstructor

        reconstructor = load_reconstructor(checkpoint, device=str(dev))

        def run_cardiomm(kspace: torch.Tensor, sampling: SamplingMask, metadata: ScanMetadata | None) -> torch.Tensor:
            meta = metadata
            if meta is not None:
                meta = meta.with_updates(acceleration=sampling.r_effective, mask_pattern=sampling.pattern)
            return reconstructor(kspace * sampling.mask, sampling.mask, sampling.acs, meta, batch_size=batch_size).cpu()

        return MethodRunner(name, dev, run_cardiomm)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {list(METHOD_NAMES)}")
    from recon.pipeline import reconstruct

    def run_classical(kspace: torch.Tensor, sampling: SamplingMask, metadata: ScanMetadata | None) -> torch.Tensor:
        out = [reconstruct(kspace[s], sampling, name, device=dev, **params).image.cpu() for s in range(kspace.shape[0])]
        return torch.stack(out)

    return MethodRunner(name, dev, run_classical)
