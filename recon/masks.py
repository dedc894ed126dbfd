"""Reproducible Cartesian sampling masks for accelerated 2D+t cine MRI.

A mask is a boolean tensor ``[time, ky, kx]`` (``True`` = sampled), the layout of
:mod:`recon.conventions`; ``ky`` (phase encoding) is the undersampled axis and the k-space
centre is at index ``n // 2`` on each axis (centred FFT).

Patterns (:data:`PATTERNS`)
---------------------------
``uniform``
    Equispaced ky lines (all kx), the same lattice in every frame; fastMRI-style
    equispaced + ACS.  The lattice passes through the centre line ``ny // 2``.
``kt_uniform``
    Equispaced ky lines whose offset moves by one line from frame to frame (sheared k-t
    lattice, k-t BLAST/SENSE style).  The union over time covers all of k-space once
    ``time >= line spacing``; otherwise it covers a band of offsets centred on ``ny // 2``.
``kt_gaussian``
    Per-frame random ky lines drawn without replacement from a Gaussian density (on a small
    uniform floor) centred at ``ny // 2``, different in every frame (CMRxRecon ktGaussian).
    Its density (:data:`DENSITIES`, ``density=``) is ``"broad"`` by default: Gaussian
    standard deviation ``ny / 6`` on a floor of 0.2 of the peak, close to CMRxRecon 2024's
    (its ``ktGaussianSampling.m`` with the default alpha 0.28: standard deviation ``ny / 7``,
    floor 0.26 of the peak).  ``"kt-focuss"`` is the steeper density of
    k-t FOCUSS as used for the cine masks of Schlemper et al. (IEEE TMI 2018): standard
    deviation ``ny / 10`` on a floor of ``1 / (2 R)`` of the peak.  At high effective R
    without a per-frame ACS the broad density spends a third of the lines on the floor and
    rarely samples the centre: at 24x on 20 frames of 256 lines (10-11 lines per frame,
    seed 0) the centre line ``ky = 0`` is in 1 frame of 20 with the broad density and in 6
    with kt-focuss.
``kt_radial``
    Pseudo-radial: straight spokes through the k-space centre rasterised onto the
    Cartesian ``(ky, kx)`` grid (one nearest grid point per step along the spoke's dominant
    axis), golden-angle rotated so that every frame differs; the seed sets the start angle.
    Its calibration region is a central ``acs_lines x acs_lines`` square instead of lines.

Acceleration conventions
------------------------
``"effective"`` (default): ``R = time*ky*kx / (samples)``, calibration samples included.
The total budget ``round(time*ky/R)`` lines (radial: ``round(time*ky*kx/R)`` points) is
spread over the frames, so per-frame counts may differ by one to reach a non-integer
lines-per-frame budget; the achieved :attr:`SamplingMask.r_effective` is within 5 % of the
request (:data:`R_TOLERANCE`) or :func:`make_mask` raises ``ValueError``.

``"cmrxrecon"``: R as in CMRxRecon 2024 file names: ``ktGaussian24`` keeps ``acs_lines``
always-sampled central lines plus ``round(ky/24)`` further lines per frame (radial:
``round(ky*kx/R)`` further points outside the central square).  Here the further lines are
distinct from the calibration lines (the challenge's MATLAB draws them from all ky, so some
land inside the ACS and its masks hold slightly fewer lines; its ktRadial uses
``floor(180/R)`` whole spokes).  :attr:`SamplingMask.r_effective` is then much lower
than the nominal R; :meth:`SamplingMask.describe` always prints both.

Calibration
-----------
``calibration="auto"`` keeps a per-frame calibration region (``acs_lines`` central ky lines,
or the central square for radial) in every frame when it costs at most half of the smallest
per-frame budget (CMRxRecon convention: always, since R is counted outside it).  Otherwise
no ACS is kept and coil maps must come from the time-averaged k-space
(``calibration="time_average"``): for the kt patterns the union of the frames is then made
to cover the central region (uncovered central lines/points are swapped into frames in
place of their outermost samples, keeping every frame's count).  The static ``uniform``
pattern cannot do that without ceasing to be static, so its union covers only the lattice;
check :attr:`SamplingMask.union_coverage` before calibrating from it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch

from recon.conventions import shape_str

__all__ = [
    "CALIBRATIONS",
    "CONVENTIONS",
    "DENSITIES",
    "PATTERNS",
    "R_TOLERANCE",
    "SamplingMask",
    "cmrxrecon_name",
    "density_for",
    "make_mask",
    "pattern_label",
    "find_cmrxrecon_name",
    "parse_cmrxrecon_name",
]

#: Known sampling patterns.
PATTERNS: tuple[str, ...] = ("uniform", "kt_uniform", "kt_gaussian", "kt_radial")
#: How the requested acceleration is counted.
CONVENTIONS: tuple[str, ...] = ("effective", "cmrxrecon")
#: Line densities of ``kt_gaussian`` (see the module docstring); the first is the default.
DENSITIES: tuple[str, ...] = ("broad", "kt-focuss")
#: Calibration modes accepted by :func:`make_mask` (``"auto"`` resolves to one of the others).
CALIBRATIONS: tuple[str, ...] = ("auto", "acs", "time_average")
#: Largest relative deviation of ``r_effective`` from the requested R (effective convention).
R_TOLERANCE = 0.05

#: Per-frame ACS is kept automatically only when it costs at most this fraction of the budget.
_ACS_MAX_BUDGET_FRACTION = 0.5
#: kt_gaussian density over ky: ``floor + exp(-d^2 / (2 sigma^2))`` with ``sigma = fraction * ny``
#: ("broad", the default).
_GAUSS_SIGMA_FRACTION = 1.0 / 6.0
_GAUSS_FLOOR = 0.2
#: "kt-focuss": ``sigma = ny / 10``, floor ``1 / (2 R)``.
_KTFOCUSS_SIGMA_FRACTION = 0.1
#: Golden angle for spokes through the centre (angles modulo pi): pi / golden ratio.
_GOLDEN_ANGLE = math.pi * (math.sqrt(5.0) - 1.0) / 2.0
#: Upper bound on rasterised spoke points handled at once (memory/time guard for R close to 1).
_MAX_SPOKE_POINTS = 8_000_000

_CMRX_PREFIX = {
    "uniform": "Uniform",
    "kt_uniform": "ktUniform",
    "kt_gaussian": "ktGaussian",
    "kt_radial": "ktRadial",
}
_CMRX_TOKEN = r"(ktGaussian|ktUniform|ktRadial|Uniform)(\d+(?:\.\d+)?)"
#: a whole mask name, or one that ends a file name after a separator
_CMRX_NAME_RE = re.compile(r"(?:^|[_\-/\\])" + _CMRX_TOKEN + r"(?:\.mat)?$", re.IGNORECASE)
#: a pattern spelling anywhere in a longer name (``cine_sax_kus_ktGaussian8``, ``mask_ktRadial16``)
_CMRX_TOKEN_RE = re.compile(_CMRX_TOKEN, re.IGNORECASE)


@dataclass(frozen=True)
class SamplingMask:
    """A cine sampling mask with the facts needed to report its acceleration honestly.

    Attributes:
        mask: bool ``[time, ky, kx]``, ``True`` where sampled.
        acs: bool ``[time, ky, kx]``, the calibration region sampled in every frame, or
            ``None`` when there is no per-frame calibration region.
        pattern: one of :data:`PATTERNS`.
        requested_accel: the R asked for, in ``convention``.
        convention: ``"effective"`` or ``"cmrxrecon"``.
        calibration: ``"acs"`` (per-frame ACS present) or ``"time_average"`` (coil maps from
            time-averaged k-space).
        seed: seed of the numpy Generator, or ``None`` (not reproducible).
        acs_lines: size of the central calibration region: ``acs_lines`` ky lines (radial:
            an ``acs_lines x acs_lines`` square), whether or not it is sampled per frame.
        density: the ky density of ``kt_gaussian`` (one of :data:`DENSITIES`); ``None`` for
            the other patterns.
    """

    mask: torch.Tensor
    acs: torch.Tensor | None
    pattern: str
    requested_accel: float
    convention: str
    calibration: str
    seed: int | None
    acs_lines: int = 0
    density: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mask, torch.Tensor) or self.mask.dtype != torch.bool or self.mask.ndim != 3:
            raise ValueError(
                "SamplingMask.mask must be a bool torch.Tensor [time, ky, kx], got "
                f"{type(self.mask).__name__} {getattr(self.mask, 'dtype', '')} "
                f"{shape_str(getattr(self.mask, 'shape', ()))}"
            )
        if self.acs is not None and (self.acs.dtype != torch.bool or self.acs.shape != self.mask.shape):
            raise ValueError(
                f"SamplingMask.acs must be bool with the mask's shape {shape_str(self.mask.shape)}, "
                f"got {self.acs.dtype} {shape_str(self.acs.shape)}"
            )
        if self.density is not None and self.density not in DENSITIES:
            raise ValueError(f"SamplingMask.density must be one of {', '.join(DENSITIES)} or None, got {self.density!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(time, ky, kx)``."""
        t, ny, nx = self.mask.shape
        return int(t), int(ny), int(nx)

    @property
    def samples_per_frame(self) -> torch.Tensor:
        """Sampled grid points per frame, int64 ``[time]``."""
        return self.mask.sum(dim=(1, 2))

    @property
    def r_effective(self) -> float:
        """``time*ky*kx / sampled points``, calibration samples included (the honest R)."""
        n = int(self.mask.sum())
        return self.mask.numel() / n if n else math.inf

    @property
    def r_cmrxrecon(self) -> float:
        """R counted outside the per-frame calibration region, as in CMRxRecon 2024 names.

        ``ky / (lines per frame outside the ACS)`` averaged over frames, i.e.
        ``time*ky*kx / samples outside the ACS`` (radial: points instead of lines).  Equals
        :attr:`r_effective` when there is no per-frame ACS.
        """
        if self.acs is None:
            return self.r_effective
        n = int((self.mask & ~self.acs).sum())
        return self.mask.numel() / n if n else math.inf

    def calibration_region(self) -> torch.Tensor:
        """Bool ``[ky, kx]``: the central calibration region (lines, or a square for radial)."""
        _, ny, nx = self.shape
        return torch.from_numpy(_window_2d(self.pattern, ny, nx, self.acs_lines))

    @property
    def union_coverage(self) -> float:
        """Fraction of :meth:`calibration_region` sampled by the union of all frames (1.0 if empty)."""
        region = self.calibration_region()
        n = int(region.sum())
        if n == 0:
            return 1.0
        return float((self.mask.any(dim=0) & region).sum()) / n

    def describe(self) -> str:
        """One line: pattern, shape, both Rs, calibration, per-frame counts and seed."""
        t, ny, nx = self.shape
        per_frame = self.samples_per_frame
        unit = "points" if self.pattern == "kt_radial" else "lines"
        if unit == "lines":
            per_frame = per_frame // nx
        counts = f"{int(per_frame.min())}" if int(per_frame.min()) == int(per_frame.max()) else (
            f"{int(per_frame.min())}-{int(per_frame.max())}"
        )
        if self.acs is not None:
            region = (
                f"{self.acs_lines}x{self.acs_lines} central square"
                if self.pattern == "kt_radial"
                else f"{self.acs_lines} central ky lines"
            )
            calib = f"ACS {region} in every frame"
        elif self.acs_lines == 0:
            calib = "no calibration region (acs_lines=0)"
        else:
            region = (
                f"{self.acs_lines}x{self.acs_lines} square"
                if self.pattern == "kt_radial"
                else f"{self.acs_lines}-line region"
            )
            calib = (
                "no per-frame ACS, coil maps from time-averaged k-space "
                f"(union over time covers {self.union_coverage:.0%} of the central {region})"
            )
        try:
            name = cmrxrecon_name(self)
        except ValueError:
            name = "n/a"
        density = "" if self.density in (None, DENSITIES[0]) else f", {self.density} density"
        return (
            f"{self.pattern}{density} {shape_str(self.shape)} [time, ky, kx]: R_effective={self.r_effective:.2f}, "
            f"R_cmrxrecon={self.r_cmrxrecon:.2f} ({name}); requested R={self.requested_accel:g} "
            f"({self.convention} convention); {calib}; {counts} {unit}/frame; seed={self.seed}"
        )


def density_for(pattern: str, density: str) -> str:
    """The density :func:`make_mask` takes for ``pattern`` in a run that asks for ``density`` for all
    its patterns: ``density`` for ``kt_gaussian``, the default for the others (they have none)."""
    return density if pattern == "kt_gaussian" else DENSITIES[0]


def pattern_label(pattern: str, density: str | None) -> str:
    """``pattern`` for tables and figures, with the ``kt_gaussian`` density when it is not the default."""
    return pattern if density in (None, DENSITIES[0]) else f"{pattern} ({density} density)"


# ----------------------------------------------------------------------------- validation


def _check_inputs(
    pattern: object,
    accel: object,
    shape: object,
    seed: object,
    acs_lines: object,
    convention: object,
    calibration: object,
    density: object = DENSITIES[0],
) -> tuple[int, int, int]:
    if not isinstance(pattern, str) or pattern not in PATTERNS:
        raise ValueError(f"unknown sampling pattern {pattern!r}; known patterns: {', '.join(PATTERNS)}")
    if density not in DENSITIES:
        raise ValueError(f"unknown kt_gaussian density {density!r}; known densities: {', '.join(DENSITIES)}")
    if density != DENSITIES[0] and pattern != "kt_gaussian":
        raise ValueError(f"density={density!r} applies to kt_gaussian only, not to {pattern}")
    if isinstance(accel, bool) or not isinstance(accel, Real) or not math.isfinite(float(accel)):
        raise ValueError(f"acceleration must be a finite real number >= 1, got {accel!r}")
    if float(accel) < 1.0:
        raise ValueError(f"acceleration R must be >= 1 (R=1 is fully sampled), got {accel!r}")
    if not isinstance(shape, (tuple, list)) or len(shape) != 3:
        raise ValueError(f"mask shape must be a 3-tuple (time, ky, kx), got {shape!r}")
    for name, n in zip(("time", "ky", "kx"), shape):
        if isinstance(n, bool) or not isinstance(n, Integral):
            raise ValueError(f"mask shape entries must be integers, got {name}={n!r} in shape {tuple(shape)!r}")
        if n <= 0:
            raise ValueError(f"mask shape entries must be positive, got {name}={n} in shape {tuple(shape)!r}")
    nt, ny, nx = (int(n) for n in shape)
    if isinstance(acs_lines, bool) or not isinstance(acs_lines, Integral) or acs_lines < 0:
        raise ValueError(f"acs_lines must be a non-negative integer, got {acs_lines!r}")
    if acs_lines > ny:
        raise ValueError(f"acs_lines={acs_lines} is larger than the number of ky lines ({ny}) in shape {shape_str((nt, ny, nx))}")
    if pattern == "kt_radial" and acs_lines > nx:
        raise ValueError(
            f"kt_radial calibration square {acs_lines}x{acs_lines} does not fit in kx={nx} "
            f"(shape {shape_str((nt, ny, nx))}); use acs_lines <= {nx}"
        )
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown R convention {convention!r}; known conventions: {', '.join(CONVENTIONS)}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {calibration!r}; known: {', '.join(CALIBRATIONS)}")
    if calibration == "acs" and acs_lines == 0:
        raise ValueError("calibration='acs' needs acs_lines > 0")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return nt, ny, nx


# ----------------------------------------------------------------------------- geometry helpers


def _round_half_up(x: float) -> int:
    """Round to the nearest integer, halves upwards (MATLAB's ``round`` for x >= 0)."""
    return int(math.floor(x + 0.5))


def _split_total(total: int, nt: int) -> np.ndarray:
    """Spread ``total`` samples over ``nt`` frames; counts differ by at most one, int64 ``[nt]``."""
    t = np.arange(nt + 1, dtype=np.int64)
    edges = (total * t) // nt
    return np.diff(edges)


def _central_range(n: int, width: int) -> np.ndarray:
    """Indices of the ``width`` central entries of an axis of length ``n`` (centre ``n // 2``)."""
    start = n // 2 - width // 2
    return np.arange(start, start + width)


def _window_2d(pattern: str, ny: int, nx: int, acs_lines: int) -> np.ndarray:
    """Bool ``[ky, kx]`` calibration region: central ky lines, or a central square for radial."""
    region = np.zeros((ny, nx), dtype=bool)
    if acs_lines <= 0:
        return region
    rows = _central_range(ny, acs_lines)
    if pattern == "kt_radial":
        region[np.ix_(rows, _central_range(nx, acs_lines))] = True
    else:
        region[rows, :] = True
    return region


def _centre_out_offsets(n: int) -> np.ndarray:
    """Offsets ``i - n // 2`` for ``i`` in ``range(n)`` ordered 0, +1, -1, +2, -2, ..."""
    u = np.arange(n) - n // 2
    return u[np.lexsort((u < 0, np.abs(u)))]


# ----------------------------------------------------------------------------- line patterns


def _lattice(n_cand: int, count: int, through: float) -> np.ndarray:
    """``count`` near-equispaced indices in ``[0, n_cand)`` with one of them at ``through``."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    step = n_cand / count
    offset = through - step * math.floor(through / step)
    pos = np.floor(offset + step * np.arange(count) + 1e-9).astype(np.int64)
    return np.clip(pos, 0, n_cand - 1)


def _uniform_lines(counts: np.ndarray, cand: np.ndarray, dist: np.ndarray, centre: int) -> np.ndarray:
    """Static lattice; frames one line short drop the lattice's outermost line. Bool ``[nt, ny]``."""
    cand_idx = np.flatnonzero(cand)
    nt, ny = counts.size, cand.size
    sel = np.zeros((nt, ny), dtype=bool)
    m_max = int(counts.max())
    through = float(np.searchsorted(cand_idx, centre))
    lines = cand_idx[_lattice(cand_idx.size, m_max, through)]
    lines = lines[np.lexsort((lines, dist[lines]))]  # centre first, outermost last
    for t, m in enumerate(counts):
        sel[t, lines[: int(m)]] = True
    return sel


def _kt_uniform_lines(counts: np.ndarray, cand: np.ndarray, centre: int) -> np.ndarray:
    """Sheared lattice: frame ``t``'s lattice is frame 0's moved by ``t`` candidate lines. Bool ``[nt, ny]``."""
    cand_idx = np.flatnonzero(cand)
    nt, ny = counts.size, cand.size
    sel = np.zeros((nt, ny), dtype=bool)
    through_centre = float(np.searchsorted(cand_idx, centre))
    mean_step = cand_idx.size / max(float(counts.mean()), 1.0)
    band = min(nt, max(int(math.floor(mean_step)), 1))  # distinct offsets visited, centred on ny//2
    for t, m in enumerate(counts):
        through = through_centre + (t - band // 2)
        sel[t, cand_idx[_lattice(cand_idx.size, int(m), through)]] = True
    return sel


def _kt_gaussian_lines(
    counts: np.ndarray,
    cand: np.ndarray,
    dist: np.ndarray,
    rng: np.random.Generator,
    sigma_fraction: float = _GAUSS_SIGMA_FRACTION,
    floor: float = _GAUSS_FLOOR,
) -> np.ndarray:
    """Per-frame weighted sampling without replacement (Gumbel top-k). Bool ``[nt, ny]``.

    The weight of a line at distance ``d`` from the centre is ``floor + exp(-d^2 / (2 sigma^2))``
    with ``sigma = sigma_fraction * ny``.
    """
    nt, ny = counts.size, cand.size
    sigma = max(sigma_fraction * ny, 1.0)
    log_w = np.log(floor + np.exp(-0.5 * (dist / sigma) ** 2))
    keys = log_w[None, :] + rng.gumbel(size=(nt, ny))
    keys[:, ~cand] = -np.inf
    order = np.argsort(-keys, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(ny)[None, :].repeat(nt, axis=0), axis=1)
    return rank < counts[:, None]


# ----------------------------------------------------------------------------- radial


def _spoke_points(ny: int, nx: int, angles: np.ndarray) -> np.ndarray:
    """Rasterised spokes through ``(ny//2, nx//2)``: flat indices ``ky*nx + kx``, ``-1`` outside.

    Each spoke steps one grid line at a time along its dominant axis and takes the nearest
    grid point on the other axis; points are ordered centre-out.  Returns int64 ``[K, max(ny, nx)]``.
    """
    cy, cx = ny // 2, nx // 2
    length = max(ny, nx)
    out = np.full((angles.size, length), -1, dtype=np.int64)
    s, c = np.sin(angles), np.cos(angles)
    x_dom = np.abs(c) >= np.abs(s)
    if x_dom.any():
        u = _centre_out_offsets(nx)
        y = cy + np.rint(u[None, :] * (s[x_dom] / c[x_dom])[:, None]).astype(np.int64)
        x = np.broadcast_to(cx + u, y.shape)
        out[x_dom, : u.size] = np.where((y >= 0) & (y < ny), y * nx + x, -1)
    if (~x_dom).any():
        v = _centre_out_offsets(ny)
        x = cx + np.rint(v[None, :] * (c[~x_dom] / s[~x_dom])[:, None]).astype(np.int64)
        y = np.broadcast_to(cy + v, x.shape)
        out[~x_dom, : v.size] = np.where((x >= 0) & (x < nx), y * nx + x, -1)
    return out


def _kt_radial_points(
    counts: np.ndarray, cand: np.ndarray, dist: np.ndarray, ny: int, nx: int, rng: np.random.Generator
) -> np.ndarray:
    """Golden-angle pseudo-radial spokes, ``counts[t]`` points per frame outside the ACS.

    Frame ``t`` uses spokes ``t*K .. t*K+K-1`` of one golden-angle sequence whose start angle
    is drawn from ``rng``; the first ``counts[t]`` distinct points in spoke order are kept, so
    the last spoke may be cut short (symmetrically about the centre).  If ``R`` is so close
    to 1 that spokes cannot supply the budget, the frame is topped up with the unsampled
    points nearest the centre.  Returns bool ``[nt, ny*nx]``.
    """
    nt, npts = counts.size, ny * nx
    theta0 = rng.uniform(0.0, math.pi)
    length = max(ny, nx)
    m_max = int(counts.max())
    n_spokes = max(2, math.ceil(1.25 * m_max / min(ny, nx)) + 2)
    cap = max(4, _MAX_SPOKE_POINTS // (nt * length))
    if np.all(counts >= int(cand.sum())):  # R = 1 (or the ACS leaves nothing to choose)
        return np.broadcast_to(cand, (nt, npts)).copy()
    while True:
        n_spokes = min(n_spokes, cap)
        k = np.arange(nt * n_spokes, dtype=np.float64)
        angles = np.mod(theta0 + k * _GOLDEN_ANGLE, math.pi)
        pts = _spoke_points(ny, nx, angles).reshape(nt, n_spokes * length)
        ok = pts >= 0
        ok[ok] = cand[pts[ok]]
        keys = np.where(ok, pts + npts * np.arange(nt, dtype=np.int64)[:, None], -1).ravel()
        vals = keys[keys >= 0]
        _, first = np.unique(vals, return_index=True)
        ordered = vals[np.sort(first)]  # distinct (frame, point) in spoke order, frames grouped
        frame = ordered // npts
        have = np.bincount(frame, minlength=nt)
        if np.all(have >= counts) or n_spokes >= cap:
            break
        n_spokes = int(math.ceil(n_spokes * 1.5))
    starts = np.concatenate(([0], np.cumsum(have)[:-1]))
    rank = np.arange(ordered.size) - starts[frame]
    keep = rank < counts[frame]
    sel = np.zeros((nt, npts), dtype=bool)
    sel[frame[keep], ordered[keep] % npts] = True
    deficit = counts - sel.sum(axis=1)
    if np.any(deficit > 0):  # only for R close to 1: top up nearest-centre points
        order = np.lexsort((np.arange(npts), dist))
        for t in np.flatnonzero(deficit > 0):
            free = order[cand[order] & ~sel[t, order]]
            sel[t, free[: int(deficit[t])]] = True
    return sel


# ----------------------------------------------------------------------------- calibration


def _cover_window(sel: np.ndarray, window: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Make the union of frames cover ``window``, keeping every frame's sample count.

    Each uncovered window unit (line or point; nearest the centre first) goes to the frame
    holding the fewest window units that still has a removable sample: its outermost sample
    outside the window, or else a window sample that another frame also covers.

    Args:
        sel: bool ``[time, units]`` selection (modified copy returned).
        window: bool ``[units]`` calibration region.
        dist: float ``[units]`` distance from the k-space centre.
    """
    sel = sel.copy()
    missing = np.flatnonzero(window & ~sel.any(axis=0))
    if missing.size == 0:
        return sel
    missing = missing[np.argsort(dist[missing], kind="stable")]
    nt = sel.shape[0]
    outer = []
    for t in range(nt):
        idx = np.flatnonzero(sel[t] & ~window)
        outer.append(list(idx[np.lexsort((idx, dist[idx]))]))  # outermost last -> pop()
    n_win = sel[:, window].sum(axis=1)
    cover = sel[:, window].sum(axis=0)
    win_pos = np.full(window.size, -1)
    win_pos[window] = np.arange(int(window.sum()))
    for j, unit in enumerate(missing):
        frames = sorted(range(nt), key=lambda f: (n_win[f], (f - j) % nt))
        frame = next((f for f in frames if outer[f]), None)
        if frame is not None:
            drop = outer[frame].pop()
        else:  # every sample is in the window: move a doubly covered one
            dup = [
                (f, w) for f in frames for w in np.flatnonzero(sel[f] & window) if cover[win_pos[w]] > 1
            ]
            if not dup:
                raise ValueError("cannot cover the calibration region: too few samples")  # guarded by caller
            frame, drop = dup[0]
            cover[win_pos[drop]] -= 1
            n_win[frame] -= 1
        sel[frame, drop] = False
        sel[frame, unit] = True
        n_win[frame] += 1
        cover[win_pos[unit]] += 1
    return sel


# ----------------------------------------------------------------------------- public API


def make_mask(
    pattern: str,
    accel: float,
    shape: tuple[int, int, int],
    *,
    seed: int | None = 0,
    acs_lines: int = 16,
    convention: str = "effective",
    calibration: str = "auto",
    density: str = DENSITIES[0],
) -> SamplingMask:
    """Generate a reproducible sampling mask ``[time, ky, kx]``.

    Args:
        pattern: one of :data:`PATTERNS` (see the module docstring).
        accel: acceleration R >= 1, counted as ``convention`` says.
        shape: ``(time, ky, kx)`` positive integers.
        seed: seed of ``numpy.random.default_rng``; same seed, same mask.  ``None`` draws
            fresh entropy.  Only ``kt_gaussian`` and ``kt_radial`` (start angle) are random.
        acs_lines: width of the central calibration region in ky lines (radial: side of the
            central square); 0 disables calibration regions.
        convention: ``"effective"`` (R over all samples, within :data:`R_TOLERANCE` of the
            request) or ``"cmrxrecon"`` (``acs_lines`` plus ``round(ky/R)`` further lines
            per frame; radial ``round(ky*kx/R)`` further points).
        calibration: ``"auto"``, ``"acs"`` (force a per-frame ACS) or ``"time_average"``
            (no per-frame ACS; kt patterns cover the central region in their union).
        density: ky density of ``kt_gaussian``, one of :data:`DENSITIES` (module docstring):
            ``"broad"`` (default) or ``"kt-focuss"`` (steeper, floor ``1 / (2 accel)``).

    Returns:
        :class:`SamplingMask`; ``mask`` and ``acs`` are bool CPU tensors ``[time, ky, kx]``.

    Raises:
        ValueError: unknown pattern/convention/calibration, ``accel < 1``, bad shape, too many
            ``acs_lines``, an R that cannot be reached within 5 % for this shape, or a
            calibration request the sample budget cannot honour.
    """
    nt, ny, nx = _check_inputs(pattern, accel, shape, seed, acs_lines, convention, calibration, density)
    accel = float(accel)
    radial = pattern == "kt_radial"
    unit = "points" if radial else "ky lines"
    units_per_frame = ny * nx if radial else ny
    acs_units = acs_lines * acs_lines if radial else acs_lines
    grid = shape_str((nt, ny, nx))

    if convention == "effective":
        total = _round_half_up(units_per_frame * nt / accel)
        total = min(max(total, nt), units_per_frame * nt)  # at least one line/point per frame
        achieved = units_per_frame * nt / total
        if abs(achieved - accel) > R_TOLERANCE * accel:
            raise ValueError(
                f"R={accel:g} cannot be reached within {R_TOLERANCE:.0%} for {pattern} on shape {grid} "
                f"[time, ky, kx]: the nearest achievable R is {achieved:.3g} ({total} {unit} in total over "
                f"{nt} frame(s)); use more frames/lines or a different R"
            )
        budget = _split_total(total, nt)
        fits = acs_units <= budget.min()
        fits_auto = acs_lines > 0 and acs_units <= _ACS_MAX_BUDGET_FRACTION * budget.min()
        if calibration == "acs" and not fits:
            raise ValueError(
                f"calibration='acs' needs {acs_units} {unit} per frame for the ACS but R={accel:g} on shape "
                f"{grid} allows only {int(budget.min())} per frame; lower R or acs_lines"
            )
        use_acs = calibration == "acs" or (calibration == "auto" and fits_auto)
        outside = budget - (acs_units if use_acs else 0)
    else:
        further = _round_half_up(units_per_frame / accel)
        use_acs = calibration == "acs" or (calibration == "auto" and acs_lines > 0)
        reserved = acs_units if use_acs else 0
        if further < 1:
            raise ValueError(
                f"R={accel:g} (cmrxrecon convention) leaves round({units_per_frame}/{accel:g}) = 0 further "
                f"{unit} per frame on shape {grid}; use R <= {units_per_frame}"
            )
        if further + reserved > units_per_frame:
            raise ValueError(
                f"R={accel:g} (cmrxrecon convention) needs {reserved} calibration + {further} further {unit} "
                f"per frame, more than the {units_per_frame} available on shape {grid}"
            )
        outside = np.full(nt, further, dtype=np.int64)

    window2d = _window_2d(pattern, ny, nx, acs_lines)
    window = window2d.ravel() if radial else window2d[:, 0]
    needs_cover = not use_acs and pattern != "uniform" and bool(window.any())
    if needs_cover and int(outside.sum()) < int(window.sum()):
        raise ValueError(
            f"{pattern} at R={accel:g} on shape {grid} has no per-frame ACS (calibration={calibration!r}), "
            f"and the {int(outside.sum())} {unit} of all "
            f"frames together cannot cover the central calibration region of {int(window.sum())} {unit} for "
            "time-averaged coil calibration; lower acs_lines (0 disables calibration) or R"
        )

    acs_units_mask = window if use_acs else np.zeros_like(window)
    cand = ~acs_units_mask
    if radial:
        yy, xx = np.meshgrid(np.arange(ny) - ny // 2, np.arange(nx) - nx // 2, indexing="ij")
        dist = np.hypot(yy, xx).ravel()
    else:
        dist = np.abs(np.arange(ny) - ny // 2).astype(np.float64)

    rng = np.random.default_rng(seed)
    if pattern == "uniform":
        sel = _uniform_lines(outside, cand, dist, ny // 2)
    elif pattern == "kt_uniform":
        sel = _kt_uniform_lines(outside, cand, ny // 2)
    elif pattern == "kt_gaussian":
        if density == "kt-focuss":
            sel = _kt_gaussian_lines(outside, cand, dist, rng, _KTFOCUSS_SIGMA_FRACTION, 1.0 / (2.0 * accel))
        else:
            sel = _kt_gaussian_lines(outside, cand, dist, rng)
    else:
        sel = _kt_radial_points(outside, cand, dist, ny, nx, rng)

    if needs_cover:
        sel = _cover_window(sel, window, dist)
    sel |= acs_units_mask[None, :]

    if radial:
        mask_np = sel.reshape(nt, ny, nx)
    else:
        mask_np = np.broadcast_to(sel[:, :, None], (nt, ny, nx))
    mask = torch.from_numpy(np.array(mask_np, copy=True, order="C"))
    acs = torch.from_numpy(np.broadcast_to(window2d, (nt, ny, nx)).copy()) if use_acs else None
    return SamplingMask(
        mask=mask,
        acs=acs,
        pattern=pattern,
        requested_accel=accel,
        convention=convention,
        calibration="acs" if use_acs else "time_average",
        seed=None if seed is None else int(seed),
        acs_lines=int(acs_lines),
        density=density if pattern == "kt_gaussian" else None,
    )


def _format_r(r: float) -> str:
    text = f"{r:.2f}".rstrip("0").rstrip(".")
    return text


def cmrxrecon_name(m: SamplingMask) -> str:
    """CMRxRecon-style name, e.g. ``"ktGaussian24"``, with R counted outside the ACS.

    Masks made in the cmrxrecon convention use their requested R; effective-convention masks
    use their measured :attr:`SamplingMask.r_cmrxrecon` (rounded to 2 decimals, trailing
    zeros dropped, e.g. ``"ktUniform16.68"``).
    """
    if m.pattern not in _CMRX_PREFIX:
        raise ValueError(f"no CMRxRecon name for pattern {m.pattern!r}; known patterns: {', '.join(PATTERNS)}")
    r = m.requested_accel if m.convention == "cmrxrecon" else m.r_cmrxrecon
    if not math.isfinite(r):
        raise ValueError(
            f"mask {shape_str(m.mask.shape)} samples nothing outside its calibration region, so its "
            "CMRxRecon R is infinite and it has no CMRxRecon name"
        )
    return f"{_CMRX_PREFIX[m.pattern]}{_format_r(r)}"


def _cmrx_pattern_and_r(match: re.Match[str]) -> tuple[str, float]:
    prefix = match.group(1).lower()
    return next(p for p, pre in _CMRX_PREFIX.items() if pre.lower() == prefix), float(match.group(2))


def find_cmrxrecon_name(text: str) -> tuple[str, float] | None:
    """The first CMRxRecon mask spelling anywhere in ``text``, or None.

    ``"cine_sax_kus_ktGaussian8"`` -> ``("kt_gaussian", 8.0)``; case-insensitive.  Unlike
    :func:`parse_cmrxrecon_name` it accepts the spelling inside longer names and never raises;
    R is in the cmrxrecon convention and not checked.
    """
    match = _CMRX_TOKEN_RE.search(text)
    return None if match is None else _cmrx_pattern_and_r(match)


def parse_cmrxrecon_name(name: str) -> tuple[str, float]:
    """``"ktGaussian24"`` -> ``("kt_gaussian", 24.0)``; also ``ktUniform8``, ``ktRadial16``, ``Uniform4``.

    Case-insensitive; the name may end a file name after ``_`` (``cine_sax_mask_ktRadial24.mat``).
    The R returned is in the cmrxrecon convention (counted outside the calibration region).
    """
    if not isinstance(name, str):
        raise ValueError(f"CMRxRecon mask name must be a string, got {type(name).__name__}")
    match = _CMRX_NAME_RE.search(name.strip())
    if match is None:
        raise ValueError(
            f"not a CMRxRecon mask name: {name!r}; expected one of "
            f"{', '.join(p + '<R>' for p in _CMRX_PREFIX.values())}, e.g. 'ktGaussian24'"
        )
    pattern, r = _cmrx_pattern_and_r(match)
    if r < 1.0:
        raise ValueError(f"CMRxRecon mask name {name!r} has R={r:g} < 1")
    return pattern, r
