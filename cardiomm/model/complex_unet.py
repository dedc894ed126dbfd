"""A :class:`~cardiomm.model.unet2dt.UNet2dt` on complex 2D+t images of any size.

Wraps the real-valued U-Net with what every complex-image network in the model needs:

1. complex ``[batch, time, y, x]`` -> real/imaginary channels
   (:func:`recon.conventions.complex_to_channels`);
2. per-item normalisation: subtract the complex mean and divide by the standard deviation of
   the item (instance-norm of the input, as fastMRI's ``NormUnet``), undone at the output, so
   the network sees unit-scale input whatever the intensity of the data;
3. zero padding of ``y`` and ``x`` (odd sizes included) to a multiple of ``2 ** depth`` (and at
   least twice that), centred, cropped back at the output.
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
            :class:`~cardiomm.model.unet2dt.UNet2dt` (which sees 2 input and 2 output channels).
    """

    def __init__(
        self,
        channels: int = 32,
        depth: int = 3,
        context_dim: int = 32,
        temporal_kernel: int = 3,
        conv_mode: str = "2+1d",
        channel_attention: bool = True,
    ) -> None:
        super().__init__()
        self.unet = UNet2dt(
            2, 2, channels=channels, depth=depth, context_dim=context_dim, temporal_kernel=temporal_kernel,
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
        m = self.unet.size_multiple
        (py0, py1), (px0, px1) = _padding(ny, m), _padding(nx, m)
        x = F.pad(x, (px0, px1, py0, py1))
        x = self.unet(x, c).float()
        x = x[..., py0 : py0 + ny, px0 : px0 + nx]
        x = x * std + mean
        return channels_to_complex(x, dim=1).squeeze(1)
