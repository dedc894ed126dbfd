"""What a batch reconstruction writes for each input, and how it commits it all-or-nothing.

Per input ``NAME`` (see :func:`cardiomm.batch.inputs.output_names`) and method ``M``, in the
output folder:

==========================  ======================================================================
``NAME_M.images.h5``        ISMRMRD image series ``[slice, time, y, x]`` (magnitude, or complex)
``NAME_M.nii.gz``           NIfTI-1 magnitude, axes ``(x, y, slice, time)``, voxel size in mm
``NAME_M.png``              preview: the middle slice, up to 4 frames spread over the cycle
``NAME_M.gif``              preview: the middle slice, every frame, looping
``NAME_M.done.json``        the done marker, written last (holds the summary record)
``summary.jsonl``           one JSON line per processed input (appended; ok and failed)
==========================  ======================================================================

All outputs of one input are first written into a private staging folder inside the output
folder (``.staging-NAME_M-*``), then moved into place with :func:`os.replace`, then the done
marker is written atomically.  An input counts as finished only when its done marker exists,
so a run killed at any moment leaves either a finished input or one that the next run redoes;
an interruption that Python sees (Ctrl-C, a full disk) also removes whatever of the unfinished
input was already moved into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cardiomm.atomic import atomic_path, write_json_atomic
from cardiomm.data.nifti import write_nifti_cine

__all__ = [
    "OutputSet",
    "append_summary",
    "check_output_folder",
    "read_done_marker",
    "staged_outputs",
    "write_gif_preview",
    "write_nifti_magnitude",
    "write_png_preview",
]

SUMMARY_NAME = "summary.jsonl"


class OutputSet:
    """The output paths of one input reconstructed with one method.

    Args:
        out_dir: the output folder.
        base: ``NAME_METHOD``.
    """

    KINDS = ("images", "nifti", "png", "gif")

    def __init__(self, out_dir: Path, base: str) -> None:
        self.out_dir = Path(out_dir)
        self.base = base

    def path(self, kind: str, folder: Path | None = None) -> Path:
        suffix = {"images": ".images.h5", "nifti": ".nii.gz", "png": ".png", "gif": ".gif", "done": ".done.json"}[kind]
        return (folder or self.out_dir) / f"{self.base}{suffix}"

    @property
    def done(self) -> Path:
        return self.path("done")


def check_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and prove it is writable by creating and removing a file there.

    Raises:
        PermissionError: with a message naming the folder and the reason.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PermissionError(f"output folder {out_dir} cannot be created: a file of that name exists") from None
    except OSError as err:
        raise PermissionError(f"output folder {out_dir} cannot be created: {err.strerror or err}") from None
    if not out_dir.is_dir():
        raise PermissionError(f"output folder {out_dir} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(f"output folder {out_dir} is not writable: {err.strerror or err}") from None


def read_done_marker(outputs: OutputSet) -> dict[str, Any] | None:
    """The record in the done marker of ``outputs``, or None when the input is not finished."""
    try:
        return json.loads(outputs.done.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


@contextlib.contextmanager
def staged_outputs(outputs: OutputSet) -> Iterator[Path]:
    """Yield a private staging folder; on success move its files into place, else leave nothing.

    Files are moved with :func:`os.replace` (same file system, atomic per file).  If anything
    fails or is interrupted, the staging folder and every file of this input already moved are
    removed (the done marker is not written here: the caller writes it after this block).
    Stale staging folders of the same input (from a killed run) are removed first.
    """
    out_dir = outputs.out_dir
    for stale in out_dir.glob(f".staging-{outputs.base}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".staging-{outputs.base}-", dir=out_dir))
    moved: list[Path] = []
    try:
        yield stage
        umask = os.umask(0)
        os.umask(umask)
        for src in sorted(stage.iterdir()):
            os.chmod(src, 0o666 & ~umask)
            dst = out_dir / src.name
            os.replace(src, dst)
            moved.append(dst)
    except BaseException:
        for dst in moved:
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def append_summary(out_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``out_dir/summary.jsonl``, atomically and safely across processes.

    The file is rewritten through :func:`cardiomm.atomic.atomic_path` (a reader never sees a
    half-written line) while an exclusive ``flock`` on ``.summary.lock`` keeps concurrent writers
    (several ranks of a distributed run) from losing each other's lines.
    """
    path = Path(out_dir) / SUMMARY_NAME
    line = json.dumps(record, default=_plain) + "\n"
    with open(Path(out_dir) / ".summary.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = path.read_bytes() if path.exists() else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            with atomic_path(path) as tmp:
                tmp.write_bytes(old + line.encode("utf-8"))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_done_marker(outputs: OutputSet, record: dict[str, Any]) -> None:
    """Write the done marker (last step of an input)."""
    write_json_atomic(outputs.done, record)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_nifti_magnitude(
    path: Path,
    magnitude: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    frame_seconds: float | None = None,
    description: str = "",
) -> None:
    """Write a magnitude cine ``[slice, time, y, x]`` as float32 NIfTI-1 with axes ``(x, y, slice, time)``
    (:func:`cardiomm.data.nifti.write_nifti_cine`; affine ``diag(dx, dy, dz)``, the scanner
    orientation is not known from the raw data; ``spacing_mm`` = ``(dy, dx, dz)``)."""
    write_nifti_cine(path, np.asarray(magnitude, np.float32), spacing_mm, frame_seconds=frame_seconds,
                     description=description)


def _display(magnitude: np.ndarray) -> np.ndarray:
    """uint8 image stack scaled to the 99.5th percentile of ``magnitude``."""
    mag = np.asarray(magnitude, np.float32)
    top = float(np.percentile(mag, 99.5)) if mag.size else 0.0
    if not np.isfinite(top) or top <= 0:
        top = float(mag.max()) if mag.size and float(mag.max()) > 0 else 1.0
    return (np.clip(mag / top, 0, 1) * 255).round().astype(np.uint8)


def write_png_preview(path: Path, magnitude: np.ndarray, title: str, n_frames: int = 4) -> None:
    """PNG of the middle slice of ``magnitude [slice, time, y, x]``: ``n_frames`` frames spread over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_sl, nt = magnitude.shape[:2]
    s = n_sl // 2
    frames = sorted({int(round(v)) for v in np.linspace(0, nt - 1, min(n_frames, nt))})
    shown = _display(magnitude[s])
    fig, axes = plt.subplots(1, len(frames), figsize=(2.4 * len(frames), 2.7), squeeze=False, constrained_layout=True)
    for ax, t in zip(axes[0], frames):
        ax.imshow(shown[t], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"slice {s}, frame {t}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def write_gif_preview(path: Path, magnitude: np.ndarray, frame_seconds: float | None = None) -> None:
    """Looping GIF of every frame of the middle slice of ``magnitude [slice, time, y, x]``."""
    from PIL import Image

    s = magnitude.shape[0] // 2
    shown = _display(magnitude[s])
    frames = [Image.fromarray(f) for f in shown]
    ms = int(round(1000 * frame_seconds)) if frame_seconds else 60
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=max(ms, 20), loop=0)
