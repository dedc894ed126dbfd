"""Train the prompt-free cardiac decoder on cached LiteMedSAM features.

    python -m segment.train --config configs/segment_decoder.yaml [--stage cache|fit|all]

``cache`` builds the training samples (:mod:`segment.training_data`) and encodes them once
with the frozen encoder; ``fit`` trains :class:`segment.decoder.CardiacDecoder` on the cache
with loss = Dice + CE + 0.5 x edge BCE (:mod:`segment.losses`) and writes the weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml


def load_config(path: str | Path) -> dict[str, Any]:
    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict) or "data" not in cfg or "train" not in cfg:
        raise ValueError(f"{path}: not a segment decoder config (needs 'data' and 'train' sections)")
    return cfg


def make_cache(cfg: dict[str, Any]) -> float:
    from segment.augment import AugmentConfig
    from segment.litemedsam import FrozenImageEncoder, load_litemedsam
    from segment.training_data import build_cache, phantom_samples, sunnybrook_samples

    d = cfg["data"]
    rng = np.random.default_rng(cfg["seed"])
    aug = AugmentConfig(**cfg["augment"])
    lo, hi = d["phantom_seeds"]
    samples = list(phantom_samples(list(range(lo, hi + 1)), d["phantom_per_seed"], rng, aug, d["phantom_augment_fraction"]))
    samples += list(sunnybrook_samples(Path(d["sunnybrook_root"]), d["sunnybrook_patients"], d["sunnybrook_copies"],
                                       d["sunnybrook_teacher_frames"], rng, aug, d["es_ring_mm"], d["teacher_weight"]))
    order = rng.permutation(len(samples))  # interleave sources: an interrupted cache stays balanced
    samples = [samples[i] for i in order]
    print(f"{len(samples)} training images; encoding ...", flush=True)
    enc = FrozenImageEncoder(load_litemedsam().image_encoder)
    return build_cache(samples, Path(cfg["cache_dir"]), enc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--stage", choices=["cache", "fit", "all"], default="all")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    torch.set_num_threads(int(cfg["train"].get("threads", 1)))
    torch.manual_seed(cfg["seed"])
    if args.stage in ("cache", "all"):
        t0 = time.perf_counter()
        sec = make_cache(cfg)
        print(f"cache written in {time.perf_counter() - t0:.0f} s ({sec:.2f} encoder s/image)")
    if args.stage in ("fit", "all"):
        from segment.fit import fit

        fit(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
