"""The int8 weights of a chain's stages, rounded for the outputs rather than the weights
(GPTQ: Frantar et al., ICLR 2023).

A low-rank chain adds up large terms that mostly cancel: on a trained VGG-16 rewritten by CP, the
sum of the expand stage's terms' magnitudes is 14x to 54x its output's (3x to 9x for the
original 3x3 Convs). Rounding each weight to its nearest int8 level, as onnxruntime does, leaves
errors of about a level's size that the cancelling output then makes large: the expand stages'
rounding alone put that VGG-16's output 0.31 off (0.12 for the reduce stages). GPTQ rounds the
columns of W (T x K) one at a time and spreads each column's error over the columns not yet
rounded, weighted by the stage's input second moments H = E[x x^T]: it minimizes
E||(W - Q) x||^2, not ||W - Q||. For a kh x kw stage, x is the input patch an output reads and W
the weight flattened to (T, C / group x kh x kw). The levels keep onnxruntime's per-output-channel
scales, so only the int8 values change in the quantized model.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_cp.conv import attributes

QMAX = 127  # symmetric int8 weights, as quantize_static writes them
DAMPING = 0.01  # of the mean diagonal, added to H: GPTQ's default, keeps the inverse well posed
# Columns rounded between two updates of the columns after them (GPTQ's lazy batches: the same
# result, one matrix product per block instead of an outer product per column; a 256 x 2304
# Tucker-2 core: 6.4 s column by column)
BLOCK = 128


def gptq_levels(weight: np.ndarray, moment: np.ndarray, scale: np.ndarray, *, qmax: int = QMAX,
                damping: float = DAMPING) -> np.ndarray:
    """Integer levels Q (T x K, in [-qmax, qmax]) such that (Q * scale[:, None]) x is close to
    weight x for inputs x of second moment ``moment`` (K x K); ``scale`` is per row."""
    w = np.array(weight, dtype=np.float64)
    h = np.array(moment, dtype=np.float64)
    step = np.where(scale > 0, scale, 1.0).astype(np.float64)[:, None]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0  # an input that is always zero: its weights are free, round them plainly
    order = np.argsort(-np.diag(h), kind="stable")  # the columns that see the most energy first
    w, h = w[:, order], h[np.ix_(order, order)]
    h += damping * np.mean(np.diag(h)) * np.eye(len(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U
    levels = np.empty_like(w)
    for begin in range(0, w.shape[1], BLOCK):
        end = min(begin + BLOCK, w.shape[1])
        errors = np.empty((w.shape[0], end - begin))
        for k in range(begin, end):
            levels[:, k] = np.clip(np.round(w[:, k] / step[:, 0]), -qmax, qmax)
            errors[:, k - begin] = (w[:, k] - levels[:, k] * step[:, 0]) / upper[k, k]
            w[:, k + 1:end] -= np.outer(errors[:, k - begin], upper[k, k + 1:end])
        w[:, end:] -= errors @ upper[begin:end, end:]  # the block's errors spread over the columns after it at once
    out = np.empty_like(levels)
    out[:, order] = levels
    return out.astype(np.int8)


def round_stages(quantized: onnx.ModelProto, float_model: onnx.ModelProto, names: Sequence[str],
                    moments: Mapping[str, Sequence[np.ndarray]], cache: dict[str, np.ndarray] | None = None,
                    ) -> list[str]:
    """Replace, in ``quantized`` (QDQ, in place), the int8 weights of the Convs ``names`` by
    GPTQ's levels for ``float_model``'s weights and their input patches' ``moments`` (per group).
    A node whose weight is not per-channel symmetric int8 behind a DequantizeLinear of
    initializers keeps onnxruntime's rounding. ``cache`` keeps each node's levels between calls
    on the same float model. Returns the names of the nodes rounded."""
    float_inits = {i.name: i for i in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node}
    inits = {i.name: i for i in quantized.graph.initializer}
    dequantizers = {n.output[0]: n for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    done = []
    for node in quantized.graph.node:
        if node.name not in names or node.name not in moments or len(node.input) < 2:
            continue
        dq = dequantizers.get(node.input[1])
        if dq is None or len(dq.input) < 3 or not all(t in inits for t in dq.input[:3]):
            continue
        q_init, scale, zero = (numpy_helper.to_array(inits[t]) for t in dq.input[:3])
        weight = numpy_helper.to_array(float_inits[float_nodes[node.name].input[1]]).astype(np.float64)
        if q_init.dtype != np.int8 or q_init.shape != weight.shape or np.any(zero != 0):
            continue
        levels = None if cache is None else cache.get(node.name)
        if levels is None:
            levels = _grouped_levels(weight, scale, attributes(node).get("group", 1), moments[node.name])
            if cache is not None:
                cache[node.name] = levels
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(levels.reshape(q_init.shape), dq.input[0]))
        done.append(node.name)
    return done


def _grouped_levels(weight: np.ndarray, scale: np.ndarray, group: int, moments: Sequence[np.ndarray]) -> np.ndarray:
    """GPTQ's levels of a (grouped) Conv weight, group by group: each group's rows see only its own
    input channels' patches."""
    rows = weight.shape[0]
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (rows,))
    per, matrix = rows // group, weight.reshape(rows, -1)
    return np.concatenate([gptq_levels(matrix[g * per:(g + 1) * per], moments[g], scale[g * per:(g + 1) * per])
                           for g in range(group)])
