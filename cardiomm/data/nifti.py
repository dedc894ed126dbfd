"""NIfTI-1 output of cine stacks (images or labels), in one axis convention.

A cine stack ``[slice, time, y, x]`` is stored as NIfTI axes ``(x, y, slice, time)`` with zooms
``(dx, dy, dz, frame seconds)`` in mm and s; ``.nii.gz`` names are gzip-compressed.  Files are
written atomically (temporary file, then rename).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from cardiomm.atomic import atomic_path

__all__ = ["write_nifti_cine"]


def write_nifti_cine(
    path: Path,
    stack: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    affine: np.ndarray | None = None,
    frame_seconds: float | None = None,
    description: str = "",
) -> Path:
    """Write ``stack [slice, time, y, x]`` (its dtype kept) as NIfTI-1 with axes ``(x, y, slice, time)``.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        stack: real ``[slice, time, y, x]`` (e.g. float32 magnitude, uint8 labels).
        spacing_mm: ``(dy, dx, dz)``: row and column spacing and slice centre distance, in mm.
        affine: 4x4 voxel-to-world matrix (e.g. from the input NIfTI); default ``diag(dx, dy, dz)``
            (scanner orientation unknown).
        frame_seconds: time between frames in s (``pixdim[4]``), or None (1.0 written).
        description: the NIfTI ``descrip`` field (at most 79 characters are kept).
    """
    import nibabel as nib

    dy, dx, dz = (float(v) for v in spacing_mm)
    data = np.ascontiguousarray(np.transpose(np.asarray(stack), (3, 2, 0, 1)))  # x, y, slice, time
    affine = np.diag([dx, dy, dz, 1.0]) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((dx, dy, dz, float(frame_seconds) if frame_seconds else 1.0))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header["descrip"] = description.encode("ascii", errors="replace")[:79]
    payload = img.to_bytes()  # single-file NIfTI-1 (header + data)
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)
