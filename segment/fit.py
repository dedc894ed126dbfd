"""Training loop of the cardiac decoder on cached encoder features (CPU).

Each step takes random 128x128 windows of the 256x256 model grid that contain the heart
(window corners on the embedding's 4-pixel stride, so the cached 64x64 embedding and 128x128
stage-1 features are cropped exactly with it).  Windows give translation augmentation for
free and cut the cost of the full-resolution decoder by four; the decoder is fully
convolutional (plus prior-pooled attention), so it runs on the whole 256 grid at inference.

With encoder adapters (``train.adapter_rank`` > 0, :mod:`segment.encoder_adapters`) the embedding
of a window is recomputed by the decoder's own adapted encoder tail from the cached stage-2
features of the window plus :data:`ADAPTER_MARGIN` embedding pixels of context on each side
(the tail's attention and convolutions see beyond the window, as on the whole grid).
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
from segment.encoder_adapters import DEFAULT_ALPHA, AdaptedEncoderTail
from segment.litemedsam import load_litemedsam
from segment.losses import segmentation_loss
from segment.training_data import load_caches

__all__ = ["fit", "random_windows"]

WINDOW = 128  # pixels of the 256 grid
ADAPTER_MARGIN = 4  # embedding pixels (4 grid pixels each) of context around a window for the adapted tail


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


def _batch(cache: dict[str, Any], idx: np.ndarray, corners: np.ndarray) -> tuple[torch.Tensor | None, ...]:
    """Windows of the cached embedding (None when the cache has none: adapted tails recompute it), stage-1
    features, images and labels."""
    emb, st1, img, lab = [], [], [], []
    for i, (y, x) in zip(idx, corners):
        if "embedding" in cache:
            emb.append(cache["embedding"][i, :, y // 4: y // 4 + WINDOW // 4, x // 4: x // 4 + WINDOW // 4])
        st1.append(cache["stage1"][i, :, y // 2: y // 2 + WINDOW // 2, x // 2: x // 2 + WINDOW // 2])
        img.append(cache["image"][i, y: y + WINDOW, x: x + WINDOW])
        lab.append(cache["label"][i, y: y + WINDOW, x: x + WINDOW])
    f = lambda a: torch.from_numpy(np.stack(a).astype(np.float32))  # noqa: E731
    return f(emb) if emb else None, f(st1), f(img), torch.from_numpy(np.stack(lab).astype(np.int64))


def _stage2_windows(stage2: np.ndarray, idx: np.ndarray, corners: np.ndarray) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Crops ``[b, 320, s, s]`` of cached stage-2 features holding each window plus :data:`ADAPTER_MARGIN`
    on every side (shifted inwards at the grid's edge), and each window's offset in its crop (embedding pixels)."""
    side, grid = WINDOW // 4 + 2 * ADAPTER_MARGIN, stage2.shape[-1]
    crops, offsets = [], []
    for i, (y, x) in zip(idx, corners):
        ty, tx = int(y) // 4, int(x) // 4
        sy, sx = (min(max(t - ADAPTER_MARGIN, 0), grid - side) for t in (ty, tx))
        crops.append(stage2[i, :, sy: sy + side, sx: sx + side])
        offsets.append((ty - sy, tx - sx))
    return torch.from_numpy(np.stack(crops).astype(np.float32)), offsets


def fit(cfg: dict[str, Any]) -> Path:
    """Train on every cache of the config (:func:`segment.train.cache_dirs`) and save ``cfg['output']`` (state dict + config + log).

    ``train.init_weights`` (optional): decoder weights to start from (fine-tuning) instead of random ones.
    ``train.members`` (default 1): train that many decoders alike, each from its own random start and
    batch order, and save them as one :class:`~segment.decoder.DecoderEnsemble` (``members`` in the
    file); member 0 is the decoder a single run would give.
    """
    from segment.train import adapter_rank, cache_dirs

    tcfg, mcfg = cfg["train"], cfg["model"]
    n_members = int(tcfg.get("members", 1))
    if n_members < 1:
        raise ValueError(f"train.members must be >= 1, got {n_members}")
    rank = adapter_rank(cfg)
    cache = load_caches(cache_dirs(cfg), skip=("embedding",) if rank else ())  # into RAM
    if rank and "stage2" not in cache:
        raise ValueError("train.adapter_rank needs the stage-2 features in every cache: run --stage cache")
    image_encoder = load_litemedsam().image_encoder if rank else None
    init_state = _initial_state(tcfg)  # read once, not once per member
    t0 = time.perf_counter()
    states, adapters, logs = [], [], []
    for member in range(n_members):
        if member:  # member 0 keeps the seeds of a single run (main() seeded torch with cfg["seed"])
            torch.manual_seed(int(np.random.SeedSequence([cfg["seed"], member]).generate_state(1)[0]))
        rng = np.random.default_rng(cfg["seed"] if member == 0 else [cfg["seed"], member])
        tail = AdaptedEncoderTail(image_encoder, rank) if rank else None
        model, log = _fit_one(cache, cfg, rng, f"training cardiac decoder {member + 1}/{n_members}", init_state, tail)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if tail is not None:
            adapters.append(tail.adapter_state())
        logs.append(log)
    out_path = Path(cfg["output"])
    zoom = cfg.get("zoom")
    payload = {**({"state_dict": states[0]} if n_members == 1 else {"members": states}),
               "model": dict(mcfg), "config": cfg, "log": logs[0] if n_members == 1 else logs,
               "train_seconds": time.perf_counter() - t0, "n_images": len(cache["weights"]),
               # how CardiacSegmenter.load_default runs these weights
               "inference": {"zoom": {"side_range_mm": list(zoom["side_range_mm"]), "margin": float(zoom.get("margin", 1.5))}} if zoom else {}}
    if rank:  # what decoder_from_payload rebuilds the adapted tails from, with LiteMedSAM's weights under them
        payload["encoder_adapter"] = {"rank": rank, "alpha": DEFAULT_ALPHA, "states": adapters}
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
             init_state: dict[str, torch.Tensor] | None = None,
             tail: AdaptedEncoderTail | None = None) -> tuple[CardiacDecoder, list[dict[str, float]]]:
    """One decoder trained on the loaded caches (from ``init_state`` when given), with the adapters of
    ``tail`` when given (trained in place, learning rate ``train.adapter_lr``, default 5e-4, no weight
    decay); returns the decoder and its per-epoch log."""
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
    groups = [{"params": list(model.parameters()), "lr": tcfg["lr"], "weight_decay": tcfg["weight_decay"]}]
    if tail is not None:
        groups.append({"params": [p for p in tail.parameters() if p.requires_grad],
                       "lr": float(tcfg.get("adapter_lr", 5e-4)), "weight_decay": 0.0})
        tail.train()
    opt = torch.optim.AdamW(groups)
    bs = int(tcfg["batch_size"])
    steps = int(tcfg["epochs"]) * int(np.ceil(n / bs))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.1)
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
                corners = random_windows(cache["label"][idx], rng)
                emb, st1, img, lab = _batch(cache, idx, corners)
                if tail is not None:  # the window's embedding from the adapted tail (none was loaded)
                    s2, offsets = _stage2_windows(cache["stage2"], idx, corners)
                    full, k = tail(s2), WINDOW // 4
                    emb = torch.stack([full[j, :, oy: oy + k, ox: ox + k] for j, (oy, ox) in enumerate(offsets)])
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
    if tail is not None:
        tail.eval()
    return model, log
