"""A Conv, ConvTranspose or Gemm left float between int8 neighbours, kept float in onnxruntime.

onnxruntime's ``WeightBiasQuantization`` rewrite (graph optimization level basic and up) quantizes
the weight of a float Conv, ConvTranspose or Gemm whose data input comes from a DequantizeLinear
with one scale: per tensor, coarser than the per-channel weights ``quantize_static`` writes, and
where the output reaches a QuantizeLinear the node then runs as a QLinearConv. So a node that the
quantize stage leaves float (int8 did not pay there, or the user excluded it) would run in int8
after all: on a trained VGG-16 with block3_conv2 left float, the output error at level basic was
0.0413 against 0.0290 with the rewrite disabled (tools/int8_float_neighbour.py, docs/results/int8.md).

Here such a node reads a DequantizeLinear of its own whose scale and zero point are per channel,
the one value repeated along the channel axis: the same float values, and not the rewrite's
pattern. A data input of one channel cannot be told apart from a scalar that way; such nodes are
returned by name, and their reported form says that onnxruntime runs them in per-tensor int8.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_cp.conv import attributes
from onnx_cp.graph import NameAllocator, all_names

# The ops onnxruntime's WeightBiasQuantization rewrites.
REWRITTEN = ("Conv", "ConvTranspose", "Gemm")


def keep_float(model: onnx.ModelProto) -> list[str]:
    """In place: each float node of ``REWRITTEN`` that reads a per-tensor DequantizeLinear reads a
    per-channel copy of it instead (a DequantizeLinear left unread is removed). Returns the names of
    the nodes that could not be kept float so (``per_tensor_floats``: a data input of one channel)."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    names = NameAllocator(all_names(model))
    before: dict[int, onnx.NodeProto] = {}  # a new DequantizeLinear, by the index of the node it feeds
    for index, node, dq, (axis, channels) in _rewritten(model):
        if channels < 2:
            continue
        name = names.fresh(f"{dq.output[0]}/per_channel/{node.name}")
        params = []
        for role, source in zip(("scale", "zero_point"), dq.input[1:3]):
            if source:
                value = numpy_helper.to_array(inits[source]).reshape(-1)
                params.append(names.fresh(f"{name}/{role}"))
                graph.initializer.append(numpy_helper.from_array(np.full(channels, value[0], value.dtype), params[-1]))
        before[index] = helper.make_node("DequantizeLinear", [dq.input[0], *params], [name], name=name, axis=axis)
        node.input[0] = name
    if before:
        nodes = [n for index, node in enumerate(graph.node) for n in ([before[index]] if index in before else []) + [node]]
        read = {t for node in nodes for t in node.input} | {o.name for o in graph.output}
        kept = [n for n in nodes if n.op_type != "DequantizeLinear" or any(t in read for t in n.output)]
        del graph.node[:]
        graph.node.extend(kept)
    return per_tensor_floats(model)


def per_tensor_floats(model: onnx.ModelProto) -> list[str]:
    """The float nodes of ``model`` that onnxruntime's rewrite still quantizes per tensor."""
    return [node.name for _, node, _, _ in _rewritten(model)]


def _rewritten(model: onnx.ModelProto):
    """(index, node, its data input's DequantizeLinear, (channel axis, channels)) of each float node
    that onnxruntime's WeightBiasQuantization would quantize."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for index, node in enumerate(graph.node):
        if node.op_type not in REWRITTEN or len(node.input) < 2:
            continue
        dq, weight = producers.get(node.input[0]), producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or not _scalar(dq, inits) \
                or (weight is not None and weight.op_type == "DequantizeLinear"):
            continue
        place = _channels(node, inits)
        if place is not None:  # else a weight the rewrite does not take (computed, not an initializer)
            yield index, node, dq, place


def _scalar(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """Whether ``dq`` dequantizes with one scale (and zero point) from initializers."""
    return len(dq.input) >= 2 and all(t in inits and int(np.prod(inits[t].dims)) == 1 for t in dq.input[1:3] if t)


def _channels(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[int, int] | None:
    """(the data input's channel axis, its channel count), read from the node's weight initializer."""
    weight = inits.get(node.input[1])
    if weight is None:
        return None
    dims, attrs = list(weight.dims), attributes(node)
    if node.op_type == "Conv":
        return 1, dims[1] * attrs.get("group", 1)
    if node.op_type == "ConvTranspose":
        return 1, dims[0]
    inner = dims[1] if attrs.get("transB", 0) else dims[0]  # Gemm: A (M x K), or A^T with transA
    return (0 if attrs.get("transA", 0) else 1), inner
