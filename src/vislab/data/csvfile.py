"""Reading a CSV file a person may have made or edited by hand (a manifest, labels, ratings).

Only a regular file of bounded size is read (a named pipe would block forever, `/dev/zero`
never ends), it must be UTF-8, and every cell comes back as a string. Each failure is one
`VislabError` naming the file and, where there is one, the line. `line_of_row` turns a
table row back into the line a text editor shows, so a caller that finds a bad value can
name where it is.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from vislab.errors import VislabError
from vislab.fsguard import MAX_FILE_BYTES, SpecialFileError, read_bounded, regular_file_problem


def _bytes(path: Path, what: str) -> bytes:
    """The file's bytes, checked to be UTF-8 text."""
    problem = regular_file_problem(path)
    if problem == "missing":
        raise VislabError(f"{what} file {path} does not exist; check the path")
    if problem is not None:
        raise VislabError(f"{what} file {path}: {problem}; give a regular CSV file")
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except SpecialFileError as err:
        raise VislabError(f"{what} file {err}; give a regular CSV file") from None
    except OSError as err:
        raise VislabError(f"{what} file {path}: cannot read ({err.strerror or err}); check its permissions") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise VislabError(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        ) from None
    return data


def read_csv_file(path: str | Path, what: str, **options: Any) -> pd.DataFrame:
    """The CSV at `path` as a table of strings (empty cells are ''); `what` names the file's
    role in messages ('labels', 'manifest'); `options` go to `pandas.read_csv`."""
    path = Path(path)
    data = _bytes(path, what)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            df = pd.read_csv(
                io.BytesIO(data), encoding="utf-8-sig", dtype=str, keep_default_na=False, index_col=False, **options
            )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, csv.Error) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VislabError(f"{path}: cannot read as CSV ({first}); save it as comma-separated UTF-8") from None
    skipinitialspace = bool(options.get("skipinitialspace"))
    _refuse_repeated_columns(path, data, skipinitialspace)
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        _refuse_long_rows(path, data, skipinitialspace)
    return df


def _refuse_repeated_columns(path: Path, data: bytes, skipinitialspace: bool) -> None:
    """A header naming a column twice: pandas renames the second 'x' to 'x.1', so a flag
    naming 'x' would read one of the two without a word. Judged from the header as written,
    so a column really called 'x.1' beside 'x' passes; empty names (trailing commas) pass,
    as no flag can name them."""
    header = next(_records(data.decode("utf-8-sig"), skipinitialspace), None)
    seen: set[str] = set()
    for name in header[1] if header else []:
        if name in seen and name.strip():
            raise VislabError(
                f"{path} line {header[0]}: the header names column '{name}' twice; "
                "rename or remove one of them"
            )
        seen.add(name)


def _refuse_long_rows(path: Path, data: bytes, skipinitialspace: bool) -> None:
    """A row with more cells than the header: pandas would drop the extra cells (or, without
    index_col=False, shift every column by one). Empty extra cells (a trailing comma) lose
    nothing and pass; a row with text there is a one-line error naming its line."""
    header: list[str] | None = None
    for start, record in _records(data.decode("utf-8-sig"), skipinitialspace):
        if header is None:
            header = record
        elif len(record) > len(header) and any(cell.strip() for cell in record[len(header) :]):
            raise VislabError(
                f"{path} line {start}: {len(record)} cells but the header names {len(header)} columns; "
                "remove the extra cells or name their column in the header"
            )


def line_of_row(path: str | Path, row: int, skipinitialspace: bool = False) -> int:
    """The line (1-based, header on line 1) where data row `row` of `read_csv_file(path)`
    (read with this `skipinitialspace`) starts; blank lines, which the table skips, are
    counted. Only called to report an error."""
    text = _bytes(Path(path), "CSV").decode("utf-8-sig")
    index = -1  # the header is row -1
    for start, _record in _records(text, skipinitialspace):
        if index == row:
            return start
        index += 1
    return text.count("\n") + 1


def _records(text: str, skipinitialspace: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(first line, cells) of each record pandas reads from `text`: lines holding nothing or
    only spaces and tabs are skipped, as pandas skips them, and a cell may be as long as the
    file (the csv module's own limit, 128 KiB, would raise on a long cell)."""
    lines: list[str] = []

    def read_lines() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):
            lines.append(line)
            yield line

    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, MAX_FILE_BYTES))
    try:
        reader = csv.reader(read_lines(), skipinitialspace=skipinitialspace)
        last = 0
        for record in reader:
            start, last = last + 1, reader.line_num
            if any(line.strip(" \t\r\n") for line in lines):
                yield start, record
            lines.clear()
    finally:
        csv.field_size_limit(limit)
