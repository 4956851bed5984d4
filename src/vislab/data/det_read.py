"""What every detection reader shares: bounded reads of label files and of the files a
whole dataset depends on, path checks that read an unreadable place as absent, file listing,
label lines, finite numbers, and the checks on class names a dataset declares."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

from vislab.data.det_types import UNREADABLE, DetectionSource
from vislab.data.sources import scan_folder
from vislab.errors import VislabError
from vislab.fsguard import MAX_FILE_BYTES, SpecialFileError, folder_name_problem, printable, read_bounded

# A per-image label file larger than this is not a label file.
LABEL_FILE_LIMIT = 16 * 1024 * 1024


def finite_number(token: str) -> float | None:
    """A finite float, or None (non-numbers, nan and inf are all malformed)."""
    try:
        value = float(token)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def read_label_text(path: str, src: DetectionSource) -> str | None:
    """A label file's text, or None with a problem (not a regular file, too big, not UTF-8)."""
    try:
        return read_bounded(path, LABEL_FILE_LIMIT).decode("utf-8-sig")
    except SpecialFileError as err:
        src.problem(path, None, f"{UNREADABLE}: {str(err).removeprefix(f'{path}: ')}")
    except UnicodeDecodeError:
        src.problem(path, None, f"{UNREADABLE}: not UTF-8 text")
    except OSError as err:
        src.problem(path, None, f"{UNREADABLE}: {err.strerror or err}")
    return None


def is_dir(path: Path) -> bool:
    """Path.is_dir with a place that cannot be looked at (EACCES on Python 3.11) read as
    absent: a root-owned lost+found in a source must not stop layout sniffing."""
    try:
        return path.is_dir()
    except OSError:
        return False


def is_file(path: Path) -> bool:
    """Path.is_file with an unreadable place read as absent, as in `is_dir`."""
    try:
        return path.is_file()
    except OSError:
        return False


def read_whole(path: Path, what: str) -> str:
    """A file the whole dataset depends on; any failure is a one-line VislabError."""
    try:
        return read_bounded(path, MAX_FILE_BYTES).decode("utf-8-sig")
    except SpecialFileError as err:
        raise VislabError(f"{err} (the {what}); pass a regular file") from None
    except UnicodeDecodeError:
        raise VislabError(f"{path}: not UTF-8 text; save the {what} as UTF-8") from None
    except OSError as err:
        raise VislabError(f"{path}: cannot read the {what} ({err.strerror or err})") from None


def list_files(folder: Path, suffixes: frozenset[str] | set[str]) -> list[str]:
    """Absolute paths of non-hidden files under `folder` with one of `suffixes`, sorted."""
    found, _ = scan_folder(folder)
    return sorted(f.path for f in found if os.path.splitext(f.path)[1].lower() in suffixes)


def label_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank lines, one at a time: as a list, a 16 MB
    label file of one-character lines took gigabytes."""
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield n, line.split()


def unique_names(path: str | Path, names: list[tuple[str, str]]) -> list[str]:
    """The names (each with the field that declares it) if none repeats; a repeated one is a
    one-line VislabError: merged silently, every later class id would shift by one."""
    seen: dict[str, str] = {}
    for where, name in names:
        if name in seen:
            raise VislabError(
                f"{printable(path)}: {where} '{printable(name)}' repeats {seen[name]}; give each class one "
                "entry (or its own name)"
            )
        seen[name] = where
    return [name for _, name in names]


def declared_class(path: str | Path, field: str, name: str) -> str:
    """`name`, a class a names file declares, if it is usable as a class folder's name would
    be (`fsguard.folder_name_problem`); else a one-line VislabError naming the file, the
    field and the fix. A control character (ESC[2J clears the terminal that prints it) or a
    newline (it splits classes.txt, shifting every later id) never gets into a dataset."""
    problem = folder_name_problem(name)
    if problem is not None:
        raise VislabError(
            f"{printable(path)}: {field} '{printable(name)}' {problem}; rename the class there "
            "(a plain name: no control characters, '/' or padding spaces)"
        )
    return name
