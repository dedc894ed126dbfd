"""CG-SENSE: Tikhonov-regularised least squares solved by conjugate gradients."""

from __future__ import annotations

import torch

from recon.classical.problem import Callback, IterationInfo, check_lambda, check_max_iter, setup_problem
from recon.classical.solvers import conjugate_gradient


def cg_sense(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    sens: torch.Tensor,
    *,
    lam: float = 0.0,
    max_iter: int = 30,
    tol: float = 1e-6,
    callback: Callback | None = None,
) -> torch.Tensor:
    """CG-SENSE (Pruessmann et al. 2001): solve ``(A^H A + lam I) x = A^H y`` frame by frame.

    The frames are solved jointly (batched tensors) but are independent: ``A`` does not couple
    time.  ``lam`` is scale-invariant (the system is linear in the data); ``lam = 0`` is plain
    SENSE, where early stopping (``max_iter``) is the regulariser.

    Args:
        kspace: ``[..., coil, time, ky, kx]`` complex, zeros where not sampled.
        mask: broadcastable to ``[..., time, ky, kx]``.
        sens: ``[..., coil, 1|time, y, x]``, ``sum_c |S_c|^2 = 1``.
        lam: Tikhonov weight (>= 0).
        max_iter: maximum CG iterations.
        tol: per-item stop at ``||residual|| <= tol * ||A^H y||``.
        callback: receives :class:`IterationInfo` with the CG quadratic objective
            ``0.5 x^H (A^H A + lam I) x - Re x^H A^H y`` per item.
    Returns:
        ``[..., time, y, x]`` complex on ``kspace``'s device.
    """
    lam = check_lambda(lam, "lam")
    max_iter = check_max_iter(max_iter)
    tol = check_lambda(tol, "tol")
    prob = setup_problem(kspace, mask, sens)

    def normal(x: torch.Tensor) -> torch.Tensor:
        out = prob.op.normal(x)
        return out + lam * x if lam > 0 else out

    cb = None
    if callback is not None:
        cb = lambda it, x, obj: callback(IterationInfo(it, prob.unscale(x), obj))  # noqa: E731
    x = conjugate_gradient(normal, prob.adjoint_y, max_iter=max_iter, tol=tol, callback=cb)
    return prob.unscale(x)
