"""Proximal operators used by the sparse / low-rank reconstructions (complex-safe, batched)."""

from __future__ import annotations

import torch


def soft_threshold(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Soft thresholding ``sgn(x) * max(|x| - threshold, 0)``, the prox of ``threshold * ||x||_1``.

    For complex ``x`` it shrinks the magnitude and keeps the phase.  ``threshold`` (>= 0) is a
    number or a tensor broadcastable to ``x`` (e.g. per-item or per-frequency weights).
    """
    return torch.sgn(x) * torch.clamp(x.abs() - threshold, min=0.0)


def clip_magnitude(x: torch.Tensor, bound: torch.Tensor | float) -> torch.Tensor:
    """Project each entry of ``x`` onto the disc ``|x| <= bound`` (keeps the phase).

    This is the projection onto the dual ball of ``bound * ||.||_1``.
    """
    mag = x.abs()
    return x * (bound / torch.clamp(mag, min=torch.finfo(mag.dtype).tiny)).clamp(max=1.0)


def singular_value_threshold(
    matrix: torch.Tensor, threshold: torch.Tensor | float, relative: bool = False, shrink_leading: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular value soft thresholding, the prox of ``threshold * ||.||_*`` (nuclear norm).

    Args:
        matrix: ``[..., m, n]`` real or complex, batched over leading axes.
        threshold: number or tensor broadcastable to ``[..., 1]`` (one threshold per matrix).
        relative: if true, the threshold is ``threshold * sigma_max`` of each matrix (as in
            Otazo et al. 2015, where ``lambda_L`` is relative to the largest singular value).
        shrink_leading: if false, the largest singular value is kept as it is and only the
            others are thresholded.
    Returns:
        ``(U diag(max(s - t, 0)) V^H, s)``: the thresholded matrix and the singular values
        *before* thresholding ``[..., min(m, n)]`` (descending).
    """
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    t = torch.as_tensor(threshold, dtype=s.dtype, device=s.device)
    if relative:
        t = t * s[..., :1]
    t = t * torch.ones_like(s)
    if not shrink_leading:
        t[..., 0] = 0.0
    s_thr = torch.clamp(s - t, min=0.0)
    out = (u * s_thr.unsqueeze(-2).to(u.dtype)) @ vh
    return out, s
