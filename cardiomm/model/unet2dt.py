"""A 2D+t U-Net on real feature maps ``[batch, channels, time, y, x]``, FiLM-conditioned.

The encoder halves ``y`` and ``x`` at every level and never touches ``time`` (cines have few
frames), so the input's spatial size must be a multiple of ``2 ** depth``; padding to it is
the job of :class:`cardiomm.model.complex_unet.ComplexUNet`.

Every block is ``[conv -> instance norm -> FiLM(c) -> LeakyReLU] x 2`` followed by optional
squeeze-excitation channel attention.  A conv is either factorised "(2+1)D" (a ``1 x k x k``
spatial conv followed by a ``kt x 1 x 1`` temporal conv, Tran et al., CVPR 2018) or a full
``kt x k x k`` 3D conv, zero-padded in time and space; ``temporal_kernel=1`` gives a purely 2D
network (used per frame / per coil map).

Two memory layouts compute the same function (tested): with autograd, the default layout; without
it (inference), channels-last 3D memory and fused normalisation (:func:`inference_layout`), which
made the shipped model ~25 % faster on 2 CPU cores.
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
        fast = inference_layout()
        if fast:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if self.spatial.kernel_size[0] != 1:  # full 3D kernel
            return F.conv3d(x, self.spatial.weight, padding=self.spatial.padding) if fast else self.spatial(x)
        # The spatial conv runs per frame as a 2D conv (frames folded into the batch): the same
        # maths with the same weights, and on CPU oneDNN's 2D kernels are far faster than Conv3d.
        h = _unframes(F.conv2d(_frames(x), self.spatial.weight.squeeze(2), padding=1), x.shape[0])
        if self.temporal is None:
            return h.contiguous(memory_format=torch.channels_last_3d if fast else torch.contiguous_format)
        if fast:
            return _conv_over_time_fast(h, self.temporal.weight)
        # with autograd: the temporal conv as a 2D conv over [time, pixels]
        b, ch, t, ny, nx = h.shape
        pixels = h.reshape(b, ch, t, ny * nx)
        w = self.temporal.weight.squeeze(-1)  # [out, out, kt, 1]
        return F.conv2d(pixels, w, padding=(self.temporal.padding[0], 0)).reshape(b, -1, t, ny, nx)


def _conv_over_time_fast(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A ``kt x 1 x 1`` convolution of channels-last features in the inference layout, by the faster kernel.

    On a CPU run with one thread PyTorch sends such kernels to its slow reference implementation
    instead of oneDNN (it prefers oneDNN for them only with more than one thread), and
    :func:`conv_over_time` is 2-3x faster; otherwise ``F.conv3d``.
    """
    if h.device.type == "cpu" and torch.get_num_threads() == 1:
        return conv_over_time(h, weight, bias)
    return F.conv3d(h, weight, bias, padding=(weight.shape[2] // 2, 0, 0))


def conv_over_time(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A ``kt x 1 x 1`` convolution with zero "same" padding along time, as ``kt`` matrix products.

    Args:
        h: ``[batch, in, time, y, x]`` in channels-last 3D memory (a view ``[batch, time, y, x, in]``).
        weight: ``[out, in, kt, 1, 1]`` (``kt`` odd); bias: ``[out]`` or None.
    Returns:
        ``[batch, out, time, y, x]`` in channels-last 3D memory; equal to ``F.conv3d(h, weight, bias,
        padding=(kt // 2, 0, 0))``.
    """
    t, kt = h.shape[2], weight.shape[2]
    pad = kt // 2
    feats = h.permute(0, 2, 3, 4, 1)  # [batch, time, y, x, in]
    if pad:
        feats = F.pad(feats, (0, 0, 0, 0, 0, 0, pad, pad))
    taps = weight[:, :, :, 0, 0]  # [out, in, kt]
    out = feats[:, :t] @ taps[:, :, 0].T
    for k in range(1, kt):
        out += feats[:, k: k + t] @ taps[:, :, k].T
    if bias is not None:
        out += bias
    return out.permute(0, 4, 1, 2, 3)


def inference_layout() -> bool:
    """Whether the U-Net runs in its inference layout: channels-last 3D memory and fused kernels.

    Without autograd, features are kept in channels-last 3D memory (``[batch, time, y, x,
    channels]``), where oneDNN (CPU) and cuDNN run these convolutions on their fast paths (on 2
    CPU cores a 1x3x3 conv of 20 frames of 128x128x12 features: ~9 ms instead of ~30 ms), and
    instance norm, FiLM and LeakyReLU are one pass (:func:`instance_norm_film_leaky`).  With
    autograd the default layout is kept: PyTorch's CPU backward of those paths is slower.  Both
    layouts compute the same function (tested).
    """
    return not torch.is_grad_enabled()


def _frames(x: torch.Tensor) -> torch.Tensor:
    """``[batch, c, time, y, x] -> [batch * time, c, y, x]`` (a view for channels-last 3D memory)."""
    b, ch, t, ny, nx = x.shape
    return x.transpose(1, 2).reshape(b * t, ch, ny, nx)


def _unframes(h: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`_frames`: ``[batch * time, c, y, x] -> [batch, c, time, y, x]`` (a view)."""
    return h.reshape(batch, -1, *h.shape[1:]).transpose(1, 2)


def channel_statistics(values: torch.Tensor, by_matmul: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over axis 1 of ``values`` ``[batch, n, channels]`` (float32).

    ``by_matmul``: the sums as ``[1, n] x [n, channels]`` products, on CPU ~2x faster than reducing
    over the non-contiguous axis (CPU products are exact float32).  Otherwise ``torch.var_mean``:
    GPUs reduce fast, and a TF32 product would be too coarse for a variance.

    Returns:
        ``(mean, variance)``, each ``[batch, channels]``.
    """
    if not by_matmul:
        variance, mean = torch.var_mean(values, dim=1, unbiased=False)
        return mean, variance
    b, n, _ = values.shape
    weights = torch.full((b, 1, n), 1.0 / n, dtype=values.dtype, device=values.device)
    mean = torch.bmm(weights, values).squeeze(1)
    variance = (torch.bmm(weights, values * values).squeeze(1) - mean.square()).clamp_min(0)
    return mean, variance


def instance_norm_film_leaky(
    h: torch.Tensor, film: FiLM, c: torch.Tensor | None, eps: float = 1e-5, slope: float = 0.2
) -> torch.Tensor:
    """``LeakyReLU(FiLM(InstanceNorm(h), c))`` in one pass over ``h``.

    The same maths as ``F.leaky_relu(film(nn.InstanceNorm3d(C)(h), c), slope)`` (biased variance,
    no affine parameters of its own), but the normalisation and the modulation are folded into one
    per-channel scale and shift, and the statistics (float32 whatever the input dtype) are read from
    the channels-last memory directly.

    Args:
        h: features ``[batch, channels, time, y, x]``.
        film: the :class:`FiLM` of this layer.
        c: context ``[batch, dim]`` or None.

    Returns:
        features like ``h``.
    """
    b, ch = h.shape[:2]
    values = h.float().permute(0, 2, 3, 4, 1).reshape(b, -1, ch)  # a view for channels-last memory
    mean, variance = channel_statistics(values, by_matmul=values.device.type == "cpu")
    scale = torch.rsqrt(variance + eps)  # [batch, channels]
    gamma, beta = film.coefficients(c)
    if gamma is not None:
        scale = scale * (1 + gamma.float())
    shift = -mean * scale if beta is None else beta.float() - mean * scale
    scale, shift = (v.to(h.dtype).reshape(b, ch, 1, 1, 1) for v in (scale, shift))
    out = torch.addcmul(shift, h, scale)
    return F.leaky_relu_(out, slope)  # in place: addcmul's backward does not need its output


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
        self.films = nn.ModuleList(FiLM(context_dim, out_channels) for _ in range(2))
        self.attention = SqueezeExcitation(out_channels) if channel_attention else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        fast = inference_layout()
        for conv, film in zip(self.convs, self.films):
            h = conv(x)
            x = instance_norm_film_leaky(h, film, c) if fast else F.leaky_relu(film(F.instance_norm(h), c), 0.2)
        return self.attention(x)


def _upsample(layer: nn.ConvTranspose3d, x: torch.Tensor) -> torch.Tensor:
    """Apply a ``1 x 2 x 2`` stride-2 transposed conv to ``[batch, c, time, y, x]`` as a 2D one per frame (fast on CPU)."""
    fast = inference_layout()
    if fast:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    up = _unframes(F.conv_transpose2d(_frames(x), layer.weight.squeeze(2), stride=2), x.shape[0])
    return up.contiguous(memory_format=torch.channels_last_3d if fast else torch.contiguous_format)


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of every frame of ``[batch, c, time, y, x]``."""
    if not inference_layout():
        return F.avg_pool3d(x, (1, 2, 2))
    x = x.contiguous(memory_format=torch.channels_last_3d)
    return _unframes(F.avg_pool2d(_frames(x), 2), x.shape[0]).contiguous(memory_format=torch.channels_last_3d)


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
            x = _downsample(x)
        x = self.bottleneck(x, c)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips)):
            x = block(torch.cat([_upsample(upsample, x), skip], dim=1), c)
        if inference_layout():  # x is in channels-last 3D memory
            return _conv_over_time_fast(x, self.head.weight, self.head.bias)
        return self.head(x)
