"""Read what a run directory holds, for the report and comparison layers.

Reads the files of the run-directory contract without building a model. Every file but the
run itself is optional: a run stopped early, or never evaluated, still gets a report that
says what is missing instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from vislab.errors import VislabError
from vislab.runs import (
    EVAL_METRICS,
    EVAL_PREDICTIONS,
    EVAL_PROBS,
    LAST_CKPT,
    current_checksum,
    keeps_last_epoch,
    resolve_run_dir,
    run_paths,
)


@dataclass
class EvalSet:
    """One `eval/<name>/` folder: metrics, per-image predictions and probabilities."""

    name: str
    metrics: dict[str, Any]
    predictions: pd.DataFrame | None = None
    probs: np.ndarray | None = None

    def max_pixels(self) -> int:
        """The pixel limit its images decode under in the report's pictures: the evaluated
        dataset's curate --max-pixels (metrics.json's max_pixels)."""
        from vislab.data.manifest import recorded_max_pixels

        return recorded_max_pixels(self.metrics)


@dataclass
class RunData:
    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    health: list[dict[str, Any]] = field(default_factory=list)
    history: pd.DataFrame | None = None
    evals: dict[str, EvalSet] = field(default_factory=dict)
    config_text: str = ""

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def task(self) -> str:
        """The run's task (config.yaml's `task`; runs made before tasks were plug-ins are classify)."""
        from vislab.tasks.registry import DEFAULT_TASK

        return str(self.config.get("task") or DEFAULT_TASK)

    @property
    def is_abn(self) -> bool:
        """The run's model has an attention branch (model.attention: abn)."""
        return (self.config.get("model") or {}).get("attention") == "abn"

    @property
    def model_label(self) -> str:
        """The model's name as reports and comparisons show it; `+ABN` marks an attention branch."""
        name = self.summary.get("model") or (self.config.get("model") or {}).get("name") or ""
        return f"{name}+ABN" if name and self.is_abn else name

    @property
    def kept(self) -> str:
        """How the report names the epoch best.ckpt holds: 'last' under train.monitor: epoch
        (no metric picked it), else 'best'."""
        return "last" if keeps_last_epoch(self.summary) else "best"

    @property
    def classes(self) -> list[str]:
        ev = self.primary_eval() or next(iter(self.evals.values()), None)
        return list(self.info.get("classes") or (ev.metrics.get("classes", []) if ev else []))

    def primary_eval(self, split: str | None = None) -> EvalSet | None:
        """The named eval set, else 'test', else the first plain one (no variant such as an
        aberration stress test: its numbers are not the split's), else None."""
        if split is not None:
            if split not in self.evals:
                raise VislabError(self.not_evaluated(split))
            return self.evals[split]
        if "test" in self.evals:
            return self.evals["test"]
        return next((ev for ev in self.evals.values() if not ev.metrics.get("variant")), None)

    def not_evaluated(self, split: str) -> str:
        """Why the run has no figures for `split`: the eval sets it has and how to add this one
        (`vislab report --split` and `vislab compare --split` say it alike)."""
        have = ", ".join(self.evals) or "none"
        return f"{self.run_dir}/eval/{split}: not evaluated (have: {have}); run `vislab evaluate {self.run_dir} --split {split}`"

    def stale_eval(self, ev: EvalSet | None) -> str | None:
        """Why `ev`'s numbers are not those of the run's checkpoint now (None when they are, or
        when it cannot be told: evaluations written before checkpoints were recorded).

        An evaluation made while the run trained scored an early best.ckpt; shown without
        this note, its numbers pass for the finished run's."""
        if ev is None:
            return None
        scored = ev.metrics.get("checkpoint_sha256")
        which = LAST_CKPT if Path(str(ev.metrics.get("checkpoint") or "")).name == LAST_CKPT else "best.ckpt"
        ckpt = run_paths(self.run_dir).last if which == LAST_CKPT else run_paths(self.run_dir).best
        now = current_checksum(ckpt)
        if not scored or now is None or now == scored:
            return None
        then = ev.metrics.get("checkpoint_epoch")
        best = self.summary.get("best_epoch") if which == "best.ckpt" else None
        then_text = f"epoch {then}" if isinstance(then, int) and not isinstance(then, bool) else ""
        now_text = f"{which} is now epoch {best + 1}" if isinstance(best, int) and not isinstance(best, bool) else f"{which} has changed since"
        detail = "; ".join(p for p in (then_text, now_text) if p)
        return f"eval/{ev.name} evaluated an older checkpoint ({detail}): re-run vislab evaluate {self.run_dir}"


def _json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VislabError(f"{path}: not valid JSON ({err}); was the run interrupted while writing it?") from None


def _mapping(path: Path) -> dict[str, Any]:
    """run.json / summary.json: an object (a hand-edited '[]' there is a one-line error)."""
    value = _json(path, {})
    if not isinstance(value, dict):
        raise VislabError(f"{path}: holds {type(value).__name__}, not a JSON object; restore the file `vislab train` wrote")
    return value


def read_history(path: Path) -> pd.DataFrame | None:
    """metrics.csv as one row per epoch (rows a logger split per step are merged per epoch)."""
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    if df.empty:
        return None
    if "epoch" in df.columns:
        df = df.dropna(subset=["epoch"]).groupby("epoch", as_index=False).last()
    else:
        df.insert(0, "epoch", range(len(df)))
    return df


def read_eval(folder: Path) -> EvalSet:
    metrics = _json(folder / EVAL_METRICS, {})
    preds = None
    if (folder / EVAL_PREDICTIONS).is_file():
        preds = pd.read_csv(folder / EVAL_PREDICTIONS, keep_default_na=False, dtype={"path": str, "label": str, "pred": str})
    probs = np.load(folder / EVAL_PROBS) if (folder / EVAL_PROBS).is_file() else None
    return EvalSet(folder.name, metrics, preds, probs)


def read_run(run_dir: str | Path) -> RunData:
    """Everything a report needs from a run directory (fails only if it is not a run)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise VislabError(f"{run}: no such run directory; pass the folder `vislab train` wrote")
    if not run_paths(run).run_json.is_file() and not run_paths(run).config.is_file():
        resolve_run_dir(run)  # says what the folder holds instead, when it knows
        raise VislabError(f"{run}: not a run directory (no run.json or config.yaml); pass the folder `vislab train` wrote")
    paths = run_paths(run)
    data = RunData(run_dir=run)
    cfg_path = paths.config
    if cfg_path.is_file():
        data.config_text = cfg_path.read_text()
        try:
            data.config = yaml.safe_load(data.config_text) or {}
        except yaml.YAMLError:
            data.config = {}
    data.info = _mapping(paths.run_json)
    data.summary = _mapping(paths.summary)
    health = _json(paths.health, [])
    data.health = health if isinstance(health, list) else []
    data.history = read_history(paths.metrics)
    ev = paths.eval
    if ev.is_dir():
        for folder in sorted(p for p in ev.iterdir() if p.is_dir()):
            if (folder / EVAL_METRICS).is_file():
                data.evals[folder.name] = read_eval(folder)
    return data
