"""The manifest: one table that every command after `curate` reads instead of walking folders.

A dataset directory holds `manifest.csv` (one row per source file found) and
`curation.json` (what was done and why). Rows are sorted by path and written with fixed
column order and float formatting, so the same inputs give a byte-identical file.

A detection dataset also holds `boxes.csv` (see `vislab.data.boxes`): having one is what
makes a dataset a detection dataset, and it is part of the dataset's hash.

curate writes curation.json twice: first a short record of the curate under way (`"state":
"curating"`, its fingerprint and options), then, once manifest.csv (and boxes.csv) are
written, the full record. A curate stopped in between leaves the first: reading the
manifest refuses it, and the next curate with the same options makes the dataset again.

A manifest may be edited by hand, so reading one checks every value later commands rely
on: a status or split outside the allowed values (`TRAIN` included: case is not guessed,
since a silently dropped row would change a dataset unseen), a size that is not an
integer, a path holding a NUL (no file name can) or a file listed twice is a one-line
error naming the line, the column and the allowed values. A relative path is read against the dataset folder.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from vislab.data.csvfile import line_of_row, read_csv_file
from vislab.data.io import IMAGE_EXTS
from vislab.errors import DatasetError, VislabError
from vislab.fsguard import MAX_PIXELS, SpecialFileError, inside, open_regular, printable, read_bounded, write_file
from vislab.markers import CURATION_NAME, DATASET, MANIFEST_NAME, RUN_JSON, SWEEP, TRAINING_OUTPUTS, WHAT, folder_kind, trained_on

BOXES_NAME = "boxes.csv"
CURATING = "curating"  # curation.json's "state" while curate writes the dataset (a finished one has none)

OK = "ok"
QUARANTINED = "quarantined"
EXCLUDED = "excluded"
STATUSES = (OK, QUARANTINED, EXCLUDED)
SPLITS = ("train", "val", "test", "")

# Column order is part of the file format: later columns may be added, never reordered.
COLUMNS = [
    "path",
    "label",
    "split",
    "status",
    "reason",
    "width",
    "height",
    "format",
    "bytes",
    "sha256",
    "phash",
    "group",
]
REQUIRED = ["path", "label", "split", "status"]
INTEGER_COLUMNS = ("width", "height", "bytes")


def manifest_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / MANIFEST_NAME


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})


def write_manifest(df: pd.DataFrame, dataset_dir: str | Path) -> Path:
    """Write rows in canonical order and format; returns the file path."""
    out = df.copy()
    for col in COLUMNS:
        if col not in out.columns:
            out[col] = ""
    extra = [c for c in out.columns if c not in COLUMNS]
    out = out[COLUMNS + sorted(extra)]
    out = out.sort_values("path", kind="mergesort").reset_index(drop=True)
    for col in INTEGER_COLUMNS:
        out[col] = out[col].map(lambda v: "" if v is None or v == "" or pd.isna(v) else str(int(v)))
    out = out.fillna("")
    Path(dataset_dir).mkdir(parents=True, exist_ok=True)
    path = inside(dataset_dir, MANIFEST_NAME)
    # a temporary name of this process's own (fsguard.replacing): a fixed one was shared by
    # two writers, whose renames then failed or mixed
    write_file(path, out.to_csv(index=False, lineterminator="\n", quoting=_quoting(out)))
    return path


def _quoting(df: pd.DataFrame) -> int:
    """QUOTE_ALL when a cell holds a carriage return, which the csv module leaves unquoted
    with a "\\n" terminator (a reader would end the row there); otherwise QUOTE_MINIMAL, so
    every other manifest, and its hash, stays byte-identical to what curate always wrote."""
    has_cr = any(df[col].astype(str).str.contains("\r", regex=False).any() for col in df.columns)
    return csv.QUOTE_ALL if has_cr else csv.QUOTE_MINIMAL


def _shown(path: str) -> str:
    """`path` relative to the working folder when it lies below it (as a user typed it)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _no_manifest(folder: Path) -> str:
    """Why `folder` is not a dataset, and the command that makes one (never curating into a
    photo folder: the dataset goes beside the photos). A run directory or a sweep is named as
    such, with the dataset it trained on: curating it would make classes of its plots."""
    if not folder.exists():
        return f"{folder}: no such folder; pass a dataset folder written by `vislab curate SOURCE --out DATASET_DIR`"
    kind = folder_kind(folder)
    if kind in TRAINING_OUTPUTS:
        dataset = trained_on(folder)
        whose = "its trials'" if kind == SWEEP else "its"
        fix = f"the one it trained on is {_shown(dataset)} ({whose} {RUN_JSON})" if dataset else "one written by `vislab curate SOURCE --out DATASET_DIR`"
        return f"{folder} is {WHAT[kind]}, not a dataset; pass a dataset folder: {fix}"
    try:
        entries = list(itertools.islice(os.scandir(folder), 1000))
    except OSError:
        entries = []
    shown = [e for e in entries if not e.name.startswith(".")]
    # a subfolder counts as photos (a class folder) unless vislab wrote it (runs/, datasets/)
    photos = any(os.path.splitext(e.name)[1].lower() in IMAGE_EXTS for e in shown) or any(
        e.is_dir() and folder_kind(e.path) is None for e in shown
    )
    if photos:
        return (
            f"{folder}: a folder of photos, not a curated dataset (no manifest.csv); run "
            f"`vislab curate {folder} --out datasets/{folder.resolve().name or 'mine'}` and pass that folder"
        )
    datasets = sorted(e.name for e in shown if e.is_dir() and folder_kind(e.path) == DATASET)
    if datasets:
        return f"{folder}: not a dataset (no manifest.csv) but a folder of {len(datasets)} dataset folder(s); pass one of them, e.g. {folder / datasets[0]}"
    return f"{folder}: no manifest.csv here; run `vislab curate SOURCE --out {folder}` first"


def read_manifest(dataset_dir: str | Path) -> pd.DataFrame:
    """Read and check a manifest: the columns later commands rely on, and their values."""
    require_dataset(dataset_dir)
    path = manifest_path(dataset_dir)
    df = read_csv_file(path, "manifest")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise VislabError(f"{path}: missing column(s) {', '.join(missing)}; re-run `vislab curate`")
    _check_values(df, path)
    _resolve_paths(df, path)
    return df


def require_dataset(dataset_dir: str | Path) -> None:
    """A one-line error unless `dataset_dir` is a dataset folder curate finished: what a
    reader that only hashes the manifest (a prepared cache) checks before trusting it."""
    if Path(dataset_dir).is_file():
        raise VislabError(f"{dataset_dir} is a file, not a dataset folder; give the folder `vislab curate --out` wrote")
    path = manifest_path(dataset_dir)
    if not path.exists() and not path.is_symlink():
        raise VislabError(_no_manifest(Path(dataset_dir)))
    if unfinished_curation(dataset_dir):
        raise DatasetError(
            f"{dataset_dir}: a `vislab curate` into it has not finished ({CURATION_NAME} says \"state\": \"{CURATING}\"; "
            "it stopped, or is still running); run that curate again"
        )


def _resolve_paths(df: pd.DataFrame, path: Path) -> None:
    """Make relative paths (a hand-edited row) absolute against the dataset folder, so every
    command reads the same file whatever the working folder; a path listed twice is a
    one-line error naming both lines (curate never writes one, and materialize would place it
    twice)."""
    base = path.parent.absolute()
    paths = [p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in df["path"]]
    first: dict[str, int] = {}
    for row, p in enumerate(paths):
        if p in first:
            raise VislabError(
                f"{path} line {line_of_row(path, row)}: path {df['path'].iloc[row]!r} repeats line "
                f"{line_of_row(path, first[p])}; keep one row per file"
            )
        first[p] = row
    df["path"] = paths


def _check_values(df: pd.DataFrame, path: Path) -> None:
    """Refuse the first value outside its column's domain, naming its line; sizes become
    nullable integers."""

    def refuse(bad: pd.Series, col: str, allowed: str, hint: str = "") -> None:
        row = int(bad.to_numpy().nonzero()[0][0])
        value = df[col].iloc[row]
        raise VislabError(
            f"{path} line {line_of_row(path, row)}: {col} {value!r} is not {allowed}{hint}; "
            "fix the row or re-run `vislab curate`"
        )

    empty = df["path"].str.strip() == ""
    if empty.any():
        refuse(empty, "path", "a file path")
    nul = df["path"].str.contains("\x00", regex=False)
    if nul.any():  # no file name holds one: it was typed or pasted in, and os.stat would raise on it
        refuse(nul, "path", "a file path (it holds a NUL character)")
    for col, allowed in (("status", STATUSES), ("split", SPLITS)):
        bad = ~df[col].isin(allowed)
        if bad.any():
            meant = df[col][bad].iloc[0].strip().lower()
            hint = f" (write '{meant}')" if meant and meant in allowed else ""
            names = ", ".join(v for v in allowed if v) + (" or empty" if "" in allowed else "")
            refuse(bad, col, f"one of {names}", hint)
    for col in INTEGER_COLUMNS:
        if col in df.columns:
            nums = pd.to_numeric(df[col], errors="coerce")
            whole = nums.notna() & (nums >= 0) & (nums < 1e18) & (nums % 1 == 0)
            bad = (df[col] != "") & ~whole
            if bad.any():
                refuse(bad, col, "a whole number from 0 to 10^18, or empty")
            df[col] = nums.astype("Int64")


def boxes_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / BOXES_NAME


def has_boxes(dataset_dir: str | Path) -> bool:
    """Whether the dataset is a detection dataset (it has a boxes table)."""
    return os.path.lexists(boxes_path(dataset_dir))


def pixel_limit(recorded: Any) -> int:
    """A recorded `--max-pixels` (curation.json's options, run.json, metrics.json) as the limit
    to decode under: never below the default, which every reader allows anyway; the default
    when none (or no number) is recorded."""
    return max(MAX_PIXELS, recorded) if isinstance(recorded, int) and not isinstance(recorded, bool) else MAX_PIXELS


def dataset_max_pixels(dataset_dir: str | Path) -> int:
    """The pixel limit the dataset was curated with (`--max-pixels`), or the default: what
    decoding its images (training, a cache, evaluate) must allow, since curate accepted them."""
    options = read_curation(dataset_dir).get("options")
    return pixel_limit(options.get("max_pixels") if isinstance(options, dict) else None)


def recorded_max_pixels(record: dict[str, Any]) -> int:
    """The pixel limit of a run (run.json) or an evaluation (metrics.json): its `max_pixels`,
    the curate --max-pixels of the dataset it was trained or scored on, so predict, explain
    and the report's pictures decode photos like those without calling them decompression
    bombs. A record from before that field asks its `dataset_dir`, when still there."""
    if "max_pixels" in record:
        return pixel_limit(record["max_pixels"])
    dataset = record.get("dataset_dir")
    try:
        return dataset_max_pixels(dataset) if isinstance(dataset, str) and dataset else pixel_limit(None)
    except VislabError:  # a broken curation.json: that dataset's own readers say so
        return pixel_limit(None)


def refuse_boxes(dataset_dir: str | Path) -> None:
    """A one-line error when a task that reads labels is handed a detection dataset, whose
    rows have no label and would otherwise read as 'no classes' or 'accuracy n/a'."""
    if has_boxes(dataset_dir):
        raise DatasetError(
            f"{dataset_dir} is a detection dataset (it has {BOXES_NAME}), and this run classifies: "
            "pass a dataset curated from class folders or a label CSV, or use a detection recipe"
        )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open_regular(path) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except SpecialFileError as err:
        raise VislabError(f"{err}; {path.name} must be a regular file, re-run `vislab curate`") from None
    except OSError as err:
        raise VislabError(f"{path}: cannot read ({err.strerror or err}); check its permissions") from None
    return digest.hexdigest()


def manifest_hash(dataset_dir: str | Path) -> str:
    """sha256 that identifies the exact dataset a run or cache was built from: the manifest
    file's own, or, for a detection dataset, one over the manifest's and boxes.csv's, so an
    edited box is another dataset to resume checks, the cache and evaluation alike. A
    classification dataset keeps the hash it always had."""
    digest = _file_sha256(manifest_path(dataset_dir))
    if not has_boxes(dataset_dir):
        return digest
    both = f"{MANIFEST_NAME} {digest}\n{BOXES_NAME} {_file_sha256(boxes_path(dataset_dir))}\n"
    return hashlib.sha256(both.encode("utf-8")).hexdigest()


def read_curation(dataset_dir: str | Path) -> dict[str, Any]:
    """curation.json of a dataset as a dict ({} when there is none); a broken one is a
    one-line error."""
    path = Path(dataset_dir) / CURATION_NAME
    if not path.exists():
        return {}
    try:
        recorded = json.loads(read_bounded(path, 1 << 24).decode("utf-8"))
    except SpecialFileError as err:
        raise VislabError(f"{err}; {CURATION_NAME} must be a regular file, re-run `vislab curate`") from None
    except OSError as err:
        raise VislabError(f"{path}: cannot read ({err.strerror or err}); check its permissions") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        why = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        raise VislabError(f"{path}: not valid JSON ({why}); re-run `vislab curate`") from None
    if not isinstance(recorded, dict):
        raise VislabError(f"{path}: not a JSON object; re-run `vislab curate`")
    return recorded


def unfinished_curation(dataset_dir: str | Path) -> dict[str, Any] | None:
    """The record of a curate under way, or stopped before it finished, that curation.json
    holds; None for a finished (or absent, or unreadable) one, which readers that need it judge."""
    try:  # a record of a curate under way is small: a larger file is a finished one, left unparsed
        recorded = json.loads(read_bounded(Path(dataset_dir) / CURATION_NAME, 1 << 20).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) and recorded.get("state") == CURATING else None


def changed_since_curate(df: pd.DataFrame) -> list[str]:
    """Paths of the usable rows whose file is no longer the size curate recorded (`bytes`):
    replaced or re-saved since, so possibly another picture under the row's label. One stat
    per file (no reading); a file gone is left to the loaders, which report it unreadable."""
    rows = usable(df)
    if "bytes" not in rows.columns:
        return []
    changed = []
    for path, size in zip(rows["path"], rows["bytes"]):
        if pd.isna(size):
            continue
        try:
            now = os.stat(path).st_size
        except (OSError, ValueError):
            continue
        if now != int(size):
            changed.append(path)
    return changed


def warn_changed(dataset_dir: str | Path) -> None:
    """One warning line (not an error: a re-saved photo keeps its label) when images of the
    dataset changed size since `vislab curate`, naming the first; what train and prepare
    print when they start."""
    df = read_manifest(dataset_dir)
    changed = changed_since_curate(df)
    if changed:
        print(
            f"warning: {len(changed)} of the {len(usable(df))} images of {printable(dataset_dir)} changed since `vislab curate` "
            f"(their size is not the manifest's bytes), e.g. {printable(changed[0])}; they are used with the labels curate "
            "recorded: if they are other pictures now, run `vislab curate` again",
            file=sys.stderr,
            flush=True,
        )


def reason_kind(reason: str) -> str:
    """'duplicate_of:/a/b.jpg' -> 'duplicate_of': reasons are counted by kind."""
    return reason.split(":", 1)[0]


def usable(df: pd.DataFrame, split: str | None = None) -> pd.DataFrame:
    """Rows with status ok (and the given split), the only ones training and evaluation see."""
    rows = df[df["status"] == OK]
    if split is not None:
        rows = rows[rows["split"] == split]
    return rows.reset_index(drop=True)


def class_names(df: pd.DataFrame) -> list[str]:
    """Sorted labels of usable rows; the index of a name is its class id everywhere."""
    labels = usable(df)["label"]
    return sorted(x for x in labels.unique() if x != "")
