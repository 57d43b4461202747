"""Dense kernels shared by the CP solvers: Khatri-Rao products, MTTKRPs, Gramians, J^T J.

The tensor is viewed once as a C-ordered matrix ``T2`` of shape (P_left, P_right), the modes
split into a left group ``0..k-1`` and a right group ``k..N-1`` with balanced sizes. Then

* the model is ``KR_left @ KR_right.T`` (one BLAS product),
* every mode's MTTKRP comes from the two products ``X2 @ KR_right`` and ``X2.T @ KR_left``
  followed by cheap contractions inside each group,

so one gradient costs two large contractions however many modes there are, and no
Khatri-Rao product larger than one group's is ever formed.
"""
from __future__ import annotations

import math

import numpy as np


def khatri_rao(mats: list[np.ndarray], rank: int) -> np.ndarray:
    """Column-wise Khatri-Rao product in C order (the last matrix's row index varies fastest).

    An empty list gives a (1, rank) matrix of ones.
    """
    if not mats:
        return np.ones((1, rank))
    out = mats[0]
    for m in mats[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, rank)
    return out


def split_point(shape: tuple[int, ...]) -> int:
    """Number of leading modes in the left group: the k in 1..N-1 that balances the two sizes.

    Balanced groups keep both large products well shaped for BLAS and both partial
    Khatri-Rao products small.
    """
    logs = np.log(np.asarray(shape, dtype=float))
    total = logs.sum()
    cum = np.cumsum(logs)[:-1]
    return int(np.argmin(np.abs(2 * cum - total))) + 1


def group_mttkrp(w: np.ndarray, factors: list[np.ndarray], i: int) -> np.ndarray:
    """MTTKRP of mode ``i`` of a group from its partial contraction ``w``.

    ``w`` has shape (prod of the group's sizes, R): the tensor already contracted with the
    other group's Khatri-Rao product. Contracts the remaining modes of the group except ``i``.
    """
    if len(factors) == 1:
        return w
    rank = w.shape[-1]
    n_pre = math.prod(f.shape[0] for f in factors[:i])
    n_post = math.prod(f.shape[0] for f in factors[i + 1:])
    w4 = w.reshape(n_pre, factors[i].shape[0], n_post, rank)
    # Test for factors, not sizes: a size-1 mode still scales its terms.
    if i + 1 < len(factors):
        w3 = np.einsum("aibr,br->air", w4, khatri_rao(factors[i + 1:], rank))
    else:
        w3 = w4[:, :, 0, :]
    if i > 0:
        return np.einsum("air,ar->ir", w3, khatri_rao(factors[:i], rank))
    return np.ascontiguousarray(w3[0])


class Matricization:
    """The fixed (left modes) x (right modes) matrix view of tensors of one shape."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(s) for s in shape)
        self.k = split_point(self.shape)
        self.n_left = math.prod(self.shape[: self.k])
        self.n_right = math.prod(self.shape[self.k:])

    def matrix(self, tensor: np.ndarray) -> np.ndarray:
        """The (P_left, P_right) view of a C-ordered tensor of this shape."""
        return tensor.reshape(self.n_left, self.n_right)

    def kr_left(self, factors: list[np.ndarray]) -> np.ndarray:
        return khatri_rao(factors[: self.k], factors[0].shape[1])

    def kr_right(self, factors: list[np.ndarray]) -> np.ndarray:
        return khatri_rao(factors[self.k:], factors[0].shape[1])

    def reconstruct(self, factors: list[np.ndarray]) -> np.ndarray:
        """The model ``[[U_1, ..., U_N]]`` as a (P_left, P_right) matrix."""
        return self.kr_left(factors) @ self.kr_right(factors).T

    def left_mttkrps(self, x2: np.ndarray, factors: list[np.ndarray], modes=None) -> list[np.ndarray]:
        """MTTKRPs of ``x2`` for the left modes (all, or those listed in ``modes``)."""
        w = x2 @ self.kr_right(factors)
        left = factors[: self.k]
        modes = range(self.k) if modes is None else modes
        return [group_mttkrp(w, left, i) for i in modes]

    def right_mttkrps(self, x2: np.ndarray, factors: list[np.ndarray], modes=None) -> list[np.ndarray]:
        """MTTKRPs of ``x2`` for the right modes (all, or those listed in ``modes``, 0-based
        within the right group)."""
        w = x2.T @ self.kr_left(factors)
        right = factors[self.k:]
        modes = range(len(right)) if modes is None else modes
        return [group_mttkrp(w, right, i) for i in modes]

    def mttkrps(self, x2: np.ndarray, factors: list[np.ndarray]) -> list[np.ndarray]:
        """``X_(n) @ KR(U_m, m != n)`` for every mode n: two large products in all."""
        return self.left_mttkrps(x2, factors) + self.right_mttkrps(x2, factors)


def gramians(factors: list[np.ndarray]) -> list[np.ndarray]:
    return [u.T @ u for u in factors]


def hadamard_except(grams: list[np.ndarray], skip: set[int]) -> np.ndarray:
    """Entrywise product of the Gramians whose index is not in ``skip`` (ones if none left)."""
    out = None
    for n, g in enumerate(grams):
        if n in skip:
            continue
        out = g.copy() if out is None else out * g
    if out is None:
        out = np.ones_like(grams[0])
    return out


def balance(factors: list[np.ndarray]) -> list[np.ndarray]:
    """Rescale the columns so that term r has the same column norm in every mode.

    The model is unchanged; equal norms keep J^T J's blocks on the same scale, which is what
    makes one damping parameter fit all modes. Terms with a zero column become all zero.
    """
    scales = balancing_scales(np.stack([np.linalg.norm(u, axis=0) for u in factors]))
    return [u * c for u, c in zip(factors, scales)]


def balancing_scales(norms: np.ndarray) -> np.ndarray:
    """Per-mode column scales (N, R) that give every mode of term r the geometric mean of its
    column ``norms`` (N, R); a term with a zero column gets scale 0 everywhere."""
    target = np.prod(norms, axis=0) ** (1.0 / norms.shape[0])
    return np.divide(target, norms, out=np.zeros_like(norms), where=norms > 0)


class GaussNewtonOperator:
    """J^T J of the CP model at fixed factors, applied without forming J.

    Block (n, m) of J^T J maps X_m to ``U_n (Gamma_nm * (X_m^T U_m))`` for m != n and to
    ``X_n Gamma_n`` for m == n, where Gamma_n (Gamma_nm) is the entrywise product of all
    Gramians but n (but n and m). One product costs about ``6 sum_n I_n R^2`` flops.
    """

    def __init__(self, factors: list[np.ndarray], grams: list[np.ndarray] | None = None):
        self.factors = factors
        self.rank = factors[0].shape[1]
        self.sizes = [u.shape[0] for u in factors]
        self.offsets = np.concatenate([[0], np.cumsum([s * self.rank for s in self.sizes])])
        grams = gramians(factors) if grams is None else grams
        self.grams = grams
        n = len(factors)
        self.gamma = [hadamard_except(grams, {i}) for i in range(n)]
        # Stacked pair products (zero on the diagonal) so that one einsum forms every S_n.
        self.gamma_pair = np.zeros((n, n, self.rank, self.rank))
        for i in range(n):
            for j in range(i + 1, n):
                self.gamma_pair[i, j] = self.gamma_pair[j, i] = hadamard_except(grams, {i, j})
        self._z = np.empty((n, self.rank, self.rank))
        self._su = [np.empty((s, self.rank)) for s in self.sizes]

    def blocks(self, flat: np.ndarray) -> list[np.ndarray]:
        """Per-mode (I_n, R) views into a flat vector of all factor entries."""
        return [
            flat[self.offsets[i]: self.offsets[i + 1]].reshape(s, self.rank)
            for i, s in enumerate(self.sizes)
        ]

    def max_diagonal(self) -> float:
        return float(max(np.max(np.diag(g)) for g in self.gamma))

    def apply(self, x: np.ndarray, out: np.ndarray, damping: float) -> np.ndarray:
        """``out = (J^T J + damping I) x`` for flat vectors."""
        return self.apply_blocks(x, self.blocks(x), out, self.blocks(out), damping)

    def apply_blocks(self, x, x_blocks, out, out_blocks, damping: float) -> np.ndarray:
        """``apply`` with the per-mode views of ``x`` and ``out`` made by the caller (CG makes
        them once per solve; at small ranks making them cost as much as the products)."""
        z = self._z
        for i, (u, xb) in enumerate(zip(self.factors, x_blocks)):
            np.matmul(xb.T, u, out=z[i])
        s = np.einsum("nmab,mab->nab", self.gamma_pair, z)
        for i, (u, xb, ob) in enumerate(zip(self.factors, x_blocks, out_blocks)):
            np.matmul(xb, self.gamma[i], out=ob)
            ob += np.matmul(u, s[i], out=self._su[i])
        if damping:
            out += damping * x
        return out
