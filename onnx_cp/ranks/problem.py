"""The problem every step of a budget selection (--target-speedup, --budget-macs) shares: the
layers ranked automatically, their candidates and curves, the cost unit and the target."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from onnx_cp import decompositions
from onnx_cp.decompositions.cp_solver import Fitter
from onnx_cp.ranks import cost as costs
from onnx_cp.ranks import proxy
from onnx_cp.ranks.selection import RankPlan
from onnx_cp.sites import Site
from onnx_cp.splice import Replacement, splice


@dataclass
class BudgetLayer:
    """One automatically ranked layer: its candidates (each a decomposition at a rank) and their curves."""

    site: Site
    groups: list[np.ndarray]
    cap: int  # its count-ranked decomposition's largest rank cheaper than the Conv (0: none)
    before: float  # cost of the Conv as it is
    decompositions: tuple[str, ...]  # what the candidates may be
    moments: list | None = None  # per group, the calibration's input statistics (data-aware fits)
    ranks: list = field(default_factory=list)  # per candidate, its decomposition's rank (tucker2: a pair)
    kinds: list[str] = field(default_factory=list)  # per candidate, its decomposition
    fits: list = field(default_factory=list)  # per candidate, decompositions.Factors
    costs: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # layer output error per candidate
    weight: float = 1.0  # sensitivity of the final outputs to this layer's output error
    keep_error: float = 0.0  # the layer's output error with its Conv kept (quantize='int8': the Conv in INT8)
    uniform: object = 0  # this layer's rank in the one-rank-for-all allocation

    def options(self) -> tuple[list[float], list[float]]:
        """Costs and damages of every option: each candidate, then the Conv kept as it is."""
        return self.costs + [self.before], [self.weight * e * e for e in self.errors + [self.keep_error]]

    @property
    def middle(self) -> int:
        """The candidate a layer's sensitivity is measured at, by the proxy and by --max-drop."""
        return len(self.ranks) // 2

    @property
    def middle_error(self) -> float:
        """The layer's output error at its middle candidate."""
        return self.errors[self.middle]

    def kind(self, k: int) -> str:
        return self.kinds[k]

    def factors(self, k: int) -> list[tuple[np.ndarray, ...]]:
        return list(self.fits[k].groups)

    def label(self, k: int):
        """Candidate ``k`` in a message or a search space: its rank as it is when the layer's
        candidates are of one decomposition, else 'svd:16', 'tucker2:16x12'."""
        d = decompositions.get(self.kinds[k])
        label = d.label(self.ranks[k])
        return label if len(self.decompositions) == 1 else f"{d.name}:{label}"

    def uniform_index(self) -> int:
        """The candidate of the one-rank-for-all allocation (the first decomposition's)."""
        first = self.kinds[0]
        return next(k for k, r in enumerate(self.ranks) if r == self.uniform and self.kinds[k] == first)


def weight_groups(layers: list[BudgetLayer]) -> list[list[int]]:
    """Indices of ``layers`` grouped by the weight their nodes read, in order of first use (a layer
    with no weight name, or the only reader of its weight, alone): an RNN unrolled into a Gemm per
    step reads one weight at every step, and each step alone changes the outputs by little."""
    groups: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        groups.setdefault(layer.site.weight_source or f"#{layer.site.key}", []).append(i)
    return list(groups.values())


@dataclass
class BudgetProblem:
    """Everything the steps share: the model, the layers, the cost unit, the target."""

    model: onnx.ModelProto
    sites: list[Site]
    shapes: dict  # tensor name -> shape, as inferred
    auto: list[BudgetLayer]
    ruled: list[Site]  # layers whose rank a --rank rule fixes (already fitted)
    plan: RankPlan
    config: object  # RewriteConfig
    mixed: bool = False  # --decomposition auto: candidates of several decompositions
    measurement: object = None  # measure.Measurement, where the selection times things
    data: object = None  # calibrate.CalibrationData: the proxy's inputs
    fitter: Fitter | None = None  # tests replace the CP solver
    unit_cost: Callable[..., float] | None = None
    total: float = 0.0
    fixed: float = 0.0
    target: float = 0.0
    feeds: list = field(default_factory=list)
    reference: list = field(default_factory=list)
    latency: costs.LatencyModel | None = None  # per-layer latency, once measured
    # the end form of a variant (quantize='int8': quantized), what the measured rounds time
    finished: Callable[[onnx.ModelProto], onnx.ModelProto] = lambda model: model
    quantized: bool = False  # whether that end form is INT8 (the damages then count it, int8_damages.py)
    # the end form as the latency probe and the measured rounds time it (INT8 calibrated on a few
    # samples: only its time is read); None: ``finished``
    timed_form: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None
    # how much faster that end form made the input (quantize='int8'): the float model needs
    # --target-speedup / this, and the measured rounds correct what the factor misses
    end_gain: float = 1.0
    # the speed-up the candidates are centred for when no target gives one (max_drop's search)
    goal: float | None = None
    full: set = field(default_factory=set)  # (layer index, candidate) fitted in full already

    @property
    def float_speedup(self) -> float:
        """The speed-up the float model is planned for."""
        return max(1.0 + 1e-6, (self.goal or self.selection.target_speedup) / self.end_gain)

    @functools.cached_property
    def model_macs(self) -> float:
        """Multiply-adds of the whole model as it is."""
        return float(costs.model_macs(self.model, self.sites, self.shapes))

    @property
    def selection(self):
        return self.config.selection

    def ruled_kind(self, site: Site) -> str:
        """The decomposition a --rank rule's layer is rewritten with."""
        return site.decomposition(decompositions.rule_decomposition(self.config.decomposition))

    def ruled_layers(self) -> list:
        """(decomposition, site, rank, per-group factors) of every layer a rule fixed."""
        choices = self.plan.choices
        return [(self.ruled_kind(s), s, choices[s.key].rank, list(choices[s.key].fit.groups)) for s in self.ruled]

    def form(self, site: Site, rank, kind: str) -> str:
        """The form the rewrite will likely give ``kind`` at ``rank``: the fastest by the latency
        model where one was measured, else the first it may choose."""
        if self.latency is not None:
            return self.latency.option_form(site, kind, rank)
        return decompositions.get(kind).forms_for(self.config.realize)[0]

    def variant(self, picks: list[int]) -> onnx.ModelProto:
        """The model with the picked candidates (fitted factors), each layer in its likely form, so
        that a measured round times what the rewrite will build."""
        chosen = [(l.kind(k), l.site, l.ranks[k], l.factors(k)) for l, k in zip(self.auto, picks) if k < len(l.ranks)]
        chosen += self.ruled_layers()
        return splice(self.model, [Replacement(site, self.form(site, rank, kind), rank, factors)
                                   for kind, site, rank, factors in chosen])[0]

    @property
    def threads(self) -> int:
        """Threads for the proxy's onnxruntime runs: every core (they are computed, not timed)."""
        return self.config.worker_count()

    def timed(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """``model`` in the form the probe and the rounds time."""
        return (self.timed_form or self.finished)(model)

    def output_error(self, picks: list[int]) -> float:
        return proxy.output_error(proxy.run(self.variant(picks), self.feeds, self.threads), self.reference)

    def options(self) -> list[tuple[list[float], list[float]]]:
        return [l.options() for l in self.auto]

    def spent(self, picks: list[int]) -> float:
        return self.fixed + sum(o[0][k] for o, k in zip(self.options(), picks))

    def cheapest(self) -> float:
        """The least the model can cost: every layer at its cheapest option (a layer may keep its Conv)."""
        return self.fixed + sum(min(*l.costs, l.before) for l in self.auto)
