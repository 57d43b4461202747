"""Low-rank-factor CP: a rank-R CP whose channel factor matrices have rank L (factor rank).

Per group W ~ sum_r (U_out a_r) o (U_in b_r) o c_r o d_r with U_out (F, L), U_in (C, L): a
Tucker-2 of ranks (L, L) whose core has a rank-R CP. Realized as 1x1 C -> L (U_in^T), the CP
form of the core (1x1 L -> R, kh x 1 and 1 x kw depthwise or one kh x kw depthwise, 1x1 R -> L),
1x1 L -> F (U_out, with the bias). A side's two 1x1 stages merge into one (C -> R, or R -> F)
where that costs no more (C R <= C L + L R), which is then the plain CP stage with factor
U_in b (or U_out a). Fitted by HOOI to (L, L), then CP-NLS of the core with cp_solver.fit_kernel;
calibration statistics whiten the input side as for Tucker-2.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace

import numpy as np

from onnx_cp.conv import ConvSpec, Cost, cp_cost
from onnx_cp.decompositions.cp_solver import FitOptions, KernelFit, fit_kernel
from onnx_cp.decompositions import cp
from onnx_cp.decompositions.base import (Decomposition, Factors, parse_positive, relative_error,
                                         spatial_with_channels)
from onnx_cp.decompositions.calibration import whiten
from onnx_cp.decompositions.nodes import NodeBuilder, one_by_one, stacked_1x1
from onnx_cp.decompositions.tucker2 import Tucker2Options, hooi
from onnx_cp.errors import OnnxCpError, param, spelled

FORMS = {"lrcp4": "cp4", "lrcp3": "cp3"}  # form -> the CP form of the core


@dataclass(frozen=True)
class LrcpOptions:
    tucker: Tucker2Options = field(default_factory=Tucker2Options)
    cp: FitOptions = field(default_factory=FitOptions)
    # CP-NLS of the small core from random factors lands in a poor basin for some seeds (rank 24
    # of an 8x8x3x3 core: 0.4% to 4% by seed, exact for others): the core is fitted from this many
    # seeds under the progress stop, and the best one then runs on without it, to max_iter.
    restarts: int = 4


EXACT = 1e-9  # a core fit this close needs no further restart


def parse_lrcp_rank(value) -> tuple[int, int]:
    """(24, 8), [24, 8] or "24:8" -> (CP rank R, factor rank L)."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*:\s*\d+\s*", value):
        value = tuple(value.split(":"))
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise OnnxCpError(f"rank={value!r}: lrcp takes the CP rank and the factor rank, e.g. (24, 8) or \"24:8\"")
    return parse_positive(value[0], "rank", "(24, 8)"), parse_positive(value[1], "rank", "(24, 8)")


def merges(spec: ConvSpec, rank: int, factor_rank: int) -> tuple[bool, bool]:
    """Whether the input and the output side's two 1x1 stages are cheaper merged into one."""
    c, f = spec.in_per_group, spec.out_per_group
    return c * rank <= c * factor_rank + factor_rank * rank, f * rank <= f * factor_rank + factor_rank * rank


def core_spec(spec: ConvSpec, in_merged: bool, out_merged: bool, factor_rank: int) -> ConvSpec:
    """The Conv the CP stages realize: L channels per group on a side that keeps its 1x1 stage."""
    g = spec.group
    return replace(spec, in_channels=spec.in_channels if in_merged else g * factor_rank,
                   out_channels=spec.out_channels if out_merged else g * factor_rank)


def _core_fit(core: np.ndarray, rank: int, seed: int, options: LrcpOptions, warm):
    """The core's CP: from ``warm``, or the best of ``options.restarts`` seeds run on to max_iter."""
    if warm is not None:
        return fit_kernel(core, rank, seed, options.cp, init=warm)
    best = None
    for k in range(max(options.restarts, 1)):
        fit = fit_kernel(core, rank, seed + k, options.cp)
        best = fit if best is None or fit.rel_error < best.rel_error else best
        if best.rel_error < EXACT:
            return best
    if options.cp.progress_tol:
        best = fit_kernel(core, rank, seed, replace(options.cp, progress_tol=0.0), init=best)
    return best


class LowRankFactorCP(Decomposition):
    name = "lrcp"
    display = "low-rank-factor CP"
    forms = tuple(FORMS)
    uses_stats = True
    aliases = {cp_form: form for form, cp_form in FORMS.items()}  # --realize cp4 means lrcp4

    def label(self, rank) -> str:
        return f"{rank[0]}:{rank[1]}"

    def parse_rank(self, value) -> tuple[int, int]:
        return parse_lrcp_rank(value)

    def applies(self, spec: ConvSpec) -> str | None:
        return spatial_with_channels(spec, "CP stages cannot make it cheaper", "no input factor to make low-rank")

    def cap(self, spec, in_shape, out_shape):
        return None  # two ranks trade against each other; no single largest one

    def options(self, cp_options):
        return LrcpOptions(cp=cp_options)

    def concrete(self, value, spec, groups=None, factor_rank=None, shapes=None) -> tuple[int, int]:
        """An int is the CP rank R, with ``factor_rank`` as L; "24:8" gives both. L is lowered
        to the channels per group."""
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if factor_rank is None:
                raise OnnxCpError(f"rank={value}: lrcp needs the factor rank too; pass {param('factor_rank')} or "
                                  f"{spelled('a pair such as (24, 8)', 'a rank such as 24:8')}")
            value = (value, factor_rank)
        r, l = self.parse_rank(value)
        return r, min(l, spec.in_per_group, spec.out_per_group)

    def checked(self, rank, in_dim: int, out_dim: int) -> tuple[int, int]:
        r, l = self.parse_rank(rank)
        if l > min(in_dim, out_dim):
            raise OnnxCpError(f"rank=({r}, {l}): the factor rank exceeds the channels per group "
                              f"({in_dim} in, {out_dim} out); give at most {min(in_dim, out_dim)}")
        return r, l

    def fit(self, groups, rank, seed=0, options: LrcpOptions | None = None, *, init=None, stats=None,
            moments=None, fitter=None) -> Factors:
        """HOOI to (L, L), then CP of the (L, L, kh, kw) core per group; ``init``: an lrcp fit
        of the same weight (its core factors start CP-NLS)."""
        stats = self.channel_stats(stats, moments)
        self.check_stats(stats, groups)
        r, l = self.checked(rank, groups[0].shape[1], groups[0].shape[0])
        options = options or LrcpOptions()
        start = time.perf_counter()
        fitted, fits, targets, approx = [], [], [], []
        for g, kernel in enumerate(groups):
            target, inverse = whiten(np.asarray(kernel, np.float64), None if stats is None else stats[g])
            core, u_out, u_in = hooi(target, (l, l), options.tucker)
            warm = None if init is None else KernelFit(tuple(init.groups[g][2:]), 0.0, 1.0, 1.0, False, 0.0)
            fit = _core_fit(core, r, seed, options, warm)
            a, b, c, d = fit.factors
            targets.append(target)
            approx.append(cp.cp_kernel(u_out @ a, u_in @ b, c, d))
            fitted.append((u_out, u_in if inverse is None else inverse @ u_in, a, b, c, d))
            fits.append(fit)
        return Factors((r, l), tuple(fitted), relative_error(targets, approx), time.perf_counter() - start,
                       tuple(fits))

    def realize(self, form, name, x, y, bias, spec, group_factors, dtype, names):
        self.check_form(form)
        l, r = group_factors[0][2].shape
        in_merged, out_merged = merges(spec, r, l)
        builder = NodeBuilder(name, "lrcp", dtype, names)
        core = NodeBuilder(name, "lrcp/core", dtype, names)
        core.out = builder.out  # one realization, the core's stages named apart
        current = x
        if not in_merged:
            current = builder.conv("reduce", x, stacked_1x1([f[1].T for f in group_factors]), one_by_one(spec.group))
        core_out = y if out_merged else names.fresh(f"{name}/lrcp/core_out")
        factors = [(u_out @ a if out_merged else a, u_in @ b if in_merged else b, c, d)
                   for u_out, u_in, a, b, c, d in group_factors]
        cp.build(core, FORMS[form], current, core_out, bias if out_merged else None,
                 core_spec(spec, in_merged, out_merged, l), factors)
        if not out_merged:
            builder.conv("expand", core_out, stacked_1x1([f[0] for f in group_factors]), one_by_one(spec.group),
                         y, (bias,) if bias else ())
        return builder.out

    def cost(self, form, spec, rank, in_shape, out_shape, has_bias) -> Cost:
        self.check_form(form)
        r, l = self.checked(rank, spec.in_per_group, spec.out_per_group)
        in_merged, out_merged = merges(spec, r, l)
        inner = core_spec(spec, in_merged, out_merged, l)
        known = in_shape is not None and out_shape is not None
        core = cp_cost(FORMS[form], inner, r, (in_shape[0], inner.in_channels, *in_shape[2:]) if known else None,
                       out_shape, has_bias and out_merged)
        params = (core.params + spec.in_channels * l * (not in_merged)
                  + (spec.out_channels * l + spec.out_channels * has_bias) * (not out_merged))
        if not known:
            return Cost(None, params)
        n, _, hi, wi = in_shape
        _, _, ho, wo = out_shape
        macs = core.macs + n * hi * wi * spec.in_channels * l * (not in_merged) + \
            n * ho * wo * spec.out_channels * l * (not out_merged)
        return Cost(macs, params)

    def kernels(self, group_factors, xp=np):
        return [cp.cp_kernel(u_out @ a, u_in @ b, c, d) for u_out, u_in, a, b, c, d in group_factors]

    def placeholder(self, spec, rank, seed=0):
        rng = np.random.default_rng(seed)
        r, l = self.checked(rank, spec.in_per_group, spec.out_per_group)
        dims = ((spec.out_per_group, l), (spec.in_per_group, l), (l, r), (l, r), (spec.kernel[0], r),
                (spec.kernel[1], r))
        return [tuple(rng.standard_normal(d) * 0.1 for d in dims) for _ in range(spec.group)]
