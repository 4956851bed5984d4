"""`vislab compare`: one row per run, the columns of a results table in a paper.

Reads only the run directories' files (no model is built), so comparing dozens of runs is
instant. Missing values (a run never evaluated) stay empty rather than failing. Like the run
tables of W&B or Keras Tuner, the config keys whose values differ between the runs get a
column each (the hyper-parameters that explain the differences), and runs are named by the
shortest end of their path that tells them apart (`a/run`, `b/run`).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from vislab.config import key_applies, value_text
from vislab.display import format_rate
from vislab.errors import VislabError
from vislab.fsguard import cannot_write, output_file_problem, printable, write_file
from vislab.report.rundata import RunData, read_run
from vislab.runs import is_sanity_check, run_paths
from vislab.tasks import Column, get_task
from vislab.usertext import md_cell, sheet_table, term

# the columns every run has; a task's result columns (`Task.compare_columns`) go between
# `epochs` and `wall_time_s`, in the order of the runs' tasks
HEAD = (
    Column("run", "run", "run"),
    Column("model", "model", "model"),
    Column("input", "input", "input"),
    Column("params_trainable", "trainable params", "trainable"),
    Column("params_frozen", "frozen params", "frozen"),
    Column("params_total", "total params", "params", aliases=("params",)),
    Column("epochs", "epochs", "epochs", higher_is_better=True),
)
TAIL = (
    Column("wall_time_s", "wall time", "time", aliases=("time", "wall_time")),
    Column("images_per_s", "images/s", "img/s", higher_is_better=True, aliases=("speed",)),
)
# columns only a comparison of runs scored on different eval sets has (see `_scored_sets`)
SCORED_SET = (
    Column("dataset", "dataset", "dataset"),
    Column("n_test", "n test", "n test"),
)
FORMATS = ("table", "md", "csv", "html", "json")
CONFIG = "config."  # prefix of the columns holding config keys that differ between the runs
# config keys another column already shows (model name and ABN mark, input size, epochs)
SHOWN_ELSEWHERE = ("model.name", "model.attention", "data.img_size", "train.epochs")
MAX_CONFIG_COLUMNS = 8  # more differing keys share one OTHER column in displays
OTHER = "other_config"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_config(configs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run, the config keys (dotted) whose values are not the same in every run.

    A key is compared only between the runs it matters to: the settings of a choice a run
    did not make (`model.simple_cnn.*` of a resnet run) are left out for that run, while a
    key missing under a section another run sets (`model.head: null` against a head) is a
    difference. Keys another column shows (model name, input size, epochs) are left out, and
    a run whose config is unknown (no config.yaml) takes no part: it would differ in every key.
    """
    flat = [_flatten(c) for c in configs]
    keys = [k for k in dict.fromkeys(k for f in flat for k in f) if k not in SHOWN_ELSEWHERE]
    diff = []
    for k in keys:
        seen = {repr(f.get(k, "<absent>")) for f in flat if f and key_applies(k, f)}
        if len(seen) > 1:
            diff.append(k)
    return [{k: f[k] for k in diff if k in f and key_applies(k, f)} for f in flat]


def distinguishing_names(paths: Sequence[str | Path]) -> list[str]:
    """Each path's shortest end that no other path shares: runs/x, a/run, b/run -> x, a/run, b/run."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    names = []
    for i, mine in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != i]
        for n in range(1, len(mine) + 1):
            if all(p[-n:] != mine[-n:] for p in others):
                names.append("/".join(mine[-n:]))
                break
        else:  # the same run given twice: its whole path
            names.append(str(Path(*mine)))
    return names


def run_row(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """The comparison row of one run (raw numbers; formatting happens on output)."""
    return _row(read_run(run_dir), split)


def _row(d: RunData, split: str) -> dict[str, Any]:
    s, i = d.summary, d.info
    params = s.get("params") or {}
    size = (i.get("data_spec") or {}).get("input_size") or s.get("input_size") or []
    completed, planned = s.get("epochs_completed"), s.get("epochs_planned")
    task = get_task(d.task)
    values = task.compare_values(d, split)
    return {
        "run": d.name,
        "model": d.model_label or None,
        "input": "x".join(str(v) for v in size[1:]) or None,
        "params_trainable": params.get("trainable"),
        "params_frozen": params.get("frozen"),
        "params_total": params.get("total"),
        "epochs": completed,
        "epochs_planned": planned,
        **{c.key: values.get(c.key) for c in task.compare_columns()},
        "wall_time_s": s.get("wall_time_s"),
        "images_per_s": s.get("train_images_per_s"),
        "path": str(d.run_dir),
        "task": task.name,
    }


def result_columns(tasks: Sequence[str]) -> list[Column]:
    """The columns of a comparison of runs of these tasks: the generic ones around each
    task's result columns (in the order the tasks come; a key two tasks share counts once)."""
    own: dict[str, Column] = {}
    for name in dict.fromkeys(tasks):
        for col in get_task(name).compare_columns():
            own.setdefault(col.key, col)
    return [*HEAD, *own.values(), *TAIL]


def columns(df: pd.DataFrame) -> list[Column]:
    """The result columns of a `compare_runs` table (with `SCORED_SET` ones it holds after `epochs`)."""
    cols = result_columns(list(df["task"]) if "task" in df and len(df) else [])
    return cols[: len(HEAD)] + [c for c in SCORED_SET if c.key in df.columns] + cols[len(HEAD):]


def compare_runs(run_dirs: Sequence[str | Path], sort: str | None = None, split: str = "test") -> pd.DataFrame:
    """A table with one row per run; `sort` is a column key ('-key' / '+key' force the order).

    Without a sign, metrics where higher is better sort best first, the rest ascending.
    """
    if not run_dirs:
        raise VislabError("compare: pass at least one run directory")
    # `vislab compare SWEEP/*` also names the sweep's own files (study.db, results.csv, plots/):
    # entries that exist but are not runs are left out; a path that does not exist still fails.
    # A `train --sanity` folder (runs/sanity) is left out with a note: it trained no run.
    checks = [r for r in run_dirs if is_sanity_check(r)]
    for r in checks:
        print(f"compare: left out {printable(r)}: a `vislab train --sanity` check, not a trained run", file=sys.stderr, flush=True)
    run_dirs = [r for r in run_dirs if not Path(r).exists() or run_paths(r).run_json.is_file() or run_paths(r).config.is_file()]
    if not run_dirs:
        raise VislabError("compare: none of the given paths is a run directory (a folder `vislab train` wrote)")
    runs = [read_run(r) for r in run_dirs]
    _check_split(runs, split)
    for d in runs:
        stale = d.stale_eval(d.evals.get(split))
        if stale:
            print(f"compare: warning: {printable(d.run_dir)}: {printable(stale)}", file=sys.stderr, flush=True)
    names = distinguishing_names(run_dirs)
    rows = [_row(d, split) for d in runs]
    for row, name, extra in zip(rows, names, _scored_sets(runs, names, split)):
        row["run"] = name
        row.update(extra)
    diffs = differing_config([d.config for d in runs])
    df = pd.DataFrame(rows, columns=list(dict.fromkeys(k for row in rows for k in row)))
    for key in dict.fromkeys(k for d in diffs for k in d):  # object columns: ints stay ints, null stays None
        df[CONFIG + key] = pd.Series([d.get(key, float("nan")) for d in diffs], dtype=object)
    if sort:
        cols = columns(df)
        by_key = {c.key: c for c in cols}
        key = _sort_column(sort, cols, config_columns(df))
        higher = key in by_key and by_key[key].higher_is_better
        descending = sort.startswith("-") or (not sort.startswith("+") and higher)
        df = df.sort_values(key, ascending=not descending, na_position="last", kind="stable", key=_sortable).reset_index(drop=True)
    return df


def _sort_column(sort: str, cols: Sequence[Column], config: Sequence[str]) -> str:
    """The column `--sort` names: a column key, one of its aliases or a config key that
    differs (its column), matched exactly or else regardless of case when only one name
    matches (`mAP50` is `map50`)."""
    wanted = sort.lstrip("+-")
    names: dict[str, str] = {}  # every accepted name -> its column
    for c in cols:
        names.setdefault(c.key, c.key)
        for alias in c.aliases:
            names.setdefault(alias, c.key)
    for col in config:
        names[col.removeprefix(CONFIG)] = col
    if wanted in names:
        return names[wanted]
    matches = {col for name, col in names.items() if name.casefold() == wanted.casefold()}
    if len(matches) == 1:
        return matches.pop()
    if matches:
        raise VislabError(f"--sort {sort!r}: matches {', '.join(sorted(m.removeprefix(CONFIG) for m in matches))} regardless of case; write it as one of them")
    varying = [c.removeprefix(CONFIG) for c in config]
    also = f", or a config key that differs ({', '.join(varying)})" if varying else ""
    raise VislabError(f"--sort {sort!r}: unknown column; use one of {', '.join(c.key for c in cols)}{also}")


def _check_split(runs: Sequence[RunData], split: str) -> None:
    """Refuse a split that names no eval set of any run while some run has others (a typo such
    as --split tset would print blank columns); warn for each run without it when others have
    it. Runs never evaluated at all are compared on their validation figures without a word."""
    lacking = [d for d in runs if split not in d.evals]
    if not lacking or not any(d.evals for d in runs):
        return
    if len(lacking) == len(runs):
        if len(runs) == 1:
            raise VislabError(runs[0].not_evaluated(split))
        have = ", ".join(dict.fromkeys(name for d in runs for name in d.evals))
        raise VislabError(f"--split {split}: none of the {len(runs)} runs has eval/{split} (have: {have}); run `vislab evaluate RUN --split {split}` or pick one of those")
    for d in lacking:
        _warn(d.not_evaluated(split))


def _warn(text: str) -> None:
    print(f"compare: warning: {printable(text)}", file=sys.stderr, flush=True)


def _dataset_labels(where: Sequence[tuple[str, str | None] | None], full: bool = False) -> list[str | None]:
    """Names of (dataset folder, manifest hash) pairs: the folders' distinguishing ends (or,
    `full`, the folders), with the hash's start where one folder was scored under several
    manifests (re-curated in between)."""
    folders = list(dict.fromkeys(w[0] for w in where if w))
    short = dict(zip(folders, folders if full else distinguishing_names(folders)))
    hashes = {f: {w[1] for w in where if w and w[0] == f and w[1]} for f in folders}
    return [
        None if w is None else short[w[0]] + (f" (manifest {w[1][:8] if w[1] else 'unrecorded'})" if len(hashes[w[0]]) > 1 else "")
        for w in where
    ]


def _scored_sets(runs: Sequence[RunData], names: Sequence[str], split: str) -> list[dict[str, Any]]:
    """Warn, one line each, when runs of one task (whose figures share columns) were scored on
    different sets: the eval set's dataset (folder and manifest), its number of labelled
    images or its classes, and the validation set behind the best validation figures (the
    training dataset and `val_source`). A run without the figure, or that did not record a fact, takes no part
    in that fact. Returns per run the `SCORED_SET` columns to add: `dataset` and `n_test`,
    each only when the runs differ in it."""
    extra: list[dict[str, Any]] = [{} for _ in runs]
    for task in dict.fromkeys(d.task for d in runs):
        group = [i for i, d in enumerate(runs) if d.task == task]
        for i, columns in zip(group, _scored_group([runs[i] for i in group], [names[i] for i in group], split)):
            extra[i] = columns
    return extra


def _scored_group(runs: Sequence[RunData], names: Sequence[str], split: str) -> list[dict[str, Any]]:
    evals = [d.evals.get(split) for d in runs]
    facts = [get_task(d.task).scored_set(ev.metrics) if ev else (None, None) for d, ev in zip(runs, evals)]
    where = [(str(ev.metrics["dataset_dir"]), ev.metrics.get("manifest_hash")) if ev and ev.metrics.get("dataset_dir") else None for ev in evals]
    extra: list[dict[str, Any]] = [{} for _ in runs]
    datasets = _dataset_labels(where)
    if len({x for x in datasets if x is not None}) > 1:
        shown = ", ".join(f"{name} on {x}" for name, x in zip(names, _dataset_labels(where, full=True)) if x is not None)
        _warn(f"eval/{split} of these runs scored different datasets ({shown}): their figures do not rank them on one test set")
        for e, x in zip(extra, datasets):
            e["dataset"] = x
    counts = [n for n, _ in facts]
    if len({n for n in counts if n is not None}) > 1:
        shown = ", ".join(f"{name} {n:,}" for name, n in zip(names, counts) if n is not None)
        _warn(f"eval/{split} of these runs counts different numbers of labelled images ({shown})")
        for e, n in zip(extra, counts):
            e["n_test"] = n
    known = [set(c) for _, c in facts if c is not None]
    if len({frozenset(c) for c in known}) > 1:
        every = set().union(*known)
        lacking = []
        for name, (_, c) in zip(names, facts):
            missing = sorted(every - set(c or every))
            if missing:
                more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
                lacking.append(f"{name} has none of {', '.join(missing[:5])}{more}")
        _warn(f"eval/{split} of these runs covers different classes ({'; '.join(lacking)}): mCA and macro figures average over different classes")
    trained = _dataset_labels([(str(d.info["dataset_dir"]), d.info.get("manifest_hash")) if d.info.get("dataset_dir") else None for d in runs])
    val = {
        name: " ".join(x for x in (t, f"(val: {d.info['val_source']})" if d.info.get("val_source") else None) if x)
        for name, d, t in zip(names, runs, trained)
        if d.summary.get("best_val")
    }
    if len({v for v in val.values() if v}) > 1:
        shown = "; ".join(f"{name}: {v or 'not recorded'}" for name, v in val.items())
        _warn(f"the best validation figures of these runs come from different validation sets ({shown})")
    return extra


def _sortable(col: pd.Series) -> pd.Series:
    """A config column (mixed Python values) as numbers when they all are, else as text."""
    if pd.api.types.is_numeric_dtype(col):
        return col
    numbers = pd.to_numeric(col, errors="coerce")
    if numbers.notna().sum() == col.notna().sum():
        return numbers
    return col.map(lambda v: value_text(v) if _present(v) else v)


def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns of config keys that differ between the runs, in config order."""
    return [c for c in df.columns if c.startswith(CONFIG)]


def config_labels(columns: Sequence[str]) -> dict[str, str]:
    """Short headers for config columns: the shortest end of the dotted key, at least two
    parts, that no other column shares (optim.lr, simple_cnn.layers, seed)."""
    keys = [c.removeprefix(CONFIG).split(".") for c in columns]
    labels = {}
    for col, parts in zip(columns, keys):
        for n in range(min(2, len(parts)), len(parts) + 1):
            if all(other[-n:] != parts[-n:] for other in keys if other is not parts):
                break
        labels[col] = ".".join(parts[-n:])
    return labels


def _present(v: Any) -> bool:
    return not (isinstance(v, float) and v != v)


def _config_cell(v: Any) -> str:
    return value_text(v) if _present(v) else ""


def _cell(col: Column | None, key: str, v: Any, row: pd.Series) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return "—"
    if col is not None and col.percent:
        return f"{100 * float(v):.2f}"
    if key == "n_test":
        return f"{int(v):,}"
    if key.startswith("params_"):
        return f"{int(v) / 1e6:.2f}M" if int(v) >= 100_000 else f"{int(v):,}"
    if key == "wall_time_s":
        s = int(round(float(v)))
        h, rem = divmod(s, 3600)
        return f"{h}:{rem // 60:02d}:{rem % 60:02d}"
    if key == "images_per_s":
        return format_rate(v)
    if key.startswith(CONFIG):
        return _config_cell(v)
    if key == "epochs":
        planned = row.get("epochs_planned")
        return f"{int(v)}/{int(planned)}" if planned is not None and planned == planned and planned != v else f"{int(v)}"
    if isinstance(v, float):  # an IoU or an AUC: 0.795, not 0.7948566504017947
        return f"{v:.4g}"
    return str(v)


def shown_columns(df: pd.DataFrame) -> list[str]:
    """The column keys to print: the run's descriptors, then up to MAX_CONFIG_COLUMNS config
    keys that differ (the rest in one OTHER column), then the results; optional ones only
    when some run has a value."""
    cfg = config_columns(df)
    extra = cfg[:MAX_CONFIG_COLUMNS] + ([OTHER] if len(cfg) > MAX_CONFIG_COLUMNS else [])
    keys = [c.key for c in columns(df) if not c.optional or (c.key in df and df[c.key].notna().any())]
    return keys[:3] + extra + keys[3:]


def _labels(df: pd.DataFrame, short: bool = False) -> dict[str, str]:
    """Header of each column. Runs of several tasks can bring two columns with one short
    header (classify's macro F1 and detect's F1 @conf are both `F1 %`): those get their long
    headers, so no two shown columns read the same."""
    cols = columns(df)
    long = {c.key: c.label + (" %" if c.percent else "") for c in cols}
    labels = {c.key: c.short for c in cols} if short else dict(long)
    shown = set(shown_columns(df))
    taken: dict[str, int] = {}
    for key, label in labels.items():
        if key in shown:
            taken[label] = taken.get(label, 0) + 1
    for key, label in labels.items():
        if key in shown and taken[label] > 1:
            labels[key] = long[key]
    labels.update(config_labels(config_columns(df)))
    labels[OTHER] = "other config"
    return labels


def _other(row: pd.Series, df: pd.DataFrame) -> str:
    cols = config_columns(df)[MAX_CONFIG_COLUMNS:]
    labels = config_labels(config_columns(df))
    return "; ".join(f"{labels[c]}={_config_cell(row.get(c))}" for c in cols if _present(row.get(c)))


def formatted(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header labels (accuracies in %) and display strings for each row."""
    keys = shown_columns(df)
    labels = _labels(df)
    by_key = {c.key: c for c in columns(df)}
    headers = [labels[k] for k in keys]
    rows = [[_other(r, df) if k == OTHER else _cell(by_key.get(k), k, r.get(k), r) for k in keys] for _, r in df.iterrows()]
    return headers, rows


def _left_aligned(key: str) -> bool:
    return key in ("run", "model", "input", "dataset", OTHER) or key.startswith(CONFIG)


def to_markdown(df: pd.DataFrame) -> str:
    """A Markdown table; every cell through `md_cell`, since run names and config values
    are user text (`<img ...>`, a newline, a `|`)."""
    headers, rows = formatted(df)
    right = {i for i, k in enumerate(shown_columns(df)) if not _left_aligned(k)}
    lines = ["| " + " | ".join(map(md_cell, headers)) + " |", "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(map(md_cell, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """Raw numbers (not display strings) in every column, for spreadsheets and scripts;
    text that a spreadsheet would run as a formula (a run named `=1+1`) is neutralised by
    `sheet_table`. Nothing in vislab reads this file back."""
    table = sheet_table(df[_file_columns(df)])
    buf = io.StringIO()
    table.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def to_json(df: pd.DataFrame) -> str:
    """A list with one object per run, holding the CSV's columns under its keys: raw numbers,
    and null where a value is missing (a run never evaluated)."""
    keys = _file_columns(df)
    rows = [{k: _json_value(v) for k, v in zip(keys, values)} for values in df[keys].itertuples(index=False, name=None)]
    return json.dumps(rows, indent=2, default=str) + "\n"


def _file_columns(df: pd.DataFrame) -> list[str]:
    """The columns of the csv and json outputs: every result column, then the planned epochs,
    the run's path and the config keys that differ."""
    return [c.key for c in columns(df)] + ["epochs_planned", "path"] + config_columns(df)


def _json_value(v: Any) -> Any:
    """`v` as JSON has it: numpy numbers as Python ones, NaN (a missing value) as null."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def to_html(df: pd.DataFrame) -> str:
    """A standalone HTML page holding the table (inline CSS, no network)."""
    headers, rows = formatted(df)
    left = [_left_aligned(k) for k in shown_columns(df)]

    def cls(i: int) -> str:
        return ' class="l"' if left[i] else ""

    head = "".join(f"<th{cls(i)}>{html.escape(printable(h))}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{html.escape(printable(c))}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    css = (
        "body{font:14px system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:32px;color:#111827;background:#f5f6fa}"
        "table{border-collapse:collapse;background:#fff;border:1px solid #e5e7eb;border-radius:10px;font-variant-numeric:tabular-nums}"
        "th,td{padding:8px 12px;border-bottom:1px solid #e5e7eb;text-align:right;white-space:nowrap}"
        "th{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:#6b7280;background:#fafafa}"
        "td.l,th.l{text-align:left}tr:hover td{background:#f9fafb}"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vislab compare</title><style>{css}</style></head>'
        f"<body><h1>Run comparison</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )


def rich_table(df: pd.DataFrame) -> Any:
    """A rich Table for the terminal (short headers; print it at its natural width); every
    cell through `term`, since run names and config values are user text."""
    from rich.table import Table

    _, rows = formatted(df)
    labels = _labels(df, short=True)
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for k in shown_columns(df):
        t.add_column(term(labels[k]), justify="left" if _left_aligned(k) else "right", no_wrap=k != OTHER)
    for r in rows:
        t.add_row(*map(term, r))
    return t


def check_format(fmt: str) -> None:
    """Refuse an unknown `--format` in one line, before any run is read."""
    if fmt not in FORMATS:
        raise VislabError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")


def check_out(out: str | Path, fmt: str) -> None:
    """Refuse an `--out` that cannot take the table (a folder, a link, a special file, a path
    under a file) in one line, before any run is read."""
    problem = output_file_problem(out, f"compare.{'md' if fmt == 'table' else fmt}")
    if problem:
        raise VislabError(f"--out {printable(out)}: {problem}")


def save(text: str, out: str | Path, fmt: str) -> Path:
    """Write the table to `out` whole (a temporary file renamed onto it, its folder made if
    missing); a file already there is replaced, a link there is never written through."""
    check_out(out, fmt)
    try:
        return write_file(out, text)
    except OSError as err:
        raise cannot_write(out, err) from None


def render(df: pd.DataFrame, fmt: str) -> str:
    """The table as text in one of md | csv | html | json (the terminal table is `rich_table`)."""
    writers = {"md": to_markdown, "csv": to_csv, "html": to_html, "json": to_json}
    if fmt not in writers:
        check_format(fmt)
        raise VislabError(f"--format {fmt!r}: the terminal table; use one of {', '.join(writers)} for text")
    return writers[fmt](df)
