"""One batch reconstruction job: settings, and what happens to each input file.

:class:`BatchJob` turns one input path into a :class:`FileResult`: skip it if its done marker
says it was finished with the same settings, else read it, (optionally) undersample it,
reconstruct its slices in batches, write the outputs of :mod:`cardiomm.batch.writers`
all-or-nothing, write the done marker, and append the summary line.  Any error while doing so
(a corrupt file, data the method cannot handle, a full disk) makes the input *failed*: the
error is recorded in the summary and the next input goes on.  ``KeyboardInterrupt`` is never
swallowed: the unfinished input leaves no output and the interruption propagates.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cardiomm.batch.engines import SliceEngine, make_engine
from cardiomm.batch.inputs import read_raw_scan
from cardiomm.batch.prepare import PreparedScan, Undersampling, prepare_scan, voxel_spacing_mm
from cardiomm.batch.writers import (
    OutputSet,
    append_summary,
    read_done_marker,
    staged_outputs,
    write_done_marker,
    write_gif_preview,
    write_nifti_magnitude,
    write_png_preview,
)
from recon.masks import DENSITIES

__all__ = ["BatchJob", "FileResult", "ReconSettings", "resolve_device"]

#: Slices per call when ``batch_size`` is 0, by device type.  On CPU one slice at a time was
#: faster (benchmarks/results/recon_throughput.md: CG-SENSE and CardioMM slower with 4 per call).
DEFAULT_BATCH_SIZE = {"cpu": 1, "cuda": 4}
#: Called after every slice batch with (slices done, slices in the file).
SliceCallback = Callable[[int, int], None]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error.

    Raises:
        ValueError: unknown device, or CUDA asked for on a machine without it.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
    return dev


def _undersampling_fingerprint(u: Undersampling | None) -> dict[str, Any] | None:
    """``u`` as a dict; the default ``kt_gaussian`` density is left out, so that output folders
    written before the density option existed are still recognised as finished."""
    if u is None:
        return None
    d = asdict(u)
    if d.get("density") == DENSITIES[0]:
        d.pop("density")
    return d


@dataclass(frozen=True)
class ReconSettings:
    """How every input of a batch is reconstructed.

    Attributes:
        method: ``cardiomm`` or a classical method (:data:`cardiomm.batch.engines.METHODS`).
        undersampling: retrospective undersampling of fully sampled inputs, or None.
        checkpoint: CardioMM checkpoint (None: the shipped one); cardiomm only.
        batch_size: slices reconstructed per call; 0 picks :data:`DEFAULT_BATCH_SIZE` of the device.
        image_type: ``magnitude`` or ``complex`` values in the ISMRMRD image file.
        previews: which previews to write (``png``, ``gif``).
        overwrite: redo inputs that are already finished.
        params: solver parameters of classical methods (e.g. ``max_iter``).
    """

    method: str = "cardiomm"
    undersampling: Undersampling | None = None
    checkpoint: str | None = None
    batch_size: int = 0
    image_type: str = "magnitude"
    previews: tuple[str, ...] = ("png", "gif")
    overwrite: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the outputs (a finished input is redone only if these differ)."""
        return {
            "method": self.method,
            "undersampling": _undersampling_fingerprint(self.undersampling),
            "checkpoint": None if self.checkpoint is None else os.fspath(Path(self.checkpoint).resolve()),
            "image_type": self.image_type,
            "previews": sorted(self.previews),
            "params": dict(sorted(self.params.items())),
        }


@dataclass
class FileResult:
    """What happened to one input: ``status`` is ``ok``, ``skipped`` or ``failed``."""

    input: Path
    name: str
    status: str
    record: dict[str, Any]
    error: str | None = None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


class BatchJob:
    """Reconstructs input files into ``out_dir`` with one engine (created on first use).

    Args:
        settings: the :class:`ReconSettings`.
        out_dir: the output folder (must exist and be writable).
        device: where to reconstruct.
        names: output name of every input (:func:`cardiomm.batch.inputs.output_names`).
        rank: process rank in a distributed run (recorded in the summary).
    """

    def __init__(
        self, settings: ReconSettings, out_dir: Path, device: torch.device, names: dict[Path, str], rank: int = 0
    ) -> None:
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.device = device
        self.names = names
        self.rank = rank
        self._engine: SliceEngine | None = None

    @property
    def engine(self) -> SliceEngine:
        """The reconstruction engine (loading a CardioMM checkpoint happens here)."""
        if self._engine is None:
            s = self.settings
            self._engine = make_engine(s.method, self.device, checkpoint=s.checkpoint, **s.params)
        return self._engine

    def outputs(self, path: Path) -> OutputSet:
        name = self.names.get(path) or path.stem
        return OutputSet(self.out_dir, f"{name}_{self.settings.method}")

    def is_finished(self, path: Path) -> bool:
        """True when ``path`` has a done marker written with the current settings."""
        marker = read_done_marker(self.outputs(path))
        return marker is not None and marker.get("settings") == self.settings.fingerprint()

    def process(self, path: Path, on_slices: SliceCallback | None = None) -> FileResult:
        """Reconstruct one input (or skip it if finished); never raises except on interruption."""
        path = Path(path)
        outputs = self.outputs(path)
        name = self.names.get(path) or path.stem
        base = {"input": os.fspath(path), "name": name, "method": self.settings.method, "rank": self.rank}
        marker = read_done_marker(outputs)
        if marker is not None and not self.settings.overwrite:
            if marker.get("settings") == self.settings.fingerprint():
                return FileResult(path, name, "skipped", marker)
            before, now = marker.get("settings") or {}, self.settings.fingerprint()
            changed = ", ".join(
                f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in now if before.get(k) != now.get(k)
            )
            error = (
                f"{path}: {outputs.done.name} says it was finished with other settings ({changed}); "
                "pass --overwrite to redo it, or use another --out folder"
            )
            return self._failed(path, name, base, error, 0.0)
        t0 = time.perf_counter()
        try:
            record = self._reconstruct_and_write(path, outputs, base, on_slices, t0)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - a bad input must not stop the batch
            return self._failed(path, name, base, _message(err, path), time.perf_counter() - t0)
        return FileResult(path, name, "ok", record)

    # ------------------------------------------------------------------ internals

    def _failed(self, path: Path, name: str, base: dict[str, Any], error: str, seconds: float) -> FileResult:
        record = {**base, "status": "failed", "error": error, "seconds": round(seconds, 3),
                  "device": str(self.device), "finished_utc": _now()}
        try:
            append_summary(self.out_dir, record)
        except OSError as err:  # e.g. the disk is full: still report the failure on the console
            record["error"] += f" (and the summary line could not be written: {err})"
        return FileResult(path, name, "failed", record, error)

    def reconstruct(self, scan: PreparedScan, on_slices: SliceCallback | None = None) -> torch.Tensor:
        """Complex ``[slice, time, y, x]`` (CPU) of a prepared scan, ``batch_size`` slices per call."""
        n = scan.n_slices
        step = int(self.settings.batch_size) or DEFAULT_BATCH_SIZE.get(self.engine.device.type, 1)
        parts = []
        for start in range(0, n, step):
            stop = min(n, start + step)
            parts.append(self.engine(scan, start, stop))
            if on_slices is not None:
                on_slices(stop, n)
        return torch.cat(parts)

    def _reconstruct_and_write(
        self, path: Path, outputs: OutputSet, base: dict[str, Any], on_slices: SliceCallback | None, t0: float
    ) -> dict[str, Any]:
        from cardiomm.data.ismrmrd_image import write_ismrmrd_images

        s = self.settings
        scan = prepare_scan(read_raw_scan(path), s.undersampling, path)
        engine = self.engine
        t_read = time.perf_counter()
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        image = self.reconstruct(scan, on_slices)
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        t_recon = time.perf_counter()
        if not bool(torch.isfinite(torch.view_as_real(image)).all()):
            raise ValueError(f"{path}: the {s.method} reconstruction holds NaN or Inf values")

        n_sl, _, nt, ny, nx = scan.kspace.shape
        meta = scan.metadata
        dy, dx, dz, notes = voxel_spacing_mm(meta, ny, nx)
        frame_s = 60.0 / meta.heart_rate_bpm / nt if meta.heart_rate_bpm else None
        magnitude = image.abs().numpy()
        sampling = {k: (_finite(v) if isinstance(v, float) else v) for k, v in scan.sampling.items()}
        out_meta = meta.with_updates(
            pixel_spacing_mm=(dy, dx),
            extra={**meta.extra, "reconstruction": {"method": s.method, "input": os.fspath(path), **sampling}},
        )
        title = (
            f"{path.name}: {s.method}, R_eff {sampling['r_effective'] or float('inf'):.2f} "
            f"(CMRxRecon R {sampling['r_cmrxrecon'] or float('inf'):.2f})"
            + (", SIMULATED data" if meta.simulated else "")
        )
        with staged_outputs(outputs) as stage:
            write_ismrmrd_images(
                outputs.path("images", stage), image if s.image_type == "complex" else magnitude, out_meta,
                series=f"cardiomm_{s.method}".replace("-", "_"), image_type=s.image_type,
            )
            write_nifti_magnitude(
                outputs.path("nifti", stage), magnitude, (dy, dx, dz), frame_seconds=frame_s,
                description=f"cardiomm recon {s.method} R{sampling['r_effective'] or 0:.1f}",
            )
            if "png" in s.previews:
                write_png_preview(outputs.path("png", stage), magnitude, title)
            if "gif" in s.previews:
                write_gif_preview(outputs.path("gif", stage), magnitude, frame_s)
        seconds = time.perf_counter() - t0
        record = {
            **base,
            "status": "ok",
            "r_effective": sampling["r_effective"],
            "r_cmrxrecon": sampling["r_cmrxrecon"],
            "sampling": sampling,
            "shape": {"slice": n_sl, "coil": int(scan.kspace.shape[1]), "time": nt, "y": ny, "x": nx},
            "voxel_mm": {"y": dy, "x": dx, "slice": dz, "slice_thickness": meta.slice_thickness_mm},
            "frame_seconds": frame_s,
            "notes": notes,
            "simulated": bool(meta.simulated),
            "seconds": round(seconds, 3),
            "seconds_read": round(t_read - t0, 3),
            "seconds_recon": round(t_recon - t_read, 3),
            "slices_per_second": round(n_sl / (t_recon - t_read), 4) if t_recon > t_read else None,
            "device": str(engine.device),
            "engine": engine.describe(),
            "outputs": {k: outputs.path(k).name for k in ("images", "nifti", *s.previews)},
            "settings": s.fingerprint(),
            "finished_utc": _now(),
        }
        try:
            write_done_marker(outputs, record)
        except BaseException:
            for kind in ("images", "nifti", "png", "gif"):
                outputs.path(kind).unlink(missing_ok=True)
            raise
        try:
            append_summary(self.out_dir, record)
        except OSError as err:
            record["notes"] = [*notes, f"summary line not written: {err}"]
        return record


def _message(err: BaseException, path: Path) -> str:
    text = str(err) or type(err).__name__
    if os.fspath(path) not in text and path.name not in text:
        text = f"{path}: {text}"
    if not isinstance(err, (ValueError, OSError)):
        text = f"{type(err).__name__}: {text}"
    return text
