"""The parts of a low-rank rewrite's chains that INT8 treats apart: the tensors between two of a
chain's Convs (``links``) and the chain's Convs whose int8 weights are rounded for their outputs
(``stages``: those with weights of their own).

A chain (``<layer>/cp/reduce|vertical|horizontal|expand``, ``<layer>/tucker2/...``, ...) is read
from the model's ``onnx_cp`` metadata entry, or from its nodes' names (provenance.read_cp_layers). A link is a Conv feeding the next
Conv of its chain through a tensor nothing else reads; both take their weights (and biases) from
initializers that no other node reads, so scaling them changes nothing outside the link.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnx_cp.provenance import read_cp_layers


@dataclass(frozen=True)
class Link:
    """``producer`` writes ``tensor`` (its channels are the producer's output channels), which
    only ``consumer`` reads, as its data input."""

    producer: str
    consumer: str
    tensor: str


@dataclass(frozen=True)
class Chains:
    links: tuple[Link, ...]
    stages: tuple[str, ...]  # the chains' Convs (names) whose rounding sees their inputs

    def __bool__(self) -> bool:
        return bool(self.links or self.stages)


def find_chains(model: onnx.ModelProto) -> Chains:
    """The links and rounded stages of ``model``'s low-rank chains (none without the metadata)."""
    graph = model.graph
    nodes = {node.name: node for node in graph.node if node.name}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    dims = {init.name: tuple(init.dims) for init in graph.initializer}

    def own_weights(node: onnx.NodeProto) -> bool:
        params = [t for t in node.input[1:] if t]
        return node.op_type == "Conv" and len(node.input) >= 2 and \
            all(t in dims and readers.get(t) == 1 for t in params)

    links, stages = [], []
    for layer in read_cp_layers(model)[0].values():
        chain = [nodes[name] for name in layer.nodes if name in nodes]
        for node in chain:
            if own_weights(node):
                stages.append(node.name)
        for producer, consumer in zip(chain, chain[1:]):
            tensor = producer.output[0]
            if (own_weights(producer) and own_weights(consumer) and consumer.input[0] == tensor
                    and readers.get(tensor) == 1 and tensor not in outputs):
                links.append(Link(producer.name, consumer.name, tensor))
    return Chains(tuple(links), tuple(dict.fromkeys(stages)))
