"""Content digests that name exact files (checkpoints, decoder weights) in reports and cache fingerprints.

A module of its own, with no heavy imports, so that hashing a weights file never pulls in the
training stack (Lightning takes seconds to import).
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
