"""Fully sampled multi-coil cine scans (plus labels) from any source, behind one spec string.

A *source spec* is a string that says where a fully sampled scan comes from:

``/path/scan.h5`` or ``/path/scan.mrd``
    ISMRMRD raw data (:func:`cardiomm.data.ismrmrd_raw.read_ismrmrd_raw`, prewhitened, readout
    oversampling removed).  ``<stem>_labels.npz`` (``labels`` uint8 ``[slice, frame, y, x]``)
    and ``<stem>_truth.json`` beside it are read when present (the files
    :func:`cardiomm.data.simulate.write_simulated_scan` writes).  Prospectively undersampled
    files (any ``False`` in the mask) are refused: training needs a fully sampled reference.
``/path/cine_sax.mat``
    CMRxRecon k-space (:func:`cardiomm.data.cmrxrecon.read_cmrxrecon_kspace`); only the fully
    sampled variables (``kspace_full``, ``kspace``) are accepted.
``/path/dicom_folder`` or ``/path/dicom_folder::/path/contour_folder``
    A DICOM cine series (:func:`cardiomm.data.dicom_cine.read_dicom_cine`).  Its magnitude
    images are turned into a *simulated* multi-coil acquisition with
    :func:`cardiomm.data.simulate.simulate_kspace` (``metadata.simulated = True``, ``source``
    starting ``"simulated from DICOM <folder>"``).  When the in-plane phase-encoding direction is
    ``ROW`` (phase encoding along the image x axis) the images and labels are transposed
    first, so that ``ky`` is the phase-encoding axis (``metadata.extra["transposed"]``).
    Labels come from Sunnybrook contours (:func:`cardiomm.data.contours.sunnybrook_labels`):
    from the folder after ``::``, or found through the Sunnybrook layout
    ``<root>/dicoms/<patient>`` + ``<root>/contourfiles`` + ``<root>/link.csv``.
``phantom:SEED`` / ``phantom:START-END`` (inclusive), optionally ``?key=value&...``
    The numerical beating-heart phantom (:func:`cardiomm.data.phantom.make_phantom`),
    generated on the fly (no files), simulated like the DICOM images.  Options are keywords
    of ``make_phantom``: ``n_slices``, ``n_frames``, ``matrix`` (``96x96`` or ``96``),
    ``pixel_spacing_mm`` (``3x3`` or ``3``), ``slice_thickness_mm``, ``slice_gap_mm``,
    ``heart_rate_bpm``, ``edv_ml``, ``esv_ml``, ``lv_mass_g``, ``rv_edv_ml``, ``rv_esv_ml``,
    ``longitudinal_shortening``; e.g. ``phantom:0-99?matrix=96x96&pixel_spacing_mm=3``.
    Ranges must be expanded with :func:`expand_sources` before loading.

Labels
------
``uint8 [slice, time, y, x]`` in the convention of :mod:`cardiomm.data.labels` (0 background,
1 LV blood, 2 LV myocardium, 3 RV blood) with :data:`LABEL_IGNORE` (255) wherever a pixel or
frame is unlabelled.  ``CineSource.label_classes`` lists the classes that were *annotated*:
Sunnybrook has no RV labels (``(0, 1, 2)``), so its "background" includes the RV blood pool;
on Sunnybrook frames with an endocardial contour only (end-systole) everything outside the
blood pool is :data:`LABEL_IGNORE`, since the myocardium there is unlabelled, not absent.

Simulated sources (DICOM, phantom)
----------------------------------
Every slice is simulated on its own with seed ``SeedSequence([seed, kind, key, slice])``
(``key`` = phantom seed, or the CRC-32 of the DICOM folder's name), so a slice comes out the
same whether it is loaded alone or with the whole stack, and only the requested slices are
simulated.  The SNR (``snr_db``, see :mod:`cardiomm.data.simulate`) is therefore defined per
slice.  The noise is fixed per ``(seed, source, slice)``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import h5py
import numpy as np
import torch

from cardiomm.data.errors import DataFileError
from cardiomm.data.labels import LABEL_IGNORE
from cardiomm.data.metadata import ScanMetadata
from cardiomm.data.phantom import PhantomCine, make_phantom

__all__ = [
    "LABEL_IGNORE",
    "RAW_SUFFIXES",
    "CineSource",
    "OpenedSource",
    "PhantomSpec",
    "count_slices",
    "expand_sources",
    "load_source",
    "open_source",
    "parse_phantom_spec",
]

#: File suffixes of k-space files a folder spec expands to.
RAW_SUFFIXES: tuple[str, ...] = (".h5", ".mrd", ".mat")
_ISMRMRD_SUFFIXES = (".h5", ".mrd")
_CONTOUR_SEPARATOR = "::"
_PHANTOM_PREFIX = "phantom:"
_PHANTOM_RE = re.compile(r"^phantom:(\d+)(?:-(\d+))?(?:\?(.*))?$")
#: make_phantom keywords accepted in a phantom spec, with their parsers.
_PAIR_OPTIONS = ("matrix", "pixel_spacing_mm")
_INT_OPTIONS = ("n_slices", "n_frames")
_FLOAT_OPTIONS = (
    "slice_thickness_mm",
    "slice_gap_mm",
    "heart_rate_bpm",
    "edv_ml",
    "esv_ml",
    "lv_mass_g",
    "rv_edv_ml",
    "rv_esv_ml",
    "longitudinal_shortening",
)
_PHANTOM_DEFAULTS = {k: p.default for k, p in inspect.signature(make_phantom).parameters.items() if k != "seed"}
_PHANTOM_LABEL_CLASSES = (0, 1, 2, 3)
_SUNNYBROOK_LABEL_CLASSES = (0, 1, 2)
_KIND_CODES = {"phantom": 1, "dicom": 2}
_FULL_CMRX_VARIABLES = ("kspace_full", "kspace", "kspace_single_full")


@dataclass
class CineSource:
    """A fully sampled multi-coil cine scan (or some of its slices) with optional labels.

    Attributes:
        kspace: complex64 ``[slice, coil, time, ky, kx]``, fully sampled (centred FFT
            convention of :mod:`recon.conventions`).
        metadata: the scan's :class:`ScanMetadata` (``n_slices`` = slices held here).
        labels: uint8 ``[slice, time, y, x]`` (``y, x`` = image grid of ``ifft2c(kspace)``)
            with :data:`LABEL_IGNORE` where unlabelled, or ``None`` when the source has no labels.
        truth: true biomarkers (``CardiacBiomarkers.to_dict()``) for the whole scan, or None.
        spec: the source spec this came from.
        slice_indices: index in the whole scan of every slice held (``[slice]``).
        label_classes: label values that were annotated (see the module docstring), or None.
        noise_free: complex64 ``[slice, time, y, x]``, the noiseless complex image of a simulated
            source (its coil maps have unit RSS, so ``|noise_free|`` is the RSS of the noiseless
            coil images: the truth a simulated reconstruction can be scored against), or None
            for measured k-space.
    """

    kspace: torch.Tensor
    metadata: ScanMetadata
    labels: torch.Tensor | None = None
    truth: dict[str, Any] | None = None
    spec: str = ""
    slice_indices: tuple[int, ...] = ()
    label_classes: tuple[int, ...] | None = None
    noise_free: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kspace, torch.Tensor) or self.kspace.dtype != torch.complex64 or self.kspace.ndim != 5:
            raise ValueError(
                "CineSource.kspace must be complex64 [slice, coil, time, ky, kx], got "
                f"{getattr(self.kspace, 'dtype', type(self.kspace).__name__)} {list(getattr(self.kspace, 'shape', []))}"
            )
        s, _, t, ny, nx = self.kspace.shape
        if self.labels is not None and (self.labels.dtype != torch.uint8 or tuple(self.labels.shape) != (s, t, ny, nx)):
            raise ValueError(
                f"CineSource.labels must be uint8 [slice, time, y, x] = {[s, t, ny, nx]}, got "
                f"{self.labels.dtype} {list(self.labels.shape)} ({self.spec})"
            )
        if self.noise_free is not None and (
            self.noise_free.dtype != torch.complex64 or tuple(self.noise_free.shape) != (s, t, ny, nx)
        ):
            raise ValueError(
                f"CineSource.noise_free must be complex64 [slice, time, y, x] = {[s, t, ny, nx]}, got "
                f"{self.noise_free.dtype} {list(self.noise_free.shape)} ({self.spec})"
            )
        if not self.slice_indices:
            self.slice_indices = tuple(range(s))
        if len(self.slice_indices) != s:
            raise ValueError(f"slice_indices {self.slice_indices} do not match {s} slices ({self.spec})")

    @property
    def n_slices(self) -> int:
        return int(self.kspace.shape[0])


# --------------------------------------------------------------------------- spec parsing


@dataclass(frozen=True)
class PhantomSpec:
    """A parsed ``phantom:`` spec: seeds ``start..stop`` (inclusive) and make_phantom keywords."""

    start: int
    stop: int
    options: dict[str, Any] = field(default_factory=dict)
    query: str = ""

    @property
    def seeds(self) -> range:
        return range(self.start, self.stop + 1)

    def spec_for(self, seed: int) -> str:
        """The single-seed spec of one phantom of the range (options kept)."""
        return f"{_PHANTOM_PREFIX}{seed}" + (f"?{self.query}" if self.query else "")

    @property
    def n_slices(self) -> int:
        return int(self.options.get("n_slices", _PHANTOM_DEFAULTS["n_slices"]))


def _pair(text: str, name: str, spec: str, cast: type) -> tuple[Any, Any]:
    parts = text.lower().split("x")
    try:
        values = [cast(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError(f"phantom spec {spec!r}: {name}={text!r} must be 'AxB' or 'A'")
    return values[0], values[1]


def parse_phantom_spec(spec: str) -> PhantomSpec:
    """Parse ``phantom:SEED``, ``phantom:START-END`` (inclusive) with optional ``?key=value&...``.

    Raises:
        ValueError: malformed spec, END < START, unknown or malformed option.
    """
    text = str(spec).strip()
    m = _PHANTOM_RE.match(text)
    if m is None:
        raise ValueError(
            f"malformed phantom spec {spec!r}; expected 'phantom:SEED' or 'phantom:START-END' with an optional "
            "'?n_slices=6&n_frames=8&matrix=96x96&pixel_spacing_mm=3' suffix"
        )
    start = int(m.group(1))
    stop = int(m.group(2)) if m.group(2) is not None else start
    if stop < start:
        raise ValueError(f"phantom spec {spec!r}: range end {stop} is below its start {start}")
    query = m.group(3) or ""
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)) if query else []:
        if key in _PAIR_OPTIONS:
            options[key] = _pair(value, key, text, int if key == "matrix" else float)
        elif key in _INT_OPTIONS:
            try:
                options[key] = int(value)
            except ValueError as err:
                raise ValueError(f"phantom spec {spec!r}: {key}={value!r} is not an integer") from err
        elif key in _FLOAT_OPTIONS:
            try:
                options[key] = float(value)
            except ValueError as err:
                raise ValueError(f"phantom spec {spec!r}: {key}={value!r} is not a number") from err
        else:
            known = ", ".join(_PAIR_OPTIONS + _INT_OPTIONS + _FLOAT_OPTIONS)
            raise ValueError(f"phantom spec {spec!r}: unknown option {key!r}; known options: {known}")
    return PhantomSpec(start=start, stop=stop, options=options, query=query)


def _split_dicom_spec(spec: str) -> tuple[Path, Path | None]:
    if _CONTOUR_SEPARATOR in spec:
        folder, contours = spec.split(_CONTOUR_SEPARATOR, 1)
        return Path(folder), Path(contours)
    return Path(spec), None


def _is_phantom(spec: str) -> bool:
    return spec.strip().startswith(_PHANTOM_PREFIX)


def _has_files(folder: Path) -> bool:
    return any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir())


def expand_sources(specs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """Expand specs into one spec per scan.

    * ``phantom:START-END`` -> ``phantom:START`` ... ``phantom:END`` (options kept);
    * a folder holding ``.h5``/``.mrd``/``.mat`` files -> those files (sorted, not recursive);
    * a folder holding other files (a DICOM series) -> itself;
    * a folder holding only sub-folders with files (e.g. ``sunnybrook/dicoms``) -> each sub-folder;
    * files and ``<dicom folder>::<contour folder>`` specs are kept as they are.

    Raises:
        DataFileError: a path that does not exist, or a folder with nothing to load.
        ValueError: a malformed phantom spec.
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    out: list[str] = []
    for raw in specs:
        spec = os.fspath(raw).strip()
        if not spec:
            raise ValueError("empty source spec")
        if _is_phantom(spec):
            ps = parse_phantom_spec(spec)
            out.extend(ps.spec_for(s) for s in ps.seeds)
            continue
        folder, contours = _split_dicom_spec(spec)
        if contours is not None:
            if not folder.is_dir():
                raise DataFileError(folder, "no such DICOM folder (spec '<dicom folder>::<contour folder>')")
            out.append(spec)
            continue
        path = Path(spec)
        if path.is_file():
            out.append(spec)
        elif path.is_dir():
            raw_files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in RAW_SUFFIXES)
            if raw_files:
                out.extend(str(p) for p in raw_files)
            elif _has_files(path):
                out.append(spec)
            else:
                subs = sorted(p for p in path.iterdir() if p.is_dir() and _has_files(p))
                if not subs:
                    raise DataFileError(path, f"holds no {'/'.join(RAW_SUFFIXES)} files, no DICOM images and no "
                                              "sub-folders with images")
                out.extend(str(p) for p in subs)
        else:
            raise DataFileError(
                path, "no such file or folder; a source is an ISMRMRD .h5/.mrd file, a CMRxRecon .mat file, a DICOM "
                "folder (optionally '<folder>::<contour folder>'), a folder of such files, or 'phantom:SEED[-END]'"
            )
    return out


# --------------------------------------------------------------------------- opened sources


class OpenedSource(ABC):
    """A source opened once (files read, phantom generated) that serves slices on demand."""

    spec: str
    n_slices: int

    @abstractmethod
    def load(self, slices: Sequence[int] | None = None) -> CineSource:
        """The fully sampled :class:`CineSource` of ``slices`` (all slices when None)."""

    def _check_slices(self, slices: Sequence[int] | None) -> list[int]:
        if slices is None:
            return list(range(self.n_slices))
        idx = [int(s) for s in slices]
        bad = [s for s in idx if not 0 <= s < self.n_slices]
        if bad or not idx:
            raise ValueError(f"slices {list(slices)} out of range for {self.spec} with {self.n_slices} slices")
        return idx


class _KSpaceSource(OpenedSource):
    """A k-space file held in memory."""

    def __init__(self, source: CineSource) -> None:
        self.source = source
        self.spec = source.spec
        self.n_slices = source.n_slices

    def load(self, slices: Sequence[int] | None = None) -> CineSource:
        idx = self._check_slices(slices)
        if idx == list(range(self.n_slices)):
            return self.source
        src = self.source
        return CineSource(
            kspace=src.kspace[idx],
            metadata=src.metadata.with_updates(n_slices=len(idx)),
            labels=None if src.labels is None else src.labels[idx],
            truth=src.truth,
            spec=src.spec,
            slice_indices=tuple(src.slice_indices[i] for i in idx),
            label_classes=src.label_classes,
            noise_free=None if src.noise_free is None else src.noise_free[idx],
        )


class _SimulatedSource(OpenedSource):
    """Magnitude images (DICOM or phantom) simulated into multi-coil k-space slice by slice."""

    def __init__(
        self,
        spec: str,
        images: np.ndarray,
        labels: np.ndarray | None,
        metadata: ScanMetadata,
        *,
        what: str,
        kind: str,
        key: int,
        n_coils: int,
        seed: int,
        snr_db: float | None,
        truth: dict[str, Any] | None,
        label_classes: tuple[int, ...] | None,
    ) -> None:
        self.spec = spec
        self.images = images  # float32 [slice, time, y, x]
        self.labels = labels  # uint8 [slice, time, y, x] or None
        self.metadata = metadata
        self.what = what
        self.kind = kind
        self.key = int(key)
        self.n_coils = int(n_coils)
        self.seed = int(seed)
        self.snr_db = snr_db
        self.truth = truth
        self.label_classes = label_classes
        self.n_slices = int(images.shape[0])

    def slice_seed(self, s: int) -> int:
        """Seed of the simulation of slice ``s`` (see the module docstring)."""
        ss = np.random.SeedSequence([self.seed, _KIND_CODES[self.kind], self.key, int(s)])
        return int(ss.generate_state(1, dtype=np.uint32)[0])

    def load(self, slices: Sequence[int] | None = None) -> CineSource:
        from cardiomm.data.simulate import simulate_kspace

        idx = self._check_slices(slices)
        md = self.metadata
        spacing = md.pixel_spacing_mm
        # one slice's acquisition at a time, copied into the scan: keeping every SimulatedAcquisition
        # and stacking them at the end held the k-space twice (2 GB for a 10-slice, 10-coil 256x256 cine)
        kspace: torch.Tensor | None = None
        noise_free: torch.Tensor | None = None
        first: ScanMetadata | None = None
        noise_stds: list[float] = []
        for i, s in enumerate(idx):
            acq = simulate_kspace(
                self.images[s : s + 1],
                n_coils=self.n_coils,
                seed=self.slice_seed(s),
                snr_db=self.snr_db,
                pixel_spacing_mm=spacing,
                slice_thickness_mm=md.slice_thickness_mm,
                slice_spacing_mm=md.slice_spacing_mm,
                heart_rate_bpm=md.heart_rate_bpm,
                source=self.what,
                metadata=md,
            )
            if kspace is None or noise_free is None:
                kspace = torch.empty((len(idx), *acq.kspace.shape[1:]), dtype=torch.complex64)
                noise_free = torch.empty((len(idx), *acq.image.shape[1:]), dtype=torch.complex64)
                first = acq.metadata
            kspace[i] = acq.kspace[0]
            noise_free[i] = acq.image[0]
            noise_stds.append(acq.noise_std)
            del acq
        if kspace is None or noise_free is None or first is None:
            raise ValueError(f"{self.spec}: no slices to simulate")
        sim_info = dict(first.extra.get("simulation", {}))
        sim_info.update(
            seed=self.seed,
            per_slice_seeds=[self.slice_seed(s) for s in idx],
            noise_std_per_slice=noise_stds,
            snr_scope="per slice",
        )
        snr = "noiseless" if self.snr_db is None else f"SNR {self.snr_db:g} dB"
        meta = first.with_updates(
            source=f"simulated from {self.what} ({self.n_coils} coils, {snr}, seed {self.seed})",
            n_slices=len(idx),
            extra={**first.extra, "simulation": sim_info, "source_n_slices": self.n_slices},
        )
        labels = None if self.labels is None else torch.from_numpy(np.ascontiguousarray(self.labels[idx]))
        return CineSource(
            kspace=kspace,
            metadata=meta,
            labels=labels,
            truth=self.truth,
            spec=self.spec,
            slice_indices=tuple(idx),
            label_classes=self.label_classes,
            noise_free=noise_free,
        )


# --------------------------------------------------------------------------- readers


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix)


def _read_labels_npz(path: Path, shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    try:
        with np.load(path) as npz:
            if "labels" not in npz.files:
                raise DataFileError(path, f"has no 'labels' array (holds {npz.files})")
            labels = np.asarray(npz["labels"])
            classes = tuple(int(v) for v in npz["label_classes"]) if "label_classes" in npz.files else None
    except DataFileError:
        raise
    except Exception as err:  # zipfile/pickle/OS errors of a broken file
        raise DataFileError(path, f"cannot read labels: {type(err).__name__}: {err}") from err
    if labels.shape != shape:
        raise DataFileError(
            path,
            f"labels of shape {list(labels.shape)} do not match the k-space images [slice, time, y, x] = {list(shape)}",
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise DataFileError(path, f"labels must be integers in 0..255, got dtype {labels.dtype}")
    labels = labels.astype(np.uint8)
    if classes is None:
        classes = tuple(int(v) for v in np.unique(labels) if v != LABEL_IGNORE)
    return torch.from_numpy(labels), classes


def _read_truth(path: Path) -> dict[str, Any]:
    try:
        with open(path) as fh:
            truth = json.load(fh)
    except (OSError, ValueError) as err:
        raise DataFileError(path, f"cannot read true biomarkers (JSON): {err}") from err
    if not isinstance(truth, dict):
        raise DataFileError(path, f"expected a JSON object of biomarkers, got {type(truth).__name__}")
    return truth


def _open_ismrmrd(path: Path, spec: str) -> _KSpaceSource:
    from cardiomm.data.ismrmrd_raw import read_ismrmrd_raw

    scan = read_ismrmrd_raw(path)
    mask = np.asarray(scan.mask, dtype=bool)
    if not mask.all():
        frac = float(mask.mean())
        raise DataFileError(
            path,
            f"is prospectively undersampled ({frac:.1%} of k-space acquired, R_effective={1 / max(frac, 1e-12):.2f}, "
            f"pattern {scan.metadata.mask_pattern or 'unknown'}); training and evaluation need fully sampled "
            "k-space as the reference -- reconstruct this file instead (read_ismrmrd_raw + a reconstruction method)",
        )
    kspace = torch.from_numpy(np.ascontiguousarray(scan.kspace, dtype=np.complex64))
    s, _, t, ny, nx = kspace.shape
    labels, classes, truth = None, None, None
    lab_path = _sidecar(path, "_labels.npz")
    if lab_path.is_file():
        labels, classes = _read_labels_npz(lab_path, (s, t, ny, nx))
    truth_path = _sidecar(path, "_truth.json")
    if truth_path.is_file():
        truth = _read_truth(truth_path)
    source = CineSource(kspace=kspace, metadata=scan.metadata, labels=labels, truth=truth, spec=spec,
                        label_classes=classes)
    return _KSpaceSource(source)


def _open_cmrxrecon(path: Path, spec: str) -> _KSpaceSource:
    from cardiomm.data.cmrxrecon import read_cmrxrecon_kspace

    scan = read_cmrxrecon_kspace(path)
    variable = str(scan.metadata.extra.get("variable", ""))
    if variable.lower() not in _FULL_CMRX_VARIABLES or not np.asarray(scan.mask).all():
        raise DataFileError(
            path,
            f"holds undersampled k-space (variable {variable!r}); training needs a fully sampled variable "
            f"({', '.join(_FULL_CMRX_VARIABLES)}) such as the FullSample/.../cine_sax.mat files",
        )
    kspace = torch.from_numpy(np.ascontiguousarray(scan.kspace, dtype=np.complex64))
    return _KSpaceSource(CineSource(kspace=kspace, metadata=scan.metadata, spec=spec))


def _sunnybrook_layout(folder: Path) -> tuple[Path, Path] | None:
    """``(contourfiles, link.csv)`` when ``folder`` is ``<root>/dicoms/<patient>`` of a Sunnybrook copy."""
    root = folder.resolve().parent.parent
    contour_dir, link = root / "contourfiles", root / "link.csv"
    if folder.resolve().parent.name == "dicoms" and contour_dir.is_dir() and link.is_file():
        return contour_dir, link
    return None


def _dicom_labels(cine: Any, folder: Path, contours: Path | None) -> np.ndarray | None:
    """Label stack uint8 ``[slice, frame, y, x]`` from Sunnybrook contours (see module docstring)."""
    from cardiomm.data.contours import read_link_csv, sunnybrook_contour_files, sunnybrook_labels

    link: Path | None = None
    if contours is None:
        layout = _sunnybrook_layout(folder)
        if layout is None:
            return None
        contours, link = layout
        pid = str(cine.metadata.extra.get("patient_id") or folder.name)
        if pid not in read_link_csv(link):
            return None
    per_frame = sunnybrook_labels(contours, cine, link)
    kinds = sunnybrook_contour_files(contours, cine, link)
    labels = np.full(cine.images.shape, LABEL_IGNORE, dtype=np.uint8)
    for (s, f), label in per_frame.items():
        if "o" in kinds.get((s, f), {}):
            labels[s, f] = label
        else:  # endocardium only: blood pool known, everything else unlabelled
            labels[s, f] = np.where(label > 0, label, LABEL_IGNORE)
    return labels


def _open_dicom(folder: Path, contours: Path | None, spec: str, n_coils: int, seed: int,
                snr_db: float | None) -> _SimulatedSource:
    from cardiomm.data.dicom_cine import read_dicom_cine

    cine = read_dicom_cine(folder)
    labels = _dicom_labels(cine, folder, contours)
    images = np.asarray(cine.images, dtype=np.float32)
    md = cine.metadata
    pe = md.extra.get("phase_encoding_direction")
    transposed = str(pe).upper() == "ROW"
    if transposed:  # phase encoding along image x: make it the y (ky) axis
        images = np.ascontiguousarray(np.swapaxes(images, -1, -2))
        labels = None if labels is None else np.ascontiguousarray(np.swapaxes(labels, -1, -2))
        dy, dx = md.pixel_spacing_mm or (None, None)
        fov = md.recon_fov_mm
        md = md.with_updates(
            pixel_spacing_mm=(dx, dy) if dy is not None else None,
            recon_fov_mm=(fov[1], fov[0], fov[2]) if fov is not None else None,
        )
    if not np.all(np.isfinite(images)) or images.min() < 0:
        images = np.clip(np.nan_to_num(images), 0, None)
    md = md.with_updates(
        extra={
            **md.extra,
            "transposed": transposed,
            "transposed_note": "image y/x swapped so that ky is the phase-encoding axis" if transposed else None,
            "labels": "Sunnybrook contours" if labels is not None else None,
        }
    )
    return _SimulatedSource(
        spec,
        images,
        labels,
        md,
        what=f"DICOM {folder}",
        kind="dicom",
        key=zlib.crc32(folder.resolve().name.encode()),
        n_coils=n_coils,
        seed=seed,
        snr_db=snr_db,
        truth=None,
        label_classes=_SUNNYBROOK_LABEL_CLASSES if labels is not None else None,
    )


def _open_phantom(spec: str, n_coils: int, seed: int, snr_db: float | None) -> _SimulatedSource:
    ps = parse_phantom_spec(spec)
    if ps.start != ps.stop:
        raise ValueError(f"{spec!r} is a range of {len(ps.seeds)} phantoms; expand it with expand_sources() first")
    phantom: PhantomCine = make_phantom(ps.start, **ps.options)
    md = ScanMetadata(
        source=phantom.description,
        simulated=True,
        modality="cine",
        view="sax",
        n_frames=int(phantom.images.shape[1]),
        n_slices=int(phantom.images.shape[0]),
        pixel_spacing_mm=tuple(float(v) for v in phantom.pixel_spacing_mm),
        slice_thickness_mm=float(phantom.slice_thickness_mm),
        slice_spacing_mm=float(phantom.slice_spacing_mm),
        heart_rate_bpm=float(phantom.heart_rate_bpm),
        extra={"phantom_seed": int(ps.start), "phantom_options": dict(ps.options)},
    )
    return _SimulatedSource(
        spec,
        phantom.images,
        phantom.labels,
        md,
        what=phantom.description,
        kind="phantom",
        key=ps.start,
        n_coils=n_coils,
        seed=seed,
        snr_db=snr_db,
        truth=phantom.truth.to_dict(),
        label_classes=_PHANTOM_LABEL_CLASSES,
    )


def _check_sim_args(n_coils: int, seed: int, snr_db: float | None) -> None:
    if isinstance(n_coils, bool) or not isinstance(n_coils, (int, np.integer)) or n_coils < 1:
        raise ValueError(f"n_coils must be a positive integer, got {n_coils!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if snr_db is not None and not np.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of dB or None (noiseless), got {snr_db!r}")


def open_source(
    spec: str | os.PathLike[str], *, n_coils: int = 10, seed: int = 0, snr_db: float | None = 30.0
) -> OpenedSource:
    """Open one source (see the module docstring for the spec forms).

    Files are read (and k-space held in memory); DICOM images are read and phantoms generated,
    but their multi-coil k-space is only simulated for the slices asked of
    :meth:`OpenedSource.load`.  ``n_coils``, ``seed`` and ``snr_db`` apply to simulated
    sources only.

    Raises:
        DataFileError: missing or unreadable files (named), undersampled k-space.
        ValueError: malformed phantom specs or ranges, bad arguments.
    """
    _check_sim_args(n_coils, seed, snr_db)
    text = os.fspath(spec).strip()
    if _is_phantom(text):
        return _open_phantom(text, int(n_coils), int(seed), snr_db)
    folder, contours = _split_dicom_spec(text)
    if contours is not None or folder.is_dir():
        if not folder.is_dir():
            raise DataFileError(folder, "no such DICOM folder")
        if contours is not None and not contours.is_dir():
            raise DataFileError(contours, "no such contour folder")
        return _open_dicom(folder, contours, text, int(n_coils), int(seed), snr_db)
    path = Path(text)
    if not path.exists():
        raise DataFileError(path, "no such file or folder")
    suffix = path.suffix.lower()
    if suffix in _ISMRMRD_SUFFIXES:
        return _open_ismrmrd(path, text)
    if suffix == ".mat":
        return _open_cmrxrecon(path, text)
    raise DataFileError(
        path, f"unknown source type {suffix!r}; expected an ISMRMRD .h5/.mrd file, a CMRxRecon .mat file, a DICOM "
        "folder or 'phantom:SEED'"
    )


def load_source(
    spec: str | os.PathLike[str],
    *,
    n_coils: int = 10,
    seed: int = 0,
    snr_db: float | None = 30.0,
    slices: Sequence[int] | None = None,
) -> CineSource:
    """Load a fully sampled multi-coil cine scan with its labels from a source spec.

    Args:
        spec: see the module docstring (a file, a DICOM folder, ``phantom:SEED``).
        n_coils: receive coils of simulated sources (DICOM, phantom).
        seed: seed of the simulation (coil phases, background phase, noise).
        snr_db: SNR of simulated sources in dB (None: noiseless).
        slices: load only these slices (simulated sources then only simulate those).

    Returns:
        :class:`CineSource` (``kspace`` complex64 ``[slice, coil, time, ky, kx]``).
    """
    return open_source(spec, n_coils=n_coils, seed=seed, snr_db=snr_db).load(slices)


def _ismrmrd_slice_count(path: Path) -> int | None:
    """Slice count from the acquisition counters without assembling k-space (None if unsure)."""
    try:
        with h5py.File(path, "r") as f:
            heads = f["dataset/data"]["head"]
            return int(heads["idx"]["slice"].max()) + 1 if heads.shape[0] else None
    except Exception:  # noqa: BLE001 - any problem: let the full reader report it
        return None


def _mat_slice_count(path: Path) -> int | None:
    from cardiomm.data.cmrxrecon import list_mat_variables

    try:
        variables = list_mat_variables(path)
        v73 = h5py.is_hdf5(path)
    except Exception:  # noqa: BLE001
        return None
    key = next((k for k in _FULL_CMRX_VARIABLES if k in variables), None)
    if key is None:
        return None
    shape = variables[key]
    full = 4 if "single" in key else 5
    if len(shape) < 3 or len(shape) > full:
        return None
    slice_axis_v5 = 2 if full == 4 else 3  # (kx, ky, [coil,] slice, time)
    if v73:  # reversed, missing leading axes
        padded = (1,) * (full - len(shape)) + tuple(shape)
        return int(padded[full - 1 - slice_axis_v5])
    padded = tuple(shape) + (1,) * (full - len(shape))
    return int(padded[slice_axis_v5])


def count_slices(spec: str | os.PathLike[str]) -> int | None:
    """Number of slices of a single-scan spec, cheaply when possible.

    Phantoms: from the spec's options; ISMRMRD: from the acquisition counters; CMRxRecon: from the
    stored variable shape.  Returns None when it cannot be known without opening the source
    (DICOM folders) -- use :func:`open_source` then.
    """
    text = os.fspath(spec).strip()
    if _is_phantom(text):
        ps = parse_phantom_spec(text)
        return ps.n_slices
    path = Path(text)
    if _CONTOUR_SEPARATOR in text or path.is_dir() or not path.is_file():
        return None
    if path.suffix.lower() in _ISMRMRD_SUFFIXES:
        return _ismrmrd_slice_count(path)
    if path.suffix.lower() == ".mat":
        return _mat_slice_count(path)
    return None
