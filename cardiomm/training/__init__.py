"""Training of the CardioMM network with Lightning.

* :mod:`~cardiomm.training.lightning_module` -- :class:`CardioMMModule` (loss, metrics, optimiser, checkpoints);
* :mod:`~cardiomm.training.checkpoint` -- :func:`load_cardiomm_checkpoint` with architecture checks;
* :mod:`~cardiomm.training.cli` -- the ``LightningCLI`` behind ``cardiomm train`` (imported on demand:
  it sets ``WANDB_MODE=offline`` before importing loggers).
"""

from cardiomm.training.checkpoint import load_cardiomm_checkpoint, read_checkpoint
from cardiomm.training.lightning_module import CardioMMModule

__all__ = ["CardioMMModule", "load_cardiomm_checkpoint", "read_checkpoint"]
