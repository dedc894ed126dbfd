"""Lightning data module serving undersampled cine slices (:class:`CineSliceDataset`).

Usable from a ``LightningCLI`` YAML, e.g.::

    data:
      class_path: cardiomm.data.datamodule.CineDataModule
      init_args:
        train_sources: ["phantom:0-199?matrix=192x192", /data/cmrxrecon/FullSample]
        val_sources: ["phantom:1000-1009", ../shared/data/sunnybrook/dicoms]
        patterns: [uniform, kt_uniform, kt_gaussian, kt_radial]
        accelerations: [4, 24]          # a range; acceleration_sampling: choice for discrete R
        crop: [128, 128]
        frames: 12
        batch_size: 2
        num_workers: 2

Training items draw a fresh mask every time (shuffled with :class:`SourceGroupedSampler` so that
consecutive items share a source); validation and test items are deterministic (the same masks
every epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning
from torch.utils.data import DataLoader

from cardiomm.data.datasets import REFERENCES, CineSliceDataset, SourceGroupedSampler, collate_cine
from cardiomm.data.sources import expand_sources
from recon.masks import DENSITIES, PATTERNS

__all__ = ["CineDataModule"]

_STAGES = ("fit", "validate", "test", "predict")


class CineDataModule(lightning.LightningDataModule):
    """Train/validation/test data of retrospectively undersampled cine slices.

    Args:
        train_sources: source specs for training (see :mod:`cardiomm.data.sources`).
        train_source_repeats: how often each entry of ``train_sources`` (with every scan it
            expands to) appears per pass over the training data, e.g. ``[1, 8, 8]`` to give two
            real patients the weight of 40 phantoms; None = once each.
        val_sources: source specs for validation (deterministic masks).
        test_sources: source specs for testing / prediction (deterministic masks).
        patterns: sampling patterns drawn per item (:data:`recon.masks.PATTERNS`).
        accelerations: ``[min, max]`` (``acceleration_sampling="range"``) or discrete values
            (``"choice"``).
        acceleration_sampling: ``"range"`` or ``"choice"``.
        convention: R convention of ``accelerations`` (``"effective"`` or ``"cmrxrecon"``).
        acs_lines: calibration region of the masks (ky lines; square side for radial).
        batch_size: items per batch (> 1 needs equal shapes: set ``crop`` and ``frames``).
        num_workers: DataLoader worker processes (0 = load in the main process).
        crop: ``[y, x]`` centre crop/pad in image space, or None.
        frames: frames per item, or None to keep each scan's own.
        frame_mode: ``"crop"`` (cyclic window) or ``"resample"`` (Fourier in time).
        n_coils: coils of simulated sources (DICOM, phantoms).
        snr_db: SNR of simulated sources in dB (None: noiseless).
        seed: seed of simulations, deterministic masks and the training order.
        cache_size: opened sources kept per worker.
        pin_memory: pin batches in page-locked memory (for GPU training).
        reference: the training and validation target, ``"fully_sampled"`` or ``"noise_free"``
            (the noiseless truth of simulated sources; see :class:`CineSliceDataset`).
        densities: ky densities of ``kt_gaussian`` masks, e.g. ``[broad, kt-focuss]`` (one drawn per
            training item; validation and test items too, from their fixed seeds); None = ``[broad]``.
    """

    def __init__(
        self,
        train_sources: list[str] | None = None,
        train_source_repeats: list[int] | None = None,
        val_sources: list[str] | None = None,
        test_sources: list[str] | None = None,
        patterns: list[str] | None = None,
        accelerations: list[float] | None = None,
        acceleration_sampling: str = "range",
        convention: str = "effective",
        acs_lines: int = 16,
        batch_size: int = 1,
        num_workers: int = 0,
        crop: tuple[int, int] | None = None,
        frames: int | None = None,
        frame_mode: str = "crop",
        n_coils: int = 10,
        snr_db: float | None = 30.0,
        seed: int = 0,
        cache_size: int = 2,
        pin_memory: bool = False,
        reference: str = "fully_sampled",
        densities: list[str] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        self.save_hyperparameters()
        self.train_sources = list(train_sources or [])
        if train_source_repeats is not None and len(train_source_repeats) != len(self.train_sources):
            raise ValueError(
                f"train_source_repeats has {len(train_source_repeats)} entries for {len(self.train_sources)} "
                "train_sources; give one repeat count per source"
            )
        self.train_source_repeats = None if train_source_repeats is None else [int(r) for r in train_source_repeats]
        self.val_sources = list(val_sources or [])
        self.test_sources = list(test_sources or [])
        self.patterns = tuple(patterns) if patterns else PATTERNS
        self.accelerations = tuple(accelerations) if accelerations else (4.0, 24.0)
        self.acceleration_sampling = acceleration_sampling
        self.convention = convention
        self.acs_lines = acs_lines
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.crop = tuple(crop) if crop is not None else None
        self.frames = frames
        self.frame_mode = frame_mode
        self.n_coils = n_coils
        self.snr_db = snr_db
        self.seed = seed
        self.cache_size = cache_size
        self.pin_memory = pin_memory
        self.reference = reference
        self.densities = tuple(densities) if densities else DENSITIES[:1]
        self.train_dataset: CineSliceDataset | None = None
        self.val_dataset: CineSliceDataset | None = None
        self.test_dataset: CineSliceDataset | None = None

    def _dataset(self, sources: Sequence[str], *, deterministic: bool, seed: int) -> CineSliceDataset:
        return CineSliceDataset(
            list(sources),
            patterns=self.patterns,
            accelerations=self.accelerations,
            acceleration_sampling=self.acceleration_sampling,
            convention=self.convention,
            acs_lines=self.acs_lines,
            deterministic=deterministic,
            frames=self.frames,
            frame_mode=self.frame_mode,
            crop=self.crop,  # type: ignore[arg-type]
            n_coils=self.n_coils,
            snr_db=self.snr_db,
            seed=seed,
            cache_size=self.cache_size,
            reference=self.reference,
            densities=self.densities,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs (``fit``: train + val; ``validate``; ``test``/``predict``)."""
        if stage is not None and stage not in _STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {_STAGES}")
        if stage in (None, "fit") and self.train_dataset is None:
            if not self.train_sources:
                raise ValueError("CineDataModule: train_sources is empty; give at least one source spec to fit")
            self.train_dataset = self._dataset(self.train_sources, deterministic=False, seed=self.seed)
        if stage in (None, "fit", "validate") and self.val_dataset is None and self.val_sources:
            self.val_dataset = self._dataset(self.val_sources, deterministic=True, seed=self.seed)
        if stage in (None, "test", "predict") and self.test_dataset is None and self.test_sources:
            self.test_dataset = self._dataset(self.test_sources, deterministic=True, seed=self.seed + 1)
        if stage == "validate" and self.val_dataset is None:
            raise ValueError("CineDataModule: val_sources is empty; nothing to validate")
        if stage in ("test", "predict") and self.test_dataset is None:
            raise ValueError(f"CineDataModule: test_sources is empty; nothing to {stage}")

    def _loader(self, dataset: CineSliceDataset | None, name: str, *, train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"CineDataModule: no {name} dataset; call setup() first (and give {name}_sources)")
        repeats = None
        if train and self.train_source_repeats is not None:  # per expanded spec, in the dataset's order
            repeats = [r for src, r in zip(self.train_sources, self.train_source_repeats)
                       for _ in expand_sources([src])]
        sampler = SourceGroupedSampler(dataset, shuffle=train, seed=self.seed, repeats=repeats)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_cine,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            return []  # Lightning skips validation
        return self._loader(self.val_dataset, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test")
