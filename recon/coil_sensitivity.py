"""Coil sensitivity estimation from undersampled multi-coil cine k-space.

Pipeline (:func:`estimate_sensitivities`):

1. :func:`calibration_kspace` collapses the time axis into one calibration k-space
   ``[..., coil, ky, kx]``: either the per-frame autocalibration (ACS) region averaged over
   frames, or the *time-averaged* k-space (each k-space point averaged over the frames in
   which it was sampled), which is fully sampled in the centre for interleaved k-t
   patterns even at high acceleration and without any ACS lines.
2. The centred, fully sampled calibration block (:func:`fully_sampled_centre`,
   :func:`calibration_region`) is turned into maps by one of

   * ``"walsh"``: windowed low-resolution coil images, local coil covariance matrices
     smoothed over a small window, dominant eigenvector per pixel by power iteration
     (Walsh et al., MRM 2000).  Pure torch: CPU or CUDA, batched, differentiable.
   * ``"inati"``: the same estimate without forming the ``coil x coil`` covariance
     matrices (Inati et al., ISMRM 2014): power iteration whose matrix-vector product
     smooths ``coil image x conj(combined image)``.  Less memory for many coils.
   * ``"espirit"``: :class:`sigpy.mri.app.EspiritCalib` (Uecker et al., MRM 2014) on the
     calibration k-space, run on the CPU with numpy per batch element.

3. Maps are normalised to ``sum_c |S_c|^2 = 1`` inside the object and set to 0 in the
   background (threshold on the low-resolution root-sum-of-squares image, or on the
   ESPIRiT eigenvalue), and their phase is made relative to the dominant *virtual coil*
   (the principal component of the coil images over the whole image), which is smooth
   over the object unlike the phase relative to any single physical coil.

Maps come back as ``[..., coil, 1, y, x]`` so they broadcast over the frames of
``[..., coil, time, y, x]`` data (see :class:`recon.operators.SensitivityOp`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from recon.conventions import TIME_DIM, ifft2c, require_complex, shape_str

METHODS: tuple[str, ...] = ("walsh", "inati", "espirit")
CALIBRATION_METHODS: tuple[str, ...] = ("auto", "acs", "time_average")

#: Covariance entries held at once by the Walsh method (bounds memory for many coils).
_WALSH_BLOCK_ELEMENTS = 2**23


# --------------------------------------------------------------------------------------
# Calibration data
# --------------------------------------------------------------------------------------


def _check_kspace(kspace: torch.Tensor) -> None:
    require_complex(kspace, "k-space")
    if kspace.ndim < 4:
        raise ValueError(
            f"k-space must have axes [..., coil, time, ky, kx], got shape {shape_str(kspace.shape)}"
        )


def _as_sampling(mask: torch.Tensor, kspace: torch.Tensor, name: str) -> torch.Tensor:
    """Boolean ``mask`` with full ``[time, ky, kx]`` axes (it must broadcast to ``kspace``).

    Leading axes of ``mask`` are kept as they are (not expanded to the coil/batch axes of
    ``kspace``) so that counting samples over time stays cheap.
    """
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(np.asarray(mask))
    if torch.is_complex(mask):
        raise ValueError(f"{name} must be real (bool or 0/1), got {mask.dtype} with shape {shape_str(mask.shape)}")
    try:
        target = torch.broadcast_shapes(mask.shape, kspace.shape)
    except RuntimeError as err:
        raise ValueError(
            f"{name} of shape {shape_str(mask.shape)} does not broadcast to k-space "
            f"{shape_str(kspace.shape)} (expected [time, ky, kx] or broadcastable, e.g. [time, ky, 1])"
        ) from err
    if target != kspace.shape:
        raise ValueError(
            f"{name} of shape {shape_str(mask.shape)} would enlarge k-space {shape_str(kspace.shape)}"
        )
    mask = mask.to(kspace.device) != 0
    return mask.expand(torch.broadcast_shapes(mask.shape, kspace.shape[-3:]))


def _calibration(
    kspace: torch.Tensor, mask: torch.Tensor, acs: torch.Tensor | None, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration k-space ``[..., coil, ky, kx]`` and its sampled pattern ``[ky, kx]`` (bool).

    The pattern is ``True`` where every leading (batch, coil) element has data.
    """
    _check_kspace(kspace)
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    if method == "auto":
        method = "acs" if acs is not None else "time_average"
    if method == "acs" and acs is None:
        raise ValueError("calibration method 'acs' needs an acs mask (broadcastable to [time, ky, kx])")
    sampled = _as_sampling(mask, kspace, "sampling mask")
    if method == "acs":
        sampled = sampled & _as_sampling(acs, kspace, "acs mask")
    counts = sampled.sum(dim=TIME_DIM)
    if not bool((counts > 0).any()):
        what = "ACS region" if method == "acs" else "sampling mask"
        raise ValueError(
            f"no sampled calibration data: the {what} selects no k-space point of {shape_str(kspace.shape)}"
        )
    summed = (kspace * sampled).sum(dim=TIME_DIM)
    calib = summed / counts.clamp_min(1).to(summed.real.dtype)
    pattern = (counts > 0).reshape(-1, *counts.shape[-2:]).all(dim=0)
    return calib, pattern


def calibration_kspace(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    *,
    acs: torch.Tensor | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """Collapse the time axis of undersampled cine k-space into calibration k-space.

    Args:
        kspace: ``[..., coil, time, ky, kx]`` complex, zero where not sampled.
        mask: bool (or 0/1) sampling mask broadcastable to ``[..., time, ky, kx]``, e.g.
            ``[time, ky, kx]`` or ``[time, ky, 1]``.
        acs: bool mask of the autocalibration region, broadcastable like ``mask`` (e.g.
            ``[1, ky, 1]`` for central lines acquired in every frame).
        method: ``"acs"``: average over frames of the samples inside ``acs`` (0 elsewhere);
            ``"time_average"``: every k-space point averaged over the frames in which it
            was sampled (0 where never sampled); ``"auto"``: ``"acs"`` when ``acs`` is given,
            otherwise ``"time_average"``.

    Returns:
        ``[..., coil, ky, kx]`` complex calibration k-space (no time axis).
    """
    return _calibration(kspace, mask, acs, method)[0]


def fully_sampled_centre(sampled: torch.Tensor, max_size: int | None = None) -> int:
    """Side of the largest centred square of ``sampled`` k-space that is fully sampled.

    Args:
        sampled: bool ``[..., ky, kx]``; leading axes must all be sampled.
        max_size: stop searching at this side length.

    Returns:
        Side ``s`` (0 if the centre point is missing) of the block
        ``[ny//2 - s//2 : ny//2 - s//2 + s, nx//2 - s//2 : nx//2 - s//2 + s]``.
    """
    if sampled.ndim < 2:
        raise ValueError(f"sampled pattern must have axes [..., ky, kx], got shape {shape_str(sampled.shape)}")
    pattern = (sampled != 0).reshape(-1, *sampled.shape[-2:]).all(dim=0)
    ny, nx = pattern.shape
    limit = min(ny, nx) if max_size is None else min(ny, nx, int(max_size))
    side = 0
    for s in range(1, limit + 1):  # the blocks are nested, so stop at the first hole
        y0, x0 = ny // 2 - s // 2, nx // 2 - s // 2
        if not bool(pattern[y0 : y0 + s, x0 : x0 + s].all()):
            break
        side = s
    return side


def calibration_region(calib_k: torch.Tensor, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Central crop ``[..., coil, sy, sx]`` of calibration k-space ``[..., coil, ky, kx]``.

    The crop keeps the k-space centre (index ``n // 2``) at index ``s // 2``.

    Args:
        calib_k: ``[..., ky, kx]`` complex k-space (e.g. from :func:`calibration_kspace`).
        size: side ``s`` or ``(sy, sx)``; ``None`` takes the largest centred square in which
            every entry is non-zero for all leading elements (the detected fully sampled centre).
    """
    if calib_k.ndim < 2:
        raise ValueError(f"calibration k-space must have axes [..., ky, kx], got shape {shape_str(calib_k.shape)}")
    ny, nx = calib_k.shape[-2:]
    if size is None:
        s = fully_sampled_centre(calib_k != 0)
        if s == 0:
            raise ValueError(f"calibration k-space {shape_str(calib_k.shape)} has no sampled centre")
        sy = sx = s
    elif isinstance(size, (int, np.integer)):
        sy = sx = int(size)
    else:
        sy, sx = (int(v) for v in size)
    if not (0 < sy <= ny and 0 < sx <= nx):
        raise ValueError(
            f"calibration size {(sy, sx)} must be positive and fit in k-space {shape_str(calib_k.shape)}"
        )
    y0, x0 = ny // 2 - sy // 2, nx // 2 - sx // 2
    return calib_k[..., y0 : y0 + sy, x0 : x0 + sx]


# --------------------------------------------------------------------------------------
# Map estimation
# --------------------------------------------------------------------------------------


def _hann(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Positive Hann-like taper of length ``n`` peaking (1) at index ``n // 2``."""
    j = torch.arange(n, dtype=dtype, device=device) - n // 2
    return 0.5 * (1 + torch.cos(math.pi * j / (n // 2 + 1)))


def _low_resolution_images(calib_k: torch.Tensor, size: int) -> torch.Tensor:
    """Coil images ``[B, C, ny, nx]`` from the windowed central ``size x size`` block, zero-padded."""
    ny, nx = calib_k.shape[-2:]
    block = calibration_region(calib_k, size)
    rdt = block.real.dtype
    window = _hann(size, rdt, block.device)
    block = block * (window[:, None] * window[None, :])
    padded = torch.zeros_like(calib_k)
    y0, x0 = ny // 2 - size // 2, nx // 2 - size // 2
    padded[..., y0 : y0 + size, x0 : x0 + size] = block
    return ifft2c(padded)


def _box_sum(x: torch.Tensor, kernel: int, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
    """Separable box sum of width ``kernel`` over the two axes ``dims``, zero padded (same size).

    Shifted additions: much faster on the CPU than pooling for the small windows used here,
    and they work on complex tensors directly.
    """
    if kernel <= 1:
        return x
    h = kernel // 2
    for dim in dims:
        n = x.shape[dim]
        pad_shape = list(x.shape)
        pad_shape[dim] = h
        zeros = x.new_zeros(pad_shape)
        p = torch.cat([zeros, x, zeros], dim=dim)
        acc = p.narrow(dim, 0, n).clone()
        for i in range(1, kernel):
            acc += p.narrow(dim, i, n)
        x = acc
    return x


def _normalise_vectors(v: torch.Tensor, dim: int = 1) -> torch.Tensor:
    norm = torch.sqrt(torch.sum(v.real**2 + v.imag**2, dim=dim, keepdim=True))
    tiny = torch.finfo(norm.dtype).tiny ** 0.5
    return v / norm.clamp_min(tiny)


def _walsh(images: torch.Tensor, kernel: int, n_iter: int) -> torch.Tensor:
    """Dominant eigenvector per pixel of the box-smoothed coil covariance ``[B, C, y, x]``.

    Works pixel-major (``[B, rows, x, C, C]`` covariance blocks, batched matrix-vector
    products) on row blocks with a halo of ``kernel // 2`` rows to bound memory.
    """
    b, c, ny, nx = images.shape
    h = kernel // 2
    pix = images.permute(0, 2, 3, 1)  # [B, y, x, C]
    padded = F.pad(pix, (0, 0, 0, 0, h, h))  # zero rows above and below
    rows = max(1, min(ny, _WALSH_BLOCK_ELEMENTS // max(1, b * c * c * nx)))
    out = []
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        seg = padded[:, y0 : y1 + 2 * h, :, :, None]  # [B, rows + 2h, x, C, 1]
        cov = _box_sum(seg * seg.transpose(-1, -2).conj(), kernel, dims=(1, 2))[:, h : h + (y1 - y0)]
        v = _normalise_vectors(pix[:, y0:y1, :, :, None], dim=-2)
        for _ in range(n_iter):
            v = _normalise_vectors(cov @ v, dim=-2)
        out.append(v[..., 0])
    return torch.cat(out, dim=1).permute(0, 3, 1, 2)


def _inati(images: torch.Tensor, kernel: int, n_iter: int) -> torch.Tensor:
    """Covariance-free power iteration: ``v <- normalise(smooth(D * conj(D^H v)))``."""
    v = _normalise_vectors(_box_sum(images, kernel))
    for _ in range(n_iter):
        combined = torch.sum(v.conj() * images, dim=1, keepdim=True)  # D^H v
        v = _normalise_vectors(_box_sum(images * combined.conj(), kernel))
    return v


def _espirit(
    calib_k: torch.Tensor, size: int, kernel_width: int, thresh: float, crop: float, max_iter: int
) -> torch.Tensor:
    """sigpy ESPIRiT maps ``[B, C, y, x]`` (0 where the eigenvalue is below ``crop``)."""
    from sigpy.mri.app import EspiritCalib  # lazy: sigpy pulls in numba

    maps = []
    for k in calib_k.detach().cpu().numpy():
        app = EspiritCalib(
            k, calib_width=size, thresh=thresh, kernel_width=kernel_width, crop=crop,
            max_iter=max_iter, show_pbar=False,
        )
        maps.append(torch.from_numpy(np.ascontiguousarray(app.run())))
    return torch.stack(maps).to(device=calib_k.device, dtype=calib_k.dtype)


def _reference_phase(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Rotate maps ``[B, C, y, x]`` so that their projection on the dominant virtual coil is real >= 0."""
    flat = images.reshape(images.shape[0], images.shape[1], -1)
    gram = flat @ flat.conj().transpose(-1, -2)  # [B, C, C] global coil covariance
    _, vecs = torch.linalg.eigh(gram)
    w = vecs[..., -1]  # [B, C], dominant principal component
    # Fix the eigenvector's arbitrary global phase (keeps autograd through eigh well defined).
    k = w.abs().argmax(dim=-1, keepdim=True)
    wk = torch.gather(w, 1, k)
    w = w * (wk.conj() / wk.abs().clamp_min(torch.finfo(wk.real.dtype).tiny))
    proj = torch.einsum("bc,bcyx->byx", w.conj(), maps)[:, None]
    tiny = torch.finfo(proj.real.dtype).tiny ** 0.5
    return maps * (proj.conj() / proj.abs().clamp_min(tiny))


def _upsample_linear(maps: torch.Tensor, stride: int, shape: tuple[int, int]) -> torch.Tensor:
    """Linear interpolation of ``[..., ny', nx']`` samples at pixels ``j * stride`` onto ``shape``."""
    for dim, n in ((-2, shape[0]), (-1, shape[1])):
        m = maps.shape[dim]
        pos = torch.arange(n, device=maps.device)
        lo = torch.clamp(pos // stride, max=m - 1)
        hi = torch.clamp(lo + 1, max=m - 1)
        frac = ((pos - lo * stride).to(maps.real.dtype) / stride).clamp(max=1.0)
        frac = frac.reshape(-1, 1) if dim == -2 else frac
        maps = maps.index_select(dim, lo) * (1 - frac) + maps.index_select(dim, hi) * frac
    return maps


def estimate_sensitivities(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    *,
    acs: torch.Tensor | None = None,
    method: str = "walsh",
    calib_size: int = 24,
    calib_method: str = "auto",
    threshold: float = 0.05,
    kernel_size: int = 5,
    n_iter: int = 10,
    espirit_kernel_width: int = 6,
    espirit_thresh: float = 0.02,
    espirit_crop: float = 0.95,
    espirit_max_iter: int = 100,
    grid_stride: int | None = None,
) -> torch.Tensor:
    """Estimate normalised coil sensitivities from (undersampled) multi-coil cine k-space.

    Args:
        kspace: ``[..., coil, time, ky, kx]`` complex, zero where not sampled (a single
            fully sampled frame is ``time = 1``).
        mask: bool (or 0/1) sampling mask broadcastable to ``[..., time, ky, kx]``.
        acs: optional autocalibration mask, broadcastable like ``mask``.
        method: ``"walsh"``, ``"inati"`` (both pure torch, CPU/CUDA, differentiable) or
            ``"espirit"`` (sigpy, CPU, not differentiable).
        calib_size: side (k-space samples) of the central calibration block; reduced to the
            largest fully sampled centred square of the calibration k-space.
        calib_method: how time is collapsed, see :func:`calibration_kspace`.
        threshold: Walsh/Inati background mask: pixels whose low-resolution
            root-sum-of-squares image is below ``threshold`` times its maximum get 0
            (0 disables masking).
        kernel_size: Walsh/Inati smoothing window (pixels, odd; 1 = no smoothing).
        n_iter: Walsh/Inati power iterations.
        grid_stride: Walsh/Inati estimate the maps on every ``grid_stride``-th pixel and
            interpolate linearly; ``None`` picks ``min(ny, nx) // (4 * calib)`` (at least 1),
            which keeps >= 4 grid points per calibration sample.
        espirit_kernel_width, espirit_thresh, espirit_crop, espirit_max_iter: ESPIRiT kernel
            width, singular-value threshold (relative), eigenvalue crop (maps are 0 where the
            eigenvalue is below it) and power iterations (see :class:`sigpy.mri.app.EspiritCalib`).

    Returns:
        ``[..., coil, 1, y, x]`` complex maps on the device and dtype of ``kspace``, with
        ``sum_c |S_c|^2 = 1`` inside the object and 0 in the background, phase relative to
        the dominant virtual coil.
    """
    _check_kspace(kspace)
    if method not in METHODS:
        raise ValueError(f"unknown coil sensitivity method {method!r}; choose one of {METHODS}")
    if isinstance(calib_size, bool) or not isinstance(calib_size, (int, np.integer)) or calib_size < 2:
        raise ValueError(f"calib_size must be an integer >= 2, got {calib_size!r}")
    if not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
    if grid_stride is not None and (not isinstance(grid_stride, (int, np.integer)) or grid_stride < 1):
        raise ValueError(f"grid_stride must be a positive integer or None, got {grid_stride!r}")

    calib, pattern = _calibration(kspace, mask, acs, calib_method)
    lead, (c, ny, nx) = calib.shape[:-3], calib.shape[-3:]
    min_size = espirit_kernel_width + 1 if method == "espirit" else 4
    size = fully_sampled_centre(pattern, calib_size)
    if size < min_size:
        raise ValueError(
            f"the fully sampled centre of the calibration k-space is only {size}x{size} "
            f"(k-space {shape_str(kspace.shape)}); method {method!r} needs at least {min_size}x{min_size}: "
            "acquire more central lines, pass an acs mask, or use calib_method='time_average'"
        )
    calib = calib.reshape(-1, c, ny, nx)
    images = _low_resolution_images(calib, size)

    if method == "espirit":
        maps = _espirit(calib, size, espirit_kernel_width, espirit_thresh, espirit_crop, espirit_max_iter)
        maps = _reference_phase(maps, images)
    else:
        # The low-resolution images are band-limited to `size` samples, so the eigenvectors
        # are estimated on a coarser grid (>= 4 points per calibration sample) and
        # interpolated back, which is several times faster for large images.
        stride = max(1, min(ny, nx) // (4 * size)) if grid_stride is None else int(grid_stride)
        coarse = images[..., ::stride, ::stride]
        kernel = max(1, 2 * round((kernel_size / stride - 1) / 2) + 1)
        estimate = _walsh if method == "walsh" else _inati
        maps = _reference_phase(estimate(coarse, kernel, n_iter), coarse)
        if stride > 1:
            maps = _normalise_vectors(_upsample_linear(maps, stride, (ny, nx)))
        if threshold > 0:
            lowres = torch.sqrt(torch.sum(images.real**2 + images.imag**2, dim=1, keepdim=True))
            peak = lowres.amax(dim=(-2, -1), keepdim=True)
            maps = maps * (lowres > threshold * peak)
    return maps.reshape(*lead, c, 1, ny, nx)
