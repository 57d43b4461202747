"""--max-error: the smallest rank whose relative kernel error is at most E.

Galloping (1, 2, 4, ... times ``step``) finds a bracket, bisection narrows it; every fit starts
from the fit of the nearest smaller rank already tried (the solver pads it with small terms).
The error is not guaranteed to fall with the rank (each fit is a local minimum), so the answer
is the smallest *tried* rank that passed, with every rank below it in the bracket failing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from onnx_cp.decompositions import Factors

# (rank, warm start or None) -> Factors
RankFitter = Callable[[int, Factors | None], Factors]


@dataclass
class SearchResult:
    fit: Factors | None  # None: even ``limit`` does not reach the error
    tried: dict[int, Factors] = field(default_factory=dict)

    @property
    def rank(self) -> int | None:
        return self.fit.rank if self.fit else None

    def errors(self) -> dict[int, float]:
        return {r: f.rel_error for r, f in sorted(self.tried.items())}


def smallest_rank(fit: RankFitter, max_error: float, limit: int, step: int = 1) -> SearchResult:
    """Smallest rank in {step, 2 step, ...} (and ``limit``) with error <= ``max_error``."""
    if limit < 1:
        return SearchResult(None)
    step = max(1, min(step, limit))
    tried: dict[int, Factors] = {}

    def at(rank: int) -> Factors:
        if rank not in tried:
            below = [r for r in tried if r < rank]
            tried[rank] = fit(rank, tried[max(below)] if below else None)
        return tried[rank]

    ok = lambda rank: at(rank).rel_error <= max_error  # noqa: E731
    low, high = 0, step  # low fails (0: nothing tried), high is the next to try
    while not ok(high):
        if high >= limit:
            return SearchResult(None, tried)
        low, high = high, min(limit, high * 2)
    # low fails, high passes: bisect on multiples of step (limit may be off the grid)
    while high - low > step:
        mid = low + max(step, (high - low) // 2 // step * step)
        if mid >= high:
            break
        if ok(mid):
            high = mid
        else:
            low = mid
    return SearchResult(tried[high], tried)


def first_passing(count: int, ok: Callable[[int], bool]) -> int | None:
    """The smallest index in range(count) where ``ok`` holds, by bisection (``ok`` taken as
    monotone: false, then true); None when even the last fails. Calls ``ok`` about log2(count)
    times, the last index first."""
    if count == 0 or not ok(count - 1):
        return None
    low, high = -1, count - 1  # low fails (or is before the start), high passes
    while high - low > 1:
        mid = (low + high) // 2
        if ok(mid):
            high = mid
        else:
            low = mid
    return high
