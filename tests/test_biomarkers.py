"""Biomarkers from label stacks whose volumes can be computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segment.biomarkers import (
    LV_BLOOD,
    LV_MYOCARDIUM,
    RV_BLOOD,
    CardiacBiomarkers,
    compute_biomarkers,
    label_volumes_ml,
)

PIXEL = (1.25, 2.0)  # mm (row, col): pixel area 2.5 mm^2
SLICE = 8.0  # mm -> voxel = 20 mm^3 = 0.02 mL
VOXEL_ML = 1.25 * 2.0 * 8.0 / 1000.0


def _box_stack(lv_side: list[int], myo_width: int = 2, rv_cols: list[int] | None = None, n_slices: int = 3) -> np.ndarray:
    """LV blood = square of side lv_side[t] in slices 0..n_slices-1, a myocardial frame of
    width myo_width around it, and an RV box of 4 rows x rv_cols[t] columns to its left."""
    n_frames = len(lv_side)
    labels = np.zeros((n_slices + 1, n_frames, 40, 40), dtype=np.uint8)  # last slice stays empty
    for t, side in enumerate(lv_side):
        y0, x0 = 20 - side // 2, 22 - side // 2
        for s in range(n_slices):
            labels[s, t, y0 - myo_width : y0 + side + myo_width, x0 - myo_width : x0 + side + myo_width] = LV_MYOCARDIUM
            labels[s, t, y0 : y0 + side, x0 : x0 + side] = LV_BLOOD
            if rv_cols is not None:
                xr = x0 - myo_width
                labels[s, t, 18:22, xr - rv_cols[t] : xr] = RV_BLOOD
    return labels


def test_box_volumes_by_hand():
    sides = [10, 9, 6, 8, 10]
    rv_cols = [8, 7, 4, 6, 8]
    labels = _box_stack(sides, rv_cols=rv_cols)
    bm = compute_biomarkers(labels, PIXEL, SLICE, heart_rate_bpm=60.0)
    lv_expected = [3 * s * s * VOXEL_ML for s in sides]
    assert np.allclose(bm.lv_volumes_ml, lv_expected)
    assert bm.ed_frame == 0 and bm.es_frame == 2
    assert bm.lvedv_ml == pytest.approx(3 * 100 * VOXEL_ML)
    assert bm.lvesv_ml == pytest.approx(3 * 36 * VOXEL_ML)
    assert bm.lvsv_ml == pytest.approx(3 * 64 * VOXEL_ML)
    assert bm.lvef_percent == pytest.approx(64.0)
    # myocardium at ED: (10 + 4)^2 - 10^2 = 96 pixels per slice
    assert bm.lv_mass_g == pytest.approx(3 * 96 * VOXEL_ML * 1.05)
    assert bm.lv_mass_frame == 0
    assert bm.rvedv_ml == pytest.approx(3 * 4 * 8 * VOXEL_ML)
    assert bm.rvesv_ml == pytest.approx(3 * 4 * 4 * VOXEL_ML)
    assert bm.rvef_percent == pytest.approx(50.0)
    # cardiac output: SV (mL) x HR (1/min) / 1000 -> L/min
    assert bm.cardiac_output_l_min == pytest.approx(3 * 64 * VOXEL_ML * 60.0 / 1000.0)
    assert bm.warnings == ()


def test_cylinder_volume_and_spacing_scaling():
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= 20.0**2
    labels = np.zeros((5, 2, 64, 64), dtype=np.int64)
    labels[:, 0][:, disc] = LV_BLOOD
    labels[:, 1][:, (yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= 10.0**2] = LV_BLOOD
    n_pix = int(disc.sum())
    vols = label_volumes_ml(labels, (1.0, 1.0), 10.0)
    assert vols[LV_BLOOD][0] == pytest.approx(5 * n_pix * 10.0 / 1000.0)
    # a cylinder of radius 20 mm and height 50 mm is ~62.8 mL; the pixelated one is close
    assert vols[LV_BLOOD][0] == pytest.approx(np.pi * 20.0**2 * 50.0 / 1000.0, rel=0.02)
    # doubling every spacing multiplies volumes by 8
    vols2 = label_volumes_ml(torch.as_tensor(labels), (2.0, 2.0), 20.0)
    assert np.allclose(vols2[LV_BLOOD], 8 * vols[LV_BLOOD])


def test_caller_given_frames_and_to_dict_roundtrip():
    labels = _box_stack([10, 9, 6, 8, 10], rv_cols=[8, 7, 4, 6, 8])
    bm = compute_biomarkers(labels, PIXEL, SLICE, ed_frame=4, es_frame=3)
    assert bm.lvesv_ml == pytest.approx(3 * 64 * VOXEL_ML)
    assert bm.lvef_percent == pytest.approx(36.0)
    assert bm.cardiac_output_l_min is None
    assert any("heart rate" in w for w in bm.warnings)
    d = json.loads(json.dumps(bm.to_dict()))
    for key in ("lvedv_ml", "lvef_percent", "lv_mass_g", "cardiac_output_l_min", "rvef_percent", "lv_volumes_ml"):
        assert key in d
    assert CardiacBiomarkers.from_dict(d) == bm


def test_rv_own_frames():
    labels = _box_stack([10, 9, 6, 8, 10], rv_cols=[8, 3, 4, 6, 8])
    assert compute_biomarkers(labels, PIXEL, SLICE).rvesv_ml == pytest.approx(3 * 4 * 4 * VOXEL_ML)
    assert compute_biomarkers(labels, PIXEL, SLICE, rv_frames="own").rvesv_ml == pytest.approx(3 * 4 * 3 * VOXEL_ML)


def test_single_frame_gives_volumes_and_mass_but_no_ef():
    labels = _box_stack([10], rv_cols=[8])
    bm = compute_biomarkers(labels, PIXEL, SLICE, heart_rate_bpm=70)
    assert bm.lv_volumes_ml[0] == pytest.approx(3 * 100 * VOXEL_ML)
    assert bm.lv_mass_g == pytest.approx(3 * 96 * VOXEL_ML * 1.05)
    assert bm.lvef_percent is None and bm.lvsv_ml is None and bm.rvef_percent is None
    assert bm.cardiac_output_l_min is None
    assert any("one frame" in w for w in bm.warnings)


def test_missing_rv_gives_none_with_warning():
    bm = compute_biomarkers(_box_stack([10, 6]), PIXEL, SLICE)
    assert bm.rvedv_ml is None and bm.rvef_percent is None and bm.rvsv_ml is None
    assert bm.lvef_percent == pytest.approx(64.0)
    assert any("RV" in w for w in bm.warnings)


def test_constant_volume_is_not_reported_as_ef():
    bm = compute_biomarkers(_box_stack([8, 8, 8]), PIXEL, SLICE)
    assert bm.lvef_percent is None
    assert any("same frame" in w for w in bm.warnings)


@pytest.mark.parametrize(
    "labels,pixel,slc,match",
    [
        (np.zeros((4, 4, 4), np.uint8), PIXEL, SLICE, "4 axes"),
        (np.zeros((0, 2, 4, 4), np.uint8), PIXEL, SLICE, "empty"),
        (np.zeros((1, 2, 4, 4), np.uint8), (0.0, 1.0), SLICE, "pixel_spacing_mm"),
        (np.zeros((1, 2, 4, 4), np.uint8), (1.0, 1.0), -2.0, "slice_spacing_mm"),
        (np.zeros((1, 2, 4, 4), np.uint8), (1.0,), SLICE, "pixel_spacing_mm"),
        (np.full((1, 2, 4, 4), 7, np.uint8), PIXEL, SLICE, "outside the label"),
        (np.full((1, 2, 4, 4), 0.5), PIXEL, SLICE, "non-integer"),
    ],
)
def test_bad_input_raises(labels, pixel, slc, match):
    with pytest.raises(ValueError, match=match):
        compute_biomarkers(labels, pixel, slc)


def test_bad_frame_index_and_heart_rate():
    labels = _box_stack([10, 6])
    with pytest.raises(ValueError, match="ed_frame"):
        compute_biomarkers(labels, PIXEL, SLICE, ed_frame=5)
    with pytest.raises(ValueError, match="heart_rate_bpm"):
        compute_biomarkers(labels, PIXEL, SLICE, heart_rate_bpm=0)
