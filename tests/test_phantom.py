"""The numerical beating-heart phantom: reproducibility, anatomy, volumes, contrast."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cardiomm.data.phantom import TISSUES, make_phantom, volume_curve
from segment.biomarkers import compute_biomarkers

SMALL = dict(n_slices=8, n_frames=8, matrix=(96, 96), pixel_spacing_mm=(3.0, 3.0), slice_thickness_mm=8.0)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(11, **SMALL, edv_ml=150.0, esv_ml=65.0, lv_mass_g=120.0, rv_edv_ml=165.0, rv_esv_ml=80.0)


def test_same_seed_same_phantom_and_different_seeds_differ():
    a = make_phantom(5, **SMALL)
    b = make_phantom(5, **SMALL)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.truth == b.truth
    others = [make_phantom(s, **SMALL) for s in (6, 7)]
    edvs = {round(p.truth.lvedv_ml, 3) for p in [a, *others]}
    centres = {round(p.design.anatomy["lv_centre_x_mm"], 3) for p in [a, *others]}
    assert len(edvs) == 3 and len(centres) == 3
    assert not np.array_equal(a.labels, others[0].labels)


def test_shapes_dtypes_and_ranges_at_default_size():
    p = make_phantom(0)
    assert p.images.shape == p.labels.shape == p.tissue.shape == (8, 20, 192, 192)
    assert p.images.dtype == np.float32 and p.labels.dtype == np.uint8
    assert p.images.min() >= 0 and p.images.max() == pytest.approx(1.0)
    assert set(np.unique(p.labels)) <= {0, 1, 2, 3}
    assert 55 <= p.heart_rate_bpm <= 90
    assert p.frame_times_ms[1] == pytest.approx(60000.0 / p.heart_rate_bpm / 20)
    d = p.design
    assert 100 <= d.edv_ml <= 190 and 80 <= d.lv_mass_g <= 160
    assert 35 <= 100 * (d.edv_ml - d.esv_ml) / d.edv_ml <= 70


def test_requested_volumes_and_mass_are_reached(phantom):
    t = phantom.truth
    assert t.lvedv_ml == pytest.approx(150.0, rel=0.1)
    assert t.lvesv_ml == pytest.approx(65.0, rel=0.1)
    assert t.lv_mass_g == pytest.approx(120.0, rel=0.1)
    assert t.rvedv_ml == pytest.approx(165.0, rel=0.1)
    assert t.rvesv_ml == pytest.approx(80.0, rel=0.1)
    # myocardium is incompressible: its volume hardly changes over the cycle
    myo = np.array(t.lv_myocardium_volumes_ml)
    assert myo.max() / myo.min() < 1.1
    # ED is frame 0, ES the designed end-systolic frame
    assert t.ed_frame == 0 and t.es_frame == phantom.design.es_frame
    assert t.heart_rate_bpm == phantom.heart_rate_bpm


def test_truth_is_computed_from_the_labels(phantom):
    voxel_ml = np.prod(phantom.pixel_spacing_mm) * phantom.slice_spacing_mm / 1000.0
    lv = np.count_nonzero(phantom.labels == 1, axis=(0, 2, 3)) * voxel_ml
    edv, esv = lv.max(), lv.min()
    assert phantom.truth.lvef_percent == pytest.approx(100 * (edv - esv) / edv)
    assert phantom.truth.cardiac_output_l_min == pytest.approx((edv - esv) * phantom.heart_rate_bpm / 1000)
    again = compute_biomarkers(phantom.labels, phantom.pixel_spacing_mm, phantom.slice_spacing_mm,
                               heart_rate_bpm=phantom.heart_rate_bpm)
    assert again == phantom.truth


def test_lv_blood_inside_myocardium_and_rv_next_to_septum(phantom):
    n_rv = 0
    for s in range(phantom.labels.shape[0]):
        for t in range(phantom.labels.shape[1]):
            lab = phantom.labels[s, t]
            lv = lab == 1
            if lv.any():
                ring = ndimage.binary_dilation(lv) & ~lv
                assert np.all(lab[ring] == 2), (s, t)  # blood pool is enclosed by myocardium
            rv = lab == 3
            if rv.any():
                n_rv += 1
                assert np.any(lab[ndimage.binary_dilation(rv)] == 2), (s, t)  # RV touches the septum
                assert not np.any(lab[ndimage.binary_dilation(rv)] == 1)  # never touches LV blood
    assert n_rv >= phantom.labels.shape[1] * 3


def test_other_tissues_stay_out_of_the_labels(phantom):
    for name in ("lung", "fat", "liver", "bone", "other_blood", "rv_wall"):
        assert np.all(phantom.labels[phantom.tissue == TISSUES[name]] == 0), name
    assert np.all(phantom.labels[phantom.tissue == TISSUES["papillary"]] == 1)


def test_bssfp_contrast_ordering(phantom):
    img, tis = phantom.images, phantom.tissue
    mean = {name: float(img[tis == code].mean()) for name, code in TISSUES.items() if np.any(tis == code)}
    assert mean["lv_blood"] > 2 * mean["lv_myocardium"]
    assert mean["fat"] > 2 * mean["lv_myocardium"]
    assert mean["lung"] < 0.25 * mean["lv_myocardium"]
    assert mean["liver"] > mean["lung"]
    # air is exactly zero away from the (anti-aliased) body edge
    air = ndimage.binary_erosion(tis == TISSUES["air"], structure=np.ones((1, 1, 3, 3), bool))
    assert air.any() and np.all(img[air] == 0.0)
    assert 0.0 < mean["air"] < 0.05


def test_heart_contracts_with_a_physiological_curve():
    curve = volume_curve(30, 150.0, 60.0, es_frame=10)
    assert curve[0] == 150.0 and curve.argmin() == 10 and curve[10] == pytest.approx(60.0)
    assert np.all(np.diff(curve[:11]) < 0) and np.all(np.diff(curve[10:]) >= 0)
    # fast early filling: more than half of the stroke volume back in the first third of diastole
    assert curve[17] - 60.0 > 0.5 * 90.0
    assert curve[-1] > 140.0


def test_longitudinal_shortening_moves_the_base():
    still = make_phantom(2, **SMALL, longitudinal_shortening=0.0)
    moving = make_phantom(2, **SMALL, longitudinal_shortening=0.2)
    es = moving.design.es_frame
    assert np.any(still.labels[0, es] == 1)
    assert not np.any(moving.labels[0, es] == 1)  # basal slice shows the atrium at ES
    assert np.any(moving.tissue[0, es] == TISSUES["other_blood"])
    assert moving.truth.lvesv_ml == pytest.approx(moving.design.esv_ml, rel=0.1)


def test_slice_gap_sets_the_spacing_used_for_volumes():
    p = make_phantom(3, **{**SMALL, "n_slices": 6}, slice_gap_mm=2.0, edv_ml=140.0, esv_ml=60.0)
    assert p.slice_thickness_mm == 8.0 and p.slice_spacing_mm == 10.0
    assert p.truth.slice_spacing_mm == 10.0
    assert p.truth.lvedv_ml == pytest.approx(140.0, rel=0.1) and p.truth.lvesv_ml == pytest.approx(60.0, rel=0.1)


def test_single_frame_phantom_reports_no_ef():
    p = make_phantom(1, **{**SMALL, "n_frames": 1})
    assert p.truth.lvef_percent is None and p.truth.lv_mass_g is not None
    assert p.truth.warnings


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_slices=3), "cover"),
        (dict(matrix=(48, 48)), "field of view"),
        (dict(edv_ml=80.0, esv_ml=90.0), "smaller than edv_ml"),
        (dict(lv_mass_g=-1.0), "lv_mass_g"),
        (dict(n_frames=0), "n_frames"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom(0, **{**SMALL, **kwargs})
