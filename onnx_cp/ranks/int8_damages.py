"""With quantize='int8', the damages of the form that will be written: each candidate's error at
its layer's output with the layer alone in INT8 (its chain equalized and rounded where that
measures closer to float, as the quantize stage does), and the Conv kept in INT8 too, so keeping a
layer is no longer free of error. Measured on the proxy's inputs, not assumed to add to the float
error: a chain quantizes its inner tensors, which the Conv it replaces has none of.

The sensitivities stay those of the float damages (how much of a layer's output error reaches the
model's outputs does not depend on where the error came from)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnx_cp.errors import OnnxCpError
from onnx_cp.progress import Progress
from onnx_cp.ranks import proxy
from onnx_cp.ranks.problem import BudgetLayer, BudgetProblem
from onnx_cp.splice import Replacement, splice


def measure_int8_damages(problem: BudgetProblem, progress: Progress | None) -> None:
    """Replace every layer's candidate errors by their INT8 forms' and set its ``keep_error``."""
    from onnx_cp.quantize import quantize_int8

    model, auto, threads = problem.model, problem.auto, problem.threads
    tensors = [t for l in auto for t in (l.site.node.input[0], l.site.node.output[0])]
    got = proxy.capture(model, tensors, problem.feeds, np.float32, threads)
    steps = sum(len(l.ranks) + 1 for l in auto)
    done = 0
    for layer in auto:
        node = layer.site.node
        if progress:
            progress(f"int8 damages: {layer.site.name}", done, steps)
        done += len(layer.ranks) + 1
        x, runs = got[node.input[0]], len(problem.feeds)  # each feed's part along the first axis
        alone = layer_alone(model, node, problem.shapes.get(node.input[0]), problem.shapes.get(node.output[0]))
        if alone is None:  # its weight is computed from the input: the float damages stand
            continue
        feeds = [{node.input[0]: part} for part in np.split(x, runs)]
        reference = [[part] for part in np.split(got[node.output[0]], runs)]

        def error(variant: onnx.ModelProto) -> float:
            return proxy.output_error(proxy.run(quantize_int8(variant, feeds, chain_aware=True), feeds, threads),
                                      reference)

        try:
            keep = error(alone)
            errors = [error(_candidate(problem, alone, layer, k)) for k in range(len(layer.ranks))]
        except (OnnxCpError, RuntimeError, ValueError):  # the layer alone does not quantize or run: float damages stand
            continue
        layer.keep_error, layer.errors = keep, errors


def layer_alone(model: onnx.ModelProto, node: onnx.NodeProto, in_shape, out_shape) -> onnx.ModelProto | None:
    """A model of ``node`` alone, fed its first input, with the initializers and the nodes its
    other inputs come from (a weight behind Identity nodes); None where one of those reads a
    graph input. Its input and output have the shapes given, the first axis left free (the proxy
    feeds one sample at a time)."""
    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    initializers = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - set(initializers)
    nodes, inits, seen = [node], [], set()
    todo = [name for name in node.input[1:] if name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in initializers:
            inits.append(initializers[name])
        elif name in producer:
            nodes.insert(0, producer[name])
            todo.extend(t for t in producer[name].input if t)
        elif name in graph_inputs:
            return None
    elem = onnx.TensorProto.FLOAT
    sub = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info(node.input[0], elem, _free(in_shape))],
                            [helper.make_tensor_value_info(node.output[0], elem, _free(out_shape))], inits)
    alone = helper.make_model(sub, opset_imports=list(model.opset_import))
    alone.ir_version = model.ir_version
    return alone


def _candidate(problem: BudgetProblem, alone: onnx.ModelProto, layer: BudgetLayer, k: int) -> onnx.ModelProto:
    """The layer alone with candidate ``k`` in the form the rewrite will likely give it."""
    site, rank = layer.site, layer.ranks[k]
    form = problem.form(site, rank, layer.kind(k))
    return splice(alone, [Replacement(site, form, rank, layer.factors(k))])[0]


def _free(shape) -> list | None:
    """``shape`` with its first axis free; None (no shape) where it is unknown."""
    return None if shape is None else ["N", *shape[1:]]
