"""What a sweep leaves besides its run directories: results.csv, best.yaml and sweep.html.

Everything is read from the study (not from the run directories), so any worker, on any
machine, writes the same files, including for trials trained elsewhere. The page is one
self-contained file in the style of the run report: Optuna's matplotlib figures (history,
parameter importances, slices, learning curves) embedded as base64 PNGs, and the results.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd
from optuna.trial import TrialState

from vislab.config import dump_config
from vislab.fsguard import inside
from vislab.runs import atomic_write_text, run_paths
from vislab.sweep.space import trial_config
from vislab.usertext import sheet_table

if TYPE_CHECKING:
    import optuna

    from vislab.sweep.study import Setup

RESULTS_CSV = "results.csv"
BEST_YAML = "best.yaml"
SWEEP_HTML = "sweep.html"
PLOTS_DIR = "plots"
_ORDER = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "fail": 4}


def results_table(study: "optuna.Study", setup: "Setup") -> pd.DataFrame:
    """One row per trial (lost races left out), best first: complete by value, then pruned,
    running, queued and failed trials by number."""
    from vislab.sweep.study import retry_of

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("skipped")]
    retried_by = {retry_of(t): t.number for t in trials if retry_of(t) is not None}
    rows = []
    for t in trials:
        a = t.user_attrs
        note = a.get("note")
        if note is None and t.state == TrialState.FAIL and t.number in retried_by:
            note = f"stopped (no heartbeat or interrupted); retried as trial {retried_by[t.number]}"
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower(), "value": t.value if t.state == TrialState.COMPLETE else None}
        for p in setup.params:
            row[p.key] = t.params.get(p.key)
        row.update(
            {
                "epochs": a.get("epochs"),
                "stopped": a.get("stopped"),
                "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
                "run_dir": a.get("run_dir"),
                "retry_of": retry_of(t),
                "model_params": a.get("model_params"),
                "host": a.get("host"),
                "note": note,
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for col in ("epochs", "retry_of", "model_params"):  # whole numbers, empty where unknown
        table[col] = table[col].astype("Int64")
    table["_rank"] = table["state"].map(_ORDER).fillna(5)
    table["_key"] = table["value"].astype(float) * (-1 if setup.direction == "maximize" else 1)
    table = table.sort_values(["_rank", "_key", "trial"], na_position="last", kind="stable")
    return table.drop(columns=["_rank", "_key"]).reset_index(drop=True)


def best_trial(study: "optuna.Study") -> "optuna.trial.FrozenTrial | None":
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return study.best_trial if complete else None


def best_config_text(study: "optuna.Study", setup: "Setup") -> str | None:
    """best.yaml's text: the full config of the best completed trial, ready for `vislab train`."""
    t = best_trial(study)
    if t is None:
        return None
    values = {p.key: p.decode(t.params[p.key]) for p in setup.params if p.key in t.params}
    cfg = trial_config(setup.base, values, f"trial {t.number}")
    head = (
        f"# Best trial of sweep '{study.study_name}': trial {t.number} ({t.user_attrs.get('run_dir')}), "
        f"{setup.monitor} = {t.value:.6g}\n# " + " ".join(f"{k}={v}" for k, v in values.items()) + "\n"
    )
    return head + dump_config(cfg)


def write_results(study: "optuna.Study", setup: "Setup", out: Path, html: bool = True) -> tuple[pd.DataFrame, Path | None, Path | None]:
    """results.csv and best.yaml (when a trial completed); sweep.html too when asked. The
    CSV is for spreadsheets: text that one would run as a formula (a swept choice or a
    failure note starting with =) is neutralised (`sheet_table`); the returned table is exact."""
    table = results_table(study, setup)
    atomic_write_text(inside(out, RESULTS_CSV), sheet_table(table).to_csv(index=False, lineterminator="\n"))
    best_text = best_config_text(study, setup)
    best = None
    if best_text is not None:
        best = inside(out, BEST_YAML)
        atomic_write_text(best, best_text)
    page = write_page(study, setup, out, table, best_text) if html else None
    return table, best, page


def _figure(draw: Callable[..., Any], path: Path, width: float = 7.0, xlabel: str | None = None, **kwargs: Any) -> Path:
    """Draw one of Optuna's matplotlib figures into a PNG without touching global styles."""
    import matplotlib
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter

    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = draw(**kwargs)
        axes = list(ax.flat) if hasattr(ax, "flat") else [ax]
        fig = axes[0].figure
        for a in axes:
            if a.get_xscale() == "log":  # matplotlib's minor labels of a short log range overprint each other
                a.xaxis.set_minor_formatter(NullFormatter())
                low, high = a.get_xlim()
                if high < 10 * low:  # no decade to label: a few plain numbers instead
                    a.xaxis.set_major_locator(MaxNLocator(nbins=4))
                    a.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            if xlabel:
                a.set_xlabel(xlabel)
        fig.set_size_inches(width, 4.2)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return path


def _figures(study: "optuna.Study", setup: "Setup", out: Path) -> dict[str, tuple[Path | None, str]]:
    """Each figure's PNG, or None and why it is missing."""
    from optuna.visualization import matplotlib as ovm

    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots = inside(out, PLOTS_DIR)
    name = setup.monitor
    figs: dict[str, tuple[Path | None, str]] = {}
    if n_complete == 0:
        none = (None, "No trial has completed yet.")
        return {k: none for k in ("history", "importance", "slice", "curves")}
    figs["history"] = (_figure(ovm.plot_optimization_history, plots / "history.png", study=study, target_name=name), "")
    if n_complete < 2:
        figs["importance"] = (None, "Parameter importances need at least two completed trials.")
    else:
        try:
            figs["importance"] = (_figure(ovm.plot_param_importances, plots / "importance.png", study=study, target_name=name), "")
        except (ValueError, RuntimeError) as err:
            figs["importance"] = (None, f"Parameter importances could not be computed: {str(err).splitlines()[0]}")
    figs["slice"] = (_figure(ovm.plot_slice, plots / "slice.png", width=max(7.0, 3.4 * len(setup.params)), study=study, target_name=name), "")
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    figs["curves"] = (
        (_figure(ovm.plot_intermediate_values, plots / "curves.png", xlabel="epoch (from 0)", study=study), "") if reported else (None, "No trial reported a validation epoch.")
    )
    return figs


def write_page(study: "optuna.Study", setup: "Setup", out: Path, table: pd.DataFrame, best_text: str | None) -> Path:
    """SWEEP/sweep.html: results, best config and Optuna's figures, on one page."""
    from vislab import __version__
    from vislab.report.page import CSS, duration, e, img_tag, note, section
    from vislab.report.page import table as html_table

    figs = _figures(study, setup, out)
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    best = best_trial(study)
    kpis = [
        (f"best {setup.monitor}", f"{best.value:.4f}" if best else "—", f"trial {best.number}" if best else "no trial completed"),
        ("trials", f"{counts.get('complete', 0) + counts.get('pruned', 0)} / {setup.trials}", "completed + pruned / wanted"),
        ("pruned", str(counts.get("pruned", 0)), "stopped early by the pruner"),
        ("failed", str(counts.get("fail", 0)), f"{counts.get('running', 0)} running, {counts.get('waiting', 0)} queued"),
        ("training time", duration(float(table["duration_s"].sum()) if len(table) else 0.0), "sum over trials"),
    ]
    kpi_html = '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="kpi-label">{e(a)}</div><div class="kpi-value">{e(b)}</div><div class="kpi-sub">{e(c)}</div></div>'
        for a, b, c in kpis
    ) + "</div>"
    body = []
    if best_text is not None:
        body.append(section("best", "Best configuration", f"<pre>{e(best_text)}</pre>", f"Saved as {BEST_YAML}: train it with `vislab train {BEST_YAML} --data DATASET --out RUN`."))
    else:
        body.append(section("best", "Best configuration", note("No trial has completed yet.")))
    body.append(section("results", "Trials", _results_html(table, out, html_table, e), f"Saved as {RESULTS_CSV}; best first. Each run directory works with vislab report, compare and export."))
    titles = {
        "history": ("Optimization history", "The value of every completed trial and the best so far."),
        "importance": ("Parameter importances", "How much each swept key explains the value (fANOVA over the completed trials)."),
        "slice": ("Slices", "The value against each swept key."),
        "curves": ("Learning curves", f"{setup.monitor} per epoch of every trial, as the pruner saw it."),
    }
    for key, (title, lead) in titles.items():
        png, why = figs[key]
        body.append(section(key, title, img_tag(png, title) if png else note(why), lead if png else ""))
    nav = "".join(f'<a href="#{sid}">{e(label)}</a>' for sid, label in [("best", "Best"), ("results", "Trials")] + [(k, v[0]) for k, v in titles.items()])
    subtitle = f"{setup.sampler} sampler · {setup.monitor} ({setup.direction}) · {len(setup.params)} swept key(s): {', '.join(p.key for p in setup.params)}"
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(study.study_name)} · vislab sweep</title><style>{CSS}</style></head><body>"
        f'<header class="hero"><div class="wrap"><div class="eyebrow">vislab sweep report</div><h1>{e(study.study_name)}</h1>'
        f'<p class="sub">{e(subtitle)}</p>{kpi_html}</div></header>'
        f'<nav class="toc"><div class="wrap">{nav}</div></nav>'
        f'<main class="wrap">{"".join(body)}</main>'
        f"<footer>{e(str(out))} · written by vislab {e(__version__)} on {e(now)}</footer></body></html>\n"
    )
    path = inside(out, SWEEP_HTML)
    atomic_write_text(path, page)
    return path


def _results_html(table: pd.DataFrame, out: Path, html_table: Callable[..., str], e: Callable[[Any], str]) -> str:
    if table.empty:
        return '<p class="note">No trials yet.</p>'
    cols = [c for c in table.columns if c not in ("host", "model_params")]
    rows = []
    for _, r in table.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            text = "" if v is None or (isinstance(v, float) and v != v) else (f"{v:.4g}" if isinstance(v, float) else str(v))
            if c == "run_dir" and text and (out / text).is_dir():
                report = run_paths(out / text).report
                target = f"{text}/{report.name}" if report.is_file() else f"{text}/"
                cells.append(f'<a href="{e(target)}">{e(text)}</a>')
            else:
                cells.append(e(text))
        rows.append(cells)
    return f'<div class="scroll">{html_table(cols, rows, "compact")}</div>'
