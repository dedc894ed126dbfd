"""Figure and Markdown of the ``cardiomm demo`` report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cardiomm.atomic import atomic_path


def demo_figure(
    reference: np.ndarray, images: dict[str, np.ndarray], phantom: Any, slice_index: int, report: dict, path: Path
) -> None:
    """Reference and every method at end-diastole and end-systole, with |error| maps.

    Args:
        reference: ``[time, y, x]`` magnitude of one slice.
        images: method -> ``[time, y, x]`` magnitude of the same slice.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = phantom.truth
    frames = [("end-diastole", truth.ed_frame), ("end-systole", truth.es_frame)]
    cols = 1 + len(images)
    fig, axes = plt.subplots(4, cols, figsize=(2.6 * cols, 10.4), constrained_layout=True)
    vmax = float(np.percentile(reference, 99.5))
    for r, (name, f) in enumerate(frames):
        axes[2 * r, 0].imshow(reference[f], cmap="gray", vmin=0, vmax=vmax)
        axes[2 * r, 0].set_title(f"fully sampled\n{name} (frame {f})", fontsize=8)
        axes[2 * r + 1, 0].axis("off")
        for c, (method, img) in enumerate(images.items(), start=1):
            mean = report["mean_over_slices"][method]
            axes[2 * r, c].imshow(img[f], cmap="gray", vmin=0, vmax=vmax)
            axes[2 * r, c].set_title(f"{method}\n{mean['psnr_db']:.1f} dB (mean over slices)", fontsize=8)
            axes[2 * r + 1, c].imshow(np.abs(img[f] - reference[f]), cmap="inferno", vmin=0, vmax=0.25 * vmax)
            axes[2 * r + 1, c].set_title("|error| x4", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    mask = report["mask"]
    fig.suptitle(
        f"SIMULATED phantom, slice {slice_index}: {mask['pattern']} R_eff {mask['r_effective']:.1f} "
        f"(CMRxRecon R {mask['r_cmrxrecon']:.1f})",
        fontsize=10,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def demo_markdown(report: dict, png_name: str) -> str:
    mask = report["mask"]
    lines = [
        "# CardioMM demo",
        "",
        f"![reconstructions at end-diastole and end-systole]({png_name})",
        "",
        f"Data: {report['data']}. Raw file: `{report['raw_file']}`, k-space "
        f"{report['shape_slice_coil_time_ky_kx']} (slice, coil, time, ky, kx).",
        "",
        f"Sampling: {mask['describe']}.",
        "",
        f"Reference: {report['reference']}. Metrics: {report['metrics']}. Device: {report['device']}. "
        f"Total time: {report['seconds_total']} s.",
        "",
        "| method | PSNR (dB) | SSIM | NMSE | s / slice |",
        "|---|---|---|---|---|",
    ]
    for method, v in report["mean_over_slices"].items():
        lines.append(f"| {method} | {v['psnr_db']:.2f} | {v['ssim']:.3f} | {v['nmse']:.4f} | {v['seconds']:.2f} |")
    t = report["true_biomarkers"]
    lines += [
        "",
        "True biomarkers of the phantom (from its label maps):",
        "",
        "| LVEDV (mL) | LVESV (mL) | LVEF (%) | LV mass (g) | RVEDV (mL) | RVEF (%) |",
        "|---|---|---|---|---|---|",
        "| " + " | ".join(
            f"{t[k]:.1f}" if isinstance(t.get(k), (int, float)) else "n/a"
            for k in ("lvedv_ml", "lvesv_ml", "lvef_percent", "lv_mass_g", "rvedv_ml", "rvef_percent")
        ) + " |",
    ]
    return "\n".join(lines) + "\n"
