"""ALS sweeps through the solver's two-product MTTKRPs, and what a move costs.

One sweep updates every factor by exact least squares with the others fixed, left group
first (from ``T2 @ KR_right``), then the right group (from ``T2^T @ KR_left`` with the new
left factors): two large products per sweep, the same as one Gauss-Newton gradient, against
one MTTKRP per mode in tensorly's ALS.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg.lapack

from ._kernels import Matricization, balance, gramians, group_mttkrp, hadamard_except

# Python and numpy call overhead, in floating-point operations of equal time (a few
# microseconds per call at the machine's matmul rate): it is what dominates small kernels.
FLOPS_PER_CALL = 2e5


def solve_gram(y: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """``y @ inv(gram)`` for a symmetric positive semi-definite R x R ``gram``.

    A relative ridge of 1e-12 keeps the Cholesky factorization alive when the Gramian is
    singular (more terms than the other modes can separate); least squares is the fallback.
    """
    ridge = 1e-12 * max(float(np.trace(gram)) / gram.shape[0], 1e-300)
    # LAPACK directly: scipy's wrappers cost more than the factorization at R = 32.
    chol, info = scipy.linalg.lapack.dpotrf(gram + ridge * np.eye(gram.shape[0]), lower=1)
    if info == 0:
        x, info = scipy.linalg.lapack.dpotrs(chol, y.T, lower=1)
        if info == 0:
            return x.T
    return np.linalg.lstsq(gram, y.T, rcond=None)[0].T


def als_sweep(mat: Matricization, t2: np.ndarray, factors: list[np.ndarray],
              w_left: np.ndarray | None = None) -> list[np.ndarray]:
    """One ALS sweep; ``w_left`` is ``t2 @ KR_right(factors)`` when the caller already has it."""
    factors = list(factors)
    k, n_modes = mat.k, len(factors)
    grams = gramians(factors)
    w = t2 @ mat.kr_right(factors) if w_left is None else w_left
    for i in range(k):
        factors[i] = solve_gram(group_mttkrp(w, factors[:k], i), hadamard_except(grams, {i}))
        grams[i] = factors[i].T @ factors[i]
    w = t2.T @ mat.kr_left(factors)
    for j in range(n_modes - k):
        i = k + j
        factors[i] = solve_gram(group_mttkrp(w, factors[k:], j), hadamard_except(grams, {i}))
        grams[i] = factors[i].T @ factors[i]
    return balance(factors)


class MoveCosts:
    """Deterministic cost estimates (in flops) of the solver's moves, so that choosing
    between them never depends on the clock and a seed still gives identical results."""

    def __init__(self, mat: Matricization, rank: int):
        sizes = mat.shape
        n = len(sizes)
        self.large = 2.0 * mat.n_left * mat.n_right * rank
        self.small = 2.0 * sum(sizes) * rank * rank  # one pass of (I_n x R) @ (R x R) over modes
        cholesky = n * rank**3 / 3.0
        self.sweep = 2 * self.large + 2 * self.small + cholesky + FLOPS_PER_CALL * 10 * n
        # A Gauss-Newton step: gradient, operator set-up, and per trial a preconditioner,
        # an evaluation and the CG iterations (three small passes and ~4 + 3n calls each).
        self.step_base = self.large + 2 * self.small + FLOPS_PER_CALL * (10 + 4 * n)
        self.trial_base = self.large + cholesky + FLOPS_PER_CALL * (10 + 3 * n)
        self.cg_iteration = 3 * self.small + FLOPS_PER_CALL * (4 + 3 * n)

    def gauss_newton(self, trials: int, cg_iterations: int) -> float:
        return self.step_base + trials * self.trial_base + cg_iterations * self.cg_iteration
