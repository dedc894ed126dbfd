"""ISMRMRD (MRD) XML header: lenient parsing into :class:`ScanMetadata`, and building.

Reading
-------
Real files often break the ISMRMRD schema (KomaMRI omits the required ``patientPosition``
and nests ``userParameters`` twice; pulseq pipelines leave ``center`` at 0), so
:func:`parse_ismrmrd_header` never relies on the strict schema parser: it walks the XML
with :mod:`xml.etree.ElementTree`, matching tags by local name (namespaces ignored), and
every optional field that is missing or unparsable becomes ``None`` plus a note in
``IsmrmrdHeader.warnings``.  The strict parser (``ismrmrd.xsd.CreateFromDocument``) is
still run, only to report ``schema_valid`` / ``schema_error``.  Only text that is not XML
at all raises :class:`~cardiomm.data.errors.DataFileError`.

Where values come from (first ``<encoding>`` only; others are counted):

* ``field_strength_t``: ``systemFieldStrength_T``; if absent,
  ``H1resonanceFrequency_Hz / 42.577478 MHz/T`` rounded to 0.01 T.
* ``encoded_matrix`` / ``recon_matrix``: ``(y, x)`` of ``matrixSize``; FOVs ``(x, y, z)``
  of ``fieldOfView_mm`` (values <= 0 mean unknown).
* ``pixel_spacing_mm``: ``reconSpace`` FOV / matrix ``(y, x)``; ``slice_thickness_mm``:
  ``reconSpace`` FOV z of a 2D encoding (matrix z == 1).
* ``tr_ms``/``te_ms``/``flip_angle_deg``: first value of ``sequenceParameters``.
* ``simulated``: a ``userParameterString`` / ``userParameterLong`` named ``simulated``
  (values true/1/yes) wins; otherwise True when one of :data:`SIMULATION_MARKERS` occurs in
  ``protocolName``, ``seriesDescription``, ``sequenceName``, ``systemVendor``,
  ``systemModel``, ``institutionName`` or a string user parameter (e.g. "KomaMRI.jl",
  "ISMRM Synthetic Imaging Lab").  The matched text is kept in ``extra``.
* CardioMM's own fields without an ISMRMRD element (modality, view, heart rate, ...) are
  read from ``userParameter*`` entries named ``cardiomm_<field>``, which
  :func:`build_ismrmrd_header` writes; ``cardiomm_extra`` holds ``metadata.extra`` as JSON.

Reader diagnostics go to ``metadata.extra["ismrmrd"]`` (a dict), never to top-level keys.

Writing
-------
:func:`build_ismrmrd_header` builds a schema-valid header with the ``ismrmrd.xsd``
classes (so ``CreateFromDocument`` accepts it): Cartesian encoding with encoded/recon
matrix and FOV, encoding limits with centres, acquisition system (vendor, model, field,
receiver channels), sequence parameters, and the ``cardiomm_*`` user parameters,
including ``simulated``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import ismrmrd.xsd as ixsd

from cardiomm.data.errors import DataFileError
from cardiomm.data.metadata import MODALITIES, TRAJECTORIES, VIEWS, ScanMetadata

__all__ = [
    "GYROMAGNETIC_RATIO_HZ_PER_T",
    "SIMULATION_MARKERS",
    "EncodingLimit",
    "IsmrmrdHeader",
    "build_ismrmrd_header",
    "parse_ismrmrd_header",
]

logger = logging.getLogger(__name__)

#: Proton gyromagnetic ratio / 2 pi in Hz/T, used to infer B0 from ``H1resonanceFrequency_Hz``.
GYROMAGNETIC_RATIO_HZ_PER_T = 42.577478e6

#: Lower-case substrings that mark a header as written by a simulator or for synthetic data.
SIMULATION_MARKERS: tuple[str, ...] = (
    "simulated",
    "simulation",
    "synthetic",
    "komamri",
    "jemris",
    "mrilab",
    "mrzero",
    "cardiomm phantom",
)

#: ISMRMRD trajectory names -> :data:`cardiomm.data.metadata.TRAJECTORIES`.
_TRAJECTORY_MAP = {
    "cartesian": "cartesian",
    "radial": "radial",
    "goldenangle": "radial",
    "spiral": "spiral",
    "epi": "epi",
    "other": "other",
}

#: Encoding counters whose limits are read.
_LIMIT_NAMES = (
    "kspace_encoding_step_0",
    "kspace_encoding_step_1",
    "kspace_encoding_step_2",
    "average",
    "slice",
    "contrast",
    "phase",
    "repetition",
    "set",
    "segment",
)

_PREFIX = "cardiomm_"
_TRUE_WORDS = {"true", "1", "yes", "y", "on"}
_FALSE_WORDS = {"false", "0", "no", "n", "off"}


@dataclass(frozen=True)
class EncodingLimit:
    """One ``encodingLimits`` entry; any part may be missing (``None``)."""

    minimum: int | None = None
    maximum: int | None = None
    center: int | None = None


@dataclass(frozen=True)
class IsmrmrdHeader:
    """What CardioMM uses from an ISMRMRD XML header (its first encoding space).

    Attributes:
        metadata: the header's :class:`ScanMetadata` (``n_coils``/``n_frames``/``n_slices``
            from ``receiverChannels`` and the encoding limits; readers overwrite them with
            what the data holds).
        trajectory: the raw ISMRMRD trajectory name (``"cartesian"``, ``"radial"``,
            ``"goldenangle"``, ``"spiral"``, ``"epi"``, ``"other"``) or ``None`` if absent.
        encoded_matrix_xyz / recon_matrix_xyz: ``matrixSize`` ``(x, y, z)`` or ``None``.
        encoded_fov_xyz_mm / recon_fov_xyz_mm: ``fieldOfView_mm`` ``(x, y, z)`` or ``None``.
        limits: ``encodingLimits`` by counter name (only those present).
        n_encodings: number of ``<encoding>`` elements (only the first is used).
        relative_noise_bandwidth: ``relativeReceiverNoiseBandwidth`` or ``None``.
        acceleration_factors: ``parallelImaging/accelerationFactor`` ``(step1, step2)``.
        user_parameters: every ``userParameterLong/Double/String`` by name.
        schema_valid: whether the strict ``ismrmrd.xsd`` parser accepts the header.
        schema_error: the strict parser's complaint (shortened) when it does not.
        warnings: fields that were present but could not be parsed.
    """

    metadata: ScanMetadata
    trajectory: str | None = None
    encoded_matrix_xyz: tuple[int, int, int] | None = None
    recon_matrix_xyz: tuple[int, int, int] | None = None
    encoded_fov_xyz_mm: tuple[float, float, float] | None = None
    recon_fov_xyz_mm: tuple[float, float, float] | None = None
    limits: dict[str, EncodingLimit] = field(default_factory=dict)
    n_encodings: int = 0
    relative_noise_bandwidth: float | None = None
    acceleration_factors: tuple[int, int] | None = None
    user_parameters: dict[str, Any] = field(default_factory=dict)
    schema_valid: bool = False
    schema_error: str | None = None
    warnings: tuple[str, ...] = ()

    def limit(self, name: str) -> EncodingLimit:
        """The limits of counter ``name`` (all ``None`` when the header omits them)."""
        return self.limits.get(name, EncodingLimit())


# --------------------------------------------------------------------------- reading


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child(el: ET.Element | None, name: str) -> ET.Element | None:
    if el is None:
        return None
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _children(el: ET.Element | None, name: str) -> list[ET.Element]:
    if el is None:
        return []
    return [c for c in el if _local(c.tag) == name]


def _find(el: ET.Element | None, *path: str) -> ET.Element | None:
    for name in path:
        el = _child(el, name)
    return el


def _text(el: ET.Element | None, *path: str) -> str | None:
    el = _find(el, *path)
    if el is None or el.text is None:
        return None
    t = el.text.strip()
    return t or None


class _Reader:
    """Typed field access that records unparsable values instead of failing."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def float(self, el: ET.Element | None, *path: str) -> float | None:
        t = _text(el, *path)
        if t is None:
            return None
        try:
            v = float(t)
        except ValueError:
            self.warnings.append(f"{'/'.join(path)}={t!r} is not a number")
            return None
        if not math.isfinite(v):
            self.warnings.append(f"{'/'.join(path)}={t!r} is not finite")
            return None
        return v

    def int(self, el: ET.Element | None, *path: str) -> int | None:
        v = self.float(el, *path)
        if v is None:
            return None
        if v != int(v):
            self.warnings.append(f"{'/'.join(path)}={v} is not an integer")
            return None
        return int(v)

    def xyz_int(self, el: ET.Element | None) -> tuple[int, int, int] | None:
        if el is None:
            return None
        vals = [self.int(el, a) for a in ("x", "y", "z")]
        if vals[0] is None or vals[1] is None:
            return None
        return (vals[0], vals[1], vals[2] if vals[2] is not None else 1)

    def xyz_float(self, el: ET.Element | None) -> tuple[float, float, float] | None:
        if el is None:
            return None
        vals = [self.float(el, a) for a in ("x", "y", "z")]
        if vals[0] is None or vals[1] is None or vals[0] <= 0 or vals[1] <= 0:
            return None
        if vals[0] < 1.0 and vals[1] < 1.0:
            self.warnings.append(
                f"fieldOfView_mm ({vals[0]:g}, {vals[1]:g}) is below 1 mm; the writer may have used metres"
            )
        return (vals[0], vals[1], vals[2] if vals[2] is not None and vals[2] > 0 else 0.0)


def _user_parameters(root: ET.Element, rd: _Reader) -> dict[str, Any]:
    """All ``userParameterLong/Double/String/Base64`` entries anywhere under ``userParameters``."""
    params: dict[str, Any] = {}
    for up in root.iter():
        if _local(up.tag) != "userParameters":
            continue
        for p in up:
            kind = _local(p.tag)
            if not kind.startswith("userParameter"):
                continue
            name = _text(p, "name")
            if name is None:
                continue
            value_el = _child(p, "value")
            raw = (value_el.text or "").strip() if value_el is not None else ""
            value: Any = raw
            if kind == "userParameterDouble":
                value = rd.float(p, "value")
            elif kind == "userParameterLong":
                try:
                    value = int(raw)
                except ValueError:
                    value = raw  # e.g. KomaMRI writes "true"
            params[name] = value
    return params


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return bool(v)
    if isinstance(v, str):
        w = v.strip().lower()
        if w in _TRUE_WORDS:
            return True
        if w in _FALSE_WORDS:
            return False
    return None


def _simulated(
    texts: dict[str, str | None], params: dict[str, Any]
) -> tuple[bool, str | None]:
    """(simulated, what said so) from explicit flags first, then marker substrings."""
    for key in ("simulated", _PREFIX + "simulated"):
        if key in params:
            b = _as_bool(params[key])
            if b is not None:
                return b, f"userParameter {key}={params[key]!r}"
    candidates = dict(texts)
    for k, v in params.items():
        if isinstance(v, str):
            candidates[f"userParameter {k}"] = v
    for where, text in candidates.items():
        if not text:
            continue
        low = text.lower()
        for marker in SIMULATION_MARKERS:
            if marker in low:
                return True, f"{where}={text!r}"
    return False, None


def _schema_check(xml: bytes | str) -> tuple[bool, str | None]:
    """Whether the strict schema parser accepts the header (its warnings/logs are silenced)."""
    xsdata_logger = logging.getLogger("xsdata")
    level = xsdata_logger.level
    xsdata_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a value the schema cannot convert -> not valid
            ixsd.CreateFromDocument(xml)
    except Exception as err:  # noqa: BLE001 - a diagnostic only; any failure means "not valid"
        msg = f"{type(err).__name__}: {err}"
        return False, msg[:300]
    finally:
        xsdata_logger.setLevel(level)
    return True, None


def _param(params: dict[str, Any], name: str) -> Any:
    return params.get(_PREFIX + name)


def _param_float(params: dict[str, Any], name: str) -> float | None:
    v = _param(params, name)
    try:
        f = float(v) if v is not None else None
    except (TypeError, ValueError):
        return None
    return f if f is not None and math.isfinite(f) else None


def parse_ismrmrd_header(xml: bytes | str, source: str = "unknown") -> IsmrmrdHeader:
    """Parse an ISMRMRD XML header leniently.

    Args:
        xml: the header text (``/dataset/xml``), bytes or str.
        source: the file it came from; becomes ``metadata.source`` and names the file in errors.
    Returns:
        :class:`IsmrmrdHeader` with the :class:`ScanMetadata` (see the module docstring).
    Raises:
        DataFileError: if the text is not XML or its root is not ``<ismrmrdHeader>``.
    """
    if isinstance(xml, (bytes, bytearray, memoryview)):
        raw = bytes(xml).rstrip(b"\x00")
    elif isinstance(xml, str):
        raw = xml.rstrip("\x00").encode("utf-8", errors="replace")
    else:
        raise DataFileError(source, f"XML header has type {type(xml).__name__}, expected bytes or str")
    if not raw.strip():
        raise DataFileError(source, "XML header is empty")
    try:
        root = ET.fromstring(raw)
    except (ET.ParseError, LookupError, ValueError) as err:  # LookupError: unknown declared encoding
        preview = raw[:60].decode("utf-8", errors="replace")
        raise DataFileError(source, f"XML header is not valid XML ({err}); it starts with {preview!r}") from None
    if _local(root.tag) != "ismrmrdHeader":
        raise DataFileError(source, f"XML header root is <{_local(root.tag)}>, expected <ismrmrdHeader>")

    rd = _Reader()
    schema_valid, schema_error = _schema_check(raw)
    encodings = _children(root, "encoding")
    enc = encodings[0] if encodings else None
    if enc is None:
        rd.warnings.append("no <encoding> element")

    sysinfo = _child(root, "acquisitionSystemInformation")
    meas = _child(root, "measurementInformation")
    seq = _child(root, "sequenceParameters")
    params = _user_parameters(root, rd)

    encoded_matrix = rd.xyz_int(_find(enc, "encodedSpace", "matrixSize"))
    recon_matrix = rd.xyz_int(_find(enc, "reconSpace", "matrixSize"))
    encoded_fov = rd.xyz_float(_find(enc, "encodedSpace", "fieldOfView_mm"))
    recon_fov = rd.xyz_float(_find(enc, "reconSpace", "fieldOfView_mm"))

    limits: dict[str, EncodingLimit] = {}
    lim_el = _child(enc, "encodingLimits")
    for name in _LIMIT_NAMES:
        el = _child(lim_el, name)
        if el is not None:
            limits[name] = EncodingLimit(rd.int(el, "minimum"), rd.int(el, "maximum"), rd.int(el, "center"))

    traj_raw = _text(enc, "trajectory")
    trajectory = traj_raw.lower() if traj_raw else None
    if trajectory is None:
        rd.warnings.append("no <trajectory>; assuming cartesian")

    accel = None
    a1 = rd.int(enc, "parallelImaging", "accelerationFactor", "kspace_encoding_step_1")
    a2 = rd.int(enc, "parallelImaging", "accelerationFactor", "kspace_encoding_step_2")
    if a1 is not None:
        accel = (a1, a2 if a2 is not None else 1)

    field_t = rd.float(sysinfo, "systemFieldStrength_T")
    h1 = rd.float(root, "experimentalConditions", "H1resonanceFrequency_Hz")
    field_from = "systemFieldStrength_T" if field_t is not None else None
    if field_t is None and h1 is not None and h1 > 0:
        field_t = round(h1 / GYROMAGNETIC_RATIO_HZ_PER_T, 2)
        field_from = "H1resonanceFrequency_Hz"
    if field_t is not None and field_t <= 0:
        field_t = None

    texts = {
        "protocolName": _text(meas, "protocolName"),
        "seriesDescription": _text(meas, "seriesDescription"),
        "sequenceName": _text(meas, "sequenceName"),
        "systemVendor": _text(sysinfo, "systemVendor"),
        "systemModel": _text(sysinfo, "systemModel"),
        "institutionName": _text(sysinfo, "institutionName"),
    }
    simulated, simulated_marker = _simulated(texts, params)

    def first_of(el: ET.Element | None, name: str) -> float | None:
        vals = _children(el, name)
        return rd.float(vals[0]) if vals else None

    def limit_count(name: str) -> int | None:
        lim = limits.get(name)
        if lim is None or lim.maximum is None:
            return None
        lo = lim.minimum if lim.minimum is not None else 0
        return lim.maximum - lo + 1 if lim.maximum >= lo else None

    pixel = None
    if recon_fov is not None and recon_matrix is not None and recon_matrix[0] > 0 and recon_matrix[1] > 0:
        pixel = (recon_fov[1] / recon_matrix[1], recon_fov[0] / recon_matrix[0])
    py, px = _param_float(params, "pixel_spacing_y_mm"), _param_float(params, "pixel_spacing_x_mm")
    if py is not None and px is not None:
        pixel = (py, px)
    thickness = _param_float(params, "slice_thickness_mm")
    if thickness is None and recon_fov is not None and recon_matrix is not None and recon_matrix[2] == 1:
        thickness = recon_fov[2] if recon_fov[2] > 0 else None

    modality = _param(params, "modality")
    view = _param(params, "view")
    extra: dict[str, Any] = {}
    extra_json = _param(params, "extra")
    if isinstance(extra_json, str) and extra_json:
        try:
            loaded = json.loads(extra_json)
            if isinstance(loaded, dict):
                extra.update(loaded)
        except json.JSONDecodeError:
            rd.warnings.append("cardiomm_extra is not valid JSON")
    extra["ismrmrd"] = {
        "protocol_name": texts["protocolName"],
        "institution_name": texts["institutionName"],
        "trajectory": trajectory,
        "h1_resonance_frequency_hz": h1,
        "field_strength_from": field_from,
        "relative_receiver_noise_bandwidth": rd.float(sysinfo, "relativeReceiverNoiseBandwidth"),
        "acceleration_factors": accel,
        "calibration_mode": _text(enc, "parallelImaging", "calibrationMode"),
        "n_encodings": len(encodings),
        "simulated_marker": simulated_marker,
        "schema_valid": schema_valid,
        "schema_error": schema_error,
        "written_from_source": _param(params, "source"),
    }

    metadata = ScanMetadata(
        source=str(source),
        simulated=simulated,
        modality=modality if modality in MODALITIES else None,
        view=view if view in VIEWS else None,
        field_strength_t=field_t,
        vendor=texts["systemVendor"],
        model=texts["systemModel"],
        trajectory=_TRAJECTORY_MAP.get(trajectory, "other") if trajectory else "cartesian",
        n_coils=rd.int(sysinfo, "receiverChannels"),
        n_frames=limit_count("phase"),
        n_slices=limit_count("slice"),
        encoded_matrix=(encoded_matrix[1], encoded_matrix[0]) if encoded_matrix else None,
        recon_matrix=(recon_matrix[1], recon_matrix[0]) if recon_matrix else None,
        encoded_fov_mm=encoded_fov,
        recon_fov_mm=recon_fov,
        pixel_spacing_mm=pixel,
        slice_thickness_mm=thickness,
        slice_spacing_mm=_param_float(params, "slice_spacing_mm"),
        tr_ms=first_of(seq, "TR"),
        te_ms=first_of(seq, "TE"),
        flip_angle_deg=first_of(seq, "flipAngle_deg"),
        heart_rate_bpm=_param_float(params, "heart_rate_bpm"),
        acceleration=_param_float(params, "acceleration"),
        mask_pattern=_param(params, "mask_pattern") or None,
        extra=extra,
    )
    if metadata.trajectory not in TRAJECTORIES:  # pragma: no cover - map covers all values
        metadata = metadata.with_updates(trajectory="other")
    extra["ismrmrd"]["header_warnings"] = list(rd.warnings)
    return IsmrmrdHeader(
        metadata=metadata,
        trajectory=trajectory,
        encoded_matrix_xyz=encoded_matrix,
        recon_matrix_xyz=recon_matrix,
        encoded_fov_xyz_mm=encoded_fov,
        recon_fov_xyz_mm=recon_fov,
        limits=limits,
        n_encodings=len(encodings),
        relative_noise_bandwidth=extra["ismrmrd"]["relative_receiver_noise_bandwidth"],
        acceleration_factors=accel,
        user_parameters=params,
        schema_valid=schema_valid,
        schema_error=schema_error,
        warnings=tuple(rd.warnings),
    )


# --------------------------------------------------------------------------- writing


def _limit(maximum: int, center: int) -> Any:
    return ixsd.limitType(minimum=0, maximum=int(maximum), center=int(center))


def _fov(v: tuple[float, float, float] | None) -> Any:
    x, y, z = (float(a) for a in v) if v is not None else (0.0, 0.0, 0.0)
    return ixsd.fieldOfViewMm(x=x, y=y, z=z)


def build_ismrmrd_header(
    metadata: ScanMetadata,
    *,
    encoded_matrix: tuple[int, int],
    n_coils: int,
    n_frames: int,
    n_slices: int,
    recon_matrix: tuple[int, int] | None = None,
    ky_center: int | None = None,
) -> str:
    """Build a schema-valid ISMRMRD XML header for Cartesian 2D multi-slice cine data.

    Args:
        metadata: the scan's metadata; fields without an ISMRMRD element are written as
            ``cardiomm_<field>`` user parameters and ``metadata.extra`` (without the
            reader's ``"ismrmrd"`` diagnostics) as ``cardiomm_extra`` JSON.
        encoded_matrix: ``(ky, kx)`` of the stored k-space.
        n_coils, n_frames, n_slices: receiver channels, cardiac phases, slices.
        recon_matrix: ``(y, x)``; defaults to ``metadata.recon_matrix`` or ``encoded_matrix``.
        ky_center: k-space centre line (``encodingLimits`` ``kspace_encoding_step_1`` centre);
            defaults to ``ky // 2``.
    Returns:
        The XML text.
    """
    ny, nx = (int(v) for v in encoded_matrix)
    rm = recon_matrix or metadata.recon_matrix or (ny, nx)
    ky_center = ny // 2 if ky_center is None else int(ky_center)
    z_fov = metadata.encoded_fov_mm
    if z_fov is None and metadata.slice_thickness_mm is not None:
        z_fov = (0.0, 0.0, float(metadata.slice_thickness_mm))

    encoding = ixsd.encodingType(
        encodedSpace=ixsd.encodingSpaceType(
            matrixSize=ixsd.matrixSizeType(x=nx, y=ny, z=1), fieldOfView_mm=_fov(z_fov)
        ),
        reconSpace=ixsd.encodingSpaceType(
            matrixSize=ixsd.matrixSizeType(x=int(rm[1]), y=int(rm[0]), z=1),
            fieldOfView_mm=_fov(metadata.recon_fov_mm or metadata.encoded_fov_mm),
        ),
        encodingLimits=ixsd.encodingLimitsType(
            kspace_encoding_step_0=_limit(nx - 1, nx // 2),
            kspace_encoding_step_1=_limit(ny - 1, ky_center),
            kspace_encoding_step_2=_limit(0, 0),
            average=_limit(0, 0),
            slice=_limit(n_slices - 1, 0),
            contrast=_limit(0, 0),
            phase=_limit(n_frames - 1, 0),
            repetition=_limit(0, 0),
            set=_limit(0, 0),
            segment=_limit(0, 0),
        ),
        trajectory=ixsd.trajectoryType.CARTESIAN,
    )
    b0 = metadata.field_strength_t
    h1 = int(round(b0 * GYROMAGNETIC_RATIO_HZ_PER_T)) if b0 else 0
    sysinfo = ixsd.acquisitionSystemInformationType(
        systemVendor=metadata.vendor,
        systemModel=metadata.model,
        systemFieldStrength_T=float(b0) if b0 is not None else None,
        receiverChannels=int(n_coils),
    )
    seq = None
    if any(v is not None for v in (metadata.tr_ms, metadata.te_ms, metadata.flip_angle_deg)):
        seq = ixsd.sequenceParametersType(
            TR=[float(metadata.tr_ms)] if metadata.tr_ms is not None else [],
            TE=[float(metadata.te_ms)] if metadata.te_ms is not None else [],
            flipAngle_deg=[float(metadata.flip_angle_deg)] if metadata.flip_angle_deg is not None else [],
        )

    strings: dict[str, str] = {
        "simulated": "true" if metadata.simulated else "false",
        _PREFIX + "source": str(metadata.source),
    }
    doubles: dict[str, float] = {}
    for name in ("modality", "view", "mask_pattern"):
        v = getattr(metadata, name)
        if v is not None:
            strings[_PREFIX + name] = str(v)
    for name in ("heart_rate_bpm", "acceleration", "slice_spacing_mm", "slice_thickness_mm"):
        v = getattr(metadata, name)
        if v is not None:
            doubles[_PREFIX + name] = float(v)
    if metadata.pixel_spacing_mm is not None:
        doubles[_PREFIX + "pixel_spacing_y_mm"] = float(metadata.pixel_spacing_mm[0])
        doubles[_PREFIX + "pixel_spacing_x_mm"] = float(metadata.pixel_spacing_mm[1])
    user_extra = {k: v for k, v in metadata.to_dict()["extra"].items() if k not in ("ismrmrd", "ismrmrd_images")}
    if user_extra:
        strings[_PREFIX + "extra"] = json.dumps(user_extra, default=str, sort_keys=True)
    user = ixsd.userParametersType(
        userParameterDouble=[ixsd.userParameterDoubleType(name=k, value=v) for k, v in doubles.items()],
        userParameterString=[ixsd.userParameterStringType(name=k, value=v) for k, v in strings.items()],
    )
    header = ixsd.ismrmrdHeader(
        acquisitionSystemInformation=sysinfo,
        experimentalConditions=ixsd.experimentalConditionsType(H1resonanceFrequency_Hz=h1),
        encoding=[encoding],
        sequenceParameters=seq,
        userParameters=user,
    )
    return ixsd.ToXML(header, encoding="utf-8")
