"""What a rewrite did, layer by layer: JSON for machines, a rich table for people."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from onnx_cp.errors import Message


@dataclass
class LayerReport:
    node: str
    op_type: str
    weight: str | None
    status: str  # rewritten | kept | skipped | ineligible
    reason: str | None = None
    kernel: list[int] | None = None
    strides: list[int] | None = None
    pads: list[int] | None = None
    dilations: list[int] | None = None
    group: int | None = None
    weight_shape: list[int] | None = None
    in_shape: list[int] | None = None
    out_shape: list[int] | None = None
    macs_before: int | None = None
    params_before: int | None = None
    rank: int | str | None = None  # an int, or the decomposition's own syntax: 16x12, 24:8, 4:16x8x3x1
    rank_requested: int | float | str | None = None
    rank_capped: bool = False
    rel_error: float | None = None
    degeneracy: float | None = None
    max_term_norm: float | None = None
    stabilized: bool | None = None
    fit_seconds: float | None = None
    macs_after: int | None = None
    params_after: int | None = None
    realization: str | None = None  # the form: cp4 | cp3 | tucker2 | svd | gkpd | lrcp4 | lrcp3 | original
    decomposition: str | None = None  # cp | tucker2 | svd | gkpd | lrcp (the form's owner)
    timings_ms: dict[str, float] | None = None  # auto: each candidate alone in onnxruntime
    proxy_error: float | None = None  # rank selection: relative error of the layer's output maps
    cost: float | None = None  # rank selection: cost at the chosen rank (MACs or ms, see rank_selection)
    # calib: the layer's output error (after its activation) on held-back calibration inputs,
    # fed by the rewritten prefix, before and after recovery; and what recovery did.
    output_error_before: float | None = None
    output_error_after: float | None = None
    recovery: str | None = None
    new_nodes: list[str] = field(default_factory=list)


@dataclass
class RewriteReport:
    layers: list[LayerReport]
    method: str
    notes: list[str] = field(default_factory=list)
    rank_selection: dict | None = None  # how ranks were chosen, budgets, predicted and measured speed-up
    speed: dict | None = None  # the written model against the input in onnxruntime (measure.SpeedCheck)
    calibration: dict | None = None  # calib: samples, held back, whole-model output errors (calibrate.session)
    machine: dict | None = None  # where the times were taken (machine.Machine: CPU, ISA, cores, onnxruntime)
    quantization: dict | None = None  # quantize: the four whole-model figures, each node's form (stages.quantize)
    accuracy: dict | None = None  # max_drop: the metric on the held-back and choosing parts (stages.hold)
    sensitivity: list | None = None  # max_drop: each layer alone, its milliseconds saved and drop (ranks.drop)

    def __post_init__(self):
        # Notes may name parameters (onnx_cp.errors.param): they read as the API's, with .cli for the CLI.
        self.notes = [Message(note) for note in self.notes]

    @property
    def rewritten(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.status == "rewritten"]

    def totals(self) -> dict:
        """Conv multiply-adds and parameters over the whole model, before and after."""
        def total(key_before: str, key_after: str) -> tuple[int | None, int | None]:
            before = after = 0
            for layer in self.layers:
                b = getattr(layer, key_before)
                a = getattr(layer, key_after) if layer.status == "rewritten" else b
                if b is None or a is None:
                    if layer.op_type == "Conv" and layer.reason is None:
                        return None, None
                    continue
                before, after = before + b, after + a
            return before, after

        macs = total("macs_before", "macs_after")
        params = total("params_before", "params_after")
        return {
            "conv_macs_before": macs[0], "conv_macs_after": macs[1],
            "conv_params_before": params[0], "conv_params_after": params[1],
            "layers_rewritten": len(self.rewritten),
            "layers_total": len(self.layers),
        }

    def to_dict(self) -> dict:
        return {"method": self.method, "totals": self.totals(), "notes": self.notes,
                "rank_selection": self.rank_selection, "speed": self.speed, "calibration": self.calibration,
                "machine": self.machine, "quantization": self.quantization, "accuracy": self.accuracy,
                "sensitivity": self.sensitivity,
                "layers": [asdict(layer) for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class RewriteResult:
    model: object  # onnx.ModelProto
    report: RewriteReport


def human(n: int | float | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n)) if float(n).is_integer() else f"{n:.3g}"


def ratio(before: int | None, after: int | None) -> str:
    if not before or not after:
        return "?"
    return f"{before / after:.2f}x"


def render_rewrite(report: RewriteReport, console) -> None:
    """The per-layer table, the rank selection and the notes, within the console's width."""
    from rich.text import Text

    from onnx_cp.table import draw

    draw(rewrite_table(report), console)
    if report.rank_selection:
        console.print(Text(describe_selection(report.rank_selection)))
    if report.calibration:
        console.print(Text(describe_calibration(report.calibration)))
    if report.sensitivity:
        draw(sensitivity_table(report.sensitivity), console)
    if report.accuracy:
        console.print(Text(describe_accuracy(report.accuracy)))
    if report.quantization:
        console.print(Text(describe_quantization(report.quantization)))
    if report.speed and report.machine:
        console.print(Text(f"timed on {report.machine['label']}"))
    for note in report.notes:
        console.print(Text.assemble(("note:", "yellow"), " ", note))


# Left out first when the terminal is narrow; the layer, its form, rank, error, MACs and note stay.
_OPTIONAL = ("fit s", "params", "params after", "degen.", "proxy", "kernel", "cost", "cost ms", "MACs", "out err")


def rewrite_table(report: RewriteReport):
    """The report as a ``Table`` of strings: one row per Conv, totals in the footer."""
    from onnx_cp.table import Table

    selection = report.rank_selection
    latency = bool(selection) and selection.get("cost") == "latency"
    headers = ["layer", "kernel", "form", "rank", "kernel err", "degen.", "MACs", "MACs after", "params",
               "params after", "fit s", "note"]
    if selection:
        headers[5:5] = ["proxy", "cost ms" if latency else "cost"]
    calibrated = bool(report.calibration)
    if calibrated:
        headers[5:5] = ["out err"]
    table = Table(f"onnx-cp rewrite ({report.method})", headers,
                  [h not in ("layer", "kernel", "form", "note") for h in headers],
                  optional=tuple(headers.index(h) for h in _OPTIONAL if h in headers))

    def extra(l: LayerReport) -> list[str]:
        out = [_before_after(l.output_error_before, l.output_error_after)] if calibrated else []
        if not selection:
            return out
        return out + ["-" if l.proxy_error is None else f"{l.proxy_error:.4f}",
                      "-" if l.cost is None else f"{l.cost:.3f}" if latency else human(l.cost)]

    for l in report.layers:
        kernel = "x".join(map(str, l.kernel)) if l.kernel else "-"
        if l.group and l.group > 1:
            kernel += f" g{l.group}"
        if l.status == "rewritten":
            notes = ["rank capped"] if l.rank_capped else []
            if l.stabilized:
                notes.append("stabilized")
            if l.timings_ms:
                notes.append(f"{l.timings_ms['original'] / l.timings_ms[l.realization]:.2f}x faster alone")
            table.rows.append([l.node, kernel, l.realization, str(l.rank) + ("*" if l.rank_capped else ""),
                               f"{l.rel_error:.4f}", *extra(l), "-" if l.degeneracy is None else f"{l.degeneracy:.2f}",
                               human(l.macs_before),
                               human(l.macs_after), human(l.params_before), human(l.params_after),
                               f"{l.fit_seconds:.2f}", "; ".join(notes)])
        else:
            table.rows.append([l.node, kernel, "conv", "-", "-", *["-"] * (len(headers) - 12), "-",
                               human(l.macs_before), human(l.macs_before), human(l.params_before),
                               human(l.params_before), "-", f"{l.status}: {l.reason}"])
        table.emphasis.append(l.status == "rewritten")
    t = report.totals()
    table.footer.append(["total", "", "", "", "", *[""] * (len(headers) - 12), "",
                         human(t["conv_macs_before"]), human(t["conv_macs_after"]), human(t["conv_params_before"]),
                         human(t["conv_params_after"]), "",
                         f"{t['layers_rewritten']} of {t['layers_total']} rewritten; Conv MACs "
                         f"{ratio(t['conv_macs_before'], t['conv_macs_after'])} fewer"])
    return table


def _before_after(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{before:.3f}>{after:.3f}"


def sensitivity_table(rows: list[dict]):
    """Where the accuracy went: each layer alone at its scored candidate ("-": none is faster, not scored)."""
    from onnx_cp.table import Table

    table = Table("sensitivity: each layer alone", ["layer", "decomposition", "rank", "ms saved", "drop alone",
                                                   "decision"], [False, False, True, True, True, False])
    for row in rows:
        shared = len(row.get("nodes") or ())
        layer = row["layer"] + (f" (+{shared - 1} sharing its weight)" if shared > 1 else "")
        table.rows.append([layer, row["decomposition"], str(row["rank"]), f"{row['ms_saved']:.4f}",
                           "-" if row["drop"] is None else f"{row['drop']:.4g}", row["decision"]])
        table.emphasis.append(row["decision"].startswith("rewritten"))
    return table


def describe_accuracy(a: dict) -> str:
    """One line on --max-drop: the metric and its drop on the held-back part, which chose nothing."""
    c = a["choosing"]
    text = (f"accuracy: {a['metric']} on the {a['samples']['held_back']} held-back samples {a['original']:.4f} -> "
            f"{a['written']:.4f}, drop {a['drop']:.4g} ({a['drop_kind']}; allowed {a['max_drop']:g}"
            f"{'' if a['within'] else ', EXCEEDED'}); on the {a['samples']['choosing']} choosing samples "
            f"{c['original']:.4f} -> {c['written']:.4f}")
    if a["given_back"]:
        text += f"; given back: {', '.join(a['given_back'])}"
    return text


def describe_quantization(q: dict) -> str:
    """One line on --quantize: the four whole-model figures of one alternated run, and the errors."""
    s = q["speedups"]
    kept = sum(1 for layer in q["layers"] if layer["form"] == "int8")
    return (f"int8: input {q['original_ms']:.3f} ms; INT8 alone {s.get('int8', 0):.2f}x (error {q['int8_error']:.4f}); "
            f"low-rank {s.get('lowrank', 0):.2f}x (error {q['lowrank_error']:.4f}); low-rank + INT8 "
            f"{s.get('lowrank_int8', 0):.2f}x (error {q['lowrank_int8_error']:.4f}), {kept} of {len(q['layers'])} "
            "nodes in int8" + ("" if q["quantized"] else "; int8 did not pay, the float model is written"))


def describe_calibration(c: dict) -> str:
    """One line on calibration (``calib``): the data and the whole model's output error on held-back inputs."""
    text = (f"calibration: {c['samples']} samples of {c['data']} ({c['held_back']} held back), data-aware fits, "
            f"{c['recovered_layers']} layer(s) recovered")
    if c.get("output_error") is not None:
        text += f"; model output error on held-back inputs {c['output_error']:.4f}"
        if c["recovered_layers"]:
            text += f" ({c['output_error_fitted']:.4f} before recovery)"
    d = c.get("distillation")
    if d:
        text += "; " + describe_distillation(d)
    return text + f"; {c['seconds']:.1f} s"


def describe_distillation(d: dict) -> str:
    """Half a line on the whole-model distillation: its epochs and what it did to the held-back error."""
    if d["output_error_after"] is None:
        return f"whole-model distillation {d['note']}"
    return (f"whole-model distillation {d['epochs']} epoch(s), {d['steps']} steps, {d['seconds']:.1f} s: held-back "
            f"error {d['output_error_before']:.4f} -> {d['output_error_after']:.4f}"
            + (f" ({d['output_error_training']:.4f} on training samples)"
               if d.get("output_error_training") is not None else "")
            + ("" if d["kept"] else ", not kept"))


def describe_selection(s: dict) -> str:
    """One line on how the ranks were chosen: budget, predicted and measured speed-up, output error."""
    if s.get("mode") == "max-error":
        return f"ranks: smallest with kernel error <= {s['max_error']}"
    if s.get("mode") == "max-drop":
        unit = "ms" if s.get("cost") == "latency" else "MACs"
        return (f"ranks: max-drop by {unit}; {len(s.get('trials') or [])} allocations scored on the choosing data; "
                f"model cost {human(s['total_before'])} -> {human(s['total_after'])}, predicted "
                f"{s['predicted_speedup']:.2f}x")
    unit = "ms" if s.get("cost") == "latency" else "MACs"
    text = (f"ranks: {s['mode']} by {unit}; model cost {human(s['total_before'])} -> {human(s['total_after'])} "
            f"(target {human(s['target_total'])}), predicted {s['predicted_speedup']:.2f}x")
    measured = s.get("measured")
    if measured:
        text += (f", measured {measured['measured_speedup']:.2f}x ({measured['original_ms']:.1f} -> "
                 f"{measured['rewritten_ms']:.1f} ms)")
    text += f"; final-output error on calibration inputs {s['output_error']:.4f}"
    if s.get("search_trials"):
        text += f" (greedy {s['greedy_output_error']:.4f}, {s['search_trials']} search trials)"
    return text
