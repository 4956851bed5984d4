"""`photos.csv`: the attribution table `vislab collect` writes beside the images it fetched.

One row per image file: where it came from (page and original URL), who made it and under
which licence, its size and sha256, and its path relative to the CSV. `vislab curate
--photos DIR/photos.csv` reads it as a source; the attribution columns travel into the
manifest so every trained-on image can still be credited.
"""

from __future__ import annotations

from pathlib import Path

from vislab.data.sources import Found, csv_paths, merge_found, read_csv, require_columns
from vislab.errors import VislabError

PHOTOS_NAME = "photos.csv"

# Column order is part of the file format: later columns may be added, never reordered.
COLUMNS = [
    "id",
    "source",
    "query",
    "label",
    "license",
    "license_name",
    "license_url",
    "owner",
    "owner_name",
    "title",
    "page_url",
    "url",
    "width",
    "height",
    "date_taken",
    "bytes",
    "sha256",
    "file",
]
# What a manifest row needs to credit its image (title, author, source, licence).
MANIFEST_COLUMNS = ["license", "license_name", "license_url", "owner_name", "title", "page_url", "url"]


def photos_csv_path(path: str | Path) -> Path:
    """`path` itself, or `path/photos.csv` when `path` is a collect folder."""
    path = Path(path)
    return path / PHOTOS_NAME if path.is_dir() else path


def read_photos_csv(path: str | Path, label_column: str = "label") -> dict[str, Found]:
    """The images a photos.csv names, keyed by absolute path, each with its attribution
    columns in `Found.extra`.

    Labels come from `label_column` ("label" by default; "query" labels each image by
    the search that found it). When no row has a label the folder is an unlabelled
    dataset (label ""), as with a flat folder; otherwise a row without one is unlabelled.
    A file listed twice with different labels is excluded as conflicting, as in a labels CSV.
    """
    csv = photos_csv_path(path)
    df = read_csv(csv, "photos")
    require_columns(df, csv, {"--photos (collect's file column)": "file", "--label-column": label_column})
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise VislabError(
            f"{csv}: no column(s) {', '.join(missing)}; is this a photos.csv written by `vislab collect`?"
        )
    rows = df[df["file"].str.strip() != ""]
    labels = [lab.strip() for lab in rows[label_column]]
    unlabelled = "" if not any(labels) else None
    return merge_found(
        Found(path, label or unlabelled, extra=extra)
        for path, label, extra in zip(csv_paths(rows, csv, "file"), labels, rows[MANIFEST_COLUMNS].to_dict("records"))
    )
