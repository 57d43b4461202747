"""Replace Conv nodes in a graph by their factored forms: realize, splice in place, drop dead weights.

Knows ONNX and the realizations, nothing of how factors were fitted or ranks chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_cp.decompositions.nodes import Realization
from onnx_cp.graph import GraphIndex, NameAllocator, all_names, subgraph_reads
from onnx_cp.sites import Site


@dataclass(frozen=True)
class Replacement:
    """One layer to replace: its site, the form (cp4, cp3, tucker2, svd, gkpd, lrcp4, lrcp3:
    ``decompositions.for_form`` finds its decomposition), the rank and the per-group factors."""

    site: Site
    form: str
    rank: object  # the decomposition's rank: an int, a pair, (terms, split)
    factors: Sequence[tuple[np.ndarray, ...]]

    def realize(self, names: NameAllocator) -> Realization:
        return self.site.realize(self.form, self.factors, names)

    @classmethod
    def placeholder(cls, site: Site, form: str, rank, seed: int = 0) -> "Replacement":
        """``site`` in ``form`` at ``rank`` with random factors: enough to time it."""
        return cls(site, form, rank, site.placeholder(form, rank, seed))


def splice(model: onnx.ModelProto, replacements: Sequence[Replacement], *, in_place: bool = False
           ) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
    """``model`` (a copy unless ``in_place``) with every replacement realized, and the new node
    names per replaced site (keyed by ``ConvSite.key``)."""
    if in_place:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    names = NameAllocator(all_names(model))
    position = {site_key: i for i, node in enumerate(model.graph.node) for site_key in node.output[:1]}
    by_position: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    new_names: dict[str, list[str]] = {}
    index = GraphIndex(model.graph)
    folded: list[str] = []
    shared = _SharedWeights()
    for rep in replacements:
        site = rep.site
        part = rep.realize(names)
        folded.extend(_fold_gathers(part, index))
        by_position[position[site.key]] = part.nodes
        new_inits.extend(shared.add(part, site.weight_source))
        new_names[site.key] = [n.name for n in part.nodes]
    _apply(out, by_position, new_inits, [rep.site for rep in replacements], folded)
    return out, new_names


class _SharedWeights:
    """The new weights of nodes that read one weight (an RNN unrolled into a Gemm per step), each
    value stored once: they get equal factors wherever nothing fitted them apart, and twenty copies
    of one factor pair would make the written model larger than its input. Equal values of layers
    with weights of their own stay apart: recovery and distillation may set them apart later."""

    def __init__(self):
        self.seen: dict[tuple, onnx.TensorProto] = {}

    def add(self, part: Realization, weight: str | None) -> list[onnx.TensorProto]:
        """``part``'s initializers not already added for ``weight`` (the replaced node's weight);
        its nodes read the earlier copy of the others."""
        kept, renamed = [], {}
        for tensor in part.initializers:
            key = (weight, tensor.data_type, tuple(tensor.dims), tensor.raw_data) if weight and tensor.raw_data \
                else None
            if key in self.seen:
                renamed[tensor.name] = self.seen[key].name
                continue
            if key is not None:
                self.seen[key] = tensor
            kept.append(tensor)
        for node in part.nodes:
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name]
        return kept


def _fold_gathers(part: Realization, index: GraphIndex) -> list[str]:
    """Gathers of constants in ``part`` (gkpd's reordered bias) become initializers, which every
    consumer reads (onnx2torch's Conv takes its bias from an initializer only); the constants
    they read are returned, to be dropped when nothing else reads them."""
    own = {t.name: t for t in part.initializers}
    read = []
    for node in [n for n in part.nodes if n.op_type == "Gather" and n.input[1] in own]:
        data = index.constant(node.input[0])
        if isinstance(data, str):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        value = np.take(data.value, numpy_helper.to_array(own[node.input[1]]), axis=axis)
        part.nodes.remove(node)
        part.initializers.remove(own.pop(node.input[1]))
        part.initializers.append(numpy_helper.from_array(value, node.output[0]))
        read.append(node.input[0])
    return read


def _apply(model: onnx.ModelProto, replacements: dict[int, list[onnx.NodeProto]],
           new_inits: list[onnx.TensorProto], replaced: list[Site], folded: Sequence[str] = ()) -> None:
    """Splice the new nodes in place (keeps topological order), then drop weights nobody reads."""
    graph = model.graph
    if not replacements:
        return
    nodes = []
    for i, node in enumerate(graph.node):
        nodes.extend(replacements.get(i, [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    if model.ir_version < 4:  # IR < 4: every initializer must also be a graph input
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                           for t in new_inits)
    candidates = list(folded)
    for site in replaced:
        candidates.extend([site.weight.source, *site.weight.via])
    _remove_dead(graph, candidates)


def _remove_dead(graph: onnx.GraphProto, candidates: list[str]) -> None:
    """Remove the given tensors' producers and initializers once nothing reads them any more."""
    for _ in range(len(candidates) + 1):
        index = GraphIndex(graph)
        used = set(index.consumers) | index.graph_outputs | subgraph_reads(graph)
        dead = [name for name in candidates if name not in used]
        if not dead:
            return
        dead_set = set(dead)
        keep = [n for n in graph.node if not (set(n.output) & dead_set and not set(n.output) - dead_set - {""})]
        removed_inputs = [i for n in graph.node if n not in keep for i in n.input]
        del graph.node[:]
        graph.node.extend(keep)
        # Delete in place: clearing and re-adding the survivors would copy every weight.
        for field_name in ("initializer", "input", "value_info"):
            container = getattr(graph, field_name)
            for i in reversed(range(len(container))):
                if container[i].name in dead_set:
                    del container[i]
        candidates = [c for c in candidates if c not in dead_set] + removed_inputs
