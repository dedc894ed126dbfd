"""Linear operators with ``forward`` and ``adjoint``, composable with ``@``.

An operator ``A`` maps a tensor ``x`` to ``A(x)``; ``A.H`` is its adjoint (as an operator),
``A.adjoint(y)`` applies it, ``A @ B`` is the composition ``x -> A(B(x))`` and
``A.normal(x) = A^H A x``.  Every concrete operator is tested with the dot-product test
``<A x, y> == <x, A^H y>`` (see ``tests/test_operators.py``).

Operators are ``torch.nn.Module`` s so that the tensors they hold (coil maps, masks)
move with ``.to(device)`` and they can sit inside networks; all of them are differentiable.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearOperator(nn.Module):
    """Base class: subclasses implement :meth:`forward` and :meth:`adjoint`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(x))

    @property
    def H(self) -> "LinearOperator":  # noqa: N802 - mathematical notation
        """The adjoint operator ``A^H``."""
        return AdjointOp(self)

    def __matmul__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return ComposedOp(self, other)


class AdjointOp(LinearOperator):
    """``A^H`` of a given operator ``A``."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.forward(y)

    @property
    def H(self) -> LinearOperator:  # noqa: N802
        return self.op


class ComposedOp(LinearOperator):
    """``outer @ inner``: ``x -> outer(inner(x))``, adjoint ``y -> inner^H(outer^H(y))``."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        super().__init__()
        self.outer = outer
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


def inner_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Complex inner product ``<a, b> = sum(conj(a) * b)`` (a scalar tensor)."""
    if a.shape != b.shape:
        raise ValueError(f"inner product of tensors with shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.sum(a.conj() * b) if torch.is_complex(a) or torch.is_complex(b) else torch.sum(a * b)
