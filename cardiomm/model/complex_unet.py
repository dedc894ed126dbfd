"""A :class:`~cardiomm.model.unet2dt.UNet2dt` on complex 2D+t images of any size.

Wraps the real-valued U-Net with what every complex-image network in the model needs:

1. complex ``[batch, time, y, x]`` -> real/imaginary channels
   (:func:`recon.conventions.complex_to_channels`);
2. per-item normalisation: subtract the complex mean and divide by the standard deviation of
   the item (instance-norm of the input, as fastMRI's ``NormUnet``), undone at the output, so
   the network sees unit-scale input whatever the intensity of the data;
3. zero padding of ``y`` and ``x`` (odd sizes included) to a multiple of ``f * 2 ** depth`` (and
   at least twice that), centred, cropped back at the output;
4. optionally (``pixel_unshuffle=f > 1``) space-to-depth: every ``f x f`` block of pixels becomes
   ``2 f^2`` channels of one pixel (``torch.nn.functional.pixel_unshuffle``), so the U-Net runs at
   ``1/f`` of the resolution (``f^2`` times fewer pixels, the cheap CPU configuration) and the output
   is shuffled back to full resolution -- no information is discarded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cardiomm.model.unet2dt import UNet2dt, inference_layout
from recon.conventions import require_complex, shape_str


def _padding(n: int, multiple: int) -> tuple[int, int]:
    """``(before, after)`` padding of a length ``n`` to a multiple of ``multiple`` (at least ``2 * multiple``)."""
    target = max(2 * multiple, -(-n // multiple) * multiple)
    extra = target - n
    return extra // 2, extra - extra // 2


class ComplexUNet(nn.Module):
    """Complex image ``[batch, time, y, x]`` -> complex image of the same shape.

    Args:
        channels, depth, context_dim, temporal_kernel, conv_mode, channel_attention: passed to
            :class:`~cardiomm.model.unet2dt.UNet2dt` (which sees ``2 f^2`` input and output channels).
        pixel_unshuffle: space-to-depth factor ``f`` (1 = the U-Net sees full resolution).
    """

    def __init__(
        self,
        channels: int = 32,
        depth: int = 3,
        context_dim: int = 32,
        temporal_kernel: int = 3,
        conv_mode: str = "2+1d",
        channel_attention: bool = True,
        pixel_unshuffle: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(pixel_unshuffle, bool) or int(pixel_unshuffle) < 1:
            raise ValueError(f"pixel_unshuffle must be a positive integer, got {pixel_unshuffle!r}")
        self.factor = int(pixel_unshuffle)
        width = 2 * self.factor**2
        self.unet = UNet2dt(
            width, width, channels=channels, depth=depth, context_dim=context_dim, temporal_kernel=temporal_kernel,
            conv_mode=conv_mode, channel_attention=channel_attention,
        )

    def forward(self, image: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Apply to ``image`` ``[batch, time, y, x]`` (complex) with context ``c`` ``[batch, dim]``."""
        require_complex(image, "ComplexUNet input")
        if image.ndim != 4:
            raise ValueError(f"ComplexUNet input must be [batch, time, y, x], got shape {shape_str(image.shape)}")
        ny, nx = image.shape[-2:]
        image = image.to(torch.complex64)
        # per item: complex mean, and the standard deviation of real and imaginary parts together
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        centred = image - mean
        n = centred[0].numel()
        std = torch.linalg.vector_norm(centred, dim=(1, 2, 3), keepdim=True) / n**0.5
        std = std.clamp_min(torch.finfo(std.dtype).eps)
        x = centred / std
        m = self.unet.size_multiple * self.factor
        (py0, py1), (px0, px1) = _padding(ny, m), _padding(nx, m)
        if py0 or py1 or px0 or px1:
            x = torch.view_as_complex(F.pad(torch.view_as_real(x), (0, 0, px0, px1, py0, py1)))
        z = self._from_blocks(self.unet(self._to_blocks(x), c).float())
        z = z[..., py0 : py0 + ny, px0 : px0 + nx]
        return torch.addcmul(mean, z, std)

    def _to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Complex ``[batch, time, y, x]`` -> real ``[batch, 2 f^2, time, y/f, x/f]`` in channels-last 3D memory.

        Channel ``k * f^2 + i * f + j`` holds part ``k`` (0 real, 1 imaginary) of pixel ``(i, j)``
        of each ``f x f`` block: the channel order of ``torch.nn.functional.pixel_unshuffle`` on
        ``[real, imaginary]`` channels, built with a single copy.
        """
        f = self.factor
        b, t, ny, nx = x.shape
        parts = torch.view_as_real(x).reshape(b, t, ny // f, f, nx // f, f, 2)
        blocks = parts.permute(0, 1, 2, 4, 6, 3, 5).reshape(b, t, ny // f, nx // f, 2 * f * f)
        blocks = blocks.permute(0, 4, 1, 2, 3)  # channels-last 3D memory, the U-Net's inference layout
        return blocks if inference_layout() else blocks.contiguous()

    def _from_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_to_blocks`: real ``[batch, 2 f^2, time, y/f, x/f]`` -> complex ``[batch, time, y, x]``."""
        f = self.factor
        b, _, t, my, mx = x.shape
        parts = x.permute(0, 2, 3, 4, 1).reshape(b, t, my, mx, 2, f, f)
        pixels = parts.permute(0, 1, 2, 5, 3, 6, 4).reshape(b, t, my * f, mx * f, 2)
        return torch.view_as_complex(pixels.contiguous())
