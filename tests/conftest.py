"""Test-wide settings: one torch thread per pytest-xdist worker (the CI machine has 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

os.environ.setdefault("WANDB_MODE", "offline")

#: The project's shared real data (read-only), beside the repository.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


class BrightnessSegmenter:
    """Test double: labels bright pixels inside the central disc LV blood, medium ones myocardium.

    Deterministic and sensitive to image degradation, which is all the runner needs."""

    def segment(self, images: np.ndarray, pixel_spacing_mm: tuple[float, float]) -> np.ndarray:
        ny, nx = images.shape[-2:]
        yy, xx = np.mgrid[:ny, :nx]
        disc = (yy - ny / 2) ** 2 + (xx - nx / 2) ** 2 < (0.2 * ny) ** 2
        scale = np.percentile(images, 99, axis=(-2, -1), keepdims=True) + 1e-12
        x = images / scale
        labels = np.zeros(images.shape, np.uint8)
        labels[(x > 0.6) & disc] = 1
        labels[(x > 0.25) & (x <= 0.6) & disc] = 2
        return labels
