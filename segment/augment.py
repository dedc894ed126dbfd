"""Random geometric and intensity augmentation of model-grid images and their labels.

Geometry: shift (fraction of the image side), rotation (degrees) about the image centre and
optional left-right flip, applied with one affine map to the image (linear interpolation) and
the label map (nearest neighbour; outside the image -> background 0).  Intensity: gamma and a
smooth multiplicative bias field, then re-clipping to ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["AugmentConfig", "Rigid2D", "apply_rigid", "random_rigid", "random_intensity"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (uniform in +/- each value)."""

    max_shift_fraction: float = 0.10
    max_rotation_deg: float = 15.0
    flip_probability: float = 0.3
    max_log_gamma: float = 0.35
    max_bias: float = 0.25


@dataclass(frozen=True)
class Rigid2D:
    """A rigid in-plane motion: shift ``(dy, dx)`` in pixels, rotation in degrees, flip of the x axis."""

    shift_px: tuple[float, float] = (0.0, 0.0)
    rotation_deg: float = 0.0
    flip_x: bool = False


def random_rigid(rng: np.random.Generator, side: int, cfg: AugmentConfig) -> Rigid2D:
    s = cfg.max_shift_fraction * side
    return Rigid2D(
        shift_px=(float(rng.uniform(-s, s)), float(rng.uniform(-s, s))),
        rotation_deg=float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)),
        flip_x=bool(rng.random() < cfg.flip_probability),
    )


def apply_rigid(image: np.ndarray, motion: Rigid2D, *, order: int, cval: float = 0.0) -> np.ndarray:
    """Move a ``[y, x]`` map: output(p) = input(R^-1 (p - c - t) + c), flipped first when asked.

    Args:
        image: ``[y, x]`` array (image: ``order=1``; labels: ``order=0``).
        motion: the rigid motion.
        order: spline order of the interpolation.
        cval: value outside the input.
    """
    arr = np.asarray(image)
    if motion.flip_x:
        arr = arr[:, ::-1]
    theta = np.deg2rad(motion.rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = (np.array(arr.shape, dtype=np.float64) - 1) / 2
    inv = rot.T
    offset = centre - inv @ (centre + np.asarray(motion.shift_px))
    dtype = arr.dtype
    out = ndimage.affine_transform(arr.astype(np.float32), inv, offset=offset, order=order, mode="constant", cval=cval)
    return out.astype(dtype) if order == 0 else out.astype(np.float32)


def random_intensity(image01: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Gamma change and a smooth linear bias field on a ``[y, x]`` image in ``[0, 1]``."""
    img = np.clip(np.asarray(image01, dtype=np.float32), 0, 1) ** float(np.exp(rng.uniform(-cfg.max_log_gamma, cfg.max_log_gamma)))
    yy, xx = np.meshgrid(np.linspace(-1, 1, img.shape[0]), np.linspace(-1, 1, img.shape[1]), indexing="ij")
    a, b = rng.uniform(-cfg.max_bias, cfg.max_bias, size=2)
    img = img * (1 + a * yy + b * xx).astype(np.float32)
    return np.clip(img / max(float(img.max()), 1e-6), 0, 1).astype(np.float32)
