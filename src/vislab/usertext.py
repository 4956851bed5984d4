"""User text (file, folder, class and run names, config values, remote titles) written
for each place it goes, so that it is always shown as data and never obeyed.

Every reader of such text interprets something: rich reads `[bold]` and `[link=...]` as
markup (and `x[/]y` crashes it), a terminal obeys ESC sequences, a Markdown viewer renders
`<img onerror=...>` and `[x](url)`, a spreadsheet runs a cell that starts with `=`. Each
output calls one function here instead of escaping by hand:

- `term`: any text rich prints (a line, a table cell, a title, a progress description);
- `visible_lines`: text written to a terminal as it is (CSV, Markdown on stdout);
- `md_cell`: a cell of a Markdown table;
- `sheet_cell`, `sheet_table`: a cell, or every text column of a table, of a CSV meant for
  spreadsheets (`vislab compare --format csv`, a sweep's results.csv);
- `without_terminal_controls`: remote text kept in a data file (Flickr titles).

Files vislab reads back itself (manifest.csv, photos.csv, predictions.csv) keep their text
exactly: escaping there would change the data.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from vislab.fsguard import printable

if TYPE_CHECKING:
    import pandas as pd

# Markdown's inline syntax: code spans, emphasis, strikethrough, links and images, table
# cells, and the backslash itself. `_` only where it can start or end emphasis, so
# `simple_cnn` stays as written.
_MARKDOWN = re.compile(r"[\\`*~\[\]|]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# What a spreadsheet may read as a formula (OWASP CSV injection), unless the cell is a number.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# ESC sequences (CSI, OSC and the other string commands, two-byte escapes), then the lone
# control characters other than tab, newline and carriage return (C0, DEL, C1).
_TERMINAL_CONTROLS = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
)


def term(value: Any) -> str:
    """`value` for rich: control characters as `\\xNN` (`printable`: no ESC reaches the
    terminal and a name stays on one line), and markup tags escaped, so `x[/]y` and
    `[link=...]cat` print as written instead of crashing or turning into a link."""
    return escape(printable(str(value)))


def visible_lines(text: str) -> str:
    """`text` for a terminal: its lines and tabs kept, every other control character as
    `\\xNN`. For machine-readable output (CSV, JSON) printed on a terminal, where exact
    text would let a name clear the screen; piped or redirected, the output stays exact."""
    return re.sub(r"[^\n\t]+", lambda m: printable(m.group()), text)


def md_cell(value: Any) -> str:
    """`value` as one Markdown table cell: control characters (a newline) as `\\xNN`, so
    the row stays one line; `&`, `<`, `>` as entities, so no HTML is rendered; Markdown
    syntax and `|` backslash-escaped, so no link, image or extra cell appears."""
    text = html.escape(printable(str(value)), quote=False)
    return _MARKDOWN.sub(lambda m: "\\" + m.group(), text)


def sheet_cell(value: Any) -> Any:
    """`value` for a CSV that people open in a spreadsheet: text starting with = + - @, a
    tab or a carriage return gets a leading `'` (OWASP), so `=1+1` or `=HYPERLINK(...)` is
    shown, not run. Numbers, text that reads as a number (-0.5) and other values pass as
    they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def sheet_table(table: "pd.DataFrame") -> "pd.DataFrame":
    """A copy of `table` for a CSV that people open in a spreadsheet: `sheet_cell` on every
    cell of its text columns; number columns stay as they are, so they read back as numbers."""
    import pandas as pd

    return table.apply(lambda col: col if pd.api.types.is_numeric_dtype(col) else col.map(sheet_cell))


def without_terminal_controls(text: str) -> str:
    """`text` without ESC sequences and other terminal control characters; tabs, newlines
    and carriage returns stay. For text from a server kept in a data file (a photo's title,
    its owner's name): nothing legitimate in it needs them, and every later reader
    (a terminal, a spreadsheet, a pager) could obey them."""
    return _TERMINAL_CONTROLS.sub("", text)
