"""k-t view sharing: the classical baseline and the start of the CardioMM cascades."""

from __future__ import annotations

import pytest
import torch

from cardiomm.model.cardiomm_net import CardioMMNet
from recon.classical import METHODS, share_views
from recon.classical.view_sharing import view_sharing
from recon.conventions import ifft2c, rss


def test_view_sharing_keeps_measured_and_averages_the_rest():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 4, 6, 5, dtype=torch.complex64, generator=g)
    mask = torch.zeros(1, 1, 4, 6, 1, dtype=torch.bool)
    mask[0, 0, 0, 1] = mask[0, 0, 2, 1] = True  # line 1 measured in frames 0 and 2
    mask[0, 0, 3, 4] = True  # line 4 only in frame 3
    y = k * mask
    out = share_views(y, mask)
    m = mask.expand(y.shape)
    assert torch.equal(out[m], y[m])  # measured samples untouched
    assert torch.allclose(out[:, :, 1, 1], 0.5 * (k[:, :, 0, 1] + k[:, :, 2, 1]))
    assert torch.allclose(out[:, :, 0, 4], k[:, :, 3, 4])
    assert torch.count_nonzero(out[:, :, :, 0]) == 0  # never measured: stays zero


def test_network_accepts_view_sharing_and_rejects_unknown_start():
    net = CardioMMNet(num_cascades=1, channels=4, depth=1, sens_channels=2, sens_depth=1, calib_max_size=8,
                      context_dim=4, initial_kspace="view-sharing")
    k = torch.randn(1, 2, 3, 16, 12, dtype=torch.complex64)
    mask = torch.zeros(1, 3, 16, 12, dtype=torch.bool)
    mask[:, :, 6:10] = True
    mask[:, 0, ::3] = True
    out = net(k * mask[:, None], mask)
    assert out.shape == (1, 3, 16, 12) and torch.isfinite(out.abs()).all()
    with pytest.raises(ValueError, match="initial_kspace"):
        CardioMMNet(num_cascades=1, initial_kspace="magic")


def test_view_sharing_accepts_a_mask_without_batch_and_coil_axes():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(4, 6, 5, generator=g) > 0.6  # [time, ky, kx]
    y = torch.randn(2, 3, 4, 6, 5, dtype=torch.complex64, generator=g) * mask
    torch.testing.assert_close(share_views(y, mask), share_views(y, mask[None, None]), atol=0, rtol=0)
    per_coil = mask.expand(2, 3, 4, 6, 5)
    torch.testing.assert_close(share_views(y, mask), share_views(y, per_coil), atol=0, rtol=0)


def test_view_sharing_method_combines_the_shared_kspace():
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(4, 8, 6, generator=g) > 0.5  # [time, ky, kx]
    y = torch.randn(3, 4, 8, 6, dtype=torch.complex64, generator=g) * mask  # [coil, time, ky, kx]
    torch.testing.assert_close(view_sharing(y, mask).abs(), rss(ifft2c(share_views(y, mask))))
    sens = torch.randn(3, 1, 8, 6, dtype=torch.complex64, generator=g)
    sens = sens / sens.abs().pow(2).sum(0, keepdim=True).sqrt()
    combined = (sens.conj() * ifft2c(share_views(y, mask))).sum(0)
    torch.testing.assert_close(METHODS["view-sharing"](y, mask, sens), combined)
    full = torch.ones_like(mask)  # fully sampled: nothing to share
    torch.testing.assert_close(share_views(y, full), y, atol=0, rtol=0)


def test_prior_gate_starts_the_network_at_its_view_sharing_input():
    torch.manual_seed(0)
    net = CardioMMNet(num_cascades=2, channels=4, depth=1, sens_channels=2, sens_depth=1, calib_max_size=8,
                      context_dim=4, initial_kspace="view-sharing", prior_gate=True).eval()
    mask = torch.zeros(1, 3, 16, 12, dtype=torch.bool)
    mask[:, :, 6:10] = True
    mask[:, 0, ::3] = True
    mask[:, 1, 1::3] = True
    y = torch.randn(1, 2, 3, 16, 12, dtype=torch.complex64) * mask[:, None]
    with torch.no_grad():
        image, sens = net(y, mask, return_sensitivities=True)
        expected = (sens.conj() * ifft2c(share_views(y, mask))).sum(1)
        torch.testing.assert_close(image, expected, atol=1e-5, rtol=1e-4)
        for cascade in net.cascades:
            cascade.prior_gate.fill_(0.5)
        assert not torch.allclose(net(y, mask), expected, atol=1e-3)  # the gates let the denoisers act
