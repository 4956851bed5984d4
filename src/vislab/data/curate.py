"""`vislab curate`: from files on disk to a manifest, a curation record and a histogram.

The order of decisions is fixed and visible in the manifest: files that cannot be used are
quarantined (the file is broken); usable files can then be excluded (a label rule, a size
or aspect filter, a duplicate, class selection). Only rows that end `ok` are ever trained on.
Source files are only read.

A label that cannot be a folder name (`../x`, `/abs`, a control character, padding spaces:
see `fsguard.folder_name_problem`) is refused, not rewritten: its files are excluded with
reason `unsafe_label`, so the manifest keeps the label exactly as the source gave it and no
later writer (`vislab materialize`) ever builds a path from it. Every option is checked
before any file is read, and everything written stays inside `--out`.

A detection dataset (YOLO, KITTI, COCO, VOC: `--format`, or told by its layout) goes
through the same image checks; `curate_detect` reads its boxes and decides what becomes
of them (`boxes.csv`), in place of class selection and class-stratified splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.console import Console

from vislab import __version__
from vislab.data import sources as src
from vislab.data.boxes import parse_class_list, parse_class_map
from vislab.data.checks import inspect_files
from vislab.data.curate_detect import DetectionCuration, detection_format
from vislab.data.det_types import FORMATS
from vislab.data.dedupe import MAX_THRESHOLD, hex_to_hashes, near_copy_groups
from vislab.data.io import LOW_BITS_MAX
from vislab.fsguard import MAX_PIXELS
from vislab.data.manifest import (
    BOXES_NAME,
    COLUMNS,
    CURATING,
    CURATION_NAME,
    EXCLUDED,
    MANIFEST_NAME,
    OK,
    QUARANTINED,
    manifest_hash,
    unfinished_curation,
    write_manifest,
)
from vislab.data.photos import photos_csv_path, read_photos_csv
from vislab.data.split import assign_splits, class_warnings, parse_ratios, select_classes, shortfall_warning
from vislab.data.stats import HISTOGRAM_NAME, plot_class_histogram, summarize_manifest
from vislab.errors import VislabError, check_keywords
from vislab.fsguard import (
    folder_name_problem,
    folder_problem,
    inside,
    make_folder,
    read_bounded,
    regular_file_problem,
    remove_orphan_temps,
    temp_of,
    write_file,
)
from vislab.locks import LOCK_NAME, folder_lock, remove_if_unused
from vislab.markers import DATASET, MATERIALIZED, PREDICTED, WHAT
from vislab.usertext import term

UNLABELLED = "unlabelled"
TOO_SMALL = "too_small"
WRONG_ASPECT = "wrong_aspect"
DUPLICATE_OF = "duplicate_of"
UNSAFE_LABEL = "unsafe_label"
EXTRA_COLUMNS = ["orientation"]
# Files curate writes into --out (through temporary ones, `.NAME.tmpPID`, see `_ours`), and
# with its lock file, all it keeps there.
WRITTEN_NAMES = (MANIFEST_NAME, CURATION_NAME, HISTOGRAM_NAME, BOXES_NAME)
OUTPUT_NAMES = (*WRITTEN_NAMES, LOCK_NAME)
# Options that change how fast a dataset is made, not what it contains.
RUNTIME_OPTIONS = {"workers", "overwrite", "strict"}
# Detection options, recorded only when set, so a classification dataset's record (and
# fingerprint) stays what it was before they existed.
DETECTION_DEFAULTS = {"format": "auto", "classes": None, "class_map": None, "images_dir": None}
SOURCE_FORMATS = ("auto", "folders", *FORMATS)


def _flag(field: str) -> str:
    return {"sources": "SOURCE", "class_map": "--map"}.get(field, "--" + field.replace("_", "-"))


def parse_size(text: str) -> tuple[int, int]:
    """'1440x720' -> (1440, 720)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"'{text}' is not WIDTHxHEIGHT; write e.g. 1440x720") from None
    if w < 1 or h < 1:
        raise ValueError(f"'{text}' needs positive width and height, e.g. 1440x720")
    return w, h


class CurateOptions(BaseModel):
    """Everything that decides a dataset's content (plus `workers`/`overwrite`, which do not).

    Invalid values raise a one-line VislabError naming the option, never a traceback.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    sources: list[Path] = Field(default_factory=list)
    photos: Path | None = None
    labels: Path | None = None
    path_column: str = "path"
    label_column: str = "label"
    ratings: Path | None = None
    annotator: str | None = None
    question: str | None = None
    annotator_column: str = "annotator"
    question_column: str = "question"
    rating_column: str = "rating"
    bins: str | None = None
    min_size: str | None = None
    aspect: float | None = Field(None, gt=0)
    aspect_tolerance: float = Field(0.05, ge=0)
    landscape: bool = False
    max_pixels: int = Field(MAX_PIXELS, ge=1)
    dedupe: Literal["none", "exact", "near"] = "none"
    near_threshold: int = Field(6, ge=0, le=MAX_THRESHOLD)
    min_per_class: int | None = Field(None, ge=1)
    max_per_class: int | None = Field(None, ge=1)
    top_k: int | None = Field(None, ge=1)
    skip_top: int = Field(0, ge=0)
    sample_classes: int | None = Field(None, ge=1)
    split: str | None = None
    val_per_class: int | None = Field(None, ge=0)
    test_per_class: int | None = Field(None, ge=0)
    seed: int = Field(0, ge=0)
    format: Literal[SOURCE_FORMATS] = "auto"  # type: ignore[valid-type]
    classes: str | None = None
    class_map: str | None = None
    images_dir: Path | None = None
    workers: int = Field(0, ge=0)
    overwrite: bool = False
    strict: bool = False

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            first = err.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            msg = first["msg"].removeprefix("Value error, ")
            got = first.get("input")
            own = first["type"] == "value_error"  # our messages already quote the value
            shown = f" (got {got!r})" if field and not own and not isinstance(got, dict) else ""
            where = f"{_flag(field)}: " if field else ""
            raise VislabError(f"{where}{msg}{shown}") from None

    @field_validator("sources", "labels", "ratings", "images_dir")
    @classmethod
    def _utf8(cls, v: Any) -> Any:
        for path in v if isinstance(v, list) else [v] if v is not None else []:
            try:
                os.path.abspath(path).encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{str(path)!r} is not a UTF-8 path, which curation.json cannot record; rename it") from None
        return v

    @field_validator("min_size")
    @classmethod
    def _min_size(cls, v: str | None) -> str | None:
        if v is None:
            return v
        w, h = parse_size(v)
        return f"{w}x{h}"

    @field_validator("split")
    @classmethod
    def _split(cls, v: str | None) -> str | None:
        if v is None:
            return v
        return ",".join(f"{r:g}" for r in parse_ratios(v))

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: str | None) -> str | None:
        return None if v is None else ",".join(parse_class_list(v))

    @field_validator("class_map")
    @classmethod
    def _class_map(cls, v: str | None) -> str | None:
        return None if v is None else ",".join(f"{k}={n}" for k, n in parse_class_map(v).items())

    @field_validator("bins")
    @classmethod
    def _bins(cls, v: str | None) -> str | None:
        return None if v is None else src.parse_bins(v).text

    @model_validator(mode="after")
    def _combinations(self) -> CurateOptions:
        if self.labels is not None and self.ratings is not None:
            raise ValueError("use --labels or --ratings, not both")
        if not self.sources and self.photos is None and self.labels is None and self.ratings is None:
            raise ValueError("give at least one SOURCE folder, or --photos / --labels / --ratings CSV")
        if self.split is not None and (self.val_per_class is not None or self.test_per_class is not None):
            raise ValueError("use --split or --val-per-class/--test-per-class, not both")
        if self.ratings is None:
            for name in ("annotator", "question", "bins"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{_flag(name)} applies to --ratings; add --ratings FILE.csv")
        return self

    @property
    def size_limit(self) -> tuple[int, int] | None:
        return parse_size(self.min_size) if self.min_size else None

    @property
    def ratios(self) -> tuple[float, float, float] | None:
        return parse_ratios(self.split) if self.split else None

    def recorded(self) -> dict[str, Any]:
        """Options that define the dataset, with absolute paths, for curation.json."""
        data = self.model_dump(mode="json", exclude=RUNTIME_OPTIONS)
        data["sources"] = [os.path.abspath(p) for p in self.sources]
        for key in ("photos", "labels", "ratings", "images_dir"):
            if data[key] is not None:
                data[key] = os.path.abspath(data[key])
        for key, default in DETECTION_DEFAULTS.items():
            if data[key] == default:
                del data[key]
        return data


# ---------------------------------------------------------------- inputs and output


def _check_places(opts: CurateOptions, out: Path, file_ok: bool = False) -> list[str]:
    """The sources as absolute paths, checked to be folders of photos (or, with `file_ok`,
    a COCO JSON file) apart from --out, and --out checked to be writable as curate writes it."""
    roots = []
    problem = folder_problem(out)
    if problem is not None:
        raise VislabError(f"--out {out} {problem}; give a folder for the dataset")
    for source in opts.sources:
        root = os.path.abspath(source)
        if not os.path.exists(root):
            raise VislabError(f"source folder {source} does not exist; check the path")
        if file_ok and os.path.isfile(root):
            roots.append(root)
            continue
        if not os.path.isdir(root):
            raise VislabError(
                f"source {source} is a file, not a folder; pass its folder or use --labels FILE.csv"
            )
        if os.path.realpath(root) == os.path.realpath(out):
            raise VislabError(f"--out {out} is the source folder itself; write the dataset to another folder")
        _refuse_out_among_photos(source, root, out)
        try:
            kind = src.vislab_output_kind(os.listdir(root))
        except OSError as err:
            raise VislabError(f"source folder {source}: cannot list it ({err.strerror}); check its permissions") from None
        if kind is not None and kind != PREDICTED:  # a predict --out folder named as the source is curated as asked
            raise VislabError(f"source {source} is {WHAT[kind]}, not photos; pass the folder of the original images")
        roots.append(root)
    _refuse_nested_sources(opts.sources, roots)
    _refuse_foreign_out(out)
    for name in OUTPUT_NAMES:
        target = inside(out, name)  # a link there that points out of --out is refused here
        problem = regular_file_problem(target) if os.path.lexists(target) else None
        if problem is not None:
            raise VislabError(f"--out {out}: {name} there is {problem}; remove it or choose another --out")
    return roots


def _refuse_nested_sources(sources: list[Any], roots: list[str]) -> None:
    """A source folder inside another would be read twice, labelled once by each: which label
    a file kept would depend on the order of the arguments."""
    real = [os.path.realpath(r) for r in roots]
    for i, inner in enumerate(real):
        for j, outer in enumerate(real):
            if i != j and os.path.isdir(outer) and (inner + os.sep).startswith(outer.rstrip(os.sep) + os.sep):
                if inner == outer:
                    raise VislabError(f"source {sources[i]} is the same folder as source {sources[j]}; pass it once")
                raise VislabError(
                    f"source {sources[i]} lies inside source {sources[j]}, which already reads it; "
                    f"pass only {sources[j]} (its sub-folders are the classes) or only folders side by side"
                )


def _ours(name: str) -> bool:
    """A file curate writes into --out, or a temporary one of them left by a killed curate."""
    return name in OUTPUT_NAMES or temp_of(name, WRITTEN_NAMES)


def _refuse_out_among_photos(source: Path, root: str, out: Path) -> None:
    """An --out inside a source may be a new or empty folder, or one curate wrote before;
    a folder of the user's (a class folder) would drop out of the scan and get the dataset's
    files written among its photos."""
    real_root, real_out = os.path.realpath(root), os.path.realpath(out)
    if not real_out.startswith(real_root.rstrip(os.sep) + os.sep) or not os.path.isdir(real_out):
        return
    try:
        theirs = sorted(n for n in os.listdir(real_out) if not _ours(n))
    except OSError:
        return
    if theirs:
        raise VislabError(
            f"--out {out} lies inside source {source} and holds {theirs[0]!r}, which curate did not write; "
            "write the dataset to a new folder (beside the photos, not among them)"
        )


def _refuse_foreign_out(out: Path) -> None:
    """An existing --out must be empty, hold only what curate writes, or be a dataset curate
    wrote before (finished or not): a folder of the user's photos would get the dataset's
    files among them, and a later scan of its parent would skip it as vislab output."""
    try:
        names = os.listdir(out)
    except OSError:
        return  # not there yet (or not a folder: folder_problem says so)
    theirs = sorted(n for n in names if not _ours(n))
    if theirs and src.vislab_output_kind(names) not in (DATASET, MATERIALIZED) and unfinished_curation(out) is None:
        shown = ", ".join(repr(n) for n in theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
        raise VislabError(
            f"--out {out} holds files curate did not write ({shown}); "
            "choose another --out, a new or empty folder, so the dataset never mixes with them"
        )


def _fingerprint(recorded: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode("utf-8")).hexdigest()


def _made_from(record: dict[str, Any]) -> str:
    """The sources a curation.json record names, for a message."""
    options = record.get("options")
    sources = options.get("sources") if isinstance(options, dict) else None
    return ", ".join(map(str, sources)) if isinstance(sources, list) and sources else "unknown inputs"


def _check_output(out: Path, fingerprint: str, overwrite: bool) -> None:
    """Refuse to replace a manifest made from other inputs, or files of the same names that
    curate did not write (a user's own boxes.csv or manifest.csv in --out), unless told to. A
    curate with these options that stopped before it finished is made again."""
    if overwrite:
        return
    unfinished = unfinished_curation(out)
    if unfinished is not None:
        if unfinished.get("fingerprint") == fingerprint:
            return
        raise VislabError(
            f"--out {out} holds a curate that stopped before it finished (made from {_made_from(unfinished)} with "
            "other options); choose another --out or pass --overwrite to replace it"
        )
    if not (out / MANIFEST_NAME).exists():
        theirs = [n for n in (CURATION_NAME, HISTOGRAM_NAME, BOXES_NAME) if os.path.lexists(out / n)]
        if theirs:
            raise VislabError(
                f"--out {out} holds {', '.join(theirs)} but no {MANIFEST_NAME}, so not a vislab dataset; "
                "choose another --out or pass --overwrite to replace them"
            )
        return
    if not os.path.lexists(out / CURATION_NAME):
        raise VislabError(
            f"--out {out} holds {MANIFEST_NAME} but no {CURATION_NAME}: a manifest curate did not write, or one an older "
            "curate stopped before it finished; pass --overwrite to replace it (or choose another --out)"
        )
    try:
        previous = json.loads(read_bounded(out / CURATION_NAME, 1 << 24).decode("utf-8"))
    except (OSError, ValueError):
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    if previous.get("fingerprint") == fingerprint:
        return
    raise VislabError(
        f"--out {out} holds a different dataset (made from {_made_from(previous)} with other options); "
        "choose another --out or pass --overwrite to replace it"
    )


def _gather(opts: CurateOptions, roots: list[str], out: Path) -> tuple[dict[str, src.Found], Counter[str]]:
    """Every file the sources name, with its label, and what the folder scan skipped; the
    out folder is never scanned. A label table is read first: its errors come at once."""
    table: dict[str, src.Found] | None = None
    if opts.labels is not None:
        table = src.read_labels_csv(opts.labels, opts.path_column, opts.label_column)
    elif opts.ratings is not None:
        spec = src.RatingsSpec(
            path_column=opts.path_column,
            annotator_column=opts.annotator_column,
            question_column=opts.question_column,
            rating_column=opts.rating_column,
            annotator=opts.annotator,
            question=opts.question,
            bins=src.parse_bins(opts.bins) if opts.bins else None,
        )
        table = src.read_ratings_csv(opts.ratings, spec)
    found: dict[str, src.Found] = {}
    skipped: Counter[str] = Counter()
    for root in roots:
        entries, counts = src.scan_folder(root, skip=[out])
        skipped.update(counts)
        for entry in entries:
            found.setdefault(entry.path, entry)
    if opts.photos is not None:  # its own label column, unless a label table replaces it
        own_labels = opts.labels is None and opts.ratings is None
        found.update(read_photos_csv(opts.photos, opts.label_column if own_labels else "label"))
    if table is not None:
        for entry in found.values():
            entry.label = None  # a label table replaces folder names as the label source
        for path, entry in table.items():
            entry.extra = found[path].extra if path in found else entry.extra
        found.update(table)
    return found, skipped


# ---------------------------------------------------------------- decisions


def _table(records: list[dict[str, Any]], found: dict[str, src.Found]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records)
    df = df.sort_values("path", kind="mergesort").reset_index(drop=True)
    entries = [found[p] for p in df["path"]]
    df["label"] = [e.label or "" for e in entries]
    df["split"] = ""
    df["group"] = ""
    df["status"] = np.where(df["reason"] == "", OK, QUARANTINED)
    # A label problem matters only for files that are fine; a broken file stays quarantined.
    unsafe = {lab for lab in {e.label for e in entries} if lab and folder_name_problem(lab) is not None}
    label_reason = pd.Series(
        [e.reason or (UNLABELLED if e.label is None else UNSAFE_LABEL if e.label in unsafe else "") for e in entries]
    )
    _exclude(df, (df["status"] == OK) & (label_reason != ""), label_reason)
    return df


def _low_bits_warning(count: int, example: str) -> str:
    """One line for the 16-bit images whose values never exceed 4095 (see `io.LOW_BITS_MAX`:
    read as the formats define them, they look nearly black in training and predict alike)."""
    return (
        f"{count:,} 16-bit image(s) use only the low 12 bits (no value above {LOW_BITS_MAX}, as 12-bit camera data "
        f"stored as is), so they read nearly black, e.g. {example}; if the data is 12-bit, scale it to the full "
        "16-bit range (x16) or convert it to 8-bit before curating"
    )


def _exclude(df: pd.DataFrame, mask: Any, reason: str | pd.Series) -> None:
    df.loc[mask, "status"] = EXCLUDED
    df.loc[mask, "reason"] = reason if isinstance(reason, str) else reason[mask]


def _filter_geometry(df: pd.DataFrame, opts: CurateOptions) -> None:
    ok = df["status"] == OK
    w = pd.to_numeric(df["width"], errors="coerce").fillna(0)
    h = pd.to_numeric(df["height"], errors="coerce").fillna(0)
    if opts.landscape:
        w, h = np.maximum(w, h), np.minimum(w, h)
    limit = opts.size_limit
    if limit is not None:
        need_w, need_h = limit
        if opts.landscape:
            need_w, need_h = max(limit), min(limit)
        small = ok & ((w < need_w) | (h < need_h))
        _exclude(df, small, TOO_SMALL)
        ok &= ~small
    if opts.aspect is not None:
        target = max(opts.aspect, 1 / opts.aspect) if opts.landscape else opts.aspect
        ratio = w / h.where(h > 0, np.nan)
        off = (ratio / target - 1).abs() > opts.aspect_tolerance + 1e-12
        _exclude(df, ok & off.fillna(True), WRONG_ASPECT)


def _dedupe(df: pd.DataFrame, mode: str, threshold: int, answers: pd.Series | None = None) -> dict[str, str]:
    """Group exact and near copies among usable rows (the `group` column, which a split keeps
    together) and, by `mode`, keep one image per sha256 or per copy set (`near_copy_groups`:
    the copy kept and its near copies of the same label). The copy kept is the one with most
    pixels, then the biggest file, then the first path. No image is dropped as a copy of one
    under another label: both stay, in one group, reported as conflicting labels; but byte-identical
    files under different labels (one picture, two answers) are all excluded as conflicting_labels,
    as one file given two labels by a CSV is (unless --dedupe none). Returns, by
    path, why each kept member of a group was kept.

    `answers` replaces the labels compared (a detection image's boxes, `DetectionCuration.answers`);
    an empty one is a copy with no answer (an image without boxes): it is never kept over a copy
    that has one, and joins the group's answered copy as its duplicate, so an unlabelled copy
    never replaces the labelled picture, nor do its boxes go.

    Works on arrays, not per-group pandas calls: 50,000 rows have hundreds of groups.
    """
    pos = np.flatnonzero(df["status"].to_numpy() == OK)
    if len(pos) < 2:
        return {}
    paths = df["path"].to_numpy()[pos]
    labels = (df["label"] if answers is None else answers).to_numpy(dtype=object)[pos]
    blank = labels == ""
    sha = df["sha256"].to_numpy()[pos]
    widths, heights = df["width"].to_numpy()[pos], df["height"].to_numpy()[pos]
    pixels = (pd.to_numeric(df["width"]) * pd.to_numeric(df["height"])).to_numpy()[pos]
    sizes = pd.to_numeric(df["bytes"]).to_numpy()[pos]
    order = np.lexsort((paths.astype(str), -sizes, -pixels, blank))  # answered, then best copy first
    rank = np.empty(len(pos), dtype=np.int64)
    rank[order] = np.arange(len(pos))
    hashes = hex_to_hashes(df["phash"].to_numpy()[pos])
    keeper, head = near_copy_groups(
        hashes, df["plain_thumb"].to_numpy()[pos], threshold, order, labels, df["colour_thumb"].to_numpy()[pos]
    )
    if mode == "exact":  # the copy kept of each byte-identical set of one label
        same = pd.Series(list(zip(sha, labels))).factorize()[0]
        best = np.full(same.max() + 1, len(pos), dtype=np.int64)
        np.minimum.at(best, same, rank)
        keeper = order[best[same]]
        file_id = pd.factorize(sha)[0]
        answered = np.full(file_id.max() + 1, len(pos), dtype=np.int64)
        np.minimum.at(answered, file_id[~blank], rank[~blank])
        joins = blank & (answered[file_id] < len(pos))
        keeper[joins] = order[answered[file_id[joins]]]
    else:  # the group's head ranks first, so it is answered when any copy is
        joins = blank & ~blank[head]
        keeper[joins] = head[joins]
    heads, counts = np.unique(head, return_counts=True)
    multi = np.isin(head, heads[counts > 1])
    grouped = np.flatnonzero(multi)
    names = {h: f"g{n:05d}" for n, h in enumerate(dict.fromkeys(head[grouped].tolist()), start=1)}
    group = np.full(len(df), "", dtype=object)
    group[pos[grouped]] = [names[h] for h in head[grouped].tolist()]
    status = df["status"].to_numpy().copy()
    reason = df["reason"].to_numpy().copy()
    copies: dict[int, list[int]] = {}
    for i in grouped[np.argsort(rank[grouped], kind="stable")].tolist():
        copies.setdefault(int(keeper[i]), []).append(i)
    why: dict[str, str] = {}
    for kept, ranked in copies.items():
        if mode == "none":
            why.update((paths[i], "kept: no --dedupe") for i in ranked)
            continue
        why[paths[kept]] = _why_kept(ranked, pixels, sizes, widths, heights, mode, blank)
        for i in ranked[1:]:
            status[pos[i]] = EXCLUDED
            reason[pos[i]] = f"{DUPLICATE_OF}:{paths[kept]}"
    if mode != "none":  # one picture under two labels: which is right is unknown, so neither trains
        labels_of = pd.Series(labels[~blank]).groupby(sha[~blank]).nunique()
        torn = np.isin(sha, labels_of.index[labels_of > 1].to_numpy())
        status[pos[torn]] = EXCLUDED
        reason[pos[torn]] = src.CONFLICTING_LABELS
    df["group"] = group
    df["status"] = status
    df["reason"] = reason
    return why


def _why_kept(
    ranked: list[int],
    pixels: np.ndarray,
    sizes: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    mode: str,
    blank: np.ndarray,
) -> str:
    """Why the first of a ranked set of copies of one label is the copy kept, in words."""
    if len(ranked) == 1:
        return "kept: no byte-identical copy with its label" if mode == "exact" else "kept: no near copy with its label"
    first, second = ranked[0], ranked[1]
    if blank[second] and not blank[first]:
        return "kept: it has boxes, its copies have none"
    if pixels[first] != pixels[second]:
        return f"kept: most pixels ({widths[first]}x{heights[first]} vs {widths[second]}x{heights[second]})"
    if sizes[first] != sizes[second]:
        return f"kept: same pixels, largest file ({int(sizes[first]):,} vs {int(sizes[second]):,} bytes)"
    return "kept: same pixels and file size, first path in sort order"


def _conflicts(df: pd.DataFrame, why: dict[str, str], answers: pd.Series | None = None) -> list[dict[str, Any]]:
    """The groups that mix labels (the same picture under two classes, or with two different
    sets of boxes: `answers` as `_dedupe` took them; a copy without boxes conflicts with none),
    each member as the final manifest has it: kept (and why) or excluded (and the reason, which
    class selection may have given after dedupe), kept members first."""
    df = df.assign(label=df["label"] if answers is None else answers)
    grouped = df[df["group"] != ""]
    labels = grouped[grouped["label"] != ""].groupby("group")["label"].nunique()
    rows = grouped[grouped["group"].isin(labels.index[labels > 1])]
    rows = rows.assign(excluded=rows["status"] != OK).sort_values(["group", "excluded", "path"], kind="mergesort")
    out: dict[str, dict[str, Any]] = {}
    for name, path, label, excluded, reason in zip(rows["group"], rows["path"], rows["label"], rows["excluded"], rows["reason"]):
        record = out.setdefault(name, {"group": name, "labels": [], "members": []})
        state = {"reason": str(reason)} if excluded else {"why": why.get(path, "kept")}
        record["members"].append({"path": str(path), "label": str(label), "kept": not excluded, **state})
    for record in out.values():
        record["labels"] = sorted({m["label"] for m in record["members"]} - {""})
    return list(out.values())


def _nothing_found(opts: CurateOptions, roots: list[str]) -> str:
    """Why curate found no files, naming every source it read: a photos.csv read alone whose
    rows name no file is what `vislab collect` writes when it downloaded nothing."""
    photos = photos_csv_path(opts.photos) if opts.photos is not None else None
    if photos is not None and not roots and opts.labels is None and opts.ratings is None:
        return f"{photos}: lists no photos (no row names a file; did `vislab collect` download none?); collect some, or pass another --photos"
    where = ", ".join(str(p) for p in (*roots, photos, opts.labels, opts.ratings) if p is not None)
    return f"no files found in {where}; check the path (hidden files are skipped)"


class _Usable:
    """Counts usable images per class between curation steps, so a step that leaves nothing,
    or empties a class, is said loudly (and fails the command with --strict)."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.counts = self._count(df)
        self.warnings: list[str] = []

    @staticmethod
    def _count(df: pd.DataFrame) -> Counter[str]:
        return Counter(df.loc[df["status"] == OK, "label"])

    def after(self, df: pd.DataFrame, step: str) -> None:
        now = self._count(df)
        before_total, now_total = sum(self.counts.values()), sum(now.values())
        if before_total and not now_total:
            self.warnings.append(f"{step} left 0 of {before_total:,} usable images; loosen it or check the data")
        elif before_total:
            emptied = sorted(c for c in self.counts if c not in now)
            if emptied:
                shown = ", ".join(f"'{c}' ({self.counts[c]:,})" for c in emptied[:8]) + (" ..." if len(emptied) > 8 else "")
                self.warnings.append(f"{step} emptied {len(emptied)} class(es): {shown}")
        self.counts = now


# ---------------------------------------------------------------- the command


def curate(*sources: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """`vislab curate SOURCES --out OUT --option ...` from Python: the keywords are the CLI's
    options with underscores (`split="0.7,0.15,0.15"`, `max_per_class=40`, `format="yolo"`),
    checked by CurateOptions (a misspelt one is named with the closest option). Returns the
    curation.json content."""
    check_keywords("curate", options, [k for k in CurateOptions.model_fields if k != "sources"])
    return run_curate(CurateOptions(sources=list(sources), **options), out)


def run_curate(opts: CurateOptions, out: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Scan, check, filter, dedupe, select and split; write the manifest, curation.json
    and the class histogram into `out`. Returns the curation.json content."""
    out_dir = Path(os.path.abspath(out))
    fmt = detection_format(opts)
    roots = _check_places(opts, out_dir, file_ok=fmt == "coco")
    created = not out_dir.exists()
    make_folder(out_dir)
    with folder_lock(out_dir, "curating into this dataset folder", "choose another --out"):
        try:
            return _curate_locked(opts, out_dir, fmt, roots, console)
        except BaseException:
            if created:  # only the lock's holder removes the folder it made, before letting go
                remove_if_unused(out_dir)
            raise


def _curate_locked(opts: CurateOptions, out_dir: Path, fmt: str | None, roots: list[str], console: Console | None) -> dict[str, Any]:
    """run_curate once --out is locked: two curates into one folder would mix one's manifest
    with the other's curation.json, so the output checks are made under the lock too."""
    removed = remove_orphan_temps(out_dir, WRITTEN_NAMES, recursive=False)
    if removed and console is not None:
        console.print(f"removed {len(removed)} temporary file(s) left by an interrupted curate in {term(out_dir)}", highlight=False, soft_wrap=True)
    recorded = opts.recorded()
    fingerprint = _fingerprint(recorded)
    _check_output(out_dir, fingerprint, opts.overwrite)
    detect = DetectionCuration(opts, fmt) if fmt is not None else None
    found, skipped = detect.gather(out_dir) if detect is not None else _gather(opts, roots, out_dir)
    if not found:
        raise VislabError(_nothing_found(opts, roots))

    started = time.perf_counter()
    paths = sorted(found)
    records = inspect_files(paths, opts.max_pixels, opts.workers, console)
    elapsed = time.perf_counter() - started
    if console is not None:
        rate = len(paths) / elapsed if elapsed > 0 else float("inf")
        console.print(f"checked {len(paths)} files in {elapsed:.1f} s ({rate:,.0f} files/s)")

    df = _table(records, found)
    extra_columns = sorted({col for entry in found.values() for col in entry.extra})
    for col in extra_columns:  # e.g. photos.csv attribution, kept beside each image's row
        df[col] = [found[p].extra.get(col, "") for p in df["path"]]
    if detect is not None:  # boxes drawn on a frame of another size would be wrong
        frame = detect.frame_problems(df)
        _exclude(df, (df["status"] == OK) & (frame != ""), frame)
    usable_now = _Usable(df)
    if not usable_now.counts:
        usable_now.warnings.append(f"none of the {len(df):,} files is a usable labelled image (see the reasons)")
    dark = df.loc[(df["status"] == OK) & df["low_bits"].astype(bool), "path"]
    if len(dark):
        usable_now.warnings.append(_low_bits_warning(len(dark), dark.iloc[0]))
    if skipped[src.UNREADABLE_FOLDER]:
        usable_now.warnings.append(
            f"{skipped[src.UNREADABLE_FOLDER]:,} folder(s) in the sources could not be read and were skipped; "
            "their files are not in the dataset (allow reading them to include them)"
        )
    _filter_geometry(df, opts)
    usable_now.after(df, " ".join(_geometry_flags(opts)) or "the size filters")
    answers = detect.answers(df) if detect is not None else None
    why_kept = _dedupe(df, opts.dedupe, opts.near_threshold, answers)
    usable_now.after(df, f"--dedupe {opts.dedupe}")
    if detect is not None:  # boxes follow the image rows; classes and splits are per box
        usable_now.warnings.extend(detect.finish(df, opts.ratios, opts.seed))
    else:
        select_classes(
            df,
            min_per_class=opts.min_per_class,
            max_per_class=opts.max_per_class,
            top_k=opts.top_k,
            skip_top=opts.skip_top,
            sample_classes=opts.sample_classes,
            seed=opts.seed,
        )
        usable_now.after(df, "class selection")
        usable_now.warnings.extend(class_warnings(df))
        short = assign_splits(
            df,
            ratios=opts.ratios,
            val_per_class=opts.val_per_class,
            test_per_class=opts.test_per_class,
            seed=opts.seed,
        )
        shortfall = shortfall_warning(short, deduped=opts.dedupe == "near")
        usable_now.warnings.extend([shortfall] if shortfall else [])
    notes = _unlabelled_notes(df, opts) if detect is None else []
    conflicts = _conflicts(df, why_kept, answers)
    df["orientation"] = df["orientation"].map(lambda v: "" if v is None or pd.isna(v) else str(int(v)))
    out_dir.mkdir(parents=True, exist_ok=True)
    # first a record of the curate under way (see manifest.py), replaced by the full one at the
    # end: stopped in between, the folder reads as unfinished, never as another dataset
    under_way = {"vislab_version": __version__, "state": CURATING, "fingerprint": fingerprint, "options": recorded}
    write_file(inside(out_dir, CURATION_NAME), json.dumps(under_way, indent=2, ensure_ascii=False) + "\n")
    write_manifest(df[COLUMNS + EXTRA_COLUMNS + extra_columns], out_dir)
    if detect is not None:
        detect.write(out_dir)
    else:  # a detection dataset replaced by --overwrite leaves no boxes behind
        inside(out_dir, BOXES_NAME).unlink(missing_ok=True)

    summary: dict[str, Any] = {
        "vislab_version": __version__,
        "fingerprint": fingerprint,
        "options": recorded,
        **summarize_manifest(df),
        "hidden_skipped": skipped[src.HIDDEN],
        "vislab_folders_skipped": skipped[src.VISLAB_OUTPUT],
        "non_utf8_names_skipped": skipped[src.NON_UTF8_NAME],
        "unreadable_folders_skipped": skipped[src.UNREADABLE_FOLDER],
        "inner_folder_links_skipped": skipped[src.INNER_FOLDER_LINK],
        "conflicting_label_groups": len(conflicts),
        "conflicting_labels": conflicts,
        "warnings": usable_now.warnings,
        "notes": notes,
        "manifest_sha256": manifest_hash(out_dir),
        "histogram": HISTOGRAM_NAME,
        **(detect.record() if detect is not None else {}),
    }
    write_file(inside(out_dir, CURATION_NAME), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    histogram = inside(out_dir, HISTOGRAM_NAME)
    histogram.unlink(missing_ok=True)
    plot_class_histogram(summary, histogram)
    if opts.strict and summary["warnings"]:
        raise VislabError(f"--strict: {'; '.join(summary['warnings'])} (the manifest was written to {out_dir} for a look)")
    return summary


def _unlabelled_notes(df: pd.DataFrame, opts: CurateOptions) -> list[str]:
    """A note, not a warning (--strict passes), when source folders held no class folders and
    no label table named classes: right for the crop detector, which needs no labels, but a
    classifier will refuse the dataset, so the fix is said now rather than at `vislab train`."""
    usable = df.loc[df["status"] == OK, "label"]
    if not opts.sources or opts.labels is not None or opts.ratings is not None or usable.empty or (usable != "").any():
        return []
    roots = " or ".join(f"{p}/<class>/" for p in opts.sources[:2]) + (" ..." if len(opts.sources) > 2 else "")
    return [
        f"no class folders: all {len(usable):,} usable images are unlabelled; fine for the crop detector (task: crops); "
        f"for classification sort the photos into a folder per class ({roots}) and curate again"
    ]


def _geometry_flags(opts: CurateOptions) -> list[str]:
    flags = [f"--min-size {opts.min_size}"] if opts.min_size else []
    if opts.aspect is not None:
        flags.append(f"--aspect {opts.aspect:g}")
    return flags + (["--landscape"] if flags and opts.landscape else [])
