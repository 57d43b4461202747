"""CP decomposition solvers for conv kernels: numpy in, tensorly CPTensor out, no ONNX.

``cp_nls`` (damped Gauss-Newton, the method of the CP-conv paper) and ``cp_als`` (tensorly's
ALS) share their signature conventions, output normalization and ``SolverState`` callbacks.

The pieces ``cp_nls`` is built from are public too, for studying the solver (as
``tools/solver_limits.py`` does): ``Matricization`` (a tensor's unfolding and the products with
it), ``Objective`` (the least-squares error and its gradient), ``GaussNewtonOperator`` (J^T J,
applied blockwise), ``initial_factors`` (cp_nls's SVD or random start), ``balance`` (equal
column norms across the factors) and ``hadamard_except`` (the Gram products the blocks use).
"""
from ._init import initialize as initial_factors
from ._kernels import GaussNewtonOperator, Matricization, balance, hadamard_except
from ._objective import Objective
from .als import cp_als
from .degeneracy import Degeneracy, degeneracy, relative_error
from .nls import cp_nls
from .state import SolverState

__all__ = ["cp_nls", "cp_als", "SolverState", "Degeneracy", "degeneracy", "relative_error",
           "GaussNewtonOperator", "Matricization", "Objective", "balance", "hadamard_except", "initial_factors"]
