"""Clinical cardiac biomarkers from a short-axis label stack (volumes, ejection fraction, mass).

Label convention of the whole project (:mod:`cardiomm.data.labels`)::

    0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool

Volumes use the summation-of-discs (Simpson) rule: voxel count x pixel area (mm^2) x slice
spacing (mm, centre to centre) / 1000 -> mL.  End-diastole (ED) is the frame of maximal and
end-systole (ES) the frame of minimal LV blood volume unless the caller names them; the
right ventricle is read at the same ED/ES frames (the usual convention of short-axis
analysis, e.g. ACDC) unless ``rv_frames="own"``.  Myocardial mass is the LV myocardial
volume at ED x :data:`MYOCARDIAL_DENSITY_G_PER_ML`.

Whatever cannot be determined (one frame only, no RV labels, ED == ES...) is ``None`` and a
sentence saying why is put in :attr:`CardiacBiomarkers.warnings`; no number is ever guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from cardiomm.data.labels import BACKGROUND, LABELS, LV_BLOOD, LV_MYOCARDIUM, RV_BLOOD

__all__ = [
    "BACKGROUND",
    "LV_BLOOD",
    "LV_MYOCARDIUM",
    "RV_BLOOD",
    "LABELS",
    "MYOCARDIAL_DENSITY_G_PER_ML",
    "CardiacBiomarkers",
    "compute_biomarkers",
    "label_volumes_ml",
]

#: Density of myocardium used to turn myocardial volume into mass (g/mL).
MYOCARDIAL_DENSITY_G_PER_ML = 1.05


@dataclass(frozen=True)
class CardiacBiomarkers:
    """Clinical numbers of one short-axis cine stack.  Units are in the field names.

    Per-frame values are tuples with one entry per cine frame.  Any value that cannot be
    determined from the labels is ``None`` and :attr:`warnings` says why.
    """

    n_slices: int
    n_frames: int
    pixel_spacing_mm: tuple[float, float]  # (row, col) = (y, x)
    slice_spacing_mm: float
    lv_volumes_ml: tuple[float, ...]  # LV blood pool volume of every frame
    rv_volumes_ml: tuple[float, ...]  # RV blood pool volume of every frame
    lv_myocardium_volumes_ml: tuple[float, ...]  # LV myocardial volume of every frame
    ed_frame: int | None
    es_frame: int | None
    lvedv_ml: float | None
    lvesv_ml: float | None
    lvsv_ml: float | None
    lvef_percent: float | None
    lv_mass_g: float | None
    lv_mass_frame: int | None  # frame whose myocardial volume gave lv_mass_g (ED when known)
    rvedv_ml: float | None
    rvesv_ml: float | None
    rvsv_ml: float | None
    rvef_percent: float | None
    heart_rate_bpm: float | None
    cardiac_output_l_min: float | None  # LVSV x heart rate
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (plain floats/ints/lists/None; units in the keys)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = [v for v in value]
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CardiacBiomarkers":
        """Inverse of :meth:`to_dict`."""
        known = set(cls.__dataclass_fields__)
        missing = known - set(d) - {"warnings"}
        if missing:
            raise ValueError(f"biomarker dict lacks the keys {sorted(missing)}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**kwargs)


def _check_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if arr.ndim != 4:
        raise ValueError(
            f"labels must have the 4 axes [slice, frame, y, x], got shape {list(arr.shape)}"
        )
    if arr.size == 0:
        raise ValueError(f"labels are empty: shape {list(arr.shape)}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"labels must be integers 0..3, got dtype {arr.dtype} with shape {list(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"labels of shape {list(arr.shape)} hold non-integer values (dtype {arr.dtype})")
        arr = arr.astype(np.int64)
    bad = np.setdiff1d(np.unique(arr), np.array(list(LABELS)))
    if bad.size:
        raise ValueError(
            f"labels of shape {list(arr.shape)} hold values {bad.tolist()[:10]} outside the label "
            f"convention {LABELS}"
        )
    return arr


def _check_spacing(pixel_spacing_mm: Sequence[float], slice_spacing_mm: float) -> tuple[tuple[float, float], float]:
    try:
        ps = tuple(float(v) for v in pixel_spacing_mm)
    except TypeError as err:
        raise ValueError(f"pixel_spacing_mm must be (row, col) in mm, got {pixel_spacing_mm!r}") from err
    if len(ps) != 2 or not all(np.isfinite(v) and v > 0 for v in ps):
        raise ValueError(f"pixel_spacing_mm must be two positive numbers (row, col) in mm, got {pixel_spacing_mm!r}")
    ss = float(slice_spacing_mm)
    if not (np.isfinite(ss) and ss > 0):
        raise ValueError(f"slice_spacing_mm must be a positive number of mm, got {slice_spacing_mm!r}")
    return (ps[0], ps[1]), ss


def label_volumes_ml(
    labels: Any, pixel_spacing_mm: Sequence[float], slice_spacing_mm: float
) -> dict[int, np.ndarray]:
    """Volume of every label in every frame by summation of discs.

    Args:
        labels: integer ``[slice, frame, y, x]`` (numpy or torch) with values 0..3.
        pixel_spacing_mm: ``(row, col)`` = ``(y, x)`` pixel size in mm.
        slice_spacing_mm: centre-to-centre distance of neighbouring slices in mm.
    Returns:
        ``{label: float64 [frame] volumes in mL}`` for labels 1, 2 and 3.
    """
    arr = _check_labels(labels)
    return _volumes(arr, *_check_spacing(pixel_spacing_mm, slice_spacing_mm))


def _volumes(arr: np.ndarray, pixel_spacing_mm: tuple[float, float], slice_spacing_mm: float) -> dict[int, np.ndarray]:
    voxel_ml = pixel_spacing_mm[0] * pixel_spacing_mm[1] * slice_spacing_mm / 1000.0
    return {
        lab: np.count_nonzero(arr == lab, axis=(0, 2, 3)).astype(np.float64) * voxel_ml
        for lab in (LV_BLOOD, LV_MYOCARDIUM, RV_BLOOD)
    }


def _ef(edv: float, esv: float) -> tuple[float, float]:
    sv = edv - esv
    return sv, 100.0 * sv / edv


def compute_biomarkers(
    labels: Any,
    pixel_spacing_mm: Sequence[float],
    slice_spacing_mm: float,
    *,
    heart_rate_bpm: float | None = None,
    ed_frame: int | None = None,
    es_frame: int | None = None,
    rv_frames: Literal["lv", "own"] = "lv",
) -> CardiacBiomarkers:
    """Ventricular volumes, ejection fractions, LV mass and cardiac output from labels.

    Args:
        labels: integer ``[slice, frame, y, x]`` label maps (0 background, 1 LV blood,
            2 LV myocardium, 3 RV blood), numpy or torch.
        pixel_spacing_mm: ``(row, col)`` in-plane pixel size in mm.
        slice_spacing_mm: centre-to-centre slice distance in mm (thickness + gap).
        heart_rate_bpm: heart rate in beats/min; gives the cardiac output (L/min) when known.
        ed_frame, es_frame: end-diastolic / end-systolic frame indices; by default the frames
            of maximal / minimal LV blood volume.
        rv_frames: ``"lv"`` reads the RV at the LV's ED/ES frames, ``"own"`` at the frames of
            maximal / minimal RV volume.
    Returns:
        :class:`CardiacBiomarkers`.
    Raises:
        ValueError: labels not 4-D ``[slice, frame, y, x]``, empty, non-integer or with values
            outside 0..3; non-positive spacing; a frame index out of range; a non-positive
            heart rate.
    """
    arr = _check_labels(labels)
    ps, ss = _check_spacing(pixel_spacing_mm, slice_spacing_mm)
    n_slices, n_frames = int(arr.shape[0]), int(arr.shape[1])
    for name, idx in (("ed_frame", ed_frame), ("es_frame", es_frame)):
        if idx is not None and not (isinstance(idx, (int, np.integer)) and -n_frames <= idx < n_frames):
            raise ValueError(f"{name}={idx!r} is not a frame index of labels with {n_frames} frames (shape {list(arr.shape)})")
    ed_frame = None if ed_frame is None else int(ed_frame) % n_frames
    es_frame = None if es_frame is None else int(es_frame) % n_frames
    if heart_rate_bpm is not None and not (np.isfinite(heart_rate_bpm) and heart_rate_bpm > 0):
        raise ValueError(f"heart_rate_bpm must be a positive number of beats/min, got {heart_rate_bpm!r}")
    if rv_frames not in ("lv", "own"):
        raise ValueError(f"rv_frames must be 'lv' or 'own', got {rv_frames!r}")

    vols = _volumes(arr, ps, ss)
    lv, myo, rv = vols[LV_BLOOD], vols[LV_MYOCARDIUM], vols[RV_BLOOD]
    warnings: list[str] = []

    has_lv = bool(np.any(lv > 0))
    has_rv = bool(np.any(rv > 0))
    if not has_lv:
        warnings.append("no LV blood pool (label 1) in any frame: LV volumes, EF and ED/ES frames are undetermined")

    # --- ED / ES frames -------------------------------------------------------------
    if n_frames == 1:
        if ed_frame is None and es_frame is None:
            warnings.append("only one frame: end-diastole and end-systole cannot be told apart, so SV/EF are undetermined")
    elif has_lv:  # without an LV only caller-given frames are used
        if ed_frame is None:
            ed_frame = int(np.argmax(lv))
        if es_frame is None:
            es_frame = int(np.argmin(lv))
    if ed_frame is not None and es_frame is not None and ed_frame == es_frame and n_frames > 1:
        warnings.append(f"ED and ES are the same frame ({ed_frame}): the LV volume does not change, SV/EF are undetermined")

    def _pair(vol: np.ndarray, ed: int | None, es: int | None, name: str) -> tuple[float | None, ...]:
        edv = float(vol[ed]) if ed is not None else None
        esv = float(vol[es]) if es is not None else None
        sv = ef = None
        if edv is not None and esv is not None and ed != es:
            if edv <= 0:
                warnings.append(f"{name} end-diastolic volume is 0 mL at frame {ed}: EF is undetermined")
            else:
                sv, ef = _ef(edv, esv)
                if esv > edv:
                    warnings.append(f"{name} end-systolic volume exceeds end-diastolic volume: negative SV/EF")
        return edv, esv, sv, ef

    if has_lv:
        lvedv, lvesv, lvsv, lvef = _pair(lv, ed_frame, es_frame, "LV")
    else:
        lvedv = lvesv = lvsv = lvef = None

    # --- LV mass --------------------------------------------------------------------
    mass_frame: int | None = ed_frame
    if mass_frame is None and n_frames == 1:
        mass_frame = 0
        if np.any(myo > 0):
            warnings.append("only one frame: LV mass is measured on frame 0, which may not be end-diastole")
    if mass_frame is not None and np.any(myo > 0):
        lv_mass = float(myo[mass_frame]) * MYOCARDIAL_DENSITY_G_PER_ML
    else:
        lv_mass = None
        mass_frame = None
        if not np.any(myo > 0):
            warnings.append("no LV myocardium (label 2) in any frame: LV mass is undetermined")
        else:
            warnings.append("end-diastole is unknown: LV mass is undetermined")

    # --- RV -------------------------------------------------------------------------
    if not has_rv:
        warnings.append("no RV blood pool (label 3) in any frame: RV volumes and EF are undetermined")
        rvedv = rvesv = rvsv = rvef = None
    else:
        rv_ed, rv_es = ed_frame, es_frame
        if rv_frames == "own" and n_frames > 1:
            rv_ed, rv_es = int(np.argmax(rv)), int(np.argmin(rv))
        rvedv, rvesv, rvsv, rvef = _pair(rv, rv_ed, rv_es, "RV")

    # --- cardiac output -------------------------------------------------------------
    cardiac_output = None
    if heart_rate_bpm is not None and lvsv is not None:
        cardiac_output = lvsv * float(heart_rate_bpm) / 1000.0
    elif heart_rate_bpm is None and lvsv is not None:
        warnings.append("heart rate unknown: cardiac output is undetermined")

    return CardiacBiomarkers(
        n_slices=n_slices,
        n_frames=n_frames,
        pixel_spacing_mm=ps,
        slice_spacing_mm=ss,
        lv_volumes_ml=tuple(float(v) for v in lv),
        rv_volumes_ml=tuple(float(v) for v in rv),
        lv_myocardium_volumes_ml=tuple(float(v) for v in myo),
        ed_frame=ed_frame,
        es_frame=es_frame,
        lvedv_ml=lvedv,
        lvesv_ml=lvesv,
        lvsv_ml=lvsv,
        lvef_percent=lvef,
        lv_mass_g=lv_mass,
        lv_mass_frame=mass_frame,
        rvedv_ml=rvedv,
        rvesv_ml=rvesv,
        rvsv_ml=rvsv,
        rvef_percent=rvef,
        heart_rate_bpm=None if heart_rate_bpm is None else float(heart_rate_bpm),
        cardiac_output_l_min=cardiac_output,
        warnings=tuple(warnings),
    )
