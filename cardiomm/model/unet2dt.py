"""A 2D+t U-Net on real feature maps ``[batch, channels, time, y, x]``, FiLM-conditioned.

The encoder halves ``y`` and ``x`` at every level and never touches ``time`` (cines have few
frames), so the input's spatial size must be a multiple of ``2 ** depth``; padding to it is
the job of :class:`cardiomm.model.complex_unet.ComplexUNet`.

Every block is ``[conv -> instance norm -> FiLM(c) -> LeakyReLU] x 2`` followed by optional
squeeze-excitation channel attention.  A conv is either factorised "(2+1)D" (a ``1 x k x k``
spatial conv followed by a ``kt x 1 x 1`` temporal conv, Tran et al., CVPR 2018) or a full
``kt x k x k`` 3D conv, zero-padded in time and space; ``temporal_kernel=1`` gives a purely 2D
network (used per frame / per coil map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cardiomm.model.film import FiLM

CONV_MODES: tuple[str, ...] = ("2+1d", "3d")


class SpatioTemporalConv(nn.Module):
    """Convolution over ``[time, y, x]`` with zero padding ("same" output size on every axis).

    Time is zero-padded rather than wrapped: training items are windows cut from a cine
    (``CineSliceDataset(frames=...)``), whose first and last frames are not neighbours.

    Args:
        in_channels, out_channels: feature channels.
        temporal_kernel: odd kernel length along time (1 = no temporal mixing).
        mode: ``"2+1d"`` (a 1x3x3 spatial conv, then a ``kt``x1x1 temporal conv) or ``"3d"``
            (one ``kt``x3x3 conv).
    """

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int = 3, mode: str = "2+1d") -> None:
        super().__init__()
        if mode not in CONV_MODES:
            raise ValueError(f"unknown conv mode {mode!r}; choose one of {CONV_MODES}")
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be a positive odd integer, got {temporal_kernel}")
        pad_t = temporal_kernel // 2
        self.temporal: nn.Module | None = None
        if mode == "3d":
            self.spatial = nn.Conv3d(
                in_channels, out_channels, (temporal_kernel, 3, 3), padding=(pad_t, 1, 1), bias=False
            )
        else:
            self.spatial = nn.Conv3d(in_channels, out_channels, (1, 3, 3), padding=(0, 1, 1), bias=False)
            if temporal_kernel > 1:
                self.temporal = nn.Conv3d(
                    out_channels, out_channels, (temporal_kernel, 1, 1), padding=(pad_t, 0, 0), bias=False
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, in_channels, time, y, x] -> [batch, out_channels, time, y, x]``."""
        if self.spatial.kernel_size[0] != 1:  # full 3D kernel
            return self.spatial(x)
        # The factorised convs are computed as 2D convolutions (frames folded into the batch for
        # the spatial conv, pixels flattened for the temporal one), the same maths with the same
        # weights: on CPU PyTorch runs such Conv3d calls through a slow reference kernel, while
        # 2D convolutions use oneDNN and are ~5-10x faster.
        b, _, t, ny, nx = x.shape
        frames = x.transpose(1, 2).reshape(b * t, -1, ny, nx)
        h = F.conv2d(frames, self.spatial.weight.squeeze(2), padding=1)
        h = h.reshape(b, t, -1, ny, nx).transpose(1, 2)  # [batch, out, time, y, x]
        if self.temporal is None:
            return h.contiguous()
        pixels = h.reshape(b, h.shape[1], t, ny * nx)
        w = self.temporal.weight.squeeze(-1)  # [out, out, kt, 1]
        return F.conv2d(pixels, w, padding=(self.temporal.padding[0], 0)).reshape(b, -1, t, ny, nx)


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al., CVPR 2018): rescale channels by a gate from their global mean.

    Args:
        channels: feature channels.
        reduction: bottleneck ratio of the gate MLP.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        weights = self.gate(h.mean(dim=(2, 3, 4)))
        return h * weights[:, :, None, None, None]


class ConvBlock(nn.Module):
    """``[conv -> InstanceNorm -> FiLM(c) -> LeakyReLU] x 2 -> squeeze-excitation``.

    Args:
        in_channels, out_channels: feature channels.
        context_dim: size of the context vector for FiLM.
        temporal_kernel, conv_mode: see :class:`SpatioTemporalConv`.
        channel_attention: add a :class:`SqueezeExcitation` gate.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        context_dim: int,
        temporal_kernel: int = 3,
        conv_mode: str = "2+1d",
        channel_attention: bool = True,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                SpatioTemporalConv(in_channels, out_channels, temporal_kernel, conv_mode),
                SpatioTemporalConv(out_channels, out_channels, temporal_kernel, conv_mode),
            ]
        )
        self.norms = nn.ModuleList(nn.InstanceNorm3d(out_channels) for _ in range(2))
        self.films = nn.ModuleList(FiLM(context_dim, out_channels) for _ in range(2))
        self.attention = SqueezeExcitation(out_channels) if channel_attention else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        for conv, norm, film in zip(self.convs, self.norms, self.films):
            x = F.leaky_relu(film(norm(conv(x)), c), 0.2)
        return self.attention(x)


def _upsample(layer: nn.ConvTranspose3d, x: torch.Tensor) -> torch.Tensor:
    """Apply a ``1 x 2 x 2`` stride-2 transposed conv to ``[batch, c, time, y, x]`` as a 2D one per frame (fast on CPU)."""
    b, _, t, ny, nx = x.shape
    frames = x.transpose(1, 2).reshape(b * t, -1, ny, nx)
    up = F.conv_transpose2d(frames, layer.weight.squeeze(2), stride=2)
    return up.reshape(b, t, -1, 2 * ny, 2 * nx).transpose(1, 2)


class UNet2dt(nn.Module):
    """U-Net over ``[batch, channels, time, y, x]`` with spatial-only down/up-sampling.

    Args:
        in_channels: input feature channels (2 for one complex image).
        out_channels: output channels.
        channels: channels of the first level (doubled at every level).
        depth: number of down-sampling steps; ``y`` and ``x`` must be multiples of ``2 ** depth``.
        context_dim: size of the FiLM context vector.
        temporal_kernel: odd temporal kernel length (1 = a 2D U-Net applied per frame).
        conv_mode: ``"2+1d"`` or ``"3d"`` (see :class:`SpatioTemporalConv`).
        channel_attention: squeeze-excitation in every block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int = 32,
        depth: int = 3,
        context_dim: int = 32,
        temporal_kernel: int = 3,
        conv_mode: str = "2+1d",
        channel_attention: bool = True,
    ) -> None:
        super().__init__()
        if channels < 1 or depth < 0:
            raise ValueError(f"UNet2dt needs channels >= 1 and depth >= 0, got channels={channels}, depth={depth}")
        self.depth = int(depth)
        block = dict(context_dim=context_dim, temporal_kernel=temporal_kernel, conv_mode=conv_mode,
                     channel_attention=channel_attention)
        widths = [channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c_in = in_channels
        for w in widths[:-1]:
            self.down.append(ConvBlock(c_in, w, **block))
            c_in = w
        self.bottleneck = ConvBlock(c_in, widths[-1], **block)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for w_low, w in zip(widths[:0:-1], widths[-2::-1]):
            self.upsample.append(nn.ConvTranspose3d(w_low, w, (1, 2, 2), stride=(1, 2, 2), bias=False))
            self.up.append(ConvBlock(2 * w, w, **block))
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    @property
    def size_multiple(self) -> int:
        """``y`` and ``x`` of the input must be multiples of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``x [batch, in_channels, time, y, x]`` and ``c [batch, context_dim]`` -> ``[batch, out, time, y, x]``."""
        m = self.size_multiple
        if x.ndim != 5 or x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(
                f"UNet2dt input must be [batch, channels, time, y, x] with y, x multiples of {m}, "
                f"got shape {list(x.shape)}"
            )
        skips = []
        for block in self.down:
            x = block(x, c)
            skips.append(x)
            x = F.avg_pool3d(x, (1, 2, 2))
        x = self.bottleneck(x, c)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips)):
            x = block(torch.cat([_upsample(upsample, x), skip], dim=1), c)
        return self.head(x)
