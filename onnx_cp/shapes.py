"""Static shapes of every tensor, from onnx shape inference with the inputs' dynamic dims fixed."""
from __future__ import annotations

import warnings
from typing import Iterable, Mapping

import onnx

from onnx_cp.errors import Message, OnnxCpError, param, shape_given, shape_param, spelled
from onnx_cp.graph import runtime_inputs

# Tensors larger than this lose their data in the copy given to shape inference: it needs
# their dims, not their values, and copying a multi-GB model twice is what it must avoid.
_KEEP_DATA_ELEMENTS = 4096


def parse_input_shapes(values: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """``('images=1x3x224x224', ...)`` -> ``{'images': (1, 3, 224, 224)}``: command-line text, so its
    errors name the ``--input-shape`` flag."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise OnnxCpError(
                f"--input-shape {value!r} is not NAME=DIMS; write it like images=1x3x224x224",
                usage=True,
            )
        shapes[name] = shape
    return shapes


def fix_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]
                     ) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """The concrete shape of each runtime input, and a warning per input whose dims were guessed."""
    inputs = runtime_inputs(model.graph)
    known = {i.name for i in inputs}
    unknown = sorted(set(input_shapes) - known)
    if unknown:
        raise OnnxCpError(f"{param('input_shapes')} names {unknown}, but the model's inputs are {sorted(known)}",
                          usage=True)
    shapes, notes = {}, []
    for inp in inputs:
        if not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if inp.name in input_shapes:
            try:
                given = tuple(int(g) for g in input_shapes[inp.name])
            except (TypeError, ValueError):
                given = ()
            if not given or min(given) < 1:
                raise OnnxCpError(f"{shape_given(inp.name, input_shapes[inp.name])}: give positive integer dims, like "
                                  f"{spelled('(1, 3, 224, 224)', '1x3x224x224')}", usage=True)
            if len(given) != len(dims):
                raise OnnxCpError(f"{shape_given(inp.name)} has {len(given)} dims, but the input "
                                  f"has {len(dims)}", usage=True)
            for d, g in zip(dims, given):
                if d.HasField("dim_value") and d.dim_value != g:
                    raise OnnxCpError(f"{shape_given(inp.name)}: dim {d.dim_value} is fixed in the "
                                      f"model, cannot set it to {g}", usage=True)
            shapes[inp.name] = given
            continue
        concrete, guessed = [], []
        for d in dims:
            if d.HasField("dim_value") and d.dim_value > 0:
                concrete.append(d.dim_value)
            else:
                concrete.append(1)
                guessed.append(d.dim_param or "?")
        if guessed:
            example = "x".join(str(c) for c in concrete)
            notes.append(Message(f"input '{inp.name}' has dynamic dims {guessed}; using 1 for each "
                                 f"(set them with {shape_param(inp.name, example)})"))
        shapes[inp.name] = tuple(concrete)
    return shapes, notes


def infer_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]
                 ) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Shapes of all tensors whose shape inference could fix, plus notes for the report."""
    fixed, notes = fix_input_shapes(model, input_shapes)
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.graph.CopyFrom(_graph_without_big_data(model.graph))
    for inp in light.graph.input:
        if inp.name in fixed:
            for d, v in zip(inp.type.tensor_type.shape.dim, fixed[inp.name]):
                d.Clear()
                d.dim_value = v
    del light.graph.value_info[:]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception as exc:  # inference is best effort: costs become unknown, the rewrite still works
        notes.append(f"shape inference failed ({str(exc).splitlines()[0][:160]}); costs are unknown")
        return dict(fixed), notes
    shapes: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        shape = _static_shape(vi)
        if shape is not None:
            shapes[vi.name] = shape
    for t in model.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    shapes.update(fixed)
    return shapes, notes


def _graph_without_big_data(graph: onnx.GraphProto) -> onnx.GraphProto:
    g = onnx.GraphProto()
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    for t in graph.initializer:
        copy = g.initializer.add()
        size = 1
        for d in t.dims:
            size *= d
        if size <= _KEEP_DATA_ELEMENTS and not t.external_data:
            copy.CopyFrom(t)
        else:  # dims and type only; a constant input is listed so inference still sees its shape
            copy.name, copy.data_type = t.name, t.data_type
            copy.dims.extend(t.dims)
            copy.raw_data = b""
    return g


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(d.dim_value)
    return tuple(dims)


def dynamic_dims(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]
                 ) -> dict[str, list[tuple[int, str]]]:
    """Per runtime input not fixed by ``input_shapes``: its dynamic axes and their names."""
    found = {}
    for inp in runtime_inputs(model.graph):
        if inp.name in input_shapes or not inp.type.HasField("tensor_type"):
            continue
        axes = [(axis, d.dim_param or "?") for axis, d in enumerate(inp.type.tensor_type.shape.dim)
                if not (d.HasField("dim_value") and d.dim_value > 0)]
        if axes:
            found[inp.name] = axes
    return found
