"""One layer's CP fit at a given rank: every group fitted, one combined relative error."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnx_cp.decompose import FitOptions, KernelFit, fit_kernel

# (kernel, rank, seed, warm start or None) -> KernelFit
WarmFitter = Callable[[np.ndarray, int, int, KernelFit | None], KernelFit]


@dataclass(frozen=True)
class LayerFit:
    rank: int
    fits: tuple[KernelFit, ...]  # one per group
    rel_error: float  # ||K - cp|| / ||K|| over all groups together

    @property
    def seconds(self) -> float:
        return sum(f.seconds for f in self.fits)


def solver_fitter(options: FitOptions) -> WarmFitter:
    return lambda kernel, rank, seed, init: fit_kernel(kernel, rank, seed, options, init=init)


def combined_error(groups: list[np.ndarray], fits) -> float:
    norm2 = [float(np.sum(np.square(g, dtype=np.float64))) for g in groups]
    total = sum(norm2)
    return math.sqrt(sum(f.rel_error**2 * n for f, n in zip(fits, norm2)) / total) if total else 0.0


def fit_layer(groups: list[np.ndarray], rank: int, seed: int, fitter: WarmFitter,
              warm: LayerFit | None = None) -> LayerFit:
    """Fit every group of a kernel at ``rank``, each warm-started from ``warm``'s fit of it."""
    fits = tuple(fitter(np.asarray(g, dtype=np.float64), rank, seed + i, warm.fits[i] if warm else None)
                 for i, g in enumerate(groups))
    return LayerFit(rank, fits, combined_error(groups, fits))
