"""Rank selection: per-layer ranks from an error bound (--max-error) or a budget (--target-speedup,
--budget-macs) with a data-aware proxy. ``plan.plan_ranks`` is the entry ``rewrite`` uses.

search: smallest admissible rank; allocate: multiple-choice knapsack; proxy / calibration:
feature-map errors on calibration inputs; cost: MACs or measured latency; refine: optuna.
"""
from onnx_cp.ranks.allocate import allocate, uniform_error
from onnx_cp.ranks.options import RankSelection
from onnx_cp.ranks.search import SearchResult, smallest_rank

__all__ = ["RankSelection", "SearchResult", "allocate", "smallest_rank", "uniform_error"]
