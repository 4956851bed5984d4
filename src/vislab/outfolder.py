"""The --out folder of `vislab predict`: a folder it owns, so it never writes among a user's files.

An --out is accepted when it is new, empty, or one predict wrote before, known by the marker
file MARKER it keeps there (hidden, so `vislab curate` of the folder reads past it) listing
every file it wrote. Anything else (a folder of photos, a YOLO dataset whose labels/ the
drawn predictions would join) is refused in one line before any image is predicted, and so
is a folder that cannot be written (the marker is written first). A re-use removes the files
the previous predict listed and this one did not write again (no stale drawing or label of
an image no longer predicted), and never any other file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from vislab.markers import PREDICT_MARKER
from vislab.errors import VislabError
from vislab.fsguard import cannot_write, folder_problem, inside, make_folder, printable, read_bounded, write_file

MARKER = PREDICT_MARKER


class OutFolder:
    """An accepted --out: `file(name)` gives the checked path of each file written there (and
    records it), `finish()` removes what the previous predict wrote and this one did not,
    then lists this one's files in the marker."""

    def __init__(self, root: Path, previous: list[str]) -> None:
        self.root = root
        self.previous = previous
        self.written: list[str] = []

    def file(self, name: str) -> Path:
        """OUT/name, refused unless it stays inside OUT (`fsguard.inside`), recorded as written."""
        path = inside(self.root, name)
        if name not in self.written:
            self.written.append(name)
        return path

    def write(self, name: str, data: bytes | str) -> Path:
        """`data` written to OUT/name (`fsguard.write_file`); a failed write is one line."""
        path = self.file(name)
        try:
            return write_file(path, data)
        except OSError as err:
            raise cannot_write(path, err) from None

    def finish(self) -> None:
        """Remove the previous predict's files not written again (regular files and links,
        never through a link), the folders that leaves empty, and record this one's files."""
        folders: set[Path] = set()
        for name in set(self.previous) - set(self.written):
            parts = Path(name)
            if parts.is_absolute() or ".." in parts.parts or not parts.name:
                continue
            try:
                target = inside(self.root, parts.parent) / parts.name
                if stat.S_ISREG(os.lstat(target).st_mode) or target.is_symlink():
                    target.unlink()
            except (VislabError, OSError):
                continue
            folders.update(p for p in target.parents if self.root in p.parents)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass
        _write_marker(self.root, self.written)


def claim_out(out: str | Path) -> OutFolder:
    """The --out folder, made if missing, once it is known to be predict's to write into (see
    the module); refused in one line otherwise. Called before any image is predicted."""
    root = Path(out)
    problem = folder_problem(root)
    if problem:
        raise VislabError(f"--out {printable(root)}: {problem}; choose a folder path")
    previous: list[str] = []
    if root.is_dir():
        try:
            names = sorted(os.listdir(root))
        except OSError as err:
            raise VislabError(f"--out {printable(root)}: cannot read the folder ({err.strerror or err}); choose another --out") from None
        if MARKER in names:
            previous = _read_marker(root)
        elif names:
            shown = ", ".join(repr(printable(n)) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise VislabError(
                f"--out {printable(root)}: holds files predict did not write ({shown}); "
                "choose another --out, a new or empty folder, so the predictions never mix with them"
            )
    root = Path(os.path.realpath(make_folder(root, "--out")))
    _write_marker(root, previous)  # a folder that cannot be written fails here, before predicting
    return OutFolder(root, previous)


def _read_marker(root: Path) -> list[str]:
    marker = root / MARKER
    try:
        files = json.loads(read_bounded(marker, 1 << 26).decode("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise VislabError(f"{printable(marker)}: unreadable, so what predict wrote there is unknown; choose another --out") from None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise VislabError(f"{printable(marker)}: unreadable, so what predict wrote there is unknown; choose another --out")
    return files


def _write_marker(root: Path, files: list[str]) -> None:
    marker = inside(root, MARKER)
    try:
        write_file(marker, json.dumps({"written_by": "vislab predict", "files": files}, indent=1) + "\n")
    except OSError as err:
        raise cannot_write(marker, err) from None
