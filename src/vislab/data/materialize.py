"""`vislab materialize`: split/class folder trees of a manifest's usable images.

For tools that want `train/<class>/img.jpg` folders. The tree holds links or copies, never
the sources themselves; a marker file lists what was written, so re-running replaces exactly
those entries and never deletes anything else.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from rich.progress import Progress

from vislab.data.manifest import manifest_hash, read_manifest, usable
from vislab.errors import VislabError

MODES = ("symlink", "hardlink", "copy")
MARKER = ".vislab-materialized.json"
UNSPLIT = "unsplit"


def _target_names(paths: list[str]) -> list[str]:
    """File names inside a class folder; names that would collide get a short path hash."""
    names = [os.path.basename(p) for p in paths]
    counts = Counter(names)
    out = []
    for path, name in zip(paths, names):
        if counts[name] > 1:
            stem, ext = os.path.splitext(name)
            name = f"{stem}-{hashlib.sha256(path.encode('utf-8')).hexdigest()[:8]}{ext}"
        out.append(name)
    return out


def _clear_previous(out: Path) -> None:
    """Remove only the entries a previous run recorded (links and copies, not sources)."""
    marker = out / MARKER
    try:
        written = json.loads(marker.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError):
        written = []
    folders = set()
    for rel in written:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            continue  # only ever inside OUT
        target = out / rel
        if target.is_symlink() or target.is_file():
            target.unlink()
        folders.update(target.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder != out and out in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                pass
    marker.unlink(missing_ok=True)


def _place(source: str, target: Path, mode: str) -> None:
    if mode == "symlink":
        os.symlink(source, target)
    elif mode == "hardlink":
        try:
            os.link(source, target)
        except OSError as err:
            if err.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise VislabError(
                    f"cannot hardlink {source} into {target.parent} ({os.strerror(err.errno)}); "
                    "use --mode symlink or --mode copy"
                ) from None
            raise
    else:
        shutil.copy2(source, target)


def materialize(dataset_dir: str | Path, out: str | Path, mode: str = "symlink") -> int:
    """Write OUT/<split>/<class>/<file> for every usable row; returns the number written.

    Rows without a split go under `unsplit/`, unlabelled rows straight into the split
    folder. OUT must be new, empty, or a previous materialize output.
    """
    if mode not in MODES:
        raise VislabError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    df = usable(read_manifest(dataset_dir))
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise VislabError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise VislabError(
            f"--out {out} is not empty and was not made by vislab materialize; choose a new folder"
        )
    real_out = os.path.realpath(out)
    for path in df["path"]:
        if os.path.realpath(path).startswith(real_out + os.sep):
            raise VislabError(
                f"--out {out} contains source image {path}; choose a folder outside the sources"
            )
    _clear_previous(out)

    written: list[str] = []
    paths = df["path"].tolist()
    folders = [
        Path(split or UNSPLIT, label) if label else Path(split or UNSPLIT)
        for split, label in zip(df["split"], df["label"])
    ]
    by_folder: dict[Path, list[int]] = {}
    for i, folder in enumerate(folders):
        by_folder.setdefault(folder, []).append(i)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"{mode} files", total=len(paths))
            for folder, rows in sorted(by_folder.items()):
                (out / folder).mkdir(parents=True, exist_ok=True)
                for i, name in zip(rows, _target_names([paths[i] for i in rows])):
                    if not os.path.exists(paths[i]):
                        raise VislabError(
                            f"{paths[i]} is in the manifest but no longer exists; re-run `vislab curate`"
                        )
                    _place(paths[i], out / folder / name, mode)
                    written.append(str(folder / name))
                    progress.advance(task)
    finally:
        # Recorded even after a failure, so the next run can clean up what this one wrote.
        record = {"manifest_sha256": manifest_hash(dataset_dir), "mode": mode, "files": written}
        (out / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return len(written)
