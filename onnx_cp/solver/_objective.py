"""The CP objective ``f = 1/2 ||T - [[U]]||^2`` on a unit-norm tensor, and its gradient.

While the error is large, ``f = 1/2 (1 - 2 <T, M> + ||M||^2)`` needs one large product per
point (``T2 @ KR_right``, which the gradient reuses), so an accepted Gauss-Newton step costs
two large products. That formula cancels when the error is tiny or when terms cancel each
other; once its rounding could decide an accept/reject, the objective switches for good to
the explicit residual (one more large product per step) and MTTKRPs of the residual.
"""
from __future__ import annotations

import numpy as np

from ._kernels import Matricization, balancing_scales, gramians, group_mttkrp, hadamard_except

# Rounding model of the expanded formula (eps with room for long sums).
FORMULA_EPS = 1e-13
# Formula values are trusted while they exceed this many times their rounding bound ...
FORMULA_MIN_REL = 1e6
# ... and a decrease is trusted when it exceeds this many times the bound.
FORMULA_MARGIN = 100.0


class Point:
    """Factors with their objective value and what the gradient needs from its evaluation."""

    __slots__ = ("factors", "f", "noise", "grams", "krl", "w_left", "resid")

    def __init__(self, factors, f, noise, grams, krl, w_left=None, resid=None):
        self.factors, self.f, self.noise = factors, f, noise
        self.grams, self.krl, self.w_left, self.resid = grams, krl, w_left, resid

    def balanced(self, k: int) -> "Point":
        """The same model with equal column norms across modes (see ``_kernels.balance``).

        Equal norms keep one damping parameter fair to all modes. The cached products scale
        column-wise, so they are rescaled rather than recomputed.
        """
        scales = balancing_scales(np.sqrt(np.stack([np.diag(g) for g in self.grams])))
        factors = [u * c for u, c in zip(self.factors, scales)]
        grams = [g * np.outer(c, c) for g, c in zip(self.grams, scales)]
        c_left = np.prod(scales[:k], axis=0)
        c_right = np.prod(scales[k:], axis=0)
        w_left = None if self.w_left is None else self.w_left * c_right
        return Point(factors, self.f, self.noise, grams, self.krl * c_left, w_left, self.resid)


class Objective:
    """``f = 1/2 ||T - M||^2`` and its gradient for the unit-norm matrix view ``t2``."""

    def __init__(self, t2: np.ndarray, mat: Matricization):
        self.t2, self.mat = t2, mat
        self.explicit = False

    def evaluate(self, factors: list[np.ndarray]) -> Point:
        grams = gramians(factors)
        krl = self.mat.kr_left(factors)
        krr = self.mat.kr_right(factors)
        if self.explicit:
            resid = self.t2 - krl @ krr.T
            return Point(factors, 0.5 * float(np.vdot(resid, resid)), 0.0, grams, krl, resid=resid)
        w_left = self.t2 @ krr
        cross = w_left * krl
        inner = float(np.sum(cross))
        h = hadamard_except(grams, set())
        f = 0.5 * (1.0 - 2.0 * inner + float(np.sum(h)))
        # Rounding bound of the three-term formula: eps times the magnitudes summed.
        cross_abs = float(np.sum(np.abs(cross, out=cross)))
        noise = FORMULA_EPS * (1.0 + float(np.sum(np.abs(h))) + 2.0 * cross_abs)
        return Point(factors, f, noise, grams, krl, w_left=w_left)

    def trustworthy(self, *points: Point, decrease: float | None = None) -> bool:
        """Whether formula values are accurate enough to compare (always true when explicit)."""
        if self.explicit:
            return True
        noise = sum(p.noise for p in points)
        if any(p.f <= FORMULA_MIN_REL * p.noise for p in points):
            return False
        return decrease is None or abs(decrease) > FORMULA_MARGIN * noise

    def gradient(self, point: Point, gammas: list[np.ndarray]) -> np.ndarray:
        """Gradient of f as a flat vector (mode-major, each block (I_n, R) in C order).

        ``gammas[n]`` is the Hadamard product of all Gramians but mode n's.
        """
        factors, mat = point.factors, self.mat
        if point.resid is not None:
            parts = mat.mttkrps(point.resid, factors)
            return -np.concatenate([m.ravel() for m in parts])
        k = mat.k
        w_right = self.t2.T @ point.krl
        parts = [group_mttkrp(point.w_left, factors[:k], i) for i in range(k)]
        parts += [group_mttkrp(w_right, factors[k:], j) for j in range(len(factors) - k)]
        # MTTKRP of the residual = MTTKRP of T - U_n Gamma_n.
        return np.concatenate([
            (u @ g - m).ravel() for u, g, m in zip(factors, gammas, parts)
        ])
