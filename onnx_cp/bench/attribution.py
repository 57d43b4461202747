"""Map the node names in onnxruntime's profile back to layers of the original model.

What onnxruntime 1.2x/1.3x calls a node in a profile (``<name>_kernel_time`` events):

* a node of the loaded model keeps its name; an unnamed one is ``<OpType>_<k>``, k its index in
  ``graph.node`` not counting Constant nodes (onnxruntime turns those into initializers on load);
* most fusions keep the name of the node they absorb into (Conv+BatchNormalization,
  Conv+Relu/Clip/... -> FusedConv), some decorate it (``fc/MatMulAddFusion``,
  ``fused fc/MatMulAddFusion``, QDQ -> QLinearConv ``conv_token_11``);
* the NCHWc layout transformer (level ``all``) names each converted node after its *output
  tensor*: ``<output>_nchwc``, where the output is that of the already-fused node (so a Conv+Relu
  becomes ``<relu output>_nchwc``), and inserts ``ReorderInput``/``ReorderOutput`` nodes (and, for
  quantized models, ``Transpose`` nodes) with generated names such as ``ReorderOutput_token_9``.

A layer is one node of the original model: a rewritten model's ``<conv>/cp/*`` nodes count as
``<conv>``; QuantizeLinear nodes count with the node they quantize the output of, and
DequantizeLinear nodes with the single layer that consumes them. At the graph's edges, where that
node is missing, the pair counts with the layer it is there for: a graph input's QuantizeLinear
with the layer its DequantizeLinear feeds, a graph output's DequantizeLinear with the layer whose
output it restores (which then lists the graph output among its outputs, as its float original
did). Generated layout nodes count with the layer they convert for (ReorderInput / NCHW->NHWC
Transpose: the consumer; ReorderOutput / NHWC->NCHW Transpose: the producer), which needs
onnxruntime's optimized graph. Anything else keeps its own name and is marked unmapped; nothing
is dropped.
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Mapping

import onnx

from onnx_cp.provenance import CpLayer

_BOUNDARIES = "/_ "
# Ops that onnxruntime fuses into a preceding Conv/pool before the NCHWc transformer names it.
_FUSABLE = frozenset({
    "BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "HardSwish",
    "Add", "Sum", "Mul", "Div", "Sub", "Identity", "Dropout",
})
_GLUE = frozenset({"QuantizeLinear", "DequantizeLinear"})
_TO_CHANNELS_LAST = [0, 2, 3, 1]
_TO_CHANNELS_FIRST = [0, 3, 1, 2]


@dataclass(frozen=True)
class Resolved:
    """Where a profiled node's time goes: ``layer``, and ``how`` that was decided."""

    layer: str
    how: str  # name | fused | nchwc | prefix | layout | neighbours | unmapped

    @property
    def mapped(self) -> bool:
        return self.how != "unmapped"


class Attribution:
    """Name resolution for one model: ``model`` as given to onnxruntime, ``optimized`` its
    optimized graph as onnxruntime saved it (optional; without it generated layout nodes stay
    unmapped), ``cp_layers`` from ``read_cp_layers(model)``."""

    def __init__(self, model: onnx.ModelProto, cp_layers: Mapping[str, CpLayer],
                 optimized: onnx.GraphProto | None = None):
        nodes = list(model.graph.node)
        self._nodes = nodes
        self.display = ort_node_names(model.graph)
        self._index = {}
        for i, name in enumerate(self.display):
            self._index.setdefault(name, i)
        self._producer: dict[str, int] = {}
        self._consumers: dict[str, list[int]] = {}
        for i, n in enumerate(nodes):
            for t in n.output:
                if t:
                    self._producer[t] = i
            for t in n.input:
                if t:
                    self._consumers.setdefault(t, []).append(i)
        cp_of = {name: layer.node for layer in cp_layers.values() for name in layer.nodes}
        base = [cp_of.get(name, name) for name in self.display]
        self._base = base
        self.keys = [self._glue_key(i, base) for i in range(len(nodes))]
        # a layer sits where its own node runs, not where its (dependency-free) weight dequantizers do
        self.order: dict[str, int] = {}
        topological = self._topological()
        for position, i in enumerate(topological):
            if base[i] == self.keys[i]:
                self.order.setdefault(self.keys[i], position)
        for position, i in enumerate(topological):
            self.order.setdefault(self.keys[i], position)
        self.op: dict[str, str] = {}
        for i, key in enumerate(self.keys):
            if base[i] == key and key not in self.op:
                self.op[key] = "Conv" if key in cp_layers else nodes[i].op_type
        self.outputs = self._layer_outputs(model)
        self._optimized = self._resolve_optimized(optimized) if optimized is not None else {}

    # -- public -------------------------------------------------------------------------
    def resolve(self, profile_name: str, op: str | None = None) -> Resolved:
        """The layer of a profiled node, given its name (without ``_kernel_time``) and op."""
        if profile_name in self._optimized:
            return self._optimized[profile_name]
        hit = self._by_name(profile_name, op)
        if hit is None:
            return Resolved(profile_name, "unmapped")
        index, how = hit
        return Resolved(self.keys[index], how)

    # -- the loaded model ---------------------------------------------------------------
    def _glue_key(self, i: int, base: list[str]) -> str:
        node = self._nodes[i]
        if node.op_type not in _GLUE or not node.input:
            return base[i]
        if node.op_type == "QuantizeLinear":
            p = self._producer.get(node.input[0])
            if p is None:  # quantizes a graph input: there for the layer its dequantizers feed
                served = {base[c] for d in self._consumers_of(i) if self._nodes[d].op_type == "DequantizeLinear"
                          for c in self._consumers_of(d)}
                return served.pop() if len(served) == 1 else base[i]
            return base[p] if self._nodes[p].op_type not in _GLUE else base[i]
        consumers = {base[c] for c in self._consumers_of(i)}
        q = self._producer.get(node.input[0])
        if not consumers and q is not None and self._nodes[q].op_type == "QuantizeLinear":
            # restores a graph output: there for the layer whose output its quantizer took
            p = self._producer.get(self._nodes[q].input[0])
            if p is not None and self._nodes[p].op_type not in _GLUE:
                return base[p]
        return consumers.pop() if len(consumers) == 1 else base[i]

    def _consumers_of(self, i: int) -> list[int]:
        return [c for t in self._nodes[i].output for c in self._consumers.get(t, ())]

    def _topological(self) -> list[int]:
        """Node indices in execution order (quantizers may append nodes out of order), stable."""
        waiting = [sum(1 for t in set(n.input) if t in self._producer) for n in self._nodes]
        ready = [i for i, w in enumerate(waiting) if w == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for t in set(self._nodes[i].output):
                for c in set(self._consumers.get(t, ())):
                    waiting[c] -= 1
                    if waiting[c] == 0:
                        heapq.heappush(ready, c)
        placed = set(order)
        return order + [i for i in range(len(self._nodes)) if i not in placed]  # cycles: should not happen

    def _layer_outputs(self, model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
        """Per layer, the tensors its own (non-glue) nodes hand to other layers or the graph, and the
        graph outputs its glue restores."""
        graph_outputs = {o.name for o in model.graph.output}
        outputs: dict[str, list[str]] = {}
        for i, n in enumerate(self._nodes):
            key = self.keys[i]
            own = self._base[i] == key  # glue counted with another layer hands on only graph outputs
            for t in n.output:
                leaves = own and any(self._base[c] != key for c in self._consumers.get(t, ()))
                if t and (leaves or t in graph_outputs):
                    outputs.setdefault(key, []).append(t)
        return {k: tuple(v) for k, v in outputs.items()}

    def _by_name(self, name: str, op: str | None) -> tuple[int, str] | None:
        if name in self._index:
            return self._index[name], "name"
        if name.startswith("fused ") and name[6:] in self._index:
            return self._index[name[6:]], "fused"
        if name.endswith("_nchwc") and name[:-6] in self._producer:
            return self._walk_to(self._producer[name[:-6]], op), "nchwc"
        stem = name[6:] if name.startswith("fused ") else name
        for j in range(len(stem) - 1, 0, -1):
            if stem[j] in _BOUNDARIES and stem[:j] in self._index:
                return self._index[stem[:j]], "prefix"
        return None

    def _walk_to(self, start: int, op: str | None) -> int:
        """From the producer of an NCHWc node's output, back through fused activations to ``op``."""
        if op is None or self._nodes[start].op_type == op:
            return start
        queue, seen = deque([(start, 0)]), {start}
        while queue:
            i, depth = queue.popleft()
            if self._nodes[i].op_type == op:
                return i
            if self._nodes[i].op_type not in _FUSABLE or depth >= 4:
                continue
            for t in self._nodes[i].input:
                p = self._producer.get(t)
                if p is not None and p not in seen:
                    seen.add(p)
                    queue.append((p, depth + 1))
        return start

    # -- onnxruntime's optimized graph ---------------------------------------------------
    def _resolve_optimized(self, graph: onnx.GraphProto) -> dict[str, Resolved]:
        nodes = list(graph.node)
        names = []
        for n in nodes:
            if n.name:
                names.append(n.name)
            else:  # an untouched unnamed node: find it in the loaded model by its output
                p = self._producer.get(n.output[0]) if n.output else None
                names.append(self.display[p] if p is not None else f"{n.op_type}_?")
        producer = {t: j for j, n in enumerate(nodes) for t in n.output if t}
        consumers: dict[str, list[int]] = {}
        for j, n in enumerate(nodes):
            for t in n.input:
                if t:
                    consumers.setdefault(t, []).append(j)
        found: dict[int, Resolved] = {}
        for j, n in enumerate(nodes):
            hit = self._by_name(names[j], n.op_type)
            if hit is not None:
                found[j] = Resolved(self.keys[hit[0]], hit[1])
        pending = [j for j in range(len(nodes)) if j not in found]
        changed = True
        while pending and changed:
            changed = False
            for j in list(pending):
                n = nodes[j]
                up = [found[producer[t]].layer for t in n.input if t in producer and producer[t] in found]
                down = [found[c].layer for t in n.output for c in consumers.get(t, ()) if c in found]
                direction = _layout_direction(n)
                if direction == "down" and down:
                    found[j] = Resolved(down[0], "layout")
                elif direction == "up" and up:
                    found[j] = Resolved(up[0], "layout")
                elif direction is None and up and down and len(set(up + down)) == 1:
                    found[j] = Resolved((up + down)[0], "neighbours")
                else:
                    continue
                pending.remove(j)
                changed = True
        return {names[j]: found.get(j, Resolved(names[j], "unmapped")) for j in range(len(nodes))}


def ort_node_names(graph: onnx.GraphProto) -> list[str]:
    """Each node's name as onnxruntime reports it: its own, or ``<OpType>_<k>`` for an unnamed one."""
    names, k = [], 0
    for node in graph.node:
        names.append(node.name or f"{node.op_type}_{k}")
        if not (node.op_type == "Constant" and node.domain in ("", "ai.onnx")):
            k += 1
    return names


def _layout_direction(node: onnx.NodeProto) -> str | None:
    """"down" for nodes converting a layer's input, "up" for those converting its output."""
    if node.op_type == "ReorderInput":
        return "down"
    if node.op_type == "ReorderOutput":
        return "up"
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm == _TO_CHANNELS_LAST:
            return "down"
        if perm == _TO_CHANNELS_FIRST:
            return "up"
    return None
