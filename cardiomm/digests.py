"""Content digests that name exact files (checkpoints, decoder weights), arrays and settings in
reports and cache fingerprints.

A module of its own, with no heavy imports, so that hashing a weights file never pulls in the
training stack (Lightning takes seconds to import).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

__all__ = ["array_sha256", "file_sha256", "json_sha256"]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(obj: Any) -> str:
    """Hex sha256 of ``obj`` as JSON with sorted keys (anything JSON cannot write is written as ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """Hex sha256 of an array's dtype, shape and bytes (in C order)."""
    a = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{a.dtype.str} {a.shape}".encode())
    digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()
