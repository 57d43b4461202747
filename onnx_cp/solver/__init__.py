"""CP decomposition solvers for conv kernels: numpy in, tensorly CPTensor out, no ONNX.

``cp_nls`` (damped Gauss-Newton, the method of the CP-conv paper) and ``cp_als`` (tensorly's
ALS) share their signature conventions, output normalization and ``SolverState`` callbacks.
"""
from .als import cp_als
from .degeneracy import Degeneracy, degeneracy, relative_error
from .nls import cp_nls
from .state import SolverState

__all__ = ["cp_nls", "cp_als", "SolverState", "Degeneracy", "degeneracy", "relative_error"]
