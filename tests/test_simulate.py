"""Multi-coil acquisition simulation: forward model, SNR, phase, oversampling, writing."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from cardiomm.data.phantom import make_phantom
from cardiomm.data.simulate import (
    noise_covariance_matrix,
    noise_free_as_read,
    signal_region,
    simulate_kspace,
    write_simulated_scan,
)
from recon.conventions import coil_combine, fft2c, ifft2c, rss
from segment.biomarkers import CardiacBiomarkers


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(4, n_slices=6, n_frames=5, matrix=(96, 88), pixel_spacing_mm=(3.0, 3.5), slice_thickness_mm=8.0,
                        slice_gap_mm=2.0)


def _combine(kspace: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    return coil_combine(ifft2c(kspace), sens[:, None])


def test_noiseless_kspace_recovers_the_complex_image(phantom):
    acq = simulate_kspace(phantom, n_coils=6, seed=2, snr_db=None)
    s, t, ny, nx = phantom.images.shape
    assert acq.kspace.shape == (s, 6, t, ny, nx) and acq.kspace.dtype == torch.complex64
    assert acq.sens.shape == (6, ny, nx) and acq.image.shape == (s, t, ny, nx)
    assert torch.allclose((acq.sens.abs() ** 2).sum(0), torch.ones(ny, nx), atol=1e-5)
    assert (_combine(acq.kspace, acq.sens) - acq.image).abs().max() < 1e-5
    # the magnitude of the ground truth is the input image
    assert np.allclose(acq.image.abs().numpy(), phantom.images, atol=1e-6)
    # k-space = F S x, coil by coil
    k0 = fft2c(acq.sens[2] * acq.image[1])
    assert (acq.kspace[1, 2] - k0).abs().max() < 1e-5
    assert acq.noise_std == 0 and acq.noise_scan.shape == (6, 0)


def test_readout_oversampling_doubles_kx(phantom):
    acq = simulate_kspace(phantom, n_coils=4, seed=0, snr_db=None, readout_oversampling=2)
    s, t, ny, nx = phantom.images.shape
    assert acq.kspace.shape == (s, 4, t, ny, 2 * nx)
    assert acq.sens_encoded.shape == (4, ny, 2 * nx)
    assert acq.metadata.encoded_matrix == (ny, 2 * nx) and acq.metadata.recon_matrix == (ny, nx)
    assert acq.metadata.encoded_fov_mm[0] == pytest.approx(2 * acq.metadata.recon_fov_mm[0])
    coil_images = ifft2c(acq.kspace)
    x0 = nx - nx // 2
    cropped = coil_images[..., x0 : x0 + nx]
    assert (coil_combine(cropped, acq.sens[:, None]) - acq.image).abs().max() < 1e-5
    # the extra field of view is empty
    assert coil_images[..., :x0].abs().max() < 1e-5 and coil_images[..., x0 + nx :].abs().max() < 1e-5


def test_odd_matrix_with_oversampling_keeps_the_centre():
    img = np.zeros((1, 2, 9, 7), np.float32)
    img[0, :, 4, 3] = 1.0  # the centre pixel n // 2
    acq = simulate_kspace(img, n_coils=2, snr_db=None, readout_oversampling=2, phase="none", pixel_spacing_mm=(1.0, 1.0))
    coil_images = ifft2c(acq.kspace)
    assert int(rss(coil_images)[0, 0].abs().flatten().argmax()) == 4 * 14 + 7  # pixel (4, 14 // 2)


@pytest.mark.parametrize("snr_db", [10.0, 25.0])
def test_noise_matches_requested_snr(phantom, snr_db):
    clean = simulate_kspace(phantom, n_coils=6, seed=3, snr_db=None, noise_correlation=0.0)
    noisy = simulate_kspace(phantom, n_coils=6, seed=3, snr_db=snr_db, noise_correlation=0.0)
    noise_img = _combine(noisy.kspace - clean.kspace, clean.sens)
    region = signal_region(clean.image.abs()).expand_as(noise_img)
    measured_std = float(noise_img[region].abs().pow(2).mean().sqrt())
    signal = float(clean.image.abs()[region].mean())
    assert signal == pytest.approx(noisy.signal_level, rel=1e-6)
    assert measured_std == pytest.approx(noisy.noise_std, rel=0.1)
    assert 20 * np.log10(signal / measured_std) == pytest.approx(snr_db, abs=20 * np.log10(1.1))
    # real and imaginary parts each carry half the variance
    assert float(noise_img[region].real.std()) == pytest.approx(noisy.noise_std / np.sqrt(2), rel=0.1)


def test_correlated_noise_has_the_reported_covariance(phantom):
    clean = simulate_kspace(phantom, n_coils=6, seed=5, snr_db=None, noise_correlation=0.5)
    noisy = simulate_kspace(phantom, n_coils=6, seed=5, snr_db=15.0, noise_correlation=0.5)
    n = (noisy.kspace - clean.kspace).permute(1, 0, 2, 3, 4).reshape(6, -1).to(torch.complex128)
    cov = (n @ n.conj().T / n.shape[1]).numpy()
    psi = noisy.noise_covariance.numpy()
    assert np.allclose(psi, psi.conj().T)
    assert np.abs(np.diag(psi).real.mean() - noisy.noise_std**2) < 1e-9
    assert np.abs(psi - np.diag(np.diag(psi))).max() > 0.1 * noisy.noise_std**2  # really correlated
    assert np.abs(cov - psi).max() < 0.03 * noisy.noise_std**2
    scan = noisy.noise_scan.to(torch.complex128)
    assert scan.shape == (6, 256)
    cov_scan = (scan @ scan.conj().T / scan.shape[1]).numpy()
    assert np.abs(cov_scan - psi).max() < 0.35 * noisy.noise_std**2
    assert noisy.to_kspace_scan().noise_covariance.shape == (6, 6)


def test_noise_covariance_matrix_is_positive_definite():
    rng = np.random.default_rng(0)
    psi = noise_covariance_matrix(8, 0.6, rng)
    assert np.allclose(psi, psi.conj().T) and np.linalg.eigvalsh(psi).min() > 0
    assert np.real(np.trace(psi)) == pytest.approx(8.0)
    assert np.array_equal(noise_covariance_matrix(4, 0.0, rng), np.eye(4))
    with pytest.raises(ValueError, match="noise_correlation"):
        noise_covariance_matrix(4, 1.0, rng)


def test_background_phase_is_smooth_and_slowly_varying(phantom):
    acq = simulate_kspace(phantom, n_coils=2, seed=7, snr_db=None)
    x = acq.image
    region = signal_region(x.abs())
    inside = region.expand_as(x)
    dy = torch.angle(x[..., 1:, :] * x[..., :-1, :].conj())
    dx = torch.angle(x[..., :, 1:] * x[..., :, :-1].conj())
    dt = torch.angle(x[:, 1:] * x[:, :-1].conj())
    assert dy[inside[..., 1:, :] & inside[..., :-1, :]].abs().max() < 0.15
    assert dx[inside[..., :, 1:] & inside[..., :, :-1]].abs().max() < 0.15
    assert dt[inside[:, 1:]].abs().max() < 0.1
    phase = torch.angle(x)[inside]
    assert float(phase.std()) > 0.1  # there is a phase, not just a real image
    # different slices get different phase maps
    assert not torch.allclose(torch.angle(x[0, 0]), torch.angle(x[1, 0]))
    flat = simulate_kspace(phantom, n_coils=2, seed=7, snr_db=None, phase="none")
    assert flat.image.imag.abs().max() == 0


def test_reproducible_by_seed(phantom):
    a = simulate_kspace(phantom, n_coils=3, seed=11, snr_db=20)
    b = simulate_kspace(phantom, n_coils=3, seed=11, snr_db=20)
    c = simulate_kspace(phantom, n_coils=3, seed=12, snr_db=20)
    assert torch.equal(a.kspace, b.kspace)
    assert not torch.equal(a.kspace, c.kspace)


def test_metadata_and_plain_arrays():
    images = np.random.default_rng(0).uniform(0, 1, (2, 3, 16, 20)).astype(np.float32)
    acq = simulate_kspace(images, n_coils=3, snr_db=30, pixel_spacing_mm=(2.0, 2.5), slice_thickness_mm=6.0,
                          heart_rate_bpm=70.0, source="random test images", coil_kind="biot_savart")
    m = acq.metadata
    assert m.simulated and m.n_coils == 3 and m.n_frames == 3 and m.n_slices == 2
    assert "random test images" in m.source
    assert m.pixel_spacing_mm == (2.0, 2.5) and m.recon_fov_mm == (50.0, 32.0, 6.0)
    assert m.heart_rate_bpm == 70.0 and m.acceleration == 1.0
    assert m.extra["simulation"]["snr_db"] == 30.0 and m.extra["simulation"]["coil_kind"] == "biot_savart"
    json.dumps(m.to_dict())
    # torch input works as well
    acq2 = simulate_kspace(torch.from_numpy(images), n_coils=3, snr_db=None)
    assert acq2.kspace.shape == (2, 3, 3, 16, 20)


@pytest.mark.parametrize(
    "images,kwargs,match",
    [
        (np.zeros((3, 16, 16)), {}, "slice, frame, y, x"),
        (-np.ones((1, 2, 8, 8)), {}, "negative"),
        (np.full((1, 2, 8, 8), np.nan), {}, "NaN"),
        (np.ones((1, 2, 8, 8)), {"readout_oversampling": 3}, "readout_oversampling"),
        (np.ones((1, 2, 8, 8)), {"n_coils": 0}, "n_coils"),
        (np.ones((1, 2, 8, 8)), {"phase": "random"}, "phase"),
        (np.ones((1, 2, 8, 8)), {"coil_kind": "loop"}, "coil_kind"),
        (np.ones((1, 2, 8, 8)), {"signal_mask": np.ones((2, 8, 8), bool)}, "signal_mask"),
        (np.zeros((1, 2, 8, 8)), {}, "signal region is empty"),
    ],
)
def test_bad_input_raises(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_kspace(images, **kwargs)


def _fake_writer(monkeypatch, calls):
    def write_ismrmrd_raw(path, kspace, metadata, *, mask=None, acs=None, noise=None):
        calls.append({"path": path, "shape": kspace.shape, "metadata": metadata, "noise": noise})
        with open(path, "wb") as f:
            f.write(b"raw")

    module = types.ModuleType("cardiomm.data.ismrmrd_raw")
    module.write_ismrmrd_raw = write_ismrmrd_raw
    monkeypatch.setitem(sys.modules, "cardiomm.data.ismrmrd_raw", module)


def test_write_simulated_scan_writes_raw_labels_and_truth(tmp_path, phantom, monkeypatch):
    calls: list[dict] = []
    _fake_writer(monkeypatch, calls)
    acq = simulate_kspace(phantom, n_coils=3, seed=0, snr_db=25)
    files = write_simulated_scan(tmp_path / "scan.h5", acq, labels=phantom, ground_truth=True)
    assert files["raw"].read_bytes() == b"raw"
    assert calls[0]["shape"] == tuple(acq.kspace.shape) and calls[0]["noise"].shape == (3, 256)
    with np.load(files["labels"]) as z:
        np.testing.assert_array_equal(z["labels"], phantom.labels)
        assert tuple(z["pixel_spacing_mm"]) == phantom.pixel_spacing_mm
    truth = json.loads(files["truth"].read_text())
    assert truth["lvef_percent"] == pytest.approx(phantom.truth.lvef_percent)
    assert CardiacBiomarkers.from_dict(truth) == phantom.truth
    with np.load(files["ground_truth"]) as z:
        assert z["image"].shape == tuple(acq.image.shape)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scan.h5", "scan_groundtruth.npz", "scan_labels.npz", "scan_truth.json"
    ]


def test_write_simulated_scan_failure_leaves_no_file(tmp_path, phantom, monkeypatch):
    def broken(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    module = types.ModuleType("cardiomm.data.ismrmrd_raw")
    module.write_ismrmrd_raw = broken
    monkeypatch.setitem(sys.modules, "cardiomm.data.ismrmrd_raw", module)
    acq = simulate_kspace(phantom, n_coils=2, seed=0, snr_db=None)
    with pytest.raises(OSError):
        write_simulated_scan(tmp_path / "scan.h5", acq, labels=phantom.labels)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="labels of shape"):
        write_simulated_scan(tmp_path / "scan.h5", acq, labels=phantom.labels[:, :2])


def test_write_simulated_scan_round_trips_through_the_ismrmrd_reader(tmp_path, phantom):
    raw = pytest.importorskip("cardiomm.data.ismrmrd_raw")
    acq = simulate_kspace(phantom, n_coils=3, seed=0, snr_db=None, readout_oversampling=2)
    files = write_simulated_scan(tmp_path / "scan.h5", acq, labels=phantom, truth=phantom.truth)
    as_acquired = raw.read_ismrmrd_raw(files["raw"], prewhiten=False, remove_oversampling=False)
    np.testing.assert_allclose(as_acquired.kspace, acq.kspace.numpy(), atol=1e-6)
    assert as_acquired.metadata.simulated
    cropped = raw.read_ismrmrd_raw(files["raw"], prewhiten=False, remove_oversampling=True)
    assert cropped.kspace.shape[-1] == phantom.images.shape[-1]
    recovered = _combine(torch.from_numpy(cropped.kspace), acq.sens)
    assert (recovered - acq.image).abs().max() < 1e-4


def test_noise_free_as_read_is_the_truth_on_the_whitened_scale(tmp_path, phantom):
    from cardiomm.data.sources import load_source
    from recon.metrics import image_metrics

    clean = simulate_kspace(phantom, n_coils=4, seed=0, snr_db=None)
    write_simulated_scan(tmp_path / "clean.h5", clean)
    clean_read = load_source(tmp_path / "clean.h5")
    reference = rss(ifft2c(clean_read.kspace), dim=1).numpy()
    np.testing.assert_allclose(noise_free_as_read(clean, clean_read.metadata), reference, rtol=0,
                               atol=1e-5 * float(reference.max()))  # no noise scan: nothing is whitened
    noisy = simulate_kspace(phantom, n_coils=4, seed=0, snr_db=30.0)
    write_simulated_scan(tmp_path / "noisy.h5", noisy)
    noisy_read = load_source(tmp_path / "noisy.h5")
    truth = noise_free_as_read(noisy, noisy_read.metadata)
    read_back = rss(ifft2c(noisy_read.kspace), dim=1).numpy()
    assert float(np.abs(read_back).max()) > 5 * float(np.abs(reference).max())  # whitening changed the scale...
    psnr = image_metrics(truth[2], read_back[2]).psnr_db  # ...and the truth follows it: off by the 30 dB noise only
    assert 25 < psnr < 45


def test_written_noise_scan_gives_the_noise_covariance(tmp_path, phantom):
    raw = pytest.importorskip("cardiomm.data.ismrmrd_raw")
    acq = simulate_kspace(phantom, n_coils=3, seed=0, snr_db=20, n_noise_samples=4000)
    files = write_simulated_scan(tmp_path / "scan.h5", acq)
    scan = raw.read_ismrmrd_raw(files["raw"], prewhiten=False)
    assert scan.noise_covariance is not None
    # estimators may differ in the normalisation of the sample covariance: compare the shape
    cov = scan.noise_covariance / np.trace(scan.noise_covariance).real
    psi = acq.noise_covariance.numpy() / np.trace(acq.noise_covariance.numpy()).real
    assert np.abs(cov - psi).max() < 0.05
