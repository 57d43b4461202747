"""Find every convolution in a model, with what it computes, what it costs, and whether CP applies."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnx_cp.conv import (ConvSpec, Cost, conv_cost, conv_spec, ineligibility, shape_problem,
                          weight_constant)
from onnx_cp.errors import spelled
from onnx_cp.graph import Constant, GraphIndex, display_name
from onnx_cp.report import LayerReport

CONV_LIKE = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "NhwcConv", "FusedConv")
# How a message tells the user to list the layers a pattern may name.
LIST_LAYERS = spelled("onnx_cp.inspect_model lists them", "run 'onnx-cp inspect' to list them")


@dataclass
class ConvSite:
    """One convolution node and everything the rewriter and the reports need to know of it."""

    name: str
    node: onnx.NodeProto | None  # None for nodes inside subgraphs (never rewritten)
    op_type: str
    weight_name: str | None
    spec: ConvSpec | None
    weight: Constant | None
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    cost: Cost | None
    reason: str | None  # why it is not eligible; None when it is

    @property
    def eligible(self) -> bool:
        return self.reason is None

    @property
    def names(self) -> tuple[str, ...]:
        """What ``layers`` and ``exclude`` patterns are matched against."""
        return tuple(n for n in (self.name, self.weight_name) if n)

    @property
    def key(self) -> str:
        """A stable, hashable identity: the node's output (unique in a graph), else its name."""
        return self.node.output[0] if self.node is not None and self.node.output else self.name

    def groups(self) -> list[np.ndarray]:
        """The kernel of each group, (out_per_group, in_per_group, kh, kw): each is fitted alone."""
        w, per = self.weight.value, self.spec.out_per_group
        return [w[g * per:(g + 1) * per] for g in range(self.spec.group)]

    @property
    def bias(self) -> str | None:
        node = self.node
        return node.input[2] if node is not None and len(node.input) > 2 and node.input[2] else None


def find_convs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], decomposition: str = "cp"
               ) -> list[ConvSite]:
    """Every convolution, eligible when ``decomposition`` (a name, or auto: any it tries) can
    rewrite it."""
    index = GraphIndex(model.graph)
    refusal = None
    if decomposition != "cp":
        from onnx_cp import decompositions

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


def site_report(site: ConvSite) -> LayerReport:
    """A report row with what is known of the site before any rewrite (status left empty)."""
    spec = site.spec
    return LayerReport(
        node=site.name, op_type=site.op_type, weight=site.weight_name, status="",
        kernel=list(spec.kernel) if spec else None, strides=list(spec.strides) if spec else None,
        pads=list(spec.pads) if spec else None, dilations=list(spec.dilations) if spec else None,
        group=spec.group if spec else None,
        weight_shape=[spec.out_channels, spec.in_per_group, *spec.kernel] if spec else None,
        in_shape=list(site.in_shape) if site.in_shape else None,
        out_shape=list(site.out_shape) if site.out_shape else None,
        macs_before=site.cost.macs if site.cost else None,
        params_before=site.cost.params if site.cost else None)
