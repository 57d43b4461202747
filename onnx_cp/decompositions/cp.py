"""CP (canonical polyadic) decomposition: per group W ~ sum_r Ut[:, r] o Us[:, r] o Uy[:, r] o Ux[:, r].

Realized as 1x1, kh x 1 depthwise, 1 x kw depthwise, 1x1 (cp4) or 1x1, kh x kw depthwise with
rank-one kernels, 1x1 (cp3).

Stage 1 has no bias and maps zero to zero, so the original padding can move after it:
the vertical stage pads and strides rows, the horizontal stage columns. A grouped Conv keeps
its groups in the 1x1 stages (group=G) around depthwise stages over G*R channels.
A kernel axis with a single tap needs no stage: its factor is a per-channel scale, folded
into stage 1, and its stride and pads move to the other spatial stage.
A Conv with a single input channel (a grayscale first layer) needs no stage 1 either: it would
only broadcast that channel to R scaled copies at the input resolution, so its scales go into
the first spatial stage, which reads the one channel directly (a plain Conv 1 -> R).
"""
from __future__ import annotations

import time

import numpy as np

from onnx_cp.conv import ConvSpec, Cost, cp4_stage_counts, cp_cost, has_reduce_stage
from onnx_cp.decompose import FitOptions, KernelFit, fit_kernel
from onnx_cp.decompositions.base import Decomposition, Factors, parse_positive, relative_error
from onnx_cp.decompositions.nodes import NodeBuilder, Realization, one_by_one, padding
from onnx_cp.graph import NameAllocator

STAGES_CP4 = ("reduce", "vertical", "horizontal", "expand")
STAGES_CP3 = ("reduce", "spatial", "expand")
REALIZATIONS = ("cp4", "cp3")


def cp_kernel(ut: np.ndarray, us: np.ndarray, uy: np.ndarray, ux: np.ndarray) -> np.ndarray:
    """The kernel sum_r Ut[:, r] o Us[:, r] o Uy[:, r] o Ux[:, r], as one matrix product (a four-way
    einsum runs as a plain loop: 8 s for a 512x512x3x3 kernel at rank 576, where BLAS takes 0.06 s)."""
    rest = (us[:, None, None, :] * uy[None, :, None, :] * ux[None, None, :, :]).reshape(-1, ut.shape[1])
    return (ut @ rest.T).reshape(ut.shape[0], us.shape[0], uy.shape[0], ux.shape[0])


def realize(kind: str, name: str, x: str, y: str, bias: str | None, spec: ConvSpec,
            group_factors: list[tuple[np.ndarray, ...]], dtype: np.dtype,
            names: NameAllocator, tag: str = "cp") -> Realization:
    """Nodes computing ``y = Conv(x)`` from per-group factors (Ut, Us, Uy, Ux), each (dim, R).

    ``kind`` is cp4 (1x1, kh x 1, 1 x kw, 1x1) or cp3 (1x1, kh x kw depthwise with rank-one
    kernels, 1x1). ``name`` is the original node's name; new names derive from it (``name/tag/...``).
    """
    if kind not in REALIZATIONS:
        raise ValueError(f"unknown realization {kind!r}; choose one of {REALIZATIONS}")
    builder = NodeBuilder(name, tag, dtype, names)
    build(builder, kind, x, y, bias, spec, group_factors)
    return builder.out


def build(builder: NodeBuilder, kind: str, x: str, y: str, bias: str | None, spec: ConvSpec,
          group_factors) -> None:
    """Append the CP form's nodes to ``builder`` (lrcp builds its core this way)."""
    ut = np.concatenate([f[0] for f in group_factors], axis=0)  # (T, R): group-major rows
    us = np.concatenate([f[1].T for f in group_factors], axis=0)  # (G*R, S/G)
    uy = np.concatenate([f[2].T for f in group_factors], axis=0)  # (G*R, kh)
    ux = np.concatenate([f[3].T for f in group_factors], axis=0)  # (G*R, kw)
    if kind == "cp3":
        spatial = uy[:, None, :, None] * ux[:, None, None, :]  # rank-one kh x kw kernel per channel
        attrs = {"kernel_shape": list(spec.kernel), "strides": list(spec.strides),
                 "dilations": list(spec.dilations), "group": us.shape[0], **padding(spec, True, True)}
        if has_reduce_stage(spec):
            current = builder.conv("reduce", x, us[:, :, None, None], one_by_one(spec.group))
        else:
            current, spatial, attrs["group"] = x, spatial * us[:, :, None, None], 1
        current = builder.conv("spatial", current, spatial, attrs)
    else:
        current = _cp4_middle(builder, x, us, uy, ux, spec)
    builder.conv("expand", current, ut[:, :, None, None], one_by_one(spec.group), y, (bias,) if bias else ())


def _cp4_middle(builder: NodeBuilder, x: str, us, uy, ux, spec: ConvSpec) -> str:
    keep_v, keep_h = cp4_stage_counts(spec)
    if not keep_v:
        us = us * uy[:, :1]
    if not keep_h:
        us = us * ux[:, :1]
    reduce = has_reduce_stage(spec)
    current = x
    if reduce:
        current = builder.conv("reduce", x, us[:, :, None, None], one_by_one(spec.group))
    kh, kw = spec.kernel
    spatial = [s for s, keep in (("vertical", keep_v), ("horizontal", keep_h)) if keep]
    h_owner, w_owner = spatial[0], spatial[-1]
    for stage in spatial:
        is_v = stage == "vertical"
        weight = uy[:, None, :, None] if is_v else ux[:, None, None, :]
        reads_input = stage == spatial[0] and not reduce
        if reads_input:
            weight = weight * us[:, :, None, None]  # the single input channel's scales
        attrs = {
            "kernel_shape": [kh if is_v else 1, 1 if is_v else kw],
            "strides": [spec.strides[0] if stage == h_owner else 1,
                        spec.strides[1] if stage == w_owner else 1],
            "dilations": [spec.dilations[0] if is_v else 1, 1 if is_v else spec.dilations[1]],
            "group": 1 if reads_input else us.shape[0],
            **padding(spec, stage == h_owner, stage == w_owner),
        }
        current = builder.conv(stage, current, weight, attrs)
    return current


class CP(Decomposition):
    name = "cp"
    forms = REALIZATIONS

    def parse_rank(self, value) -> int:
        return parse_positive(value, "rank", "64")

    def options(self, cp_options):
        return cp_options

    def applies(self, spec: ConvSpec) -> str | None:
        if spec.kernel == (1, 1):
            return "1x1 kernel: already as cheap as its CP form (svd factors a 1x1 Conv)"
        if spec.in_per_group == 1 and spec.group > 1:
            return "depthwise Conv (one input channel per group): CP cannot make it cheaper"
        return None

    def fit(self, groups, rank, seed=0, options: FitOptions | None = None, *, init=None, stats=None) -> Factors:
        """CP-NLS (or ALS) per group through decompose.fit_kernel; ``init``: a fit of the same
        weight at a neighbouring rank."""
        self.check_stats(stats, groups)
        rank = self.parse_rank(rank)
        options = options or FitOptions()
        start = time.perf_counter()
        starts = [None] * len(groups) if init is None else \
            list(init.fits) or [kernel_fit(f) for f in init.groups]
        fits = [fit_kernel(kernel, rank, seed, options, init=start_fit)
                for kernel, start_fit in zip(groups, starts)]
        found = tuple(f.factors for f in fits)
        return Factors(rank, found, relative_error(groups, self.kernels(found)),
                       time.perf_counter() - start, tuple(fits))

    def realize(self, form, name, x, y, bias, spec, group_factors, dtype, names) -> Realization:
        self.check_form(form)
        return realize(form, name, x, y, bias, spec, list(group_factors), dtype, names)

    def cost(self, form, spec, rank, in_shape, out_shape, has_bias) -> Cost:
        self.check_form(form)
        return cp_cost(form, spec, self.parse_rank(rank), in_shape, out_shape, has_bias)

    def kernels(self, group_factors):
        return [cp_kernel(*f) for f in group_factors]

    def placeholder(self, spec, rank, seed=0):
        rng = np.random.default_rng(seed)
        shape = (spec.out_per_group, spec.in_per_group, *spec.kernel)
        r = self.parse_rank(rank)
        return [tuple(rng.standard_normal((d, r)) * 0.1 for d in shape) for _ in range(spec.group)]


def kernel_fit(factors: tuple[np.ndarray, ...]) -> KernelFit:
    """Known factors as a KernelFit (a warm start for fit_kernel)."""
    return KernelFit(tuple(factors), 0.0, 1.0, 1.0, False, 0.0)
