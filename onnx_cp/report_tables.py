"""A rewrite report's JSON dict as plain tables, which the Markdown and HTML pages draw.

Everything here reads the dict that ``onnx-cp rewrite --report r.json`` writes, by its keys
alone: ``speed``, ``totals``, ``layers`` (each with ``timings_ms``, ``rel_error``, ``rank``, ...),
``notes``, and the optional sections (``rank_selection``, ``calibration``, ``machine``,
``sensitivity``, ``quantization``) when they are present. A section whose layout is not known
here is still shown: its plain values as a two-column table, its lists of rows as a table each.
"""
from __future__ import annotations

from dataclasses import dataclass

from onnx_cp.bench.tables import DASH, ms, ratio
from onnx_cp.table import Table

# Sections drawn from their own keys; any other top-level key with a dict or rows is shown generically.
KNOWN = ("method", "totals", "notes", "speed", "layers", "machine", "sensitivity", "quantization")
SENSITIVITY_ORDER = ("layer", "decomposition", "rank", "ms_saved", "drop", "decision")
QUANTIZED_ORDER = ("layer", "form", "ms")
QUANTIZATION_FIGURES = (("original", "original_ms"), ("INT8 alone", "int8_ms"), ("low-rank alone", "lowrank_ms"),
                        ("low-rank + INT8", "lowrank_int8_ms"))


@dataclass(frozen=True)
class LayerTimes:
    """Per layer, its time alone in onnxruntime as the original Conv and in the form it kept."""

    layer: str
    before_ms: float | None
    after_ms: float | None


def title(data: dict) -> str:
    return f"onnx-cp rewrite ({data.get('method', '?')})"


def subtitle(data: dict) -> str:
    """One line: what was rewritten, and on which machine when the report says."""
    totals = data.get("totals") or {}
    text = f"{totals.get('layers_rewritten', '?')} of {totals.get('layers_total', '?')} layers rewritten"
    machine = data.get("machine")
    if isinstance(machine, dict) and machine.get("label"):
        text += f"; measured on {machine['label']}"
    return text


def layer_times(data: dict) -> list[LayerTimes]:
    """Each layer's time before and after, where the rewrite timed it (``--realize auto``)."""
    out = []
    for layer in data.get("layers") or []:
        timings = layer.get("timings_ms") or {}
        form = layer.get("realization")
        after = timings.get(form) if layer.get("status") == "rewritten" else timings.get("original")
        out.append(LayerTimes(layer.get("node", "?"), timings.get("original"), after))
    return out


def model_figures(data: dict) -> list[tuple[str, float | None]]:
    """The whole-model latencies to chart: the input and the rewrite, or the four figures of
    ``quantization`` when present."""
    quantization = data.get("quantization")
    if isinstance(quantization, dict) and any(quantization.get(key) is not None for _, key in QUANTIZATION_FIGURES):
        return [(label, quantization.get(key)) for label, key in QUANTIZATION_FIGURES]
    speed = data.get("speed") or {}
    if speed.get("original_ms") is None:
        return []
    return [("input", speed.get("original_ms")), ("rewritten", speed.get("rewritten_ms"))]


def summary_table(data: dict) -> Table:
    """The whole model: latency in onnxruntime, Conv multiply-adds and parameters, before and after."""
    speed, totals = data.get("speed") or {}, data.get("totals") or {}
    table = Table("Whole model", ["", "input", "rewritten", "ratio"], [False, True, True, True])

    def row(name: str, before, after, fmt) -> None:
        shown = ratio(before / after) if before and after else DASH
        table.rows.append([name, fmt(before), fmt(after), shown])
        table.emphasis.append(False)

    if speed.get("original_ms") is not None:
        row("latency, ms (onnxruntime)", speed.get("original_ms"), speed.get("rewritten_ms"), ms)
    row("Conv multiply-adds", totals.get("conv_macs_before"), totals.get("conv_macs_after"), count)
    row("Conv parameters", totals.get("conv_params_before"), totals.get("conv_params_after"), count)
    return table


def layers_table(data: dict) -> Table:
    """One row per layer: what it became, its rank, errors, time and multiply-adds before and after."""
    layers = data.get("layers") or []
    calibrated = any(l.get("output_error_after") is not None for l in layers)
    timed = any(t.before_ms is not None for t in layer_times(data))
    headers = ["layer", "decomposition (form)", "rank", "kernel err"]
    headers += ["out err before", "out err after"] if calibrated else []
    headers += ["ms before", "ms after", "speed-up"] if timed else []
    headers += ["MACs before", "MACs after", "note"]
    table = Table("Layers", headers, [h not in ("layer", "decomposition (form)", "note") for h in headers])
    for layer, times in zip(layers, layer_times(data)):
        rewritten = layer.get("status") == "rewritten"
        form = f"{layer.get('decomposition') or '?'} ({layer.get('realization') or '?'})" if rewritten else "original Conv"
        rank = layer.get("rank") if rewritten else None
        cells = [times.layer, form, DASH if rank is None else str(rank), error(layer.get("rel_error"))]
        if calibrated:
            cells += [error(layer.get("output_error_before")), error(layer.get("output_error_after"))]
        if timed:
            speedup = times.before_ms / times.after_ms if times.before_ms and times.after_ms else None
            cells += [ms(times.before_ms), ms(times.after_ms), ratio(speedup)]
        after = layer.get("macs_after") if rewritten else layer.get("macs_before")
        cells += [count(layer.get("macs_before")), count(after), _layer_note(layer)]
        table.rows.append(cells)
        table.emphasis.append(rewritten)
    return table


def section_tables(data: dict) -> list[Table]:
    """The optional sections present in ``data``, each as one or more tables."""
    tables = []
    quantization = data.get("quantization")
    if isinstance(quantization, dict):
        figures = {key for _, key in QUANTIZATION_FIGURES}
        if figures & quantization.keys():
            tables.append(_quantization_table(quantization))
        rest = {key: value for key, value in quantization.items() if key not in figures}
        tables += record_tables("Quantization", rest, QUANTIZED_ORDER)
    sensitivity = data.get("sensitivity")
    if sensitivity:
        tables += record_tables("Sensitivity: each layer alone", sensitivity, SENSITIVITY_ORDER)
    scalars = {}
    for key, value in data.items():
        if key in KNOWN or value in (None, [], {}):
            continue
        if isinstance(value, (dict, list)):
            tables += record_tables(key.replace("_", " ").capitalize(), value)
        else:
            scalars[key] = value
    if scalars:
        tables += record_tables("More", scalars)
    machine = data.get("machine")
    if isinstance(machine, dict):
        tables += record_tables("Machine", machine)
    return tables


def record_tables(name: str, value, order: tuple[str, ...] = ()) -> list[Table]:
    """A section of any layout: its plain values (nested dicts flattened to ``a.b``) as one
    two-column table, and each list of rows as a table of its own, ``order``'s columns first."""
    if isinstance(value, list):
        return [rows_table(name, value, order)] if value else []
    if not isinstance(value, dict):
        return [_pairs_table(name, [(name, value)])]
    pairs, lists = [], []
    for key, item in _flatten(value):
        if isinstance(item, list) and item and all(isinstance(row, dict) for row in item):
            lists.append(rows_table(f"{name}: {key.replace('_', ' ')}", item, order))
        else:
            pairs.append((key, item))
    return ([_pairs_table(name, pairs)] if pairs else []) + lists


def rows_table(name: str, rows: list[dict], order: tuple[str, ...] = ()) -> Table:
    keys = [key for key in order if any(key in row for row in rows)]
    keys += [key for row in rows for key in row if key not in keys and not isinstance(row[key], (dict, list))]
    keys = list(dict.fromkeys(keys))
    numeric = [all(isinstance(row.get(key), (int, float)) or row.get(key) is None for row in rows) for key in keys]
    table = Table(name, [key.replace("_", " ") for key in keys], numeric)
    for row in rows:
        table.rows.append([value_text(key, row.get(key)) for key in keys])
        table.emphasis.append(False)
    return table


def value_text(key: str, value) -> str:
    """A value as a cell: times as ms, speed-ups as ratios, counts compact, errors to 4 digits."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if "speedup" in key:
            return ratio(value)
        if key.endswith("ms") or key.endswith("ms_saved"):
            return ms(value)
        return count(value) if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int):
        return count(value)
    if isinstance(value, list):
        return ", ".join(value_text(key, item) for item in value)
    return str(value)


def count(n) -> str:
    """17120640 -> 17.12M; small counts as they are."""
    if n is None:
        return DASH
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= 10 * scale or (unit != "k" and abs(n) >= scale):
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def error(value: float | None) -> str:
    return DASH if value is None else f"{value:.4f}"


def _layer_note(layer: dict) -> str:
    status = layer.get("status") or "?"
    if status != "rewritten":
        return f"{status}: {layer['reason']}" if layer.get("reason") else status
    notes = ["rank capped"] if layer.get("rank_capped") else []
    if layer.get("stabilized"):
        notes.append("stabilized")
    if layer.get("recovery"):
        notes.append(f"recovery: {layer['recovery']}")
    return "; ".join(notes)


def _quantization_table(quantization: dict) -> Table:
    """The four whole-model figures of ``--quantize``, each against the original."""
    table = Table("Quantization: whole model", ["model", "ms", "speed-up"], [False, True, True])
    original = quantization.get("original_ms")
    for label, key in QUANTIZATION_FIGURES:
        value = quantization.get(key)
        table.rows.append([label, ms(value), ratio(original / value if original and value else None)])
        table.emphasis.append(False)
    return table


def _flatten(value: dict, prefix: str = ""):
    for key, item in value.items():
        if isinstance(item, dict):
            yield from _flatten(item, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", item


def _pairs_table(name: str, pairs: list[tuple[str, object]]) -> Table:
    table = Table(name, ["", "value"], [False, False])
    for key, value in pairs:
        table.rows.append([key.replace("_", " "), value_text(key, value)])
        table.emphasis.append(False)
    return table
