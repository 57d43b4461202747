"""Conversions between tensorly CPTensors and the solvers' internal factor lists."""
from __future__ import annotations

import numpy as np
from tensorly.cp_tensor import CPTensor


def factors_from_cp(cp, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Float64 factor copies of a CPTensor or (weights, factors) pair, weights folded in.

    Raises ValueError when the factors do not fit ``shape``.
    """
    try:
        weights, factors = cp
    except (TypeError, ValueError):
        raise ValueError(
            f"a CP init must be a CPTensor or a (weights, factors) pair, got {type(cp).__name__}"
        ) from None
    factors = [np.array(f, dtype=np.float64, copy=True) for f in factors]
    if len(factors) != len(shape):
        raise ValueError(
            f"CP init has {len(factors)} factors but the tensor has {len(shape)} modes (shape {shape})"
        )
    for n, (f, s) in enumerate(zip(factors, shape)):
        if f.ndim != 2 or f.shape[0] != s:
            raise ValueError(
                f"CP init factors[{n}].shape={f.shape} does not fit tensor.shape[{n}]={s}"
            )
    ranks = {f.shape[1] for f in factors}
    if len(ranks) != 1:
        shapes = ", ".join(f"factors[{n}].shape[1]={f.shape[1]}" for n, f in enumerate(factors))
        raise ValueError(f"CP init factors disagree on the rank: {shapes}")
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != factors[0].shape[1]:
            raise ValueError(
                f"CP init has {w.shape[0]} weights but its factors have {factors[0].shape[1]} columns"
            )
        factors[0] = factors[0] * w
    for n, f in enumerate(factors):
        if not np.all(np.isfinite(f)):
            raise ValueError(f"CP init factors[{n}] contains NaN or Inf values")
    return factors


def to_cptensor(factors: list[np.ndarray], scale: float, dtype) -> CPTensor:
    """The solver's output convention: unit-norm factor columns, the scale in the weights.

    ``weights[r]`` is the Frobenius norm of rank-one term r (times ``scale``, the tensor
    norm the solver divided out), terms are sorted by decreasing weight, and a zero term
    has weight 0 and zero columns.
    """
    norms = np.stack([np.linalg.norm(u, axis=0) for u in factors])
    weights = np.prod(norms, axis=0) * scale
    order = np.argsort(-weights, kind="stable")
    out = []
    for u, nrm in zip(factors, norms):
        nz = nrm > 0
        v = np.zeros_like(u)
        v[:, nz] = u[:, nz] / nrm[nz]
        # A term that is zero in any mode is zero: clear its other columns too.
        v[:, weights == 0] = 0.0
        out.append(np.ascontiguousarray(v[:, order]).astype(dtype, copy=False))
    return CPTensor((weights[order].astype(dtype, copy=False), out))


def zero_cptensor(shape: tuple[int, ...], rank: int, dtype) -> CPTensor:
    return CPTensor(
        (np.zeros(rank, dtype=dtype), [np.zeros((s, rank), dtype=dtype) for s in shape])
    )
