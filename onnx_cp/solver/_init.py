"""Starting points for the CP solvers: SVD, random, a few ALS sweeps, or a given CP model.

All functions work on the solver's unit-norm float64 copy of the tensor and return
balanced factor lists (see ``_kernels.balance``).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from ._cp import factors_from_cp
from ._kernels import Matricization, balance, gramians, hadamard_except
from ._sweeps import als_sweep

# ALS sweeps behind init="als": enough to leave the SVD start's bad basin, cheap next to NLS.
ALS_INIT_SWEEPS = 5
# A warm start with fewer terms than asked gets its new terms at this fraction of the
# tensor norm: small enough to barely move the error, large enough to have a gradient.
PAD_TERM_NORM = 1e-3


def fit_weights(mat: Matricization, t2: np.ndarray, factors: list[np.ndarray]) -> list[np.ndarray]:
    """Rescale the terms by the least-squares weights for fixed column directions.

    Both SVD and random starts have arbitrary term scales; solving the R x R normal
    equations for the weights costs one MTTKRP and removes that arbitrariness.
    """
    y0 = mat.left_mttkrps(t2, factors, modes=[0])[0]
    m = np.sum(y0 * factors[0], axis=0)
    h = hadamard_except(gramians(factors), set())
    ridge = 1e-10 * max(float(np.trace(h)) / h.shape[0], 1e-300)
    try:
        w = scipy.linalg.solve(h + ridge * np.eye(h.shape[0]), m, assume_a="pos")
    except np.linalg.LinAlgError:
        w = np.linalg.lstsq(h, m, rcond=None)[0]
    out = list(factors)
    out[0] = factors[0] * w
    return balance(out)


def svd_factors(tensor: np.ndarray, rank: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Leading left singular vectors of each unfolding; random unit columns beyond a mode's size."""
    factors = []
    for n, size in enumerate(tensor.shape):
        # Eigenvectors of the (size x size) Gram matrix: cheap for conv kernels' channel counts.
        vecs = _leading_eigenvectors(_unfolding_gram(tensor, n), min(rank, size))
        if vecs.shape[1] < rank:
            pad = rng.standard_normal((size, rank - vecs.shape[1]))
            vecs = np.hstack([vecs, pad / np.linalg.norm(pad, axis=0)])
        factors.append(vecs)
    return factors


def _unfolding_gram(tensor: np.ndarray, n: int) -> np.ndarray:
    """``X_(n) X_(n)^T``; the first and last modes need no transposed copy of the tensor."""
    size = tensor.shape[n]
    if n == 0:
        a = tensor.reshape(size, -1)
        return a @ a.T
    if n == tensor.ndim - 1:
        a = tensor.reshape(-1, size)
        return a.T @ a
    a = np.moveaxis(tensor, n, 0).reshape(size, -1)
    return a @ a.T


def _leading_eigenvectors(gram: np.ndarray, k: int) -> np.ndarray:
    """The k leading eigenvectors as C-ordered columns, largest eigenvalue first.

    LAPACK's full decomposition beats its partial one on this machine unless k is a small
    part of a large matrix (a few hundred rows and more). C order matters: LAPACK returns
    Fortran order, and elementwise products keep it, which made every later Khatri-Rao
    product strided.
    """
    size = gram.shape[0]
    if size <= 256 or 4 * k >= size:
        vecs = np.linalg.eigh(gram)[1][:, size - k:]
    else:
        vecs = scipy.linalg.eigh(gram, subset_by_index=[size - k, size - 1])[1]
    return np.ascontiguousarray(vecs[:, ::-1])


def random_factors(shape: tuple[int, ...], rank: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal((s, rank)) / np.sqrt(s) for s in shape]


def als_sweeps(mat: Matricization, t2: np.ndarray, factors: list[np.ndarray], n_sweeps: int):
    for _ in range(n_sweeps):
        factors = als_sweep(mat, t2, factors)
    return factors


def resize_rank(factors: list[np.ndarray], rank: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Fit a warm start to ``rank`` terms: keep the largest terms, or add small random ones."""
    have = factors[0].shape[1]
    if have == rank:
        return factors
    if have > rank:
        norms = np.prod([np.linalg.norm(u, axis=0) for u in factors], axis=0)
        keep = np.sort(np.argsort(-norms, kind="stable")[:rank])
        return [u[:, keep] for u in factors]
    extra = random_factors(tuple(u.shape[0] for u in factors), rank - have, rng)
    col = PAD_TERM_NORM ** (1.0 / len(factors))
    extra = [e / np.linalg.norm(e, axis=0) * col for e in extra]
    return [np.hstack([u, e]) for u, e in zip(factors, extra)]


def initialize(tensor, mat, rank, init, rng, scale: float) -> list[np.ndarray]:
    """Balanced starting factors for the unit-norm ``tensor`` (see cp_nls's ``init``).

    ``scale`` is the norm the caller divided out of the tensor; a CP init is in the
    caller's units and is divided by it too.
    """
    t2 = mat.matrix(tensor)
    if isinstance(init, str):
        if init == "svd":
            return fit_weights(mat, t2, svd_factors(tensor, rank, rng))
        if init == "random":
            return fit_weights(mat, t2, random_factors(tensor.shape, rank, rng))
        if init == "als":
            start = fit_weights(mat, t2, svd_factors(tensor, rank, rng))
            return als_sweeps(mat, t2, start, ALS_INIT_SWEEPS)
        raise ValueError(f"init must be 'svd', 'random', 'als' or a CPTensor, got {init!r}")
    factors = factors_from_cp(init, tensor.shape)
    factors[0] = factors[0] / scale
    return balance(resize_rank(factors, rank, rng))
