"""The elementwise activation that follows a Conv, when the Conv's output feeds only it.

Recovery matches a layer's output after this activation (a ReLU hides errors on negative
outputs, so fitting them would waste the chain's capacity). Known: Relu, LeakyRelu, Sigmoid,
Tanh, Clip with constant bounds, HardSigmoid, HardSwish, Elu, Softplus, and SiLU written as
``Mul(y, Sigmoid(y))``, and channel maxout written as equal contiguous Slices of the channel axis
combined by Max nodes (a maxout hides the losing pieces as a ReLU hides negatives). Anything else
(pooling, a second consumer) means the Conv's own output is the target.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnx_cp.conv import attributes
from onnx_cp.graph import GraphIndex


@dataclass(frozen=True)
class Activation:
    """``kind`` applied to the Conv output gives tensor ``output`` of the model."""

    kind: str  # identity | relu | leaky_relu | sigmoid | tanh | clip | hard_sigmoid | hard_swish | elu | softplus | silu | maxout
    output: str
    alpha: float = 0.0  # maxout: the number of pieces
    beta: float = 0.0

    def numpy(self, y: np.ndarray) -> np.ndarray:
        return _apply(self, y, np)

    def torch(self, y):
        import torch

        return _apply(self, y, torch)


def following(index: GraphIndex, conv: onnx.NodeProto) -> Activation:
    """The activation after ``conv`` (identity when there is none the rules above accept)."""
    out = conv.output[0]
    plain = Activation("identity", out)
    if out in index.graph_outputs:
        return plain
    consumers = index.consumers.get(out, [])
    if len(consumers) >= 2 and all(n.op_type == "Slice" for n in consumers):
        return _maxout(index, out, consumers, _out_channels(index, conv)) or plain
    if len(consumers) == 2:
        return _silu(index, out, consumers) or plain
    if len(consumers) != 1 or consumers[0].domain not in ("", "ai.onnx"):
        return plain
    node = consumers[0]
    attrs = attributes(node)
    simple = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hard_swish",
              "Softplus": "softplus"}
    if node.op_type in simple:
        return Activation(simple[node.op_type], node.output[0])
    if node.op_type == "LeakyRelu":
        return Activation("leaky_relu", node.output[0], float(attrs.get("alpha", 0.01)))
    if node.op_type == "Elu":
        return Activation("elu", node.output[0], float(attrs.get("alpha", 1.0)))
    if node.op_type == "HardSigmoid":
        return Activation("hard_sigmoid", node.output[0], float(attrs.get("alpha", 0.2)),
                          float(attrs.get("beta", 0.5)))
    if node.op_type == "Clip":
        bounds = _clip_bounds(index, node, attrs)
        return plain if bounds is None else Activation("clip", node.output[0], *bounds)
    return plain


def _silu(index: GraphIndex, out: str, consumers) -> Activation | None:
    sig = next((n for n in consumers if n.op_type == "Sigmoid"), None)
    mul = next((n for n in consumers if n.op_type == "Mul"), None)
    if sig is None or mul is None or sig.output[0] in index.graph_outputs:
        return None
    if sorted(mul.input) != sorted([out, sig.output[0]]) or len(index.consumers.get(sig.output[0], [])) != 1:
        return None
    return Activation("silu", mul.output[0])


def _out_channels(index: GraphIndex, conv: onnx.NodeProto) -> int | None:
    weight = index.constant(conv.input[1]) if len(conv.input) > 1 else "no weight"
    return None if isinstance(weight, str) else int(np.shape(weight.value)[0])


def _maxout(index: GraphIndex, out: str, slices, channels: int | None) -> Activation | None:
    """Maxout over the channel axis: every consumer a Slice of axis 1 (step 1), the pieces equal,
    contiguous and covering the channels, combined by Max nodes into one tensor."""
    pieces = []
    for node in slices:
        if node.domain not in ("", "ai.onnx") or len(node.input) < 3:
            return None
        values = _constant_inputs(index, node, range(1, 5))
        if values is None:
            return None
        starts, ends, axes, steps = (None if v is None else [int(i) for i in v] for v in values)
        if len(starts) != 1 or len(ends) != 1 or axes not in ([1], [-3]) or steps not in (None, [1]):
            return None
        if channels is None:
            return None
        start, end = (v + channels if v < 0 else v for v in (starts[0], ends[0]))
        pieces.append((min(max(start, 0), channels), min(max(end, 0), channels)))
    width = pieces[0][1] - pieces[0][0]
    bounds = sorted(pieces)
    if width <= 0 or bounds[-1][1] != channels or any(
            s != k * width or e - s != width for k, (s, e) in enumerate(bounds)):
        return None
    covered = {n.output[0] for n in slices}
    merged: set[str] = set()
    while True:
        grown = False
        for tensor in sorted(covered - merged):
            users = index.consumers.get(tensor, [])
            if len(users) != 1 or users[0].op_type != "Max" or tensor in index.graph_outputs:
                continue
            node = users[0]
            if all(i in covered for i in node.input) and node.output[0] not in covered:
                merged.update(node.input)
                covered.add(node.output[0])
                grown = True
        if not grown:
            break
    left = covered - merged
    if len(left) != 1 or merged != covered - left:
        return None
    final = left.pop()
    if final in {n.output[0] for n in slices}:
        return None
    return Activation("maxout", final, float(len(pieces)))


def _clip_bounds(index: GraphIndex, node: onnx.NodeProto, attrs: dict) -> tuple[float, float] | None:
    if "min" in attrs or "max" in attrs:  # opset < 11
        return float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
    values = _constant_inputs(index, node, (1, 2))
    if values is None:
        return None
    low, high = values
    return (-np.inf if low is None else float(low[0])), (np.inf if high is None else float(high[0]))


def _constant_inputs(index: GraphIndex, node: onnx.NodeProto, positions) -> list[np.ndarray | None] | None:
    """The flattened constant values of ``node``'s inputs at ``positions`` (None for an absent
    optional input); None when one of them is not a constant."""
    values = []
    for i in positions:
        if len(node.input) <= i or not node.input[i]:
            values.append(None)
            continue
        value = index.constant(node.input[i])
        if isinstance(value, str):
            return None
        values.append(np.asarray(value.value).reshape(-1))
    return values


def _apply(act: Activation, y, xp):
    kind, a, b = act.kind, act.alpha, act.beta
    torch_like = xp is not np

    def sigmoid(v):
        return xp.sigmoid(v) if torch_like else 1.0 / (1.0 + np.exp(-np.clip(v, -60, 60)))

    def clamp(v, lo, hi):
        return xp.clamp(v, lo, hi) if torch_like else np.clip(v, lo, hi)

    if kind == "identity":
        return y
    if kind == "relu":
        return clamp(y, 0.0, None) if torch_like else np.maximum(y, 0.0)
    if kind == "leaky_relu":
        return xp.where(y >= 0, y, a * y)
    if kind == "sigmoid":
        return sigmoid(y)
    if kind == "tanh":
        return xp.tanh(y)
    if kind == "clip":
        return clamp(y, None if a == -np.inf else a, None if b == np.inf else b) if torch_like else np.clip(y, a, b)
    if kind == "hard_sigmoid":
        return clamp(a * y + b, 0.0, 1.0)
    if kind == "hard_swish":
        return y * clamp(y / 6.0 + 0.5, 0.0, 1.0)
    if kind == "elu":
        return xp.where(y > 0, y, a * (xp.exp(clamp(y, None, 0.0) if torch_like else np.minimum(y, 0.0)) - 1.0))
    if kind == "softplus":
        return xp.logaddexp(y, xp.zeros_like(y)) if not torch_like else xp.nn.functional.softplus(y)
    if kind == "silu":
        return y * sigmoid(y)
    if kind == "maxout":
        k = int(a)
        parts = y.reshape(*y.shape[:-1], k, y.shape[-1] // k)
        return parts.amax(-2) if torch_like else parts.max(-2)
    raise ValueError(f"unknown activation {kind!r}")
