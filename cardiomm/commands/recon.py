"""``cardiomm recon``: batch reconstruction of ISMRMRD raw files (and CMRxRecon .mat files) into images.

INPUT is an ISMRMRD raw-data file (.h5/.mrd), a CMRxRecon k-space file (.mat: fully sampled
``kspace_full``/``kspace``, or undersampled ``kus``/``kspace_subNN`` whose mask is read from the
nonzero samples) or a folder of them (CMRxRecon mask files, ``*mask*.mat``, are skipped; the .mat
files carry no geometry, so their voxel size is unknown and noted).  Prospectively undersampled
data are reconstructed with the sampling recorded in the file; fully sampled data are
reconstructed as they are, or undersampled retrospectively first with --accel R (--mask
PATTERN, --seed S: slice s uses seed S+s).  Both acceleration conventions are reported: the
effective R (grid samples / samples kept, calibration included) and the CMRxRecon 2024 R
(counted outside the per-frame calibration lines).

Outputs in --out, per input NAME and method M:
  NAME_M.images.h5   ISMRMRD image series [slice, time, y, x] (magnitude, or --image-type complex)
  NAME_M.nii.gz      NIfTI magnitude, axes (x, y, slice, time), voxel size in mm from the header
  NAME_M.png/.gif    preview of the middle slice (a few frames / the whole cycle)
  NAME_M.done.json   done marker, written last; a rerun skips inputs that have one
  summary.jsonl      one JSON line per processed input: input, method, R (effective and
                     CMRxRecon), seconds, device, status (ok/failed) and error
Every output is written atomically and an input's outputs appear together (staged, then moved),
so a killed or interrupted run keeps its finished inputs and leaves nothing of the unfinished
one; run the same command again to resume.  A file that cannot be read or reconstructed is
reported, recorded as failed and skipped.

Exit code: the number of failed inputs (0 = all finished; capped at 125); 126 when nothing could
start (output folder not writable, no inputs, missing checkpoint, no GPU for --device cuda);
130 on Ctrl-C or SIGTERM; 2 for command-line usage errors.

Beyond one machine (Lightning predict, DDP sharding of the file list):
  cardiomm recon scans/ --out recon/ --strategy ddp --devices 4
      one machine, 4 GPUs: Lightning starts 4 processes; each reconstructs its share of the
      files on its own GPU and writes its outputs itself (no file is done twice).
  srun --nodes 2 --ntasks-per-node 4 cardiomm recon scans/ --out recon/ --strategy ddp --devices 4 --num-nodes 2
  torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
      -m cardiomm.cli recon scans/ --out recon/ --strategy ddp --devices 4 --num-nodes 2
      several nodes (SLURM or torchrun start the processes; --out must be a shared file system;
      every process lists the inputs itself, so they must be visible to every node).
  --device cpu --strategy ddp --devices 2 runs 2 CPU processes (for testing).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from cardiomm.batch.job import BatchJob, FileResult, ReconSettings

#: Exit code when the batch could not start at all.
EXIT_SETUP_ERROR = 126
#: Largest exit code used for a count of failed inputs.
MAX_FAILED_EXIT = 125
#: Methods with an iteration count that ``--max-iter`` sets.
ITERATIVE = ("cg-sense", "cs", "kt-sparse", "lps", "st-tv")


def register(sub: argparse._SubParsersAction) -> None:
    from cardiomm.batch.engines import METHODS
    from recon.masks import CONVENTIONS, DENSITIES, PATTERNS

    p = sub.add_parser(
        "recon",
        help="reconstruct ISMRMRD raw files or CMRxRecon .mat files (or folders of them) into ISMRMRD images, "
             "NIfTI and previews",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="ISMRMRD raw file (.h5/.mrd), CMRxRecon k-space file (.mat) or folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--method", choices=METHODS, default="cardiomm", help="reconstruction method (default: cardiomm)")
    p.add_argument("--checkpoint", type=Path, help="CardioMM checkpoint (default: the one shipped with the package)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=0,
                   help="slices reconstructed per call (default: 1 on CPU, where batching measured slower, 4 on CUDA)")
    g = p.add_argument_group("retrospective undersampling of fully sampled inputs")
    g.add_argument("--accel", type=float, help="acceleration R (without it, inputs are reconstructed as they are)")
    g.add_argument("--mask", choices=PATTERNS, default="kt_gaussian", help="sampling pattern (default kt_gaussian)")
    g.add_argument("--seed", type=int, default=0, help="mask seed; slice s uses seed + s (default 0)")
    g.add_argument("--density", choices=DENSITIES, default=DENSITIES[0],
                   help="ky density of --mask kt_gaussian: broad (default, close to CMRxRecon's) or kt-focuss (steeper)")
    g.add_argument("--convention", choices=CONVENTIONS, default="effective", help="how --accel is counted")
    g.add_argument("--acs-lines", type=int, default=16, help="central calibration lines (default 16)")
    o = p.add_argument_group("outputs")
    o.add_argument("--image-type", choices=("magnitude", "complex"), default="magnitude",
                   help="values stored in the ISMRMRD image file")
    o.add_argument("--preview", choices=("both", "png", "gif", "none"), default="both", help="previews to write")
    o.add_argument("--overwrite", action="store_true", help="redo inputs that are already finished")
    o.add_argument("--recursive", action="store_true", help="also look into sub-folders of INPUT folders")
    o.add_argument("--max-iter", type=int, help="iterations of the iterative classical methods (default: theirs)")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    d = p.add_argument_group("several processes, GPUs or nodes (Lightning predict)")
    d.add_argument("--strategy", choices=("none", "ddp", "ddp_spawn"), default="none",
                   help="none: this process does every file (default); ddp: Lightning shards the files over processes")
    d.add_argument("--devices", default="auto", help="processes per node with --strategy (an integer, or auto)")
    d.add_argument("--num-nodes", type=int, default=1, help="nodes with --strategy ddp")
    p.set_defaults(func=run)


class SetupError(Exception):
    """The batch cannot start (the message says why)."""


def _settings(args: argparse.Namespace) -> ReconSettings:
    from cardiomm.batch.job import ReconSettings
    from cardiomm.batch.prepare import Undersampling
    from recon.masks import DENSITIES

    if args.batch_size < 0:
        raise SetupError(f"--batch-size must be >= 1 (or 0 for the device's default), got {args.batch_size}")
    if args.checkpoint is not None and args.method != "cardiomm":
        raise SetupError(f"--checkpoint is used by --method cardiomm only, not {args.method}")
    params = {}
    if args.max_iter is not None:
        if args.method not in ITERATIVE:
            raise SetupError(f"--max-iter applies to {', '.join(ITERATIVE)}, not {args.method}")
        if args.max_iter < 1:
            raise SetupError(f"--max-iter must be >= 1, got {args.max_iter}")
        params["max_iter"] = int(args.max_iter)
    under = None
    if args.accel is not None:
        if not args.accel >= 1:
            raise SetupError(f"--accel must be >= 1, got {args.accel}")
        if args.density != DENSITIES[0] and args.mask != "kt_gaussian":
            raise SetupError(f"--density {args.density} applies to --mask kt_gaussian only, not to {args.mask}")
        under = Undersampling(float(args.accel), args.mask, int(args.seed), args.convention, int(args.acs_lines),
                              args.density)
    previews = {"both": ("png", "gif"), "png": ("png",), "gif": ("gif",), "none": ()}[args.preview]
    return ReconSettings(
        method=args.method, undersampling=under, checkpoint=None if args.checkpoint is None else str(args.checkpoint),
        batch_size=int(args.batch_size), image_type=args.image_type, previews=previews, overwrite=args.overwrite,
        params=params,
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    err = Console(stderr=True)
    try:
        settings = _settings(args)
        from cardiomm.batch.inputs import discover_inputs, output_names
        from cardiomm.batch.writers import check_output_folder

        out = Path(args.out)
        check_output_folder(out)
        inputs = discover_inputs(args.inputs, recursive=args.recursive, exclude=[out])
        if not inputs:
            raise SetupError(f"no ISMRMRD raw files (.h5/.mrd) or CMRxRecon files (.mat) found in {', '.join(map(str, args.inputs))}")
        names = output_names(inputs)
        if args.strategy != "none":
            return _run_distributed(args, settings, inputs, names, out)
        from cardiomm.batch.job import BatchJob, resolve_device

        job = BatchJob(settings, out, resolve_device(args.device), names)
        _ = job.engine  # load the method (a CardioMM checkpoint) before the first file
    except (SetupError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"cardiomm recon: error: {e}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    return _run_local(job, inputs, err, quiet=args.quiet)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``kill``) like Ctrl-C while the batch runs, so the unfinished input is cleaned up."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_local(job: BatchJob, inputs: list[Path], console: Console, quiet: bool) -> int:
    from cardiomm.batch.progress import BatchProgress

    results = []
    current = None
    try:
        with _sigterm_as_interrupt(), BatchProgress(len(inputs), console=console, enabled=not quiet) as progress:
            for path in inputs:
                current = path
                progress.start_file(path.name)
                result = job.process(path, progress.slices)
                progress.file_done(result)
                results.append(result)
                current = None
    except KeyboardInterrupt:
        done = sum(r.status in ("ok", "skipped") for r in results)
        console.print(
            f"interrupted{f' while reconstructing {current}' if current else ''}: nothing of it was written; "
            f"{done} finished input(s) are kept in {job.out_dir}; run the same command again to resume",
            highlight=False, markup=False,
        )
        raise
    return _report(results, inputs, job, console)


def _report(results: list[FileResult], inputs: list[Path], job: BatchJob, console: Console) -> int:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    console.print(
        f"{len(inputs)} input(s): {counts['ok']} reconstructed, {counts['skipped']} already finished, "
        f"{counts['failed']} failed; outputs in {job.out_dir} (summary.jsonl)",
        highlight=False, markup=False,
    )
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        console.print(f"  failed: {r.error}", highlight=False, markup=False)
    return min(len(failed), MAX_FAILED_EXIT)


def _run_distributed(
    args: argparse.Namespace, settings: ReconSettings, inputs: list[Path], names: dict[Path, str], out: Path
) -> int:
    from rich.console import Console

    from cardiomm.batch.distributed import run_distributed
    from cardiomm.batch.job import BatchJob, resolve_device

    dev = resolve_device(args.device)  # checks that CUDA exists when asked for
    if settings.method == "cardiomm":
        from cardiomm.inference import DEFAULT_CHECKPOINT

        ckpt = Path(settings.checkpoint) if settings.checkpoint else DEFAULT_CHECKPOINT
        if not ckpt.is_file():
            raise SetupError(f"CardioMM checkpoint {ckpt} does not exist")
    if args.quiet:
        import logging

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    accelerator = "gpu" if dev.type == "cuda" else "cpu"
    devices = args.devices if args.devices == "auto" else int(args.devices)
    module, trainer = run_distributed(
        inputs, settings, out, names, strategy=args.strategy, accelerator=accelerator, devices=devices,
        num_nodes=int(args.num_nodes), show_progress=not args.quiet,
    )
    # every rank has passed the final all-gather: each input is finished or failed for good
    checker = BatchJob(settings, out, dev, names)
    unfinished = [p for p in inputs if not checker.is_finished(p)]
    if trainer.global_rank == 0:
        console = Console(stderr=True)
        console.print(
            f"{len(inputs)} input(s) over {trainer.world_size} process(es): {len(inputs) - len(unfinished)} finished, "
            f"{len(unfinished)} failed; outputs in {out} (summary.jsonl)",
            highlight=False, markup=False,
        )
        for p in unfinished:
            console.print(f"  failed: {p} (see summary.jsonl)", highlight=False, markup=False)
    return min(len(unfinished), MAX_FAILED_EXIT)
