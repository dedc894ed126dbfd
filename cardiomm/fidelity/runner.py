"""Biomarker fidelity: how far do images, segmentations and clinical numbers move when a
fully sampled cine is undersampled and reconstructed?

For every case (a fully sampled multi-coil cine: phantom seed, simulated acquisition from a
DICOM folder, ISMRMRD raw file), the *reference* is the root-sum-of-squares image of the fully
sampled k-space, segmented by the same segmenter as every reconstruction.  For each pattern,
acceleration R and method the k-space is undersampled retrospectively (:func:`recon.masks.make_mask`,
R effective), reconstructed, segmented, and scored against the reference:

* image: PSNR / SSIM / NMSE per slice (volume normalisation of :mod:`recon.metrics`), averaged;
  for simulated sources also against the noiseless simulation (``image_vs_noise_free``), since
  the fully sampled reference carries the noise of the very samples a method keeps;
* segmentation: Dice per class over the whole stack versus the reference segmentation;
* biomarkers (:func:`segment.biomarkers.compute_biomarkers`):
  LVEDV, LVESV, LVEF, LV mass, RVEDV, RVEF, as differences ``method - reference``; across cases
  they are summarised as Bland-Altman bias and 95% limits of agreement.

When a case has true labels (the phantom), the reference segmentation is also scored against
them, so that segmentation error and reconstruction error can be told apart.

Which frames are segmented (``frames``):

* ``"all"``: every slice and frame of every stack; ED/ES are the frames of largest/smallest LV
  volume of each stack.
* ``"ed-es-stack"`` (cheaper: the SAM image encoder costs seconds per image on a CPU): the
  *reference* is segmented in every slice and frame, the frames of its largest/smallest LV
  volume are ED and ES, and every reconstruction is segmented at those two frames only.  The
  reconstructions are scored at the reference's ED/ES frames, so the differences come from the
  reconstruction alone.
* ``"ed-es"`` (cheapest): the same, but ED and ES are the frames of largest/smallest LV blood
  area of the reference's mid-ventricular slice alone, and only that slice is segmented in every
  frame.  One slice can miss the end-systolic frame of the whole ventricle: on SCD0000301 (2026-12-02)
  the mid slice gave frames 17 / 10 and the stack 17 / 8.

With a :class:`~cardiomm.fidelity.cache.ReconstructionCache` the reconstructions are read back
from an earlier run when data, mask, method and code are the same, so a rerun after a change of
the segmenter costs only the segmentation and the scoring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from cardiomm.data.labels import LABEL_IGNORE, LV_BLOOD
from cardiomm.data.metadata import ScanMetadata
from cardiomm.data.sources import load_source
from cardiomm.fidelity import FRAME_MODES
from cardiomm.fidelity.agreement import bland_altman, dice_per_class
from cardiomm.fidelity.cache import ReconstructionCache
from cardiomm.fidelity.methods import MethodRunner
from recon.conventions import ifft2c, rss
from recon.masks import DENSITIES, SamplingMask, density_for, make_mask
from recon.metrics import image_metrics
from segment.biomarkers import compute_biomarkers

#: Biomarkers compared, with their units.
BIOMARKERS: dict[str, str] = {
    "lvedv_ml": "mL",
    "lvesv_ml": "mL",
    "lvef_percent": "%",
    "lv_mass_g": "g",
    "rvedv_ml": "mL",
    "rvef_percent": "%",
}


class Segmenter(Protocol):
    """Anything that labels magnitude images: ``segment(images [..., y, x], pixel_spacing_mm) -> uint8 [..., y, x]``."""

    def segment(self, images: np.ndarray, pixel_spacing_mm: tuple[float, float]) -> np.ndarray: ...


def describe_segmenter(segmenter: Segmenter) -> str:
    """One line naming the segmenter (its own ``describe()`` when it has one)."""
    describe = getattr(segmenter, "describe", None)
    if callable(describe):
        return str(describe())
    return type(segmenter).__name__


@dataclass
class FidelityCase:
    """One fully sampled cine scan.

    Attributes:
        name: short name for tables.
        spec: the source spec it was loaded from.
        kspace: complex64 ``[slice, coil, time, ky, kx]``, fully sampled.
        reference: float32 ``[slice, time, y, x]`` RSS magnitude of the fully sampled k-space.
        metadata: the scan's metadata (spacing in mm).
        labels: true labels ``[slice, time, y, x]`` (phantom) or manual ones, or None.
        truth: true biomarkers of the scan (phantom), or None.
        noise_free: float32 ``[slice, time, y, x]``, the noiseless magnitude of a simulated scan (the
            truth the images are also scored against, as ``image_vs_noise_free``), or None.
    """

    name: str
    spec: str
    kspace: torch.Tensor
    reference: np.ndarray
    metadata: ScanMetadata
    labels: np.ndarray | None = None
    truth: dict[str, Any] | None = None
    noise_free: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.noise_free is not None and self.noise_free.shape != self.reference.shape:
            raise ValueError(f"{self.spec}: noise_free image {list(self.noise_free.shape)} does not match the "
                             f"reference {list(self.reference.shape)}")

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        ps = self.metadata.pixel_spacing_mm
        if ps is None:
            raise ValueError(f"{self.spec}: the scan has no pixel spacing, so volumes cannot be computed")
        return float(ps[0]), float(ps[1])

    @property
    def transposed(self) -> bool:
        """True when the loader swapped image y and x (DICOM phase encoding along x, see :mod:`cardiomm.data.sources`)."""
        return bool((self.metadata.extra or {}).get("transposed", False))

    def segment(self, segmenter: Segmenter, images: np.ndarray) -> np.ndarray:
        """Labels of ``images [..., y, x]`` (this case's grid), segmented as the scanner stored them.

        A transposed case is transposed back for the segmenter and its labels are transposed
        again: a transpose is a flip plus a 90 degree rotation, and the segmenter was trained on
        rotations of at most 15 degrees.
        """
        if not self.transposed:
            return segmenter.segment(images, self.pixel_spacing_mm)
        row, col = self.pixel_spacing_mm
        labels = segmenter.segment(np.swapaxes(images, -1, -2), (col, row))
        return np.ascontiguousarray(np.swapaxes(labels, -1, -2))

    @property
    def slice_spacing_mm(self) -> float:
        ss = self.metadata.slice_spacing_mm or self.metadata.slice_thickness_mm
        if ss is None:
            raise ValueError(f"{self.spec}: the scan has no slice spacing or thickness, so volumes cannot be computed")
        return float(ss)


def load_case(
    spec: str,
    *,
    n_coils: int = 10,
    seed: int = 0,
    snr_db: float | None = 30.0,
    slices: Sequence[int] | None = None,
    name: str | None = None,
) -> FidelityCase:
    """Load a fully sampled case from a source spec (see :mod:`cardiomm.data.sources`)."""
    src = load_source(spec, n_coils=n_coils, seed=seed, snr_db=snr_db, slices=slices)
    # slice by slice: the coil images of a whole scan at once are a second copy of its k-space, and more
    reference = np.stack([rss(ifft2c(k)).numpy().astype(np.float32) for k in src.kspace])
    labels = None if src.labels is None else src.labels.numpy()
    truth = src.truth if slices is None else None  # the truth is for the whole scan
    noise_free = None if src.noise_free is None else src.noise_free.abs().numpy().astype(np.float32)
    return FidelityCase(name or _short_name(spec), spec, src.kspace, reference, src.metadata, labels, truth, noise_free)


def _short_name(spec: str) -> str:
    text = spec.split("?")[0].rstrip("/")
    return text if text.startswith("phantom:") else text.split("/")[-1]


def _biomarkers(labels: np.ndarray, case: FidelityCase, ed_es: tuple[int, int] | None) -> dict[str, Any]:
    """Biomarkers of a label stack; ``ed_es`` given: the stack holds only the ED and ES frames (in that order)."""
    ed, es = (None, None) if ed_es is None else (0, 1)
    b = compute_biomarkers(labels, case.pixel_spacing_mm, case.slice_spacing_mm,
                           heart_rate_bpm=case.metadata.heart_rate_bpm, ed_frame=ed, es_frame=es)
    d = b.to_dict()
    if ed_es is not None:  # frame indices of the whole cine, not of the 2-frame stack
        d["ed_frame"], d["es_frame"] = int(ed_es[0]), int(ed_es[1])
        d["lv_mass_frame"] = int(ed_es[0])
    return d


def ed_es_from_stack(segmenter: Segmenter, case: FidelityCase) -> tuple[tuple[int, int], np.ndarray]:
    """ED and ES frames: largest and smallest LV blood volume of the case's fully sampled reference,
    segmented in every slice and frame.

    Returns:
        ``((ed, es), labels)``: the frames, and the reference's labels at them ``[slice, 2, y, x]``.
    Raises:
        ValueError: the stack has one frame, or no LV blood pool was found.
    """
    labels = case.segment(segmenter, _cine_of_frames(case))
    ed, es = _largest_and_smallest(labels, "the reference")
    return (ed, es), labels[:, [ed, es]]


def ed_es_from_mid_slice(segmenter: Segmenter, case: FidelityCase) -> tuple[int, int]:
    """ED and ES frames: largest and smallest LV blood area of the segmented mid-ventricular slice
    of the case's fully sampled reference (``[slice, time, y, x]``).

    Raises:
        ValueError: the stack has one frame, or no LV was found in the mid slice.
    """
    reference = _cine_of_frames(case)
    mid = case.segment(segmenter, reference[reference.shape[0] // 2][None])  # [1, frame, y, x]: one heart search
    return _largest_and_smallest(mid, "the mid-ventricular slice")


def _cine_of_frames(case: FidelityCase) -> np.ndarray:
    """The case's reference ``[slice, time, y, x]``; ValueError when it has fewer than 2 frames (no ED/ES)."""
    if case.reference.shape[1] < 2:
        raise ValueError(f"ED/ES need at least 2 frames, the stack has shape {list(case.reference.shape)}")
    return case.reference


def _largest_and_smallest(labels: np.ndarray, where: str) -> tuple[int, int]:
    """Frames of largest and smallest LV blood pool of labels ``[slice, time, y, x]`` (voxels summed over slices)."""
    lv = (labels == LV_BLOOD).sum(axis=(0, 2, 3))
    if not lv.any():
        raise ValueError(f"no LV blood pool found in {where}: cannot pick ED/ES frames")
    return int(np.argmax(lv)), int(np.argmin(lv))


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


@dataclass
class FidelityResult:
    """Everything :func:`run_fidelity` measured (see :meth:`to_dict` for the JSON layout)."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    strips: dict[str, dict[str, Any]] = field(default_factory=dict)  # images for figures, not in JSON
    seconds_total: float = 0.0

    def summary(self) -> list[dict[str, Any]]:
        """Per (method, pattern, R): means over cases and Bland-Altman of every biomarker."""
        groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
        for run in self.runs:
            groups.setdefault((run["method"], run["pattern"], run["accel_requested"]), []).append(run)
        rows = []
        for (method, pattern, accel), runs in groups.items():
            row: dict[str, Any] = {
                "method": method,
                "pattern": pattern,
                "mask_density": runs[0].get("mask_density"),
                "accel_requested": accel,
                "r_effective": _mean([r["r_effective"] for r in runs]),
                "r_cmrxrecon": _mean([r["r_cmrxrecon"] for r in runs]),
                "n_cases": len(runs),
                "psnr_db": _mean([r["image"]["psnr_db"] for r in runs]),
                "ssim": _mean([r["image"]["ssim"] for r in runs]),
                "nmse": _mean([r["image"]["nmse"] for r in runs]),
                "psnr_db_noise_free": _mean([(r.get("image_vs_noise_free") or {}).get("psnr_db") for r in runs]),
                "ssim_noise_free": _mean([(r.get("image_vs_noise_free") or {}).get("ssim") for r in runs]),
                "seconds_per_slice": _mean([r["seconds_per_slice"] for r in runs]),
                "dice": {k: _mean([r["dice_vs_reference"][k] for r in runs]) for k in ("lv", "myo", "rv")},
                "bland_altman": {},
            }
            for key in BIOMARKERS:
                ref = [r["reference_biomarkers"].get(key) for r in runs]
                test = [r["biomarkers"].get(key) for r in runs]
                row["bland_altman"][key] = bland_altman(ref, test).to_dict()
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "runs": self.runs, "summary": self.summary(), "seconds_total": self.seconds_total}


def image_scores(reference: np.ndarray, magnitude: np.ndarray) -> dict[str, Any]:
    """PSNR / SSIM / NMSE of ``magnitude`` against ``reference`` (both ``[slice, time, y, x]``), per slice, averaged."""
    per_slice = [image_metrics(reference[s], magnitude[s]) for s in range(magnitude.shape[0])]
    return {
        "psnr_db": _mean([_finite(m.psnr_db) for m in per_slice]),
        "ssim": _mean([_finite(m.ssim) for m in per_slice]),
        "nmse": _mean([_finite(m.nmse) for m in per_slice]),
        "normalization": per_slice[0].normalization,
    }


def run_fidelity(
    cases: Sequence[FidelityCase],
    methods: Sequence[MethodRunner],
    segmenter: Segmenter,
    *,
    accels: Sequence[float] = (4, 8, 12, 16, 20, 24),
    patterns: Sequence[str] = ("kt_gaussian",),
    mask_seed: int = 0,
    frames: str = "all",
    on_step: Callable[[str], None] | None = None,
    cache: ReconstructionCache | None = None,
    density: str = DENSITIES[0],
) -> FidelityResult:
    """Undersample, reconstruct, segment and score every case at every (pattern, R) and method.

    ``result.strips`` keeps, per case, the mid slice at the reference's end-diastolic frame
    (and, under ``*_es`` keys, at its end-systolic frame)
    of the reference and of every reconstruction (image and labels), for figures.

    Args:
        cases: fully sampled scans (:func:`load_case`).
        methods: reconstruction runners (:func:`cardiomm.fidelity.methods.make_method`).
        segmenter: labels magnitude images (the same one for reference and reconstructions).
        accels: effective accelerations R.
        patterns: mask patterns of :mod:`recon.masks`.
        mask_seed: seed of every mask (the same mask for every method).
        frames: ``"all"``, ``"ed-es-stack"`` or ``"ed-es"`` (see the module docstring).
        on_step: called with a description before every reconstruction (progress display).
        cache: read reconstructions from (and write them to) this cache
            (:class:`~cardiomm.fidelity.cache.ReconstructionCache`); None reconstructs everything.
        density: ky density of the ``kt_gaussian`` masks (:data:`recon.masks.DENSITIES`); the other
            patterns have none.
    """
    if frames not in FRAME_MODES:
        raise ValueError(f"frames must be one of {FRAME_MODES}, got {frames!r}")
    if density not in DENSITIES:
        raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
    result = FidelityResult()
    t_start = time.perf_counter()
    for case in cases:
        if frames == "ed-es-stack":
            ed_es, ref_labels = ed_es_from_stack(segmenter, case)
        else:
            ed_es = ed_es_from_mid_slice(segmenter, case) if frames == "ed-es" else None
            ref_labels = case.segment(segmenter, case.reference if ed_es is None else case.reference[:, list(ed_es)])
        pick = slice(None) if ed_es is None else list(ed_es)
        ref_bio = _biomarkers(ref_labels, case, ed_es)
        true_labels = None if case.labels is None else case.labels[:, pick]
        info: dict[str, Any] = {
            "name": case.name,
            "spec": case.spec,
            "simulated": bool(case.metadata.simulated),
            "source": case.metadata.source,
            "shape_slice_coil_time_ky_kx": list(case.kspace.shape),
            "pixel_spacing_mm": list(case.pixel_spacing_mm),
            "slice_spacing_mm": case.slice_spacing_mm,
            "reference_biomarkers": ref_bio,
            "truth": case.truth,
        }
        if case.labels is not None:
            info["reference_segmentation_dice_vs_labels"] = dice_per_class(true_labels, ref_labels, ignore=LABEL_IGNORE)
        info["segmented_frames"] = "all" if ed_es is None else {"ed": ed_es[0], "es": ed_es[1], "found_on": (
            "the whole reference stack" if frames == "ed-es-stack" else "the reference's mid-ventricular slice")}
        result.cases.append(info)
        mid = case.reference.shape[0] // 2
        ed = int(ref_bio["ed_frame"]) if ref_bio.get("ed_frame") is not None else 0
        es = int(ref_bio["es_frame"]) if ref_bio.get("es_frame") is not None else ed
        ed_in_stack, es_in_stack = (ed, es) if ed_es is None else (0, 1)
        strip = result.strips.setdefault(case.name, {
            "reference": case.reference[mid, ed], "reference_labels": ref_labels[mid, ed_in_stack],
            "reference_es": case.reference[mid, es], "reference_labels_es": ref_labels[mid, es_in_stack],
            "slice": mid, "frame": ed, "es_frame": es, "recons": {}, "recons_es": {}})
        for pattern in patterns:
            for accel in accels:
                sampling = make_mask(pattern, float(accel), tuple(case.kspace.shape[-3:]), seed=mask_seed,
                                     density=density_for(pattern, density))
                for runner in methods:
                    if on_step is not None:
                        on_step(f"{case.name} {pattern} R={float(accel):g} {runner.name}")
                    magnitude, seconds, cached = _reconstruct(runner, case, sampling, mask_seed, cache)
                    labels = case.segment(segmenter, magnitude[:, pick])
                    bio = _biomarkers(labels, case, ed_es)
                    image = image_scores(case.reference, magnitude)
                    run = {
                        "case": case.name,
                        "method": runner.name,
                        "pattern": pattern,
                        "mask_density": sampling.density,
                        "accel_requested": float(accel),
                        "r_effective": sampling.r_effective,
                        "r_cmrxrecon": sampling.r_cmrxrecon,
                        "calibration": sampling.calibration,
                        "image": image,
                        "image_vs_noise_free": None if case.noise_free is None
                        else image_scores(case.noise_free, magnitude),
                        "dice_vs_reference": dice_per_class(ref_labels, labels),
                        "dice_vs_labels": None if true_labels is None else dice_per_class(true_labels, labels, ignore=LABEL_IGNORE),
                        "biomarkers": bio,
                        "reference_biomarkers": ref_bio,
                        "errors": {
                            k: (None if bio.get(k) is None or ref_bio.get(k) is None else float(bio[k]) - float(ref_bio[k]))
                            for k in BIOMARKERS
                        },
                        "seconds_per_slice": seconds,
                        "device": str(runner.device),
                        "reconstruction_cached": cached,
                    }
                    result.runs.append(run)
                    # copies: a view would keep every run's whole [slice, time, y, x] stack alive until the report
                    strip["recons"][(runner.name, pattern, float(accel))] = (
                        magnitude[mid, ed].copy(), labels[mid, ed_in_stack].copy())
                    strip["recons_es"][(runner.name, pattern, float(accel))] = (
                        magnitude[mid, es].copy(), labels[mid, es_in_stack].copy())
    result.seconds_total = time.perf_counter() - t_start
    return result


def _reconstruct(runner: MethodRunner, case: FidelityCase, sampling: SamplingMask, mask_seed: int,
                 cache: ReconstructionCache | None) -> tuple[np.ndarray, float, bool]:
    """Magnitude ``[slice, time, y, x]`` (float32) of ``runner`` on ``case``, seconds per slice, whether it came from ``cache``.

    Read from the cache when it holds the entry (the seconds are then those of the run that wrote it);
    otherwise reconstructed, and written to the cache when there is one.
    """
    key = None
    if cache is not None:
        key = cache.key(case.kspace, case.metadata.to_dict(), sampling, mask_seed, runner.name,
                        runner.description, runner.device)
        entry = cache.load(key, tuple(case.reference.shape))
        if entry is not None:
            return entry.magnitude, entry.seconds_per_slice, True
    images = runner(case.kspace, sampling, case.metadata)
    magnitude = images.abs().numpy().astype(np.float32)
    seconds = runner.seconds_per_slice[-1]
    if cache is not None and key is not None:
        cache.store(key, magnitude, seconds, runner.device, {
            "case": case.spec, "method": runner.name, "description": runner.description, "pattern": sampling.pattern,
            "mask_density": sampling.density, "r_effective": sampling.r_effective, "mask_seed": int(mask_seed)})
    return magnitude, seconds, False
