"""GKPD, generalized Kronecker product decomposition (Hameed et al., AAAI 2022):
per group W ~ sum_r A_r (x) B_r, A_r (F1, C1, h1, w1), B_r (F2, C2, h2, w2), A carrying the
outer index of every axis: W[f1 F2 + f2, c1 C2 + c2, i1 h2 + i2, j1 w2 + j2] = sum_r A_r[f1, c1, i1, j1] B_r[f2, c2, i2, j2].

Fit: the Van Loan-Pitsianis rearrangement makes the sum a rank-R matrix (rows (f1, c1, i1, j1),
columns (f2, c2, i2, j2)), so the truncated SVD is the optimal fit for given shapes; the shapes
are searched over the divisor splits of each axis (lowest error at the rank among the splits no
dearer than ``max_cost_ratio`` of the Conv, then the cheapest).

Realization, derived along one axis (height; width alike), input padded as the Conv pads it (xp):
  y[p] = sum_{i1, i2} A[i1] B[i2] xp[p s + i1 h2 d + i2 d]
  stage 1: z[u] = sum_{i2} B[i2] xp[u s1 + i2 d]       (kernel h2, dilation d, the Conv's pads)
  stage 2: y[p] = sum_{i1} A[i1] z[p s2 + i1 h2 d / s1]  (kernel h1, no pads)
with (s1, s2) = (s, 1) when s divides h2 d (or h1 = 1), else (1, s); both give the Conv's output
size exactly. Channels: stage 1 reads each block of C2 input channels with the B kernels
(the blocks folded into the batch by a Reshape when the Conv has one group, so B is stored
once; a grouped Conv over G*C1 groups otherwise), giving channels (g, c1, r, f2); a Gather
regroups them as (g, f2, c1, r); stage 2 is a Conv over G*F2 groups with the A kernels, summing
over (c1, r); a last Gather puts the outputs (g, f2, f1) in the Conv's order (g, f1, f2).
auto_pad SAME is taken with unit strides (its pads are then fixed), refused with strides.
"""
from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnx_cp.conv import ConvSpec, Cost, conv_cost
from onnx_cp.decompositions.base import Decomposition, Factors, parse_positive
from onnx_cp.decompositions.nodes import NodeBuilder
from onnx_cp.errors import OnnxCpError
from onnx_cp.solver._threads import single_blas_thread

Split = tuple[int, int, int, int]  # A's shape (F1, C1, h1, w1); B's follows from the kernel
TIE = 1e-6  # relative errors this close are equal when splits are compared


@dataclass(frozen=True)
class GkpdOptions:
    # Splits whose multiply-adds per output pixel (at unit stride) exceed this fraction of the
    # Conv's are not considered when the rank gives no split.
    max_cost_ratio: float = 1.0


def parse_gkpd_rank(value) -> tuple[int, Split | None]:
    """4 -> (4, None: search the split); "4:16x8x3x1" or (4, (16, 8, 3, 1)) -> (terms, A's shape)."""
    if isinstance(value, str) and ":" in value:
        terms, _, shape = value.partition(":")
        value = (terms, tuple(re.split(r"[xX,]", shape.strip())))
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[1] is not None and len(value[1]) != 4:
            raise OnnxCpError(f"rank={value!r}: gkpd takes terms or (terms, (F1, C1, h1, w1)), "
                              'e.g. "4:16x8x3x1"')
        split = None if value[1] is None else tuple(parse_positive(v, "rank", '"4:16x8x3x1"') for v in value[1])
        return parse_positive(value[0], "rank", "4"), split
    return parse_positive(value, "rank", '4 or "4:16x8x3x1"'), None


def b_shape(kernel_shape: tuple[int, ...], split: Split) -> Split:
    return tuple(k // a for k, a in zip(kernel_shape, split))


def check_split(kernel_shape: tuple[int, ...], split: Split) -> Split:
    if any(k % a for k, a in zip(kernel_shape, split)):
        raise OnnxCpError(f"rank: A's shape {list(split)} does not divide the kernel per group "
                          f"{list(kernel_shape)} on every axis; give divisors of each")
    return split


def rearranged(kernel: np.ndarray, split: Split) -> np.ndarray:
    """The Van Loan-Pitsianis matrix: rows vec(A) over (f1, c1, i1, j1), columns vec(B)."""
    inner = b_shape(kernel.shape, split)
    eight = kernel.reshape(split[0], inner[0], split[1], inner[1], split[2], inner[2], split[3], inner[3])
    return eight.transpose(0, 2, 4, 6, 1, 3, 5, 7).reshape(int(np.prod(split)), int(np.prod(inner)))


def kron_sum(a: np.ndarray, b: np.ndarray, xp=np) -> np.ndarray:
    """sum_r A_r (x) B_r for A (R, F1, C1, h1, w1), B (R, F2, C2, h2, w2) (numpy or torch)."""
    terms = xp.einsum("rabcd,refgh->aebfcgdh", a, b)
    f, c, h, w = (x * y for x, y in zip(a.shape[1:], b.shape[1:]))
    return terms.reshape(f, c, h, w)


def unit_macs(shape: tuple[int, ...], split: Split, terms: int) -> int:
    """Multiply-adds per output pixel at unit stride, one group: stage 1 + stage 2."""
    f1, c1, h1, w1 = split
    f2, c2, h2, w2 = b_shape(shape, split)
    return terms * c1 * f2 * c2 * h2 * w2 + f2 * f1 * c1 * terms * h1 * w1


def splits(shape: tuple[int, ...]) -> list[Split]:
    """Every split of each axis into divisors, but those where A or B is a single number."""
    divisors = [[d for d in range(1, n + 1) if n % d == 0] for n in shape]
    found = []
    for split in itertools.product(*divisors):
        if 1 < int(np.prod(split)) < int(np.prod(shape)):
            found.append(split)
    return found


def svd_fit(kernels: list[np.ndarray], split: Split, terms: int) -> tuple[list, float, float]:
    """(per-group (A, B), squared residual, squared norm) of the optimal fit for ``split``."""
    fitted, residual, total = [], 0.0, 0.0
    inner = b_shape(kernels[0].shape, split)
    for kernel in kernels:
        u, s, vt = np.linalg.svd(rearranged(np.asarray(kernel, np.float64), split), full_matrices=False)
        r = min(terms, len(s))
        root = np.sqrt(s[:r])
        a = np.zeros((terms, *split))
        b = np.zeros((terms, *inner))
        a[:r] = (u[:, :r] * root).T.reshape(r, *split)
        b[:r] = (vt[:r] * root[:, None]).reshape(r, *inner)
        fitted.append((a, b))
        residual += float(np.sum(s[r:] ** 2))
        total += float(np.sum(s ** 2))
    return fitted, residual, total


def tail_error(kernels: list[np.ndarray], split: Split, terms: int) -> float:
    """The relative error of the optimal ``terms``-term fit for ``split``, from singular values alone."""
    residual = total = 0.0
    for kernel in kernels:
        s2 = np.linalg.svd(rearranged(np.asarray(kernel, np.float64), split), compute_uv=False) ** 2
        residual += float(np.sum(s2[terms:]))
        total += float(np.sum(s2))
    return float(np.sqrt(residual / max(total, 1e-300)))


def choose_split(groups: list[np.ndarray], terms: int, options: GkpdOptions,
                 costs: tuple[Callable[[Split], int], int] | None = None) -> Split:
    """A's shape for ``terms`` terms: the lowest error among the splits no dearer than
    ``max_cost_ratio`` of the Conv (splits within TIE of it count as equal, the cheapest wins).
    ``costs``: (a split's multiply-adds, the Conv's) at the layer's shapes; without them,
    multiply-adds per output pixel at unit stride."""
    shape = groups[0].shape
    cost, conv = costs or ((lambda s: unit_macs(shape, s, terms)), int(np.prod(shape)))
    budget = options.max_cost_ratio * conv
    candidates = [s for s in splits(shape) if cost(s) <= budget]
    if not candidates:
        raise OnnxCpError(f"rank={terms}: no split of {list(shape)} costs at most max_cost_ratio="
                          f"{options.max_cost_ratio} of the Conv; lower the rank or raise max_cost_ratio")
    with single_blas_thread():  # hundreds of small SVDs (see GKPD.fit)
        errors = [tail_error(groups, s, terms) for s in candidates]
    fine = [s for s, e in zip(candidates, errors) if e <= min(errors) + TIE]
    return min(fine, key=lambda s: (cost(s), s))


def static_pads(spec: ConvSpec) -> tuple[int, int, int, int] | None:
    """Explicit pads (top, left, bottom, right); None when they depend on the input size."""
    if not spec.auto_pad.startswith("SAME"):
        return spec.pads
    if spec.strides != (1, 1):
        return None
    totals = [d * (k - 1) for d, k in zip(spec.dilations, spec.kernel)]  # unit stride: fixed
    begins = [t // 2 if spec.auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
    return begins[0], begins[1], totals[0] - begins[0], totals[1] - begins[1]


def stage_strides(spec: ConvSpec, split: Split) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(stage-1 strides, stage-2 strides, stage-2 dilations) per axis (see the module's derivation)."""
    inner = b_shape((1, 1, *spec.kernel), split)
    first, second, dilation = [], [], []
    for s, d, outer, b in zip(spec.strides, spec.dilations, split[2:], inner[2:]):
        if outer == 1 or (b * d) % s == 0:
            first.append(s), second.append(1), dilation.append(max(b * d // s, 1))
        else:
            first.append(1), second.append(s), dilation.append(b * d)
    return tuple(first), tuple(second), tuple(dilation)


class GKPD(Decomposition):
    name = "gkpd"
    display = "GKPD"
    recoverable = False  # its output channels may be reordered after the stage that adds the bias
    forms = ("gkpd",)

    def parse_rank(self, value) -> tuple[int, Split | None]:
        return parse_gkpd_rank(value)

    def applies(self, spec: ConvSpec) -> str | None:
        if static_pads(spec) is None:
            return (f"auto_pad {spec.auto_pad} with strides {list(spec.strides)}: the padding depends on "
                    "the input size, which the Kronecker stages cannot reproduce; export explicit pads")
        if len(splits((spec.out_per_group, spec.in_per_group, *spec.kernel))) == 0:
            return "the kernel has no axis to split (a 1x1 Conv with one channel per group)"
        return None

    def cap(self, spec, in_shape, out_shape):
        return None  # the cost depends on the factor shapes as much as on the number of terms

    def label(self, rank) -> str:
        terms, split = rank
        return f"{terms}:" + "x".join(map(str, split)) if split is not None else str(terms)

    def fit(self, groups, rank, seed=0, options: GkpdOptions | None = None, *, init=None, stats=None,
            moments=None, fitter=None) -> Factors:
        """Optimal truncated SVD of the rearranged kernel per group, for the rank's split or the
        best one searched (deterministic: ``seed`` and ``init`` are unused)."""
        self.check_stats(stats, groups)
        terms, split = self.parse_rank(rank)
        options = options or GkpdOptions()
        start = time.perf_counter()
        # one BLAS thread, as the CP solver: the split search is hundreds of small SVDs, which two
        # OpenBLAS threads on two busy cores ran 80x slower (a 128x128x3x3 kernel: 190 s, not 2.2 s)
        with single_blas_thread():
            chosen = check_split(groups[0].shape, split) if split is not None else choose_split(groups, terms, options)
            fitted, residual, total = svd_fit(groups, chosen, terms)
        error = float(np.sqrt(residual / max(total, 1e-300)))
        return Factors((terms, chosen), tuple(fitted), error, time.perf_counter() - start)

    def realize(self, form, name, x, y, bias, spec, group_factors, dtype, names):
        self.check_form(form)
        pads = static_pads(spec)
        if pads is None:
            raise OnnxCpError(f"node '{name}': {self.applies(spec)}")
        builder = NodeBuilder(name, "gkpd", dtype, names)
        g = spec.group
        terms, f1, c1, h1, w1 = group_factors[0][0].shape
        _, f2, c2, h2, w2 = group_factors[0][1].shape
        first, second, dilation = stage_strides(spec, (f1, c1, h1, w1))
        stage1 = {"kernel_shape": [h2, w2], "strides": list(first), "dilations": list(spec.dilations),
                  "pads": list(pads)}
        b_kernels = [b.reshape(terms * f2, c2, h2, w2) for _, b in group_factors]  # rows (r, f2)
        if g == 1:  # the C1 blocks of C2 channels go into the batch: B stored once
            folded = builder.node("Reshape", "fold", [x, builder.constant("fold.shape", [-1, c2, 0, 0], np.int64)])
            z = builder.conv("b", folded, b_kernels[0], stage1)
            current = builder.node("Reshape", "unfold", [z, builder.constant(
                "unfold.shape", [-1, c1 * terms * f2, 0, 0], np.int64)])
        else:
            tiled = np.concatenate([k for k in b_kernels for _ in range(c1)], axis=0)
            current = builder.conv("b", x, tiled, {**stage1, "group": g * c1})
        # (g, c1, r, f2) -> (g, f2, c1, r)
        order = np.arange(g * c1 * terms * f2).reshape(g, c1, terms, f2).transpose(0, 3, 1, 2).ravel()
        current = self._gather(builder, "regroup", current, order)
        a_kernels = [np.moveaxis(a, 0, 2).reshape(f1, c1 * terms, h1, w1) for a, _ in group_factors]
        stage2 = {"kernel_shape": [h1, w1], "strides": list(second), "dilations": list(dilation),
                  "group": g * f2}
        weight = np.concatenate([k for k in a_kernels for _ in range(f2)], axis=0)  # rows (g, f2, f1)
        # The Conv's output channel (g, f1, f2) is stage 2's channel (g, f2, f1).
        outputs = np.arange(g * f2 * f1).reshape(g, f2, f1).transpose(0, 2, 1).ravel()
        identity = bool(np.all(outputs == np.arange(outputs.size)))
        tail = ()
        if bias:
            inverse = np.argsort(outputs)
            tail = (bias,) if identity else (builder.node("Gather", "bias", [bias, builder.constant(
                "bias.indices", inverse, np.int64)], axis=0),)
        current = builder.conv("a", current, weight, stage2, y if identity else None, tail)
        if not identity:
            self._gather(builder, "order", current, outputs, y)
        return builder.out

    @staticmethod
    def _gather(builder: NodeBuilder, stage: str, current: str, order: np.ndarray, output: str | None = None) -> str:
        if output is None and np.all(order == np.arange(order.size)):
            return current
        return builder.node("Gather", stage, [current, builder.constant(f"{stage}.indices", order, np.int64)],
                            output, axis=1)

    def concrete(self, value, spec, groups=None, factor_rank=None, shapes=None) -> tuple[int, Split]:
        """Terms and A's shape; a rank without the shape takes the one ``choose_split`` finds
        for ``groups`` (the layer's kernels), costed at the layer's ``shapes`` when known: stage 1
        runs over the padded input, which per-pixel counts miss (a 128x128x3x3 Conv on 10x10:
        8 terms of 1x1x3x3 cost 1.34x the Conv where the count said less)."""
        terms, split = self.parse_rank(value)
        if split is None and groups is not None:
            costs = None
            if shapes is not None and None not in shapes and static_pads(spec) is not None:
                costs = (lambda s: self.cost(self.forms[0], spec, (terms, s), *shapes, False).macs,
                         conv_cost(spec, shapes[1], False).macs)
            split = choose_split(groups, terms, GkpdOptions(), costs)
        return self.checked(spec, (terms, split))

    def checked(self, spec: ConvSpec, rank) -> tuple[int, Split]:
        terms, split = self.parse_rank(rank)
        if split is None:
            raise OnnxCpError(f"rank={terms}: gkpd's cost depends on A's shape; give it, e.g. "
                              f'"{terms}:F1xC1xh1xw1", or use the rank of a fit (Factors.rank)')
        return terms, check_split((spec.out_per_group, spec.in_per_group, *spec.kernel), split)

    def cost(self, form, spec, rank, in_shape, out_shape, has_bias) -> Cost:
        self.check_form(form)
        terms, split = self.checked(spec, rank)
        f1, c1, h1, w1 = split
        f2, c2, h2, w2 = b_shape((spec.out_per_group, spec.in_per_group, *spec.kernel), split)
        g = spec.group
        stage1_per_pixel = g * c1 * terms * f2 * c2 * h2 * w2
        stage2_params = g * f2 * f1 * c1 * terms * h1 * w1
        params = (stage1_per_pixel // (c1 if g == 1 else 1) + stage2_params + spec.out_channels * has_bias)
        pads = static_pads(spec)
        if in_shape is None or out_shape is None or pads is None:
            return Cost(None, params)
        n, _, ho, wo = out_shape
        first, _, _ = stage_strides(spec, split)
        sizes = [(size + before + after - d * (b - 1) - 1) // s + 1 for size, before, after, d, b, s in
                 zip(in_shape[2:], pads[:2], pads[2:], spec.dilations, (h2, w2), first)]
        return Cost(n * sizes[0] * sizes[1] * stage1_per_pixel + n * ho * wo * stage2_params, params)

    def kernels(self, group_factors, xp=np):
        return [kron_sum(a, b, xp) for a, b in group_factors]

    def placeholder(self, spec, rank, seed=0):
        rng = np.random.default_rng(seed)
        terms, split = self.checked(spec, rank)
        inner = b_shape((spec.out_per_group, spec.in_per_group, *spec.kernel), split)
        return [(rng.standard_normal((terms, *split)) * 0.1, rng.standard_normal((terms, *inner)) * 0.1)
                for _ in range(spec.group)]
