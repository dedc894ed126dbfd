"""Benchmark of the shipped CardioMM checkpoint against classical reconstructions.

Data (all SIMULATED multi-coil acquisitions, 10 coils, 30 dB SNR):

* Sunnybrook SCD0000301 (the validation patient, never trained on): its DICOM magnitude cine
  turned into multi-coil k-space by :mod:`cardiomm.data.simulate` (through
  :func:`cardiomm.data.sources.open_source`, as in training);
* the built-in beating-heart phantom with seeds never used in training (training used
  0-39, validation 1000-1001).

For every pattern and effective acceleration R the fully sampled k-space is undersampled with
:func:`recon.masks.make_mask`, and CardioMM (:mod:`cardiomm.inference`, with the acquisition
context and with every context field unknown) and the classical methods
(:func:`recon.pipeline.reconstruct`: zero-filled, CG-SENSE, per-frame L1-wavelet CS, k-t
SPARSE-SENSE, L+S; coil maps estimated from the undersampled data) reconstruct it.  Metrics
(:func:`recon.metrics.image_metrics`, ``volume`` normalisation) compare magnitudes with the RSS of
the fully sampled coil images.

The classical methods take tens of seconds per 256x256 slice on the 2-core CPU, so the accuracy
grid runs on a reduced case (defaults: one mid-ventricular slice, 128x128 image-space centre
crop, the first 12 frames); the speed section times CardioMM and k-t SPARSE-SENSE on a full
20-frame, 10-coil, 256x256 slice.  The report states exactly what was run.

    python benchmarks/cardiomm_recon.py                          # everything
    python benchmarks/cardiomm_recon.py --stage classical --cache /tmp/classical.pt   # classical part only
    python benchmarks/cardiomm_recon.py --stage cardiomm --cache /tmp/classical.pt    # reuse it
    python benchmarks/cardiomm_recon.py --quick                  # smoke run

Writes ``<out>/cardiomm_recon.json`` (every number), ``.md`` (figure, then tables) and ``.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from machine import machine_info, machine_line  # benchmarks/ is the script's folder

from cardiomm.atomic import atomic_path, write_json_atomic, write_text_atomic
from cardiomm.data.metadata import ScanMetadata
from cardiomm.data.sources import open_source
from cardiomm.inference import DEFAULT_CHECKPOINT, CardioMMReconstructor, load_reconstructor
from recon.classical import METHOD_LABELS
from recon.conventions import fft2c, ifft2c, rss
from recon.masks import make_mask
from recon.metrics import image_metrics
from recon.pipeline import reconstruct
from cardiomm.allocator import release_free_memory, tune_cpu_allocator

CLASSICAL = ["zero-filled", "view-sharing", "cg-sense", "cs", "kt-sparse", "lps"]
LEARNED = ["cardiomm", "cardiomm-unknown-context"]
LABELS = {**METHOD_LABELS, "cardiomm": "CardioMM", "cardiomm-unknown-context": "CardioMM, context unknown"}
#: The classical methods CardioMM must beat: the iterative spatio-temporal ones, and k-t view sharing
#: (the network's own input: a network that does not beat it is not worth running).
SPATIOTEMPORAL = ("view-sharing", "kt-sparse", "lps")
SUNNYBROOK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sunnybrook" / "dicoms" / "SCD0000301"


# ---------------------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak resident memory (MiB) of this process during a ``with`` block, above its start.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``, Linux) when it can and reads
    ``VmHWM``; otherwise polls ``VmRSS`` every 5 ms.  CUDA peaks come from torch.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = float("nan")

    @staticmethod
    def _status(field: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0
        return float("nan")

    def __enter__(self) -> "PeakMemory":
        self.start = self._status("VmRSS")
        self._reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._reset = True
        except OSError:
            pass
        self._samples = [self.start]
        self._stop = threading.Event()
        if not self._reset:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self._samples.append(self._status("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        peak = self._status("VmHWM") if self._reset else max(self._samples)
        self.peak_mib = max(0.0, peak - self.start)
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20


def timed(fn: Any, device: torch.device) -> tuple[Any, float, float, float]:
    """``fn()`` -> (result, wall seconds, process CPU seconds, peak extra memory MiB).

    Free memory kept by the tuned allocator (:mod:`cardiomm.allocator`) is returned to the system
    first, so the peak is this call's own and every call starts as a fresh process would.
    """
    release_free_memory()
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return out, wall, cpu, mem.peak_mib


# ---------------------------------------------------------------------------------------- data


def centre_crop_kspace(k: torch.Tensor, size: int | None) -> torch.Tensor:
    """Centre-crop the coil images of ``k [..., ky, kx]`` to ``size x size`` (None: unchanged)."""
    if size is None or (k.shape[-2] <= size and k.shape[-1] <= size):
        return k
    img = ifft2c(k)
    y0, x0 = k.shape[-2] // 2 - size // 2, k.shape[-1] // 2 - size // 2
    return fft2c(img[..., y0 : y0 + size, x0 : x0 + size].contiguous())


def load_case(spec: str, slice_index: int | None, frames: int, crop: int | None) -> dict[str, Any]:
    """One simulated 10-coil slice: ``kspace [1, coil, time, ky, kx]``, ``reference [time, y, x]``, metadata."""
    source = open_source(spec, n_coils=10, seed=0, snr_db=30.0)
    s = source.n_slices // 2 if slice_index is None else slice_index
    loaded = source.load([s])
    k = loaded.kspace[:, :, :frames]
    k = centre_crop_kspace(k, crop)
    return {"kspace": k, "reference": rss(ifft2c(k))[0], "metadata": loaded.metadata, "slice": s, "spec": spec}


def datasets(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out = {}
    if SUNNYBROOK.is_dir():
        out["SCD0000301"] = load_case(str(SUNNYBROOK), args.sunnybrook_slice, args.frames, args.crop)
    for seed in args.phantom_seeds:
        spacing = 288.0 / args.phantom_matrix
        spec = f"phantom:{seed}?matrix={args.phantom_matrix}x{args.phantom_matrix}&pixel_spacing_mm={spacing:g}"
        out[f"phantom {seed}"] = load_case(spec, None, args.frames, None)
    return out


def mask_for(pattern: str, accel: float, shape: tuple[int, ...], seed: int) -> Any:
    """The benchmark's mask: effective R for the k-t patterns; CMRxRecon R for ``uniform``.

    A static uniform lattice at an effective R above ~4 leaves no room for calibration lines, and its
    time average has no fully sampled centre, so no method can estimate coil maps from it; the
    CMRxRecon convention (16 ACS lines plus ``ky / R`` lattice lines per frame) is used instead and
    the achieved effective R is reported next to it.
    """
    convention = "cmrxrecon" if pattern == "uniform" else "effective"
    return make_mask(pattern, accel, shape, seed=seed, convention=convention)


def metrics_row(reference: torch.Tensor, image: torch.Tensor) -> dict[str, float]:
    m = image_metrics(reference, image.abs())
    return {"psnr_db": round(m.psnr_db, 3), "ssim": round(m.ssim, 4), "nmse": float(f"{m.nmse:.5g}")}


# ---------------------------------------------------------------------------------------- stages


def accels_for(name: str, args: argparse.Namespace) -> list[float]:
    """The accelerations of one dataset (phantoms may use a shorter list to save CPU time)."""
    return args.phantom_accels if name.startswith("phantom") and args.phantom_accels else args.accels


def classical_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the classical rows depend on besides the code: a cache made with other settings is not reused."""
    return {"crop": args.crop, "frames": args.frames, "sunnybrook_slice": args.sunnybrook_slice,
            "phantom_matrix": args.phantom_matrix, "mask_seed": args.mask_seed, "grid_accels": list(args.grid_accels),
            "grid_frame": args.grid_frame}


def load_classical_cache(args: argparse.Namespace) -> dict[str, Any]:
    """The classical results of ``--cache`` when it was made with the same settings, else none."""
    empty: dict[str, Any] = {"rows": [], "images": {}, "settings": classical_settings(args)}
    if args.cache is None or not args.cache.is_file():
        return empty
    cached = torch.load(args.cache, weights_only=False)
    if cached.get("settings") != empty["settings"]:
        print(f"{args.cache}: made with other settings ({cached.get('settings')}); recomputing every classical row")
        return empty
    return cached


def run_classical(cases: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Classical methods on every case.

    With ``--cache`` the results so far are saved after every case, and rows already in a cache
    made with the same settings (:func:`classical_settings`) are kept, not recomputed: a new
    method or case costs only its own rows.
    """
    done = load_classical_cache(args)
    rows, images, settings = done["rows"], done["images"], done["settings"]
    have = {(r["data"], r["pattern"], r["requested_r"], r["method"]) for r in rows}
    device = torch.device("cpu")
    todo = [(name, pattern, accel, method) for name in cases for pattern in args.patterns
            for accel in accels_for(name, args) for method in args.classical
            if (name, pattern, accel, method) not in have]
    if len(todo) < sum(len(args.patterns) * len(accels_for(n, args)) * len(args.classical) for n in cases):
        print(f"{args.cache}: reusing {len(rows)} cached classical rows; computing {len(todo)}")
    with Progress() as progress:
        task = progress.add_task("classical", total=len(todo))
        for name, case in cases.items():
            shape = tuple(case["kspace"].shape[-3:])
            for pattern in args.patterns:
                for accel in accels_for(name, args):
                    methods = [m for (n, p, a, m) in todo if (n, p, a) == (name, pattern, accel)]
                    if not methods:
                        continue
                    if args.cache is not None:
                        args.cache.parent.mkdir(parents=True, exist_ok=True)
                        torch.save({"rows": rows, "images": images, "settings": settings}, args.cache)
                    sm = mask_for(pattern, accel, shape, args.mask_seed)
                    for method in methods:
                        progress.update(task, description=f"{name} {pattern} R={accel:g} {method}")
                        res, wall, cpu, mem = timed(lambda: reconstruct(case["kspace"], sm, method), device)
                        image = res.image[0].detach().cpu()
                        rows.append({
                            "data": name, "pattern": pattern, "requested_r": accel,
                            "r_effective": round(sm.r_effective, 3), "method": method,
                            **metrics_row(case["reference"], image),
                            "seconds_per_slice": round(wall, 3), "cpu_seconds_per_slice": round(cpu, 3),
                            "peak_memory_mib": round(mem, 1),
                        })
                        if accel in args.grid_accels:
                            images[(name, pattern, accel, method)] = image.abs()[args.grid_frame].numpy()
                        progress.advance(task)
    if args.cache is not None:  # everything, also cached rows of methods/cases not asked for this time
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"rows": rows, "images": images, "settings": settings}, args.cache)
    wanted = {(n, p, a, m) for n in cases for p in args.patterns for a in accels_for(n, args) for m in args.classical}
    rows = [r for r in rows if (r["data"], r["pattern"], r["requested_r"], r["method"]) in wanted]
    images = {k: v for k, v in images.items() if k in wanted}
    return {"rows": rows, "images": images, "settings": settings}


def run_cardiomm(
    cases: dict[str, dict[str, Any]], args: argparse.Namespace, recon: CardioMMReconstructor,
    blind: CardioMMReconstructor,
) -> dict[str, Any]:
    rows, images = [], {}
    n = sum(len(args.patterns) * len(accels_for(name, args)) for name in cases)
    with Progress() as progress:
        task = progress.add_task("CardioMM", total=n)
        for name, case in cases.items():
            shape = tuple(case["kspace"].shape[-3:])
            for pattern in args.patterns:
                for accel in accels_for(name, args):
                    sm = mask_for(pattern, accel, shape, args.mask_seed)
                    kus = case["kspace"] * sm.mask
                    meta: ScanMetadata = case["metadata"].with_updates(mask_pattern=pattern, acceleration=sm.r_effective)
                    for method, rec in (("cardiomm", recon), ("cardiomm-unknown-context", blind)):
                        progress.update(task, description=f"{name} {pattern} R={accel:g} {method}")
                        image, wall, cpu, mem = timed(lambda: rec(kus, sm.mask, sm.acs, meta), recon.device)
                        image = image[0].cpu()
                        rows.append({
                            "data": name, "pattern": pattern, "requested_r": accel,
                            "r_effective": round(sm.r_effective, 3), "method": method,
                            **metrics_row(case["reference"], image),
                            "seconds_per_slice": round(wall, 3), "cpu_seconds_per_slice": round(cpu, 3),
                            "peak_memory_mib": round(mem, 1),
                        })
                        if accel in args.grid_accels and method == "cardiomm":
                            images[(name, pattern, accel, method)] = image.abs()[args.grid_frame].numpy()
                    progress.advance(task)
    return {"rows": rows, "images": images}


def run_speed(args: argparse.Namespace, checkpoint: Path | None) -> list[dict[str, Any]]:
    """Seconds per 20-frame, 10-coil, 256x256 slice (SCD0000301, or a phantom) at 1 and 2 threads."""
    spec = str(SUNNYBROOK) if SUNNYBROOK.is_dir() else "phantom:2000?matrix=256x256&pixel_spacing_mm=1.125"
    case = load_case(spec, args.sunnybrook_slice, 20, None)
    shape = tuple(case["kspace"].shape[-3:])
    sm = make_mask("kt_gaussian", 8, shape, seed=args.mask_seed)
    kus = case["kspace"] * sm.mask
    rows = []
    before = torch.get_num_threads()
    cpu = torch.device("cpu")
    try:
        for threads in args.speed_threads:
            torch.set_num_threads(threads)
            rec = load_reconstructor(checkpoint, device="cpu")
            rec(kus[:, :, :2], sm.mask[:2], None if sm.acs is None else sm.acs[:2])  # warm-up on 2 frames
            for repeat in range(args.speed_repeats):
                image, wall, cpu_s, mem = timed(lambda: rec(kus, sm.mask, sm.acs, case["metadata"]), cpu)
                rows.append({"method": "cardiomm", "device": "cpu", "threads": threads, "repeat": repeat,
                             "seconds_per_slice": round(wall, 3), "cpu_seconds_per_slice": round(cpu_s, 3),
                             "peak_memory_mib": round(mem, 1),
                             **metrics_row(case["reference"], image[0])})
        for threads in args.kt_threads:
            torch.set_num_threads(threads)
            res, wall, cpu_s, mem = timed(lambda: reconstruct(case["kspace"], sm, "kt-sparse"), cpu)
            rows.append({"method": "kt-sparse", "device": "cpu", "threads": threads, "repeat": 0,
                         "seconds_per_slice": round(wall, 3), "cpu_seconds_per_slice": round(cpu_s, 3),
                         "peak_memory_mib": round(mem, 1), **metrics_row(case["reference"], res.image[0])})
        if torch.cuda.is_available():
            rec = load_reconstructor(checkpoint, device="cuda")
            gpu = torch.device("cuda")
            rec(kus, sm.mask, sm.acs)
            for repeat in range(args.speed_repeats):
                image, wall, cpu_s, mem = timed(lambda: rec(kus, sm.mask, sm.acs, case["metadata"]), gpu)
                rows.append({"method": "cardiomm", "device": torch.cuda.get_device_name(), "threads": None,
                             "repeat": repeat, "seconds_per_slice": round(wall, 3),
                             "cpu_seconds_per_slice": round(cpu_s, 3), "peak_memory_mib": round(mem, 1),
                             **metrics_row(case["reference"], image[0].cpu())})
    finally:
        torch.set_num_threads(before)
    for r in rows:
        r["data"] = f"{case['spec']} slice {case['slice']}, 20 frames, 10 coils, 256x256, kt_gaussian R=8"
    return rows


# ---------------------------------------------------------------------------------------- report


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per data/pattern/R: CardioMM minus the best spatio-temporal classical method (PSNR dB, SSIM)."""
    out = []
    keys = sorted({(r["data"], r["pattern"], r["requested_r"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    for data, pattern, accel in keys:
        sel = {r["method"]: r for r in rows if (r["data"], r["pattern"], r["requested_r"]) == (data, pattern, accel)}
        if "cardiomm" not in sel:
            continue
        classical = [sel[m] for m in SPATIOTEMPORAL if m in sel]
        if not classical:
            continue
        best_psnr = max(classical, key=lambda r: r["psnr_db"])
        best_ssim = max(classical, key=lambda r: r["ssim"])
        c = sel["cardiomm"]
        out.append({
            "data": data, "pattern": pattern, "requested_r": accel,
            "cardiomm_psnr_db": c["psnr_db"], "best_classical_psnr_db": best_psnr["psnr_db"],
            "best_classical_psnr_method": best_psnr["method"],
            "psnr_gain_db": round(c["psnr_db"] - best_psnr["psnr_db"], 3),
            "cardiomm_ssim": c["ssim"], "best_classical_ssim": best_ssim["ssim"],
            "best_classical_ssim_method": best_ssim["method"],
            "ssim_gain": round(c["ssim"] - best_ssim["ssim"], 4),
            "context_gain_psnr_db": round(c["psnr_db"] - sel["cardiomm-unknown-context"]["psnr_db"], 3)
            if "cardiomm-unknown-context" in sel else None,
        })
    return out


def targets(summary: list[dict[str, Any]], speed: list[dict[str, Any]]) -> dict[str, Any]:
    beats = [s["psnr_gain_db"] > 0 and s["ssim_gain"] > 0 for s in summary]
    hi = [s for s in summary if s["pattern"] == "kt_gaussian" and s["requested_r"] == 24]
    cm2 = [r["seconds_per_slice"] for r in speed if r["method"] == "cardiomm" and r["threads"] == 2]
    kt2 = [r["seconds_per_slice"] for r in speed if r["method"] == "kt-sparse" and r["threads"] == 2]
    gpu = [r["seconds_per_slice"] for r in speed if r["method"] == "cardiomm" and r["device"] != "cpu"]
    speedup = (min(kt2) / min(cm2)) if cm2 and kt2 else None
    return {
        "beats_best_spatiotemporal_in_psnr_and_ssim_everywhere": bool(beats) and all(beats),
        "cases_beaten": f"{sum(beats)}/{len(beats)}",
        "kt_gaussian_24x_psnr_gain_db": [s["psnr_gain_db"] for s in hi],
        "kt_gaussian_24x_gain_at_least_3db": bool(hi) and all(s["psnr_gain_db"] >= 3 for s in hi),
        "cpu_2_threads_speedup_vs_kt_sparse": None if speedup is None else round(speedup, 2),
        "cpu_speedup_at_least_30x": speedup is not None and speedup >= 30,
        "gpu_seconds_per_slice": min(gpu) if gpu else None,
        "gpu_under_0_2_s": (min(gpu) < 0.2) if gpu else None,
    }


def speed_target_lines(t: dict[str, Any]) -> list[str]:
    """Markdown bullets of the two speed targets of issue 4 (:func:`targets`), "not measured" where a run lacks the rows."""
    cpu = t["cpu_2_threads_speedup_vs_kt_sparse"]
    gpu = t["gpu_seconds_per_slice"]
    return [
        "- 2-thread CPU speed-up over k-t SPARSE-SENSE on a 20-frame 10-coil 256x256 slice: "
        + ("not measured (no 2-thread rows of both methods in this run)." if cpu is None else
           f"{cpu}x (target >= 30x: **{'met' if t['cpu_speedup_at_least_30x'] else 'not met'}**)."),
        "- GPU: " + ("not measured (no GPU in this run)." if gpu is None else
                     f"{gpu} s / slice (target < 0.2 s: **{'met' if t['gpu_under_0_2_s'] else 'not met'}**)."),
    ]


def speed_lines(speed: list[dict[str, Any]]) -> list[str]:
    """Markdown section of the speed rows (:func:`run_speed`)."""
    lines = [
        "## Speed (seconds per 2D+t slice)",
        "",
        "| method | device | threads | wall s / slice | CPU s / slice | peak extra memory (MiB) | PSNR (dB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in speed:
        lines.append(f"| {LABELS[r['method']]} | {r['device']} | {r['threads']} | {r['seconds_per_slice']:.2f} | "
                     f"{r['cpu_seconds_per_slice']:.2f} | {r['peak_memory_mib']:.0f} | {r['psnr_db']:.2f} |")
    if speed:
        lines += ["", f"Speed case: {speed[0]['data']}."]
    return lines


def speed_only(args: argparse.Namespace) -> int:
    """``--stage speed``: time CardioMM and k-t SPARSE-SENSE alone; writes ``cardiomm_speed.{json,md}``."""
    speed = run_speed(args, args.checkpoint)
    t = targets([], speed)
    report = {"benchmark": "CardioMM vs k-t SPARSE-SENSE speed (issue 4)", "speed": speed,
              "cpu_2_threads_speedup_vs_kt_sparse": t["cpu_2_threads_speedup_vs_kt_sparse"],
              "cpu_speedup_at_least_30x": t["cpu_speedup_at_least_30x"], "gpu_seconds_per_slice": t["gpu_seconds_per_slice"],
              "machine": machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
              "load_average": [round(x, 2) for x in os.getloadavg()], "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    lines = ["# CardioMM speed", "", *speed_lines(speed), "", *speed_target_lines(t), "",
             f"Machine: {machine_line(report['machine'])} (torch threads of each row: the table); "
             f"load average after the run {report['load_average']}."]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "cardiomm_speed.json", report)
    write_text_atomic(args.out / "cardiomm_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def figure(report: dict[str, Any], images: dict, references: dict, path: Path, grid_data: str, grid_pattern: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    datas = list(dict.fromkeys(r["data"] for r in rows))
    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    methods = [m for m in CLASSICAL + LEARNED if any(r["method"] == m for r in rows)]
    grid_accels = sorted({k[2] for k in images if k[0] == grid_data and k[1] == grid_pattern})
    grid_methods = [m for m in CLASSICAL + ["cardiomm"] if any(k[3] == m for k in images)]
    ncol = len(grid_methods) + 1
    n_img_rows = 2 * len(grid_accels)
    width = max(3.2 * len(patterns), 1.9 * ncol)
    fig = plt.figure(figsize=(width, 2.6 * len(datas) + 1.9 * n_img_rows), constrained_layout=True)
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.6 * len(datas), 1.9 * n_img_rows])
    axes = np.atleast_2d(top.subplots(len(datas), len(patterns), squeeze=False))
    for i, data in enumerate(datas):
        for j, pattern in enumerate(patterns):
            ax = axes[i, j]
            for method in methods:
                sel = [r for r in rows if r["data"] == data and r["pattern"] == pattern and r["method"] == method]
                style = "s-" if method.startswith("cardiomm") else "o--"
                ax.plot([r["requested_r"] for r in sel], [r["psnr_db"] for r in sel], style, ms=3, label=LABELS[method],
                        lw=2 if method == "cardiomm" else 1)
            r_name = "R (CMRxRecon)" if pattern == "uniform" else "R (effective)"
            ax.set_title(f"{data} (simulated), {pattern}", fontsize=8)
            ax.set_xlabel(r_name, fontsize=7)
            ax.set_ylabel("PSNR (dB)", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=5)
    ref = references[grid_data]
    vmax = float(np.percentile(ref, 99.5))
    sub = bottom.add_gridspec(n_img_rows, ncol)
    for a, accel in enumerate(grid_accels):
        ax = bottom.add_subplot(sub[2 * a, 0])
        ax.imshow(ref, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"reference\n{grid_data}", fontsize=7)
        ax.axis("off")
        for j, method in enumerate(grid_methods):
            img = images.get((grid_data, grid_pattern, accel, method))
            if img is None:
                continue
            row = next((r for r in rows if (r["data"], r["pattern"], r["requested_r"], r["method"])
                        == (grid_data, grid_pattern, accel, method)), None)
            ax = bottom.add_subplot(sub[2 * a, j + 1])
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
            title = f"{LABELS[method]}\n{grid_pattern} {accel:g}x"
            if row:
                title += f" {row['psnr_db']:.1f} dB"
            ax.set_title(title, fontsize=7)
            ax.axis("off")
            ax = bottom.add_subplot(sub[2 * a + 1, j + 1])
            ax.imshow(np.abs(img - ref), cmap="inferno", vmin=0, vmax=0.2 * vmax)
            ax.set_title("|error| (x5)", fontsize=7)
            ax.axis("off")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def markdown(report: dict[str, Any], png_name: str) -> str:
    t = report["targets"]
    lines = [
        "# CardioMM reconstruction benchmark (SIMULATED multi-coil data)",
        "",
        f"![PSNR vs R per method; image grid with error maps]({png_name})",
        "",
        f"Checkpoint: `{report['checkpoint']['path']}` ({report['checkpoint']['parameters']:,} parameters).",
        "",
        "Data: " + report["data"]["description"],
        "",
        "Accuracy grid: " + report["data"]["accuracy_case"],
        "",
        f"Machine: {machine_line(report['machine'])}. Load during the run: {report['load_average']}. "
        f"Created {report['created']}.",
        "",
        "Metrics: " + report["metrics"],
        "",
        "## Issue targets",
        "",
        f"- CardioMM beats the best spatio-temporal classical method (k-t view sharing, k-t SPARSE-SENSE, L+S) in PSNR and SSIM "
        f"in every case: **{'yes' if t['beats_best_spatiotemporal_in_psnr_and_ssim_everywhere'] else 'no'}** "
        f"({t['cases_beaten']} cases).",
        f"- kt_gaussian 24x PSNR gain over the best classical: {t['kt_gaussian_24x_psnr_gain_db']} dB "
        f"(target >= 3 dB: **{'met' if t['kt_gaussian_24x_gain_at_least_3db'] else 'not met'}**).",
        *speed_target_lines(t),
        "",
        *speed_lines(report["speed"]),
    ]
    lines += [
        "",
        "## CardioMM vs the best spatio-temporal classical method, and the context ablation",
        "",
        "| data | pattern | R | CardioMM PSNR | best classical PSNR (method) | gain dB | CardioMM SSIM | best classical SSIM | "
        "context gain dB (given - unknown) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["summary"]:
        lines.append(
            f"| {s['data']} | {s['pattern']} | {s['requested_r']:g} | {s['cardiomm_psnr_db']:.2f} | "
            f"{s['best_classical_psnr_db']:.2f} ({s['best_classical_psnr_method']}) | {s['psnr_gain_db']:+.2f} | "
            f"{s['cardiomm_ssim']:.3f} | {s['best_classical_ssim']:.3f} | "
            f"{'' if s['context_gain_psnr_db'] is None else format(s['context_gain_psnr_db'], '+.2f')} |"
        )
    lines += [
        "",
        "## All results",
        "",
        "| data | pattern | R (effective) | method | PSNR (dB) | SSIM | NMSE | wall s / slice | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['data']} | {r['pattern']} | {r['r_effective']:.1f} | {LABELS[r['method']]} | {r['psnr_db']:.2f} | "
            f"{r['ssim']:.3f} | {r['nmse']:.4f} | {r['seconds_per_slice']:.2f} | {r['peak_memory_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    tune_cpu_allocator()  # the same malloc settings as the cardiomm command, for every method timed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped checkpoint")
    p.add_argument("--stage", choices=["all", "classical", "cardiomm", "speed"], default="all",
                   help="speed: only the timing of CardioMM and k-t SPARSE-SENSE (cardiomm_speed.{json,md})")
    p.add_argument("--cache", type=Path, default=None,
                   help="file of the classical results (written; rows made with the same settings are reused, so "
                   "delete it after changing a classical method's code)")
    p.add_argument("--accels", type=float, nargs="+", default=[4, 8, 12, 16, 20, 24])
    p.add_argument("--patterns", nargs="+", default=["uniform", "kt_gaussian", "kt_radial"])
    p.add_argument("--classical", nargs="+", default=CLASSICAL, choices=CLASSICAL)
    p.add_argument("--frames", type=int, default=12, help="frames of the accuracy grid (the first N)")
    p.add_argument("--crop", type=int, default=96, help="centre crop (pixels) of SCD0000301 for the accuracy grid")
    p.add_argument("--sunnybrook-slice", type=int, default=None, help="default: the middle slice")
    p.add_argument("--phantom-seeds", type=int, nargs="*", default=[2000])
    p.add_argument("--phantom-matrix", type=int, default=96)
    p.add_argument("--phantom-accels", type=float, nargs="*", default=[8, 24],
                   help="accelerations of the phantom cases (default: 8 and 24 only, for CPU time)")
    p.add_argument("--mask-seed", type=int, default=123)
    p.add_argument("--grid-accels", type=float, nargs="+", default=[8, 24])
    p.add_argument("--grid-pattern", default="kt_gaussian")
    p.add_argument("--grid-frame", type=int, default=0)
    p.add_argument("--speed-threads", type=int, nargs="*", default=[1, 2])
    p.add_argument("--kt-threads", type=int, nargs="*", default=[2])
    p.add_argument("--speed-repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the accuracy grid")
    p.add_argument("--quick", action="store_true", help="smoke run: R 8 and 24, kt_gaussian, small case, no speed")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.accels, args.patterns, args.frames, args.crop = [8, 24], ["kt_gaussian"], 6, 64
        args.phantom_seeds, args.phantom_matrix, args.speed_threads, args.kt_threads = [2000], 96, [], []
        args.phantom_accels = [24]
        args.classical = ["zero-filled", "cg-sense"]
    torch.set_num_threads(args.threads)
    if args.stage == "speed":
        return speed_only(args)
    cases = datasets(args)

    if args.stage in ("all", "classical"):
        classical = run_classical(cases, args)
        if args.stage == "classical":
            return 0
    else:
        if args.cache is None or not args.cache.is_file():
            raise SystemExit(f"--stage cardiomm needs --cache with the classical results ({args.cache} not found)")
        classical = run_classical(cases, args)  # only what the cache lacks (nothing, normally)
        if not classical["rows"]:
            raise SystemExit(f"{args.cache} holds no classical results for these settings; run --stage classical")

    checkpoint = args.checkpoint
    recon = load_reconstructor(checkpoint, device="auto")
    blind = load_reconstructor(checkpoint, device="auto", context="unknown")
    learned = run_cardiomm(cases, args, recon, blind)
    speed = run_speed(args, checkpoint) if (args.speed_threads or args.kt_threads) else []

    rows = classical["rows"] + learned["rows"]
    order = {m: i for i, m in enumerate(CLASSICAL + LEARNED)}
    rows.sort(key=lambda r: (r["data"], r["pattern"], r["requested_r"], order[r["method"]]))
    summary = summarise(rows)
    any_case = next(iter(cases.values()))
    report = {
        "benchmark": "CardioMM vs classical reconstruction (issue 4)",
        "checkpoint": {"path": str(checkpoint or DEFAULT_CHECKPOINT.relative_to(Path(__file__).resolve().parents[1])),
                       "parameters": recon.n_parameters, "training_data": recon.training_data},
        "data": {
            "description": "SIMULATED 10-coil acquisitions (birdcage coil maps, smooth background phase, 30 dB SNR, "
            "cardiomm.data.simulate) of (a) the Sunnybrook validation patient SCD0000301 (DICOM magnitude images; "
            "never used for training) and (b) beating-heart phantoms with seeds "
            f"{args.phantom_seeds} (training used seeds 0-39, validation 1000-1001).",
            "accuracy_case": ", ".join(
                f"{name}: slice {c['slice']}, k-space {list(c['kspace'].shape[1:])} (coil, time, ky, kx)"
                for name, c in cases.items())
            + f"; SCD0000301 centre-cropped to {args.crop}x{args.crop} in image space and both cut to the first "
            f"{args.frames} frames so that the classical methods fit the CPU budget (one slice per dataset, not "
            f"all slices); SCD0000301 at R {args.accels}, phantoms at R {args.phantom_accels or args.accels}. "
            "R is the effective acceleration for kt_gaussian/kt_radial, and the CMRxRecon R (16 ACS lines + "
            "ky/R lines per frame; the effective R is listed in the results) for the static uniform lattice, "
            "which cannot keep calibration lines at an effective R above ~4. "
            "Masks: recon.masks.make_mask(pattern, R, seed="
            f"{args.mask_seed}), 16 ACS lines; coil maps of the classical methods: Walsh from the undersampled data.",
            "frames_shape_example": list(any_case["kspace"].shape),
        },
        "metrics": "volume normalisation of recon.metrics.image_metrics: PSNR over the 2D+t magnitude volume with "
        "peak = max(reference), SSIM averaged over frames, NMSE over the volume; reference = RSS of the fully "
        "sampled coil images. Times: wall clock (and process CPU time) per slice including coil maps; peak memory: "
        "rise of the process's resident set during the call.",
        "machine": machine_info(recon.device),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": rows,
        "summary": summary,
        "speed": speed,
    }
    report["targets"] = targets(summary, speed)
    args.out.mkdir(parents=True, exist_ok=True)
    images = {**classical["images"], **learned["images"]}
    references = {name: c["reference"][args.grid_frame].numpy() for name, c in cases.items()}
    grid_data = "SCD0000301" if "SCD0000301" in cases else next(iter(cases))
    figure(report, images, references, args.out / "cardiomm_recon.png", grid_data, args.grid_pattern)
    write_json_atomic(args.out / "cardiomm_recon.json", report)
    write_text_atomic(args.out / "cardiomm_recon.md", markdown(report, "cardiomm_recon.png"))
    print(markdown(report, "cardiomm_recon.png")[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
