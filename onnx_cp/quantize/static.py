"""Static INT8 of a float model: onnxruntime's ``quantize_static`` in QDQ format.

    int8 = quantize_int8(model, x)                       # x: calibration inputs (feeds.py)
    with int8_quantizer(model, x) as quantizer:          # calibrated once, quantized as often as needed
        everything, some = quantizer.quantize(), quantizer.quantize(["conv3"])

Weights are int8 per output channel, activations uint8 with MinMax ranges from the calibration
inputs: what onnxruntime recommends for x86 CPUs. Only ``OP_TYPES`` are quantized (see there).
``quantize_static`` works on files, so the model goes to a temporary folder (with external data
when it is over 2 GiB) and comes back loaded (ort_static.py). With ``chain_aware``, a low-rank
rewrite's chains are quantized both ways, by onnxruntime alone and equalized and rounded for
their outputs (chain_quant.py); the way whose every-node INT8 lands closer to float on the
calibration inputs is kept, and ``notes`` say which.

What the result keeps: the graph's input and output names, every node's name (unnamed nodes are
given onnxruntime's own ``<OpType>_<k>`` names first, so they can be left float by name), and
the model's ``metadata_props`` as they were (the ``onnx_cp`` provenance entry included).
onnxruntime's graph optimizations are not run before quantizing: they would rename and merge
nodes, and the node names are what per-node decisions and profiles are keyed by.
A Conv or Gemm left float reads a per-channel DequantizeLinear of its own, so that onnxruntime
runs it in float and not in per-tensor int8 (keep_float.py).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import onnx

from onnx_cp.bench.attribution import ort_node_names
from onnx_cp.calibrate.activations import output_error, run_feeds
from onnx_cp.errors import OnnxCpError
from onnx_cp.model_io import load_model
from onnx_cp.quantize.chain_quant import ChainQuantization
from onnx_cp.quantize.feeds import CalibrationInputs, calibration_feeds
from onnx_cp.quantize.keep_float import keep_float
from onnx_cp.quantize.opset import with_min_opset
from onnx_cp.quantize.ort_static import StaticRun
from onnx_cp.quantize.refusal import refusal

# What is quantized: the layers whose int8 kernels save time, and the ops that only move, pick or
# clamp values (int8 in, the same int8 out), so no quantize/dequantize pair splits a chain of them.
# Arithmetic ops (Add, Mul, BatchNormalization, Softmax, ...) stay float: a per-tensor rounding
# before a per-channel scale multiplies the error (a trained VGG-16's head, a BatchNormalization
# as Mul and Add after a Dense layer: output error 1.19 with every op quantized, 0.045 with these).
OP_TYPES = ("Conv", "Gemm", "MatMul", "Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze",
            "Unsqueeze", "Slice", "Split", "Gather")
# Calibration feeds on which the chains' INT8 is compared with onnxruntime's plain INT8.
CHECK_FEEDS = 32
# Calibration samples of an INT8 model that is only timed: an int8 kernel's time does not depend
# on its ranges, and on a VGG-16 quantizing took 14.3 s on 64 samples, 1.9 s on 4.
TIMING_SAMPLES = 4


def quantize_int8(model: onnx.ModelProto | str | os.PathLike, calibration: CalibrationInputs, *,
                  nodes_to_exclude: Sequence[str] = (), op_types: Sequence[str] = OP_TYPES,
                  chain_aware: bool = False) -> onnx.ModelProto:
    """``model`` in static INT8 (QDQ, per-channel weights), calibrated on ``calibration``: its
    nodes of ``op_types``, but those named in ``nodes_to_exclude``, which stay float. With
    ``chain_aware``, a low-rank rewrite's chains are equalized and rounded for INT8 (chain_quant.py)
    where that measures closer to float: worth its cost (on a VGG-16's CP rewrite, a pass over the
    calibration inputs, a second calibration and an error check, about 2 minutes) where the
    outputs matter, not where only the time does (the graph is the same either way)."""
    with int8_quantizer(model, calibration, op_types=op_types, chain_aware=chain_aware) as quantizer:
        return quantizer.quantize(nodes_to_exclude)


def int8_for_timing(calibration: CalibrationInputs):
    """``model -> model in INT8`` for models whose time alone is read (the latency probe's, the
    measured rounds', the forms'), calibrated on ``TIMING_SAMPLES`` of ``calibration``."""
    few = calibration[:TIMING_SAMPLES]
    return lambda model: quantize_int8(model, few)


@contextmanager
def int8_quantizer(model: onnx.ModelProto | str | os.PathLike, calibration: CalibrationInputs, *,
                   op_types: Sequence[str] = OP_TYPES, chain_aware: bool = False) -> Iterator["Quantizer"]:
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
        yield Quantizer(source, feeds, Path(tmp), tuple(op_types), chain_aware)


class Quantizer:
    """One float model ready for ``quantize_static``; ``prepared`` is that model as quantized
    (nodes named, opset 13 or later), the float reference whose node names the results share.
    ``notes`` say how its low-rank chains were quantized."""

    def __init__(self, source: onnx.ModelProto, feeds: list[dict], folder: Path, op_types: tuple[str, ...],
                 chain_aware: bool = False):
        self.source = source
        self.op_types = op_types
        self.prepared = with_min_opset(_named(source))
        self.notes: list[str] = []
        self._feeds = feeds
        self._plain = StaticRun(self.prepared, folder / "plain")
        self._chains = ChainQuantization.of(self.prepared, feeds, folder / "chains") if chain_aware else None
        self._use_chains: bool | None = None if self._chains else False
        self._unexcluded: onnx.ModelProto | None = None  # the deciding check's every-node INT8, handed over once

    def quantize(self, nodes_to_exclude: Sequence[str] = ()) -> onnx.ModelProto:
        """The model in INT8, the nodes named in ``nodes_to_exclude`` left float."""
        names = {node.name for node in self.prepared.graph.node}
        unknown = [name for name in nodes_to_exclude if name not in names]
        if unknown:
            raise OnnxCpError(f"nodes_to_exclude names {', '.join(map(repr, unknown))}, which the model does not "
                              "have; give the names of its nodes")
        if self._use_chains is None:
            self._use_chains = self._chains_pay()
        if not nodes_to_exclude and self._unexcluded is not None:
            quantized, self._unexcluded = self._unexcluded, None
        else:
            quantized = self._run(self._chains if self._use_chains else self._plain, nodes_to_exclude)
        del quantized.metadata_props[:]  # quantize_static adds its own entries
        quantized.metadata_props.extend(self.source.metadata_props)
        return quantized

    def _run(self, way: StaticRun | ChainQuantization, nodes_to_exclude: Sequence[str]) -> onnx.ModelProto:
        """``way``'s INT8 of the model, its float Convs and Gemms kept float in onnxruntime."""
        quantized = way.quantize(self._feeds, nodes_to_exclude, self.op_types)
        keep_float(quantized)
        return quantized

    def _chains_pay(self) -> bool:
        """Whether the chains' equalization and rounding bring every node's INT8 closer to float on
        the calibration inputs than onnxruntime's plain quantization (measured, not assumed)."""
        feeds = self._feeds[:CHECK_FEEDS]
        reference = run_feeds(self.prepared, feeds)
        plain_model, tuned_model = self._run(self._plain, ()), self._run(self._chains, ())
        plain = output_error(run_feeds(plain_model, feeds), reference)
        tuned = output_error(run_feeds(tuned_model, feeds), reference)
        pays = tuned < plain
        self._unexcluded = tuned_model if pays else plain_model
        what = self._chains.describe()
        self.notes.append(f"low-rank chains: {what}; output error of every node in int8 on {len(feeds)} calibration "
                          f"input(s): {tuned:.4f} against {plain:.4f} with onnxruntime's own quantization, "
                          + ("kept" if pays else "so onnxruntime's is kept"))
        return pays


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
