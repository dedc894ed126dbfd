"""Intensity normalisation and the square 256x256 model grid (and the way back).

Every network here (LiteMedSAM, the cardiac decoder, the ACDC teacher) sees ``[256, 256]``
images with values in ``[0, 1]``.  An image ``[ny, nx]`` is zero-padded symmetrically to a
square of side ``max(ny, nx)`` (so the anatomy keeps its aspect ratio) and resized to 256;
:class:`GridGeometry` records this so that per-pixel outputs can be put back on the
original pixels, where the original pixel spacing holds.  The model-grid pixel spacing is
``spacing * side / 256`` in both directions when the original pixels are square.

Images with a small field of view (a tight crop around the heart, a CMRxRecon-style cropped
reconstruction) would show the heart far larger on the model grid than any training image did,
and the decoder fails on them.  With the pixel spacing given, the square is therefore padded
further, to at least ``min_fov_mm`` (:data:`MIN_FOV_MM`), so the model grid never has pixels
finer than ``min_fov_mm / 256``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cardiomm.data.labels import LV_BLOOD, RV_BLOOD

__all__ = [
    "MIN_FOV_MM", "MODEL_SIZE", "GridGeometry", "heart_box", "normalize_intensity", "to_model_grid", "from_model_grid",
]

#: side of the square model grid in pixels (LiteMedSAM input size)
MODEL_SIZE = 256
#: smallest field of view (mm) put on the model grid when the pixel spacing is known; the
#: decoder was trained on fields of view of 260-380 mm
MIN_FOV_MM = 300.0


def normalize_intensity(
    image: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5
) -> np.ndarray:
    """Clip one magnitude image to its percentiles and scale it to ``[0, 1]``.

    Args:
        image: real ``[y, x]`` magnitude image (any unit).
        low_percentile, high_percentile: percentiles (0..100) mapped to 0 and 1.
    Returns:
        float32 ``[y, x]`` in ``[0, 1]``.
    Raises:
        ValueError: not 2-D, empty, complex, non-finite values, or no contrast (constant image
            or percentiles equal), which would give a meaningless segmentation.
    """
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty 2-D [y, x] image, got shape {list(arr.shape)}")
    if np.iscomplexobj(arr):
        raise ValueError("expected a magnitude image, got complex values (take np.abs first)")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"image of shape {list(arr.shape)} holds NaN or infinite values")
    low, high = np.percentile(arr, [low_percentile, high_percentile])
    if not high > low:
        if float(arr.max()) > float(arr.min()):
            low, high = float(arr.min()), float(arr.max())
        else:
            raise ValueError(
                f"image of shape {list(arr.shape)} is constant ({float(arr.min()):g}): nothing to segment"
            )
    return np.clip((arr - low) / (high - low), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class GridGeometry:
    """How an ``[ny, nx]`` image was placed on the square model grid.

    Attributes:
        shape: original ``(ny, nx)`` in pixels.
        side: side of the square window (e.g. ``max(ny, nx)``) in original pixels.
        pad: ``(top, left)`` zero rows/columns added before the image; negative values crop
            (the window of :meth:`window` starts inside the image).
    """

    shape: tuple[int, int]
    side: int
    pad: tuple[int, int]

    @classmethod
    def for_shape(cls, shape: tuple[int, int], pixel_spacing_mm: tuple[float, float] | None = None,
                  min_fov_mm: float = MIN_FOV_MM) -> "GridGeometry":
        """Geometry of an ``(ny, nx)`` image: a centred square of side ``max(ny, nx)`` pixels, or more
        when ``pixel_spacing_mm`` (row, col) is given and the square would cover less than ``min_fov_mm``."""
        ny, nx = int(shape[0]), int(shape[1])
        if ny < 8 or nx < 8:
            raise ValueError(f"image of {ny}x{nx} pixels is too small to segment (need at least 8x8)")
        side = max(ny, nx)
        if pixel_spacing_mm is not None:
            side = max(side, int(math.ceil(float(min_fov_mm) / min(float(v) for v in pixel_spacing_mm) - 1e-6)))
        return cls(shape=(ny, nx), side=side, pad=((side - ny) // 2, (side - nx) // 2))

    @classmethod
    def window(cls, shape: tuple[int, int], centre_px: tuple[float, float], side_px: float) -> "GridGeometry":
        """A square window of ``side_px`` original pixels centred on ``centre_px`` (row, col) of an
        ``(ny, nx)`` image; parts outside the image are zero-padded (the heart-centred zoom of
        :class:`segment.segmenter.CardiacSegmenter`)."""
        ny, nx = int(shape[0]), int(shape[1])
        side = max(8, int(round(float(side_px))))
        top = int(round(float(centre_px[0]) - (side - 1) / 2))
        left = int(round(float(centre_px[1]) - (side - 1) / 2))
        return cls(shape=(ny, nx), side=side, pad=(-top, -left))

    @property
    def covers_image(self) -> bool:
        """True when the square holds the whole image (no part of it is cropped away)."""
        top, left = self.pad
        return top >= 0 and left >= 0 and self.side - self.shape[0] - top >= 0 and self.side - self.shape[1] - left >= 0

    def model_spacing_mm(self, pixel_spacing_mm: tuple[float, float]) -> tuple[float, float]:
        """Pixel size (mm) on the 256 grid for the original ``(row, col)`` spacing."""
        scale = self.side / MODEL_SIZE
        return (float(pixel_spacing_mm[0]) * scale, float(pixel_spacing_mm[1]) * scale)


def heart_box(labels: np.ndarray) -> tuple[tuple[float, float], tuple[int, int]] | None:
    """Bounding box of the heart (LV blood, LV myocardium, RV blood) in a label map ``[y, x]``.

    Returns:
        ``((row, col) centre, (height, width))`` in pixels, or None when no pixel is heart
        (other values, e.g. an ignore label, are not heart).
    """
    ys, xs = np.nonzero((labels >= LV_BLOOD) & (labels <= RV_BLOOD))
    if ys.size == 0:
        return None
    centre = ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2)
    return centre, (int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1)


def to_model_grid(images: np.ndarray | torch.Tensor, geometry: GridGeometry) -> torch.Tensor:
    """Pad to a square and resize (bilinear, antialiased) ``[n, ny, nx]`` -> float32 ``[n, 256, 256]``."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim != 3 or tuple(x.shape[1:]) != geometry.shape:
        raise ValueError(f"expected [n, {geometry.shape[0]}, {geometry.shape[1]}], got {list(x.shape)}")
    top, left = geometry.pad
    bottom = geometry.side - geometry.shape[0] - top
    right = geometry.side - geometry.shape[1] - left
    x = F.pad(x[:, None], (left, right, top, bottom))  # negative pads crop
    if geometry.side != MODEL_SIZE:
        x = F.interpolate(x, size=(MODEL_SIZE, MODEL_SIZE), mode="bilinear", align_corners=False,
                          antialias=geometry.side > MODEL_SIZE)
    return x[:, 0].contiguous()


def from_model_grid(maps: torch.Tensor, geometry: GridGeometry) -> torch.Tensor:
    """Put per-pixel maps ``[n, c, 256, 256]`` (e.g. probabilities) back on ``[n, c, ny, nx]`` (bilinear).

    Pixels of the image outside a :meth:`GridGeometry.window` get 0 in every channel."""
    if maps.ndim != 4 or tuple(maps.shape[-2:]) != (MODEL_SIZE, MODEL_SIZE):
        raise ValueError(f"expected [n, c, {MODEL_SIZE}, {MODEL_SIZE}], got {list(maps.shape)}")
    x = maps
    if geometry.side != MODEL_SIZE:
        x = F.interpolate(x, size=(geometry.side, geometry.side), mode="bilinear", align_corners=False)
    top, left = geometry.pad
    bottom = geometry.side - geometry.shape[0] - top
    right = geometry.side - geometry.shape[1] - left
    return F.pad(x, (-left, -right, -top, -bottom)).contiguous()
