"""Sampling operator: keep the acquired k-space samples, zero the rest."""

from __future__ import annotations

import torch

from recon.conventions import require_complex, shape_str
from recon.operators.base import LinearOperator


class SamplingOp(LinearOperator):
    """``M``: k-space ``[..., coil, time, ky, kx]`` -> the same shape with unsampled entries zeroed.

    The mask is kept on the full grid (zeros where not sampled) rather than gathering the
    samples, so ``M`` is an orthogonal projection: ``M^H = M`` and ``M^H M = M``.

    Args:
        mask: boolean or {0, 1} mask broadcastable to the trailing ``[time, ky, kx]`` axes of
            the data, e.g. ``[time, ky, kx]``, ``[time, ky, 1]`` or ``[batch, 1, time, ky, kx]``.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        mask = torch.as_tensor(mask)
        if torch.is_complex(mask):
            raise ValueError(f"sampling mask must be real (bool or 0/1), got {mask.dtype}")
        if mask.ndim < 2:
            raise ValueError(
                f"sampling mask must have axes [..., time, ky, kx] (or [ky, kx]), got shape {shape_str(mask.shape)}"
            )
        self.register_buffer("mask", mask.to(torch.bool), persistent=False)

    def _apply(self, k: torch.Tensor, what: str) -> torch.Tensor:  # type: ignore[override]
        require_complex(k, what)
        try:
            torch.broadcast_shapes(self.mask.shape, k.shape)
        except RuntimeError as err:
            raise ValueError(
                f"sampling mask {shape_str(self.mask.shape)} does not broadcast to {what} "
                f"{shape_str(k.shape)} (trailing axes [time, ky, kx])"
            ) from err
        if torch.broadcast_shapes(self.mask.shape, k.shape) != k.shape:
            raise ValueError(
                f"sampling mask {shape_str(self.mask.shape)} would enlarge {what} {shape_str(k.shape)}"
            )
        return k * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, "k-space")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(y, "k-space")
