"""Tiny models built in code, and helpers to run them in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_cp.decompositions.cp_solver import KernelFit, balance

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.float64): TensorProto.DOUBLE}


def cp_kernel(rng: np.random.Generator, shape: tuple[int, ...], rank: int) -> tuple[np.ndarray, list]:
    """An exact rank-``rank`` tensor of ``shape`` and its factors."""
    factors = [rng.standard_normal((d, rank)) for d in shape]
    return cp_to_tensor(factors), factors


def cp_to_tensor(factors) -> np.ndarray:
    letters = "abcdefgh"[: len(factors)]
    return np.einsum(",".join(f"{c}r" for c in letters) + "->" + letters, *factors)


def grouped_cp_kernel(rng, out_c, in_pg, kh, kw, group, rank):
    """A Conv weight whose every group is an exact rank-``rank`` CP tensor; also the per-group factors."""
    per = out_c // group
    blocks, factors = [], []
    for _ in range(group):
        block, f = cp_kernel(rng, (per, in_pg, kh, kw), rank)
        blocks.append(block)
        factors.append(f)
    return np.concatenate(blocks, axis=0), factors


def oracle_fitter(group_factors):
    """A fitter that returns the known factors of each group (tests the realization alone)."""
    queue = list(group_factors)

    def fit(kernel, rank, seed):
        factors = queue.pop(0)
        scale = np.abs(kernel).max()
        assert np.allclose(cp_to_tensor(factors), kernel, atol=1e-2 * scale), "oracle given another kernel"
        return KernelFit(balance(None, factors), 0.0, 1.0, 1.0, False, 0.0)

    return fit


def zero_fitter(kernel, rank, seed):
    """All-zero factors of the right shapes, for tests about ranks and names, not values."""
    return KernelFit(tuple(np.zeros((d, rank)) for d in kernel.shape), 1.0, 0.0, 0.0, False, 0.0)


def conv_model(x_shape, weight: np.ndarray, bias: np.ndarray | None = None, *, opset: int = 17,
               ir_version: int | None = None, weight_via: str = "initializer", name: str = "conv",
               **attrs) -> onnx.ModelProto:
    """x -> Conv(weight, bias, **attrs) -> y, with the weight fed as ``weight_via`` says:

    initializer | constant (a Constant node) | identity (initializer -> Identity) |
    input_init (an initializer also listed as a graph input, as IR 3 exporters do).
    """
    dtype = NP_TO_ONNX[weight.dtype]
    nodes, inits, extra_inputs = [], [], []
    w_name = "W"
    if weight_via == "constant":
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weight, "W")))
    elif weight_via == "identity":
        inits.append(numpy_helper.from_array(weight, "W_raw"))
        nodes.append(helper.make_node("Identity", ["W_raw"], ["W"], name="w_identity"))
    else:
        inits.append(numpy_helper.from_array(weight, "W"))
        if weight_via == "input_init":
            extra_inputs.append(helper.make_tensor_value_info("W", dtype, list(weight.shape)))
    inputs = ["x", w_name]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(weight.dtype), "B"))
        inputs.append("B")
        if weight_via == "input_init":
            extra_inputs.append(helper.make_tensor_value_info("B", dtype, list(bias.shape)))
    nodes.append(helper.make_node("Conv", inputs, ["y"], name=name, **attrs))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, list(x_shape)),
                                           *extra_inputs],
                              [helper.make_tensor_value_info("y", dtype, [None] * 4)], inits)
    kwargs = {"ir_version": ir_version} if ir_version else {}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)
    if ir_version is None:
        model.ir_version = min(model.ir_version, 9)  # onnxruntime may lag the newest IR
    return model


def float_model(name: str, nodes, inits, x_shape, y_shape) -> onnx.ModelProto:
    """A float32 model of one input x and one output y from ``nodes`` and ``inits``, opset 17."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # onnxruntime may lag the newest IR
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))
