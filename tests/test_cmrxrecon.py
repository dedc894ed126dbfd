"""CMRxRecon ``.mat`` reader: both MAT versions, orientation, masks, patterns, bad input.

The files are written here the way MATLAB writes them: v7.3 as HDF5 with a 512-byte MAT
header, dimensions reversed, complex as a ``real``/``imag`` compound and a ``MATLAB_class``
attribute; v5 with :func:`scipy.io.savemat` in MATLAB dimension order.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from cardiomm.data.cmrxrecon import (
    parse_cmrxrecon_pattern,
    read_cmrxrecon_kspace,
    read_cmrxrecon_mask,
)
from cardiomm.data.errors import DataFileError

# MATLAB dimensions (kx, ky, coil, slice, time); all different so a swapped axis shows.
NKX, NKY, NC, NZ, NT = 7, 6, 3, 2, 4


def matlab_kspace(nkx: int = NKX, nky: int = NKY, nc: int = NC, nz: int = NZ, nt: int = NT) -> np.ndarray:
    """k-space in MATLAB order whose value encodes its own indices (so any transpose shows)."""
    kx, ky, c, z, t = np.meshgrid(
        np.arange(nkx), np.arange(nky), np.arange(nc), np.arange(nz), np.arange(nt), indexing="ij"
    )
    code = 1 + kx + 10 * ky + 100 * c + 1000 * z + 10000 * t
    return (code - 0.5j * code).astype(np.complex64)


def expected(code_kspace: np.ndarray) -> np.ndarray:
    """What the reader must return: ``[slice, coil, time, ky, kx]``."""
    return np.transpose(code_kspace, (3, 2, 4, 1, 0))


def write_mat73(path: Path, variables: dict[str, np.ndarray]) -> Path:
    """Write arrays given in MATLAB dimension order as a MATLAB v7.3 file."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in variables.items():
            stored = np.ascontiguousarray(np.transpose(arr))  # column-major -> reversed dims
            if np.iscomplexobj(arr):
                comp = np.empty(stored.shape, dtype=[("real", "<f4"), ("imag", "<f4")])
                comp["real"], comp["imag"] = stored.real, stored.imag
                ds = f.create_dataset(name, data=comp)
                ds.attrs["MATLAB_class"] = np.bytes_("single")
            elif arr.dtype == bool:
                ds = f.create_dataset(name, data=stored.astype(np.uint8))
                ds.attrs["MATLAB_class"] = np.bytes_("logical")
                ds.attrs["MATLAB_int_decode"] = np.int32(1)
            else:
                ds = f.create_dataset(name, data=stored.astype(np.float64))
                ds.attrs["MATLAB_class"] = np.bytes_("double")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  8 10:00:00 2024 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + bytes(8) + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header)
    return path


def write_mat5(path: Path, variables: dict[str, np.ndarray]) -> Path:
    scipy.io.savemat(path, variables)
    return path


WRITERS = {"v7.3": write_mat73, "v5": write_mat5}


@pytest.fixture(params=sorted(WRITERS))
def writer(request):
    return request.param, WRITERS[request.param]


def test_written_v73_file_looks_like_matlab_to_scipy(tmp_path):
    path = write_mat73(tmp_path / "cine_sax.mat", {"kspace_full": matlab_kspace()})
    assert h5py.is_hdf5(path)
    with pytest.raises(NotImplementedError):  # scipy recognises the v7.3 header
        scipy.io.loadmat(path)


def test_full_kspace_orientation_and_metadata(tmp_path, writer):
    version, write = writer
    data = matlab_kspace()
    path = write(tmp_path / "cine_sax.mat", {"kspace_full": data})
    scan = read_cmrxrecon_kspace(path)

    assert scan.kspace.dtype == np.complex64
    assert scan.kspace.shape == (NZ, NC, NT, NKY, NKX)
    np.testing.assert_array_equal(scan.kspace, expected(data))
    assert scan.kspace[1, 2, 3, 4, 5] == pytest.approx((1 + 5 + 40 + 200 + 1000 + 30000) * (1 - 0.5j))
    assert scan.mask.dtype == bool and scan.mask.shape == (1, NT, NKY, NKX) and scan.mask.all()
    md = scan.metadata
    assert (md.modality, md.view) == ("cine", "sax")
    assert (md.n_slices, md.n_coils, md.n_frames, md.encoded_matrix) == (NZ, NC, NT, (NKY, NKX))
    assert md.acceleration == 1.0 and md.mask_pattern is None
    assert md.extra["format"] == f"CMRxRecon MAT {version}"
    assert md.source == str(path)


def test_kt_undersampled_lines_are_recovered(tmp_path, writer):
    _version, write = writer
    rng = np.random.default_rng(0)
    lines = rng.random((NT, NKY)) < 0.4  # [time, ky], different per frame
    lines[:, NKY // 2 - 1 : NKY // 2 + 1] = True  # two calibration lines
    data = matlab_kspace()
    mask_matlab = np.transpose(lines)[None, :, None, None, :]  # (1, ky, 1, 1, t)
    data = data * mask_matlab
    data[0] = 0  # zero-padded readout edge: must not punch holes in the line mask
    path = write(tmp_path / "cine_lvot_kus_ktGaussian8.mat", {"kus": data})
    scan = read_cmrxrecon_kspace(path)

    np.testing.assert_array_equal(scan.kspace, expected(data))
    want = np.broadcast_to(lines[:, :, None], (NT, NKY, NKX))[None]
    np.testing.assert_array_equal(scan.mask, want)
    md = scan.metadata
    assert (md.modality, md.view, md.mask_pattern) == ("cine", "lvot", "kt_gaussian")
    assert md.extra["nominal_r"] == 8
    assert md.acceleration == pytest.approx(lines.size / lines.sum())
    assert md.extra["n_calibration_lines"] == 2


def test_2023_sub_variable_and_radial_points(tmp_path):
    data = matlab_kspace()
    keep = np.zeros((NKX, NKY), bool)
    keep[:, ::2] = True  # uniform lines (MATLAB (kx, ky))
    path = write_mat73(tmp_path / "cine_lax.mat", {"kspace_sub04": data * keep[:, :, None, None, None]})
    scan = read_cmrxrecon_kspace(path)
    assert scan.metadata.mask_pattern == "uniform" and scan.metadata.extra["nominal_r"] == 4
    assert scan.metadata.view == "other" and "view_note" in scan.metadata.extra
    np.testing.assert_array_equal(scan.mask[0, 0], np.transpose(keep))

    points = np.zeros((NKX, NKY, NT), bool)  # radial: a point pattern, not lines
    points[NKX // 2, :, :] = True
    points[:, NKY // 2, :] = True
    points[1, 1, 2] = True
    path = write_mat73(
        tmp_path / "cine_sax_kus_ktRadial16.mat", {"kus": data * points[:, :, None, None, :]}
    )
    scan = read_cmrxrecon_kspace(path)
    assert scan.metadata.mask_pattern == "kt_radial"
    np.testing.assert_array_equal(scan.mask[0], np.transpose(points, (2, 1, 0)))


def test_dropped_trailing_singletons_and_single_coil(tmp_path, writer):
    _version, write = writer
    data = matlab_kspace(nt=1)[..., 0]  # MATLAB drops the trailing time axis -> 4-D
    path = write(tmp_path / "blackblood.mat", {"kspace_full": data})
    scan = read_cmrxrecon_kspace(path)
    assert scan.kspace.shape == (NZ, NC, 1, NKY, NKX)
    np.testing.assert_array_equal(scan.kspace[:, :, 0], np.transpose(data, (3, 2, 1, 0)))
    assert scan.metadata.modality == "other"

    single = matlab_kspace()[:, :, 0]  # single coil: (kx, ky, slice, time)
    path = write(tmp_path / "cine_sax_single.mat", {"kspace_single_full": single})
    scan = read_cmrxrecon_kspace(path)
    assert scan.kspace.shape == (NZ, 1, NT, NKY, NKX)
    np.testing.assert_array_equal(scan.kspace[:, 0], np.transpose(single, (2, 3, 1, 0)))


def test_kt_mask_file_orientation(tmp_path, writer):
    _version, write = writer
    rng = np.random.default_rng(1)
    mask = rng.random((NKX, NKY, NT)) < 0.3  # MATLAB (kx, ky, t), asymmetric
    path = write(tmp_path / "cine_sax_mask_ktRadial24.mat", {"mask": mask})
    m = read_cmrxrecon_mask(path)
    assert m.mask.dtype == bool and m.mask.shape == (NT, NKY, NKX)
    np.testing.assert_array_equal(m.mask, np.transpose(mask, (2, 1, 0)))
    assert (m.pattern, m.nominal_r) == ("kt_radial", 24)
    mask_, pattern, nominal_r = m  # unpacks as a plain tuple
    assert pattern == "kt_radial" and nominal_r == 24 and mask_ is m.mask
    assert m.effective_r == pytest.approx(mask.size / mask.sum())


def test_2023_mask_file_needs_a_key(tmp_path, writer):
    _version, write = writer
    m4 = np.zeros((NKX, NKY), bool)
    m4[:, [0, 2, 3, 4]] = True
    m8 = np.zeros((NKX, NKY), bool)
    m8[:, [2, 3]] = True
    path = write(tmp_path / "cine_sax_mask.mat", {"mask04": m4, "mask08": m8})
    with pytest.raises(DataFileError, match=r"cine_sax_mask\.mat.*mask04.*mask08.*key="):
        read_cmrxrecon_mask(path)
    m = read_cmrxrecon_mask(path, key="mask04")
    assert m.mask.shape == (1, NKY, NKX)
    np.testing.assert_array_equal(m.mask[0], m4.T)
    assert (m.pattern, m.nominal_r) == ("uniform", 4)
    assert m.n_calibration_lines == 3  # ky 2, 3, 4 around the centre ky = 3


def test_pattern_names():
    assert parse_cmrxrecon_pattern("mask_ktGaussian8") == ("kt_gaussian", 8)
    assert parse_cmrxrecon_pattern("mask", "cine_lax_mask_ktUniform12.mat") == ("kt_uniform", 12)
    assert parse_cmrxrecon_pattern("mask", "cine_lax_mask_Uniform10") == ("uniform", 10)
    assert parse_cmrxrecon_pattern("kspace_sub10") == ("uniform", 10)
    assert parse_cmrxrecon_pattern("cine_sax_mask_ktRadial4") == ("kt_radial", 4)
    assert parse_cmrxrecon_pattern("mask", "cine_sax_mask") == (None, None)
    # a pattern word without its kt prefix is not a CMRxRecon name (used to raise KeyError)
    assert parse_cmrxrecon_pattern("cine_sax_mask_Gaussian8") == (None, None)
    assert parse_cmrxrecon_pattern("cine_sax_kus_ktGaussian8.5.mat") == ("kt_gaussian", 8.5)


def test_scanner_from_2025_folder(tmp_path):
    folder = tmp_path / "Center005" / "Siemens_30T_Vida" / "P003"
    folder.mkdir(parents=True)
    scan = read_cmrxrecon_kspace(write_mat73(folder / "T1map.mat", {"kspace": matlab_kspace()}))
    md = scan.metadata
    assert (md.vendor, md.field_strength_t, md.model) == ("Siemens", 3.0, "Vida")
    assert (md.modality, md.view) == ("mapping", "sax")


def test_bad_input(tmp_path, writer):
    _version, write = writer
    text = tmp_path / "notes.mat"
    text.write_text("this is not a MAT file\n" * 20)
    with pytest.raises(DataFileError, match=r"notes\.mat: not a MATLAB"):
        read_cmrxrecon_kspace(text)
    with pytest.raises(DataFileError, match="no such file"):
        read_cmrxrecon_kspace(tmp_path / "missing.mat")

    path = write(tmp_path / "cine_sax.mat", {"kspace_full": matlab_kspace(), "other": np.ones((2, 3))})
    with pytest.raises(DataFileError, match=r"cine_sax\.mat: no variable 'kspace'.*kspace_full"):
        read_cmrxrecon_kspace(path, key="kspace")
    with pytest.raises(DataFileError, match=r"'other' has 2 dimensions"):
        read_cmrxrecon_kspace(path, key="other")
    with pytest.raises(DataFileError, match=r"mask variable 'kspace_full' has dtype complex"):
        read_cmrxrecon_mask(path, key="kspace_full")
    with pytest.raises(ValueError):  # DataFileError is a ValueError
        read_cmrxrecon_mask(path)
