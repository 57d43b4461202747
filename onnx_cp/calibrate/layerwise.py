"""Recovery of every rewritten layer, in graph order, fed by the already-rewritten prefix.

Layers are taken in waves: a layer's wave is one more than the latest wave of any rewritten
layer upstream of its input, so one onnxruntime pass of the model with the earlier waves
recovered gives every layer of a wave its real (prefix-fed) inputs, and errors do not pile up.
Only the small chains of the rewritten layers are trained, whatever their decomposition; the
rest of the model runs as it is in onnxruntime, whatever its ops.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_cp.calibrate.activations import stream
from onnx_cp.calibrate.follow import following
from onnx_cp.calibrate.observe import Observation
from onnx_cp.calibrate.patches import extract
from onnx_cp.calibrate.block import gather, next_block, refine
from onnx_cp.calibrate.recovery import Pairs, Recovered, RecoveryOptions, output_error, recover
from onnx_cp.decompositions import for_form
from onnx_cp.graph import GraphIndex, NameAllocator, all_names, subgraph_reads
from onnx_cp.progress import Progress
from onnx_cp.splice import Replacement, splice



@dataclass(frozen=True)
class LayerRecovery:
    """One layer after recovery: its new factors and bias, and how it went."""

    replacement: Replacement
    bias: np.ndarray
    result: Recovered | None  # None when the layer could not be trained (reason says why)
    activation: str
    reason: str | None = None

    def report(self) -> tuple[float | None, float | None, str]:
        """(held-back output error before, after, what was done) for the layer's report row."""
        if self.result is None:
            return None, None, f"not recovered: {self.reason}"
        r = self.result
        how = f"{r.method} ({r.steps} steps)" if r.method == "adam" else r.method
        return r.error_before, r.error_after, f"{how}, target after {self.activation}"


def upstream(model: onnx.ModelProto, keys: Sequence[str]) -> dict[str, frozenset[str]]:
    """Each of ``keys`` (rewritten layers' outputs): the others upstream of its input."""
    wanted = set(keys)
    above_of: dict[str, frozenset[str]] = {}
    found: dict[str, frozenset[str]] = {}
    for node in model.graph.node:
        above = frozenset().union(*(above_of.get(i, frozenset()) for i in node.input if i))
        out = node.output[0] if node.output else None
        if out in wanted:
            found[out] = above
            above = above | {out}
        for o in node.output:
            above_of[o] = above
    return found


def waves(model: onnx.ModelProto, keys: Sequence[str]) -> dict[str, int]:
    """Each rewritten layer's wave (0: no rewritten layer upstream of its input)."""
    wave: dict[str, int] = {}
    for key, above in upstream(model, keys).items():  # graph order: the layers above come first
        wave[key] = 1 + max((wave[k] for k in above), default=-1)
    return wave


# Adam's learning rate is set for a chain of this many terms and falls as 1/sqrt(terms) above it:
# the output moves by the sum of the terms' steps. On charcnn36's 128x24x9x9 layer at rank 48 the
# recovered model read 89.4% of held-out crops at lr 1e-2, 91.0% at 5e-3 and 90.8% at 2e-3
# (tools/recovery_lr.py). A Tucker-2 chain counts the geometric mean of its ranks
# (Decomposition.terms): left unscaled, a VGG-16 rewrite's 128x128 and 256x256 layers came out of
# Adam no better than fitted, and the model's held-back error was 0.0437; scaled, 0.0215
# (docs/results/int8.md).
LR_RANK = 16


def rank_scaled_lr(lr: float, terms: int | None) -> float:
    """``lr`` for a chain whose outputs sum ``terms`` terms (None keeps ``lr``)."""
    return lr * min(1.0, math.sqrt(LR_RANK / terms)) if terms else lr


def recover_layers(model: onnx.ModelProto, replacements: Sequence[Replacement], observed: dict[str, Observation],
                   x: np.ndarray, options: RecoveryOptions, max_time: float | None, threads: int = 1,
                   progress: Progress | None = None, fixed: Sequence[Replacement] = (),
                   memo: dict | None = None) -> list[LayerRecovery]:
    """Every replacement recovered on its layer's prefix-fed patches (``x``: the calibration
    inputs that ``observed`` was measured on); ``fixed``: rewritten layers that are not trained,
    in the prefix as they are. ``memo`` (kept by the caller across calls with the same ``x``):
    a layer recovered before with the same options, factors and rewritten layers upstream is
    taken from it, not trained again (a search scores allocations that share their first layers)."""
    index = GraphIndex(model.graph)
    order = waves(model, [r.site.key for r in replacements])
    keys = _memo_keys(model, list(replacements) + list(fixed), options) if memo is not None else {}
    done: list[LayerRecovery] = []
    start = time.perf_counter()
    todo = sorted(replacements, key=lambda r: order[r.site.key])
    base = options
    for w in sorted(set(order.values())):
        wave = [r for r in todo if order[r.site.key] == w]
        done += [memo[keys[r.site.key]] for r in wave if keys.get(r.site.key) in (memo or {})]
        layer_reps = [r for r in wave if keys.get(r.site.key) not in (memo or {})]
        if not layer_reps:
            continue
        prefix = apply(model, done, fixed)
        inputs = _prefix_patches(prefix, layer_reps, observed, x, threads)
        for rep in layer_reps:
            options = replace(base, lr=rank_scaled_lr(base.lr, for_form(rep.form).terms(rep.rank)))
            if progress:
                progress(rep.site.name, len(done), len(replacements))
            left = None if max_time is None else max(0.0, max_time - (time.perf_counter() - start))
            share = None if left is None else left / (len(replacements) - len(done))
            block = next_block(index, rep.site.spec, following(index, rep.site.node), options.block) \
                if options.block else None
            seen, patches = observed[rep.site.key], inputs.pop(rep.site.key)
            if block is not None and len(rep.factors) == 1 and for_form(rep.form).block_refinable:
                first = _recover_one(index, rep, seen, patches,
                                     replace(options, max_time=None if share is None else share / 2, threads=threads))
                left = None if max_time is None else max(0.0, max_time - (time.perf_counter() - start))
                done.append(_refine_block(model, prefix, index, first, block, x, seen, patches[seen.held],
                                          replace(options, max_time=left if share is None else min(left, share / 2),
                                                  threads=threads)))
            else:
                done.append(_recover_one(index, rep, seen, patches, replace(options, max_time=share, threads=threads)))
            if memo is not None:
                memo[keys[rep.site.key]] = done[-1]
    return done


def _memo_keys(model: onnx.ModelProto, reps: Sequence[Replacement], options: RecoveryOptions) -> dict[str, tuple]:
    """Each replacement's recovery key: its options, itself and every rewritten layer upstream of it
    (what its recovered factors depend on; a run cut short by its time limit is kept as it came)."""
    own = {r.site.key: _identity(r) for r in reps}
    above = upstream(model, list(own))
    return {k: (options, own[k], tuple(sorted(own[u] for u in above.get(k, ())))) for k in own}


def _identity(rep: Replacement) -> tuple:
    digest = hashlib.blake2b(digest_size=16)
    for group in rep.factors:
        for factor in group:
            digest.update(np.ascontiguousarray(factor).tobytes())
    return rep.site.key, rep.form, str(rep.rank), digest.hexdigest()


def _refine_block(model: onnx.ModelProto, prefix: onnx.ModelProto, index: GraphIndex, layer: LayerRecovery, block,
                  x: np.ndarray, seen: Observation, held_patches: np.ndarray, options: RecoveryOptions
                  ) -> LayerRecovery:
    """``layer`` trained further on the next Conv's output (``block``), kept when that lowers
    the next Conv's held-back output error (``held_patches``: the layer's own held-back
    patches, read from ``prefix``)."""
    if layer.result is None:
        return layer
    rep, site = layer.replacement, layer.replacement.site
    out_hw = tuple(site.out_shape[2:])
    block_hw = block.out_hw(out_hw)
    if min(block_hw) < 1:
        return layer
    train = int(seen.positions.sample[seen.held].min()) if len(seen.held) else len(x)
    regions, targets, held = gather(model, prefix, site.node.input[0], site.spec, block, tuple(site.in_shape[2:]),
                                    out_hw, block_hw, x, train, options.block_samples, options.seed, options.threads)
    act = following(index, site.node)
    factors, bias, before, after, steps = refine(regions, targets, held, rep.factors[0], layer.bias, site.spec, act,
                                                 block, options.steps, options.lr, options.batch // 4,
                                                 options.max_time, options.seed, options.threads)
    if not after < before:
        return layer
    r = layer.result
    note = f"{r.method} ({r.steps} steps) + block on {block.node.name or block.node.output[0]} " \
           f"({steps} steps, its output err {before:.3f}>{after:.3f})"
    own = r.error_after
    if len(seen.held):
        own = output_error(Pairs(held_patches, seen.targets[seen.held]), for_form(rep.form), [factors], bias, act)
    result = replace(r, factors=(tuple(factors),), bias=bias, error_after=own, method=note, steps=r.steps + steps)
    return LayerRecovery(replace(rep, factors=[tuple(factors)]), bias, result, layer.activation)


def _recover_one(index: GraphIndex, rep: Replacement, seen: Observation, patches: np.ndarray,
                 options: RecoveryOptions) -> LayerRecovery:
    act = following(index, rep.site.node)
    bias = None
    if rep.site.bias is not None:
        value = index.constant(rep.site.bias)
        if isinstance(value, str):
            zero = np.zeros(rep.site.spec.out_channels)
            return LayerRecovery(rep, zero, None, act.kind, f"bias is not constant: {value}")
        bias = value.value.astype(np.float64)
    train, held = Pairs(patches, seen.targets).split(seen.held)
    result = recover(train, held if len(held.targets) else train, for_form(rep.form), rep.factors, bias, act, options)
    return LayerRecovery(replace(rep, factors=result.factors), result.bias, result, act.kind)


def _prefix_patches(prefix: onnx.ModelProto, reps: Sequence[Replacement], observed: dict[str, Observation],
                    x: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Each layer's patches at its observed positions, read from ``prefix``."""
    parts: dict[str, list[np.ndarray]] = {r.site.key: [] for r in reps}
    for start, values in stream(prefix, [r.site.node.input[0] for r in reps], x, threads=threads):
        for r in reps:
            parts[r.site.key].append(extract(values[r.site.node.input[0]], start, observed[r.site.key].positions,
                                             r.site.spec, tuple(r.site.out_shape[2:])))
    return {k: np.concatenate(v) for k, v in parts.items()}


def apply(model: onnx.ModelProto, layers: Sequence[LayerRecovery], fixed: Sequence[Replacement] = ()
          ) -> onnx.ModelProto:
    """A copy of ``model`` with the recovered layers spliced in, biases included, and the ``fixed``
    replacements as they are."""
    out, _ = splice(model, [l.replacement for l in layers] + list(fixed))
    set_biases(out, {l.replacement.site.key: l.bias for l in layers if l.result is not None})
    return out


def set_biases(model: onnx.ModelProto, biases: dict[str, np.ndarray]) -> None:
    """Give the node writing each key (a rewritten layer's last stage) its new bias, in place;
    the old bias initializer goes when nothing else reads it."""
    if not biases:
        return
    graph = model.graph
    names = NameAllocator(all_names(model))
    old = set()
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        key = node.output[0] if node.output else None
        if key not in biases:
            continue
        weight = inits.get(node.input[1])
        dtype = numpy_helper.to_array(weight).dtype if weight is not None else np.float32
        name = names.fresh(f"{node.name}.recovered_bias")
        tensor = numpy_helper.from_array(biases[key].astype(dtype), name)
        graph.initializer.append(tensor)
        if model.ir_version < 4:  # IR < 4: every initializer must also be a graph input
            graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
        if len(node.input) > 2 and node.input[2]:
            old.add(node.input[2])
            node.input[2] = name
        else:
            node.input.append(name)
    dead = old - {i for n in graph.node for i in n.input} - {o.name for o in graph.output} - subgraph_reads(graph)
    for container in (graph.initializer, graph.input):
        for i in reversed(range(len(container))):
            if container[i].name in dead:
                del container[i]
