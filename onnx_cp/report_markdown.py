"""A rewrite report (its JSON dict) as Markdown: ``onnx-cp rewrite --report r.md``."""
from __future__ import annotations

from onnx_cp.report_tables import layers_table, section_tables, subtitle, summary_table, title
from onnx_cp.table import Table


def render_markdown(data: dict) -> str:
    """The report's tables and notes as one Markdown document."""
    lines = [f"# {title(data)}", "", subtitle(data), ""]
    for table in [summary_table(data), layers_table(data), *section_tables(data)]:
        lines += markdown_table(table)
    notes = data.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {escape(str(note))}" for note in notes] + [""]
    return "\n".join(lines)


def markdown_table(table: Table) -> list[str]:
    """``table`` as a titled Markdown table (emphasized rows bold, footer rows italic) and a blank line."""
    lines = [f"## {escape(table.title)}", "", "| " + " | ".join(map(escape, table.headers)) + " |",
             "|" + "|".join("---:" if numeric else "---" for numeric in table.numeric) + "|"]
    emphasis = table.emphasis or [False] * len(table.rows)
    for cells, strong in zip(table.rows, emphasis):
        first = f"**{escape(cells[0])}**" if strong and cells[0] else escape(cells[0])
        lines.append("| " + " | ".join([first, *map(escape, cells[1:])]) + " |")
    for cells in table.footer:
        lines.append("| " + " | ".join(f"*{escape(c)}*" if c else "" for c in cells) + " |")
    return lines + [""]


def escape(text: str) -> str:
    """Text that stays inside its table cell: pipes escaped, line breaks as spaces."""
    return text.replace("|", "\\|").replace("\n", " ")
