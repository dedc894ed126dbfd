"""Benchmark of the classical reconstructions on a simulated multi-coil cine slice.

Data (simulated): one mid-ventricular slice of the built-in beating-heart phantom
(``cardiomm.data.phantom``), turned into a multi-coil acquisition (birdcage coil maps, smooth
background phase, complex Gaussian noise) by ``cardiomm.data.simulate``.  Reference: root-sum-
of-squares of the fully sampled coil images.  For each pattern and acceleration R (effective:
grid samples / samples kept, calibration included) the k-space is undersampled, coil maps are
estimated from the undersampled data itself (per-frame ACS where the mask has one, otherwise the
time-averaged k-space), and every method reconstructs it.

Writes ``<out>/recon_baselines.json`` (every number), ``.md`` (figure first, then the table) and
``.png`` (PSNR vs R per method and an image grid at the highest R).

    python benchmarks/recon_baselines.py                # full run (256x256, 12 frames, 10 coils)
    python benchmarks/recon_baselines.py --quick        # small smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from machine import machine_info, machine_line  # benchmarks/ is the script's folder

from cardiomm.atomic import atomic_path, write_json_atomic, write_text_atomic
from cardiomm.data.phantom import make_phantom
from cardiomm.data.simulate import simulate_kspace
from recon.classical import METHOD_LABELS as LABELS
from recon.classical import METHODS
from recon.conventions import ifft2c, rss
from recon.masks import make_mask
from recon.metrics import image_metrics
from recon.pipeline import reconstruct
from cardiomm.allocator import tune_cpu_allocator

METHOD_ORDER = ["zero-filled", "cg-sense", "cs", "kt-sparse", "lps", "st-tv"]


def simulated_slice(matrix: int, frames: int, coils: int, seed: int, snr_db: float):
    """One phantom slice as a simulated multi-coil acquisition: (kspace [1, coil, t, ky, kx], reference [1, t, y, x])."""
    spacing = 288.0 / matrix  # 288 mm field of view whatever the matrix
    phantom = make_phantom(seed, n_slices=8, n_frames=frames, matrix=(matrix, matrix), pixel_spacing_mm=(spacing, spacing))
    mid = phantom.images[4:5]  # mid-ventricular slice
    acq = simulate_kspace(mid, n_coils=coils, seed=seed, snr_db=snr_db)
    kspace = torch.as_tensor(acq.kspace)
    reference = rss(ifft2c(kspace))
    return kspace, reference, acq.metadata


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    kspace, reference, meta = simulated_slice(args.matrix, args.frames, args.coils, args.seed, args.snr_db)
    shape = tuple(kspace.shape[-3:])
    rows = []
    images = {}
    methods = [m for m in METHOD_ORDER if m in args.methods]
    with Progress() as progress:
        task = progress.add_task("reconstructing", total=len(args.patterns) * len(args.accels) * len(methods))
        for pattern in args.patterns:
            for accel in args.accels:
                sm = make_mask(pattern, accel, shape, seed=args.seed)
                for method in methods:
                    progress.update(task, description=f"{pattern} R={accel:g} {method}")
                    res = reconstruct(kspace, sm, method, device=device, sens_method=args.sens_method)
                    image = res.image.detach().cpu()
                    m = image_metrics(reference[0], image[0].abs())
                    mz = image_metrics(reference[0], image[0].abs(), normalization="cmrxrecon")
                    rows.append({
                        "pattern": pattern,
                        "requested_r": accel,
                        "r_effective": round(sm.r_effective, 3),
                        "r_cmrxrecon": round(sm.r_cmrxrecon, 3),
                        "calibration": sm.calibration,
                        "method": method,
                        "psnr_db": round(m.psnr_db, 3),
                        "ssim": round(m.ssim, 4),
                        "nmse": float(f"{m.nmse:.5g}"),
                        "cmrxrecon_psnr_db": round(mz.psnr_db, 3),
                        "cmrxrecon_ssim": round(mz.ssim, 4),
                        "cmrxrecon_nmse": float(f"{mz.nmse:.5g}"),
                        "seconds_recon": round(res.seconds, 3),
                        "seconds_coil_maps": round(res.sens_seconds, 3),
                        "seconds_per_slice": round(res.seconds + res.sens_seconds, 3),
                        "cpu_seconds_per_slice": round(res.cpu_seconds, 3),
                    })
                    if accel in (min(args.accels), max(args.accels)):
                        images[(pattern, accel, method)] = image[0, 0].abs().numpy()
                    progress.advance(task)
    return {
        "benchmark": "classical reconstructions of a simulated multi-coil cine slice",
        "data": {
            "description": "SIMULATED: mid-ventricular slice of the CardioMM beating-heart phantom, "
            f"{args.coils}-coil birdcage sensitivities, smooth background phase, noise at {args.snr_db} dB SNR",
            "phantom_seed": args.seed,
            "shape_coil_time_ky_kx": list(kspace.shape[1:]),
            "reference": "root-sum-of-squares of the fully sampled coil images",
            "coil_maps": f"estimated from the undersampled data ({args.sens_method}; ACS or time-averaged k-space)",
            "metadata": meta.to_dict(),
        },
        "metrics": "volume: PSNR over the 2D+t magnitude volume with peak = max(reference); SSIM mean over frames; "
        "NMSE over the volume. cmrxrecon_*: per-frame z-score first (CMRxRecon 2024).",
        "machine": machine_info(device),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": rows,
        "_images": images,
        "_reference": reference[0, 0].numpy(),
    }


def figure(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    patterns = sorted({r["pattern"] for r in rows}, key=lambda p: [r["pattern"] for r in rows].index(p))
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in rows)]
    images, ref = report["_images"], report["_reference"]
    r_hi = max(r["requested_r"] for r in rows)
    grid_pattern = patterns[0]
    fig = plt.figure(figsize=(3.0 * (len(methods) + 1), 3.0 * (len(patterns) + 2) * 0.9), constrained_layout=True)
    gs = fig.add_gridspec(len(patterns) + 2, len(methods) + 1)
    for i, pattern in enumerate(patterns):
        ax = fig.add_subplot(gs[i, :])
        for method in methods:
            sel = [r for r in rows if r["pattern"] == pattern and r["method"] == method]
            ax.plot([r["r_effective"] for r in sel], [r["psnr_db"] for r in sel], "o-", label=LABELS[method])
        ax.set_xlabel("effective acceleration R")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{pattern}: PSNR vs R (simulated phantom slice)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3)
    vmax = float(np.percentile(ref, 99.5))
    ax = fig.add_subplot(gs[len(patterns), 0])
    ax.imshow(ref, cmap="gray", vmin=0, vmax=vmax)
    ax.set_title("reference (frame 0)", fontsize=8)
    ax.axis("off")
    for j, method in enumerate(methods):
        img = images.get((grid_pattern, r_hi, method))
        if img is None:
            continue
        ax = fig.add_subplot(gs[len(patterns), j + 1])
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"{LABELS[method]}\n{grid_pattern} R={r_hi:g}", fontsize=8)
        ax.axis("off")
        ax = fig.add_subplot(gs[len(patterns) + 1, j + 1])
        ax.imshow(np.abs(img - ref), cmap="inferno", vmin=0, vmax=0.25 * vmax)
        ax.set_title("|error| x4", fontsize=8)
        ax.axis("off")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def markdown(report: dict, png_name: str) -> str:
    rows = report["results"]
    lines = [
        "# Classical reconstruction baselines",
        "",
        f"![PSNR vs R and image grid]({png_name})",
        "",
        f"Data: {report['data']['description']}; k-space {report['data']['shape_coil_time_ky_kx']} "
        "(coil, time, ky, kx). Reference: " + report["data"]["reference"] + ". Coil maps: " + report["data"]["coil_maps"] + ".",
        "",
        f"Machine: {machine_line(report['machine'])}. Created {report['created']}.",
        "",
        "Metrics: " + report["metrics"],
        "",
        "Times: wall-clock seconds per slice (coil maps + reconstruction) and the process's CPU seconds for the same "
        "work; on a machine shared with other jobs the CPU seconds are the fairer number.",
        "",
        "| pattern | R (effective) | R (CMRxRecon) | calibration | method | PSNR (dB) | SSIM | NMSE | s / slice | CPU s / slice |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pattern']} | {r['r_effective']:.1f} | {r['r_cmrxrecon']:.1f} | {r['calibration']} | {LABELS[r['method']]} "
            f"| {r['psnr_db']:.2f} | {r['ssim']:.3f} | {r['nmse']:.4f} | {r['seconds_per_slice']:.2f} "
            f"| {r['cpu_seconds_per_slice']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    tune_cpu_allocator()  # the same malloc settings as the cardiomm command, for every method timed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matrix", type=int, default=256)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--coils", type=int, default=10)
    p.add_argument("--accels", type=float, nargs="+", default=[4, 8, 12, 24])
    p.add_argument("--patterns", nargs="+", default=["kt_gaussian", "kt_radial"])
    p.add_argument("--methods", nargs="+", default=METHOD_ORDER, choices=sorted(METHODS))
    p.add_argument("--seed", type=int, default=1000, help="phantom/mask seed (never used for training)")
    p.add_argument("--snr-db", type=float, default=30.0)
    p.add_argument("--sens-method", default="walsh", choices=["walsh", "espirit"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="recon_baselines")
    p.add_argument("--quick", action="store_true", help="64x64, 8 frames, 8 coils, R 4 and 12: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.matrix, args.frames, args.coils, args.accels = 96, 8, 8, [4, 12]
    report = run(args)
    png = args.out / f"{args.name}.png"
    figure(report, png)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    write_json_atomic(args.out / f"{args.name}.json", public)
    write_text_atomic(args.out / f"{args.name}.md", markdown(public, png.name))
    print(markdown(public, png.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
