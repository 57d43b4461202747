"""Make a graph convertible by onnx2torch without changing what it computes.

onnx2torch reads Conv and Gemm weights from initializers only, and has no converter for
Identity past opset 16. torch's TorchScript exporter (2.x) feeds deduplicated weights through
Identity nodes, and other exporters emit weights as Constant nodes, so ``normalize``:

1. turns Constant nodes with a numeric value into initializers of the same name;
2. replaces ``initializer -> Identity -> y`` by an initializer ``y`` holding a copy of the value
   (a weight shared this way becomes separate copies, which fine-tuning may then move apart,
   as the separate parameters of the network that was exported were);
3. bypasses Identity nodes on run-time tensors (their consumers read the Identity's input),
   unless the Identity's output is a graph output or is read inside a subgraph;
4. drops initializers that nothing reads any more.

Only the top-level graph is changed. This module needs onnx only.
"""
from __future__ import annotations

import onnx
from onnx import helper

from onnx_cp.graph import subgraph_reads
from onnx_cp.model_io import load_model

_DEFAULT_DOMAINS = ("", "ai.onnx")
_SCALARS = {"value_float": (onnx.TensorProto.FLOAT, False), "value_floats": (onnx.TensorProto.FLOAT, True),
            "value_int": (onnx.TensorProto.INT64, False), "value_ints": (onnx.TensorProto.INT64, True)}


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose constants are initializers and whose Identity nodes are gone."""
    model = load_model(model)
    graph = model.graph
    protected = {o.name for o in graph.output} | subgraph_reads(graph)
    initializers = {t.name: t for t in graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    renames: dict[str, str] = {}
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        node_inputs = [renames.get(i, i) for i in node.input]
        del node.input[:]
        node.input.extend(node_inputs)
        if node.domain not in _DEFAULT_DOMAINS:
            keep.append(node)
            continue
        if node.op_type == "Constant" and node.output[0] not in protected:
            tensor = _constant_tensor(node)
            if tensor is not None:
                initializers[tensor.name] = tensor
                new_inits.append(tensor)
                continue
        if node.op_type == "Identity" and node.output[0] not in protected:
            source = node.input[0]
            if source in initializers:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[source])
                copy.name = node.output[0]
                initializers[copy.name] = copy
                new_inits.append(copy)
                continue
            renames[node.output[0]] = source
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new_inits)
    # Value infos of removed Identity outputs describe tensors that no longer exist.
    _filter(graph.value_info, lambda v: v.name not in renames)
    used = {i for n in graph.node for i in n.input} | protected
    _filter(graph.initializer, lambda t: t.name in used)
    _filter(graph.input, lambda v: v.name in used or v.name not in initializers)
    return model


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The Constant node's value as an initializer named after its output (None: not numeric)."""
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            tensor.name = node.output[0]
            return tensor
        if attr.name in _SCALARS:
            dtype, is_list = _SCALARS[attr.name]
            value = helper.get_attribute_value(attr)
            dims = [len(value)] if is_list else []
            return helper.make_tensor(node.output[0], dtype, dims, list(value) if is_list else [value])
    return None




def _filter(container, keep) -> None:
    items = [x for x in container if keep(x)]
    del container[:]
    container.extend(items)
