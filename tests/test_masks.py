"""Sampling masks: acceleration bookkeeping, calibration logic, patterns, names, seeds, errors."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from recon.masks import (
    DENSITIES,
    PATTERNS,
    R_TOLERANCE,
    SamplingMask,
    cmrxrecon_name,
    make_mask,
    parse_cmrxrecon_name,
)
from recon.operators import SamplingOp

ACCELS = (4, 8, 10, 12, 16, 20, 24)
SIZES = ((160, 160), (246, 512), (204, 448), (256, 256), (175, 133))
LINE_PATTERNS = ("uniform", "kt_uniform", "kt_gaussian")
KT_PATTERNS = ("kt_uniform", "kt_gaussian", "kt_radial")


def _lines(m: SamplingMask) -> torch.Tensor:
    """Bool [time, ky] for a line pattern (checks the mask is constant along kx)."""
    assert torch.equal(m.mask, m.mask[:, :, :1].expand_as(m.mask)), "line mask varies along kx"
    return m.mask[:, :, 0]


def _central(n: int, width: int) -> range:
    return range(n // 2 - width // 2, n // 2 - width // 2 + width)


@pytest.mark.parametrize("ny,nx", SIZES)
@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_effective_r_within_tolerance(pattern: str, accel: int, ny: int, nx: int) -> None:
    nt = 12
    m = make_mask(pattern, accel, (nt, ny, nx), seed=3)
    assert m.mask.dtype == torch.bool and m.mask.shape == (nt, ny, nx)
    n = int(m.mask.sum())
    assert m.r_effective == pytest.approx(nt * ny * nx / n)
    assert abs(m.r_effective - accel) <= R_TOLERANCE * accel, m.describe()
    per_frame = m.samples_per_frame
    assert int(per_frame.max() - per_frame.min()) <= (1 if pattern == "kt_radial" else nx)
    if pattern != "kt_radial":
        _lines(m)
    if m.acs is not None:
        assert m.calibration == "acs"
        assert bool(m.mask[m.acs].all()), "ACS region not fully sampled"
        assert m.r_cmrxrecon > m.r_effective
    else:
        assert m.calibration == "time_average"
        assert m.r_cmrxrecon == pytest.approx(m.r_effective)


@pytest.mark.parametrize("pattern", KT_PATTERNS)
@pytest.mark.parametrize("accel", (4, 8, 24))
@pytest.mark.parametrize("ny,nx", ((160, 160), (175, 133), (246, 512)))
def test_kt_patterns_differ_between_consecutive_frames(pattern: str, accel: int, ny: int, nx: int) -> None:
    m = make_mask(pattern, accel, (12, ny, nx))
    changed = (m.mask[1:] != m.mask[:-1]).flatten(1).any(dim=1)
    assert bool(changed.all()), f"{pattern} R={accel}: frames {torch.nonzero(~changed).flatten().tolist()} repeat"


def test_uniform_is_static_when_lines_per_frame_is_integral() -> None:
    m = make_mask("uniform", 8, (12, 160, 160))  # 20 lines per frame
    assert bool((m.mask == m.mask[:1]).all())
    lines = _lines(m)[0]
    assert bool(lines[160 // 2]), "uniform lattice must contain the centre line ny//2"
    # equispaced: spacing 8 everywhere
    idx = torch.nonzero(lines).flatten()
    assert torch.unique(torch.diff(idx)).tolist() == [8]
    cm = make_mask("uniform", 8, (12, 246, 512), convention="cmrxrecon")
    assert bool((cm.mask == cm.mask[:1]).all())


@pytest.mark.parametrize("accel", (12, 24))
def test_uniform_frames_share_one_lattice_when_budget_is_fractional(accel: int) -> None:
    m = make_mask("uniform", accel, (12, 246, 512))  # 20.5 / 10.25 lines per frame
    lines = _lines(m)
    common = lines.all(dim=0)
    extra = (lines & ~common).sum(dim=1)
    assert int(extra.max()) == 1 and int(extra.min()) == 0
    assert int((lines.any(dim=0) & ~common).sum()) == 1  # the same extra line in every longer frame


def test_kt_uniform_is_a_sheared_lattice_covering_kspace() -> None:
    m = make_mask("kt_uniform", 8, (20, 160, 160))  # 20 lines/frame: no ACS, spacing 8 <= 20 frames
    lines = _lines(m)
    assert m.acs is None
    for t in range(20):
        assert torch.unique(torch.diff(torch.nonzero(lines[t]).flatten())).tolist() == [8]
    offsets = [int(torch.nonzero(lines[t]).flatten()[0]) % 8 for t in range(20)]
    assert all((b - a) % 8 == 1 for a, b in zip(offsets, offsets[1:])), offsets
    assert bool(lines.any(dim=0).all()), "union over time should cover every ky line"


def test_kt_gaussian_density_concentrates_at_centre() -> None:
    m = make_mask("kt_gaussian", 8, (200, 256, 64), acs_lines=0, seed=1)
    freq = _lines(m).double().mean(dim=0)
    centre = freq[128 - 16 : 128 + 16].mean()
    edge = torch.cat([freq[:32], freq[-32:]]).mean()
    assert centre > 2.5 * edge > 0


def test_kt_focuss_density_is_steeper_and_keeps_the_budget() -> None:
    """At 24x without a per-frame ACS the kt-FOCUSS density puts more lines near the centre than the
    default one, with the same count in every frame and the same calibration coverage."""
    shape = (200, 256, 8)
    broad = make_mask("kt_gaussian", 24, shape, seed=3)
    steep = make_mask("kt_gaussian", 24, shape, seed=3, density="kt-focuss")
    assert broad.density == DENSITIES[0] == "broad" and steep.density == "kt-focuss"
    assert torch.equal(broad.mask, make_mask("kt_gaussian", 24, shape, seed=3, density="broad").mask)
    assert torch.equal(broad.samples_per_frame, steep.samples_per_frame)
    assert steep.calibration == broad.calibration == "time_average" and steep.union_coverage == 1.0
    assert steep.r_effective == broad.r_effective
    b, s = _lines(broad).double().mean(dim=0), _lines(steep).double().mean(dim=0)
    inner = slice(128 - 13, 128 + 13)  # |ky| < ny / 20
    outer = torch.cat([b[:64], b[-64:]]).mean(), torch.cat([s[:64], s[-64:]]).mean()  # |ky| >= ny / 4
    assert s[inner].mean() > 1.5 * b[inner].mean()  # measured 0.146 vs 0.080 (seed 3)
    assert outer[1] < 0.5 * outer[0]  # measured 0.005 vs 0.022
    assert s[128] > 1.5 * b[128]  # the centre line, in more frames: 0.16 vs 0.09
    assert "kt-focuss density" in steep.describe() and "density" not in broad.describe()


def test_density_is_recorded_for_kt_gaussian_only() -> None:
    assert make_mask("kt_radial", 8, (4, 32, 32)).density is None
    assert make_mask("kt_gaussian", 8, (4, 32, 32)).density == "broad"
    with pytest.raises(ValueError, match="density"):
        SamplingMask(mask=torch.ones(2, 4, 4, dtype=torch.bool), acs=None, pattern="kt_gaussian", requested_accel=1,
                     convention="effective", calibration="time_average", seed=0, density="steep")


def test_kt_radial_spokes_go_through_centre_and_rotate() -> None:
    m = make_mask("kt_radial", 16, (8, 128, 128), calibration="time_average")
    assert bool(m.mask[:, 64, 64].all())
    # a radial frame is point-symmetric about the centre except for the cut last spoke
    frame = m.mask[0, 1:, 1:]
    sym = (frame & frame.flip(0).flip(1)).sum() / frame.sum()
    assert sym > 0.9
    # not Cartesian lines: many ky rows are partially sampled
    partial = ((m.mask[0].sum(dim=1) > 0) & (m.mask[0].sum(dim=1) < 128)).sum()
    assert partial > 64


@pytest.mark.parametrize("pattern", LINE_PATTERNS)
def test_auto_acs_present_when_budget_allows(pattern: str) -> None:
    m = make_mask(pattern, 4, (12, 256, 256))
    assert m.calibration == "acs" and m.acs is not None
    rows = torch.zeros(256, dtype=torch.bool)
    rows[list(_central(256, 16))] = True
    assert torch.equal(m.acs[:, :, 0], rows.expand(12, 256))
    assert bool(_lines(m)[:, rows].all())
    # boundary: 32 lines/frame, ACS costs exactly half -> present; 30 lines -> absent
    assert make_mask(pattern, 8, (12, 256, 256)).acs is not None
    assert make_mask(pattern, 256 * 12 / 361, (12, 256, 256)).acs is None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_auto_acs_absent_at_high_r(pattern: str) -> None:
    m = make_mask(pattern, 24, (12, 160, 160), acs_lines=16)
    if pattern == "kt_radial":  # 16x16 = 256 points of a 1067-point frame budget: still fits
        assert m.acs is not None
        square = torch.zeros(160, 160, dtype=torch.bool)
        square[72:88, 72:88] = True  # centre 80, 8 below and 7 above
        assert torch.equal(m.acs[0], square) and torch.equal(m.calibration_region(), square)
        assert make_mask(pattern, 24, (12, 160, 160), acs_lines=24).acs is None
    else:
        assert m.acs is None and m.calibration == "time_average"


def test_forced_calibration_modes() -> None:
    m = make_mask("kt_gaussian", 12, (12, 256, 256), calibration="acs")  # 21.3 lines/frame
    assert m.acs is not None and bool(m.mask[m.acs].all())
    assert make_mask("kt_gaussian", 4, (12, 256, 256), calibration="time_average").acs is None
    with pytest.raises(ValueError, match="allows only 6 per frame"):
        make_mask("kt_uniform", 24, (12, 160, 160), calibration="acs")
    with pytest.raises(ValueError, match="acs_lines > 0"):
        make_mask("kt_uniform", 4, (12, 160, 160), calibration="acs", acs_lines=0)


@pytest.mark.parametrize("pattern", KT_PATTERNS)
@pytest.mark.parametrize("ny,nx", SIZES)
def test_union_over_time_covers_centre_at_r24(pattern: str, ny: int, nx: int) -> None:
    m = make_mask(pattern, 24, (12, ny, nx), calibration="time_average", seed=7)
    region = m.calibration_region()
    assert int(region.sum()) == 16 * (16 if pattern == "kt_radial" else nx)
    union = m.mask.any(dim=0)
    assert bool(union[region].all()) and m.union_coverage == 1.0
    assert abs(m.r_effective - 24) <= R_TOLERANCE * 24


def test_time_average_needs_enough_samples_to_cover_centre() -> None:
    with pytest.raises(ValueError, match="cannot cover the central calibration region"):
        make_mask("kt_gaussian", 24, (1, 256, 256))
    m = make_mask("kt_gaussian", 24, (1, 256, 256), acs_lines=0)
    assert m.calibration == "time_average" and m.union_coverage == 1.0


@pytest.mark.parametrize("pattern", LINE_PATTERNS)
def test_cmrxrecon_convention_lines(pattern: str) -> None:
    m = make_mask(pattern, 24, (12, 246, 512), convention="cmrxrecon")
    lines = _lines(m)
    assert m.acs is not None and m.requested_accel == 24.0
    acs_rows = m.acs[0, :, 0]
    assert int(acs_rows.sum()) == 16
    assert (lines & acs_rows).sum(dim=1).tolist() == [16] * 12
    assert (lines & ~acs_rows).sum(dim=1).tolist() == [10] * 12  # round(246 / 24)
    assert m.r_effective == pytest.approx(246 / 26)
    assert m.r_cmrxrecon == pytest.approx(24.6)
    text = m.describe()
    assert "9.46" in text and "24.60" in text and "cmrxrecon" in text


def test_cmrxrecon_convention_radial_counts_points_outside_square() -> None:
    m = make_mask("kt_radial", 16, (6, 204, 448), convention="cmrxrecon")
    outside = (m.mask & ~m.acs).flatten(1).sum(dim=1)
    assert outside.tolist() == [round(204 * 448 / 16)] * 6
    assert m.r_cmrxrecon == pytest.approx(204 * 448 / round(204 * 448 / 16))
    assert m.r_effective == pytest.approx(204 * 448 / (round(204 * 448 / 16) + 256))


def test_r_cmrxrecon_in_effective_convention() -> None:
    m = make_mask("kt_gaussian", 4, (12, 256, 256))  # 64 lines/frame, 16 of them ACS
    assert m.r_effective == pytest.approx(4.0)
    assert m.r_cmrxrecon == pytest.approx(256 / 48)
    assert cmrxrecon_name(m) == "ktGaussian5.33"


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("accel", (4, 8, 10, 12.5, 24))
def test_name_round_trip(pattern: str, accel: float) -> None:
    m = make_mask(pattern, accel, (4, 160, 160), convention="cmrxrecon")
    name = cmrxrecon_name(m)
    assert parse_cmrxrecon_name(name) == (pattern, float(accel))
    again = make_mask(*parse_cmrxrecon_name(name), (4, 160, 160), convention="cmrxrecon")
    assert cmrxrecon_name(again) == name and torch.equal(again.mask, m.mask)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ktGaussian24", ("kt_gaussian", 24.0)),
        ("ktUniform8", ("kt_uniform", 8.0)),
        ("ktRadial16", ("kt_radial", 16.0)),
        ("Uniform4", ("uniform", 4.0)),
        ("ktgaussian10", ("kt_gaussian", 10.0)),
        ("cine_sax_mask_ktRadial24.mat", ("kt_radial", 24.0)),
    ],
)
def test_parse_cmrxrecon_name(name: str, expected: tuple[str, float]) -> None:
    assert parse_cmrxrecon_name(name) == expected


@pytest.mark.parametrize("name", ["ktGauss24", "Gaussian8", "ktUniform", "mask04", "ktRadial0.5", "xktRadial8"])
def test_parse_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ValueError, match="CMRxRecon"):
        parse_cmrxrecon_name(name)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_seeds_reproducible(pattern: str) -> None:
    shape = (8, 128, 96)
    a = make_mask(pattern, 8, shape, seed=11)
    b = make_mask(pattern, 8, shape, seed=11)
    assert torch.equal(a.mask, b.mask)
    c = make_mask(pattern, 8, shape, seed=12)
    if pattern in ("kt_gaussian", "kt_radial"):
        assert not torch.equal(a.mask, c.mask)
    else:  # deterministic lattices
        assert torch.equal(a.mask, c.mask)
    assert make_mask(pattern, 8, shape, seed=None).mask.shape == shape


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("spiral", 4, (12, 64, 64)), {}, "unknown sampling pattern 'spiral'.*kt_gaussian"),
        (("kt_gaussian", 0.5, (12, 64, 64)), {}, "R must be >= 1"),
        (("kt_gaussian", float("nan"), (12, 64, 64)), {}, "finite"),
        (("kt_gaussian", 4, (12, 64)), {}, r"3-tuple \(time, ky, kx\)"),
        (("kt_gaussian", 4, (12, 64.0, 64)), {}, "integers, got ky=64.0"),
        (("kt_gaussian", 4, (0, 64, 64)), {}, "positive, got time=0"),
        (("kt_gaussian", 4, (12, 64, -3)), {}, "positive, got kx=-3"),
        (("kt_gaussian", 4, (12, 64, 64)), {"acs_lines": 65}, "acs_lines=65 is larger than .*64"),
        (("kt_radial", 4, (12, 64, 16)), {"acs_lines": 20}, "does not fit in kx=16"),
        (("kt_gaussian", 4, (12, 64, 64)), {"acs_lines": -1}, "non-negative"),
        (("kt_gaussian", 4, (12, 64, 64)), {"convention": "fastmri"}, "unknown R convention"),
        (("kt_gaussian", 4, (12, 64, 64)), {"calibration": "espirit"}, "unknown calibration"),
        (("kt_gaussian", 4, (12, 64, 64)), {"seed": -1}, "seed"),
        (("uniform", 24, (1, 64, 64)), {"acs_lines": 0}, r"R=24 cannot be reached.*\[1, 64, 64\].*achievable R is 21.3"),
        (("kt_gaussian", 200, (12, 64, 64)), {"convention": "cmrxrecon"}, "0 further"),
        (("kt_gaussian", 1.5, (12, 64, 64)), {"convention": "cmrxrecon", "acs_lines": 40}, "more than the 64"),
        (("kt_gaussian", 4, (12, 64, 64)), {"density": "steep"}, "unknown kt_gaussian density 'steep'.*kt-focuss"),
        (("kt_radial", 4, (12, 64, 64)), {"density": "kt-focuss"}, "kt_gaussian only, not to kt_radial"),
    ],
)
def test_bad_input_messages(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_mask(*args, **kwargs)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_full_size_mask_is_fast(pattern: str) -> None:
    make_mask(pattern, 8, (4, 32, 32))  # warm-up
    start = time.perf_counter()
    for accel in (4, 24):
        make_mask(pattern, accel, (20, 256, 256), seed=5)
    assert (time.perf_counter() - start) / 2 < 1.0


def test_mask_plugs_into_sampling_operator() -> None:
    m = make_mask("kt_radial", 8, (3, 32, 24))
    k = torch.ones(2, 3, 32, 24, dtype=torch.complex64)  # [coil, time, ky, kx]
    out = SamplingOp(m.mask)(k)
    assert torch.equal(out != 0, m.mask.expand_as(out))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.sampled_from(PATTERNS),
    accel=st.floats(1.0, 24.0),
    nt=st.integers(1, 16),
    ny=st.integers(8, 96),
    nx=st.integers(16, 96),
    acs=st.integers(0, 16),
)
def test_property_r_tolerance_or_clear_error(pattern: str, accel: float, nt: int, ny: int, nx: int, acs: int) -> None:
    assume(acs <= ny)
    try:
        m = make_mask(pattern, accel, (nt, ny, nx), acs_lines=acs, seed=0)
    except ValueError as err:
        text = str(err)
        assert f"[{nt}, {ny}, {nx}]" in text
        assert "achievable R" in text or "calibration region" in text
        return
    assert abs(m.r_effective - accel) <= R_TOLERANCE * accel
    assert m.mask.shape == (nt, ny, nx)
    if m.acs is not None:
        assert bool(m.mask[m.acs].all())
    elif pattern != "uniform":
        assert m.union_coverage == 1.0
    assert math.isfinite(m.r_effective)


def test_masks_command_reports_the_density_and_writes_the_files(tmp_path, capsys) -> None:
    import numpy as np

    from cardiomm.cli import main

    png, npy = tmp_path / "m.png", tmp_path / "m.npy"
    assert main(["masks", "--accel", "24", "--shape", "10", "128", "32", "--density", "kt-focuss",
                 "--png", str(png), "--npy", str(npy)]) == 0
    out = capsys.readouterr().out
    assert "kt_gaussian, kt-focuss density" in out and "R_effective=" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    expected = make_mask("kt_gaussian", 24, (10, 128, 32), seed=0, density="kt-focuss").mask.numpy()
    assert np.array_equal(np.load(npy), expected)
    assert main(["masks", "--pattern", "kt_radial", "--density", "kt-focuss"]) == 2
    assert "kt_gaussian only" in capsys.readouterr().err
