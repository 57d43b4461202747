"""What every decomposition offers: fit a weight (to its input statistics too), realize the factors
as ONNX nodes, count them, say whether it applies to a layer, the rank a rule gives a layer and
how a rank is written. One module per decomposition implements this; the rewrite never asks
which decomposition it holds."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from onnx_cp.conv import ConvSpec, Cost, conv_cost
from onnx_cp.decision import Decision
from onnx_cp.errors import OnnxCpError
from onnx_cp.graph import NameAllocator

from onnx_cp.decompositions.nodes import Realization

GroupFactors = Sequence[tuple[np.ndarray, ...]]  # per group, the decomposition's own factor arrays
Shape = Optional[tuple[int, ...]]


@dataclass(frozen=True)
class Factors:
    """A fitted weight, whatever the decomposition: per-group factors that ``realize`` turns
    into nodes. The one type a fit travels as, from rank selection to the report."""

    rank: Any  # the decomposition's normalized rank (an int, a pair, ...), as fitted
    groups: tuple[tuple[np.ndarray, ...], ...]  # float64, one tuple per Conv group
    rel_error: float  # ||W - W_hat|| / ||W|| over all groups; Sigma-weighted when fitted with stats
    seconds: float
    fits: tuple = ()  # per group, the CP solver's record where one ran (cp_solver.KernelFit)

    @property
    def degeneracy(self) -> float | None:
        """The largest degeneracy measure of the CP solver's fits (None when none ran)."""
        return max((f.degeneracy for f in self.fits), default=None)

    @property
    def max_term_norm(self) -> float | None:
        return max((f.max_term_norm for f in self.fits), default=None)

    @property
    def stabilized(self) -> bool | None:
        return any(f.stabilized for f in self.fits) if self.fits else None


class Decomposition(ABC):
    """One low-rank decomposition of a Conv weight (per group, shape (F, C, kh, kw))."""

    name: str
    display: str  # how messages name it ("no CP form at rank 8 was faster")
    forms: tuple[str, ...]  # realization kinds; forms[0] is the default
    uses_stats: bool = False  # whether fit accepts input-channel covariances
    # --realize names that mean one of this decomposition's forms (lrcp: cp4 -> lrcp4)
    aliases: dict[str, str] = {}
    # whether a fit improves by going on from a shorter one (rank selection's final fits, warm
    # rank searches); the others are exact or close to it after a few sweeps
    iterative: bool = False
    # whether rank selection (--target-speedup, --budget-macs, --max-error) plans its ranks alone
    selectable: bool = False
    # whether layer-wise recovery can train its realized chain (its bias on the last stage)
    recoverable: bool = True
    # whether recovery may train a layer further on the next Conv's output (calibrate.block)
    block_refinable: bool = False
    # whether its rank counts terms whose cost is linear in it: rank selection then spreads the
    # candidates over its cap and can give every layer one rank (the uniform allocation)
    count_ranked: bool = False

    @abstractmethod
    def parse_rank(self, value) -> Any:
        """``value`` (int, tuple or string) as this decomposition's normalized rank."""

    @abstractmethod
    def applies(self, spec: ConvSpec) -> str | None:
        """None when this decomposition can rewrite the layer, else why not."""

    @abstractmethod
    def fit(self, groups: list[np.ndarray], rank, seed: int = 0, options=None, *,
            init: Factors | None = None, stats: Sequence[np.ndarray] | None = None,
            moments: Sequence | None = None, fitter=None) -> Factors:
        """Fit each group's kernel, going on from ``init`` (a fit of the same weight) where the
        decomposition can. ``stats``: per group, the input-channel covariance (C/G x C/G) to fit
        the layer's output instead of its weight (see calibration.py); ``moments``: per group,
        the calibration's moments.ModeMoments, of which each decomposition takes what it uses.
        ``fitter``: a replacement for the CP solver (tests); decompositions without it ignore it."""

    @abstractmethod
    def realize(self, form: str, name: str, x: str, y: str, bias: str | None, spec: ConvSpec,
                group_factors: GroupFactors, dtype: np.dtype, names: NameAllocator) -> Realization:
        """Nodes computing ``y = Conv(x)`` from the factors; new names derive from ``name``."""

    @abstractmethod
    def cost(self, form: str, spec: ConvSpec, rank, in_shape: Shape, out_shape: Shape,
             has_bias: bool) -> Cost:
        """Multiply-adds (None when shapes are unknown) and stored parameters of the form."""

    @abstractmethod
    def kernels(self, group_factors: GroupFactors, xp=np) -> list[np.ndarray]:
        """The per-group kernels the factors represent (for errors, checks and recovery),
        computed with ``xp``: numpy, or torch on tensors (recovery trains through it)."""

    def outputs(self, patches, group_factors: GroupFactors, xp=np):
        """What the realized form outputs (M, F) for input patches (M, C, kh, kw), before the
        bias, with ``xp`` (numpy or torch): the layer's output where it read them."""
        per_in = patches.shape[1] // len(group_factors)
        outs = []
        for g, kernel in enumerate(self.kernels(group_factors, xp)):
            p = patches[:, g * per_in:(g + 1) * per_in].reshape(patches.shape[0], -1)
            if xp is np:
                p = p.astype(np.float64)
            outs.append(p @ kernel.reshape(kernel.shape[0], -1).T)
        return xp.concatenate(outs, axis=1)

    def solve_last(self, patches: np.ndarray, targets: np.ndarray, group_factors: GroupFactors):
        """The factors with their last (output) stage and a bias solved by least squares for
        ``targets`` (M, F) at ``patches``, or None where the decomposition has no such stage."""
        return None

    @abstractmethod
    def placeholder(self, spec: ConvSpec, rank, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
        """Random factors of the right shapes, to time a form before fitting."""

    def label(self, rank) -> int | str | None:
        """A rank as the report and the CLI write it: an int as it is, others in the
        decomposition's own syntax (16x12, 24:8, 4:16x8x3x1)."""
        if rank is None or isinstance(rank, (int, np.integer)):
            return rank
        return "x".join(map(str, rank)) if isinstance(rank, tuple) else str(rank)

    def terms(self, rank) -> int | None:
        """How many terms a chain at ``rank`` adds up in each output, which layer-wise recovery
        scales Adam's rate by (an int rank: that many; None: not scaled)."""
        return int(rank) if isinstance(rank, (int, np.integer)) else None

    def forms_for(self, realize: str) -> tuple[str, ...]:
        """The forms timed against the Conv for ``--realize`` (auto: all), or the one it forces."""
        if realize == "auto":
            return tuple(self.forms)
        realize = self.aliases.get(realize, realize)
        return (realize,) if realize in self.forms else (self.forms[0],)

    def channel_stats(self, stats, moments) -> Sequence[np.ndarray] | None:
        """The input-channel covariances a fit uses: ``stats`` as given, else the calibration's
        channel moments, when this decomposition fits to statistics at all."""
        if stats is not None or moments is None or not self.uses_stats:
            return stats
        return [m.channels for m in moments]

    def rule_rank(self, value, spec: ConvSpec, in_shape: Shape, out_shape: Shape, conv: Cost,
                  groups: list[np.ndarray] | None = None, *, factor_rank: int | None = None,
                  cap_rank: bool = True, align: Callable[[int], int] = int, realize: str = "auto",
                  name: str = "the layer") -> Decision:
        """The rank a rule's ``value`` (an int, the decomposition's string, or a fraction of the
        Conv's cost) gives a layer; with ``cap_rank`` a rank whose form is not cheaper than the
        Conv keeps it. ``groups``: the layer's kernels, where the rank depends on them (gkpd);
        ``realize``: the form asked for, where the cost depends on it; ``name``: the layer, for messages."""
        try:
            if isinstance(value, float):
                rank = self.rank_within(spec, in_shape, out_shape, scaled(conv, value), factor_rank, align)
                if rank is None:
                    return Decision(None, value, reason=f"no {self.name} rank costs under {value} of this Conv")
            else:
                rank = self.concrete(value, spec, groups, factor_rank, (in_shape, out_shape))
            cost = self.cost(self.forms[0], spec, rank, in_shape, out_shape, False)
        except OnnxCpError as exc:
            return Decision(None, value, reason=exc.message)  # a Message: the CLI shows its flags
        if cap_rank and not cheaper(cost, conv):
            return Decision(None, value, capped=True,
                            reason=f"{self.name} at rank {self.label(rank)} costs no less than the Conv: kept")
        return Decision(rank, value)

    def cap(self, spec: ConvSpec, in_shape: Shape, out_shape: Shape):
        """The largest rank cheaper than the Conv (in MACs, in parameters when shapes are
        unknown); None when even the smallest is not, or a single rank says nothing."""
        return largest_cheaper(lambda r: self.cost(self.forms[0], spec, r, in_shape, out_shape, False),
                               conv_cost(spec, out_shape, False), self.max_rank(spec))

    def auto_limit(self, spec: ConvSpec) -> int | None:
        """The highest rank --decomposition auto's budget fits for a layer another decomposition
        can also take (None: no limit)."""
        return None

    def max_rank(self, spec: ConvSpec) -> int:
        """An upper bound for ``cap``'s search."""
        return spec.out_per_group * spec.in_per_group * spec.kernel[0] * spec.kernel[1]

    def options(self, cp_options):
        """This decomposition's fit options, given the CP solver's (FitOptions): its defaults,
        unless it runs the CP solver."""
        return None

    def concrete(self, value, spec: ConvSpec, groups: list[np.ndarray] | None = None,
                 factor_rank: int | None = None, shapes: tuple[Shape, Shape] | None = None):
        """The rank a rule's ``value`` (an int or this decomposition's string) gives a layer,
        lowered to what the layer's channels allow; OnnxCpError when it cannot apply.
        ``shapes``: the layer's (input, output) shapes, where the rank's cost depends on more
        than its number (gkpd's search of A's shape)."""
        return self.parse_rank(value)

    def rank_within(self, spec: ConvSpec, in_shape: Shape, out_shape: Shape, budget: Cost,
                    factor_rank: int | None = None, align: Callable[[int], int] = int):
        """The largest rank (aligned by ``align``) whose first form costs less than ``budget``
        (multiply-adds, parameters when shapes are unknown); None when none does."""
        def cost(r: int) -> Cost:
            return self.cost(self.forms[0], spec, self.concrete(r, spec, None, factor_rank), in_shape, out_shape,
                             False)

        found = largest_cheaper(cost, budget, self.max_rank(spec))
        return None if found is None else self.concrete(max(1, align(found)), spec, None, factor_rank)

    def check_form(self, form: str) -> None:
        if form not in self.forms:
            raise OnnxCpError(f"form={form!r} is not a form of {self.name}; choose one of {self.forms}")

    def check_stats(self, stats, groups: list[np.ndarray]) -> None:
        if stats is None:
            return
        if not self.uses_stats:
            raise OnnxCpError(f"stats: {self.name} does not use calibration statistics; pass stats=None "
                              "or choose tucker2, lrcp or svd")
        if len(stats) != len(groups):
            raise OnnxCpError(f"stats has {len(stats)} covariances but the weight has {len(groups)} groups; "
                              "give one per group (calibration.group_covariances splits a full one)")
        for sigma, kernel in zip(stats, groups):
            c = kernel.shape[1]
            if np.shape(sigma) != (c, c):
                raise OnnxCpError(f"stats: a covariance of shape {list(np.shape(sigma))} for {c} input "
                                  f"channels per group; give ({c}, {c}) matrices")


def spatial_with_channels(spec: ConvSpec, one_by_one: str, single_channel: str) -> str | None:
    """Why a decomposition that factors a k x k kernel's input channels cannot take ``spec``, or None."""
    if spec.kernel == (1, 1):
        return f"1x1 kernel: {one_by_one} (svd factors a 1x1 Conv)"
    if spec.in_per_group == 1:
        return f"one input channel per group: {single_channel}"
    return None


def cheaper(cost: Cost, budget: Cost) -> bool:
    """Fewer multiply-adds than ``budget`` (fewer parameters when either count is unknown)."""
    if cost.macs is not None and budget.macs is not None:
        return cost.macs < budget.macs
    return cost.params < budget.params


def scaled(cost: Cost, share: float) -> Cost:
    return Cost(None if cost.macs is None else int(cost.macs * share), int(cost.params * share))


def largest_cheaper(cost: Callable[[int], Cost], conv: Cost, hi: int) -> int | None:
    """The largest rank in [1, hi] whose cost is below ``conv`` (costs grow with the rank)."""
    if not cheaper(cost(1), conv):
        return None
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cheaper(cost(mid), conv) else (lo, mid - 1)
    return lo


def parse_positive(value, what: str, example: str) -> int:
    """A positive int from an int or a decimal string, else an error naming ``what``."""
    if isinstance(value, (bool, np.bool_)):
        value = None
    try:
        number = int(value)
        ok = number >= 1 and float(value) == number
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise OnnxCpError(f"{what}={value!r}: give a positive integer, e.g. {example}")
    return number


def relative_error(groups: list[np.ndarray], approx: list[np.ndarray]) -> float:
    num = sum(float(np.sum((g - a) ** 2)) for g, a in zip(groups, approx))
    den = sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in groups)
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def mode_product(tensor: np.ndarray, matrix: np.ndarray, mode: int) -> np.ndarray:
    """``tensor`` with axis ``mode`` multiplied by ``matrix`` (new_dim, old_dim)."""
    return np.moveaxis(np.tensordot(matrix, tensor, axes=(1, mode)), 0, mode)
