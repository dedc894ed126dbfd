"""Classical (non-learned) reconstructions of undersampled multi-coil cine MRI.

The baselines CardioMM's network is compared against.  All take the same inputs and return
a complex image ``[..., time, y, x]`` on k-space's device (see :mod:`recon.classical.problem`):
``kspace [..., coil, time, ky, kx]`` (zeros where not sampled), ``mask`` broadcastable to
``[..., time, ky, kx]`` and ``sens [..., coil, 1|time, y, x]`` with ``sum_c |S_c|^2 = 1``.

==============  ======================================  =========================================
name            function                                prior
==============  ======================================  =========================================
zero-filled     :func:`zero_filled`                     none (adjoint ``A^H y``)
view-sharing    :func:`view_sharing`                    none; unmeasured samples take their mean over
                                                        the frames that measured them
cg-sense        :func:`cg_sense`                        Tikhonov / early stopping, per frame
cs              :func:`cs_wavelet`                      L1 wavelet, per frame (sigpy)
kt-sparse       :func:`kt_sparse_sense`                 L1 in x-f (temporal Fourier)
lps             :func:`lowrank_plus_sparse`             low rank + x-f sparse (L+S)
st-tv           :func:`st_tv`                           spatio-temporal total variation
==============  ======================================  =========================================

Regularisation weights act on data divided by :func:`data_scale` (the peak of the time-averaged
image), so the defaults hold for any data scale and roughly for any acceleration.

Defaults were tuned on a synthetic cine (10 birdcage coils with ``sum |S|^2 = 1``, 12 frames,
256 x 256, smooth-textured ellipses with a beating LV/RV and smooth phase, k-space noise 1e-3)
with a k-t Gaussian line mask (11 random lines per frame, different in every frame, density
``exp(-ky^2 / (2 (0.2 n)^2))``, no ACS, R = 23.3) and the true maps.  PSNR (dB) and single-thread
CPU seconds at the defaults:

==============  =====  =======  ==============================================================
method          PSNR   seconds  defaults
==============  =====  =======  ==============================================================
zero-filled     12.6   0.6
cg-sense        13.4   25       ``lam=0, max_iter=30``
cs              13.5   26       ``lam=0.001, max_iter=100`` (per frame, sigpy)
kt-sparse       29.6   39       ``lam=0.003, max_iter=50, dc_weight=0``
lps             29.0   42       ``lam_l=0.01, lam_s=0.003, max_iter=50, step=0.5, momentum``
st-tv           32.1   82       ``lam=0.003, lam_t_ratio=1, max_iter=80, step_ratio=15``
==============  =====  =======  ==============================================================

k-t SPARSE-SENSE and L+S are converged at 50 iterations (100 gives 29.5 / 28.7); ST-TV still
improves (33.4 at 150).  At 128 x 128 and R 4 / 8 / 12 the same defaults give kt-sparse
43.7 / 39.3 / 35.2, lps 44.3 / 38.6 / 33.4, st-tv 45.4 / 39.7 / 38.1 dB; at R <= 8 smaller
weights are better (``lam=0.001``: kt-sparse 45.9 / 39.5, st-tv 50.8 / 44.4).  A piecewise-smooth
phantom flatters TV; rank methods on real data before trusting this order.  About half of every
iteration is spent in the FFT shifts of :func:`recon.conventions.fft2c`.
"""

from __future__ import annotations

from typing import Callable

import torch

from recon.classical.cg_sense import cg_sense
from recon.classical.cs_wavelet import cs_wavelet
from recon.classical.kt_sparse import kt_sparse_sense
from recon.classical.lowrank_sparse import lowrank_plus_sparse
from recon.classical.problem import IterationInfo, SenseProblem, data_scale, setup_problem
from recon.classical.proximal import singular_value_threshold, soft_threshold
from recon.classical.solvers import conjugate_gradient, fista
from recon.classical.st_tv import st_tv
from recon.classical.view_sharing import share_views, view_sharing
from recon.classical.zero_filled import zero_filled

#: Reconstruction methods by name: ``METHODS[name](kspace, mask, sens, **options)``.
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "zero-filled": zero_filled,
    "view-sharing": view_sharing,
    "cg-sense": cg_sense,
    "cs": cs_wavelet,
    "kt-sparse": kt_sparse_sense,
    "lps": lowrank_plus_sparse,
    "st-tv": st_tv,
}

#: Human-readable names of the methods, for figures and tables.
METHOD_LABELS: dict[str, str] = {
    "zero-filled": "zero-filled",
    "view-sharing": "k-t view sharing",
    "cg-sense": "CG-SENSE",
    "cs": "CS (L1-wavelet, per frame)",
    "kt-sparse": "k-t SPARSE-SENSE",
    "lps": "L+S",
    "st-tv": "spatio-temporal TV",
}

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "IterationInfo",
    "SenseProblem",
    "cg_sense",
    "conjugate_gradient",
    "cs_wavelet",
    "data_scale",
    "fista",
    "kt_sparse_sense",
    "lowrank_plus_sparse",
    "setup_problem",
    "share_views",
    "singular_value_threshold",
    "soft_threshold",
    "st_tv",
    "view_sharing",
    "zero_filled",
]
