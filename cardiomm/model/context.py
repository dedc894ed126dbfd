"""Acquisition-context embedding: what is known about a scan -> one conditioning vector ``c``.

The network is told *how* the data were acquired (cine or mapping, which view, which vendor,
field strength, acceleration, sampling pattern, coil count, how coil maps are calibrated) so
that one set of weights can adapt its denoising to each setting.  Every field may be unknown:

* categorical fields (:data:`CATEGORICAL_FIELDS`) are looked up in a fixed vocabulary; a value
  that is ``None`` or not in the vocabulary maps to index 0, a learned "unknown" embedding;
* continuous fields (:data:`CONTINUOUS_FIELDS`) are rescaled to about ``[0, 1]`` and passed
  through a small MLP per field; ``None`` (or a non-finite number) is replaced by a learned
  "missing" vector of that field.

The field vectors are summed and mapped by an MLP to ``c`` (``[batch, dim]``).  No pretrained
text model is involved: the vocabularies below are the whole "language".

During training, ``field_dropout`` hides each field independently with the given probability
so that the "unknown"/"missing" vectors are trained and the network keeps working when a
header is incomplete.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cardiomm.data.metadata import MODALITIES, VIEWS
from recon.masks import PATTERNS

__all__ = [
    "CATEGORICAL_FIELDS",
    "CONTINUOUS_FIELDS",
    "VENDORS",
    "ContextBatch",
    "ContextEncoder",
    "canonical_vendor",
]

#: Scanner vendors the embedding knows (anything else is "unknown").
VENDORS: tuple[str, ...] = ("siemens", "ge", "philips", "united_imaging", "canon")

#: Categorical context fields and their vocabularies (index 0 of every table is "unknown").
CATEGORICAL_FIELDS: dict[str, tuple[str, ...]] = {
    "modality": MODALITIES,
    "view": VIEWS,
    "vendor": VENDORS,
    "pattern": PATTERNS,
    "calibration": ("acs", "time_average"),
}

#: Continuous context fields and the divisor that brings typical values to about [0, 1].
#: ``log_r_effective`` is derived from ``r_effective`` (``log(R) / log(24)``).
CONTINUOUS_FIELDS: dict[str, float] = {
    "field_strength_t": 3.0,
    "r_effective": 24.0,
    "log_r_effective": math.log(24.0),
    "n_coils": 32.0,
}

_VENDOR_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("siemens", "siemens"),
    ("general electric", "ge"),
    ("ge medical", "ge"),
    ("ge healthcare", "ge"),
    ("philips", "philips"),
    ("united imaging", "united_imaging"),
    ("uih", "united_imaging"),
    ("canon", "canon"),
    ("toshiba", "canon"),
)


def canonical_vendor(name: object) -> str | None:
    """Map a free-text manufacturer (DICOM ``Manufacturer``, ISMRMRD ``systemVendor``) to :data:`VENDORS`.

    ``"SIEMENS"``, ``"Siemens Healthineers"`` -> ``"siemens"``; ``"GE MEDICAL SYSTEMS"`` -> ``"ge"``;
    anything unrecognised (or not a string) -> ``None``.
    """
    if not isinstance(name, str):
        return None
    text = " ".join(name.lower().replace("_", " ").split())
    if text in VENDORS or text == "ge":
        return text
    for keyword, vendor in _VENDOR_KEYWORDS:
        if keyword in text:
            return vendor
    return None


def _category_index(field: str, value: object) -> int:
    """1-based index of ``value`` in the vocabulary of ``field``; 0 for None / unseen values."""
    if field == "vendor":
        value = canonical_vendor(value)
    if not isinstance(value, str):
        return 0
    vocabulary = CATEGORICAL_FIELDS[field]
    value = value.strip().lower()
    return vocabulary.index(value) + 1 if value in vocabulary else 0


def _continuous_value(field: str, item: Mapping[str, Any]) -> float | None:
    """The rescaled value of a continuous field of one item, or None when missing."""
    if field == "log_r_effective":
        r = _as_float(item.get("r_effective"))
        return None if r is None or r <= 0 else math.log(r) / CONTINUOUS_FIELDS[field]
    value = _as_float(item.get(field))
    return None if value is None else value / CONTINUOUS_FIELDS[field]


def _as_float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _as_item_list(context: object, batch_size: int) -> list[Mapping[str, Any]]:
    """Normalise the accepted context layouts to ``batch_size`` per-item dicts."""
    if context is None:
        return [{} for _ in range(batch_size)]
    if isinstance(context, Mapping):
        values = list(context.values())
        collated = bool(values) and all(isinstance(v, (list, tuple)) for v in values)
        if not collated:  # one item's dict, shared by the whole batch
            return [context for _ in range(batch_size)]
        lengths = {len(v) for v in values}
        if lengths != {batch_size}:
            raise ValueError(
                f"collated context has lists of lengths {sorted(lengths)}, expected {batch_size} (the batch size)"
            )
        return [{k: v[i] for k, v in context.items()} for i in range(batch_size)]
    if isinstance(context, Sequence) and not isinstance(context, str):
        if len(context) != batch_size:
            raise ValueError(f"context list has {len(context)} items, expected {batch_size} (the batch size)")
        out = []
        for i, item in enumerate(context):
            if item is None:
                item = {}
            if not isinstance(item, Mapping):
                raise ValueError(f"context item {i} must be a dict or None, got {type(item).__name__}")
            out.append(item)
        return out
    raise ValueError(
        "context must be None, a dict of one item, a collated dict of lists, or a list of dicts; "
        f"got {type(context).__name__}"
    )


@dataclass(frozen=True)
class ContextBatch:
    """Tensors of a batch's acquisition context (what :class:`ContextEncoder` consumes).

    Attributes:
        categories: int64 ``[batch, len(CATEGORICAL_FIELDS)]``, 0 = unknown.
        values: float32 ``[batch, len(CONTINUOUS_FIELDS)]`` rescaled values (0 where missing).
        present: bool ``[batch, len(CONTINUOUS_FIELDS)]``, False where missing.
    """

    categories: torch.Tensor
    values: torch.Tensor
    present: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.categories.shape[0])

    @classmethod
    def from_context(cls, context: object, batch_size: int) -> "ContextBatch":
        """Build from the context of :class:`cardiomm.data.datasets.CineSliceDataset` items.

        Args:
            context: ``None`` (all unknown), one item's dict (shared by the batch), the collated
                dict of lists made by :func:`cardiomm.data.datasets.collate_cine`, or a list of
                per-item dicts (``None`` entries = all unknown).  Keys not listed in
                :data:`CATEGORICAL_FIELDS` / :data:`CONTINUOUS_FIELDS` are ignored; absent keys
                are unknown.
            batch_size: number of items.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        items = _as_item_list(context, batch_size)
        categories = torch.tensor(
            [[_category_index(f, item.get(f)) for f in CATEGORICAL_FIELDS] for item in items], dtype=torch.int64
        )
        raw = [[_continuous_value(f, item) for f in CONTINUOUS_FIELDS] for item in items]
        present = torch.tensor([[v is not None for v in row] for row in raw], dtype=torch.bool)
        values = torch.tensor([[0.0 if v is None else v for v in row] for row in raw], dtype=torch.float32)
        return cls(categories, values, present)

    @classmethod
    def unknown(cls, batch_size: int) -> "ContextBatch":
        """A batch whose every field is unknown."""
        return cls.from_context(None, batch_size)

    def to(self, device: torch.device | str) -> "ContextBatch":
        return ContextBatch(self.categories.to(device), self.values.to(device), self.present.to(device))


class ContextEncoder(nn.Module):
    """Acquisition context -> conditioning vector ``c`` of shape ``[batch, dim]``.

    Args:
        dim: size of ``c`` (and of every field embedding).
        hidden: hidden width of the per-field MLPs of the continuous fields.
        field_dropout: probability, during training only, of hiding each field of each item
            (replaced by its unknown/missing vector).
    """

    def __init__(self, dim: int = 32, hidden: int = 16, field_dropout: float = 0.1) -> None:
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(f"context dim and hidden width must be >= 1, got dim={dim}, hidden={hidden}")
        if not 0.0 <= field_dropout < 1.0:
            raise ValueError(f"field_dropout must be in [0, 1), got {field_dropout}")
        self.dim = int(dim)
        self.field_dropout = float(field_dropout)
        self.categorical = nn.ModuleList(nn.Embedding(len(v) + 1, dim) for v in CATEGORICAL_FIELDS.values())
        self.continuous = nn.ModuleList(
            nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, dim)) for _ in CONTINUOUS_FIELDS
        )
        self.missing = nn.Parameter(0.5 * torch.randn(len(CONTINUOUS_FIELDS), dim))
        self.mix = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, context: ContextBatch) -> torch.Tensor:
        device = self.missing.device
        categories = context.categories.to(device)
        values = context.values.to(device=device, dtype=self.missing.dtype)
        present = context.present.to(device)
        if self.training and self.field_dropout > 0:
            categories = categories * (torch.rand(categories.shape, device=device) >= self.field_dropout)
            present = present & (torch.rand(present.shape, device=device) >= self.field_dropout)
        total = torch.zeros(context.batch_size, self.dim, device=device, dtype=self.missing.dtype)
        for i, table in enumerate(self.categorical):
            total = total + table(categories[:, i])
        for i, mlp in enumerate(self.continuous):
            known = mlp(values[:, i : i + 1])
            total = total + torch.where(present[:, i : i + 1], known, self.missing[i])
        return self.mix(total)
