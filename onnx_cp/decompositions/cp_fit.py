"""Fitting a layer's CP factors: every group at one rank, warm starts, and data-aware weighting.

Data-aware fits minimize a layer's output error on its real inputs, not its kernel error. With
the input patches' second moment approximated per mode (moments.ModeMoments), the output error
of a kernel error E is ||E x_S A_S x_y A_y x_x A_x|| with A = moment^(1/2). So the solver fits
the transformed kernel W' = W x_n A_n, and each factor comes back as U_n = A_n^-1 U'_n: the
same solver, whichever it is, now spends its rank where the data is.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from onnx_cp.decompositions.base import Factors
from onnx_cp.decompositions.cp_solver import FitOptions, KernelFit, balance, fit_kernel
from onnx_cp.decompositions.moments import ModeMoments, whitener

# (kernel, rank, seed, warm start or None) -> KernelFit
WarmFitter = Callable[[np.ndarray, int, int, KernelFit | None], KernelFit]
# Share of the mean eigenvalue added to every moment before its square root.
FLOOR = 1e-2


def solver_fitter(options: FitOptions) -> WarmFitter:
    return lambda kernel, rank, seed, init: fit_kernel(kernel, rank, seed, options, init=init)


def combined_error(groups: Sequence[np.ndarray], fits: Sequence[KernelFit]) -> float:
    """||K - cp|| / ||K|| over all groups together, from each group's own relative error."""
    norm2 = [float(np.sum(np.square(g, dtype=np.float64))) for g in groups]
    total = sum(norm2)
    return math.sqrt(sum(f.rel_error**2 * n for f, n in zip(fits, norm2)) / total) if total else 0.0


def as_factors(rank: int, groups: Sequence[np.ndarray], fits: Sequence[KernelFit]) -> Factors:
    """Per-group kernel fits as one layer's Factors (each group's solver record kept)."""
    fits = tuple(fits)
    return Factors(rank, tuple(f.factors for f in fits), combined_error(groups, fits),
                   sum(f.seconds for f in fits), fits)


def warm_fits(init: Factors | None, count: int) -> list[KernelFit | None]:
    """Per group, the fit to go on from: ``init``'s solver records, or its factors as given."""
    if init is None:
        return [None] * count
    return list(init.fits) or [KernelFit(tuple(g), 0.0, 1.0, 1.0, False, 0.0) for g in init.groups]


def fit_layer(groups: Sequence[np.ndarray], rank: int, seed: int, fitter: WarmFitter,
              init: Factors | None = None) -> Factors:
    """Every group of a kernel at ``rank`` (group i seeded ``seed + i``), each going on from
    ``init``'s fit of it."""
    starts = warm_fits(init, len(groups))
    fits = [fitter(np.asarray(g, dtype=np.float64), rank, seed + i, start)
            for i, (g, start) in enumerate(zip(groups, starts))]
    return as_factors(rank, groups, fits)


@dataclass(frozen=True)
class GroupWeights:
    """Per mode of a group's kernel (T, S, kh, kw): (A, A^-1), or None to leave the mode as is."""

    modes: tuple[tuple[np.ndarray, np.ndarray] | None, ...]


def group_weights(moments: ModeMoments, spatial: bool = True, floor: float = FLOOR) -> GroupWeights:
    """The weighting of one group: its input channels, and its rows and columns when ``spatial``."""
    space = (whitener(moments.rows, floor), whitener(moments.cols, floor)) if spatial else (None, None)
    return GroupWeights((None, whitener(moments.channels, floor), *space))


def transform(kernel: np.ndarray, weights: GroupWeights, inverse: bool = False) -> np.ndarray:
    """``kernel`` with every weighted mode multiplied by A (or A^-1)."""
    out = np.asarray(kernel, dtype=np.float64)
    for mode, pair in enumerate(weights.modes):
        if pair is not None:
            out = np.moveaxis(np.tensordot(pair[1 if inverse else 0], out, axes=([1], [mode])), 0, mode)
    return out


def unweighted(fit: KernelFit, kernel: np.ndarray, weights: GroupWeights) -> KernelFit:
    """A fit of the transformed kernel as a fit of ``kernel``: factors mapped back by A^-1
    (the transform is symmetric), rebalanced; the relative error is the kernel's again."""
    from onnx_cp import solver

    factors = [f if pair is None else pair[1] @ f for f, pair in zip(fit.factors, weights.modes)]
    factors = balance(None, factors)
    error = solver.relative_error(np.asarray(kernel, dtype=np.float64), (np.ones(factors[0].shape[1]), factors))
    return dataclasses.replace(fit, factors=factors, rel_error=float(error))


def fit_weighted(groups: Sequence[np.ndarray], rank: int, seed: int, fitter: WarmFitter,
                 weights: Sequence[GroupWeights], init: Factors | None = None) -> Factors:
    """Every group fitted under its weighting (going on from ``init``, a fit under the same
    weighting, when given); the Factors report kernel errors as usual."""
    moved = [transform(g, w) for g, w in zip(groups, weights)]
    warm = None
    if init is not None:
        fits = [dataclasses.replace(f, factors=tuple(u if pair is None else pair[0] @ u
                                                     for u, pair in zip(f.factors, w.modes)))
                for f, w in zip(warm_fits(init, len(groups)), weights)]
        warm = dataclasses.replace(init, fits=tuple(fits))
    fitted = fit_layer(moved, rank, seed, fitter, warm)
    return as_factors(rank, groups, [unweighted(f, g, w) for f, g, w in zip(fitted.fits, groups, weights)])
