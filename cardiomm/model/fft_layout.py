"""Multi-coil SENSE operators on k-space kept in *FFT order* (no shifts inside the cascades).

The project's convention (:mod:`recon.conventions`) is centred k-space:
``image = ifft2c(k) = fftshift(ifft2(ifftshift(k)))``.  The two shifts are full copies of the
multi-coil k-space and, on CPU, cost as much as the FFT itself.  Since a circular shift by
``s = n // 2`` in image space is a phase ramp in k-space,

::

    ifft2c(k) = ifft2(r * ifftshift(k)),      r[ky, kx] = exp(-2 pi i (ky * sy / ny + kx * sx / nx))

(``ky``, ``kx`` in FFT order; ``r = (-1)^(ky + kx)`` for even sizes), the network converts the
measured k-space and the mask once (:func:`to_fft_order`) and then uses plain orthonormal FFTs
(:func:`expand`, :func:`reduce`); :func:`from_fft_order` converts back.  The maths is exactly the
centred SENSE model :class:`recon.operators.SenseOp`, for any size (odd included).
"""

from __future__ import annotations

import math

import torch

__all__ = ["expand", "from_fft_order", "mask_to_fft_order", "reduce", "to_fft_order"]

_DIMS = (-2, -1)


def _phase_ramp(ny: int, nx: int, device: torch.device) -> torch.Tensor:
    """``r`` ``[ny, nx]`` (complex64) of the module docstring."""
    ky = torch.arange(ny, device=device, dtype=torch.float64) * (ny // 2) / ny
    kx = torch.arange(nx, device=device, dtype=torch.float64) * (nx // 2) / nx
    phase = -2 * math.pi * (ky[:, None] + kx[None, :])
    return torch.polar(torch.ones_like(phase), phase).to(torch.complex64)


def to_fft_order(k: torch.Tensor) -> torch.Tensor:
    """Centred k-space ``[..., ky, kx]`` -> FFT-order k-space ``k~`` with ``ifft2(k~) = ifft2c(k)``."""
    return torch.fft.ifftshift(k, dim=_DIMS).mul_(_phase_ramp(k.shape[-2], k.shape[-1], k.device))


def from_fft_order(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_fft_order`."""
    return torch.fft.fftshift(k * _phase_ramp(k.shape[-2], k.shape[-1], k.device).conj(), dim=_DIMS)


def mask_to_fft_order(mask: torch.Tensor) -> torch.Tensor:
    """A centred sampling mask ``[..., ky, kx]`` in FFT order (a pure shift)."""
    return torch.fft.ifftshift(mask, dim=_DIMS)


def expand(image: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """``F S x``: image ``[batch, time, y, x]`` and maps ``[batch, coil, 1|time, y, x]`` -> FFT-order k-space ``[batch, coil, time, ky, kx]``."""
    return torch.fft.fft2(sens * image.unsqueeze(1), dim=_DIMS, norm="ortho")


def reduce(k: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """``S^H F^H k``: FFT-order k-space ``[batch, coil, time, ky, kx]`` -> coil-combined image ``[batch, time, y, x]``."""
    coil_images = torch.fft.ifft2(k, dim=_DIMS, norm="ortho")
    maps = sens.conj()
    # one multiply-accumulate per coil: on CPU ~30 % faster than ``(maps * coil_images).sum(1)``,
    # which writes and re-reads a full multi-coil temporary
    image = coil_images[:, 0] * maps[:, 0]
    for c in range(1, coil_images.shape[1]):
        image = image.addcmul_(coil_images[:, c], maps[:, c])
    return image
