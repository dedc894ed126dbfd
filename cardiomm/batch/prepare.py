"""Read one raw file and get it ready to reconstruct: k-space, sampling, calibration, geometry.

Prospectively undersampled data keep the mask recorded in the file.  Fully sampled data can be
undersampled retrospectively with :func:`recon.masks.make_mask` (one mask per slice, seed
``seed + slice``); asking for that on data that are already undersampled is an error.

Acceleration is reported in both conventions of :mod:`recon.masks`:

* ``r_effective``: grid samples / samples kept, calibration included.  For prospective data the
  grid is the k-space columns sampled by at least one line, so an asymmetric echo (a readout
  that never reaches one edge of k-space) does not count as acceleration.
* ``r_cmrxrecon``: the same, counted outside the per-frame calibration lines (CMRxRecon 2024
  names).  For prospective data the calibration lines are the contiguous central ky band
  sampled in every frame of every slice, if it is at least :data:`MIN_ACS_LINES` wide, plus the
  lines of separately acquired calibration data (``acs_lines`` in the report); otherwise there
  are none and both Rs are equal.

Separately acquired calibration lines (ISMRMRD ``ACQ_IS_PARALLEL_CALIBRATION``) count as
acquired samples in ``r_effective``.  When they come per frame they are merged into the k-space
and mask (they are measured data of that frame) and their region becomes the calibration region
of the coil maps; calibration data with a single time index are kept apart
(``PreparedScan.acs_kspace``) and only used for the coil maps.  ``r_header`` is the acceleration
the file's header states (e.g. the nominal parallel-imaging factor).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cardiomm.data.metadata import KSpaceScan, ScanMetadata
from recon.masks import DENSITIES

__all__ = [
    "MIN_ACS_LINES",
    "PreparedScan",
    "Undersampling",
    "calibration_lines",
    "prepare_scan",
    "voxel_spacing_mm",
]

#: Narrowest central band of always-sampled ky lines treated as a calibration (ACS) region.
MIN_ACS_LINES = 8


@dataclass(frozen=True)
class Undersampling:
    """Retrospective undersampling of fully sampled data (``None`` in the settings: keep the file's sampling).

    Attributes:
        accel: acceleration R, counted as ``convention`` says.
        pattern: one of :data:`recon.masks.PATTERNS`.
        seed: slice ``s`` uses ``seed + s``.
        convention: ``"effective"`` or ``"cmrxrecon"``.
        acs_lines: width of the central calibration region (lines).
        density: ky density of ``kt_gaussian`` (:data:`recon.masks.DENSITIES`).
    """

    accel: float
    pattern: str = "kt_gaussian"
    seed: int = 0
    convention: str = "effective"
    acs_lines: int = 16
    density: str = DENSITIES[0]


@dataclass
class PreparedScan:
    """One scan ready for reconstruction (CPU tensors).

    Attributes:
        kspace: complex64 ``[slice, coil, time, ky, kx]``, zero where not sampled (per-frame
            calibration lines merged in).
        mask: bool ``[slice, time, ky, kx]`` of ``kspace``.
        acs: bool ``[slice, time, ky, kx]`` per-frame calibration region inside ``mask``, or None.
        acs_kspace: complex ``[slice, coil, 1, ky, kx]`` calibration data acquired once for all
            frames (ISMRMRD ``ACQ_IS_PARALLEL_CALIBRATION`` lines with one time index), or None.
        metadata: the file's metadata, with ``acceleration`` and ``mask_pattern`` updated.
        sampling: what was done and both accelerations (goes into the summary).
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    acs: torch.Tensor | None
    acs_kspace: torch.Tensor | None
    metadata: ScanMetadata
    sampling: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(self.kspace.shape[0])


def _readout_columns(mask: torch.Tensor) -> torch.Tensor:
    """Bool ``[kx]``: the readout columns that any sample of ``mask [..., ky, kx]`` reaches (a partial
    echo leaves the others out)."""
    return mask.reshape(-1, mask.shape[-1]).any(dim=0)


def calibration_lines(mask: torch.Tensor) -> int:
    """Width (ky lines) of the contiguous central band sampled in every frame of every slice.

    Args:
        mask: bool ``[..., time, ky, kx]``.
    Returns:
        The number of central ky lines (around ``ky // 2``) that every frame samples whole (every
        readout column that any line reaches, so partial echoes count and the points of a
        point-wise pattern such as kt-radial do not), or 0 if that band is narrower than
        :data:`MIN_ACS_LINES`.
    """
    ny = mask.shape[-2]
    cols = _readout_columns(mask)
    if not bool(cols.any()):
        return 0
    lines = mask[..., cols].all(dim=-1).reshape(-1, ny).all(dim=0)  # [ky]: sampled whole in every frame
    c = ny // 2
    if not bool(lines[c]):
        return 0
    lo, hi = c, c + 1
    while lo > 0 and bool(lines[lo - 1]):
        lo -= 1
    while hi < ny and bool(lines[hi]):
        hi += 1
    width = hi - lo
    return width if width >= MIN_ACS_LINES else 0


def _band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Bool like ``mask``: the central ``width`` ky lines (as sampled by ``mask``)."""
    ny = mask.shape[-2]
    lo = ny // 2 - width // 2
    band = torch.zeros_like(mask)
    band[..., lo : lo + width, :] = True
    return band & mask


def _prospective_rates(
    mask: torch.Tensor, extra: torch.Tensor | None = None, calibration: torch.Tensor | None = None
) -> tuple[float, float, int]:
    """``(r_effective, r_cmrxrecon, acs_lines)`` of a file's own sampling.

    Args:
        mask: bool ``[slice, time, ky, kx]`` of the imaging samples (calibration lines that are
            also imaging lines included).
        extra: bool ``[slice, time|1, ky, kx]``: calibration-only samples acquired separately
            (counted as acquired samples, once when their time axis is 1), or None.
        calibration: bool ``[slice, time|1, ky, kx]``: every sample of the separately acquired
            calibration data (part of the calibration region), or None.
    """
    cols = _readout_columns(mask)
    m = mask[..., cols]
    grid = m.numel()
    n_extra = 0 if extra is None else int(extra[..., cols].sum())
    kept = int(m.sum()) + n_extra
    r_eff = grid / kept if kept else math.inf
    band = _band(mask, calibration_lines(mask))
    calib = band if calibration is None else band | calibration.expand_as(mask)
    lines = int(calib.any(dim=-1).any(dim=(0, 1)).sum())
    if lines == 0:
        return r_eff, r_eff, 0
    outside = int((m & ~calib[..., cols]).sum())
    return r_eff, (grid / outside if outside else math.inf), lines


def voxel_spacing_mm(metadata: ScanMetadata, ny: int, nx: int) -> tuple[float, float, float, list[str]]:
    """``(dy, dx, dz)`` in mm of the reconstructed images and the notes on where each came from.

    ``dy``, ``dx`` come from ``pixel_spacing_mm``, else from ``recon_fov_mm`` / matrix; ``dz`` is the
    centre-to-centre slice distance ``slice_spacing_mm``, else ``slice_thickness_mm``.  Unknown
    values become 1.0 mm and a note says so.
    """
    notes: list[str] = []
    if metadata.pixel_spacing_mm is not None and all(v and v > 0 for v in metadata.pixel_spacing_mm):
        dy, dx = (float(v) for v in metadata.pixel_spacing_mm)
    elif metadata.recon_fov_mm is not None and metadata.recon_fov_mm[0] and metadata.recon_fov_mm[1]:
        dx, dy = float(metadata.recon_fov_mm[0]) / nx, float(metadata.recon_fov_mm[1]) / ny
        notes.append("pixel spacing from the recon field of view / matrix")
    else:
        dy = dx = 1.0
        notes.append("pixel spacing unknown: 1.0 mm written")
    if metadata.slice_spacing_mm:
        dz = float(metadata.slice_spacing_mm)
    elif metadata.slice_thickness_mm:
        dz = float(metadata.slice_thickness_mm)
        notes.append("slice spacing unknown: slice thickness used")
    else:
        dz = 1.0
        notes.append("slice spacing and thickness unknown: 1.0 mm written")
    return dy, dx, dz, notes


def prepare_scan(scan: KSpaceScan, undersampling: Undersampling | None, path: str | os.PathLike[str]) -> PreparedScan:
    """Turn a read :class:`KSpaceScan` into a :class:`PreparedScan`.

    Args:
        scan: from :func:`cardiomm.batch.inputs.read_raw_scan` (ISMRMRD or CMRxRecon).
        undersampling: retrospective undersampling to apply, or None to keep the file's sampling.
        path: the file (for error messages).
    Raises:
        ValueError: retrospective undersampling asked for data that are not fully sampled, or a
            mask the pattern cannot make for this shape.
    """
    from recon.masks import make_mask

    kspace = torch.as_tensor(np.ascontiguousarray(scan.kspace)).to(torch.complex64)
    n_sl, _, nt, ny, nx = kspace.shape
    file_mask = torch.as_tensor(np.asarray(scan.mask, dtype=bool)).expand(n_sl, nt, ny, nx)
    acs_kspace = None if scan.acs is None else torch.as_tensor(np.asarray(scan.acs)).to(torch.complex64)
    # fully sampled: every sample of the readout columns that any line reaches; point-wise patterns
    # (CMRxRecon ktRadial) that touch every ky line are not
    cols = _readout_columns(file_mask)
    fully_sampled = bool(cols.any()) and bool(file_mask[..., cols].all())

    if undersampling is None:
        mask = file_mask.clone()
        acs = None
        extra = acs_sampled = None
        if acs_kspace is not None:
            acs_sampled = (acs_kspace != 0).any(dim=1)  # [slice, time|1, ky, kx]
            extra = acs_sampled & ~(file_mask if acs_sampled.shape[1] == nt else file_mask.all(dim=1, keepdim=True))
            if acs_sampled.shape[1] == nt:
                # per-frame calibration lines are measured data of their frame: use them as data too,
                # and their region as the calibration region (coil maps)
                kspace = torch.where(extra.unsqueeze(1), acs_kspace, kspace)
                mask = file_mask | acs_sampled
                acs = acs_sampled
                acs_kspace = None
        # fully sampled: R = 1 in both conventions (the "calibration band" would be all of k-space)
        r_eff, r_cmrx, width = (1.0, 1.0, 0) if fully_sampled else _prospective_rates(file_mask, extra, acs_sampled)
        if acs is None and width and calibration_lines(file_mask):
            acs = _band(file_mask, calibration_lines(file_mask))
        kind = "none (fully sampled)" if fully_sampled else "prospective (mask from the file)"
        sampling = {
            "undersampling": "none" if fully_sampled else "prospective",
            "description": kind,
            "r_effective": r_eff,
            "r_cmrxrecon": r_cmrx,
            "acs_lines": width,
            "r_header": scan.metadata.acceleration,
            "mask_pattern": scan.metadata.mask_pattern,
        }
        meta = scan.metadata.with_updates(acceleration=r_eff)
    else:
        if not fully_sampled:
            r_eff, _, _ = _prospective_rates(file_mask)
            raise ValueError(
                f"{os.fspath(path)}: --accel asks for retrospective undersampling, but the file is already "
                f"undersampled (R_effective {r_eff:.2f} from its own mask); leave out --accel to reconstruct it as it is"
            )
        u = undersampling
        masks = [
            make_mask(u.pattern, u.accel, (nt, ny, nx), seed=u.seed + s, acs_lines=u.acs_lines, convention=u.convention,
                      density=u.density)
            for s in range(n_sl)
        ]
        mask = torch.stack([m.mask for m in masks]) & file_mask
        acs = torch.stack([m.acs for m in masks]) & mask if all(m.acs is not None for m in masks) else None
        sampling = {
            "undersampling": "retrospective",
            "description": masks[0].describe(),
            "r_effective": float(np.mean([m.r_effective for m in masks])),
            "r_cmrxrecon": float(np.mean([m.r_cmrxrecon for m in masks])),
            "acs_lines": u.acs_lines if acs is not None else 0,
            "r_requested": u.accel,
            "convention": u.convention,
            "mask_pattern": u.pattern,
            "seed": u.seed,
            "calibration": masks[0].calibration,
        }
        kspace = kspace * mask.unsqueeze(1)
        acs_kspace = None  # calibration comes from the retrospective mask's own ACS lines
        meta = scan.metadata.with_updates(acceleration=sampling["r_effective"], mask_pattern=u.pattern)
    return PreparedScan(kspace=kspace, mask=mask, acs=acs, acs_kspace=acs_kspace, metadata=meta, sampling=sampling)
