"""Segmentation benchmark: CardioMM SAM decoder vs the myopari ACDC network.

    python benchmarks/segmentation.py [--stage features|evaluate|all] [--weights PATH]

Data (none of it used for training the decoder):
* Sunnybrook SCD0000301 (real cine MRI), every frame with manual contours: LV blood pool
  Dice/HD95 on all of them, LV myocardium only where an epicardium is drawn.  No RV truth.
* Phantom seeds 1000-1004 (SIMULATED images with exact labels): mid-ventricular slice at
  end-diastole and end-systole; LV blood, LV myocardium and RV blood.
* Robustness: each image again shifted by 10 % of the image side along both axes (random
  signs) and rotated by +/-15 degrees (alternating), labels moved with it; Dice drop =
  mean Dice on the originals minus mean Dice on the moved images.
* LVEF on SCD0000301 from the slices that have an i-contour at both contoured frames
  (ED = the frame with the larger manual volume): summation of discs over those slices only,
  from our labels, from myopari's and from the manual contours.

Both networks get the same post-processing (:func:`segment.postprocess.clean_labels`).
The frozen-encoder features of all images are computed once (``--stage features``) and
cached in ``build/segment_cache/bench``.  Writes ``benchmarks/results/segmentation.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cardiomm.atomic import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from cardiomm.allocator import tune_cpu_allocator  # noqa: E402
from segment.augment import Rigid2D, apply_rigid  # noqa: E402

CACHE = ROOT / "build" / "segment_cache" / "bench"
RESULTS = ROOT / "benchmarks" / "results"
SUNNYBROOK = ROOT.parent / "shared" / "data" / "sunnybrook"
PHANTOM_SEEDS = [1000, 1001, 1002, 1003, 1004]
CLASSES = {1: "lv_blood", 2: "lv_myocardium", 3: "rv_blood"}


def _variants(image: np.ndarray, label: np.ndarray, k: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    side = max(image.shape)
    sy, sx = rng.choice([-1, 1], size=2) * 0.10 * side
    shift = Rigid2D(shift_px=(float(sy), float(sx)))
    rot = Rigid2D(rotation_deg=15.0 if k % 2 == 0 else -15.0)
    out = [("original", image, label)]
    for name, m in (("shift", shift), ("rotation", rot)):
        out.append((name, apply_rigid(image, m, order=1), apply_rigid(label, m, order=0)))
    return out


def build_items() -> list[dict]:
    """All evaluation images (original resolution) with truth, spacing and variant names."""
    from cardiomm.data.contours import sunnybrook_labels
    from cardiomm.data.dicom_cine import read_dicom_cine
    from cardiomm.data.phantom import make_phantom

    rng = np.random.default_rng(301)
    items: list[dict] = []
    cine = read_dicom_cine(SUNNYBROOK / "dicoms" / "SCD0000301")
    manual = sunnybrook_labels(SUNNYBROOK / "contourfiles", cine)
    for k, ((s, f), lab) in enumerate(manual.items()):
        has_epi = bool((lab == 2).any())
        for name, im, lb in _variants(cine.images[s, f].astype(np.float32), lab, k, rng):
            items.append({"dataset": "SCD0000301", "id": f"{s}:{f}", "slice": s, "frame": f, "variant": name,
                          "image": im, "truth": lb, "classes": [1, 2] if has_epi else [1],
                          "spacing": tuple(float(v) for v in cine.pixel_spacing_mm),
                          "slice_spacing": float(cine.slice_spacing_mm)})
    k = 0
    for seed in PHANTOM_SEEDS:
        ph = make_phantom(seed)
        s = ph.labels.shape[0] // 2
        for f in (0, int(ph.design.es_frame)):
            for name, im, lb in _variants(ph.images[s, f].astype(np.float32), ph.labels[s, f], k, rng):
                items.append({"dataset": "phantom (simulated)", "id": f"{seed}:{s}:{f}", "slice": s, "frame": f,
                              "variant": name, "image": im, "truth": lb, "classes": [1, 2, 3],
                              "spacing": tuple(float(v) for v in ph.pixel_spacing_mm), "slice_spacing": float(ph.slice_spacing_mm)})
            k += 1
    return items


def stage_features(items: list[dict]) -> None:
    from segment.litemedsam import FrozenImageEncoder, load_litemedsam
    from segment.preprocess import GridGeometry, normalize_intensity, to_model_grid
    from segment.training_data import Sample, build_cache

    samples = []
    for it in items:
        geom = GridGeometry.for_shape(it["image"].shape, it["spacing"])  # as CardiacSegmenter.segment does
        grid = to_model_grid(normalize_intensity(it["image"])[None], geom)[0].numpy()
        samples.append(Sample(grid, np.zeros((256, 256), np.uint8), 1.0, f"{it['dataset']}:{it['id']}:{it['variant']}"))
    build_cache(samples, CACHE, FrozenImageEncoder(load_litemedsam().image_encoder))


def _volume_ml(labels: list[np.ndarray], spacing: tuple[float, float], slice_mm: float) -> float:
    return float(sum((lb == 1).sum() for lb in labels) * spacing[0] * spacing[1] * slice_mm / 1000)


def stage_evaluate(items: list[dict], weights: Path | None) -> dict:
    from segment.acdc_teacher import AcdcTeacher
    from segment.litemedsam import EncoderFeatures
    from segment.metrics import dice, hd95_mm
    from segment.postprocess import clean_labels
    from segment.preprocess import GridGeometry, from_model_grid, normalize_intensity
    from segment.segmenter import CardiacSegmenter
    from segment.training_data import add_stage2, load_cache

    torch.set_num_threads(1)
    cache = load_cache(CACHE)
    if len(cache["sources"]) != len(items):
        raise RuntimeError(f"feature cache holds {len(cache['sources'])} of {len(items)} images: run --stage features")
    seg = CardiacSegmenter.load_default(weights=weights)
    if seg.encoder.keep_stage2 and "stage2" not in cache:  # decoders with encoder adapters read layers[2]'s output
        add_stage2(CACHE, seg.encoder)
        cache = load_cache(CACHE)
    teacher = AcdcTeacher()
    t_dec = t_acdc = t_zoom = 0.0
    rows = []
    for i, it in enumerate(items):
        geom = GridGeometry.for_shape(it["image"].shape, it["spacing"])  # as CardiacSegmenter.segment does
        feats = EncoderFeatures(torch.from_numpy(np.asarray(cache["embedding"][i: i + 1], np.float32)),
                                torch.from_numpy(np.asarray(cache["stage1"][i: i + 1], np.float32)),
                                torch.from_numpy(np.asarray(cache["stage2"][i: i + 1], np.float32)) if "stage2" in cache else None)
        grid = torch.from_numpy(np.asarray(cache["image"][i: i + 1], np.float32))
        t0 = time.perf_counter()
        probs = from_model_grid(seg.probabilities_from_features(feats, grid), geom)
        tz = time.perf_counter()
        windows = seg.heart_windows(probs, it["spacing"])  # None without the second pass
        if windows is not None:
            probs = seg.probabilities_in(normalize_intensity(it["image"])[None], windows[0])
        t_zoom += time.perf_counter() - tz
        ours = seg.labels_from_probabilities(probs, it["spacing"])[0]
        t1 = time.perf_counter()
        acdc = clean_labels(teacher.segment(it["image"]))
        t2 = time.perf_counter()
        t_dec += t1 - t0
        t_acdc += t2 - t1
        it["pred"] = {"cardiomm_sam": ours, "myopari_acdc": acdc}
        for method, pred in it["pred"].items():
            for c in it["classes"]:
                rows.append({"dataset": it["dataset"], "id": it["id"], "variant": it["variant"], "method": method,
                             "class": CLASSES[c], "dice": dice(pred == c, it["truth"] == c),
                             "hd95_mm": hd95_mm(pred == c, it["truth"] == c, it["spacing"])})
    n = len(items)
    enc_s = json.loads((CACHE / "meta.json").read_text())["encoder_seconds_per_image"]
    return {"rows": rows, "decoder_seconds_per_image": (t_dec - t_zoom) / n, "encoder_seconds_per_image": enc_s,
            "second_pass_seconds_per_image": t_zoom / n, "segmenter": seg.describe(),
            "myopari_seconds_per_image": t_acdc / n}


def summarise(items: list[dict], ev: dict) -> dict:
    rows = ev["rows"]
    methods = ["cardiomm_sam", "myopari_acdc"]
    table = []
    for ds in ("SCD0000301", "phantom (simulated)"):
        for c in CLASSES.values():
            for m in methods:
                sel = [r for r in rows if r["dataset"] == ds and r["class"] == c and r["method"] == m]
                if not sel:
                    continue
                by = {v: [r for r in sel if r["variant"] == v] for v in ("original", "shift", "rotation")}
                d0 = np.array([r["dice"] for r in by["original"]], float)
                h0 = np.array([r["hd95_mm"] for r in by["original"]], float)
                table.append({
                    "dataset": ds, "class": c, "method": m, "n_images": int(len(d0)),
                    "dice_mean": float(np.nanmean(d0)), "dice_sd": float(np.nanstd(d0)),
                    "hd95_mm_median": float(np.nanmedian(h0)), "hd95_mm_mean": float(np.nanmean(h0)),
                    "hd95_undefined": int(np.isnan(h0).sum()),
                    "dice_shift_mean": float(np.nanmean([r["dice"] for r in by["shift"]])),
                    "dice_rotation_mean": float(np.nanmean([r["dice"] for r in by["rotation"]])),
                })
                table[-1]["dice_drop_shift"] = table[-1]["dice_mean"] - table[-1]["dice_shift_mean"]
                table[-1]["dice_drop_rotation"] = table[-1]["dice_mean"] - table[-1]["dice_rotation_mean"]
    # LVEF on SCD0000301 from slices contoured at both frames
    orig = [it for it in items if it["dataset"] == "SCD0000301" and it["variant"] == "original"]
    frames = sorted({it["frame"] for it in orig})
    slices = sorted({it["slice"] for it in orig if all(any(o["slice"] == it["slice"] and o["frame"] == f for o in orig) for f in frames)})
    ef = {}
    if len(frames) == 2 and slices:
        sp, ss = orig[0]["spacing"], orig[0]["slice_spacing"]
        for source in ("manual", "cardiomm_sam", "myopari_acdc"):
            vol = {}
            for f in frames:
                labs = [(o["truth"] if source == "manual" else o["pred"][source]) for o in orig if o["frame"] == f and o["slice"] in slices]
                vol[f] = _volume_ml(labs, sp, ss)
            ef[source] = {"volumes_ml_by_frame": {str(k): v for k, v in vol.items()}}
        man = ef["manual"]["volumes_ml_by_frame"]
        ed, es = (str(frames[0]), str(frames[1])) if man[str(frames[0])] >= man[str(frames[1])] else (str(frames[1]), str(frames[0]))
        for source, d in ef.items():
            v = d["volumes_ml_by_frame"]
            d.update(edv_ml=v[ed], esv_ml=v[es], lvef_percent=100 * (v[ed] - v[es]) / v[ed])
        for source in ("cardiomm_sam", "myopari_acdc"):
            ef[source]["delta_lvef_points"] = ef[source]["lvef_percent"] - ef["manual"]["lvef_percent"]
        ef["slices"] = slices
        ef["ed_frame"], ef["es_frame"] = int(ed), int(es)
    return {"table": table, "lvef_scd0000301": ef}


def _cell(v: float, fmt: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, fmt)


def write_outputs(items: list[dict], ev: dict, summary: dict, weights_note: str, out: Path = RESULTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from cardiomm.data.labels import LABEL_OVERLAY_RGBA

    table, ef = summary["table"], summary["lvef_scd0000301"]
    targets = {}
    ours = {(r["dataset"], r["class"]): r for r in table if r["method"] == "cardiomm_sam"}
    lv, myo = ours.get(("SCD0000301", "lv_blood")), ours.get(("SCD0000301", "lv_myocardium"))
    if lv:
        targets["lv_dice_ge_0.95"] = {"value": lv["dice_mean"], "met": lv["dice_mean"] >= 0.95}
    if myo:
        targets["myo_dice_ge_0.85"] = {"value": myo["dice_mean"], "met": myo["dice_mean"] >= 0.85}
    if ef:
        targets["abs_delta_lvef_le_3"] = {"value": ef["cardiomm_sam"]["delta_lvef_points"], "met": abs(ef["cardiomm_sam"]["delta_lvef_points"]) <= 3}
    drops = [max(r["dice_drop_shift"], r["dice_drop_rotation"]) for r in table if r["method"] == "cardiomm_sam"]
    targets["dice_drop_le_0.02"] = {"value": max(drops), "met": max(drops) <= 0.02}
    payload = {"description": __doc__, "weights": weights_note, "segmenter": ev["segmenter"], "summary": table, "lvef_scd0000301": ef, "targets": targets,
               "seconds_per_image_cpu": {"litemedsam_encoder": ev["encoder_seconds_per_image"],
                                         "cardiac_decoder_and_postprocessing": ev["decoder_seconds_per_image"],
                                         "second_pass_encoder_and_decoder": ev["second_pass_seconds_per_image"],
                                         "myopari_acdc_including_postprocessing": ev["myopari_seconds_per_image"],
                                         "note": "one CPU thread on a shared 2-core machine (other jobs running); GPU not measured"},
               "per_image": ev["rows"]}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "segmentation.json", payload)

    md = ["# Segmentation benchmark: CardioMM SAM decoder vs myopari ACDC network", "",
          "![segmentation](segmentation.png)", "",
          "SCD0000301: real Sunnybrook cine MRI, manual LV contours (never used for training). Phantom: SIMULATED images, seeds 1000-1004 (training used seeds 0-39).",
          "Dice mean +/- SD and median HD95 on the original images; Dice drop = Dice(original) - Dice(moved) for a 10 % shift along both axes and a +/-15 degree rotation.", "",
          "| data | class | method | n | Dice | HD95 median (mm) | Dice drop shift | Dice drop rotation |",
          "|---|---|---|---|---|---|---|---|"]
    for r in table:
        md.append(f"| {r['dataset']} | {r['class']} | {r['method']} | {r['n_images']} | {_cell(r['dice_mean'])} +/- {_cell(r['dice_sd'])} | "
                  f"{_cell(r['hd95_mm_median'], '.1f')} | {_cell(r['dice_drop_shift'], '+.3f')} | {_cell(r['dice_drop_rotation'], '+.3f')} |")
    if ef:
        md += ["", f"LVEF on SCD0000301 from the {len(ef['slices'])} slices contoured at both ED (frame {ef['ed_frame']}) and ES (frame {ef['es_frame']}), "
               "summation of discs over those slices only:", "", "| source | EDV (mL) | ESV (mL) | LVEF (%) | dLVEF (points) |", "|---|---|---|---|---|"]
        for s in ("manual", "cardiomm_sam", "myopari_acdc"):
            d = ef[s]
            md.append(f"| {s} | {d['edv_ml']:.1f} | {d['esv_ml']:.1f} | {d['lvef_percent']:.1f} | {_cell(d.get('delta_lvef_points', float('nan')), '+.1f')} |")
    md += ["", "Targets: " + ", ".join(f"{k}: {_cell(v['value'])} ({'met' if v['met'] else 'NOT met'})" for k, v in targets.items()), "",
           f"Seconds per image (CPU, one thread, shared machine): LiteMedSAM encoder {ev['encoder_seconds_per_image']:.2f}, "
           f"cardiac decoder + post-processing {ev['decoder_seconds_per_image']:.2f}, "
           + (f"heart-centred second pass {ev['second_pass_seconds_per_image']:.2f}, " if ev["second_pass_seconds_per_image"] > 0.01 else "")
           + f"myopari {ev['myopari_seconds_per_image']:.2f}. GPU: not measured.",
           "", f"Decoder weights: {weights_note}. Segmenter: {ev['segmenter']}. Command: `python benchmarks/segmentation.py`."]
    write_text_atomic(out / "segmentation.md", "\n".join(md) + "\n")

    fig = plt.figure(figsize=(15, 7.5))
    ax = fig.add_subplot(2, 1, 1)
    labels_x, x = [], 0
    for r in table:
        if r["method"] != "cardiomm_sam":
            continue
        other = next(o for o in table if o["method"] == "myopari_acdc" and o["dataset"] == r["dataset"] and o["class"] == r["class"])
        ax.bar(x - 0.2, r["dice_mean"], 0.4, yerr=r["dice_sd"], color="tab:red", label="CardioMM SAM decoder" if x == 0 else None)
        ax.bar(x + 0.2, other["dice_mean"], 0.4, yerr=other["dice_sd"], color="tab:gray", label="myopari ACDC" if x == 0 else None)
        ax.plot([x - 0.4, x], [r["dice_shift_mean"]] * 2, "k:", lw=1)
        labels_x.append(f"{r['dataset'].split(' ')[0]}\n{r['class']}")
        x += 1
    ax.axhline(0.95, color="tab:blue", lw=0.8, ls="--")
    ax.axhline(0.85, color="tab:green", lw=0.8, ls="--")
    ax.set_xticks(range(len(labels_x)), labels_x, fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("Dice")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Dice per class (dotted: ours after shift; dashed lines: targets 0.95 LV, 0.85 myo)", fontsize=9)
    cmap = ListedColormap(LABEL_OVERLAY_RGBA)
    ex = [it for it in items if it["dataset"] == "SCD0000301" and it["classes"] == [1, 2]][:2]
    ex += [it for it in items if it["dataset"] != "SCD0000301" and it["variant"] == "rotation"][:1]
    k = 0
    for it in ex:
        for title, lab in (("manual/truth", it["truth"]), ("ours", it["pred"]["cardiomm_sam"])):
            k += 1
            a = fig.add_subplot(2, 6, 6 + k)
            a.imshow(it["image"], cmap="gray")
            a.imshow(np.where(lab == 255, 0, lab), cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
            a.set_title(f"{it['dataset'].split(' ')[0]} {it['id']} {it['variant']}\n{title}", fontsize=7)
            a.axis("off")
    fig.tight_layout()
    with atomic_path(out / "segmentation.png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    tune_cpu_allocator()  # the same malloc settings as the cardiomm command, for every method timed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["features", "evaluate", "all"], default="all")
    p.add_argument("--weights", type=Path, default=None, help="decoder weights (default: the shipped ones)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"folder of segmentation.{{json,md,png}} (default {RESULTS})")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    items = build_items()
    print(f"{len(items)} evaluation images")
    if args.stage in ("features", "all"):
        stage_features(items)
    if args.stage in ("evaluate", "all"):
        ev = stage_evaluate(items, args.weights)
        summary = summarise(items, ev)
        write_outputs(items, ev, summary, str(args.weights or "segment/weights/cardiac_decoder.pt (shipped)"), args.out)
        for r in summary["table"]:
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
        print(json.dumps(summary["lvef_scd0000301"], default=float)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
