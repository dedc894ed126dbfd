"""A reconstruction cache for the fidelity benchmark: rerun the scoring without redoing the reconstructions.

A fidelity run spends most of its time reconstructing (on SCD0000301, k-t SPARSE-SENSE alone is
about half of a 15-minute run on 2 cores), while what one changes between runs is often the
segmenter or the report.  With a cache folder, every reconstruction's magnitude
(float32 ``[slice, time, y, x]``, exactly what the scoring reads) is stored under a key, and a
later run with the same key reads it back instead of reconstructing.  The results are then
identical to a run without the cache; only the seconds per slice are those measured when the
entry was written (each run says so: ``"reconstruction_cached": true``).  A run that was
interrupted keeps the reconstructions it finished, so running the same command again resumes it.

The key is the sha256 of everything the reconstruction depends on:

* the case's fully sampled k-space (its bytes and shape) and metadata;
* the sampling mask and calibration region (their bytes), pattern, R and seed;
* the method: name, :attr:`~cardiomm.fidelity.methods.MethodRunner.description` (parameters,
  checkpoint sha256) and device type (CPU and GPU results differ in rounding);
* the code: the source of :mod:`recon`, :mod:`cardiomm.model`, :mod:`cardiomm.batch`,
  :mod:`cardiomm.inference`, :mod:`cardiomm.fidelity.methods` and the two data modules the
  network's input goes through (:mod:`cardiomm.data.datasets`: its normalisation;
  :mod:`cardiomm.data.metadata`: its context), and the torch and numpy versions.  Any edit there
  starts the cache afresh; an edit to the segmenter (:mod:`segment`), the readers and simulation
  (their k-space is in the key) or the reports does not.

A runner built by hand (not by :func:`~cardiomm.fidelity.methods.make_method`) is keyed by its
name and description only: the cache cannot see its code.

An entry is two files, ``KEY.npy`` (the magnitude) and ``KEY.json`` (what it is, and the seconds),
each written atomically, the JSON last: a run killed in between leaves no entry that is read back.
An entry that cannot be read (truncated, wrong shape) is reported and recomputed; one that cannot be
written (a full disk) is reported and the run goes on without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cardiomm.atomic import atomic_path, write_json_atomic
from cardiomm.digests import array_sha256, json_sha256
from recon.masks import SamplingMask

__all__ = ["CACHE_FORMAT", "CachedReconstruction", "ReconstructionCache", "code_digest"]

#: Version of the entry layout; part of every key.
CACHE_FORMAT = 1

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

#: Source files and folders (relative to the repository root) whose code makes the reconstructions.
_CODE = ("recon", "cardiomm/model", "cardiomm/batch", "cardiomm/inference.py", "cardiomm/fidelity/methods.py",
         "cardiomm/data/datasets.py", "cardiomm/data/metadata.py")


def code_digest(root: Path = _PACKAGE_ROOT, parts: tuple[str, ...] = _CODE) -> str:
    """sha256 over the ``.py`` files of ``parts`` (paths and bytes, in sorted order) and the torch/numpy versions."""
    digest = hashlib.sha256(f"torch {torch.__version__} numpy {np.__version__}".encode())
    for part in parts:
        path = root / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()


def _tensor_digest(t: torch.Tensor | None) -> str | None:
    return None if t is None else array_sha256(t.detach().cpu().numpy())


@dataclass
class CachedReconstruction:
    """An entry read back: the magnitude ``[slice, time, y, x]`` and the seconds per slice it took when written."""

    magnitude: np.ndarray
    seconds_per_slice: float


class ReconstructionCache:
    """Magnitudes of reconstructions in ``root``, keyed by what made them (see the module docstring).

    Args:
        root: the cache folder (created on the first write).
        warn: called with a message when an entry cannot be read (it is then recomputed) or written.
    """

    def __init__(self, root: str | os.PathLike[str], warn: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"reconstruction cache {self.root} exists and is not a folder")
        self.warn = warn
        self.code = code_digest()
        self._case_digests: dict[int, tuple[torch.Tensor, str]] = {}
        self.hits = 0
        self.misses = 0

    def case_digest(self, kspace: torch.Tensor) -> str:
        """sha256 of a case's k-space (computed once per tensor)."""
        known = self._case_digests.get(id(kspace))
        if known is None or known[0] is not kspace:  # the tensor is kept, so its id is not reused meanwhile
            known = (kspace, str(_tensor_digest(kspace)))
            self._case_digests[id(kspace)] = known
        return known[1]

    def key(self, kspace: torch.Tensor, metadata: dict[str, Any], sampling: SamplingMask, mask_seed: int,
            method: str, description: dict[str, Any], device: torch.device | str) -> str:
        """The entry name of one reconstruction (hex sha256)."""
        parts = {
            "format": CACHE_FORMAT,
            "code": self.code,
            "kspace": self.case_digest(kspace),
            "metadata": metadata,
            "pattern": sampling.pattern,
            "r_effective": sampling.r_effective,
            "mask_seed": int(mask_seed),
            "mask": _tensor_digest(sampling.mask),
            "acs": _tensor_digest(sampling.acs),
            "method": method,
            "description": description,
            "device": torch.device(device).type,
        }
        return json_sha256(parts)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.json"

    def load(self, key: str, shape: tuple[int, ...]) -> CachedReconstruction | None:
        """The entry ``key`` if it exists and holds a float32 array of ``shape``; else None (a bad entry is reported)."""
        array_path, info_path = self._paths(key)
        if not info_path.is_file():
            self.misses += 1
            return None
        try:
            info = json.loads(info_path.read_text())
            magnitude = np.load(array_path, allow_pickle=False)
            if magnitude.dtype != np.float32 or tuple(magnitude.shape) != tuple(shape):
                raise ValueError(f"holds {magnitude.dtype} {list(magnitude.shape)}, expected float32 {list(shape)}")
            entry = CachedReconstruction(magnitude, float(info["seconds_per_slice"]))
        except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
            if self.warn is not None:
                self.warn(f"reconstruction cache entry {array_path} is unreadable ({err}); reconstructing again")
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def store(self, key: str, magnitude: np.ndarray, seconds_per_slice: float, device: torch.device | str,
              about: dict[str, Any]) -> bool:
        """Write an entry: the array first, then the JSON that makes it visible (each atomically).

        Returns False when it could not be written (a full disk, a folder that is not writable):
        that is reported through ``warn`` and the run goes on without the entry.
        """
        array_path, info_path = self._paths(key)
        try:
            with atomic_path(array_path) as tmp:
                np.save(tmp, np.ascontiguousarray(magnitude, dtype=np.float32), allow_pickle=False)
            write_json_atomic(info_path, {**about, "seconds_per_slice": float(seconds_per_slice), "device": str(device),
                                          "shape": list(magnitude.shape), "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
        except OSError as err:
            if self.warn is not None:
                self.warn(f"could not write reconstruction cache entry {array_path} ({err}); going on without it")
            return False
        return True
