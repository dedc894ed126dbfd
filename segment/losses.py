"""Segmentation loss with CardioSAM-style boundary refinement: Dice + CE + 0.5 x edge BCE.

Edge targets are the morphological gradient of the label map (dilation != erosion of the
labels in a 3x3 neighbourhood).  Pixels labelled 255 (unknown) are left out of every term,
and so are edge pixels whose neighbourhood touches an unknown pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE", "edge_targets", "segmentation_loss"]

IGNORE = 255


def edge_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Morphological-gradient boundaries of integer labels ``[n, h, w]``.

    Returns:
        ``(edge, valid)``: float ``[n, h, w]`` 1 on boundaries, and bool ``[n, h, w]`` where the
        3x3 neighbourhood holds no unknown (255) pixel.
    """
    lab = labels.float()[:, None]
    dil = F.max_pool2d(lab, 3, stride=1, padding=1)
    ero = -F.max_pool2d(-lab, 3, stride=1, padding=1)
    unknown = F.max_pool2d((lab == IGNORE).float(), 3, stride=1, padding=1) > 0
    return (dil != ero).float()[:, 0], ~unknown[:, 0]


def _dice_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    prob = logits.softmax(1)
    onehot = F.one_hot(labels.clamp(max=logits.shape[1] - 1).long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    m = valid[:, None].float()
    inter = (prob * onehot * m).sum((0, 2, 3))
    denom = ((prob + onehot) * m).sum((0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1 - dice[1:].mean()  # foreground classes


def segmentation_loss(
    logits: torch.Tensor, edge_logits: torch.Tensor | None, labels: torch.Tensor,
    weights: torch.Tensor | None = None, edge_weight: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Dice + CE (+ ``edge_weight`` x edge BCE).

    Args:
        logits: ``[n, 4, h, w]``; edge_logits: ``[n, 1, h, w]`` or None; labels: int ``[n, h, w]``
        (255 unknown); weights: per-image loss weights ``[n]``.
    Returns:
        dict with ``loss`` and its parts ``dice``, ``ce``, ``edge``.
    """
    labels = labels.long()
    valid = labels != IGNORE
    w = torch.ones(labels.shape[0], device=logits.device) if weights is None else weights
    ce_px = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    ce = (ce_px.sum((1, 2)) * w).sum() / ((valid.sum((1, 2)) * w).sum() + 1e-6)
    dice = _dice_loss(logits, labels, valid & (w[:, None, None] > 0))
    out = {"dice": dice, "ce": ce}
    loss = dice + ce
    if edge_logits is not None:
        edge, evalid = edge_targets(labels)
        bce = F.binary_cross_entropy_with_logits(edge_logits[:, 0], edge, reduction="none", pos_weight=torch.tensor(4.0))
        e = (bce * evalid * w[:, None, None]).sum() / ((evalid * w[:, None, None]).sum() + 1e-6)
        out["edge"] = e
        loss = loss + edge_weight * e
    out["loss"] = loss
    return out
