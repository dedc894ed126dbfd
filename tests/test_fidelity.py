"""Biomarker-fidelity runner, agreement statistics and report figures."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cardiomm.fidelity.agreement import bland_altman, dice_per_class
from cardiomm.fidelity.methods import MethodRunner, make_method
from cardiomm.fidelity import report as rep
from cardiomm.fidelity.runner import BIOMARKERS, load_case, run_fidelity
from conftest import BrightnessSegmenter
from recon.conventions import ifft2c, rss
from recon.metrics import image_metrics

SPEC = "phantom:7?n_slices=4&n_frames=6&matrix=64x64&pixel_spacing_mm=4.5&slice_thickness_mm=12"


def identity_method() -> MethodRunner:
    """Returns the fully sampled coil-combined image whatever the mask (errors must be 0)."""

    def run(kspace, sampling, metadata):
        return rss(ifft2c(kspace)).to(torch.complex64)

    return MethodRunner("identity", torch.device("cpu"), run)


@pytest.fixture(scope="module")
def case():
    return load_case(SPEC, n_coils=4, seed=1)


def test_dice_and_bland_altman_by_hand():
    ref = np.array([[1, 1, 2, 0], [3, 3, 0, 255]])
    test = np.array([[1, 0, 2, 2], [3, 0, 0, 1]])
    d = dice_per_class(ref, test)
    assert d["lv"] == pytest.approx(2 * 1 / (2 + 1))  # the 1 at an ignored pixel does not count
    assert d["myo"] == pytest.approx(2 * 1 / (1 + 2))
    assert d["rv"] == pytest.approx(2 * 1 / (2 + 1))
    assert math.isnan(dice_per_class(np.zeros((2, 2)), np.zeros((2, 2)))["lv"])
    ba = bland_altman([100.0, 110.0, None, 90.0], [102.0, 108.0, 5.0, 96.0])
    assert ba.n == 3 and ba.mean_difference == pytest.approx(2.0)
    assert ba.sd_difference == pytest.approx(np.std([2.0, -2.0, 6.0], ddof=1))
    assert ba.loa_high == pytest.approx(2.0 + 1.96 * ba.sd_difference)
    assert ba.mean_abs_difference == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match="paired"):
        bland_altman([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((2, 2)), np.zeros((2, 3)))


def test_transposed_cases_are_segmented_as_the_scanner_stored_them(case):
    """DICOM sources with phase encoding along x are transposed by the loader; the segmenter must see them untransposed."""
    from dataclasses import replace

    class TopRowSegmenter:  # orientation-sensitive: labels the first image row, records what it saw
        def __init__(self):
            self.spacings = []

        def segment(self, images, pixel_spacing_mm):
            self.spacings.append(tuple(pixel_spacing_mm))
            labels = np.zeros(np.shape(images), np.uint8)
            labels[..., 0, :] = 1
            return labels

    images = np.random.default_rng(0).random((2, 6, 10), dtype=np.float32)  # [frame, y, x], not square
    meta = case.metadata.with_updates(pixel_spacing_mm=(1.0, 2.0))
    plain = replace(case, metadata=meta)
    flipped = replace(case, metadata=meta.with_updates(extra={**meta.extra, "transposed": True}))
    seg = TopRowSegmenter()
    assert not plain.transposed and flipped.transposed
    assert plain.segment(seg, images)[:, 0, :].all() and plain.segment(seg, images).sum() == 2 * 10
    out = flipped.segment(seg, images)
    assert out.shape == images.shape and out[:, :, 0].all() and out.sum() == 2 * 6  # the first column
    assert seg.spacings == [(1.0, 2.0), (1.0, 2.0), (2.0, 1.0)]


def test_runner_identity_has_no_error_and_zero_filled_degrades(case, tmp_path):
    seg = BrightnessSegmenter()
    methods = [identity_method(), make_method("zero-filled", "cpu")]
    result = run_fidelity([case], methods, seg, accels=[4, 16], patterns=["kt_gaussian"])
    assert len(result.runs) == 4
    for run in result.runs:
        assert run["r_effective"] == pytest.approx(run["accel_requested"], rel=0.05)
        if run["method"] == "identity":
            assert run["image"]["nmse"] == pytest.approx(0.0, abs=1e-10)  # PSNR is infinite: stored as None
            assert all(v is None or v == pytest.approx(0.0, abs=1e-9) for v in run["errors"].values())
            assert run["dice_vs_reference"]["lv"] == pytest.approx(1.0)
    zf = {r["accel_requested"]: r for r in result.runs if r["method"] == "zero-filled"}
    assert zf[16.0]["image"]["psnr_db"] < zf[4.0]["image"]["psnr_db"] < 60
    assert zf[16.0]["dice_vs_reference"]["lv"] < 1.0
    summary = result.summary()
    assert {(r["method"], r["accel_requested"]) for r in summary} == {(m, a) for m in ("identity", "zero-filled") for a in (4.0, 16.0)}
    assert set(summary[0]["bland_altman"]) == set(BIOMARKERS)
    # the phantom's exact labels score the reference segmentation
    assert set(result.cases[0]["reference_segmentation_dice_vs_labels"]) == {"lv", "myo", "rv"}
    assert result.cases[0]["simulated"] is True
    json.dumps(result.to_dict())  # every number is JSON-serialisable
    # figures and tables
    for path in (rep.error_vs_r_figure(result, tmp_path / "e.png"), rep.bland_altman_figure(result, tmp_path / "b.png"),
                 rep.image_strip_figure(result, case.name, tmp_path / "s.png")):
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    header, rows = rep.summary_table_rows(result)
    assert len(rows) == 4 and all(len(r) == len(header) for r in rows)
    assert "PSNR dB vs noise-free" in header  # a simulated case is also scored against its truth
    assert "<table>" in rep.html_table(header, rows)


def test_simulated_cases_are_also_scored_against_the_noise_free_truth(case):
    """The identity method returns the noisy fully sampled image: perfect against the reference, and exactly the
    reference's own error against the noiseless simulation."""
    noiseless = load_case(SPEC, n_coils=4, seed=1, snr_db=None)
    assert case.noise_free is not None and case.noise_free.shape == case.reference.shape
    np.testing.assert_allclose(case.noise_free, noiseless.reference, rtol=0, atol=1e-5 * float(noiseless.reference.max()))
    result = run_fidelity([case], [identity_method()], BrightnessSegmenter(), accels=[8], patterns=["kt_gaussian"])
    truth_scores = result.runs[0]["image_vs_noise_free"]
    expected = [image_metrics(noiseless.reference[s], case.reference[s]) for s in range(case.reference.shape[0])]
    assert truth_scores["psnr_db"] == pytest.approx(np.mean([m.psnr_db for m in expected]), rel=1e-4)
    assert 15 < truth_scores["psnr_db"] < 60 and truth_scores["ssim"] < 1
    assert result.summary()[0]["psnr_db_noise_free"] == pytest.approx(truth_scores["psnr_db"])
    with pytest.raises(ValueError, match="noise_free"):
        dataclasses.replace(case, noise_free=case.noise_free[:, :2])


class CountingSegmenter(BrightnessSegmenter):
    """Records the shape of every stack it segments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def segment(self, images, pixel_spacing_mm):
        self.calls.append(images.shape)
        return super().segment(images, pixel_spacing_mm)


def test_ed_es_mode_segments_two_frames_and_scores_at_reference_frames(case):
    counting = CountingSegmenter()
    result = run_fidelity([case], [identity_method()], counting, accels=[8], frames="ed-es")
    n_slices, n_frames = case.reference.shape[:2]
    # mid slice over all frames (as a one-slice stack), then all slices at ED and ES for the reference and the method
    assert counting.calls == [(1, n_frames, 64, 64), (n_slices, 2, 64, 64), (n_slices, 2, 64, 64)]
    info = result.cases[0]
    ed, es = info["segmented_frames"]["ed"], info["segmented_frames"]["es"]
    run = result.runs[0]
    assert run["biomarkers"]["ed_frame"] == ed and run["biomarkers"]["es_frame"] == es
    assert run["biomarkers"]["lvef_percent"] == pytest.approx(run["reference_biomarkers"]["lvef_percent"])
    with pytest.raises(ValueError, match="frames"):
        run_fidelity([case], [identity_method()], counting, frames="some")


def test_ed_es_stack_mode_finds_ed_es_on_the_whole_reference(case):
    counting = CountingSegmenter()
    result = run_fidelity([case], [identity_method()], counting, accels=[8], frames="ed-es-stack")
    n_slices, n_frames = case.reference.shape[:2]
    # the reference once in every slice and frame, then the method at ED and ES only
    assert counting.calls == [(n_slices, n_frames, 64, 64), (n_slices, 2, 64, 64)]
    info = result.cases[0]
    ed, es = info["segmented_frames"]["ed"], info["segmented_frames"]["es"]
    assert info["segmented_frames"]["found_on"] == "the whole reference stack"
    # the frames of largest and smallest LV volume, as segmenting every frame finds them
    every = run_fidelity([case], [identity_method()], BrightnessSegmenter(), accels=[8], frames="all")
    assert (ed, es) == (every.cases[0]["reference_biomarkers"]["ed_frame"], every.cases[0]["reference_biomarkers"]["es_frame"])
    assert info["reference_biomarkers"]["lvef_percent"] == pytest.approx(every.cases[0]["reference_biomarkers"]["lvef_percent"])
    run = result.runs[0]
    assert run["biomarkers"]["ed_frame"] == ed and run["biomarkers"]["es_frame"] == es
    assert run["biomarkers"]["lvef_percent"] == pytest.approx(run["reference_biomarkers"]["lvef_percent"])


def test_frame_modes_of_the_parsers_are_the_runner_s():
    from cardiomm.cli import build_parser
    from cardiomm.fidelity import FRAME_MODES

    parser = build_parser()
    assert parser.parse_args(["bench", "fidelity", "phantom:1"]).segment_frames == "ed-es-stack"
    assert parser.parse_args(["demo"]).segment_frames == "ed-es"
    for mode in FRAME_MODES:
        assert parser.parse_args(["demo", "--segment-frames", mode]).segment_frames == mode
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "fidelity", "phantom:1", "--segment-frames", "mid"])


def test_kt_gaussian_density_reaches_the_masks_and_the_report(case):
    """``density`` changes the kt_gaussian masks only; every run and summary row says which density it used."""
    seen = []

    def run(kspace, sampling, metadata):
        seen.append(sampling)
        return rss(ifft2c(kspace)).to(torch.complex64)

    recorder = MethodRunner("identity", torch.device("cpu"), run)
    broad = run_fidelity([case], [recorder], BrightnessSegmenter(), accels=[16], patterns=["kt_gaussian"])
    steep = run_fidelity([case], [recorder], BrightnessSegmenter(), accels=[16], patterns=["kt_gaussian", "kt_radial"],
                         density="kt-focuss")
    assert [m.density for m in seen] == ["broad", "kt-focuss", None]
    assert not torch.equal(seen[0].mask, seen[1].mask)
    assert seen[0].r_effective == seen[1].r_effective
    assert [r["mask_density"] for r in broad.runs] == ["broad"]
    assert [r["mask_density"] for r in steep.runs] == ["kt-focuss", None]
    assert [r["mask_density"] for r in steep.summary()] == ["kt-focuss", None]
    labels = sorted(row[1] for row in rep.summary_table_rows(steep)[1])
    assert labels == ["kt_gaussian (kt-focuss density)", "kt_radial"]
    assert rep.summary_table_rows(broad)[1][0][1] == "kt_gaussian"
    with pytest.raises(ValueError, match="density"):
        run_fidelity([case], [recorder], BrightnessSegmenter(), accels=[16], density="steep")


def test_bad_inputs(case):
    with pytest.raises(ValueError, match="unknown method"):
        make_method("nope", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            make_method("zero-filled", "cuda")
    with pytest.raises(ValueError, match="slice, coil, time"):
        make_method("zero-filled", "cpu")(case.kspace[0], None)


def test_methods_describe_themselves_and_name_the_exact_checkpoint():
    import hashlib

    from cardiomm.inference import DEFAULT_CHECKPOINT

    shared = make_method("view-sharing", "cpu")
    assert shared.description["method"] == "view-sharing" and "walsh" in shared.description["coil_maps"]
    learned = make_method("cardiomm", "cpu").description
    assert learned["checkpoint"] == str(DEFAULT_CHECKPOINT)
    assert learned["checkpoint_sha256"] == hashlib.sha256(DEFAULT_CHECKPOINT.read_bytes()).hexdigest()


def test_bench_fidelity_command_writes_reports_that_say_what_was_segmented(tmp_path: Path):
    from cardiomm.cli import main

    out = tmp_path / "fid"
    spec = "phantom:7?n_slices=3&n_frames=4&matrix=64x64&pixel_spacing_mm=4.5&slice_thickness_mm=20"
    args = ["bench", "fidelity", spec, "--accels", "8", "--methods", "zero-filled", "--recon-cache", str(tmp_path / "c")]
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads((out / "fidelity.json").read_text())
    assert report["reconstruction_cache"] == {"folder": str(tmp_path / "c"), "read_back": 0, "reconstructed": 1}
    frames = report["cases"][0]["segmented_frames"]
    assert frames["found_on"] == "the whole reference stack"
    md = (out / "fidelity.md").read_text()
    assert f"segmented at ED frame {frames['ed']} and ES frame {frames['es']}, found on the whole reference stack" in md
    assert "SIMULATED" in md and (out / "fidelity.html").is_file()
    # a rerun reads the reconstruction back and says so; the numbers are the same
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "fidelity.json").read_text())
    assert again["reconstruction_cache"]["read_back"] == 1 and again["runs"][0]["reconstruction_cached"]
    assert again["runs"][0]["errors"] == report["runs"][0]["errors"]
    assert "read back from the cache" in (tmp_path / "again" / "fidelity.md").read_text()


class CountingMethod:
    """A zero-filled runner that counts its reconstructions."""

    def __init__(self) -> None:
        self.runner = make_method("zero-filled", "cpu")
        self.calls = 0
        inner = self.runner.run_slices

        def run(kspace, sampling, metadata):
            self.calls += 1
            return inner(kspace, sampling, metadata)

        self.runner.run_slices = run


def _scores(result) -> str:
    """Every score of every run, as JSON text (so that NaN Dice of absent classes compare equal)."""
    return json.dumps([(r["method"], r["accel_requested"], r["image"], r["dice_vs_reference"], r["biomarkers"],
                        r["errors"]) for r in result.runs])


def test_reconstruction_cache_reads_back_identical_results(case, tmp_path):
    from cardiomm.fidelity.cache import ReconstructionCache

    counting = CountingMethod()
    plain = run_fidelity([case], [counting.runner], BrightnessSegmenter(), accels=[4, 16])
    assert counting.calls == 2 and not any(r["reconstruction_cached"] for r in plain.runs)
    first_cache = ReconstructionCache(tmp_path / "cache")
    first = run_fidelity([case], [counting.runner], BrightnessSegmenter(), accels=[4, 16], cache=first_cache)
    assert counting.calls == 4 and (first_cache.hits, first_cache.misses) == (0, 2)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2 and len(list((tmp_path / "cache").glob("*.json"))) == 2
    again_cache = ReconstructionCache(tmp_path / "cache")
    again = run_fidelity([case], [counting.runner], BrightnessSegmenter(), accels=[4, 16], cache=again_cache)
    assert counting.calls == 4 and (again_cache.hits, again_cache.misses) == (2, 0)  # nothing reconstructed
    assert all(r["reconstruction_cached"] for r in again.runs)
    assert _scores(again) == _scores(first) == _scores(plain)  # bit for bit the same numbers
    assert [r["seconds_per_slice"] for r in again.runs] == [r["seconds_per_slice"] for r in first.runs]
    # another R, mask seed or method parameter is another entry
    run_fidelity([case], [counting.runner], BrightnessSegmenter(), accels=[8], cache=again_cache)
    run_fidelity([case], [counting.runner], BrightnessSegmenter(), accels=[4], mask_seed=1, cache=again_cache)
    assert counting.calls == 6
    other = make_method("cg-sense", "cpu", max_iter=2)
    fewer = make_method("cg-sense", "cpu", max_iter=1)
    run_fidelity([case], [other], BrightnessSegmenter(), accels=[4], cache=again_cache)
    result = run_fidelity([case], [fewer], BrightnessSegmenter(), accels=[4], cache=again_cache)
    assert not result.runs[0]["reconstruction_cached"]


def test_reconstruction_cache_keys_follow_data_and_code(case, tmp_path):
    from cardiomm.fidelity.cache import ReconstructionCache, code_digest
    from recon.masks import make_mask

    cache = ReconstructionCache(tmp_path)
    sampling = make_mask("kt_gaussian", 8, tuple(case.kspace.shape[-3:]), seed=0)
    meta = case.metadata.to_dict()
    key = cache.key(case.kspace, meta, sampling, 0, "zero-filled", {}, "cpu")
    assert key == cache.key(case.kspace.clone(), meta, sampling, 0, "zero-filled", {}, "cpu")
    changed = case.kspace.clone()
    changed[0, 0, 0, 0, 0] += 1
    other_mask = make_mask("kt_gaussian", 8, tuple(case.kspace.shape[-3:]), seed=3)
    assert len({key,
                cache.key(changed, meta, sampling, 0, "zero-filled", {}, "cpu"),
                cache.key(case.kspace, {**meta, "vendor": "x"}, sampling, 0, "zero-filled", {}, "cpu"),
                cache.key(case.kspace, meta, other_mask, 0, "zero-filled", {}, "cpu"),
                cache.key(case.kspace, meta, sampling, 0, "zero-filled", {"max_iter": 3}, "cpu"),
                cache.key(case.kspace, meta, sampling, 0, "zero-filled", {}, "cuda")}) == 6
    # the code digest covers the reconstruction code: an edited source file is another digest
    src = tmp_path / "src"
    (src / "recon").mkdir(parents=True)
    (src / "recon" / "a.py").write_text("x = 1\n")
    before = code_digest(src, ("recon",))
    (src / "recon" / "a.py").write_text("x = 2\n")
    assert code_digest(src, ("recon",)) != before
    assert len(code_digest()) == 64


def test_reconstruction_cache_recomputes_unreadable_entries(case, tmp_path):
    from cardiomm.fidelity.cache import ReconstructionCache

    counting = CountingMethod()
    run_fidelity([case], [counting.runner], BrightnessSegmenter(), accels=[8], cache=ReconstructionCache(tmp_path))
    (entry,) = tmp_path.glob("*.npy")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    warnings: list[str] = []
    cache = ReconstructionCache(tmp_path, warn=warnings.append)
    result = run_fidelity([case], [counting.runner], BrightnessSegmenter(), accels=[8], cache=cache)
    assert counting.calls == 2 and not result.runs[0]["reconstruction_cached"]
    assert len(warnings) == 1 and str(entry) in warnings[0] and "unreadable" in warnings[0]
    # the entry was written again and is read back now
    again = ReconstructionCache(tmp_path, warn=warnings.append)
    assert run_fidelity([case], [counting.runner], BrightnessSegmenter(), accels=[8], cache=again).runs[0][
        "reconstruction_cached"]
    assert counting.calls == 2 and len(warnings) == 1
    # an array without its JSON is no entry (a run killed between the two writes)
    next(tmp_path.glob("*.json")).unlink()
    assert not run_fidelity([case], [counting.runner], BrightnessSegmenter(), accels=[8],
                            cache=ReconstructionCache(tmp_path)).runs[0]["reconstruction_cached"]
    with pytest.raises(ValueError, match="not a folder"):
        ReconstructionCache(entry)


def test_reconstruction_cache_that_cannot_be_written_does_not_stop_the_run(case, tmp_path, monkeypatch):
    import errno

    from cardiomm.fidelity import cache as cache_module
    from cardiomm.fidelity.cache import ReconstructionCache

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.np, "save", full_disk)
    warnings: list[str] = []
    result = run_fidelity([case], [make_method("zero-filled", "cpu")], BrightnessSegmenter(), accels=[8],
                          cache=ReconstructionCache(tmp_path, warn=warnings.append))
    assert len(result.runs) == 1 and result.runs[0]["image"]["psnr_db"] > 0
    assert len(warnings) == 1 and "No space left" in warnings[0]
    assert list(tmp_path.iterdir()) == []  # no partial entry
