"""Shared set-up of the SENSE inverse problem solved by every classical reconstruction.

All methods take the same inputs (axes from :mod:`recon.conventions`):

* ``kspace``: ``[..., coil, time, ky, kx]`` complex, zeros where not sampled;
* ``mask``: bool (or 0/1) sampling mask broadcastable to the *image* axes
  ``[..., time, ky, kx]`` (e.g. ``[time, ky, kx]``, ``[time, ky, 1]``, ``[batch, time, ky, 1]``);
  a mask with as many axes as ``kspace`` is read as k-space shaped ``[..., 1, time, ky, kx]``;
* ``sens``: ``[..., coil, 1|time, y, x]`` complex coil maps, normalised ``sum_c |S_c|^2 = 1``
  inside the object (other normalisations work, the step sizes adapt, but the
  regularisation weights were tuned for this one).

:func:`setup_problem` validates them, builds ``A = M F S`` (:class:`recon.operators.SenseOp`)
and divides the data by a per-item scale (:func:`data_scale`, the peak of the
time-averaged image) so that regularisation weights
mean the same for any data scaling: every method reconstructs ``x / scale`` from
``y / scale`` and multiplies the result back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from recon.conventions import COIL_DIM, real_dtype_of, require_complex, shape_str
from recon.operators import SenseOp

#: Image axes ``[time, y, x]`` over which per-item scalars (scale, step, inner products) reduce.
IMAGE_AXES_DIMS: tuple[int, int, int] = (-3, -2, -1)


class IterationInfo(NamedTuple):
    """What an iterative method passes to its ``callback`` after every iteration.

    Attributes:
        iteration: 1-based iteration count.
        image: current estimate ``[..., time, y, x]`` in the caller's data scale.
        objective: per-item objective value ``[...]`` of the problem being minimised, in
            normalised units (data divided by :func:`data_scale`), or ``None`` where the
            method does not define one.
    """

    iteration: int
    image: torch.Tensor
    objective: torch.Tensor | None


#: Signature of the optional per-iteration callback of the iterative methods.
Callback = Callable[[IterationInfo], None]


@dataclass
class SenseProblem:
    """Validated, normalised SENSE problem ``min_x f(x) = 0.5 ||A x - y||^2 (+ regulariser)``.

    Attributes:
        op: ``A = M F S`` mapping ``[..., time, y, x] -> [..., coil, time, ky, kx]``.
        y: normalised data ``kspace * mask / scale``.
        scale: per-item data scale ``[..., 1, 1, 1]`` (real, > 0).
        adjoint_y: ``A^H y`` (normalised), the zero-filled SENSE image ``[..., time, y, x]``.
        time_average: :func:`time_averaged_image` of the normalised data ``[..., time, y, x]``,
            the starting point of the k-t methods.
        lipschitz: per-item upper bound ``[..., 1, 1, 1]`` on ``||A||^2`` (the Lipschitz
            constant of ``grad f``): the largest ``sum_c |S_c|^2`` over pixels and frames.
    """

    op: SenseOp
    y: torch.Tensor
    scale: torch.Tensor
    adjoint_y: torch.Tensor
    time_average: torch.Tensor
    lipschitz: torch.Tensor

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``grad f(x) = A^H (A x - y) = A^H A x - A^H y``."""
        return self.op.normal(x) - self.adjoint_y

    def data_fidelity(self, x: torch.Tensor) -> torch.Tensor:
        """Per-item ``0.5 ||A x - y||^2`` (shape ``[...]``)."""
        r = self.op(x) - self.y
        return 0.5 * r.abs().pow(2).sum(dim=(-4, -3, -2, -1))

    def initial_image(self, init: str) -> torch.Tensor:
        """Starting point of an iterative method: ``"time-average"`` or ``"adjoint"`` (``A^H y``)."""
        if init == "time-average":
            return self.time_average
        if init == "adjoint":
            return self.adjoint_y
        raise ValueError(f"init must be 'time-average' or 'adjoint', got {init!r}")

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image -> caller's scale."""
        return x * self.scale


def check_lambda(value: float, name: str) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number >= 0; return it as float."""
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from err
    if not v >= 0.0 or v == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_max_iter(max_iter: int) -> int:
    """Raise ``ValueError`` unless ``max_iter`` is an integer >= 1."""
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    return int(max_iter)


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """True when ``shape`` broadcasts to exactly ``target``."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def kspace_mask(mask: torch.Tensor, kspace: torch.Tensor) -> torch.Tensor:
    """Validate ``mask`` against ``kspace`` and return it as a bool mask broadcastable to it.

    A mask with fewer axes than ``kspace`` describes the image axes ``[..., time, ky, kx]``:
    if it has leading batch axes (4 axes or more) a coil axis of length 1 is inserted so that
    the batch axes line up.  A mask with as many axes as ``kspace`` is used as it is.
    """
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if torch.is_complex(mask):
        raise ValueError(f"mask must be real (bool or 0/1), got {mask.dtype} with shape {shape_str(mask.shape)}")
    if mask.ndim < 2 or mask.ndim > kspace.ndim:
        raise ValueError(
            f"mask must broadcast to the image axes [..., time, ky, kx] of k-space {shape_str(kspace.shape)}, "
            f"got shape {shape_str(mask.shape)}"
        )
    m = mask.to(device=kspace.device, dtype=torch.bool)
    if 4 <= m.ndim == kspace.ndim - 1:
        m = m.unsqueeze(COIL_DIM)
    if not _broadcasts_to(m.shape, kspace.shape):
        raise ValueError(
            f"mask {shape_str(mask.shape)} does not broadcast to k-space {shape_str(kspace.shape)} "
            "(mask axes [..., time, ky, kx], k-space axes [..., coil, time, ky, kx])"
        )
    return m


def check_inputs(kspace: torch.Tensor, sens: torch.Tensor | None) -> None:
    """Raise a clear ``ValueError`` for non-complex or mismatched ``kspace`` / ``sens``."""
    require_complex(kspace, "kspace")
    if kspace.ndim < 4:
        raise ValueError(f"kspace must have axes [..., coil, time, ky, kx], got shape {shape_str(kspace.shape)}")
    if sens is None:
        return
    require_complex(sens, "coil sensitivities (sens)")
    if sens.ndim < 4:
        raise ValueError(f"sens must have axes [..., coil, 1|time, y, x], got shape {shape_str(sens.shape)}")
    nc, nt = kspace.shape[COIL_DIM], kspace.shape[-3]
    if (
        sens.shape[COIL_DIM] != nc
        or sens.shape[-3] not in (1, nt)
        or tuple(sens.shape[-2:]) != tuple(kspace.shape[-2:])
    ):
        raise ValueError(
            f"sens {shape_str(sens.shape)} does not match kspace {shape_str(kspace.shape)}: expected "
            f"[..., {nc}, 1|{nt}, {kspace.shape[-2]}, {kspace.shape[-1]}]"
        )
    if not _broadcasts_to(sens.shape, kspace.shape):
        raise ValueError(
            f"leading (batch) axes of sens {shape_str(sens.shape)} do not broadcast to kspace {shape_str(kspace.shape)}"
        )
    if sens.dtype != kspace.dtype:
        raise ValueError(f"sens dtype {sens.dtype} differs from kspace dtype {kspace.dtype}")


def time_averaged_image(op: SenseOp, y: torch.Tensor) -> torch.Tensor:
    """Coil-combined image of the time-averaged k-space, repeated over frames ``[..., time, y, x]``.

    Every k-space location is averaged over the frames that sampled it (zero where none did),
    then ``S^H F^H`` is applied.  With k-t sampling (different lines in every frame) this
    composite is much better sampled than any one frame and has about the image's intensity;
    with the same mask in every frame it equals ``A^H y`` averaged over time.

    Args:
        op: the SENSE operator of the data.
        y: sampled k-space ``[..., coil, time, ky, kx]`` (zeros where not sampled).
    """
    x_shape = y.shape[:COIL_DIM] + y.shape[-3:]
    if op.sampling is None:
        k_avg = y.mean(dim=-3, keepdim=True)
    else:
        count = op.sampling.mask.expand(y.shape).sum(dim=-3, keepdim=True)
        k_avg = y.sum(dim=-3, keepdim=True) / count.clamp(min=1)
    return op.sensitivity.adjoint(op.fourier.adjoint(k_avg)).expand(x_shape).contiguous()


def data_scale(kspace: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """Per-item data scale ``[..., 1, 1, 1]`` (real, > 0) by which the methods divide the data.

    It is ``max |time_averaged_image|`` over ``[time, y, x]``, which tracks the image's own
    intensity whatever the acceleration (``max |A^H y|`` would shrink roughly like ``1/R``),
    so regularisation weights mean the same at R 4 and R 24.  All-zero items get scale 1.
    """
    return setup_problem(kspace, mask, sens).scale


def setup_problem(kspace: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor, normalise: bool = True) -> SenseProblem:
    """Validate inputs, build ``A`` and the normalised data (see the module docstring).

    Args:
        kspace: ``[..., coil, time, ky, kx]`` complex.
        mask: broadcastable to ``[..., time, ky, kx]`` (see :func:`kspace_mask`).
        sens: ``[..., coil, 1|time, y, x]`` complex.
        normalise: divide the data by ``max |time_averaged_image|`` per item (see
            :func:`data_scale`); ``scale = 1`` otherwise.
    """
    check_inputs(kspace, sens)
    if sens is None:
        raise ValueError("this reconstruction needs coil sensitivities (sens), got None")
    m = kspace_mask(mask, kspace)
    sens = sens.to(kspace.device)
    op = SenseOp(sens, m)
    y = kspace * m
    adjoint_y = op.adjoint(y)
    average = time_averaged_image(op, y)
    if normalise:
        scale = average.abs().amax(dim=IMAGE_AXES_DIMS, keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    else:
        scale = torch.ones(adjoint_y.shape[:-3] + (1, 1, 1), dtype=real_dtype_of(kspace.dtype), device=kspace.device)
    y = y / scale.unsqueeze(COIL_DIM)
    adjoint_y = adjoint_y / scale
    average = average / scale
    lip = sens.abs().pow(2).sum(dim=COIL_DIM).amax(dim=IMAGE_AXES_DIMS, keepdim=True)
    lip = torch.where(lip > 0, lip, torch.ones_like(lip)).to(real_dtype_of(kspace.dtype))
    lip = lip.expand(adjoint_y.shape[:-3] + (1, 1, 1))  # sens batch axes broadcast to kspace's
    return SenseProblem(op=op, y=y, scale=scale, adjoint_y=adjoint_y, time_average=average, lipschitz=lip)
