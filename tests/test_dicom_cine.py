"""DICOM cine stack reader and Sunnybrook contour labels, on the real Sunnybrook data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cardiomm.data.contours import (
    LABELS,
    polygon_to_mask,
    read_contour,
    sunnybrook_contour_files,
    sunnybrook_labels,
)
from cardiomm.data.dicom_cine import CineStack, read_dicom_cine
from cardiomm.data.errors import DataFileError

SUNNYBROOK = Path(__file__).parents[1].parent / "shared" / "data" / "sunnybrook"
PATIENT = SUNNYBROOK / "dicoms" / "SCD0000101"
CONTOURS = SUNNYBROOK / "contourfiles"

pytestmark = [
    pytest.mark.skipif(not PATIENT.is_dir(), reason=f"Sunnybrook data not found at {SUNNYBROOK}"),
    # the Sunnybrook UIDs have leading zeros; pydicom warns when the tests rewrite files
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
]


@pytest.fixture(scope="module")
def cine() -> CineStack:
    return read_dicom_cine(PATIENT)


@pytest.fixture(scope="module")
def labels(cine) -> dict[tuple[int, int], np.ndarray]:
    return sunnybrook_labels(CONTOURS, cine)  # finds link.csv next to contourfiles/


def _dcm(number: int) -> pydicom.Dataset:
    return pydicom.dcmread(PATIENT / f"{number}.dcm")


def _copy_slices(dest: Path, n_slices: int = 2) -> Path:
    """Copy the first ``n_slices`` slices (20 files each) of SCD0000101 into ``dest``."""
    dest.mkdir()
    for number in range(1, 20 * n_slices + 1):
        shutil.copy(PATIENT / f"{number}.dcm", dest / f"{number}.dcm")
    return dest


# --------------------------------------------------------------------------- stack


def test_stack_shape_spacing_and_metadata(cine):
    assert cine.images.shape == (12, 20, 256, 256) and cine.images.dtype == np.float32
    assert cine.pixel_spacing_mm == pytest.approx((1.367188, 1.367188))
    assert cine.slice_thickness_mm == pytest.approx(10.0)
    assert cine.slice_spacing_source == "image_position"
    assert cine.slice_spacing_mm == pytest.approx(10.0, abs=1e-3)
    np.testing.assert_allclose(np.abs(np.diff(cine.slice_locations_mm)), 10.0, atol=0.01)
    assert cine.trigger_times_ms.shape == (12, 20)
    assert np.all(np.diff(cine.trigger_times_ms, axis=1) > 0)  # frames in time order
    md = cine.metadata
    assert (md.modality, md.view, md.n_slices, md.n_frames) == ("cine", "sax", 12, 20)
    assert md.vendor == "GE MEDICAL SYSTEMS" and md.field_strength_t == 1.5
    assert md.tr_ms == pytest.approx(3.349) and md.te_ms == pytest.approx(1.532)
    assert md.heart_rate_bpm == 80 and md.pixel_spacing_mm == cine.pixel_spacing_mm
    assert md.extra["patient_id"] == "SCD0000101"


def test_images_and_files_match_the_dicom_files(cine):
    # Sunnybrook numbers images slice by slice (base first), 20 trigger times each.
    assert cine.slice_order == "base_to_apex"
    for s, f in [(0, 0), (3, 7), (11, 19)]:
        number = 20 * s + f + 1
        assert cine.files[s][f].name == f"{number}.dcm"
        ds = _dcm(number)
        np.testing.assert_array_equal(cine.images[s, f], ds.pixel_array.astype(np.float32))
        assert cine.trigger_times_ms[s, f] == pytest.approx(float(ds.TriggerTime))
        assert cine.index_of(PATIENT / f"{number}.dcm") == (s, f)
    # slice 0 is basal: the apex direction (left, anterior, inferior) increases with slice index
    apex = np.array([1.0, -1.0, -1.0]) / np.sqrt(3)
    assert np.all(np.diff(cine.image_positions_mm @ apex) > 0)


def test_file_list_and_single_slice(tmp_path):
    files = [PATIENT / f"{n}.dcm" for n in range(40, 0, -1)]  # order must not matter
    two = read_dicom_cine(files)
    assert two.images.shape == (2, 20, 256, 256)
    assert two.slice_spacing_mm == pytest.approx(10.0, abs=1e-3)
    one = read_dicom_cine(files[20:])  # files 20..1: slice 0 only
    assert one.images.shape == (1, 20, 256, 256)
    assert one.slice_spacing_source == "spacing_between_slices" and one.slice_spacing_mm == 10.0


def test_rescale_slope_intercept(tmp_path):
    folder = _copy_slices(tmp_path / "p", n_slices=1)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-100"
        ds.save_as(path)
    stack = read_dicom_cine(folder)
    np.testing.assert_allclose(stack.images[0, 4], _dcm(5).pixel_array * 2.5 - 100.0)


def test_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileError, match=r"empty: folder holds no files"):
        read_dicom_cine(empty)

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no images here")
    with pytest.warns(UserWarning, match="skipped 1"), pytest.raises(DataFileError, match="no DICOM images"):
        read_dicom_cine(notes)


def test_non_dicom_files_are_skipped_or_refused(tmp_path):
    folder = _copy_slices(tmp_path / "p")
    (folder / "DICOMDIR.txt").write_text("index")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        stack = read_dicom_cine(folder)
    assert stack.images.shape == (2, 20, 256, 256)
    assert [p.name for p, _ in stack.skipped] == ["DICOMDIR.txt"]
    with pytest.raises(DataFileError, match=r"DICOMDIR\.txt: not a DICOM file"):
        read_dicom_cine(folder, on_non_dicom="error")


def test_missing_frame_names_the_slice(tmp_path):
    folder = _copy_slices(tmp_path / "p")
    (folder / "27.dcm").unlink()  # slice 1, frame 6
    with pytest.raises(DataFileError, match=r"p: incomplete cine: slice 1 at -48\.90 mm has 19 frames"):
        read_dicom_cine(folder)


def test_inconsistent_sizes_and_missing_spacing(tmp_path):
    folder = _copy_slices(tmp_path / "sizes")
    ds = pydicom.dcmread(folder / "5.dcm")
    small = np.ascontiguousarray(ds.pixel_array[:128, :64])
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    ds.save_as(folder / "5.dcm")
    with pytest.raises(DataFileError, match=r"different sizes.*\(128, 64\).*\(256, 256\)"):
        read_dicom_cine(folder)

    folder = _copy_slices(tmp_path / "spacing")
    ds = pydicom.dcmread(folder / "3.dcm")
    del ds.PixelSpacing
    ds.save_as(folder / "3.dcm")
    with pytest.raises(DataFileError, match=r"PixelSpacing.*missing.*3\.dcm"):
        read_dicom_cine(folder)


def test_mixed_series_and_repeated_trigger_time(tmp_path):
    folder = _copy_slices(tmp_path / "series")
    ds = pydicom.dcmread(folder / "8.dcm")
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.save_as(folder / "8.dcm")
    with pytest.raises(DataFileError, match="2 series mixed"):
        read_dicom_cine(folder)
    stack = read_dicom_cine(folder, series_uid="1.2.3.4")
    assert stack.images.shape == (1, 1, 256, 256)

    folder = _copy_slices(tmp_path / "trigger")
    ds = pydicom.dcmread(folder / "8.dcm")
    ds.TriggerTime = pydicom.dcmread(folder / "7.dcm").TriggerTime
    ds.save_as(folder / "8.dcm")
    with pytest.raises(DataFileError, match="share trigger time"):
        read_dicom_cine(folder)


# --------------------------------------------------------------------------- contours


def test_polygon_mask_axes_and_pixel_centres():
    # rectangle x in [1.5, 4.5], y in [0.5, 2.5]: centres of columns 2..4 and rows 1..2 inside
    square = np.array([[1.5, 0.5], [4.5, 0.5], [4.5, 2.5], [1.5, 2.5]])
    mask = polygon_to_mask(square, (4, 6))
    want = np.zeros((4, 6), bool)
    want[1:3, 2:5] = True
    np.testing.assert_array_equal(mask, want)
    with pytest.raises(ValueError, match="polygon must be"):
        polygon_to_mask(np.zeros((2, 2)), (4, 6))


def test_read_contour(tmp_path):
    points = read_contour(CONTOURS / "SC-HF-I-1" / "i-contours" / "IM-0001-0048-icontour-manual.txt")
    assert points.ndim == 2 and points.shape[1] == 2 and points.shape[0] > 20
    assert points[0] == pytest.approx([120.5, 137.5])  # first line of the file: "120.50 137.50"
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n4 5 6\n7 8 9\n")
    with pytest.raises(DataFileError, match=r"bad\.txt: expected 2 columns"):
        read_contour(bad)
    bad.write_text("x y\n")
    with pytest.raises(DataFileError, match="not an 'x y' point list"):
        read_contour(bad)


def test_labels_link_contour_numbers_to_images(cine, labels):
    files = sunnybrook_contour_files(CONTOURS / "SC-HF-I-1", cine)
    assert list(files) == list(labels)
    for (s, f), kinds in files.items():
        number = int(kinds["i"].name.split("-")[2])
        assert cine.files[s][f].name == f"{number}.dcm"
    assert set(LABELS) == {0, 1, 2, 3}
    for label in labels.values():
        assert label.dtype == np.uint8 and label.shape == (256, 256)
        assert set(np.unique(label)) <= {0, 1, 2}


def test_ed_es_and_overlay(cine, labels):
    ed = {s: f for (s, f), lab in labels.items() if (lab == 2).any()}  # o-contours only at ED
    es = {s: f for (s, f), lab in labels.items() if not (lab == 2).any()}
    assert set(ed) == set(es) and len(ed) >= 5
    assert len(set(ed.values())) == 1 and len(set(es.values())) == 1  # same phase on every slice
    ed_frame, es_frame = next(iter(ed.values())), next(iter(es.values()))
    assert (ed_frame, es_frame) == (18, 7)
    for s in ed:
        bp_ed = int((labels[(s, ed_frame)] == 1).sum())
        bp_es = int((labels[(s, es_frame)] == 1).sum())
        assert bp_ed > bp_es, f"slice {s}: blood pool at ED {bp_ed} px <= ES {bp_es} px"
        lab, img = labels[(s, ed_frame)], cine.images[s, ed_frame]
        # the blood pool lies inside the epicardium, and myocardium surrounds it on all sides
        kinds = sunnybrook_contour_files(CONTOURS / "SC-HF-I-1", cine)[(s, ed_frame)]
        endo, epi = (polygon_to_mask(read_contour(kinds[k]), lab.shape) for k in ("i", "o"))
        assert (endo & ~epi).sum() <= 0.01 * endo.sum()
        cy, cx = np.argwhere(lab == 1).mean(axis=0)
        my, mx = np.nonzero(lab == 2)
        octants = np.floor((np.arctan2(my - cy, mx - cx) + np.pi) / (np.pi / 4)).astype(int) % 8
        assert set(octants.tolist()) == set(range(8)), f"slice {s}: myocardium is not a ring"
        # SSFP: blood is bright, myocardium dark; the transposed mask does not fit as well
        contrast = img[lab == 1].mean() / img[lab == 2].mean()
        assert contrast > 1.5
        swapped = lab.T
        assert contrast > img[swapped == 1].mean() / img[swapped == 2].mean()


def test_contours_of_another_patient_are_refused(cine, tmp_path):
    with pytest.raises(DataFileError, match=r"SC-HF-I-2.*SCD0000101.*SC-HF-I-1"):
        sunnybrook_labels(CONTOURS / "SC-HF-I-2", cine, link_csv=SUNNYBROOK / "link.csv")
    with pytest.raises(DataFileError, match="no link.csv"):
        sunnybrook_labels(tmp_path, cine)
