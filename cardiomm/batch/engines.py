"""Reconstruct a :class:`~cardiomm.batch.prepare.PreparedScan` slice batch by slice batch.

Two engines share one interface, ``engine(scan, start, stop) -> complex [stop-start, time, y, x]``:

* :class:`ClassicalEngine`: a method of :mod:`recon.classical` through
  :func:`recon.pipeline.reconstruct`.  Coil maps are estimated from the data (Walsh): from the
  separately acquired calibration lines when the file has them, else from the per-frame ACS
  region of the mask, else from the time-averaged k-space.  ``zero-filled`` uses no maps (RSS).
* :class:`CardioMMEngine`: the learned network via :func:`cardiomm.inference.load_reconstructor`
  (imported when first used), loaded once and reused for every file.

Slices of a batch are stacked along a leading axis, so one call reconstructs ``batch_size``
slices at once (the classical solvers and the network both accept leading batch axes).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch

from cardiomm.batch.prepare import PreparedScan
from recon.classical import METHOD_LABELS as CLASSICAL_LABELS
from recon.classical import METHODS as CLASSICAL_REGISTRY

__all__ = ["METHODS", "METHOD_LABELS", "CardioMMEngine", "ClassicalEngine", "SliceEngine", "make_engine"]

#: Every method name (``cardiomm recon``, the demo, the benchmarks): the learned one first (the
#: default), then the keys of the classical registry :data:`recon.classical.METHODS`.
METHODS: tuple[str, ...] = ("cardiomm", *CLASSICAL_REGISTRY)
#: Human-readable names for figures and tables.
METHOD_LABELS: dict[str, str] = {"cardiomm": "CardioMM", **CLASSICAL_LABELS}


class SliceEngine(Protocol):
    """Reconstructs slices ``start:stop`` of a scan."""

    name: str
    device: torch.device

    def __call__(self, scan: PreparedScan, start: int, stop: int) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


class ClassicalEngine:
    """A classical method of :mod:`recon.classical` on ``device``.

    Args:
        method: a key of :data:`recon.classical.METHODS`.
        device: where to compute.
        params: passed to the method (e.g. ``max_iter``).
    """

    def __init__(self, method: str, device: torch.device, **params: Any) -> None:
        if method not in CLASSICAL_REGISTRY:
            raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        self.name = method
        self.device = device
        self.params = params

    def __call__(self, scan: PreparedScan, start: int, stop: int) -> torch.Tensor:
        from recon.coil_sensitivity import estimate_sensitivities
        from recon.pipeline import reconstruct

        k = scan.kspace[start:stop].to(self.device)
        m = scan.mask[start:stop].unsqueeze(1).to(self.device)  # [slice, 1, time, ky, kx]: broadcasts over coils
        sens = None
        if self.name != "zero-filled":
            if scan.acs_kspace is not None:
                calib = scan.acs_kspace[start:stop].to(self.device)
                sens = estimate_sensitivities(calib, (calib != 0).any(dim=1, keepdim=True))
            else:
                acs = None if scan.acs is None else scan.acs[start:stop].unsqueeze(1).to(self.device)
                sens = estimate_sensitivities(k, m, acs=acs)
        result = reconstruct(k, m, self.name, sens=sens, device=self.device, **self.params)
        return result.image.detach().to("cpu", torch.complex64)

    def describe(self) -> dict[str, Any]:
        maps = "none (root-sum-of-squares of the coil images)" if self.name == "zero-filled" else "walsh, from the data"
        return {"method": self.name, "params": dict(self.params), "coil_maps": maps}


class CardioMMEngine:
    """The CardioMM network, loaded from ``checkpoint`` (None: the shipped one) onto ``device``."""

    name = "cardiomm"

    def __init__(self, checkpoint: str | os.PathLike[str] | None, device: torch.device) -> None:
        from cardiomm.inference import load_reconstructor
        from cardiomm.digests import file_sha256

        self.reconstructor = load_reconstructor(checkpoint, device=str(device))
        self.device = torch.device(self.reconstructor.device)
        self.checkpoint = getattr(self.reconstructor, "checkpoint_path", checkpoint)
        #: sha256 of the checkpoint file as loaded, so every result names the exact weights.
        self.checkpoint_sha256 = None if self.checkpoint is None else file_sha256(self.checkpoint)

    def __call__(self, scan: PreparedScan, start: int, stop: int) -> torch.Tensor:
        acs = None if scan.acs is None else scan.acs[start:stop]
        image = self.reconstructor(
            scan.kspace[start:stop], scan.mask[start:stop], acs, metadata=scan.metadata, batch_size=stop - start
        )
        return torch.as_tensor(image).detach().to("cpu", torch.complex64)

    def describe(self) -> dict[str, Any]:
        return {"method": "cardiomm", "checkpoint": None if self.checkpoint is None else os.fspath(self.checkpoint),
                "checkpoint_sha256": self.checkpoint_sha256}


def make_engine(
    method: str, device: torch.device, *, checkpoint: str | os.PathLike[str] | None = None, **params: Any
) -> SliceEngine:
    """The engine for ``method`` (``"cardiomm"`` or a classical method) on ``device``."""
    if method == "cardiomm":
        if params:
            raise ValueError(f"the cardiomm method takes no solver parameters, got {sorted(params)}")
        return CardioMMEngine(checkpoint, device)
    if checkpoint is not None:
        raise ValueError(f"--checkpoint is only used by --method cardiomm, not {method!r}")
    return ClassicalEngine(method, device, **params)
