"""Simulated receive-coil sensitivities for tests, benchmarks and k-space simulation.

Two kinds of array are available:

* ``"birdcage"``: sigpy's analytic birdcage model (:func:`sigpy.mri.birdcage_maps`):
  ``n_coils`` elements on a circle of radius ``relative_radius`` (in units of half the
  field of view), magnitude ``1 / distance`` and a phase that rotates around the array.
* ``"biot_savart"``: ``n_coils`` flat circular surface loops placed around the field of view
  (tangent to an ellipse of ``relative_radius`` half-FOVs), the field of each loop computed
  in the imaged plane with the Biot-Savart law (:func:`loop_magnetic_field`) and the
  receive sensitivity taken as ``B_x - i B_y``.

Both return maps ``[coil, y, x]`` on the image grid of :mod:`recon.conventions` (pixel
``n // 2`` is the centre), scaled so that the root-sum-of-squares over coils peaks at 1.
Use :func:`normalize_maps` for maps with ``sum_c |S_c|^2 = 1`` (what reconstructions assume).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recon.conventions import COIL_DIM, require_complex, shape_str

COIL_KINDS: tuple[str, ...] = ("birdcage", "biot_savart")


def simulate_coil_maps(
    n_coils: int,
    shape: tuple[int, int],
    *,
    kind: str = "birdcage",
    relative_radius: float = 1.5,
    dtype: torch.dtype = torch.complex64,
) -> torch.Tensor:
    """Simulated complex receive sensitivities ``[coil, y, x]``.

    Args:
        n_coils: number of receive channels (8-16 is typical for cardiac arrays).
        shape: image size ``(ny, nx)`` in pixels.
        kind: ``"birdcage"`` (sigpy's analytic model) or ``"biot_savart"`` (surface loops
            around the body, field from the Biot-Savart law).
        relative_radius: distance of the coil elements from the image centre, in units of
            half the field of view; must be > 1 so that every element lies outside the image.
        dtype: complex torch dtype of the result.

    Returns:
        ``[n_coils, ny, nx]`` complex maps (not normalised per pixel), scaled so that
        ``max_{y,x} sqrt(sum_c |S_c|^2) == 1``.  Insert a time axis with ``maps[:, None]``
        to get the ``[coil, 1, y, x]`` layout of :class:`recon.operators.SensitivityOp`.
    """
    if isinstance(n_coils, bool) or not isinstance(n_coils, (int, np.integer)) or n_coils < 1:
        raise ValueError(f"n_coils must be a positive integer, got {n_coils!r}")
    if len(tuple(shape)) != 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (ny, nx) with positive sizes, got {tuple(shape)!r}")
    if kind not in COIL_KINDS:
        raise ValueError(f"unknown coil kind {kind!r}; choose one of {COIL_KINDS}")
    if not relative_radius > 1.0:
        raise ValueError(
            f"relative_radius must be > 1 (coils outside the field of view), got {relative_radius}"
        )
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}")
    ny, nx = int(shape[0]), int(shape[1])

    if kind == "birdcage":
        import sigpy.mri  # lazy: sigpy pulls in numba

        maps = np.asarray(sigpy.mri.birdcage_maps((int(n_coils), ny, nx), r=float(relative_radius)))
        out = torch.from_numpy(maps.astype(np.complex128))
    else:
        out = _biot_savart_maps(int(n_coils), ny, nx, float(relative_radius))

    if not torch.isfinite(out).all():
        raise ValueError(
            f"coil maps for {n_coils} coils on {shape_str((ny, nx))} with relative_radius "
            f"{relative_radius} are not finite (a coil sits on a grid point); increase relative_radius"
        )
    out = out / torch.sqrt((out.abs() ** 2).sum(0)).max()
    return out.to(dtype)


def normalize_maps(sens: torch.Tensor, eps: float = 1e-8, *, coil_dim: int = COIL_DIM) -> torch.Tensor:
    """Scale coil maps so that ``sum_c |S_c|^2 = 1`` at every pixel.

    Args:
        sens: complex maps with the coil axis at ``coil_dim``; the default ``-4`` fits the
            ``[..., coil, time|1, y, x]`` layout used everywhere in :mod:`recon`.  For maps
            ``[coil, y, x]`` as returned by :func:`simulate_coil_maps` pass ``coil_dim=-3``.
        eps: pixels whose root-sum-of-squares is below ``eps`` are divided by ``eps``
            instead, so all-zero (background) pixels stay zero.

    Returns:
        Maps of the same shape and dtype with unit root-sum-of-squares over coils.
    """
    require_complex(sens, "coil sensitivities")
    if not -sens.ndim <= coil_dim < sens.ndim:
        raise ValueError(
            f"coil sensitivities of shape {shape_str(sens.shape)} have no coil axis {coil_dim}; "
            "expected [..., coil, time|1, y, x] (or pass coil_dim=-3 for [coil, y, x])"
        )
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    norm = torch.sqrt(torch.sum(sens.abs() ** 2, dim=coil_dim, keepdim=True))
    return sens / norm.clamp_min(eps)


def loop_magnetic_field(
    points: torch.Tensor,
    centre: tuple[float, float, float],
    normal: tuple[float, float, float],
    radius: float,
    n_segments: int = 64,
) -> torch.Tensor:
    """Magnetic field of a circular current loop by the Biot-Savart law.

    The loop (unit current) is split into ``n_segments`` straight segments and
    ``B(r) = sum_k dl_k x (r - r_k) / |r - r_k|^3`` is summed over their midpoints ``r_k``.
    The constant ``mu_0 / (4 pi)`` is left out, so on the loop axis at distance ``z`` the
    field is ``2 pi a^2 / (a^2 + z^2)^(3/2)`` for loop radius ``a``.  All lengths share one
    (arbitrary) unit.

    Args:
        points: ``[..., 3]`` real positions ``(x, y, z)`` where the field is evaluated.
        centre: loop centre ``(x, y, z)``.
        normal: loop axis (need not be unit length); the current circulates
            counter-clockwise seen from the side it points to.
        radius: loop radius (> 0).
        n_segments: number of straight segments approximating the loop.

    Returns:
        ``[..., 3]`` field vectors, same dtype as ``points``.
    """
    if points.shape[-1] != 3 or torch.is_complex(points):
        raise ValueError(f"points must be real [..., 3] positions, got {points.dtype} {shape_str(points.shape)}")
    if not radius > 0 or n_segments < 3:
        raise ValueError(f"need radius > 0 and n_segments >= 3, got radius={radius}, n_segments={n_segments}")
    opts = {"dtype": points.dtype, "device": points.device}
    n = torch.tensor(normal, **opts)
    if not n.norm() > 0:
        raise ValueError(f"loop normal must be non-zero, got {normal}")
    n = n / n.norm()
    # Orthonormal basis (u, v) of the loop plane with u x v = n.
    helper = torch.tensor((1.0, 0.0, 0.0) if abs(float(n[0])) < 0.9 else (0.0, 1.0, 0.0), **opts)
    u = torch.linalg.cross(n, helper)
    u = u / u.norm()
    v = torch.linalg.cross(n, u)
    phi = torch.arange(n_segments + 1, **opts) * (2 * math.pi / n_segments)
    ring = torch.tensor(centre, **opts) + radius * (
        torch.cos(phi)[:, None] * u + torch.sin(phi)[:, None] * v
    )  # [n_segments + 1, 3], closed polygon
    field = torch.zeros_like(points)
    for k in range(n_segments):
        dl = ring[k + 1] - ring[k]
        d = points - 0.5 * (ring[k + 1] + ring[k])
        dist3 = torch.linalg.vector_norm(d, dim=-1, keepdim=True) ** 3
        field = field + torch.linalg.cross(dl.expand_as(d), d, dim=-1) / dist3
    return field


def _biot_savart_maps(n_coils: int, ny: int, nx: int, relative_radius: float) -> torch.Tensor:
    """``[coil, ny, nx]`` complex128 maps of loops tangent to an ellipse around the image."""
    half = max(ny, nx) / 2.0  # isotropic length unit: half of the larger FOV side
    ax, ay = relative_radius * (nx / 2.0) / half, relative_radius * (ny / 2.0) / half
    y, x = torch.meshgrid(
        (torch.arange(ny, dtype=torch.float64) - ny // 2) / half,
        (torch.arange(nx, dtype=torch.float64) - nx // 2) / half,
        indexing="ij",
    )
    points = torch.stack([x, y, torch.zeros_like(x)], dim=-1)
    # Ramanujan's approximation of the ellipse perimeter; loops cover ~90% of it.
    perimeter = math.pi * (3 * (ax + ay) - math.sqrt((3 * ax + ay) * (ax + 3 * ay)))
    loop_radius = min(0.45 * perimeter / n_coils, 0.5 * min(ax, ay))
    maps = []
    for c in range(n_coils):
        theta = 2 * math.pi * c / n_coils
        centre = (ax * math.cos(theta), ay * math.sin(theta), 0.0)
        normal = (math.cos(theta) / ax, math.sin(theta) / ay, 0.0)  # outward ellipse normal
        b = loop_magnetic_field(points, centre, normal, loop_radius)
        maps.append(torch.complex(b[..., 0], -b[..., 1]))
    return torch.stack(maps)
