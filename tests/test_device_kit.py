"""The GPU session kit (benchmarks/device): the lossless DICOM packing and the session script's syntax."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, MRImageStorage, generate_uid

REPO = Path(__file__).resolve().parents[1]


def load_pack():
    spec = importlib.util.spec_from_file_location("device_pack", REPO / "benchmarks" / "device" / "pack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def write_mr_image(path: Path, pixels: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_deflated_copies_keep_every_pixel_and_are_smaller(tmp_path: Path) -> None:
    pack = load_pack()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    images = {}
    for name in ("a/1.dcm", "a/2.dcm", "b/1.dcm"):  # smooth image + noise, like an MR frame
        pixels = (1000 * np.exp(-((yy - 32) ** 2 + (xx - 30) ** 2) / 300) + rng.integers(0, 20, (64, 64))).astype(np.uint16)
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        write_mr_image(tmp_path / "src" / name, pixels)
        images[name] = pixels
    n, size = pack.deflate_dicoms(tmp_path / "src", tmp_path / "dst")
    assert n == 3 and size == sum((tmp_path / "src" / k).stat().st_size for k in images)
    for name, pixels in images.items():
        copy = pydicom.dcmread(tmp_path / "dst" / name)
        assert copy.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
        np.testing.assert_array_equal(copy.pixel_array, pixels)
        assert (tmp_path / "dst" / name).stat().st_size < (tmp_path / "src" / name).stat().st_size
    assert not list((tmp_path / "dst").rglob("*.tmp"))
    assert pack.deflate_dicoms(tmp_path / "src", tmp_path / "dst") == (n, size)  # a rerun keeps the copies


def test_session_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "device" / "session.sh")], check=True)
