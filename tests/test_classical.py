"""Classical reconstructions on a small synthetic multi-coil cine (recon.classical)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sigpy.mri
import torch

from recon.classical import (
    METHODS,
    cg_sense,
    cs_wavelet,
    kt_sparse_sense,
    lowrank_plus_sparse,
    singular_value_threshold,
    soft_threshold,
    st_tv,
    zero_filled,
)
from recon.classical.problem import setup_problem
from recon.conventions import ifft2c, rss
from recon.operators import SenseOp

N, NT, NC = 64, 16, 8


# ----------------------------------------------------------------------------- synthetic data
def _ellipse(yy, xx, cy, cx, ry, rx):
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).double()


def _cine(n: int = N, n_t: int = NT) -> torch.Tensor:
    """[time, y, x] complex128: ellipses whose radii/intensity vary periodically on a static background."""
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, n, dtype=torch.float64), torch.linspace(-1, 1, n, dtype=torch.float64), indexing="ij"
    )
    static = 0.3 * _ellipse(yy, xx, 0, 0, 0.8, 0.9) + 0.3 * _ellipse(yy, xx, -0.45, 0.4, 0.2, 0.25)
    frames = []
    for t in range(n_t):
        s = 0.5 * (1 + math.cos(2 * math.pi * t / n_t))
        r = 0.2 + 0.08 * s
        img = static * (1 - _ellipse(yy, xx, 0.05, 0.0, r + 0.06, r + 0.06))
        img = img + 0.5 * _ellipse(yy, xx, 0.05, 0.0, r + 0.06, r + 0.06)
        lv = _ellipse(yy, xx, 0.05, 0.0, r, r)
        img = img * (1 - lv) + lv
        rv = _ellipse(yy, xx, 0.05, -0.4, 0.15 + 0.05 * s, 0.08 + 0.03 * s)
        img = img * (1 - rv) + (0.8 + 0.1 * s) * rv
        frames.append(img)
    x = torch.stack(frames)
    return x * torch.exp(1j * (0.5 * xx + 0.3 * yy))


def _maps(n_c: int = NC, n: int = N) -> torch.Tensor:
    s = torch.from_numpy(sigpy.mri.birdcage_maps((n_c, n, n), r=1.3))
    return (s / torch.sqrt((s.abs() ** 2).sum(0, keepdim=True))).unsqueeze(1)  # [coil, 1, y, x]


def _kt_mask(n_t: int, n: int, accel: float, acs: int, seed: int) -> torch.Tensor:
    """[time, ky, 1] bool: random lines, different in every frame, Gaussian density around the centre."""
    g = torch.Generator().manual_seed(seed)
    ky = torch.arange(n, dtype=torch.float64)
    density = torch.exp(-0.5 * ((ky - n // 2) / (0.2 * n)) ** 2)
    n_lines = round(n / accel)
    mask = torch.zeros(n_t, n, dtype=torch.bool)
    for t in range(n_t):
        mask[t, n // 2 - acs // 2 : n // 2 - acs // 2 + acs] = True
        p = density.clone()
        p[mask[t]] = 0
        if n_lines > acs:
            mask[t, torch.multinomial(p, n_lines - acs, replacement=False, generator=g)] = True
    return mask[:, :, None]


def _randn_complex(shape, g: torch.Generator) -> torch.Tensor:
    return torch.complex(
        torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    )


def _case(accel: float, acs: int, seed: int = 0, noise: float = 1e-3, dtype=torch.complex64):
    x = _cine()
    sens = _maps()
    mask = _kt_mask(NT, N, accel, acs, seed)
    k = SenseOp(sens, mask)(x)
    g = torch.Generator().manual_seed(seed + 100)
    k = k + noise * _randn_complex(k.shape, g) * mask
    return x.to(dtype), k.to(dtype), mask, sens.to(dtype)


def _psnr(rec: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.abs().max() ** 2 / (rec - ref).abs().pow(2).mean()))


def _psnr_best_scale(rec: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR after the least-squares complex scaling of ``rec`` (fair to the unnormalised zero-filled image)."""
    a = torch.sum(rec.conj() * ref) / torch.sum(rec.abs() ** 2)
    return _psnr(a * rec, ref)


@pytest.fixture(scope="module")
def r10():
    """R ~ 10.7 k-t data without ACS, plus the frame-by-frame baselines (computed once)."""
    x, k, m, s = _case(accel=10.7, acs=0, seed=1)
    return {
        "x": x, "k": k, "m": m, "s": s,
        "zf": _psnr_best_scale(zero_filled(k, m, s), x),
        "cs": _psnr(cs_wavelet(k, m, s, max_iter=30), x),
    }


# ----------------------------------------------------------------------------- proximal operators
def test_soft_threshold_complex_keeps_phase():
    g = torch.Generator().manual_seed(0)
    z = torch.complex(torch.randn(1000, generator=g), torch.randn(1000, generator=g))
    out = soft_threshold(z, 0.5)
    mag = z.abs()
    assert torch.allclose(out.abs(), torch.clamp(mag - 0.5, min=0), atol=1e-6)
    big = mag > 0.5
    assert torch.allclose(torch.angle(out[big]), torch.angle(z[big]), atol=1e-5)
    assert torch.all(out[~big] == 0)
    # real input and a per-entry threshold tensor
    r = torch.tensor([-2.0, -0.1, 0.0, 0.3, 3.0])
    thresholds = torch.tensor([1.0, 1.0, 1.0, 0.1, 0.5])
    assert torch.allclose(soft_threshold(r, thresholds), torch.tensor([-1.0, 0.0, 0.0, 0.2, 2.5]))


def test_singular_value_threshold_matches_numpy_and_batches():
    g = torch.Generator().manual_seed(1)
    a = _randn_complex((3, 6, 40), g)
    out, s = singular_value_threshold(a, 2.0)
    for i in range(3):
        u, sv, vh = np.linalg.svd(a[i].numpy(), full_matrices=False)
        ref = (u * np.maximum(sv - 2.0, 0)) @ vh
        assert np.allclose(out[i].numpy(), ref, atol=1e-10)
        assert np.allclose(s[i].numpy(), sv)
    # relative threshold: per matrix, times its sigma_max; leading value optionally kept
    rel, s = singular_value_threshold(a, 0.3, relative=True, shrink_leading=False)
    s_rel = torch.linalg.svdvals(rel)
    expect = torch.clamp(s - 0.3 * s[:, :1], min=0)
    expect[:, 0] = s[:, 0]
    assert torch.allclose(s_rel, expect, atol=1e-9)
    # threshold above sigma_max gives zero
    assert torch.allclose(singular_value_threshold(a, 1e3)[0], torch.zeros_like(a))


# ----------------------------------------------------------------------------- zero-filled / CG-SENSE
def test_zero_filled_is_the_adjoint_and_rss():
    x, k, m, s = _case(accel=4, acs=8)
    zf = zero_filled(k, m, s)
    assert torch.allclose(zf, SenseOp(s, m).adjoint(k), atol=1e-6)
    zf_rss = zero_filled(k, m)
    assert zf_rss.dtype == k.dtype and torch.all(zf_rss.imag == 0)
    assert torch.allclose(zf_rss.real, rss(ifft2c(k * m)), atol=1e-6)
    assert zf.shape == (NT, N, N)


def test_cg_sense_fully_sampled_recovers_image():
    x, k, _, s = _case(accel=1, acs=0, noise=0.0, dtype=torch.complex128)
    full = torch.ones(NT, N, 1, dtype=torch.bool)
    rec = cg_sense(k, full, s, max_iter=10)
    assert float((rec - x).norm() / x.norm()) < 1e-3


def test_cg_sense_beats_zero_filled_at_r4():
    x, k, m, s = _case(accel=4, acs=12, seed=3)
    objectives = []
    rec = cg_sense(k, m, s, max_iter=30, callback=lambda info: objectives.append(float(info.objective)))
    zf = zero_filled(k, m, s)
    assert _psnr(rec, x) > _psnr_best_scale(zf, x) + 1.5  # even against the best-scaled zero-filled image
    assert all(b <= a + 1e-6 * abs(a) for a, b in zip(objectives, objectives[1:]))  # CG decreases its quadratic


# ----------------------------------------------------------------------------- k-t methods
@pytest.mark.parametrize(
    "method,kwargs",
    [(kt_sparse_sense, {}), (lowrank_plus_sparse, {}), (st_tv, {"max_iter": 50})],
    ids=["kt-sparse", "lps", "st-tv"],
)
def test_kt_methods_beat_frame_by_frame(r10, method, kwargs):
    rec = method(r10["k"], r10["m"], r10["s"], **kwargs)
    p = _psnr(rec, r10["x"])
    assert r10["cs"] > r10["zf"]  # sanity: CS at least beats the zero-filled image
    assert p > r10["cs"] + 8.0, (p, r10["cs"])
    assert p > r10["zf"] + 8.0, (p, r10["zf"])


def test_fista_objective_decreases():
    x, k, m, s = _case(accel=8, acs=0, seed=4)
    obj = []
    kt_sparse_sense(k, m, s, max_iter=40, callback=lambda info: obj.append(float(info.objective)))
    assert len(obj) == 40 and obj[-1] < 0.7 * obj[0]
    rises = [b - a for a, b in zip(obj, obj[1:]) if b > a]
    assert sum(rises) < 1e-3 * (obj[0] - obj[-1])  # monotone up to rounding / restarts


def test_lipschitz_bound_covers_power_iteration():
    """The step 1 / max sum|S|^2 is safe: ||A||^2 (power iteration) never exceeds the bound."""
    _, k, m, s = _case(accel=6, acs=4, seed=5)
    prob = setup_problem(k, m, s)
    v = torch.randn(prob.adjoint_y.shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    for _ in range(30):
        v = prob.op.normal(v)
        v = v / v.norm()
    est = float(torch.sum(v.conj() * prob.op.normal(v)).real)
    assert est <= float(prob.lipschitz.max()) * (1 + 1e-4)
    assert est > 0.5  # and it is not a loose bound


# ----------------------------------------------------------------------------- shared behaviour
FAST = {
    "cg-sense": {"max_iter": 5},
    "cs": {"max_iter": 5},
    "kt-sparse": {"max_iter": 5},
    "lps": {"max_iter": 5},
    "st-tv": {"max_iter": 5},
    "zero-filled": {},
    "view-sharing": {},
}


def test_registry_names():
    assert set(METHODS) == {"zero-filled", "view-sharing", "cg-sense", "cs", "kt-sparse", "lps", "st-tv"}


@pytest.mark.parametrize("name", sorted(FAST))
def test_batch_of_two_equals_two_calls_and_scale_invariance(name):
    x1, k1, m1, s1 = _case(accel=6, acs=4, seed=6)
    _, k2, m2, _ = _case(accel=6, acs=4, seed=7)
    k2 = 37.0 * k2  # a different data scale in the second item
    single = [METHODS[name](k, m, s1, **FAST[name]) for k, m in ((k1, m1), (k2, m2))]
    batched = METHODS[name](torch.stack([k1, k2]), torch.stack([m1, m2]), s1, **FAST[name])
    assert batched.shape == (2, NT, N, N)
    for i in range(2):
        err = (batched[i] - single[i]).norm() / single[i].norm()
        assert float(err) < 1e-4, (name, i, float(err))
    # same result (times the factor) for scaled data: the weights are scale-invariant
    assert float((single[1] / 37.0 - METHODS[name](k2 / 37.0, m2, s1, **FAST[name])).norm() / single[1].norm()) < 1e-4


@pytest.mark.parametrize("name", ["cg-sense", "kt-sparse", "lps", "st-tv"])
def test_callback_sees_every_iteration(name):
    _, k, m, s = _case(accel=6, acs=4, seed=8)
    seen = []
    out = METHODS[name](k, m, s, max_iter=3, callback=lambda info: seen.append(info))
    assert [i.iteration for i in seen] == [1, 2, 3]
    assert seen[-1].image.shape == out.shape and seen[-1].objective.shape == ()
    assert torch.allclose(seen[-1].image, out)


def test_time_varying_maps_and_kspace_shaped_mask():
    x, k, m, s = _case(accel=6, acs=4, seed=9)
    s_t = s.expand(NC, NT, N, N).contiguous()
    a = kt_sparse_sense(k, m, s, max_iter=5)
    b = kt_sparse_sense(k, m.unsqueeze(0), s_t, max_iter=5)  # mask [1, time, ky, 1] with a coil axis
    assert torch.allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    _, k, m, s = _case(accel=6, acs=4, seed=10)
    with pytest.raises(ValueError, match="complex"):
        cg_sense(k.real.contiguous(), m, s)
    with pytest.raises(ValueError, match="sens"):
        cg_sense(k, m, s[:-1])  # wrong coil count
    with pytest.raises(ValueError, match="sens"):
        kt_sparse_sense(k, m, s[..., :-1])  # wrong image size
    with pytest.raises(ValueError, match="mask"):
        st_tv(k, m[:-1], s)  # wrong number of frames
    with pytest.raises(ValueError, match="lam"):
        kt_sparse_sense(k, m, s, lam=-1.0)
    with pytest.raises(ValueError, match="lam_s"):
        lowrank_plus_sparse(k, m, s, lam_s=-0.1)
    with pytest.raises(ValueError, match="lam_t_ratio"):
        st_tv(k, m, s, lam_t_ratio=-1)
    with pytest.raises(ValueError, match="max_iter"):
        cg_sense(k, m, s, max_iter=0)
    with pytest.raises(ValueError, match="sens"):
        cg_sense(k, m, None)
    with pytest.raises(ValueError, match="lam"):
        cs_wavelet(k, m, s, lam=float("nan"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["cg-sense", "kt-sparse", "lps", "st-tv", "cs"])
def test_cuda_matches_cpu(name):
    _, k, m, s = _case(accel=6, acs=4, seed=11)
    cpu = METHODS[name](k, m, s, **FAST[name])
    gpu = METHODS[name](k.cuda(), m.cuda(), s.cuda(), **FAST[name])
    assert gpu.device.type == "cuda"
    assert float((gpu.cpu() - cpu).norm() / cpu.norm()) < 1e-3
