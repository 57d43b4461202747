"""Rank selection: per-layer ranks from rank rules, an error bound (--max-error) or a budget
(--target-speedup, --budget-macs) with a data-aware proxy. ``plan`` is the entry the rewrite's
plan stage uses.

A budget's steps share ``problem.BudgetProblem``: grid (candidates), latency (the probe), target
(costs), curves (fits), damages, allocation; ``budget`` runs them in order. by_error: the error
bound; search: smallest admissible rank; allocate: multiple-choice knapsack; proxy: feature-map
errors on the proxy's inputs; cost: multiply-adds and the latency model; refine: optuna.
"""
from onnx_cp.ranks.allocate import allocate, uniform_error
from onnx_cp.ranks.options import RankSelection
from onnx_cp.ranks.search import SearchResult, smallest_rank

__all__ = ["RankSelection", "SearchResult", "allocate", "smallest_rank", "uniform_error"]
