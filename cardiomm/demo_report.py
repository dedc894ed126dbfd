"""Figures and pages of ``cardiomm demo`` (built on :mod:`cardiomm.fidelity.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cardiomm.fidelity import report as rep  # noqa: E402
from cardiomm.fidelity.runner import BIOMARKERS, FidelityResult  # noqa: E402
from cardiomm.machine import machine_line  # noqa: E402


def images_figure(result: FidelityResult, case: str, path: Path) -> Path:
    """Mid slice at end-diastole and end-systole: reference and each reconstruction with its
    segmentation, and the |error| maps at end-diastole."""
    strip = result.strips[case]
    recons = list(strip["recons"])
    vmax = float(np.percentile(strip["reference"], 99.5)) or 1.0
    fig, axes = plt.subplots(3, len(recons) + 1, figsize=(3.2 * (len(recons) + 1), 9.6), squeeze=False)
    for row, (suffix, phase, frame) in enumerate((("", "ED", strip["frame"]), ("_es", "ES", strip["es_frame"]))):
        rep.overlay(axes[row, 0], strip["reference" + suffix], strip["reference_labels" + suffix],
                    f"fully sampled reference, {phase} (frame {frame})", vmax)
        for j, key in enumerate(recons, start=1):
            method, pattern, accel = key
            image, labels = strip["recons" + suffix][key]
            rep.overlay(axes[row, j], image, labels, f"{rep.METHOD_LABELS.get(method, method)}, {pattern} R={accel:g}, {phase}", vmax)
    axes[2, 0].imshow(strip["reference"], cmap="gray", vmin=0, vmax=vmax)
    axes[2, 0].set_title("reference, ED (no overlay)", fontsize=8)
    for j, key in enumerate(recons, start=1):
        axes[2, j].imshow(np.abs(strip["recons"][key][0] - strip["reference"]), cmap="inferno", vmin=0, vmax=0.25 * vmax)
        axes[2, j].set_title("|error| x4, ED", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{case} (SIMULATED), slice {strip['slice']}, end-diastole (top) and end-systole (middle); "
                 "red LV blood, green myocardium, blue RV", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return rep.save_figure(fig, path)


def volume_figure(result: FidelityResult, truth: dict[str, Any] | None, path: Path) -> Path:
    """LV and RV blood volume (mL) over the cardiac cycle: truth (every frame), and the segmented
    reference and reconstructions (every frame, or markers at ED and ES when only those were segmented)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ref = result.runs[0]["reference_biomarkers"]

    def frames_of(bio: dict[str, Any], key: str) -> list[int]:
        n = len(bio[key])
        return list(range(n)) if n != 2 or bio.get("ed_frame") is None else [bio["ed_frame"], bio["es_frame"]]

    for ax, key, title in ((axes[0], "lv_volumes_ml", "LV blood volume (mL)"), (axes[1], "rv_volumes_ml", "RV blood volume (mL)")):
        if truth is not None:
            ax.plot(truth[key], "k-", lw=2, label="truth (phantom labels)")
        ax.plot(frames_of(ref, key), ref[key], "ks", ms=8, mfc="none", ls="--", label="segmented fully sampled reference")
        for i, run in enumerate(result.runs):
            ax.plot(frames_of(run["biomarkers"], key), run["biomarkers"][key], "o", ms=5, color=f"C{i}", ls=":",
                    label=f"{rep.METHOD_LABELS.get(run['method'], run['method'])} R={run['accel_requested']:g}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("frame")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return rep.save_figure(fig, path)


def demo_tables(report: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """``biomarkers``: truth / reference / each method; ``images``: metrics and Dice per method."""
    runs = report["fidelity"]["runs"]
    truth = report["true_biomarkers"]
    ref = runs[0]["reference_biomarkers"]
    names = [rep.METHOD_LABELS.get(r["method"], r["method"]) for r in runs]
    header = ["biomarker", "truth (phantom)", "fully sampled + segmenter", *names]
    rows = [[rep.BIOMARKER_LABELS[k], rep.fmt(truth.get(k), 1), rep.fmt(ref.get(k), 1),
             *[rep.fmt(r["biomarkers"].get(k), 1) for r in runs]] for k in BIOMARKERS]
    img_header = ["method", "R effective", "R CMRxRecon", "PSNR dB", "SSIM", "NMSE", "PSNR dB vs truth",
                  "SSIM vs truth", "Dice LV", "Dice myo", "Dice RV", "s / slice"]
    img_rows = []
    case = report["fidelity"]["cases"][0]
    dref = case.get("reference_segmentation_dice_vs_labels") or {}
    ref_truth = report.get("reference_vs_noise_free") or {}
    img_rows.append(["fully sampled reference", "1.0", "-", "-", "-", "-", rep.fmt(ref_truth.get("psnr_db")),
                     rep.fmt(ref_truth.get("ssim"), 3), rep.fmt(dref.get("lv"), 3),
                     rep.fmt(dref.get("myo"), 3), rep.fmt(dref.get("rv"), 3), "-"])
    for name, r in zip(names, runs):
        d = r.get("dice_vs_labels") or {}
        t = r.get("image_vs_noise_free") or {}
        img_rows.append([name, rep.fmt(r["r_effective"], 1), rep.fmt(r["r_cmrxrecon"], 1), rep.fmt(r["image"]["psnr_db"]),
                         rep.fmt(r["image"]["ssim"], 3), rep.fmt(r["image"]["nmse"], 4), rep.fmt(t.get("psnr_db")),
                         rep.fmt(t.get("ssim"), 3), rep.fmt(d.get("lv"), 3),
                         rep.fmt(d.get("myo"), 3), rep.fmt(d.get("rv"), 3), rep.fmt(r["seconds_per_slice"], 2)])
    return {"biomarkers": (header, rows), "images": (img_header, img_rows)}


NOTES = ("Dice is against the phantom's exact labels. Image metrics are against the root-sum-of-squares of the "
         "fully sampled k-space (which carries the simulated 30 dB noise) and, 'vs truth', against the noiseless "
         "simulation, per slice on the 2D+t magnitude (peak = the reference slice's maximum), averaged "
         "over slices. ED/ES frames are found in each stack (largest/smallest LV volume).")


def biomarker_warnings(report: dict[str, Any]) -> list[str]:
    """Every warning of the biomarker computation (negative EF, missing LV...), named by stack."""
    runs = report["fidelity"]["runs"]
    out = [f"fully sampled reference: {w}" for w in runs[0]["reference_biomarkers"].get("warnings", [])]
    for r in runs:
        out += [f"{rep.METHOD_LABELS.get(r['method'], r['method'])}: {w}" for w in r["biomarkers"].get("warnings", [])]
    return out


def demo_markdown(report: dict[str, Any], figures: list[Path]) -> str:
    tables = demo_tables(report)
    warnings = biomarker_warnings(report)
    lines = ["# CardioMM demo", "", *[f"![{p.stem}]({p.name})" for p in figures], "",
             f"Data: {report['data']}. Raw file: `{report['raw_file']}`.", "",
             f"Segmenter: {report['segmenter']}.", "", "## Biomarkers", "", rep.markdown_table(*tables["biomarkers"]), "",
             *[f"- warning: {w}" for w in warnings], "",
             "## Images and segmentations", "", rep.markdown_table(*tables["images"]), "", NOTES, "",
             f"Machine: {machine_line(report['machine'])}. Total {report['seconds_total']} s.", ""]
    return "\n".join(lines)


def demo_html(report: dict[str, Any], figures: list[Path]) -> str:
    tables = demo_tables(report)
    warnings = "".join(f"<li>{w}</li>" for w in biomarker_warnings(report))
    sections = [f"<p class='note'>{report['data']}.</p>", *[rep.embed_png(p, p.stem) for p in figures],
                "<h2>Biomarkers</h2>", rep.html_table(*tables["biomarkers"]),
                f"<ul class='note'>{warnings}</ul>" if warnings else "",
                "<h2>Images and segmentations</h2>", rep.html_table(*tables["images"]), f"<p>{NOTES}</p>",
                f"<p>Segmenter: {report['segmenter']}. Raw file: <code>{report['raw_file']}</code>.</p>",
                f"<p>Machine: {machine_line(report['machine'])}. Total {report['seconds_total']} s.</p>"]
    run = report["fidelity"]["runs"][0]
    return rep.html_page(f"CardioMM demo: phantom, {run['pattern']} R={run['accel_requested']:g}", sections)
