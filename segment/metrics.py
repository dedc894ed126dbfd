"""Overlap and surface-distance metrics of label maps (Dice, 95th-percentile Hausdorff in mm)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["dice", "hd95_mm"]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of equal shape; NaN when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"masks differ in shape: {list(p.shape)} vs {list(t.shape)}")
    denom = p.sum() + t.sum()
    return float("nan") if denom == 0 else float(2 * np.logical_and(p, t).sum() / denom)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between the outlines of two 2-D masks.

    The larger of the two directed 95th percentiles of outline-to-outline distances (as in
    MONAI's ``compute_hausdorff_distance(percentile=95)``).  NaN when either mask is empty.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.any() or not t.any():
        return float("nan")
    sp, st = _surface(p), _surface(t)
    d_to_t = ndimage.distance_transform_edt(~st, sampling=spacing_mm)
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing_mm)
    return float(max(np.percentile(d_to_t[sp], 95), np.percentile(d_to_p[st], 95)))
