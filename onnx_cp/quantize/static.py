"""Static INT8 of a float model: onnxruntime's ``quantize_static`` in QDQ format.

    int8 = quantize_int8(model, x)                       # x: calibration inputs (feeds.py)
    with int8_quantizer(model, x) as quantizer:          # calibrated once, quantized as often as needed
        everything, some = quantizer.quantize(), quantizer.quantize(["conv3"])

Weights are int8 per output channel, activations uint8 with MinMax ranges from the calibration
inputs: what onnxruntime recommends for x86 CPUs. Only ``OP_TYPES`` are quantized (see there).
``quantize_static`` works on files, so the model goes to a temporary folder (with external data
when it is over 2 GiB) and comes back loaded. The ranges are computed once and cached there, so
quantizing again with other nodes left float costs no second calibration.

What the result keeps: the graph's input and output names, every node's name (unnamed nodes are
given onnxruntime's own ``<OpType>_<k>`` names first, so they can be left float by name), and
the model's ``metadata_props`` as they were (the ``onnx_cp`` provenance entry included).
onnxruntime's graph optimizations are not run before quantizing: they would rename and merge
nodes, and the node names are what per-node decisions and profiles are keyed by.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import onnx

from onnx_cp.bench.attribution import ort_node_names
from onnx_cp.errors import OnnxCpError
from onnx_cp.model_io import load_model, needs_external_data, save_model
from onnx_cp.quantize.feeds import CalibrationInputs, calibration_feeds
from onnx_cp.quantize.opset import with_min_opset
from onnx_cp.quantize.refusal import refusal
from onnx_cp.runtime import first_line

# What is quantized: the layers whose int8 kernels save time, and the ops that only move, pick or
# clamp values (int8 in, the same int8 out), so no quantize/dequantize pair splits a chain of them.
# Arithmetic ops (Add, Mul, BatchNormalization, Softmax, ...) stay float: a per-tensor rounding
# before a per-channel scale multiplies the error (a trained VGG-16's head, a BatchNormalization
# as Mul and Add after a Dense layer: output error 1.19 with every op quantized, 0.045 with these).
OP_TYPES = ("Conv", "Gemm", "MatMul", "Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze",
            "Unsqueeze", "Slice", "Split", "Gather")


def quantize_int8(model: onnx.ModelProto | str | os.PathLike, calibration: CalibrationInputs, *,
                  nodes_to_exclude: Sequence[str] = (), op_types: Sequence[str] = OP_TYPES) -> onnx.ModelProto:
    """``model`` in static INT8 (QDQ, per-channel weights), calibrated on ``calibration``: its
    nodes of ``op_types``, but those named in ``nodes_to_exclude``, which stay float."""
    with int8_quantizer(model, calibration, op_types=op_types) as quantizer:
        return quantizer.quantize(nodes_to_exclude)


@contextmanager
def int8_quantizer(model: onnx.ModelProto | str | os.PathLike, calibration: CalibrationInputs, *,
                   op_types: Sequence[str] = OP_TYPES) -> Iterator["Quantizer"]:
    """A Quantizer for ``model`` in a temporary folder that lives as long as the ``with`` block.

    Refused in one line: a model that is quantized already, calibration inputs that do not fit
    it, an opset below 13 that onnx's converter cannot upgrade.
    """
    source = model if isinstance(model, onnx.ModelProto) else load_model(model)
    problem = refusal(source)
    if problem:
        raise OnnxCpError(problem)
    feeds = calibration_feeds(source, calibration)
    with tempfile.TemporaryDirectory(prefix="onnx-cp-int8-") as tmp:
        yield Quantizer(source, feeds, Path(tmp), tuple(op_types))


class Quantizer:
    """One float model ready for ``quantize_static``; ``prepared`` is that model as quantized
    (nodes named, opset 13 or later), the float reference whose node names the results share."""

    def __init__(self, source: onnx.ModelProto, feeds: list[dict], folder: Path, op_types: tuple[str, ...]):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.source = source
        self.op_types = op_types
        self.prepared = with_min_opset(_named(source))
        self._feeds = feeds
        self._folder = folder
        self._large = needs_external_data(self.prepared)
        self._ranges = folder / "ranges.json"
        self._runs = 0
        saved = save_model(self.prepared, folder / "float.onnx")
        self._input = folder / "inferred.onnx"
        try:  # shape inference only: onnxruntime's optimizations would rename nodes
            quant_pre_process(str(saved), str(self._input), skip_optimization=True, skip_symbolic_shape=True,
                              save_as_external_data=self._large)
        except Exception as exc:  # onnx's shape inference raises its own types
            raise OnnxCpError(f"onnx's shape inference fails on the model ({first_line(exc)}); check it with "
                              "onnx.checker.check_model(model, full_check=True)") from None

    def quantize(self, nodes_to_exclude: Sequence[str] = ()) -> onnx.ModelProto:
        """The model in INT8, the nodes named in ``nodes_to_exclude`` left float."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        names = {node.name for node in self.prepared.graph.node}
        unknown = [name for name in nodes_to_exclude if name not in names]
        if unknown:
            raise OnnxCpError(f"nodes_to_exclude names {', '.join(map(repr, unknown))}, which the model does not "
                              "have; give the names of its nodes")
        self._runs += 1
        out = self._folder / f"int8_{self._runs}.onnx"
        reader = None if self._ranges.exists() else _Reader(self._feeds)
        try:
            quantize_static(str(self._input), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(nodes_to_exclude),
                            op_types_to_quantize=list(self.op_types),
                            use_external_data_format=self._large, calibration_cache_path=str(self._ranges))
        except Exception as exc:  # onnxruntime raises its own types, and ValueError, op by op
            raise OnnxCpError(f"onnxruntime's quantize_static fails on the model ({first_line(exc)}); check that "
                              "onnxruntime runs the float model") from None
        quantized = load_model(out, check=False)
        del quantized.metadata_props[:]  # quantize_static adds its own entries
        quantized.metadata_props.extend(self.source.metadata_props)
        return quantized


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy whose unnamed nodes carry onnxruntime's own names (a node is left
    float by name) and whose repeated names are made unique."""
    names = [node.name for node in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    taken: set[str] = set()
    for node, ort_name in zip(copy.graph.node, ort_node_names(copy.graph)):
        name, k = node.name or ort_name, 1
        while name in taken:
            k += 1
            name = f"{node.name or ort_name}_{k}"
        node.name = name
        taken.add(name)
    return copy
