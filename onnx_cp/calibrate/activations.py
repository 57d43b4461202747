"""Intermediate tensors of a model in onnxruntime, batch by batch over the calibration feeds.

    for start, values in stream(model, ["conv1_in", "relu1"], x, threads=1):
        ...  # values["relu1"]: the batch's activations, samples start, start + 1, ...

The model is copied with the wanted tensors as its only outputs and only the nodes they depend
on (onnxruntime would run the rest too: recovery on ddddocr's recognizer spent 350 of its 355 s
running the LSTM and Gemm behind every layer it read); nothing but one batch's activations is
held at a time.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import helper

from onnx_cp.graph import nodes_leading_to, runtime_inputs
from onnx_cp.runtime import open_session, session_options

_NUMPY = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
          onnx.TensorProto.DOUBLE: np.float64}
# Samples per onnxruntime run when the batch axis is free; a fixed axis runs its own size.
BATCH = 8


def probe(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are exactly ``tensors``, without the nodes they do not
    depend on. A tensor's type is taken from the graph's outputs or value_info, else it is the
    input's (a float model's activations)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    del graph.node[:]
    graph.node.extend(nodes_leading_to(model.graph, tensors))  # extend copies them
    known = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    default = runtime_inputs(graph)[0].type.tensor_type.elem_type
    wanted = []
    for t in dict.fromkeys(tensors):
        info = known.get(t)
        elem = info.type.tensor_type.elem_type if info is not None and info.type.HasField("tensor_type") else 0
        wanted.append(helper.make_tensor_value_info(t, elem or default, None))
    del graph.output[:]
    graph.output.extend(wanted)
    return out


def input_dtype(model: onnx.ModelProto) -> np.dtype:
    """The numpy dtype of the model's one runtime input (float32 when not a float type)."""
    arg = runtime_inputs(model.graph)[0]
    return np.dtype(_NUMPY.get(arg.type.tensor_type.elem_type, np.float32))


def batch_size(model: onnx.ModelProto) -> int:
    dims = runtime_inputs(model.graph)[0].type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
    return fixed if fixed > 0 else BATCH


def stream(model: onnx.ModelProto, tensors: Sequence[str], x: np.ndarray, *, threads: int = 1,
           ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first sample, {tensor: value}) for each batch of ``x`` fed to the model's one input.

    A wanted tensor that is the graph input itself is passed through as fed.
    """
    arg = runtime_inputs(model.graph)[0]
    wanted = list(dict.fromkeys(tensors))
    inner = [t for t in wanted if t != arg.name]
    session = open_session(probe(model, inner or [model.graph.output[0].name]),
                           session_options(threads=threads))
    size, dtype = batch_size(model), input_dtype(model)
    for start in range(0, len(x), size):
        feed = x[start:start + size].astype(dtype)
        values = dict(zip(inner, session.run(inner, {arg.name: feed}))) if inner else {}
        if arg.name in wanted:
            values[arg.name] = feed
        yield start, values


def outputs(model: onnx.ModelProto, x: np.ndarray, *, threads: int = 1) -> list[np.ndarray]:
    """Every output of ``model`` over ``x``, batches concatenated along the first axis."""
    return [np.concatenate(parts) for parts in zip(*batched_outputs(model, x, threads=threads))]


def batched_outputs(model: onnx.ModelProto, x: np.ndarray, *, threads: int = 1) -> list[list[np.ndarray]]:
    """Every output of ``model`` for each batch of ``x``: one list of outputs per batch (for
    outputs whose batch axis is not the first, as in a (T, N, C) sequence)."""
    names = [o.name for o in model.graph.output]
    return [[values[n] for n in names] for _, values in stream(model, names, x, threads=threads)]


def output_error(outputs: Sequence[Sequence[np.ndarray]], reference: Sequence[Sequence[np.ndarray]]) -> float:
    """sqrt(sum ||out - ref||^2 / sum ||ref||^2) over every float output of every feed (or batch)."""
    num = den = 0.0
    for got, want in zip(outputs, reference):
        for a, b in zip(got, want):
            if not np.issubdtype(np.asarray(b).dtype, np.floating):
                continue
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            num += float(np.sum(np.square(a64 - b64)))
            den += float(np.sum(np.square(b64)))
    return float(np.sqrt(num / den)) if den else 0.0


def run_feeds(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], threads: int = 1,
              ) -> list[list[np.ndarray]]:
    """Every output of ``model`` for each feed, in one quiet session."""
    sess = open_session(model, session_options(threads=threads))
    return [sess.run(None, feed) for feed in feeds]
