"""Typed containers for a scan's metadata and its multi-coil k-space.

Raw data and its header travel together (as in mrpro's ``KData``) instead of loose dicts.
``ScanMetadata`` is also what the CardioMM network turns into its acquisition-context
embedding; every field may be unknown (``None``), which the network maps to a learned
"unknown" token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

#: Known values of the categorical context fields (anything else is treated as unknown).
MODALITIES = ("cine", "mapping", "lge", "perfusion", "flow", "other")
VIEWS = ("sax", "lax_2ch", "lax_3ch", "lax_4ch", "lvot", "other")
TRAJECTORIES = ("cartesian", "radial", "spiral", "epi", "other")


@dataclass(frozen=True)
class ScanMetadata:
    """What is known about an acquisition. Units are in the field names.

    Matrix sizes are ``(ky, kx)`` = (phase encoding, readout) in samples; fields of view
    are ``(x, y, z)`` in mm as written in ISMRMRD's ``encodedSpace``/``reconSpace``.
    """

    source: str = "unknown"  # file path or generator description
    simulated: bool = False  # True for acquisitions simulated from images or phantoms
    modality: str | None = None  # one of MODALITIES
    view: str | None = None  # one of VIEWS
    field_strength_t: float | None = None
    vendor: str | None = None
    model: str | None = None
    trajectory: str | None = "cartesian"  # one of TRAJECTORIES
    n_coils: int | None = None
    n_frames: int | None = None
    n_slices: int | None = None
    encoded_matrix: tuple[int, int] | None = None  # (ky, kx)
    recon_matrix: tuple[int, int] | None = None  # (ky, kx)
    encoded_fov_mm: tuple[float, float, float] | None = None  # (x, y, z)
    recon_fov_mm: tuple[float, float, float] | None = None  # (x, y, z)
    pixel_spacing_mm: tuple[float, float] | None = None  # (y, x) of the reconstructed image
    slice_thickness_mm: float | None = None
    slice_spacing_mm: float | None = None  # centre-to-centre distance of slices
    tr_ms: float | None = None
    te_ms: float | None = None
    flip_angle_deg: float | None = None
    heart_rate_bpm: float | None = None
    acceleration: float | None = None  # effective R of the acquisition (1 for fully sampled)
    mask_pattern: str | None = None  # e.g. "kt_gaussian"; None when fully sampled / unknown
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScanMetadata":
        """Inverse of :meth:`to_dict`; unknown keys go to ``extra``."""
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in d.items() if k in known and k != "extra"}
        for k in ("encoded_matrix", "recon_matrix", "encoded_fov_mm", "recon_fov_mm", "pixel_spacing_mm"):
            if kwargs.get(k) is not None:
                kwargs[k] = tuple(kwargs[k])
        extra = dict(d.get("extra", {}))
        extra.update({k: v for k, v in d.items() if k not in known})
        return cls(**kwargs, extra=extra)

    def with_updates(self, **changes: Any) -> "ScanMetadata":
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class KSpaceScan:
    """Multi-coil cine k-space of one scan with everything needed to reconstruct it.

    Attributes:
        kspace: complex ``[slice, coil, time, ky, kx]`` (numpy complex64); zeros where not sampled.
        mask: bool ``[slice, time, ky, kx]`` (or broadcastable), True where sampled.
        acs: complex ``[slice, coil, time|1, ky, kx]`` calibration data acquired separately
            (ISMRMRD ACQ_IS_PARALLEL_CALIBRATION lines), or None.
        noise_covariance: ``[coil, coil]`` complex, or None when no noise scan was present
            (if ``prewhitened`` is True the k-space has already been whitened with it).
        metadata: the scan's :class:`ScanMetadata`.
    """

    kspace: np.ndarray
    mask: np.ndarray
    metadata: ScanMetadata
    acs: np.ndarray | None = None
    noise_covariance: np.ndarray | None = None
    prewhitened: bool = False


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
