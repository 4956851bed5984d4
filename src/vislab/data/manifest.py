"""The manifest: one table that every command after `curate` reads instead of walking folders.

A dataset directory holds `manifest.csv` (one row per source file found) and
`curation.json` (what was done and why). Rows are sorted by path and written with fixed
column order and float formatting, so the same inputs give a byte-identical file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from vislab.errors import VislabError

MANIFEST_NAME = "manifest.csv"
CURATION_NAME = "curation.json"

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
    for col in ("width", "height", "bytes"):
        out[col] = out[col].map(lambda v: "" if v is None or v == "" or pd.isna(v) else str(int(v)))
    out = out.fillna("")
    path = manifest_path(dataset_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    out.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)
    return path


def read_manifest(dataset_dir: str | Path) -> pd.DataFrame:
    """Read a manifest, checking that it has the columns later commands rely on."""
    path = manifest_path(dataset_dir)
    if not path.is_file():
        raise VislabError(
            f"{path}: no manifest here; run `vislab curate SOURCE --out {Path(dataset_dir)}` first"
        )
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise VislabError(f"{path}: missing column(s) {', '.join(missing)}; re-run `vislab curate`")
    for col in ("width", "height", "bytes"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def manifest_hash(dataset_dir: str | Path) -> str:
    """sha256 of the manifest file: identifies the exact dataset a run or cache was built from."""
    return hashlib.sha256(manifest_path(dataset_dir).read_bytes()).hexdigest()


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
