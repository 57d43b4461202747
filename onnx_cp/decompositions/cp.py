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

import numpy as np

from onnx_cp.conv import ConvSpec, Cost, cp4_stage_counts, cp_cost, has_reduce_stage
from onnx_cp.decision import Decision
from onnx_cp.decompositions.base import Decomposition, Factors, parse_positive
from onnx_cp.decompositions.cp_fit import fit_layer, fit_weighted, group_weights, solver_fitter
from onnx_cp.decompositions.cp_solver import FitOptions
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
    display = "CP"
    forms = REALIZATIONS
    iterative = True
    selectable = True
    block_refinable = True
    count_ranked = True

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

    def fit(self, groups, rank, seed=0, options: FitOptions | None = None, *, init=None, stats=None,
            moments=None, fitter=None) -> Factors:
        """CP-NLS (or ALS) per group through cp_solver.fit_kernel, group i seeded ``seed + i``;
        ``init``: a fit of the same weight (at this or a neighbouring rank) to go on from;
        ``moments``: fit the layer's output on inputs of those statistics (cp_fit.fit_weighted)."""
        if stats is not None:
            self.check_stats(stats, groups)
        rank = self.parse_rank(rank)
        fitter = fitter or solver_fitter(options or FitOptions())
        if moments is not None:
            return fit_weighted(groups, rank, seed, fitter, [group_weights(m) for m in moments], init)
        return fit_layer(groups, rank, seed, fitter, init)

    def auto_limit(self, spec: ConvSpec) -> int:
        """The larger channel count of a group: a CP fit's time grows with the cube of its rank
        (a 512x512x3x3 kernel at rank 1145: 16 s per iteration), and a target that leaves a layer
        more than that has Tucker-2 candidates of the same cost."""
        return max(spec.out_per_group, spec.in_per_group)

    def unit_cost(self, spec: ConvSpec, in_shape, out_shape, conv: Cost, realize: str = "auto") -> tuple[int, int]:
        """(the Conv's multiply-adds, those of the form ``realize`` gives per unit of rank), with
        1x1 maps where shapes are unknown: a CP form's cost is linear in its rank."""
        in_shape = in_shape or (1, spec.in_channels, 1, 1)
        out_shape = out_shape or (1, spec.out_channels, 1, 1)
        before = conv.macs if conv.macs is not None else \
            spec.out_channels * spec.in_per_group * spec.kernel[0] * spec.kernel[1]
        form = self.forms_for(realize)[0]
        return before, cp_cost(form, spec, 1, in_shape, out_shape, False).macs or 1

    def count_cap(self, spec: ConvSpec, in_shape, out_shape, conv: Cost, realize: str = "auto") -> int:
        """The largest rank whose form costs fewer multiply-adds than the Conv (0: none does)."""
        before, per_rank = self.unit_cost(spec, in_shape, out_shape, conv, realize)
        return max(0, (before - 1) // per_rank)

    def rule_rank(self, value, spec, in_shape, out_shape, conv, groups=None, *, factor_rank=None, cap_rank=True,
                  align=int, realize="auto", name="the layer") -> Decision:
        """An int is the rank; a fraction the share of the Conv's multiply-adds the form may cost."""
        before, per_rank = self.unit_cost(spec, in_shape, out_shape, conv, realize)
        cap = self.count_cap(spec, in_shape, out_shape, conv, realize) if cap_rank else None
        rank = align(max(1, int(value * before // per_rank))) if isinstance(value, float) else value
        if cap is not None and cap < 1:
            return Decision(None, value, reason="no CP rank is cheaper than this Conv")
        if cap is not None and rank > cap:
            return Decision(None, value, capped=True, cap=int(cap), reason=f"rank {rank} exceeds {name}'s cap {cap}: kept")
        return Decision(rank, value)

    def realize(self, form, name, x, y, bias, spec, group_factors, dtype, names) -> Realization:
        self.check_form(form)
        return realize(form, name, x, y, bias, spec, list(group_factors), dtype, names)

    def cost(self, form, spec, rank, in_shape, out_shape, has_bias) -> Cost:
        self.check_form(form)
        return cp_cost(form, spec, self.parse_rank(rank), in_shape, out_shape, has_bias)

    def kernels(self, group_factors, xp=np):
        return [cp_kernel(*f) for f in group_factors]  # broadcasting and matmul: numpy or torch alike

    def outputs(self, patches, group_factors, xp=np):
        """The chain's own order: the R channels of the first three stages, then the last."""
        per_in = patches.shape[1] // len(group_factors)
        outs = []
        for g, (ut, us, uy, ux) in enumerate(group_factors):
            p = patches[:, g * per_in:(g + 1) * per_in]
            outs.append(_features(p, (ut, us, uy, ux), xp) @ ut.T)
        return xp.concatenate(outs, axis=1)

    def solve_last(self, patches, targets, group_factors):
        """Ut and the bias that best map the first stages' channels to the targets (a lightly
        ridged least squares per group, before the activation)."""
        per_in, per_out = patches.shape[1] // len(group_factors), targets.shape[1] // len(group_factors)
        out, biases = [], []
        for g, group in enumerate(group_factors):
            z = _features(patches[:, g * per_in:(g + 1) * per_in], group, np)
            design = np.concatenate([z, np.ones((len(z), 1))], axis=1)
            gram = design.T @ design
            gram += np.eye(len(gram)) * 1e-8 * max(float(np.trace(gram)) / len(gram), 1e-30)
            target = targets[:, g * per_out:(g + 1) * per_out].astype(np.float64)
            solution = np.linalg.solve(gram, design.T @ target)  # (R + 1, T/G)
            out.append((solution[:-1].T.copy(), *group[1:]))
            biases.append(solution[-1])
        return out, np.concatenate(biases)

    def placeholder(self, spec, rank, seed=0):
        rng = np.random.default_rng(seed)
        shape = (spec.out_per_group, spec.in_per_group, *spec.kernel)
        r = self.parse_rank(rank)
        return [tuple(rng.standard_normal((d, r)) * 0.1 for d in shape) for _ in range(spec.group)]


def _features(patches, group, xp):
    """The R channels (M, R) that the first three stages of one group's chain make of its patches."""
    _, us, uy, ux = group
    if xp is np:
        return np.einsum("msyx,sr,yr,xr->mr", patches.astype(np.float64), us, uy, ux, optimize=True)
    flat = patches.reshape(patches.shape[0], patches.shape[1], -1)  # (M, S, kh*kw)
    spatial = (uy[:, None, :] * ux[None, :, :]).reshape(-1, us.shape[1])  # (kh*kw, R)
    return (xp.einsum("bsk,sr->bkr", flat, us) * spatial).sum(1)
