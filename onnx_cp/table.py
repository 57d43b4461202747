"""Tables of plain strings, and drawing them within a terminal's width.

The rewrite report and every bench renderer (terminal, Markdown, HTML) build a ``Table``;
``draw`` prints one on a rich console no wider than the console: optional columns are left out,
the first listed first, until the rest fits without breaking a word; names in the first column
then fold at ``/`` (``/model.22/cv3.0`` over ``/conv/Conv``), never mid-word; where even that
does not fit, each row becomes a short record (its name, then its cells as "header: value").
Cells, titles and headers are text, never rich markup, so a name or note holding ``[...]`` prints
as it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TEXT_WIDTH = 16  # the narrowest a column of words (notes, reasons) is drawn, if it has that much to say
NAME_WIDTH = 12  # the narrowest the first column's names are folded to before rows become records


@dataclass
class Table:
    title: str
    headers: list[str]
    numeric: list[bool]
    rows: list[list[str]] = field(default_factory=list)
    emphasis: list[bool] = field(default_factory=list)  # rows to highlight: rewritten layers
    footer: list[list[str]] = field(default_factory=list)
    optional: tuple[int, ...] = ()  # columns a narrow terminal may leave out, the first listed first

    def without(self, columns) -> "Table":
        keep = [k for k in range(len(self.headers)) if k not in columns]
        pick = lambda cells: [cells[k] for k in keep]  # noqa: E731
        return Table(self.title, pick(self.headers), pick(self.numeric), [pick(r) for r in self.rows],
                     list(self.emphasis), [pick(r) for r in self.footer])


def draw(table: Table, console) -> None:
    """Print ``table`` on ``console`` in at most ``console.width`` columns (see the module's doc)."""
    width = console.width
    dropped: list[int] = []
    for column in table.optional:
        if min_width(table.without(dropped)) <= width:
            break
        dropped.append(column)
    narrow = table.without(dropped)
    widths = _column_widths(narrow)
    names = width - sum(widths[1:]) - _frame(narrow)
    if widths[0] > names >= NAME_WIDTH:
        narrow = _fold_names(narrow, names)
    if min_width(narrow) <= width:
        console.print(_rich(narrow))
    else:
        _print_records(table, console)


def min_width(table: Table) -> int:
    """The narrowest ``draw`` prints ``table`` without breaking a word or folding a name."""
    return sum(_column_widths(table)) + _frame(table)


def fold_name(name: str, width: int) -> str:
    """``name`` on lines of at most ``width`` characters, broken only before a ``/``; a part longer
    than ``width`` keeps a line of its own, whole."""
    parts = [p for p in name.replace("/", "\n/").split("\n") if p]
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(part) <= width:
            lines[-1] += part
        else:
            lines.append(part)
    return "\n".join(lines) or name


def _fold_names(table: Table, width: int) -> Table:
    fold = lambda cells: [fold_name(cells[0], width), *cells[1:]]  # noqa: E731
    return Table(table.title, table.headers, table.numeric, [fold(r) for r in table.rows], table.emphasis,
                 [fold(r) for r in table.footer], table.optional)


def _column_widths(table: Table) -> list[int]:
    """Per column: the first (names) and numeric columns never wrap, so their longest line; the others
    wrap between words, so their longest word, but no narrower than ``TEXT_WIDTH`` (or their longest
    line) lest a note stand one word to a line."""
    from rich.cells import cell_len

    cells = [table.headers] + table.rows + table.footer
    widths = []
    for k, numeric in enumerate(table.numeric):
        lines = max((cell_len(line) for row in cells for line in row[k].splitlines()), default=1)
        if k == 0 or numeric:
            widths.append(lines)
        else:
            word = max((cell_len(word) for row in cells for word in row[k].split()), default=1)
            widths.append(max(word, min(lines, TEXT_WIDTH)))
    return widths


def _frame(table: Table) -> int:
    """What ``_rich`` adds between the cells: a separator and a space of padding either side."""
    return max(3 * len(table.headers) - 3, 0)


def _print_records(table: Table, console) -> None:
    """Each row as its name on a line, then its short cells on one line, then each long one on its own
    (cells that are empty or "-" left out)."""
    from rich.padding import Padding
    from rich.text import Text

    console.print(Text(table.title))
    for cells, style in _styled_rows(table):
        console.print(Text(cells[0], style=style))
        pairs = [(h, c, numeric or len(c) <= TEXT_WIDTH)
                 for h, c, numeric in zip(table.headers[1:], cells[1:], table.numeric[1:]) if c not in ("", "-")]
        lines = [", ".join(f"{h}: {c}" for h, c, short in pairs if short)]
        lines += [f"{h}: {c}" for h, c, short in pairs if not short]
        for line in filter(None, lines):
            console.print(Padding(Text(line), (0, 0, 0, 2)))


def _rich(table: Table):
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    out = RichTable(title=Text(table.title), box=box.SIMPLE_HEAD, title_justify="left", show_footer=False,
                   show_edge=False, pad_edge=False)
    for k, (header, numeric) in enumerate(zip(table.headers, table.numeric)):
        if numeric:
            out.add_column(Text(header), justify="right", no_wrap=True)
        elif k == 0:  # names: folded at '/' by draw, shortened with an ellipsis as a last resort
            out.add_column(Text(header), justify="left", no_wrap=True, overflow="ellipsis")
        else:  # words wrap; only a word wider than the whole column folds
            out.add_column(Text(header), justify="left", overflow="fold")
    for cells, style in _styled_rows(table):
        out.add_row(*map(Text, cells), style=style or None)
    if table.footer and table.rows:
        out.rows[len(table.rows) - 1].end_section = True
    return out


def _styled_rows(table: Table) -> list[tuple[list[str], str]]:
    """Each row and then each footer row, with its style: emphasized rows bold, the footer italic."""
    emphasis = table.emphasis or [False] * len(table.rows)
    return ([(cells, "bold" if strong else "") for cells, strong in zip(table.rows, emphasis)]
            + [(cells, "italic") for cells in table.footer])
