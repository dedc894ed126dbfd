"""Anatomical clean-up of predicted label maps (scikit-image / scipy morphology).

Per 2-D label map ``[y, x]`` (0 bg, 1 LV blood, 2 LV myocardium, 3 RV blood):

1. LV blood pool and RV blood pool: keep the largest connected component.
2. Myocardium: keep the connected component that touches the LV blood pool (the largest
   one when several or none do).
3. Ring-shaped myocardium: holes enclosed by blood pool + myocardium become LV blood pool
   (papillary-muscle gaps, speckle), and holes inside the myocardium itself become myocardium.

Pixels removed by these rules become background.  The rules never add labels outside the
filled outline of the LV, so a missing structure stays missing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components

from cardiomm.data.labels import LV_BLOOD, LV_MYOCARDIUM, RV_BLOOD

__all__ = ["largest_component", "clean_labels"]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean ``[y, x]``: the largest 8-connected component of ``mask`` (empty stays empty)."""
    comp = connected_components(np.asarray(mask, dtype=bool), connectivity=2)
    if comp.max() == 0:
        return comp > 0
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return comp == int(np.argmax(sizes))


def _myocardium(myo: np.ndarray, lv: np.ndarray) -> np.ndarray:
    comp = connected_components(myo, connectivity=2)
    if comp.max() == 0:
        return myo
    touching = np.unique(comp[ndimage.binary_dilation(lv, iterations=2) & myo])
    touching = touching[touching > 0]
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    if touching.size:
        return comp == int(touching[np.argmax(sizes[touching])])
    return comp == int(np.argmax(sizes))


def clean_labels(labels: np.ndarray) -> np.ndarray:
    """Apply the rules of the module docstring to uint8 labels ``[..., y, x]`` (each 2-D map alone)."""
    arr = np.asarray(labels)
    if arr.ndim < 2:
        raise ValueError(f"labels must be [..., y, x], got shape {list(arr.shape)}")
    flat = arr.reshape(-1, *arr.shape[-2:])
    out = np.zeros_like(flat, dtype=np.uint8)
    for i, lab in enumerate(flat):
        lv = largest_component(lab == LV_BLOOD)
        rv = largest_component(lab == RV_BLOOD)
        myo = _myocardium(lab == LV_MYOCARDIUM, lv)
        myo = ndimage.binary_fill_holes(myo) & ~lv if not lv.any() else myo
        filled = ndimage.binary_fill_holes(lv | myo)
        lv = lv | (filled & ~myo)
        res = np.zeros(lab.shape, np.uint8)
        res[rv] = RV_BLOOD
        res[myo] = LV_MYOCARDIUM
        res[lv] = LV_BLOOD
        out[i] = res
    return out.reshape(arr.shape)
