"""Prompt-free cardiac decoder on frozen LiteMedSAM features (H-SAM-style two stages).

Stage 1 (prior): a light head turns the 256 x 64 x 64 SAM embedding into coarse 4-class
logits at 64x64 (stride 4).

Stage 2 (refinement): the embedding, projected to ``width`` channels, is

* gated by the prior (``f * (1 + sigmoid(conv(prior)))``) and
* enriched by mask-guided attention: every pixel attends to four class prototypes, each the
  prior-probability-weighted mean of the features (so the attention is steered by the prior
  mask, as in H-SAM, and no position in the image is privileged),

then a hierarchical pixel decoder goes 64 -> 128 (fused with the encoder's stage-1 features,
128 x 128 x 128) -> 256 (fused with a small convolutional stem of the image itself) and
predicts 4-class logits and a boundary logit at full 256x256 resolution.  The upsampled
prior logits are added to the final logits (the second stage learns a correction).

Classes: 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool.

:class:`AdaptedDecoder`: a decoder that reads the embedding of its own copy of the encoder's last
stage with trained low-rank adapters (:mod:`segment.encoder_adapters`) instead of the frozen one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["N_CLASSES", "AdaptedDecoder", "CardiacDecoder", "DecoderEnsemble", "DecoderOutput", "decoder_from_payload"]

N_CLASSES = 4


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(groups, cout),
        nn.GELU(),
    )


class MaskGuidedAttention(nn.Module):
    """Pixels ``[n, c, h, w]`` attend to class prototypes pooled with the prior probabilities."""

    def __init__(self, width: int, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.class_embed = nn.Parameter(torch.zeros(n_classes, width))
        self.q = nn.Conv2d(width, width, 1)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Conv2d(width, width, 1)
        self.scale = width ** -0.5

    def forward(self, feats: torch.Tensor, prior_prob: torch.Tensor) -> torch.Tensor:
        """feats ``[n, c, h, w]``, prior_prob ``[n, k, h, w]`` -> feats + attention ``[n, c, h, w]``."""
        n, c, h, w = feats.shape
        flat = feats.flatten(2)  # [n, c, hw]
        p = prior_prob.flatten(2)  # [n, k, hw]
        protos = torch.einsum("nkp,ncp->nkc", p, flat) / (p.sum(-1, keepdim=True) + 1.0)
        protos = protos + self.class_embed
        q = self.q(feats).flatten(2).transpose(1, 2)  # [n, hw, c]
        attn = torch.softmax(q @ self.k(protos).transpose(1, 2) * self.scale, dim=-1)  # [n, hw, k]
        mixed = (attn @ self.v(protos)).transpose(1, 2).reshape(n, c, h, w)
        return feats + self.out(mixed)


class DecoderOutput(dict):
    """``logits`` ``[n, 4, 256, 256]``, ``edge_logits`` ``[n, 1, 256, 256]``, ``prior_logits`` ``[n, 4, 64, 64]``."""


class CardiacDecoder(nn.Module):
    """Two-stage decoder; see the module docstring.

    Args:
        width: channels at 64x64 (halved at 128x128, quartered at 256x256).
        prior_width: channels of the stage-1 prior head.
    """

    def __init__(self, width: int = 48, prior_width: int = 64) -> None:
        super().__init__()
        self.prior = nn.Sequential(
            nn.Conv2d(256, prior_width, 1), nn.GELU(), _block(prior_width, prior_width),
            _block(prior_width, prior_width, dilation=2), nn.Conv2d(prior_width, N_CLASSES, 1),
        )
        self.proj = nn.Sequential(nn.Conv2d(256, width, 1), nn.GroupNorm(8, width), nn.GELU())
        self.gate = nn.Conv2d(N_CLASSES, width, 3, padding=1)
        self.mga = MaskGuidedAttention(width)
        self.context = nn.Sequential(_block(width + N_CLASSES, width, 1), _block(width, width, 3))
        w2, w4 = width // 2, max(width // 4, 8)
        self.skip128 = nn.Sequential(nn.Conv2d(128, w2, 1), nn.GroupNorm(8, w2), nn.GELU())
        self.up128 = nn.Sequential(_block(width + w2, w2), _block(w2, w2))
        self.stem = nn.Sequential(_block(1, w4), _block(w4, w4))
        self.up256 = nn.Sequential(_block(w2 + w4, w4), _block(w4, w4))
        self.head = nn.Conv2d(w4, N_CLASSES, 1)
        self.edge_head = nn.Conv2d(w4, 1, 1)

    #: whether :meth:`forward` needs the encoder's stage-2 features (it does not: it reads the embedding)
    needs_stage2 = False

    def forward(self, embedding: torch.Tensor, stage1: torch.Tensor, image01: torch.Tensor,
                stage2: torch.Tensor | None = None) -> DecoderOutput:
        """Args: embedding ``[n, 256, 64, 64]``, stage1 ``[n, 128, 128, 128]``, image01 ``[n, 256, 256]``;
        ``stage2`` is not used (the signature is that of :class:`AdaptedDecoder`)."""
        prior = self.prior(embedding)
        prior_prob = prior.softmax(1)
        f = self.proj(embedding)
        f = f * (1 + torch.sigmoid(self.gate(prior)))
        f = self.mga(f, prior_prob)
        f = self.context(torch.cat([f, prior_prob], 1))
        f = F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False)
        f = self.up128(torch.cat([f, self.skip128(stage1)], 1))
        f = F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False)
        f = self.up256(torch.cat([f, self.stem(image01[:, None])], 1))
        logits = self.head(f) + F.interpolate(prior, scale_factor=4, mode="bilinear", align_corners=False)
        return DecoderOutput(logits=logits, edge_logits=self.edge_head(f), prior_logits=prior)


class AdaptedDecoder(nn.Module):
    """A :class:`CardiacDecoder` reading the embedding of its own adapted encoder tail
    (:class:`segment.encoder_adapters.AdaptedEncoderTail`, run on the encoder's stage-2 features)."""

    needs_stage2 = True

    def __init__(self, decoder: CardiacDecoder, tail: nn.Module) -> None:
        super().__init__()
        self.decoder, self.tail = decoder, tail

    def forward(self, embedding: torch.Tensor, stage1: torch.Tensor, image01: torch.Tensor,
                stage2: torch.Tensor | None = None) -> DecoderOutput:
        """As :meth:`CardiacDecoder.forward`, but ``embedding`` is replaced by ``tail(stage2)`` (``[n, 320, 64, 64]``)."""
        if stage2 is None:
            raise ValueError("these decoder weights carry encoder adapters and need the encoder's stage-2 features "
                             "(FrozenImageEncoder(keep_stage2=True))")
        return self.decoder(self.tail(stage2), stage1, image01)


class DecoderEnsemble(nn.Module):
    """Decoders trained alike from different random starts; their class probabilities are averaged.

    All members read the same frozen-encoder features, so an ensemble of ``m`` costs ``m`` decoder
    passes (~0.1 s per image each on one CPU core) but still one encoder pass (~1.5 s).  The
    output has the :class:`CardiacDecoder` form: ``logits`` and ``prior_logits`` are the logarithms
    of the mean probabilities (so their softmax is that mean), ``edge_logits`` the mean.
    """

    def __init__(self, members: list[CardiacDecoder]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a decoder ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def needs_stage2(self) -> bool:
        """Whether a member reads the encoder's stage-2 features (:class:`AdaptedDecoder`)."""
        return any(m.needs_stage2 for m in self.members)

    def forward(self, embedding: torch.Tensor, stage1: torch.Tensor, image01: torch.Tensor,
                stage2: torch.Tensor | None = None) -> DecoderOutput:
        outs = [m(embedding, stage1, image01, stage2) for m in self.members]

        def log_mean_prob(key: str) -> torch.Tensor:
            return torch.stack([o[key].softmax(1) for o in outs]).mean(0).clamp_min(1e-12).log()

        return DecoderOutput(logits=log_mean_prob("logits"), prior_logits=log_mean_prob("prior_logits"),
                             edge_logits=torch.stack([o["edge_logits"] for o in outs]).mean(0))


def decoder_from_payload(payload: dict, source: str = "decoder weights", image_encoder: nn.Module | None = None) -> nn.Module:
    """The decoder a weights file describes: one :class:`CardiacDecoder` (``state_dict``) or a
    :class:`DecoderEnsemble` (``members``: a list of state dicts), of architecture ``model``.

    Weights trained with encoder adapters (``encoder_adapter``: ``rank``, ``alpha`` and one adapter
    state per member, :func:`segment.fit.fit`) give :class:`AdaptedDecoder` members, whose tails are
    built from ``image_encoder`` (LiteMedSAM's TinyViT, the pretrained weights under the adapters).

    Raises:
        ValueError: naming ``source``, when the payload is not cardiac decoder weights, or carries
            adapters and no ``image_encoder`` was given.
    """
    from segment.encoder_adapters import AdaptedEncoderTail

    adapter = payload.get("encoder_adapter") if isinstance(payload, dict) else None
    if adapter and image_encoder is None:
        raise ValueError(f"{source} carry encoder adapters: the LiteMedSAM image encoder is needed to build them")
    try:
        states = payload["members"] if "members" in payload else [payload["state_dict"]]
        if adapter and len(adapter["states"]) != len(states):
            raise ValueError(f"{len(adapter['states'])} adapter states for {len(states)} decoders")
        members: list[nn.Module] = []
        for k, state in enumerate(states):
            member = CardiacDecoder(**payload["model"])
            member.load_state_dict(state)
            if adapter:
                tail = AdaptedEncoderTail(image_encoder, int(adapter["rank"]), float(adapter["alpha"]))
                tail.load_adapter_state(adapter["states"][k])
                member = AdaptedDecoder(member, tail)
            members.append(member)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source} are not cardiac decoder weights: {str(err).splitlines()[0]}") from None
    return members[0] if len(members) == 1 else DecoderEnsemble(members)
