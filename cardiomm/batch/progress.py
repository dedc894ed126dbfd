"""A rich progress display over the files of a batch and the slices of the current file."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["BatchProgress"]

_STATUS_STYLE = {"ok": "green", "skipped": "cyan", "failed": "red"}


class BatchProgress:
    """Two bars: files of the batch, slices of the current file; one line per finished file.

    Args:
        n_files: inputs in this process's share.
        label: shown in the files bar (e.g. the rank).
        console: where to draw (default: stderr).
        enabled: False draws nothing (the methods still work).
    """

    def __init__(self, n_files: int, label: str = "", console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self._files = self._progress.add_task(f"files {label}".strip(), total=n_files)
        self._slices = self._progress.add_task("slices", total=1, visible=False)

    def __enter__(self) -> "BatchProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def start_file(self, name: str) -> None:
        self._progress.reset(self._slices, total=1, completed=0, description=f"slices of {name}", visible=True)

    def slices(self, done: int, total: int) -> None:
        """Slice callback of :meth:`cardiomm.batch.job.BatchJob.process`."""
        self._progress.update(self._slices, total=total, completed=done)

    def file_done(self, result: Any) -> None:
        """Advance the files bar and print one line about ``result`` (a :class:`FileResult`)."""
        self._progress.update(self._slices, visible=False)
        self._progress.advance(self._files)
        style = _STATUS_STYLE.get(result.status, "white")
        rec = result.record
        if result.status == "ok":
            detail = (
                f"R_eff {rec['r_effective']:.2f} (CMRxRecon {rec['r_cmrxrecon']:.2f}), "
                f"{rec['seconds']:.1f} s on {rec['device']}"
                if rec.get("r_effective") is not None and rec.get("r_cmrxrecon") is not None
                else f"{rec['seconds']:.1f} s"
            )
        elif result.status == "skipped":
            detail = "already finished (done marker found)"
        else:
            detail = result.error or "failed"
        self._progress.console.print(f"[{style}]{result.status:>7}[/] {escape(str(result.input))}: {escape(detail)}", highlight=False,
                                     markup=True, soft_wrap=True)
