"""How quantities are written for people, one format each, shared by the terminal lines, the
report and `vislab compare` so a number reads the same everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def format_rate(value: Any) -> str:
    """A throughput such as images/s with three significant digits at most and thousands
    separators: 0.83, 11.9, 812, 1,234, 102,470; '' for a missing value."""
    if value is None or isinstance(value, bool):
        return ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(v):
        return ""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def text_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[str]], width: int = 120) -> str:
    """A table for the terminal, the one `predict --format table` prints for every task:
    `columns` are (header, justify); the table grows past `width` as far as its longest row
    needs, so each image's name stays on one line. Cells are rich markup: user text goes
    through `usertext.term` first."""
    import io

    from rich.console import Console
    from rich.table import Table

    rows = list(rows)
    table = Table(show_lines=False)
    for k, (header, justify) in enumerate(columns):
        table.add_column(header, justify=justify, overflow="fold" if k == 0 else "ellipsis")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*row)
    # wide enough for every cell on one line (a path folded over two lines cannot be copied back)
    need = sum(max([len(header), *(len(row[k]) for row in rows)]) + 3 for k, (header, _) in enumerate(columns)) + 1
    console = Console(file=io.StringIO(), width=max(width, need), force_terminal=False, emoji=False)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]
