"""CP fitting by alternating least squares: a thin wrapper around ``tensorly.decomposition.parafac``.

It gives ALS the same signature conventions, callback and output normalization as
``cp_nls``, so callers can swap the two methods.
"""
from __future__ import annotations

import time
import warnings
from typing import Callable

import numpy as np
from tensorly.cp_tensor import CPTensor
from tensorly.decomposition import parafac

from ._cp import factors_from_cp, to_cptensor, zero_cptensor
from ._init import svd_factors
from ._validate import as_rank, as_tensor, check_positive
from .state import SolverState


def cp_als(
    tensor,
    rank: int,
    *,
    init="svd",
    max_iter: int = 100,
    tol: float = 1e-8,
    random_state=None,
    callback: Callable[[SolverState], bool | None] | None = None,
) -> CPTensor:
    """Fit a rank-``rank`` CP model by ALS (tensorly's ``parafac``).

    Parameters
    ----------
    tensor : array_like
        Real tensor with at least 2 modes; computed in float64, returned in its floating dtype.
    rank : int
        Number of rank-one terms, >= 1.
    init : {"svd", "random"} or CPTensor
        Passed to tensorly (its own SVD and uniform-random starts).
    max_iter : int
        Number of ALS sweeps at most.
    tol : float
        tensorly's criterion: stop when the relative error changes by less than ``tol``
        between sweeps; 0 runs all ``max_iter`` sweeps.
    random_state : None, int or RandomState
        Passed to tensorly.
    callback : callable, optional
        ``callback(SolverState)`` after initialization (iteration 0) and after every sweep;
        returning True stops.

    Returns
    -------
    CPTensor
        Same convention as ``cp_nls``: unit-norm columns, term norms in the weights, sorted
        by decreasing weight.
    """
    t_start = time.perf_counter()
    t, dtype = as_tensor(tensor)
    rank = as_rank(rank)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    check_positive("tol", tol)
    if isinstance(init, str):
        if init not in ("svd", "random"):
            raise ValueError(f"cp_als init must be 'svd', 'random' or a CPTensor, got {init!r}")
    else:
        factors = factors_from_cp(init, t.shape)
        if factors[0].shape[1] != rank:
            raise ValueError(f"cp_als init has rank {factors[0].shape[1]} but rank={rank}")
        init = CPTensor((np.ones(rank), factors))
    norm = float(np.linalg.norm(t))
    narrow = _svd_too_narrow(t.shape, rank)
    if init == "svd" and narrow:
        # tensorly's SVD start returns fewer columns than the rank when a mode's unfolding has
        # fewer columns than that; start from cp_nls's SVD start, padded with random columns.
        rng = np.random.default_rng(random_state if isinstance(random_state, (int, np.integer)) else None)
        init = CPTensor((np.ones(rank), svd_factors(t, rank, rng)))
    if norm == 0.0:
        if callback is not None:
            callback(SolverState(0, 0.0, time.perf_counter() - t_start))
        return zero_cptensor(t.shape, rank, dtype)

    counter = [0]

    def tl_callback(_cp, rec_error):
        state = SolverState(counter[0], float(rec_error), time.perf_counter() - t_start)
        counter[0] += 1
        return callback(state) is True

    # return_errors=True: tensorly only computes the error it hands to the callback when
    # tol is nonzero or errors are returned, and tol=0 must still work.
    with warnings.catch_warnings():
        # tensorly warns whenever the rank exceeds a mode's size and then pads the start itself.
        warnings.filterwarnings("ignore", message="Trying to compute SVD", category=UserWarning)
        cp, _ = parafac(
            t, rank, n_iter_max=max_iter, init=init, tol=tol, random_state=random_state,
            return_errors=True, callback=None if callback is None else tl_callback,
            # More terms than a mode's unfolding has columns make ALS's normal equations singular;
            # a vanishing ridge keeps them solvable without moving the fit.
            l2_reg=1e-12 * norm**2 if narrow else 0,
        )
    weights, factors = cp
    factors = [np.asarray(f, dtype=np.float64) for f in factors]
    factors[0] = factors[0] * np.asarray(weights, dtype=np.float64)
    return to_cptensor(factors, 1.0, dtype)


def _svd_too_narrow(shape: tuple[int, ...], rank: int) -> bool:
    total = int(np.prod(shape))
    return any(total // n < rank for n in shape)
