"""Classical reconstruction of undersampled multi-coil cine: coil maps, then one method.

This is the glue the benchmarks, the demo and the batch command share: it takes
undersampled k-space and its mask, estimates coil sensitivities from the data (ACS or
time-averaged k-space, as the mask says), runs one method of :mod:`recon.classical` and
times both steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from recon.classical import METHODS
from recon.coil_sensitivity import estimate_sensitivities
from recon.conventions import require_complex, shape_str
from recon.masks import SamplingMask


@dataclass
class ReconResult:
    """One reconstruction: ``image`` is complex ``[..., time, y, x]``; times in seconds.

    ``seconds`` / ``sens_seconds`` are wall-clock; ``cpu_seconds`` is the CPU time of this process
    for both steps (all threads), which stays meaningful on a machine shared with other jobs.
    """

    method: str
    image: torch.Tensor
    seconds: float
    sens_seconds: float
    device: str
    params: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float = 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reconstruct(
    kspace: torch.Tensor,
    sampling: SamplingMask | torch.Tensor,
    method: str,
    *,
    sens: torch.Tensor | None = None,
    sens_method: str = "walsh",
    device: str | torch.device | None = None,
    **params: Any,
) -> ReconResult:
    """Reconstruct undersampled k-space with a classical method.

    Args:
        kspace: ``[..., coil, time, ky, kx]`` complex; unsampled entries may hold anything
            (they are zeroed with the mask).
        sampling: a :class:`recon.masks.SamplingMask` (its ACS, if any, is used for the coil
            maps) or a bool mask broadcastable to ``[time, ky, kx]``.
        method: a key of :data:`recon.classical.METHODS` (``zero-filled``, ``cg-sense``,
            ``cs``, ``kt-sparse``, ``lps``, ``st-tv``).
        sens: coil maps ``[..., coil, 1|time, y, x]``; estimated from the data when None.
        sens_method: ``walsh`` (torch, any device) or ``espirit`` (sigpy).
        device: where to compute; default: kspace's device.
        **params: passed to the method (e.g. ``lam``, ``max_iter``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    require_complex(kspace, "k-space")
    if kspace.ndim < 4:
        raise ValueError(f"k-space must have axes [..., coil, time, ky, kx], got shape {shape_str(kspace.shape)}")
    dev = torch.device(device) if device is not None else kspace.device
    if isinstance(sampling, SamplingMask):
        mask, acs = sampling.mask, sampling.acs
    else:
        mask, acs = torch.as_tensor(sampling).to(torch.bool), None
    kspace = kspace.to(dev)
    mask = mask.to(dev)
    acs = acs.to(dev) if acs is not None else None
    kspace = kspace * mask

    _sync(dev)
    c0 = time.process_time()
    t0 = time.perf_counter()
    if sens is None and method != "zero-filled":
        sens = estimate_sensitivities(kspace, mask, acs=acs, method=sens_method)
    elif sens is not None:
        sens = sens.to(dev)
    _sync(dev)
    t1 = time.perf_counter()
    image = METHODS[method](kspace, mask, sens, **params)
    _sync(dev)
    t2 = time.perf_counter()
    return ReconResult(method, image, t2 - t1, t1 - t0, str(dev), dict(params), time.process_time() - c0)
