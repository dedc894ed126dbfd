"""Dot-product tests and behaviour of the physics operators."""

from __future__ import annotations

import pytest
import torch

from recon.conventions import (
    channels_to_complex,
    complex_to_channels,
    fft2c,
    fft_time,
    ifft2c,
    ifft_time,
    rss,
)
from recon.operators import FourierOp, SamplingOp, SenseOp, SensitivityOp, inner_product

DTYPES = [(torch.complex64, 1e-4), (torch.complex128, 1e-10)]


def _rand(shape, dtype, gen):
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    return torch.complex(torch.randn(shape, generator=gen, dtype=real), torch.randn(shape, generator=gen, dtype=real))


def _dot_test(op, x, y, tol):
    lhs = inner_product(op(x), y)
    rhs = inner_product(x, op.adjoint(y))
    assert torch.allclose(lhs, rhs, rtol=tol, atol=tol * abs(lhs).item()), (lhs, rhs)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_fourier_dot_product_and_unitary(dtype, tol):
    g = torch.Generator().manual_seed(0)
    op = FourierOp()
    x, y = _rand((2, 3, 4, 17, 16), dtype, g), _rand((2, 3, 4, 17, 16), dtype, g)
    _dot_test(op, x, y, tol)
    assert torch.allclose(op.normal(x), x, atol=tol * 10)
    assert torch.allclose(torch.linalg.vector_norm(op(x)), torch.linalg.vector_norm(x), rtol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_sensitivity_dot_product(dtype, tol):
    g = torch.Generator().manual_seed(1)
    sens = _rand((2, 5, 1, 12, 11), dtype, g)
    op = SensitivityOp(sens)
    _dot_test(op, _rand((2, 4, 12, 11), dtype, g), _rand((2, 5, 4, 12, 11), dtype, g), tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_sampling_dot_product(dtype, tol):
    g = torch.Generator().manual_seed(2)
    mask = torch.rand((4, 12, 1), generator=g) > 0.5
    op = SamplingOp(mask)
    _dot_test(op, _rand((2, 3, 4, 12, 10), dtype, g), _rand((2, 3, 4, 12, 10), dtype, g), tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("time_maps", [False, True])
def test_sense_dot_product(dtype, tol, time_maps):
    g = torch.Generator().manual_seed(3)
    nt = 4
    sens = _rand((2, 6, nt if time_maps else 1, 16, 15), dtype, g)
    mask = torch.rand((nt, 16, 15), generator=g) > 0.7
    op = SenseOp(sens, mask)
    _dot_test(op, _rand((2, nt, 16, 15), dtype, g), _rand((2, 6, nt, 16, 15), dtype, g), tol)
    # composition of the three operators gives the same operator
    composed = SamplingOp(mask) @ FourierOp() @ SensitivityOp(sens)
    x = _rand((2, nt, 16, 15), dtype, g)
    assert torch.allclose(composed(x), op(x))
    y = _rand((2, 6, nt, 16, 15), dtype, g)
    assert torch.allclose(composed.H(y), op.adjoint(y))


def test_sense_is_differentiable():
    g = torch.Generator().manual_seed(4)
    sens = _rand((1, 3, 1, 8, 8), torch.complex64, g)
    op = SenseOp(sens, torch.ones(2, 8, 1))
    x = _rand((1, 2, 8, 8), torch.complex64, g).requires_grad_(True)
    loss = op.normal(x).abs().sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad.abs()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_sense_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(5)
    sens = _rand((1, 4, 1, 16, 16), torch.complex64, g)
    mask = torch.rand((3, 16, 1), generator=g) > 0.5
    x = _rand((1, 3, 16, 16), torch.complex64, g)
    cpu = SenseOp(sens, mask)(x)
    gpu = SenseOp(sens.cuda(), mask.cuda())(x.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-5)


def test_fft_centring_and_conventions():
    x = torch.zeros(1, 8, 9, dtype=torch.complex64)
    x[0, 4, 4] = 1.0  # centre pixel -> flat k-space with zero phase
    k = fft2c(x)
    assert torch.allclose(k, torch.full_like(k, 1 / (72**0.5)), atol=1e-6)
    const = torch.ones(1, 8, 9, dtype=torch.complex64)
    kc = fft2c(const)
    assert kc.abs().argmax().item() == 4 * 9 + 4  # DC at index n // 2
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=1e-6)
    t = _rand((3, 7, 4, 4), torch.complex128, torch.Generator().manual_seed(6))
    assert torch.allclose(ifft_time(fft_time(t)), t)
    coils = _rand((2, 3, 4, 5, 5), torch.complex64, torch.Generator().manual_seed(7))
    assert torch.allclose(rss(coils), coils.abs().pow(2).sum(1).sqrt())
    z = _rand((2, 3, 5, 5), torch.complex64, torch.Generator().manual_seed(8))
    assert torch.equal(channels_to_complex(complex_to_channels(z)), z)


def test_bad_input_messages():
    sens = torch.ones(1, 4, 1, 8, 8, dtype=torch.complex64)
    op = SenseOp(sens, torch.ones(2, 8, 1))
    with pytest.raises(ValueError, match="complex"):
        op(torch.ones(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\[1, 2, 8, 9\]"):
        op(torch.ones(1, 2, 8, 9, dtype=torch.complex64))
    with pytest.raises(ValueError, match="does not broadcast"):
        SenseOp(sens, torch.ones(3, 8, 1))(torch.ones(1, 2, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="coil"):
        op.adjoint(torch.ones(1, 3, 2, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex"):
        SensitivityOp(torch.ones(1, 4, 1, 8, 8))
    with pytest.raises(ValueError, match="even channel count"):
        channels_to_complex(torch.ones(1, 3, 4))
