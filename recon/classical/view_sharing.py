"""k-t view sharing: every unmeasured k-space sample takes its mean over the frames that measured it.

The oldest dynamic-imaging trick (keyhole, TWIST and k-t view-sharing cine all rest on it) and,
for cine, a strong non-iterative baseline: a k-t pattern that samples different lines in every
frame has, after sharing, a full k-space per frame whose high frequencies are time-averaged.
It is also the start of CardioMM's cascades (``initial_kspace="view-sharing"``), so a learned
network has to beat it to be worth running.
"""

from __future__ import annotations

import torch

from recon.classical.problem import check_inputs, kspace_mask
from recon.classical.zero_filled import zero_filled

#: Axis of time in ``[..., coil, time, ky, kx]``.
_TIME_DIM = -3


def share_views(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill unmeasured samples with their mean over the frames that measured them.

    Args:
        kspace: ``[..., coil, time, ky, kx]`` complex, zero where not measured.
        mask: bool (or 0/1) broadcastable to the image axes ``[..., time, ky, kx]`` (see
            :func:`recon.classical.problem.kspace_mask`), or to ``kspace`` itself.

    Returns:
        k-space of the same shape: measured samples unchanged; the others the time average of
        that location's measured values (zero where no frame measured it).
    """
    m = kspace_mask(mask, kspace)
    count = m.sum(dim=_TIME_DIM, keepdim=True).clamp(min=1).to(kspace.real.dtype)  # counted once, not per coil
    shared = kspace.sum(dim=_TIME_DIM, keepdim=True) / count  # unmeasured entries are zero
    return torch.where(m, kspace, shared)


def view_sharing(kspace: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor | None = None) -> torch.Tensor:
    """View-shared image: :func:`share_views`, then coil combination.

    Args:
        kspace: ``[..., coil, time, ky, kx]`` complex, zeros where not sampled.
        mask: sampling mask broadcastable to ``[..., time, ky, kx]``.
        sens: coil maps ``[..., coil, 1|time, y, x]`` (``sum_c |S_c|^2 = 1``) for a SENSE
            combination, or None for the root-sum-of-squares (returned with zero phase).

    Returns:
        ``[..., time, y, x]`` complex, on ``kspace``'s device and dtype.
    """
    check_inputs(kspace, sens)
    return zero_filled(share_views(kspace, mask), None, sens)
