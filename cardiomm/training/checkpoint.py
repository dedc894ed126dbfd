"""Load a trained :class:`~cardiomm.model.CardioMMNet` from a Lightning checkpoint, with checks.

A checkpoint is accepted only if it is a readable torch file (loaded with
``weights_only=True``: no arbitrary code runs), was written by
:class:`cardiomm.training.lightning_module.CardioMMModule` for the architecture version of this
code (:data:`cardiomm.model.ARCHITECTURE`), and its weights fit the network its stored
hyper-parameters describe.  Anything else raises ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch

from cardiomm.model import ARCHITECTURE, CardioMMNet

__all__ = ["EXPORTED_KEYS", "export_checkpoint", "load_cardiomm_checkpoint", "load_matching_weights", "read_checkpoint"]

_MODEL_PREFIX = "model."

#: Entries of a training checkpoint kept by :func:`export_checkpoint` (weights, the network's and
#: the module's hyper-parameters, the data description and config, and where training stopped).
EXPORTED_KEYS: tuple[str, ...] = (
    "state_dict",
    "cardiomm_architecture",
    "cardiomm_model_kwargs",
    "cardiomm_data",
    "cardiomm_config",
    "hyper_parameters",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
)


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """The checked checkpoint dict of a CardioMM training run.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable/corrupted file, not a CardioMM checkpoint, or another architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise ValueError(
            f"cannot read checkpoint {path}: the file is corrupted, truncated or not a torch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    found = checkpoint.get("cardiomm_architecture")
    if found is None:
        raise ValueError(f"{path} is not a CardioMM checkpoint (no 'cardiomm_architecture' entry)")
    if found != ARCHITECTURE:
        raise ValueError(
            f"{path} holds architecture {found!r}, but this code builds {ARCHITECTURE!r}; "
            "use the CardioMM version that wrote it, or retrain"
        )
    if not isinstance(checkpoint.get("cardiomm_model_kwargs"), dict):
        raise ValueError(f"{path} has no 'cardiomm_model_kwargs' (the network's hyper-parameters)")
    return checkpoint


def _network_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The :class:`CardioMMNet` weights of a Lightning checkpoint (the module's ``model.`` prefix removed)."""
    return {k[len(_MODEL_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(_MODEL_PREFIX)}


def load_cardiomm_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> CardioMMNet:
    """Build the network stored in a CardioMM checkpoint and load its weights (eval mode).

    Args:
        path: ``.ckpt`` file written while training with :mod:`cardiomm.training`.
        map_location: where to put the tensors (as in :func:`torch.load`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: corrupted file, another architecture, or weights that do not fit.
    """
    checkpoint = read_checkpoint(path, map_location)
    kwargs = dict(checkpoint["cardiomm_model_kwargs"])
    accepted = set(inspect.signature(CardioMMNet).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"checkpoint {path} has network arguments this code does not know: {unknown}")
    try:
        model = CardioMMNet(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: cannot build the network from {kwargs}: {err}") from err
    state = _network_state(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path}: weights do not fit the network: {str(err).splitlines()[0]}") from err
    if map_location is not None:
        model.to(map_location)
    return model.eval()


def load_matching_weights(model: CardioMMNet, path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Start ``model`` from the weights of another CardioMM checkpoint (fine-tuning).

    Every tensor whose name and shape exist in both is copied; the others keep their
    initialisation.  Used when a configuration adds parts to a trained network (e.g. a new
    coil-map start) and training should not begin from scratch.

    Returns:
        ``{"loaded": [...], "new": [...], "shape_mismatch": [...], "unused": [...]}`` parameter names.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_checkpoint`; also when not one tensor fits.
    """
    checkpoint = read_checkpoint(path)
    source = _network_state(checkpoint)
    own = model.state_dict()
    fits = {k: v for k, v in source.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fits:
        raise ValueError(f"checkpoint {path}: none of its weights fits this network")
    model.load_state_dict(fits, strict=False)
    return {
        "loaded": sorted(fits),
        "new": sorted(set(own) - set(source)),
        "shape_mismatch": sorted(k for k in source if k in own and k not in fits),
        "unused": sorted(set(source) - set(own)),
    }


def export_checkpoint(
    source: str | os.PathLike[str], destination: str | os.PathLike[str], **notes: Any
) -> dict[str, Any]:
    """Write a checked copy of a training checkpoint without optimiser and loop state (for shipping).

    Keeps :data:`EXPORTED_KEYS` (so :func:`load_cardiomm_checkpoint` and
    ``CardioMMModule.load_from_checkpoint`` still accept it) and adds ``notes`` under
    ``cardiomm_notes`` (e.g. the validation score, the wall time).  Written atomically.

    Returns:
        the exported dict.
    Raises:
        FileNotFoundError / ValueError: as :func:`read_checkpoint`.
    """
    from cardiomm.atomic import atomic_path

    checkpoint = read_checkpoint(source)
    load_cardiomm_checkpoint(source)  # the weights must fit the network
    exported = {k: checkpoint[k] for k in EXPORTED_KEYS if k in checkpoint}
    exported["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(_MODEL_PREFIX)}
    if notes:
        exported["cardiomm_notes"] = {str(k): v for k, v in notes.items()}
    with atomic_path(destination) as tmp:
        torch.save(exported, tmp)
    return exported
