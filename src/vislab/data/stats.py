"""Dataset summaries: counts by status, reason, class and split, as a dict, a table and a plot.

Counts are always recomputed from the manifest, so `vislab stats` and the `curation.json`
written by `vislab curate` can never disagree. Class names are drawn as plain text
(`PLAIN_TEXT`): a class called `$x^{$` is a name, not a broken formula. Likewise every
name and path printed goes through `term`: a class folder `[link=...]cat` is shown as
written, not as a link, and a source `src[/]x` recorded in curation.json prints.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from vislab.data.boxes import box_stats, read_boxes
from vislab.data.det_types import FORMAT_NAMES
from vislab.data.manifest import BOXES_NAME, OK, STATUSES, has_boxes, read_curation, read_manifest, reason_kind, usable
from vislab.usertext import term

HISTOGRAM_NAME = "class_histogram.png"
SPLIT_ORDER = ("train", "val", "test")
MAX_CLASS_ROWS = 30
# matplotlib reads text between '$' signs as mathtext; labels are names, drawn as written.
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}
# Recorded options not worth a line in the summary (column names, defaults that rarely change).
_QUIET = {
    "sources",
    "path_column",
    "label_column",
    "annotator_column",
    "question_column",
    "rating_column",
    "aspect_tolerance",
    "max_pixels",
    "near_threshold",
}


def summarize_manifest(df: pd.DataFrame) -> dict[str, Any]:
    """Counts that describe a manifest table."""
    ok = df[df["status"] == OK]
    status = {s: int((df["status"] == s).sum()) for s in STATUSES}
    reasons = Counter(reason_kind(r) for r in (df["reason"] if "reason" in df.columns else ()) if r)
    classes = Counter(ok["label"])
    out: dict[str, Any] = {
        "files": int(len(df)),
        "status": status,
        "reasons": dict(sorted(reasons.items())),
        "classes": dict(sorted(classes.items())),
    }
    splits = [s for s in SPLIT_ORDER if (ok["split"] == s).any()]
    if splits:
        out["splits"] = {s: dict(sorted(Counter(ok.loc[ok["split"] == s, "label"]).items())) for s in splits}
    fmt = df.loc[df["format"] != "", "format"] if "format" in df.columns else pd.Series([], dtype=str)
    out["formats"] = dict(sorted(Counter(fmt).items()))
    if "orientation" in df.columns:
        rotated = pd.to_numeric(df["orientation"], errors="coerce").fillna(1)
        out["exif_oriented"] = int((rotated > 1).sum())
    if "group" in df.columns:
        groups = df.loc[df["group"] != "", "group"]
        out["duplicate_groups"] = int(groups.nunique())
    return out


def dataset_summary(dataset_dir: str | Path) -> dict[str, Any]:
    """Summary of a curated dataset: recorded options and provenance plus fresh counts (for
    a detection dataset, fresh box counts and sizes from boxes.csv too)."""
    df = read_manifest(dataset_dir)
    recorded = read_curation(dataset_dir)
    recorded.update(summarize_manifest(df))
    if has_boxes(dataset_dir):
        detection = recorded.get("detection")
        detection = detection if isinstance(detection, dict) else {}
        rows = usable(df)
        recorded["task"] = "detect"
        recorded["detection"] = {**detection, **box_stats(read_boxes(dataset_dir), rows[["path", "split"]])}
    elif recorded.pop("detection", None) is not None:
        warnings = recorded.get("warnings") if isinstance(recorded.get("warnings"), list) else []
        recorded["warnings"] = [*warnings, f"{BOXES_NAME} is missing: the boxes of this detection dataset are gone; re-run `vislab curate`"]
    recorded["dataset_dir"] = str(Path(dataset_dir).resolve())
    return recorded


def _counts_table(title: str, counts: dict[str, int], unit: str = "files") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column(unit, justify="right")
    for key, n in counts.items():
        table.add_row(term(key), str(n))
    return table


def _class_table(summary: dict[str, Any]) -> Table:
    """Usable images per class, and per split."""
    classes: dict[str, int] = summary.get("classes", {})
    splits: dict[str, dict[str, int]] = summary.get("splits", {})
    table = Table(title=f"{len(classes)} classes", title_justify="left")
    table.add_column("class")
    table.add_column("ok", justify="right")
    for s in splits:
        table.add_column(s, justify="right")
    ranked = sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))
    for name, n in ranked[:MAX_CLASS_ROWS]:
        table.add_row(term(name) if name else "(unlabelled)", str(n), *(str(splits[s].get(name, 0)) for s in splits))
    if len(ranked) > MAX_CLASS_ROWS:
        rest = ranked[MAX_CLASS_ROWS:]
        table.add_row(f"... {len(rest)} more", str(sum(n for _, n in rest)), *("" for _ in splits))
    table.add_row("total", str(sum(classes.values())), *(str(sum(splits[s].values())) for s in splits))
    return table


def _print_detection(det: dict[str, Any], console: Console) -> None:
    """Boxes per class and split, box sizes, and what curation dropped or could not read."""
    names = det.get("classes") if isinstance(det.get("classes"), list) else []
    ids = {c: i for i, c in enumerate(names)}
    fmt = FORMAT_NAMES.get(det.get("format"), det.get("format") or "detection")
    counts: dict[str, int] = det["boxes_per_class"]
    console.print(
        f"{term(fmt)} detection dataset: {det.get('images', 0):,} usable images "
        f"({det.get('images_without_boxes', 0):,} without boxes), {det.get('boxes', 0):,} boxes, "
        f"{len(names) or len(counts)} classes",
        highlight=False,
    )
    splits: dict[str, Any] = det.get("splits", {})
    images_per_class = det.get("images_per_class", {})
    table = Table(title="boxes per class", title_justify="left")
    for column in ("id", "class", "boxes", "images", *splits):
        table.add_column(column, justify="left" if column == "class" else "right")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], ids.get(kv[0], len(ids)), kv[0]))
    for name, n in ranked[:MAX_CLASS_ROWS]:
        per_split = (str(splits[s]["boxes_per_class"].get(name, 0)) for s in splits)
        table.add_row(str(ids.get(name, "")), term(name), str(n), str(images_per_class.get(name, 0)), *per_split)
    if len(ranked) > MAX_CLASS_ROWS:
        rest = ranked[MAX_CLASS_ROWS:]
        table.add_row("", f"... {len(rest)} more", str(sum(n for _, n in rest)), "", *("" for _ in splits))
    unseen = [c for c in names if c not in counts]
    if unseen:
        table.add_row("", f"{len(unseen)} class(es) without boxes", "0", "0", *("" for _ in splits))
    totals = (str(sum(splits[s]["boxes_per_class"].values())) for s in splits)
    table.add_row("", "total boxes", str(det.get("boxes", 0)), "", *totals)
    table.add_row("", "images", "", str(det.get("images", 0)), *(str(splits[s]["images"]) for s in splits))
    console.print(table)
    sizes = Table(title="box sizes (pixels of the displayed image)", title_justify="left")
    sizes.add_column("")
    keys = list(det.get("area") or {})
    for key in keys:
        sizes.add_column(key, justify="right")
    for what in ("width", "height", "area"):
        values = det.get(what) or {}
        sizes.add_row(what, *(f"{values.get(k, 0):g}" for k in keys))
    if keys:
        console.print(sizes)
    buckets = det.get("size_buckets", {})
    per_image = det.get("boxes_per_image", {})
    lines = [
        f"COCO size buckets (area < 32², < 96², larger): small {buckets.get('small', 0):,}, "
        f"medium {buckets.get('medium', 0):,}, large {buckets.get('large', 0):,}; "
        f"boxes per image: mean {per_image.get('mean', 0)}, max {per_image.get('max', 0)}"
    ]
    if det.get("ignore_regions"):
        lines.append("ignore regions: " + ", ".join(f"{c} {n:,}" for c, n in det["ignore_regions"].items()))
    dropped = [
        f"{what}: " + ", ".join(f"{k} {n:,}" for k, n in det[key].items())
        for key, what in (
            ("boxes_of_unusable_images", "boxes of unusable images dropped"),
            ("boxes_of_unselected_classes", "boxes of classes not selected dropped"),
            ("neighbours_kept_as_ignore", "KITTI neighbours of the selected classes kept as ignore regions (the devkit ignores them)"),
        )
        if det.get(key) and isinstance(det[key], dict)
    ]
    if det.get("clipped_boxes") and isinstance(det["clipped_boxes"], int):
        lines.append(f"boxes clipped to the image edge: {det['clipped_boxes']:,}")
    for line in lines + dropped:
        console.print(term(line), highlight=False, soft_wrap=True)
    _print_problems(det, console)


def _print_problems(det: dict[str, Any], console: Console, shown: int = 5) -> None:
    """Label problems by kind and the first few in full (every one is in curation.json)."""
    counts = det.get("problem_counts")
    if not counts or not isinstance(counts, dict) or not all(isinstance(n, int) for n in counts.values()):
        return
    console.print(_counts_table("label problems (each a reason in curation.json)", counts, "count"))
    problems = [p for p in det.get("problems") or [] if isinstance(p, dict)]
    for p in problems[:shown]:
        where = term(p.get("file")) + (f":{term(p['line'])}" if p.get("line") is not None else "")
        console.print(f"  {where}: {term(p.get('reason'))}", highlight=False, soft_wrap=True)
    rest = sum(counts.values()) - min(len(problems), shown)
    if rest > 0:
        console.print(f"  ... and {rest:,} more: see curation.json 'detection.problems'", highlight=False)


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """Rich tables of a summary from `dataset_summary` or `run_curate`."""
    status = summary.get("status", {})
    head = f"{summary.get('files', 0)} files"
    skipped = [
        f"{summary[key]} {what} skipped"
        for key, what in (
            ("hidden_skipped", "hidden entries"),
            ("vislab_folders_skipped", "vislab output folders"),
            ("non_utf8_names_skipped", "non-UTF-8 names"),
            ("unreadable_folders_skipped", "unreadable folders"),
            ("inner_folder_links_skipped", "links to folders inside the source"),
        )
        if summary.get(key)
    ]
    if skipped:
        head += f" ({', '.join(skipped)})"
    console.print(head)
    options = summary.get("options") if isinstance(summary.get("options"), dict) else {}
    if isinstance(options.get("sources"), list) and options["sources"]:
        console.print(f"sources: {', '.join(map(term, options['sources']))}", highlight=False, soft_wrap=True)
    chosen = {k: v for k, v in options.items() if v not in (None, False, 0, "none", []) and k not in _QUIET}
    if chosen:
        console.print("options: " + " ".join(term(f"{k}={v}") for k, v in chosen.items()), highlight=False, soft_wrap=True)
    console.print(_counts_table("status", status))
    if summary.get("reasons"):
        console.print(_counts_table("reasons", summary["reasons"]))
    detection = summary.get("detection")
    if isinstance(detection, dict) and "boxes_per_class" in detection:
        _print_detection(detection, console)
    else:
        console.print(_class_table(summary))
    extras = []
    if "exif_oriented" in summary:
        extras.append(f"EXIF-rotated images: {summary['exif_oriented']}")
    if "duplicate_groups" in summary:
        extras.append(f"near/exact duplicate groups: {summary['duplicate_groups']}")
    if summary.get("conflicting_label_groups"):
        extras.append(f"groups with conflicting labels: {summary['conflicting_label_groups']}")
    if extras:
        console.print("; ".join(extras))
    _print_conflicts(_listed(summary.get("conflicting_labels")), console)
    for warning in _listed(summary.get("warnings")):
        console.print(f"[bold yellow]warning:[/] {term(warning)}", highlight=False, soft_wrap=True)
    for note in _listed(summary.get("notes")):
        console.print(f"note: {term(note)}", highlight=False, soft_wrap=True)


def _listed(value: Any) -> list[Any]:
    """A recorded list as a list: curation.json may be edited by hand, and a number or
    a string where a list belongs must not crash `vislab stats`."""
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, str) and value else []


def _print_conflicts(conflicts: list[dict[str, Any]], console: Console, shown: int = 5, per_group: int = 4) -> None:
    """The same picture under two labels: a line per group naming its labels and a few members
    (the first of each label, then the rest as recorded: kept ones first), each kept (and why)
    or excluded (and why) as the manifest has it; every member is in curation.json."""
    conflicts = [c for c in conflicts if isinstance(c, dict)]
    for c in conflicts[:shown]:
        members = [m for m in _listed(c.get("members")) if isinstance(m, dict)]
        firsts: dict[str, int] = {}
        for i, m in enumerate(members):
            firsts.setdefault(str(m.get("label")), i)
        members = [members[i] for i in firsts.values()] + [m for i, m in enumerate(members) if i not in firsts.values()]
        labels = Counter(str(m.get("label")) for m in members)
        kept = sum(bool(m.get("kept")) for m in members)
        counts = ", ".join(f"{n} '{term(label)}'" for label, n in sorted(labels.items()))
        head = f"conflicting labels in {term(c.get('group'))} ({counts}; {kept} kept)"
        parts = [f"'{term(m.get('label'))}' {term(Path(str(m.get('path'))).name)} ({_member_state(m)})" for m in members[:per_group]]
        if len(members) > per_group:
            parts.append(f"{len(members) - per_group} more in curation.json")
        console.print(f"{head}: " + "; ".join(parts), highlight=False, soft_wrap=True)
    if len(conflicts) > shown:
        console.print(f"... and {len(conflicts) - shown} more conflicting-label group(s): see curation.json 'conflicting_labels'")


def _member_state(member: dict[str, Any]) -> str:
    """'kept: why' or 'excluded: reason' of a conflicting-label group's member, short."""
    if member.get("kept"):
        return str(member.get("why") or "kept")
    reason = str(member.get("reason") or "")  # a record from before vislab wrote reasons has none
    of = reason.partition(":")[2]
    if reason_kind(reason) == "duplicate_of" and of:
        return f"excluded: duplicate of {Path(of).name}"
    return f"excluded: {reason}" if reason else "excluded"


def plot_class_histogram(summary: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of usable images per class (boxes per class for a detection dataset),
    stacked by split; many classes become a sorted long-tail curve, since hundreds of bar
    labels are unreadable anyway."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    classes: dict[str, int] = summary.get("classes", {})
    splits: dict[str, dict[str, int]] = summary.get("splits", {})
    unit = "usable images"
    detection = summary.get("detection")
    if isinstance(detection, dict) and "boxes_per_class" in detection:
        classes = detection["boxes_per_class"]
        splits = {s: v["boxes_per_class"] for s, v in detection.get("splits", {}).items()}
        unit = "boxes"
    names = [c for c, _ in sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))]
    many = len(names) > 60
    out = Path(path)
    with rc_context(PLAIN_TEXT):
        fig = Figure(figsize=(max(6.0, min(16.0, 0.35 * len(names) + 2)), 4.0))
        ax = fig.subplots()
        if not names:
            ax.text(0.5, 0.5, f"no {unit}", ha="center", va="center", transform=ax.transAxes)
        elif many:
            ax.plot(range(len(names)), [classes[c] for c in names])
            ax.set_xlabel(f"class rank ({len(names)} classes)")
        else:
            xs = range(len(names))
            bottom = [0] * len(names)
            for s in splits or {"ok": classes}:
                counts = [(splits[s] if splits else classes).get(c, 0) for c in names]
                ax.bar(xs, counts, bottom=bottom, label=s)
                bottom = [b + c for b, c in zip(bottom, counts)]
            ax.set_xticks(list(xs), [c or "(unlabelled)" for c in names], rotation=60, ha="right")
            if splits:
                ax.legend()
        ax.set_ylabel(unit)
        ax.set_title(f"{unit.split()[-1]} per class")
        fig.tight_layout()
        fig.savefig(out, dpi=100, metadata={"Software": None})
    return out
