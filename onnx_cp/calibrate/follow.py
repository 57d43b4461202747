"""The elementwise activation that follows a Conv, when the Conv's output feeds only it.

Recovery matches a layer's output after this activation (a ReLU hides errors on negative
outputs, so fitting them would waste the chain's capacity). Known: Relu, LeakyRelu, Sigmoid,
Tanh, Clip with constant bounds, HardSigmoid, HardSwish, Elu, Softplus, and SiLU written as
``Mul(y, Sigmoid(y))``. Anything else (pooling, maxout, a second consumer) means the Conv's
own output is the target.
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

    kind: str  # identity | relu | leaky_relu | sigmoid | tanh | clip | hard_sigmoid | hard_swish | elu | softplus | silu
    output: str
    alpha: float = 0.0
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


def _clip_bounds(index: GraphIndex, node: onnx.NodeProto, attrs: dict) -> tuple[float, float] | None:
    if "min" in attrs or "max" in attrs:  # opset < 11
        return float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(node.input) <= i or not node.input[i]:
            bounds.append(default)
            continue
        value = index.constant(node.input[i])
        if isinstance(value, str):
            return None
        bounds.append(float(np.asarray(value.value).reshape(-1)[0]))
    return bounds[0], bounds[1]


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
    raise ValueError(f"unknown activation {kind!r}")
