"""`vislab materialize`: split/class folder trees of a manifest's usable images.

For tools that want `train/<class>/img.jpg` folders (a detection dataset is written as YOLO
or COCO instead: `vislab.data.det_writers`). The tree holds links or copies, never
the sources themselves; a marker file lists what was written, so re-running replaces exactly
those entries and never deletes anything else.

Every path is built inside OUT (`fsguard.inside`): a label that is not a safe folder name
(a hand-edited manifest; curate never marks one usable) is a one-line error naming its line,
a source file name that is not safe (a newline in it, say) is replaced by a hash of its
path, and an entry that already exists is never replaced (links and copies are created
exclusively), so no file of anyone's is overwritten.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import Progress

from vislab.data.csvfile import line_of_row
from vislab.data.manifest import BOXES_NAME, OK, has_boxes, manifest_hash, manifest_path, read_manifest, usable
from vislab.errors import VislabError
from vislab.fsguard import folder_name_problem, folder_problem, inside, make_folder, open_regular, read_bounded
from vislab.markers import MATERIALIZE_MARKER

MODES = ("symlink", "hardlink", "copy")
MARKER = MATERIALIZE_MARKER
UNSPLIT = "unsplit"


def _path_hash(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _target_names(paths: list[str]) -> list[str]:
    """File names inside a class folder: names that would collide get a short path hash,
    names that are not safe file names become the hash (keeping a safe extension)."""
    names = [os.path.basename(p) for p in paths]
    counts = Counter(names)
    out = []
    for path, name in zip(paths, names):
        stem, ext = os.path.splitext(name)
        if folder_name_problem(name) is not None:
            name = _path_hash(path) + (ext if folder_name_problem(ext) is None else "")
        elif counts[name] > 1:
            name = f"{stem}-{_path_hash(path)}{ext}"
        out.append(name)
    return out


def _check_labels(df: pd.DataFrame, dataset_dir: str | Path) -> None:
    """Refuse a usable row whose label cannot be one folder-name component."""
    ok = df[(df["status"] == OK) & (df["label"] != "")]
    for row, label in zip(ok.index, ok["label"]):
        problem = folder_name_problem(label)
        if problem is not None:
            where = manifest_path(dataset_dir)
            raise VislabError(
                f"{where} line {line_of_row(where, int(row))}: label {label!r} {problem}, so it cannot "
                "name a folder; fix the row or re-run `vislab curate`"
            )


def _read_marker(out: Path) -> list[str]:
    try:
        record = json.loads(read_bounded(out / MARKER, 1 << 26).decode("utf-8"))
    except (OSError, ValueError):
        return []
    files = record.get("files", []) if isinstance(record, dict) else []
    return [f for f in files if isinstance(f, str)]


def _clear_previous(out: Path) -> None:
    """Remove only the entries a previous run recorded (links and copies, not sources), and
    only where they lie inside OUT: a recorded name whose folder now leads elsewhere (a link
    put there since) is left alone."""
    folders = set()
    for rel in _read_marker(out):
        parts = Path(rel)
        if parts.is_absolute() or ".." in parts.parts or not parts.name:
            continue
        try:
            parent = inside(out, parts.parent)
        except VislabError:
            continue
        target = parent / parts.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        folders.update(p for p in target.parents if p != out and out in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass
    inside(out, MARKER).unlink(missing_ok=True)


def _copy_new(source: str, target: Path) -> None:
    """Copy into a file that must not exist yet (O_EXCL): an existing one is never replaced."""
    with open_regular(source) as src, open(target, "xb") as dst:
        try:
            shutil.copyfileobj(src, dst, 1 << 20)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    shutil.copystat(source, target)


def _place(source: str, target: Path, mode: str) -> None:
    try:
        if mode == "symlink":
            os.symlink(source, target)
        elif mode == "hardlink":
            os.link(source, target)
        else:
            _copy_new(source, target)
    except FileExistsError:
        raise VislabError(
            f"{target} already exists and was not written by vislab materialize; "
            "nothing was replaced: move it away or choose a new --out"
        ) from None
    except OSError as err:
        if mode == "hardlink" and err.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise VislabError(
                f"cannot hardlink {source} into {target.parent} ({os.strerror(err.errno)}); "
                "use --mode symlink or --mode copy"
            ) from None
        raise VislabError(f"cannot {mode} {source} to {target} ({err.strerror or err}); re-run `vislab curate`") from None


def placer(mode: str) -> Callable[[str, Path], None]:
    """`place(source, target)` putting one image in place by `mode`, for the detection
    writers: a source gone since curation, or a target already there, is a one-line error."""
    if mode not in MODES:
        raise VislabError(f"--mode {mode!r} is not one of {', '.join(MODES)}")

    def place(source: str, target: Path) -> None:
        if not os.path.exists(source):
            raise VislabError(f"{source} is in the manifest but no longer exists; re-run `vislab curate`")
        _place(source, target, mode)

    return place


def _make_folder(out: Path, folder: Path) -> Path:
    path = inside(out, folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VislabError(f"cannot make folder {path} ({err.strerror}); move what is there away or choose a new --out") from None
    return path


def open_output(out: Path, sources: Iterable[str]) -> None:
    """Make OUT ready for a materialize (class folders, YOLO or COCO): new, empty, or an
    earlier materialize's output, whose recorded entries are removed; never a folder holding
    one of the `sources` (links into it would be links to themselves)."""
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise VislabError(
            f"--out {out} is not empty and was not made by vislab materialize; choose a new folder"
        )
    real_out = os.path.realpath(out)
    for path in sources:
        if os.path.realpath(path).startswith(real_out + os.sep):
            raise VislabError(
                f"--out {out} contains source image {path}; choose a folder outside the sources"
            )
    make_folder(out)
    _clear_previous(out)


def record_output(out: Path, dataset_dir: str | Path, mode: str, written: list[str]) -> None:
    """Write OUT's marker listing the `written` entries (relative to OUT): the next run
    replaces exactly those, and curate skips a folder holding it (a materialized copy inside
    a source is not more images). Called even after a failure, to clean up next time."""
    record = {"manifest_sha256": manifest_hash(dataset_dir), "mode": mode, "files": written}
    marker = inside(out, MARKER)
    marker.unlink(missing_ok=True)
    marker.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def materialize(dataset_dir: str | Path, out: str | Path, mode: str = "symlink") -> int:
    """Write OUT/<split>/<class>/<file> for every usable row; returns the number written.

    Rows without a split go under `unsplit/`, unlabelled rows straight into the split
    folder. OUT must be new, empty, or a previous materialize output.
    """
    if mode not in MODES:
        raise VislabError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    out = Path(os.path.abspath(out))
    problem = folder_problem(out)
    if problem is not None:
        raise VislabError(f"--out {out} {problem}; give a folder")
    full = read_manifest(dataset_dir)
    if has_boxes(dataset_dir):
        raise VislabError(
            f"{dataset_dir} is a detection dataset (it has {BOXES_NAME}); "
            "write it for other tools with --format yolo or --format coco"
        )
    _check_labels(full, dataset_dir)
    df = usable(full)
    open_output(out, df["path"])

    written: list[str] = []
    paths = df["path"].tolist()
    folders = [
        Path(split or UNSPLIT, label) if label else Path(split or UNSPLIT)
        for split, label in zip(df["split"], df["label"])
    ]
    by_folder: dict[Path, list[int]] = {}
    for i, folder in enumerate(folders):
        by_folder.setdefault(folder, []).append(i)
    try:
        # on stderr, and only on a terminal: elsewhere rich writes a blank line when it stops
        shown = Console(stderr=True)
        with Progress(console=shown, transient=True, disable=not shown.is_terminal) as progress:
            task = progress.add_task(f"{mode} files", total=len(paths))
            for folder, rows in sorted(by_folder.items()):
                place = _make_folder(out, folder)
                for i, name in zip(rows, _target_names([paths[i] for i in rows])):
                    if not os.path.exists(paths[i]):
                        raise VislabError(
                            f"{paths[i]} is in the manifest but no longer exists; re-run `vislab curate`"
                        )
                    _place(paths[i], place / name, mode)
                    written.append(str(folder / name))
                    progress.advance(task)
    finally:
        record_output(out, dataset_dir, mode, written)
    return len(written)
