"""Each Conv, Gemm and MatMul in its fastest form, float or int8, as onnxruntime measures it.

1. Quantize every node (``static.py``; the calibration runs once).
2. Profile the float model and the all-int8 one node by node (``timing.per_node_view``): a node's
   int8 time includes its quantize/dequantize pairs, which the profiler counts with it.
3. A node whose int8 form is slower, or faster by less than ``min_gain`` of its float time, stays
   float: int8 costs accuracy, so it has to pay in time.
4. Quantize again with those nodes left float.
5. Time the float model and the int8 candidates as whole models, in one alternated run. The
   fastest candidate is kept where it beats the float model by ``min_gain`` there and again in a
   second alternated run of the two alone; otherwise the float model is returned, as it was
   given, and a note says so. A node's time depends on its neighbours' forms (a float node
   between int8 ones gets their quantize/dequantize pairs), so the whole model decides, never
   the sum of per-node times.

A node left float stays float in onnxruntime (keep_float.py), but for one whose data input has a
single channel: onnxruntime quantizes its weight per tensor, and its reason says so.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import onnx

from onnx_cp.errors import OnnxCpError
from onnx_cp.quantize.error import int8_error
from onnx_cp.quantize.feeds import CalibrationInputs
from onnx_cp.quantize.keep_float import per_tensor_floats
from onnx_cp.quantize.result import FLOAT, INT8, Int8Result, NodeForm
from onnx_cp.quantize.static import Quantizer, int8_quantizer
from onnx_cp.quantize.timing import Timing, per_node_view

QUANTIZABLE = ("Conv", "Gemm", "MatMul")
# The least share of a node's (and the whole model's) float time that int8 must save to be kept.
MIN_GAIN = 0.05


def quantize_fastest(model: onnx.ModelProto | str | os.PathLike, calibration: CalibrationInputs, timing: Timing, *,
                     nodes_to_exclude: Sequence[str] = (), held_back: CalibrationInputs | None = None,
                     min_gain: float = MIN_GAIN, chain_aware: bool = True) -> Int8Result:
    """``model`` with each Conv, Gemm and MatMul in int8 where that measured faster, calibrated on
    ``calibration``; never slower than ``model`` as ``timing`` measures it (else ``model`` itself
    comes back). ``nodes_to_exclude`` stay float whatever they measure. With ``held_back`` inputs,
    the result carries the returned model's output error against ``model`` on them.
    ``chain_aware``: a low-rank rewrite's chains equalized and rounded for INT8 where that
    measures closer to float (see quantize_int8)."""
    if not 0.0 <= min_gain < 1.0:
        raise OnnxCpError(f"min_gain must lie in [0, 1) (a share of the float time), got {min_gain}")
    with int8_quantizer(model, calibration, chain_aware=chain_aware) as quantizer:
        source = quantizer.source
        nodes, slow, candidates = _by_node(quantizer, timing, nodes_to_exclude, min_gain)
    whole = [t.median for t in timing.whole([source, *candidates])]
    best = min(range(1, len(whole)), key=whole.__getitem__)
    notes = [*quantizer.notes, _timing_note(whole, len(candidates) > 1)]
    float_ms, int8_ms = whole[0], whole[best]
    if _pays(float_ms, int8_ms, min_gain):
        # One alternated run's medians drift by several percent on a busy machine: a second run
        # of the two alone must agree before int8 is kept.
        float_ms, int8_ms = (t.median for t in timing.whole([source, candidates[best - 1]]))
        notes.append(f"confirmed in a second alternated run: float {float_ms:.3f} ms, INT8 {int8_ms:.3f} ms")
    if _pays(float_ms, int8_ms, min_gain):
        if best == 1 and slow:  # every node in int8 beat the mix: the slow nodes' neighbours gained more
            nodes = [_int8_after_all(n, whole) if n.node in slow else n for n in nodes]
        chosen, is_int8 = candidates[best - 1], True
    else:
        notes.append(f"the INT8 model ran {int8_ms:.3f} ms against the float model's {float_ms:.3f} ms, "
                     f"{'slower' if int8_ms >= float_ms else f'under {min_gain:.0%} faster'}: "
                     "the float model is returned")
        nodes = [_float_after_all(n) for n in nodes]
        chosen, is_int8 = source, False
    if is_int8:
        per_tensor = set(per_tensor_floats(chosen))
        nodes = [_per_tensor(n) if n.form == FLOAT and n.node in per_tensor else n for n in nodes]
    kept_float = [n.node for n in nodes if n.form == FLOAT]
    if is_int8 and kept_float:
        notes.append(f"{len(kept_float)} of {len(nodes)} Conv/Gemm/MatMul node(s) stay float: "
                     + ", ".join(kept_float[:8]) + (", ..." if len(kept_float) > 8 else ""))
    error = None
    if held_back is not None:
        error = int8_error(source, chosen, held_back) if is_int8 else 0.0
    return Int8Result(chosen, is_int8, tuple(nodes), float_ms, int8_ms, error, tuple(notes))


def _by_node(quantizer: Quantizer, timing: Timing, excluded: Sequence[str],
             min_gain: float) -> tuple[list[NodeForm], list[str], list[onnx.ModelProto]]:
    """(each node's form by its profiled times, the int8 nodes that do not pay, the INT8
    candidates: every node in int8, and where some do not pay, those nodes float)."""
    prepared = quantizer.prepared
    everything = quantizer.quantize(excluded)
    float_times, int8_times = timing.layers([per_node_view(prepared), per_node_view(everything)])
    quantized = _quantized_nodes(everything)
    int8_outputs = {node.name: node.output[0] for node in everything.graph.node if node.output}
    nodes = [_measured(node, quantized, float_times, int8_times.get(int8_outputs.get(node.name, "")), min_gain)
             if node.name not in excluded else
             NodeForm(node.name, node.output[0], node.op_type, FLOAT, None, None, "excluded by nodes_to_exclude")
             for node in prepared.graph.node if node.op_type in QUANTIZABLE]
    slow = [n.node for n in nodes if n.form == FLOAT and n.node in quantized]
    candidates = [everything]
    if slow and any(n.form == INT8 for n in nodes):
        candidates.append(quantizer.quantize([*excluded, *slow]))
    return nodes, slow, candidates


def _pays(float_ms: float, int8_ms: float, min_gain: float) -> bool:
    return int8_ms < float_ms * (1.0 - min_gain)


def _quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes whose two operands (data and weight) are dequantized: those quantize_static
    put in int8. A node left float may read a dequantized activation from an int8 neighbour."""
    dequantized = {t for node in model.graph.node if node.op_type == "DequantizeLinear" for t in node.output}
    return {node.name for node in model.graph.node
            if len(node.input) >= 2 and all(t in dequantized for t in node.input[:2])}


def _measured(node: onnx.NodeProto, quantized: set[str], float_times: Mapping[str, float],
              int8_ms: float | None, min_gain: float) -> NodeForm:
    float_ms = float_times.get(node.output[0])

    def form(kind: str, reason: str) -> NodeForm:
        return NodeForm(node.name, node.output[0], node.op_type, kind, float_ms, int8_ms, reason)

    if node.name not in quantized:
        return form(FLOAT, "onnxruntime's quantizer leaves it float")
    if float_ms is None or int8_ms is None:
        return form(FLOAT, "not found in the profiles, so not shown to pay in int8")
    times = f"int8 {int8_ms:.4f} ms, float {float_ms:.4f} ms"
    if int8_ms >= float_ms:
        return form(FLOAT, f"slower in int8 ({times})")
    if int8_ms > float_ms * (1.0 - min_gain):
        return form(FLOAT, f"int8 saves under {min_gain:.0%} ({times})")
    return form(INT8, f"faster in int8 ({times})")


def _int8_after_all(node: NodeForm, whole: Sequence[float]) -> NodeForm:
    return NodeForm(node.node, node.output, node.op, INT8, node.float_ms, node.int8_ms,
                    f"{node.reason}, but the model ran faster with it in int8 too "
                    f"({whole[1]:.3f} ms against {whole[2]:.3f} ms)")


def _float_after_all(node: NodeForm) -> NodeForm:
    if node.form == FLOAT:
        return node
    return NodeForm(node.node, node.output, node.op, FLOAT, node.float_ms, node.int8_ms,
                    f"{node.reason}, but the whole INT8 model was not faster")


def _per_tensor(node: NodeForm) -> NodeForm:
    return NodeForm(node.node, node.output, node.op, FLOAT, node.float_ms, node.int8_ms,
                    f"{node.reason}; onnxruntime quantizes its weight per tensor all the same (a data input of "
                    "one channel reads as one scale)")


def _timing_note(whole: Sequence[float], mixed: bool) -> str:
    parts = [f"float {whole[0]:.3f} ms", f"every node in int8 {whole[1]:.3f} ms"]
    if mixed:
        parts.append(f"the slower nodes float {whole[2]:.3f} ms")
    return "whole-model medians, one alternated run: " + ", ".join(parts)
