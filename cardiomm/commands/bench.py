"""``cardiomm bench fidelity``: do images, segmentations and biomarkers survive undersampling?

Examples::

    cardiomm bench fidelity phantom:1000-1002 ../shared/data/sunnybrook/dicoms/SCD0000301 --out fidelity_out
    cardiomm bench fidelity scan.h5 --accels 8 24 --patterns kt_gaussian kt_radial --methods cardiomm kt-sparse
    cardiomm bench fidelity phantom:1000 --recon-cache build/recon_cache   # a rerun reads the reconstructions back

Each SOURCE is a fully sampled cine (see ``cardiomm.data.sources``): ``phantom:SEED`` or
``phantom:A-B`` (simulated), a DICOM cine folder (a multi-coil acquisition is SIMULATED from its
magnitude images), or an ISMRMRD raw / CMRxRecon file.  Writes ``fidelity.json`` (every number),
``fidelity.html`` (Bland-Altman plots, error-vs-R curves, image strips), ``fidelity.md`` and PNGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cardiomm.fidelity import FRAME_MODES, FRAME_MODES_HELP

if TYPE_CHECKING:
    from cardiomm.fidelity.cache import ReconstructionCache

DEFAULT_ACCELS = [4.0, 8.0, 12.0, 16.0, 20.0, 24.0]


def register(sub: argparse._SubParsersAction) -> None:
    from recon.masks import DENSITIES

    p = sub.add_parser("bench", help="benchmarks (fidelity: image, segmentation and biomarker errors vs R)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    f = bench_sub.add_parser("fidelity", help="biomarker fidelity versus the fully sampled reference",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("sources", nargs="+", help="fully sampled cine sources (phantom:SEED, DICOM folder, .h5/.mrd, .mat)")
    f.add_argument("--out", type=Path, default=Path("fidelity_out"))
    f.add_argument("--accels", type=float, nargs="+", default=DEFAULT_ACCELS, help="effective R values")
    f.add_argument("--patterns", nargs="+", default=["kt_gaussian"], help="mask patterns")
    f.add_argument("--density", choices=DENSITIES, default=DENSITIES[0],
                   help="ky density of the kt_gaussian masks: broad (default, close to CMRxRecon's) or kt-focuss "
                        "(steeper; see recon.masks)")
    f.add_argument("--methods", nargs="+", default=["cardiomm", "zero-filled", "cg-sense", "kt-sparse"])
    f.add_argument("--checkpoint", type=Path, default=None, help="CardioMM checkpoint (default: the shipped one)")
    f.add_argument("--segmenter-weights", type=Path, default=None,
                   help="cardiac decoder weights (default: the shipped segment/weights/cardiac_decoder.pt)")
    f.add_argument("--max-iter", type=int, default=None, help="iterations of the iterative classical methods")
    f.add_argument("--slices", type=int, nargs="+", default=None, help="only these slice indices of every source")
    f.add_argument("--coils", type=int, default=10, help="coils of simulated acquisitions")
    f.add_argument("--snr-db", type=float, default=30.0, help="SNR of simulated acquisitions")
    f.add_argument("--seed", type=int, default=0, help="seed of the simulation and of the masks")
    f.add_argument("--segment-frames", choices=list(FRAME_MODES), default="ed-es-stack", help=FRAME_MODES_HELP)
    f.add_argument("--device", default="auto", help="auto, cpu or cuda")
    f.add_argument("--recon-cache", type=Path, default=None, metavar="DIR",
                   help="keep every reconstruction's magnitude in DIR and read it back on a rerun with the same data, "
                        "mask, method, checkpoint, device and reconstruction code (e.g. after changing the segmenter, or "
                        "after an interrupted run); cached runs report the seconds of the run that wrote them")
    f.set_defaults(func=run_fidelity_command)


def run_fidelity_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cardiomm.atomic import write_json_atomic, write_text_atomic
    from cardiomm.data.sources import expand_sources
    from cardiomm.fidelity import report as rep
    from cardiomm.fidelity.cache import ReconstructionCache
    from cardiomm.fidelity.methods import METHOD_NAMES, make_method
    from cardiomm.fidelity.runner import describe_segmenter, load_case, run_fidelity
    from cardiomm.machine import machine_info, machine_line
    from recon.masks import DENSITIES
    from segment.segmenter import CardiacSegmenter

    unknown = [m for m in args.methods if m not in METHOD_NAMES]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHOD_NAMES)}")
    if args.density != DENSITIES[0] and "kt_gaussian" not in args.patterns:
        raise ValueError(f"--density {args.density} applies to the kt_gaussian pattern, which --patterns leaves out")
    console = Console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = expand_sources(args.sources)
    params = {} if args.max_iter is None else {"max_iter": args.max_iter}
    methods = [make_method(m, args.device, checkpoint=args.checkpoint,
                           **(params if m not in ("cardiomm", "zero-filled") else {})) for m in args.methods]
    segmenter = CardiacSegmenter.load_default(device=str(methods[0].device), weights=args.segmenter_weights)
    cache = None if args.recon_cache is None else ReconstructionCache(
        args.recon_cache, warn=lambda message: console.print(f"[yellow]{message}[/]"))
    cases, failed = [], []
    for spec in specs:
        try:
            cases.append(load_case(spec, n_coils=args.coils, seed=args.seed, snr_db=args.snr_db, slices=args.slices))
        except (ValueError, OSError) as err:  # DataFileError is a ValueError
            failed.append({"spec": spec, "error": str(err)})
            console.print(f"[red]skipping {spec}[/]: {err}")
    if not cases:
        raise ValueError("no source could be loaded: " + "; ".join(f["error"] for f in failed))
    total = len(cases) * len(args.patterns) * len(args.accels) * len(methods)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("fidelity", total=total)
        started = [False]

        def step(description: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, description=description)

        result = run_fidelity(cases, methods, segmenter, accels=args.accels, patterns=args.patterns,
                              mask_seed=args.seed, frames=args.segment_frames, on_step=step, cache=cache,
                              density=args.density)
        progress.advance(task)
    report = result.to_dict()
    report["failed_sources"] = failed
    report["machine"] = machine_info(methods[0].device)
    report["segmenter"] = describe_segmenter(segmenter)
    report["methods"] = [m.description for m in methods]
    report["reconstruction_cache"] = None if cache is None else {
        "folder": str(cache.root), "read_back": cache.hits, "reconstructed": cache.misses}
    report["notes"] = ("Reference: RSS of the fully sampled k-space, segmented by the same segmenter. Sources marked "
                       "simulated are SIMULATED multi-coil acquisitions; their images are also scored against the "
                       "noiseless simulation (columns 'vs noise-free'), because the fully sampled reference carries "
                       "the noise of the samples every method keeps. Biomarker errors are method minus reference; "
                       "limits of agreement are bias -/+ 1.96 SD over cases.")
    write_json_atomic(out / "fidelity.json", report)
    figures = [rep.error_vs_r_figure(result, out / "fidelity_error_vs_r.png"),
               rep.bland_altman_figure(result, out / "fidelity_bland_altman.png")]
    for case in result.strips:
        safe = "".join(c if c.isalnum() else "_" for c in case)
        figures.append(rep.image_strip_figure(result, case, out / f"fidelity_strip_{safe}.png"))
    header, rows = rep.summary_table_rows(result)
    data_lines = [f"- `{c['spec']}`: {'SIMULATED ' if c['simulated'] else ''}{c['source']}, k-space {c['shape_slice_coil_time_ky_kx']}; "
                  + _segmented_frames(c["segmented_frames"]) for c in report["cases"]]
    md = "\n".join(["# Biomarker fidelity", "", *[f"![{p.stem}]({p.name})" for p in figures], "", "Data:", *data_lines, "",
                    report["notes"], "", *[f"- `{d['method']}`: " + ", ".join(f"{k} `{v}`" for k, v in d.items()
                                                                          if k != "method")
                                            for d in report["methods"]], "",
                    rep.markdown_table(header, rows), "",
                    f"Machine: {machine_line(report['machine'])}. Total {result.seconds_total:.0f} s." + _cache_line(cache)])
    write_text_atomic(out / "fidelity.md", md + "\n")
    sections = ["<p>Data:</p><ul>" + "".join(f"<li>{line[2:]}</li>" for line in data_lines) + "</ul>",
                f"<p class='note'>{report['notes']}</p>", *[rep.embed_png(p, p.stem) for p in figures],
                rep.html_table(header, rows),
                f"<p>Machine: {machine_line(report['machine'])}. Total {result.seconds_total:.0f} s.{_cache_line(cache)}</p>"]
    write_text_atomic(out / "fidelity.html", rep.html_page("CardioMM biomarker fidelity", sections))
    console.print(f"wrote {out / 'fidelity.html'}, {out / 'fidelity.json'}")
    return 1 if failed else 0


def _cache_line(cache: ReconstructionCache | None) -> str:
    """What the reports say about the reconstruction cache (empty without one)."""
    if cache is None:
        return ""
    return (f" Reconstructions read back from the cache `{cache.root}`: {cache.hits} of {cache.hits + cache.misses}"
            " (their seconds per slice are those of the run that wrote them).")


def _segmented_frames(frames: dict | str) -> str:
    """What was segmented in a case (``FidelityResult.cases[i]["segmented_frames"]``), for the reports."""
    if frames == "all":
        return "every frame segmented, ED / ES = largest / smallest LV volume of each stack"
    return f"segmented at ED frame {frames['ed']} and ES frame {frames['es']}, found on {frames['found_on']}"

