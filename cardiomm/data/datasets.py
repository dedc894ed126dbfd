"""Torch dataset of retrospectively undersampled 2D+t cine slices from any source.

One item is one slice (all its frames) of a fully sampled source
(:mod:`cardiomm.data.sources`), undersampled with a mask of :func:`recon.masks.make_mask`:

=============  ==============================================================================
key            value
=============  ==============================================================================
``kspace``     complex64 ``[coil, time, ky, kx]``: undersampled k-space (zeros where not
               sampled), divided by ``scale``
``mask``       bool ``[time, ky, kx]``, True where sampled
``acs``        bool ``[time, ky, kx]``: the per-frame calibration region (all False when the
               mask has none and coil maps must come from the time-averaged k-space)
``target``     float32 ``[time, y, x]``: the magnitude reference, divided by ``scale``; with
               ``reference="fully_sampled"`` (default) the root-sum-of-squares over coils of
               the *fully sampled* coil images ``rss(ifft2c(kspace_full))`` (noise included, as
               in fastMRI / CMRxRecon); with ``reference="noise_free"`` the RSS of the noiseless
               coil images where the source is simulated (DICOM, phantom: the truth), and the
               fully sampled RSS where it is measured k-space (which has no noise-free truth)
``reference``  which of the two ``target`` is: ``"noise_free"`` or ``"fully_sampled"``
``labels``     uint8 ``[time, y, x]``: segmentation labels, 255 (``LABEL_IGNORE``) where unknown
``context``    dict: ``modality``, ``view``, ``field_strength_t``, ``vendor``, ``n_coils``,
               ``r_effective``, ``r_cmrxrecon``, ``pattern``, ``calibration`` (None when unknown)
``scale``      float32 scalar tensor: the normalisation divisor (see below)
``max_value``  float32 scalar tensor: ``target.max()`` (after normalisation; the data range
               for PSNR/SSIM)
``requested_r`` the drawn acceleration (``convention`` of the dataset)
``source``     the source spec; ``slice_index`` the slice in the source
``label_classes`` the annotated label values of the source (or None), see
               :mod:`cardiomm.data.sources` (Sunnybrook has no RV class)
=============  ==============================================================================

Normalisation
-------------
k-space and target are divided by ``scale`` = the 99th percentile of the RSS image of the
*time-averaged undersampled* k-space (every k-space location averaged over the frames that
sampled it; zeros where no frame did).  It uses only the undersampled data, so the same scale
can be computed at inference; it is equivariant (``scale(a k) = |a| scale(k)``); and averaging
over time fills the k-space centre for the k-t patterns, so it tracks the image intensity
with little dependence on R (the static ``uniform`` lattice leaves the centre partly empty and
gives a smaller scale).  Multiply reconstructions by ``scale`` to return to the source's units.

Randomness
----------
With ``deterministic=True`` (validation/test) pattern, R, mask seed and the time window are
a fixed function of ``(seed, index)``: every epoch and every worker sees the same masks.
Otherwise (training) they come from a numpy Generator seeded with ``(seed, index)`` and one
draw of torch's global RNG, which DataLoader seeds differently in every worker and every epoch:
the draws change from call to call, workers do not repeat each other, and
``lightning.seed_everything`` / ``torch.manual_seed`` make them reproducible.

Loading
-------
Each worker keeps a small LRU cache of opened sources (``cache_size``): a k-space file is
read once per worker, a DICOM series read / a phantom generated once, and their multi-coil
k-space simulated for the requested slice only.  :class:`SourceGroupedSampler` shuffles
sources and the slices within each source so that consecutive items share a source and hit
the cache.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from numbers import Real
from typing import Any

import numpy as np
import scipy.signal
import torch
from torch.utils.data import Dataset, Sampler

from cardiomm.data.sources import (
    LABEL_IGNORE,
    CineSource,
    OpenedSource,
    count_slices,
    expand_sources,
    open_source,
)
from recon.conventions import fft2c, ifft2c, rss, shape_str
from recon.masks import CONVENTIONS, DENSITIES, PATTERNS, SamplingMask, density_for, make_mask

__all__ = [
    "CONTEXT_KEYS",
    "FRAME_MODES",
    "REFERENCES",
    "CineSliceDataset",
    "SourceGroupedSampler",
    "collate_cine",
    "normalisation_scale",
]

#: Keys of ``item["context"]``.
CONTEXT_KEYS: tuple[str, ...] = (
    "modality",
    "view",
    "field_strength_t",
    "vendor",
    "n_coils",
    "r_effective",
    "r_cmrxrecon",
    "pattern",
    "calibration",
)
#: What ``item["target"]`` is (see the module docstring).
REFERENCES: tuple[str, ...] = ("fully_sampled", "noise_free")
#: How ``frames`` is reached: ``crop`` a cyclic window of consecutive frames (Fourier-resample
#: when the scan has fewer), or always ``resample`` the whole cycle in time (Fourier).
FRAME_MODES: tuple[str, ...] = ("crop", "resample")
_SCALE_PERCENTILE = 0.99
_SAMPLINGS = ("range", "choice")


def normalisation_scale(kspace_us: torch.Tensor, mask: torch.Tensor) -> float:
    """The normalisation divisor of undersampled k-space (see the module docstring).

    Args:
        kspace_us: complex ``[coil, time, ky, kx]``, zeros where not sampled.
        mask: bool ``[time, ky, kx]`` (or broadcastable), True where sampled.
    Returns:
        99th percentile of ``rss(ifft2c(time-averaged k-space))``, or 1.0 for all-zero data.
    """
    mask = torch.as_tensor(mask).expand(kspace_us.shape[-3:])
    count = mask.sum(dim=0).clamp(min=1).to(kspace_us.real.dtype)  # [ky, kx]
    kavg = kspace_us.sum(dim=-3) / count  # [coil, ky, kx]
    image = rss(ifft2c(kavg), dim=0)  # [y, x]
    flat = image.flatten().to(torch.float64)
    if flat.numel() > 4_000_000:
        flat = flat[:: flat.numel() // 4_000_000 + 1]
    value = float(torch.quantile(flat, _SCALE_PERCENTILE))
    return value if math.isfinite(value) and value > 0 else 1.0


def _check_accelerations(accelerations: Any, sampling: str | None) -> tuple[tuple[float, ...], str]:
    if isinstance(accelerations, Real) and not isinstance(accelerations, bool):
        accelerations = (accelerations,)
    try:
        values = tuple(float(a) for a in accelerations)
    except (TypeError, ValueError) as err:
        raise ValueError(f"accelerations must be numbers >= 1, got {accelerations!r}") from err
    if not values or any(not math.isfinite(a) or a < 1 for a in values):
        raise ValueError(f"accelerations must be finite numbers >= 1, got {accelerations!r}")
    if sampling is None:
        sampling = "range" if len(values) == 2 else "choice"
    if sampling not in _SAMPLINGS:
        raise ValueError(f"acceleration_sampling must be one of {_SAMPLINGS} or None, got {sampling!r}")
    if sampling == "range":
        if len(values) != 2 or values[0] > values[1]:
            raise ValueError(f"acceleration_sampling='range' needs (min, max) with min <= max, got {accelerations!r}")
    return values, sampling


class CineSliceDataset(Dataset):
    """Retrospectively undersampled multi-coil cine slices (one item = one 2D+t slice).

    Args:
        sources: source specs (see :mod:`cardiomm.data.sources`); expanded with
            :func:`~cardiomm.data.sources.expand_sources` (folders, phantom ranges).
        patterns: sampling patterns to draw from (:data:`recon.masks.PATTERNS`), uniformly.
        accelerations: ``(min, max)`` drawn uniformly per item, or a list of discrete values
            drawn with equal probability (see ``acceleration_sampling``), or one number.
        acceleration_sampling: ``"range"``, ``"choice"`` or None (range for exactly two values,
            choice otherwise).
        convention: how R counts (``"effective"``: all samples; ``"cmrxrecon"``: outside the ACS).
            ``uniform`` masks always use ``"cmrxrecon"`` when ``acs_lines > 0`` (a static lattice at an
            effective R above ~4 leaves no calibration; CMRxRecon counts its uniform masks this way).
        acs_lines: calibration region size passed to :func:`recon.masks.make_mask`.
        calibration: ``"auto"``, ``"acs"`` or ``"time_average"`` (see ``make_mask``).
        deterministic: fixed masks per index (validation/test); else fresh draws (training).
        frames: bring every item to this many frames (see :data:`FRAME_MODES`), or None.
        frame_mode: ``"crop"`` or ``"resample"``.
        crop: ``(y, x)`` centre crop (or zero pad) in image space, applied to the fully
            sampled coil images before undersampling, or None.
        n_coils, snr_db: simulation of DICOM/phantom sources.
        seed: seed of simulations and of the mask draws.
        cache_size: opened sources kept per worker.
        normalize: divide k-space and target by :func:`normalisation_scale` (``scale`` = 1 when False).
        reference: what ``target`` is, one of :data:`REFERENCES`: ``"fully_sampled"`` (the RSS of
            the fully sampled data, noise included) or ``"noise_free"`` (the noiseless truth of
            simulated sources; measured k-space keeps the fully sampled RSS).  A network trained
            against a noisy target learns to keep the noise of the samples it is given.
        densities: ky densities of ``kt_gaussian`` masks (:data:`recon.masks.DENSITIES`), one drawn
            per item when there are several.
    """

    def __init__(
        self,
        sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        patterns: Sequence[str] = PATTERNS,
        accelerations: float | Sequence[float] = (4.0, 24.0),
        acceleration_sampling: str | None = None,
        convention: str = "effective",
        acs_lines: int = 16,
        calibration: str = "auto",
        deterministic: bool = False,
        frames: int | None = None,
        frame_mode: str = "crop",
        crop: tuple[int, int] | None = None,
        n_coils: int = 10,
        snr_db: float | None = 30.0,
        seed: int = 0,
        cache_size: int = 2,
        normalize: bool = True,
        reference: str = "fully_sampled",
        densities: Sequence[str] = (DENSITIES[0],),
    ) -> None:
        super().__init__()
        if isinstance(densities, str):
            densities = (densities,)
        self.densities = tuple(densities)
        if not self.densities or any(d not in DENSITIES for d in self.densities):
            raise ValueError(f"densities must be a non-empty list of {', '.join(DENSITIES)}, got {list(self.densities)}")
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        self.reference = reference
        if isinstance(patterns, str):
            patterns = (patterns,)
        self.patterns = tuple(patterns)
        unknown = [p for p in self.patterns if p not in PATTERNS]
        if not self.patterns or unknown:
            raise ValueError(f"unknown sampling pattern(s) {unknown or '(none given)'}; known: {', '.join(PATTERNS)}")
        self.accelerations, self.acceleration_sampling = _check_accelerations(accelerations, acceleration_sampling)
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown R convention {convention!r}; known: {', '.join(CONVENTIONS)}")
        if frames is not None and (isinstance(frames, bool) or int(frames) != frames or frames < 1):
            raise ValueError(f"frames must be a positive integer or None, got {frames!r}")
        if frame_mode not in FRAME_MODES:
            raise ValueError(f"frame_mode must be one of {FRAME_MODES}, got {frame_mode!r}")
        if crop is not None:
            crop = tuple(crop)  # type: ignore[assignment]
            if len(crop) != 2 or any(isinstance(c, bool) or int(c) != c or c < 1 for c in crop):
                raise ValueError(f"crop must be (y, x) positive integers or None, got {crop!r}")
            crop = (int(crop[0]), int(crop[1]))
        if isinstance(cache_size, bool) or int(cache_size) < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size!r}")
        self.convention = convention
        self.acs_lines = int(acs_lines)
        self.calibration = calibration
        self.deterministic = bool(deterministic)
        self.frames = None if frames is None else int(frames)
        self.frame_mode = frame_mode
        self.crop = crop
        self.n_coils = int(n_coils)
        self.snr_db = snr_db
        self.seed = int(seed)
        self.cache_size = int(cache_size)
        self.normalize = bool(normalize)
        self._cache: OrderedDict[str, OpenedSource] = OrderedDict()

        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        self.specs = expand_sources(list(sources))
        if not self.specs:
            raise ValueError("CineSliceDataset needs at least one source spec")
        self.index: list[tuple[int, int]] = []
        for i, spec in enumerate(self.specs):
            n = count_slices(spec)
            if n is None:
                n = self.opened_source(spec).n_slices
            self.index.extend((i, s) for s in range(n))

    # ------------------------------------------------------------------ plumbing

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # workers open their own sources
        return state

    def opened_source(self, spec: str) -> OpenedSource:
        """The opened source of ``spec`` from this worker's LRU cache (opened on a miss)."""
        if spec in self._cache:
            self._cache.move_to_end(spec)
            return self._cache[spec]
        opened = open_source(spec, n_coils=self.n_coils, seed=self.seed, snr_db=self.snr_db)
        self._cache[spec] = opened
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return opened

    def slices_by_spec(self) -> list[list[int]]:
        """Item indices of every spec in :attr:`specs` (``[spec][k]``; empty for a spec without slices),
        for :class:`SourceGroupedSampler`."""
        groups: list[list[int]] = [[] for _ in self.specs]
        for i, (src, _) in enumerate(self.index):
            groups[src].append(i)
        return groups

    def _generator(self, index: int) -> np.random.Generator:
        """Deterministic: a function of ``(seed, index)``; training: of one draw of torch's global RNG."""
        if self.deterministic:
            return np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EED, int(index)]))
        draw = int(torch.randint(0, 2**62, (1,)).item())  # per-worker torch seed in DataLoader workers
        return np.random.default_rng(np.random.SeedSequence([self.seed, draw, int(index)]))

    # ------------------------------------------------------------------ transforms

    def _to_frames(
        self, k: torch.Tensor, labels: torch.Tensor | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bring ``k [coil, time, ky, kx]`` and ``labels [time, y, x]`` to ``self.frames`` frames."""
        t = int(k.shape[1])
        n = self.frames
        if n is None or n == t:
            return k, labels
        if self.frame_mode == "crop" and t > n:
            start = 0 if self.deterministic else int(rng.integers(t))
            idx = (start + torch.arange(n)) % t  # cyclic: a cine is periodic
            return k[:, idx], None if labels is None else labels[idx]
        # Fourier resampling of the whole (periodic) cycle; labels only where times coincide
        res = scipy.signal.resample(k.numpy(), n, axis=1)
        k_new = torch.from_numpy(np.ascontiguousarray(res)).to(torch.complex64)
        if labels is None:
            return k_new, None
        lab = torch.full((n, *labels.shape[1:]), LABEL_IGNORE, dtype=torch.uint8)
        for j in range(n):
            if (j * t) % n == 0:
                lab[j] = labels[(j * t) // n]
        return k_new, lab

    def _crop(self, k: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Centre crop / zero pad the coil images to ``self.crop``; labels padded with LABEL_IGNORE."""
        if self.crop is None or tuple(k.shape[-2:]) == self.crop:
            return k, labels
        img = ifft2c(k)
        img = _centre_fit(img, self.crop, 0)
        lab = None if labels is None else _centre_fit(labels, self.crop, LABEL_IGNORE)
        return fft2c(img), lab

    def _draw_mask(
        self, rng: np.random.Generator, shape: tuple[int, int, int], where: str
    ) -> tuple[SamplingMask, float]:
        pattern = self.patterns[int(rng.integers(len(self.patterns)))]
        if self.acceleration_sampling == "range":
            lo, hi = self.accelerations
            accel = float(rng.uniform(lo, hi)) if hi > lo else lo
        else:
            accel = float(self.accelerations[int(rng.integers(len(self.accelerations)))])
        mask_seed = int(rng.integers(2**31 - 1))
        # drawn only when there is a choice, so that one density keeps the random stream of earlier versions
        density = self.densities[0] if len(self.densities) == 1 else self.densities[int(rng.integers(len(self.densities)))]
        # A static lattice at an effective R above ~4 leaves no room for calibration lines and its
        # time average covers no centre either, so coil maps could not be calibrated: uniform masks
        # count R outside the ACS lines (CMRxRecon convention, as CMRxRecon's own uniform masks do).
        convention = "cmrxrecon" if pattern == "uniform" and self.acs_lines > 0 else self.convention
        try:
            m = make_mask(
                pattern,
                accel,
                shape,
                seed=mask_seed,
                acs_lines=self.acs_lines,
                convention=convention,
                calibration=self.calibration,
                density=density_for(pattern, density),
            )
        except ValueError as err:
            raise ValueError(f"cannot draw a {pattern} mask with R={accel:.3g} for {where}: {err}") from err
        return m, accel

    # ------------------------------------------------------------------ items

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} slices")
        index = index % len(self)
        src_i, s = self.index[index]
        spec = self.specs[src_i]
        source: CineSource = self.opened_source(spec).load([s])
        k = source.kspace[0]  # [coil, time, ky, kx]
        labels = None if source.labels is None else source.labels[0]
        rng = self._generator(index)
        reference = "noise_free" if self.reference == "noise_free" and source.noise_free is not None else "fully_sampled"
        if reference == "noise_free":  # one more "coil" holding the truth: frames and crop treat it like the data
            k = torch.cat([k, fft2c(source.noise_free[0])[None]])

        k, labels = self._to_frames(k, labels, rng)
        k, labels = self._crop(k, labels)
        if reference == "noise_free":
            k, truth = k[:-1], k[-1]
            target = ifft2c(truth).abs().to(torch.float32)
        else:
            target = rss(ifft2c(k)).to(torch.float32)
        _, t, ny, nx = k.shape
        m, accel = self._draw_mask(rng, (int(t), int(ny), int(nx)), f"{spec} slice {s} {shape_str(k.shape)}")
        mask = m.mask
        kus = k * mask
        scale = normalisation_scale(kus, mask) if self.normalize else 1.0
        kus = (kus / scale).to(torch.complex64)
        target = target / scale
        if labels is None:
            labels = torch.full((int(t), int(ny), int(nx)), LABEL_IGNORE, dtype=torch.uint8)
        md = source.metadata
        context = {
            "modality": md.modality,
            "view": md.view,
            "field_strength_t": md.field_strength_t,
            "vendor": md.vendor,
            "n_coils": int(k.shape[0]),
            "r_effective": float(m.r_effective),
            "r_cmrxrecon": float(m.r_cmrxrecon),
            "pattern": m.pattern,
            "calibration": m.calibration,
        }
        return {
            "kspace": kus.contiguous(),
            "mask": mask,
            "acs": m.acs if m.acs is not None else torch.zeros_like(mask),
            "target": target.contiguous(),
            "reference": reference,
            "labels": labels.contiguous(),
            "context": context,
            "scale": torch.tensor(scale, dtype=torch.float32),
            "max_value": target.max().to(torch.float32),
            "requested_r": accel,
            "source": spec,
            "slice_index": int(s),
            "label_classes": source.label_classes,
        }


def _centre_fit(x: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """Crop or pad the last two axes of ``x`` to ``size`` keeping pixel ``n // 2`` at ``size // 2``."""
    out = x
    for axis, new in zip((-2, -1), size):
        old = int(out.shape[axis])
        if new == old:
            continue
        if new < old:
            start = old // 2 - new // 2
            out = out.narrow(axis, start, new)
        else:
            before = new // 2 - old // 2
            shape = list(out.shape)
            shape[axis] = new
            padded = torch.full(shape, fill, dtype=out.dtype)
            padded.narrow(axis, before, old).copy_(out)
            out = padded
    return out


class SourceGroupedSampler(Sampler[int]):
    """Shuffle sources, and slices within each source, so consecutive items share a source.

    Every epoch (every ``__iter__``, or after :meth:`set_epoch`) draws a new order from
    ``(seed, epoch)``; with ``shuffle=False`` items come in dataset order.

    Args:
        dataset: the dataset whose items are ordered.
        shuffle: draw a new order every epoch.
        seed: seed of the orders.
        repeats: how many times each spec of ``dataset.specs`` appears per epoch (None: once).
            Each repeat is a separate group in the shuffled order, so a small real dataset can
            be given the weight of a large simulated one without long runs of one scan.
    """

    def __init__(
        self, dataset: CineSliceDataset, *, shuffle: bool = True, seed: int = 0, repeats: Sequence[int] | None = None
    ) -> None:
        groups = dataset.slices_by_spec()
        if repeats is None:
            repeats = [1] * len(groups)
        repeats = list(repeats)
        if len(repeats) != len(groups):
            raise ValueError(f"repeats has {len(repeats)} entries but the dataset has {len(groups)} source specs")
        bad = [r for r in repeats if isinstance(r, bool) or int(r) != r or r < 0]
        if bad:
            raise ValueError(f"repeats must be non-negative integers, got {bad}")
        self.groups = [g for g, r in zip(groups, repeats) for _ in range(int(r)) if g]
        if not self.groups:
            raise ValueError("SourceGroupedSampler: no items (every source has no slices or a repeat of 0)")
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self._n = sum(len(g) for g in self.groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            order = [i for g in self.groups for i in g]
        else:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
            order = []
            for gi in rng.permutation(len(self.groups)):
                group = self.groups[int(gi)]
                order.extend(int(group[j]) for j in rng.permutation(len(group)))
            self.epoch += 1
        return iter(order)


def collate_cine(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate items of :class:`CineSliceDataset` into a batch.

    Tensors are stacked on a new leading batch axis (they must have equal shapes); the
    ``context`` dict becomes a dict of lists; everything else becomes a list.

    Raises:
        ValueError: items of different shapes (the message lists them), or an empty batch.
    """
    if not batch:
        raise ValueError("collate_cine got an empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        first = values[0]
        if isinstance(first, torch.Tensor):
            shapes = [tuple(v.shape) for v in values]
            if len(set(shapes)) > 1:
                listing = ", ".join(f"{item.get('source', '?')} slice {item.get('slice_index', '?')}: "
                                    f"{shape_str(sh)}" for item, sh in zip(batch, shapes))
                raise ValueError(
                    f"cannot batch {key!r}: items have different shapes ({listing}); use batch_size=1, or a "
                    "common crop=(y, x) and frames=N in the dataset"
                )
            out[key] = torch.stack(values)
        elif isinstance(first, dict):
            out[key] = {k: [v.get(k) for v in values] for k in first}
        else:
            out[key] = values
    return out
