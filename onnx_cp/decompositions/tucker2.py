"""Tucker-2 (Kim et al. 2016): per group W ~ core x_out U_out x_in U_in.

Realized as 1x1 Cin -> R1 (U_in^T), kh x kw R1 -> R2 (the core, with the layer's strides, pads,
dilations and groups), 1x1 R2 -> Cout (U_out, with the bias). The first stage maps zero to zero,
so the padding moves to the core unchanged. A side whose rank equals its channels needs no
stage: its factor folds into the core. Fitted by HOSVD + HOOI, per group; with calibration
statistics the input side is whitened first (calibration.py), so the output error is minimized.
"""
from __future__ import annotations

import math

import re
import time
from dataclasses import dataclass

import numpy as np

from onnx_cp.conv import ConvSpec, Cost
from onnx_cp.decompositions.base import (Decomposition, Factors, mode_product, parse_positive,
                                         relative_error, spatial_with_channels)
from onnx_cp.decompositions.calibration import whiten
from onnx_cp.decompositions.nodes import NodeBuilder, full_conv_attrs, one_by_one, stacked_1x1
from onnx_cp.errors import OnnxCpError
from onnx_cp.solver._threads import single_blas_thread


@dataclass(frozen=True)
class Tucker2Options:
    max_iter: int = 100  # HOOI sweeps after the HOSVD start
    tol: float = 1e-10  # stop when a sweep lowers the relative error by less than this


def leading(matrix: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank`` leading left singular vectors, signs fixed (largest entry positive) so fits
    are reproducible across LAPACK builds."""
    u = np.linalg.svd(matrix, full_matrices=False)[0][:, :rank]
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    return u * np.where(signs == 0, 1.0, signs)


def unfold(tensor: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)


def hooi(kernel: np.ndarray, ranks: tuple[int, int], options: Tucker2Options,
         start: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(core (R2, R1, kh, kw), U_out (F, R2), U_in (C, R1)) with orthonormal factors, by HOOI
    from the HOSVD (or from ``start``: (U_out, U_in) of a neighbouring fit)."""
    r_in, r_out = ranks
    if start is None:
        u_in = leading(unfold(kernel, 1), r_in)
    else:
        u_in = _orthonormal_start(start[1], unfold(kernel, 1), r_in)
    norm2 = float(np.sum(kernel ** 2))
    previous = np.inf
    for _ in range(max(options.max_iter, 1)):
        u_out = leading(unfold(mode_product(kernel, u_in.T, 1), 0), r_out)
        u_in = leading(unfold(mode_product(kernel, u_out.T, 0), 1), r_in)
        core = mode_product(mode_product(kernel, u_out.T, 0), u_in.T, 1)
        error = np.sqrt(max(norm2 - float(np.sum(core ** 2)), 0.0) / max(norm2, 1e-300))
        if previous - error < options.tol:
            break
        previous = error
    return core, u_out, u_in


def _orthonormal_start(u: np.ndarray, unfolded: np.ndarray, rank: int) -> np.ndarray:
    """A warm start's columns, completed by the HOSVD's and orthonormalized, first ``rank``."""
    columns = np.concatenate([u, leading(unfolded, rank)], axis=1)
    return np.linalg.qr(columns)[0][:, :rank]


def parse_ranks(value) -> tuple[int, int]:
    """16 -> (16, 16); (16, 12), [16, 12], "16x12" -> (16, 12): (input rank R1, output rank R2)."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[xX,]\s*\d+\s*", value):
        value = tuple(re.split(r"[xX,]", value))
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise OnnxCpError(f"rank={value!r}: tucker2 takes one rank or a pair (R1, R2), e.g. (16, 12)")
        return (parse_positive(value[0], "rank", "(16, 12)"), parse_positive(value[1], "rank", "(16, 12)"))
    r = parse_positive(value, "rank", '16 or "16x12"')
    return r, r


class Tucker2(Decomposition):
    name = "tucker2"
    display = "Tucker-2"
    forms = ("tucker2",)
    uses_stats = True

    def parse_rank(self, value) -> tuple[int, int]:
        return parse_ranks(value)

    def options(self, cp_options):
        """HOOI's defaults, its sweeps capped by ``max_iter`` of the CP solver's options (rank
        selection's quick curve fits ask every candidate for a few iterations)."""
        if cp_options is None or cp_options.max_iter >= Tucker2Options.max_iter:
            return None
        return Tucker2Options(max_iter=cp_options.max_iter)

    def applies(self, spec: ConvSpec) -> str | None:
        return spatial_with_channels(spec, "Tucker-2 adds stages around it", "Tucker-2 has no input side to reduce")

    def max_rank(self, spec: ConvSpec) -> int:
        return min(spec.in_per_group, spec.out_per_group)

    def terms(self, rank) -> int:
        """The geometric mean of the two ranks: an output sums r2 expand terms of r1-wide core sums.
        Unscaled, Adam's rate left the larger layers of a VGG-16 Tucker-2 rewrite as fitted
        (docs/results/int8.md)."""
        return max(1, round(math.sqrt(rank[0] * rank[1])))

    def concrete(self, value, spec, groups=None, factor_rank=None, shapes=None) -> tuple[int, int]:
        r_in, r_out = self.parse_rank(value)
        return min(r_in, spec.in_per_group), min(r_out, spec.out_per_group)

    def checked(self, rank, in_dim: int, out_dim: int) -> tuple[int, int]:
        r_in, r_out = self.parse_rank(rank)
        if r_in > in_dim or r_out > out_dim:
            raise OnnxCpError(f"rank=({r_in}, {r_out}) exceeds the layer's channels per group "
                              f"({in_dim} in, {out_dim} out); give at most ({in_dim}, {out_dim})")
        return r_in, r_out

    def fit(self, groups, rank, seed=0, options: Tucker2Options | None = None, *, init=None,
            stats=None, moments=None, fitter=None) -> Factors:
        """HOOI per group (deterministic: ``seed`` is unused). ``init``: a Tucker-2 fit of the
        same weight, whose factors start HOOI."""
        stats = self.channel_stats(stats, moments)
        self.check_stats(stats, groups)
        ranks = self.checked(rank, groups[0].shape[1], groups[0].shape[0])
        options = options or Tucker2Options()
        start = time.perf_counter()
        fitted, targets, approx = [], [], []
        for g, kernel in enumerate(groups):
            target, inverse = whiten(np.asarray(kernel, np.float64), None if stats is None else stats[g])
            warm = None if init is None else (init.groups[g][1], init.groups[g][2])
            with single_blas_thread():  # as the CP solver: fits run side by side in --jobs workers
                core, u_out, u_in = hooi(target, ranks, options, warm)
            targets.append(target)
            approx.append(mode_product(mode_product(core, u_out, 0), u_in, 1))
            fitted.append((core, u_out, u_in if inverse is None else inverse @ u_in))
        return Factors(ranks, tuple(fitted), relative_error(targets, approx), time.perf_counter() - start)

    def realize(self, form, name, x, y, bias, spec, group_factors, dtype, names):
        self.check_form(form)
        builder = NodeBuilder(name, "tucker2", dtype, names)
        r_out, r_in = group_factors[0][0].shape[:2]
        reduce, expand = r_in < spec.in_per_group, r_out < spec.out_per_group
        cores = []
        for core, u_out, u_in in group_factors:
            if not reduce:  # full input rank: U_in folds into the core
                core = mode_product(core, u_in, 1)
            if not expand:
                core = mode_product(core, u_out, 0)
            cores.append(core)
        current = x
        if reduce:
            current = builder.conv("reduce", x, stacked_1x1([f[2].T for f in group_factors]),
                                   one_by_one(spec.group))
        tail = (bias,) if bias and not expand else ()
        current = builder.conv("core", current, np.concatenate(cores, axis=0),
                               full_conv_attrs(spec, spec.group), None if expand else y, tail)
        if expand:
            builder.conv("expand", current, stacked_1x1([f[1] for f in group_factors]),
                         one_by_one(spec.group), y, (bias,) if bias else ())
        return builder.out

    def cost(self, form, spec, rank, in_shape, out_shape, has_bias) -> Cost:
        self.check_form(form)
        r_in, r_out = self.checked(rank, spec.in_per_group, spec.out_per_group)
        reduce, expand = r_in < spec.in_per_group, r_out < spec.out_per_group
        a = r_in if reduce else spec.in_per_group  # core channels per group, in and out
        b = r_out if expand else spec.out_per_group
        kh, kw = spec.kernel
        g = spec.group
        params = (spec.in_channels * r_in * reduce + g * b * a * kh * kw + spec.out_channels * r_out * expand
                  + spec.out_channels * has_bias)
        if in_shape is None or out_shape is None:
            return Cost(None, params)
        n, _, hi, wi = in_shape
        _, _, ho, wo = out_shape
        macs = (n * hi * wi * spec.in_channels * r_in * reduce + n * ho * wo * g * b * a * kh * kw
                + n * ho * wo * spec.out_channels * r_out * expand)
        return Cost(macs, params)

    def kernels(self, group_factors, xp=np):
        if xp is np:
            return [mode_product(mode_product(core, u_out, 0), u_in, 1) for core, u_out, u_in in group_factors]
        return [xp.einsum("fa,abyx,cb->fcyx", u_out, core, u_in) for core, u_out, u_in in group_factors]

    def placeholder(self, spec, rank, seed=0):
        rng = np.random.default_rng(seed)
        r_in, r_out = self.checked(rank, spec.in_per_group, spec.out_per_group)
        return [(rng.standard_normal((r_out, r_in, *spec.kernel)) * 0.1,
                 rng.standard_normal((spec.out_per_group, r_out)) * 0.1,
                 rng.standard_normal((spec.in_per_group, r_in)) * 0.1) for _ in range(spec.group)]
