"""Centred orthonormal 2D Fourier operator on the last two axes."""

from __future__ import annotations

import torch

from recon.conventions import fft2c, ifft2c
from recon.operators.base import LinearOperator


class FourierOp(LinearOperator):
    """``F``: images ``[..., y, x]`` -> k-space ``[..., ky, kx]`` (centred, ``norm="ortho"``).

    Unitary, so ``F^H = F^{-1}`` and ``F.normal`` is the identity.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fft2c(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return ifft2c(y)
