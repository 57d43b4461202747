"""A site: one node a decomposition may replace, and everything the rewrite needs to know of it.

Conv and Gemm/MatMul sites answer the same questions (their kernel per group, the bias the last
stage carries, their cost, how a form is realized and placeholder factors made for it, whether
calibration can observe them), so nothing above this package asks which kind it holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from onnx_cp.conv import ConvSpec, Cost
from onnx_cp.decompositions.nodes import Realization
from onnx_cp.graph import Constant, NameAllocator
from onnx_cp.report import LayerReport


@dataclass
class Site:
    """One node and what is known of it; ``reason`` says why it cannot be rewritten (None: it can)."""

    name: str
    node: onnx.NodeProto | None  # None for nodes inside subgraphs (never rewritten)
    op_type: str
    weight_name: str | None
    spec: ConvSpec | None  # a Gemm or MatMul carries the 1x1 Conv it computes
    weight: Constant | None
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    cost: Cost | None
    reason: str | None

    # whether calibration reads this site's input patches (data-aware fits, recovery)
    observable = False

    @property
    def eligible(self) -> bool:
        return self.reason is None

    @property
    def names(self) -> tuple[str, ...]:
        """What ``layers`` and ``exclude`` patterns are matched against."""
        return tuple(n for n in (self.name, self.weight_name) if n)

    @property
    def weight_source(self) -> str | None:
        """The tensor at the root of the weight's chain: nodes that read one weight, directly or
        through Identity nodes (an RNN unrolled into a Gemm per step), have the same."""
        return self.weight.source if self.weight is not None else self.weight_name

    @property
    def key(self) -> str:
        """A stable, hashable identity: the node's output (unique in a graph), else its name."""
        return self.node.output[0] if self.node is not None and self.node.output else self.name

    def groups(self) -> list[np.ndarray]:
        """The weight each decomposition fits, per group."""
        raise NotImplementedError

    @property
    def bias(self) -> str | None:
        """The bias input the last stage of a realized form carries (None: none, or kept elsewhere)."""
        return None

    @property
    def has_bias(self) -> bool:
        """Whether the node adds a bias (counted in a form's cost)."""
        return self.bias is not None

    def decomposition(self, requested: str) -> str:
        """The decomposition that rewrites this site when ``requested`` is asked for."""
        return requested

    def realize(self, form: str, factors: Sequence[tuple[np.ndarray, ...]], names: NameAllocator) -> Realization:
        """The nodes computing this site's output from per-group ``factors`` in ``form``."""
        raise NotImplementedError

    def placeholder(self, form: str, rank, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
        """Random factors of ``form``'s shapes: onnxruntime's time does not depend on the values,
        so forms and ranks are timed before anything is fitted."""
        from onnx_cp import decompositions

        return decompositions.for_form(form).placeholder(self.spec, rank, seed)

    def cost_after(self, form: str, rank) -> Cost:
        """Multiply-adds and parameters of ``form`` at ``rank`` in this site's place."""
        from onnx_cp import decompositions

        return decompositions.for_form(form).cost(form, self.spec, rank, self.in_shape, self.out_shape,
                                                  self.has_bias)

    def report_row(self) -> LayerReport:
        """A report row with what is known of the site before any rewrite (status left empty)."""
        spec = self.spec
        return LayerReport(
            node=self.name, op_type=self.op_type, weight=self.weight_name, status="",
            kernel=list(spec.kernel) if spec else None, strides=list(spec.strides) if spec else None,
            pads=list(spec.pads) if spec else None, dilations=list(spec.dilations) if spec else None,
            group=spec.group if spec else None,
            weight_shape=[spec.out_channels, spec.in_per_group, *spec.kernel] if spec else None,
            in_shape=list(self.in_shape) if self.in_shape else None,
            out_shape=list(self.out_shape) if self.out_shape else None,
            macs_before=self.cost.macs if self.cost else None,
            params_before=self.cost.params if self.cost else None)
