"""Read-only views of an ONNX graph: producers, consumers, constants, and fresh names."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Nodes that only pass a constant through unchanged.
_PASS_THROUGH = {"Identity"}


@dataclass(frozen=True, eq=False)
class Constant:
    """A tensor whose value is known before run time, and where it comes from.

    ``value`` decodes the tensor on each access and keeps nothing: holding every Conv weight
    decoded would double the memory of a multi-GB model.
    """

    tensor: onnx.TensorProto  # the initializer, or the Constant node's ``value`` attribute
    source: str  # the initializer's or Constant node's output name at the root of the chain
    via: tuple[str, ...]  # tensor names passed through (Identity outputs), root excluded

    @property
    def value(self) -> np.ndarray:
        return numpy_helper.to_array(self.tensor)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor.dims)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.tensor.data_type))


def runtime_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs fed at run time, in order: older exporters list initializers among the
    graph inputs too, and those are not."""
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


class GraphIndex:
    """Maps tensor names to their producer node, consumers, and initializers (top graph only)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.runtime_inputs = {i.name for i in runtime_inputs(graph)}

    def constant(self, name: str) -> Constant | str:
        """The constant value of tensor ``name``, or a reason why it is not a constant."""
        via: list[str] = []
        seen = set()
        while name not in seen:
            seen.add(name)
            if name in self.runtime_inputs:
                return f"'{name}' is a graph input, fed at run time"
            if name in self.initializers:
                return _checked(self.initializers[name], name, tuple(via))
            node = self.producer.get(name)
            if node is None:
                return f"'{name}' has no producer and is not an initializer"
            if node.op_type in _PASS_THROUGH and node.domain in ("", "ai.onnx") and node.input:
                via.append(name)
                name = node.input[0]
                continue
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                tensor = _constant_node_tensor(node)
                if tensor is None:
                    return f"'{name}' comes from a Constant node without a dense tensor value"
                return _checked(tensor, name, tuple(via))
            if node.op_type == "DequantizeLinear":
                return f"'{name}' is a quantized weight (DequantizeLinear); quantize after the rewrite"
            label = node.name or node.op_type
            return f"'{name}' is computed at run time by {node.op_type} node '{label}'"
        return f"'{name}' is part of a cycle"


def _constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return attr.t
    return None


def _checked(tensor: onnx.TensorProto, name: str, via: tuple[str, ...]) -> Constant | str:
    """A Constant for ``tensor``, or why its data cannot be decoded (a damaged model)."""
    problem = data_problem(tensor)
    if problem:
        return f"'{name}' {problem}; the model is damaged, re-export it"
    return Constant(tensor, name, via)


# Element types packed several to a byte: their data size is not dims x itemsize.
SUB_BYTE_TYPES = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2",
                                                         "FLOAT6E2M3", "FLOAT6E3M2")
                  if hasattr(onnx.TensorProto, n)}


def copy_tensor_header(tensor: onnx.TensorProto, target: onnx.TensorProto) -> None:
    """Everything of ``tensor`` but its data (raw or typed) and external-data entries, never
    touching the data (reading raw_data would copy it)."""
    target.dims.extend(tensor.dims)
    for name in ("data_type", "name", "doc_string"):
        if tensor.HasField(name):
            setattr(target, name, getattr(tensor, name))
    if tensor.HasField("segment"):
        target.segment.CopyFrom(tensor.segment)
    target.metadata_props.extend(tensor.metadata_props)


def data_problem(tensor: onnx.TensorProto) -> str | None:
    """Why the tensor's data cannot be decoded as its dims and type say; None when it can."""
    if tensor.HasField("segment"):
        return "is stored in segments"
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return "still refers to external data that was not loaded"
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return f"has data type {onnx.TensorProto.DataType.Name(tensor.data_type)}"
    if tensor.data_type in SUB_BYTE_TYPES:
        return None  # packed: several values per byte
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        field = helper.tensor_dtype_to_field(tensor.data_type)
    except Exception:
        return f"has an unknown data type {tensor.data_type}"
    count = 1
    for d in tensor.dims:
        if d < 0:
            return f"has a negative dimension in {list(tensor.dims)}"
        count *= int(d)
    if tensor.HasField("raw_data"):
        held = len(tensor.raw_data)  # a copy, one tensor at a time (upb has no cheaper way)
        if dtype.itemsize >= 1 and held != count * dtype.itemsize:
            return (f"holds {held} bytes, but its dims {list(tensor.dims)} and type "
                    f"{dtype.name} need {count * dtype.itemsize}")
        return None
    held = len(getattr(tensor, field))
    if held != count and dtype.itemsize >= 1:
        return f"holds {held} values, but its dims {list(tensor.dims)} need {count}"
    return None


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every node and tensor name in the model, subgraphs included."""
    names: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        names.update(t.name for t in graph.initializer)
        names.update(v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info))
        for node in graph.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)

    visit(model.graph)
    names.discard("")
    return names


class NameAllocator:
    """Hands out names that collide with nothing in the model nor with each other."""

    def __init__(self, taken: set[str]):
        self._taken = set(taken)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self._taken:
            name = f"{base}_{k}"
            k += 1
        self._taken.add(name)
        return name


def display_name(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or ``<op>_<index>`` for unnamed nodes (stable for a given graph)."""
    return node.name or f"{node.op_type}_{index}"


def nodes_leading_to(graph: onnx.GraphProto, tensors) -> list[onnx.NodeProto]:
    """The nodes that ``tensors`` depend on, in graph order (the rest need not run: onnxruntime
    runs every node of a graph, whether or not an output reads it)."""
    need = set(tensors)
    keep = []
    for node in reversed(graph.node):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
            need |= node_subgraph_reads(node)
    return keep[::-1]


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names read inside subgraphs (If/Loop/Scan bodies capture outer tensors by name,
    without listing them as inputs)."""
    return set().union(*(node_subgraph_reads(n) for n in graph.node))


def node_subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names read inside ``node``'s subgraphs, at any depth."""
    reads: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in sub.node:
                reads.update(inner.input)
            reads |= subgraph_reads(sub)
    return reads
