"""The one place where CardioMM fixes its array conventions.

Every other module imports from here instead of re-deriving them.

Axis order
----------
Multi-coil dynamic (cine) k-space and coil images::

    [..., coil, time, ky, kx]      e.g. [batch, coil, time, ky, kx]

Coil-combined images drop the coil axis::

    [..., time, ky, kx]            (image axes are called y, x; same positions)

Sampling masks are ``[time, ky, kx]`` (or anything that broadcasts to the data's
trailing ``[time, ky, kx]`` axes, e.g. ``[time, ky, 1]`` for Cartesian line masks).
``ky`` is the phase-encoding direction (undersampled), ``kx`` the readout.

Complex data
------------
Data is stored as torch complex tensors (``complex64`` by default, ``complex128``
for tests); never as a trailing real axis of 2.  Networks that need real channels use
:func:`complex_to_channels` / :func:`channels_to_complex`, which put real and imaginary
parts on a channel axis.

FFT
---
The 2D spatial Fourier transform is *centred* (DC in the middle of the array, at index
``n // 2``) and *orthonormal* (``norm="ortho"``), so ``ifft2c(fft2c(x)) == x`` and
``||fft2c(x)|| == ||x||``.  It acts on the last two axes ``[ky, kx]``.  The temporal
transform used by k-t methods (:func:`fft_time`) is also centred and orthonormal and acts
on the ``time`` axis (``TIME_DIM``).
"""

from __future__ import annotations

from typing import Sequence

import torch

#: Names of the axes of multi-coil dynamic k-space, last five axes.
KSPACE_AXES: tuple[str, ...] = ("batch", "coil", "time", "ky", "kx")
#: Names of the axes of coil-combined dynamic images.
IMAGE_AXES: tuple[str, ...] = ("batch", "time", "y", "x")

#: Axis indices counted from the end, valid for any number of leading axes.
COIL_DIM = -4
TIME_DIM = -3
KY_DIM = -2
KX_DIM = -1
SPATIAL_DIMS: tuple[int, int] = (-2, -1)
#: Time axis of a coil-combined image ``[..., time, y, x]``.
IMAGE_TIME_DIM = -3

DEFAULT_COMPLEX = torch.complex64


def require_complex(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a complex torch tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_complex(x):
        raise ValueError(
            f"{name} must be complex (complex64/complex128), got dtype {x.dtype} with shape "
            f"{tuple(x.shape)}; convert real data with torch.complex(x, torch.zeros_like(x)) "
            "or channels_to_complex()"
        )


def require_ndim(x: torch.Tensor, min_ndim: int, name: str, axes: str) -> None:
    """Raise ``ValueError`` unless ``x`` has at least ``min_ndim`` axes ``axes``."""
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} axes {axes}, got shape {tuple(x.shape)}"
        )


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes ``[..., y, x] -> [..., ky, kx]``."""
    require_complex(x, "fft2c input")
    x = torch.fft.ifftshift(x, dim=SPATIAL_DIMS)
    x = torch.fft.fft2(x, dim=SPATIAL_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=SPATIAL_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D inverse FFT over the last two axes ``[..., ky, kx] -> [..., y, x]``."""
    require_complex(k, "ifft2c input")
    k = torch.fft.ifftshift(k, dim=SPATIAL_DIMS)
    k = torch.fft.ifft2(k, dim=SPATIAL_DIMS, norm="ortho")
    return torch.fft.fftshift(k, dim=SPATIAL_DIMS)


def fft_time(x: torch.Tensor, dim: int = IMAGE_TIME_DIM) -> torch.Tensor:
    """Centred orthonormal FFT along the time axis (``x-t -> x-f``)."""
    require_complex(x, "fft_time input")
    x = torch.fft.ifftshift(x, dim=dim)
    x = torch.fft.fft(x, dim=dim, norm="ortho")
    return torch.fft.fftshift(x, dim=dim)


def ifft_time(x: torch.Tensor, dim: int = IMAGE_TIME_DIM) -> torch.Tensor:
    """Centred orthonormal inverse FFT along the time axis (``x-f -> x-t``)."""
    require_complex(x, "ifft_time input")
    x = torch.fft.ifftshift(x, dim=dim)
    x = torch.fft.ifft(x, dim=dim, norm="ortho")
    return torch.fft.fftshift(x, dim=dim)


def rss(x: torch.Tensor, dim: int = COIL_DIM) -> torch.Tensor:
    """Root-sum-of-squares over the coil axis: ``[..., coil, t, y, x] -> [..., t, y, x]`` (real)."""
    return torch.sqrt(torch.sum(x.abs() ** 2, dim=dim))


def coil_combine(coil_images: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """Combine coil images with sensitivities, ``sum_c conj(S_c) x_c``.

    Args:
        coil_images: ``[..., coil, time, y, x]`` complex.
        sens: sensitivities broadcastable to ``coil_images`` (``[..., coil, 1|time, y, x]``).
    Returns:
        ``[..., time, y, x]`` complex.
    """
    return torch.sum(sens.conj() * coil_images, dim=COIL_DIM)


def complex_to_channels(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Complex ``[..., n, ...]`` -> real with real/imag interleaved blocks ``[..., 2n, ...]`` at ``dim``.

    The first ``n`` channels are the real parts, the last ``n`` the imaginary parts; for a
    tensor without a channel axis, call it on ``x.unsqueeze(dim)``.
    """
    require_complex(x, "complex_to_channels input")
    return torch.cat([x.real, x.imag], dim=dim)


def channels_to_complex(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`complex_to_channels`: real ``[..., 2n, ...]`` -> complex ``[..., n, ...]``."""
    if torch.is_complex(x):
        raise ValueError(f"channels_to_complex expects a real tensor, got {x.dtype}")
    if x.shape[dim] % 2:
        raise ValueError(
            f"channels_to_complex needs an even channel count on axis {dim}, got shape {tuple(x.shape)}"
        )
    re, im = torch.chunk(x, 2, dim=dim)
    return torch.complex(re.contiguous(), im.contiguous())


def as_complex_tensor(
    x: object, dtype: torch.dtype = DEFAULT_COMPLEX, device: torch.device | str | None = None
) -> torch.Tensor:
    """Convert a numpy array / tensor (real or complex) to a complex torch tensor."""
    t = torch.as_tensor(x, device=device)
    if not torch.is_complex(t):
        t = t.to(torch.float64 if dtype == torch.complex128 else torch.float32)
        t = torch.complex(t, torch.zeros_like(t))
    return t.to(dtype)


def real_dtype_of(dtype: torch.dtype) -> torch.dtype:
    """``complex64 -> float32``, ``complex128 -> float64``; real dtypes map to themselves."""
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def shape_str(shape: Sequence[int]) -> str:
    """Format a shape for error messages: ``[2, 10, 12, 256, 256]``."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"
