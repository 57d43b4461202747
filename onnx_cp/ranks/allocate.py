"""Choose one option per layer so that the total cost fits a budget and the damage is least.

A multiple-choice knapsack, solved exactly by dynamic programming over the cost rounded up
to ``budget / resolution`` units (so the true total never exceeds the budget; integer costs
with a budget of at most ``resolution`` are exact). Damages add: the proxy is the sum over
layers of (sensitivity x squared relative output error), see ``proxy``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from onnx_cp.errors import OnnxCpError


def allocate(costs: Sequence[Sequence[float]], damages: Sequence[Sequence[float]], budget: float,
             resolution: int = 4000) -> list[int]:
    """Index of the chosen option per layer; minimizes the summed damage with total cost <= budget.

    Raises OnnxCpError when even the cheapest options exceed the budget.
    """
    if len(costs) != len(damages) or any(len(c) != len(d) or not c for c, d in zip(costs, damages)):
        raise ValueError("every layer needs as many damages as costs, and at least one option")
    cheapest = sum(min(c) for c in costs)
    if cheapest > budget * (1 + 1e-12):
        raise OnnxCpError(f"the budget {budget:.6g} is below the cheapest allocation ({cheapest:.6g}); "
                          "ask for less, or allow more layers to be rewritten")
    if not costs:
        return []
    integral = all(float(x).is_integer() for c in costs for x in c) and float(budget).is_integer()
    unit = 1.0 if integral and budget <= resolution else budget / resolution
    slots = int(math.floor(budget / unit + 1e-9))
    inf = math.inf
    best = np.full(slots + 1, inf)
    best[0] = 0.0  # best[b]: least damage of the layers so far with cost exactly b units
    choice = []
    for cost, damage in zip(costs, damages):
        units = [int(math.ceil(c / unit - 1e-9)) for c in cost]
        nxt = np.full(slots + 1, inf)
        pick = np.full(slots + 1, -1, dtype=np.int64)
        for k, (u, d) in enumerate(zip(units, damage)):
            if u > slots:
                continue
            cand = np.full(slots + 1, inf)
            cand[u:] = best[: slots + 1 - u] + d
            better = cand < nxt
            nxt[better], pick[better] = cand[better], k
        best = nxt
        choice.append(pick)
    if not np.isfinite(best).any():  # rounding up pushed the cheapest past the budget
        return [int(np.argmin(c)) for c in costs]
    # least damage; among ties, the largest spend (uses the budget fully)
    finite = np.flatnonzero(np.isfinite(best))
    low = best[finite].min()
    end = int(finite[best[finite] <= low + 1e-12 * max(1.0, abs(low))].max())
    picks = []
    for layer in range(len(costs) - 1, -1, -1):
        k = int(choice[layer][end])
        picks.append(k)
        end -= int(math.ceil(costs[layer][k] / unit - 1e-9))
    return picks[::-1]


def uniform_error(errors: Sequence[Sequence[float]], costs: Sequence[Sequence[float]],
                  budget: float) -> list[int]:
    """--max-error alone at a budget: the smallest common error bound whose cheapest ranks fit.

    Per layer, the cheapest option whose error is at most the bound (the costliest option
    where none is); the bound is the least among all the errors that keeps the total in budget.
    """
    def pick(bound: float) -> list[int]:
        out = []
        for err, cost in zip(errors, costs):
            ok = [k for k, e in enumerate(err) if e <= bound]
            out.append(min(ok, key=lambda k: cost[k]) if ok else int(np.argmax(cost)))
        return out

    for bound in sorted({e for err in errors for e in err}):
        picks = pick(bound)
        if sum(c[k] for c, k in zip(costs, picks)) <= budget:
            return picks
    raise OnnxCpError(f"no common error bound keeps the cost within {budget:.6g}")
