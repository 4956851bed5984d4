"""The one folder walk: every command that finds files in folders (curate's folder source,
predict and explain) walks them here, so they agree on links and loops.

Links to folders are followed when they lead out of the walked folder (photos kept on
another disk), each real folder once: a link back to an ancestor or a second link to a
folder already walked is a loop, skipped and named, never walked twice. Links to folders
inside the walked folder are skipped too (that folder is read under its own path, so a link
can neither list files twice nor relabel a class). Nothing is dropped silently: each skipped
entry comes back with its kind. Callers add their own rules (curate: hidden entries, vislab
output folders) through `skip_entry` and `skip_folder`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from vislab.markers import PREDICT_MARKER

UNREADABLE_FOLDER = "unreadable_folder"
INNER_FOLDER_LINK = "inner_folder_link"
FOLDER_LOOP = "folder_loop"
PREDICT_OUTPUT = "predict_output"
VISLAB_OUTPUT = "vislab_output"

# Why a walk skipped an entry, in words for per-file messages (curate counts the kinds instead).
SKIP_REASONS = {
    UNREADABLE_FOLDER: "folder cannot be listed (permission denied?)",
    INNER_FOLDER_LINK: "link to a folder inside the walked folder, whose files are listed under their own path",
    FOLDER_LOOP: "symbolic link loop (links back to a folder being walked, or one walked already)",
    PREDICT_OUTPUT: "folder an earlier `vislab predict --out` wrote: its drawings and labels are not inputs",
    VISLAB_OUTPUT: "run directory or sweep folder (`vislab train` or `vislab sweep` wrote it): its plots and overlays are not inputs",
}


@dataclass
class Walk:
    """`files`: (path, first folder below the top or None) in walk order, sorted per folder;
    `skipped`: (path, kind) for every entry left out."""

    files: list[tuple[str, str | None]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


EntryRule = Callable[[os.DirEntry], "str | None"]
FolderRule = Callable[[str, list[os.DirEntry]], "str | None"]


def walk_files(top: str, skip_entry: EntryRule | None = None, skip_folder: FolderRule | None = None) -> Walk:
    """Every non-folder entry under `top` (files, but also pipes and broken links: see
    `file_problem`), following folder links as the module says. `skip_entry` returns a kind
    for an entry to leave out; `skip_folder` one for a folder (below `top`) whose entries
    are not read."""
    real_top = os.path.join(os.path.realpath(top), "")
    walk = Walk()
    seen: set[tuple[int, int]] = set()
    # each folder with the real paths of the folders walked to reach it (itself included)
    stack: list[tuple[str, str | None, tuple[str, ...]]] = [(top, None, ())]
    while stack:
        folder, first, above = stack.pop()
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            walk.skipped.append((folder, UNREADABLE_FOLDER))
            continue
        if (st.st_dev, st.st_ino) in seen:
            walk.skipped.append((folder, FOLDER_LOOP))
            continue
        seen.add((st.st_dev, st.st_ino))
        above = (*above, os.path.join(os.path.realpath(folder), ""))
        kind = skip_folder(folder, entries) if skip_folder is not None and folder != top else None
        if kind:
            walk.skipped.append((folder, kind))
            continue
        subfolders: list[tuple[str, str | None, tuple[str, ...]]] = []
        for entry in entries:
            kind = skip_entry(entry) if skip_entry is not None else None
            if kind:
                walk.skipped.append((entry.path, kind))
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            target = os.path.join(os.path.realpath(entry.path), "") if is_dir and entry.is_symlink() else None
            if target is not None and any(real.startswith(target) for real in above):
                walk.skipped.append((entry.path, FOLDER_LOOP))  # back to a folder on the way here, or above one
            elif target is not None and target.startswith(real_top):
                walk.skipped.append((entry.path, INNER_FOLDER_LINK))
            elif is_dir:
                subfolders.append((entry.path, entry.name if first is None else first, above))
            else:
                walk.files.append((entry.path, first))
        stack.extend(reversed(subfolders))  # popped in name order
    return walk


def file_problem(path: str) -> str | None:
    """Why an entry a walk listed is not a regular file to read (a broken or looping link,
    a pipe, socket or device), or None for a regular file."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        if os.path.islink(path):
            return "dangling symbolic link (its target does not exist)"
        return f"cannot be read ({err.strerror or type(err).__name__})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device)"
    return None
