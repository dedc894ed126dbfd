"""The CardioMM reconstruction network: context embedding, coil maps, unrolled 2D+t cascades.

Modules (one idea each):

* :mod:`~cardiomm.model.context` -- acquisition context -> conditioning vector (unknown-aware);
* :mod:`~cardiomm.model.film` -- FiLM modulation of features by that vector;
* :mod:`~cardiomm.model.unet2dt` -- the real-valued (2+1)D / 3D U-Net;
* :mod:`~cardiomm.model.complex_unet` -- complex images in, normalisation and padding;
* :mod:`~cardiomm.model.sensitivity_net` -- learned coil maps from the calibration k-space;
* :mod:`~cardiomm.model.cascade` -- one denoising + data-consistency iteration;
* :mod:`~cardiomm.model.cardiomm_net` -- the whole network;
* :mod:`~cardiomm.model.losses` -- SSIM + L1 training loss.
"""

from cardiomm.model.cardiomm_net import ARCHITECTURE, CardioMMNet
from cardiomm.model.cascade import UnrolledCascade
from cardiomm.model.complex_unet import ComplexUNet
from cardiomm.model.context import ContextBatch, ContextEncoder
from cardiomm.model.losses import SSIML1Loss, ssim
from cardiomm.model.sensitivity_net import SensitivityNet
from cardiomm.model.unet2dt import UNet2dt

__all__ = [
    "ARCHITECTURE",
    "CardioMMNet",
    "ComplexUNet",
    "ContextBatch",
    "ContextEncoder",
    "SSIML1Loss",
    "SensitivityNet",
    "UNet2dt",
    "UnrolledCascade",
    "ssim",
]
