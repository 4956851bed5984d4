"""`vislab compare`: one row per run, the columns of a results table in a paper.

Reads only the run directories' JSON files (no model is built), so comparing dozens of runs
is instant. Missing values (a run never evaluated) stay empty rather than failing.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from vislab.errors import VislabError
from vislab.report.rundata import read_run

COLUMNS = {
    "run": "run",
    "model": "model",
    "input": "input",
    "params_trainable": "trainable params",
    "params_frozen": "frozen params",
    "params_total": "total params",
    "epochs": "epochs",
    "best_val_acc": "best val acc",
    "test_acc": "test acc",
    "mca": "mCA",
    "f1": "F1 (macro)",
    "att_test_acc": "attention-branch test acc",
    "wall_time_s": "wall time",
    "images_per_s": "images/s",
}
SHORT = {"params_trainable": "trainable", "params_frozen": "frozen", "params_total": "params", "best_val_acc": "val acc %",
         "test_acc": "test acc %", "mca": "mCA %", "f1": "F1 %", "att_test_acc": "att acc %", "wall_time_s": "time", "images_per_s": "img/s"}
HIGHER_IS_BETTER = {"best_val_acc", "test_acc", "mca", "f1", "att_test_acc", "images_per_s", "epochs"}
FORMATS = ("table", "md", "csv", "html")
PERCENT = ("best_val_acc", "test_acc", "mca", "f1", "att_test_acc")
OPTIONAL = ("att_test_acc",)  # shown only when some run has a value (ABN runs)


def run_row(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """The comparison row of one run (raw numbers; formatting happens on output)."""
    d = read_run(run_dir)
    s, i = d.summary, d.info
    params = s.get("params") or {}
    size = (i.get("data_spec") or {}).get("input_size") or s.get("input_size") or []
    ev = d.evals.get(split)
    m = ev.metrics if ev else {}
    completed, planned = s.get("epochs_completed"), s.get("epochs_planned")
    return {
        "run": d.name,
        "model": d.model_label or None,
        "input": "x".join(str(v) for v in size[1:]) or None,
        "params_trainable": params.get("trainable"),
        "params_frozen": params.get("frozen"),
        "params_total": params.get("total"),
        "epochs": completed,
        "epochs_planned": planned,
        "best_val_acc": (s.get("best_val") or {}).get("val/acc"),
        "test_acc": m.get("accuracy"),
        "mca": m.get("mca"),
        "f1": m.get("f1_macro"),
        "att_test_acc": m.get("att_accuracy"),
        "wall_time_s": s.get("wall_time_s"),
        "images_per_s": s.get("train_images_per_s"),
        "path": str(d.run_dir),
    }


def compare_runs(run_dirs: Sequence[str | Path], sort: str | None = None, split: str = "test") -> pd.DataFrame:
    """A table with one row per run; `sort` is a column key ('-key' / '+key' force the order).

    Without a sign, metrics where higher is better sort best first, the rest ascending.
    """
    if not run_dirs:
        raise VislabError("compare: pass at least one run directory")
    # `vislab compare SWEEP/*` also names the sweep's own files (study.db, results.csv, plots/):
    # entries that exist but are not runs are left out; a path that does not exist still fails
    runs = [r for r in run_dirs if not Path(r).exists() or (Path(r) / "run.json").is_file() or (Path(r) / "config.yaml").is_file()]
    if not runs:
        raise VislabError(f"compare: none of the {len(run_dirs)} path(s) is a run directory (a folder `vislab train` wrote)")
    df = pd.DataFrame([run_row(r, split) for r in runs])
    if sort:
        key = sort.lstrip("+-")
        key = {"val_acc": "best_val_acc", "acc": "test_acc", "accuracy": "test_acc", "params": "params_total",
               "time": "wall_time_s", "wall_time": "wall_time_s", "speed": "images_per_s"}.get(key, key)
        if key not in COLUMNS:
            raise VislabError(f"--sort {sort!r}: unknown column; use one of {', '.join(COLUMNS)}")
        descending = sort.startswith("-") or (not sort.startswith("+") and key in HIGHER_IS_BETTER)
        df = df.sort_values(key, ascending=not descending, na_position="last", kind="stable").reset_index(drop=True)
    return df


def _cell(key: str, v: Any, row: pd.Series) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if key in PERCENT:
        return f"{100 * float(v):.2f}"
    if key.startswith("params_"):
        return f"{int(v) / 1e6:.2f}M" if int(v) >= 100_000 else f"{int(v):,}"
    if key == "wall_time_s":
        s = int(round(float(v)))
        h, rem = divmod(s, 3600)
        return f"{h}:{rem // 60:02d}:{rem % 60:02d}"
    if key == "images_per_s":
        return f"{float(v):,.0f}"
    if key == "epochs":
        planned = row.get("epochs_planned")
        return f"{int(v)}/{int(planned)}" if planned is not None and planned == planned and planned != v else f"{int(v)}"
    return str(v)


def shown_columns(df: pd.DataFrame) -> list[str]:
    """The column keys to print: all but the OPTIONAL ones no run has a value for."""
    return [k for k in COLUMNS if k not in OPTIONAL or (k in df and df[k].notna().any())]


def formatted(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header labels (accuracies in %) and display strings for each row."""
    keys = shown_columns(df)
    headers = [COLUMNS[k] + (" %" if k in PERCENT else "") for k in keys]
    rows = [[_cell(k, r.get(k), r) for k in keys] for _, r in df.iterrows()]
    return headers, rows


def to_markdown(df: pd.DataFrame) -> str:
    headers, rows = formatted(df)
    right = {i for i, k in enumerate(shown_columns(df)) if k not in ("run", "model", "input")}
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """Raw numbers (not display strings) in every column, for spreadsheets and scripts."""
    buf = io.StringIO()
    df[list(COLUMNS) + ["epochs_planned", "path"]].to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def to_html(df: pd.DataFrame) -> str:
    """A standalone HTML page holding the table (inline CSS, no network)."""
    headers, rows = formatted(df)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    css = (
        "body{font:14px system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:32px;color:#111827;background:#f5f6fa}"
        "table{border-collapse:collapse;background:#fff;border:1px solid #e5e7eb;border-radius:10px;font-variant-numeric:tabular-nums}"
        "th,td{padding:8px 12px;border-bottom:1px solid #e5e7eb;text-align:right;white-space:nowrap}"
        "th{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:#6b7280;background:#fafafa}"
        "td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}tr:hover td{background:#f9fafb}"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vislab compare</title><style>{css}</style></head>'
        f"<body><h1>Run comparison</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )


def rich_table(df: pd.DataFrame) -> Any:
    """A rich Table for the terminal (short headers; print it at its natural width)."""
    from rich.table import Table

    _, rows = formatted(df)
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for k in shown_columns(df):
        t.add_column(SHORT.get(k, COLUMNS[k]), justify="left" if k in ("run", "model", "input") else "right", no_wrap=True)
    for r in rows:
        t.add_row(*r)
    return t


def render(df: pd.DataFrame, fmt: str) -> str:
    """The table as text in one of md | csv | html (the terminal table is `rich_table`)."""
    writers = {"md": to_markdown, "csv": to_csv, "html": to_html}
    if fmt not in writers:
        raise VislabError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    return writers[fmt](df)
