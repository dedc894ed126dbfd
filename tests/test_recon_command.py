"""Tests of ``cardiomm recon`` (batch reconstruction of ISMRMRD raw files).

All data here are SIMULATED: tiny phantom scans (2 slices, 4 frames, 32 x 32, 4 coils) written
as ISMRMRD raw files with :func:`cardiomm.data.simulate.write_simulated_scan`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from cardiomm.cli import main
from cardiomm.data.ismrmrd_image import read_ismrmrd_images
from cardiomm.data.ismrmrd_raw import read_ismrmrd_raw, write_ismrmrd_raw
from cardiomm.data.phantom import make_phantom
from cardiomm.data.simulate import simulate_kspace, write_simulated_scan
from recon.conventions import ifft2c, rss
from recon.masks import make_mask

SLICES, FRAMES, MATRIX, COILS = 2, 4, 32, 4
PIXEL_MM, THICKNESS_MM, GAP_MM = 8.75, 24.0, 2.0  # the phantom heart needs a ~280 mm FOV and >= 48 mm of slices
HEART_RATE_BPM = 60.0


def _write_phantom(path: Path, seed: int) -> Path:
    phantom = make_phantom(
        seed, n_slices=SLICES, n_frames=FRAMES, matrix=(MATRIX, MATRIX), pixel_spacing_mm=(PIXEL_MM, PIXEL_MM),
        slice_thickness_mm=THICKNESS_MM, slice_gap_mm=GAP_MM, heart_rate_bpm=HEART_RATE_BPM,
    )
    write_simulated_scan(path, simulate_kspace(phantom, n_coils=COILS, seed=seed, snr_db=30.0))
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two fully sampled phantom scans (simulated)."""
    folder = tmp_path_factory.mktemp("scans")
    for seed in (0, 1):
        _write_phantom(folder / f"scan{seed}.h5", seed)
    return folder


def _copy_inputs(scans: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in scans.glob("*.h5"):
        shutil.copy(f, dest / f.name)
    return dest


def _summary(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]


def _leftovers(out: Path) -> list[str]:
    """Staging folders or temporary files a run must never leave behind."""
    return [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".summary.lock"]


def test_outputs_match_the_reconstruction_with_spacing_and_both_r(scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = main(["recon", str(scans / "scan0.h5"), "--out", str(out), "--method", "zero-filled",
               "--accel", "4", "--mask", "kt_uniform", "--seed", "3", "--quiet"])
    assert rc == 0
    base = out / "scan0_zero-filled"
    for suffix in (".images.h5", ".nii.gz", ".png", ".gif", ".done.json"):
        assert Path(f"{base}{suffix}").is_file(), suffix
    assert _leftovers(out) == []

    # the reconstruction, computed independently: RSS of the zero-filled coil images
    scan = read_ismrmrd_raw(scans / "scan0.h5")
    k = torch.as_tensor(scan.kspace)
    masks = [make_mask("kt_uniform", 4, (FRAMES, MATRIX, MATRIX), seed=3 + s) for s in range(SLICES)]
    mask = torch.stack([m.mask for m in masks])
    expected = rss(ifft2c(k * mask[:, None])).numpy()  # [slice, time, y, x]

    images, meta = read_ismrmrd_images(Path(f"{base}.images.h5"))
    assert images.shape == (SLICES, FRAMES, MATRIX, MATRIX)
    np.testing.assert_allclose(images, expected, rtol=1e-4, atol=1e-6 * expected.max())
    assert meta.pixel_spacing_mm == pytest.approx((PIXEL_MM, PIXEL_MM))

    nii = nib.load(f"{base}.nii.gz")
    assert nii.shape == (MATRIX, MATRIX, SLICES, FRAMES)  # (x, y, slice, time)
    frame_s = 60.0 / HEART_RATE_BPM / FRAMES
    assert nii.header.get_zooms() == pytest.approx((PIXEL_MM, PIXEL_MM, THICKNESS_MM + GAP_MM, frame_s))
    assert nii.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(np.asarray(nii.dataobj), expected.transpose(3, 2, 0, 1), rtol=1e-5,
                               atol=1e-6 * expected.max())

    with Image.open(f"{base}.gif") as gif:
        assert gif.n_frames == FRAMES and gif.size == (MATRIX, MATRIX)
    with Image.open(f"{base}.png") as png:
        assert png.size[0] > png.size[1] > 100

    (record,) = _summary(out)
    r_eff = mask.numel() / float(mask.sum())
    assert record["status"] == "ok" and record["method"] == "zero-filled" and record["device"] == "cpu"
    assert record["input"] == str(scans / "scan0.h5") and record["seconds"] > 0
    assert record["r_effective"] == pytest.approx(r_eff) == pytest.approx(4.0, rel=0.05)
    assert record["r_cmrxrecon"] == pytest.approx(float(np.mean([m.r_cmrxrecon for m in masks])))
    assert record["sampling"]["undersampling"] == "retrospective" and record["simulated"] is True
    assert json.loads(Path(f"{base}.done.json").read_text())["outputs"]["nifti"] == "scan0_zero-filled.nii.gz"


def test_resume_skips_finished_and_a_corrupted_file_is_counted(scans: Path, tmp_path: Path) -> None:
    inputs = _copy_inputs(scans, tmp_path / "in")
    good = (inputs / "scan1.h5").read_bytes()
    (inputs / "broken.h5").write_bytes(good[: len(good) // 3])  # truncated
    (inputs / "notes.txt").write_text("not a scan")  # not picked up from a folder
    out = tmp_path / "out"
    args = ["recon", str(inputs), "--out", str(out), "--method", "zero-filled", "--quiet"]
    assert main(args) == 1  # exit code = number of failed inputs
    first = _summary(out)
    assert sorted((Path(r["input"]).name, r["status"]) for r in first) == [
        ("broken.h5", "failed"), ("scan0.h5", "ok"), ("scan1.h5", "ok")
    ]
    broken = next(r for r in first if r["status"] == "failed")
    assert "broken.h5" in broken["error"] and "truncated" in broken["error"]
    assert not list(out.glob("broken_*")) and _leftovers(out) == []
    assert all(r["r_effective"] == 1.0 == r["r_cmrxrecon"] for r in first if r["status"] == "ok")

    done = out / "scan0_zero-filled.done.json"
    stamp = done.stat().st_mtime_ns
    assert main(args) == 1  # the finished inputs are skipped, the broken one fails again
    again = _summary(out)[len(first):]
    assert [(Path(r["input"]).name, r["status"]) for r in again] == [("broken.h5", "failed")]
    assert done.stat().st_mtime_ns == stamp

    # a finished input asked for with other settings is not silently reused
    rc = main(["recon", str(inputs / "scan0.h5"), "--out", str(out), "--method", "zero-filled", "--accel", "4",
               "--quiet"])
    assert rc == 1 and "--overwrite" in _summary(out)[-1]["error"]
    assert main(["recon", str(inputs / "scan0.h5"), "--out", str(out), "--method", "zero-filled", "--accel", "4",
                 "--overwrite", "--quiet"]) == 0
    assert _summary(out)[-1]["r_effective"] == pytest.approx(4.0, rel=0.05)
    # the same R with the kt-FOCUSS density is another mask: not reused either
    steep = ["recon", str(inputs / "scan0.h5"), "--out", str(out), "--method", "zero-filled", "--accel", "4",
             "--density", "kt-focuss", "--quiet"]
    assert main(steep) == 1 and "--overwrite" in _summary(out)[-1]["error"]
    assert main([*steep, "--overwrite"]) == 0
    assert "kt-focuss density" in _summary(out)[-1]["sampling"]["description"]


def test_prospectively_undersampled_file_keeps_its_mask(scans: Path, tmp_path: Path) -> None:
    scan = read_ismrmrd_raw(scans / "scan1.h5")
    sm = make_mask("kt_uniform", 2, (FRAMES, MATRIX, MATRIX), acs_lines=8, calibration="acs")
    assert sm.acs is not None
    mask = sm.mask.numpy()
    path = tmp_path / "prospective.mrd"
    write_ismrmrd_raw(path, scan.kspace * mask[None, None], scan.metadata, mask=mask)
    out = tmp_path / "out"
    assert main(["recon", str(path), "--out", str(out), "--method", "cg-sense", "--max-iter", "3", "--quiet"]) == 0
    (record,) = _summary(out)
    assert record["sampling"]["undersampling"] == "prospective"
    assert record["r_effective"] == pytest.approx(sm.r_effective)
    assert record["r_cmrxrecon"] == pytest.approx(sm.r_cmrxrecon) and record["r_cmrxrecon"] > record["r_effective"]
    assert record["sampling"]["acs_lines"] == 8
    images, _ = read_ismrmrd_images(out / "prospective_cg-sense.images.h5")
    assert images.shape == (SLICES, FRAMES, MATRIX, MATRIX) and np.isfinite(images).all()

    # retrospective undersampling of data that are already undersampled is refused for that file
    assert main(["recon", str(path), "--out", str(tmp_path / "o2"), "--method", "zero-filled", "--accel", "4",
                 "--quiet"]) == 1
    error = _summary(tmp_path / "o2")[0]["error"]
    assert "already undersampled" in error and "prospective.mrd" in error


def test_unwritable_output_folder_is_a_clear_error(scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(["recon", str(scans / "scan0.h5"), "--out", str(blocker / "out"), "--method", "zero-filled", "--quiet"])
    assert rc == 126
    assert "output folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root may write into read-only folders
        ro = tmp_path / "readonly"
        ro.mkdir(mode=0o500)
        rc = main(["recon", str(scans / "scan0.h5"), "--out", str(ro), "--method", "zero-filled", "--quiet"])
        assert rc == 126 and "not writable" in capsys.readouterr().err


def test_interrupt_and_full_disk_leave_no_partial_outputs(
    scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cardiomm.batch.job as job

    real_gif = job.write_gif_preview
    calls = {"n": 0}

    def gif_then_interrupt(path: Path, *a, **kw) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C while the second input's outputs are being written
            raise KeyboardInterrupt
        real_gif(path, *a, **kw)

    monkeypatch.setattr(job, "write_gif_preview", gif_then_interrupt)
    out = tmp_path / "out"
    rc = main(["recon", str(scans), "--out", str(out), "--method", "zero-filled", "--quiet"])
    assert rc == 130
    assert (out / "scan0_zero-filled.done.json").is_file() and (out / "scan0_zero-filled.nii.gz").is_file()
    assert not list(out.glob("scan1_*")) and _leftovers(out) == []

    def disk_full(*a, **kw) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(job, "write_nifti_magnitude", disk_full)
    assert main(["recon", str(scans), "--out", str(out), "--method", "zero-filled", "--quiet"]) == 1
    assert "No space left" in _summary(out)[-1]["error"]
    assert not list(out.glob("scan1_*")) and _leftovers(out) == []


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny CardioMM checkpoint in the layout training writes."""
    from cardiomm.model import ARCHITECTURE
    from cardiomm.training import CardioMMModule

    torch.manual_seed(0)
    module = CardioMMModule(num_cascades=1, channels=4, depth=1, sens_channels=2, sens_depth=1, calib_max_size=16,
                            context_dim=8)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "cardiomm_architecture": ARCHITECTURE, "cardiomm_model_kwargs": module.model_kwargs}, path)
    return path


def test_cardiomm_method_matches_the_inference_api(scans: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    from cardiomm.inference import load_reconstructor

    out = tmp_path / "out"
    rc = main(["recon", str(scans / "scan1.h5"), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
               "--device", "cpu", "--accel", "4", "--seed", "5", "--batch-size", "2", "--preview", "none", "--quiet"])
    assert rc == 0
    (record,) = _summary(out)
    assert record["method"] == "cardiomm" and record["engine"]["checkpoint"] == str(tiny_checkpoint)
    assert record["engine"]["checkpoint_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert not (out / "scan1_cardiomm.png").exists()

    scan = read_ismrmrd_raw(scans / "scan1.h5")
    mask = torch.stack([make_mask("kt_gaussian", 4, (FRAMES, MATRIX, MATRIX), seed=5 + s).mask for s in range(SLICES)])
    recon = load_reconstructor(tiny_checkpoint, device="cpu")
    expected = recon(torch.as_tensor(scan.kspace) * mask[:, None], mask, None,
                     metadata=scan.metadata.with_updates(mask_pattern="kt_gaussian")).abs().numpy()
    images, _ = read_ismrmrd_images(out / "scan1_cardiomm.images.h5")
    np.testing.assert_allclose(images, expected, rtol=1e-4, atol=1e-5 * expected.max())


@pytest.mark.slow
def test_ddp_predict_over_two_cpu_processes_writes_each_file_once(scans: Path, tmp_path: Path) -> None:
    inputs = _copy_inputs(scans, tmp_path / "in")
    shutil.copy(inputs / "scan0.h5", inputs / "scan2.h5")  # three good inputs and a broken one over two ranks
    (inputs / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(2000))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cardiomm.cli", "recon", str(inputs), "--out", str(out), "--method", "zero-filled",
         "--device", "cpu", "--strategy", "ddp", "--devices", "2", "--preview", "none", "--quiet"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # one failed input, on whichever rank had it
    records = _summary(out)
    names = sorted((Path(r["input"]).name, r["status"]) for r in records)
    assert names == [("broken.h5", "failed"), ("scan0.h5", "ok"), ("scan1.h5", "ok"), ("scan2.h5", "ok")]
    assert {r["rank"] for r in records} == {0, 1}  # each input exactly once, both ranks worked
    for name in ("scan0", "scan1", "scan2"):
        assert (out / f"{name}_zero-filled.done.json").is_file()
    with h5py.File(out / "scan2_zero-filled.images.h5") as f:
        assert f["dataset/cardiomm_zero_filled/data"].shape[0] == SLICES * FRAMES


def test_folder_inputs_skip_outputs_and_same_stems_get_distinct_names(tmp_path: Path) -> None:
    from cardiomm.batch.inputs import discover_inputs, output_names

    for rel in ("a/scan.h5", "a/scan_zero-filled.images.h5", "a/.hidden.h5", "a/sub/deep.mrd", "b/scan.h5"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = discover_inputs([tmp_path / "a", tmp_path / "b" / "scan.h5", tmp_path / "a" / "scan.h5"])
    assert found == [tmp_path / "a" / "scan.h5", tmp_path / "b" / "scan.h5"]
    deep = discover_inputs([tmp_path / "a"], recursive=True, exclude=[tmp_path / "a" / "sub"])
    assert deep == [tmp_path / "a" / "scan.h5"]
    assert discover_inputs([tmp_path / "a"], recursive=True)[-1] == tmp_path / "a" / "sub" / "deep.mrd"
    names = output_names(found + [tmp_path / "a" / "sub" / "deep.mrd"])
    assert len(set(names.values())) == 3 and names[tmp_path / "a" / "sub" / "deep.mrd"] == "deep"
    assert all(n.startswith("scan-") for p, n in names.items() if p.stem == "scan")


def test_real_cxx_ismrmrd_file_with_separate_calibration_lines(shared_data: Path, tmp_path: Path) -> None:
    """The reference C++ library's Shepp-Logan file (8 coils, R 2 + 24 calibration lines, 4 repetitions)."""
    path = shared_data / "ismrmrd" / "ismrmrd_cxx_shepp_logan_m128_c8_R2.h5"
    out = tmp_path / "out"
    assert main(["recon", str(path), "--out", str(out), "--method", "cg-sense", "--max-iter", "10",
                 "--preview", "none", "--quiet"]) == 0
    (record,) = _summary(out)
    # per frame: 64 imaging lines (12 of them also calibration) + 12 calibration-only lines of 128
    assert record["r_effective"] == pytest.approx(128 / 76)
    assert record["r_cmrxrecon"] == pytest.approx(128 / 52)  # imaging lines outside the 24 calibration lines
    assert record["sampling"]["acs_lines"] == 24 and record["sampling"]["r_header"] == pytest.approx(2.0)
    images, _ = read_ismrmrd_images(out / "ismrmrd_cxx_shepp_logan_m128_c8_R2_cg-sense.images.h5")
    with h5py.File(path) as f:
        truth = f["dataset/phantom"][0]
    truth = np.abs(truth["real"] + 1j * truth["imag"])
    recon = images[0].mean(axis=0)
    a, b = recon - recon.mean(), truth - truth.mean()
    assert float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())) > 0.97  # unaliased, right orientation


def test_cmrxrecon_mat_files_full_and_point_undersampled(scans: Path, tmp_path: Path) -> None:
    """CMRxRecon .mat inputs: a fully sampled ``kspace_full`` file (undersampled retrospectively) and a
    prospective ``kus`` file with a point-wise kt-radial pattern; the mask file beside them is skipped."""
    scipy_io = pytest.importorskip("scipy.io")
    kspace = read_ismrmrd_raw(scans / "scan0.h5").kspace  # [slice, coil, time, ky, kx], SIMULATED
    as_matlab = lambda k: np.ascontiguousarray(np.transpose(k, (4, 3, 1, 0, 2)))  # noqa: E731 - (kx, ky, coil, slice, time)
    folder = tmp_path / "P001"
    folder.mkdir()
    scipy_io.savemat(folder / "cine_sax.mat", {"kspace_full": as_matlab(kspace)})
    sm = make_mask("kt_radial", 4, (FRAMES, MATRIX, MATRIX), seed=1)
    mask = sm.mask.numpy()
    assert mask.any(axis=-1).all()  # every ky row holds a sample: a line-based check would call it fully sampled
    scipy_io.savemat(folder / "cine_sax_kus_ktRadial4.mat", {"kus": as_matlab(kspace * mask[None, None])})
    scipy_io.savemat(folder / "cine_sax_mask_ktRadial4.mat", {"mask": np.transpose(mask, (2, 1, 0))})

    out = tmp_path / "out"
    assert main(["recon", str(folder), "--out", str(out), "--method", "zero-filled", "--quiet"]) == 0
    records = {r["name"]: r for r in _summary(out)}
    assert sorted(records) == ["cine_sax", "cine_sax_kus_ktRadial4"]  # the mask file is not an input
    full, kus = records["cine_sax"], records["cine_sax_kus_ktRadial4"]
    assert full["sampling"]["undersampling"] == "none" and full["r_effective"] == 1.0
    assert kus["sampling"]["undersampling"] == "prospective"
    assert kus["r_effective"] == pytest.approx(mask.size / mask.sum())
    # its central points are not calibration lines: no ACS band, so the coil maps come from the time average
    assert kus["sampling"]["acs_lines"] == 0 and kus["r_cmrxrecon"] == pytest.approx(kus["r_effective"])
    assert any("spacing" in n for n in kus["notes"])  # .mat files carry no geometry
    images, _ = read_ismrmrd_images(out / "cine_sax_zero-filled.images.h5")
    np.testing.assert_allclose(images, rss(ifft2c(torch.from_numpy(kspace))).numpy(), rtol=1e-4, atol=1e-6)

    # retrospective undersampling of the fully sampled file, as for ISMRMRD
    out2 = tmp_path / "out2"
    assert main(["recon", str(folder / "cine_sax.mat"), "--out", str(out2), "--method", "zero-filled",
                 "--accel", "4", "--mask", "kt_gaussian", "--quiet"]) == 0
    (record,) = _summary(out2)
    assert record["sampling"]["undersampling"] == "retrospective" and record["r_effective"] == pytest.approx(4, rel=0.1)


def test_default_density_keeps_the_fingerprint_of_earlier_versions() -> None:
    """Output folders finished before ``--density`` existed are still recognised as finished."""
    from cardiomm.batch.job import ReconSettings
    from cardiomm.batch.prepare import Undersampling

    before = {"accel": 8.0, "pattern": "kt_gaussian", "seed": 0, "convention": "effective", "acs_lines": 16}
    assert ReconSettings(undersampling=Undersampling(8.0)).fingerprint()["undersampling"] == before
    steep = ReconSettings(undersampling=Undersampling(8.0, density="kt-focuss")).fingerprint()["undersampling"]
    assert steep == {**before, "density": "kt-focuss"}
