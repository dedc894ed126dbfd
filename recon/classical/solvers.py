"""Batched iterative solvers shared by the classical reconstructions.

"Batched" means every item of the leading axes is its own problem: step sizes, inner products
and stopping decisions are per item (reduced over the trailing ``[time, y, x]`` axes), so a
batch of two gives the same result as two single calls.
"""

from __future__ import annotations

from typing import Callable

import torch

from recon.classical.problem import IMAGE_AXES_DIMS

Operator = Callable[[torch.Tensor], torch.Tensor]


def batch_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item ``Re <a, b>`` over the image axes ``[time, y, x]`` -> ``[..., 1, 1, 1]`` (real)."""
    return torch.sum((a.conj() * b).real, dim=IMAGE_AXES_DIMS, keepdim=True)


def conjugate_gradient(
    normal_op: Operator,
    rhs: torch.Tensor,
    x0: torch.Tensor | None = None,
    *,
    max_iter: int = 30,
    tol: float = 1e-6,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Solve ``Q x = b`` for a Hermitian positive (semi-)definite ``Q`` by conjugate gradients.

    Args:
        normal_op: ``x -> Q x`` on ``[..., time, y, x]`` (e.g. ``A^H A + lam I``).
        rhs: ``b``, ``[..., time, y, x]``.
        x0: initial guess (zeros if ``None``).
        max_iter: maximum number of iterations.
        tol: per-item stop once ``||b - Q x|| <= tol * ||b||``; converged items are frozen
            while the others continue.
        callback: ``callback(iteration, x, objective)`` with ``objective`` the per-item value
            ``[...]`` of ``0.5 x^H Q x - Re x^H b`` (cheap: ``-0.5 Re <x, b + r>``).
    Returns:
        ``x``, same shape as ``rhs``.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - normal_op(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = batch_inner(r, r)
    stop = (tol * torch.sqrt(batch_inner(rhs, rhs))) ** 2
    for it in range(1, max_iter + 1):
        active = rr > stop
        if not bool(active.any()):
            break
        q = normal_op(p)
        pq = batch_inner(p, q)
        alpha = torch.where(active & (pq > 0), rr / torch.where(pq > 0, pq, torch.ones_like(pq)), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * q
        rr_new = batch_inner(r, r)
        beta = torch.where(active, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = torch.where(active, r + beta * p, p)
        rr = torch.where(active, rr_new, rr)
        if callback is not None:
            callback(it, x, -0.5 * batch_inner(x, rhs + r).flatten(-3).squeeze(-1))
    return x


def fista(
    gradient: Operator,
    prox: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    step: torch.Tensor | float,
    *,
    max_iter: int,
    restart: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """FISTA (Beck & Teboulle 2009) for ``min_x f(x) + g(x)`` with smooth ``f``.

    Args:
        gradient: ``x -> grad f(x)``.
        prox: ``(v, step) -> prox_{step * g}(v)``; ``step`` is a per-item tensor ``[..., 1, 1, 1]``.
        x0: starting point ``[..., time, y, x]``.
        step: ``1 / L`` with ``L`` a Lipschitz constant of ``grad f`` (number or per-item tensor).
        max_iter: number of iterations.
        restart: gradient-based adaptive restart of the momentum (O'Donoghue & Candes 2015),
            per item: the momentum is reset whenever it points uphill, which removes most of
            FISTA's non-monotone ripples and usually speeds it up.
        callback: ``callback(iteration, x)`` after every iteration.
    Returns:
        The last iterate ``x``.
    """
    step_t = torch.as_tensor(step, device=x0.device)
    if step_t.ndim == 0:
        step_t = step_t.expand(x0.shape[:-3] + (1, 1, 1))
    x = x0
    z = x0
    t = torch.ones_like(step_t, dtype=torch.float64)
    for it in range(1, max_iter + 1):
        x_new = prox(z - step_t * gradient(z), step_t)
        t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
        momentum = ((t - 1.0) / t_new).to(step_t.dtype)
        if restart:
            uphill = batch_inner(z - x_new, x_new - x) > 0
            momentum = torch.where(uphill, torch.zeros_like(momentum), momentum)
            t_new = torch.where(uphill, torch.ones_like(t_new), t_new)
        z = x_new + momentum * (x_new - x)
        x, t = x_new, t_new
        if callback is not None:
            callback(it, x)
    return x


__all__ = ["batch_inner", "conjugate_gradient", "fista"]
