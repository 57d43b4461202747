"""--max-error: per layer, the smallest rank whose relative kernel error is at most E.

With ``--decomposition auto`` every decomposition the layer may take (CP and Tucker-2 for a
k x k Conv, SVD for a 1x1 Conv, a Gemm or a MatMul) finds its own smallest rank within the
bound, and the layer keeps the one with the fewest multiply-adds: the bound fixes the error, so
the cheapest way to meet it wins. The rewrite then times the chosen form against the Conv.
"""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import replace

from onnx_cp import decompositions
from onnx_cp.decision import Decision
from onnx_cp.decompositions.cp_fit import WarmFitter
from onnx_cp.decompositions.cp_solver import FitOptions
from onnx_cp.parallel_fit import worker_pool
from onnx_cp.progress import Progress
from onnx_cp.ranks.cost import option_macs
from onnx_cp.ranks.grid import ranks_between
from onnx_cp.ranks.problem import BudgetLayer
from onnx_cp.ranks.search import first_passing, smallest_rank
from onnx_cp.ranks.selection import RankPlan

LARGE = 256  # a count-ranked rank search steps by 16 from such caps (their ranks are large anyway)
GRID = 48  # ranks of another decomposition tried at most: geometric in multiply-adds, 0.1% to 100%


def by_error(plan: RankPlan, auto: list[BudgetLayer], max_error: float, seed: int, options: FitOptions,
             jobs: int, align, progress: Progress | None, fitter: WarmFitter | None = None) -> None:
    """Every layer's choice within ``max_error``; layers search side by side in ``jobs`` worker
    processes (each search is seeded, so any ``jobs`` gives the same choices). ``fitter`` (tests)
    replaces the CP solver and runs in process."""
    order = sorted(range(len(auto)), key=lambda i: -sum(g.size for g in auto[i].groups))
    searches = {}
    if fitter is not None or jobs <= 1 or len(order) <= 1:
        for done, i in enumerate(order):
            if progress:
                progress(f"rank search: {auto[i].site.name}", done, len(order))
            searches[i] = _search(auto[i], max_error, seed, options, align, fitter)
    else:
        with worker_pool(min(jobs, len(order))) as pool:
            # the weights only matter to the rewrite's refit, not to the kernel-error search
            pending = {pool.submit(_search, replace(auto[i], moments=None), max_error, seed, options, align): i
                       for i in order}
            while pending:
                if progress:
                    names = [auto[i].site.name for i in pending.values()]
                    progress(f"rank search: {names[0]}" + (f" (+{len(names) - 1})" if len(names) > 1 else ""),
                             len(searches), len(order))
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    searches[pending.pop(future)] = future.result()
    counts: dict[str, int] = {}
    for i, layer in enumerate(auto):
        found, closest = searches[i]
        if not found:
            tried = "; ".join(f"{_label(kind, rank)}: {error:.4f}" for kind, rank, error in closest)
            plan.choices[layer.site.key] = Decision(
                None, f"error<={max_error}",
                reason=f"no rank reaches kernel error {max_error} at fewer multiply-adds than the layer "
                       f"(largest tried: {tried}); kept as it is")
            continue
        macs, kind, rank, fit = min(found, key=lambda f: f[0])
        # The bound is on the kernel error of a plain fit; with calibration data the rewrite
        # refits the chosen rank data-aware, so this fit is not handed on.
        plan.choices[layer.site.key] = Decision(rank, f"error<={max_error}", cost=macs, decomposition=kind,
                                                fit=fit if layer.moments is None else None)
        counts[kind] = counts.get(kind, 0) + 1
    plan.summary.max_error = max_error
    if any(len(l.decompositions) > 1 for l in auto):
        plan.summary.decompositions = counts


def _search(layer: BudgetLayer, max_error: float, seed: int, options: FitOptions, align,
            fitter: WarmFitter | None = None) -> tuple[list, list]:
    """Runs in a worker: per decomposition, its smallest rank within the bound.
    (macs, kind, rank, fit) of each that reaches it; (kind, rank, error) of each's largest tried."""
    found, closest = [], []
    for kind in layer.decompositions:
        hit, best = (_counted(layer, kind, max_error, seed, options, fitter)
                     if decompositions.get(kind).count_ranked else _other(layer, kind, max_error, seed, align))
        if hit is not None:
            found.append((option_macs(layer.site, kind, hit[0]), kind, *hit))
        if best is not None:
            closest.append((kind, *best))
    return found, closest


def _counted(layer: BudgetLayer, kind: str, max_error: float, seed: int, options: FitOptions,
             fitter: WarmFitter | None):
    """A count-ranked decomposition's search, each fit going on from its neighbour's:
    ((rank, fit) or None, (rank, error) of the largest rank tried)."""
    d = decompositions.get(kind)
    # up to the cap, as with CP alone: a bound that only a high CP rank meets (MNIST's 64->128 3x3
    # at 0.3: CP rank 192, where Tucker-2's cheapest-than-the-Conv ranks stop at 0.345) still gets it
    result = smallest_rank(lambda r, warm: d.fit(layer.groups, r, seed, d.options(options), init=warm, fitter=fitter),
                           max_error, layer.cap, 16 if layer.cap >= LARGE else 1)
    worst = result.tried[max(result.tried)] if result.tried else None
    return ((result.rank, result.fit) if result.fit else None,
            (worst.rank, worst.rel_error) if worst else None)


def _other(layer: BudgetLayer, kind: str, max_error: float, seed: int, align):
    """The same for Tucker-2 or SVD, over ranks whose multiply-adds grow geometrically."""
    site = layer.site
    ranks = ranks_between(site, kind, 1e-3, 1.0, GRID, align)
    d, fits = decompositions.get(kind), {}

    def ok(i: int) -> bool:
        fits[i] = d.fit(layer.groups, ranks[i], seed)
        return fits[i].rel_error <= max_error

    i = first_passing(len(ranks), ok)
    top = max(fits, default=None)
    return ((ranks[i], fits[i]) if i is not None else None,
            (ranks[top], fits[top].rel_error) if top is not None else None)


def _label(kind: str, rank) -> str:
    return f"{kind} rank {decompositions.get(kind).label(rank)}"
