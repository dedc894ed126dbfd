"""Reader for CMRxRecon challenge ``.mat`` files (2023, 2024 and 2025 releases).

What the files hold
-------------------
k-space files (``cine_sax.mat``, ``cine_lax.mat``, ``T1map.mat``, ``cine_sax_kus_ktGaussian8.mat``...)
hold one complex variable:

* ``kspace_full`` (2023, 2024) or ``kspace`` (2025): fully sampled;
* ``kspace_sub04|08|10`` (2023) or ``kus`` (2024/2025): undersampled, zeros where not sampled;
* ``kspace_single_full`` / ``kspace_single_sub04``... (2023 single-coil): no coil axis.

Its MATLAB dimensions are ``(kx, ky, coil, slice, time)`` (single-coil: ``(kx, ky, slice, time)``).
MATLAB drops trailing singleton dimensions, so a one-frame scan is stored 4-D (2024's
BlackBlood is ``(kx, ky, coil, slice)``); missing trailing axes are restored as length 1.

Mask files hold a boolean sampling pattern with MATLAB dimensions ``(kx, ky)`` (the same for
every frame) or ``(kx, ky, time)`` (k-t patterns interleaved over time), in variables such as
``mask04`` (2023), ``mask`` (2024/2025, pattern in the file name ``cine_sax_mask_ktRadial24.mat``)
or names carrying the pattern themselves (``mask_ktGaussian8``).

Two storage versions exist and are detected automatically:

* MATLAB v7.3 (HDF5, read with h5py): the dimensions come out reversed, e.g.
  ``(time, slice, coil, ky, kx)``, and complex numbers are a compound dtype with fields
  ``real`` and ``imag``;
* MATLAB v5 (read with :func:`scipy.io.loadmat`): dimensions in MATLAB order.

Both are returned in CardioMM's order (see :mod:`recon.conventions`): k-space
``[slice, coil, time, ky, kx]`` complex64 and masks ``[time|1, ky, kx]`` bool.

Acceleration factors
--------------------
The "nominal R" in CMRxRecon file and variable names (``ktGaussian8``, ``mask04``) counts
acceleration *outside* the fully sampled calibration region (24 central ky lines in 2023,
16 in 2024, 20 in 2025; 16x16 central k-space points for ``ktRadial``).  The effective R
(all samples / acquired samples) is lower; :attr:`CMRxReconMask.effective_r` and
``ScanMetadata.acceleration`` report the effective one, and the number of calibration lines
is measured from the mask (``n_calibration_lines``) rather than assumed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import scipy.io

from cardiomm.data.errors import DataFileError
from cardiomm.data.metadata import KSpaceScan, ScanMetadata
from recon.masks import find_cmrxrecon_name

__all__ = [
    "CMRxReconMask",
    "read_cmrxrecon_kspace",
    "read_cmrxrecon_mask",
    "parse_cmrxrecon_pattern",
    "list_mat_variables",
]

_SUB_RE = re.compile(r"(?:^|_)(?:sub|mask)(\d+)$", re.IGNORECASE)

#: Variable names of fully sampled and undersampled k-space, in order of preference.
_FULL_KEYS = ("kspace_full", "kspace", "kspace_single_full")
_SUB_KEY_RE = re.compile(r"^(kus|kspace_sub\d+|kspace_single_sub\d+)$", re.IGNORECASE)
_MASK_KEY_RE = re.compile(r"(^|_)mask", re.IGNORECASE)

#: HDF5 groups MATLAB adds that are not user variables.
_MATLAB_INTERNAL = ("#refs#", "#subsystem#")


class CMRxReconMask(NamedTuple):
    """A CMRxRecon sampling mask (unpacks as ``mask, pattern, nominal_r``).

    Attributes:
        mask: bool ``[time|1, ky, kx]``, True where sampled (``time`` is 1 for the 2-D masks
            that are the same in every frame).
        pattern: ``"uniform"``, ``"kt_uniform"``, ``"kt_gaussian"``, ``"kt_radial"``, or None
            when neither the variable nor the file name says.
        nominal_r: acceleration in the CMRxRecon convention, i.e. counted outside the fully
            sampled calibration region (so it exceeds :attr:`effective_r`); None if unknown.
    """

    mask: np.ndarray
    pattern: str | None
    nominal_r: float | None

    @property
    def effective_r(self) -> float:
        """All k-space samples divided by acquired samples (calibration region included)."""
        n = int(self.mask.sum())
        return float(self.mask.size) / n if n else float("inf")

    @property
    def n_calibration_lines(self) -> int:
        """Contiguous central ky lines fully sampled in every frame.

        Not meaningful for ``kt_radial``, whose calibration region is a central square.
        """
        return _calibration_lines(self.mask)


# --------------------------------------------------------------------------- file access


def _is_v73(path: Path) -> bool:
    """True for HDF5-based MAT files (v7.3); False for v4/v5 (and non-MAT files)."""
    try:
        return bool(h5py.is_hdf5(path))
    except OSError as err:
        raise DataFileError(path, f"cannot open file: {err}") from err


def list_mat_variables(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Names and *stored* shapes of the variables in a MAT file (v5 or v7.3).

    Shapes are as stored: MATLAB order for v5, reversed for v7.3.

    Raises:
        DataFileError: missing file or not a MAT file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such file")
    if _is_v73(path):
        with h5py.File(path, "r") as f:
            return {
                k: tuple(v.shape) if isinstance(v, h5py.Dataset) else ()
                for k, v in f.items()
                if k not in _MATLAB_INTERNAL
            }
    try:
        return {name: tuple(shape) for name, shape, _cls in scipy.io.whosmat(path)}
    except Exception as err:  # scipy raises ValueError/TypeError/struct.error on non-MAT input
        raise DataFileError(path, f"not a MATLAB .mat file (v5 or v7.3): {err}") from err


def _read_variable(path: Path, key: str, version: str) -> np.ndarray:
    """One variable in CardioMM-friendly (reversed MATLAB, i.e. C) axis order."""
    if version == "7.3":
        with h5py.File(path, "r") as f:
            obj = f[key]
            if not isinstance(obj, h5py.Dataset):
                raise DataFileError(path, f"variable {key!r} is a MATLAB struct/cell, not an array")
            data = obj[()]
        if data.dtype.names is not None:
            data = _compound_to_complex(path, key, data)
        return np.asarray(data)
    # v5: MATLAB order -> reverse so both versions agree
    try:
        data = scipy.io.loadmat(path, variable_names=[key])[key]
    except Exception as err:
        raise DataFileError(path, f"cannot read variable {key!r}: {err}") from err
    if data.dtype == object or data.dtype.names is not None:
        raise DataFileError(path, f"variable {key!r} is a MATLAB struct/cell, not an array")
    return np.ascontiguousarray(np.transpose(data))


def _compound_to_complex(path: Path, key: str, data: np.ndarray) -> np.ndarray:
    names = data.dtype.names or ()
    if set(names) != {"real", "imag"}:
        raise DataFileError(
            path, f"variable {key!r} has compound fields {names}, expected MATLAB's ('real', 'imag')"
        )
    real, imag = data["real"], data["imag"]
    out = np.empty(data.shape, dtype=np.complex64)
    out.real = real
    out.imag = imag
    return out


def _choose_key(path: Path, variables: dict[str, tuple[int, ...]], key: str | None, kind: str) -> str:
    names = list(variables)
    if key is not None:
        if key not in variables:
            raise DataFileError(path, f"no variable {key!r}; the file holds {names}")
        return key
    if kind == "kspace":
        for k in _FULL_KEYS:
            if k in variables:
                return k
        candidates = [k for k in names if _SUB_KEY_RE.match(k)]
    else:
        candidates = [k for k in names if _MASK_KEY_RE.search(k)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates and len(names) == 1:
        return names[0]
    if not candidates:
        raise DataFileError(path, f"no {kind} variable found; the file holds {names}; pass key=")
    raise DataFileError(path, f"several {kind} variables {candidates}; choose one with key=")


# --------------------------------------------------------------------------- names


def parse_cmrxrecon_pattern(*names: str) -> tuple[str | None, float | None]:
    """Sampling pattern and nominal R from CMRxRecon variable / file names.

    The first name that matches wins: ``"ktGaussian24"`` -> ``("kt_gaussian", 24.0)``,
    ``"cine_sax_mask_Uniform8.mat"`` -> ``("uniform", 8.0)``, ``"mask04"`` or
    ``"kspace_sub10"`` -> ``("uniform", 4.0 / 10.0)`` (2023 masks are equispaced ky lines).

    Returns:
        ``(pattern, nominal_r)``; ``(None, None)`` when no name says.
    """
    for name in names:
        stem = Path(name).name
        stem = stem[:-4] if stem.lower().endswith(".mat") else stem
        found = find_cmrxrecon_name(stem)
        if found is not None:
            return found
        m = _SUB_RE.search(stem)
        if m:
            return "uniform", float(m.group(1))
    return None, None


def _modality_and_view(stem: str) -> tuple[str, str | None, dict[str, str]]:
    s = stem.lower()
    notes: dict[str, str] = {}
    if s.startswith("cine"):
        modality = "cine"
    elif re.match(r"t1map|t2map|t2smap|t1rho|t1w|t2w", s):
        modality = "mapping"
    elif s.startswith("lge"):
        modality = "lge"
    elif s.startswith("perfusion"):
        modality = "perfusion"
    elif s.startswith("flow"):
        modality = "flow"
    else:
        modality = "other"
    if "_sax" in s or s.startswith("sax"):
        view: str | None = "sax"
    elif "lvot" in s:
        view = "lvot"
    elif "_lax" in s:
        # CMRxRecon stacks several long-axis views (3ch, 2ch, 4ch) on the slice axis and the
        # file does not say which slice is which, so no single view applies.
        view = "other"
        notes["view_note"] = (
            "cine_lax: the slice axis holds several long-axis views (CMRxRecon documents "
            "3ch, 2ch and 4ch); the per-slice view is not stored in the file"
        )
    elif modality == "mapping":
        view = "sax"  # CMRxRecon T1/T2 mapping is acquired in short-axis slices
    else:
        view = "other" if modality != "other" else None
    return modality, view, notes


_SCANNER_DIR_RE = re.compile(r"^([A-Za-z]+)_(\d+)T_(.+)$")


def _scanner_from_path(path: Path) -> dict[str, object]:
    """Vendor / field / model from a 2025-style folder such as ``Siemens_30T_Vida`` (3.0 T)."""
    for part in reversed(path.parts[:-1]):
        m = _SCANNER_DIR_RE.match(part)
        if m:
            digits = m.group(2)
            tesla = int(digits) / (100 if digits.startswith("0") else 10)
            return {"vendor": m.group(1), "field_strength_t": tesla, "model": m.group(3)}
    return {}


# --------------------------------------------------------------------------- k-space


def _as_kspace(path: Path, key: str, data: np.ndarray) -> np.ndarray:
    """Reversed-MATLAB array -> ``[slice, coil, time, ky, kx]`` complex64."""
    single_coil = "single" in key.lower()
    full_ndim = 4 if single_coil else 5
    layout = "(kx, ky, slice, time)" if single_coil else "(kx, ky, coil, slice, time)"
    if not np.issubdtype(data.dtype, np.number):
        raise DataFileError(path, f"variable {key!r} has dtype {data.dtype}, expected complex k-space")
    if data.ndim < 3 or data.ndim > full_ndim:
        raise DataFileError(
            path,
            f"variable {key!r} has {data.ndim} dimensions (stored shape {list(data.shape)}); "
            f"expected 3 to {full_ndim} with MATLAB layout {layout}",
        )
    # MATLAB drops trailing singleton dims; reversed, they are missing at the front.
    data = data.reshape((1,) * (full_ndim - data.ndim) + data.shape)
    if single_coil:  # (time, slice, ky, kx) -> (time, slice, 1, ky, kx)
        data = data[:, :, None]
    # (time, slice, coil, ky, kx) -> (slice, coil, time, ky, kx)
    return np.ascontiguousarray(np.transpose(data, (1, 2, 0, 3, 4)).astype(np.complex64, copy=False))


def _derived_mask(kspace: np.ndarray, pattern: str | None) -> tuple[np.ndarray, str]:
    """``[1, time, ky, kx]`` sampled positions of zero-filled k-space, and how they were found.

    Cartesian patterns sample whole ky lines: a line counts as sampled when any of its
    samples (any slice, coil) is nonzero, so zero-padded readout edges do not punch holes.
    ``kt_radial`` samples points, so it is taken point by point.  With no pattern name, lines
    are used when every sampled line is >= 90% filled over the readout support.
    """
    nonzero = np.any(kspace != 0, axis=(0, 1))  # [time, ky, kx]
    if pattern == "kt_radial":
        return nonzero[None], "nonzero samples"
    lines = nonzero.any(axis=-1)  # [time, ky]
    if pattern is None:
        support = nonzero.any(axis=(0, 1))  # [kx]
        n_support = max(int(support.sum()), 1)
        fill = nonzero[lines].sum(axis=-1) / n_support if lines.any() else np.ones(1)
        if fill.min() < 0.9:
            return nonzero[None], "nonzero samples (not line-shaped)"
    mask = np.broadcast_to(lines[:, :, None], nonzero.shape)
    return np.ascontiguousarray(mask)[None], "nonzero ky lines"


def _calibration_lines(mask: np.ndarray) -> int:
    """Contiguous ky lines around the centre (``ky // 2``) fully sampled in every frame.

    ``mask`` is ``[..., time, ky, kx]``; a line counts when all its kx samples are True.
    """
    full = mask.reshape(-1, *mask.shape[-2:]).all(axis=-1).all(axis=0)  # [ky]
    centre = full.shape[0] // 2
    if not full[centre]:
        return 0
    lo = centre
    while lo > 0 and full[lo - 1]:
        lo -= 1
    hi = centre
    while hi < full.shape[0] - 1 and full[hi + 1]:
        hi += 1
    return hi - lo + 1


def read_cmrxrecon_kspace(path: str | os.PathLike[str], key: str | None = None) -> KSpaceScan:
    """Read multi-coil k-space from a CMRxRecon ``.mat`` file (v5 or v7.3, detected).

    Args:
        path: e.g. ``.../FullSample/P001/cine_sax.mat`` or ``.../cine_sax_kus_ktGaussian8.mat``.
        key: variable name; by default the fully sampled one (``kspace_full``, ``kspace``,
            ``kspace_single_full``) if present, else the single undersampled one
            (``kus``, ``kspace_sub04``...).

    Returns:
        :class:`KSpaceScan` with ``kspace`` complex64 ``[slice, coil, time, ky, kx]`` (single-coil
        files get ``coil = 1``) and ``mask`` bool ``[1, time, ky, kx]`` (broadcasts over slices;
        all True for fully sampled variables, else derived from the nonzero samples: whole
        ky lines for Cartesian patterns, points for ``kt_radial``).  Metadata: ``modality``
        and ``view`` from the file name (``cine_sax`` -> cine/sax, ``cine_lvot`` -> lvot,
        ``cine_lax`` -> ``"other"`` because its slice axis mixes 2/3/4-chamber views,
        ``T1map``/``T2map`` -> mapping/sax), ``mask_pattern`` and ``extra["nominal_r"]``
        (CMRxRecon convention, calibration excluded) from the names, ``acceleration`` =
        effective R of the derived mask, ``extra["n_calibration_lines"]`` measured from it;
        vendor / field strength / model only where a 2025-style folder (``Siemens_30T_Vida``)
        gives them.  The calibration lines are part of ``kspace`` (``acs`` is None).

    Raises:
        DataFileError: not a MAT file, missing variable (the message lists those present),
            wrong number of dimensions or a non-numeric variable.
    """
    path = Path(path)
    variables = list_mat_variables(path)
    key = _choose_key(path, variables, key, "kspace")
    version = "7.3" if _is_v73(path) else "5"
    kspace = _as_kspace(path, key, _read_variable(path, key, version))
    n_slices, n_coils, n_frames, n_ky, n_kx = kspace.shape

    fully_sampled = key.lower() in _FULL_KEYS
    stem = path.stem
    pattern, nominal_r = (None, None) if fully_sampled else parse_cmrxrecon_pattern(key, stem)
    extra: dict[str, object] = {"format": f"CMRxRecon MAT v{version}", "variable": key}
    if fully_sampled:
        mask = np.ones((1, n_frames, n_ky, n_kx), dtype=bool)
        extra["mask_source"] = "fully sampled variable"
    else:
        mask, how = _derived_mask(kspace, pattern)
        extra["mask_source"] = f"derived from {how}"
        extra["nominal_r"] = nominal_r
        extra["nominal_r_convention"] = "CMRxRecon: calibration region excluded from the count"
        if pattern != "kt_radial":  # radial calibration is a central square, not lines
            extra["n_calibration_lines"] = _calibration_lines(mask)
    n_acquired = int(mask.sum())
    effective_r = mask.size / n_acquired if n_acquired else float("inf")

    modality, view, notes = _modality_and_view(stem)
    extra.update(notes)
    scanner = _scanner_from_path(path)
    metadata = ScanMetadata(
        source=str(path),
        modality=modality,
        view=view,
        vendor=scanner.get("vendor"),  # type: ignore[arg-type]
        field_strength_t=scanner.get("field_strength_t"),  # type: ignore[arg-type]
        model=scanner.get("model"),  # type: ignore[arg-type]
        trajectory="cartesian",
        n_coils=n_coils,
        n_frames=n_frames,
        n_slices=n_slices,
        encoded_matrix=(n_ky, n_kx),
        acceleration=float(effective_r),
        mask_pattern=pattern,
        extra=extra,
    )
    return KSpaceScan(kspace=kspace, mask=mask, metadata=metadata)


# --------------------------------------------------------------------------- masks


def read_cmrxrecon_mask(path: str | os.PathLike[str], key: str | None = None) -> CMRxReconMask:
    """Read a CMRxRecon sampling mask (v5 or v7.3, detected).

    Args:
        path: e.g. ``cine_sax_mask_ktRadial24.mat`` (2024/2025) or ``cine_sax_mask.mat`` (2023).
        key: variable name; by default the only variable whose name contains ``mask``
            (2023 files hold ``mask04``, ``mask08`` and ``mask10``: then ``key`` is required).

    Returns:
        :class:`CMRxReconMask` ``(mask, pattern, nominal_r)``: ``mask`` bool ``[time|1, ky, kx]``
        (MATLAB ``(kx, ky)`` gives ``[1, ky, kx]``, ``(kx, ky, time)`` gives ``[time, ky, kx]``);
        ``pattern`` and ``nominal_r`` parsed from the variable name, then the file name
        (``ktGaussian24`` -> ``"kt_gaussian"``, 24; ``mask04`` -> ``"uniform"``, 4).  ``nominal_r``
        is in the CMRxRecon convention (calibration lines excluded); see ``effective_r``.

    Raises:
        DataFileError: not a MAT file, missing/ambiguous variable, not 2-D or 3-D, complex.
    """
    path = Path(path)
    variables = list_mat_variables(path)
    key = _choose_key(path, variables, key, "mask")
    version = "7.3" if _is_v73(path) else "5"
    data = _read_variable(path, key, version)
    if np.iscomplexobj(data) or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise DataFileError(path, f"mask variable {key!r} has dtype {data.dtype}, expected real 0/1")
    if data.ndim not in (2, 3):
        raise DataFileError(
            path,
            f"mask variable {key!r} has {data.ndim} dimensions (stored shape {list(data.shape)}); "
            "expected MATLAB (kx, ky) or (kx, ky, time)",
        )
    mask = np.ascontiguousarray(data != 0)
    if mask.ndim == 2:
        mask = mask[None]
    pattern, nominal_r = parse_cmrxrecon_pattern(key, path.stem)
    return CMRxReconMask(mask=mask, pattern=pattern, nominal_r=nominal_r)
