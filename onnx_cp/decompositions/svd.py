"""Truncated SVD of the weight unfolded as (out, in * kh * kw): a kh x kw Conv Cin -> R with the
layer's strides, pads and dilations, then a 1x1 Conv R -> Cout with the bias (a 1x1 Conv becomes
two 1x1 Convs). Per group. With calibration statistics the input side is whitened first, which
makes the truncation optimal for the output error (Eckart-Young in the whitened coordinates).

A weight may also be a plain (out, in) matrix: linear.py realizes those for Gemm and MatMul.
"""
from __future__ import annotations

import time

import numpy as np

from onnx_cp.conv import ConvSpec, Cost
from onnx_cp.decompositions.base import Decomposition, Factors, mode_product, parse_positive
from onnx_cp.decompositions.calibration import whiten
from onnx_cp.decompositions.nodes import NodeBuilder, full_conv_attrs, one_by_one, stacked_1x1
from onnx_cp.errors import OnnxCpError
from onnx_cp.solver._threads import single_blas_thread


def truncated(weight: np.ndarray, rank: int, sigma: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(P (out, R), Q (R, in, ...), squared residual, squared norm) with ``weight ~ P @ Q``
    (Q unfolded), the singular values split evenly between P and Q; residual and norm are
    those of the whitened weight when ``sigma`` is given."""
    target, inverse = whiten(np.asarray(weight, np.float64), sigma)
    u, s, vt = np.linalg.svd(target.reshape(target.shape[0], -1), full_matrices=False)
    root = np.sqrt(s[:rank])
    p = u[:, :rank] * root
    q = (vt[:rank] * root[:, None]).reshape(rank, *weight.shape[1:])
    if inverse is not None:
        q = mode_product(q, inverse, 1)  # back from whitened input coordinates
    return p, q, float(np.sum(s[rank:] ** 2)), float(np.sum(s ** 2))


class SVD(Decomposition):
    name = "svd"
    display = "SVD"
    forms = ("svd",)
    uses_stats = True

    def parse_rank(self, value) -> int:
        return parse_positive(value, "rank", "12")

    def applies(self, spec: ConvSpec) -> str | None:
        if spec.in_per_group * spec.kernel[0] * spec.kernel[1] == 1:
            return "one input tap per output (depthwise 1x1): nothing to factor"
        return None

    def max_rank(self, spec: ConvSpec) -> int:
        return min(spec.out_per_group, spec.in_per_group * spec.kernel[0] * spec.kernel[1])

    def concrete(self, value, spec, groups=None, factor_rank=None, shapes=None) -> int:
        return min(self.parse_rank(value), self.max_rank(spec))

    def checked(self, rank, weight_shape) -> int:
        r = self.parse_rank(rank)
        limit = min(weight_shape[0], int(np.prod(weight_shape[1:])))
        if r > limit:
            raise OnnxCpError(f"rank={r} exceeds the weight's {weight_shape[0]} x "
                              f"{int(np.prod(weight_shape[1:]))} unfolding; give at most {limit}")
        return r

    def fit(self, groups, rank, seed=0, options=None, *, init=None, stats=None, moments=None,
            fitter=None) -> Factors:
        """Truncated SVD per group (exact and deterministic: ``seed``, ``options`` and ``init``
        are unused). A group may be a kernel (F, C, kh, kw) or a matrix (out, in)."""
        stats = self.channel_stats(stats, moments)
        self.check_stats(stats, groups)
        r = self.checked(rank, groups[0].shape)
        start = time.perf_counter()
        with single_blas_thread():  # as the CP solver: fits run side by side in --jobs workers
            fits = [truncated(kernel, r, None if stats is None else stats[g]) for g, kernel in enumerate(groups)]
        residual, total = sum(f[2] for f in fits), sum(f[3] for f in fits)
        return Factors(r, tuple((f[0], f[1]) for f in fits), float(np.sqrt(residual / max(total, 1e-300))),
                       time.perf_counter() - start)

    def realize(self, form, name, x, y, bias, spec, group_factors, dtype, names):
        self.check_form(form)
        builder = NodeBuilder(name, "svd", dtype, names)
        first = np.concatenate([q for _, q in group_factors], axis=0)  # (G*R, C/G, kh, kw)
        current = builder.conv("reduce", x, first, full_conv_attrs(spec, spec.group))
        builder.conv("expand", current, stacked_1x1([p for p, _ in group_factors]), one_by_one(spec.group),
                     y, (bias,) if bias else ())
        return builder.out

    def cost(self, form, spec, rank, in_shape, out_shape, has_bias) -> Cost:
        self.check_form(form)
        kh, kw = spec.kernel
        r = self.checked(rank, (spec.out_per_group, spec.in_per_group, kh, kw))
        params = r * spec.in_channels * kh * kw + spec.out_channels * r + spec.out_channels * has_bias
        if out_shape is None:
            return Cost(None, params)
        n, _, ho, wo = out_shape
        return Cost(n * ho * wo * (spec.group * r * spec.in_per_group * kh * kw + spec.out_channels * r), params)

    def kernels(self, group_factors, xp=np):
        if xp is np:
            return [np.tensordot(p, q, axes=(1, 0)) for p, q in group_factors]
        return [(p @ q.reshape(q.shape[0], -1)).reshape(p.shape[0], *q.shape[1:]) for p, q in group_factors]

    def placeholder(self, spec, rank, seed=0):
        rng = np.random.default_rng(seed)
        r = self.checked(rank, (spec.out_per_group, spec.in_per_group, *spec.kernel))
        return [(rng.standard_normal((spec.out_per_group, r)) * 0.1,
                 rng.standard_normal((r, spec.in_per_group, *spec.kernel)) * 0.1) for _ in range(spec.group)]
