"""Prompt-free cardiac segmentation (segment/): pre/post-processing, losses, metrics, the
shipped decoder on an unseen phantom, LiteMedSAM's box mode, bad input, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from cardiomm.data.phantom import make_phantom
from segment.augment import Rigid2D, apply_rigid
from segment.losses import IGNORE, NOT_LV_BLOOD, edge_targets, segmentation_loss
from segment.metrics import dice, hd95_mm
from segment.postprocess import clean_labels, largest_component
from segment.preprocess import MIN_FOV_MM, MODEL_SIZE, GridGeometry, from_model_grid, normalize_intensity, to_model_grid

# measured on the shipped weights (see segment/weights/README.md), with a margin
PHANTOM_LV_DICE_MIN = 0.85
PHANTOM_MYO_DICE_MIN = 0.6


# ---- pre-processing ----------------------------------------------------------------------
def test_normalize_intensity_clips_to_unit_range():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 50.0, size=(64, 80)).astype(np.float32)
    img[3, 3] = 1e6  # outlier
    out = normalize_intensity(img)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.median(out) > 0.1  # the outlier did not squash the contrast


@pytest.mark.parametrize("bad, match", [
    (np.full((32, 32), 7.0), "constant"),
    (np.zeros((0, 32)), "non-empty"),
    (np.array([[1.0, np.nan]] * 16), "NaN"),
    (np.ones((4, 4, 4)), "2-D"),
    (np.ones((16, 16), np.complex64), "magnitude"),
])
def test_normalize_intensity_rejects_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        normalize_intensity(bad)


@pytest.mark.parametrize("shape", [(192, 192), (180, 240), (300, 256), (256, 256)])
def test_model_grid_round_trip(shape):
    geom = GridGeometry.for_shape(shape)
    yy, xx = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
    smooth = (np.sin(3 * yy) * np.cos(2 * xx)).astype(np.float32)
    grid = to_model_grid(smooth[None], geom)
    assert grid.shape == (1, MODEL_SIZE, MODEL_SIZE)
    back = from_model_grid(grid[:, None], geom)[0, 0].numpy()
    assert back.shape == shape
    assert np.abs(back - smooth)[4:-4, 4:-4].max() < 0.05
    # spacing bookkeeping: the model grid covers the padded square side
    ps = geom.model_spacing_mm((1.25, 1.25))
    assert ps[0] == pytest.approx(1.25 * max(shape) / MODEL_SIZE)


@pytest.mark.parametrize("shape, spacing, side", [
    ((96, 80), (1.5, 1.5), 200),      # 144 mm crop: padded to 300 mm
    ((128, 128), (2.25, 2.25), 134),  # 288 mm: padded a little
    ((256, 256), (1.367, 1.367), 256),  # 350 mm: left as it is
    ((100, 120), (2.0, 3.0), 150),    # the finer axis sets the side
])
def test_model_grid_pads_small_fields_of_view(shape, spacing, side):
    geom = GridGeometry.for_shape(shape, spacing)
    assert geom.side == side
    assert min(geom.model_spacing_mm(spacing)) * MODEL_SIZE >= MIN_FOV_MM - 1e-6
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    grid = to_model_grid(image[None], geom)
    back = from_model_grid(grid[:, None], geom)[0, 0].numpy()
    assert back.shape == shape
    # the image sits in the middle of the padded square, zeros around it
    top, left = geom.pad
    assert top == (side - shape[0]) // 2 and left == (side - shape[1]) // 2
    if side > max(shape) * 1.2:
        assert float(grid[0, :3].abs().max()) == 0.0 and float(grid[0, :, :3].abs().max()) == 0.0


# ---- post-processing -----------------------------------------------------------------------
def _ring_labels() -> np.ndarray:
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 48, xx - 48)
    lab = np.zeros((96, 96), np.uint8)
    lab[r < 20] = 2
    lab[r < 13] = 1
    lab[(np.abs(yy - 48) < 10) & (xx > 70) & (xx < 90)] = 3
    return lab


def test_clean_labels_keeps_anatomy_and_removes_islands():
    lab = _ring_labels()
    noisy = lab.copy()
    noisy[46:50, 46:50] = 0  # hole in the blood pool
    noisy[5:8, 5:8] = 1  # LV island far away
    noisy[85:88, 5:8] = 3  # RV island
    noisy[2:4, 60:62] = 2  # myocardium island
    out = clean_labels(noisy)
    assert np.array_equal(out, lab)
    # leading axes are kept
    stack = clean_labels(np.stack([noisy, noisy])[None])
    assert stack.shape == (1, 2, 96, 96) and np.array_equal(stack[0, 1], lab)


def test_largest_component_of_empty_mask_is_empty():
    assert not largest_component(np.zeros((8, 8), bool)).any()


# ---- losses and metrics ---------------------------------------------------------------------
def test_edge_targets_are_the_label_outline():
    lab = torch.zeros(1, 16, 16, dtype=torch.long)
    lab[0, 4:12, 4:12] = 1
    edge, valid = edge_targets(lab)
    assert edge[0, 8, 8] == 0 and edge[0, 0, 0] == 0
    assert edge[0, 4, 8] == 1 and edge[0, 3, 8] == 1 and edge[0, 5, 8] == 0
    assert bool(valid.all())
    lab[0, 0, 0] = IGNORE
    _, valid = edge_targets(lab)
    assert not valid[0, 1, 1] and valid[0, 8, 8]


def test_loss_ignores_unknown_pixels_and_prefers_the_truth():
    lab = torch.from_numpy(_ring_labels()).long()[None]
    good = torch.nn.functional.one_hot(lab, 4).permute(0, 3, 1, 2).float() * 10
    bad = torch.roll(good, 8, dims=-1)
    edge = (edge_targets(lab)[0][:, None] * 20 - 10)
    lg = segmentation_loss(good, edge, lab)["loss"]
    lb = segmentation_loss(bad, edge, lab)["loss"]
    assert lg < 0.1 < lb
    unknown = lab.clone()
    unknown[:, :, 60:] = IGNORE  # the wrong part of `bad` is now unknown ... partly
    assert segmentation_loss(bad, edge, unknown)["ce"] < segmentation_loss(bad, edge, lab)["ce"]


def test_not_lv_blood_pixels_penalise_only_the_lv_blood_pool():
    """254 = known not LV blood (the myocardium of an end-systolic frame nobody contoured): a blood pool
    grown into it costs loss, which of the other classes it is does not."""
    lab = torch.from_numpy(_ring_labels()).long()[None]
    partial = lab.clone()
    partial[lab == 2] = NOT_LV_BLOOD  # no epicardium drawn
    truth = torch.nn.functional.one_hot(lab, 4).permute(0, 3, 1, 2).float() * 10
    as_bg = truth.clone()
    as_bg[:, :, lab[0] == 2] = torch.tensor([10.0, 0, 0, 0])[None, :, None]
    grown = truth.clone()
    grown[:, :, lab[0] == 2] = torch.tensor([0, 10.0, 0, 0])[None, :, None]
    loss = {k: segmentation_loss(v, None, partial) for k, v in (("truth", truth), ("bg", as_bg), ("grown", grown))}
    assert loss["truth"]["ce"] == pytest.approx(float(loss["bg"]["ce"]), abs=1e-6)
    assert float(loss["grown"]["ce"]) > 0.3 > 0.01 > float(loss["truth"]["ce"])  # ~10 nats on 7 % of the pixels
    assert float(loss["grown"]["dice"]) > float(loss["truth"]["dice"]) + 0.1
    # as unknown (255) the same ring would not tell them apart
    unknown = lab.masked_fill(lab == 2, IGNORE)
    assert float(segmentation_loss(grown, None, unknown)["ce"]) < 0.01
    # edges: the blood pool's outline stays a known edge, the ring's outer rim is not known
    edge, valid = edge_targets(partial)
    assert valid[0, 48, 48 - 12] and edge[0, 48, 48 - 12] == 1 and valid[0, 48, 48 - 13] and edge[0, 48, 48 - 13] == 1
    assert not valid[0, 48, 48 - 19] and not valid[0, 48, 48 - 20]
    assert valid[0, 48, 48] and edge[0, 48, 48] == 0 and valid[0, 5, 5]


def test_dice_and_hd95():
    a = np.zeros((40, 40), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 * 70 / 200)
    assert hd95_mm(a, b, (1.0, 2.0)) == pytest.approx(6.0)  # 3 columns x 2 mm
    assert np.isnan(hd95_mm(a, np.zeros_like(a), (1.0, 1.0)))


def test_rigid_shift_moves_the_centroid():
    lab = np.zeros((64, 64), np.uint8)
    lab[20:30, 30:40] = 1
    moved = apply_rigid(lab, Rigid2D(shift_px=(5.0, -7.0)), order=0)
    assert np.allclose(np.argwhere(moved).mean(0), np.argwhere(lab).mean(0) + [5, -7])
    rot = apply_rigid(lab, Rigid2D(rotation_deg=90.0), order=0)
    assert rot.sum() == lab.sum()


# ---- training data ---------------------------------------------------------------------------
def test_reconstruction_samples_label_reconstructed_ed_and_es_frames():
    from segment.augment import AugmentConfig
    from segment.training_data import IGNORE, reconstruction_samples

    rng = np.random.default_rng(0)
    samples = list(reconstruction_samples([3], ["zero-filled"], ["kt_gaussian"], (8.0, 8.0), rng, AugmentConfig(),
                                          matrices=(64,), fov_range_mm=(300.0, 300.0), n_frames=6, n_coils=4,
                                          augment_fraction=0.0))
    assert len(samples) == 2  # ED and ES of one slice, one method
    ph = make_phantom(3, n_frames=6, matrix=(64, 64), pixel_spacing_mm=(300 / 64, 300 / 64))
    for sample, frame in zip(samples, (0, int(ph.design.es_frame))):
        assert sample.source.startswith("recon:zero-filled:kt_gaussian:R8.") and sample.source.endswith(f":{frame}")
        assert sample.image01.shape == sample.label.shape == (MODEL_SIZE, MODEL_SIZE)
        assert 0.0 <= sample.image01.min() and sample.image01.max() <= 1.0
        assert set(np.unique(sample.label)) <= {0, 1, 2, 3, IGNORE} and (sample.label == 1).any()
    # ES has the smaller blood pool (the labels are the phantom's own, frame by frame)
    assert (samples[1].label == 1).sum() < (samples[0].label == 1).sum()


def test_sunnybrook_reconstruction_samples_carry_the_manual_labels():
    from cardiomm.data.contours import sunnybrook_labels
    from cardiomm.data.dicom_cine import read_dicom_cine
    from segment.augment import AugmentConfig
    from segment.training_data import NOT_LV_BLOOD, sunnybrook_reconstruction_samples

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook"
    rng = np.random.default_rng(0)
    samples = list(sunnybrook_reconstruction_samples(root, ["SCD0000201"], ["zero-filled", "view-sharing"],
                                                     ["kt_gaussian"], (8.0, 8.0), rng, AugmentConfig(), n_coils=4,
                                                     augment_fraction=0.0, max_slices=1))
    cine = read_dicom_cine(root / "dicoms" / "SCD0000201")
    manual = sunnybrook_labels(root / "contourfiles", cine)
    s = min(s for s, _ in manual)
    frames = sorted(f for ss, f in manual if ss == s)
    assert [x.source.rsplit(":", 1)[1] for x in samples] == [str(f) for f in frames] * 2
    assert samples[0].source.startswith("recon_sunnybrook:zero-filled:kt_gaussian:R8.")
    assert samples[len(frames)].source.startswith("recon_sunnybrook:view-sharing:kt_gaussian:R8.")
    for x, f in zip(samples, frames * 2):
        assert x.image01.shape == x.label.shape == (MODEL_SIZE, MODEL_SIZE)
        assert set(np.unique(x.label)) <= {0, 1, 2, 3, NOT_LV_BLOOD}
        # a frame without epicardium has a not-LV-blood ring hugging its blood pool
        if not (x.label == 2).any():
            rim = ndimage.binary_dilation(x.label == 1) & (x.label != 1)
            assert (x.label[rim] == NOT_LV_BLOOD).mean() > 0.9
        # the manual blood pool, on the grid, keeps its area (the grid spacing is the source's)
        area = (manual[(s, f)] == 1).sum() * float(cine.pixel_spacing_mm[0]) ** 2
        assert (x.label == 1).sum() * x.spacing_mm ** 2 == pytest.approx(area, rel=0.05)
        # SCD0000201 is stored with phase encoding along x: the reconstruction is transposed back, so
        # the labels sit on the anatomy (bright blood inside the blood-pool label, darker myocardium)
        if (x.label == 2).any():
            assert x.image01[x.label == 1].mean() > 1.5 * x.image01[x.label == 2].mean()
    # the two methods give different images of the same frames
    assert not np.array_equal(samples[0].image01, samples[len(frames)].image01)
    with pytest.raises(ValueError, match="rounds"):
        next(sunnybrook_reconstruction_samples(root, ["SCD0000201"], ["zero-filled"], ["kt_gaussian"], (8.0, 8.0), rng,
                                               AugmentConfig(), rounds=0))


def test_caches_are_kept_only_when_complete_and_built_from_the_same_config(tmp_path: Path):
    from segment.train import fingerprint
    from segment.training_data import Sample, build_cache, cache_is_complete, load_caches

    class FakeEncoder(torch.nn.Module):
        def forward(self, x):
            from segment.litemedsam import EncoderFeatures

            n = x.shape[0]
            return EncoderFeatures(torch.full((n, 256, 64, 64), float(x.mean())), torch.zeros(n, 128, 128, 128))

    def samples(k: int, tag: str) -> list[Sample]:
        return [Sample(np.full((256, 256), i / 10, np.float32), np.zeros((256, 256), np.uint8), 1.0, f"{tag}:{i}")
                for i in range(k)]

    fp = fingerprint(0, {"a": 1})
    assert fp == fingerprint(0, {"a": 1}) != fingerprint(0, {"a": 2})
    assert not cache_is_complete(tmp_path / "a", fp)
    build_cache(samples(3, "x"), tmp_path / "a", FakeEncoder(), progress=False, fingerprint=fp)
    build_cache(samples(2, "y"), tmp_path / "b", FakeEncoder(), progress=False, fingerprint="other")
    assert cache_is_complete(tmp_path / "a", fp) and not cache_is_complete(tmp_path / "b", fp)
    both = load_caches([tmp_path / "a", tmp_path / "b"])
    assert both["embedding"].shape[0] == both["label"].shape[0] == len(both["weights"]) == 5
    assert both["sources"] == ["x:0", "x:1", "x:2", "y:0", "y:1"]


# ---- heart-centred window (second pass) -------------------------------------------------------
@pytest.mark.parametrize("centre, side", [((150, 140), 256), ((10, 90), 64), ((60, 60), 40)])
def test_window_geometry_crops_pads_and_puts_back(centre, side):
    shape = (300, 300) if side == 256 else (100, 100)
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    geom = GridGeometry.window(shape, centre, side)
    assert geom.side == side
    top, left = -geom.pad[0], -geom.pad[1]  # window corner in image pixels
    assert abs(top + (side - 1) / 2 - centre[0]) <= 0.5 and abs(left + (side - 1) / 2 - centre[1]) <= 0.5
    grid = to_model_grid(image[None], geom)
    assert grid.shape == (1, MODEL_SIZE, MODEL_SIZE)
    inside = np.zeros(shape, bool)
    inside[max(top, 0): top + side, max(left, 0): left + side] = True
    if side == MODEL_SIZE:  # no resize: the grid is the crop, and it goes back exactly
        assert np.array_equal(grid[0].numpy(), image[top: top + side, left: left + side])
    assert not geom.covers_image and GridGeometry.for_shape(shape).covers_image
    back = from_model_grid(torch.ones(1, 1, MODEL_SIZE, MODEL_SIZE), geom)[0, 0].numpy()
    assert back.shape == shape
    assert np.all(back[~inside] == 0) and np.allclose(back[inside][back[inside] > 0], 1, atol=1e-5)
    assert (back > 0.5).sum() == pytest.approx(inside.sum(), rel=0.05)


def test_zoomed_sample_centres_and_enlarges_the_heart():
    from segment.training_data import Sample, zoomed

    lab = np.zeros((256, 256), np.uint8)
    lab[60:100, 150:190] = 1  # a 40-pixel "heart" off centre
    img = (lab > 0).astype(np.float32) * 0.8 + 0.1
    base = Sample(img, lab, 0.5, "x", spacing_mm=1.4)
    z = zoomed(base, np.random.default_rng(0), side_range_mm=(140.0, 140.0), jitter_mm=0.0)
    assert z is not None and z.weight == 0.5 and z.source == "x:zoom"
    side_px = 140.0 / 1.4
    assert z.spacing_mm == pytest.approx(1.4 * round(side_px) / MODEL_SIZE)
    ys, xs = np.nonzero(z.label == 1)
    assert abs(ys.mean() - 127.5) < 2 and abs(xs.mean() - 127.5) < 2  # centred
    assert (z.label == 1).sum() == pytest.approx(40 * 40 * (MODEL_SIZE / round(side_px)) ** 2, rel=0.06)
    assert set(np.unique(z.label)) <= {0, 1}
    # the window is never tighter than min_margin x the heart
    tight = zoomed(base, np.random.default_rng(0), side_range_mm=(10.0, 10.0), jitter_mm=0.0, min_margin=2.0)
    assert tight.spacing_mm == pytest.approx(1.4 * 80 / MODEL_SIZE, rel=0.02)
    assert zoomed(Sample(img, np.zeros_like(lab), 1.0, "empty", 1.4), np.random.default_rng(0)) is None
    assert zoomed(Sample(img, lab, 1.0, "no spacing"), np.random.default_rng(0)) is None


def test_heart_windows_follow_the_heart_and_share_one_side():
    from segment.segmenter import CardiacSegmenter, ZoomSettings

    seg = CardiacSegmenter.__new__(CardiacSegmenter)  # only the window logic: no networks needed
    seg.zoom, seg.min_area_mm2 = ZoomSettings(side_range_mm=(50.0, 200.0), margin=1.5), 0.0
    probs = torch.zeros(3, 4, 200, 220)
    probs[:, 0] = 1
    probs[0, :, 50:90, 60:100] = torch.tensor([0.0, 1, 0, 0])[:, None, None]    # 40 px heart
    probs[2, :, 100:160, 120:180] = torch.tensor([0.0, 1, 0, 0])[:, None, None]  # 60 px heart
    windows = seg.heart_windows(probs, (1.0, 1.0))
    assert [w.side for w in windows] == [round(1.5 * 60)] * 3  # the largest heart sets the side
    centre = lambda w: (-w.pad[0] + (w.side - 1) / 2, -w.pad[1] + (w.side - 1) / 2)  # noqa: E731
    assert centre(windows[0]) == pytest.approx((69.5, 79.5), abs=0.6)
    assert centre(windows[2]) == pytest.approx((129.5, 149.5), abs=0.6)
    assert centre(windows[1]) == pytest.approx((99.5, 114.5), abs=0.6)  # no heart: median of the others
    # clipped to the side range, in pixels of the given spacing
    assert seg.heart_windows(probs, (0.5, 0.5))[0].side == 100  # 1.5 x 30 mm = 45 mm -> 50 mm = 100 px
    assert seg.heart_windows(probs, (3.0, 3.0))[0].side == round(200 / 3)  # 270 mm -> 200 mm
    probs[:, 0], probs[:, 1:] = 1, 0
    assert seg.heart_windows(probs, (1.0, 1.0)) is None  # no heart anywhere
    seg.zoom = None
    assert seg.heart_windows(probs, (1.0, 1.0)) is None
    with pytest.raises(ValueError, match="margin"):
        ZoomSettings(margin=0.5)


def test_es_ring_label_comes_from_the_config():
    from segment.train import _es_ring_label

    assert _es_ring_label({"data": {}}) == IGNORE  # configs from before the key: as they were trained
    assert _es_ring_label({"data": {"es_ring_label": "not_lv_blood"}}) == NOT_LV_BLOOD
    assert _es_ring_label({"data": {"es_ring_label": "unknown"}}) == IGNORE
    with pytest.raises(ValueError, match="es_ring_label"):
        _es_ring_label({"data": {"es_ring_label": "myocardium"}})


class _RandomEncoder(torch.nn.Module):
    """Stands in for the frozen encoder in cache and fit tests: random features, stage 2 included."""

    keep_stage2 = True

    def forward(self, x: torch.Tensor):
        from segment.litemedsam import EncoderFeatures

        n = x.shape[0]
        return EncoderFeatures(torch.randn(n, 256, 64, 64), torch.randn(n, 128, 128, 128), torch.randn(n, 320, 64, 64))


def _square_heart_samples(n: int) -> list:
    """``n`` training samples of a square LV blood pool inside a square myocardium (grid spacing 1.3 mm)."""
    from segment.training_data import Sample

    lab = np.zeros((256, 256), np.uint8)
    lab[95:145, 105:155] = 2
    lab[100:140, 110:150] = 1
    img = np.where(lab == 1, 0.9, np.where(lab == 2, 0.3, 0.5)).astype(np.float32)
    return [Sample(img, lab, 1.0, f"s:{i}", 1.3) for i in range(n)]


def test_zoom_cache_and_fine_tuning_from_earlier_weights(tmp_path: Path):
    from segment.fit import fit
    from segment.train import _zoom_samples, cache_dirs
    from segment.training_data import Sample, build_cache

    build_cache(_square_heart_samples(2), tmp_path / "a", _RandomEncoder(), progress=False, fingerprint="a")
    train = {"epochs": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 1e-4, "edge_weight": 0.5, "prior_weight": 0.4}
    cfg = {"seed": 0, "cache_dir": str(tmp_path / "a"), "output": str(tmp_path / "w.pt"),
           "zoom": {"cache_dir": str(tmp_path / "z"), "side_range_mm": [140, 200], "jitter_mm": 10.0, "min_margin": 1.15, "margin": 1.4},
           "model": {"width": 16, "prior_width": 16}, "train": train}
    zs = _zoom_samples(cfg)
    assert [z.source for z in zs] == ["s:0:zoom", "s:1:zoom"]
    assert all(z.spacing_mm < 1.3 * 200 / 256 + 1e-6 for z in zs)  # zoomed in
    build_cache(zs, tmp_path / "z", _RandomEncoder(), progress=False, fingerprint="z")
    build_cache([Sample(s.image01, s.label, 1.0, "old") for s in _square_heart_samples(1)], tmp_path / "old", _RandomEncoder(),
                progress=False, fingerprint="o")
    with pytest.raises(ValueError, match="grid spacings"):  # a cache from before spacings were recorded
        _zoom_samples({**cfg, "cache_dir": str(tmp_path / "old")})
    assert cache_dirs(cfg) == [tmp_path / "a", tmp_path / "z"]
    first = torch.load(fit(cfg), weights_only=False)
    assert first["n_images"] == 4
    assert first["inference"] == {"zoom": {"side_range_mm": [140, 200], "margin": 1.4}}  # how the segmenter runs them
    # fine-tuning starts from the given weights: with a zero learning rate they come back unchanged
    cfg2 = {**cfg, "output": str(tmp_path / "w2.pt"), "train": {**train, "lr": 0.0, "init_weights": str(tmp_path / "w.pt")}}
    second = torch.load(fit(cfg2), weights_only=False)
    for k, v in first["state_dict"].items():
        assert torch.equal(second["state_dict"][k], v), k
    # an ensemble of 2: member 0 is the single run's decoder, member 1 another start
    cfg3 = {**cfg, "output": str(tmp_path / "w3.pt"), "train": {**train, "members": 2}}
    torch.manual_seed(cfg["seed"])
    third = torch.load(fit(cfg3), weights_only=False)
    assert "state_dict" not in third and len(third["members"]) == 2 and len(third["log"]) == 2
    key = next(iter(first["state_dict"]))
    assert not torch.equal(third["members"][0][key], third["members"][1][key])
    with pytest.raises(ValueError, match="ensemble"):  # fine-tuning starts from one decoder
        fit({**cfg, "train": {**train, "init_weights": str(tmp_path / "w3.pt")}})
    with pytest.raises(ValueError, match="members"):
        fit({**cfg, "train": {**train, "members": 0}})


def test_decoder_ensemble_averages_member_probabilities():
    from segment.decoder import CardiacDecoder, DecoderEnsemble, decoder_from_payload

    torch.manual_seed(0)
    members = [CardiacDecoder(width=16, prior_width=16).eval() for _ in range(3)]
    emb, st1, img = torch.randn(2, 256, 64, 64), torch.randn(2, 128, 128, 128), torch.rand(2, 256, 256)
    with torch.no_grad():
        outs = [m(emb, st1, img) for m in members]
        ens = DecoderEnsemble(members)(emb, st1, img)
    for key in ("logits", "prior_logits"):
        expected = torch.stack([o[key].softmax(1) for o in outs]).mean(0)
        assert torch.allclose(ens[key].softmax(1), expected, atol=1e-6)
    payload = {"model": {"width": 16, "prior_width": 16}, "members": [m.state_dict() for m in members]}
    loaded = decoder_from_payload(payload)
    assert isinstance(loaded, DecoderEnsemble) and len(loaded.members) == 3
    single = decoder_from_payload({"model": payload["model"], "state_dict": members[0].state_dict()})
    assert isinstance(single, CardiacDecoder)
    with pytest.raises(ValueError, match="my.pt are not cardiac decoder weights"):
        decoder_from_payload({"model": {"width": 24, "prior_width": 16}, "state_dict": members[0].state_dict()}, "my.pt")
    with pytest.raises(ValueError, match="at least one"):
        DecoderEnsemble([])


# ---- encoder adapters (LoRA on LiteMedSAM's last stage) ------------------------------------------
def test_untrained_adapters_give_the_pretrained_embedding_and_train_only_themselves():
    from segment.encoder_adapters import AdaptedEncoderTail
    from segment.litemedsam import FrozenImageEncoder, load_litemedsam

    torch.manual_seed(0)
    image_encoder = load_litemedsam().image_encoder
    tail = AdaptedEncoderTail(image_encoder, rank=4)
    feats = FrozenImageEncoder(image_encoder, keep_stage2=True)(torch.rand(1, 256, 256))
    assert feats.stage2.shape == (1, 320, 64, 64)
    assert FrozenImageEncoder(image_encoder)(torch.rand(1, 256, 256)).stage2 is None  # not kept unless asked
    with torch.no_grad():  # B starts at zero: the adapted tail is the pretrained one
        torch.testing.assert_close(tail(feats.stage2), feats.embedding, atol=1e-4, rtol=1e-4)
    crop = feats.stage2[:, :, 10:50, 20:60].clone()  # a training window with its margin
    out = tail.train()(crop)
    assert out.shape == (1, 256, 40, 40) and not tail.layer.training  # frozen TinyViT parts stay in eval mode
    out.square().mean().backward()
    trained = {k for k, p in tail.named_parameters() if p.grad is not None}
    assert trained and all(k.endswith(("lora_a", "lora_b")) for k in trained)
    state = tail.adapter_state()
    assert len(state) == 2 * 4 * 2 and set(state) == trained  # 2 blocks x (qkv, proj, fc1, fc2) x (A, B)
    with pytest.raises(ValueError, match="rank-8 tail"):
        AdaptedEncoderTail(image_encoder, rank=8).load_adapter_state(state)
    with pytest.raises(ValueError, match="rank"):
        AdaptedEncoderTail(image_encoder, rank=0)
    with pytest.raises(ValueError, match="stage-2 features"):
        tail(torch.zeros(1, 256, 8, 8))


def test_a_config_with_a_base_states_only_what_it_changes(tmp_path: Path):
    import yaml

    from segment.train import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    base, variant = load_config(root / "segment_decoder.yaml"), load_config(root / "segment_decoder_adapters.yaml")
    assert variant["train"] == {**base["train"], "adapter_rank": 8, "adapter_lr": 5e-4, "members": 2}
    assert {k: v for k, v in variant.items() if k not in ("train", "output")} == \
        {k: v for k, v in base.items() if k not in ("train", "output")}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"base": "b.yaml", "data": {}, "train": {}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"base": "a.yaml"}))
    with pytest.raises(ValueError, match="circular"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"base": "missing.yaml", "data": {}, "train": {}}))
    with pytest.raises(ValueError, match="c.yaml: config .*missing.yaml not found"):
        load_config(tmp_path / "c.yaml")


def test_fit_with_adapters_saves_them_and_the_segmenter_runs_them(tmp_path: Path):
    from segment.decoder import AdaptedDecoder, decoder_from_payload
    from segment.fit import fit
    from segment.litemedsam import load_litemedsam
    from segment.segmenter import CardiacSegmenter
    from segment.train import adapter_rank
    from segment.training_data import add_stage2, build_cache, load_cache

    build_cache(_square_heart_samples(2), tmp_path / "a", _RandomEncoder(), progress=False, fingerprint="a")
    train = {"epochs": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 1e-4, "edge_weight": 0.5, "prior_weight": 0.4,
             "adapter_rank": 2}
    cfg = {"seed": 0, "cache_dir": str(tmp_path / "a"), "output": str(tmp_path / "w.pt"),
           "model": {"width": 16, "prior_width": 16}, "train": train}
    assert "stage2" not in load_cache(tmp_path / "a")
    with pytest.raises(ValueError, match="stage-2 features in every cache"):
        fit(cfg)
    assert add_stage2(tmp_path / "a", _RandomEncoder(), progress=False)
    assert not add_stage2(tmp_path / "a", _RandomEncoder(), progress=False)  # kept once there
    assert load_cache(tmp_path / "a")["stage2"].shape == (2, 320, 64, 64)
    payload = torch.load(fit(cfg), weights_only=False)
    adapter = payload["encoder_adapter"]
    assert adapter["rank"] == 2 and len(adapter["states"]) == 1
    assert any(float(v.abs().max()) > 0 for k, v in adapter["states"][0].items() if k.endswith("lora_b"))  # trained
    with pytest.raises(ValueError, match="carry encoder adapters"):
        decoder_from_payload(payload, "w.pt")
    decoder = decoder_from_payload(payload, "w.pt", image_encoder=load_litemedsam().image_encoder)
    assert isinstance(decoder, AdaptedDecoder) and decoder.needs_stage2
    with pytest.raises(ValueError, match="stage-2"):
        decoder(torch.zeros(1, 256, 64, 64), torch.zeros(1, 128, 128, 128), torch.zeros(1, 256, 256))
    seg = CardiacSegmenter.load_default(weights=tmp_path / "w.pt")
    assert seg.encoder.keep_stage2 and "low-rank adapters" in seg.describe()
    image = np.asarray(make_phantom(1007, n_slices=8, n_frames=2).images[4, 0])
    labels = seg.segment(image, (1.5, 1.5))
    assert labels.shape == image.shape and labels.dtype == np.uint8
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="adapter_rank"):
            adapter_rank({"train": {"adapter_rank": bad}})
    assert adapter_rank({"train": {}}) == 0


# ---- the shipped segmenter ------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter():
    from segment.segmenter import CardiacSegmenter

    torch.set_num_threads(1)
    return CardiacSegmenter.load_default(device="cpu")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(1007, n_slices=8, n_frames=4)  # a seed never used for training


def test_shipped_weights_segment_an_unseen_phantom(segmenter, phantom):
    s = phantom.labels.shape[0] // 2
    image, truth = phantom.images[s, 0], phantom.labels[s, 0]
    labels = segmenter.segment(image, pixel_spacing_mm=phantom.pixel_spacing_mm)
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert dice(labels == 1, truth == 1) > PHANTOM_LV_DICE_MIN
    assert dice(labels == 2, truth == 2) > PHANTOM_MYO_DICE_MIN


def test_segmenter_names_its_decoder_weights(segmenter, tmp_path: Path):
    import hashlib
    import shutil

    from segment.segmenter import CardiacSegmenter

    shipped = segmenter.weights_file
    assert shipped is not None and shipped.name == "cardiac_decoder.pt"
    assert hashlib.sha256(shipped.read_bytes()).hexdigest()[:16] in segmenter.describe()
    other = tmp_path / "my_decoder.pt"
    shutil.copyfile(shipped, other)
    assert "my_decoder.pt" in CardiacSegmenter.load_default(weights=other).describe()
    with pytest.raises(FileNotFoundError, match="not found"):
        CardiacSegmenter.load_default(weights=tmp_path / "missing.pt")


def test_second_pass_finds_the_heart_once_per_slice(segmenter, phantom):
    from segment.segmenter import ZoomSettings

    calls: list[int] = []
    on_grid = segmenter.probabilities_on_grid
    segmenter.probabilities_on_grid = lambda grid: (calls.append(len(grid)), on_grid(grid))[1]
    segmenter.zoom = ZoomSettings()
    try:
        s = phantom.labels.shape[0] // 2
        labels = segmenter.segment(phantom.images[s: s + 2, :2], pixel_spacing_mm=phantom.pixel_spacing_mm)
        assert "heart-centred window" in segmenter.describe()
    finally:
        segmenter.zoom = None
        del segmenter.probabilities_on_grid
    assert calls == [2, 4]  # first frame of each of the 2 slices, then all 4 images in their windows
    assert labels.shape == (2, 2, *phantom.images.shape[-2:]) and labels.dtype == np.uint8
    for i in range(2):
        for f in range(2):
            assert dice(labels[i, f] == 1, phantom.labels[s + i, f] == 1) > PHANTOM_LV_DICE_MIN


def test_streamed_probabilities_are_those_of_the_stored_features(segmenter, phantom):
    """Encoding and decoding batch by batch (features of one batch held at a time) changes no number."""
    from segment.preprocess import GridGeometry, normalize_intensity, to_model_grid

    s = phantom.labels.shape[0] // 2
    images = np.stack([normalize_intensity(im) for im in phantom.images[s, :3]])
    grid = to_model_grid(images, GridGeometry.for_shape(images.shape[-2:]))
    batch_size = segmenter.batch_size
    try:
        for segmenter.batch_size in (1, 2):  # one image per batch (the CPU default); two, the second batch short
            streamed = segmenter.probabilities_on_grid(grid)
            stored = segmenter.probabilities_from_features(segmenter.encode(grid), grid)
            assert streamed.shape == (3, 4, 256, 256)
            if segmenter.batch_size == 1:
                assert torch.equal(streamed, stored)
            else:  # torch.cat may change the features' memory layout: rounding only
                torch.testing.assert_close(streamed, stored, rtol=0, atol=1e-4)
    finally:
        segmenter.batch_size = batch_size


def test_segmenter_rejects_bad_input(segmenter):
    with pytest.raises(ValueError, match="constant"):
        segmenter.segment(np.zeros((2, 64, 64), np.float32), (1.5, 1.5))
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        segmenter.segment(np.random.rand(64, 64), (0.0, 1.5))
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        segmenter.segment(np.random.rand(64, 64), (float("nan"), 1.5))
    with pytest.raises(ValueError, match="non-empty"):
        segmenter.segment(np.zeros((0, 64, 64)), (1.5, 1.5))
    with pytest.raises(ValueError, match="complex"):
        segmenter.segment(np.ones((64, 64), np.complex64), (1.5, 1.5))


def test_box_mode_returns_a_mask_inside_the_box(segmenter, phantom):
    s = phantom.labels.shape[0] // 2
    image, truth = phantom.images[s, 0], phantom.labels[s, 0]
    ys, xs = np.nonzero(truth == 1)
    box = (xs.min() - 3, ys.min() - 3, xs.max() + 3, ys.max() + 3)
    mask = segmenter.segment_with_box(image, box)
    assert mask.shape == image.shape and mask.dtype == bool
    outside = np.ones_like(mask)
    outside[box[1]: box[3] + 1, box[0]: box[2] + 1] = False
    assert mask.any() and not (mask & outside).any()
    assert dice(mask, truth == 1) > 0.5
    with pytest.raises(ValueError, match="box"):
        segmenter.segment_with_box(image, (50, 50, 40, 60))


# ---- CLI -------------------------------------------------------------------------------------
def test_cli_on_nifti_writes_labels_overlay_and_biomarkers(tmp_path: Path, phantom):
    nib = pytest.importorskip("nibabel")
    from cardiomm.commands.segment import load_input
    import argparse

    from cardiomm.commands import segment as seg_cmd

    s = phantom.labels.shape[0] // 2
    es = 2
    stack = phantom.images[s: s + 1, [0, es]]  # [1 slice, 2 frames, y, x]
    data = np.transpose(stack, (3, 2, 0, 1))  # NIfTI x, y, slice, frame
    img = nib.Nifti1Image(data.astype(np.float32), np.diag([1.5, 1.5, 10.0, 1.0]))
    img.header.set_zooms((1.5, 1.5, 10.0, 1.0))
    src = tmp_path / "cine.nii.gz"
    nib.save(img, str(src))
    loaded = load_input(src)
    assert loaded.images.shape == (1, 2, *phantom.images.shape[-2:])
    assert loaded.pixel_spacing_mm == (1.5, 1.5) and loaded.slice_spacing_mm == 10.0

    parser = argparse.ArgumentParser()
    seg_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["segment", str(src), "--out", str(tmp_path / "out"), "--heart-rate", "60"])
    assert args.func(args) == 0
    out = tmp_path / "out"
    labels = nib.load(str(out / "labels.nii.gz"))
    assert labels.shape == data.shape
    assert tuple(float(z) for z in labels.header.get_zooms()[:3]) == (1.5, 1.5, 10.0)
    assert (out / "overlay.png").stat().st_size > 1000
    report = json.loads((out / "biomarkers.json").read_text())
    b = report["biomarkers"]
    assert b["n_frames"] == 2 and b["lvedv_ml"] > b["lvesv_ml"] > 0
    assert b["lvef_percent"] == pytest.approx(100 * (b["lvedv_ml"] - b["lvesv_ml"]) / b["lvedv_ml"])
    assert b["cardiac_output_l_min"] is not None
    assert not list(out.glob(".*"))  # no temporary files left


def test_cli_rejects_unknown_input(tmp_path: Path):
    from cardiomm.commands.segment import load_input
    from cardiomm.data.errors import DataFileError

    bad = tmp_path / "scan.txt"
    bad.write_text("hello")
    with pytest.raises(DataFileError, match="unknown input type"):
        load_input(bad)
    with pytest.raises(DataFileError, match="no such"):
        load_input(tmp_path / "missing.nii")


def test_inference_encoder_with_folded_batch_norm_gives_the_pretrained_features():
    import copy

    from segment.litemedsam import FrozenImageEncoder, load_litemedsam

    torch.manual_seed(0)
    original = load_litemedsam().image_encoder
    unchanged = copy.deepcopy(original)
    fast = FrozenImageEncoder(original)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    reference = FrozenImageEncoder.__new__(FrozenImageEncoder)  # the same forward on the untouched encoder
    torch.nn.Module.__init__(reference)
    reference.encoder = unchanged
    images = torch.rand(1, 256, 256)
    a, b = fast(images), reference(images)
    torch.testing.assert_close(a.embedding, b.embedding, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.stage1, b.stage1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad", [0, -2, True])
def test_segmenter_rejects_a_bad_batch_size(bad):
    from segment.segmenter import CardiacSegmenter

    with pytest.raises(ValueError, match="batch_size"):
        CardiacSegmenter(sam=None, decoder=None, batch_size=bad)  # checked before anything is loaded
