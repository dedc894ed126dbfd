"""Coil sensitivity operator: expand a coil-combined image to coil images, and back."""

from __future__ import annotations

import torch

from recon.conventions import COIL_DIM, coil_combine, require_complex, shape_str
from recon.operators.base import LinearOperator


class SensitivityOp(LinearOperator):
    """``S``: image ``[..., time, y, x]`` -> coil images ``[..., coil, time, y, x]``.

    ``forward(x) = S_c * x`` for every coil ``c``; ``adjoint(y) = sum_c conj(S_c) * y_c``.

    Args:
        sens: complex coil sensitivities ``[..., coil, time|1, y, x]``.  A time axis of
            length 1 shares one map across frames.  Usually normalised so that
            ``sum_c |S_c|^2 = 1`` inside the object (then ``S^H S = I`` there).
    """

    def __init__(self, sens: torch.Tensor) -> None:
        super().__init__()
        require_complex(sens, "coil sensitivities")
        if sens.ndim < 4:
            raise ValueError(
                f"coil sensitivities must have axes [..., coil, time|1, y, x], got shape {shape_str(sens.shape)}"
            )
        self.register_buffer("sens", sens, persistent=False)

    def _check_image(self, x: torch.Tensor) -> None:
        require_complex(x, "image")
        if x.ndim < 3:
            raise ValueError(f"image must have axes [..., time, y, x], got shape {shape_str(x.shape)}")
        if tuple(x.shape[-2:]) != tuple(self.sens.shape[-2:]):
            raise ValueError(
                f"image shape {shape_str(x.shape)} does not match coil maps {shape_str(self.sens.shape)} "
                "in (y, x)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_image(x)
        try:
            return self.sens * x.unsqueeze(COIL_DIM)
        except RuntimeError as err:
            raise ValueError(
                f"image {shape_str(x.shape)} does not broadcast with coil maps {shape_str(self.sens.shape)} "
                "(expected image [..., time, y, x], maps [..., coil, time|1, y, x])"
            ) from err

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        require_complex(y, "coil images")
        if y.ndim < 4 or y.shape[COIL_DIM] != self.sens.shape[COIL_DIM]:
            raise ValueError(
                f"coil images {shape_str(y.shape)} must have axes [..., coil, time, y, x] with "
                f"{self.sens.shape[COIL_DIM]} coils (coil maps {shape_str(self.sens.shape)})"
            )
        try:
            return coil_combine(y, self.sens)
        except RuntimeError as err:
            raise ValueError(
                f"coil images {shape_str(y.shape)} do not broadcast with coil maps {shape_str(self.sens.shape)}"
            ) from err
