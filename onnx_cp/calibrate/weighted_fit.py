"""Data-aware CP fits: minimize a layer's output error on its real inputs, not its kernel error.

With the input patches' second moment approximated per mode (``statistics``), the output
error of a kernel error E is ||E x_S A_S x_y A_y x_x A_x|| with A = moment^(1/2). So the
solver fits the transformed kernel W' = W x_n A_n, and each factor comes back as
U_n = A_n^-1 U'_n: the same solver, whichever it is, now spends its rank where the data is.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnx_cp import solver
from onnx_cp.calibrate.statistics import ModeMoments, whitener
from onnx_cp.decompose import KernelFit, balance
from onnx_cp.ranks.fitting import LayerFit, WarmFitter, combined_error, fit_layer

# Share of the mean eigenvalue added to every moment before its square root.
FLOOR = 1e-2


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
    factors = [f if pair is None else pair[1] @ f for f, pair in zip(fit.factors, weights.modes)]
    factors = balance(None, factors)
    error = solver.relative_error(np.asarray(kernel, dtype=np.float64), (np.ones(factors[0].shape[1]), factors))
    return dataclasses.replace(fit, factors=factors, rel_error=float(error))


def fit_weighted(groups: Sequence[np.ndarray], rank: int, seed: int, fitter: WarmFitter,
                 weights: Sequence[GroupWeights], init: LayerFit | None = None) -> LayerFit:
    """Every group fitted under its weighting (going on from ``init``, a fit of the same
    weighting, when given); the LayerFit reports kernel errors as usual."""
    moved = [transform(g, w) for g, w in zip(groups, weights)]
    warm = None if init is None else LayerFit(init.rank, tuple(
        dataclasses.replace(f, factors=tuple(u if pair is None else pair[0] @ u for u, pair in zip(f.factors, w.modes)))
        for f, w in zip(init.fits, weights)), init.rel_error)
    fitted = fit_layer(moved, rank, seed, fitter, warm)
    fits = tuple(unweighted(f, g, w) for f, g, w in zip(fitted.fits, groups, weights))
    return LayerFit(rank, fits, combined_error(list(groups), fits))
