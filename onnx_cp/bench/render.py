"""Render a BenchReport: rich tables for the terminal, JSON, and Markdown (HTML is in ``html``)."""
from __future__ import annotations

import json

from rich.console import Console

from onnx_cp.bench.report import BenchReport
from onnx_cp.bench.tables import all_tables, machine_line, settings_line
from onnx_cp.table import draw


def render_terminal(report: BenchReport, console: Console) -> None:
    console.print(machine_line(report), style="dim", markup=False, highlight=False)
    console.print(settings_line(report), style="dim", markup=False, highlight=False)
    for table in all_tables(report):
        draw(table, console)
    for note in report.notes:
        console.print(f"note: {note}", style="yellow", markup=False, highlight=False)


def render_json(report: BenchReport) -> str:
    return json.dumps(report.to_dict(), indent=2)


def render_markdown(report: BenchReport) -> str:
    lines = ["# onnx-cp bench", "", _md(machine_line(report)), "", _md(settings_line(report)), ""]
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


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
