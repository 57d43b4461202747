"""Error-preserving degeneracy correction (Phan et al., ECCV 2020).

Degenerate CP fits contain huge rank-one terms that cancel each other. Given a fit with
error ``delta``, this minimizes the sum of squared term norms

    sum_r prod_n ||u_n^r||^2    subject to    ||T - [[U_1, ..., U_N]]|| <= delta

by cycling over the modes. With the other factors fixed, mode n's problem is a quadratic
objective ``tr(U D U^T)`` (D = diag of the Hadamard product of the other Gramians) on the
ellipsoid ``||T_(n) - U K^T||^2 <= delta^2``. Its solution is ``U(mu) = mu Y (D + mu Gamma)^-1``
(Y the MTTKRP, Gamma the Hadamard product of the other Gramians) for the Lagrange multiplier
mu that puts the error on the bound; one eigendecomposition of ``D^-1/2 Gamma D^-1/2`` makes
the error a scalar function of mu, found by a 1-D root search. The current factors are
feasible for every subproblem, so the objective never increases and the bound always holds.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.optimize

from ._kernels import Matricization, balance, gramians, group_mttkrp, hadamard_except

# Sweeps over all modes at most; each costs about one ALS sweep.
MAX_SWEEPS = 200
# Rounding model (eps with room for the sums' length) of the closed-form error updates.
ROUNDING = 1e-14
# Bisection steps that bring mu back onto the bound when the closed form misses it.
BISECTIONS = 12
# Relative margin inside the error bound that the per-mode updates aim for.
INNER_MARGIN = 1e-6
# Stop when the sum of squared term norms falls by less than this fraction per sweep,
# averaged over PATIENCE sweeps.
SWEEP_RTOL = 1e-3
PATIENCE = 5


def term_norms_sq(factors: list[np.ndarray]) -> np.ndarray:
    """Squared Frobenius norm of every rank-one term."""
    return np.prod([np.sum(u * u, axis=0) for u in factors], axis=0)


def stabilize_factors(
    t2: np.ndarray,
    mat: Matricization,
    factors: list[np.ndarray],
    *,
    slack: float = 0.0,
    max_sweeps: int = MAX_SWEEPS,
    rtol: float = SWEEP_RTOL,
    deadline: float = math.inf,
) -> list[np.ndarray]:
    """Minimize the squared term norms of ``factors`` without raising their error on ``t2``.

    Parameters
    ----------
    t2 : ndarray
        The tensor as ``mat``'s matrix view.
    mat : Matricization
    factors : list of ndarray
        The fit to correct; its error times ``1 + slack`` is the bound.
    slack : float
        Relative error increase allowed.
    max_sweeps, rtol, deadline
        Stop after ``max_sweeps`` sweeps, when the last ``PATIENCE`` sweeps gained less than
        ``rtol`` per sweep relatively,
        or once ``time.perf_counter()`` passes ``deadline``.

    Returns
    -------
    list of ndarray
        Balanced factors whose error, recomputed explicitly after every sweep, is at most the
        input's (up to rounding, relative 1e-9); the input itself if no sweep could keep that.
    """
    resid = t2 - mat.reconstruct(factors)
    err_sq = float(np.vdot(resid, resid))
    bound_sq = err_sq * (1.0 + slack) ** 2
    if bound_sq <= 0.0:
        return factors
    # The per-mode errors carry rounding of order eps times the terms' norms; aiming a little
    # inside the bound keeps the explicitly recomputed error within it.
    inner_sq = bound_sq * (1.0 - INNER_MARGIN)
    accepted = [u.copy() for u in factors]
    history = [float(np.sum(term_norms_sq(accepted)))]
    current = list(accepted)
    k, n_modes = mat.k, len(factors)
    for _ in range(max_sweeps):
        if time.perf_counter() >= deadline:
            break
        grams = gramians(current)
        w = t2 @ mat.kr_right(current)
        for i in range(n_modes):
            if i == k:
                w = t2.T @ mat.kr_left(current)
            y = group_mttkrp(w, current[:k], i) if i < k else group_mttkrp(w, current[k:], i - k)
            current[i], err_sq = _mode_update(
                y, current[i], hadamard_except(grams, {i}), err_sq, inner_sq,
                lambda u_new, i=i: _explicit_error(t2, mat, current, i, u_new),
            )
            grams[i] = current[i].T @ current[i]
        current = balance(current)
        # The per-mode errors are tracked in closed form; recompute to keep the bound exact.
        resid = t2 - mat.reconstruct(current)
        err_sq = float(np.vdot(resid, resid))
        if err_sq > bound_sq * (1.0 + 1e-9):
            break
        history.append(float(np.sum(term_norms_sq(current))))
        accepted = [u.copy() for u in current]
        # A sweep can stall when rounding leaves the error right at the bound; judge the
        # progress over several sweeps.
        if len(history) > PATIENCE and history[-1 - PATIENCE] - history[-1] <= rtol * PATIENCE * history[-1]:
            break
    return accepted


def _explicit_error(t2, mat, factors, i, u_new) -> float:
    trial = list(factors)
    trial[i] = u_new
    resid = t2 - mat.reconstruct(trial)
    return float(np.vdot(resid, resid))


def _mode_update(y, u, gamma, err_sq, bound_sq, explicit_error):
    """Solve one mode's subproblem; returns the new factor and its squared error.

    In the coordinates ``W = U D^1/2 V`` (V the eigenvectors of ``D^-1/2 Gamma D^-1/2``, with
    eigenvalues lam) the objective is ``||W||^2`` and the error is
    ``err_ls + sum_j lam_j ||w_j - z_j / lam_j||^2`` with ``Z = Y D^-1/2 V``; the minimizer
    ``w_j = mu z_j / (1 + mu lam_j)`` has excess ``sum_j ||z_j||^2 / (lam_j (1 + mu lam_j)^2)``.
    Those closed forms locate mu; the error of the result is then recomputed from the change
    ``Delta = U_new - U`` alone, or by ``explicit_error(U_new)`` when the change is so large
    (huge cancelling terms removed) that rounding could matter, and mu is raised until that
    error meets the bound.
    """
    d = np.maximum(np.diag(gamma).copy(), 1e-300)
    s = 1.0 / np.sqrt(d)
    lam, v = np.linalg.eigh(gamma * s[:, None] * s[None, :])
    lam = np.maximum(lam, 1e-12 * max(float(lam[-1]), 1e-300))
    z = (y * s) @ v
    zz = np.sum(z * z, axis=0)
    w_cur = (u / s) @ v
    excess_cur = float(np.sum(lam * np.sum((w_cur - z / lam) ** 2, axis=0)))
    budget = bound_sq - (err_sq - excess_cur)
    if not (math.isfinite(budget) and budget > 0.0):
        return u, err_sq

    def excess(mu: float) -> float:
        return float(np.sum(zz / (lam * (1.0 + mu * lam) ** 2)))

    # excess is decreasing in mu; bracket the root on a log scale.
    lo = hi = 1.0 / float(np.median(lam))
    while excess(lo) <= budget and lo > 1e-300:
        lo /= 16.0
    while excess(hi) > budget:
        hi *= 16.0
        if hi > 1e300:
            return u, err_sq
    if excess(lo) <= budget:
        mu = lo
    else:
        mu = math.exp(scipy.optimize.brentq(
            lambda t: excess(math.exp(t)) - budget, math.log(lo), math.log(hi), xtol=1e-10
        ))
    # Error change from U to U + Delta: tr(Delta Gamma Delta^T) - 2 tr(Delta^T (Y - U Gamma)).
    neg_grad = y - u @ gamma
    abs_gamma = np.abs(gamma)
    abs_neg_grad = np.abs(y) + np.abs(u) @ abs_gamma

    def candidate(mu: float):
        w_new = z * (mu / (1.0 + mu * lam))
        u_new = (w_new @ v.T) * s
        delta = u_new - u
        quad = float(np.sum((delta @ gamma) * delta))
        lin = float(np.sum(delta * neg_grad))
        new_err = err_sq + quad - 2.0 * lin
        # Rounding bound from the magnitudes that cancel (huge terms make it matter).
        abs_delta = np.abs(delta)
        noise = ROUNDING * float(
            np.sum((abs_delta @ abs_gamma) * abs_delta) + 2.0 * np.sum(abs_delta * abs_neg_grad)
        )
        if noise > 1e-2 * INNER_MARGIN * bound_sq:
            new_err = explicit_error(u_new)
        return u_new, new_err, float(np.sum(w_new * w_new))

    # The closed-form root is nearly right; where the accurate error disagrees, bisect mu
    # (log scale) between it and a feasible larger value.
    best = candidate(mu)
    if best[1] > bound_sq:
        lo_mu, hi_mu = mu, mu
        for _ in range(60):
            hi_mu *= 4.0
            best = candidate(hi_mu)
            if best[1] <= bound_sq:
                break
        else:
            return u, err_sq
        for _ in range(BISECTIONS):
            mid = math.sqrt(lo_mu * hi_mu)
            trial = candidate(mid)
            if trial[1] <= bound_sq:
                hi_mu, best = mid, trial
            else:
                lo_mu = mid
    u_new, new_err, objective_new = best
    # Never accept a worse objective than the current point (rounding guard).
    if objective_new > float(np.sum(w_cur * w_cur)):
        return u, err_sq
    return u_new, new_err
