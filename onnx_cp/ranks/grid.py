"""The candidate ranks of a budget selection: a few per layer and decomposition, around the share
of its cost the target leaves it, and the one rank that would serve every layer alike."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from onnx_cp import decompositions
from onnx_cp.conv import Cost, align_rank
from onnx_cp.errors import OnnxCpError
from onnx_cp.ranks.cost import option_macs
from onnx_cp.ranks.problem import BudgetLayer, BudgetProblem
from onnx_cp.sites import Site

# Candidate ranks span this range of the share of its multiply-adds a layer may keep. Measured
# CP forms run below their multiply-add count's speed (depthwise stages are memory-bound), so
# re-allocation rounds move down more often than up; the top stays low because fit time grows
# with the rank (a 512x512x3x3 kernel at rank 1145 costs 16 s per iteration).
SHARE_RANGE = (1 / 3, 1.5)
# Curve fits per model at least: a model with fewer layers gets more candidates per layer
# than ``RankSelection.candidates``.
CURVE_FITS = 24
# Measured figures steer the selection (the latency share, a measured round's correction) in
# steps of this ratio: run-to-run timing noise within a step then gives the same candidates and
# the same allocation (VGG-16 --target-speedup 3 gave three different models in three runs).
SHARE_STEP = 2 ** 0.25


def on_lattice(value: float, step: float = SHARE_STEP) -> float:
    """``value`` rounded to the nearest power of ``step``."""
    return float(step ** round(math.log(value) / math.log(step)))


def candidate_ranks(cap: int, share: float, count: int,
                    align: Callable[[int], int] = align_rank, upto: float = 0.0) -> list[int]:
    """About ``count`` ranks over ``SHARE_RANGE`` times ``share`` of the cap (up to ``upto`` of
    it when that is higher), each passed through ``align`` (by default the rewrite's rounding to
    onnxruntime's NCHWc blocks, ``conv.align_rank``): a count-ranked decomposition's grid."""
    lo = max(share * SHARE_RANGE[0], 1.0 / cap)
    hi = min(1.0, max(share * SHARE_RANGE[1], upto, 2.0 / cap))
    fractions = np.geomspace(lo, hi, count) if hi > lo else [hi]
    return sorted({max(1, align(min(cap, max(1, int(round(f * cap)))))) for f in fractions})


def uniform_rank(auto: list[BudgetLayer], kind: str, budget_macs: float) -> int:
    """The largest single rank of ``kind`` (capped per layer) whose first forms fit ``budget_macs``."""
    lo, hi = 1, max(l.cap for l in auto)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(option_macs(l.site, kind, min(mid, l.cap)) for l in auto) <= budget_macs:
            lo = mid
        else:
            hi = mid - 1
    return lo


def rank_at(site: Site, kind: str, fraction: float, align: Callable[[int], int]):
    """``kind``'s largest rank whose first form costs under ``fraction`` of the Conv's multiply-adds."""
    macs = float(site.cost.macs)
    budget = Cost(int(math.ceil(fraction * macs)) + 1, 1 << 62)
    try:
        return decompositions.get(kind).rank_within(site.spec, site.in_shape, site.out_shape, budget, None, align)
    except OnnxCpError:
        return None


def ranks_between(site: Site, kind: str, lo: float, hi: float, count: int,
                  align: Callable[[int], int] = align_rank) -> list:
    """The distinct ranks of ``kind`` at about ``count`` shares of the Conv's multiply-adds,
    geometric from ``lo`` to ``hi``, cheapest first."""
    fractions = np.geomspace(lo, hi, count) if hi > lo else [hi]
    found = {r for r in (rank_at(site, kind, float(f), align) for f in fractions) if r is not None}
    return sorted(found, key=_order)


def other_ranks(site: Site, kind: str, share: float, count: int, align: Callable[[int], int] = align_rank,
                upto: float = 0.0) -> list:
    """About ``count`` ranks of ``kind`` whose multiply-adds span ``SHARE_RANGE`` times ``share``
    of the Conv's (up to ``upto`` of them when that is higher), as ``candidate_ranks`` spans a
    cap; at least the smallest rank."""
    found = ranks_between(site, kind, max(share * SHARE_RANGE[0], 1e-3),
                          min(1.0, max(share * SHARE_RANGE[1], upto)), count, align)
    return found or [decompositions.get(kind).concrete(1, site.spec)]


def _order(rank):
    return rank if isinstance(rank, tuple) else (rank,)


def macs_share(problem: BudgetProblem) -> float:
    """The share of their multiply-adds the automatic layers may keep for the target."""
    selection, plan = problem.selection, problem.plan
    total = problem.model_macs
    before = sum(l.before for l in problem.auto)
    others = total - before - sum(s.cost.macs or 0 for s in problem.ruled) + sum(
        option_macs(s, problem.ruled_kind(s), plan.choices[s.key].rank) for s in problem.ruled)
    target = float(selection.budget_macs) if selection.budget_macs else total / problem.float_speedup
    return float(np.clip((target - others) / before, 0.02, 1.0)) if before else 1.0


def choose_candidates(problem: BudgetProblem, share: float, macs: float, fits: int = CURVE_FITS) -> None:
    """Each layer's candidate ranks around ``share`` (reaching up to ``macs``, the multiply-add
    share, where that is higher), and its rank in the uniform allocation (always a candidate);
    about ``fits`` candidates in all, at least ``selection.candidates`` per layer.

    Few layers make curve fits cheap and coarse grids costly: a measured round can only move
    between candidates (charcnn36 at --target-speedup 5 --calib: 4 candidates kept features.3 at
    rank 48, 90.1% of held-out crops; 8 reached rank 64, 91.6%, measured 4.87x)."""
    selection, config = problem.selection, problem.config
    count = max(selection.candidates, math.ceil(fits / len(problem.auto)))
    uniform = {}
    for kind in {k for l in problem.auto for k in l.decompositions if decompositions.get(k).count_ranked}:
        layers = [l for l in problem.auto if kind in l.decompositions]
        uniform[kind] = uniform_rank(layers, kind, share * sum(float(l.site.cost.macs) for l in layers))
    for layer in problem.auto:
        ranks, kinds = [], []
        for kind in layer.decompositions:
            d = decompositions.get(kind)
            if d.count_ranked:
                grid = candidate_ranks(layer.cap, share, count, config.align_rank, upto=macs)
                layer.uniform = max(1, config.align_rank(min(uniform[kind], layer.cap)))
                found = sorted(set(grid) | {layer.uniform})
                top = d.auto_limit(layer.site.spec) if problem.mixed else None
                if top is not None:  # auto: the other decompositions cover the costly end
                    top = max(1, config.align_rank(top))
                    layer.uniform = min(layer.uniform, top)
                    found = sorted({min(r, top) for r in found})
            else:
                found = other_ranks(layer.site, kind, share, count, config.align_rank, upto=macs)
                if not kinds:  # the uniform allocation's candidate: the rank at the common share
                    layer.uniform = rank_at(layer.site, kind, share, config.align_rank) or found[0]
                    found = sorted(set(found) | {layer.uniform}, key=_order)
            ranks += found
            kinds += [kind] * len(found)
        layer.ranks, layer.kinds = ranks, kinds


def span(auto: list[BudgetLayer]) -> dict:
    """(site key, decomposition) -> (its lowest candidate rank, its highest)."""
    found = {}
    for l in auto:
        for k, r in enumerate(l.ranks):
            key = (l.site.key, l.kind(k))
            found[key] = (found.get(key, (r, r))[0], r)
    return found
