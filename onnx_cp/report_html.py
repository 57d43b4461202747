"""A rewrite report (its JSON dict) as one self-contained HTML page: ``onnx-cp rewrite --report r.html``.

The page draws with the pieces of ``bench --html`` (its style sheet, inline-SVG bar charts and
tables), so the two look alike; nothing is fetched, and the page works offline.
"""
from __future__ import annotations

from html import escape

from onnx_cp.bench.html import _STYLE, _chart, _table
from onnx_cp.report_tables import (layer_times, layers_table, model_figures, section_tables, subtitle, summary_table,
                                   title)


def render_html(data: dict) -> str:
    """The page for a report dict (``RewriteReport.to_dict()``, or the JSON that ``--report`` writes)."""
    name = title(data)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{escape(name)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{escape(name)}</h1>",
             f'<p class="settings">{escape(subtitle(data))}</p>']
    figures = model_figures(data)
    if figures:
        parts.append(_chart("Whole-model latency in onnxruntime (ms)", [label for label, _ in figures],
                            [("median", [value for _, value in figures])], kind="model", per_bar_colors=True))
    parts.append(_table(summary_table(data)))
    times = layer_times(data)
    if any(t.before_ms is not None for t in times):
        parts.append(_chart("Per layer: time alone in onnxruntime, original Conv and the form kept (ms)",
                            [t.layer for t in times],
                            [("original", [t.before_ms for t in times]), ("after", [t.after_ms for t in times])]))
    else:
        parts.append('<p class="settings">No per-layer times: the rewrite times its layers with --realize auto.</p>')
    parts.append(_table(layers_table(data)))
    parts.extend(_table(table) for table in section_tables(data))
    notes = data.get("notes") or []
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{escape(str(n))}</li>' for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
