"""The batch reconstruction as a Lightning ``predict`` over many devices and nodes.

Every process (rank) builds the same ordered input list; Lightning's distributed sampler for
prediction (``UnrepeatedDistributedSamplerWrapper``: no padding, no file twice) gives each
rank its own share, and each rank reconstructs its files on its own device with the same
:class:`~cardiomm.batch.job.BatchJob` as a single-process run, writing every file's outputs
atomically.  Finished files (done markers) are skipped, so a killed multi-node run is resumed
by launching it again.  At the end the ranks add up their ok / skipped / failed counts, so
every rank returns the same exit code.

Launch: ``cardiomm recon ... --strategy ddp --devices N [--num-nodes M]``.  On one machine
Lightning starts the other ``N - 1`` processes itself (re-running the same command line).  On
several nodes start one process per device with a launcher Lightning recognises (``torchrun``,
SLURM's ``srun``, or ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``/``WORLD_SIZE`` set by hand).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.data import Dataset

from cardiomm.batch.job import BatchJob, FileResult, ReconSettings

__all__ = ["FileListDataset", "ReconPredictModule", "run_distributed"]


class FileListDataset(Dataset):
    """Item ``i`` is the ``i``-th input path (as a string)."""

    def __init__(self, inputs: Sequence[Path]) -> None:
        self.inputs = [str(p) for p in inputs]

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> str:
        return self.inputs[index]


def _single(batch: list[str]) -> str:
    """Collate a batch of one path into the path itself."""
    return batch[0]


class ReconPredictModule(lightning.LightningModule):
    """A LightningModule whose ``predict_step`` reconstructs one input file.

    Args:
        settings: the batch's :class:`ReconSettings`.
        out_dir: the output folder.
        names: output name of every input.
        show_progress: draw a rich progress bar on global rank 0.
    """

    def __init__(self, settings: ReconSettings, out_dir: Path, names: dict[Path, str], show_progress: bool = True) -> None:
        super().__init__()
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.names = names
        self.show_progress = show_progress
        self.results: list[FileResult] = []
        self.totals: dict[str, int] = {}
        self._job: BatchJob | None = None
        self._progress: Any = None

    @property
    def job(self) -> BatchJob:
        if self._job is None:
            self._job = BatchJob(self.settings, self.out_dir, self.device, self.names, rank=self.global_rank)
        return self._job

    def on_predict_start(self) -> None:
        _ = self.job.engine  # load the network (or fail) before the first file
        if self.show_progress and self.global_rank == 0:
            from cardiomm.batch.progress import BatchProgress

            world = self.trainer.world_size
            n_inputs = self._n_inputs()
            # the unrepeated sampler gives rank r the items r, r + world, r + 2 world, ...
            self._progress = BatchProgress(n_files=len(range(0, n_inputs, world)), label=f"rank 0 of {world}")
            self._progress.__enter__()

    def _n_inputs(self) -> int:
        loaders = self.trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        return len(loader.dataset) if loader is not None else 0

    def predict_step(self, batch: str, batch_idx: int) -> dict[str, Any]:
        path = Path(batch)
        on_slices = None
        if self._progress is not None:
            self._progress.start_file(path.name)
            on_slices = self._progress.slices
        result = self.job.process(path, on_slices)
        self.results.append(result)
        if self._progress is not None:
            self._progress.file_done(result)
        elif result.status == "failed":
            print(f"rank {self.global_rank}: failed: {result.error}", file=sys.stderr)
        return {"input": str(path), "status": result.status, "error": result.error, "rank": self.global_rank}

    def on_predict_epoch_end(self) -> None:
        local = torch.tensor(
            [sum(r.status == s for r in self.results) for s in ("ok", "skipped", "failed")], dtype=torch.long
        )
        gathered = self.all_gather(local)
        total = gathered.reshape(-1, 3).sum(dim=0) if gathered.ndim > 1 else gathered
        self.totals = dict(zip(("ok", "skipped", "failed"), (int(v) for v in total)))

    def on_predict_end(self) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None


def run_distributed(
    inputs: Sequence[Path],
    settings: ReconSettings,
    out_dir: Path,
    names: dict[Path, str],
    *,
    strategy: str = "ddp",
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    show_progress: bool = True,
) -> tuple[ReconPredictModule, Any]:
    """Run the batch as ``lightning.Trainer.predict``; returns the module (with ``results`` of this
    rank and ``totals`` over all ranks) and the trainer (``trainer.global_rank`` says which rank this is)."""
    from torch.utils.data import DataLoader

    module = ReconPredictModule(settings, out_dir, names, show_progress=show_progress)
    loader = DataLoader(FileListDataset(inputs), batch_size=1, shuffle=False, collate_fn=_single, num_workers=0)
    trainer = lightning.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=True,
    )
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    return module, trainer
