"""SVD factors of a Gemm or MatMul weight as two Gemm or two MatMul nodes.

A Gemm ``Y = alpha * A' @ B' + beta * C`` (A' = A^T when transA, B' = B^T when transB) with a
constant B becomes ``T = A' @ Qm`` and ``Y = alpha * T @ Pm + beta * C``; a MatMul ``Y = X @ M``
with a constant M becomes ``(X @ Qm) @ Pm``. The weight is handled as an (out, in) matrix, like
a Conv's, so svd.SVD.fit (and its calibration statistics) serve both.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnx_cp.conv import attributes
from onnx_cp.decompositions.nodes import NodeBuilder, Realization
from onnx_cp.errors import OnnxCpError
from onnx_cp.graph import NameAllocator

LINEAR_OPS = ("Gemm", "MatMul")


def linear_problem(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> str | None:
    """Why ``node`` with a constant second input of ``weight_shape`` cannot be factored; None if it can."""
    if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} is not a Gemm or MatMul"
    if len(weight_shape) != 2:
        return f"the weight is {len(weight_shape)}-D; only a 2-D weight (input B) is factored"
    return None


def out_in_matrix(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """The weight (input 1) of a Gemm or MatMul as an (out, in) matrix."""
    problem = linear_problem(node, weight.shape)
    if problem:
        raise OnnxCpError(f"node '{node.name}': {problem}")
    trans_b = node.op_type == "Gemm" and attributes(node).get("transB", 0)
    return weight if trans_b else weight.T


def realize_linear(node: onnx.NodeProto, factors: tuple[np.ndarray, np.ndarray], dtype: np.dtype,
                   names: NameAllocator) -> Realization:
    """Two nodes computing ``node``'s output from SVD factors (P (out, R), Q (R, in)) of its weight."""
    p, q = factors
    if q.ndim != 2:
        raise OnnxCpError(f"factors: Q has shape {list(q.shape)}; a linear weight needs (R, in) factors, "
                          "fit the (out, in) matrix of out_in_matrix")
    builder = NodeBuilder(node.name or node.output[0], "svd", dtype, names)
    x, y = node.input[0], node.output[0]
    first, second = builder.constant("reduce.weight", q.T), builder.constant("expand.weight", p.T)
    if node.op_type == "MatMul":
        current = builder.node("MatMul", "reduce", [x, first])
        builder.node("MatMul", "expand", [current, second], y)
        return builder.out
    attrs = attributes(node)
    current = builder.node("Gemm", "reduce", [x, first], transA=int(attrs.get("transA", 0)))
    tail = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
    builder.node("Gemm", "expand", [current, second, *tail], y, alpha=float(attrs.get("alpha", 1.0)),
                 beta=float(attrs.get("beta", 1.0)))
    return builder.out
