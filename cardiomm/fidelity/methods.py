"""Reconstruction methods by name, behind one call on a whole scan, for the demo and the benchmarks.

A :class:`MethodRunner` takes fully sampled (or already undersampled) k-space, a
:class:`~recon.masks.SamplingMask` and the scan's metadata, and reconstructs every slice with
one of the engines of :mod:`cardiomm.batch.engines` (the same code ``cardiomm recon`` runs):
``cardiomm`` is the learned network (the shipped checkpoint unless another is given), every
other name a classical method of :mod:`recon.classical` with coil maps estimated from the
undersampled data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cardiomm.batch.engines import METHOD_LABELS, METHODS, make_engine
from cardiomm.batch.prepare import PreparedScan
from cardiomm.data.metadata import ScanMetadata
from cardiomm.inference import resolve_device
from recon.masks import SamplingMask

__all__ = ["METHOD_LABELS", "METHOD_NAMES", "MethodRunner", "make_method"]

#: Every method name the benchmarks accept, learned first.
METHOD_NAMES: tuple[str, ...] = METHODS


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
    #: what the method is (its engine's ``describe()``: parameters, coil maps, checkpoint and its sha256).
    description: dict[str, Any] = field(default_factory=dict)

    def __call__(self, kspace: torch.Tensor, sampling: SamplingMask, metadata: ScanMetadata | None = None) -> torch.Tensor:
        if kspace.ndim != 5:
            raise ValueError(f"{self.name}: k-space must be [slice, coil, time, ky, kx], got {list(kspace.shape)}")
        if not isinstance(sampling, SamplingMask):
            raise ValueError(f"{self.name}: sampling must be a recon.masks.SamplingMask, got {type(sampling).__name__}")
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


def prepared_scan(kspace: torch.Tensor, sampling: SamplingMask, metadata: ScanMetadata | None) -> PreparedScan:
    """The retrospectively undersampled scan: ``kspace [slice, coil, time, ky, kx]`` times the mask.

    The mask and its calibration region (``[time, ky, kx]``) are shared by every slice; the
    metadata get the effective acceleration and the pattern of ``sampling``.
    """
    n = kspace.shape[0]
    meta = metadata if metadata is not None else ScanMetadata()
    meta = meta.with_updates(acceleration=sampling.r_effective, mask_pattern=sampling.pattern)
    mask = sampling.mask.to(torch.bool)
    acs = None if sampling.acs is None else sampling.acs.to(torch.bool).expand(n, *sampling.acs.shape)
    return PreparedScan(kspace * mask, mask.expand(n, *mask.shape), acs, None, meta)


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
        checkpoint: CardioMM checkpoint (default: the shipped one); only for ``cardiomm``.
        batch_size: slices per engine call.  Classical methods scale the data of a call
            together, so keep 1 there for results that do not depend on the batching.
        **params: options of the classical method (e.g. ``max_iter``).
    """
    if name not in METHOD_NAMES:
        raise ValueError(f"unknown method {name!r}; choose from {list(METHOD_NAMES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    engine = make_engine(name, _device(device), checkpoint=checkpoint, **params)

    def run(kspace: torch.Tensor, sampling: SamplingMask, metadata: ScanMetadata | None) -> torch.Tensor:
        # one engine call per batch of slices, each undersampled on its own: undersampling the whole
        # scan first held a second copy of its k-space (1 GB for a 10-slice, 10-coil 256x256 cine)
        parts = []
        for i in range(0, kspace.shape[0], batch_size):
            scan = prepared_scan(kspace[i: i + batch_size], sampling, metadata)
            parts.append(engine(scan, 0, scan.n_slices))
        return torch.cat(parts)

    return MethodRunner(name, engine.device, run, description=engine.describe())
