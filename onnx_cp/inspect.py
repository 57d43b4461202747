"""``inspect``: every convolution of a model, its cost, and whether CP can rewrite it."""
from __future__ import annotations

import os
from typing import Mapping

import onnx

from onnx_cp.sites import find_convs
from onnx_cp.model_io import load_model
from onnx_cp.report import LayerReport, RewriteReport
from onnx_cp.shapes import infer_shapes


def inspect_model(model: onnx.ModelProto | str | os.PathLike,
                  input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> RewriteReport:
    """A report with one row per convolution; ``status`` is 'eligible' or 'ineligible'."""
    model = load_model(model)
    shapes, notes = infer_shapes(model, input_shapes or {})
    layers: list[LayerReport] = []
    for site in find_convs(model, shapes):
        layer = site.report_row()
        layer.status = "eligible" if site.eligible else "ineligible"
        layer.reason = site.reason
        layers.append(layer)
    return RewriteReport(layers, method="inspect", notes=notes)


def render_inspect(report: RewriteReport, console) -> None:
    from rich.text import Text

    from onnx_cp.report import human
    from onnx_cp.table import Table, draw

    headers = ["layer", "weight", "kernel", "stride", "pads", "dilation", "group", "weight shape", "MACs",
               "params", "CP"]
    table = Table("convolutions", headers, [h in ("MACs", "params") for h in headers],
                  optional=tuple(headers.index(h) for h in ("dilation", "group", "stride", "pads", "params",
                                                            "weight shape", "weight")))
    for l in report.layers:
        table.rows.append([
            l.node, l.weight or "-", "x".join(map(str, l.kernel)) if l.kernel else "-",
            _fmt(l.strides), _fmt(l.pads), _fmt(l.dilations), str(l.group or "-"),
            "x".join(map(str, l.weight_shape)) if l.weight_shape else "-", human(l.macs_before), human(l.params_before),
            "eligible" if l.status == "eligible" else str(l.reason)])
        table.emphasis.append(l.status == "eligible")
    draw(table, console)
    eligible = sum(l.status == "eligible" for l in report.layers)
    console.print(Text(f"{eligible} of {len(report.layers)} convolutions are eligible for CP"))
    for note in report.notes:
        console.print(Text.assemble(("note:", "yellow"), " ", note))


def _fmt(values) -> str:
    return ",".join(map(str, values)) if values else "-"
