"""Training loop of the cardiac decoder on cached encoder features (CPU).

Each step takes random 128x128 windows of the 256x256 model grid that contain the heart
(window corners on the embedding's 4-pixel stride, so the cached 64x64 embedding and 128x128
stage-1 features are cropped exactly with it).  Windows give translation augmentation for
free and cut the cost of the full-resolution decoder by four; the decoder is fully
convolutional (plus prior-pooled attention), so it runs on the whole 256 grid at inference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cardiomm.atomic import atomic_path
from segment.decoder import CardiacDecoder, DecoderEnsemble, decoder_from_payload
from segment.losses import segmentation_loss
from segment.training_data import load_caches

__all__ = ["fit", "random_windows"]

WINDOW = 128  # pixels of the 256 grid


def random_windows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Top-left corners ``[n, 2]`` (multiples of 4) of 128x128 windows holding the heart of each ``[256, 256]`` label map."""
    corners = []
    for lab in labels:
        ys, xs = np.nonzero((lab >= 1) & (lab <= 3))
        if ys.size:
            lo = np.array([ys.max(), xs.max()]) - WINDOW + 12
            hi = np.array([ys.min(), xs.min()]) - 12
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
            c = rng.integers(np.clip(lo, 0, 256 - WINDOW), np.clip(hi, 0, 256 - WINDOW) + 1)
        else:
            c = rng.integers(0, 256 - WINDOW + 1, size=2)
        corners.append((c // 4) * 4)
    return np.asarray(corners)


def _batch(cache: dict[str, Any], idx: np.ndarray, corners: np.ndarray) -> tuple[torch.Tensor, ...]:
    emb, st1, img, lab = [], [], [], []
    for i, (y, x) in zip(idx, corners):
        emb.append(cache["embedding"][i, :, y // 4: y // 4 + WINDOW // 4, x // 4: x // 4 + WINDOW // 4])
        st1.append(cache["stage1"][i, :, y // 2: y // 2 + WINDOW // 2, x // 2: x // 2 + WINDOW // 2])
        img.append(cache["image"][i, y: y + WINDOW, x: x + WINDOW])
        lab.append(cache["label"][i, y: y + WINDOW, x: x + WINDOW])
    f = lambda a: torch.from_numpy(np.stack(a).astype(np.float32))  # noqa: E731
    return f(emb), f(st1), f(img), torch.from_numpy(np.stack(lab).astype(np.int64))


def fit(cfg: dict[str, Any]) -> Path:
    """Train on every cache of the config (:func:`segment.train.cache_dirs`) and save ``cfg['output']`` (state dict + config + log).

    ``train.init_weights`` (optional): decoder weights to start from (fine-tuning) instead of random ones.
    ``train.members`` (default 1): train that many decoders alike, each from its own random start and
    batch order, and save them as one :class:`~segment.decoder.DecoderEnsemble` (``members`` in the
    file); member 0 is the decoder a single run would give.
    """
    from segment.train import cache_dirs

    tcfg, mcfg = cfg["train"], cfg["model"]
    n_members = int(tcfg.get("members", 1))
    if n_members < 1:
        raise ValueError(f"train.members must be >= 1, got {n_members}")
    cache = load_caches(cache_dirs(cfg))  # into RAM
    init_state = _initial_state(tcfg)  # read once, not once per member
    t0 = time.perf_counter()
    states, logs = [], []
    for member in range(n_members):
        if member:  # member 0 keeps the seeds of a single run (main() seeded torch with cfg["seed"])
            torch.manual_seed(int(np.random.SeedSequence([cfg["seed"], member]).generate_state(1)[0]))
        rng = np.random.default_rng(cfg["seed"] if member == 0 else [cfg["seed"], member])
        model, log = _fit_one(cache, cfg, rng, f"training cardiac decoder {member + 1}/{n_members}", init_state)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        logs.append(log)
    out_path = Path(cfg["output"])
    zoom = cfg.get("zoom")
    payload = {**({"state_dict": states[0]} if n_members == 1 else {"members": states}),
               "model": dict(mcfg), "config": cfg, "log": logs[0] if n_members == 1 else logs,
               "train_seconds": time.perf_counter() - t0, "n_images": len(cache["weights"]),
               # how CardiacSegmenter.load_default runs these weights
               "inference": {"zoom": {"side_range_mm": list(zoom["side_range_mm"]), "margin": float(zoom.get("margin", 1.5))}} if zoom else {}}
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    print(f"saved {out_path} ({out_path.stat().st_size / 1e6:.2f} MB) after {payload['train_seconds']:.0f} s")
    return out_path


def _initial_state(tcfg: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The state dict of ``train.init_weights`` (fine-tuning), or None to start from random weights.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not cardiac decoder weights, or holds an ensemble.
    """
    if not tcfg.get("init_weights"):
        return None
    init_path = Path(tcfg["init_weights"])
    if not init_path.is_file():
        raise FileNotFoundError(f"train.init_weights: {init_path} not found")
    init = decoder_from_payload(torch.load(init_path, map_location="cpu", weights_only=False),
                                f"train.init_weights: {init_path}")
    if isinstance(init, DecoderEnsemble):
        raise ValueError(f"train.init_weights: {init_path} holds an ensemble; start from one decoder")
    return init.state_dict()


def _fit_one(cache: dict[str, Any], cfg: dict[str, Any], rng: np.random.Generator, description: str,
             init_state: dict[str, torch.Tensor] | None = None) -> tuple[CardiacDecoder, list[dict[str, float]]]:
    """One decoder trained on the loaded caches (from ``init_state`` when given); returns it and its per-epoch log."""
    from rich.progress import Progress

    tcfg, mcfg = cfg["train"], cfg["model"]
    n = len(cache["weights"])
    model = CardiacDecoder(**mcfg)
    if init_state is not None:  # fine-tune: start from earlier decoder weights of the same shape
        init_path = Path(tcfg["init_weights"])
        try:
            model.load_state_dict(init_state)
        except RuntimeError as err:
            raise ValueError(f"train.init_weights: {init_path} is not CardiacDecoder weights for model {dict(mcfg)}: "
                             f"{str(err).splitlines()[0]}") from None
        print(f"started from {tcfg['init_weights']}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    bs = int(tcfg["batch_size"])
    steps = int(tcfg["epochs"]) * int(np.ceil(n / bs))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg["lr"], total_steps=steps, pct_start=0.1)
    log: list[dict[str, float]] = []
    t0 = time.perf_counter()
    model.train()
    with Progress() as bar:
        task = bar.add_task(description, total=steps)
        for epoch in range(int(tcfg["epochs"])):
            order = rng.permutation(n)
            sums: dict[str, float] = {}
            for b in range(0, n, bs):
                idx = order[b: b + bs]
                emb, st1, img, lab = _batch(cache, idx, random_windows(cache["label"][idx], rng))
                w = torch.from_numpy(cache["weights"][idx])
                out = model(emb, st1, img)
                parts = segmentation_loss(out["logits"], out["edge_logits"], lab, w, tcfg["edge_weight"])
                lab64 = lab[:, 2::4, 2::4]
                prior = segmentation_loss(out["prior_logits"], None, lab64, w)
                loss = parts["loss"] + tcfg["prior_weight"] * prior["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
                bar.advance(task)
            entry = {"epoch": epoch, "seconds": time.perf_counter() - t0, **{k: v / n for k, v in sums.items()}}
            log.append(entry)
            bar.console.print(json.dumps({k: round(v, 4) for k, v in entry.items()}))
    model.eval()
    return model, log
