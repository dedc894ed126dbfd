"""Segmentation loss with CardioSAM-style boundary refinement: Dice + CE + 0.5 x edge BCE.

Edge targets are the morphological gradient of the label map (dilation != erosion of the
labels in a 3x3 neighbourhood).

Two partial labels:

* 255 (:data:`IGNORE`, unknown): left out of every term, and so are edge pixels whose
  neighbourhood touches one.
* 254 (:data:`NOT_LV_BLOOD`): known not to be LV blood pool, but which of the other classes is
  unknown, e.g. the myocardium around an end-systolic blood pool whose epicardium nobody drew.
  Its cross-entropy is that of the merged class, ``-log(1 - p_LV)``; it is a negative of the
  LV-blood Dice term and left out of the others; a pixel next to both LV blood and such a pixel
  is a known edge, other edge pixels touching one are left out.  Without it, an end-systolic
  blood pool is supervised only from the inside and nothing stops it from growing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cardiomm.data.labels import LV_BLOOD

__all__ = ["IGNORE", "NOT_LV_BLOOD", "edge_targets", "segmentation_loss"]

IGNORE = 255
NOT_LV_BLOOD = 254


def _near(mask: torch.Tensor) -> torch.Tensor:
    """True where the 3x3 neighbourhood of ``[n, h, w]`` bool ``mask`` holds a True pixel."""
    return F.max_pool2d(mask.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0


def edge_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Morphological-gradient boundaries of integer labels ``[n, h, w]``.

    Returns:
        ``(edge, valid)``: float ``[n, h, w]`` 1 on boundaries, and bool ``[n, h, w]`` where that
        is known: the 3x3 neighbourhood holds no partial label (254, 255), or it holds LV blood
        and a pixel known not to be LV blood but no unknown (255) pixel (then it is an edge).
    """
    lab = labels.float()[:, None]
    dil = F.max_pool2d(lab, 3, stride=1, padding=1)
    ero = -F.max_pool2d(-lab, 3, stride=1, padding=1)
    unknown = _near(labels == IGNORE)
    partial = _near(labels == NOT_LV_BLOOD)
    lv_boundary = _near(labels == LV_BLOOD) & _near((labels != LV_BLOOD) & (labels != IGNORE))  # holds two values: an edge
    valid = ~unknown & (~partial | lv_boundary)
    return (dil != ero).float()[:, 0], valid


def _dice_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, not_lv: torch.Tensor) -> torch.Tensor:
    prob = logits.softmax(1)
    onehot = F.one_hot(labels.clamp(max=logits.shape[1] - 1).long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    m = valid[:, None].float().repeat(1, logits.shape[1], 1, 1)
    onehot = onehot * m  # clamped partial labels are no class
    m[:, LV_BLOOD] += not_lv.float()  # known LV-blood negatives
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
        (254 not LV blood, 255 unknown: module docstring); weights: per-image loss weights ``[n]``.
    Returns:
        dict with ``loss`` and its parts ``dice``, ``ce``, ``edge``.
    """
    labels = labels.long()
    not_lv = labels == NOT_LV_BLOOD
    valid = (labels != IGNORE) & ~not_lv  # pixels of one known class
    w = torch.ones(labels.shape[0], device=logits.device) if weights is None else weights
    ce_px = F.cross_entropy(logits, labels.masked_fill(~valid, IGNORE), ignore_index=IGNORE, reduction="none")
    if bool(not_lv.any()):
        others = torch.cat([logits[:, :LV_BLOOD], logits[:, LV_BLOOD + 1:]], 1)
        merged = logits.logsumexp(1) - others.logsumexp(1)  # -log(1 - p_LV)
        ce_px = ce_px + merged * not_lv
    known = valid | not_lv
    ce = (ce_px.sum((1, 2)) * w).sum() / ((known.sum((1, 2)) * w).sum() + 1e-6)
    weighted = w[:, None, None] > 0
    dice = _dice_loss(logits, labels, valid & weighted, not_lv & weighted)
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
