"""Training losses on magnitude images ``[batch, time, y, x]``: SSIM (torch) and L1.

:func:`ssim` is the 2D SSIM of Wang et al. (2004) computed frame by frame with a uniform
``7 x 7`` window, ``K1 = 0.01``, ``K2 = 0.03`` and sample covariances (the same definition as
scikit-image's ``structural_similarity`` with ``win_size=7`` and ``use_sample_covariance=True``,
which :mod:`recon.metrics` reports; differentiable, on any device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recon.conventions import shape_str


def ssim(
    prediction: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor | float, window: int = 7
) -> torch.Tensor:
    """Mean SSIM per item of magnitude images ``[batch, time, y, x]`` (2D SSIM per frame).

    Args:
        prediction, target: real ``[batch, time, y, x]`` (or ``[batch, y, x]``).
        data_range: dynamic range ``L`` of the target, a number or ``[batch]`` (e.g. ``target.max()``).
        window: odd side of the uniform window (pixels); images smaller than it are refused.

    Returns:
        ``[batch]`` SSIM averaged over frames and over the valid (unpadded) window positions.
    """
    if prediction.shape != target.shape or prediction.ndim not in (3, 4):
        raise ValueError(
            f"ssim needs equal shapes [batch, time, y, x], got prediction {shape_str(prediction.shape)} "
            f"and target {shape_str(target.shape)}"
        )
    if min(target.shape[-2:]) < window:
        raise ValueError(f"images {shape_str(target.shape)} are smaller than the {window}x{window} SSIM window")
    batch = target.shape[0]
    x = prediction.reshape(-1, 1, *prediction.shape[-2:]).float()
    y = target.reshape(-1, 1, *target.shape[-2:]).float()
    frames = x.shape[0] // batch
    dr = torch.as_tensor(data_range, dtype=x.dtype, device=x.device).reshape(-1)
    dr = dr.expand(batch).repeat_interleave(frames).reshape(-1, 1, 1, 1)
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    n = window * window
    kernel = torch.full((1, 1, window, window), 1.0 / n, dtype=x.dtype, device=x.device)
    mx, my = F.conv2d(x, kernel), F.conv2d(y, kernel)
    cov = n / (n - 1)
    vx = cov * (F.conv2d(x * x, kernel) - mx * mx)
    vy = cov * (F.conv2d(y * y, kernel) - my * my)
    vxy = cov * (F.conv2d(x * y, kernel) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(batch, -1).mean(dim=1)


def temporal_variation_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Relative L1 error of the motion: ``sum|d(prediction) - d(target)| / sum|d(target)|`` per item.

    ``d(x) = x - mean_t(x)`` is each frame minus the mean frame: zero for a static image, large
    where the heart moves.  A reconstruction that blurs the motion towards the mean frame scores
    near 1 however sharp its frames are, which SSIM and L1 over the whole image hardly see.

    Args:
        prediction, target: real ``[batch, time, y, x]`` magnitudes.

    Returns:
        ``[batch]``; 0 for items with one frame (no motion to keep).
    """
    if prediction.shape != target.shape or prediction.ndim != 4:
        raise ValueError(
            f"temporal_variation_error needs equal shapes [batch, time, y, x], got prediction "
            f"{shape_str(prediction.shape)} and target {shape_str(target.shape)}"
        )
    x, y = prediction.float(), target.float()
    dx, dy = x - x.mean(dim=1, keepdim=True), y - y.mean(dim=1, keepdim=True)
    scale = dy.abs().sum(dim=(1, 2, 3)).clamp_min(torch.finfo(y.dtype).eps)
    return (dx - dy).abs().sum(dim=(1, 2, 3)) / scale


class SSIML1Loss(nn.Module):
    """``ssim_weight * (1 - SSIM) + l1_weight * mean|p - t| + temporal_weight * motion error``, batch mean.

    Args:
        ssim_weight: weight of the SSIM term (0 disables it).
        l1_weight: weight of the L1 term, in the units of the (normalised) images.
        window: SSIM window side (pixels, odd).
        temporal_weight: weight of :func:`temporal_variation_error` (relative, unitless; 0 disables it).
    """

    def __init__(
        self, ssim_weight: float = 1.0, l1_weight: float = 0.1, window: int = 7, temporal_weight: float = 0.0
    ) -> None:
        super().__init__()
        if ssim_weight < 0 or l1_weight < 0 or temporal_weight < 0 or ssim_weight + l1_weight + temporal_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not all 0, got ssim_weight={ssim_weight}, l1_weight={l1_weight}, "
                f"temporal_weight={temporal_weight}"
            )
        self.ssim_weight = float(ssim_weight)
        self.l1_weight = float(l1_weight)
        self.temporal_weight = float(temporal_weight)
        self.window = int(window)

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor | float
    ) -> torch.Tensor:
        """Scalar loss of magnitudes ``[batch, time, y, x]`` with ``data_range`` a number or ``[batch]``."""
        loss = prediction.new_zeros(())
        if self.ssim_weight:
            loss = loss + self.ssim_weight * (1 - ssim(prediction, target, data_range, self.window)).mean()
        if self.l1_weight:
            loss = loss + self.l1_weight * F.l1_loss(prediction.float(), target.float())
        if self.temporal_weight and prediction.ndim == 4 and prediction.shape[1] > 1:
            loss = loss + self.temporal_weight * temporal_variation_error(prediction, target).mean()
        return loss
