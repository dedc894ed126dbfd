"""Pack what a GPU session needs into ``.device/`` (git-ignored), on the development machine.

    python benchmarks/device/pack.py            # then: see benchmarks/device/README.md

The lent GPU machine reaches no package registry and does not see ``../shared``, and a call
carries at most 64 MiB, the tracked tree included.  So this script, run here beforehand (no device time):

* downloads the wheels of the Python packages that machine lacks (its image has torch, lightning,
  numpy, scipy, h5py, einops, matplotlib, rich, ...; see the device tool's KINDS.md) for its
  Python 3.12, into ``.device/wheels``;
* copies the Sunnybrook cines (``../shared/data/sunnybrook``: DICOMs, contours, ``link.csv``) into
  ``.device/shared/data/sunnybrook``, every DICOM re-saved with the lossless *Deflated Explicit VR
  Little Endian* transfer syntax (91 MB -> about a third) and checked pixel for pixel;
* prints what the call will carry, against the 64 MiB limit.

A rerun keeps what is already there and complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / ".device"
SUNNYBROOK = ROOT.parent / "shared" / "data" / "sunnybrook"
#: Packages the device image lacks (with the versions this repository is tested with), and their own
#: needs that it lacks too.  Pure-Python wheels except PyWavelets.
WHEELS = [
    "sigpy==0.1.27", "PyWavelets==1.9.0", "ismrmrd==1.15.0", "xsdata==26.10", "pydicom==3.0.2",
    "nibabel==5.4.2", "jsonargparse==4.53.0", "docstring-parser==0.18.0", "typeshed-client==2.15.0",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
LIMIT_MIB = 64


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def download_wheels(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(target), *WHEELS]
    subprocess.run(cmd, check=True)


def deflate_dicoms(src: Path, dst: Path) -> tuple[int, int]:
    """Re-save every ``*.dcm`` under ``src`` into ``dst`` (same relative path), deflated; returns (files, bytes in)."""
    import numpy as np
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    n = size = 0
    for f in sorted(src.rglob("*.dcm")):
        out = dst / f.relative_to(src)
        size += f.stat().st_size
        n += 1
        if out.is_file():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        ds = pydicom.dcmread(f)
        original = ds.pixel_array
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        tmp = out.with_suffix(".tmp")
        ds.save_as(tmp, enforce_file_format=True)
        if not np.array_equal(pydicom.dcmread(tmp).pixel_array, original):
            tmp.unlink()
            raise RuntimeError(f"{f}: the deflated copy does not hold the same pixels")
        os.replace(tmp, out)
    return n, size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-wheels", action="store_true", help="skip the wheel download")
    args = p.parse_args(argv)
    if not SUNNYBROOK.is_dir():
        print(f"{SUNNYBROOK}: not found (the Sunnybrook cines of ../shared/data)", file=sys.stderr)
        return 1
    if not args.no_wheels:
        download_wheels(PACK / "wheels")
    dst = PACK / "shared" / "data" / "sunnybrook"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(SUNNYBROOK / "link.csv", dst / "link.csv")
    shutil.copytree(SUNNYBROOK / "contourfiles", dst / "contourfiles", dirs_exist_ok=True)
    n, size = deflate_dicoms(SUNNYBROOK / "dicoms", dst / "dicoms")
    tree = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    tree_mib = sum((ROOT / f.decode()).stat().st_size for f in tree if f and (ROOT / f.decode()).is_file()) / 2**20
    pack_mib = folder_mib(PACK)
    print(f"{n} DICOMs: {size / 2**20:.1f} MiB -> {folder_mib(dst / 'dicoms'):.1f} MiB deflated (pixels checked)")
    print(f"carry .device: {pack_mib:.1f} MiB (wheels {folder_mib(PACK / 'wheels') if (PACK / 'wheels').is_dir() else 0:.1f}); "
          f"tracked tree {tree_mib:.1f} MiB; together {pack_mib + tree_mib:.1f} of {LIMIT_MIB} MiB")
    return 0 if pack_mib + tree_mib < LIMIT_MIB else 1


if __name__ == "__main__":
    raise SystemExit(main())
