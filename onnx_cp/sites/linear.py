"""Gemm and MatMul nodes with a constant 2-D weight: sites that svd can factor (two of the same op).

A Gemm or MatMul of an (M, in) input by an (in, out) weight computes what a 1x1 Conv from
``in`` to ``out`` channels computes at M pixels, so a LinearSite carries that Conv's spec and
the shapes (1, in, M, 1) -> (1, out, M, 1): svd's rank rules, caps and costs then hold as they
are (M: the input's rows, all leading axes together; unknown shapes leave the MACs unknown).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnx_cp.conv import ConvSpec, Cost
from onnx_cp.decompositions import get
from onnx_cp.decompositions.linear import LINEAR_OPS, linear_problem, out_in_matrix, realize_linear
from onnx_cp.graph import Constant, GraphIndex, NameAllocator, display_name
from onnx_cp.sites.base import Site

DECOMPOSITION = "svd"  # the one that factors a matrix


@dataclass
class LinearSite(Site):
    """A Gemm or MatMul as a site: ``groups()`` is its weight as one (out, in) matrix."""

    def groups(self) -> list[np.ndarray]:
        return [out_in_matrix(self.node, self.weight.value)]

    @property
    def bias(self) -> str | None:
        return None  # a Gemm's C stays on its second node (decompositions.linear)

    @property
    def has_bias(self) -> bool:
        return self.op_type == "Gemm" and len(self.node.input) > 2 and bool(self.node.input[2])

    def decomposition(self, requested: str) -> str:
        return DECOMPOSITION

    def realize(self, form, factors, names: NameAllocator):
        return realize_linear(self.node, tuple(factors[0]), self.weight.value.dtype, names)

    def placeholder(self, form, rank, seed: int = 0):
        """svd's factors of the equivalent 1x1 Conv, Q as the (R, in) matrix a Gemm takes."""
        return [(p, q.reshape(q.shape[0], -1)) for p, q in super().placeholder(form, rank, seed)]


def find_linears(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[LinearSite]:
    """Every top-level Gemm and MatMul, eligible for svd when its weight is a constant float matrix."""
    index = GraphIndex(model.graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    sites = [_site(index, node, i, shapes) for i, node in enumerate(model.graph.node)
             if node.op_type in LINEAR_OPS and node.domain in ("", "ai.onnx")]
    for site in sites:
        if site.op_type == "Gemm" and opset < 11 and site.reason is None:
            # svd's first Gemm has no C, which Gemm takes only from opset 11 on
            site.reason = f"a Gemm at opset {opset} needs a C input, which svd's first Gemm lacks (opset 11 on)"
    return sites


def _site(index: GraphIndex, node: onnx.NodeProto, i: int, shapes) -> LinearSite:
    weight_name = node.input[1] if len(node.input) > 1 else None
    site = LinearSite(display_name(node, i), node, node.op_type, weight_name, None, None, None, None, None, None)
    weight = index.constant(weight_name) if weight_name else "no weight input"
    if isinstance(weight, str):
        site.reason = f"weight is not constant: {weight}"
        return site
    site.reason = linear_problem(node, weight.shape) or _value_problem(weight)
    if site.reason:
        return site
    matrix_shape = out_in_matrix(node, np.empty(weight.shape, np.float32)).shape
    out_c, in_c = (int(d) for d in matrix_shape)
    site.spec = ConvSpec(out_c, in_c, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, "NOTSET")
    rows = _rows(node, shapes.get(node.input[0]))
    if rows is not None:
        site.in_shape, site.out_shape = (1, in_c, rows, 1), (1, out_c, rows, 1)
    site.cost = Cost(None if rows is None else rows * in_c * out_c, in_c * out_c)
    site.weight = weight
    site.reason = get(DECOMPOSITION).applies(site.spec)
    return site


def _value_problem(weight: Constant) -> str | None:
    if weight.dtype.kind != "f":
        return f"weight dtype {weight.dtype.name} is not floating point"
    bad = int(np.count_nonzero(~np.isfinite(weight.value)))
    return f"weight contains {bad} NaN/Inf values; fix the model before rewriting" if bad else None


def _rows(node: onnx.NodeProto, shape: tuple[int, ...] | None) -> int | None:
    """How many input rows the weight multiplies (None when the input's shape is not known)."""
    if shape is None or any(not isinstance(d, int) or d < 1 for d in shape):
        return None
    if node.op_type == "Gemm":
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        return int(shape[1] if trans_a else shape[0])
    return int(np.prod(shape[:-1])) if len(shape) > 1 else 1
