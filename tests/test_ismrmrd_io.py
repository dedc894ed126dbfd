"""ISMRMRD raw/image reading and writing: round trips, real files from other software, bad input."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
import torch

from cardiomm.data.errors import DataFileError, UnsupportedTrajectoryError
from cardiomm.data.ismrmrd_header import build_ismrmrd_header, parse_ismrmrd_header
from cardiomm.data.ismrmrd_image import list_ismrmrd_image_groups, read_ismrmrd_images, write_ismrmrd_images
from cardiomm.data.ismrmrd_raw import (
    DIGEST_ATTRIBUTE,
    estimate_noise_covariance,
    inspect_ismrmrd,
    prewhitening_matrix,
    read_hdf5_records,
    read_ismrmrd_raw,
    read_ismrmrd_samples,
    write_ismrmrd_raw,
)
from cardiomm.data.metadata import ScanMetadata
from recon.conventions import fft2c
from recon.operators import SenseOp

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ismrmrd"
CXX = SHARED / "ismrmrd_cxx_shepp_logan_m128_c8_R2.h5"
KOMA = [SHARED / "Koma_signal.mrd", SHARED / "Koma_MRF_signal.mrd"]
BONN_PROTOCOLS = sorted((SHARED / "bonn").glob("dependency_pulseq_protocols_*.h5"))
BONN_IMAGES = sorted((SHARED / "bonn").glob("recon_scanner_*.h5")) + [SHARED / "bonn" / "debug_out.h5"]
needs_shared = pytest.mark.skipif(not CXX.exists(), reason="shared ISMRMRD files not present")

FULL_METADATA = ScanMetadata(
    source="unit test",
    simulated=True,
    modality="cine",
    view="sax",
    field_strength_t=1.5,
    vendor="CardioMM",
    model="simulator",
    trajectory="cartesian",
    encoded_fov_mm=(320.0, 260.0, 8.0),
    recon_fov_mm=(320.0, 260.0, 8.0),
    pixel_spacing_mm=(260.0 / 12, 320.0 / 16),
    slice_thickness_mm=8.0,
    slice_spacing_mm=10.0,
    tr_ms=3.2,
    te_ms=1.6,
    flip_angle_deg=55.0,
    heart_rate_bpm=62.5,
    acceleration=3.0,
    mask_pattern="kt_gaussian",
    extra={"subject": "p1", "seed": 7},
)


def _crandn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _scan(rng: np.random.Generator, n_sl: int = 2, n_c: int = 3, n_t: int = 4, ny: int = 12, nx: int = 16):
    """Random k-space with a line mask (different per frame), an asymmetric-echo line, ACS and noise."""
    k = _crandn(rng, n_sl, n_c, n_t, ny, nx)
    mask = np.zeros((n_sl, n_t, ny, nx), bool)
    for t in range(n_t):
        mask[:, t, t % 3 :: 3, :] = True
    mask[:, :, ny // 2 - 2 : ny // 2 + 2, :] = True  # fully sampled centre
    mask[0, 1, 1, :] = False
    mask[0, 1, 1, nx // 2 - 3 :] = True  # partial echo: 3 samples before the centre acquired
    k = np.where(mask[:, None], k, 0).astype(np.complex64)
    acs = np.zeros((n_sl, n_c, 1, ny, nx), np.complex64)
    acs[:, :, 0, ny // 2 - 2 : ny // 2 + 2] = k[:, :, 0, ny // 2 - 2 : ny // 2 + 2]  # = imaging lines of frame 0
    acs[:, :, 0, ny // 2 + 3] = _crandn(rng, n_sl, n_c, nx)  # calibration-only line
    noise = _crandn(rng, n_c, 3 * nx + 5)
    return k, mask, acs, noise


def _compare_metadata(read: ScanMetadata, written: ScanMetadata, **expected_changes) -> None:
    want = dataclasses.replace(written, **expected_changes)
    for f in dataclasses.fields(ScanMetadata):
        if f.name in ("source", "extra"):
            continue
        got, exp = getattr(read, f.name), getattr(want, f.name)
        if isinstance(exp, float):
            assert got == pytest.approx(exp, rel=1e-12), f.name
        elif isinstance(exp, tuple):
            assert got == pytest.approx(exp, rel=1e-12), f.name
        else:
            assert got == exp, f.name
    user = {k: v for k, v in read.extra.items() if k not in ("ismrmrd", "ismrmrd_images")}
    assert user == {k: v for k, v in want.extra.items() if k != "ismrmrd"}


# --------------------------------------------------------------------------- round trips


def test_raw_round_trip_is_bitwise_with_mask_acs_noise_and_header(tmp_path):
    rng = np.random.default_rng(0)
    k, mask, acs, noise = _scan(rng)
    path = tmp_path / "scan.h5"
    md = FULL_METADATA.with_updates(encoded_matrix=(12, 16), recon_matrix=(12, 16))
    write_ismrmrd_raw(path, k, md, mask=mask, acs=acs, noise=noise)
    scan = read_ismrmrd_raw(path, prewhiten=False)

    assert scan.kspace.dtype == np.complex64 and scan.kspace.shape == k.shape
    assert scan.kspace[np.broadcast_to(mask[:, None], k.shape)].tobytes() == k[np.broadcast_to(mask[:, None], k.shape)].tobytes()
    assert np.all(scan.kspace[~np.broadcast_to(mask[:, None], k.shape)] == 0)
    np.testing.assert_array_equal(scan.mask, mask)
    assert scan.acs is not None and scan.acs.shape == acs.shape
    assert scan.acs.tobytes() == acs.tobytes()
    assert not scan.prewhitened
    np.testing.assert_allclose(scan.noise_covariance, estimate_noise_covariance(noise), rtol=1e-6, atol=1e-7)
    _compare_metadata(scan.metadata, md, n_coils=3, n_frames=4, n_slices=2)
    info = scan.metadata.extra["ismrmrd"]
    assert info["n_calibration"] == 2 * (4 + 1) and info["schema_valid"] is True
    assert scan.metadata.source == str(path)


def test_raw_round_trip_from_torch_with_line_mask_and_default_metadata(tmp_path):
    rng = np.random.default_rng(1)
    k = torch.from_numpy(_crandn(rng, 1, 2, 3, 8, 10))
    line_mask = torch.zeros(3, 8, 1, dtype=torch.bool)
    line_mask[:, ::2] = True
    line_mask[:, 3:5] = True
    expected = (k * line_mask).numpy()
    path = tmp_path / "t.mrd"
    write_ismrmrd_raw(path, k, ScanMetadata(), mask=line_mask)
    scan = read_ismrmrd_raw(path)
    np.testing.assert_array_equal(scan.kspace, expected)
    np.testing.assert_array_equal(scan.mask, np.broadcast_to(line_mask.numpy()[None], (1, 3, 8, 10)))
    assert scan.acs is None and scan.noise_covariance is None
    md = scan.metadata
    assert md.simulated is False and md.field_strength_t is None and md.vendor is None
    assert md.encoded_matrix == (8, 10) and md.n_frames == 3
    assert md.acceleration == pytest.approx(8 / 5)  # effective R from the sampled ky lines


def test_written_file_is_standard_ismrmrd(tmp_path):
    """The reference Python library reads our file: counters, flags, centre sample, schema-valid header."""
    rng = np.random.default_rng(2)
    k, mask, acs, noise = _scan(rng, n_sl=1, n_t=2)
    path = tmp_path / "std.h5"
    write_ismrmrd_raw(path, k, FULL_METADATA, mask=mask, acs=acs, noise=noise)
    ds = ismrmrd.Dataset(str(path), "dataset", mode="r")
    try:
        header = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
        assert header.encoding[0].encodedSpace.matrixSize.y == 12
        assert header.encoding[0].encodingLimits.kspace_encoding_step_1.center == 6
        assert header.acquisitionSystemInformation.systemFieldStrength_T == 1.5
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    finally:
        ds.close()
    noise_acqs = [a for a in acqs if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert noise_acqs and np.concatenate([a.data for a in noise_acqs], axis=1).tobytes() == noise.tobytes()
    imaging = [a for a in acqs if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert imaging[0].is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE) and imaging[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)
    assert acqs[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    calib_only = [a for a in imaging if a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)]
    both = [a for a in imaging if a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)]
    assert [a.idx.kspace_encode_step_1 for a in calib_only] == [9] and len(both) == 4
    partial = [a for a in imaging if a.idx.phase == 1 and a.idx.kspace_encode_step_1 == 1]
    assert partial[0].number_of_samples == 11 and partial[0].center_sample == 8 - 5
    for a in imaging:
        if a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION):
            continue
        y, t = a.idx.kspace_encode_step_1, a.idx.phase
        start = 8 - a.center_sample
        np.testing.assert_array_equal(a.data, k[0, :, t, y, start : start + a.number_of_samples])


def test_image_round_trip_magnitude_and_complex(tmp_path):
    rng = np.random.default_rng(3)
    images = _crandn(rng, 2, 3, 12, 16)
    md = FULL_METADATA.with_updates(n_coils=8)
    path = tmp_path / "img.h5"
    write_ismrmrd_images(path, np.abs(images), md)
    got, md2 = read_ismrmrd_images(path)
    assert got.dtype == np.float32 and got.tobytes() == np.abs(images).astype(np.float32).tobytes()
    for name in ("simulated", "modality", "view", "field_strength_t", "tr_ms", "te_ms", "heart_rate_bpm", "slice_thickness_mm", "slice_spacing_mm"):
        assert getattr(md2, name) == getattr(md, name), name
    assert md2.recon_matrix == (12, 16) and md2.n_frames == 3 and md2.n_slices == 2
    assert md2.pixel_spacing_mm == pytest.approx((260.0 / 12, 320.0 / 16))
    assert md2.extra["slice_positions_mm"] == [[0.0, 0.0, -5.0], [0.0, 0.0, 5.0]]

    # complex, with a custom orientation that must come back
    md3 = md2.with_updates(extra={**md2.extra, "orientation": {"read_dir": [0, 1, 0], "phase_dir": [1, 0, 0], "slice_dir": [0, 0, -1]}})
    write_ismrmrd_images(path, torch.from_numpy(images), md3, series="recon", image_type="complex")
    assert list_ismrmrd_image_groups(path) == ["/dataset/recon"]
    got_c, md4 = read_ismrmrd_images(path, group="recon")
    assert got_c.dtype == np.complex64 and got_c.tobytes() == images.tobytes()
    assert md4.extra["orientation"]["read_dir"] == [0.0, 1.0, 0.0]
    assert md4.extra["ismrmrd_images"]["image_types"] == ["complex"]

    # the reference library reads the same images with the header fields viewers need
    ds = ismrmrd.Dataset(str(path), "dataset", mode="r")
    try:
        im = ds.read_image("recon", 4)  # slice 1, phase 1
    finally:
        ds.close()
    assert (im.slice, im.phase, im.image_index, im.image_series_index) == (1, 1, 5, 1)
    assert tuple(im.matrix_size) == (16, 12, 1) and tuple(im.field_of_view) == pytest.approx((320.0, 260.0, 8.0))
    assert im.image_type == ismrmrd.IMTYPE_COMPLEX and im.meta["Simulated"] == "true"
    np.testing.assert_array_equal(im.data[0, 0], images[1, 1])


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    k, mask, _, _ = _scan(rng, n_sl=1, n_t=2)
    path = tmp_path / "a.h5"
    write_ismrmrd_raw(path, k, ScanMetadata(), mask=mask)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("cardiomm.data.ismrmrd_raw._content_digest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_ismrmrd_raw(path, 2 * k, ScanMetadata(), mask=mask)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kspace": np.zeros((2, 3, 4, 5), np.complex64)}, "slice, coil, time, ky, kx"),
        ({"kspace": np.zeros((1, 2, 1, 4, 6), np.float32)}, "complex"),
        ({"mask": np.array([[[[1, 0, 1, 1, 1, 1]]]], bool)}, "not contiguous"),
        ({"mask": np.array([[[[1, 1, 0, 0, 0, 0]]]], bool)}, "centre"),
        ({"mask": np.ones((3, 4, 6), bool)}, "broadcast"),
        ({"metadata": ScanMetadata(trajectory="radial")}, "Cartesian"),
        ({"metadata": ScanMetadata(encoded_matrix=(8, 8))}, "encoded_matrix"),
        ({"noise": np.zeros((3, 10), np.complex64)}, "noise"),
        ({"acs": np.zeros((1, 2, 2, 4, 6), np.complex64)}, "acs"),
    ],
)
def test_writer_rejects_bad_input(tmp_path, kwargs, match):
    args = {"kspace": np.ones((1, 2, 1, 4, 6), np.complex64), "metadata": ScanMetadata()}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        write_ismrmrd_raw(tmp_path / "x.h5", args.pop("kspace"), args.pop("metadata"), **args)
    assert not any(tmp_path.iterdir())


def test_writer_rejects_nan(tmp_path):
    k = np.ones((1, 2, 1, 4, 6), np.complex64)
    k[0, 1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_ismrmrd_raw(tmp_path / "x.h5", k, ScanMetadata())


# --------------------------------------------------------------------------- files written with the ismrmrd library


def _acq(data, *, e1=0, sl=0, phase=0, rep=0, contrast=0, average=0, center=None, flags=(), dwell=0.0, pre=0, post=0, traj=None):
    a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, np.complex64), traj)
    a.idx.kspace_encode_step_1 = e1
    a.idx.slice = sl
    a.idx.phase = phase
    a.idx.repetition = rep
    a.idx.contrast = contrast
    a.idx.average = average
    a.center_sample = data.shape[1] // 2 if center is None else center
    a.sample_time_us = dwell
    a.discard_pre = pre
    a.discard_post = post
    for fl in flags:
        a.set_flag(fl)
    return a


def _library_file(path, acqs, *, ny, nx, n_coils, recon_nx=None, enc_fov=None, rec_fov=None, ky_center=None, trajectory=None):
    md = ScanMetadata(encoded_fov_mm=enc_fov, recon_fov_mm=rec_fov, recon_matrix=(ny, recon_nx or nx))
    xml = build_ismrmrd_header(md, encoded_matrix=(ny, nx), n_coils=n_coils, n_frames=1, n_slices=1, ky_center=ky_center)
    if trajectory is not None:
        xml = xml.replace("<trajectory>cartesian</trajectory>", f"<trajectory>{trajectory}</trajectory>")
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        ds.write_xml_header(xml.encode())
        for a in acqs:
            ds.append_acquisition(a)
    finally:
        ds.close()
    return path


def test_reverse_lines_partial_echo_and_discards(tmp_path):
    rng = np.random.default_rng(5)
    ny, nx, c = 6, 10, 2
    k = _crandn(rng, c, ny, nx)
    acqs = [
        _acq(k[:, 0], e1=0),
        _acq(k[:, 1, ::-1], e1=1, flags=[ismrmrd.ACQ_IS_REVERSE]),  # reversed full readout
        _acq(k[:, 2, 3:], e1=2, center=2),  # asymmetric echo: 7 samples, centre at sample 2
        _acq(np.concatenate([_crandn(rng, c, 2), k[:, 3], _crandn(rng, c, 1)], axis=1), e1=3, center=7, pre=2, post=1),
        # reversed asymmetric echo: samples run from kx index 9 down to 3, kx index 5 is passed at sample 4
        _acq(k[:, 4, 3:][:, ::-1], e1=4, center=4, flags=[ismrmrd.ACQ_IS_REVERSE]),
    ]
    path = _library_file(tmp_path / "rev.h5", acqs, ny=ny, nx=nx, n_coils=c)
    scan = read_ismrmrd_raw(path)
    got = scan.kspace[0, :, 0]
    for y in (0, 1, 3):
        np.testing.assert_array_equal(got[:, y], k[:, y])
        assert scan.mask[0, 0, y].all()
    for y in (2, 4):
        np.testing.assert_array_equal(got[:, y, 3:], k[:, y, 3:])
        assert np.all(got[:, y, :3] == 0) and scan.mask[0, 0, y].tolist() == [False] * 3 + [True] * 7
    assert not scan.mask[0, 0, 5].any()


def test_ky_placement_uses_encoding_limit_centre(tmp_path):
    """Partial Fourier in ky: 10 of 16 lines, counter centre 4 -> row = counter + 8 - 4."""
    rng = np.random.default_rng(6)
    lines = _crandn(rng, 10, 2, 8)
    acqs = [_acq(lines[i], e1=i) for i in range(10)]
    path = _library_file(tmp_path / "pf.h5", acqs, ny=16, nx=8, n_coils=2, ky_center=4)
    scan = read_ismrmrd_raw(path)
    assert scan.metadata.extra["ismrmrd"]["ky_offset"] == 4
    np.testing.assert_array_equal(scan.kspace[0, :, 0, 4:14].transpose(1, 0, 2), lines)
    assert scan.mask[0, 0, :, 0].tolist() == [False] * 4 + [True] * 10 + [False] * 2


def test_averages_are_combined_or_first_kept(tmp_path):
    rng = np.random.default_rng(7)
    a0, a1 = _crandn(rng, 2, 8), _crandn(rng, 2, 8)
    acqs = [_acq(a0, e1=2, average=0), _acq(a1, e1=2, average=1), _acq(a0, e1=3)]
    path = _library_file(tmp_path / "avg.h5", acqs, ny=4, nx=8, n_coils=2)
    np.testing.assert_allclose(read_ismrmrd_raw(path).kspace[0, :, 0, 2], (a0 + a1) / 2, rtol=1e-6)
    np.testing.assert_array_equal(read_ismrmrd_raw(path, combine_averages=False).kspace[0, :, 0, 2], a0)


def test_readout_oversampling_is_removed(tmp_path):
    """Object inside the central half of a 2x oversampled FOV: cropping equals the 1x k-space."""
    rng = np.random.default_rng(8)
    ny, nx = 8, 12
    img = np.zeros((2, ny, 2 * nx), np.complex64)
    img[:, :, nx // 2 + 2 : nx // 2 + nx - 2] = _crandn(rng, 2, ny, nx - 4)
    k_os = fft2c(torch.from_numpy(img)).numpy()
    acqs = [_acq(k_os[:, y], e1=y) for y in range(ny)]
    acqs.append(_acq(k_os[:, 0, 6:], e1=0, phase=1, center=nx - 6))  # frame 1: one partial echo (kx 6..)
    path = _library_file(
        tmp_path / "os.h5", acqs, ny=ny, nx=2 * nx, n_coils=2, recon_nx=nx, enc_fov=(400.0, 200.0, 5.0), rec_fov=(200.0, 200.0, 5.0)
    )
    scan = read_ismrmrd_raw(path)
    expected = fft2c(torch.from_numpy(np.ascontiguousarray(img[:, :, nx // 2 : nx // 2 + nx]))).numpy()
    assert scan.kspace.shape == (1, 2, 2, ny, nx) and scan.mask.shape == (1, 2, ny, nx) and scan.mask[0, 0].all()
    np.testing.assert_allclose(scan.kspace[0, :, 0], expected, atol=1e-5)
    # encoded kx 6.. of 24 sampled -> recon kx j covers encoded 2j: columns 3.. are sampled
    assert scan.mask[0, 1, 0].tolist() == [False] * 3 + [True] * 9 and not scan.mask[0, 1, 1:].any()
    assert scan.metadata.extra["ismrmrd"]["oversampling_removed"]
    kept = read_ismrmrd_raw(path, remove_oversampling=False)
    assert kept.kspace.shape[-1] == 2 * nx


def test_prewhitening_whitens_correlated_noise_with_dwell_ratio(tmp_path):
    rng = np.random.default_rng(9)
    c = 3
    mix = np.array([[1.0, 0, 0], [0.6, 0.8, 0], [0.2 - 0.3j, 0.1j, 0.5]], np.complex64)
    true_cov = mix @ mix.conj().T
    noise = mix @ _crandn(rng, c, 4000) / np.sqrt(2)  # covariance = true_cov
    # imaging dwell 4x the noise dwell -> imaging noise variance 1/4 of the noise scan's
    lines = [mix @ _crandn(rng, c, 64) / np.sqrt(2) / 2 for _ in range(40)]
    acqs = [_acq(noise[:, i : i + 400], flags=[ismrmrd.ACQ_IS_NOISE_MEASUREMENT], dwell=2.5) for i in range(0, 4000, 400)]
    acqs += [_acq(line, e1=i, dwell=10.0) for i, line in enumerate(lines)]
    path = _library_file(tmp_path / "noise.h5", acqs, ny=40, nx=64, n_coils=c, ky_center=20)
    scan = read_ismrmrd_raw(path)
    assert scan.prewhitened and scan.metadata.extra["ismrmrd"]["prewhitening_scale"] == pytest.approx(2.0)
    np.testing.assert_allclose(scan.noise_covariance, true_cov, atol=0.08)
    white = scan.kspace[0, :, 0].reshape(c, -1)
    np.testing.assert_allclose(white @ white.conj().T / white.shape[1], np.eye(c), atol=0.12)
    raw = read_ismrmrd_raw(path, prewhiten=False)
    w = prewhitening_matrix(raw.noise_covariance, 2.0)
    np.testing.assert_allclose(np.einsum("cd,dyx->cyx", w, raw.kspace[0, :, 0]), scan.kspace[0, :, 0], atol=1e-5)


def test_repetitions_contrasts_and_skipped_acquisitions(tmp_path):
    rng = np.random.default_rng(10)
    d = _crandn(rng, 4, 2, 8)
    acqs = [_acq(d[r], e1=1, rep=r) for r in range(3)] + [
        _acq(d[3], e1=2, flags=[ismrmrd.ACQ_IS_NAVIGATION_DATA]),
        _acq(d[3], e1=3, flags=[ismrmrd.ACQ_IS_PHASECORR_DATA]),
    ]
    path = _library_file(tmp_path / "rep.h5", acqs, ny=4, nx=8, n_coils=2)
    scan = read_ismrmrd_raw(path)
    assert scan.kspace.shape == (1, 2, 3, 4, 8) and scan.metadata.extra["ismrmrd"]["time_axis"] == "repetition"
    np.testing.assert_array_equal(scan.kspace[0, :, 2, 1], d[2])
    assert scan.metadata.extra["ismrmrd"]["skipped"] == {"ACQ_IS_NAVIGATION_DATA": 1, "ACQ_IS_PHASECORR_DATA": 1}
    assert not scan.mask[..., 2:, :].any()
    one = read_ismrmrd_raw(path, repetition=1)
    assert one.kspace.shape[2] == 1 and np.array_equal(one.kspace[0, :, 0, 1], d[1])

    acqs = [_acq(d[0], e1=0, phase=0, rep=0), _acq(d[1], e1=0, phase=1, rep=1), _acq(d[2], e1=1, contrast=1)]
    path = _library_file(tmp_path / "mixed.h5", acqs, ny=4, nx=8, n_coils=2)
    with pytest.raises(DataFileError, match="contrast=<value>"):
        read_ismrmrd_raw(path)
    with pytest.raises(DataFileError, match="repetition=<value>"):
        read_ismrmrd_raw(path, contrast=0)
    picked = read_ismrmrd_raw(path, contrast=0, repetition=1)
    np.testing.assert_array_equal(picked.kspace[0, :, 1, 0], d[1])


# --------------------------------------------------------------------------- bad files -> DataFileError


@pytest.fixture()
def small_file(tmp_path):
    rng = np.random.default_rng(11)
    k, mask, acs, noise = _scan(rng, n_sl=1, n_c=2, n_t=2, ny=8, nx=8)
    path = tmp_path / "small.h5"
    write_ismrmrd_raw(path, k, FULL_METADATA, mask=mask, acs=acs, noise=noise)
    return path


def _rewrite(path: Path, edit) -> Path:
    """Copy of a file with ``edit(h5py.File)`` applied and the integrity digest removed."""
    out = path.with_name("edited_" + path.name)
    shutil.copy(path, out)
    with h5py.File(out, "r+") as f:
        if DIGEST_ATTRIBUTE in f["dataset"].attrs:
            del f["dataset"].attrs[DIGEST_ATTRIBUTE]
        edit(f)
    return out


def _edit_acquisitions(edit):
    def apply(f):
        data = f["dataset/data"][()]
        edit(data)
        del f["dataset/data"]
        f["dataset"].create_dataset("data", data=data, maxshape=(None,))

    return apply


def test_not_hdf5_missing_and_directory(tmp_path):
    txt = tmp_path / "notes.h5"
    txt.write_text("hello, I am not HDF5")
    with pytest.raises(DataFileError, match="not an HDF5 file") as err:
        read_ismrmrd_raw(txt)
    assert str(err.value).startswith(str(txt))
    with pytest.raises(DataFileError, match="does not exist"):
        read_ismrmrd_raw(tmp_path / "nope.h5")
    with pytest.raises(DataFileError, match="directory"):
        read_ismrmrd_raw(tmp_path)


def test_truncated_file(small_file):
    data = small_file.read_bytes()
    small_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match="truncated or corrupted"):
        read_ismrmrd_raw(small_file)


def test_missing_dataset_group_lists_groups(small_file):
    out = _rewrite(small_file, lambda f: f.move("dataset", "other"))
    with pytest.raises(DataFileError, match=r"no /dataset group .*other \(group\).*dataset='other'"):
        read_ismrmrd_raw(out)
    assert read_ismrmrd_raw(out, dataset="other").kspace.shape == (1, 2, 2, 8, 8)


def test_header_not_xml(small_file):
    def edit(f):
        del f["dataset/xml"]
        ds = f["dataset"].create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
        ds[0] = b"{'json': 'is not xml'}"

    with pytest.raises(DataFileError, match="not valid XML"):
        read_ismrmrd_raw(_rewrite(small_file, edit))


def test_zero_sample_acquisitions(small_file):
    def edit(data):
        data[3]["head"]["number_of_samples"] = 0
        data[3]["data"] = np.zeros(0, np.float32)

    with pytest.raises(DataFileError, match="0 samples or 0 channels.*#3"):
        read_ismrmrd_raw(_rewrite(small_file, _edit_acquisitions(edit)))


def test_mixed_channel_counts(small_file):
    def edit(data):
        ns = int(data[5]["head"]["number_of_samples"])
        data[5]["head"]["active_channels"] = 3
        data[5]["data"] = np.ones(2 * 3 * ns, np.float32)

    with pytest.raises(DataFileError, match="mixed channel counts"):
        read_ismrmrd_raw(_rewrite(small_file, _edit_acquisitions(edit)))


def test_nan_samples(small_file):
    def edit(data):
        d = np.array(data[6]["data"])
        d[1] = np.nan
        data[6]["data"] = d

    with pytest.raises(DataFileError, match="NaN or Inf.*#6"):
        read_ismrmrd_raw(_rewrite(small_file, _edit_acquisitions(edit)))


def test_data_length_mismatch(small_file):
    def edit(data):
        data[4]["data"] = np.asarray(data[4]["data"])[:-2]

    with pytest.raises(DataFileError, match="does not match its header"):
        read_ismrmrd_raw(_rewrite(small_file, _edit_acquisitions(edit)))


def test_corruption_detected_by_digest(small_file):
    def edit(f):
        data = f["dataset/data"][()]
        d = np.array(data[7]["data"])
        d[0] += 1.0
        data[7]["data"] = d
        f["dataset/data"][7] = data[7]

    out = small_file.with_name("tampered.h5")
    shutil.copy(small_file, out)
    with h5py.File(out, "r+") as f:
        edit(f)
    with pytest.raises(DataFileError, match="SHA-256"):
        read_ismrmrd_raw(out)


def _flip(path: Path, find: bytes, at: int, xor: int, occurrence: int = 0) -> Path:
    """Copy of ``path`` with byte ``at`` after the ``occurrence``-th match of ``find`` xor-ed."""
    data = bytearray(path.read_bytes())
    pos = -1
    for _ in range(occurrence + 1):
        pos = data.index(find, pos + 1)
    data[pos + at] ^= xor
    out = path.with_name("flipped_" + path.name)
    out.write_bytes(bytes(data))
    return out


# Corruptions that crashed (SIGSEGV) or hung HDF5 2.0 before the reader's own checks existed.
@pytest.mark.parametrize(
    "find, at, xor, match",
    [
        (b"GCOL", 8, 0xFF, "global heap collection"),  # collection size: HDF5 loops forever
        (b"\x11\x20\x1f\x00\x04\x00\x00\x00\x00\x00\x20\x00\x17\x08\x00\x17\x7f", 16, 0x01, "non-standard 4-byte float"),
        (b"\x19\x01\x00\x00\x10\x00\x00\x00", 1, 0x02, "not a string dataset"),  # vlen string -> sequence
    ],
    ids=["heap-size", "float-bias", "vlen-kind"],
)
def test_corruptions_that_crash_hdf5_are_caught(small_file, find, at, xor, match):
    with pytest.raises(DataFileError, match=match):
        read_ismrmrd_raw(_flip(small_file, find, at, xor))


def test_image_file_is_not_raw(tmp_path):
    path = tmp_path / "images.h5"
    write_ismrmrd_images(path, np.ones((1, 2, 4, 4), np.float32), ScanMetadata())
    with pytest.raises(DataFileError, match="holds ISMRMRD images .*not raw k-space"):
        read_ismrmrd_raw(path)


def test_raw_file_is_not_images(small_file):
    with pytest.raises(DataFileError, match="raw k-space acquisitions"):
        read_ismrmrd_images(small_file)


def test_header_parser_is_lenient():
    xml = b"""<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
      <measurementInformation><protocolName>cine_simulated_test</protocolName></measurementInformation>
      <acquisitionSystemInformation><systemFieldStrength_T>three</systemFieldStrength_T></acquisitionSystemInformation>
      <encoding><encodedSpace><matrixSize><x>32</x><y>24</y></matrixSize></encodedSpace>
      <trajectory>goldenangle</trajectory></encoding></ismrmrdHeader>"""
    h = parse_ismrmrd_header(xml, "f.h5")
    md = h.metadata
    assert md.simulated and md.trajectory == "radial" and md.encoded_matrix == (24, 32)
    assert md.field_strength_t is None and md.recon_matrix is None and md.encoded_fov_mm is None
    assert not h.schema_valid and any("three" in w for w in h.warnings)
    with pytest.raises(DataFileError, match="f.h5: .*<notIsmrmrd>"):
        parse_ismrmrd_header(b"<notIsmrmrd/>", "f.h5")
    with pytest.raises(DataFileError, match="empty"):
        parse_ismrmrd_header(b"", "f.h5")


# --------------------------------------------------------------------------- files from other software


def _nrmse(x: np.ndarray, ref: np.ndarray) -> float:
    """NRMSE after the best complex scalar fit of ``x`` to ``ref``: ``||a x - ref|| / ||ref||``."""
    a = np.vdot(x, ref) / np.vdot(x, x)
    return float(np.linalg.norm(a * x - ref) / np.linalg.norm(ref))


def _cg_sense(op: SenseOp, y: torch.Tensor, iters: int) -> torch.Tensor:
    """Conjugate gradient on the SENSE normal equations ``A^H A x = A^H y``."""
    b = op.adjoint(y)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = torch.sum(r.conj() * r).real
    for _ in range(iters):
        ap = op.adjoint(op(p))
        alpha = rs / torch.sum(p.conj() * ap).real
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = torch.sum(r.conj() * r).real
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


@pytest.fixture(scope="module")
def cxx():
    if not CXX.exists():
        pytest.skip("shared ISMRMRD files not present")
    scan = read_ismrmrd_raw(CXX)
    with h5py.File(CXX, "r") as f:
        cplx = {k: f[f"dataset/{k}"][()] for k in ("csm", "phantom", "coil_images")}
    cplx = {k: (v["real"] + 1j * v["imag"])[0] for k, v in cplx.items()}
    w = prewhitening_matrix(scan.noise_covariance, scan.metadata.extra["ismrmrd"]["prewhitening_scale"])
    csm_w = np.einsum("cd,dyx->cyx", w, cplx["csm"]).astype(np.complex64)  # maps whitened like the data
    return scan, cplx, w, csm_w


@needs_shared
def test_cxx_reference_file_layout(cxx):
    scan, cplx, w, _ = cxx
    md = scan.metadata
    assert scan.kspace.shape == (1, 8, 4, 128, 128)  # oversampling removed, 4 repetitions -> time
    assert md.extra["ismrmrd"]["time_axis"] == "repetition" and md.extra["ismrmrd"]["oversampling_removed"]
    assert md.encoded_matrix == (128, 256) and md.recon_matrix == (128, 128) and md.n_coils == 8
    assert md.simulated and md.field_strength_t == pytest.approx(1.49)
    assert scan.prewhitened and scan.noise_covariance.shape == (8, 8)
    assert md.acceleration == pytest.approx(2.0)
    # R = 2: each repetition samples every other line, alternating offset
    lines = scan.mask[0].any(axis=-1)
    assert lines.sum(axis=-1).tolist() == [64] * 4 and lines[0, 0::2].all() and lines[1, 1::2].all()
    # 24 calibration lines per repetition around the centre (12 calibration-only + 12 shared)
    acs_lines = np.flatnonzero(np.any(scan.acs[0, :, 0] != 0, axis=(0, 2)))
    assert acs_lines.tolist() == list(range(52, 76))
    # coil maps and coil images share the orientation (coil images = csm * phantom)
    np.testing.assert_allclose(cplx["coil_images"][:, :, 64:192], cplx["csm"] * cplx["phantom"], atol=1e-5)


@needs_shared
def test_cxx_kspace_equals_reference_model_plus_unit_noise(cxx):
    """Read k-space = W F crop(coil_images) + whitened noise: scale 1 and unit residual variance."""
    scan, cplx, w, _ = cxx
    coil = np.einsum("cd,dyx->cyx", w, cplx["coil_images"][:, :, 64:192]).astype(np.complex64)
    model = fft2c(torch.from_numpy(coil)).numpy()
    m = scan.mask[0]
    meas = scan.kspace[0].transpose(1, 2, 3, 0)[m]  # [samples, coil]
    pred = np.broadcast_to(model.transpose(1, 2, 0)[None], m.shape + (8,))[m]
    a = np.vdot(pred, meas) / np.vdot(pred, pred)
    assert abs(a - 1) < 0.01
    resid = meas - pred
    assert 0.9 < np.mean(np.abs(resid) ** 2) < 1.2


@needs_shared
def test_cxx_sense_reconstruction_matches_phantom(cxx):
    """SENSE (CG, 20 iterations, the file's own whitened coil maps) against the ``phantom`` dataset.

    NRMSE is taken after the best complex scalar fit.  The file's noise (sigma ~0.07 per
    sample against a phantom of maximum 1) sets the floor: from noise-free model data the
    R=2 reconstruction is exact (< 1%), one R=2 frame of the real data lands where the
    same recon of model + unit noise lands (~26%), and all 4 repetitions jointly reach ~9%.
    """
    scan, cplx, _, csm_w = cxx
    ph = cplx["phantom"]
    sens = torch.from_numpy(csm_w)[:, None]  # [coil, 1, y, x]
    m0 = torch.from_numpy(scan.mask[0, :1])  # frame 0, R = 2
    op = SenseOp(sens, m0)
    y_real = torch.from_numpy(scan.kspace[0, :, :1])
    x_real = _cg_sense(op, y_real, 20).numpy()[0]
    y_clean = op(torch.from_numpy(ph.astype(np.complex64))[None])
    x_clean = _cg_sense(op, y_clean, 20).numpy()[0]
    gen = torch.Generator().manual_seed(0)
    noise = torch.complex(torch.randn(y_clean.shape, generator=gen), torch.randn(y_clean.shape, generator=gen)) / np.sqrt(2)
    x_sim = _cg_sense(op, y_clean + op.sampling(noise), 20).numpy()[0]
    err_real, err_clean, err_sim = _nrmse(x_real, ph), _nrmse(x_clean, ph), _nrmse(x_sim, ph)
    assert err_clean < 0.01
    assert abs(err_real / err_sim - 1) < 0.15, (err_real, err_sim)

    # all four repetitions (each R = 2, alternating lines) of the static phantom jointly
    n_t = scan.kspace.shape[2]
    sens_j = torch.from_numpy(np.tile(csm_w, (n_t, 1, 1)))[:, None]
    mask_j = torch.from_numpy(np.repeat(scan.mask[0], 8, axis=0))[:, None]
    y_j = torch.from_numpy(np.ascontiguousarray(scan.kspace[0].transpose(1, 0, 2, 3).reshape(8 * n_t, 1, 128, 128)))
    x_j = _cg_sense(SenseOp(sens_j, mask_j), y_j, 20).numpy()[0]
    assert _nrmse(x_j, ph) < 0.10


@needs_shared
@pytest.mark.parametrize("name", ["ismrmrd_cxx_shepp_logan_m128_c8_R2.h5", "Koma_signal.mrd", "bonn/dependency_pulseq_protocols_gre_b0mapping.h5"])
def test_hand_reader_matches_hdf5_on_other_writers(name):
    """The vlen-free record reader returns what h5py returns (C++, Julia and Python writers; chunked and contiguous)."""
    path = SHARED / name
    with h5py.File(path, "r") as f:
        ds = f["dataset/data"]
        mine, ref = read_hdf5_records(f, ds, str(path)), ds[()]
        assert mine is not None and mine.shape == ref.shape
        # field by field: padding bytes between fields (e.g. the Julia writer's) carry no data
        for field in ref["head"].dtype.names:
            assert np.array_equal(mine["head"][field], ref["head"][field]), field
        for field in ("data", "traj"):
            assert all(np.array_equal(a, b) for a, b in zip(mine[field], ref[field]))
        assert read_hdf5_records(f, f["dataset/xml"], str(path))[0] == f["dataset/xml"][0]


@needs_shared
@pytest.mark.parametrize("path", KOMA, ids=lambda p: p.name)
def test_koma_files_are_inspected_but_not_reconstructed(path, caplog):
    summary = inspect_ismrmrd(path)
    assert summary["kind"] == "raw" and summary["trajectory_dimensions"] == [2] and summary["active_channels"] == [1]
    assert summary["header"]["vendor"] == "KomaMRI.jl" and summary["header"]["simulated"] is True
    assert "not supported" in summary["problem"] and not summary["cartesian_readable"]
    with pytest.raises(UnsupportedTrajectoryError, match="trajectory is 'other'.*not supported") as err:
        read_ismrmrd_raw(path)
    assert isinstance(err.value, DataFileError) and str(path) in str(err.value)
    assert any("not supported" in r.getMessage() for r in caplog.records)
    raw = read_ismrmrd_samples(path)
    n = summary["n_acquisitions"]
    assert raw.data.shape[0] == n and raw.data.shape[1] == 1 and raw.trajectory.shape == (n, raw.data.shape[2], 2)
    assert np.all(np.isfinite(raw.data)) and raw.metadata.trajectory == "other"


@needs_shared
@pytest.mark.parametrize("path", BONN_PROTOCOLS, ids=lambda p: p.name)
def test_bonn_protocol_files_have_no_samples(path):
    with pytest.raises(DataFileError, match="0 samples or 0 channels") as err:
        read_ismrmrd_raw(path)
    assert str(err.value).startswith(str(path))
    assert "0 samples" in inspect_ismrmrd(path)["problem"]


@needs_shared
@pytest.mark.parametrize("path", BONN_IMAGES, ids=lambda p: p.name)
def test_bonn_image_files(path):
    groups = list_ismrmrd_image_groups(path)
    assert groups
    images, md = read_ismrmrd_images(path)
    with h5py.File(path, "r") as f:
        stored = f[groups[0]]["data"][()]
    assert images.dtype == np.float32 and images.shape[-2:] == stored.shape[-2:]
    assert images.shape[0] * images.shape[1] == stored.shape[0]
    np.testing.assert_array_equal(np.sort(images.ravel()), np.sort(stored.astype(np.float32).ravel()))
    assert md.recon_matrix == stored.shape[-2:] and md.extra["ismrmrd_images"]["group"] == groups[0]
    with pytest.raises(DataFileError, match="holds ISMRMRD images"):
        read_ismrmrd_raw(path)
    assert inspect_ismrmrd(path)["kind"] == "images"


@needs_shared
def test_bonn_multi_group_file_orders_contrasts_as_frames():
    path = SHARED / "bonn" / "recon_scanner_b0mapping.h5"
    images, md = read_ismrmrd_images(path)
    assert images.shape == (1, 2, 110, 110)
    assert [c["contrast"] for c in md.extra["ismrmrd_images"]["frame_counters"]] == [0, 1]
    assert md.extra["ismrmrd_images"]["groups"] == ["/images/image_1", "/images/image_2"]
    second, _ = read_ismrmrd_images(path, group="image_2")
    assert second.shape == (1, 1, 110, 110)
    with pytest.raises(DataFileError, match="not found"):
        read_ismrmrd_images(path, group="image_9")


@needs_shared
def test_spiral_recon_file_metadata_from_its_header():
    images, md = read_ismrmrd_images(SHARED / "bonn" / "recon_scanner_spiralout_fatsat_pypulseq_3TPrisma.h5")
    assert images.shape == (1, 1, 220, 220)
    assert md.vendor == "SIEMENS" and md.field_strength_t == pytest.approx(2.89362) and md.te_ms == 20.0
    assert md.pixel_spacing_mm == pytest.approx((1.0, 1.0))  # 220 mm FOV on the 220-pixel image
