"""Where files and labels come from: image folder trees, a labels CSV, annotator ratings.

Every reader returns `Found` entries: an absolute path, the label it gives (None when the
source knows the file but not its class) and, when the label itself is unusable, a reason.
Readers never open images; curation checks the files afterwards.

The folder scan skips what is not a photo of the collection: hidden entries, folders that
vislab wrote (a dataset, a `vislab materialize` tree, a run directory, a sweep folder, a
`predict --out` folder: each known by its files, `vislab.markers`) and names that are not UTF-8 (a manifest is
UTF-8 text, so such a path could not be recorded), folders it may not read (a root-owned
lost+found) and links to folders inside the scanned folder (each real folder is read under
its own path, so a link cannot relabel another class); each kind is counted. Label names are
checked later, in curation, whatever source gave them.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vislab.data.csvfile import line_of_row, read_csv_file
from vislab.data.walk import FOLDER_LOOP, INNER_FOLDER_LINK, UNREADABLE_FOLDER, VISLAB_OUTPUT, walk_files
from vislab.errors import VislabError
from vislab.fsguard import folder_name_problem
from vislab.markers import vislab_output_kind

AGGREGATIONS = ("mean", "median", "majority")
CONFLICTING_LABELS = "conflicting_labels"
NO_MAJORITY = "no_majority"
RATING_OUT_OF_BINS = "rating_out_of_bins"
# Kinds of entries the folder scan skips, as counted in curation.json.
HIDDEN = "hidden"
NON_UTF8_NAME = "non_utf8_name"
SKIPPED_OUTPUT = "skipped_output"  # the output folder itself: not counted


@dataclass
class Found:
    """One file a source names. `label` "" marks an unlabelled dataset (self-supervised);
    `extra` holds columns the source carries into the manifest (photos.csv attribution)."""

    path: str
    label: str | None
    reason: str = ""
    extra: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- folders


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a name come back as surrogates
        return False
    return True


def _walk_files(top: str, skip: set[str]) -> tuple[list[tuple[str, str | None]], Counter[str]]:
    """(path, first folder below `top` or None) for every file to curate under `top` (see
    `walk.walk_files` for links and loops), and counts of what was skipped: hidden entries
    (.DS_Store, AppleDouble '._x.jpg', .git, ...), vislab output folders (datasets,
    materialized trees, run directories, sweeps, predict --out folders below `top`), non-UTF-8 names,
    folders that cannot be listed, links to folders inside `top`, folder loops."""

    def skip_entry(entry: os.DirEntry) -> str | None:
        if _is_hidden(entry.name):
            return HIDDEN
        if not _is_utf8(entry.name):
            return NON_UTF8_NAME
        return SKIPPED_OUTPUT if skip and os.path.realpath(entry.path) in skip else None

    def skip_folder(folder: str, entries: list[os.DirEntry]) -> str | None:
        return VISLAB_OUTPUT if vislab_output_kind(e.name for e in entries) else None

    walk = walk_files(top, skip_entry, skip_folder)
    # a loop is a link to a folder already read: curation.json counts it with those links
    kinds = (INNER_FOLDER_LINK if kind == FOLDER_LOOP else kind for _, kind in walk.skipped)
    return walk.files, Counter(kind for kind in kinds if kind != SKIPPED_OUTPUT)


def scan_folder(root: str | Path, skip: Sequence[str | Path] = ()) -> tuple[list[Found], Counter[str]]:
    """Files under `root` with the first folder level as label.

    A root with class sub-folders labels each file by its sub-folder, however deep it sits;
    loose files beside the class folders are unlabelled (label None). A root holding only
    files is an unlabelled dataset (label ""). Folders in `skip` (the output) are not read.
    Returns the files and the counts of skipped entries by kind (HIDDEN, VISLAB_OUTPUT,
    NON_UTF8_NAME, UNREADABLE_FOLDER, INNER_FOLDER_LINK).
    """
    top = os.path.abspath(root)
    files, skipped = _walk_files(top, {os.path.realpath(s) for s in skip})
    tree = any(first is not None for _, first in files)
    loose: str | None = None if tree else ""
    return [Found(path, loose if first is None else first) for path, first in files], skipped


# ---------------------------------------------------------------- CSV helpers


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """A labels or ratings CSV as strings (spaces after commas ignored); one-line errors."""
    return read_csv_file(path, what, skipinitialspace=True)


def require_columns(df: pd.DataFrame, path: Path, columns: dict[str, str]) -> None:
    """`columns` maps option flag -> column name; name the flag and the columns present."""
    for flag, col in columns.items():
        if col not in df.columns:
            have = ", ".join(df.columns) or "none"
            raise VislabError(f"{path}: no column '{col}' (columns: {have}); name the right one with {flag}")


def resolve_csv_path(csv: Path, value: str) -> str:
    """Paths in a CSV are relative to the CSV's folder unless absolute. Spaces around the
    name are padding, unless a file has the name exactly (' lead.png', as the folder scan
    records it)."""
    folder = os.path.dirname(os.path.abspath(csv))
    exact = os.path.normpath(os.path.join(folder, value))
    if value != value.strip() and os.path.lexists(exact):
        return exact
    return os.path.normpath(os.path.join(folder, value.strip()))


def csv_paths(df: pd.DataFrame, csv: Path, column: str) -> list[str]:
    """The resolved paths of `column`; a NUL character, which no file name can hold, is an
    error naming its line."""
    nul = df[column].str.contains("\x00", regex=False)
    if nul.any():
        row = int(nul.to_numpy().nonzero()[0][0])
        raise VislabError(
            f"{csv} line {line_of_row(csv, int(df.index[row]), skipinitialspace=True)}: column '{column}' holds a NUL character, "
            "which no file name can; fix the cell"
        )
    return [resolve_csv_path(csv, p) for p in df[column]]


def merge_found(entries: Iterable[Found]) -> dict[str, Found]:
    """Collapse rows that name one path (a file listed twice in a labels CSV, a photos.csv):
    agreeing labels merge, disagreeing ones are excluded as conflicting; the first row's
    other columns are kept."""
    out: dict[str, Found] = {}
    for entry in entries:
        path, label = entry.path, entry.label
        prev = out.get(path)
        if prev is None:
            out[path] = entry
        elif prev.label != label and label is not None:
            if prev.label is None:
                prev.label = label
            else:
                prev.reason = CONFLICTING_LABELS
    return out


def read_labels_csv(csv: Path, path_column: str, label_column: str) -> dict[str, Found]:
    """Labels from a CSV; an empty label cell leaves the file unlabelled."""
    df = read_csv(csv, "labels")
    require_columns(df, csv, {"--path-column": path_column, "--label-column": label_column})
    rows = df[df[path_column].str.strip() != ""]
    paths = csv_paths(rows, csv, path_column)
    return merge_found(Found(p, lab.strip() or None) for p, lab in zip(paths, rows[label_column]))


# ---------------------------------------------------------------- bins


_BIN_ITEM = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:-\s*(-?\d+(?:\.\d+)?))?\s*:\s*(\S(?:.*\S)?)\s*$")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def number_text(x: float) -> str:
    """'7' for 7.0, '6.5' for 6.5: labels read the way people write them."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class Bins:
    """Map a numeric rating to a class: inclusive ranges, or one class per integer.

    Aggregated ratings (mean, median) can fall between integer ranges (3.5 between 1-3
    and 4-6); when every range bound is an integer they are rounded half up first.
    """

    ranges: tuple[tuple[float, float, str], ...] = ()
    per_integer: bool = False

    @property
    def text(self) -> str:
        if self.per_integer:
            return "int"
        return ",".join(
            f"{number_text(lo)}:{name}" if lo == hi else f"{number_text(lo)}-{number_text(hi)}:{name}"
            for lo, hi, name in self.ranges
        )

    def label(self, value: float) -> str | None:
        if not math.isfinite(value):
            return None
        if self.per_integer:
            return str(_round_half_up(value))
        for lo, hi, name in self.ranges:
            if lo <= value <= hi:
                return name
        integral = all(float(lo).is_integer() and float(hi).is_integer() for lo, hi, _ in self.ranges)
        if integral and not float(value).is_integer():
            return self.label(float(_round_half_up(value)))
        return None


def parse_bins(text: str) -> Bins:
    """Parse `--bins`: 'int' or 'LO-HI:CLASS,...' (a single value 'V:CLASS' also works)."""
    hint = "use 'int' or LO-HI:CLASS items separated by commas, e.g. 1-3:negative,4-6:neutral,7-9:positive"
    if text.strip().lower() == "int":
        return Bins(per_integer=True)
    ranges = []
    for item in text.split(","):
        m = _BIN_ITEM.match(item)
        if not m:
            raise ValueError(f"cannot read '{item.strip()}'; {hint}")
        lo = float(m.group(1))
        hi = float(m.group(2)) if m.group(2) is not None else lo
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"range '{item.strip()}' has a number too large to use; {hint}")
        if hi < lo:
            raise ValueError(f"range '{item.strip()}' runs backwards; write it as LO-HI")
        problem = folder_name_problem(m.group(3))
        if problem is not None:
            raise ValueError(f"class name '{m.group(3)}' in '{item.strip()}' {problem}; use a plain name")
        ranges.append((lo, hi, m.group(3)))
    ordered = sorted(ranges)
    for (_lo1, hi1, n1), (lo2, _hi2, n2) in zip(ordered, ordered[1:]):
        if lo2 <= hi1:
            raise ValueError(f"ranges for '{n1}' and '{n2}' overlap; make each value belong to one class")
    return Bins(tuple(ordered))


# ---------------------------------------------------------------- ratings


@dataclass(frozen=True)
class RatingsSpec:
    path_column: str = "path"
    annotator_column: str = "annotator"
    question_column: str = "question"
    rating_column: str = "rating"
    annotator: str | None = None
    question: str | None = None
    bins: Bins | None = None


def _numeric(values: pd.Series, csv: Path, column: str, why: str) -> pd.Series:
    """`values` as finite floats; the first that is not one is an error naming its line."""
    nums = pd.to_numeric(values, errors="coerce").astype(float)
    bad = ~pd.Series([math.isfinite(x) for x in nums], index=values.index, dtype=bool)
    if bad.any():
        row = bad.idxmax()
        shown = values[row]
        what = "not a number" if math.isnan(nums[row]) else "not a finite number"
        raise VislabError(
            f"{csv} line {line_of_row(csv, int(row), skipinitialspace=True)}: column '{column}' holds '{shown}', {what}, which "
            f"{why} needs; fix the value or choose a named --annotator without --bins"
        )
    return nums


def _choose_question(df: pd.DataFrame, csv: Path, spec: RatingsSpec) -> pd.DataFrame:
    has_column = spec.question_column in df.columns
    if spec.question is None:
        if has_column and df[spec.question_column].nunique() > 1:
            known = ", ".join(sorted(df[spec.question_column].unique()))
            raise VislabError(f"{csv}: answers to several questions ({known}); pick one with --question")
        return df
    require_columns(df, csv, {"--question-column": spec.question_column})
    rows = df[df[spec.question_column] == spec.question]
    if rows.empty:
        known = ", ".join(sorted(df[spec.question_column].unique())) or "none"
        raise VislabError(
            f"{csv}: no answers to question '{spec.question}' (questions: {known}); fix --question"
        )
    return rows


def _choose_annotator(df: pd.DataFrame, csv: Path, spec: RatingsSpec) -> str:
    known = sorted(df[spec.annotator_column].unique())
    hint = f"annotators: {', '.join(known)}; or aggregate with mean|median|majority"
    if spec.annotator is None:
        if len(known) == 1:
            return known[0]
        raise VislabError(f"{csv}: several annotators; pick one with --annotator ({hint})")
    if spec.annotator in AGGREGATIONS or spec.annotator in known:
        return spec.annotator
    raise VislabError(f"{csv}: unknown annotator '{spec.annotator}' ({hint})")


def _label_of(value: str, number: float | None, bins: Bins | None) -> str | None:
    if bins is not None and number is not None:
        return bins.label(number)
    return number_text(number) if number is not None else value


def _no_answer(value: str) -> bool:
    """An empty rating cell, or 'NaN' (what pandas and spreadsheets write for a missing
    number): no answer, whatever the aggregation, never a class of its own. An infinite
    rating stays an answer, refused where a number is needed."""
    try:
        return math.isnan(float(value))
    except ValueError:
        return value.strip() == ""


def read_ratings_csv(csv: Path, spec: RatingsSpec) -> dict[str, Found]:
    """Labels from annotator answers: one annotator's, or all aggregated by mean, median or
    majority vote; `bins` turns numbers into class names. An empty or NaN rating is no
    answer; an annotator's repeated row counts once. A file whose votes tie, whose rating
    falls outside every bin, or one annotator rated twice differently, is kept out with
    that reason."""
    df = read_csv(csv, "ratings")
    require_columns(
        df,
        csv,
        {
            "--path-column": spec.path_column,
            "--annotator-column": spec.annotator_column,
            "--rating-column": spec.rating_column,
        },
    )
    for column in (spec.annotator_column, spec.question_column):  # 'alice ' is alice, as paths are stripped
        if column in df.columns:
            df[column] = df[column].str.strip()
    df = _choose_question(df, csv, spec)
    who = _choose_annotator(df, csv, spec)
    df = df[(df[spec.path_column].str.strip() != "") & ~df[spec.rating_column].map(_no_answer)]
    if who not in AGGREGATIONS:
        df = df[df[spec.annotator_column] == who]
    paths = csv_paths(df, csv, spec.path_column)
    values = df[spec.rating_column].str.strip()
    numeric_needed = who in ("mean", "median") or spec.bins is not None
    if numeric_needed:
        why = f"--annotator {who}" if who in ("mean", "median") else "--bins"
        numbers: list[float | None] = list(_numeric(values, csv, spec.rating_column, why))
    else:
        as_num = pd.to_numeric(values, errors="coerce").astype(float)
        numbers = [float(x) if math.isfinite(x) else None for x in as_num]  # 'inf' stays text

    if who not in AGGREGATIONS:
        labels = [_label_of(v, n, spec.bins) for v, n in zip(values, numbers)]
        out = merge_found(Found(p, lab) for p, lab in zip(paths, labels))
        for path, lab in zip(paths, labels):
            if lab is None and out[path].reason == "":
                out[path].reason = RATING_OUT_OF_BINS
        return out

    annotators = df[spec.annotator_column]
    if who == "majority":
        answers: list[str | float | None] = [_label_of(v, n, spec.bins) for v, n in zip(values, numbers)]
    else:
        answers = list(numbers)
    out = {}
    for path, given in _one_answer_each(paths, annotators, answers).items():
        if given is None:
            out[path] = Found(path, None, CONFLICTING_LABELS)
            continue
        if who == "majority":
            (top, count), *rest = Counter(given).most_common()
            if rest and rest[0][1] == count:
                out[path] = Found(path, None, NO_MAJORITY)
                continue
            label = top
        else:
            nums = pd.Series(given, dtype=float)
            agg = float(nums.mean() if who == "mean" else nums.median())
            label = (spec.bins or Bins(per_integer=True)).label(agg)
        out[path] = Found(path, label, "" if label is not None else RATING_OUT_OF_BINS)
    return out


def _one_answer_each(
    paths: Sequence[str], annotators: Iterable[str], answers: Sequence[str | float | None]
) -> dict[str, list[str | float | None] | None]:
    """Per path, each annotator's answer once: a row repeated with the same answer (a file
    exported twice) is one vote, not two; rows of one annotator that disagree make the path
    conflicting (None), as `merge_found` does for a single annotator. Annotators match as
    paths do: stripped of spaces, case kept; a row with no annotator named is an answer of
    its own (anonymous raters are not one person)."""
    given: dict[str, dict[object, str | float | None]] = {}
    conflicting: set[str] = set()
    for row, (path, who, answer) in enumerate(zip(paths, annotators, answers)):
        seen = given.setdefault(path, {})
        who = who if isinstance(who, str) and who else ("", row)
        if who in seen and seen[who] != answer:
            conflicting.add(path)
        seen.setdefault(who, answer)
    return {path: None if path in conflicting else list(seen.values()) for path, seen in given.items()}
