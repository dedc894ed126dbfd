"""Generated corruptions of a small ISMRMRD file: the reader raises DataFileError or reads the original.

Never another exception type, never a silently different result.  Bounded, derandomised
hypothesis runs keep this deterministic and fast; the fixed corruptions are explicit tests in
test_ismrmrd_io.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardiomm.data.errors import DataFileError
from cardiomm.data.ismrmrd_raw import DIGEST_ATTRIBUTE, inspect_ismrmrd, read_ismrmrd_raw, write_ismrmrd_raw
from cardiomm.data.metadata import KSpaceScan, ScanMetadata

FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[Path, bytes, KSpaceScan]:
    rng = np.random.default_rng(0)
    shape = (1, 2, 2, 8, 8)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    mask = np.zeros((2, 8, 8), bool)
    mask[:, ::2] = True
    mask[:, 3:5] = True
    acs = np.zeros((1, 2, 1, 8, 8), np.complex64)
    acs[:, :, 0, 3:6] = k[:, :, 0, 3:6]
    noise = (rng.standard_normal((2, 20)) + 1j * rng.standard_normal((2, 20))).astype(np.complex64)
    path = tmp_path_factory.mktemp("fuzz") / "original.h5"
    write_ismrmrd_raw(path, k * mask, ScanMetadata(simulated=True, tr_ms=3.0), mask=mask, acs=acs, noise=noise)
    return path, path.read_bytes(), read_ismrmrd_raw(path)


def _same(a: KSpaceScan, b: KSpaceScan) -> bool:
    meta = lambda s: {**s.metadata.to_dict(), "source": None}  # noqa: E731
    return (
        a.kspace.tobytes() == b.kspace.tobytes()
        and np.array_equal(a.mask, b.mask)
        and (a.acs is None) == (b.acs is None)
        and (a.acs is None or a.acs.tobytes() == b.acs.tobytes())
        and meta(a) == meta(b)
    )


def _outcome(data: bytes, reference: KSpaceScan) -> str:
    """Read ``data`` as a file: ``"error"`` (DataFileError naming it) or ``"same"`` (equals ``reference``)."""
    logging.disable(logging.WARNING)
    fd, name = tempfile.mkstemp(suffix=".h5")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            scan = read_ismrmrd_raw(name)
        except DataFileError as err:
            assert str(err).startswith(name)
            return "error"
        assert _same(scan, reference), "corrupted file read without error but differs from the original"
        return "same"
    finally:
        logging.disable(logging.NOTSET)
        os.remove(name)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=2**31))
def test_truncated_anywhere(original, cut):
    _, data, ref = original
    assert _outcome(data[: cut % len(data)], ref) == "error"


@FUZZ
@given(where=st.integers(min_value=0, max_value=2**31), xor=st.integers(min_value=1, max_value=255))
def test_flipped_byte(original, where, xor):
    _, data, ref = original
    corrupted = bytearray(data)
    corrupted[where % len(data)] ^= xor
    assert _outcome(bytes(corrupted), ref) in ("error", "same")


@FUZZ
@given(text=st.text(max_size=40) | st.binary(max_size=40))
def test_arbitrary_header_text(original, text):
    path, _, _ = original
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "h.h5"
        shutil.copy(path, out)
        with h5py.File(out, "r+") as f:
            del f["dataset"].attrs[DIGEST_ATTRIBUTE]
            raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
            f["dataset/xml"][0] = raw.replace(b"\x00", b"")  # HDF5 strings cannot hold NUL
        with pytest.raises(DataFileError):
            read_ismrmrd_raw(out)
        assert inspect_ismrmrd(out)["problem"]


@FUZZ
@given(
    acq=st.integers(min_value=0, max_value=40),
    sample=st.integers(min_value=0, max_value=100),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
    channels=st.integers(min_value=0, max_value=4),
    samples=st.integers(min_value=0, max_value=3),
)
def test_edited_acquisitions(original, acq, sample, value, channels, samples):
    """NaN/Inf samples, changed channel counts or zero-length readouts in one acquisition."""
    path, _, _ = original
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "e.h5"
        shutil.copy(path, out)
        with h5py.File(out, "r+") as f:
            del f["dataset"].attrs[DIGEST_ATTRIBUTE]
            table = f["dataset/data"][()]
            i = acq % len(table)
            d = np.array(table[i]["data"])
            d[sample % d.size] = value
            table[i]["data"] = d
            j = (acq + 1) % len(table)
            ns = int(table[j]["head"]["number_of_samples"]) if samples else 0
            table[j]["head"]["active_channels"] = channels
            table[j]["head"]["number_of_samples"] = ns
            table[j]["data"] = np.ones(2 * channels * ns, np.float32)
            del f["dataset/data"]
            f["dataset"].create_dataset("data", data=table, maxshape=(None,))
        with pytest.raises(DataFileError, match="NaN or Inf|0 samples or 0 channels|mixed channel counts"):
            read_ismrmrd_raw(out)


def test_deleted_dataset_group(original, tmp_path):
    path, _, _ = original
    out = tmp_path / "d.h5"
    shutil.copy(path, out)
    with h5py.File(out, "r+") as f:
        del f["dataset"]
    with pytest.raises(DataFileError, match="no /dataset group"):
        read_ismrmrd_raw(out)
