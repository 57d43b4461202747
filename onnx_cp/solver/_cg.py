"""Preconditioned conjugate gradients for the damped Gauss-Newton system of CP."""
from __future__ import annotations

import numpy as np
import scipy.linalg.lapack

from ._kernels import GaussNewtonOperator

# CG stops once the residual is this small relative to the gradient.
CG_TOL = 1e-6
# Use an explicit inverse in the preconditioner when I_n * ratio >= R.
INVERSE_MIN_RATIO = 8


class BlockJacobi:
    """``r_n -> r_n (Gamma_n + damping I)^-1`` per mode, from one Cholesky factorization each.

    Tall blocks use the explicit inverse (one GEMM per application); short ones, where
    forming the inverse costs more than a few triangular solves, use the factor.
    """

    def __init__(self, op: GaussNewtonOperator, damping: float):
        self.op = op
        self.solvers = []
        eye = np.eye(op.rank)
        for g, size in zip(op.gamma, op.sizes):
            chol, info = scipy.linalg.lapack.dpotrf(g + damping * eye, lower=1)
            # Gamma_n is only semidefinite; a damping this small can be lost in rounding.
            bump = 1e-12 * max(float(np.trace(g)) / op.rank, 1e-300)
            while info != 0:
                chol, info = scipy.linalg.lapack.dpotrf(g + (damping + bump) * eye, lower=1)
                bump *= 100.0
            if size * INVERSE_MIN_RATIO >= op.rank:
                inv, _ = scipy.linalg.lapack.dpotri(chol, lower=1)
                inv = np.tril(inv) + np.tril(inv, -1).T
                self.solvers.append(("inv", inv))
            else:
                self.solvers.append(("chol", chol))

    def apply(self, r_blocks: list[np.ndarray], z_blocks: list[np.ndarray]) -> None:
        """``z_n = r_n (Gamma_n + damping I)^-1`` for every mode, into ``z_blocks``."""
        for rb, zb, (kind, mat) in zip(r_blocks, z_blocks, self.solvers):
            if kind == "inv":
                np.matmul(rb, mat, out=zb)
            else:
                zb[...] = scipy.linalg.lapack.dpotrs(mat, rb.T, lower=1)[0].T


def pcg(op: GaussNewtonOperator, grad: np.ndarray, damping: float, max_iter: int):
    """Approximately solve ``(J^T J + damping I) p = -grad``.

    Returns the step p, the residual ``-grad - (J^T J + damping I) p`` and the number of
    CG iterations used.
    """
    precondition = BlockJacobi(op, damping)
    x = np.zeros_like(grad)
    r = -grad
    z = np.empty_like(grad)
    q = np.empty_like(grad)
    # The vectors are updated in place, so their per-mode views are made once.
    r_blocks, z_blocks = op.blocks(r), op.blocks(z)
    precondition.apply(r_blocks, z_blocks)
    d = z.copy()
    d_blocks, q_blocks = op.blocks(d), op.blocks(q)
    rz = float(r @ z)
    stop = CG_TOL * float(np.linalg.norm(grad))
    used = 0
    for used in range(1, max_iter + 1):
        op.apply_blocks(d, d_blocks, q, q_blocks, damping)
        dq = float(d @ q)
        if dq <= 0:
            break
        alpha = rz / dq
        x += alpha * d
        r -= alpha * q
        if np.linalg.norm(r) <= stop:
            break
        precondition.apply(r_blocks, z_blocks)
        rz_new = float(r @ z)
        d *= rz_new / rz
        d += z
        rz = rz_new
    return x, r, used
