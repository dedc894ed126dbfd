"""Read a cine MRI series stored as one DICOM image per file into a ``[slice, frame, y, x]`` stack.

Grouping
--------
* **Slices** are the distinct positions of ``ImagePositionPatient`` projected on the slice normal
  (``row x column`` direction cosines of ``ImageOrientationPatient``).  Positions closer than
  ``position_tolerance_mm`` are the same slice, so float noise in the header does not split a
  slice.  Without ``ImagePositionPatient`` the ``SliceLocation`` tag is used instead.
* **Frames** within a slice are ordered by ``TriggerTime`` (time after the R wave); without it
  by ``InstanceNumber``.  Frame ``f`` of every slice is the ``f``-th trigger time of that slice
  (trigger times differ slightly between slices, hence ``trigger_times_ms [slice, frame]``).

Slice order
-----------
Short-axis stacks are ordered **base to apex** (slice 0 most basal).  DICOM geometry does not
say where the apex is, so the stack is oriented with the typical direction of the LV long axis,
which points from base to apex towards the patient's left, anterior and inferior, i.e.
``(+1, -1, -1) / sqrt(3)`` in DICOM patient coordinates (LPS).  A series counts as short axis
when its description says so or when its slice normal is within ~53 degrees of that direction
(``|cos| >= 0.6``).  Other stacks are ordered by increasing position along the slice normal.
``CineStack.slice_order`` says which rule was applied.

Slice spacing
-------------
The centre-to-centre spacing is the median distance between neighbouring slice positions along
the normal (source ``"image_position"``); for a single slice, or without
``ImagePositionPatient``, it falls back to ``SpacingBetweenSlices`` and then to
``SliceThickness``.  ``CineStack.slice_spacing_source`` records which.

Non-DICOM files in a folder (``DICOMDIR``, notes, thumbnails) are skipped by default and listed
in ``CineStack.skipped`` with a warning; pass ``on_non_dicom="error"`` to refuse them instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from cardiomm.data.errors import DataFileError
from cardiomm.data.metadata import ScanMetadata

__all__ = ["CineStack", "read_dicom_cine", "LV_APEX_DIRECTION_LPS"]

#: Typical base-to-apex direction of the left ventricle in DICOM patient coordinates (LPS):
#: towards the patient's left (+x), anterior (-y) and inferior (-z).
LV_APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
#: ``|cos(angle)|`` between slice normal and :data:`LV_APEX_DIRECTION_LPS` above which a
#: stack without a telling description is taken to be short axis.
_SAX_MIN_COS = 0.6

_VIEW_WORDS = (
    ("lax_4ch", ("4ch", "4 ch", "4-ch", "four chamber", "4cv", "hla")),
    ("lax_2ch", ("2ch", "2 ch", "2-ch", "two chamber", "2cv", "vla")),
    ("lax_3ch", ("3ch", "3 ch", "3-ch", "three chamber", "3cv")),
    ("lvot", ("lvot",)),
    ("sax", ("sax", "short axis", "short-axis", "shortaxis", "sa ", "_sa", "sa_")),
)


@dataclass
class CineStack:
    """A cine series as a 4-D stack.

    Attributes:
        images: float32 ``[slice, frame, y, x]``, rescaled with RescaleSlope/Intercept.
        pixel_spacing_mm: ``(row, col)`` = (y, x) spacing in mm (DICOM PixelSpacing).
        slice_thickness_mm: SliceThickness in mm, or None when absent.
        slice_spacing_mm: centre-to-centre slice distance in mm (None for one slice with no
            spacing tags); see ``slice_spacing_source``.
        slice_spacing_source: ``"image_position"``, ``"spacing_between_slices"``,
            ``"slice_thickness"`` or ``"unknown"``.
        slice_locations_mm: float64 ``[slice]`` position of each slice along ``slice_normal``
            (mm; SliceLocation when ImagePositionPatient is absent).
        trigger_times_ms: float64 ``[slice, frame]`` TriggerTime (NaN where absent).
        files: ``files[slice][frame]`` the file of each image (to link contours, labels).
        metadata: the series' :class:`ScanMetadata` (modality "cine").
        slice_normal: ``(3,)`` unit normal (row x column) in LPS patient coordinates, or None.
        image_orientation: ``(6,)`` row then column direction cosines, or None.
        image_positions_mm: ``[slice, 3]`` ImagePositionPatient (centre of the first pixel) of
            each slice, or None.
        slice_order: ``"base_to_apex"``, ``"ascending_along_normal"`` or
            ``"ascending_slice_location"``.
        skipped: ``(file, reason)`` for every file that was not used.
    """

    images: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float | None
    slice_spacing_mm: float | None
    slice_spacing_source: str
    slice_locations_mm: np.ndarray
    trigger_times_ms: np.ndarray
    files: list[list[Path]]
    metadata: ScanMetadata
    slice_normal: np.ndarray | None = None
    image_orientation: np.ndarray | None = None
    image_positions_mm: np.ndarray | None = None
    slice_order: str = "ascending_along_normal"
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def n_slices(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.images.shape[1])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL: row x col spacing x slice spacing (mm^3 / 1000)."""
        spacing = self.slice_spacing_mm or self.slice_thickness_mm
        if spacing is None:
            raise ValueError("voxel volume needs a slice spacing or thickness; this stack has neither")
        return self.pixel_spacing_mm[0] * self.pixel_spacing_mm[1] * spacing / 1000.0

    def index_of(self, file: str | os.PathLike[str]) -> tuple[int, int]:
        """``(slice, frame)`` of an image file of this stack (matched by resolved path, then name)."""
        target = Path(file)
        resolved = target.resolve()
        by_name: list[tuple[int, int]] = []
        for s, row in enumerate(self.files):
            for f, p in enumerate(row):
                if p.resolve() == resolved:
                    return s, f
                if p.name == target.name:
                    by_name.append((s, f))
        if len(by_name) == 1:
            return by_name[0]
        raise KeyError(f"{file} is not an image of this cine stack")


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's value-validation warnings (e.g. UIDs with leading zeros in old data)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Invalid value for VR", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*does not conform to", category=UserWarning)
        yield


def _float(ds: Any, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(ds: Any, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) else None


def _str(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple, MultiValue)) else str(value)
    return text.strip() or None


@dataclass
class _Image:
    path: Path
    ds: Any
    pixels: np.ndarray
    position: float | None = None  # along the slice normal (or SliceLocation)
    ipp: np.ndarray | None = None
    trigger_ms: float = float("nan")
    instance: int = 0


PathOrPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _collect_files(folder_or_files: PathOrPaths) -> tuple[Path, list[Path]]:
    if isinstance(folder_or_files, (str, os.PathLike)):
        folder = Path(folder_or_files)
        if not folder.exists():
            raise DataFileError(folder, "no such folder or file")
        if folder.is_file():
            return folder.parent, [folder]
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if not files:
            raise DataFileError(folder, "folder holds no files (expected one DICOM image per file)")
        return folder, files
    files = [Path(p) for p in folder_or_files]
    if not files:
        raise DataFileError("<no files>", "read_dicom_cine was given an empty list of files")
    missing = [str(p) for p in files if not p.is_file()]
    try:
        folder = Path(os.path.commonpath([str(p.resolve().parent) for p in files]))
    except ValueError:
        folder = files[0].parent
    if missing:
        raise DataFileError(folder, f"{len(missing)} of the given files do not exist, e.g. {missing[:3]}")
    return folder, files


def _read_images(
    folder: Path, files: list[Path], on_non_dicom: str
) -> tuple[list[_Image], list[tuple[Path, str]]]:
    images: list[_Image] = []
    skipped: list[tuple[Path, str]] = []
    with _quiet_pydicom():
        for path in files:
            try:
                ds = pydicom.dcmread(path)
            except (InvalidDicomError, OSError, EOFError) as err:
                reason = f"not a DICOM file ({type(err).__name__}: {err})"
                if on_non_dicom == "error":
                    raise DataFileError(path, reason) from err
                skipped.append((path, reason))
                continue
            if "PixelData" not in ds:
                skipped.append((path, "DICOM without pixel data"))
                continue
            n_frames = int(ds.get("NumberOfFrames", 1) or 1)
            if n_frames > 1:
                raise DataFileError(
                    path, f"multi-frame (enhanced) DICOM with {n_frames} frames is not supported; "
                    "expected one image per file"
                )
            if int(ds.get("SamplesPerPixel", 1)) != 1:
                raise DataFileError(path, "colour image (SamplesPerPixel != 1); expected MR magnitude")
            try:
                pixels = ds.pixel_array
            except Exception as err:  # compressed without a decoder, truncated data, ...
                raise DataFileError(path, f"cannot decode pixel data: {err}") from err
            slope = _float(ds, "RescaleSlope")
            intercept = _float(ds, "RescaleIntercept")
            img = pixels.astype(np.float32) * np.float32(1.0 if slope is None else slope)
            img += np.float32(0.0 if intercept is None else intercept)
            images.append(_Image(path=path, ds=ds, pixels=img))
    if skipped and on_non_dicom == "skip":
        warnings.warn(
            f"{folder}: skipped {len(skipped)} file(s) that are not DICOM images, e.g. {skipped[0][0].name}",
            stacklevel=3,
        )
    if not images:
        raise DataFileError(folder, f"no DICOM images among {len(files)} file(s)")
    return images, skipped


def _one_series(folder: Path, images: list[_Image], series_uid: str | None) -> list[_Image]:
    by_series: dict[str, list[_Image]] = {}
    for im in images:
        by_series.setdefault(str(im.ds.get("SeriesInstanceUID", "")), []).append(im)
    if series_uid is not None:
        if series_uid not in by_series:
            raise DataFileError(folder, f"no series {series_uid!r}; found {sorted(by_series)}")
        return by_series[series_uid]
    if len(by_series) > 1:
        desc = [
            f"{uid} (number {v[0].ds.get('SeriesNumber', '?')}, "
            f"'{v[0].ds.get('SeriesDescription', '')}', {len(v)} images)"
            for uid, v in by_series.items()
        ]
        raise DataFileError(folder, f"{len(by_series)} series mixed: {desc}; choose one with series_uid=")
    return images


def _geometry(folder: Path, images: list[_Image]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Common orientation ``(6,)`` and slice normal, or ``(None, None)`` without orientation tags."""
    orients = [_floats(im.ds, "ImageOrientationPatient", 6) for im in images]
    positions = [_floats(im.ds, "ImagePositionPatient", 3) for im in images]
    if any(o is None for o in orients) or any(p is None for p in positions):
        if any(o is not None for o in orients) and any(o is None for o in orients):
            raise DataFileError(folder, "ImageOrientationPatient/ImagePositionPatient present in some images only")
        for im in images:
            loc = _float(im.ds, "SliceLocation")
            if loc is None:
                raise DataFileError(
                    im.path, "no ImagePositionPatient/ImageOrientationPatient and no SliceLocation: "
                    "cannot tell which slice the image belongs to"
                )
            im.position = loc
        return None, None
    ref = orients[0]
    assert ref is not None
    bad = [im.path.name for im, o in zip(images, orients) if np.max(np.abs(o - ref)) > 1e-3]  # type: ignore[operator]
    if bad:
        raise DataFileError(
            folder, f"images are not parallel slices: ImageOrientationPatient differs in {len(bad)} file(s), "
            f"e.g. {bad[:3]}"
        )
    normal = np.cross(ref[:3], ref[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise DataFileError(folder, f"degenerate ImageOrientationPatient {ref.tolist()}")
    normal /= norm
    for im, p in zip(images, positions):
        im.ipp = p
        im.position = float(np.dot(p, normal))  # type: ignore[arg-type]
    return ref, normal


def _cluster_slices(images: list[_Image], tol_mm: float) -> list[list[_Image]]:
    ordered = sorted(images, key=lambda im: im.position)  # type: ignore[arg-type, return-value]
    groups: list[list[_Image]] = [[ordered[0]]]
    for im in ordered[1:]:
        if abs(im.position - groups[-1][-1].position) > tol_mm:  # type: ignore[operator]
            groups.append([])
        groups[-1].append(im)
    return groups


def _view(images: list[_Image], normal: np.ndarray | None) -> tuple[str | None, str]:
    text = " ".join(
        (_str(images[0].ds, k) or "") for k in ("SeriesDescription", "ProtocolName", "SequenceName")
    ).lower()
    padded = f" {text} "
    for view, words in _VIEW_WORDS:
        if any(w in padded for w in words):
            return view, "series description"
    if normal is not None and abs(float(normal @ LV_APEX_DIRECTION_LPS)) >= _SAX_MIN_COS:
        return "sax", "slice normal close to the typical LV long axis"
    return None, "unknown"


def _field_strength(ds: Any) -> float | None:
    b0 = _float(ds, "MagneticFieldStrength")
    if b0 is None or b0 <= 0:
        return None
    return b0 / 10000.0 if b0 > 20 else b0  # some old headers give Gauss


def _encoded_matrix(ds: Any) -> tuple[int, int] | None:
    acq = ds.get("AcquisitionMatrix")
    if acq is None or len(acq) != 4:
        return None
    freq_rows, freq_cols, phase_rows, phase_cols = (int(v) for v in acq)
    phase, freq = max(phase_rows, phase_cols), max(freq_rows, freq_cols)
    return (phase, freq) if phase and freq else None


def read_dicom_cine(
    folder_or_files: PathOrPaths,
    *,
    series_uid: str | None = None,
    position_tolerance_mm: float = 0.5,
    on_non_dicom: Literal["skip", "error"] = "skip",
) -> CineStack:
    """Read a single-image-per-file DICOM cine series into a :class:`CineStack`.

    Args:
        folder_or_files: a folder (its files, not sub-folders) or a list of files.
        series_uid: SeriesInstanceUID to keep when the files mix several series.
        position_tolerance_mm: images whose positions along the slice normal differ by less
            than this belong to the same slice.
        on_non_dicom: ``"skip"`` (default: listed in ``CineStack.skipped``, one warning) or
            ``"error"`` for files that are not DICOM.

    Returns:
        :class:`CineStack` with ``images [slice, frame, y, x]`` float32 (slices ordered as
        described in the module docstring: base to apex for short-axis stacks).

    Raises:
        DataFileError: empty folder, no DICOM images, mixed series or orientations, images of
            different sizes or pixel spacings, missing PixelSpacing, a slice with fewer frames
            than the others (the message names the slice and its position), duplicate trigger
            times, or no tag to place an image in a slice.
    """
    if on_non_dicom not in ("skip", "error"):
        raise ValueError(f"on_non_dicom must be 'skip' or 'error', got {on_non_dicom!r}")
    folder, files = _collect_files(folder_or_files)
    images, skipped = _read_images(folder, files, on_non_dicom)

    with _quiet_pydicom():
        images = _one_series(folder, images, series_uid)
        shapes = {im.pixels.shape for im in images}
        if len(shapes) > 1:
            examples = {s: next(im.path.name for im in images if im.pixels.shape == s) for s in shapes}
            raise DataFileError(
                folder, f"images have different sizes (rows, cols): {sorted(shapes)}; e.g. {examples}"
            )
        spacings = [_floats(im.ds, "PixelSpacing", 2) for im in images]
        missing = [im.path.name for im, sp in zip(images, spacings) if sp is None]
        if missing:
            raise DataFileError(
                folder, f"PixelSpacing (0028,0030) missing or malformed in {len(missing)} file(s), e.g. {missing[:3]}; "
                "the in-plane pixel size in mm cannot be known"
            )
        spacing_set = {tuple(np.round(sp, 4)) for sp in spacings}  # type: ignore[arg-type]
        if len(spacing_set) > 1:
            raise DataFileError(folder, f"images have different PixelSpacing: {sorted(spacing_set)}")

        orientation, normal = _geometry(folder, images)
        for im in images:
            trig = _float(im.ds, "TriggerTime")
            im.trigger_ms = float("nan") if trig is None else trig
            im.instance = int(_float(im.ds, "InstanceNumber") or 0)
        groups = _cluster_slices(images, position_tolerance_mm)

        # order frames within each slice
        frame_source = "TriggerTime" if all(np.isfinite(im.trigger_ms) for im in images) else "InstanceNumber"
        for g in groups:
            if frame_source == "TriggerTime":
                g.sort(key=lambda im: (im.trigger_ms, im.instance))
            else:
                g.sort(key=lambda im: im.instance)
            if frame_source == "TriggerTime":
                times = np.array([im.trigger_ms for im in g])
                dup = np.nonzero(np.diff(times) < 1e-3)[0]
                if dup.size:
                    a, b = g[dup[0]], g[dup[0] + 1]
                    raise DataFileError(
                        folder, f"two images of the slice at {np.mean([im.position for im in g]):.2f} mm share "
                        f"trigger time {a.trigger_ms} ms ({a.path.name}, {b.path.name}): repeated acquisition?"
                    )

        # slice order
        view, view_source = _view(images, normal)
        locations = np.array([np.mean([im.position for im in g]) for g in groups])
        if normal is not None and view == "sax":
            apex_sign = np.sign(float(normal @ LV_APEX_DIRECTION_LPS)) or 1.0
            order = np.argsort(apex_sign * locations, kind="stable")
            slice_order = "base_to_apex"
        else:
            order = np.arange(len(groups))
            slice_order = "ascending_along_normal" if normal is not None else "ascending_slice_location"
        groups = [groups[i] for i in order]
        locations = locations[order]

        counts = [len(g) for g in groups]
        n_frames = max(counts)
        incomplete = [
            f"slice {i} at {locations[i]:.2f} mm has {c} frames" for i, c in enumerate(counts) if c != n_frames
        ]
        if incomplete:
            raise DataFileError(
                folder, f"incomplete cine: {'; '.join(incomplete)} (expected {n_frames} like the other slices)"
            )

        stack = np.stack([np.stack([im.pixels for im in g]) for g in groups]).astype(np.float32, copy=False)
        triggers = np.array([[im.trigger_ms for im in g] for g in groups], dtype=np.float64)
        file_grid = [[im.path for im in g] for g in groups]
        first = groups[0][0].ds
        pixel_spacing = tuple(float(v) for v in spacings[0])  # type: ignore[union-attr]
        thickness = _float(first, "SliceThickness")
        between = _float(first, "SpacingBetweenSlices")

        extra: dict[str, Any] = {}
        if normal is not None and len(groups) > 1:
            gaps = np.abs(np.diff(locations))
            slice_spacing: float | None = float(np.median(gaps))
            spacing_source = "image_position"
            if float(gaps.max() - gaps.min()) > 0.05 * slice_spacing:
                extra["slice_gaps_mm"] = gaps.round(3).tolist()
        elif between is not None and between > 0:
            slice_spacing, spacing_source = between, "spacing_between_slices"
        elif thickness is not None and thickness > 0:
            slice_spacing, spacing_source = thickness, "slice_thickness"
        else:
            slice_spacing, spacing_source = None, "unknown"

        heart_rate = _float(first, "HeartRate")
        nominal_rr = _float(first, "NominalInterval")
        if heart_rate is not None and heart_rate > 0:
            extra["heart_rate_source"] = "HeartRate"
        elif nominal_rr is not None and nominal_rr > 0:
            heart_rate = 60000.0 / nominal_rr
            extra["heart_rate_source"] = "60000 / NominalInterval"
        else:
            heart_rate = None
        rows, cols = stack.shape[-2:]
        extra.update(
            {
                "format": "DICOM cine (one image per file)",
                "patient_id": _str(first, "PatientID"),
                "series_instance_uid": _str(first, "SeriesInstanceUID"),
                "series_number": _str(first, "SeriesNumber"),
                "series_description": _str(first, "SeriesDescription"),
                "view_source": view_source,
                "slice_order": slice_order,
                "slice_spacing_source": spacing_source,
                "frame_order_source": frame_source,
                "phase_encoding_direction": _str(first, "InPlanePhaseEncodingDirection"),
                "nominal_interval_ms": nominal_rr,
                "scanning_sequence": _str(first, "ScanningSequence"),
                "sequence_variant": _str(first, "SequenceVariant"),
                "receive_coil": _str(first, "ReceiveCoilName"),
                "pixel_bandwidth_hz": _float(first, "PixelBandwidth"),
            }
        )
        metadata = ScanMetadata(
            source=str(folder),
            modality="cine",
            view=view,
            field_strength_t=_field_strength(first),
            vendor=_str(first, "Manufacturer"),
            model=_str(first, "ManufacturerModelName"),
            trajectory=None,
            n_frames=n_frames,
            n_slices=len(groups),
            encoded_matrix=_encoded_matrix(first),
            recon_fov_mm=(cols * pixel_spacing[1], rows * pixel_spacing[0], thickness) if thickness else None,
            pixel_spacing_mm=(pixel_spacing[0], pixel_spacing[1]),
            slice_thickness_mm=thickness,
            slice_spacing_mm=slice_spacing,
            tr_ms=_float(first, "RepetitionTime"),
            te_ms=_float(first, "EchoTime"),
            flip_angle_deg=_float(first, "FlipAngle"),
            heart_rate_bpm=heart_rate,
            extra=extra,
        )
    positions = (
        np.array([g[0].ipp for g in groups], dtype=np.float64) if normal is not None else None
    )
    return CineStack(
        images=stack,
        pixel_spacing_mm=(pixel_spacing[0], pixel_spacing[1]),
        slice_thickness_mm=thickness,
        slice_spacing_mm=slice_spacing,
        slice_spacing_source=spacing_source,
        slice_locations_mm=locations.astype(np.float64),
        trigger_times_ms=triggers,
        files=file_grid,
        metadata=metadata,
        slice_normal=normal,
        image_orientation=orientation,
        image_positions_mm=positions,
        slice_order=slice_order,
        skipped=skipped,
    )
