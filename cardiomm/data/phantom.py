"""A numerical beating-heart phantom (MRXCAT-like short-axis cine), generated from a seed.

:func:`make_phantom` draws a random anatomy (body shape, heart position, size, orientation,
ellipticity, wall thickness, RV size, a tilt of the long axis) and a random but physiological
volume curve, and renders a multi-slice short-axis cine with bSSFP-like contrast:

* LV blood pool (label 1) inside an elliptical LV myocardium ring (label 2); papillary
  muscles appear dark inside the blood pool but are labelled blood pool (ACDC convention);
* RV blood pool (label 3): a crescent wrapped around the septum, with a thin RV free wall;
* atria above the base plane once the base descends in systole (longitudinal shortening);
* body ellipse with a subcutaneous fat layer (bright), chest-wall muscle (grey), lungs
  (dark), liver (grey, growing towards the apex), a vertebra (dark) with the spinal canal
  (bright CSF) and the descending aorta (bright);
* a smooth receive-intensity inhomogeneity and a mild static texture.

Geometry
--------
Slices are stacked from the base (slice 0) to the apex, contiguous unless ``slice_gap_mm``
is given; the heart's long axis spans 90-98 % of the stack.  In every slice and frame the LV cavity is an ellipse whose area follows a
prolate profile along the long axis, scaled so that the *designed* cavity volume (sum of
areas x slice spacing) equals the volume curve exactly; the myocardial area of each slice is
scaled so that the myocardial volume equals ``lv_mass_g / 1.05`` in every frame
(incompressible myocardium: the wall thickens when the cavity shrinks).  The RV crescent's
radial depth is solved in closed form from its area.  The label maps therefore reach the
requested volumes up to pixelisation (a few percent); :attr:`PhantomCine.truth` is computed
from the label maps themselves with :func:`segment.biomarkers.compute_biomarkers`, so it is
exact for the labels.

Motion
------
Frame 0 is end-diastole (R-wave trigger).  Systole lasts ``~330 ms * sqrt(RR / 1 s)``
(about a third of the cycle at 60 bpm), rounded to a whole frame so that end-systole is
sampled; the LV volume falls along a half-cosine, then refills with a fast early (E) phase,
a slow diastasis and an atrial (A) kick back to EDV.  With longitudinal shortening the base
plane descends towards the fixed apex in proportion to the ejected fraction of the stroke
volume.

Images are magnitude float32 scaled to max 1; edges are anti-aliased by rendering the image
on a 2x2 sub-pixel grid and averaging, while labels and the tissue map are evaluated at the
pixel centres (hard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from cardiomm.data.labels import LV_BLOOD, LV_MYOCARDIUM, RV_BLOOD
from segment.biomarkers import CardiacBiomarkers, compute_biomarkers

__all__ = ["TISSUES", "TISSUE_INTENSITY", "PhantomDesign", "PhantomCine", "make_phantom", "volume_curve"]

#: Codes of the tissue map (values 1..3 coincide with the project's label convention).
TISSUES: dict[str, int] = {
    "air": 0,
    "lv_blood": LV_BLOOD,
    "lv_myocardium": LV_MYOCARDIUM,
    "rv_blood": RV_BLOOD,
    "rv_wall": 4,
    "other_blood": 5,  # atria, aorta
    "lung": 6,
    "fat": 7,
    "muscle": 8,  # chest wall, mediastinal soft tissue, atrial walls
    "liver": 9,
    "bone": 10,
    "csf": 11,
    "papillary": 12,  # inside the LV cavity; labelled as LV blood pool
}
#: Nominal bSSFP-like magnitudes (before per-phantom jitter, bias field and texture).
TISSUE_INTENSITY: dict[str, float] = {
    "air": 0.0,
    "lv_blood": 0.95,
    "lv_myocardium": 0.30,
    "rv_blood": 0.93,
    "rv_wall": 0.30,
    "other_blood": 0.90,
    "lung": 0.04,
    "fat": 0.85,
    "muscle": 0.24,
    "liver": 0.36,
    "bone": 0.12,
    "csf": 0.75,
    "papillary": 0.32,
}
MYOCARDIAL_DENSITY = 1.05  # g/mL, same as segment.biomarkers
_T = TISSUES


@dataclass(frozen=True)
class PhantomDesign:
    """What the phantom was asked to be (targets) and the anatomy drawn from the seed.

    The ``*_curve_ml`` arrays are the designed (continuous-geometry) volumes of every
    frame; the label maps reproduce them up to pixelisation.
    """

    edv_ml: float
    esv_ml: float
    lv_mass_g: float
    rv_edv_ml: float
    rv_esv_ml: float
    heart_rate_bpm: float
    es_frame: int
    longitudinal_shortening: float  # base descent at ES as a fraction of the LV length
    lv_curve_ml: np.ndarray  # [frame]
    rv_curve_ml: np.ndarray  # [frame]
    anatomy: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "edv_ml": self.edv_ml,
            "esv_ml": self.esv_ml,
            "lv_mass_g": self.lv_mass_g,
            "rv_edv_ml": self.rv_edv_ml,
            "rv_esv_ml": self.rv_esv_ml,
            "heart_rate_bpm": self.heart_rate_bpm,
            "es_frame": self.es_frame,
            "longitudinal_shortening": self.longitudinal_shortening,
            "lv_curve_ml": [float(v) for v in self.lv_curve_ml],
            "rv_curve_ml": [float(v) for v in self.rv_curve_ml],
            "anatomy": {k: float(v) for k, v in self.anatomy.items()},
        }


@dataclass
class PhantomCine:
    """A rendered phantom cine stack.

    Attributes:
        images: float32 ``[slice, frame, y, x]`` magnitude, max 1.
        labels: uint8 ``[slice, frame, y, x]``: 0 background, 1 LV blood, 2 LV myocardium, 3 RV blood.
        tissue: uint8 ``[slice, frame, y, x]`` tissue codes of :data:`TISSUES`.
        pixel_spacing_mm: ``(y, x)`` pixel size in mm.
        slice_thickness_mm: slice thickness in mm.
        slice_spacing_mm: centre-to-centre slice distance in mm (thickness + gap).
        heart_rate_bpm: heart rate in beats per minute.
        frame_times_ms: ``[frame]`` trigger delay of every frame in ms (frame 0 = ED).
        truth: biomarkers computed exactly from ``labels``.
        design: the requested targets and drawn anatomy.
        seed: the seed that generated it.
    """

    images: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    slice_spacing_mm: float
    heart_rate_bpm: float
    frame_times_ms: np.ndarray
    truth: CardiacBiomarkers
    design: PhantomDesign
    seed: int

    @property
    def description(self) -> str:
        """One line saying what generated these images (used as ``ScanMetadata.source``)."""
        s, f, ny, nx = self.images.shape
        return (
            f"cardiomm.data.phantom.make_phantom(seed={self.seed}): {s} slices x {f} frames x "
            f"{ny}x{nx}, {self.pixel_spacing_mm[0]:g}x{self.pixel_spacing_mm[1]:g} mm, "
            f"{self.slice_thickness_mm:g} mm slices every {self.slice_spacing_mm:g} mm, {self.heart_rate_bpm:.1f} bpm"
        )


# ---------------------------------------------------------------------------------------
# volume curve
# ---------------------------------------------------------------------------------------


def volume_curve(
    n_frames: int,
    edv_ml: float,
    esv_ml: float,
    es_frame: int,
    *,
    early_fraction: float = 0.7,
    atrial_fraction: float = 0.2,
    early_duration: float = 0.35,
    atrial_onset: float = 0.8,
) -> np.ndarray:
    """Ventricular volume of every frame of one cardiac cycle, frame 0 = end-diastole.

    Systole (frames ``0..es_frame``) is a half-cosine from ``edv_ml`` down to ``esv_ml``;
    diastole refills the stroke volume with an early (E) phase taking ``early_fraction`` of it
    over the first ``early_duration`` of diastole, a linear diastasis, and an atrial (A) kick
    of ``atrial_fraction`` starting at ``atrial_onset`` of diastole.  The curve is periodic
    (the frame after the last would be ED again).

    Returns:
        float64 ``[n_frames]`` volumes in mL.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not 0 < esv_ml < edv_ml:
        raise ValueError(f"need 0 < esv_ml < edv_ml, got edv_ml={edv_ml}, esv_ml={esv_ml}")
    if n_frames == 1:
        return np.array([float(edv_ml)])
    if not 1 <= es_frame < n_frames:
        raise ValueError(f"es_frame must lie in 1..{n_frames - 1}, got {es_frame}")
    if not (0 <= early_fraction and 0 <= atrial_fraction and early_fraction + atrial_fraction <= 1):
        raise ValueError("early_fraction and atrial_fraction must be >= 0 and sum to <= 1")
    sv = edv_ml - esv_ml
    phase = np.arange(n_frames) / n_frames
    phase_es = es_frame / n_frames
    vol = np.empty(n_frames)
    sys = phase <= phase_es
    vol[sys] = edv_ml - sv * 0.5 * (1 - np.cos(np.pi * phase[sys] / phase_es))
    tau = (phase[~sys] - phase_es) / (1 - phase_es)  # 0..1 over diastole
    early = early_fraction * 0.5 * (1 - np.cos(np.pi * np.clip(tau / early_duration, 0, 1)))
    diastasis = (1 - early_fraction - atrial_fraction) * np.clip(
        (tau - early_duration) / (atrial_onset - early_duration), 0, 1
    )
    atrial = atrial_fraction * 0.5 * (1 - np.cos(np.pi * np.clip((tau - atrial_onset) / (1 - atrial_onset), 0, 1)))
    vol[~sys] = esv_ml + sv * (early + diastasis + atrial)
    return vol


# ---------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------


def _ellipse_radius(phi: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Polar radius of an ellipse with semi-axes ``a`` (along phi=0) and ``b`` at angle ``phi``."""
    return a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2 + 1e-30)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclass
class _Heart:
    """Per-slice, per-frame heart geometry (all lengths in mm, angles in rad)."""

    a_cav: np.ndarray  # [S, T] semi-axis of the cavity ellipse along psi
    a_epi: np.ndarray  # [S, T]
    h_rv: np.ndarray  # [S, T] maximal radial depth of the RV crescent
    atrial: np.ndarray  # [S, T] bool: slice above the base plane (atria drawn, no labels)
    papillary: np.ndarray  # [S, T] papillary radius (0 = none)
    centre: np.ndarray  # [S, 2] (x, y) of the LV centre in mm, y pointing down the rows
    e_cav: float  # minor/major ratio of the cavity
    e_epi: float
    psi: float  # orientation of the major axis (counter-clockwise from +x, y up)
    theta_rv: float  # direction of the RV from the LV centre (counter-clockwise, y up)
    half_width_rv: float  # half angular extent of the crescent
    q_rv: float  # exponent shaping the crescent ends
    t_rv_wall: float
    atrial_wall: float


def _rv_weight(delta: np.ndarray, half_width: float, q: float) -> np.ndarray:
    inside = np.abs(delta) < half_width
    return np.where(inside, np.cos(0.5 * np.pi * np.clip(delta / half_width, -1, 1)) ** q, 0.0)


def _solve_rv_depth(area: np.ndarray, a_epi: np.ndarray, heart: _Heart) -> np.ndarray:
    """Radial depth ``h`` of the crescent whose area (polar integral) equals ``area`` [S, T]."""
    theta = heart.theta_rv + np.linspace(-heart.half_width_rv, heart.half_width_rv, 721)
    dtheta = theta[1] - theta[0]
    w = _rv_weight(theta - heart.theta_rv, heart.half_width_rv, heart.q_rv)  # [K]
    rho = _ellipse_radius(theta - heart.psi, a_epi[..., None], heart.e_epi * a_epi[..., None])  # [S, T, K]
    i1 = np.sum(rho * w, axis=-1) * dtheta
    i2 = 0.5 * np.sum(w**2) * dtheta
    # area = h * i1 + h^2 * i2
    return (-i1 + np.sqrt(i1**2 + 4 * i2 * area)) / (2 * i2)


def _render_heart(dx: np.ndarray, dy: np.ndarray, s: int, heart: _Heart) -> np.ndarray:
    """Heart tissue codes ``[T, ...]`` at offsets (dx, dy) mm from the LV centre of slice ``s``
    (dy pointing down the rows); 0 where there is no heart."""
    a_c = heart.a_cav[s][:, None, None]
    a_e = heart.a_epi[s][:, None, None]
    h = heart.h_rv[s][:, None, None]
    atrial = heart.atrial[s][:, None, None]
    r_pap = heart.papillary[s][:, None, None]
    up = -dy
    r = np.hypot(dx, up)[None]
    theta = np.arctan2(up, dx)[None]
    phi = theta - heart.psi
    cos_p, sin_p = np.cos(heart.psi), np.sin(heart.psi)
    u = (dx * cos_p + up * sin_p)[None]
    v = (-dx * sin_p + up * cos_p)[None]

    cav = (u / np.maximum(a_c, 1e-9)) ** 2 + (v / np.maximum(heart.e_cav * a_c, 1e-9)) ** 2 <= 1.0
    cav &= a_c > 0
    epi = (u / np.maximum(a_e, 1e-9)) ** 2 + (v / np.maximum(heart.e_epi * a_e, 1e-9)) ** 2 <= 1.0
    epi &= a_e > 0
    rho = _ellipse_radius(phi, a_e, heart.e_epi * a_e)
    delta = _wrap(theta - heart.theta_rv)
    w = _rv_weight(delta, heart.half_width_rv, heart.q_rv)
    outside = (r > rho) & ~epi
    rv = outside & (r <= rho + h * w) & (h > 0)
    wall_width = heart.half_width_rv + heart.t_rv_wall / np.maximum(rho, 5.0)
    rv_wall = outside & ~rv & (np.abs(delta) < wall_width) & (r <= rho + h * w + heart.t_rv_wall) & (h > 0)

    # papillary muscles: two discs on the lateral side at 55% of the cavity radius
    pap = np.zeros_like(cav)
    for offset in (-0.9, 0.9):
        ang = heart.theta_rv + np.pi + offset
        rad = 0.55 * _ellipse_radius(ang - heart.psi, a_c, heart.e_cav * a_c)
        px, py = rad * np.cos(ang), rad * np.sin(ang)
        pap |= (dx[None] - px) ** 2 + (up[None] - py) ** 2 <= r_pap**2
    pap &= cav & (r_pap > 0)

    out = np.zeros(np.broadcast_shapes(cav.shape, rv.shape), dtype=np.uint8)
    blood_code = np.where(atrial, _T["other_blood"], _T["lv_blood"]).astype(np.uint8)
    myo_code = np.where(atrial, _T["muscle"], _T["lv_myocardium"]).astype(np.uint8)
    rv_code = np.where(atrial, _T["other_blood"], _T["rv_blood"]).astype(np.uint8)
    rv_wall_code = np.where(atrial, _T["muscle"], _T["rv_wall"]).astype(np.uint8)
    out = np.where(rv_wall, rv_wall_code, out)
    out = np.where(rv, rv_code, out)
    out = np.where(epi, myo_code, out)
    out = np.where(cav, blood_code, out)
    out = np.where(pap & ~atrial, np.uint8(_T["papillary"]), out)
    return out.astype(np.uint8)


def _render_background(x: np.ndarray, y: np.ndarray, z_frac: float, body: dict[str, float]) -> np.ndarray:
    """Static tissue codes at positions (x, y) mm (y down the rows) of a slice at relative
    depth ``z_frac`` (0 base .. 1 apex)."""
    ax, ay = body["ax"], body["ay"]
    fat = body["fat"]
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.uint8)
    outer = (x / ax) ** 2 + (y / ay) ** 2 <= 1.0
    inner = (x / (ax - fat)) ** 2 + (y / (ay - fat)) ** 2 <= 1.0
    thorax = (x / (ax - fat - body["wall"])) ** 2 + (y / (ay - fat - body["wall"])) ** 2 <= 1.0
    out[outer] = _T["fat"]
    out[inner] = _T["muscle"]
    for side in (-1.0, 1.0):
        lx = side * body["lung_x"] * ax
        lung = ((x - lx) / (body["lung_ax"] * ax)) ** 2 + ((y - body["lung_y"] * ay) / (body["lung_ay"] * ay)) ** 2 <= 1.0
        out[lung & thorax] = _T["lung"]
    liver_scale = 0.35 + 0.65 * z_frac
    liver = ((x - body["liver_x"] * ax) / (body["liver_ax"] * ax * liver_scale)) ** 2 + (
        (y - body["liver_y"] * ay) / (body["liver_ay"] * ay * liver_scale)
    ) ** 2 <= 1.0
    out[liver & inner] = _T["liver"]
    vx, vy = body["spine_x"], body["spine_y"] * ay
    out[(x - vx) ** 2 + (y - vy) ** 2 <= body["vertebra_r"] ** 2] = _T["bone"]
    out[(x - vx) ** 2 + (y - vy - body["vertebra_r"] - 5.0) ** 2 <= 5.5**2] = _T["csf"]
    out[(x - vx - body["aorta_dx"]) ** 2 + (y - vy + body["aorta_dy"]) ** 2 <= body["aorta_r"] ** 2] = _T["other_blood"]
    return out


# ---------------------------------------------------------------------------------------
# main entry point
# ---------------------------------------------------------------------------------------


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def make_phantom(
    seed: int,
    *,
    n_slices: int = 8,
    n_frames: int = 20,
    matrix: tuple[int, int] = (192, 192),
    pixel_spacing_mm: tuple[float, float] = (1.5, 1.5),
    slice_thickness_mm: float = 8.0,
    slice_gap_mm: float = 0.0,
    heart_rate_bpm: float | None = None,
    edv_ml: float | None = None,
    esv_ml: float | None = None,
    lv_mass_g: float | None = None,
    rv_edv_ml: float | None = None,
    rv_esv_ml: float | None = None,
    longitudinal_shortening: float | None = None,
) -> PhantomCine:
    """Render a random beating-heart short-axis cine stack.

    Args:
        seed: seed of every random choice (same seed -> identical phantom).
        n_slices: number of short-axis slices from base (0) to apex; they must
            cover at least 48 mm (``n_slices * (slice_thickness_mm + slice_gap_mm)``); the
            heart's long axis is fitted to that coverage, so few or thin slices make a short,
            wide heart.
        n_frames: cine frames over one cardiac cycle (frame 0 = end-diastole).
        matrix: image size ``(ny, nx)`` in pixels.
        pixel_spacing_mm: ``(y, x)`` pixel size in mm; the field of view must be at least
            ~200 mm in both directions.
        slice_thickness_mm: slice thickness in mm.
        slice_gap_mm: gap between neighbouring slices in mm (slice spacing = thickness + gap;
            volumes use the spacing, as in the summation-of-discs method).
        heart_rate_bpm: heart rate; random in [55, 90] when None.
        edv_ml, esv_ml: LV end-diastolic / end-systolic volumes in mL; random physiological
            values (EDV 100-190 mL, EF 35-70 %) when None.
        lv_mass_g: LV myocardial mass in g; random 80-160 g when None.
        rv_edv_ml, rv_esv_ml: RV volumes in mL; when None RVEDV is 0.95-1.2 x LVEDV and the
            RVEF 45-65 %.
        longitudinal_shortening: descent of the base plane at end-systole as a fraction of
            the LV length (0 disables it); random 0.05-0.15 when None.

    Returns:
        :class:`PhantomCine` with images, labels, tissue map, spacing and the exact truth.

    Raises:
        ValueError: non-positive sizes, inconsistent volumes (ESV >= EDV), a stack too short
            or a field of view too small for the heart.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    for name, value in (("n_slices", n_slices), ("n_frames", n_frames)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if len(tuple(matrix)) != 2 or any(int(m) < 8 for m in matrix):
        raise ValueError(f"matrix must be (ny, nx) with at least 8 pixels each, got {matrix!r}")
    if len(tuple(pixel_spacing_mm)) != 2:
        raise ValueError(f"pixel_spacing_mm must be (y, x) in mm, got {pixel_spacing_mm!r}")
    for name, value in (
        ("pixel_spacing_mm[0]", pixel_spacing_mm[0]),
        ("pixel_spacing_mm[1]", pixel_spacing_mm[1]),
        ("slice_thickness_mm", slice_thickness_mm),
        ("heart_rate_bpm", heart_rate_bpm),
        ("edv_ml", edv_ml),
        ("esv_ml", esv_ml),
        ("lv_mass_g", lv_mass_g),
        ("rv_edv_ml", rv_edv_ml),
        ("rv_esv_ml", rv_esv_ml),
    ):
        _check_positive(name, value)
    if longitudinal_shortening is not None and not 0 <= longitudinal_shortening < 0.4:
        raise ValueError(f"longitudinal_shortening must lie in [0, 0.4), got {longitudinal_shortening!r}")
    ny, nx = int(matrix[0]), int(matrix[1])
    dy, dx = float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])
    if not (np.isfinite(slice_gap_mm) and slice_gap_mm >= 0):
        raise ValueError(f"slice_gap_mm must be >= 0, got {slice_gap_mm!r}")
    thickness = float(slice_thickness_mm)
    ds = thickness + float(slice_gap_mm)  # slice spacing
    coverage = n_slices * ds
    if coverage < 48.0:
        raise ValueError(
            f"{n_slices} slices every {ds:g} mm cover {coverage:g} mm; the phantom heart needs at least 48 mm "
            "(more slices or thicker slices)"
        )
    fov_x, fov_y = nx * dx, ny * dy
    if min(fov_x, fov_y) < 200.0:
        raise ValueError(
            f"field of view {fov_y:g} x {fov_x:g} mm (matrix {ny}x{nx}, spacing {dy:g}x{dx:g} mm) is too small "
            "for the phantom body; it needs at least 200 mm in both directions"
        )

    rng = np.random.default_rng(int(seed))

    # --- function: targets ---------------------------------------------------------
    hr = float(heart_rate_bpm) if heart_rate_bpm is not None else float(rng.uniform(55, 90))
    ef_draw = rng.uniform(0.35, 0.70)
    if edv_ml is None and esv_ml is None:
        edv = float(rng.uniform(100, 190))
        esv = edv * (1 - ef_draw)
    elif edv_ml is None:
        esv = float(esv_ml)
        edv = esv / (1 - ef_draw)
    elif esv_ml is None:
        edv = float(edv_ml)
        esv = edv * (1 - ef_draw)
    else:
        edv, esv = float(edv_ml), float(esv_ml)
    if not esv < edv:
        raise ValueError(f"esv_ml ({esv:g}) must be smaller than edv_ml ({edv:g})")
    mass = float(lv_mass_g) if lv_mass_g is not None else float(rng.uniform(80, 160))
    rv_ratio, rvef_draw = rng.uniform(0.95, 1.2), rng.uniform(0.45, 0.65)
    if rv_edv_ml is None and rv_esv_ml is None:
        rv_edv = edv * rv_ratio
        rv_esv = rv_edv * (1 - rvef_draw)
    elif rv_edv_ml is None:
        rv_esv = float(rv_esv_ml)
        rv_edv = rv_esv / (1 - rvef_draw)
    elif rv_esv_ml is None:
        rv_edv = float(rv_edv_ml)
        rv_esv = rv_edv * (1 - rvef_draw)
    else:
        rv_edv, rv_esv = float(rv_edv_ml), float(rv_esv_ml)
    if not rv_esv < rv_edv:
        raise ValueError(f"rv_esv_ml ({rv_esv:g}) must be smaller than rv_edv_ml ({rv_edv:g})")
    ls_draw = rng.uniform(0.05, 0.15)
    ls = float(longitudinal_shortening) if longitudinal_shortening is not None else float(ls_draw)

    # --- timing ------------------------------------------------------------------------
    rr_ms = 60000.0 / hr
    t_sys_ms = 330.0 * math.sqrt(rr_ms / 1000.0) * rng.uniform(0.93, 1.07)
    if n_frames > 1:
        es_frame = int(np.clip(round(t_sys_ms / rr_ms * n_frames), 1, n_frames - 1))
    else:
        es_frame = 0
    curve_kw = dict(
        early_fraction=rng.uniform(0.6, 0.75),
        atrial_fraction=rng.uniform(0.15, 0.25),
        early_duration=rng.uniform(0.3, 0.4),
        atrial_onset=rng.uniform(0.75, 0.85),
    )
    if n_frames > 1 and es_frame >= n_frames - 1:
        es_frame = max(1, n_frames - 2) if n_frames > 2 else 1
    lv_curve = volume_curve(n_frames, edv, esv, es_frame, **curve_kw)
    rv_curve = volume_curve(n_frames, rv_edv, rv_esv, es_frame, **curve_kw)
    contraction = (edv - lv_curve) / (edv - esv)  # 0 at ED .. 1 at ES
    frame_times = np.arange(n_frames) * rr_ms / n_frames

    # --- anatomy --------------------------------------------------------------------
    length = coverage * rng.uniform(0.9, 0.98)  # base (z=0) to epicardial apex, ED
    apex_wall = rng.uniform(6.0, 9.0)
    cav_power = rng.uniform(2.0, 2.8)
    rv_length = length * rng.uniform(0.78, 0.92)
    rv_power = rng.uniform(1.8, 2.6)
    e_cav = rng.uniform(0.8, 0.97)
    e_epi = math.sqrt(e_cav)
    psi = rng.uniform(0, np.pi)
    theta_rv = np.deg2rad(rng.uniform(140, 175))
    half_width = np.deg2rad(rng.uniform(75, 100))
    q_rv = rng.uniform(0.6, 0.9)
    t_rv_wall = rng.uniform(3.0, 4.5)
    tilt = rng.uniform(-0.15, 0.15, size=2)  # mm in-plane drift per mm along the long axis
    t_ref = rng.uniform(7.0, 10.0)  # shapes the myocardial area profile only

    z = (np.arange(n_slices) + 0.5) * ds  # slice centres from the base [S]
    z_base = ls * length * contraction  # [T]
    z_cav_apex = length - apex_wall * (1 + 0.3 * contraction)  # [T]

    def profile(zc: np.ndarray, z0: np.ndarray, z1: np.ndarray, power: float) -> np.ndarray:
        u = (zc[:, None] - z0[None]) / np.maximum(z1 - z0, 1e-6)[None]
        return np.where((u >= 0) & (u < 1), 1 - np.clip(u, 0, 1) ** power, 0.0)  # [S, T]

    f_cav = profile(z, z_base, z_cav_apex, cav_power)
    if np.any(f_cav.sum(0) <= 0):
        raise ValueError("the LV cavity misses every slice; use more slices")
    area_cav = f_cav * (lv_curve * 1000.0 / ds / f_cav.sum(0))[None]  # mm^2 [S, T]
    r_cav = np.sqrt(area_cav / np.pi)
    # myocardial area: ring of nominal thickness t_ref around the cavity, capped at the apex
    above_cap = (z[:, None] >= z_base[None]) & (z[:, None] < length)
    cap = np.clip((z[:, None] - z_cav_apex[None]) / np.maximum(length - z_cav_apex[None], 1e-6), 0, 1)
    g = np.where(above_cap, 2 * r_cav * t_ref + t_ref**2 * (1 - cap**2), 0.0)
    myo_volume = mass / MYOCARDIAL_DENSITY * 1000.0  # mm^3
    area_myo = g * (myo_volume / ds / g.sum(0))[None]
    a_cav = np.sqrt(area_cav / (np.pi * e_cav))
    a_epi = np.sqrt((area_cav + area_myo) / (np.pi * e_epi))

    f_rv = profile(z, z_base, np.full_like(z_base, rv_length), rv_power)
    if np.any(f_rv.sum(0) <= 0):
        raise ValueError("the RV misses every slice; use more slices")
    area_rv = f_rv * (rv_curve * 1000.0 / ds / f_rv.sum(0))[None]

    # atria above the base plane (no labels): LA ~ 60% of the basal cavity, 2 mm wall
    atrial = (z[:, None] < z_base[None]) & np.ones((1, n_frames), bool)
    la_area = 0.6 * area_cav[0, 0]
    a_la = math.sqrt(la_area / (np.pi * e_cav))
    a_la_epi = math.sqrt(np.pi * e_cav * (a_la + 2.0) ** 2 / (np.pi * e_epi))
    a_cav = np.where(atrial, a_la, a_cav)
    a_epi = np.where(atrial, a_la_epi, a_epi)
    area_rv = np.where(atrial, 0.5 * area_rv[0, 0], area_rv)

    heart = _Heart(
        a_cav=a_cav,
        a_epi=a_epi,
        h_rv=np.zeros_like(a_cav),
        atrial=atrial,
        papillary=np.zeros_like(a_cav),
        centre=np.zeros((n_slices, 2)),
        e_cav=e_cav,
        e_epi=e_epi,
        psi=psi,
        theta_rv=theta_rv,
        half_width_rv=half_width,
        q_rv=q_rv,
        t_rv_wall=t_rv_wall,
        atrial_wall=2.0,
    )
    heart.h_rv = np.where(area_rv > 0, _solve_rv_depth(area_rv, a_epi, heart), 0.0)
    u_mid = (z[:, None] - z_base[None]) / np.maximum(z_cav_apex - z_base, 1e-6)[None]
    mid = (u_mid > 0.2) & (u_mid < 0.75) & ~atrial
    heart.papillary = np.where(mid, np.minimum(3.5, 0.15 * r_cav), 0.0)
    heart.papillary = np.where(heart.papillary >= 1.5, heart.papillary, 0.0)

    # extent of the heart around the LV centre (x right, y down), for the body and the crop
    theta = theta_rv + np.linspace(-half_width, half_width, 181)
    w = _rv_weight(theta - theta_rv, half_width, q_rv)
    a_max = a_epi.max()
    r_out = a_max + heart.h_rv.max() * w + t_rv_wall
    pts_x = np.concatenate([r_out * np.cos(theta), a_max * np.cos(np.linspace(0, 2 * np.pi, 73))])
    pts_y = np.concatenate([-r_out * np.sin(theta), -a_max * np.sin(np.linspace(0, 2 * np.pi, 73))])
    reach = float(np.max(np.hypot(pts_x, pts_y))) + 3.0

    # --- body -----------------------------------------------------------------------
    body = {
        "ax": rng.uniform(118, 140),
        "ay": rng.uniform(82, 105),
        "fat": rng.uniform(6, 16),
        "wall": rng.uniform(8, 14),
        "lung_x": rng.uniform(0.45, 0.55),
        "lung_y": rng.uniform(-0.15, 0.05),
        "lung_ax": rng.uniform(0.3, 0.38),
        "lung_ay": rng.uniform(0.55, 0.7),
        "liver_x": rng.uniform(-0.45, -0.3),
        "liver_y": rng.uniform(0.15, 0.35),
        "liver_ax": rng.uniform(0.4, 0.5),
        "liver_ay": rng.uniform(0.45, 0.6),
        "spine_x": rng.uniform(-6, 6),
        "spine_y": rng.uniform(0.55, 0.65),
        "vertebra_r": rng.uniform(13, 17),
        "aorta_r": rng.uniform(10, 13),
        "aorta_dx": rng.uniform(18, 26),
        "aorta_dy": rng.uniform(18, 24),
    }
    offset = np.array([rng.uniform(12, 30), rng.uniform(-22, -5)])  # heart left (image right), anterior
    centres_rel = offset[None] + tilt[None] * (z - z.mean())[:, None]  # [S, 2]
    # grow the body (up to the field of view), then pull the heart in, until the heart fits
    limit_x, limit_y = 0.48 * fov_x, 0.48 * fov_y
    for _ in range(40):
        margin = body["fat"] + body["wall"] * 0.5
        ex = (centres_rel[:, :1] + pts_x[None] * 1.05) / (body["ax"] - margin)
        ey = (centres_rel[:, 1:] + pts_y[None] * 1.05) / (body["ay"] - margin)
        if np.max(ex**2 + ey**2) <= 1.0:
            break
        body["ax"] = min(body["ax"] * 1.03, limit_x)
        body["ay"] = min(body["ay"] * 1.03, limit_y)
        centres_rel = centres_rel * 0.95
    else:
        raise ValueError(
            f"the phantom heart (reach {reach:.0f} mm around the LV centre) does not fit the field of view "
            f"{fov_y:g} x {fov_x:g} mm; use a larger matrix or pixel spacing, or smaller volumes"
        )
    heart.centre = centres_rel

    # --- per-phantom contrast, bias field, texture ----------------------------------
    lut = np.zeros(max(_T.values()) + 1, dtype=np.float32)
    for name, code in _T.items():
        lut[code] = TISSUE_INTENSITY[name] * (rng.uniform(0.92, 1.08) if code else 0.0)
    lut[_T["lv_blood"]] = lut[_T["rv_blood"]] = max(lut[_T["lv_blood"]], lut[_T["rv_blood"]])
    lut[_T["papillary"]] = lut[_T["lv_myocardium"]] * 1.05
    lut[_T["rv_wall"]] = lut[_T["lv_myocardium"]]
    bias_min = rng.uniform(0.55, 0.8)
    bias_centre = offset + rng.uniform(-40, 40, size=2)
    bias_sigma = rng.uniform(0.45, 0.8, size=2) * np.array([fov_x, fov_y])
    texture_amp = rng.uniform(0.02, 0.05)
    texture_seed = int(rng.integers(2**31))

    # --- render -----------------------------------------------------------------------
    ys = (np.arange(ny) - ny // 2) * dy
    xs = (np.arange(nx) - nx // 2) * dx
    sub = ((-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25))  # (y, x) pixel fractions
    images = np.empty((n_slices, n_frames, ny, nx), dtype=np.float32)
    tissue = np.empty((n_slices, n_frames, ny, nx), dtype=np.uint8)
    tex_rng = np.random.default_rng(texture_seed)
    half_y = int(math.ceil(reach / dy)) + 2
    half_x = int(math.ceil(reach / dx)) + 2
    for s in range(n_slices):
        z_frac = s / max(n_slices - 1, 1)
        cx, cy = heart.centre[s]
        bg_centre = _render_background(xs[None, :], ys[:, None], z_frac, body)
        bg_sub = [_render_background(xs[None, :] + fx * dx, ys[:, None] + fy * dy, z_frac, body) for fy, fx in sub]
        img_static = np.mean([lut[b] for b in bg_sub], axis=0)
        # crop around the heart
        iy0 = max(int(np.floor(cy / dy)) + ny // 2 - half_y, 0)
        iy1 = min(int(np.floor(cy / dy)) + ny // 2 + half_y + 1, ny)
        ix0 = max(int(np.floor(cx / dx)) + nx // 2 - half_x, 0)
        ix1 = min(int(np.floor(cx / dx)) + nx // 2 + half_x + 1, nx)
        cy_rel = ys[iy0:iy1, None] - cy
        cx_rel = xs[None, ix0:ix1] - cx
        heart_c = _render_heart(cx_rel, cy_rel, s, heart)  # [T, h, w]
        crop_bg = bg_centre[iy0:iy1, ix0:ix1]
        tis = np.broadcast_to(bg_centre, (n_frames, ny, nx)).copy()
        tis[:, iy0:iy1, ix0:ix1] = np.where(heart_c > 0, heart_c, crop_bg[None])
        tissue[s] = tis
        acc = np.zeros((n_frames, iy1 - iy0, ix1 - ix0), dtype=np.float32)
        for (fy, fx), b in zip(sub, bg_sub):
            hs = _render_heart(cx_rel + fx * dx, cy_rel + fy * dy, s, heart)
            acc += lut[np.where(hs > 0, hs, b[iy0:iy1, ix0:ix1][None])]
        img = np.broadcast_to(img_static, (n_frames, ny, nx)).copy()
        img[:, iy0:iy1, ix0:ix1] = acc / len(sub)
        # bias field and texture (static per slice)
        bx = (xs[None, :] - bias_centre[0]) / bias_sigma[0]
        by = (ys[:, None] - bias_centre[1] - 3.0 * (s - n_slices / 2)) / bias_sigma[1]
        bias = bias_min + (1 - bias_min) * np.exp(-0.5 * (bx**2 + by**2))
        noise = ndimage.gaussian_filter(tex_rng.standard_normal((ny, nx)), sigma=1.5)
        noise *= texture_amp / max(float(noise.std()), 1e-12)
        images[s] = img * (bias * (1 + noise)).astype(np.float32)[None]
    images = np.clip(images, 0, None)
    images /= max(float(images.max()), 1e-12)

    labels = np.where(tissue == _T["papillary"], LV_BLOOD, tissue)
    labels = np.where(np.isin(labels, (LV_BLOOD, LV_MYOCARDIUM, RV_BLOOD)), labels, 0).astype(np.uint8)
    truth = compute_biomarkers(labels, (dy, dx), ds, heart_rate_bpm=hr)

    anatomy = {
        "lv_length_mm": length,
        "rv_length_mm": rv_length,
        "ellipticity": e_cav,
        "orientation_rad": psi,
        "rv_direction_rad": theta_rv,
        "rv_half_width_rad": half_width,
        "rv_wall_mm": t_rv_wall,
        "lv_centre_x_mm": float(heart.centre[:, 0].mean()),
        "lv_centre_y_mm": float(heart.centre[:, 1].mean()),
        "ed_wall_thickness_mm": float(np.median((a_epi - a_cav)[~atrial[:, 0] & (a_cav[:, 0] > 0), 0]))
        if np.any(~atrial[:, 0] & (a_cav[:, 0] > 0))
        else 0.0,
        **{f"body_{k}": float(v) for k, v in body.items()},
    }
    design = PhantomDesign(
        edv_ml=edv,
        esv_ml=esv,
        lv_mass_g=mass,
        rv_edv_ml=rv_edv,
        rv_esv_ml=rv_esv,
        heart_rate_bpm=hr,
        es_frame=es_frame,
        longitudinal_shortening=ls,
        lv_curve_ml=lv_curve,
        rv_curve_ml=rv_curve,
        anatomy=anatomy,
    )
    return PhantomCine(
        images=images,
        labels=labels,
        tissue=tissue,
        pixel_spacing_mm=(dy, dx),
        slice_thickness_mm=thickness,
        slice_spacing_mm=ds,
        heart_rate_bpm=hr,
        frame_times_ms=frame_times,
        truth=truth,
        design=design,
        seed=int(seed),
    )
