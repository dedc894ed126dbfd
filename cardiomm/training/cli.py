"""``LightningCLI`` of CardioMM: ``fit``/``validate``/``test``/``predict`` from layered YAML configs.

::

    cardiomm train fit --config configs/tiny.yaml
    cardiomm train fit --config configs/base.yaml --config configs/ddp.yaml   # later files override
    cardiomm train fit --config configs/tiny.yaml --trainer.max_steps=10 --model.channels=16
    cardiomm train validate --config configs/base.yaml --ckpt_path lightning_logs/last.ckpt
    cardiomm train fit --print_config      # the full resolved config, every key documented

The model section configures :class:`~cardiomm.training.lightning_module.CardioMMModule`
(``model: {num_cascades: 8, ...}``), the data section
:class:`~cardiomm.data.datamodule.CineDataModule` (``data: {train_sources: [...], ...}``).
A key that neither class (nor the Trainer) accepts is an error that names the key.

The default logger is Weights & Biases in *offline* mode (``WANDB_MODE=offline`` is set before
anything imports wandb; runs land in ``<save_dir>/wandb`` and can be uploaded later with
``wandb sync``).  Other loggers are chosen in the config, e.g. ``trainer.logger:
{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: lightning_logs}}`` or
``lightning.pytorch.loggers.TensorBoardLogger`` (needs the ``tensorboard`` package).
"""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")  # before lightning/wandb are imported: never phone home

from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from cardiomm.data.datamodule import CineDataModule  # noqa: E402
from cardiomm.training.lightning_module import CardioMMModule  # noqa: E402

__all__ = ["DEFAULT_LOGGER", "CardioMMCLI", "run_cli"]

#: Logger used when a config does not choose one.
DEFAULT_LOGGER: dict[str, Any] = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "cardiomm", "offline": True, "save_dir": "lightning_logs"},
}


class CardioMMCLI(LightningCLI):
    """LightningCLI with :class:`CardioMMModule` and :class:`CineDataModule` fixed.

    After the classes are built the resolved config (YAML) is attached to the module, which
    stores it in every checkpoint (``checkpoint["cardiomm_config"]``).
    """

    def after_instantiate_classes(self) -> None:
        subcommand = self.subcommand
        config = self.config[subcommand] if subcommand else self.config
        try:
            text = self._parser(subcommand).dump(config)  # None values are left out
        except Exception:  # the dump is a courtesy; never block training on it
            text = None
        if isinstance(self.model, CardioMMModule):
            self.model.cli_config = text


def run_cli(args: Sequence[str] | None = None, *, run: bool = True) -> CardioMMCLI:
    """Run the CardioMM LightningCLI on ``args`` (``None``: ``sys.argv[1:]``).

    Args:
        args: e.g. ``["fit", "--config", "configs/tiny.yaml"]``.
        run: run the subcommand (False: only parse and instantiate, with ``args`` lacking the
            subcommand).
    """
    return CardioMMCLI(
        CardioMMModule,
        CineDataModule,
        args=None if args is None else list(args),
        run=run,
        trainer_defaults={"logger": DEFAULT_LOGGER},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "cardiomm train"} if run else None,
    )


if __name__ == "__main__":  # python -m cardiomm.training.cli fit --config ... (e.g. under torchrun)
    run_cli()
