"""The data-aware damage proxy (after PARS): errors of feature maps on calibration inputs.

- layer error: ||conv(x, K - K_cp)|| / ||conv(x, K) + b|| over the calibration inputs x that
  reach the layer in the original model (the residual kernel in a one-node model with the
  Conv's own attributes, so strides, pads, dilations and groups are exact; for a Gemm or MatMul,
  alpha x' (W - W_hat)^T in numpy), whichever decomposition made K_cp;
- output error: ||f_cp(x) - f(x)|| / ||f(x)|| over every float output of the whole model
  (calibrate.activations.output_error, shared with the calibration report).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_cp.calibrate.activations import output_error, run_feeds as run  # noqa: F401 (the proxy's measures)
from onnx_cp.conv import attributes
from onnx_cp.runtime import open_session, session_options

if TYPE_CHECKING:
    import onnxruntime as ort

_TYPES = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float16): onnx.TensorProto.FLOAT16,
          np.dtype(np.float64): onnx.TensorProto.DOUBLE}


def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    return open_session(model, session_options(threads=threads))


def capture(model: onnx.ModelProto, tensors: Sequence[str], feeds, dtype=np.float32,
            threads: int = 1) -> dict[str, np.ndarray]:
    """The values of inner ``tensors`` over the feeds, concatenated along the batch axis."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    wanted = list(dict.fromkeys(tensors))
    probe.graph.output.extend(helper.make_tensor_value_info(t, _TYPES[np.dtype(dtype)], None)
                              for t in wanted if t not in have and t not in feeds[0])
    given = [t for t in wanted if t in feeds[0]]  # graph inputs cannot be read back as outputs
    inner = [t for t in wanted if t not in feeds[0]]
    sess = session(probe, threads)
    runs = [dict(zip(inner, sess.run(inner, feed))) | {t: feed[t] for t in given} for feed in feeds]
    return {t: np.concatenate([r[t] for r in runs]) for t in wanted}


def residual_conv(node: onnx.NodeProto, weight: np.ndarray, opset: int) -> onnx.ModelProto:
    """x -> Conv(weight) with ``node``'s attributes and no bias."""
    elem = _TYPES[np.dtype(weight.dtype)]
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="residual")
    conv.attribute.extend(node.attribute)
    graph = helper.make_graph([conv], "residual", [helper.make_tensor_value_info("x", elem, None)],
                              [helper.make_tensor_value_info("y", elem, None)],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 11))])


def layer_errors(node: onnx.NodeProto, weight: np.ndarray, kernels: Sequence[np.ndarray], inputs: np.ndarray,
                 outputs: np.ndarray, opset: int, threads: int = 1) -> list[float]:
    """Relative error of the layer's output feature maps for each approximate kernel, on the
    captured inputs. A Gemm's or MatMul's ``weight`` and kernels are (out, in) matrices."""
    norm = float(np.linalg.norm(outputs.astype(np.float64)))
    errors = []
    for approx in kernels:
        residual = weight.astype(np.float64) - approx
        if node.op_type in ("Gemm", "MatMul"):
            delta = linear_residual(node, residual, inputs)
        else:
            sess = session(residual_conv(node, residual.astype(inputs.dtype), opset), threads)
            delta = sess.run(None, {"x": inputs})[0]
        errors.append(float(np.linalg.norm(delta.astype(np.float64))) / norm if norm else 0.0)
    return errors


def linear_residual(node: onnx.NodeProto, residual: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """What an (out, in) weight error adds to a Gemm's or MatMul's output: alpha A' E^T (Gemm),
    X E^T over X's last axis (MatMul)."""
    x = np.asarray(inputs, np.float64)
    if node.op_type == "MatMul":
        return x.reshape(-1, x.shape[-1]) @ residual.T
    attrs = attributes(node)
    rows = x.T if attrs.get("transA", 0) else x
    return float(attrs.get("alpha", 1.0)) * (rows @ residual.T)
