"""Every convolution in a model, with what it computes, what it costs, and whether the chosen
decomposition applies."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnx_cp import decompositions
from onnx_cp.conv import ConvSpec, conv_cost, conv_spec, ineligibility, shape_problem, weight_constant
from onnx_cp.errors import spelled
from onnx_cp.graph import Constant, GraphIndex, NameAllocator, display_name
from onnx_cp.sites.base import Site

CONV_LIKE = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "NhwcConv", "FusedConv")
# How a message tells the user to list the layers a pattern may name.
LIST_LAYERS = spelled("onnx_cp.inspect_model lists them", "run 'onnx-cp inspect' to list them")


@dataclass
class ConvSite(Site):
    """One Conv node; its kernel is fitted group by group."""

    observable = True

    def groups(self) -> list[np.ndarray]:
        """The kernel of each group, (out_per_group, in_per_group, kh, kw): each is fitted alone."""
        w, per = self.weight.value, self.spec.out_per_group
        return [w[g * per:(g + 1) * per] for g in range(self.spec.group)]

    @property
    def bias(self) -> str | None:
        node = self.node
        return node.input[2] if node is not None and len(node.input) > 2 and node.input[2] else None

    def realize(self, form, factors, names: NameAllocator):
        return decompositions.for_form(form).realize(form, self.name, self.node.input[0], self.node.output[0],
                                                     self.bias, self.spec, list(factors), self.weight.value.dtype,
                                                     names)


def find_convs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
               decomposition: str = decompositions.DEFAULT) -> list[ConvSite]:
    """Every convolution, eligible when ``decomposition`` (a name, or auto: any it tries) can
    rewrite it."""
    index = GraphIndex(model.graph)
    refusal = lambda spec: decompositions.refusal(decomposition, spec)  # noqa: E731
    sites = [_site(index, node, i, shapes, refusal) for i, node in enumerate(model.graph.node)
             if node.op_type in CONV_LIKE]
    for node in model.graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                sites.extend(_subgraph_sites(sub, f"{display_name(node, 0)}/{attr.name}"))
    return sites


def _site(index: GraphIndex, node: onnx.NodeProto, i: int, shapes, refusal=None) -> ConvSite:
    name = display_name(node, i)
    weight_name = node.input[1] if len(node.input) > 1 and node.input[1] else None
    in_shape = shapes.get(node.input[0]) if node.input else None
    out_shape = shapes.get(node.output[0]) if node.output else None
    base = ConvSite(name, node, node.op_type, weight_name, None, None, in_shape, out_shape, None, None)
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        base.reason = f"{node.op_type} is not rewritten (only float Conv is)"
        return base
    weight = weight_constant(index, node)
    w_shape = shapes.get(weight_name) if weight_name else None
    if isinstance(weight, Constant):
        w_shape = weight.shape
    if w_shape is None:
        base.reason = weight if isinstance(weight, str) else "weight shape unknown"
        return base
    spec = conv_spec(node, tuple(w_shape))
    if isinstance(spec, str):
        base.reason = spec
        return base
    base.spec = spec
    if in_shape is not None and len(in_shape) != 4:
        in_shape = None
    if out_shape is not None and len(out_shape) != 4:
        out_shape = None
    base.in_shape, base.out_shape = in_shape, out_shape
    base.cost = conv_cost(spec, out_shape, base.bias is not None)
    if isinstance(weight, str):
        base.reason = f"weight is not constant: {weight}"
        return base
    problem = shape_problem(spec, in_shape, out_shape) or _bias_problem(base, shapes, spec)
    if problem:
        base.reason = problem
        return base
    base.weight = weight
    base.reason = ineligibility(spec, weight, refusal)
    return base


def _bias_problem(site: ConvSite, shapes, spec: ConvSpec) -> str | None:
    if site.bias is None:
        return None
    shape = shapes.get(site.bias)
    if shape is not None and tuple(shape) != (spec.out_channels,):
        return f"bias '{site.bias}' has shape {list(shape)}, not [{spec.out_channels}]; the model is inconsistent"
    return None


def _subgraph_sites(graph: onnx.GraphProto, where: str) -> list[ConvSite]:
    found = []
    for i, node in enumerate(graph.node):
        if node.op_type in CONV_LIKE:
            found.append(ConvSite(f"{where}/{display_name(node, i)}", None, node.op_type,
                                  node.input[1] if len(node.input) > 1 else None, None, None, None,
                                  None, None, f"inside the subgraph {where}; only top-level Convs "
                                  "are rewritten"))
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                found.extend(_subgraph_sites(sub, f"{where}/{display_name(node, i)}/{attr.name}"))
    return found
