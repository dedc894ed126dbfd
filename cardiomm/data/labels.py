"""The project-wide segmentation label convention (phantom, Sunnybrook contours, networks).

Label images are ``uint8 [..., y, x]``; every CardioMM reader, simulator and network uses these
values.  External label maps with other conventions (ACDC: 1 RV, 2 MYO, 3 LV) are converted to
these before use.
"""

from __future__ import annotations

__all__ = ["LABELS", "LABEL_OVERLAY_RGBA", "BACKGROUND", "LV_BLOOD", "LV_MYOCARDIUM", "RV_BLOOD", "LABEL_IGNORE"]

BACKGROUND = 0
LV_BLOOD = 1  # left-ventricular blood pool (inside the endocardium)
LV_MYOCARDIUM = 2  # between endocardium and epicardium
RV_BLOOD = 3  # right-ventricular blood pool
#: Label value of unlabelled pixels/frames (ignored by losses and metrics).
LABEL_IGNORE = 255

#: label value -> name
LABELS: dict[int, str] = {
    BACKGROUND: "background",
    LV_BLOOD: "lv_blood",
    LV_MYOCARDIUM: "lv_myocardium",
    RV_BLOOD: "rv_blood",
}

#: Overlay colours (RGBA in [0, 1]) of labels 0 (transparent), 1 (red), 2 (green), 3 (blue), for
#: ``matplotlib.colors.ListedColormap`` with ``vmin=0, vmax=3``.
LABEL_OVERLAY_RGBA: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.0), (0.9, 0.2, 0.2, 0.45), (0.2, 0.8, 0.2, 0.45), (0.2, 0.4, 1.0, 0.45),
)
