"""Dataset summaries: counts by status, reason, class and split, as a dict, a table and a plot.

Counts are always recomputed from the manifest, so `vislab stats` and the `curation.json`
written by `vislab curate` can never disagree. Class names are drawn as plain text
(`PLAIN_TEXT`): a class called `$x^{$` is a name, not a broken formula.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vislab.data.manifest import CURATION_NAME, OK, STATUSES, read_manifest
from vislab.errors import VislabError
from vislab.fsguard import SpecialFileError, read_bounded

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


def reason_kind(reason: str) -> str:
    """'duplicate_of:/a/b.jpg' -> 'duplicate_of': reasons are counted by kind."""
    return reason.split(":", 1)[0]


def summarize_manifest(df: pd.DataFrame) -> dict[str, Any]:
    """Counts that describe a manifest table."""
    ok = df[df["status"] == OK]
    status = {s: int((df["status"] == s).sum()) for s in STATUSES}
    reasons = Counter(reason_kind(r) for r in df["reason"] if r)
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
    """Summary of a curated dataset: recorded options and provenance plus fresh counts."""
    df = read_manifest(dataset_dir)
    recorded: dict[str, Any] = {}
    path = Path(dataset_dir) / CURATION_NAME
    if path.exists():
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
    recorded.update(summarize_manifest(df))
    recorded["dataset_dir"] = str(Path(dataset_dir).resolve())
    return recorded


def _counts_table(title: str, counts: dict[str, int]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("files", justify="right")
    for key, n in counts.items():
        table.add_row(key, str(n))
    return table


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
        )
        if summary.get(key)
    ]
    if skipped:
        head += f" ({', '.join(skipped)})"
    console.print(head)
    options = summary.get("options") if isinstance(summary.get("options"), dict) else {}
    if isinstance(options.get("sources"), list) and options["sources"]:
        console.print(f"sources: {', '.join(map(str, options['sources']))}", highlight=False)
    chosen = {k: v for k, v in options.items() if v not in (None, False, 0, "none", []) and k not in _QUIET}
    if chosen:
        console.print("options: " + " ".join(f"{k}={v}" for k, v in chosen.items()), highlight=False)
    console.print(_counts_table("status", status))
    if summary.get("reasons"):
        console.print(_counts_table("reasons", summary["reasons"]))
    classes: dict[str, int] = summary.get("classes", {})
    splits: dict[str, dict[str, int]] = summary.get("splits", {})
    table = Table(title=f"{len(classes)} classes", title_justify="left")
    table.add_column("class")
    table.add_column("ok", justify="right")
    for s in splits:
        table.add_column(s, justify="right")
    ranked = sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))
    for name, n in ranked[:MAX_CLASS_ROWS]:
        table.add_row(name or "(unlabelled)", str(n), *(str(splits[s].get(name, 0)) for s in splits))
    if len(ranked) > MAX_CLASS_ROWS:
        rest = ranked[MAX_CLASS_ROWS:]
        table.add_row(f"... {len(rest)} more", str(sum(n for _, n in rest)), *("" for _ in splits))
    table.add_row("total", str(sum(classes.values())), *(str(sum(splits[s].values())) for s in splits))
    console.print(table)
    extras = []
    if "exif_oriented" in summary:
        extras.append(f"EXIF-rotated images: {summary['exif_oriented']}")
    if "duplicate_groups" in summary:
        extras.append(f"near/exact duplicate groups: {summary['duplicate_groups']}")
    if summary.get("conflicting_label_groups"):
        extras.append(f"groups with conflicting labels: {summary['conflicting_label_groups']}")
    if extras:
        console.print("; ".join(extras))
    _print_conflicts(summary.get("conflicting_labels") or [], console)
    for warning in summary.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {escape(str(warning))}", highlight=False, soft_wrap=True)


def _print_conflicts(conflicts: list[dict[str, Any]], console: Console, shown: int = 5) -> None:
    """The same picture under two labels: which copies, which was kept and why (all in curation.json)."""
    for c in conflicts[:shown]:
        parts = []
        for m in c.get("members", []):
            state = m.get("why", "kept") if m.get("kept") else "excluded as a duplicate"
            parts.append(f"'{m.get('label')}' {Path(str(m.get('path'))).name} ({state})")
        console.print(f"conflicting labels in {c.get('group')}: " + "; ".join(parts), highlight=False, soft_wrap=True, markup=False)
    if len(conflicts) > shown:
        console.print(f"... and {len(conflicts) - shown} more conflicting-label group(s): see curation.json 'conflicting_labels'")


def plot_class_histogram(summary: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of usable images per class (stacked by split); many classes become a
    sorted long-tail curve, since hundreds of bar labels are unreadable anyway."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    classes: dict[str, int] = summary.get("classes", {})
    splits: dict[str, dict[str, int]] = summary.get("splits", {})
    names = [c for c, _ in sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))]
    many = len(names) > 60
    out = Path(path)
    with rc_context(PLAIN_TEXT):
        fig = Figure(figsize=(max(6.0, min(16.0, 0.35 * len(names) + 2)), 4.0))
        ax = fig.subplots()
        if not names:
            ax.text(0.5, 0.5, "no usable images", ha="center", va="center", transform=ax.transAxes)
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
        ax.set_ylabel("usable images")
        ax.set_title("images per class")
        fig.tight_layout()
        fig.savefig(out, dpi=100, metadata={"Software": None})
    return out
