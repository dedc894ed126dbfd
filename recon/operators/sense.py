"""The multi-coil SENSE model ``A = M F S`` and its adjoint ``A^H = S^H F^H M``."""

from __future__ import annotations

import torch

from recon.operators.base import LinearOperator
from recon.operators.fourier import FourierOp
from recon.operators.sampling import SamplingOp
from recon.operators.sensitivity import SensitivityOp


class SenseOp(LinearOperator):
    """``A``: image ``[..., time, y, x]`` -> sampled multi-coil k-space ``[..., coil, time, ky, kx]``.

    ``A = M F S`` with ``S`` the coil sensitivities, ``F`` the centred orthonormal 2D FFT
    and ``M`` the sampling mask.  Batched over leading axes, differentiable, on the device
    of ``sens`` and ``mask``.

    Args:
        sens: ``[..., coil, time|1, y, x]`` complex coil sensitivities.
        mask: broadcastable to ``[..., time, ky, kx]``; ``None`` means fully sampled.
    """

    def __init__(self, sens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.sensitivity = SensitivityOp(sens)
        self.fourier = FourierOp()
        self.sampling = SamplingOp(mask) if mask is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.fourier(self.sensitivity(x))
        return self.sampling(k) if self.sampling is not None else k

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self.sampling is not None:
            y = self.sampling.adjoint(y)
        return self.sensitivity.adjoint(self.fourier.adjoint(y))
