"""Feature-wise linear modulation (FiLM, Perez et al., AAAI 2018) of feature maps by a context vector."""

from __future__ import annotations

import torch
from torch import nn


class FiLM(nn.Module):
    """``h -> (1 + gamma(c)) * h + beta(c)`` per channel, with ``gamma, beta`` linear in ``c``.

    The linear map starts small (PyTorch's default initialisation scaled by ``init_scale``),
    so a fresh network is close to unconditioned but the context already reaches every block.

    Args:
        context_dim: size of the context vector ``c``.
        channels: channels of the modulated features.
        init_scale: factor on the initial weights of the linear map.
    """

    def __init__(self, context_dim: int, channels: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.channels = int(channels)
        self.linear = nn.Linear(context_dim, 2 * channels)
        with torch.no_grad():
            self.linear.weight.mul_(init_scale)
            self.linear.bias.zero_()

    def coefficients(self, c: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(gamma, beta)``, each ``[batch, channels]``, for context ``c`` ``[batch, context_dim]``; ``(None, None)`` for ``c=None``."""
        if c is None:
            return None, None
        gamma, beta = self.linear(c).chunk(2, dim=1)
        return gamma, beta

    def forward(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Modulate ``h`` ``[batch, channels, ...]`` by ``c`` ``[batch, context_dim]`` (``None``: identity)."""
        gamma, beta = self.coefficients(c)
        if gamma is None or beta is None:
            return h
        shape = (h.shape[0], self.channels) + (1,) * (h.ndim - 2)
        return h * (1 + gamma.to(h.dtype).reshape(shape)) + beta.to(h.dtype).reshape(shape)
