"""Lightning training of :class:`~cardiomm.model.CardioMMNet` on ``CineDataModule`` batches.

Batches are those of :func:`cardiomm.data.datasets.collate_cine` (``kspace``, ``mask``, ``acs``,
``target``, ``context``, ``max_value``, ``scale``, ...).  The loss is
``ssim_weight * (1 - SSIM) + l1_weight * L1`` on the magnitude of the reconstruction against the
normalised RSS target; validation logs PSNR / SSIM / NMSE from :func:`recon.metrics.image_metrics`
(``"volume"`` normalisation, per 2D+t slice, averaged over slices) next to those of the
zero-filled input, and one picture per epoch (zero-filled | CardioMM | reference | 5x error) to
loggers that take images (Weights & Biases, TensorBoard; others are skipped).

Checkpoints carry, besides Lightning's own entries, ``cardiomm_architecture``
(:data:`cardiomm.model.ARCHITECTURE`), ``cardiomm_model_kwargs`` (the network's constructor
arguments), ``cardiomm_data`` (the data module's class and hyper-parameters, i.e. its source
specs, patterns and accelerations) and ``cardiomm_config`` (the full LightningCLI config as
YAML when trained through :mod:`cardiomm.training.cli`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
import numpy as np
import torch

from cardiomm.model import ARCHITECTURE, CardioMMNet, SSIML1Loss
from cardiomm.model.context import ContextBatch
from cardiomm.model.losses import temporal_variation_error
from cardiomm.training.checkpoint import load_matching_weights
from recon.classical.view_sharing import view_sharing
from recon.conventions import ifft2c, rss
from recon.metrics import image_metrics

__all__ = ["CardioMMModule", "checkpoint_description"]


def _plain(value: Any) -> Any:
    """Convert hyper-parameters to plain Python (dict/list/str/int/float/bool/None) for checkpoints."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def checkpoint_description(datamodule: Any) -> dict[str, Any] | None:
    """What a checkpoint records about its training data: the data module's class and hyper-parameters."""
    if datamodule is None:
        return None
    cls = type(datamodule)
    hparams = getattr(datamodule, "hparams", None)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _plain(dict(hparams or {}))}


class CardioMMModule(lightning.LightningModule):
    """Trains, validates and applies :class:`~cardiomm.model.CardioMMNet`.

    Network (see :class:`~cardiomm.model.CardioMMNet` for details):

    Args:
        num_cascades: unrolled iterations.
        channels: first-level channels of the 2D+t denoisers.
        depth: down-sampling steps of the denoisers.
        temporal_kernel: odd temporal kernel length (1 = frame by frame).
        conv_mode: ``"2+1d"`` or ``"3d"`` convolutions.
        channel_attention: squeeze-excitation in every denoiser block.
        sens_channels: first-level channels of the coil-map U-Net.
        sens_depth: down-sampling steps of the coil-map U-Net.
        calib_max_size: largest side of the calibration square of the maps (k-space samples).
        context_dim: size of the acquisition-context vector.
        context_dropout: training-time probability of hiding each context field.
        dc_mode: ``"soft"`` or ``"cg"`` data consistency.
        cg_iterations: CG steps per cascade for ``dc_mode="cg"``.
        gradient_checkpointing: recompute cascades in the backward pass (less memory, ~30% slower).
        pixel_unshuffle: space-to-depth factor of the denoisers (2 = U-Nets at half resolution; CPU configs).
        virtual_coils: PCA-compress k-space to at most this many coils first (None = keep all).
        initial_kspace: ``"zero-filled"`` or ``"view-sharing"`` start of the cascades (see CardioMMNet).
        sens_init: ``"calibration"`` or ``"walsh"`` start of the coil-map network (see CardioMMNet).
        prior_gate: zero-initialised learned scale of every cascade's denoiser output (see CardioMMNet).
        init_weights: a CardioMM checkpoint to start ``fit`` from (fine-tuning): every weight whose
            name and shape match is copied, the rest keep their initialisation; what was copied is
            printed.  Ignored when ``fit`` resumes from ``--ckpt_path`` (that restores everything).

    Optimisation:

    Args:
        ssim_weight: weight of ``1 - SSIM`` in the loss.
        l1_weight: weight of the L1 term (normalised image units).
        temporal_weight: weight of the relative L1 error of the motion (every frame minus the mean
            frame, :func:`cardiomm.model.losses.temporal_variation_error`); 0 = off.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``"cosine"`` (per step, to ``min_lr_ratio * lr`` at the last step),
            ``"step"`` (multiply by ``lr_gamma`` every ``lr_step_epochs`` epochs) or ``"constant"``.
        warmup_steps: linear warm-up steps before the schedule.
        min_lr_ratio: final learning rate of the cosine schedule, relative to ``lr``.
        lr_step_epochs: epochs between steps of the ``"step"`` schedule.
        lr_gamma: factor of the ``"step"`` schedule.
        log_images: log a validation picture per epoch to loggers that take images.
    """

    def __init__(
        self,
        num_cascades: int = 8,
        channels: int = 32,
        depth: int = 3,
        temporal_kernel: int = 3,
        conv_mode: Literal["2+1d", "3d"] = "2+1d",
        channel_attention: bool = True,
        sens_channels: int = 8,
        sens_depth: int = 3,
        calib_max_size: int = 48,
        context_dim: int = 32,
        context_dropout: float = 0.1,
        dc_mode: Literal["soft", "cg"] = "soft",
        cg_iterations: int = 5,
        gradient_checkpointing: bool = False,
        pixel_unshuffle: int = 1,
        virtual_coils: int | None = None,
        initial_kspace: Literal["zero-filled", "view-sharing"] = "zero-filled",
        sens_init: Literal["calibration", "walsh"] = "calibration",
        prior_gate: bool = False,
        init_weights: str | None = None,
        ssim_weight: float = 1.0,
        l1_weight: float = 0.1,
        temporal_weight: float = 0.0,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        lr_schedule: Literal["cosine", "step", "constant"] = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.01,
        lr_step_epochs: int = 10,
        lr_gamma: float = 0.1,
        log_images: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_kwargs: dict[str, Any] = dict(
            num_cascades=num_cascades, channels=channels, depth=depth, temporal_kernel=temporal_kernel,
            conv_mode=conv_mode, channel_attention=channel_attention, sens_channels=sens_channels,
            sens_depth=sens_depth, calib_max_size=calib_max_size, context_dim=context_dim,
            context_dropout=context_dropout, dc_mode=dc_mode, cg_iterations=cg_iterations,
            gradient_checkpointing=gradient_checkpointing, pixel_unshuffle=pixel_unshuffle,
            virtual_coils=virtual_coils, initial_kspace=initial_kspace, sens_init=sens_init,
            prior_gate=prior_gate,
        )
        self.model = CardioMMNet(**self.model_kwargs)
        self.loss_fn = SSIML1Loss(ssim_weight, l1_weight, temporal_weight=temporal_weight)
        if lr <= 0 or not 0 <= min_lr_ratio <= 1 or warmup_steps < 0:
            raise ValueError(
                f"need lr > 0, 0 <= min_lr_ratio <= 1 and warmup_steps >= 0; got lr={lr}, "
                f"min_lr_ratio={min_lr_ratio}, warmup_steps={warmup_steps}"
            )
        #: The LightningCLI config (YAML text) this module was built from, stored in checkpoints.
        self.cli_config: str | None = None

    def setup(self, stage: str) -> None:
        """Before ``fit``: copy the weights of ``init_weights`` (a ``--ckpt_path`` restore comes later and wins)."""
        init_weights = self.hparams.init_weights
        if init_weights is None:
            return
        if stage != "fit":
            if self._trainer is not None and not self.trainer.ckpt_path:
                rank_zero_warn(
                    f"init_weights {init_weights} is applied only by fit; this {stage} uses the module's current "
                    "weights (give --ckpt_path FILE to evaluate a checkpoint)"
                )
            return
        if self._trainer is not None and self.trainer.ckpt_path:
            rank_zero_info(f"init_weights {init_weights} not used: resuming from {self.trainer.ckpt_path}")
            return
        report = load_matching_weights(self.model, init_weights)
        rank_zero_info(
            f"init_weights {init_weights}: copied {len(report['loaded'])} tensors; "
            f"new {report['new']}; shape mismatch {report['shape_mismatch']}; unused {report['unused']}"
        )

    # ------------------------------------------------------------------ forward

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Complex reconstruction ``[batch, time, y, x]`` of a :func:`collate_cine` batch (normalised units)."""
        kspace = batch["kspace"]
        context = ContextBatch.from_context(batch.get("context"), kspace.shape[0])
        return self.model(kspace, batch["mask"], batch.get("acs"), context)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        image = self(batch)
        magnitude = image.abs()
        return self.loss_fn(magnitude, batch["target"], batch["max_value"]), magnitude

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["kspace"].shape[0])
        return loss

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: dict[str, Any], batch_idx: int, stage: str) -> torch.Tensor:
        """Loss and image metrics of a batch, logged as ``<stage>/...`` and, for the two classical
        inputs a network must beat, ``<stage>_zero_filled/...`` and ``<stage>_view_sharing/...``
        (RSS of the k-t view-sharing composite, :func:`recon.classical.view_sharing.view_sharing`)."""
        loss, magnitude = self._loss(batch)
        target = batch["target"]
        zero_filled = rss(ifft2c(batch["kspace"]))
        view_shared = view_sharing(batch["kspace"], batch["mask"]).abs()
        sums: dict[str, float] = {}
        for b in range(target.shape[0]):
            baselines = ((f"{stage}_zero_filled", zero_filled[b]), (f"{stage}_view_sharing", view_shared[b]))
            for prefix, rec in ((stage, magnitude[b]), *baselines):
                m = image_metrics(target[b], rec.float())
                motion = float(temporal_variation_error(rec[None].float(), target[b][None].float())[0])
                for name, value in (("psnr", m.psnr_db), ("ssim", m.ssim), ("nmse", m.nmse), ("motion_error", motion)):
                    key = f"{prefix}/{name}"
                    sums[key] = sums.get(key, 0.0) + (value if math.isfinite(value) else 100.0)
        n = target.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        for key, total in sums.items():
            self.log(key, total / n, prog_bar=key == f"{stage}/ssim", batch_size=n, sync_dist=True)
        if batch_idx == 0 and self.hparams.log_images:
            self._log_picture(stage, zero_filled[0], magnitude[0], target[0], float(batch["max_value"][0]))
        return loss

    def _log_picture(
        self, stage: str, zero_filled: torch.Tensor, rec: torch.Tensor, target: torch.Tensor, peak: float
    ) -> None:
        """Middle frame: zero-filled | reconstruction | reference | 5x |error|, one uint8 grey image."""
        loggers = [
            lg for lg in self.loggers
            if hasattr(lg, "log_image") or hasattr(getattr(lg, "experiment", None), "add_image")
        ]
        if not loggers or self.trainer.sanity_checking:
            return
        t = target.shape[0] // 2
        peak = peak if peak > 0 else 1.0
        panels = [zero_filled[t], rec[t], target[t], 5 * (rec[t] - target[t]).abs()]
        grid = torch.cat([p.detach().float().cpu() / peak for p in panels], dim=-1).clamp(0, 1).numpy()
        grid = (grid * 255).astype(np.uint8)
        caption = "zero-filled | CardioMM | reference | 5x error"
        for logger in loggers:
            if hasattr(logger, "log_image"):  # WandbLogger (and others with the same API)
                logger.log_image(key=f"{stage}/sample", images=[grid], caption=[caption], step=self.global_step)
            else:  # TensorBoardLogger: SummaryWriter.add_image
                logger.experiment.add_image(f"{stage}/sample", grid[None], self.global_step)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """The complex reconstruction ``[batch, time, y, x]`` in the source's units (times ``scale``)."""
        image = self(batch)
        scale = batch.get("scale")
        if scale is not None:
            image = image * scale.to(image.device).reshape(-1, 1, 1, 1)
        return {
            "reconstruction": image,
            "source": batch.get("source"),
            "slice_index": batch.get("slice_index"),
        }

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant" and hp.warmup_steps == 0:
            return optimizer
        if hp.lr_schedule == "step":
            step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.lr_step_epochs, gamma=hp.lr_gamma)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": step, "interval": "epoch"}}
        warmup, floor = int(hp.warmup_steps), float(hp.min_lr_ratio)
        cosine = hp.lr_schedule == "cosine"
        total = 1
        if self._trainer is not None:
            estimated = float(self.trainer.estimated_stepping_batches)
            if cosine and not math.isfinite(estimated):
                raise ValueError(
                    "lr_schedule='cosine' needs a finite training length: set trainer.max_steps or trainer.max_epochs"
                )
            total = max(1, int(estimated)) if math.isfinite(estimated) else 1

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cardiomm_architecture"] = ARCHITECTURE
        checkpoint["cardiomm_model_kwargs"] = _plain(self.model_kwargs)
        trainer = self._trainer
        checkpoint["cardiomm_data"] = checkpoint_description(getattr(trainer, "datamodule", None) if trainer else None)
        checkpoint["cardiomm_config"] = self.cli_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        found = checkpoint.get("cardiomm_architecture")
        if found != ARCHITECTURE:
            raise ValueError(
                f"checkpoint architecture {found!r} does not match this code's {ARCHITECTURE!r}"
                + ("" if found else " (not a CardioMM checkpoint)")
            )
