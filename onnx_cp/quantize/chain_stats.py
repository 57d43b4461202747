"""What INT8 needs to know of a model's low-rank chains from the calibration inputs, in one pass:
each link tensor's per-channel range, and each rounded stage's input second moments (over the
input patches it reads: for a 1x1 stage its input pixels, for a kh x kw core or depthwise stage
its kh x kw windows, in its weight's column order)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx

from onnx_cp.calibrate.activations import probe
from onnx_cp.conv import attributes
from onnx_cp.quantize.chains import Chains
from onnx_cp.runtime import open_session, session_options

# Patches that enter a stage's second moment, spread evenly over the feeds: GPTQ needs H's
# correlations, not every pixel, and the products x x^T are what the pass costs (a trained
# VGG-16's 24 CP pointwise stages over 64 calibration images: 45 s with every pixel).
SAMPLES = 1 << 15
# A stage whose patch is wider than this (input channels per group x kernel area) keeps
# onnxruntime's rounding: H is COLUMNS^2 float64 (170 MB at 4608, a 512-channel 3x3 core) and
# GPTQ inverts it.
MAX_COLUMNS = 4608
# Patches multiplied at once: bounds the memory of one product (rows x columns float32).
CHUNK = 4096


@dataclass
class ChainStatistics:
    low: dict[str, np.ndarray] = field(default_factory=dict)  # link tensor -> per-channel minimum
    high: dict[str, np.ndarray] = field(default_factory=dict)  # link tensor -> per-channel maximum
    # stage -> per group, the mean of x x^T over the input patches it reads (float64)
    moments: dict[str, list[np.ndarray]] = field(default_factory=dict)


def chain_statistics(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], chains: Chains, *,
                     threads: int = 1) -> ChainStatistics:
    nodes = {node.name: node for node in model.graph.node}
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    # a stage's patch width: its weight's input channels per group x kernel area
    readers = {name: nodes[name] for name in chains.stages
               if int(np.prod(weights[nodes[name].input[1]][1:])) <= MAX_COLUMNS}
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
            window = Window.of(node, weights[node.input[1]][2:])
            value = window.padded(values[node.input[0]])
            groups = attributes(node).get("group", 1)
            positions = window.positions(value.shape, per_feed)
            for start in range(0, len(positions), CHUNK):
                rows = window.patches(value, positions[start:start + CHUNK])
                width = rows.shape[1] // groups
                blocks = [rows[:, g * width:(g + 1) * width] for g in range(groups)]
                products = [np.dot(b.T.copy(), b).astype(np.float64) for b in blocks]  # 1.5x syrk's speed
                sums[name] = products if name not in sums else [s + p for s, p in zip(sums[name], products)]
                counts[name] = counts.get(name, 0) + len(rows)
    stats.moments = {name: [s / max(counts[name], 1) for s in parts] for name, parts in sums.items()}
    return stats


@dataclass(frozen=True)
class Window:
    """Where a Conv's output positions read its input: kernel, strides, dilations, padding."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # begins, then ends, as ONNX writes them

    @classmethod
    def of(cls, node: onnx.NodeProto, kernel: tuple[int, ...]) -> "Window":
        attrs, dims = attributes(node), len(kernel)
        return cls(tuple(kernel), tuple(attrs.get("strides", [1] * dims)), tuple(attrs.get("dilations", [1] * dims)),
                   tuple(attrs.get("pads", [0] * 2 * dims)))

    def padded(self, value: np.ndarray) -> np.ndarray:
        dims = len(self.kernel)
        if not any(self.pads):
            return value
        return np.pad(value, [(0, 0), (0, 0)] + [(self.pads[i], self.pads[i + dims]) for i in range(dims)])

    def positions(self, shape: tuple[int, ...], most: int) -> np.ndarray:
        """Flat indices (sample, output position) of at most ``most`` outputs, evenly spread."""
        total = shape[0] * int(np.prod(self.output_shape(shape)))
        return np.arange(0, total, -(-total // most))

    def output_shape(self, shape: tuple[int, ...]) -> list[int]:
        """The output's spatial shape over a padded input of ``shape``."""
        return [(size - d * (k - 1) - 1) // s + 1
                for size, k, s, d in zip(shape[2:], self.kernel, self.strides, self.dilations)]

    def patches(self, value: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One row per position: the padded input's patch it reads, (channels, kernel...) across."""
        dims = len(self.kernel)
        sample, *where = np.unravel_index(positions, (value.shape[0], *self.output_shape(value.shape)))
        index = [sample.reshape(-1, *[1] * dims)]
        for axis, (at, k, s, d) in enumerate(zip(where, self.kernel, self.strides, self.dilations)):
            shape = [-1] + [1] * dims
            shape[1 + axis] = k
            index.append(at.reshape(-1, *[1] * dims) * s + (np.arange(k) * d).reshape(shape))
        picked = value[(index[0], slice(None), *index[1:])]  # (rows, kernel..., channels): advanced axes first
        rows = np.moveaxis(picked, -1, 1).reshape(len(positions), -1)
        return np.ascontiguousarray(rows, dtype=np.float32)
