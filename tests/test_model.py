"""Tests of the CardioMM network (cardiomm.model): shapes, data consistency, coil maps, context, memory options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cardiomm.model import CardioMMNet, ComplexUNet, ContextBatch, ContextEncoder, SSIML1Loss, UnrolledCascade, ssim
from cardiomm.model.context import CATEGORICAL_FIELDS, CONTINUOUS_FIELDS, canonical_vendor
from cardiomm.model.fft_layout import expand, from_fft_order, mask_to_fft_order, reduce, to_fft_order
from cardiomm.model.unet2dt import SpatioTemporalConv, _upsample
from recon.coil_simulation import simulate_coil_maps
from recon.conventions import fft2c, ifft2c
from recon.masks import make_mask
from recon.metrics import ssim as reference_ssim

TINY = dict(num_cascades=2, channels=4, depth=2, sens_channels=4, sens_depth=2, context_dim=8, calib_max_size=16)

KNOWN_CONTEXT = {
    "modality": "cine", "view": "sax", "field_strength_t": 3.0, "vendor": "SIEMENS", "n_coils": 4,
    "r_effective": 8.0, "r_cmrxrecon": 10.0, "pattern": "kt_gaussian", "calibration": "acs",
}


def synthetic_case(coils: int = 4, frames: int = 6, ny: int = 40, nx: int = 36, accel: float = 4.0, seed: int = 0,
                   pattern: str = "kt_gaussian", acs_lines: int = 8):
    """A beating disc imaged by simulated coils, undersampled: (kspace [1,C,T,ky,kx], mask, acs, target [1,T,y,x])."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(ny) - ny / 2, torch.arange(nx) - nx / 2, indexing="ij")
    t = torch.arange(frames).reshape(-1, 1, 1)
    radius = 0.25 * min(ny, nx) * (1 + 0.2 * torch.cos(2 * math.pi * t / frames))
    body = ((yy / (0.45 * ny)) ** 2 + (xx / (0.45 * nx)) ** 2 < 1).float()
    disc = (yy**2 + xx**2 < radius**2).float()
    phase = torch.exp(1j * 0.3 * torch.rand(1, generator=g) * xx / nx)
    image = ((0.3 * body + 0.7 * disc) * phase).to(torch.complex64)  # [T, y, x]
    sens = simulate_coil_maps(coils, (ny, nx))[:, None]  # [C, 1, y, x]
    full = fft2c(sens * image)  # [C, T, ky, kx]
    m = make_mask(pattern, accel, (frames, ny, nx), seed=seed, acs_lines=acs_lines)
    noise = 0.001 * torch.complex(torch.randn(full.shape, generator=g), torch.randn(full.shape, generator=g))
    kspace = (full + noise) * m.mask
    target = ifft2c(full).abs().pow(2).sum(0).sqrt()
    acs = m.acs if m.acs is not None else torch.zeros_like(m.mask)
    return kspace[None].to(torch.complex64), m.mask[None], acs[None], target[None].float()


@pytest.mark.parametrize(
    ("frames", "ny", "nx"), [(6, 40, 36), (5, 33, 47), (1, 32, 32), (3, 24, 29)]
)
def test_output_shapes_for_odd_even_sizes_and_frame_counts(frames: int, ny: int, nx: int) -> None:
    torch.manual_seed(0)
    net = CardioMMNet(**TINY).eval()
    pattern = "uniform" if frames == 1 else "kt_gaussian"
    kspace, mask, acs, _ = synthetic_case(frames=frames, ny=ny, nx=nx, pattern=pattern)
    with torch.no_grad():
        image, sens = net(kspace, mask, acs, KNOWN_CONTEXT, return_sensitivities=True)
    assert image.shape == (1, frames, ny, nx) and image.dtype == torch.complex64
    assert sens.shape == (1, 4, 1, ny, nx)
    assert torch.isfinite(image.real).all() and torch.isfinite(image.imag).all()


def test_batch_of_two_with_unbatched_mask_and_no_acs() -> None:
    torch.manual_seed(0)
    net = CardioMMNet(**TINY).eval()
    k1, mask, _, _ = synthetic_case(seed=1)
    k2, _, _, _ = synthetic_case(seed=2)
    with torch.no_grad():
        out = net(torch.cat([k1, k2 * mask]), mask[0], None, [KNOWN_CONTEXT, None])
    assert out.shape == (2, 6, 40, 36)


def test_3d_convolutions_and_cg_data_consistency_run() -> None:
    torch.manual_seed(0)
    net = CardioMMNet(**{**TINY, "conv_mode": "3d", "dc_mode": "cg", "cg_iterations": 2}).eval()
    kspace, mask, acs, _ = synthetic_case(ny=33, nx=31)
    with torch.no_grad():
        out = net(kspace, mask, acs)
    assert out.shape == (1, 6, 33, 31)


class ZeroDenoiser(torch.nn.Module):
    def forward(self, image: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros_like(image)


def test_soft_dc_keeps_measured_samples_exactly_with_eta_one_and_zero_denoiser() -> None:
    kspace, mask, _, _ = synthetic_case()
    sens = simulate_coil_maps(4, (40, 36))[None, :, None]
    cascade = UnrolledCascade(ZeroDenoiser(), dc_mode="soft", dc_weight_init=1.0)
    current = torch.randn(kspace.shape, dtype=torch.complex64)  # an arbitrary estimate
    mask5 = mask[:, None]
    new = cascade(current, kspace, mask5, sens)
    m = mask5.expand_as(kspace)
    # sampled entries are the measurements (k - (k - y) = y up to float rounding of |k| ~ 1)
    torch.testing.assert_close(new[m], kspace[m], rtol=0, atol=1e-6)
    assert torch.equal(new[~m], current[~m])  # the rest is untouched without a prior


def test_soft_dc_weight_is_learned_and_interpolates() -> None:
    kspace, mask, _, _ = synthetic_case()
    sens = simulate_coil_maps(4, (40, 36))[None, :, None]
    cascade = UnrolledCascade(ZeroDenoiser(), dc_mode="soft", dc_weight_init=0.25)
    current = torch.zeros_like(kspace)
    new = cascade(current, kspace, mask[:, None], sens)
    torch.testing.assert_close(new, 0.25 * kspace)
    new.abs().sum().backward()
    assert cascade.dc_weight.grad is not None and cascade.dc_weight.grad.abs() > 0


def test_cg_dc_with_zero_denoiser_fits_the_data() -> None:
    kspace, mask, _, _ = synthetic_case()
    sens = simulate_coil_maps(4, (40, 36)).to(torch.complex64)
    sens = (sens / sens.abs().pow(2).sum(0).sqrt().clamp_min(1e-6))[None, :, None]
    cascade = UnrolledCascade(ZeroDenoiser(), dc_mode="cg", cg_iterations=30, dc_weight_init=1e-4)
    kspace, mask = to_fft_order(kspace), mask_to_fft_order(mask)  # the cascades' k-space layout
    new = cascade(torch.zeros_like(kspace), kspace, mask[:, None], sens)
    residual = ((new - kspace) * mask[:, None]).norm() / kspace.norm()
    assert residual < 0.05


def test_sensitivity_maps_have_unit_root_sum_of_squares() -> None:
    torch.manual_seed(0)
    net = CardioMMNet(**TINY).eval()
    for pattern in ("kt_gaussian", "kt_radial", "uniform"):
        kspace, mask, acs, target = synthetic_case(pattern=pattern, accel=6.0)
        for acs_arg in (acs, None):  # ACS calibration, and time-averaged k-space without ACS
            with torch.no_grad():
                _, sens = net(kspace, mask, acs_arg, return_sensitivities=True)
            power = sens.abs().pow(2).sum(dim=1)[:, 0]  # [batch, y, x]
            signal = target.amax(dim=1) > 0.1 * target.max()
            torch.testing.assert_close(power[signal], torch.ones_like(power[signal]), atol=1e-4, rtol=0)


def test_walsh_started_maps_begin_at_walsh_and_learn_a_gated_correction() -> None:
    from cardiomm.model.sensitivity_net import SensitivityNet, walsh_start_maps

    torch.manual_seed(0)
    kspace, mask, acs, target = synthetic_case(pattern="kt_gaussian", accel=8.0)
    net = SensitivityNet(channels=4, depth=1, context_dim=8, calib_max_size=24, init="walsh")
    maps = net(kspace, mask, acs)
    start = walsh_start_maps(kspace, mask, acs, 24)
    # gate 0: exactly the (normalised) Walsh maps, unit power everywhere (no background masking)
    torch.testing.assert_close(maps, start / start.abs().pow(2).sum(1, keepdim=True).sqrt(), atol=1e-6, rtol=0)
    torch.testing.assert_close(maps.abs().pow(2).sum(1), torch.ones_like(maps.real[:, 0]), atol=1e-4, rtol=0)
    # the correction is learned through the gate, which gets a gradient at 0
    (maps.real.sum() + maps.imag.sum()).backward()
    assert net.gate.grad is not None and float(net.gate.grad.abs()) > 0
    with torch.no_grad():
        net.gate.fill_(0.5)
    assert not torch.allclose(net(kspace, mask, acs), maps)
    # without ACS the time-averaged k-space calibrates; without any calibration data: a clear error
    assert net(kspace, mask, None).shape == maps.shape
    only_edges = torch.zeros_like(mask)
    only_edges[..., ::7, :] = True
    only_edges[..., mask.shape[-2] // 2 - 2 : mask.shape[-2] // 2 + 2, :] = False
    with pytest.raises(ValueError, match="cannot calibrate coil maps"):
        net(kspace * only_edges[:, None], only_edges, None)
    with pytest.raises(ValueError, match="sensitivity init"):
        SensitivityNet(init="espirit")


def test_untrained_cardiomm_with_walsh_maps_already_explains_the_measured_data() -> None:
    torch.manual_seed(0)
    kspace, mask, acs, target = synthetic_case(pattern="kt_gaussian", accel=6.0)
    net = CardioMMNet(**{**TINY, "sens_init": "walsh"}).eval()
    with torch.no_grad():
        image, sens = net(kspace, mask, acs, return_sensitivities=True)
    assert image.shape == target.shape
    # the best SENSE fit of the measured samples with these maps (100 Landweber steps) leaves < 8 %
    # of the data unexplained (the true coil maps: 2.7 %; the untrained "calibration" network: 11 %)
    x = torch.zeros_like(kspace[:, 0])
    for _ in range(100):
        x = x + (sens.conj() * ifft2c(torch.where(mask[:, None], kspace - fft2c(sens * x[:, None]), 0))).sum(1)
    residual = torch.where(mask[:, None], kspace - fft2c(sens * x[:, None]), 0).norm() / kspace.norm()
    assert float(residual) < 0.08


def test_context_batch_parsing() -> None:
    known = ContextBatch.from_context(KNOWN_CONTEXT, 2)
    assert known.categories.shape == (2, len(CATEGORICAL_FIELDS)) and bool((known.categories > 0).all())
    assert bool(known.present.all()) and known.values.shape == (2, len(CONTINUOUS_FIELDS))
    unknown = ContextBatch.from_context({"modality": "ultrasound", "vendor": "Acme", "r_effective": None}, 1)
    assert bool((unknown.categories == 0).all()) and not bool(unknown.present.any())
    collated = ContextBatch.from_context({"modality": ["cine", None], "n_coils": [10, None]}, 2)
    assert collated.categories[0, 0] > 0 and collated.categories[1, 0] == 0
    assert collated.present[:, list(CONTINUOUS_FIELDS).index("n_coils")].tolist() == [True, False]
    assert canonical_vendor("GE MEDICAL SYSTEMS") == "ge" and canonical_vendor("Philips Medical Systems") == "philips"
    assert canonical_vendor(None) is None and canonical_vendor("Unknown Corp") is None
    with pytest.raises(ValueError, match="expected 3"):
        ContextBatch.from_context({"modality": ["cine", "cine"]}, 3)
    with pytest.raises(ValueError, match="context"):
        ContextBatch.from_context(42, 1)


def test_unknown_context_works_and_conditioning_changes_the_output() -> None:
    torch.manual_seed(0)
    net = CardioMMNet(**TINY).eval()
    kspace, mask, acs, _ = synthetic_case()
    with torch.no_grad():
        with_context = net(kspace, mask, acs, KNOWN_CONTEXT)
        without = net(kspace, mask, acs, None)
        partial = net(kspace, mask, acs, {"modality": "cine", "vendor": "never-seen", "field_strength_t": None})
        again = net(kspace, mask, acs, KNOWN_CONTEXT)
    assert torch.isfinite(without.abs()).all()
    torch.testing.assert_close(with_context, again)  # deterministic in eval mode
    scale = with_context.abs().mean()
    assert (with_context - without).abs().mean() > 1e-4 * scale
    assert (with_context - partial).abs().mean() > 1e-4 * scale


def test_context_encoder_field_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    enc = ContextEncoder(8, field_dropout=0.5)
    batch = ContextBatch.from_context(KNOWN_CONTEXT, 64)
    enc.eval()
    c = enc(batch)
    assert torch.allclose(c, c[:1].expand_as(c))  # no dropout: every item identical
    enc.train()
    c = enc(batch)
    assert not torch.allclose(c, c[:1].expand_as(c))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = CardioMMNet(**TINY, context_dropout=0.0)
    checkpointed = CardioMMNet(**TINY, context_dropout=0.0, gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    kspace, mask, acs, target = synthetic_case(frames=4, ny=24, nx=28)
    grads = []
    for net in (plain, checkpointed):
        net.train()
        loss = SSIML1Loss()(net(kspace, mask, acs, KNOWN_CONTEXT).abs(), target, target.amax())
        net.zero_grad()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_few_optimisation_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    net = CardioMMNet(**TINY, context_dropout=0.0)
    kspace, mask, acs, target = synthetic_case(frames=4, ny=32, nx=32, accel=6.0)
    loss_fn = SSIML1Loss(ssim_weight=1.0, l1_weight=1.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = loss_fn(net(kspace, mask, acs, KNOWN_CONTEXT).abs(), target, target.amax())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


def test_bf16_autocast_keeps_physics_in_float32() -> None:
    torch.manual_seed(0)
    net = CardioMMNet(**TINY).eval()
    kspace, mask, acs, _ = synthetic_case(frames=3, ny=24, nx=24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(kspace, mask, acs, KNOWN_CONTEXT)
        reference = None
    with torch.no_grad():
        reference = net(kspace, mask, acs, KNOWN_CONTEXT)
    assert out.dtype == torch.complex64 and torch.isfinite(out.abs()).all()
    assert (out - reference).abs().mean() < 0.1 * reference.abs().mean()


def test_temporal_variation_error_sees_lost_motion_that_ssim_and_l1_barely_see() -> None:
    from cardiomm.model.losses import temporal_variation_error

    _, _, _, target = synthetic_case(frames=8)  # a disc whose radius changes over time
    blurred = target.mean(dim=1, keepdim=True).expand_as(target)  # every frame = the mean frame
    assert float(temporal_variation_error(target, target)[0]) == 0.0
    assert float(temporal_variation_error(blurred, target)[0]) == pytest.approx(1.0)
    assert float(temporal_variation_error(3 * target, 3 * target)[0]) == 0.0
    # half the motion: half the error; a static intensity offset: no error
    half = blurred + 0.5 * (target - blurred)
    assert float(temporal_variation_error(half, target)[0]) == pytest.approx(0.5, abs=1e-5)
    assert float(temporal_variation_error(target + 0.2, target)[0]) == pytest.approx(0.0, abs=1e-5)
    # in the loss: only with a weight, and frames = 1 adds nothing
    peak = target.amax()
    plain, motion = SSIML1Loss(1.0, 0.1), SSIML1Loss(1.0, 0.1, temporal_weight=0.5)
    assert float(motion(blurred, target, peak) - plain(blurred, target, peak)) == pytest.approx(0.5, abs=1e-4)
    one = target[:, :1]
    assert float(motion(one * 0.9, one, peak)) == pytest.approx(float(plain(one * 0.9, one, peak)))
    with pytest.raises(ValueError, match="temporal_weight"):
        SSIML1Loss(0.0, 0.0, temporal_weight=-1.0)
    with pytest.raises(ValueError, match="equal shapes"):
        temporal_variation_error(target, target[:, :2])


def test_complex_unet_pads_and_crops_and_undoes_normalisation() -> None:
    torch.manual_seed(0)
    unet = ComplexUNet(channels=4, depth=2, context_dim=8).eval()
    for p in unet.unet.head.parameters():
        torch.nn.init.zeros_(p)  # network output 0 -> the wrapper returns the input's mean
    x = torch.randn(2, 3, 13, 17, dtype=torch.complex64) * 5 + (2 - 1j)
    with torch.no_grad():
        out = unet(x, torch.randn(2, 8))
    assert out.shape == x.shape
    torch.testing.assert_close(out, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["2+1d", "3d"])
def test_temporal_convolution_mixes_neighbouring_frames_only(mode: str) -> None:
    conv = SpatioTemporalConv(1, 1, temporal_kernel=3, mode=mode)
    torch.nn.init.constant_(conv.spatial.weight, 1.0)
    if conv.temporal is not None:
        torch.nn.init.constant_(conv.temporal.weight, 1.0)
    x = torch.zeros(1, 1, 5, 8, 8)
    x[0, 0, 0, 4, 4] = 1.0  # an impulse in the first frame
    with torch.no_grad():
        energy = conv(x).abs().sum(dim=(0, 1, 3, 4))
    assert energy[0] > 0 and energy[1] > 0  # reaches the next frame
    assert torch.all(energy[2:] == 0)  # no wrap-around to the last frame, nothing further
    for frames in (1, 2):
        assert conv(torch.randn(1, 1, frames, 6, 6)).shape == (1, 1, frames, 6, 6)


def test_bad_inputs_give_clear_errors() -> None:
    net = CardioMMNet(**TINY).eval()
    kspace, mask, acs, _ = synthetic_case()
    with pytest.raises(ValueError, match=r"\[batch, coil, time, ky, kx\]"):
        net(kspace[0], mask, acs)
    with pytest.raises(ValueError, match="sampling mask"):
        net(kspace, mask[..., :10], acs)
    with pytest.raises(ValueError, match="complex"):
        net(kspace.abs(), mask, acs)
    with pytest.raises(ValueError, match="num_cascades"):
        CardioMMNet(num_cascades=0)
    with pytest.raises(ValueError, match="data-consistency mode"):
        CardioMMNet(**{**TINY, "dc_mode": "hard"})


def test_torch_ssim_matches_the_reported_metric() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 20, 23, generator=g)
    prediction = target + 0.2 * torch.rand(2, 3, 20, 23, generator=g)
    ours = ssim(prediction, target, target.amax(dim=(1, 2, 3)))
    for b in range(2):
        expected = reference_ssim(target[b], prediction[b], data_range=float(target[b].max()))
        assert abs(float(ours[b]) - expected) < 1e-4
    assert float(ssim(target, target, 1.0).min()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="smaller than"):
        ssim(target[..., :5, :5], target[..., :5, :5], 1.0)


@pytest.mark.parametrize("ny, nx", [(8, 6), (7, 9), (6, 5)])
def test_fft_order_layout_matches_the_centred_sense_model(ny: int, nx: int) -> None:
    g = torch.Generator().manual_seed(ny * nx)
    k = torch.randn(1, 3, 2, ny, nx, dtype=torch.complex64, generator=g)
    sens = torch.randn(1, 3, 1, ny, nx, dtype=torch.complex64, generator=g)
    image = torch.randn(1, 2, ny, nx, dtype=torch.complex64, generator=g)
    k_fft = to_fft_order(k)
    torch.testing.assert_close(from_fft_order(k_fft), k, atol=1e-6, rtol=0)
    torch.testing.assert_close(reduce(k_fft, sens), (sens.conj() * ifft2c(k)).sum(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_fft_order(expand(image, sens)), fft2c(sens * image[:, None]), atol=1e-5, rtol=1e-5)
    mask = torch.rand(2, ny, nx, generator=g) > 0.5
    torch.testing.assert_close(to_fft_order(k * mask), k_fft * mask_to_fft_order(mask))


@pytest.mark.parametrize("temporal_kernel", [1, 3, 5])
def test_factorised_convolutions_equal_their_conv3d_definition(temporal_kernel: int) -> None:
    torch.manual_seed(temporal_kernel)
    conv = SpatioTemporalConv(3, 5, temporal_kernel, "2+1d")
    x = torch.randn(2, 3, 6, 10, 12)
    expected = conv.spatial(x)
    if conv.temporal is not None:
        expected = conv.temporal(expected)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)
    up = torch.nn.ConvTranspose3d(3, 4, (1, 2, 2), stride=(1, 2, 2), bias=False)
    torch.testing.assert_close(_upsample(up, x), up(x), atol=1e-5, rtol=1e-5)


def test_cpu_options_pixel_unshuffle_and_virtual_coils() -> None:
    from cardiomm.model.cardiomm_net import compress_coils

    kspace, mask, acs, _ = synthetic_case(coils=6, ny=33, nx=31)
    full = compress_coils(kspace, 6)  # all components: a unitary change of coil basis
    torch.testing.assert_close(full.norm(), kspace.norm(), rtol=1e-4, atol=0)
    four = compress_coils(kspace, 4)
    assert four.shape == (1, 4, *kspace.shape[2:])
    assert bool((four[:, :, ~mask[0]] == 0).all())  # unsampled entries stay zero
    assert four.norm() <= kspace.norm() * (1 + 1e-5) and four.norm() > 0.8 * kspace.norm()
    torch.manual_seed(0)
    net = CardioMMNet(**{**TINY, "pixel_unshuffle": 2, "virtual_coils": 4}).eval()
    with torch.no_grad():
        out, sens = net(kspace, mask, acs, return_sensitivities=True)
    assert out.shape == (1, 6, 33, 31) and sens.shape[1] == 4 and torch.isfinite(out.real).all()
    with pytest.raises(ValueError, match="pixel_unshuffle"):
        ComplexUNet(pixel_unshuffle=0)
    with pytest.raises(ValueError, match="virtual_coils"):
        CardioMMNet(**{**TINY, "virtual_coils": 0})


def test_fused_norm_film_activation_equals_its_definition_with_gradients() -> None:
    from cardiomm.model.film import FiLM
    from cardiomm.model.unet2dt import instance_norm_film_leaky

    torch.manual_seed(3)
    film = FiLM(5, 4, init_scale=1.0)
    torch.nn.init.normal_(film.linear.bias)
    h = (torch.randn(2, 4, 3, 6, 7) * 3 + 5).requires_grad_()
    c = torch.randn(2, 5)
    norm = torch.nn.InstanceNorm3d(4)
    expected = torch.nn.functional.leaky_relu(film(norm(h), c), 0.2)
    channels_last = h.contiguous(memory_format=torch.channels_last_3d)
    for x in (h, channels_last):
        torch.testing.assert_close(instance_norm_film_leaky(x, film, c), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        instance_norm_film_leaky(h, film, None), torch.nn.functional.leaky_relu(norm(h), 0.2), atol=1e-5, rtol=1e-5
    )
    weights = torch.randn_like(expected)
    grads = torch.autograd.grad((expected * weights).sum(), [h, *film.parameters()])
    fused = torch.autograd.grad((instance_norm_film_leaky(h, film, c) * weights).sum(), [h, *film.parameters()])
    for a, b in zip(fused, grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_complex_unet_blocks_are_pixel_unshuffle_of_real_and_imaginary_channels() -> None:
    from recon.conventions import complex_to_channels

    net = ComplexUNet(channels=4, depth=1, context_dim=3, pixel_unshuffle=2)
    x = torch.randn(2, 3, 8, 12, dtype=torch.complex64)
    with torch.no_grad():
        blocks = net._to_blocks(x)
    channels = complex_to_channels(x.unsqueeze(1), dim=1)  # [batch, 2, time, y, x]
    frames = channels.transpose(1, 2).reshape(6, 2, 8, 12)
    expected = torch.nn.functional.pixel_unshuffle(frames, 2).reshape(2, 3, 8, 4, 6).transpose(1, 2)
    torch.testing.assert_close(blocks, expected, atol=0, rtol=0)
    assert blocks.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(net._from_blocks(blocks), x, atol=0, rtol=0)


def test_coil_compression_over_the_measured_samples_equals_the_full_sum() -> None:
    from cardiomm.model.cardiomm_net import compress_coils

    kspace, mask, _, _ = synthetic_case(coils=6, ny=16, nx=15)
    masks = mask.expand(kspace.shape[0], *mask.shape[-3:])
    torch.testing.assert_close(compress_coils(kspace, 3, masks), compress_coils(kspace, 3), atol=1e-5, rtol=1e-4)


def test_coil_compression_does_not_depend_on_the_eigenvector_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    """LAPACK may return any eigenvector with either sign (it did: summing the covariance over the
    measured samples flipped two virtual coils of a phantom scan and moved CardioMM's PSNR by 0.2 dB)."""
    from cardiomm.model.cardiomm_net import compress_coils

    kspace, _, _, _ = synthetic_case(coils=6, ny=16, nx=15)
    reference = compress_coils(kspace, 3)
    eigh = torch.linalg.eigh

    def other_signs(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, v = eigh(a)
        return w, v * torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0]).to(v.dtype)

    monkeypatch.setattr(torch.linalg, "eigh", other_signs)
    torch.testing.assert_close(compress_coils(kspace, 3), reference, atol=0, rtol=0)


def test_soft_data_consistency_is_the_documented_update() -> None:
    torch.manual_seed(1)
    cascade = UnrolledCascade(ComplexUNet(channels=4, depth=1, context_dim=3), dc_mode="soft", dc_weight_init=0.3)
    k = torch.randn(1, 2, 3, 8, 8, dtype=torch.complex64, requires_grad=True)
    y = torch.randn(1, 2, 3, 8, 8, dtype=torch.complex64) * (torch.rand(1, 1, 3, 8, 1) > 0.5)
    mask = y[:, :1] != 0
    sens = torch.randn(1, 2, 1, 8, 8, dtype=torch.complex64)
    out = cascade(k, y, mask, sens)
    prior = cascade.denoiser(reduce(k, sens))
    expected = k - cascade.dc_weight * mask * (k - y) - expand(prior, sens)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    (out.abs().sum()).backward()
    assert cascade.dc_weight.grad is not None and torch.isfinite(cascade.dc_weight.grad)
    assert k.grad is not None and torch.isfinite(k.grad.real).all()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("conv_mode, temporal_kernel, factor", [("2+1d", 3, 2), ("2+1d", 1, 1), ("3d", 3, 1)])
def test_inference_layout_computes_the_same_function_as_the_training_layout(
    conv_mode: str, temporal_kernel: int, factor: int, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one CPU thread takes the matrix-product path for the kt x 1 x 1 convolutions (conv_over_time)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    torch.manual_seed(7)
    net = ComplexUNet(channels=6, depth=2, context_dim=4, temporal_kernel=temporal_kernel, conv_mode=conv_mode,
                      pixel_unshuffle=factor)
    image = torch.randn(2, 5, 19, 22, dtype=torch.complex64) * 4 + 1j
    c = torch.randn(2, 4)
    with torch.enable_grad():
        training = net(image, c)
    with torch.no_grad():
        inference = net(image, c)
    assert training.requires_grad and not inference.requires_grad
    torch.testing.assert_close(inference, training.detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kt, bias", [(3, False), (5, True), (1, True)])
def test_conv_over_time_is_the_temporal_convolution(kt: int, bias: bool) -> None:
    from cardiomm.model.unet2dt import conv_over_time

    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 6, 7, 5, 4, generator=g).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(3, 6, kt, 1, 1, generator=g)
    b = torch.randn(3, generator=g) if bias else None
    out = conv_over_time(h, w, b)
    torch.testing.assert_close(out, F.conv3d(h, w, b, padding=(kt // 2, 0, 0)), atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("by_matmul", [True, False])
def test_channel_statistics_of_both_devices_paths(by_matmul: bool) -> None:
    from cardiomm.model.unet2dt import channel_statistics

    g = torch.Generator().manual_seed(2)
    values = torch.randn(2, 5000, 3, generator=g) * torch.tensor([1.0, 3.0, 0.5]) + torch.tensor([4.0, -2.0, 0.0])
    mean, variance = channel_statistics(values, by_matmul=by_matmul)
    torch.testing.assert_close(mean, values.mean(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(variance, values.var(dim=1, unbiased=False), atol=1e-4, rtol=1e-4)
