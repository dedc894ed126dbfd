"""Sunnybrook Cardiac Data manual LV contours -> label images.

The Sunnybrook contour files (``contourfiles/<original id>/i-contours/IM-0001-NNNN-icontour-manual.txt``
and ``o-contours/...-ocontour-manual.txt``) are polygons in pixel coordinates of the DICOM image
``dicoms/<patient id>/NNNN.dcm``, one ``x y`` point per line; ``x`` runs along the image columns and
``y`` along the rows.  ``link.csv`` maps the DICOM patient ids (``SCD0000101``) to the ids of the
contour folders (``SC-HF-I-1``).  The i-contour is the endocardium (blood pool), the o-contour the
epicardium; contours exist on some slices, at end-diastole (both) and end-systole (i-contour only).

Pixel convention: pixel ``[row r, column c]`` has its centre at ``(x, y) = (c, r)``; a pixel belongs
to a polygon when its centre is inside (:func:`skimage.draw.polygon2mask`).

Labels follow :mod:`cardiomm.data.labels`: 0 background, 1 LV blood pool (inside the i-contour),
2 LV myocardium (inside the o-contour and outside the i-contour).  Where a frame has no o-contour
(end-systole in Sunnybrook) the myocardium is *unlabelled*, not absent: label-2 pixels are missing
from that image although myocardium is there; :func:`sunnybrook_contour_files` tells which frames
have which contours.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import numpy as np
from skimage.draw import polygon2mask

from cardiomm.data.dicom_cine import CineStack
from cardiomm.data.errors import DataFileError
from cardiomm.data.labels import LABELS, LV_BLOOD, LV_MYOCARDIUM

__all__ = [
    "LABELS",
    "read_contour",
    "polygon_to_mask",
    "read_link_csv",
    "sunnybrook_contour_files",
    "sunnybrook_labels",
]

_CONTOUR_RE = re.compile(r"^IM-\d+-(\d+)-([io])contour-manual\.txt$", re.IGNORECASE)


def read_contour(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a Sunnybrook contour file.

    Returns:
        float64 ``[n, 2]`` polygon vertices as ``(x, y)`` pixel coordinates (x = column, y = row).

    Raises:
        DataFileError: missing file, non-numeric text, not two columns, fewer than 3 points.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such contour file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy warns on empty input
            points = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataFileError(path, f"not an 'x y' point list: {err}") from err
    if points.shape[1] != 2:
        raise DataFileError(path, f"expected 2 columns (x y) per line, got {points.shape[1]}")
    if points.shape[0] < 3:
        raise DataFileError(path, f"a contour needs at least 3 points, got {points.shape[0]}")
    if not np.all(np.isfinite(points)):
        raise DataFileError(path, "contour has non-finite coordinates")
    return points


def polygon_to_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a closed polygon given as ``(x, y)`` vertices.

    Args:
        points: ``[n, 2]`` vertices ``(x = column, y = row)`` in pixel units, pixel centres at
            integer coordinates; the polygon is closed implicitly.
        shape: ``(rows, cols)`` = ``(y, x)`` size of the image.

    Returns:
        bool ``[y, x]``, True for pixels whose centre lies inside the polygon.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 3:
        raise ValueError(f"polygon must be [n >= 3, 2] (x, y) points, got shape {list(points.shape)}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"mask shape must be (rows, cols), got {tuple(shape)}")
    return polygon2mask(tuple(int(s) for s in shape), points[:, ::-1])


def read_link_csv(path: str | os.PathLike[str]) -> dict[str, str]:
    """``link.csv`` (columns ``patient_id,original_id``) -> ``{patient_id: original_id}``."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such link file")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"patient_id", "original_id"} <= set(reader.fieldnames):
            raise DataFileError(path, f"expected columns patient_id,original_id, got {reader.fieldnames}")
        return {row["patient_id"].strip(): row["original_id"].strip() for row in reader}


def _patient_id(cine: CineStack) -> str:
    pid = cine.metadata.extra.get("patient_id")
    return str(pid) if pid else cine.files[0][0].parent.name


def _patient_contour_dir(contour_dir: Path, cine: CineStack, link_csv: str | os.PathLike[str] | None) -> Path:
    direct = (contour_dir / "i-contours").is_dir() or (contour_dir / "o-contours").is_dir()
    pid = _patient_id(cine)
    if link_csv is None and not direct:
        for candidate in (contour_dir / "link.csv", contour_dir.parent / "link.csv"):
            if candidate.is_file():
                link_csv = candidate
                break
    link = read_link_csv(link_csv) if link_csv is not None else None
    if direct:
        if link is not None and pid in link and link[pid] != contour_dir.name:
            raise DataFileError(
                contour_dir, f"contours belong to {contour_dir.name} but the cine is patient {pid}, "
                f"which {link_csv} links to {link[pid]}"
            )
        return contour_dir
    if link is None:
        raise DataFileError(
            contour_dir, "holds no i-contours/o-contours folder and no link.csv was found to map "
            f"patient {pid} to its contour folder; pass the patient's folder or link_csv="
        )
    if pid not in link:
        raise DataFileError(link_csv, f"patient {pid} is not listed (has {sorted(link)})")  # type: ignore[arg-type]
    patient_dir = contour_dir / link[pid]
    if not patient_dir.is_dir():
        raise DataFileError(patient_dir, f"contour folder of patient {pid} does not exist")
    return patient_dir


def sunnybrook_contour_files(
    contour_dir: str | os.PathLike[str],
    cine: CineStack,
    link_csv: str | os.PathLike[str] | None = None,
) -> dict[tuple[int, int], dict[str, Path]]:
    """Which contour files belong to which image of ``cine``.

    Args:
        contour_dir: the patient's contour folder (``contourfiles/SC-HF-I-1``) or the folder of
            all patients (``contourfiles``), in which case ``link.csv`` (``link_csv``, or found
            in ``contour_dir`` or its parent) maps the cine's PatientID to the sub-folder.
        cine: the patient's :class:`CineStack`; image ``NNNN`` is its file ``NNNN.dcm``.
        link_csv: optional ``patient_id,original_id`` table; when given with a patient folder it
            is used to check that the contours belong to this patient.

    Returns:
        ``{(slice, frame): {"i": path, "o": path}}`` (keys present only for existing contours),
        sorted by ``(slice, frame)``.
    """
    patient_dir = _patient_contour_dir(Path(contour_dir), cine, link_csv)
    by_number: dict[int, tuple[int, int]] = {}
    for s, row in enumerate(cine.files):
        for f, p in enumerate(row):
            if p.stem.isdigit():
                by_number[int(p.stem)] = (s, f)
    found: dict[tuple[int, int], dict[str, Path]] = {}
    for sub in ("i-contours", "o-contours"):
        folder = patient_dir / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            m = _CONTOUR_RE.match(path.name)
            if not m:
                continue
            number, kind = int(m.group(1)), m.group(2).lower()
            if number not in by_number:
                raise DataFileError(
                    path, f"image {number} has no file {number}.dcm in the cine stack "
                    f"({cine.metadata.source}); wrong patient?"
                )
            found.setdefault(by_number[number], {})[kind] = path
    if not found:
        raise DataFileError(patient_dir, "no IM-*-[io]contour-manual.txt files in i-contours/ or o-contours/")
    return dict(sorted(found.items()))


def sunnybrook_labels(
    contour_dir: str | os.PathLike[str],
    cine: CineStack,
    link_csv: str | os.PathLike[str] | None = None,
) -> dict[tuple[int, int], np.ndarray]:
    """Label images of the contoured frames of a Sunnybrook cine.

    Args:
        contour_dir, cine, link_csv: as in :func:`sunnybrook_contour_files`.

    Returns:
        ``{(slice, frame): uint8 [y, x]}`` for every frame with an i-contour: 0 background,
        1 LV blood pool (inside the i-contour), 2 LV myocardium (inside the o-contour and not
        inside the i-contour; only where an o-contour exists -- elsewhere the myocardium is
        unlabelled).  Frames with an o-contour but no i-contour are left out with a warning,
        as their myocardium cannot be separated from the blood pool.

    Raises:
        DataFileError: bad contour files, contours outside the image, images not in the stack.
    """
    shape = cine.images.shape[-2:]
    labels: dict[tuple[int, int], np.ndarray] = {}
    for (s, f), kinds in sunnybrook_contour_files(contour_dir, cine, link_csv).items():
        if "i" not in kinds:
            warnings.warn(
                f"{kinds['o']}: o-contour without i-contour; (slice {s}, frame {f}) skipped", stacklevel=2
            )
            continue
        label = np.zeros(shape, dtype=np.uint8)
        masks = {}
        for kind, path in kinds.items():
            points = read_contour(path)
            if points.min() < -0.5 or points[:, 0].max() > shape[1] - 0.5 or points[:, 1].max() > shape[0] - 0.5:
                raise DataFileError(path, f"contour leaves the {shape[0]}x{shape[1]} image of slice {s}, frame {f}")
            masks[kind] = polygon_to_mask(points, shape)
        if "o" in masks:
            label[masks["o"]] = LV_MYOCARDIUM
        label[masks["i"]] = LV_BLOOD
        labels[(s, f)] = label
    return labels
