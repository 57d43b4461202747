"""A layer's input statistics as the decompositions fit to them: per-mode second moments.

The output error of a kernel error E on a patch p is <E, p>; over the data it is E's norm
weighted by the patches' second moment. That moment is approximated as a Kronecker product
of per-mode moments (input channels x rows x columns): CP honours it mode by mode, the
decompositions that factor only the channels (Tucker-2, SVD, lrcp) take the channel moment.
Calibration (onnx_cp.calibrate) measures them; nothing here reads data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_cp.decompositions.calibration import symmetric_roots


@dataclass(frozen=True)
class ModeMoments:
    """Uncentered second moments of one group's input patches, per mode, trace-normalized."""

    channels: np.ndarray  # (S, S)
    rows: np.ndarray  # (kh, kh)
    cols: np.ndarray  # (kw, kw)
    patches: int  # how many patches they were measured on


def whitener(moment: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, A^-1) with A = (M + floor * mean eigenvalue * I)^(1/2) for a symmetric moment M.

    The floor keeps directions the data never excites from being fitted arbitrarily (their
    error would show on other inputs) and A well conditioned.
    """
    return symmetric_roots(moment, lambda values: np.maximum(values, 0.0) + floor * max(float(np.mean(values)), 1e-12))
