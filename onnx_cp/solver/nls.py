"""CP fitting by damped Gauss-Newton (Levenberg-Marquardt), as Tensorlab's cpd_nls, with ALS
sweeps where they are cheaper.

Minimizes ``1/2 ||T - [[U_1, ..., U_N]]||^2``. A Gauss-Newton iteration

1. takes the gradient from one MTTKRP per mode (one large product, the other reused from
   the evaluation of the point; see ``_objective``),
2. solves ``(J^T J + lambda I) p = -g`` approximately by preconditioned CG (``_cg``), with
   J^T J applied through the factor Gramians and the block-Jacobi preconditioner
   ``(Gamma_n + lambda I)^-1`` (one R x R Cholesky per mode); few CG iterations far from a
   minimum, more while the quadratic model predicts well,
3. evaluates the trial point (one large product) and accepts it only if the error drops;
   lambda follows Nielsen's update, so rejected steps get more damping.

An ALS sweep (``_sweeps``) costs two large products and no CG. Each iteration runs the move
that lowered the error most per estimated flop when it last ran (``descend``).

The tensor is scaled to unit norm inside, so damping and tolerances are scale-free.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tensorly.cp_tensor import CPTensor

from . import _threads
from ._cg import pcg
from ._cp import to_cptensor, zero_cptensor
from ._init import initialize
from ._kernels import GaussNewtonOperator, Matricization
from ._objective import Objective, Point
from ._sweeps import MoveCosts, als_sweep
from ._validate import as_rank, as_rng, as_tensor, check_positive
from .stabilize import stabilize_factors
from .state import SolverState

# Initial damping relative to the largest diagonal entry of J^T J (Nielsen's tau).
DAMPING_INIT = 1e-3
# Floor of the damping, relative to the same entry.
DAMPING_MIN = 1e-15
# CG iterations per step at the start; the limit doubles (up to cg_max_iter) after steps
# whose decrease the Gauss-Newton model predicted well and halves after poor ones.
CG_START = 5
# Per iteration that a move sits idle, its last measured progress rate is scaled by this, so
# it is re-tried after about 25 iterations of a move that progresses 10 times slower than it
# last did (without this, a swamp kept ALS crawling for hundreds of sweeps on a 12x8x1x5
# rank-5 tensor that Gauss-Newton recovers exactly).
IDLE_RATE_GROWTH = 1.1
# Damping beyond this multiple of the largest diagonal entry means no step can help.
DAMPING_MAX = 1e12


def cp_nls(
    tensor,
    rank: int,
    *,
    init="svd",
    max_iter: int = 500,
    tol: float = 1e-8,
    max_time: float | None = None,
    stabilize: bool = False,
    random_state=None,
    callback: Callable[[SolverState], bool | None] | None = None,
    stabilize_slack: float = 0.005,
    step_tol: float = 1e-12,
    cg_max_iter: int = 20,
) -> CPTensor:
    """Fit a rank-``rank`` CP model to ``tensor`` by damped Gauss-Newton.

    Iterations are Levenberg-Marquardt steps or ALS sweeps, whichever lowered the error most
    per estimated flop when it last ran: sweeps far from a minimum and on unstructured kernels,
    Gauss-Newton near a minimum. The choice uses flop counts, not the clock (deterministic).

    Parameters
    ----------
    tensor : array_like
        Real tensor with at least 2 modes, e.g. a conv kernel (T, S, kh, kw). Computation is
        in float64; the result has the tensor's floating dtype (float64 for integer input).
    rank : int
        Number of rank-one terms, >= 1. May exceed every dimension.
    init : {"svd", "random", "als"} or CPTensor
        Starting point. "svd": leading singular vectors of each unfolding (random unit
        columns where the rank exceeds a dimension); "random": Gaussian factors; both then
        get least-squares term weights. "als": "svd" followed by a few ALS sweeps. A CPTensor
        or ``(weights, factors)`` pair is a warm start: with the same rank the solver continues
        from its error; with fewer terms it gets small random terms added (norm 1e-3 of the
        tensor's), with more terms only the largest ``rank`` are kept.
    max_iter : int
        Maximum number of accepted steps, Gauss-Newton steps and ALS sweeps together
        (0 returns the initialization).
    tol : float
        Stop when an accepted step lowers the relative error by less than ``tol`` times
        its previous value.
    max_time : float, optional
        Wall-clock budget in seconds for initialization, fit and ``stabilize`` together,
        checked before every trial step and correction sweep, so it can be overrun by about
        one iteration.
    stabilize : bool
        After the fit, apply the error-preserving degeneracy correction of Phan et al.
        (``onnx_cp.solver.stabilize``): minimize the sum of squared rank-one term norms while
        the error stays at most ``1 + stabilize_slack`` times the fit's. Its cost is at most
        200 sweeps of about one ALS sweep each, within ``max_time``.
    stabilize_slack : float
        Relative error increase the correction may spend. A converged degenerate fit sits at
        the bottom of a narrow valley, so with 0 the norms barely move; the default 0.5%
        typically removes most of the cancellation.
    random_state : None, int, numpy Generator or RandomState
        Seed for the random parts of the initialization; a given seed gives identical output.
    callback : callable, optional
        ``callback(SolverState)`` after initialization (iteration 0) and after every accepted
        step; returning True stops the fit. The reported errors never increase.
    step_tol : float
        Stop when a step's norm falls below ``step_tol`` times the factors' norm.
    cg_max_iter : int
        Maximum number of CG iterations per Gauss-Newton step. Steps start with 5; the
        limit doubles up to ``cg_max_iter`` while the Gauss-Newton model predicts the
        decrease well (near a minimum) and halves when it does not. Cheap inexact steps are
        what make the solver fast far from a minimum (see docs/solver.md).

    Returns
    -------
    CPTensor
        ``(weights, factors)``: ``weights[r]`` is the Frobenius norm of term r, every factor
        column has unit norm, terms are sorted by decreasing weight, and
        ``tensorly.cp_to_tensor`` rebuilds the approximation. A zero tensor gives zero weights
        and zero factors.

    Raises
    ------
    ValueError
        For NaN or Inf entries, a rank that is not a positive integer, a bad ``init``, or
        out-of-range options.
    """
    t_start = time.perf_counter()
    t, dtype = as_tensor(tensor)
    rank = as_rank(rank)
    _check_options(max_iter, tol, max_time, step_tol, cg_max_iter)
    check_positive("stabilize_slack", stabilize_slack)
    rng = as_rng(random_state)

    def notify(iteration: int, rel_error: float) -> bool:
        if callback is None:
            return False
        state = SolverState(iteration, float(rel_error), time.perf_counter() - t_start)
        return callback(state) is True

    norm = float(np.linalg.norm(t))
    if norm == 0.0:
        notify(0, 0.0)
        return zero_cptensor(t.shape, rank, dtype)
    t /= norm
    mat = Matricization(t.shape)
    deadline = math.inf if max_time is None else t_start + max_time
    with _threads.single_blas_thread():
        factors = initialize(t, mat, rank, init, rng, norm)
        factors = descend(
            mat.matrix(t), mat, factors, max_iter=max_iter, tol=tol, step_tol=step_tol,
            cg_max_iter=cg_max_iter, deadline=deadline, notify=notify,
        )
        if stabilize:
            factors = stabilize_factors(mat.matrix(t), mat, factors, slack=stabilize_slack, deadline=deadline)
    return to_cptensor(factors, norm, dtype)


def _check_options(max_iter, tol, max_time, step_tol, cg_max_iter):
    for name, value, low in (("max_iter", max_iter, 0), ("cg_max_iter", cg_max_iter, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    check_positive("tol", tol)
    check_positive("step_tol", step_tol)
    check_positive("max_time", max_time, allow_none=True)


@dataclass
class _Move:
    """The outcome of one move: the (possibly re-evaluated) start, the new point or None."""

    start: Point
    trial: Point | None
    cost: float
    step_norm: float = math.inf
    x_norm: float = 0.0


def descend(t2, mat, factors, *, max_iter, tol, step_tol, cg_max_iter, deadline, notify):
    """Monotone descent on the unit-norm matrix view ``t2``; returns the factors.

    Each iteration is either an ALS sweep or a Levenberg-Marquardt step, whichever lowered
    ``log f`` most per estimated flop the last time it ran (untried moves first, Gauss-Newton
    before ALS). ALS sweeps win far from a minimum and in the swamps of unstructured kernels,
    where a Gauss-Newton step's CG solves cost several sweeps for less progress; Gauss-Newton
    wins near a minimum, where ALS slows to a crawl. The costs are flop counts, not clock readings, so a seed still
    gives identical results.
    """
    objective = Objective(t2, mat)
    point = objective.evaluate(factors)
    if not objective.trustworthy(point):
        objective.explicit = True
        point = objective.evaluate(factors)
    reported = point.f
    if notify(0, math.sqrt(2 * max(point.f, 0.0))) or max_iter == 0:
        return factors
    costs = MoveCosts(mat, factors[0].shape[1])
    gauss_newton = _GaussNewtonSteps(objective, cg_max_iter, step_tol)
    rate = {"als": math.inf, "gn": math.inf}
    iteration = 0
    while iteration < max_iter and time.perf_counter() < deadline:
        # Gauss-Newton first: a first sweep from the SVD start led into a worse basin on
        # some kernels (the decaying 256x48x5x5 rank 64 of docs/solver.md stalled at 0.298).
        kind = "als" if rate["als"] > rate["gn"] else "gn"
        if kind == "als":
            move = _als_move(objective, point, costs)
        else:
            move = gauss_newton.step(point, reported, deadline, costs)
        point = move.start
        trial = move.trial
        if trial is None or not (trial.f < point.f and trial.f < reported):
            if kind == "gn":
                break  # no damping gives a decrease: a minimum, as far as rounding can tell
            rate["als"] = 0.0  # ALS stalled; Gauss-Newton from here on
            continue
        rate[kind] = math.log(point.f / trial.f) / move.cost if trial.f > 0 else math.inf
        # The idle move's rate is an old measurement; let it grow so it gets re-tried (a swamp
        # slows ALS to a crawl where a Gauss-Newton step measured long ago would now do better).
        idle = "gn" if kind == "als" else "als"
        rate[idle] *= IDLE_RATE_GROWTH
        iteration += 1
        err_old = math.sqrt(2 * reported)
        point = trial
        reported = point.f
        err = math.sqrt(2 * max(point.f, 0.0))
        if notify(iteration, err):
            break
        if err_old - err <= tol * err_old or move.step_norm <= step_tol * move.x_norm:
            break
        if kind == "gn":  # a sweep's factors come out balanced already
            point = point.balanced(mat.k)
    return point.factors


def _als_move(objective: Objective, point: Point, costs: MoveCosts) -> _Move:
    factors = als_sweep(objective.mat, objective.t2, point.factors, point.w_left)
    trial = objective.evaluate(factors)
    cost = costs.sweep + (costs.large if point.w_left is None else 0.0)
    if not objective.trustworthy(point, trial, decrease=point.f - trial.f):
        objective.explicit = True
        point, trial = objective.evaluate(point.factors), objective.evaluate(factors)
    return _Move(point, trial, cost)


class _GaussNewtonSteps:
    """Levenberg-Marquardt steps; damping and the CG limit carry over from step to step."""

    def __init__(self, objective: Objective, cg_max_iter: int, step_tol: float):
        self.objective, self.cg_max_iter, self.step_tol = objective, cg_max_iter, step_tol
        self.damping: float | None = None
        self.growth = 2.0
        self.cg_limit = min(CG_START, cg_max_iter)

    def step(self, point: Point, reported: float, deadline: float, costs: MoveCosts) -> _Move:
        """One accepted step from ``point``, with as many damping increases as it takes."""
        objective = self.objective
        op = GaussNewtonOperator(point.factors, point.grams)
        grad = objective.gradient(point, op.gamma)
        trials = cg_total = 0
        if not np.any(grad):
            return _Move(point, None, costs.gauss_newton(0, 0))
        diag_max = op.max_diagonal()
        if self.damping is None:
            self.damping = DAMPING_INIT * diag_max
        # A vanishing damping would underflow and make the block preconditioner singular.
        self.damping = max(self.damping, DAMPING_MIN * diag_max)
        x_norm = math.sqrt(sum(float(np.vdot(u, u)) for u in point.factors))
        step_norm = math.inf
        while time.perf_counter() < deadline:
            step, cg_resid, cg_used = pcg(op, grad, self.damping, self.cg_limit)
            trials, cg_total = trials + 1, cg_total + cg_used
            # Decrease predicted by the Gauss-Newton model, from CG's residual r = -g - (A + lambda) p.
            pred = 0.5 * (-grad @ step + step @ cg_resid + self.damping * (step @ step))
            trial = objective.evaluate([u + s for u, s in zip(point.factors, op.blocks(step))])
            if not objective.trustworthy(point, trial, decrease=point.f - trial.f):
                objective.explicit = True
                point = objective.evaluate(point.factors)
                trial = objective.evaluate(trial.factors)
            step_norm = float(np.linalg.norm(step))
            if trial.f < point.f and trial.f < reported:
                rho = (point.f - trial.f) / pred if pred > 0 else 0.0
                self.damping *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                self.growth = 2.0
                # Solve more accurately while the quadratic model is trustworthy (fast local
                # convergence), cheaply while it is not (far from a minimum).
                if rho > 0.9 and cg_used >= self.cg_limit:
                    self.cg_limit = min(2 * self.cg_limit, self.cg_max_iter)
                elif rho < 0.5:
                    self.cg_limit = max(self.cg_limit // 2, min(CG_START, self.cg_max_iter))
                return _Move(point, trial, costs.gauss_newton(trials, cg_total), step_norm, x_norm)
            self.damping *= self.growth
            self.growth *= 2.0
            if step_norm <= self.step_tol * x_norm or self.damping > DAMPING_MAX * diag_max:
                break
        return _Move(point, None, costs.gauss_newton(trials, cg_total), step_norm, x_norm)
