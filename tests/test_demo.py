"""``cardiomm demo`` end to end on a small phantom (segmenter replaced by a fast test double;
the real LiteMedSAM encoder costs seconds per image on a CPU and is tested in test_segment.py)."""

from __future__ import annotations

import json

import pytest

from cardiomm.cli import main
from conftest import BrightnessSegmenter


@pytest.fixture
def fast_segmenter(monkeypatch):
    import segment.segmenter

    monkeypatch.setattr(segment.segmenter.CardiacSegmenter, "load_default",
                        classmethod(lambda cls, device="cpu", weights=None: BrightnessSegmenter()))


def test_demo_writes_report_with_truth_and_both_methods(tmp_path, fast_segmenter):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--slices", "6", "--frames", "8", "--matrix", "64", "--coils", "4",
                 "--baseline", "zero-filled", "--device", "cpu"])
    assert code == 0
    for name in ("report.html", "report.md", "results.json", "demo_images.png", "demo_volumes.png", "phantom_scan.h5"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "results.json").read_text())
    assert report["data"].startswith("SIMULATED")
    runs = report["fidelity"]["runs"]
    assert [r["method"] for r in runs] == ["cardiomm", "zero-filled"]
    for r in runs:
        assert r["r_effective"] == pytest.approx(24, rel=0.05) and r["pattern"] == "kt_gaussian"
        assert set(r["biomarkers"]) >= {"lvedv_ml", "lvef_percent", "lv_mass_g"}
    assert report["true_biomarkers"]["lvedv_ml"] > 0
    # images are also scored against the simulation's noiseless truth, the reference included
    assert all(r["image_vs_noise_free"]["psnr_db"] is not None for r in runs)
    assert report["reference_vs_noise_free"]["psnr_db"] > runs[1]["image_vs_noise_free"]["psnr_db"]
    html = (out / "report.html").read_text()
    assert "truth (phantom)" in html and "data:image/png;base64," in html and "CardioMM" in html


def test_demo_rejects_unknown_baseline(tmp_path, fast_segmenter):
    assert main(["demo", "--out", str(tmp_path), "--baseline", "magic", "--slices", "6", "--frames", "8",
                 "--matrix", "64", "--coils", "4"]) == 2
