"""Figures, HTML and Markdown for the biomarker-fidelity benchmark and the demo.

Every figure is a matplotlib PNG written atomically beside the report; the HTML embeds them
(base64), so the report is one file that can be mailed around.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from cardiomm.atomic import atomic_path  # noqa: E402
from cardiomm.data.labels import LABEL_OVERLAY_RGBA  # noqa: E402
from cardiomm.fidelity.methods import METHOD_LABELS  # noqa: E402
from cardiomm.fidelity.runner import BIOMARKERS, FidelityResult  # noqa: E402
from recon.masks import pattern_label  # noqa: E402

#: Overlay colours of labels 1 (LV blood), 2 (LV myocardium), 3 (RV blood).
LABEL_COLOURS = ListedColormap(LABEL_OVERLAY_RGBA)

BIOMARKER_LABELS = {
    "lvedv_ml": "LVEDV (mL)",
    "lvesv_ml": "LVESV (mL)",
    "lvef_percent": "LVEF (%)",
    "lv_mass_g": "LV mass (g)",
    "rvedv_ml": "RVEDV (mL)",
    "rvef_percent": "RVEF (%)",
}


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def overlay(ax: plt.Axes, image: np.ndarray, labels: np.ndarray | None, title: str, vmax: float) -> None:
    """Grey image with the label map over it."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=vmax)
    if labels is not None:
        ax.imshow(np.where(labels == 255, 0, labels), cmap=LABEL_COLOURS, vmin=0, vmax=3, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def error_vs_r_figure(result: FidelityResult, path: Path) -> Path:
    """PSNR, LV Dice and mean |error| of each biomarker against R, one line per method and pattern."""
    summary = result.summary()
    panels = ["psnr_db", "dice_lv", *BIOMARKERS]
    ncol = 4
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), squeeze=False)
    styles = ["-", "--", ":", "-."]
    patterns = sorted({r["pattern"] for r in summary})
    methods = list(dict.fromkeys(r["method"] for r in summary))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, panel in zip(axes.ravel(), panels):
        for method in methods:
            for pi, pattern in enumerate(patterns):
                rows = sorted((r for r in summary if r["method"] == method and r["pattern"] == pattern),
                              key=lambda r: r["accel_requested"])
                if not rows:
                    continue
                x = [r["r_effective"] for r in rows]
                if panel == "psnr_db":
                    y = [r["psnr_db"] for r in rows]
                elif panel == "dice_lv":
                    y = [r["dice"]["lv"] for r in rows]
                else:
                    y = [r["bland_altman"][panel]["mean_abs_difference"] for r in rows]
                y = [np.nan if v is None else v for v in y]
                ax.plot(x, y, styles[pi % len(styles)], marker="o", ms=3, color=colours[method],
                        label=f"{_label(method)} {pattern}")
        title = {"psnr_db": "PSNR (dB)", "dice_lv": "LV Dice vs reference"}.get(panel, f"mean |error| {BIOMARKER_LABELS.get(panel, panel)}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("R (effective)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, path)


def bland_altman_figure(result: FidelityResult, path: Path, accel: float | None = None) -> Path:
    """One Bland-Altman panel per biomarker at acceleration ``accel`` (default: the highest):
    difference (method - reference) against the mean of both, every case and pattern a point,
    with each method's bias and 95% limits of agreement."""
    runs = result.runs
    if accel is None:
        accel = max(r["accel_requested"] for r in runs)
    runs = [r for r in runs if r["accel_requested"] == accel]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    for ax, key in zip(axes.ravel(), BIOMARKERS):
        for i, method in enumerate(methods):
            pairs = [(r["reference_biomarkers"].get(key), r["biomarkers"].get(key)) for r in runs if r["method"] == method]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not pairs:
                continue
            ref, test = np.array(pairs, dtype=float).T
            diff, mean = test - ref, 0.5 * (test + ref)
            ax.scatter(mean, diff, s=18, color=f"C{i}", label=_label(method))
            bias = diff.mean()
            sd = diff.std(ddof=1) if len(diff) > 1 else 0.0
            ax.axhline(bias, color=f"C{i}", lw=1)
            for lim in (bias - 1.96 * sd, bias + 1.96 * sd):
                ax.axhline(lim, color=f"C{i}", lw=0.8, ls="--")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(BIOMARKER_LABELS[key], fontsize=9)
        ax.set_xlabel("mean of method and reference", fontsize=8)
        ax.set_ylabel("method - reference", fontsize=8)
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8)
    fig.suptitle(f"Bland-Altman at R = {accel:g} (lines: bias and 95% limits of agreement)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return save_figure(fig, path)


def image_strip_figure(result: FidelityResult, case: str, path: Path, pattern: str | None = None) -> Path:
    """Mid slice at end-diastole: reference, then each method at each R (rows), with segmentations."""
    strip = result.strips[case]
    keys = list(strip["recons"])
    if pattern is None:
        pattern = keys[0][1]
    methods = list(dict.fromkeys(k[0] for k in keys if k[1] == pattern))
    accels = sorted({k[2] for k in keys if k[1] == pattern})
    vmax = float(np.percentile(strip["reference"], 99.5)) or 1.0
    fig, axes = plt.subplots(len(methods), len(accels) + 1, figsize=(2.2 * (len(accels) + 1), 2.3 * len(methods)), squeeze=False)
    for i, method in enumerate(methods):
        if i == 0:
            overlay(axes[i, 0], strip["reference"], strip["reference_labels"], "fully sampled reference", vmax)
        else:
            axes[i, 0].axis("off")
        for j, accel in enumerate(accels):
            image, labels = strip["recons"][(method, pattern, accel)]
            overlay(axes[i, j + 1], image, labels, f"{_label(method)}\n{pattern} R={accel:g}", vmax)
    fig.suptitle(f"{case}: slice {strip['slice']}, frame {strip['frame']} (ED); colours: LV blood, myocardium, RV", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save_figure(fig, path)


def fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def summary_table_rows(result: FidelityResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (one row per method, pattern and R)."""
    summary = sorted(result.summary(), key=lambda r: (r["pattern"], r["accel_requested"], r["method"]))
    truth = any(r["psnr_db_noise_free"] is not None for r in summary)  # some case is simulated
    header = ["method", "pattern", "R eff", "R CMRxRecon", "PSNR dB", "SSIM"]
    header += ["PSNR dB vs noise-free", "SSIM vs noise-free"] if truth else []
    header += ["Dice LV", "Dice myo", "Dice RV"]
    header += [f"d{BIOMARKER_LABELS[k]} bias [LoA]" for k in BIOMARKERS] + ["s/slice"]
    rows = []
    for r in summary:
        row = [_label(r["method"]), pattern_label(r["pattern"], r.get("mask_density")), fmt(r["r_effective"], 1),
               fmt(r["r_cmrxrecon"], 1), fmt(r["psnr_db"]), fmt(r["ssim"], 3)]
        row += [fmt(r["psnr_db_noise_free"]), fmt(r["ssim_noise_free"], 3)] if truth else []
        row += [fmt(r["dice"]["lv"], 3), fmt(r["dice"]["myo"], 3), fmt(r["dice"]["rv"], 3)]
        for k in BIOMARKERS:
            ba = r["bland_altman"][k]
            cell = fmt(ba["mean_difference"], 1)
            if ba["n"] and ba["n"] > 1:
                cell += f" [{fmt(ba['loa_low'], 1)}, {fmt(ba['loa_high'], 1)}]"
            row.append(cell)
        row.append(fmt(r["seconds_per_slice"], 2))
        rows.append(row)
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embed_png(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


HTML_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f2f2f2}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}
figure{margin:1em 0}figcaption{font-size:12px;color:#555}.note{background:#fff7e0;padding:.5em 1em;border-left:4px solid #e0a000}
"""


def html_page(title: str, sections: Sequence[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>" + "\n".join(sections) + "</body></html>")
