"""Cross-layer equalization inside low-rank chains: each link tensor's channels rescaled (and
flipped) so that one per-tensor uint8 range serves them all.

onnxruntime quantizes an activation with one range per tensor. Between a chain's stages the
channels do not share a range: on a trained VGG-16's CP chains most are one-sided (all negative
or all positive) and their extents differ by 2x to 5x, so a per-tensor range gives most of them a
step several times their own. Channel r of a link tensor is multiplied by c_r (the producer's
output channel r: its weights and bias), and the consumer's input channel r by 1 / c_r: exact in
float, for a depthwise consumer as for a dense one. c_r may be negative (a flip), so that every
channel's longer side lies on the same side of zero. The scales fill a common interval
[-lam, 1] as well as each channel allows; lam is the one that makes the mean log of the
channels' effective steps least. A dense consumer's weights take the scales into their columns,
which changes their per-output-channel rounding: rounding.py rounds those stages knowing it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_cp.conv import attributes
from onnx_cp.quantize.chains import Link

LAMBDAS = np.linspace(0.0, 1.0, 101)


def fill_scales(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Signed per-channel scales c (one per channel of ranges [low, high]) such that every
    c_r * [low_r, high_r] lies in [-lam, 1] and the product of the channels' fills is largest;
    1.0 for a channel that is zero throughout."""
    pos, neg = np.maximum(high, 0.0).astype(np.float64), np.maximum(-low, 0.0).astype(np.float64)
    live = (pos > 0) | (neg > 0)
    scales = np.ones(len(pos))
    if not live.any():
        return scales
    pos, neg = pos[live], neg[live]
    best, best_score = None, -np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_pos, inv_neg = np.where(pos > 0, 1.0 / pos, np.inf), np.where(neg > 0, 1.0 / neg, np.inf)
        for lam in LAMBDAS:
            upright = np.minimum(inv_pos, lam * inv_neg)  # the channel's positive side up to 1
            flipped = np.minimum(inv_neg, lam * inv_pos)
            c = np.where(upright >= flipped, upright, -flipped)
            if not np.all(np.isfinite(c) & (c != 0)):
                continue
            score = np.sum(np.log(np.abs(c))) - len(c) * np.log1p(lam)  # minus the mean log step, times n
            if score > best_score:
                best, best_score = c, score
    scales[live] = best * max(pos.max(), neg.max())  # the tensor keeps its largest extent
    return scales


def equalize_links(model: onnx.ModelProto, links: Sequence[Link], low: Mapping[str, np.ndarray],
                   high: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy of ``model`` with each link tensor's channels scaled by ``fill_scales`` of its
    measured ranges, and those scales by tensor. The copy computes the same outputs in float."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = {node.name: node for node in out.graph.node}
    inits = {init.name: init for init in out.graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name]).astype(np.float64)
        return arrays[name]

    scales = {}
    for link in links:
        c = fill_scales(low[link.tensor], high[link.tensor])
        scales[link.tensor] = c
        producer, consumer = nodes[link.producer], nodes[link.consumer]
        weight = array(producer.input[1])
        weight *= c.reshape(-1, *[1] * (weight.ndim - 1))
        if len(producer.input) > 2 and producer.input[2]:
            array(producer.input[2])[:] *= c
        _scale_inputs(array(consumer.input[1]), attributes(consumer).get("group", 1), 1.0 / c)
    for name, value in arrays.items():
        dtype = numpy_helper.to_array(inits[name]).dtype
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    return out, scales


def _scale_inputs(weight: np.ndarray, group: int, factor: np.ndarray) -> None:
    """Multiply a Conv weight (T, C / group, ...) in place by ``factor`` over its C input
    channels: channel k of group g is column k of that group's T / group output rows."""
    rows, width = weight.shape[0] // group, weight.shape[1]
    for g in range(group):
        block = factor[g * width:(g + 1) * width]
        weight[g * rows:(g + 1) * rows] *= block.reshape(1, width, *[1] * (weight.ndim - 2))


def equalized_moments(moments: Mapping[str, Sequence[np.ndarray]], inputs: Mapping[str, str],
                      scales: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Per-group input second moments (``moments`` by node, ``inputs`` its input tensor) as they
    are after the scales: E[(c x)(c x)^T] = (c c^T) * E[x x^T], each channel's scale repeated
    over the kernel positions of its patch."""
    out = {}
    for name, blocks in moments.items():
        c = scales.get(inputs[name])
        if c is None:
            out[name] = list(blocks)
            continue
        channels = len(c) // len(blocks)  # per group
        area = blocks[0].shape[0] // channels
        out[name] = []
        for g, m in enumerate(blocks):
            cg = np.repeat(c[g * channels:(g + 1) * channels], area)
            out[name].append(m * np.outer(cg, cg))
    return out
