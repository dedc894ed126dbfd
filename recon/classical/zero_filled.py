"""Zero-filled reconstruction: the plain adjoint, no iterations."""

from __future__ import annotations

import torch

from recon.classical.problem import check_inputs, kspace_mask, setup_problem
from recon.conventions import ifft2c, rss


def zero_filled(kspace: torch.Tensor, mask: torch.Tensor | None, sens: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-filled image of undersampled multi-coil k-space.

    With ``sens`` this is the SENSE-combined adjoint ``A^H y = sum_c conj(S_c) F^H (M y_c)``;
    without it, the root-sum-of-squares of the coil images ``|F^H M y_c|`` (returned as complex
    with zero phase).  It is the plain adjoint: no division by the sampling density, so with
    ``sum_c |S_c|^2 = 1`` and a fraction ``1/R`` of k-space sampled, its energy is about
    ``1/R`` of the image's (use it as a baseline, or normalise intensities before comparing).

    Args:
        kspace: ``[..., coil, time, ky, kx]`` complex, zeros where not sampled.
        mask: sampling mask broadcastable to ``[..., time, ky, kx]``, or ``None`` if ``kspace``
            is already zero where not sampled.
        sens: optional coil maps ``[..., coil, 1|time, y, x]``.
    Returns:
        ``[..., time, y, x]`` complex, on ``kspace``'s device and dtype.
    """
    check_inputs(kspace, sens)
    if sens is not None:
        if mask is None:
            mask = torch.ones((1, 1, 1), dtype=torch.bool, device=kspace.device)
        return setup_problem(kspace, mask, sens, normalise=False).adjoint_y
    k = kspace if mask is None else kspace * kspace_mask(mask, kspace)
    return rss(ifft2c(k)).to(kspace.dtype)
