"""``cardiomm segment INPUT --out DIR``: heart segmentation and biomarkers of a cine stack.

INPUT is a DICOM cine folder, a NIfTI file (``.nii``/``.nii.gz``, axes x, y[, slice[, frame]])
or an ISMRMRD image file (``.h5``/``.mrd``).  Writes, atomically, into DIR:

* ``labels.nii.gz``: uint8 labels (0 bg, 1 LV blood, 2 LV myocardium, 3 RV blood), NIfTI axes
  x, y, slice, frame with the input's pixel and slice spacing (mm);
* ``overlay.png``: the mid-ventricular slice at end-diastole and end-systole with the labels;
* ``biomarkers.json``: EDV, ESV, SV, EF, LV mass, RV volumes, cardiac output (when the heart
  rate is known), with warnings for what cannot be determined (e.g. one frame: no EF).

Segmentation: frozen LiteMedSAM encoder + the trained prompt-free cardiac decoder
(``segment.segmenter.CardiacSegmenter``), CPU by default.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment LV, myocardium and RV of a cine stack and compute EDV/ESV/EF/mass",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="DICOM cine folder, NIfTI file or ISMRMRD image file")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--group", default=None, help="ISMRMRD image group (default: the first)")
    p.add_argument("--pixel-spacing-mm", type=float, nargs=2, default=None, metavar=("ROW", "COL"),
                   help="override the in-plane pixel spacing read from the input")
    p.add_argument("--slice-spacing-mm", type=float, default=None, help="override the slice spacing")
    p.add_argument("--heart-rate", type=float, default=None, help="heart rate in bpm (for cardiac output)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", type=Path, default=None, help="decoder weights (default: the shipped ones)")
    p.set_defaults(func=run)


@dataclass
class CineInput:
    """A loaded stack: float32 magnitude ``[slice, frame, y, x]``, spacing in mm, NIfTI affine."""

    images: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None
    slice_spacing_mm: float | None
    heart_rate_bpm: float | None
    affine: np.ndarray | None
    kind: str


def _nifti_to_stack(data: np.ndarray) -> np.ndarray:
    """NIfTI ``[x, y(, z(, t))]`` -> ``[slice, frame, y, x]``."""
    if data.ndim == 2:
        data = data[:, :, None, None]
    elif data.ndim == 3:
        data = data[:, :, :, None]
    elif data.ndim != 4:
        raise ValueError(f"NIfTI data must have 2 to 4 axes (x, y, slice, frame), got shape {list(data.shape)}")
    return np.transpose(data, (2, 3, 1, 0))


def load_input(path: Path, group: str | None = None) -> CineInput:
    """Read a DICOM folder, NIfTI or ISMRMRD image file into a :class:`CineInput`."""
    from cardiomm.data.errors import DataFileError

    name = path.name.lower()
    if path.is_dir():
        from cardiomm.data.dicom_cine import read_dicom_cine

        cine = read_dicom_cine(path)
        return CineInput(cine.images.astype(np.float32), cine.pixel_spacing_mm, cine.slice_spacing_mm,
                         cine.metadata.heart_rate_bpm, None, "dicom")
    if not path.is_file():
        raise DataFileError(path, "no such file or folder")
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj)
        except Exception as err:  # nibabel raises many types on corrupt files
            raise DataFileError(path, f"not a readable NIfTI file: {err}") from err
        if np.iscomplexobj(data):
            data = np.abs(data)
        zooms = [float(z) for z in img.header.get_zooms()]
        ps = (zooms[1], zooms[0]) if len(zooms) >= 2 else None
        ss = zooms[2] if len(zooms) >= 3 and data.ndim >= 3 else None
        return CineInput(_nifti_to_stack(data.astype(np.float32)), ps, ss, None, img.affine, "nifti")
    if name.endswith((".h5", ".mrd", ".hdf5")):
        from cardiomm.data.ismrmrd_image import read_ismrmrd_images

        images, meta = read_ismrmrd_images(path, group=group)
        images = np.abs(images) if np.iscomplexobj(images) else images
        return CineInput(np.asarray(images, np.float32), meta.pixel_spacing_mm, meta.slice_spacing_mm or meta.slice_thickness_mm,
                         meta.heart_rate_bpm, None, "ismrmrd")
    raise DataFileError(path, "unknown input type: expected a DICOM folder, .nii/.nii.gz or .h5/.mrd")


def write_labels_nifti(path: Path, labels: np.ndarray, pixel_spacing_mm: tuple[float, float],
                       slice_spacing_mm: float | None, affine: np.ndarray | None = None) -> Path:
    """Labels ``[slice, frame, y, x]`` -> uint8 NIfTI ``[x, y, slice, frame]`` (zooms in mm), atomically."""
    from cardiomm.data.nifti import write_nifti_cine

    dz = float(slice_spacing_mm) if slice_spacing_mm else 1.0
    return write_nifti_cine(path, labels.astype(np.uint8), (pixel_spacing_mm[0], pixel_spacing_mm[1], dz),
                            affine=affine, description="cardiomm segment labels: 1 LV blood, 2 LV myo, 3 RV blood")


def write_overlay_png(path: Path, images: np.ndarray, labels: np.ndarray, frames: list[int], title: str) -> Path:
    """Mid slice at the given frames with coloured labels, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from cardiomm.atomic import atomic_path
    from cardiomm.data.labels import LABEL_OVERLAY_RGBA

    s = images.shape[0] // 2
    cmap = ListedColormap(LABEL_OVERLAY_RGBA)
    fig, axes = plt.subplots(1, len(frames), figsize=(4 * len(frames), 4.2), squeeze=False)
    for ax, f in zip(axes[0], frames):
        ax.imshow(images[s, f], cmap="gray")
        ax.imshow(labels[s, f], cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        ax.set_title(f"slice {s}, frame {f}")
        ax.axis("off")
    fig.suptitle(title + "  (red LV blood, green LV myocardium, blue RV blood)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    from cardiomm.atomic import write_json_atomic
    from segment.biomarkers import compute_biomarkers
    from segment.segmenter import CardiacSegmenter, check_pixel_spacing

    stack = load_input(Path(args.input), args.group)
    ps = args.pixel_spacing_mm or stack.pixel_spacing_mm
    if ps is None:
        raise ValueError(f"{args.input}: no pixel spacing in the input; pass --pixel-spacing-mm ROW COL")
    ps = check_pixel_spacing(ps)
    ss = args.slice_spacing_mm if args.slice_spacing_mm is not None else stack.slice_spacing_mm
    hr = args.heart_rate if args.heart_rate is not None else stack.heart_rate_bpm

    seg = CardiacSegmenter.load_default(device=args.device, weights=args.weights)
    labels = seg.segment(stack.images, ps)
    out = Path(args.out)
    write_labels_nifti(out / "labels.nii.gz", labels, ps, ss, stack.affine)

    report: dict = {"input": str(args.input), "input_kind": stack.kind, "shape_slice_frame_y_x": list(labels.shape),
                    "pixel_spacing_mm": list(ps), "slice_spacing_mm": ss,
                    "segmenter": "LiteMedSAM encoder (frozen) + CardioMM prompt-free cardiac decoder"}
    frames = [0]
    if ss is None or not (np.isfinite(ss) and ss > 0):
        areas = {name: (np.count_nonzero(labels == v, axis=(0, 2, 3)) * ps[0] * ps[1]).tolist()
                 for v, name in ((1, "lv_blood_area_mm2"), (2, "lv_myocardium_area_mm2"), (3, "rv_blood_area_mm2"))}
        report.update(areas)
        report["biomarkers"] = None
        report["warnings"] = ["slice spacing unknown: volumes, EF and mass are undetermined (pass --slice-spacing-mm)"]
    else:
        bio = compute_biomarkers(labels, ps, ss, heart_rate_bpm=hr)
        report["biomarkers"] = bio.to_dict()
        report["warnings"] = list(bio.warnings)
        frames = sorted({f for f in (bio.ed_frame, bio.es_frame) if f is not None}) or [0]
    write_json_atomic(out / "biomarkers.json", report)
    write_overlay_png(out / "overlay.png", stack.images, labels, frames, Path(args.input).name)
    b = report["biomarkers"] or {}
    print(f"wrote {out / 'labels.nii.gz'}, {out / 'overlay.png'}, {out / 'biomarkers.json'}")
    print("LVEDV {} mL, LVESV {} mL, LVEF {} %, LV mass {} g".format(
        *(None if b.get(k) is None else round(b[k], 1) for k in ("lvedv_ml", "lvesv_ml", "lvef_percent", "lv_mass_g"))))
    for w in report["warnings"]:
        print(f"warning: {w}")
    return 0
