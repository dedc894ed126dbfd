"""CardioMM: context-conditioned unrolled reconstruction of undersampled multi-coil cine MRI.

::

    c  = ContextEncoder(context)                       acquisition context -> vector
    S  = SensitivityNet(y, mask, acs, c)               coil maps, sum_c |S_c|^2 = 1
    k0 = y
    k_{i+1} = Cascade_i(k_i, y, mask, S, c)            i = 0 .. num_cascades - 1
    x  = S^H F^H k_K                                   coil-combined complex image

Every denoiser is a FiLM-conditioned 2D+t U-Net (:class:`~cardiomm.model.complex_unet.ComplexUNet`);
see :mod:`cardiomm.model.cascade` for the update equations.  Any matrix size (odd included) and
any number of frames work.  With ``gradient_checkpointing`` each cascade's activations are
recomputed in the backward pass instead of stored (memory ~ one cascade instead of all).
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from cardiomm.model.cascade import UnrolledCascade
from cardiomm.model.complex_unet import ComplexUNet
from cardiomm.model.context import ContextBatch, ContextEncoder
from cardiomm.model.sensitivity_net import SensitivityNet
from cardiomm.model.fft_layout import mask_to_fft_order, reduce, to_fft_order
from recon.classical.view_sharing import share_views
from recon.conventions import require_complex, shape_str

#: Version string of this architecture, stored in checkpoints and checked when loading them.
ARCHITECTURE = "cardiomm-unrolled-2dt-v1"


def compress_coils(kspace: torch.Tensor, n_virtual: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PCA coil compression: ``[batch, coil, time, ky, kx] -> [batch, n_virtual, time, ky, kx]``.

    The virtual coils are the ``n_virtual`` principal components of the coil covariance of the
    measured k-space, ``sum_k y_c(k) conj(y_d(k))``; a unitary projection, so sampled entries stay
    sampled (zeros stay zeros) and the SENSE model keeps its form.

    Args:
        kspace: complex ``[batch, coil, time, ky, kx]``, zero where not sampled.
        n_virtual: number of virtual coils.
        mask: optional bool ``[batch, time, ky, kx]`` of the measured samples. The covariance then
            sums over those samples only (the same matrix when the others are zero, and at 8x
            about 8 times less work); None sums over every entry.
    """
    b, coils = kspace.shape[:2]
    flat = kspace.reshape(b, coils, -1)
    if mask is None:
        covariance = flat @ flat.conj().transpose(1, 2)  # [batch, coil, coil], Hermitian
    else:
        measured = [kspace[i][:, mask[i]] for i in range(b)]  # [coil, samples] each
        covariance = torch.stack([m @ m.conj().T for m in measured])
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    basis = vectors[..., -n_virtual:].flip(-1)  # [batch, coil, n_virtual], strongest first
    # An eigenvector is defined up to a phase.  LAPACK returns it with a real first entry but either
    # sign, and which sign depends on rounding (the order of the sums above, the thread count, the
    # device); the network is not invariant to it, so fix it: the first entry is real and >= 0.
    basis = basis * torch.where(basis[:, :1].real < 0, -1.0, 1.0).to(basis.dtype)
    return (basis.conj().transpose(1, 2) @ flat).reshape(b, n_virtual, *kspace.shape[2:])


class CardioMMNet(nn.Module):
    """The CardioMM reconstruction network.

    Args:
        num_cascades: unrolled iterations ``K``.
        channels: first-level channels of every cascade's 2D+t U-Net.
        depth: down-sampling steps of those U-Nets (``y``, ``x`` are padded to a multiple of ``2 ** depth``).
        temporal_kernel: odd temporal kernel length of the denoisers (1 = frame by frame).
        conv_mode: ``"2+1d"`` (spatial then temporal conv) or ``"3d"``.
        channel_attention: squeeze-excitation in every denoiser block.
        sens_channels: first-level channels of the per-coil sensitivity U-Net.
        sens_depth: down-sampling steps of the sensitivity U-Net.
        calib_max_size: largest side (k-space samples) of the calibration square of the maps.
        context_dim: size of the acquisition-context vector ``c``.
        context_dropout: training-time probability of hiding each context field.
        dc_mode: ``"soft"`` (learned gradient step) or ``"cg"`` (proximal step by conjugate gradients).
        cg_iterations: CG steps per cascade when ``dc_mode="cg"``.
        gradient_checkpointing: recompute each cascade in the backward pass (saves memory).
        pixel_unshuffle: space-to-depth factor of the cascade denoisers (2: their U-Nets run at half
            resolution on ``8`` channels per pixel; see :class:`~cardiomm.model.complex_unet.ComplexUNet`).
        virtual_coils: compress k-space with more coils than this to this many virtual coils
            (:func:`compress_coils`, PCA over the measured samples) before everything else; None = never.
        sens_init: ``"calibration"`` (maps learned from calibration coil images) or ``"walsh"``
            (Walsh maps plus a learned, gated correction); see :class:`SensitivityNet`.
        initial_kspace: starting point of the cascades: ``"zero-filled"`` (the measured k-space) or
            ``"view-sharing"`` (every unmeasured sample filled with the mean of that k-space location
            over the frames that measured it, the k-t "view sharing" composite; measured samples are
            kept). With k-t patterns the composite is far closer to the image than zero filling.
        prior_gate: every cascade scales its denoiser output by a learned scalar that starts at 0
            (see :class:`~cardiomm.model.cascade.UnrolledCascade`).
    """

    def __init__(
        self,
        num_cascades: int = 8,
        channels: int = 32,
        depth: int = 3,
        temporal_kernel: int = 3,
        conv_mode: str = "2+1d",
        channel_attention: bool = True,
        sens_channels: int = 8,
        sens_depth: int = 3,
        calib_max_size: int = 48,
        context_dim: int = 32,
        context_dropout: float = 0.1,
        dc_mode: str = "soft",
        cg_iterations: int = 5,
        gradient_checkpointing: bool = False,
        pixel_unshuffle: int = 1,
        virtual_coils: int | None = None,
        initial_kspace: str = "zero-filled",
        sens_init: str = "calibration",
        prior_gate: bool = False,
    ) -> None:
        super().__init__()
        if initial_kspace not in ("zero-filled", "view-sharing"):
            raise ValueError(f"initial_kspace must be 'zero-filled' or 'view-sharing', got {initial_kspace!r}")
        self.initial_kspace = initial_kspace
        if num_cascades < 1:
            raise ValueError(f"num_cascades must be >= 1, got {num_cascades}")
        if virtual_coils is not None and (isinstance(virtual_coils, bool) or int(virtual_coils) < 1):
            raise ValueError(f"virtual_coils must be a positive integer or None, got {virtual_coils!r}")
        self.virtual_coils = None if virtual_coils is None else int(virtual_coils)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.context_encoder = ContextEncoder(context_dim, field_dropout=context_dropout)
        self.sensitivity_net = SensitivityNet(sens_channels, sens_depth, context_dim, calib_max_size, sens_init)
        self.cascades = nn.ModuleList(
            UnrolledCascade(
                ComplexUNet(channels, depth, context_dim, temporal_kernel, conv_mode, channel_attention, pixel_unshuffle),
                dc_mode=dc_mode,
                cg_iterations=cg_iterations,
                prior_gate=prior_gate,
            )
            for _ in range(num_cascades)
        )

    @staticmethod
    def _check_inputs(kspace: torch.Tensor, mask: torch.Tensor, acs: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        require_complex(kspace, "k-space")
        if kspace.ndim != 5:
            raise ValueError(
                f"k-space must be [batch, coil, time, ky, kx], got shape {shape_str(kspace.shape)}"
            )
        b, _, t, ny, nx = kspace.shape

        def as_mask(m: torch.Tensor, name: str) -> torch.Tensor:
            m = torch.as_tensor(m, device=kspace.device)
            if m.ndim == 3:
                m = m.unsqueeze(0)
            try:
                return (m != 0).expand(b, t, ny, nx)
            except RuntimeError as err:
                raise ValueError(
                    f"{name} of shape {shape_str(m.shape)} does not broadcast to [batch, time, ky, kx] = "
                    f"{shape_str((b, t, ny, nx))} of k-space {shape_str(kspace.shape)}"
                ) from err

        return as_mask(mask, "sampling mask"), None if acs is None else as_mask(acs, "acs mask")

    def forward(
        self,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        acs: torch.Tensor | None = None,
        context: ContextBatch | object = None,
        *,
        return_sensitivities: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct.

        Args:
            kspace: ``[batch, coil, time, ky, kx]`` complex64, zero where not sampled.
            mask: bool ``[batch, time, ky, kx]`` (or ``[time, ky, kx]`` / broadcastable).
            acs: bool calibration region like ``mask``, or None (maps from time-averaged k-space).
            context: a :class:`ContextBatch`, or anything :meth:`ContextBatch.from_context`
                accepts (None = all unknown).
            return_sensitivities: also return the coil maps.

        Returns:
            the coil-combined complex image ``[batch, time, y, x]`` (complex64), and with
            ``return_sensitivities`` also the maps ``[batch, coil, 1, y, x]``.
        """
        mask, acs = self._check_inputs(kspace, mask, acs)
        if not isinstance(context, ContextBatch):
            context = ContextBatch.from_context(context, kspace.shape[0])
        if context.batch_size != kspace.shape[0]:
            raise ValueError(f"context has {context.batch_size} items, k-space {shape_str(kspace.shape)}")
        kspace = kspace.to(torch.complex64)
        if self.virtual_coils is not None and kspace.shape[1] > self.virtual_coils:
            with torch.autocast(device_type=kspace.device.type, enabled=False):
                kspace = compress_coils(kspace, self.virtual_coils, mask)
        c = self.context_encoder(context.to(kspace.device))
        sens = self.sensitivity_net(kspace, mask, acs, c)
        # the cascades work on k-space in FFT order (no shifts; see cardiomm.model.fft_layout)
        mask5 = mask_to_fft_order(mask).unsqueeze(1)  # [batch, 1, time, ky, kx] broadcasts over coils
        y = to_fft_order(kspace)
        k = y if self.initial_kspace == "zero-filled" else share_views(y, mask5)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for cascade in self.cascades:
            if checkpointing:
                k = torch.utils.checkpoint.checkpoint(cascade, k, y, mask5, sens, c, use_reentrant=False)
            else:
                k = cascade(k, y, mask5, sens, c)
        with torch.autocast(device_type=kspace.device.type, enabled=False):
            image = reduce(k, sens)
        return (image, sens) if return_sensitivities else image
