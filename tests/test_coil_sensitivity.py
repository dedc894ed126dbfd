"""Coil map simulation and estimation: simulated truth -> k-space -> estimated maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from recon import coil_sensitivity
from recon.coil_sensitivity import (
    _upsample_linear,
    calibration_kspace,
    calibration_region,
    estimate_sensitivities,
    fully_sampled_centre,
)
from recon.coil_simulation import loop_magnetic_field, normalize_maps, simulate_coil_maps
from recon.conventions import coil_combine, fft2c, ifft2c
from recon.operators import SenseOp

N_COILS, NY, NX, NT = 10, 96, 96, 8
ACS_LINES = 24
METHODS = ["walsh", "inati", "espirit"]


def _phantom(ny: int, nx: int, nt: int) -> torch.Tensor:
    """Smooth, real, positive cine phantom ``[time, y, x]``: body, beating heart, spine."""
    y, x = np.meshgrid((np.arange(ny) - ny // 2) / (ny / 2), (np.arange(nx) - nx // 2) / (nx / 2), indexing="ij")
    frames = []
    for t in range(nt):
        r = 0.2 + 0.05 * math.cos(2 * math.pi * t / nt)
        img = 0.4 * ((x / 0.8) ** 2 + (y / 0.62) ** 2 < 1)
        img = img + 0.6 * ((x - 0.12) ** 2 + (y + 0.05) ** 2 < r**2)
        img = img + 0.5 * (x**2 + (y - 0.45) ** 2 < 0.09**2)
        frames.append(gaussian_filter(img.astype(np.float64), 1.0))
    return torch.from_numpy(np.stack(frames)).to(torch.complex64)


def _line_mask_with_acs(nt: int, ny: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``[time, ky, 1]`` mask: central ACS lines in every frame plus ~12% random lines; and the ACS mask."""
    acs = torch.zeros(1, ny, 1, dtype=torch.bool)
    acs[:, ny // 2 - ACS_LINES // 2 : ny // 2 + ACS_LINES // 2] = True
    return (torch.rand(nt, ny, 1, generator=gen) < 0.12) | acs, acs


def _kt_mask(nt: int, ny: int, accel: int) -> torch.Tensor:
    """Sheared lattice (k-t) ``[time, ky, 1]``: every ``accel``-th line, shifted by one line per frame, no ACS."""
    mask = torch.zeros(nt, ny, 1, dtype=torch.bool)
    for t in range(nt):
        mask[t, t % accel :: accel] = True
    return mask


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    img = _phantom(NY, NX, NT)
    sens = normalize_maps(simulate_coil_maps(N_COILS, (NY, NX)), coil_dim=-3)[:, None]  # [C, 1, y, x]
    kspace = fft2c(sens * img)  # [C, T, ky, kx]
    mask_acs, acs = _line_mask_with_acs(NT, NY, gen)
    obj = img.real.mean(0) > 0.1
    return {"img": img, "sens": sens, "kspace": kspace, "mask_acs": mask_acs, "acs": acs, "obj": obj}


def _agreement(est: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """``|<S_est, S_true>_c|`` per pixel ``[y, x]``; 1 where equal up to a per-pixel phase."""
    return torch.sum(est.conj() * true, dim=-4)[..., 0, :, :].abs()


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["birdcage", "biot_savart"])
def test_simulated_maps_shape_scale_and_coil_positions(kind):
    n_coils, ny, nx = 8, 64, 48
    maps = simulate_coil_maps(n_coils, (ny, nx), kind=kind, dtype=torch.complex128)
    assert maps.shape == (n_coils, ny, nx) and maps.dtype == torch.complex128
    assert torch.isfinite(maps).all()
    assert torch.sqrt((maps.abs() ** 2).sum(0)).max().item() == pytest.approx(1.0, abs=1e-12)
    # Coil c sits at angle 2 pi c / n_coils (x = cos, y = sin): its magnitude peaks on that side.
    for c in range(n_coils):
        iy, ix = np.unravel_index(int(maps[c].abs().argmax()), (ny, nx))
        angle = math.atan2((iy - ny // 2) / ny, (ix - nx // 2) / nx)
        diff = (angle - 2 * math.pi * c / n_coils + math.pi) % (2 * math.pi) - math.pi
        assert abs(diff) < math.pi / 4, (c, iy, ix)
    # Distinct coils are distinct (needed for parallel imaging).
    flat = normalize_maps(maps, coil_dim=-3).reshape(n_coils, -1)
    corr = (flat.conj() @ flat.T).abs() / (flat.norm(dim=1)[:, None] * flat.norm(dim=1)[None])
    assert (corr - torch.eye(n_coils, dtype=corr.dtype)).max() < 0.99


def test_loop_field_matches_on_axis_formula():
    a = 0.7
    z = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)
    centre = (0.3, -0.2, 0.1)
    points = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], dim=-1) + torch.tensor(centre, dtype=torch.float64)
    field = loop_magnetic_field(points, centre, (0.0, 0.0, 2.0), a, n_segments=256)
    expected = 2 * math.pi * a**2 / (a**2 + z**2) ** 1.5  # mu_0 / (4 pi) left out
    assert torch.allclose(field[:, 2], expected, rtol=1e-3)
    assert field[:, :2].abs().max() < 1e-9 * expected.max()


def test_normalize_maps():
    gen = torch.Generator().manual_seed(3)
    sens = torch.randn(2, 5, 1, 7, 6, dtype=torch.complex64, generator=gen)
    sens[..., 0, 0] = 0
    out = normalize_maps(sens)
    power = (out.abs() ** 2).sum(-4)
    assert torch.allclose(power[..., 1:, :], torch.ones_like(power[..., 1:, :]), atol=1e-5)
    assert (out[..., 0, 0] == 0).all()
    # Same as normalising [coil, y, x] with coil_dim=-3; a phase is preserved.
    again = normalize_maps(sens[0, :, 0], coil_dim=-3)
    assert torch.allclose(again, out[0, :, 0])
    with pytest.raises(ValueError, match="coil axis"):
        normalize_maps(sens[0, :, 0])
    with pytest.raises(ValueError, match="complex"):
        normalize_maps(sens.abs())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_coils": 0, "shape": (8, 8)}, "n_coils"),
        ({"n_coils": 4, "shape": (8,)}, "shape"),
        ({"n_coils": 4, "shape": (8, 8), "kind": "helmholtz"}, "unknown coil kind"),
        ({"n_coils": 4, "shape": (8, 8), "relative_radius": 0.9}, "relative_radius"),
        ({"n_coils": 4, "shape": (8, 8), "dtype": torch.float32}, "dtype"),
    ],
)
def test_simulation_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_coil_maps(**kwargs)


# --------------------------------------------------------------------------------------
# Calibration data
# --------------------------------------------------------------------------------------


def test_calibration_kspace_time_average_and_acs():
    gen = torch.Generator().manual_seed(1)
    full = torch.randn(2, 3, 4, 10, 8, dtype=torch.complex128, generator=gen)  # [batch, coil, time, ky, kx]
    mask = torch.rand(4, 10, 1, generator=gen) < 0.4
    mask[:, 5] = True  # centre line in every frame
    mask[:, 2] = False  # never sampled
    kspace = full * mask
    calib = calibration_kspace(kspace, mask)  # auto -> time average
    assert calib.shape == (2, 3, 10, 8)
    counts = mask.sum(0)  # [ky, 1]
    for ky in range(10):
        if counts[ky, 0] == 0:
            assert (calib[..., ky, :] == 0).all()
        else:
            expected = full[..., mask[:, ky, 0], ky, :].mean(dim=-2)
            assert torch.allclose(calib[..., ky, :], expected)
    # Unsampled entries of the data are ignored even if not zero.
    assert torch.allclose(calibration_kspace(full, mask, method="time_average"), calib)

    acs = torch.zeros(1, 10, 1, dtype=torch.bool)
    acs[:, 4:7] = True
    calib_acs = calibration_kspace(kspace, mask, acs=acs)  # auto -> acs
    assert (calib_acs[..., :4, :] == 0).all() and (calib_acs[..., 7:, :] == 0).all()
    assert torch.allclose(calib_acs[..., 5, :], full[..., 5, :].mean(dim=-2))
    assert torch.allclose(calib_acs[..., 4:7, :], calib[..., 4:7, :])


def test_calibration_region_and_fully_sampled_centre():
    k = torch.zeros(3, 20, 16, dtype=torch.complex64)
    k[:, 6:14, :] = 1 + 1j  # 8 lines: rows 10 - 4 .. 10 + 3 around the centre index 10
    assert fully_sampled_centre(torch.roll(k, 1, dims=-2) != 0) == 7  # off-centre by one row
    assert fully_sampled_centre(k != 0) == 8
    assert fully_sampled_centre(k != 0, max_size=5) == 5
    assert fully_sampled_centre(torch.zeros(20, 16, dtype=torch.bool)) == 0
    crop = calibration_region(k, None)
    assert crop.shape == (3, 8, 8) and (crop != 0).all()
    k[:, 10, 8] = 7  # the k-space centre lands at index s // 2 of the crop
    assert calibration_region(k, (6, 5))[0, 3, 2] == 7
    assert calibration_region(k, 4)[0, 2, 2] == 7
    with pytest.raises(ValueError, match="fit"):
        calibration_region(k, 30)


# --------------------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", ["acs", "kt"])
def test_estimated_maps_match_truth(data, method, pattern):
    if pattern == "acs":
        mask, acs = data["mask_acs"], data["acs"]
    else:  # k-t lattice at R = 6, no ACS: calibrate from time-averaged k-space
        mask, acs = _kt_mask(NT, NY, 6), None
    est = estimate_sensitivities(data["kspace"] * mask, mask, acs=acs, method=method)
    assert est.shape == (N_COILS, 1, NY, NX) and est.dtype == torch.complex64
    obj = data["obj"]
    agree = _agreement(est, data["sens"])
    assert agree[obj].mean() > 0.99, agree[obj].mean()
    assert agree[obj].min() > 0.95, agree[obj].min()
    # Normalised inside, zero in the background (corners are far from the body).
    power = (est.abs() ** 2).sum(-4)[0]
    assert torch.allclose(power[obj], torch.ones_like(power[obj]), atol=1e-4)
    assert ((power - 1).abs() < 1e-4).logical_or(power < 1e-10).all()
    assert (power[:8, :8] < 1e-10).all() and (power[-8:, -8:] < 1e-10).all()
    # The phase relative to the truth is smooth: no wraps or singular points in the object.
    rel = torch.sum(data["sens"].conj() * est, dim=-4)[0]
    rel = rel / rel.abs().clamp_min(1e-12)
    inner = obj[1:, :] & obj[:-1, :]
    assert (rel[1:, :] - rel[:-1, :]).abs()[inner].max() < 0.2
    inner = obj[:, 1:] & obj[:, :-1]
    assert (rel[:, 1:] - rel[:, :-1]).abs()[inner].max() < 0.2


@pytest.mark.parametrize("method", METHODS)
def test_sense_combination_with_estimated_maps_reproduces_image(data, method):
    kspace, img, obj = data["kspace"], data["img"], data["obj"]
    full = torch.ones(NT, NY, 1, dtype=torch.bool)
    est = estimate_sensitivities(kspace, full, method=method)
    combined = coil_combine(ifft2c(kspace), est)  # S^H F^H y  [time, y, x]
    err = (combined.abs() - img.abs())[:, obj].norm() / img[:, obj].norm()
    assert err < 0.01, err
    # SENSE consistency: re-projecting the combined image explains the measured data.
    op = SenseOp(est)
    residual = (op(op.adjoint(kspace)) - kspace).norm() / kspace.norm()
    assert residual < 0.05, residual


def test_batch_axis_matches_single_estimates(data):
    mask = data["mask_acs"]
    second = fft2c(data["sens"] * data["img"].flip(-1))
    batch = torch.stack([data["kspace"], second]) * mask
    est = estimate_sensitivities(batch, mask, acs=data["acs"], method="walsh")
    assert est.shape == (2, N_COILS, 1, NY, NX)
    for b in range(2):
        single = estimate_sensitivities(batch[b], mask, acs=data["acs"], method="walsh")
        assert torch.allclose(est[b], single, atol=1e-5)


def test_coarse_grid_matches_full_grid(data):
    mask = _kt_mask(NT, NY, 4)
    kspace = data["kspace"] * mask
    fine = estimate_sensitivities(kspace, mask, method="walsh", calib_size=12, grid_stride=1)
    coarse = estimate_sensitivities(kspace, mask, method="walsh", calib_size=12, grid_stride=2)
    obj = data["obj"]
    assert _agreement(coarse, fine)[obj].mean() > 0.999
    assert _agreement(coarse, data["sens"])[obj].mean() > 0.99
    # Linear interpolation from the coarse grid (pixels j * stride) is exact for a linear ramp.
    ny, nx, stride = 11, 9, 3
    yy, xx = torch.meshgrid(
        torch.arange(ny, dtype=torch.float64), torch.arange(nx, dtype=torch.float64), indexing="ij"
    )
    ramp = torch.complex(2 * yy - xx, 0.5 * xx + 1)
    up = _upsample_linear(ramp[::stride, ::stride], stride, (ny, nx))
    assert torch.allclose(up[:10, :7], ramp[:10, :7])  # inside the coarse grid's hull
    assert torch.allclose(up[10], up[9]) and torch.allclose(up[:, 7], up[:, 6])  # held constant beyond


def test_methods_agree_as_complex_maps(data):
    """All methods share the virtual-coil phase reference, so their maps are interchangeable."""
    mask, acs, obj = data["mask_acs"], data["acs"], data["obj"]
    maps = {m: estimate_sensitivities(data["kspace"] * mask, mask, acs=acs, method=m) for m in METHODS}
    for a in METHODS:
        for b in METHODS:
            dist = torch.linalg.vector_norm(maps[a] - maps[b], dim=-4)[0]
            assert dist[obj].max() < 0.15, (a, b, dist[obj].max())


def test_calibration_size_is_limited_to_sampled_centre(data):
    # Only 12 ACS lines: calibrating with calib_size=24 must not use the missing lines.
    acs = torch.zeros(1, NY, 1, dtype=torch.bool)
    acs[:, NY // 2 - 6 : NY // 2 + 6] = True
    est = estimate_sensitivities(data["kspace"] * acs, acs, acs=acs, calib_size=24)
    assert _agreement(est, data["sens"])[data["obj"]].mean() > 0.99


def test_walsh_row_blocks_match_one_block(data, monkeypatch):
    mask, acs = data["mask_acs"], data["acs"]
    kspace = data["kspace"] * mask
    whole = estimate_sensitivities(kspace, mask, acs=acs, method="walsh")
    monkeypatch.setattr(coil_sensitivity, "_WALSH_BLOCK_ELEMENTS", N_COILS**2 * NX * 7)  # 7-row blocks
    blocks = estimate_sensitivities(kspace, mask, acs=acs, method="walsh")
    assert torch.allclose(blocks, whole, atol=1e-5)


@pytest.mark.parametrize("method", ["walsh", "inati"])
def test_torch_methods_are_differentiable(method):
    gen = torch.Generator().manual_seed(4)
    k = torch.randn(3, 1, 8, 8, dtype=torch.complex128, generator=gen, requires_grad=True)
    mask = torch.ones(1, 8, 8, dtype=torch.bool)

    def f(k):
        return estimate_sensitivities(k, mask, method=method, calib_size=6, threshold=0.0, n_iter=3, kernel_size=3)

    assert torch.autograd.gradcheck(f, (k,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["walsh", "inati", "espirit"])
def test_cuda_matches_cpu(data, method):
    mask = data["mask_acs"]
    kspace = data["kspace"] * mask
    cpu = estimate_sensitivities(kspace, mask, acs=data["acs"], method=method)
    gpu = estimate_sensitivities(kspace.cuda(), mask.cuda(), acs=data["acs"].cuda(), method=method)
    assert gpu.device.type == "cuda"
    assert _agreement(gpu.cpu(), cpu)[data["obj"]].mean() > 0.999


def test_bad_input_errors(data):
    kspace, mask = data["kspace"], data["mask_acs"]
    with pytest.raises(ValueError, match="complex"):
        estimate_sensitivities(kspace.abs(), mask)
    with pytest.raises(ValueError, match=r"\[\.\.\., coil, time, ky, kx\]"):
        estimate_sensitivities(kspace[0], mask)
    with pytest.raises(ValueError, match="does not broadcast"):
        estimate_sensitivities(kspace, mask[:, :50])
    with pytest.raises(ValueError, match="enlarge"):
        estimate_sensitivities(kspace, torch.ones(2, 1, NT, NY, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="real"):
        estimate_sensitivities(kspace, mask.to(torch.complex64))
    with pytest.raises(ValueError, match="no sampled calibration data"):
        estimate_sensitivities(kspace, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="fully sampled centre"):
        estimate_sensitivities(kspace, _kt_mask(NT, NY, 4)[:1])  # R = 4 lattice in one frame
    with pytest.raises(ValueError, match="unknown coil sensitivity method"):
        estimate_sensitivities(kspace, mask, method="sos")
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibration_kspace(kspace, mask, method="mean")
    with pytest.raises(ValueError, match="needs an acs mask"):
        calibration_kspace(kspace, mask, method="acs")
    with pytest.raises(ValueError, match="kernel_size"):
        estimate_sensitivities(kspace, mask, kernel_size=4)
    with pytest.raises(ValueError, match="grid_stride"):
        estimate_sensitivities(kspace, mask, grid_stride=0)
