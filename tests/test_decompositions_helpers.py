"""Splicing one decomposition's realization into a one-Conv model, and counting what the result
holds (multiply-adds from inferred shapes, parameters from initializers) independently of cost()."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_cp.conv import conv_spec
from onnx_cp.graph import NameAllocator, all_names


def conv_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Conv")


def spec_of(model: onnx.ModelProto):
    weights = {t.name: t for t in model.graph.initializer}
    node = conv_node(model)
    return conv_spec(node, tuple(weights[node.input[1]].dims))


def weight_groups(model: onnx.ModelProto) -> list[np.ndarray]:
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w, spec = weights[conv_node(model).input[1]], spec_of(model)
    per = spec.out_per_group
    return [w[g * per:(g + 1) * per] for g in range(spec.group)]


def replaced(model: onnx.ModelProto, node: onnx.NodeProto, realization, dead: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``node`` replaced by the realization's nodes and ``dead`` weights dropped."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for n in out.graph.node:
        nodes.extend(realization.nodes if n.name == node.name else [n])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    keep = [t for t in out.graph.initializer if t.name not in dead]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep + realization.initializers)
    return out


def rewrite_conv(model: onnx.ModelProto, decomposition, form: str, group_factors) -> onnx.ModelProto:
    node = conv_node(model)
    bias = node.input[2] if len(node.input) > 2 else None
    weights = {t.name: t for t in model.graph.initializer}
    dtype = numpy_helper.to_array(weights[node.input[1]]).dtype
    part = decomposition.realize(form, node.name, node.input[0], node.output[0], bias, spec_of(model),
                                 group_factors, dtype, NameAllocator(all_names(model)))
    return replaced(model, node, part, [node.input[1]])


def shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    found = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            found[vi.name] = tuple(d.dim_value for d in dims)
    found.update({t.name: tuple(t.dims) for t in model.graph.initializer})
    return found


def counted_macs(model: onnx.ModelProto) -> int:
    """Multiply-adds of the Conv, Gemm and MatMul nodes, from shape inference."""
    known = shapes(model)
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = known[node.input[1]]
            total += int(np.prod(known[node.output[0]])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            k = known[node.input[1]][0]  # (K, N) weights only: no transB in what is counted
            total += int(np.prod(known[node.output[0]])) * k
    return total


def float_params(model: onnx.ModelProto) -> int:
    """Elements of the floating-point initializers (index and shape constants excluded)."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE))
