"""Physics operators of multi-coil Cartesian MRI, each with ``forward`` and ``adjoint``."""

from recon.operators.base import AdjointOp, ComposedOp, LinearOperator, inner_product
from recon.operators.fourier import FourierOp
from recon.operators.sampling import SamplingOp
from recon.operators.sense import SenseOp
from recon.operators.sensitivity import SensitivityOp

__all__ = [
    "AdjointOp",
    "ComposedOp",
    "FourierOp",
    "LinearOperator",
    "SamplingOp",
    "SenseOp",
    "SensitivityOp",
    "inner_product",
]
