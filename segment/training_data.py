"""Training/validation samples for the cardiac decoder and their cached encoder features.

A sample is a model-grid image (float ``[256, 256]`` in ``[0, 1]``), a label map
(uint8 ``[256, 256]``: 0 bg, 1 LV blood, 2 LV myocardium, 3 RV blood, 254 not LV blood, 255
unknown; :mod:`segment.losses`) and a loss weight.  Sources:

* ``phantom``: :func:`cardiomm.data.phantom.make_phantom` slices with exact labels (simulated).
* ``sunnybrook``: manually contoured frames of Sunnybrook patients (LV blood + myocardium).
  Sunnybrook has no RV labels: pixels the ACDC teacher (:mod:`segment.acdc_teacher`) calls RV
  and the manual contours leave as background become RV.  Frames without an epicardium
  contour (end-systole) get a ring of ``es_ring_mm`` around the blood pool, where the
  unlabelled myocardium is, labelled 254 (not LV blood: the contour says where the blood pool
  ends) or 255 (unknown), as configs without ``data.es_ring_label`` have it.
* ``sunnybrook_teacher``: non-contoured Sunnybrook frames with the teacher's labels (lower weight).
* ``recon``: phantom slices *reconstructed* from simulated undersampled multi-coil k-space
  (CardioMM and classical methods, k-t patterns, R 4-24) at end-diastole and end-systole, with
  the phantom's exact labels, so the decoder learns the blur and aliasing of reconstructions
  at high acceleration instead of seeing them first at test time.
* ``recon_sunnybrook``: the same for the contoured slices of real Sunnybrook patients (SIMULATED
  acquisitions of their DICOM images), with their manual labels.

Augmented copies are made on the model grid (the frozen encoder must re-encode them, so
the copies are fixed at caching time).  :func:`build_cache` encodes everything once and
stores float16 features in ``.npy`` memory maps.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from scipy import ndimage

from cardiomm.data.labels import LV_BLOOD, LV_MYOCARDIUM, RV_BLOOD
from segment.augment import AugmentConfig, apply_rigid, random_intensity, random_rigid
from segment.losses import IGNORE, NOT_LV_BLOOD
from segment.preprocess import MODEL_SIZE, GridGeometry, heart_box, normalize_intensity, to_model_grid

__all__ = ["ES_RING_LABELS", "IGNORE", "NOT_LV_BLOOD", "Sample", "phantom_samples", "reconstruction_samples", "sunnybrook_reconstruction_samples",
           "sunnybrook_samples", "zoomed", "build_cache",
           "cache_is_complete", "load_cache", "load_caches"]

#: ``data.es_ring_label`` of a config -> the label of the ring around an end-systolic blood pool without epicardium
ES_RING_LABELS = {"not_lv_blood": NOT_LV_BLOOD, "unknown": IGNORE}


@dataclass
class Sample:
    """One training image on the model grid."""

    image01: np.ndarray  # float32 [256, 256]
    label: np.ndarray  # uint8 [256, 256], 254 = not LV blood, 255 = unknown
    weight: float
    source: str
    spacing_mm: float = float("nan")  # pixel size of the model grid (mm), needed by :func:`zoomed`


def _to_grid(image: np.ndarray, label: np.ndarray | None,
             pixel_spacing_mm: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray | None, GridGeometry]:
    geom = GridGeometry.for_shape(image.shape, pixel_spacing_mm)
    img = to_model_grid(normalize_intensity(image)[None], geom)[0].numpy()
    if label is None:
        return img, None, geom
    return img, _labels_on_grid(label, geom), geom


def _grid_spacing(geom: GridGeometry, pixel_spacing_mm: tuple[float, float] | float) -> float:
    ps = np.atleast_1d(np.asarray(pixel_spacing_mm, dtype=np.float64))
    return float(ps.max()) * geom.side / MODEL_SIZE


def _labels_on_grid(label: np.ndarray, geom: GridGeometry) -> np.ndarray:
    """Label map -> model grid through one-hot maps (so classes keep their area; outside the image -> 0)."""
    values = (0, 1, 2, 3, NOT_LV_BLOOD, IGNORE)
    onehot = np.stack([label == v for v in values]).astype(np.float32)
    grid = to_model_grid(onehot, geom).numpy()
    return np.array(values, dtype=np.uint8)[grid.argmax(0)]


def zoomed(sample: Sample, rng: np.random.Generator, side_range_mm: tuple[float, float] = (140.0, 240.0),
           jitter_mm: float = 15.0, min_margin: float = 1.15) -> Sample | None:
    """A heart-centred zoom of a model-grid sample, as the segmenter's second pass sees the heart.

    The window is a square of side uniform in ``side_range_mm`` (at least ``min_margin`` times the
    heart's extent), centred on the centre of the labelled heart (LV, myocardium, RV) moved by up
    to ``jitter_mm`` along each axis, and resized to the 256 model grid.

    Returns:
        The zoomed sample (``spacing_mm`` = its new grid pixel size), or None when the sample has
        no heart label or no known grid spacing.
    """
    box = heart_box(sample.label)
    if box is None or not np.isfinite(sample.spacing_mm) or sample.spacing_mm <= 0:
        return None
    side_px = max(float(rng.uniform(*side_range_mm)) / sample.spacing_mm, min_margin * max(box[1]))
    centre = np.array(box[0]) + rng.uniform(-jitter_mm, jitter_mm, 2) / sample.spacing_mm
    geom = GridGeometry.window(sample.label.shape, (float(centre[0]), float(centre[1])), side_px)
    image = to_model_grid(sample.image01[None].astype(np.float32), geom)[0].numpy()
    return Sample(image, _labels_on_grid(sample.label, geom), sample.weight, f"{sample.source}:zoom",
                  sample.spacing_mm * geom.side / MODEL_SIZE)


def _augmented(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    motion = random_rigid(rng, img.shape[0], cfg)
    return random_intensity(apply_rigid(img, motion, order=1), rng, cfg), apply_rigid(lab, motion, order=0)


def phantom_samples(
    seeds: list[int], per_seed: int, rng: np.random.Generator, cfg: AugmentConfig, augment_fraction: float
) -> Iterator[Sample]:
    """Random labelled slices/frames of phantoms (random matrix and pixel size, FOV 260-380 mm)."""
    from cardiomm.data.phantom import make_phantom

    for seed in seeds:
        n = int(rng.choice([160, 192, 224, 256]))
        fov = float(rng.uniform(260, 380))
        ph = make_phantom(seed, matrix=(n, n), pixel_spacing_mm=(fov / n, fov / n))
        s_f = [(s, f) for s in range(ph.labels.shape[0]) for f in range(ph.labels.shape[1]) if (ph.labels[s, f] == LV_BLOOD).any()]
        for k in rng.choice(len(s_f), size=min(per_seed, len(s_f)), replace=False):
            s, f = s_f[int(k)]
            img, lab, geom = _to_grid(ph.images[s, f], ph.labels[s, f])
            if rng.random() < augment_fraction:
                img, lab = _augmented(img, lab, rng, cfg)
            yield Sample(img, lab, 1.0, f"phantom:{seed}:{s}:{f}", _grid_spacing(geom, ph.pixel_spacing_mm))


def reconstruction_samples(
    seeds: list[int], methods: list[str], patterns: list[str], accel_range: tuple[float, float],
    rng: np.random.Generator, cfg: AugmentConfig, *, matrices: tuple[int, ...] = (128, 160),
    fov_range_mm: tuple[float, float] = (260.0, 340.0), n_frames: int = 12, n_coils: int = 10,
    snr_db: float = 30.0, augment_fraction: float = 0.5,
) -> Iterator[Sample]:
    """Reconstructions of phantom slices at end-diastole and end-systole (SIMULATED acquisitions).

    For every seed: a phantom with a random matrix (``matrices``) and field of view, one random
    slice through the LV, a simulated ``n_coils`` acquisition, one random pattern and an effective
    R uniform in ``accel_range``; every method of ``methods`` (names of
    :data:`cardiomm.fidelity.methods.METHOD_NAMES`; ``cardiomm`` is the shipped checkpoint)
    reconstructs it and the magnitude at frame 0 (ED) and at the phantom's ES frame is a sample
    with the phantom's exact labels.
    """
    from cardiomm.data.phantom import make_phantom
    from cardiomm.data.simulate import simulate_kspace
    from cardiomm.fidelity.methods import make_method
    from recon.masks import make_mask

    runners = [make_method(m, "cpu") for m in methods]
    for seed in seeds:
        n = int(rng.choice(list(matrices)))
        fov = float(rng.uniform(*fov_range_mm))
        ph = make_phantom(seed, n_frames=n_frames, matrix=(n, n), pixel_spacing_mm=(fov / n, fov / n))
        es = int(ph.design.es_frame)
        slices = [s for s in range(ph.labels.shape[0]) if (ph.labels[s, es] == LV_BLOOD).any()]
        s = int(rng.choice(slices))
        acq = simulate_kspace(ph.images[s: s + 1], n_coils=n_coils, seed=seed, snr_db=snr_db,
                              pixel_spacing_mm=ph.pixel_spacing_mm, slice_thickness_mm=ph.slice_thickness_mm)
        kspace = torch.as_tensor(acq.kspace)
        pattern = str(rng.choice(list(patterns)))
        accel = float(rng.uniform(*accel_range))
        sampling = make_mask(pattern, accel, tuple(kspace.shape[-3:]), seed=seed)
        labels = {0: ph.labels[s, 0], es: ph.labels[s, es]}
        yield from _reconstructed_frames(runners, kspace, sampling, acq.metadata, labels, ph.pixel_spacing_mm, rng, cfg,
                                         augment_fraction, f"recon:{{method}}:{pattern}:R{sampling.r_effective:.1f}:{seed}:{s}")


def _reconstructed_frames(
    runners: list, kspace: torch.Tensor, sampling, metadata, labels: dict[int, np.ndarray],
    pixel_spacing_mm: tuple[float, float], rng: np.random.Generator, cfg: AugmentConfig, augment_fraction: float,
    source: str, transposed: bool = False,
) -> Iterator[Sample]:
    """Every runner reconstructs ``kspace`` ``[1, coil, time, ky, kx]`` under ``sampling``; the frames
    named by ``labels`` (frame -> label map ``[y, x]``) become samples, a share ``augment_fraction``
    of them moved.  ``source`` is formatted with ``method``; a ``transposed`` acquisition (ky along
    image x) is transposed back to the labels' orientation."""
    for runner in runners:
        magnitude = runner(kspace, sampling, metadata)[0].abs().numpy()
        if transposed:
            magnitude = np.swapaxes(magnitude, -1, -2)
        for f, label in labels.items():
            img, lab, geom = _to_grid(magnitude[f], label, pixel_spacing_mm)
            if rng.random() < augment_fraction:
                img, lab = _augmented(img, lab, rng, cfg)
            yield Sample(img, lab, 1.0, f"{source.format(method=runner.name)}:{f}", _grid_spacing(geom, pixel_spacing_mm))


def sunnybrook_reconstruction_samples(
    root: Path, patients: list[str], methods: list[str], patterns: list[str], accel_range: tuple[float, float],
    rng: np.random.Generator, cfg: AugmentConfig, *, rounds: int = 1, n_coils: int = 10, snr_db: float = 30.0,
    augment_fraction: float = 0.5, ring_mm: float = 12.0, ring_label: int = NOT_LV_BLOOD, max_slices: int | None = None,
) -> Iterator[Sample]:
    """Reconstructions of the contoured slices of real Sunnybrook patients (SIMULATED acquisitions).

    Every slice with manual contours is simulated as a ``n_coils`` acquisition of its whole cine
    (as ``cardiomm bench fidelity`` does for a DICOM folder), undersampled ``rounds`` times with a
    random pattern and an effective R uniform in ``accel_range``, and reconstructed by every method
    (names of :data:`cardiomm.fidelity.methods.METHOD_NAMES`; ``cardiomm`` is the shipped
    checkpoint).  Its contoured frames (end-diastole, end-systole) become samples with the manual
    labels, completed as in :func:`sunnybrook_samples` (teacher RV on the fully sampled image,
    a ``ring_label`` ring where no epicardium is drawn): the decoder learns real anatomy through the blur
    and aliasing of reconstructions, which phantoms alone do not teach.  ``max_slices`` keeps only
    the first (basal) contoured slices of each patient.
    """
    from cardiomm.data.contours import sunnybrook_labels
    from cardiomm.data.dicom_cine import read_dicom_cine
    from cardiomm.data.sources import load_source
    from cardiomm.fidelity.methods import make_method
    from recon.masks import make_mask
    from segment.acdc_teacher import AcdcTeacher

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    runners = [make_method(m, "cpu") for m in methods]
    teacher = AcdcTeacher()
    for pid in patients:
        folder = root / "dicoms" / pid
        cine = read_dicom_cine(folder)
        manual = sunnybrook_labels(root / "contourfiles", cine)
        spacing = float(cine.pixel_spacing_mm[0])
        for s in sorted({s for s, _ in manual})[:max_slices]:
            labels = {f: _sunnybrook_label(lab, teacher.segment(cine.images[s, f]), bool((lab == LV_MYOCARDIUM).any()),
                                           spacing, ring_mm, ring_label)
                      for (ss, f), lab in sorted(manual.items()) if ss == s}
            acq = load_source(folder, n_coils=n_coils, seed=int(rng.integers(2**31)), snr_db=snr_db, slices=[s])
            transposed = bool((acq.metadata.extra or {}).get("transposed", False))
            for _ in range(rounds):
                pattern = str(rng.choice(list(patterns)))
                sampling = make_mask(pattern, float(rng.uniform(*accel_range)), tuple(acq.kspace.shape[-3:]),
                                     seed=int(rng.integers(2**31)))
                yield from _reconstructed_frames(
                    runners, acq.kspace, sampling, acq.metadata, labels, cine.pixel_spacing_mm, rng, cfg, augment_fraction,
                    f"recon_sunnybrook:{{method}}:{pattern}:R{sampling.r_effective:.1f}:{pid}:{s}", transposed)


def _sunnybrook_label(manual: np.ndarray, teacher: np.ndarray, has_epi: bool, spacing_mm: float, ring_mm: float,
                      ring_label: int = NOT_LV_BLOOD) -> np.ndarray:
    """Manual LV labels + teacher RV (+ a ``ring_label`` ring, :data:`ES_RING_LABELS`, where the epicardium is missing)."""
    lab = manual.copy()
    if not has_epi:
        ring = ndimage.binary_dilation(manual == LV_BLOOD, iterations=max(1, int(round(ring_mm / spacing_mm)))) & (manual != LV_BLOOD)
        lab[ring] = ring_label
    lab[(teacher == RV_BLOOD) & (lab == 0)] = RV_BLOOD
    return lab


def sunnybrook_samples(
    root: Path, patients: list[str], copies: int, teacher_frames: int, rng: np.random.Generator,
    cfg: AugmentConfig, ring_mm: float = 12.0, teacher_weight: float = 0.5, ring_label: int = NOT_LV_BLOOD,
) -> Iterator[Sample]:
    """Contoured frames (+ ``copies`` augmented copies each) and ``teacher_frames`` teacher-labelled frames per patient."""
    from cardiomm.data.contours import sunnybrook_labels
    from cardiomm.data.dicom_cine import read_dicom_cine
    from segment.acdc_teacher import AcdcTeacher

    teacher = AcdcTeacher()
    for pid in patients:
        cine = read_dicom_cine(root / "dicoms" / pid)
        manual = sunnybrook_labels(root / "contourfiles", cine)
        spacing = float(cine.pixel_spacing_mm[0])
        for (s, f), lab in manual.items():
            t = teacher.segment(cine.images[s, f])
            full = _sunnybrook_label(lab, t, bool((lab == LV_MYOCARDIUM).any()), spacing, ring_mm, ring_label)
            img, glab, geom = _to_grid(cine.images[s, f], full)
            gs = _grid_spacing(geom, cine.pixel_spacing_mm)
            yield Sample(img, glab, 1.0, f"sunnybrook:{pid}:{s}:{f}", gs)
            for _ in range(copies):
                a, b = _augmented(img, glab, rng, cfg)
                yield Sample(a, b, 1.0, f"sunnybrook_aug:{pid}:{s}:{f}", gs)
        others = [(s, f) for s in range(cine.images.shape[0]) for f in range(cine.images.shape[1]) if (s, f) not in manual]
        for k in rng.choice(len(others), size=min(teacher_frames, len(others)), replace=False):
            s, f = others[int(k)]
            t = teacher.segment(cine.images[s, f])
            img, glab, geom = _to_grid(cine.images[s, f], t)
            if rng.random() < 0.5:
                img, glab = _augmented(img, glab, rng, cfg)
            yield Sample(img, glab, teacher_weight, f"sunnybrook_teacher:{pid}:{s}:{f}", _grid_spacing(geom, cine.pixel_spacing_mm))


def cache_is_complete(folder: Path, fingerprint: str) -> bool:
    """True when ``folder`` holds a fully encoded cache built from a config with this fingerprint."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("fingerprint") == fingerprint and int(meta.get("n_encoded", -1)) == int(meta.get("n", -2))


def build_cache(samples: list[Sample], folder: Path, encoder: torch.nn.Module, batch: int = 2, progress: bool = True,
                fingerprint: str | None = None) -> float:
    """Encode ``samples`` with the frozen encoder and store them in ``folder``.

    Writes ``image.npy`` float16 ``[n, 256, 256]`` and ``label.npy`` uint8 ``[n, 256, 256]``
    first, then fills ``embedding.npy`` float16 ``[n, 256, 64, 64]`` and ``stage1.npy``
    float16 ``[n, 128, 128, 128]`` batch by batch, updating ``meta.json`` (weights, sources,
    ``n_encoded``, encoder seconds per image) after each batch, so that an interrupted cache
    can still be used for its first ``n_encoded`` samples (shuffle the samples beforehand).
    Returns the encoder seconds per image.
    """
    from rich.progress import Progress

    folder.mkdir(parents=True, exist_ok=True)
    n = len(samples)
    np.save(folder / "image.npy", np.stack([s.image01 for s in samples]).astype(np.float16))
    np.save(folder / "label.npy", np.stack([s.label for s in samples]).astype(np.uint8))
    emb = np.lib.format.open_memmap(folder / "embedding.npy", mode="w+", dtype=np.float16, shape=(n, 256, 64, 64))
    st1 = np.lib.format.open_memmap(folder / "stage1.npy", mode="w+", dtype=np.float16, shape=(n, 128, 128, 128))
    meta = {"n": n, "n_encoded": 0, "weights": [s.weight for s in samples], "sources": [s.source for s in samples],
            "spacings_mm": [s.spacing_mm for s in samples],
            "encoder_seconds_per_image": None, "fingerprint": fingerprint}
    t_total = 0.0
    with Progress(disable=not progress) as bar:
        task = bar.add_task("encoding (LiteMedSAM, frozen)", total=n)
        for i in range(0, n, batch):
            x = torch.from_numpy(np.stack([s.image01 for s in samples[i: i + batch]]))
            t0 = time.perf_counter()
            feats = encoder(x)
            t_total += time.perf_counter() - t0
            emb[i: i + len(x)] = feats.embedding.numpy().astype(np.float16)
            st1[i: i + len(x)] = feats.stage1.numpy().astype(np.float16)
            emb.flush(); st1.flush()
            meta["n_encoded"] = i + len(x)
            meta["encoder_seconds_per_image"] = t_total / meta["n_encoded"]
            (folder / "meta.json.tmp").write_text(json.dumps(meta))
            (folder / "meta.json.tmp").replace(folder / "meta.json")
            bar.advance(task, len(x))
            if not progress or i % 20 == 0:
                print(f"encoded {meta['n_encoded']}/{n} ({meta['encoder_seconds_per_image']:.1f} s/image)", flush=True)
    return float(meta["encoder_seconds_per_image"] or 0.0)


def add_stage2(folder: Path, encoder: torch.nn.Module, batch: int = 4, progress: bool = True) -> bool:
    """Add ``stage2.npy`` float16 ``[n, 320, 64, 64]`` (the encoder's ``layers[2]`` output, the input of
    :class:`segment.encoder_adapters.AdaptedEncoderTail`) to a complete cache of :func:`build_cache`,
    computed from its stored images.  ``encoder``: a ``FrozenImageEncoder(..., keep_stage2=True)``.

    Written to a temporary file, then renamed, and recorded in ``meta.json`` (``n_stage2``); a cache
    that has it already is left alone.  Returns whether it was computed.
    """
    from rich.progress import Progress

    from segment.encoder_adapters import STAGE2_CHANNELS

    meta = json.loads((folder / "meta.json").read_text())
    n = int(meta["n_encoded"])
    if int(meta.get("n_stage2", 0)) >= n and (folder / "stage2.npy").is_file():
        return False
    if not getattr(encoder, "keep_stage2", False):
        raise ValueError("add_stage2 needs an encoder that keeps its stage-2 features (FrozenImageEncoder(keep_stage2=True))")
    images = np.load(folder / "image.npy", mmap_mode="r")
    tmp = folder / "stage2.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, STAGE2_CHANNELS, 64, 64))
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"stage-2 features of {folder.name}", total=n)
        for i in range(0, n, batch):
            out[i: i + batch] = encoder(torch.from_numpy(np.asarray(images[i: i + batch], np.float32))).stage2.numpy()
            bar.advance(task, min(batch, n - i))
    out.flush()
    del out
    tmp.replace(folder / "stage2.npy")
    meta["n_stage2"] = n
    (folder / "meta.json.tmp").write_text(json.dumps(meta))
    (folder / "meta.json.tmp").replace(folder / "meta.json")
    return True


def load_cache(folder: Path) -> dict[str, np.ndarray | list]:
    """Memory-mapped arrays of the encoded samples (the first ``n_encoded``) written by :func:`build_cache`, plus weights and sources
    (and ``stage2`` when :func:`add_stage2` has added it)."""
    meta = json.loads((folder / "meta.json").read_text())
    m = int(meta["n_encoded"])
    out: dict[str, np.ndarray | list] = {k: np.load(folder / f"{k}.npy", mmap_mode="r")[:m] for k in ("embedding", "stage1", "image", "label")}
    if int(meta.get("n_stage2", 0)) >= m and (folder / "stage2.npy").is_file():
        out["stage2"] = np.load(folder / "stage2.npy", mmap_mode="r")[:m]
    out["weights"] = np.asarray(meta["weights"][:m], dtype=np.float32)
    out["sources"] = meta["sources"][:m]
    out["spacings_mm"] = np.asarray(meta.get("spacings_mm", [float("nan")] * m)[:m], dtype=np.float64)
    return out


def load_caches(folders: list[Path], skip: tuple[str, ...] = ()) -> dict[str, np.ndarray | list]:
    """Several caches (:func:`load_cache`) concatenated into one, in RAM (``stage2`` only when every cache has it),
    without the arrays named in ``skip`` (e.g. ``("embedding",)`` when adapted encoder tails recompute it)."""
    parts = [load_cache(f) for f in folders]
    out: dict[str, np.ndarray | list] = {}
    keys = ("embedding", "stage1", "image", "label", "weights") + (("stage2",) if all("stage2" in p for p in parts) else ())
    for key in (k for k in keys if k not in skip):
        out[key] = np.concatenate([np.asarray(p[key]) for p in parts])
    out["sources"] = [s for p in parts for s in p["sources"]]
    return out
