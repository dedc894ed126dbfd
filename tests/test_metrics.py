"""Image-quality metrics against hand-computed values and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from recon.metrics import image_metrics, nmse, psnr, ssim


def _pair(seed=0, shape=(4, 32, 32)):
    rng = np.random.default_rng(seed)
    ref = rng.random(shape) + 1.0
    rec = ref + 0.05 * rng.standard_normal(shape)
    return ref, rec


def test_psnr_nmse_by_hand():
    ref = np.full((2, 4, 4), 2.0)
    rec = ref.copy()
    rec[0, 0, 0] = 1.0  # one error of 1 in 32 pixels
    assert nmse(ref, rec) == pytest.approx(1.0 / (32 * 4.0))
    assert psnr(ref, rec) == pytest.approx(10 * np.log10(4.0 / (1 / 32)))
    assert psnr(ref, ref) == float("inf")


def test_matches_scikit_image_and_accepts_complex_torch():
    ref, rec = _pair()
    assert psnr(ref, rec) == pytest.approx(peak_signal_noise_ratio(ref, rec, data_range=ref.max()))
    expected = np.mean([structural_similarity(a, b, data_range=ref.max(), win_size=7) for a, b in zip(ref, rec)])
    assert ssim(ref, rec) == pytest.approx(expected)
    phase = torch.exp(1j * torch.rand(ref.shape, dtype=torch.float64))
    m = image_metrics(torch.from_numpy(ref) * phase, torch.from_numpy(rec) * phase)
    assert m.psnr_db == pytest.approx(psnr(ref, rec))
    assert m.normalization == "volume"


def test_better_reconstruction_scores_better():
    ref, rec = _pair()
    worse = ref + 0.2 * np.random.default_rng(1).standard_normal(ref.shape)
    good, bad = image_metrics(ref, rec), image_metrics(ref, worse)
    assert good.psnr_db > bad.psnr_db and good.ssim > bad.ssim and good.nmse < bad.nmse


def test_cmrxrecon_normalisation_ignores_scale_and_offset():
    ref, rec = _pair()
    a = image_metrics(ref, rec, normalization="cmrxrecon")
    b = image_metrics(ref, 3.0 * rec + 0.5, normalization="cmrxrecon")
    assert a.psnr_db == pytest.approx(b.psnr_db) and a.ssim == pytest.approx(b.ssim)
    assert image_metrics(ref, 3.0 * rec).psnr_db < a.psnr_db  # the plain metric is not scale-invariant


def test_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(np.ones((2, 3, 3)), np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="all zeros"):
        nmse(np.zeros((3, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        ssim(np.ones((8, 8)), np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="unknown normalization"):
        image_metrics(np.ones((8, 8)), np.ones((8, 8)), normalization="foo")
