"""Read what a run directory holds, for the report and comparison layers.

Reads the files of the run-directory contract without building a model. Every file but the
run itself is optional: a run stopped early, or never evaluated, still gets a report that
says what is missing instead of failing.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

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
    """One `eval/<name>/` folder: metrics, and per-image predictions and probabilities read
    when first used (`vislab compare` never reads them, so a damaged one does not stop it)."""

    name: str
    metrics: dict[str, Any]
    folder: Path | None = None

    @cached_property
    def predictions(self) -> pd.DataFrame | None:
        return read_predictions(self.folder / EVAL_PREDICTIONS) if self.folder is not None else None

    @cached_property
    def probs(self) -> np.ndarray | None:
        return read_probs(self.folder / EVAL_PROBS) if self.folder is not None else None

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


# ---- the shapes of the files read here ----------------------------------------------------
# Each file a report or comparison reads is validated (pydantic, strict: a number is never
# text, a count never true/false) against the fields read from it; fields not named are not
# checked, containers inside may be null. A damaged or foreign file is then one line naming it
# and the field instead of a traceback later.
class DataSpecJson(TypedDict, total=False):
    input_size: list[int] | None


class RunJson(TypedDict, total=False):
    classes: list[str] | None
    data_spec: DataSpecJson | None
    dataset_dir: str | None
    manifest_hash: str | None
    created: str | None
    val_source: str | None
    command: list[Any] | None
    max_pixels: int | None


class ParamsJson(TypedDict, total=False):
    trainable: int | None
    frozen: int | None
    total: int | None


class SummaryJson(TypedDict, total=False):
    model: str | None
    input_size: list[int] | None
    best_epoch: int | None
    best_val: dict[str, float | None] | None
    monitor: str | None
    epochs_completed: int | None
    epochs_planned: int | None
    stopped_reason: str | None
    train_images_per_s: float | None
    wall_time_s: float | None
    params: ParamsJson | None


class HealthEntry(TypedDict, total=False):
    epoch: float | None
    step: float | None


class ModelYaml(TypedDict, total=False):
    name: str | None
    attention: str | None


class ConfigYaml(TypedDict, total=False):
    task: str | None
    model: ModelYaml | None


class EvalJson(TypedDict, total=False):
    name: str | None
    split: str | None
    variant: str | None
    classes: list[str] | None
    dataset_dir: str | None
    manifest_hash: str | None
    checkpoint: str | None
    checkpoint_epoch: int | None
    checkpoint_sha256: str | None
    max_pixels: int | None


RUN_JSON = TypeAdapter(RunJson)
SUMMARY = TypeAdapter(SummaryJson)
HEALTH = TypeAdapter(list[HealthEntry])
CONFIG = TypeAdapter(ConfigYaml)
EVAL_JSON = TypeAdapter(EvalJson)
TRAIN_FIX = "restore the file `vislab train` wrote"
EVAL_FIX = "restore the file `vislab evaluate` wrote, or evaluate the run again"
_EXPECTED = {"dict_type": "an object", "list_type": "a list", "int_type": "a whole number", "float_type": "a number", "string_type": "text"}
_KINDS = {bool: "true/false", int: "a whole number", float: "a number", str: "text", type(None): "null", dict: "an object", list: "a list"}


@lru_cache(maxsize=None)
def _adapter(shape: Any) -> TypeAdapter:
    return TypeAdapter(shape)


def check_shape(path: Path, value: Any, shape: TypeAdapter, fix: str) -> Any:
    """`value` (read from `path`) as it is when it has `shape`, else one line naming the file,
    the first field that departs ("params.total is text 'many', not a valid integer") and `fix`."""
    try:
        shape.validate_python(value, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        given = first["input"]
        kind = _KINDS.get(type(given), type(given).__name__)
        shown = f" {given!r}"[:42] if isinstance(given, (str, int, float)) and not isinstance(given, bool) else ""
        what = f"{where} is {kind}{shown}" if where else f"holds {kind}"
        expected = _EXPECTED.get(first["type"]) or first["msg"].removeprefix("Input should be ").rstrip(".")
        raise VislabError(f"{path}: {what}, not {expected}; {fix}") from None
    return value


def _text(path: Path, fix: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise VislabError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); {fix}") from None
    except OSError as err:
        raise VislabError(f"{path}: cannot read ({err.strerror or err}); {fix}") from None


def _json(path: Path, shape: TypeAdapter, fix: str, empty: Any = None) -> Any:
    """A JSON file of the run checked against `shape`; a missing one is `empty` ({} unless given)."""
    if empty is None:
        empty = {}
    if not path.is_file():
        return empty
    try:
        value = json.loads(_text(path, fix))
    except json.JSONDecodeError as err:
        raise VislabError(f"{path}: not valid JSON ({err}); was the run interrupted while writing it? {fix}") from None
    return check_shape(path, value, shape, fix)


def _yaml(path: Path, shape: TypeAdapter, fix: str) -> tuple[str, dict[str, Any]]:
    """A YAML file's text and its mapping, checked against `shape`."""
    text = _text(path, fix)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise VislabError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', None) or type(err).__name__}); {fix}") from None
    return text, check_shape(path, {} if value is None else value, shape, fix)


def _csv(path: Path, fix: str, **options: Any) -> pd.DataFrame:
    """An eval set's CSV file as a table; an empty file, a row with fewer fields than the
    header (a file cut short) or text that is not CSV is one line."""
    text = _text(path, fix)
    if not text.strip():
        raise VislabError(f"{path}: empty (not even a header); {fix}")
    try:
        rows = csv.reader(io.StringIO(text))
        width = len(next(rows))
        short = next(((n, len(r)) for n, r in enumerate(rows, 2) if r and len(r) < width), None)
        if short:
            raise VislabError(f"{path}: line {short[0]} has {short[1]} of the header's {width} fields (the file is cut short?); {fix}")
        return pd.read_csv(io.StringIO(text), **options)
    except (csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise VislabError(f"{path}: not a readable CSV table ({str(err).splitlines()[0]}); {fix}") from None


def read_history(path: Path) -> pd.DataFrame | None:
    """metrics.csv as one row per epoch (rows a logger split per step are merged per epoch)."""
    if not path.is_file():
        return None
    try:  # cut short or empty (a run stopped while writing it): the report says it has no curves
        df = pd.read_csv(io.StringIO(_text(path, TRAIN_FIX)))
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    if df.empty:
        return None
    if "epoch" in df.columns:
        df = df.dropna(subset=["epoch"]).groupby("epoch", as_index=False).last()
    else:
        df.insert(0, "epoch", range(len(df)))
    return df


def read_predictions(path: Path) -> pd.DataFrame | None:
    """An eval set's predictions.csv, every value as text."""
    if not path.is_file():
        return None
    return _csv(path, EVAL_FIX, keep_default_na=False, dtype=str)


def read_probs(path: Path) -> np.ndarray | None:
    """An eval set's probs.npy (a plain array: pickled objects are refused)."""
    if not path.is_file():
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        reason = "empty" if isinstance(err, EOFError) else str(err).split(". ")[0]
        raise VislabError(f"{path}: not a NumPy array file ({reason}); {EVAL_FIX}") from None


def read_eval(folder: Path) -> EvalSet:
    """An eval set's metrics.json now; predictions.csv and probs.npy when first used."""
    return EvalSet(folder.name, _json(folder / EVAL_METRICS, EVAL_JSON, EVAL_FIX), folder)


def _check_task(data: RunData) -> None:
    """Refuse eval sets whose metrics.json is not of the run's task (config.yaml's `task`
    edited, or a folder of another run's files), and check the fields the task reads."""
    from vislab.tasks import get_task

    task = get_task(data.task)
    for ev in data.evals.values():
        path = data.run_dir / "eval" / ev.name / EVAL_METRICS if ev.folder is None else ev.folder / EVAL_METRICS
        missing = [k for k in task.eval_marks if k not in ev.metrics]
        if missing:
            raise VislabError(
                f"{path}: has no {', '.join(missing)}, which every {task.name} evaluation writes: the run's files are not "
                f"of the task config.yaml names (task: {task.name}); restore config.yaml's task, or evaluate the run again"
            )
        if task.eval_fields is not None:
            check_shape(path, ev.metrics, _adapter(task.eval_fields), EVAL_FIX)


def read_run(run_dir: str | Path) -> RunData:
    """Everything a report needs from a run directory (fails only if it is not a run, or
    with one line when one of its files is damaged)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise VislabError(f"{run}: no such run directory; pass the folder `vislab train` wrote")
    if not run_paths(run).run_json.is_file() and not run_paths(run).config.is_file():
        resolve_run_dir(run)  # says what the folder holds instead, when it knows
        raise VislabError(f"{run}: not a run directory (no run.json or config.yaml); pass the folder `vislab train` wrote")
    paths = run_paths(run)
    data = RunData(run_dir=run)
    if paths.config.is_file():
        data.config_text, data.config = _yaml(paths.config, CONFIG, TRAIN_FIX)
    data.info = _json(paths.run_json, RUN_JSON, TRAIN_FIX)
    data.summary = _json(paths.summary, SUMMARY, TRAIN_FIX)
    data.health = _json(paths.health, HEALTH, TRAIN_FIX, empty=[])
    data.history = read_history(paths.metrics)
    ev = paths.eval
    if ev.is_dir():
        for folder in sorted(p for p in ev.iterdir() if p.is_dir()):
            if (folder / EVAL_METRICS).is_file():
                data.evals[folder.name] = read_eval(folder)
    _check_task(data)
    return data
