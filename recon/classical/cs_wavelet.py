"""Frame-by-frame compressed sensing with an L1-wavelet prior (sigpy's ``L1WaveletRecon``)."""

from __future__ import annotations

import numpy as np
import torch

from recon.classical.problem import check_lambda, check_max_iter, kspace_mask, setup_problem
from recon.conventions import COIL_DIM


def cs_wavelet(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    sens: torch.Tensor,
    *,
    lam: float = 0.001,
    max_iter: int = 100,
    wave_name: str = "db4",
) -> torch.Tensor:
    """Compressed sensing (Lustig et al. 2007) frame by frame: ``min_x 0.5 ||A_t x - y_t||^2 + lam ||W x||_1``.

    Each frame of each batch item is reconstructed independently with
    :class:`sigpy.mri.app.L1WaveletRecon` (numpy on the CPU, FISTA with step
    ``1 / max sum_c |S_c|^2``, no power iteration), then moved back to the input device.  It
    ignores temporal redundancy on purpose: it is the "static" baseline that the k-t methods
    must beat.  Data are normalised by :func:`recon.classical.problem.data_scale` (one
    scale for the whole cine) so ``lam`` is scale-invariant.

    Args:
        kspace: ``[..., coil, time, ky, kx]`` complex, zeros where not sampled.
        mask: broadcastable to ``[..., time, ky, kx]``.
        sens: ``[..., coil, 1|time, y, x]``, ``sum_c |S_c|^2 = 1``.
        lam: wavelet L1 weight (>= 0).
        max_iter: iterations per frame (FISTA from zero converges slowly on SENSE problems:
            at R = 4 going from 50 to 150 iterations still gains ~6 dB).
        wave_name: PyWavelets wavelet name.
    Returns:
        ``[..., time, y, x]`` complex on ``kspace``'s device.
    """
    import sigpy.mri.app as mri_app  # heavy import, only needed here

    lam = check_lambda(lam, "lam")
    max_iter = check_max_iter(max_iter)
    prob = setup_problem(kspace, mask, sens)
    batch = kspace.shape[:-4]
    n_c, n_t, n_y, n_x = kspace.shape[-4:]
    y = prob.y.reshape((-1, n_c, n_t, n_y, n_x))
    m = kspace_mask(mask, kspace).expand(kspace.shape).select(COIL_DIM, 0).reshape((-1, n_t, n_y, n_x))
    maps = sens.to(kspace.device).expand(batch + tuple(sens.shape[-4:])).reshape((-1,) + tuple(sens.shape[-4:]))
    step = (1.0 / prob.lipschitz).reshape(-1)
    y_np = y.detach().cpu().numpy()
    m_np = m.detach().cpu().numpy().astype(np.float32)
    maps_np = maps.detach().cpu().numpy()
    out = np.zeros((y_np.shape[0], n_t, n_y, n_x), dtype=y_np.dtype)
    for b in range(y_np.shape[0]):
        for t in range(n_t):
            app = mri_app.L1WaveletRecon(
                y_np[b, :, t],
                maps_np[b, :, t if maps_np.shape[2] > 1 else 0],
                lam,
                weights=m_np[b, t],
                wave_name=wave_name,
                max_iter=max_iter,
                alpha=float(step[b]),
                show_pbar=False,
            )
            out[b, t] = app.run()
    x = torch.from_numpy(out).to(device=kspace.device, dtype=kspace.dtype).reshape(batch + (n_t, n_y, n_x))
    return prob.unscale(x)
