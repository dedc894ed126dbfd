"""Which files a batch reconstruction reads, how, and the names its outputs get.

Inputs are ISMRMRD raw-data files (``.h5`` / ``.mrd``), CMRxRecon k-space files (``.mat``) or
folders of them.  A folder contributes the raw files directly inside it (or, with
``recursive=True``, anywhere below it), in sorted order; files that are outputs of a batch run
(``*.images.h5``, see :data:`OUTPUT_IMAGE_SUFFIX`), CMRxRecon mask files (a ``.mat`` whose name
contains ``mask``, e.g. ``cine_sax_mask_ktGaussian8.mat``) and hidden files are left out, so an
output folder can sit inside an input folder and a CMRxRecon patient folder can be given whole.
Paths given explicitly are always kept, even if they do not exist or have another suffix: the
run then reports them as failed inputs instead of silently dropping them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cardiomm.data.sources import RAW_SUFFIXES  # ISMRMRD .h5/.mrd and CMRxRecon .mat: the data layer's list

if TYPE_CHECKING:
    from cardiomm.data.metadata import KSpaceScan

__all__ = ["OUTPUT_IMAGE_SUFFIX", "RAW_SUFFIXES", "discover_inputs", "output_names", "read_raw_scan"]

#: Suffix of the ISMRMRD image files a batch run writes (never taken as an input from a folder).
OUTPUT_IMAGE_SUFFIX = ".images.h5"

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _is_raw_candidate(path: Path) -> bool:
    name = path.name
    suffix = path.suffix.lower()
    return (
        path.is_file()
        and not name.startswith(".")
        and suffix in RAW_SUFFIXES
        and not name.endswith(OUTPUT_IMAGE_SUFFIX)
        and not (suffix == ".mat" and "mask" in path.stem.lower())
    )


def read_raw_scan(path: Path) -> KSpaceScan:
    """Read one input: a CMRxRecon ``.mat`` file by its suffix, anything else as ISMRMRD raw data.

    Raises:
        DataFileError: the file cannot be read as that format (the message names the file).
    """
    if path.suffix.lower() == ".mat":
        from cardiomm.data.cmrxrecon import read_cmrxrecon_kspace

        return read_cmrxrecon_kspace(path)
    from cardiomm.data.ismrmrd_raw import read_ismrmrd_raw

    return read_ismrmrd_raw(path)


def discover_inputs(
    paths: Iterable[str | os.PathLike[str]], *, recursive: bool = False, exclude: Sequence[Path] = ()
) -> list[Path]:
    """Expand files and folders into the ordered list of input files (duplicates removed).

    Args:
        paths: files and folders as given on the command line.
        recursive: look into sub-folders of the given folders too.
        exclude: folders not to look into (e.g. the output folder).
    Returns:
        Paths in command-line order; each folder's files sorted by name.  Explicit paths are
        kept as given even when missing (they fail later with a clear message).
    """
    excluded = {p.resolve() for p in exclude}
    found: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(p)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.iterdir()
            for child in sorted(walker):
                if any(parent in excluded for parent in (child.resolve(), *child.resolve().parents)):
                    continue
                if _is_raw_candidate(child) and not any(part.startswith(".") for part in child.relative_to(p).parts):
                    add(child)
        else:
            add(p)
    return found


def output_names(inputs: Sequence[Path]) -> dict[Path, str]:
    """A file-name-safe output name for every input: its stem, made unique.

    Two inputs with the same stem (``a/scan.h5``, ``b/scan.h5``) both get a suffix: the first
    8 hex digits of the SHA-1 of their absolute path, so the names do not depend on the
    order in which the inputs are given.
    """
    stems = {p: _UNSAFE.sub("_", p.stem) or "input" for p in inputs}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    names = {}
    for p, stem in stems.items():
        if counts[stem] > 1:
            digest = hashlib.sha1(str(p.resolve()).encode("utf-8")).hexdigest()[:8]
            stem = f"{stem}-{digest}"
        names[p] = stem
    return names
