"""Read and write raw multi-coil Cartesian k-space in ISMRMRD (MRD) HDF5 files.

File structure (ISMRMRD 1.x HDF5, as written by the C++ and Python ``ismrmrd`` libraries):
``/<dataset>/xml`` holds the XML header, ``/<dataset>/data`` one compound record per
acquisition (``head``: ``ismrmrd.hdf5.acquisition_header_dtype``; ``data``: float32
``[channel, sample, re/im]`` flattened; ``traj``: float32 ``[sample, dim]`` flattened).

Reading (:func:`read_ismrmrd_raw`) -- documented choices
-------------------------------------------------------
* Layout ``kspace [slice, coil, time, ky, kx]`` complex64, ``mask [slice, time, ky, kx]``
  bool (True where an imaging sample was acquired).
* ``time`` is the cardiac phase counter ``idx.phase``.  If a file has a single phase but
  several repetitions, the repetitions become the time frames (real-time / dynamic series;
  ``extra["ismrmrd"]["time_axis"]`` says which).  Files with several phases *and* several
  repetitions need ``repetition=<value>``.  Several contrasts or sets need
  ``contrast=`` / ``set_index=``; a given value selects those acquisitions only.
* ``ky``: row = ``kspace_encode_step_1 + ny // 2 - center`` with ``center`` from
  ``encodingLimits/kspace_encoding_step_1/center``, so the k-space centre lands at
  ``ny // 2`` (centred FFT convention of :mod:`recon.conventions`).  If that centre would
  put lines outside the matrix while the raw counters fit (pulseq files leave it at 0),
  the counter is used as the row directly and a warning is recorded.
* ``kx``: ``discard_pre``/``discard_post`` samples are dropped, ``ACQ_IS_REVERSE`` lines are
  flipped, and the sample ``center_sample`` is placed at ``nx // 2`` (asymmetric echo:
  the unsampled part stays zero and is False in the mask).  ``center_sample`` counts in
  acquisition (time) order, so after flipping a reversed line the centre is sample
  ``ns - 1 - center_sample``.  A full-length readout (``ns == nx``) always fills the whole
  line (tolerating writers that leave ``center_sample`` unset or unadjusted for reversal).
* ``ACQ_IS_PARALLEL_CALIBRATION`` lines go to ``acs`` only;
  ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING`` lines to both ``acs`` and ``kspace``.  ``acs``
  has ``time`` = 1 when all calibration lines share one time index, else the full time
  axis.  Navigator, phase-correction, dummy-scan, feedback and phase-stabilisation
  acquisitions are skipped and counted.
* Repeated lines (averages, or repeated acquisitions of the same line) are averaged
  (mean) with ``combine_averages=True``; with ``False`` only the lowest ``idx.average`` is
  kept.
* Noise (``ACQ_IS_NOISE_MEASUREMENT``): ``noise_covariance = X X^H / N`` over all noise
  samples ``X [coil, N]`` (no mean subtraction).  With ``prewhiten=True`` all data
  (imaging and ACS) is multiplied by ``W = sqrt(dwell_acq / dwell_noise) * L^-1`` with
  ``L`` the Cholesky factor of the covariance and the dwell times the acquisitions'
  ``sample_time_us`` (ratio 1 when either is unknown), so whitened imaging noise has unit
  variance per complex sample and identity coil covariance.  ``relativeReceiverNoiseBandwidth``
  is recorded in ``extra`` but not applied.
* Readout oversampling: with ``remove_oversampling=True`` and a recon matrix narrower
  than the encoded one in x (and, when both FOVs are known, a larger encoded FOV), each
  line is transformed to image space along x (centred orthonormal 1D FFT), the centre
  ``recon_x`` pixels are kept and it is transformed back.  The mask column ``j`` is True
  when the matching encoded position was sampled.
* Non-Cartesian data (header trajectory other than ``cartesian``, or acquisitions that
  carry trajectory samples) raise :class:`~cardiomm.data.errors.UnsupportedTrajectoryError`
  (a logged warning first); :func:`read_ismrmrd_samples` returns such raw samples with
  their trajectory and :func:`inspect_ismrmrd` summarises any file.
* Everything else that is wrong raises :class:`~cardiomm.data.errors.DataFileError` naming
  the file: not HDF5 / truncated, no dataset group (existing groups listed), image-only
  files, non-XML header, acquisitions with 0 samples or 0 channels, data lengths that do
  not match the headers, mixed channel counts, NaN/Inf samples, lines outside the matrix.

Corrupt-file defences
---------------------
Files written by :func:`write_ismrmrd_raw` carry a SHA-256 of their content (header text,
acquisition header values, samples, trajectories; fixed-length attribute
``cardiomm_sha256`` of the dataset group), checked on reading, so a corrupted payload is
reported instead of returned.  For every file, before the HDF5 library converts any data:
datatypes must be built from standard integers / IEEE floats with non-overlapping
compound members (:func:`check_hdf5_datatype`), and the acquisition table and header are
read from their raw storage with the variable-length data taken from hand-validated
global heap collections (:func:`read_hdf5_records`), not through HDF5's vlen conversion.
Corrupt type descriptions and heap collections made HDF5 2.0 crash or loop forever in
byte-flip fuzzing; these defences turn them into :class:`~cardiomm.data.errors.DataFileError`.

Writing (:func:`write_ismrmrd_raw`)
----------------------------------
Noise first (chunks of ``kx`` samples), then per slice, time frame and ky the sampled
lines (only the contiguous sampled ``kx`` segment, with ``center_sample`` pointing at
``nx // 2``), calibration lines flagged, a full XML header from
:func:`cardiomm.data.ismrmrd_header.build_ismrmrd_header`; written to a temporary file in
the target folder and moved into place with :func:`os.replace`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
from dataclasses import dataclass
from typing import Any, Iterator

import h5py
import ismrmrd
import ismrmrd.hdf5 as ih5
import numpy as np
import torch

from cardiomm.atomic import atomic_path
from cardiomm.data.errors import DataFileError, UnsupportedTrajectoryError
from cardiomm.data.ismrmrd_header import IsmrmrdHeader, build_ismrmrd_header, parse_ismrmrd_header
from cardiomm.data.metadata import KSpaceScan, ScanMetadata
from recon.conventions import KX_DIM, fft_time, ifft_time

__all__ = [
    "DIGEST_ATTRIBUTE",
    "check_hdf5_datatype",
    "read_hdf5_records",
    "read_hdf5_text",
    "MAX_KSPACE_BYTES",
    "RawSamples",
    "estimate_noise_covariance",
    "find_image_groups",
    "inspect_ismrmrd",
    "open_hdf5",
    "prewhitening_matrix",
    "read_ismrmrd_raw",
    "read_ismrmrd_samples",
    "write_ismrmrd_raw",
]

logger = logging.getLogger(__name__)

#: HDF5 attribute of the dataset group holding the SHA-256 of the file's content.
DIGEST_ATTRIBUTE = "cardiomm_sha256"
#: Refuse to allocate k-space larger than this (a guard against corrupt counters).
MAX_KSPACE_BYTES = 16 * 2**30

#: Acquisition kinds that carry no imaging data and are skipped by the Cartesian reader.
_SKIPPED_FLAGS = (
    ismrmrd.ACQ_IS_NAVIGATION_DATA,
    ismrmrd.ACQ_IS_PHASECORR_DATA,
    ismrmrd.ACQ_IS_HPFEEDBACK_DATA,
    ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
    ismrmrd.ACQ_IS_RTFEEDBACK_DATA,
    ismrmrd.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION_REFERENCE,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION,
)
#: ACQ_* flag bit -> name, for summaries.
FLAG_NAMES: dict[int, str] = {
    int(v): k for k, v in vars(ismrmrd).items() if k.startswith("ACQ_") and isinstance(v, int)
}
_HEAD_FIELDS = (
    "flags",
    "number_of_samples",
    "active_channels",
    "center_sample",
    "discard_pre",
    "discard_post",
    "trajectory_dimensions",
    "encoding_space_ref",
    "sample_time_us",
    "idx",
)
_IDX_FIELDS = ("kspace_encode_step_1", "average", "slice", "contrast", "phase", "repetition", "set")


def _flag_mask(flag: int) -> np.uint64:
    return np.uint64(1) << np.uint64(flag - 1)


def _has_flag(flags: np.ndarray, flag: int) -> np.ndarray:
    return (flags & _flag_mask(flag)) != 0


# --------------------------------------------------------------------------- HDF5 helpers


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only, turning every way it can fail into :class:`DataFileError`."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise DataFileError(p, "file does not exist")
    if os.path.isdir(p):
        raise DataFileError(p, "is a directory, not an HDF5 file")
    try:
        is_h5 = h5py.is_hdf5(p)
    except OSError as err:
        raise DataFileError(p, f"cannot read the file ({err})") from None
    if not is_h5:
        size = os.path.getsize(p)
        raise DataFileError(p, f"not an HDF5 file (no HDF5 signature in its {size} bytes)")
    try:
        f = h5py.File(p, "r")
    except Exception as err:  # noqa: BLE001 - h5py raises OSError/RuntimeError/ValueError/... on corruption
        raise DataFileError(p, f"cannot open the HDF5 file, it is truncated or corrupted ({err})") from None
    try:
        yield f
    finally:
        with contextlib.suppress(Exception):
            f.close()


#: IEEE layouts by size: (fields (spos, epos, esize, mpos, msize), exponent bias).
_IEEE = {2: ((15, 10, 5, 0, 10), 15), 4: ((31, 23, 8, 0, 23), 127), 8: ((63, 52, 11, 0, 52), 1023)}


def _nonstandard_type(tid: Any, where: str, depth: int = 0) -> str | None:
    """Why an HDF5 datatype is not built from standard integers/IEEE floats/strings, or None.

    Corrupt type descriptions (a float with a shifted mantissa, an integer with odd
    precision) make the HDF5 library's conversion routines misbehave (we have seen
    segmentation faults), so readers refuse them before reading any data.
    """
    if depth > 8:
        return f"{where}: datatype nested too deeply"
    h5t = h5py.h5t
    try:
        if isinstance(tid, h5t.TypeCompoundID):
            end = 0
            for off, i in sorted((tid.get_member_offset(i), i) for i in range(tid.get_nmembers())):
                name = tid.get_member_name(i).decode("utf-8", errors="replace")
                member = tid.get_member_type(i)
                if off < end:
                    return f"{where}.{name}: overlaps the previous member"
                end = off + member.get_size()
                why = _nonstandard_type(member, f"{where}.{name}", depth + 1)
                if why:
                    return why
            return None if end <= tid.get_size() else f"{where}: members extend past the record"
        if isinstance(tid, h5t.TypeVlenID):
            base = tid.get_super()
            if not isinstance(base, (h5t.TypeIntegerID, h5t.TypeFloatID)):
                # e.g. a vlen *sequence* of characters: h5py crashes converting it
                return f"{where}: variable-length sequence of {type(base).__name__} is not supported"
            return _nonstandard_type(base, f"{where}[]", depth + 1)
        if isinstance(tid, h5t.TypeArrayID):
            return _nonstandard_type(tid.get_super(), f"{where}[]", depth + 1)
        if isinstance(tid, h5t.TypeFloatID):
            size = tid.get_size()
            std = _IEEE.get(size)
            if (
                std is None
                or tid.get_fields() != std[0]
                or tid.get_ebias() != std[1]
                or tid.get_precision() != 8 * size
                or tid.get_offset() != 0
                or tid.get_norm() != h5t.NORM_IMPLIED
            ):
                return f"{where}: non-standard {size}-byte float (fields {tid.get_fields()}, bias {tid.get_ebias()})"
            return None
        if isinstance(tid, h5t.TypeIntegerID):
            size = tid.get_size()
            if size not in (1, 2, 4, 8) or tid.get_precision() != 8 * size or tid.get_offset() != 0:
                return f"{where}: non-standard {size}-byte integer (precision {tid.get_precision()})"
            return None
        if isinstance(tid, (h5t.TypeStringID, h5t.TypeEnumID, h5t.TypeOpaqueID)):
            return None
        return f"{where}: unexpected datatype class {type(tid).__name__}"
    except Exception as err:  # noqa: BLE001 - a type the library cannot even describe is corrupt
        return f"{where}: unreadable datatype ({err})"


def check_hdf5_datatype(ds: h5py.Dataset, path: str) -> None:
    """Raise :class:`DataFileError` unless ``ds`` has a standard (uncorrupted) datatype."""
    why = _nonstandard_type(ds.id.get_type(), ds.name or "dataset")
    if why:
        raise DataFileError(path, f"{why}; the file is corrupted or uses an unsupported type")


@dataclass(frozen=True)
class _Field:
    """One member of an on-disk record (``name`` None: the dataset element itself)."""

    name: str | None
    offset: int  # byte offset in the on-disk record
    dtype: np.dtype | None  # fixed-size member type; None for variable-length members
    vlen: str | None = None  # "seq" (sequence) or "str" (string) for variable-length members
    elem: np.dtype | None = None  # element type of a variable-length sequence


def _vlen_kind(tid: Any) -> str | None:
    if isinstance(tid, h5py.h5t.TypeVlenID):
        return "seq"
    if isinstance(tid, h5py.h5t.TypeStringID) and tid.is_variable_str():
        return "str"
    return None


def _contains_vlen(tid: Any, depth: int = 0) -> bool:
    h5t = h5py.h5t
    if _vlen_kind(tid) is not None or depth > 8:
        return True
    if isinstance(tid, h5t.TypeCompoundID):
        return any(_contains_vlen(tid.get_member_type(i), depth + 1) for i in range(tid.get_nmembers()))
    if isinstance(tid, h5t.TypeArrayID):
        return _contains_vlen(tid.get_super(), depth + 1)
    return False


def _disk_layout(ds: h5py.Dataset, sizeof_addr: int) -> tuple[int, list[_Field]] | None:
    """On-disk record size and members of ``ds``, or None for layouts not modelled here.

    HDF5 reports the in-memory layout, in which a vlen sequence/string takes 16/8 bytes; on
    disk each is ``length (4) + heap address + heap index (4)``.  Variable-length data nested
    inside other members is not modelled.
    """
    tid = ds.id.get_type()
    disk_vlen = 8 + sizeof_addr

    def vlen_field(name: str | None, offset: int, t: Any, kind: str) -> _Field:
        elem = np.dtype(t.get_super().dtype) if kind == "seq" else np.dtype(np.uint8)
        return _Field(name, offset, None, kind, elem)

    kind = _vlen_kind(tid)
    if kind is not None:
        return disk_vlen, [vlen_field(None, 0, tid, kind)]
    if not isinstance(tid, h5py.h5t.TypeCompoundID):
        return None if _contains_vlen(tid) else (tid.get_size(), [_Field(None, 0, ds.dtype)])
    delta, fields = 0, []
    for offset, i in sorted((tid.get_member_offset(i), i) for i in range(tid.get_nmembers())):
        mt = tid.get_member_type(i)
        name = tid.get_member_name(i).decode("utf-8", errors="replace")
        kind = _vlen_kind(mt)
        if kind is not None:
            fields.append(vlen_field(name, offset + delta, mt, kind))
            delta += disk_vlen - mt.get_size()
        elif _contains_vlen(mt):
            return None
        else:
            fields.append(_Field(name, offset + delta, np.dtype(ds.dtype[name])))
    return tid.get_size() + delta, fields


class _GlobalHeaps:
    """Reads and validates HDF5 global heap collections (where vlen data lives) by hand.

    The HDF5 library can loop forever or crash on a corrupt collection (e.g. a wrong
    collection size), so collections are parsed and checked here: signature, version,
    size inside the file, and objects that tile the collection exactly.
    """

    def __init__(self, buf: Any, sizeof_size: int) -> None:
        self.buf = buf
        self.n = len(buf)
        self.sz = sizeof_size
        self.cache: dict[int, dict[int, tuple[int, int]] | str] = {}

    def _uint(self, pos: int, size: int) -> int:
        return int.from_bytes(self.buf[pos : pos + size], "little")

    def objects(self, addr: int) -> dict[int, tuple[int, int]] | str:
        """``{object index: (size, data position)}`` of the collection at ``addr``, or what is wrong."""
        if addr not in self.cache:
            self.cache[addr] = self._parse(addr)
        return self.cache[addr]

    def _parse(self, addr: int) -> dict[int, tuple[int, int]] | str:
        head = 8 + self.sz
        if addr <= 0 or addr + head > self.n:
            return f"global heap address {addr} outside the file"
        if self.buf[addr : addr + 4] != b"GCOL" or self.buf[addr + 4] != 1:
            return f"no global heap collection at {addr}"
        size = self._uint(addr + 8, self.sz)
        end = addr + size
        if size < head or end > self.n:
            return f"global heap collection at {addr} has size {size} beyond the file"
        objs: dict[int, tuple[int, int]] = {}
        pos, obj_head = addr + head, 8 + self.sz
        while pos + obj_head <= end:
            index = self._uint(pos, 2)
            osize = self._uint(pos + 8, self.sz)
            if index == 0:  # free space: must cover the rest of the collection exactly
                if osize != end - pos:
                    return f"global heap collection at {addr}: free space {osize} != remaining {end - pos}"
                return objs
            need = obj_head + ((osize + 7) // 8) * 8
            if index in objs or pos + need > end:
                return f"global heap collection at {addr}: object {index} overruns or repeats"
            objs[index] = (osize, pos + obj_head)
            pos += need
        return objs if end - pos < obj_head else f"global heap collection at {addr} is malformed"


def _raw_records(ds: h5py.Dataset, n: int, rec: int, mm: Any, path: str) -> bytes | None:
    """The dataset's on-disk record bytes in record order, or None for unmodelled storage."""
    if n * rec > len(mm):
        raise DataFileError(path, f"{ds.name} claims {n} records of {rec} bytes, more than the file holds")
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        off = ds.id.get_offset()
        if off is None:
            return None
        if ds.id.get_storage_size() != n * rec:
            raise DataFileError(
                path, f"{ds.name}: storage of {ds.id.get_storage_size()} bytes does not hold {n} records of {rec} bytes"
            )
        if off + n * rec > len(mm):
            raise DataFileError(path, f"{ds.name}: its data lies beyond the end of the file")
        return mm[off : off + n * rec]
    if layout != h5py.h5d.CHUNKED or dcpl.get_nfilters() != 0:
        return None
    buf = bytearray(n * rec)
    chunk = ds.chunks[0]
    for i in range(ds.id.get_num_chunks()):
        info = ds.id.get_chunk_info(i)
        first = int(info.chunk_offset[0])
        if first % chunk or first >= n:
            raise DataFileError(path, f"{ds.name}: chunk {i} starts at record {first}, outside the dataset")
        count = min(chunk, n - first)
        start = int(info.byte_offset)
        if info.size < count * rec or start + count * rec > len(mm):
            raise DataFileError(path, f"{ds.name}: chunk {i} is shorter than its records or beyond the file")
        buf[first * rec : (first + count) * rec] = mm[start : start + count * rec]
    return bytes(buf)


def _vlen_values(
    raw: bytes, n: int, rec: int, fld: _Field, heaps: _GlobalHeaps, path: str, name: str
) -> np.ndarray:
    """Object array of the variable-length values (arrays, or bytes for strings) of one member."""
    desc = np.ndarray((n,), np.dtype([("length", "<u4"), ("addr", "<u8"), ("index", "<u4")]), buffer=raw, offset=fld.offset, strides=(rec,))
    elem = fld.elem if fld.elem is not None else np.dtype(np.uint8)
    out = np.empty(n, dtype=object)
    empty = b"" if fld.vlen == "str" else np.zeros(0, elem)
    for i, (length, addr, index) in enumerate(desc.tolist()):
        if length == 0:
            out[i] = empty
            continue
        objs = heaps.objects(addr)
        if isinstance(objs, str):
            raise DataFileError(path, f"{name}: {objs}; the file is corrupted")
        size, pos = objs.get(index, (-1, 0))
        if size != length * elem.itemsize:
            raise DataFileError(
                path,
                f"{name}: variable-length entry #{i} of {length} elements points to heap object "
                f"{index} of size {size if size >= 0 else 'none'}; the file is corrupted",
            )
        data = heaps.buf[pos : pos + size]
        out[i] = bytes(data) if fld.vlen == "str" else np.frombuffer(data, elem).copy()
    return out


def read_hdf5_records(f: h5py.File, ds: h5py.Dataset, path: str) -> np.ndarray | None:
    """Read a 1-D dataset from its raw storage and the global heap, without HDF5's vlen code.

    Byte-flip fuzzing showed HDF5 2.0 crashing or looping forever on corrupt variable-length
    type descriptions and heap collections; reading the records by hand (after
    :func:`check_hdf5_datatype`) turns every such corruption into :class:`DataFileError`.

    Returns:
        A structured array (vlen members as object arrays of numpy arrays, vlen strings as
        bytes) or a plain array for non-compound datasets; None when the layout is not
        modelled (filtered or compact storage, addresses other than 8 bytes, vlen nested
        in other members) and the caller must fall back to HDF5.
    """
    try:
        if ds.ndim != 1:
            return None
        sizeof_addr, sizeof_size = f.id.get_create_plist().get_sizes()
        layout = _disk_layout(ds, sizeof_addr) if sizeof_addr == 8 else None
    except Exception as err:  # noqa: BLE001 - HDF5 failing to describe its own layout = corrupt
        raise DataFileError(path, f"{ds.name}: cannot read its datatype or layout ({err})") from None
    if layout is None:
        return None
    rec, fields = layout
    n = int(ds.shape[0])
    for fld in fields:
        size = 8 + sizeof_addr if fld.dtype is None else fld.dtype.itemsize
        if fld.offset + size > rec:
            raise DataFileError(path, f"{ds.name}: member {fld.name} extends past its record")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            raw = _raw_records(ds, n, rec, mm, path)
        except DataFileError:
            raise
        except Exception as err:  # noqa: BLE001
            raise DataFileError(path, f"{ds.name}: cannot locate its storage ({err})") from None
        if raw is None:
            return None
        heaps = _GlobalHeaps(mm, sizeof_size)
        if fields[0].name is None:
            fld = fields[0]
            if fld.vlen is not None:
                return _vlen_values(raw, n, rec, fld, heaps, path, ds.name)
            return np.ndarray((n,), fld.dtype, buffer=raw, strides=(rec,)).copy()
        out = np.empty(n, dtype=[(fld.name, object if fld.vlen else fld.dtype) for fld in fields])
        for fld in fields:
            if fld.vlen is not None:
                out[fld.name] = _vlen_values(raw, n, rec, fld, heaps, path, ds.name)
            else:
                out[fld.name] = np.ndarray((n,), fld.dtype, buffer=raw, offset=fld.offset, strides=(rec,))
        return out


def read_hdf5_text(f: h5py.File, ds: h5py.Dataset, path: str) -> bytes:
    """The first string of a string dataset (e.g. an ISMRMRD ``xml`` header), read defensively."""
    check_hdf5_datatype(ds, path)
    if not isinstance(ds.id.get_type(), h5py.h5t.TypeStringID):
        raise DataFileError(path, f"{ds.name} is not a string dataset ({type(ds.id.get_type()).__name__})")
    if ds.shape is None or ds.size < 1:
        raise DataFileError(path, f"{ds.name} is empty")
    values = read_hdf5_records(f, ds, path)
    if values is None:  # storage not modelled by read_hdf5_records: let HDF5 read it
        values = ds[()]
    first = values.ravel()[0] if np.ndim(values) else values
    if isinstance(first, (bytes, np.bytes_)):
        return bytes(first).rstrip(b"\x00")
    if isinstance(first, str):
        return first.encode("utf-8")
    raise DataFileError(path, f"{ds.name} holds a {type(first).__name__}, expected a string")


def _is_image_group(obj: Any) -> bool:
    return (
        isinstance(obj, h5py.Group)
        and isinstance(obj.get("header"), h5py.Dataset)
        and isinstance(obj.get("data"), h5py.Dataset)
        and obj["header"].dtype.names is not None
        and "matrix_size" in obj["header"].dtype.names
    )


def find_image_groups(f: h5py.File) -> list[str]:
    """Paths of ISMRMRD image groups (``header`` + ``data`` [+ ``attributes``]) up to depth 3."""
    found: list[str] = []

    def walk(group: h5py.Group, depth: int) -> None:
        for name in group:
            try:
                obj = group[name]
            except Exception:  # noqa: BLE001 - unreadable link: skip
                continue
            if _is_image_group(obj):
                found.append(obj.name)
            elif isinstance(obj, h5py.Group) and depth < 3:
                walk(obj, depth + 1)

    walk(f, 1)
    return sorted(found)


def _describe_members(group: h5py.Group) -> str:
    items = []
    for name in group:
        try:
            obj = group[name]
            kind = "group" if isinstance(obj, h5py.Group) else f"dataset {obj.shape}"
        except Exception:  # noqa: BLE001
            kind = "unreadable"
        items.append(f"{name} ({kind})")
    return ", ".join(items) if items else "nothing"


# --------------------------------------------------------------------------- loading


@dataclass
class _Loaded:
    path: str
    dataset: str
    xml: bytes
    acqs: np.ndarray  # structured: head, data (object), traj (object)
    stored_digest: str | None


def _load(path: str | os.PathLike[str], dataset: str) -> _Loaded:
    """Read the XML header and all acquisitions into memory, or raise DataFileError."""
    p = os.fspath(path)
    with open_hdf5(p) as f:
        try:
            group = f.get(dataset)
            images = find_image_groups(f)
            if not isinstance(group, h5py.Group):
                if images:
                    raise DataFileError(
                        p,
                        f"holds ISMRMRD images ({', '.join(images)}), not raw k-space data; "
                        "read it with cardiomm.data.ismrmrd_image.read_ismrmrd_images",
                    )
                candidates = [n for n in f if isinstance(f.get(n), h5py.Group) and "data" in f[n]]
                hint = f"; pass dataset={candidates[0]!r}?" if candidates else ""
                raise DataFileError(
                    p, f"has no /{dataset} group (the file holds: {_describe_members(f)}){hint}"
                )
            if "data" not in group:
                if images:
                    raise DataFileError(
                        p,
                        f"holds ISMRMRD images ({', '.join(images)}), not raw k-space data "
                        f"(/{dataset} has no 'data'); read it with "
                        "cardiomm.data.ismrmrd_image.read_ismrmrd_images",
                    )
                raise DataFileError(
                    p, f"/{dataset} has no acquisitions ('data'); it holds: {_describe_members(group)}"
                )
            if "xml" not in group:
                raise DataFileError(p, f"/{dataset} has no XML header ('xml')")
            xml_ds, data_ds = group["xml"], group["data"]
            if not isinstance(data_ds, h5py.Dataset) or not isinstance(xml_ds, h5py.Dataset):
                raise DataFileError(p, f"/{dataset}/data and /{dataset}/xml must be datasets")
            check_hdf5_datatype(data_ds, p)
            check_hdf5_datatype(xml_ds, p)
            _check_acquisition_types(data_ds, xml_ds, p)
            names = data_ds.dtype.names or ()
            if "head" not in names or "data" not in names:
                raise DataFileError(
                    p, f"/{dataset}/data is not an ISMRMRD acquisition table (fields {names or data_ds.dtype})"
                )
            head_names = data_ds.dtype["head"].names or ()
            missing = [n for n in _HEAD_FIELDS if n not in head_names]
            if missing:
                raise DataFileError(p, f"acquisition headers lack the fields {missing}")
            idx_names = data_ds.dtype["head"]["idx"].names or ()
            missing = [n for n in _IDX_FIELDS if n not in idx_names]
            if missing:
                raise DataFileError(p, f"acquisition counters (idx) lack the fields {missing}")
            xml = read_hdf5_text(f, xml_ds, p)
            acqs = read_hdf5_records(f, data_ds, p)
            if acqs is None:  # storage this reader does not model: let HDF5 read it
                acqs = data_ds[()]
            if acqs.ndim != 1:
                raise DataFileError(p, f"/{dataset}/data has shape {acqs.shape}, expected 1D")
            digest = group.attrs.get(DIGEST_ATTRIBUTE)
            if isinstance(digest, bytes):
                digest = digest.decode("ascii", errors="replace")
        except DataFileError:
            raise
        except Exception as err:  # noqa: BLE001 - any h5py/HDF5 failure while reading = corrupt file
            raise DataFileError(p, f"cannot read /{dataset}: the file is corrupted ({type(err).__name__}: {err})") from None
    return _Loaded(p, dataset, xml, acqs, digest if isinstance(digest, str) else None)


def _check_acquisition_types(data_ds: h5py.Dataset, xml_ds: h5py.Dataset, p: str) -> None:
    """The ISMRMRD layout: a string header; acquisitions with a compound ``head`` and float32 vlen samples."""
    h5t = h5py.h5t
    if not isinstance(xml_ds.id.get_type(), h5t.TypeStringID):
        raise DataFileError(p, f"{xml_ds.name} is not a string dataset ({type(xml_ds.id.get_type()).__name__})")
    tid = data_ds.id.get_type()
    if not isinstance(tid, h5t.TypeCompoundID):
        raise DataFileError(p, f"{data_ds.name} is not a compound acquisition table")
    members = {tid.get_member_name(i).decode("utf-8", "replace"): tid.get_member_type(i) for i in range(tid.get_nmembers())}
    if not isinstance(members.get("head"), h5t.TypeCompoundID):
        raise DataFileError(p, f"{data_ds.name}: 'head' is not a compound acquisition header")
    for name in ("data", "traj"):
        mt = members.get(name)
        if mt is None and name == "traj":
            continue
        if not (isinstance(mt, h5t.TypeVlenID) and isinstance(mt.get_super(), h5t.TypeFloatID) and mt.get_super().get_size() == 4):
            raise DataFileError(p, f"{data_ds.name}: '{name}' is not a variable-length float32 field")


def _content_digest(xml: bytes, acqs: np.ndarray) -> str:
    sha = hashlib.sha256()
    sha.update(len(xml).to_bytes(8, "little"))
    sha.update(xml)
    heads = acqs["head"]
    if heads.dtype.names == ih5.acquisition_header_dtype.names:
        heads = heads.astype(ih5.acquisition_header_dtype)  # values, not the file's byte layout
    sha.update(np.ascontiguousarray(heads).tobytes())
    has_traj = "traj" in (acqs.dtype.names or ())
    for i in range(acqs.shape[0]):
        for part in (acqs["data"][i], acqs["traj"][i] if has_traj else None):
            b = np.asarray(part, dtype=np.float32).tobytes() if part is not None else b""
            sha.update(len(b).to_bytes(8, "little"))
            sha.update(b)
    return sha.hexdigest()


def _verify_digest(ld: _Loaded) -> None:
    if ld.stored_digest is None:
        return
    actual = _content_digest(ld.xml, ld.acqs)
    if actual != ld.stored_digest:
        raise DataFileError(
            ld.path,
            f"content does not match its stored SHA-256 ({DIGEST_ATTRIBUTE}); the file is corrupted",
        )


# --------------------------------------------------------------------------- validation


@dataclass
class _Acqs:
    """Validated per-acquisition arrays."""

    heads: np.ndarray
    data: list[np.ndarray]  # [coil, sample] complex64 each
    traj_dims: np.ndarray
    flags: np.ndarray
    idx: dict[str, np.ndarray]


def _fmt_indices(idx: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(f"#{int(i)}" for i in idx[:limit])
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def _validate(ld: _Loaded) -> _Acqs:
    """Checks that hold for any ISMRMRD raw file, Cartesian or not."""
    p, acqs = ld.path, ld.acqs
    n = acqs.shape[0]
    if n == 0:
        raise DataFileError(p, f"/{ld.dataset}/data holds no acquisitions")
    heads = acqs["head"]
    ns = heads["number_of_samples"].astype(np.int64)
    nc = heads["active_channels"].astype(np.int64)
    td = heads["trajectory_dimensions"].astype(np.int64)
    empty = np.flatnonzero((ns == 0) | (nc == 0))
    if empty.size:
        raise DataFileError(
            p,
            f"{empty.size} of {n} acquisitions carry 0 samples or 0 channels ({_fmt_indices(empty)}); "
            "the file holds no usable raw data (e.g. a sequence/protocol description file)",
        )
    has_traj = "traj" in (acqs.dtype.names or ())
    data: list[np.ndarray] = []
    bad_len: list[str] = []
    for i in range(n):
        d = np.asarray(acqs["data"][i])
        expected = 2 * ns[i] * nc[i]
        if d.ndim != 1 or d.size != expected:
            bad_len.append(f"#{i} has {d.size} floats, its header says {nc[i]} channels x {ns[i]} samples")
        elif has_traj and np.asarray(acqs["traj"][i]).size != ns[i] * td[i]:
            bad_len.append(
                f"#{i} has {np.asarray(acqs['traj'][i]).size} trajectory floats, its header says "
                f"{ns[i]} samples x {td[i]} dims"
            )
        else:
            data.append(d.astype(np.float32, copy=False).view(np.complex64).reshape(nc[i], ns[i]))
        if len(bad_len) >= 3:
            break
    if bad_len:
        raise DataFileError(p, "acquisition data does not match its header: " + "; ".join(bad_len))
    if not has_traj and np.any(td > 0):
        raise DataFileError(p, "acquisition headers announce trajectories but the table has no 'traj' field")
    coils = np.unique(nc)
    if coils.size > 1:
        counts = {int(c): int(np.sum(nc == c)) for c in coils}
        raise DataFileError(
            p, f"acquisitions have mixed channel counts {counts} (channels: number of acquisitions)"
        )
    nonfinite = np.array([i for i, d in enumerate(data) if not np.all(np.isfinite(d))], dtype=np.int64)
    if nonfinite.size:
        raise DataFileError(
            p, f"{nonfinite.size} acquisitions contain NaN or Inf samples ({_fmt_indices(nonfinite)})"
        )
    idx = {k: heads["idx"][k].astype(np.int64) for k in _IDX_FIELDS}
    return _Acqs(heads, data, td, heads["flags"].astype(np.uint64), idx)


def _trajectory_problem(header: IsmrmrdHeader, acq: _Acqs) -> str | None:
    traj = header.trajectory
    with_traj = int(np.sum(acq.traj_dims > 0))
    if (traj is None or traj == "cartesian") and with_traj == 0:
        return None
    parts = []
    if traj not in (None, "cartesian"):
        parts.append(f"the header trajectory is '{traj}'")
    if with_traj:
        dims = sorted({int(d) for d in acq.traj_dims if d > 0})
        parts.append(f"{with_traj} acquisitions carry {'/'.join(map(str, dims))}-D trajectory samples")
    return (
        " and ".join(parts)
        + ": reconstruction of non-Cartesian trajectories is not supported by CardioMM; "
        "use read_ismrmrd_samples() for the raw samples with their trajectory, or inspect_ismrmrd()"
    )


# --------------------------------------------------------------------------- noise


def estimate_noise_covariance(noise: np.ndarray) -> np.ndarray:
    """Coil noise covariance ``X X^H / N`` of noise samples ``X [coil, N]`` (complex128 ``[coil, coil]``)."""
    x = np.asarray(noise)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"noise samples must be [coil, N>0], got shape {x.shape}")
    x = x.astype(np.complex128)
    return (x @ x.conj().T) / x.shape[1]


def prewhitening_matrix(noise_covariance: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``W = scale * L^-1`` with ``noise_covariance = L L^H`` (so ``W C W^H = scale^2 I``).

    Apply it over the coil axis: ``kspace_white[c] = sum_d W[c, d] kspace[d]``; coil
    sensitivities used with whitened data must be whitened the same way.

    Raises:
        ValueError: if the covariance is not Hermitian positive definite (e.g. a channel
            with zero noise, or fewer noise samples than coils).
    """
    c = np.asarray(noise_covariance, dtype=np.complex128)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"noise covariance must be square [coil, coil], got shape {c.shape}")
    try:
        chol = np.linalg.cholesky(0.5 * (c + c.conj().T))
    except np.linalg.LinAlgError:
        diag = np.real(np.diag(c))
        raise ValueError(
            f"noise covariance {c.shape} is not positive definite (channel noise variances "
            f"{np.array2string(diag, precision=3)}); cannot prewhiten"
        ) from None
    return scale * np.linalg.inv(chol)


def _apply_coil_matrix(w: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``out[s, c, ...] = sum_d w[c, d] k[s, d, ...]`` in complex64."""
    out = np.tensordot(w.astype(np.complex64), k, axes=([1], [1]))  # [c, s, ...]
    return np.ascontiguousarray(np.moveaxis(out, 0, 1))


# --------------------------------------------------------------------------- reading


def _select(
    p: str, name: str, values: np.ndarray, want: int | None, keyword: str
) -> int | None:
    uniq = np.unique(values)
    if want is None:
        if uniq.size > 1:
            raise DataFileError(
                p, f"holds {uniq.size} {name} values {uniq.tolist()}; pass {keyword}=<value> to read one"
            )
        return int(uniq[0]) if uniq.size else None
    if want not in uniq:
        raise DataFileError(p, f"has no {name} {want}; it holds {uniq.tolist()}")
    return int(want)


def read_ismrmrd_raw(
    path: str | os.PathLike[str],
    *,
    dataset: str = "dataset",
    prewhiten: bool = True,
    remove_oversampling: bool = True,
    combine_averages: bool = True,
    repetition: int | None = None,
    contrast: int | None = None,
    set_index: int | None = None,
) -> KSpaceScan:
    """Read Cartesian multi-coil raw data from an ISMRMRD HDF5 file.

    See the module docstring for every choice made (time axis, ky/kx placement, ACS,
    averages, prewhitening, oversampling).

    Args:
        path: the ``.h5`` / ``.mrd`` file.
        dataset: name of the ISMRMRD group (``"dataset"`` by default).
        prewhiten: whiten all data with the noise acquisitions, if the file has any.
        remove_oversampling: crop readout oversampling (encoded x > recon x).
        combine_averages: mean over repeated lines; False keeps the lowest average index.
        repetition, contrast, set_index: select one value of that counter (needed when the
            file holds several; see the module docstring for repetitions).
    Returns:
        :class:`KSpaceScan` with ``kspace [slice, coil, time, ky, kx]`` complex64,
        ``mask [slice, time, ky, kx]`` bool, ``acs [slice, coil, time|1, ky, kx]`` or None,
        ``noise_covariance [coil, coil]`` complex128 or None, and the header's metadata
        (``n_coils``/``n_frames``/``n_slices`` from the data; ``acceleration`` from the
        ``cardiomm_acceleration`` parameter if written, else the sampled fraction of
        ky lines; reader details in ``metadata.extra["ismrmrd"]``).
    Raises:
        DataFileError: for any unreadable, inconsistent or non-raw file (names the file).
        UnsupportedTrajectoryError: for non-Cartesian data.
    """
    ld = _load(path, dataset)
    p = ld.path
    header = parse_ismrmrd_header(ld.xml, p)
    _verify_digest(ld)
    acq = _validate(ld)
    problem = _trajectory_problem(header, acq)
    if problem is not None:
        logger.warning("%s: %s", p, problem)
        raise UnsupportedTrajectoryError(p, problem)
    return _assemble(ld, header, acq, prewhiten, remove_oversampling, combine_averages, repetition, contrast, set_index)


def _assemble(
    ld: _Loaded,
    header: IsmrmrdHeader,
    acq: _Acqs,
    prewhiten: bool,
    remove_oversampling: bool,
    combine_averages: bool,
    repetition: int | None,
    contrast: int | None,
    set_index: int | None,
) -> KSpaceScan:
    p = ld.path
    if np.any(acq.heads["encoding_space_ref"] != 0):
        refs = np.unique(acq.heads["encoding_space_ref"]).tolist()
        raise DataFileError(p, f"acquisitions use encoding spaces {refs}; only single-encoding files are supported")
    flags = acq.flags
    notes: list[str] = []
    is_noise = _has_flag(flags, ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    is_calib = _has_flag(flags, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
    is_both = _has_flag(flags, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
    skipped = np.zeros_like(is_noise)
    skipped_counts: dict[str, int] = {}
    for fl in _SKIPPED_FLAGS:
        hit = _has_flag(flags, fl) & ~is_noise
        if hit.any():
            skipped_counts[FLAG_NAMES.get(fl, str(fl))] = int(hit.sum())
        skipped |= hit
    is_acs = (is_calib | is_both) & ~is_noise & ~skipped
    is_img = ~is_noise & ~skipped & (~is_calib | is_both)
    used = is_img | is_acs
    if not used.any():
        raise DataFileError(p, "holds no imaging or calibration acquisitions (only noise/navigator/other data)")

    idx = acq.idx
    c_sel = _select(p, "contrasts", idx["contrast"][used], contrast, "contrast")
    s_sel = _select(p, "sets", idx["set"][used], set_index, "set_index")
    keep = used & (idx["contrast"] == c_sel) & (idx["set"] == s_sel)
    reps = np.unique(idx["repetition"][keep])
    phases = np.unique(idx["phase"][keep])
    time_axis = "phase"
    if repetition is not None:
        if repetition not in reps:
            raise DataFileError(p, f"has no repetition {repetition}; it holds {reps.tolist()}")
        keep &= idx["repetition"] == repetition
    elif reps.size > 1:
        if phases.size > 1:
            raise DataFileError(
                p,
                f"holds {phases.size} cardiac phases and {reps.size} repetitions {reps.tolist()}; "
                "pass repetition=<value> to read one",
            )
        time_axis = "repetition"
    if not combine_averages:
        avg_min = int(idx["average"][keep].min())
        if np.unique(idx["average"][keep]).size > 1:
            notes.append(f"combine_averages=False: kept average {avg_min} only")
        keep &= idx["average"] == avg_min
    time_idx = idx["repetition"] if time_axis == "repetition" else idx["phase"]

    # ---- geometry
    n_coils = acq.data[0].shape[0]
    enc, rec = header.encoded_matrix_xyz, header.recon_matrix_xyz
    sel = np.flatnonzero(keep)
    e1 = idx["kspace_encode_step_1"]
    if enc is not None and enc[0] > 0 and enc[1] > 0:
        nx, ny = int(enc[0]), int(enc[1])
    else:
        nx = int(acq.heads["number_of_samples"][sel].max())
        ny = int(e1[sel].max()) + 1
        notes.append(f"no encoded matrix in the header; using {ny} x {nx} from the data")
    center = header.limit("kspace_encoding_step_1").center
    offset = ny // 2 - center if center is not None else 0
    rows = e1[sel] + offset
    if rows.min() < 0 or rows.max() >= ny:
        if offset != 0 and e1[sel].min() >= 0 and e1[sel].max() < ny:
            notes.append(
                f"encoding limits centre {center} would put ky lines outside the {ny}-line matrix; "
                "used kspace_encode_step_1 as the row index"
            )
            offset = 0
        else:
            raise DataFileError(
                p,
                f"kspace_encode_step_1 values {int(e1[sel].min())}..{int(e1[sel].max())} with centre "
                f"{center} do not fit the encoded matrix of {ny} lines",
            )
    n_slices = int(idx["slice"][sel].max()) + 1
    n_frames = int(time_idx[sel].max()) + 1
    nbytes = n_slices * n_coils * n_frames * ny * nx * 8
    if nbytes > MAX_KSPACE_BYTES:
        raise DataFileError(
            p,
            f"counters describe {n_slices} slices x {n_frames} frames x {ny} x {nx} k-space for "
            f"{n_coils} coils ({nbytes / 2**30:.1f} GiB); refusing (corrupt counters?)",
        )

    kspace = np.zeros((n_slices, n_coils, n_frames, ny, nx), np.complex64)
    count = np.zeros((n_slices, n_frames, ny, nx), np.uint16)
    acs_sel = sel[is_acs[sel]]
    acs = np.zeros_like(kspace) if acs_sel.size else None
    acs_count = np.zeros_like(count) if acs_sel.size else None
    heads = acq.heads
    n_full_shifted = 0
    for i in sel:
        d = acq.data[i]
        ns = d.shape[1]
        pre, post = int(heads["discard_pre"][i]), int(heads["discard_post"][i])
        if pre + post >= ns:
            raise DataFileError(p, f"acquisition #{i} discards {pre}+{post} of its {ns} samples")
        d = d[:, pre : ns - post]
        n_eff = d.shape[1]
        c = int(heads["center_sample"][i]) - pre
        if _has_flag(flags[i : i + 1], ismrmrd.ACQ_IS_REVERSE)[0]:
            d = d[:, ::-1]
            c = n_eff - 1 - c
        a = nx // 2 - c
        if n_eff == nx and a != 0:
            a = 0  # a full-length readout fits one way only (e.g. centre not adjusted for reversal)
            n_full_shifted += 1
        if a < 0 or a + n_eff > nx:
            raise DataFileError(
                p,
                f"acquisition #{i}: {n_eff} samples with centre sample {c} do not fit the encoded "
                f"readout of {nx} samples",
            )
        s, t, r = int(idx["slice"][i]), int(time_idx[i]), int(e1[i] + offset)
        targets = []
        if is_img[i]:
            targets.append((kspace, count))
        if is_acs[i]:
            targets.append((acs, acs_count))
        for arr, cnt in targets:
            seg = cnt[s, t, r, a : a + n_eff]
            if not seg.any():
                arr[s, :, t, r, a : a + n_eff] = d
            else:
                arr[s, :, t, r, a : a + n_eff] += d
            cnt[s, t, r, a : a + n_eff] = seg + 1
    for arr, cnt in ((kspace, count), (acs, acs_count)):
        if arr is None:
            continue
        multi = cnt > 1
        if multi.any():
            arr /= np.where(multi, cnt, 1).astype(np.float32)[:, None]
    n_repeated = int(np.sum(count.max(axis=-1) > 1))
    if n_full_shifted:
        notes.append(f"{n_full_shifted} full-length readouts had a centre sample != nx/2; placed over the whole readout")
    mask = count > 0

    if acs is not None and acs_count is not None:
        acs_times = np.unique(time_idx[acs_sel])
        if acs_times.size == 1 and n_frames > 1:
            t0 = int(acs_times[0])
            acs = acs[:, :, t0 : t0 + 1].copy()

    # ---- noise and prewhitening
    noise_sel = np.flatnonzero(is_noise)
    noise_cov = None
    scale = None
    if noise_sel.size:
        noise = np.concatenate([acq.data[i] for i in noise_sel], axis=1)
        noise_cov = estimate_noise_covariance(noise)
        if prewhiten:
            t_noise = float(np.median(heads["sample_time_us"][noise_sel]))
            t_acq = float(np.median(heads["sample_time_us"][sel]))
            scale = float(np.sqrt(t_acq / t_noise)) if t_noise > 0 and t_acq > 0 else 1.0
            try:
                w = prewhitening_matrix(noise_cov, scale)
            except ValueError as err:
                raise DataFileError(p, f"{err}; read with prewhiten=False") from None
            kspace = _apply_coil_matrix(w, kspace)
            if acs is not None:
                acs = _apply_coil_matrix(w, acs)

    # ---- readout oversampling
    oversampling_removed = False
    if remove_oversampling and rec is not None and 0 < rec[0] < nx:
        efov, rfov = header.encoded_fov_xyz_mm, header.recon_fov_xyz_mm
        if efov is None or rfov is None or efov[0] > rfov[0]:
            nr = int(rec[0])
            kspace = _crop_readout(kspace, nr)
            if acs is not None:
                acs = _crop_readout(acs, nr)
            pos = np.rint((np.arange(nr) - nr // 2) * nx / nr + nx // 2).astype(np.int64)
            pos = np.clip(pos, 0, nx - 1)
            mask = mask[..., pos]
            oversampling_removed = True
        else:
            notes.append("recon matrix x < encoded x but the encoded FOV is not larger: kept the readout")

    # ---- metadata
    md = header.metadata
    lines = mask.any(axis=-1)
    explicit_r = md.acceleration
    extra = dict(md.extra)
    info = dict(extra.get("ismrmrd", {}))
    info.update(
        {
            "n_acquisitions": int(len(acq.data)),
            "n_noise": int(noise_sel.size),
            "n_imaging": int(np.sum(is_img[sel])),
            "n_calibration": int(acs_sel.size),
            "skipped": skipped_counts,
            "time_axis": time_axis,
            "contrast": c_sel,
            "set": s_sel,
            "repetition": repetition,
            "repeated_lines_averaged": n_repeated,
            "ky_offset": int(offset),
            "prewhitening_scale": scale,
            "oversampling_removed": oversampling_removed,
            "kspace_matrix": (int(kspace.shape[-2]), int(kspace.shape[-1])),
            "reader_notes": notes,
        }
    )
    extra["ismrmrd"] = info
    for note in notes:
        logger.info("%s: %s", p, note)
    metadata = md.with_updates(
        source=p,
        trajectory="cartesian",
        n_coils=int(n_coils),
        n_frames=int(n_frames),
        n_slices=int(n_slices),
        acceleration=explicit_r
        if explicit_r is not None
        else (float(lines.size / lines.sum()) if lines.any() else None),
        extra=extra,
    )
    return KSpaceScan(
        kspace=np.ascontiguousarray(kspace, dtype=np.complex64),
        mask=mask,
        metadata=metadata,
        acs=None if acs is None else np.ascontiguousarray(acs, dtype=np.complex64),
        noise_covariance=noise_cov,
        prewhitened=scale is not None,
    )


def _crop_readout(k: np.ndarray, nr: int) -> np.ndarray:
    """Remove readout oversampling: centred 1D iFFT along kx, keep the centre ``nr`` pixels, FFT back."""
    t = torch.from_numpy(np.ascontiguousarray(k))
    img = ifft_time(t, dim=KX_DIM)  # centred orthonormal 1D transform along the readout
    nx = k.shape[-1]
    start = nx // 2 - nr // 2
    img = img[..., start : start + nr]
    return fft_time(img.contiguous(), dim=KX_DIM).numpy()


# --------------------------------------------------------------------------- raw samples / inspect


@dataclass
class RawSamples:
    """Raw acquisitions of any trajectory, not reconstructed.

    Attributes:
        data: ``[acquisition, coil, sample]`` complex64.
        trajectory: ``[acquisition, sample, dim]`` float32 (``dim`` = 0 for Cartesian files).
        flags: ``[acquisition]`` uint64 ISMRMRD flag bits.
        counters: ``idx`` counters by name, each ``[acquisition]`` int64.
        center_sample: ``[acquisition]`` int64.
        sample_time_us: ``[acquisition]`` float32 dwell times.
        metadata: header metadata (``metadata.trajectory`` says which trajectory).
        noise: ``[coil, N]`` complex64 noise samples (None unless asked for and present).
    """

    data: np.ndarray
    trajectory: np.ndarray
    flags: np.ndarray
    counters: dict[str, np.ndarray]
    center_sample: np.ndarray
    sample_time_us: np.ndarray
    metadata: ScanMetadata
    noise: np.ndarray | None = None


def read_ismrmrd_samples(
    path: str | os.PathLike[str], *, dataset: str = "dataset", include_noise: bool = False
) -> RawSamples:
    """Read the raw samples and trajectory of every non-noise acquisition (any trajectory).

    Nothing is reconstructed or re-gridded.  All non-noise acquisitions must share their
    sample count and trajectory dimension (so they stack into arrays).

    Raises:
        DataFileError: for unreadable/inconsistent files, as :func:`read_ismrmrd_raw`.
    """
    ld = _load(path, dataset)
    header = parse_ismrmrd_header(ld.xml, ld.path)
    _verify_digest(ld)
    acq = _validate(ld)
    is_noise = _has_flag(acq.flags, ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    sel = np.flatnonzero(~is_noise)
    if sel.size == 0:
        raise DataFileError(ld.path, "holds only noise acquisitions")
    ns = acq.heads["number_of_samples"][sel]
    td = acq.traj_dims[sel]
    if np.unique(ns).size > 1 or np.unique(td).size > 1:
        raise DataFileError(
            ld.path,
            f"acquisitions have varying sample counts {np.unique(ns).tolist()} or trajectory "
            f"dimensions {np.unique(td).tolist()}; they cannot be stacked",
        )
    n_s, n_d = int(ns[0]), int(td[0])
    data = np.stack([acq.data[i] for i in sel])
    traj = np.zeros((sel.size, n_s, n_d), np.float32)
    if n_d:
        traj = np.stack([np.asarray(ld.acqs["traj"][i], np.float32).reshape(n_s, n_d) for i in sel])
    noise = None
    if include_noise and is_noise.any():
        noise = np.concatenate([acq.data[i] for i in np.flatnonzero(is_noise)], axis=1)
    md = header.metadata.with_updates(n_coils=int(data.shape[1]))
    return RawSamples(
        data=data,
        trajectory=traj,
        flags=acq.flags[sel],
        counters={k: v[sel] for k, v in acq.idx.items()},
        center_sample=acq.heads["center_sample"][sel].astype(np.int64),
        sample_time_us=acq.heads["sample_time_us"][sel].astype(np.float32),
        metadata=md,
        noise=noise,
    )


def _range(v: np.ndarray) -> list[int]:
    return [int(v.min()), int(v.max())] if v.size else []


def inspect_ismrmrd(path: str | os.PathLike[str], *, dataset: str = "dataset") -> dict[str, Any]:
    """Summarise any ISMRMRD file (raw or images, Cartesian or not) without failing on content.

    Returns a JSON-friendly dict: ``kind`` (``"raw"``, ``"images"``, ``"empty"``),
    ``groups`` (what the file holds), for raw data ``n_acquisitions``, ``flag_counts``,
    ``number_of_samples``/``active_channels``/``trajectory_dimensions`` (unique values),
    ``counters`` (``[min, max]`` of each ``idx`` counter), ``trajectory``, ``header``
    (:meth:`ScanMetadata.to_dict`), ``image_groups`` (name -> count/shape/dtype), and
    ``problem``: why :func:`read_ismrmrd_raw` would refuse the file (``None`` if it would
    read it).  ``cartesian_readable`` is True when ``problem`` is None.

    Raises:
        DataFileError: only when the file is not a readable HDF5 file at all.
    """
    p = os.fspath(path)
    out: dict[str, Any] = {"path": p, "kind": "empty", "problem": None, "cartesian_readable": False}
    with open_hdf5(p) as f:
        out["groups"] = _describe_members(f)
        image_groups: dict[str, Any] = {}
        for g in find_image_groups(f):
            try:  # shapes and types only: no data is read
                ds = f[g]["data"]
                image_groups[g] = {"n_images": int(f[g]["header"].shape[0]), "shape": list(ds.shape), "dtype": str(ds.dtype)}
            except Exception as err:  # noqa: BLE001 - reported, inspect never fails on content
                image_groups[g] = {"error": f"{type(err).__name__}: {err}"}
        out["image_groups"] = image_groups
        if image_groups:
            out["kind"] = "images"
        for g in [dataset, *(grp.rsplit("/", 1)[0] for grp in image_groups)]:
            grp = f.get(g) if g else None
            if isinstance(grp, h5py.Group) and isinstance(grp.get("xml"), h5py.Dataset):
                try:
                    hdr = parse_ismrmrd_header(read_hdf5_text(f, grp["xml"], p), p)
                    out["header"] = hdr.metadata.to_dict()
                    out["trajectory"] = hdr.trajectory
                except Exception as err:  # noqa: BLE001 - reported, inspect never fails on content
                    out["header_error"] = str(err)
                break
    try:
        ld = _load(p, dataset)
    except DataFileError as err:
        out["problem"] = err.problem
        return out
    out["kind"] = "raw"
    heads = ld.acqs["head"]
    out["n_acquisitions"] = int(heads.shape[0])
    flags = heads["flags"].astype(np.uint64)
    out["flag_counts"] = {
        name: int(np.sum(_has_flag(flags, bit))) for bit, name in sorted(FLAG_NAMES.items()) if _has_flag(flags, bit).any()
    }
    out["n_without_flags"] = int(np.sum(flags == 0))
    for key in ("number_of_samples", "active_channels", "trajectory_dimensions", "center_sample"):
        out[key] = np.unique(heads[key]).astype(int).tolist()
    out["counters"] = {k: _range(heads["idx"][k].astype(np.int64)) for k in _IDX_FIELDS}
    try:
        header = parse_ismrmrd_header(ld.xml, p)
        _verify_digest(ld)
        acq = _validate(ld)
        problem = _trajectory_problem(header, acq)
        if problem is None:
            _assemble(ld, header, acq, False, False, True, None, None, None)
        out["problem"] = problem
    except DataFileError as err:
        out["problem"] = err.problem
    out["cartesian_readable"] = out["problem"] is None
    return out


# --------------------------------------------------------------------------- writing


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _line_segments(mask: np.ndarray, nx: int) -> np.ndarray:
    """``[slice, time, ky, 2]`` start/stop of the sampled kx segment (stop 0 = not sampled)."""
    seg = np.zeros(mask.shape[:-1] + (2,), np.int64)
    any_ = mask.any(axis=-1)
    first = np.argmax(mask, axis=-1)
    last = nx - np.argmax(mask[..., ::-1], axis=-1)
    n = mask.sum(axis=-1)
    bad = any_ & (n != last - first)
    if bad.any():
        s, t, y = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(
            f"mask line (slice {s}, time {t}, ky {y}) is not contiguous along kx; ISMRMRD Cartesian "
            "acquisitions store one contiguous readout segment per line"
        )
    off = any_ & ((first > nx // 2) | (last <= nx // 2))
    if off.any():
        s, t, y = (int(v[0]) for v in np.nonzero(off))
        raise ValueError(
            f"mask line (slice {s}, time {t}, ky {y}) does not contain the readout centre kx={nx // 2}; "
            "ISMRMRD center_sample cannot describe it"
        )
    seg[..., 0] = np.where(any_, first, 0)
    seg[..., 1] = np.where(any_, last, 0)
    return seg


def write_ismrmrd_raw(
    path: str | os.PathLike[str],
    kspace: np.ndarray | torch.Tensor,
    metadata: ScanMetadata,
    *,
    mask: np.ndarray | torch.Tensor | None = None,
    acs: np.ndarray | torch.Tensor | None = None,
    noise: np.ndarray | torch.Tensor | None = None,
    dataset: str = "dataset",
) -> None:
    """Write Cartesian multi-coil k-space as an ISMRMRD raw-data file (atomically).

    Args:
        path: output file (replaced if it exists).
        kspace: ``[slice, coil, time, ky, kx]`` complex (stored as complex64); samples outside
            ``mask`` are not stored (they read back as 0).
        metadata: written into the XML header (``metadata.simulated`` -> ``simulated``
            user parameter; see :func:`cardiomm.data.ismrmrd_header.build_ismrmrd_header`).
            ``metadata.encoded_matrix``, if given, must equal ``kspace``'s ``(ky, kx)``;
            ``metadata.recon_matrix`` may be narrower in x (readout oversampling).
        mask: bool, broadcastable to ``[slice, time, ky, kx]`` (e.g. ``[time, ky, kx]`` or
            ``[time, ky, 1]``); True samples of a line must be one contiguous kx segment
            containing ``kx = nx // 2``.  None writes every line in full.
        acs: ``[slice, coil, time|1, ky, kx]`` calibration data; lines with any non-zero
            sample are written with ``ACQ_IS_PARALLEL_CALIBRATION`` (or
            ``..._AND_IMAGING`` when identical to a fully sampled imaging line).
        noise: ``[coil, N]`` noise samples, written first as noise acquisitions.
        dataset: ISMRMRD group name.
    Raises:
        ValueError: for arrays of the wrong shape/dtype, non-finite sampled values, or a
            non-Cartesian ``metadata.trajectory``.
    """
    k = _to_numpy(kspace)
    if k.ndim != 5 or not np.iscomplexobj(k):
        raise ValueError(
            f"kspace must be complex [slice, coil, time, ky, kx], got shape {k.shape} dtype {k.dtype}"
        )
    n_sl, n_c, n_t, ny, nx = k.shape
    if min(k.shape) == 0:
        raise ValueError(f"kspace has an empty axis: shape {k.shape}")
    if n_c > 1024 or nx > 65535:
        raise ValueError(f"ISMRMRD allows at most 1024 coils and 65535 samples per line, got shape {k.shape}")
    k = k.astype(np.complex64, copy=False)
    if metadata.trajectory not in (None, "cartesian"):
        raise ValueError(f"write_ismrmrd_raw writes Cartesian data only, metadata.trajectory={metadata.trajectory!r}")
    if metadata.encoded_matrix is not None and tuple(metadata.encoded_matrix) != (ny, nx):
        raise ValueError(
            f"metadata.encoded_matrix {tuple(metadata.encoded_matrix)} does not match kspace (ky, kx) {(ny, nx)}"
        )
    if mask is None:
        m = np.ones((n_sl, n_t, ny, nx), bool)
    else:
        m0 = _to_numpy(mask)
        if np.iscomplexobj(m0):
            raise ValueError(f"mask must be real/bool, got {m0.dtype}")
        m0 = m0.astype(bool)
        if m0.ndim == 3:
            m0 = m0[None]
        try:
            m = np.broadcast_to(m0, (n_sl, n_t, ny, nx))
        except ValueError:
            raise ValueError(
                f"mask shape {m0.shape} does not broadcast to [slice, time, ky, kx] = {(n_sl, n_t, ny, nx)}"
            ) from None
    seg = _line_segments(m, nx)
    if not np.all(np.isfinite(k[np.broadcast_to(m[:, None], k.shape)])):
        raise ValueError("kspace has NaN or Inf at sampled positions")

    a = None
    acs_lines = np.zeros((n_sl, 1, ny), bool)
    if acs is not None:
        a = _to_numpy(acs)
        if a.ndim != 5 or not np.iscomplexobj(a) or a.shape[0] != n_sl or a.shape[1] != n_c or a.shape[3:] != (ny, nx) or a.shape[2] not in (1, n_t):
            raise ValueError(
                f"acs must be complex [slice, coil, time|1, ky, kx] = [{n_sl}, {n_c}, 1|{n_t}, {ny}, {nx}], "
                f"got shape {a.shape} dtype {a.dtype}"
            )
        a = a.astype(np.complex64, copy=False)
        if not np.all(np.isfinite(a)):
            raise ValueError("acs has NaN or Inf values")
        acs_lines = np.any(a != 0, axis=(1, 4))  # [slice, time|1, ky]

    nz = None
    if noise is not None:
        nz = _to_numpy(noise)
        if nz.ndim != 2 or nz.shape[0] != n_c or nz.shape[1] == 0 or not np.iscomplexobj(nz):
            raise ValueError(f"noise must be complex [coil={n_c}, N>0], got shape {nz.shape} dtype {nz.dtype}")
        nz = nz.astype(np.complex64, copy=False)
        if not np.all(np.isfinite(nz)):
            raise ValueError("noise has NaN or Inf values")

    # ---- the acquisition list: (flags, slice, time, ky, data[coil, ns], center_sample)
    entries: list[tuple[int, int, int, int, np.ndarray, int]] = []
    noise_flag = int(_flag_mask(ismrmrd.ACQ_IS_NOISE_MEASUREMENT))
    if nz is not None:
        for start in range(0, nz.shape[1], nx):
            chunk = nz[:, start : start + nx]
            entries.append((noise_flag, 0, 0, 0, chunk, 0))
    calib = int(_flag_mask(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION))
    both = int(_flag_mask(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING))
    first_imaging = len(entries)
    slice_pos: list[tuple[int, int]] = []
    for s in range(n_sl):
        start_s = len(entries)
        for t in range(n_t):
            ta = 0 if acs_lines.shape[1] == 1 else t
            for y in range(ny):
                x0, x1 = int(seg[s, t, y, 0]), int(seg[s, t, y, 1])
                img = x1 > 0
                is_acs = a is not None and bool(acs_lines[s, ta, y]) and (ta == t)
                if img and is_acs and x0 == 0 and x1 == nx and np.array_equal(a[s, :, ta, y], k[s, :, t, y]):
                    entries.append((both, s, t, y, k[s, :, t, y], nx // 2))
                    continue
                if img:
                    entries.append((0, s, t, y, k[s, :, t, y, x0:x1], nx // 2 - x0))
                if is_acs:
                    entries.append((calib, s, t, y, a[s, :, ta, y], nx // 2))
        slice_pos.append((start_s, len(entries) - 1))
    if len(entries) == first_imaging:
        raise ValueError("mask selects no k-space line: nothing to write")

    heads = np.zeros(len(entries), dtype=ih5.acquisition_header_dtype)
    heads["version"] = 1
    heads["available_channels"] = n_c
    heads["active_channels"] = n_c
    words = np.zeros(16, np.uint64)
    for ch in range(n_c):
        words[ch // 64] |= np.uint64(1) << np.uint64(ch % 64)
    heads["channel_mask"] = words
    heads["read_dir"] = (1.0, 0.0, 0.0)
    heads["phase_dir"] = (0.0, 1.0, 0.0)
    heads["slice_dir"] = (0.0, 0.0, 1.0)
    spacing = metadata.slice_spacing_mm or metadata.slice_thickness_mm or 0.0
    records = np.empty(len(entries), dtype=ih5.acquisition_dtype)
    empty_traj = np.zeros(0, np.float32)
    for i, (fl, s, t, y, d, cs) in enumerate(entries):
        h = heads[i]
        h["flags"] = fl
        h["scan_counter"] = i
        h["number_of_samples"] = d.shape[1]
        h["center_sample"] = cs
        h["idx"]["kspace_encode_step_1"] = y
        h["idx"]["slice"] = s
        h["idx"]["phase"] = t
        h["position"] = (0.0, 0.0, float((s - (n_sl - 1) / 2) * spacing))
        records["data"][i] = np.ascontiguousarray(d, np.complex64).view(np.float32).ravel()
        records["traj"][i] = empty_traj
    for start_s, end_s in slice_pos:
        if end_s >= start_s:
            heads["flags"][start_s] |= _flag_mask(ismrmrd.ACQ_FIRST_IN_SLICE)
            heads["flags"][end_s] |= _flag_mask(ismrmrd.ACQ_LAST_IN_SLICE)
    heads["flags"][-1] |= _flag_mask(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    records["head"] = heads

    xml = build_ismrmrd_header(
        metadata,
        encoded_matrix=(ny, nx),
        n_coils=n_c,
        n_frames=n_t,
        n_slices=n_sl,
        recon_matrix=metadata.recon_matrix,
    )
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group(dataset)
            xds = g.create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
            xds[0] = xml.encode("utf-8")
            g.create_dataset("data", data=records, maxshape=(None,), chunks=True)
        ld = _load(tmp, dataset)
        with h5py.File(tmp, "r+") as f:
            # fixed-length ASCII: no global-heap object to follow when reading it back
            f[dataset].attrs[DIGEST_ATTRIBUTE] = np.bytes_(_content_digest(ld.xml, ld.acqs))
