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

from cardiomm.model.unet2dt import UNet2dt
from recon.conventions import channels_to_complex, complex_to_channels, require_complex, shape_str


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
        x = complex_to_channels(image.unsqueeze(1), dim=1).float()  # [batch, 2, time, y, x]
        mean = x.mean(dim=(2, 3, 4), keepdim=True)
        centred = x - mean
        std = centred.pow(2).sum(dim=1, keepdim=True).mean(dim=(2, 3, 4), keepdim=True).sqrt()
        std = std.clamp_min(torch.finfo(std.dtype).eps)
        x = centred / std
        m = self.unet.size_multiple * self.factor
        (py0, py1), (px0, px1) = _padding(ny, m), _padding(nx, m)
        x = F.pad(x, (px0, px1, py0, py1))
        x = self._from_blocks(self.unet(self._to_blocks(x), c).float())
        x = x[..., py0 : py0 + ny, px0 : px0 + nx]
        x = x * std + mean
        return channels_to_complex(x, dim=1).squeeze(1)

    def _to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, c, time, y, x] -> [batch, c f^2, time, y/f, x/f]`` (identity for ``f = 1``)."""
        if self.factor == 1:
            return x
        b, ch, t, ny, nx = x.shape
        frames = F.pixel_unshuffle(x.transpose(1, 2).reshape(b * t, ch, ny, nx), self.factor)
        return frames.reshape(b, t, -1, ny // self.factor, nx // self.factor).transpose(1, 2)

    def _from_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_to_blocks`."""
        if self.factor == 1:
            return x
        b, ch, t, ny, nx = x.shape
        frames = F.pixel_shuffle(x.transpose(1, 2).reshape(b * t, ch, ny, nx), self.factor)
        return frames.reshape(b, t, -1, ny * self.factor, nx * self.factor).transpose(1, 2)
