"""Whether onnx-cp may quantize a model: not when it is quantized already.

Such a model is refused, never passed through: its quantize/dequantize pairs carry scales
calibrated by someone else's tool, a second calibration would quantize values that are already
rounded, and the low-rank rewrite reads float weights, which a quantized graph holds only behind
DequantizeLinear. The float model it was quantized from is what onnx-cp needs: it rewrites that
and quantizes the result itself, calibrated on the user's inputs.
"""
from __future__ import annotations

from collections import Counter

import onnx

# Ops that only a quantized graph holds (ONNX and onnxruntime's com.microsoft domain).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QGemm", "QAttention",
    "QEmbedLayerNormalization", "MatMulNBits", "MatMulBnb4", "GatherBlockQuantized",
})
# Op families named by prefix: QLinearConv, QLinearMatMul, QLinearAdd, ...; QOrderedMatMul, ...
QUANTIZED_PREFIXES = ("QLinear", "QOrdered")


def refusal(model: onnx.ModelProto) -> str | None:
    """Why onnx-cp cannot quantize ``model`` (one line naming the quantized ops found, and the
    fix), or None when it is a float model. Subgraphs (If, Loop, Scan bodies) are searched too."""
    found = Counter(node.op_type for node in _nodes(model.graph) if is_quantized_op(node.op_type))
    if not found:
        return None
    listing = ", ".join(f"{op} x{n}" for op, n in sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f"the model is quantized already ({listing}); give onnx-cp the float model it was "
            "quantized from, which it rewrites and quantizes itself")


def is_quantized_op(op_type: str) -> bool:
    return op_type in QUANTIZED_OPS or op_type.startswith(QUANTIZED_PREFIXES)


def _nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)
