"""One unrolled iteration ("cascade") of CardioMM: a learned image prior plus data consistency.

With ``A = M F S`` the SENSE model (:class:`recon.operators.SenseOp`), ``y`` the measured
k-space, ``k`` the current multi-coil k-space estimate and ``D`` the denoiser:

soft data consistency (``dc_mode="soft"``, E2E-VarNet style)::

    k <- k - eta * M (k - y) - F S D(S^H F^H k)

    With ``eta = 1`` and ``D = 0`` the sampled entries of ``k`` become exactly ``y``.

proximal data consistency (``dc_mode="cg"``, MoDL style)::

    z = S^H F^H k - D(S^H F^H k)
    x = argmin_x ||A x - y||^2 + lam ||x - z||^2      (``cg_iterations`` CG steps)
    k <- F S x

``eta`` and ``lam`` (kept positive through a softplus) are learned per cascade.  With
``prior_gate=True`` the denoiser's output is scaled by a learned scalar ``g`` that starts at 0
(ReZero): an untrained cascade is then exactly its data-consistency step, so a network
fine-tuned this way starts from its input (e.g. the view-sharing composite) and only keeps the
corrections that training finds useful.  All the
physics runs in float32/complex64 with autocast disabled, on the device of the inputs; only
the denoiser may run in reduced precision.  k-space is in FFT order
(:mod:`cardiomm.model.fft_layout`): ``F`` is the plain orthonormal FFT, no shifts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cardiomm.model.fft_layout import expand, reduce
from recon.classical.solvers import conjugate_gradient

DC_MODES: tuple[str, ...] = ("soft", "cg")


class UnrolledCascade(nn.Module):
    """``k -> k'``: one denoising step and one data-consistency step on multi-coil k-space.

    Args:
        denoiser: module mapping a complex image ``[batch, time, y, x]`` and a context vector
            ``[batch, dim]`` (or None) to a complex image of the same shape.
        dc_mode: ``"soft"`` (gradient step with learned weight ``eta``) or ``"cg"`` (proximal
            step solved by conjugate gradients with learned ``lam``).
        cg_iterations: CG steps of the proximal data consistency.
        dc_weight_init: initial ``eta`` (soft) or ``lam`` (cg).
        prior_gate: scale the denoiser output by a learned scalar initialised to 0.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        dc_mode: str = "soft",
        cg_iterations: int = 5,
        dc_weight_init: float = 1.0,
        prior_gate: bool = False,
    ) -> None:
        super().__init__()
        if dc_mode not in DC_MODES:
            raise ValueError(f"unknown data-consistency mode {dc_mode!r}; choose one of {DC_MODES}")
        if cg_iterations < 1:
            raise ValueError(f"cg_iterations must be >= 1, got {cg_iterations}")
        self.denoiser = denoiser
        self.dc_mode = dc_mode
        self.cg_iterations = int(cg_iterations)
        if dc_mode == "soft":
            self.dc_weight = nn.Parameter(torch.tensor(float(dc_weight_init)))
        else:  # lam = softplus(raw) > 0
            self.dc_weight = nn.Parameter(torch.log(torch.expm1(torch.tensor(float(dc_weight_init)))))
        self.prior_gate = nn.Parameter(torch.zeros(())) if prior_gate else None

    def _denoise(self, image: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        out = self.denoiser(image, c).to(image.dtype)
        return out if self.prior_gate is None else out * self.prior_gate

    def forward(
        self, k: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor, c: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One cascade.

        Args:
            k: current k-space estimate ``[batch, coil, time, ky, kx]`` (complex64, FFT order).
            y: measured k-space, same shape and order, zero where not sampled.
            mask: bool, broadcastable to ``k`` (e.g. ``[batch, 1, time, ky, kx]``), FFT order.
            sens: coil maps ``[batch, coil, 1|time, y, x]``.
            c: context vector ``[batch, dim]`` or None.
        Returns:
            the updated k-space, same shape as ``k``.
        """
        device_type = k.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            image = reduce(k, sens)  # S^H F^H k
        prior = self._denoise(image, c)
        with torch.autocast(device_type=device_type, enabled=False):
            prior = prior.to(image.dtype)
            if self.dc_mode == "soft":
                # k - eta M (k - y): on measured samples k + eta (y - k), elsewhere k (one pass)
                consistent = torch.where(mask, torch.lerp(k, y, self.dc_weight.to(k.dtype)), k)
                return consistent.sub_(expand(prior, sens))
            lam = F.softplus(self.dc_weight)
            z = image - prior
            rhs = reduce(y, sens) + lam * z  # y is zero where not sampled: A^H y = S^H F^H y

            def normal(v: torch.Tensor) -> torch.Tensor:  # (A^H A + lam I) v, A = M F S
                return reduce(torch.where(mask, expand(v, sens), 0), sens) + lam * v

            x = conjugate_gradient(normal, rhs, x0=z, max_iter=self.cg_iterations, tol=0.0)
            return expand(x, sens)
