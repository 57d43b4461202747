"""What INT8 needs to know of a model's low-rank chains from the calibration inputs, in one pass:
each link tensor's per-channel range, and each pointwise stage's input second moments."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx

from onnx_cp.calibrate.activations import probe
from onnx_cp.conv import attributes
from onnx_cp.quantize.chains import Chains
from onnx_cp.runtime import open_session, session_options

# Pixels that enter a pointwise stage's second moment, spread evenly over the feeds: GPTQ needs
# H's correlations, not every pixel, and the products x x^T are what the pass costs (a trained
# VGG-16's 24 CP pointwise stages over 64 calibration images: 45 s with every pixel).
SAMPLES = 1 << 15


@dataclass
class ChainStatistics:
    low: dict[str, np.ndarray] = field(default_factory=dict)  # link tensor -> per-channel minimum
    high: dict[str, np.ndarray] = field(default_factory=dict)  # link tensor -> per-channel maximum
    # pointwise node -> per group, the mean of x x^T over the input pixels it reads (float64)
    moments: dict[str, list[np.ndarray]] = field(default_factory=dict)


def chain_statistics(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], chains: Chains, *,
                     threads: int = 1) -> ChainStatistics:
    nodes = {node.name: node for node in model.graph.node}
    readers = {name: nodes[name] for name in chains.pointwise}
    wanted = list(dict.fromkeys([link.tensor for link in chains.links] + [n.input[0] for n in readers.values()]))
    fed = {i.name for i in model.graph.input}
    inner = [t for t in wanted if t not in fed]
    session = open_session(probe(model, inner), session_options(threads=threads)) if inner else None
    stats = ChainStatistics()
    sums: dict[str, list[np.ndarray]] = {}
    counts: dict[str, int] = {}
    per_feed = -(-SAMPLES // max(len(feeds), 1))
    for feed in feeds:
        values = dict(zip(inner, session.run(inner, feed))) if session else {}
        values.update({t: feed[t] for t in wanted if t in fed})
        for link in chains.links:
            value = values[link.tensor]
            axes = tuple(a for a in range(value.ndim) if a != 1)
            low, high = value.min(axis=axes), value.max(axis=axes)
            stats.low[link.tensor] = low if link.tensor not in stats.low else np.minimum(stats.low[link.tensor], low)
            stats.high[link.tensor] = high if link.tensor not in stats.high else np.maximum(stats.high[link.tensor], high)
        for name, node in readers.items():
            pixels = _pixels(values[node.input[0]], node, per_feed)
            groups = attributes(node).get("group", 1)
            width = pixels.shape[1] // groups
            blocks = [pixels[:, g * width:(g + 1) * width] for g in range(groups)]
            products = [np.dot(b.T.copy(), b).astype(np.float64) for b in blocks]  # 1.5x syrk's speed
            sums[name] = products if name not in sums else [s + p for s, p in zip(sums[name], products)]
            counts[name] = counts.get(name, 0) + len(pixels)
    stats.moments = {name: [s / max(counts[name], 1) for s in parts] for name, parts in sums.items()}
    return stats


def _pixels(value: np.ndarray, node: onnx.NodeProto, most: int) -> np.ndarray:
    """The pixels a strided 1x1 Conv reads, one row each (channels across), at most ``most`` of
    them, evenly spread."""
    strides = attributes(node).get("strides", [1] * (value.ndim - 2))
    picked = value[(slice(None), slice(None), *(slice(None, None, s) for s in strides))]
    rows = np.moveaxis(picked, 1, -1).reshape(-1, value.shape[1])
    step = -(-len(rows) // most)
    return np.ascontiguousarray(rows[::step], dtype=np.float32)
