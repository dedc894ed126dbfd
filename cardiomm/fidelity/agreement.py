"""Agreement statistics: Dice per class and Bland-Altman limits of agreement.

Labels follow :mod:`cardiomm.data.labels` (0 background, 1 LV blood pool, 2 LV myocardium,
3 RV blood pool, 255 ignored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Foreground classes scored, with the names used in reports.
CLASS_NAMES: dict[int, str] = {1: "lv", 2: "myo", 3: "rv"}


def dice_per_class(reference: np.ndarray, test: np.ndarray, ignore: int = 255) -> dict[str, float]:
    """Dice coefficient of every foreground class over the whole stack.

    Args:
        reference, test: integer label arrays of the same shape (e.g. ``[slice, frame, y, x]``).
        ignore: label value in ``reference`` excluded from the comparison.

    Returns:
        ``{"lv": d, "myo": d, "rv": d}``; ``nan`` for a class absent from both.
    """
    reference = np.asarray(reference)
    test = np.asarray(test)
    if reference.shape != test.shape:
        raise ValueError(f"label stacks differ in shape: reference {list(reference.shape)}, test {list(test.shape)}")
    valid = reference != ignore
    out: dict[str, float] = {}
    for value, name in CLASS_NAMES.items():
        a = (reference == value) & valid
        b = (test == value) & valid
        total = int(a.sum()) + int(b.sum())
        out[name] = float("nan") if total == 0 else 2.0 * float((a & b).sum()) / total
    return out


@dataclass(frozen=True)
class BlandAltman:
    """Agreement of ``test`` with ``reference`` over ``n`` paired values (same unit as the values).

    Attributes:
        n: number of pairs with both values finite.
        mean_difference: bias, mean of ``test - reference``.
        sd_difference: sample standard deviation of the differences (0 when n < 2).
        loa_low, loa_high: limits of agreement ``bias -/+ 1.96 sd``.
        mean_abs_difference: mean of ``|test - reference|``.
    """

    n: int
    mean_difference: float
    sd_difference: float
    loa_low: float
    loa_high: float
    mean_abs_difference: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def bland_altman(reference: Sequence[float | None], test: Sequence[float | None]) -> BlandAltman:
    """Bland-Altman statistics of paired measurements; pairs with a missing value are left out."""
    if len(reference) != len(test):
        raise ValueError(f"bland_altman needs paired values, got {len(reference)} and {len(test)}")
    pairs = [
        (float(r), float(t))
        for r, t in zip(reference, test)
        if r is not None and t is not None and math.isfinite(float(r)) and math.isfinite(float(t))
    ]
    if not pairs:
        nan = float("nan")
        return BlandAltman(0, nan, nan, nan, nan, nan)
    d = np.array([t - r for r, t in pairs])
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return BlandAltman(len(d), bias, sd, bias - 1.96 * sd, bias + 1.96 * sd, float(np.abs(d).mean()))
