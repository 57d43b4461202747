"""Calibration statistics: fitting a layer's output instead of its weight.

With x the layer's input channels and Sigma = E[x x^T], the output error of a kernel estimate
is E||(W - W_hat) x||^2 = ||(W - W_hat) x_in Sigma^{1/2}||^2 (the input-channel axis multiplied
by Sigma^{1/2}). So a decomposition fits W' = W x_in S (S = Sigma^{1/2}) as usual and maps the
input-side factor back with S^{-1}: the weighted problem becomes the plain one.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from onnx_cp.errors import OnnxCpError

# Eigenvalues below this fraction of the largest are raised to it: a channel that never varies
# in the calibration data still needs a finite inverse.
RIDGE = 1e-6


def group_covariances(sigma: np.ndarray, group: int) -> list[np.ndarray]:
    """A full (C x C) input covariance as the diagonal blocks a grouped Conv's groups see."""
    sigma = np.asarray(sigma, dtype=np.float64)
    c = sigma.shape[0]
    if sigma.ndim != 2 or sigma.shape != (c, c) or c % group:
        raise OnnxCpError(f"sigma has shape {list(sigma.shape)}; give a square (C, C) matrix with C "
                          f"a multiple of group={group}")
    per = c // group
    return [sigma[g * per:(g + 1) * per, g * per:(g + 1) * per] for g in range(group)]


def covariance(activations: np.ndarray) -> np.ndarray:
    """The input-channel second moment E[x x^T] of NCHW activations."""
    x = np.asarray(activations, dtype=np.float64)
    flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    return flat @ flat.T / flat.shape[1]


def square_roots(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Sigma^{1/2}, Sigma^{-1/2}) of a symmetric positive semi-definite matrix, ridged."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if not np.all(np.isfinite(sigma)) or not np.allclose(sigma, sigma.T, rtol=1e-6, atol=1e-12 * np.abs(sigma).max()):
        raise OnnxCpError("stats: a covariance is not finite and symmetric; pass E[x x^T] of the "
                          "layer's input channels (calibration.covariance computes it)")
    return symmetric_roots(sigma, lambda values: np.maximum(values, RIDGE * max(float(values.max()), 1e-300)))


def symmetric_roots(sigma: np.ndarray, floor: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(S^{1/2}, S^{-1/2}) of the symmetric part S of ``sigma``, its eigenvalues first lifted by
    ``floor`` (which must leave them positive)."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    root = np.sqrt(floor(values))
    return (vectors * root) @ vectors.T, (vectors / root) @ vectors.T


def whiten(kernel: np.ndarray, sigma: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(W x_in S, S^{-1}), or (W, None) without statistics."""
    if sigma is None:
        return kernel, None
    root, inverse = square_roots(sigma)
    return np.einsum("fc...,cd->fd...", kernel, root, optimize=True), inverse


def output_error(groups, approx, stats=None) -> float:
    """||W - W_hat|| / ||W|| over all groups, each group's input side weighted by Sigma^{1/2}
    when ``stats`` (per group, E[x x^T] of its input channels) is given: the layer's relative
    output error on inputs with that covariance, whatever decomposition made ``approx``."""
    num = den = 0.0
    for g, (kernel, estimate) in enumerate(zip(groups, approx)):
        kernel = np.asarray(kernel, np.float64)
        diff = kernel - estimate
        if stats is not None:
            root = square_roots(stats[g])[0]
            kernel, diff = (np.einsum("fc...,cd->fd...", t, root, optimize=True) for t in (kernel, diff))
        num += float(np.sum(diff ** 2))
        den += float(np.sum(kernel ** 2))
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))
