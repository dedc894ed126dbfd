"""Errors raised by the CardioMM data readers and writers."""

from __future__ import annotations

import os

__all__ = ["DataFileError", "UnsupportedTrajectoryError"]


class DataFileError(ValueError):
    """A data file cannot be read (or written) as asked.

    The message always names the file and the problem:
    ``str(DataFileError(path, problem)) == f"{path}: {problem}"``.

    Attributes:
        path: the offending file (as given, converted with ``os.fspath``).
        problem: a human-readable description of what is wrong.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = str(problem)
        super().__init__(self.path, self.problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class UnsupportedTrajectoryError(DataFileError):
    """The file is readable but holds a k-space trajectory CardioMM cannot reconstruct.

    Raised, e.g., by :func:`cardiomm.data.ismrmrd_raw.read_ismrmrd_raw` for radial, spiral,
    EPI or "other" ISMRMRD trajectories; the raw samples can still be read (without
    reconstruction) with :func:`cardiomm.data.ismrmrd_raw.read_ismrmrd_samples`.
    """
