"""What every decomposition offers: fit a weight, realize the factors as ONNX nodes, count them,
say whether it applies to a layer. One module per decomposition implements this."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from onnx_cp.conv import ConvSpec, Cost, conv_cost
from onnx_cp.errors import OnnxCpError
from onnx_cp.graph import NameAllocator

from onnx_cp.decompositions.nodes import Realization

GroupFactors = Sequence[tuple[np.ndarray, ...]]  # per group, the decomposition's own factor arrays
Shape = Optional[tuple[int, ...]]


@dataclass(frozen=True)
class Factors:
    """A fitted weight: per-group factors that ``realize`` turns into nodes."""

    rank: Any  # the decomposition's normalized rank (an int, a pair, ...), as fitted
    groups: tuple[tuple[np.ndarray, ...], ...]  # float64, one tuple per Conv group
    rel_error: float  # ||W - W_hat|| / ||W|| over all groups; Sigma-weighted when fitted with stats
    seconds: float
    fits: tuple = ()  # per group, the solver's own record where there is one (cp: KernelFit)


class Decomposition(ABC):
    """One low-rank decomposition of a Conv weight (per group, shape (F, C, kh, kw))."""

    name: str
    forms: tuple[str, ...]  # realization kinds; forms[0] is the default
    uses_stats: bool = False  # whether fit accepts input-channel covariances

    @abstractmethod
    def parse_rank(self, value) -> Any:
        """``value`` (int, tuple or string) as this decomposition's normalized rank."""

    @abstractmethod
    def applies(self, spec: ConvSpec) -> str | None:
        """None when this decomposition can rewrite the layer, else why not."""

    @abstractmethod
    def fit(self, groups: list[np.ndarray], rank, seed: int = 0, options=None, *,
            init: Factors | None = None, stats: Sequence[np.ndarray] | None = None) -> Factors:
        """Fit each group's kernel. ``stats``: per group, the input-channel covariance
        (C/G x C/G) to fit the layer's output instead of its weight (see calibration.py)."""

    @abstractmethod
    def realize(self, form: str, name: str, x: str, y: str, bias: str | None, spec: ConvSpec,
                group_factors: GroupFactors, dtype: np.dtype, names: NameAllocator) -> Realization:
        """Nodes computing ``y = Conv(x)`` from the factors; new names derive from ``name``."""

    @abstractmethod
    def cost(self, form: str, spec: ConvSpec, rank, in_shape: Shape, out_shape: Shape,
             has_bias: bool) -> Cost:
        """Multiply-adds (None when shapes are unknown) and stored parameters of the form."""

    @abstractmethod
    def kernels(self, group_factors: GroupFactors) -> list[np.ndarray]:
        """The per-group kernels the factors represent (for errors and checks)."""

    @abstractmethod
    def placeholder(self, spec: ConvSpec, rank, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
        """Random factors of the right shapes, to time a form before fitting."""

    def cap(self, spec: ConvSpec, in_shape: Shape, out_shape: Shape):
        """The largest rank cheaper than the Conv (in MACs, in parameters when shapes are
        unknown); None when even the smallest is not, or a single rank says nothing."""
        return largest_cheaper(lambda r: self.cost(self.forms[0], spec, r, in_shape, out_shape, False),
                               conv_cost(spec, out_shape, False), self.max_rank(spec))

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


def largest_cheaper(cost: Callable[[int], Cost], conv: Cost, hi: int) -> int | None:
    """The largest rank in [1, hi] whose cost is below ``conv`` (costs grow with the rank)."""
    def cheaper(r: int) -> bool:
        c = cost(r)
        return c.macs < conv.macs if c.macs is not None and conv.macs is not None else c.params < conv.params

    if not cheaper(1):
        return None
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cheaper(mid) else (lo, mid - 1)
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
