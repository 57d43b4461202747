"""Render a BenchReport as one self-contained HTML page: tables plus inline-SVG bar charts.

No scripts, fonts or styles are fetched from anywhere; the page works offline.
"""
from __future__ import annotations

from html import escape

from onnx_cp.bench.report import BenchReport
from onnx_cp.bench.tables import Table, all_tables, machine_line, settings_line

_COLORS = ["#8a8f98", "#2f7ed8", "#e4572e", "#17a398", "#f3a712", "#6c4f9e"]
_LABEL_W, _BAR_W, _VALUE_W, _BAR_H, _GAP = 240, 460, 90, 12, 8

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#1d1f23;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:3px 10px;border-bottom:1px solid #e3e5e8}
th{text-align:left;background:#f5f6f7}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.cp td{font-weight:600}tfoot td{font-style:italic;border-top:2px solid #c9ccd1}
.settings{color:#5b6068}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;
vertical-align:middle}svg text{font:12px system-ui,sans-serif;fill:#1d1f23}.note{color:#8a5a00}
"""


def render_html(report: BenchReport) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>onnx-cp bench</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>onnx-cp bench</h1>", f'<p class="settings machine">{escape(machine_line(report))}</p>',
             f'<p class="settings">{escape(settings_line(report))}</p>']
    parts.append(_chart("Whole-model latency, median (ms)", [m.label for m in report.models],
                        [("median", [m.latency.median for m in report.models])], kind="model",
                        per_bar_colors=True))
    if report.comparisons:
        for c in report.comparisons:
            parts.append(_chart(f"Per layer: {c.original} vs {c.rewritten} (ms)", [r.layer for r in c.layers],
                                [(c.original, [r.original_ms for r in c.layers]),
                                 (c.rewritten, [r.rewritten_ms for r in c.layers])]))
    else:
        for m in report.models:
            if m.profile is not None:
                parts.append(_chart(f"Per layer: {m.label} (ms)", [layer.layer for layer in m.profile.layers],
                                    [(m.label, [layer.ms for layer in m.profile.layers])]))
    for table in all_tables(report):
        parts.append(_table(table))
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{escape(n)}</li>' for n in report.notes)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _chart(title: str, labels: list[str], series: list[tuple[str, list[float | None]]], *,
           kind: str = "layer", per_bar_colors: bool = False) -> str:
    """Horizontal bars: one group per label (class ``kind``), one ``rect.bar`` per series in it."""
    top = max((v for _, values in series for v in values if v is not None), default=0.0) or 1.0
    group_h = _BAR_H * len(series) + _GAP
    width, height = _LABEL_W + _BAR_W + _VALUE_W, group_h * len(labels) + _GAP
    out = [f"<h2>{escape(title)}</h2>"]
    if len(series) > 1:
        out.append('<p class="legend">' + "".join(
            f'<span style="background:{_COLORS[k % len(_COLORS)]}"></span>{escape(name)}'
            for k, (name, _) in enumerate(series)) + "</p>")
    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">')
    for i, label in enumerate(labels):
        y0 = _GAP // 2 + i * group_h
        short = label if len(label) <= 34 else label[:16] + "…" + label[-16:]
        out.append(f'<g class="{kind}" data-{kind}="{escape(label)}">')
        out.append(f'<text x="{_LABEL_W - 6}" y="{y0 + (_BAR_H * len(series) - 2) / 2:.1f}" text-anchor="end" '
                   f'dominant-baseline="middle">{escape(short)}<title>{escape(label)}</title></text>')
        for k, (name, values) in enumerate(series):
            value = values[i]
            w = 0.0 if value is None else max(value / top * _BAR_W, 0.5)
            y = y0 + k * _BAR_H
            color = _COLORS[(i if per_bar_colors else k) % len(_COLORS)]
            shown = "n/a" if value is None else f"{value:.3f} ms"
            out.append(f'<rect class="bar" data-series="{k}" x="{_LABEL_W}" y="{y}" width="{w:.1f}" '
                       f'height="{_BAR_H - 2}" fill="{color}"><title>{escape(name)}: {shown}</title></rect>')
            out.append(f'<text x="{_LABEL_W + w + 4:.1f}" y="{y + (_BAR_H - 2) / 2:.1f}" '
                       f'dominant-baseline="middle">{shown}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _table(table: Table) -> str:
    def cell(tag: str, text: str, numeric: bool) -> str:
        return f'<{tag}{" class=num" if numeric else ""}>{escape(text)}</{tag}>'

    out = [f"<h2>{escape(table.title)}</h2>", "<table>", "<thead><tr>"
           + "".join(cell("th", h, n) for h, n in zip(table.headers, table.numeric)) + "</tr></thead>", "<tbody>"]
    for cells, strong in zip(table.rows, table.emphasis):
        out.append(f'<tr{" class=cp" if strong else ""}>'
                   + "".join(cell("td", c, n) for c, n in zip(cells, table.numeric)) + "</tr>")
    out.append("</tbody>")
    if table.footer:
        out.append("<tfoot>" + "".join("<tr>" + "".join(cell("td", c, n) for c, n in zip(cells, table.numeric))
                                       + "</tr>" for cells in table.footer) + "</tfoot>")
    out.append("</table>")
    return "\n".join(out)
