"""Learned coil sensitivities from the calibration k-space (refined end to end, as in E2E-VarNet).

1. Calibration k-space ``[batch, coil, ky, kx]``: the average over frames of the ACS samples
   when the item has a per-frame calibration region, otherwise the *time-averaged* k-space
   (:func:`recon.coil_sensitivity.calibration_kspace`).
2. Its largest fully sampled centred square (side ``<= calib_max_size``,
   :func:`recon.coil_sensitivity.fully_sampled_centre`) is kept and tapered by a 2D Hann
   window; everything else is zeroed; the inverse FFT gives low-resolution coil images.
3. A small 2D U-Net (:class:`~cardiomm.model.complex_unet.ComplexUNet` with one frame), applied
   to every coil separately (coils on the batch axis) and FiLM-conditioned on the acquisition
   context, refines the coil images.
4. The result is normalised so that ``sum_c |S_c|^2 = 1`` at every pixel
   (:func:`recon.coil_simulation.normalize_maps`).

With ``init="walsh"`` steps 1-3 are replaced by a classical start and a learned correction:
the Walsh maps of the calibration k-space (:func:`recon.coil_sensitivity.estimate_sensitivities`,
no background masking) plus ``gate * U-Net(Walsh maps)``, where the scalar ``gate`` starts at 0,
so training starts from maps that explain the measured data (the learned maps of the shipped CPU
checkpoint leave 12-15 % of it unexplained by a SENSE fit, Walsh maps 7 %).  Measured so far: put
into weights trained with learned maps, they cost ~3 dB, a short fine-tune did not recover it, and
the CPU configuration trained from scratch with them validated 2.9 dB below the same training with
learned maps (``cardiomm/checkpoints/README.md``).  Kept as an option for larger (GPU) training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cardiomm.model.complex_unet import ComplexUNet
from recon.coil_sensitivity import calibration_kspace, estimate_sensitivities, fully_sampled_centre
from recon.coil_simulation import normalize_maps
from recon.conventions import ifft2c

#: Smallest calibration square used as it is; smaller (or absent) centres fall back to a
#: ``_FALLBACK_SIZE`` window on whatever was sampled.
_MIN_CALIB_SIZE = 4
_FALLBACK_SIZE = 16
#: Background threshold of the Walsh start maps (0: no masking, dark tissue keeps its maps).
_WALSH_THRESHOLD = 0.0

#: How the sensitivity network starts: from calibration coil images, or from Walsh maps.
SENS_INITS: tuple[str, ...] = ("calibration", "walsh")


def _hann_window(size: int, ny: int, nx: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[ny, nx]`` grid with a 2D Hann taper of side ``size`` centred on ``(ny // 2, nx // 2)``, 0 outside."""
    j = torch.arange(size, dtype=dtype, device=device) - size // 2
    taper = 0.5 * (1 + torch.cos(math.pi * j / (size // 2 + 1)))
    window = torch.zeros(ny, nx, dtype=dtype, device=device)
    y0, x0 = ny // 2 - size // 2, nx // 2 - size // 2
    window[y0 : y0 + size, x0 : x0 + size] = taper[:, None] * taper[None, :]
    return window


def low_resolution_coil_images(
    kspace: torch.Tensor, mask: torch.Tensor, acs: torch.Tensor | None, calib_max_size: int = 48
) -> torch.Tensor:
    """Hann-windowed calibration coil images ``[batch, coil, y, x]`` (complex).

    Args:
        kspace: ``[batch, coil, time, ky, kx]`` undersampled k-space.
        mask: bool ``[batch, time, ky, kx]`` sampling mask.
        acs: bool ``[batch, time, ky, kx]`` calibration region, or None; an item whose ACS is
            empty uses the time-averaged k-space.
        calib_max_size: largest side of the calibration square (k-space samples).
    """
    images = []
    ny, nx = kspace.shape[-2:]
    for b in range(kspace.shape[0]):
        has_acs = acs is not None and bool(acs[b].any())
        sampled = mask[b] & acs[b] if has_acs else mask[b]  # type: ignore[index]
        calib = calibration_kspace(kspace[b], mask[b], acs=acs[b] if has_acs else None)  # type: ignore[index]
        size = fully_sampled_centre(sampled.any(dim=0), calib_max_size)
        if size < _MIN_CALIB_SIZE:
            size = min(_FALLBACK_SIZE, ny, nx)
        window = _hann_window(size, ny, nx, calib.real.dtype, calib.device)
        images.append(ifft2c(calib * window))
    return torch.stack(images)


def walsh_start_maps(
    kspace: torch.Tensor, mask: torch.Tensor, acs: torch.Tensor | None, calib_max_size: int = 48
) -> torch.Tensor:
    """Walsh coil maps ``[batch, coil, 1, y, x]`` of every item, the start of ``init="walsh"``.

    The calibration k-space is the frame average of the ACS samples when the item has a
    calibration region of at least 4x4 samples, otherwise the time-averaged k-space (the k-t
    convention at high R).  No background masking (threshold 0): dark tissue keeps its maps.

    Raises:
        ValueError: an item whose k-space has no fully sampled centre of at least 4x4 samples
            even after time averaging (no calibration data at all).
    """
    maps = []
    for b in range(kspace.shape[0]):
        has_acs = acs is not None and bool(acs[b].any())
        tries = ("acs", "time_average") if has_acs else ("time_average",)
        for i, method in enumerate(tries):
            try:
                maps.append(
                    estimate_sensitivities(
                        kspace[b], mask[b], acs=acs[b] if has_acs else None,  # type: ignore[index]
                        method="walsh", calib_size=calib_max_size, calib_method=method, threshold=_WALSH_THRESHOLD,
                    )
                )
                break
            except ValueError as err:
                if i == len(tries) - 1:
                    raise ValueError(f"batch item {b}: cannot calibrate coil maps: {err}") from err
    return torch.stack(maps)


class SensitivityNet(nn.Module):
    """Undersampled k-space -> normalised coil maps ``[batch, coil, 1, y, x]``.

    Args:
        channels: first-level channels of the per-coil 2D U-Net.
        depth: down-sampling steps of that U-Net.
        context_dim: size of the context vector (FiLM).
        calib_max_size: largest side of the centred calibration square (k-space samples).
        init: ``"calibration"`` (the U-Net maps Hann-windowed calibration coil images to maps) or
            ``"walsh"`` (Walsh maps plus a gated U-Net correction, the gate starting at 0).
    """

    def __init__(
        self,
        channels: int = 8,
        depth: int = 3,
        context_dim: int = 32,
        calib_max_size: int = 48,
        init: str = "calibration",
    ) -> None:
        super().__init__()
        if calib_max_size < _MIN_CALIB_SIZE:
            raise ValueError(f"calib_max_size must be >= {_MIN_CALIB_SIZE}, got {calib_max_size}")
        if init not in SENS_INITS:
            raise ValueError(f"unknown sensitivity init {init!r}; choose one of {SENS_INITS}")
        self.calib_max_size = int(calib_max_size)
        self.init = init
        self.unet = ComplexUNet(
            channels=channels, depth=depth, context_dim=context_dim, temporal_kernel=1, channel_attention=False
        )
        if init == "walsh":
            self.gate = nn.Parameter(torch.zeros(()))

    def forward(
        self, kspace: torch.Tensor, mask: torch.Tensor, acs: torch.Tensor | None = None, c: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Maps from ``kspace`` ``[batch, coil, time, ky, kx]``, ``mask``/``acs`` ``[batch, time, ky, kx]``."""
        batch, coils = kspace.shape[:2]
        with torch.autocast(device_type=kspace.device.type, enabled=False):
            if self.init == "walsh":
                with torch.no_grad():
                    start = walsh_start_maps(kspace, mask, acs, self.calib_max_size)
                images = start[:, :, 0]
            else:
                images = low_resolution_coil_images(kspace, mask, acs, self.calib_max_size)
        per_coil = images.reshape(batch * coils, 1, *images.shape[-2:])  # coils as batch, one "frame"
        c_coil = None if c is None else c.repeat_interleave(coils, dim=0)
        refined = self.unet(per_coil, c_coil).reshape(batch, coils, 1, *images.shape[-2:])
        if self.init == "walsh":
            refined = start + self.gate * refined
        return normalize_maps(refined)
