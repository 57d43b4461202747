"""INT8 for onnx-cp: onnxruntime's static quantization, node by node where it pays.

    from onnx_cp.quantize import quantize_fastest, onnxruntime_timing, split_held_back
    calib, held = split_held_back(x)                 # x: N x ... inputs for the model's one input
    timing = onnxruntime_timing(model, threads=1, opt_level="all", input_shapes={"input": (1, 3, 224, 224)})
    result = quantize_fastest(model, calib, timing, held_back=held)
    result.model, result.speedup, result.error, [n.form for n in result.nodes]

Modules, one job each: ``refusal`` (models that are quantized already), ``feeds`` (calibration
inputs), ``opset`` (opset 13 for per-channel weights), ``ort_static`` (quantize_static on one
model in a folder), ``static`` (the quantizer: onnxruntime's INT8, or the chains' where it
measures closer to float), ``chains`` (a low-rank rewrite's links and stages),
``chain_stats`` (their ranges and input moments on the calibration inputs), ``equalize``
(cross-layer equalization of the links), ``rounding`` (GPTQ for the stages'
int8 weights), ``chain_quant`` (the three together), ``timing`` (node-by-node timing),
``fastest`` (each node's form by measurement), ``error`` (output error on held-back inputs),
``result`` (what the decision returns). onnxruntime loads on first use.
"""
from onnx_cp.quantize.error import int8_error
from onnx_cp.quantize.fastest import MIN_GAIN, QUANTIZABLE, quantize_fastest
from onnx_cp.quantize.feeds import CalibrationInputs, calibration_feeds, split_held_back
from onnx_cp.quantize.refusal import refusal
from onnx_cp.quantize.result import FLOAT, INT8, Int8Result, NodeForm
from onnx_cp.quantize.static import OP_TYPES, Quantizer, int8_for_timing, int8_quantizer, quantize_int8
from onnx_cp.quantize.timing import Timing, onnxruntime_timing, per_node_view

__all__ = [
    "FLOAT", "INT8", "MIN_GAIN", "OP_TYPES", "QUANTIZABLE", "CalibrationInputs", "Int8Result", "NodeForm",
    "Quantizer", "Timing", "calibration_feeds", "int8_error", "int8_for_timing", "int8_quantizer", "onnxruntime_timing",
    "per_node_view", "quantize_fastest", "quantize_int8", "refusal", "split_held_back",
]
