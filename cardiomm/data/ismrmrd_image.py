"""Write and read reconstructed images as ISMRMRD (MRD) image datasets.

Layout (what ``ismrmrd.Dataset.append_image`` writes): ``/<dataset>/<series>/header``
(``ismrmrd.hdf5.image_header_dtype`` per image), ``/<dataset>/<series>/attributes`` (one
``ismrmrdMeta`` XML string per image), ``/<dataset>/<series>/data`` ``[image, channel, z, y, x]``
(complex stored as ``(real, imag)`` pairs), plus ``/<dataset>/xml`` with the scan's header.

One image per (slice, cardiac phase): ``image_index`` counts from 1 in (slice, time) order,
``slice``/``phase`` hold the indices, ``matrix_size = (x, y, 1)``, ``field_of_view`` in mm,
``position`` is the slice centre and ``read_dir``/``phase_dir``/``slice_dir`` its orientation
(image columns run along ``read_dir``, rows along ``phase_dir``).  Orientation and slice
positions come from ``metadata.extra["orientation"]`` / ``["slice_positions_mm"]`` when
present (which :func:`read_ismrmrd_images` fills), else an axial identity orientation
with slices ``slice_spacing_mm`` apart centred on the origin.

:func:`read_ismrmrd_images` reads any ISMRMRD image group (e.g. ``images/image_1`` of the
pulseq recon pipeline): images are grouped by their ``slice`` counter and, within a slice,
ordered along ``time`` by (phase, repetition, contrast, set, average, image_index); every
slice must hold the same number.  The counters of each frame are returned in
``metadata.extra["ismrmrd_images"]["frame_counters"]``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import h5py
import ismrmrd
import ismrmrd.hdf5 as ih5
import numpy as np
import torch

from cardiomm.atomic import atomic_path
from cardiomm.data.errors import DataFileError
from cardiomm.data.ismrmrd_header import build_ismrmrd_header, parse_ismrmrd_header
from cardiomm.data.ismrmrd_raw import check_hdf5_datatype, find_image_groups, open_hdf5, read_hdf5_text
from cardiomm.data.metadata import ScanMetadata

__all__ = ["IMAGE_TYPES", "list_ismrmrd_image_groups", "read_ismrmrd_images", "write_ismrmrd_images"]

logger = logging.getLogger(__name__)

#: ``image_type`` names -> ISMRMRD ``IMTYPE_*`` values.
IMAGE_TYPES: dict[str, int] = {
    "magnitude": ismrmrd.IMTYPE_MAGNITUDE,
    "phase": ismrmrd.IMTYPE_PHASE,
    "real": ismrmrd.IMTYPE_REAL,
    "imag": ismrmrd.IMTYPE_IMAG,
    "complex": ismrmrd.IMTYPE_COMPLEX,
}
_IMAGE_TYPE_NAMES = {v: k for k, v in IMAGE_TYPES.items()}
_HEADER_FIELDS = (
    "data_type",
    "matrix_size",
    "field_of_view",
    "channels",
    "position",
    "read_dir",
    "phase_dir",
    "slice_dir",
    "average",
    "slice",
    "contrast",
    "phase",
    "repetition",
    "set",
    "image_type",
    "image_index",
    "image_series_index",
)
_DEFAULT_ORIENTATION = {"read_dir": [1.0, 0.0, 0.0], "phase_dir": [0.0, 1.0, 0.0], "slice_dir": [0.0, 0.0, 1.0]}


def _image_values(images: np.ndarray, image_type: str) -> tuple[np.ndarray, int]:
    """Convert to the stored values and ISMRMRD data type for ``image_type``."""
    if image_type == "complex":
        return images.astype(np.complex64), ismrmrd.DATATYPE_CXFLOAT
    if np.iscomplexobj(images):
        conv = {"magnitude": np.abs, "phase": np.angle, "real": np.real, "imag": np.imag}[image_type]
        values = conv(images)
    elif image_type == "imag":
        values = np.zeros_like(images)
    else:
        values = images
    return np.asarray(values, dtype=np.float32), ismrmrd.DATATYPE_FLOAT


def _vec3(value: Any, name: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.size != 3 or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    return v


def write_ismrmrd_images(
    path: str | os.PathLike[str],
    images: np.ndarray | torch.Tensor,
    metadata: ScanMetadata,
    *,
    series: str = "cardiomm",
    image_type: str = "magnitude",
    series_index: int = 1,
    dataset: str = "dataset",
) -> None:
    """Write ``images [slice, time, y, x]`` as one ISMRMRD image series (atomically).

    Args:
        path: output file (replaced if it exists).
        images: real or complex ``[slice, time, y, x]`` (numpy or torch).
        metadata: scan metadata; FOV from ``recon_fov_mm`` (else ``pixel_spacing_mm`` x
            matrix), slice thickness from ``slice_thickness_mm``, and the XML header
            (``simulated`` marker included) from it.
        series: name of the image group under ``/<dataset>``.
        image_type: ``"magnitude"`` (|x|, float32), ``"phase"`` (angle, rad), ``"real"``,
            ``"imag"`` or ``"complex"`` (complex64); real input is stored as given (for
            ``"magnitude"`` it is taken to be a magnitude already).
        series_index: ``image_series_index`` of every image.
        dataset: ISMRMRD group name.
    Raises:
        ValueError: for wrong shapes, an unknown ``image_type`` or a bad series name.
    """
    if image_type not in IMAGE_TYPES:
        raise ValueError(f"image_type must be one of {sorted(IMAGE_TYPES)}, got {image_type!r}")
    if not series or "/" in series or series == "xml":
        raise ValueError(f"series must be a plain group name (no '/', not 'xml'), got {series!r}")
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4 or min(arr.shape) == 0:
        raise ValueError(f"images must be [slice, time, y, x] with no empty axis, got shape {arr.shape}")
    if not (np.iscomplexobj(arr) or np.issubdtype(arr.dtype, np.number)) or arr.dtype == bool:
        raise ValueError(f"images must be numeric, got dtype {arr.dtype}")
    n_sl, n_t, ny, nx = arr.shape
    if max(ny, nx) > 65535 or n_sl > 65535 or n_t > 65535 or n_sl * n_t > 65535:
        raise ValueError(f"images {arr.shape} exceed ISMRMRD's 16-bit counters")
    values, data_type = _image_values(arr, image_type)

    fov = metadata.recon_fov_mm
    thickness = metadata.slice_thickness_mm
    if fov is not None:
        fov_xyz = (float(fov[0]), float(fov[1]), float(thickness if thickness is not None else fov[2]))
    elif metadata.pixel_spacing_mm is not None:
        py, px = metadata.pixel_spacing_mm
        fov_xyz = (float(px) * nx, float(py) * ny, float(thickness or 0.0))
    else:
        fov_xyz = (0.0, 0.0, float(thickness or 0.0))
    orient = dict(_DEFAULT_ORIENTATION)
    if isinstance(metadata.extra.get("orientation"), dict):
        orient.update(metadata.extra["orientation"])
    dirs = {k: _vec3(orient[k], f"metadata.extra['orientation']['{k}']") for k in _DEFAULT_ORIENTATION}
    positions = metadata.extra.get("slice_positions_mm")
    if positions is not None and len(positions) == n_sl:
        pos = np.stack([_vec3(p, "metadata.extra['slice_positions_mm'] entry") for p in positions])
    else:
        spacing = metadata.slice_spacing_mm or thickness or 0.0
        pos = np.outer((np.arange(n_sl) - (n_sl - 1) / 2) * spacing, dirs["slice_dir"])

    n = n_sl * n_t
    heads = np.zeros(n, dtype=ih5.image_header_dtype)
    heads["version"] = 1
    heads["data_type"] = data_type
    heads["matrix_size"] = (nx, ny, 1)
    heads["field_of_view"] = fov_xyz
    heads["channels"] = 1
    heads["read_dir"] = dirs["read_dir"]
    heads["phase_dir"] = dirs["phase_dir"]
    heads["slice_dir"] = dirs["slice_dir"]
    heads["image_type"] = IMAGE_TYPES[image_type]
    heads["image_series_index"] = series_index
    s_idx, t_idx = np.meshgrid(np.arange(n_sl), np.arange(n_t), indexing="ij")
    heads["slice"] = s_idx.ravel()
    heads["phase"] = t_idx.ravel()
    heads["image_index"] = np.arange(1, n + 1)
    heads["position"] = pos[s_idx.ravel()]
    first_in_slice = np.uint64(1) << np.uint64(ismrmrd.IMAGE_FIRST_IN_SLICE - 1)
    last_in_slice = np.uint64(1) << np.uint64(ismrmrd.IMAGE_LAST_IN_SLICE - 1)
    flags = np.zeros(n, np.uint64)
    flags[t_idx.ravel() == 0] |= first_in_slice
    flags[t_idx.ravel() == n_t - 1] |= last_in_slice
    heads["flags"] = flags

    meta = ismrmrd.Meta()
    meta["DataRole"] = "Image"
    meta["SeriesDescription"] = series
    meta["Simulated"] = "true" if metadata.simulated else "false"
    attribute = meta.serialize()
    heads["attribute_string_len"] = len(attribute.encode("utf-8"))

    xml = build_ismrmrd_header(
        metadata,
        encoded_matrix=(ny, nx),
        recon_matrix=(ny, nx),
        n_coils=int(metadata.n_coils or 1),
        n_frames=n_t,
        n_slices=n_sl,
    )
    h5_type = ih5.get_hdf5type(data_type)
    data = np.ascontiguousarray(values.reshape(n, 1, 1, ny, nx))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group(dataset)
            xds = g.create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
            xds[0] = xml.encode("utf-8")
            s = g.create_group(series)
            s.create_dataset("header", data=heads, maxshape=(None,))
            att = s.create_dataset("attributes", shape=(n,), maxshape=(None,), dtype=h5py.special_dtype(vlen=str))
            att[...] = np.array([attribute] * n, dtype=object)
            s.create_dataset("data", data=data.view(h5_type), maxshape=(None, 1, 1, ny, nx))


def list_ismrmrd_image_groups(path: str | os.PathLike[str]) -> list[str]:
    """HDF5 paths of the ISMRMRD image groups in a file (e.g. ``["/images/image_1"]``)."""
    with open_hdf5(path) as f:
        return find_image_groups(f)


def _resolve_group(p: str, groups: list[str], group: str | None) -> str:
    if group is None:
        if len(groups) > 1:
            logger.info("%s: holds image groups %s; reading %s (pass group= to choose)", p, groups, groups[0])
        return groups[0]
    want = group if group.startswith("/") else None
    matches = [g for g in groups if g == want or g.rsplit("/", 1)[-1] == group or g.lstrip("/") == group]
    if len(matches) != 1:
        raise DataFileError(p, f"image group {group!r} not found (or ambiguous); the file holds {groups}")
    return matches[0]


def read_ismrmrd_images(
    path: str | os.PathLike[str], *, group: str | None = None
) -> tuple[np.ndarray, ScanMetadata]:
    """Read one ISMRMRD image group as ``[slice, time, y, x]``.

    Args:
        path: the file.
        group: image group name (``"image_1"``) or HDF5 path (``"/images/image_1"``); None
            reads the first group in sorted order (all groups are listed in
            ``metadata.extra["ismrmrd_images"]["groups"]``).
    Returns:
        ``(images, metadata)``: float32 (real types and integers) or complex64 array, and the
        metadata from the XML header next to the group when there is one, else from the
        image headers (matrix, FOV in mm, pixel spacing, slice thickness, frames, slices).
    Raises:
        DataFileError: no image groups (raw-data files are named as such), malformed headers,
            multi-channel or 3D images, slices with different numbers of images.
    """
    p = os.fspath(path)
    with open_hdf5(p) as f:
        groups = find_image_groups(f)
        if not groups:
            raw = [n for n in f if isinstance(f.get(n), h5py.Group) and "data" in f[n] and "xml" in f[n]]
            if raw:
                raise DataFileError(
                    p, f"holds raw k-space acquisitions (/{raw[0]}/data), not images; use read_ismrmrd_raw"
                )
            raise DataFileError(p, f"holds no ISMRMRD image group (header + data datasets); top level: {list(f)}")
        gpath = _resolve_group(p, groups, group)
        try:
            g = f[gpath]
            parent = g.parent
            for name in ("header", "data"):
                check_hdf5_datatype(g[name], p)
            # strings are read without HDF5's variable-length conversion (see ismrmrd_raw)
            attrs = read_hdf5_text(f, g["attributes"], p) if isinstance(g.get("attributes"), h5py.Dataset) else None
            xml = read_hdf5_text(f, parent["xml"], p) if isinstance(parent.get("xml"), h5py.Dataset) else None
            heads = g["header"][()]
            raw_data = g["data"][()]
        except DataFileError:
            raise
        except Exception as err:  # noqa: BLE001 - h5py failures on corrupt files
            raise DataFileError(p, f"cannot read image group {gpath}: {type(err).__name__}: {err}") from None

    names = heads.dtype.names or ()
    missing = [k for k in _HEADER_FIELDS if k not in names]
    if missing:
        raise DataFileError(p, f"image headers of {gpath} lack the fields {missing}")
    if raw_data.dtype.names is not None:
        if set(raw_data.dtype.names) != {"real", "imag"}:
            raise DataFileError(p, f"{gpath}/data has compound type {raw_data.dtype.names}")
        data = (raw_data["real"] + 1j * raw_data["imag"]).astype(np.complex64)
    elif np.issubdtype(raw_data.dtype, np.complexfloating):
        data = raw_data.astype(np.complex64)
    elif np.issubdtype(raw_data.dtype, np.number):
        data = raw_data.astype(np.float32)
    else:
        raise DataFileError(p, f"{gpath}/data has unsupported dtype {raw_data.dtype}")
    n = heads.shape[0]
    if data.ndim != 5 or data.shape[0] != n:
        raise DataFileError(
            p, f"{gpath}/data has shape {data.shape}, expected [{n} images, channel, z, y, x]"
        )
    if data.shape[1] != 1 or data.shape[2] != 1:
        raise DataFileError(
            p, f"{gpath} holds {data.shape[1]}-channel images with {data.shape[2]} partitions; only single-channel 2D images are supported"
        )
    ny, nx = data.shape[3:]

    slices = heads["slice"].astype(np.int64)
    uniq_slices = np.unique(slices)
    order_keys = ("phase", "repetition", "contrast", "set", "average", "image_index")
    per_slice = []
    for s in uniq_slices:
        members = np.flatnonzero(slices == s)
        keys = tuple(heads[k][members].astype(np.int64) for k in reversed(order_keys))
        per_slice.append(members[np.lexsort(keys)])
    counts = {int(s): len(m) for s, m in zip(uniq_slices, per_slice)}
    if len(set(counts.values())) != 1:
        raise DataFileError(p, f"{gpath}: slices hold different numbers of images {counts} (slice: count)")
    order = np.stack(per_slice)  # [slice, time]
    images = data[order, 0, 0]  # [slice, time, y, x]

    first = heads[order[0, 0]]
    fov = tuple(float(v) for v in first["field_of_view"])
    positions = heads["position"][order[:, 0]].astype(np.float64)
    spacing = None
    if len(uniq_slices) > 1:
        steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        spacing = float(np.median(steps)) if np.all(steps > 0) else None
    frame_counters = [
        {k: int(heads[k][i]) for k in ("phase", "repetition", "contrast", "set", "average", "image_index")}
        for i in order[0]
    ]
    img_info: dict[str, Any] = {
        "group": gpath,
        "groups": groups,
        "image_types": sorted({_IMAGE_TYPE_NAMES.get(int(v), str(int(v))) for v in heads["image_type"]}),
        "frame_counters": frame_counters,
        "slice_counters": uniq_slices.tolist(),
        "image_series_index": sorted({int(v) for v in heads["image_series_index"]}),
        "first_attributes": attrs.decode("utf-8", errors="replace") if attrs is not None else None,
    }
    orientation = {k: [float(v) for v in first[k]] for k in ("read_dir", "phase_dir", "slice_dir")}
    if xml is not None:
        md = parse_ismrmrd_header(xml, p).metadata
    else:
        md = ScanMetadata(source=p, trajectory=None)
    # The images are the truth for matrix and frame/slice counts; the FOV comes from the
    # image headers when set (> 0), else from the XML recon space.
    updates: dict[str, Any] = {
        "recon_matrix": (int(ny), int(nx)),
        "n_frames": int(order.shape[1]),
        "n_slices": int(order.shape[0]),
    }
    same_fov = md.recon_fov_mm is not None and np.allclose(md.recon_fov_mm[:2], fov[:2], rtol=1e-5)
    if fov[0] > 0 and fov[1] > 0 and not same_fov:  # (float32 in the image header)
        updates["recon_fov_mm"] = fov
        if md.slice_thickness_mm is None and fov[2] > 0:
            updates["slice_thickness_mm"] = fov[2]
    rfov = updates.get("recon_fov_mm", md.recon_fov_mm)
    if rfov is not None and rfov[0] > 0 and rfov[1] > 0:
        updates["pixel_spacing_mm"] = (rfov[1] / ny, rfov[0] / nx)
    extra = dict(md.extra)
    extra["ismrmrd_images"] = img_info
    extra["orientation"] = orientation
    extra["slice_positions_mm"] = positions.tolist()
    if md.slice_spacing_mm is None and spacing is not None:
        updates["slice_spacing_mm"] = spacing
    metadata = md.with_updates(source=p, extra=extra, **updates)
    return np.ascontiguousarray(images), metadata
