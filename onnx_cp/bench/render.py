"""Render a BenchReport: rich tables for the terminal, JSON, and Markdown (HTML is in ``html``)."""
from __future__ import annotations

import json

from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from onnx_cp.bench.report import BenchReport
from onnx_cp.bench.tables import Table, all_tables, settings_line


def render_terminal(report: BenchReport, console: Console) -> None:
    console.print(settings_line(report), style="dim", highlight=False)
    for table in all_tables(report):
        if table.optional and _min_width(table) > console.width:
            table = table.without(table.optional)
        console.print(_rich(table))
    for note in report.notes:
        console.print(f"note: {note}", style="yellow", highlight=False)


def render_json(report: BenchReport) -> str:
    return json.dumps(report.to_dict(), indent=2)


def render_markdown(report: BenchReport) -> str:
    lines = ["# onnx-cp bench", "", settings_line(report), ""]
    for table in all_tables(report):
        lines += [f"## {table.title}", "",
                  "| " + " | ".join(_md(h) for h in table.headers) + " |",
                  "|" + "|".join("---:" if num else "---" for num in table.numeric) + "|"]
        for cells, strong in zip(table.rows, table.emphasis):
            cells = [f"**{_md(cells[0])}**" if strong else _md(cells[0])] + [_md(c) for c in cells[1:]]
            lines.append("| " + " | ".join(cells) + " |")
        for cells in table.footer:
            lines.append("| " + " | ".join(f"*{_md(c)}*" if c else "" for c in cells) + " |")
        lines.append("")
    if report.notes:
        lines += ["## Notes", ""] + [f"- {_md(note)}" for note in report.notes] + [""]
    return "\n".join(lines)


def _rich(table: Table) -> RichTable:
    out = RichTable(title=table.title, box=box.SIMPLE_HEAD, title_justify="left", show_footer=False)
    for k, (header, numeric) in enumerate(zip(table.headers, table.numeric)):
        if numeric:
            out.add_column(header, justify="right", no_wrap=True, min_width=len(header))
        else:  # names wrap rather than vanish when the terminal is narrow
            out.add_column(header, justify="left", overflow="fold", min_width=12 if k == 0 else 4)
    for cells, strong in zip(table.rows, table.emphasis):
        out.add_row(*cells, style="bold" if strong else None)
    if table.footer and table.rows:
        out.rows[-1].end_section = True
    for cells in table.footer:
        out.add_row(*cells, style="italic")
    return out


def _min_width(table: Table) -> int:
    """Columns as _rich draws them: numbers unbroken, the first column folded to 12, others to 4."""
    total = 0
    for k, numeric in enumerate(table.numeric):
        if numeric:
            total += max(len(cells[k]) for cells in [table.headers] + table.rows + table.footer)
        else:
            total += 12 if k == 0 else 4
    return total + 2 * len(table.numeric) + 2


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
