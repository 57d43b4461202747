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
from onnx_cp.calibrate.patches import Positions, extract, output_hw, sample_positions
from onnx_cp.conv import conv_spec
from onnx_cp.quantize.chains import Chains
from onnx_cp.runtime import open_session, session_options

# Patches that enter a stage's second moment, spread evenly over the feeds (positions sampled,
# seeded): GPTQ needs H's correlations, not every pixel, and the products x x^T are what the pass
# costs (a trained VGG-16's 24 CP pointwise stages over 64 calibration images: 45 s with every pixel).
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
                     threads: int = 1, seed: int = 0) -> ChainStatistics:
    nodes = {node.name: node for node in model.graph.node}
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    specs = {name: conv_spec(nodes[name], weights[nodes[name].input[1]]) for name in chains.stages}
    # a stage's patch width is its weight's input channels per group x kernel area
    readers = {name: nodes[name] for name, spec in specs.items()
               if not isinstance(spec, str) and int(np.prod(weights[nodes[name].input[1]][1:])) <= MAX_COLUMNS}
    wanted = list(dict.fromkeys([link.tensor for link in chains.links] + [n.input[0] for n in readers.values()]))
    fed = {i.name for i in model.graph.input}
    inner = [t for t in wanted if t not in fed]
    session = open_session(probe(model, inner), session_options(threads=threads)) if inner else None
    stats = ChainStatistics()
    sums: dict[str, list[np.ndarray]] = {}
    counts: dict[str, int] = {}
    per_feed = -(-SAMPLES // max(len(feeds), 1))
    rng = np.random.default_rng(seed)
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
            x, spec = values[node.input[0]], specs[name]
            out_hw = output_hw(spec, x.shape[2:])
            positions = sample_positions(rng, range(len(x)), out_hw, per_feed)
            for start in range(0, len(positions), CHUNK):
                part = Positions(*(p[start:start + CHUNK] for p in (positions.sample, positions.row, positions.col)))
                rows = extract(x, 0, part, spec, out_hw).reshape(len(part), -1).astype(np.float32)
                width = rows.shape[1] // spec.group
                blocks = [rows[:, g * width:(g + 1) * width] for g in range(spec.group)]
                products = [np.dot(b.T.copy(), b).astype(np.float64) for b in blocks]  # 1.5x syrk's speed
                sums[name] = products if name not in sums else [s + p for s, p in zip(sums[name], products)]
                counts[name] = counts.get(name, 0) + len(rows)
    stats.moments = {name: [s / max(counts[name], 1) for s in parts] for name, parts in sums.items()}
    return stats
