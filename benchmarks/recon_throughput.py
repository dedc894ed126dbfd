"""Throughput of ``cardiomm recon``: slices per second for zero-filled, CG-SENSE and CardioMM.

Data (SIMULATED): a multi-slice beating-heart phantom scan (``cardiomm.data.phantom``) turned
into a multi-coil acquisition (``cardiomm.data.simulate``) and written as an ISMRMRD raw file,
undersampled retrospectively (k-t Gaussian, effective R 8) by the batch job itself.  Every
configuration runs through :class:`cardiomm.batch.job.BatchJob` -- the code path of
``cardiomm recon`` -- twice into fresh output folders; the second (warm) run is reported:

* recon slices/s: slices / time spent reconstructing (coil maps + solver, or the network);
* end-to-end slices/s: slices / whole input (read, undersample, reconstruct, write ISMRMRD
  image, NIfTI, PNG and GIF previews, done marker, summary line).

CardioMM weights do not change the cost, so unless ``--checkpoint`` is given the network is
randomly initialised with the architecture of ``configs/tiny.yaml`` and ``configs/base.yaml``
(the reported numbers say which).  CPU runs use ``--threads`` torch threads (default 1: the
benchmark machine's cores are shared); CUDA is measured too when a GPU is present.

Writes ``<out>/recon_throughput.json`` (every number), ``.md`` (figure, then table) and ``.png``.

    python benchmarks/recon_throughput.py             # 4 slices, 12 frames, 128 x 128, 10 coils
    python benchmarks/recon_throughput.py --quick     # 2 slices, 8 frames, 64 x 64, 4 coils
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from cardiomm.atomic import atomic_path, write_json_atomic, write_text_atomic
from cardiomm.batch.job import BatchJob, ReconSettings
from cardiomm.batch.prepare import Undersampling
from cardiomm.data.phantom import make_phantom
from cardiomm.data.simulate import simulate_kspace, write_simulated_scan
from cardiomm.machine import machine_info, machine_line
from cardiomm.allocator import tune_cpu_allocator

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = {"tiny": ROOT / "configs" / "tiny.yaml", "base": ROOT / "configs" / "base.yaml"}


def write_scan(path: Path, slices: int, frames: int, matrix: int, coils: int) -> dict[str, Any]:
    """Write the simulated phantom scan; return its description."""
    spacing = 288.0 / matrix
    thickness = max(8.0, 50.0 / slices - 2.0)  # the phantom heart needs >= 48 mm of slices
    phantom = make_phantom(0, n_slices=slices, n_frames=frames, matrix=(matrix, matrix),
                           pixel_spacing_mm=(spacing, spacing), slice_thickness_mm=thickness, slice_gap_mm=2.0)
    write_simulated_scan(path, simulate_kspace(phantom, n_coils=coils, seed=0, snr_db=30.0))
    return {"slices": slices, "frames": frames, "matrix": [matrix, matrix], "coils": coils,
            "data": "SIMULATED phantom scan (ISMRMRD raw file), 30 dB SNR, birdcage coils"}


def random_checkpoint(arch: str, folder: Path) -> Path:
    """A randomly initialised CardioMM checkpoint with the model section of ``configs/<arch>.yaml``."""
    from cardiomm.model import ARCHITECTURE
    from cardiomm.training import CardioMMModule

    config = yaml.safe_load(ARCHITECTURES[arch].read_text())["model"]
    torch.manual_seed(0)
    module = CardioMMModule(**config)
    path = folder / f"random_{arch}.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "cardiomm_architecture": ARCHITECTURE, "cardiomm_model_kwargs": module.model_kwargs}, path)
    return path


def measure(scan: Path, settings: ReconSettings, device: torch.device, work: Path, n_slices: int) -> dict[str, Any]:
    """Run one configuration twice (cold, warm) and return the warm run's numbers."""
    job = None
    runs = []
    for repeat in range(2):
        out = work / f"out{repeat}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        job = BatchJob(settings, out, device, {scan: scan.stem}) if job is None else job
        job.out_dir = out
        t0 = time.perf_counter()
        result = job.process(scan)
        if result.status != "ok":
            raise RuntimeError(f"{settings.method} failed: {result.error}")
        runs.append((result.record, time.perf_counter() - t0))
    record, wall = runs[-1]
    return {
        "method": settings.method,
        "batch_size": settings.batch_size,
        "device": str(device),
        "seconds_recon": record["seconds_recon"],
        "seconds_end_to_end": round(wall, 3),
        "recon_slices_per_second": round(n_slices / record["seconds_recon"], 4),
        "end_to_end_slices_per_second": round(n_slices / wall, 4),
        "cold_seconds_end_to_end": round(runs[0][1], 3),
        "r_effective": record["r_effective"],
        "r_cmrxrecon": record["r_cmrxrecon"],
        "engine": record["engine"],
    }


def figure(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['label']}".replace(" (", "\n(") + f"\nbatch {r['batch_size']}, {r['device']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(rows)), 4.2), constrained_layout=True)
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["recon_slices_per_second"] for r in rows], 0.4, label="reconstruction only")
    ax.bar([i + 0.2 for i in x], [r["end_to_end_slices_per_second"] for r in rows], 0.4, label="end to end (I/O incl.)")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("slices per second (log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    d = report["data"]
    lines = [
        "# Batch reconstruction throughput (`cardiomm recon`)",
        "",
        "![slices per second](recon_throughput.png)",
        "",
        f"*{d['data']}*: {d['slices']} slices x {d['frames']} frames x {d['matrix'][0]}x{d['matrix'][1]} x "
        f"{d['coils']} coils, undersampled retrospectively ({report['undersampling']}).  Machine: {report['machine_line']}; "
        f"load average (1 min) {report['load_average_1_5_15min']['before'][0]} before, "
        f"{report['load_average_1_5_15min']['after'][0]} after (the cores were shared with other jobs).",
        "",
        "Warm run of each configuration through the `cardiomm recon` code path (`BatchJob`); *recon* counts coil "
        "maps + solver or the network, *end to end* adds reading the raw file, undersampling and writing the ISMRMRD "
        "image, NIfTI, PNG/GIF previews and the summary.  CardioMM networks are randomly initialised (speed does not "
        "depend on the weights) with the architecture named.",
        "",
        "| method | batch (slices/call) | device | recon s | recon slices/s | end-to-end s | end-to-end slices/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['label']} | {r['batch_size']} | {r['device']} | {r['seconds_recon']:.2f} | "
            f"{r['recon_slices_per_second']:.3g} | {r['seconds_end_to_end']:.2f} | {r['end_to_end_slices_per_second']:.3g} |"
        )
    cpu = [r for r in report["results"] if r["device"] == "cpu"]
    slower = sorted({r["label"] for r in cpu if r["batch_size"] > 1 and any(
        o["label"] == r["label"] and o["batch_size"] == 1 and o["recon_slices_per_second"] > r["recon_slices_per_second"]
        for o in cpu)})
    if slower:
        lines += ["", f"On CPU, several slices per call was slower than one for: {', '.join(slower)}. "
                  "`cardiomm recon` reconstructs one slice per call on CPU and 4 on CUDA unless `--batch-size` says otherwise."]
    if report.get("not_measured"):
        lines += ["", "Not measured: " + "; ".join(report["not_measured"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    tune_cpu_allocator()  # the same malloc settings as the cardiomm command, for every method timed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--matrix", type=int, default=128)
    p.add_argument("--coils", type=int, default=10)
    p.add_argument("--accel", type=float, default=8.0)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--architectures", nargs="+", default=["tiny", "base"], choices=sorted(ARCHITECTURES))
    p.add_argument("--checkpoint", type=Path, help="measure this CardioMM checkpoint instead of random networks")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.slices, args.frames, args.matrix, args.coils = 2, 8, 64, 4
    torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    not_measured = [] if "cuda" in devices else ["GPU (no CUDA device on the machine that ran this)"]

    under = Undersampling(args.accel, "kt_gaussian", seed=0)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scan = work / "phantom_scan.h5"
        data = write_scan(scan, args.slices, args.frames, args.matrix, args.coils)
        configs: list[tuple[str, ReconSettings]] = []
        for b in args.batch_sizes:
            configs.append(("zero-filled", ReconSettings("zero-filled", under, batch_size=b)))
            configs.append(("CG-SENSE (30 it.)", ReconSettings("cg-sense", under, batch_size=b)))
            if args.checkpoint is not None:
                configs.append(("CardioMM (checkpoint)", ReconSettings("cardiomm", under, str(args.checkpoint), b)))
            else:
                for arch in args.architectures:
                    ckpt = random_checkpoint(arch, work)
                    configs.append((f"CardioMM {arch} (random weights)", ReconSettings("cardiomm", under, str(ckpt), b)))
        for device in devices:
            dev = torch.device(device)
            for label, settings in configs:
                t0 = time.perf_counter()
                row = {"label": label, **measure(scan, settings, dev, work, args.slices)}
                rows.append(row)
                print(f"{label:32s} batch {settings.batch_size} {device}: recon {row['recon_slices_per_second']:.3g} "
                      f"slices/s, end to end {row['end_to_end_slices_per_second']:.3g} slices/s "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    info = machine_info(devices[-1])
    report = {
        "data": data,
        "undersampling": f"k-t Gaussian, requested effective R {args.accel:g}, seed 0 (+ slice)",
        "threads": args.threads,
        "load_average_1_5_15min": {"before": [round(v, 2) for v in load_before],
                                   "after": [round(v, 2) for v in os.getloadavg()]},
        "machine": info,
        "machine_line": machine_line(info),
        "results": rows,
        "not_measured": not_measured,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "recon_throughput.json", report)
    figure(rows, args.out / "recon_throughput.png",
           f"cardiomm recon throughput, simulated {args.slices}x{args.frames}x{args.matrix}^2x{args.coils} coils")
    write_text_atomic(args.out / "recon_throughput.md", markdown(report))
    print(f"wrote {args.out / 'recon_throughput.md'}")


if __name__ == "__main__":
    main()
