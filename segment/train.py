"""Train the prompt-free cardiac decoder on cached LiteMedSAM features.

    python -m segment.train --config configs/segment_decoder.yaml [--stage cache|fit|all]

``cache`` builds the training samples (:mod:`segment.training_data`) and encodes them once
with the frozen encoder, into ``cache_dir`` (phantom and Sunnybrook images) and, when the config
has a ``reconstructions`` section, into its own ``cache_dir`` (reconstructed phantom slices), and
likewise for ``real_reconstructions`` (reconstructed contoured Sunnybrook slices); with
a ``zoom`` section, heart-centred zooms of every image of those caches
(:func:`segment.training_data.zoomed`, what the segmenter's second pass sees) go into a third.  A
cache that is complete and was built from the same config section is kept.  ``fit`` trains :class:`segment.decoder.CardiacDecoder` on the cache
(``train.members`` of them from different random starts, saved as one ensemble) with loss = Dice + CE + 0.5 x edge BCE (:mod:`segment.losses`) and writes the weights.
With ``train.adapter_rank`` > 0 every decoder also trains its own low-rank adapters on the encoder's
last stage (:mod:`segment.encoder_adapters`); ``cache`` then adds the stage-2 features to every cache.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from cardiomm.digests import json_sha256


def load_config(path: str | Path) -> dict[str, Any]:
    """A decoder config (YAML).  ``base: OTHER.yaml`` (a path relative to this file's folder) makes it
    that config with this file's keys laid over it, section by section (nested mappings are merged,
    anything else is replaced), so a variant states only what it changes.

    Raises:
        ValueError: naming the file, when it (or its base) is missing, circular or not a decoder config.
    """
    cfg = _read_layered(Path(path), ())
    if "data" not in cfg or "train" not in cfg:
        raise ValueError(f"{path}: not a segment decoder config (needs 'data' and 'train' sections)")
    return cfg


def _read_layered(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ValueError(f"{path}: circular 'base' ({' -> '.join(str(p) for p in (*seen, path.resolve()))})")
    if not path.is_file():
        raise ValueError(f"{seen[-1] if seen else path}: config {path} not found")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: not a segment decoder config (a YAML mapping is needed)")
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    return _merged(_read_layered(path.parent / str(base), (*seen, path.resolve())), cfg)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def fingerprint(*parts: Any) -> str:
    """Short hash of config sections (JSON, sorted keys): what a cache was built from."""
    return json_sha256(parts)[:16]


#: Config sections that add a cache of their own (``<section>.cache_dir``), in training order; ``zoom``
#: is made from the caches before it, so it stays last.
CACHE_SECTIONS: tuple[str, ...] = ("reconstructions", "real_reconstructions", "zoom")


def cache_dirs(cfg: dict[str, Any]) -> list[Path]:
    """Every cache the config trains on: ``cache_dir``, then ``<section>.cache_dir`` for each of
    :data:`CACHE_SECTIONS` the config has."""
    return [Path(cfg["cache_dir"])] + [Path(cfg[k]["cache_dir"]) for k in CACHE_SECTIONS if cfg.get(k)]


def make_cache(cfg: dict[str, Any]) -> None:
    """Build (or keep, when complete and up to date) every cache of the config."""
    from segment.litemedsam import FrozenImageEncoder, load_litemedsam
    from segment.training_data import build_cache, cache_is_complete

    jobs = [(Path(cfg["cache_dir"]), fingerprint(cfg["seed"], cfg["data"], cfg["augment"]), _image_samples)]
    recon_sections = [(k, make) for k, make in (("reconstructions", _reconstruction_samples),
                                                ("real_reconstructions", _real_reconstruction_samples)) if cfg.get(k)]
    if recon_sections:
        from cardiomm.inference import DEFAULT_CHECKPOINT
        from cardiomm.digests import file_sha256

        ckpt = file_sha256(DEFAULT_CHECKPOINT)[:16]  # the reconstructions depend on the shipped CardioMM
        for key, make in recon_sections:
            # the real patients' labels take the ES ring from the data section
            ring = [cfg["data"]["es_ring_mm"], _es_ring_label(cfg)] if key == "real_reconstructions" else []
            jobs.append((Path(cfg[key]["cache_dir"]), fingerprint(cfg["seed"], cfg[key], cfg["augment"], ckpt, *ring), make))
    if cfg.get("zoom"):  # made from the caches above, so it follows them
        zoom_data = {k: v for k, v in cfg["zoom"].items() if k != "margin"}  # margin is for inference only
        jobs.append((Path(cfg["zoom"]["cache_dir"]), fingerprint(cfg["seed"], zoom_data, [fp for _, fp, _ in jobs]), _zoom_samples))
    encoder = None
    for folder, fp, make_samples in jobs:
        if cache_is_complete(folder, fp):
            print(f"{folder}: complete and up to date, kept", flush=True)
            continue
        samples = make_samples(cfg)
        print(f"{folder}: {len(samples)} training images; encoding ...", flush=True)
        encoder = encoder or FrozenImageEncoder(load_litemedsam().image_encoder)
        t0 = time.perf_counter()
        sec = build_cache(samples, folder, encoder, fingerprint=fp)
        print(f"{folder}: written in {time.perf_counter() - t0:.0f} s ({sec:.2f} encoder s/image)", flush=True)
    if adapter_rank(cfg):  # the adapted encoder tail trains on layers[2]'s output
        from segment.training_data import add_stage2

        staged = None
        for folder, _, _ in jobs:
            staged = staged or FrozenImageEncoder(load_litemedsam().image_encoder, keep_stage2=True)
            t0 = time.perf_counter()
            if add_stage2(folder, staged):
                print(f"{folder}: stage-2 features added in {time.perf_counter() - t0:.0f} s", flush=True)


def adapter_rank(cfg: dict[str, Any]) -> int:
    """``train.adapter_rank``: rank of the LoRA adapters on the encoder's last stage (0 or absent: none).

    Raises:
        ValueError: not a non-negative integer.
    """
    rank = cfg["train"].get("adapter_rank", 0) or 0
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"train.adapter_rank must be a non-negative integer, got {rank!r}")
    return rank


def _reconstruction_samples(cfg: dict[str, Any]) -> list:
    from segment.augment import AugmentConfig
    from segment.training_data import reconstruction_samples

    r = cfg["reconstructions"]
    rng = np.random.default_rng([cfg["seed"], 1])
    lo, hi = r["phantom_seeds"]
    samples = _collect("reconstructing phantom slices", reconstruction_samples(
        list(range(lo, hi + 1)), list(r["methods"]), list(r["patterns"]), tuple(r["accel_range"]), rng,
        AugmentConfig(**cfg["augment"]), matrices=tuple(r["matrices"]), fov_range_mm=tuple(r["fov_range_mm"]),
        n_frames=int(r["n_frames"]), n_coils=int(r["coils"]), snr_db=float(r["snr_db"]),
        augment_fraction=float(r["augment_fraction"])))
    return [samples[i] for i in rng.permutation(len(samples))]


def _collect(description: str, samples: Iterator[Any]) -> list:
    """The samples of a slow generator (reconstructions), with a progress line counting them."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    out = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}: {task.completed:.0f} images"), TimeElapsedColumn()) as bar:
        task = bar.add_task(description, total=None)
        for sample in samples:
            out.append(sample)
            bar.advance(task)
    return out


def _real_reconstruction_samples(cfg: dict[str, Any]) -> list:
    from segment.augment import AugmentConfig
    from segment.training_data import sunnybrook_reconstruction_samples

    r = cfg["real_reconstructions"]
    rng = np.random.default_rng([cfg["seed"], 3])
    samples = _collect("reconstructing contoured Sunnybrook slices", sunnybrook_reconstruction_samples(
        Path(r["sunnybrook_root"]), list(r["patients"]), list(r["methods"]), list(r["patterns"]),
        tuple(r["accel_range"]), rng, AugmentConfig(**cfg["augment"]), rounds=int(r["rounds"]),
        n_coils=int(r["coils"]), snr_db=float(r["snr_db"]), augment_fraction=float(r["augment_fraction"]),
        ring_mm=float(cfg["data"]["es_ring_mm"]), ring_label=_es_ring_label(cfg)))
    return [samples[i] for i in rng.permutation(len(samples))]


def _es_ring_label(cfg: dict[str, Any]) -> int:
    """``data.es_ring_label`` (default ``unknown``, what configs without the key were trained with) as a label value."""
    from segment.training_data import ES_RING_LABELS

    name = cfg["data"].get("es_ring_label", "unknown")
    if name not in ES_RING_LABELS:
        raise ValueError(f"data.es_ring_label must be one of {sorted(ES_RING_LABELS)}, got {name!r}")
    return ES_RING_LABELS[name]


def _zoom_samples(cfg: dict[str, Any]) -> list:
    """Heart-centred zooms of every sample already in the other caches (config section ``zoom``)."""
    from segment.training_data import Sample, load_cache, zoomed

    z = cfg["zoom"]
    rng = np.random.default_rng([cfg["seed"], 2])
    out = []
    for folder in cache_dirs(cfg)[:-1]:
        cache = load_cache(folder)
        if not np.isfinite(cache["spacings_mm"]).any():
            raise ValueError(f"{folder}: the cache does not record its grid spacings (built by an older version); "
                             "delete it and run --stage cache again")
        for i in range(len(cache["weights"])):
            base = Sample(np.asarray(cache["image"][i], np.float32), np.asarray(cache["label"][i]), float(cache["weights"][i]),
                          cache["sources"][i], float(cache["spacings_mm"][i]))
            zs = zoomed(base, rng, tuple(z["side_range_mm"]), float(z["jitter_mm"]), float(z["min_margin"]))
            if zs is not None:
                out.append(zs)
    return out


def _image_samples(cfg: dict[str, Any]) -> list:
    from segment.augment import AugmentConfig
    from segment.training_data import phantom_samples, sunnybrook_samples

    d = cfg["data"]
    rng = np.random.default_rng(cfg["seed"])
    aug = AugmentConfig(**cfg["augment"])
    lo, hi = d["phantom_seeds"]
    samples = list(phantom_samples(list(range(lo, hi + 1)), d["phantom_per_seed"], rng, aug, d["phantom_augment_fraction"]))
    samples += list(sunnybrook_samples(Path(d["sunnybrook_root"]), d["sunnybrook_patients"], d["sunnybrook_copies"],
                                       d["sunnybrook_teacher_frames"], rng, aug, d["es_ring_mm"], d["teacher_weight"],
                                       _es_ring_label(cfg)))
    order = rng.permutation(len(samples))  # interleave sources: an interrupted cache stays balanced
    return [samples[i] for i in order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--stage", choices=["cache", "fit", "all"], default="all")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    torch.set_num_threads(int(cfg["train"].get("threads", 1)))
    torch.manual_seed(cfg["seed"])
    if args.stage in ("cache", "all"):
        make_cache(cfg)
    if args.stage in ("fit", "all"):
        from segment.fit import fit

        fit(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
