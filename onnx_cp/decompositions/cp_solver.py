"""CP's boundary to the solvers: one kernel in, balanced CP factors out.

The CP decomposition (cp.py) sees only ``fit_kernel`` and ``KernelFit``; which solver ran, and
how, stays here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

METHODS = ("nls", "als")


@dataclass(frozen=True)
class KernelFit:
    """A rank-R CP model of one kernel: ``kernel ~= sum_r prod_n factors[n][:, r]``."""

    factors: tuple[np.ndarray, ...]  # float64, one (dim_n, rank) matrix per mode, scale balanced
    rel_error: float  # ||kernel - cp|| / ||kernel||
    degeneracy: float  # sum of squared rank-one term norms / ||cp||^2 (1 when terms are orthogonal)
    max_term_norm: float  # largest rank-one term norm, relative to ||kernel||
    stabilized: bool
    seconds: float


# (kernel, rank, seed) -> KernelFit; tests inject their own to check the realization alone.
Fitter = Callable[[np.ndarray, int, int], KernelFit]


@dataclass(frozen=True)
class FitOptions:
    method: str = "nls"
    max_iter: int = 500
    tol: float = 1e-9
    max_time: float | None = None  # the fit and its degeneracy correction together
    # The iterations alone (a rank search bounds a refit by its quick fit's time); the
    # correction then gets its own budget, as without max_time. Ignored when max_time is set.
    iteration_time: float | None = None
    stabilize: str = "auto"  # auto | always | never
    degeneracy_threshold: float = 10.0
    # Stop once the last PROGRESS_WINDOW iterations lowered the error by less than this
    # fraction: the tail of a fit buys little (a trained VGG-16 512x512x3x3 kernel at rank 64
    # is within 0.1% of its 500-iteration error after 100 iterations). 0 turns it off.
    progress_tol: float = 0.0


PROGRESS_WINDOW = 10
# Without a time budget, the degeneracy correction may take as long as the fit did, and at
# least this many seconds: it is a polish, and its 200 sweeps could otherwise dwarf the fit.
CORRECTION_MIN_SECONDS = 1.0


def stalled(progress_tol: float, window: int = PROGRESS_WINDOW) -> Callable:
    """A solver callback that stops the fit once ``window`` iterations gained less than
    ``progress_tol`` of the relative error."""
    history: list[float] = []

    def callback(state) -> bool:
        history.append(state.rel_error)
        if progress_tol <= 0 or len(history) <= window:
            return False
        old = history[-1 - window]
        return old - state.rel_error <= progress_tol * old

    return callback


def fit_kernel(kernel: np.ndarray, rank: int, seed: int, options: FitOptions,
               init: KernelFit | None = None) -> KernelFit:
    """Fit a rank-``rank`` CP model to ``kernel`` with the configured solver.

    ``init``: a fit of the same kernel at a neighbouring rank to start from (nls only; the
    solver adds small terms or drops the smallest to reach ``rank``).
    """
    from onnx_cp import solver

    start = time.perf_counter()
    tensor = np.asarray(kernel, dtype=np.float64)
    common = dict(max_iter=options.max_iter, tol=options.tol, random_state=seed,
                  callback=stalled(options.progress_tol))
    if options.method == "nls":
        start_from = "svd" if init is None else (np.ones(init.factors[0].shape[1]), list(init.factors))
        # With a budget and a correction that may follow, the fit leaves a fifth of it.
        fit_time = options.iteration_time if options.max_time is None else \
            options.max_time * (1.0 if options.stabilize == "never" else 0.8)
        cp = solver.cp_nls(tensor, rank, init=start_from, max_time=fit_time,
                           stabilize=options.stabilize == "always", **common)
    elif options.method == "als":
        cp = solver.cp_als(tensor, rank, **common)
    else:
        raise ValueError(f"unknown method {options.method!r}; choose one of {METHODS}")
    stabilized = options.stabilize == "always" and options.method == "nls"
    measure = solver.degeneracy(cp)
    if (options.stabilize == "auto" and options.method == "nls"
            and measure.measure > options.degeneracy_threshold):
        # Phan et al.: same fit error, much smaller (cancelling) rank-one terms. The fit is
        # corrected as it is (max_iter=0): fitting on first only drives the terms further apart
        # (a 128x64x3x3 rank-8 kernel went from measure 6e9 to 5e10, beyond what the correction's
        # 200 sweeps undo; corrected as fitted it ends at 3).
        spent = time.perf_counter() - start
        budget = max(spent, CORRECTION_MIN_SECONDS)
        if options.max_time is not None:
            budget = max(min(budget, options.max_time - spent), 1e-3)
        cp = solver.cp_nls(tensor, rank, init=cp, max_iter=0, stabilize=True, random_state=seed,
                           max_time=budget)
        measure = solver.degeneracy(cp)
        stabilized = True
    factors = balance(cp.weights, cp.factors)
    return KernelFit(
        factors=factors,
        rel_error=float(solver.relative_error(tensor, cp)),
        degeneracy=float(measure.measure),
        max_term_norm=float(measure.max_term_norm),
        stabilized=stabilized,
        seconds=time.perf_counter() - start,
    )


def balance(weights: np.ndarray | None, factors) -> tuple[np.ndarray, ...]:
    """Spread each term's scale evenly over the modes, so no factor is huge (matters in float16)."""
    mats = [np.asarray(f, dtype=np.float64) for f in factors]
    rank = mats[0].shape[1]
    scale = np.ones(rank) if weights is None else np.asarray(weights, dtype=np.float64).copy()
    for m in mats:
        norms = np.linalg.norm(m, axis=0)
        scale = scale * norms
        m /= np.where(norms > 0, norms, 1.0)
    sign = np.sign(scale)
    root = np.abs(scale) ** (1.0 / len(mats))
    mats[0] *= sign
    return tuple(m * root for m in mats)
