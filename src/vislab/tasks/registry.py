"""Tasks are plug-ins: the `Task` interface, and the registry `task:` in the config selects from.

A task (classify, detect, ...) is one `Task` object registered under its name. It names
everything task-specific that the generic commands need: its config section, the model
builders it accepts, how a run is built (LightningModule, datamodule), the metric columns
and the default monitor, health checks, the evaluation writer, predict's output, report
sections, KPI cards and compare columns. The generic commands (train, evaluate, predict,
export, report, compare) call these hooks and never ask which task they run.

Built-in tasks are imported on first use from the module `BUILTIN_TASKS` names (the task
map); any other code registers a task with `register_task` (a test's toy task, a plug-in
package). A plug-in module must be cheap to import (no torch or Lightning at module level:
`vislab compare` and config validation import it), so its hooks import their heavy parts
inside. This module imports nothing of vislab but errors, so config.py can validate
`task:` against it.

Adding a task (say `detect`), with no edit to the generic commands:
1. its library pieces: a model builder registered with `task="detect"` (models/), a
   datamodule (data/; batches are (images, targets, ...) tuples, and it implements
   `steps_per_epoch(world_size, accumulate, limit)` and, for evaluate and predict, a way
   to point `predict_dataloader` at image files), metrics (metrics/), report sections
   (report/detect.py, drawn with report/page.py);
2. its LightningModule, a `tasks.base.BaseTask` subclass: loss, `training_step`,
   `validation_step` (logging the `metric_columns`), `predict_step`;
3. tasks/detect.py: a `Task` subclass whose hooks tie them together, an instance passed to
   `register_task`, its config Section (the `detect:` key) as `config_section`;
4. one line in BUILTIN_TASKS. tests/test_task_plugin.py is a complete small example.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from vislab.errors import VislabError

if TYPE_CHECKING:
    import lightning as L
    import pandas as pd
    import torch
    import torch.nn as nn

    from vislab.config import RunConfig, Section
    from vislab.health import HealthCheck
    from vislab.outfolder import OutFolder
    from vislab.report.page import Page
    from vislab.report.rundata import RunData
    from vislab.runs import LoadedRun

INPUT_NAME = "input"  # the one input of an exported model that takes an image batch (the default `export_inputs`)
DEFAULT_TASK = "classify"  # the task of a config (or an old run directory) that names none
BUILTIN_TASKS = {"classify": "vislab.tasks.classify", "crops": "vislab.tasks.crops", "detect": "vislab.tasks.detect"}  # name -> module that registers it


@dataclass(frozen=True)
class Column:
    """A result column of `vislab compare`: key (its `--sort` name), labels and how to show it."""

    key: str
    label: str  # header of md / csv / html output
    short: str  # header of the terminal table
    percent: bool = False  # a fraction, shown as a percentage
    higher_is_better: bool = False  # `--sort` without a sign puts the best first
    optional: bool = False  # shown only when some run has a value
    aliases: tuple[str, ...] = ()  # other `--sort` names


@dataclass(frozen=True)
class ReportSection:
    """One card of the HTML report: its stable id, its label in the navigation bar, its heading,
    its body (HTML, already escaped) and a lead sentence under the heading."""

    id: str
    nav: str
    title: str
    body: str
    lead: str = ""


@dataclass
class Evaluation:
    """What a task's evaluation of a set of images produced: the metrics (metrics.json), the
    options that shaped them (recorded after the run's own fields) and a writer of the other
    files of RUN_DIR/eval/<name>/ (predictions, probabilities)."""

    metrics: dict[str, Any]
    options: dict[str, Any]
    write: Callable[[Path], None]


class Task(ABC):
    """The plug-in interface: one subclass (and one registered instance) per task.

    Class attributes describe the task; methods are the hooks the generic commands call.
    Only `build`, `load_module`, `evaluate`, `predict` and `format_predictions` must be
    written; the rest have defaults that suit a task without the feature.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    # the config section it owns (YAML key = the task's name), a config.Section subclass
    config_section: ClassVar["type[Section] | None"] = None
    # the `task` metadata of the registered models it trains (timm models count as classify)
    model_tasks: ClassVar[tuple[str, ...]] = ()
    monitor: ClassVar[tuple[str, str]] = ("val/loss", "min")  # train.monitor / monitor_mode when the config leaves them unset
    metric_columns: ClassVar[tuple[str, ...]] = ("train/loss", "val/loss")  # metrics.csv's first columns after `epoch`
    # epoch metrics logged besides metric_columns (loss parts): with them, what a monitor may name
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    percent_metrics: ClassVar[frozenset[str]] = frozenset()  # metric keys that are fractions (shown as %)
    summary_metric: ClassVar[str | None] = None  # the best-epoch figure `vislab train` ends with
    # report curves besides loss and lr: (title, metric key suffix, "max"|"min" for the best-epoch mark)
    curve_panels: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    # a module with the task's `report_sections(data, page)` and `kpis(data, page)` (e.g.
    # "vislab.report.detect"), imported when a report is drawn; None: the generic cards only
    report_module: ClassVar[str | None] = None
    # the names of the exported model's outputs, in the order `export_module` returns them
    export_outputs: ClassVar[tuple[str, ...]] = ("output",)
    # the task's own options of `vislab evaluate` (keyword arguments of `evaluate`, e.g.
    # crops_per_image); the command refuses one the run's task does not name here
    evaluate_options: ClassVar[tuple[str, ...]] = ()
    # keys of the task's own section that every trial of a sweep must share (key -> why, one
    # clause), with any key under them: those that pick or make the validation samples
    sweep_fixed_keys: ClassVar[dict[str, str]] = {}
    # metrics.json keys every evaluation of the task writes: an eval set without them is not
    # of this task (the report and compare refuse it in one line)
    eval_marks: ClassVar[tuple[str, ...]] = ()
    # the metrics.json fields its report and compare columns read, as a TypedDict (total=False)
    # that report/rundata.py validates with pydantic, strict; None: not checked
    eval_fields: ClassVar[Any] = None
    # predict always writes files (pictures): without --out into RUN/predict/, a folder it owns
    # as it owns an --out (see vislab.outfolder)
    predicts_pictures: ClassVar[bool] = False

    # ---- training ------------------------------------------------------------------------
    def accepts_model(self, name: str) -> str | None:
        """Why this task cannot train the model `name` (None: it can)."""
        from vislab.models.factory import model_task

        kind = model_task(name)
        if kind in (self.model_tasks or (self.name,)):
            return None
        return f"model.name: '{name}' is a {kind} model; task {self.name} trains {' or '.join(self.model_tasks or (self.name,))} models (see `vislab models`)"

    def monitor_metrics(self, cfg: "RunConfig") -> tuple[str, ...]:
        """The epoch metrics train.monitor, early stopping and plateau may watch in a run of
        `cfg`: config load refuses any other name, which Lightning would reject only after the
        first epoch."""
        return self.metric_columns + self.extra_metrics

    def check_dataset(self, cfg: "RunConfig", data_dir: Path) -> None:
        """Raise a VislabError when `data_dir` cannot train this task whatever values a sweep
        tries (too few classes, an empty train or val split), from its manifest alone, and a
        `SettingError` naming the keys when `cfg` holds a value the task or these images cannot
        train with (the checks `build` makes before it trains): a sweep calls it once before its
        first trial instead of failing each trial alike. The default checks nothing."""

    @abstractmethod
    def build(
        self, cfg: "RunConfig", data_dir: Path, sanity: bool = False, *, load_weights: bool = True
    ) -> tuple["L.LightningModule", "L.LightningDataModule", dict[str, Any]]:
        """The LightningModule (a `tasks.base.BaseTask`), its datamodule and the facts of the data
        for run.json and the console: at least `split_sizes` {train, val, test} and `val_source`.
        `sanity` asks for the datamodule of the one-batch overfitting check. The model is
        `create_model(cfg, classes, load_weights=load_weights)`: a resumed run passes False, as
        its checkpoint holds every weight and `model.weights` may have moved since."""

    def model_outputs(self, cfg: "RunConfig", classes: Sequence[str]) -> int:
        """The `num_classes` the factory builds the task's model with from run.json's classes
        (how `vislab.runs.load_run` rebuilds a trained model; build it so in `build` too)."""
        return len(classes)

    def create_model(self, cfg: "RunConfig", classes: Sequence[str], *, load_weights: bool = True) -> "nn.Module":
        """The task's model for `classes` as the run builds it, and as `vislab.runs.load_run`
        rebuilds it (`load_weights=False`: the checkpoint holds every weight). The default is
        the factory's model of `cfg.model` with `model_outputs` outputs; a task whose own
        section shapes the model (detection: input size, anchors, Darknet weights) overrides it."""
        from vislab.models.factory import create_model

        return create_model(cfg.model, self.model_outputs(cfg, classes), load_weights=load_weights)

    def health_checks(self, cfg: "RunConfig") -> list["HealthCheck"]:
        """Checks run after each validation, beside the generic ones (non-finite loss, unreadable images)."""
        return []

    def format_metric(self, key: str, value: Any) -> str:
        """A metric for the console: fractions as percentages, others with 4 decimals; '-' when missing."""
        if value is None or value != value:
            return "-"
        return f"{value:.1%}" if key in self.percent_metrics else f"{value:.4f}"

    # ---- after training ------------------------------------------------------------------
    @abstractmethod
    def load_module(self, run: "LoadedRun") -> "L.LightningModule":
        """The run's LightningModule around its already loaded model, for evaluate and predict."""

    @abstractmethod
    def evaluate(
        self, run: "LoadedRun", rows: "pd.DataFrame", dataset_dir: Path, *, precision: str, description: str | None, **options: Any
    ) -> Evaluation:
        """Run the model on the usable manifest rows of a split of `dataset_dir` (through its
        `predict_step`, e.g. with `tasks.base.predict_batches` at `precision`, showing
        `description` as progress) and score it. `options` are the command's (tta,
        batch_size, ...) and those of `evaluate_options` the user gave. Generic fields (split, name, dataset, checkpoint, precision) are
        added by `vislab.evaluate`."""

    def evaluate_variant(self, run: "LoadedRun", **options: Any) -> str:
        """What makes the images of an evaluation with these `evaluate_options` other than
        the split's own (e.g. an aberration stress test, 'aberration-vignette0.5'), or ''. It
        is added to the eval folder's name, so such an evaluation never replaces the plain one
        that report and compare read; known before the evaluation runs, so the folder is
        locked (one evaluate at a time) before the model is."""
        return ""

    def evaluation_line(self, metrics: dict[str, Any]) -> str:
        """The line `vislab evaluate` prints."""
        return f"{metrics.get('name')}: evaluated {metrics.get('num_samples', '?')} images"

    def evaluation_notes(self, metrics: dict[str, Any]) -> list[str]:
        """Lines `vislab evaluate` prints after its line (and the report shows under its
        title): what the figures leave out, and why. Every task: samples whose model outputs
        were NaN or infinite (`nonfinite_predictions`), the sign of a diverged model."""
        bad = metrics.get("nonfinite_predictions") or 0
        if not bad:
            return []
        return [f"note: {bad} of {metrics.get('num_samples')} samples gave non-finite (NaN or infinite) model outputs; "
                "the model likely diverged"]

    @abstractmethod
    def predict(self, run: "LoadedRun", files: Sequence[Path], **options: Any) -> list[dict[str, Any]]:
        """One dict per image file, in order: its results, or `error` for a file that cannot be read."""

    def write_prediction_files(
        self, run: "LoadedRun", results: list[dict[str, Any]], sources: Sequence[str], out: "OutFolder | None"
    ) -> None:
        """The task's own files of `predict`'s results beside predictions.json/.csv in `out`
        (detection: drawn images, YOLO labels), each path from `out.file`; `sources[i]` is
        the file results[i] was read from (its `path` may be a display name such as
        "<image 0>"); rows with `error` have none. Fields added to a row (a drawn file's
        path) are in the files predict writes after. Nothing by default."""

    @abstractmethod
    def format_predictions(self, results: list[dict[str, Any]], fmt: str) -> str:
        """`predict`'s results as the CLI prints them (table, json, csv)."""

    def export_module(self, model: "nn.Module") -> "nn.Module":
        """The module ONNX export writes: it takes `export_inputs` (positionally, in order) and
        returns the `export_outputs` a consumer needs, as one tensor or a tuple of tensors."""
        raise VislabError(f"export: task {self.name} has no export")

    def export_metadata(self, run: "LoadedRun") -> dict[str, Any]:
        """Entries (JSON-encoded by export) that tell a user of the file how to prepare its
        inputs and read its outputs without vislab (see export_info.py); {}: nothing to add."""
        return {}

    def export_inputs(self, cfg: "RunConfig | None", input_size: Sequence[int], batch: int, generator: "torch.Generator") -> dict[str, "torch.Tensor"]:
        """Example inputs of the exported model by name, batch first: the export traces them and
        its check runs them through both engines. The default is one float image batch
        (`INPUT_NAME`) of the run's input size; a task with other inputs reads its section of `cfg`."""
        import torch

        return {INPUT_NAME: torch.randn(batch, *[int(v) for v in input_size], generator=generator)}

    # ---- report and compare (read the run directory only; no model) -------------------------
    def report_sections(self, data: "RunData", page: "Page") -> list[ReportSection]:
        """The report's cards in order; `page` renders the generic ones (health, curves, data,
        config) and holds the eval set the page details (`page.ev`) and the options."""
        if self.report_module:
            return importlib.import_module(self.report_module).report_sections(data, page)
        return [page.health(), page.curves(), page.dataset(), page.config()]

    def kpis(self, data: "RunData", page: "Page") -> list[tuple[str, str, str]]:
        """The headline cards of the report: (label, value, small print)."""
        if self.report_module:
            return importlib.import_module(self.report_module).kpis(data, page)
        return [page.training_time()]

    def compare_columns(self) -> list[Column]:
        """The result columns this task adds to `vislab compare`, in order."""
        return []

    def compare_values(self, data: "RunData", split: str) -> dict[str, Any]:
        """A run's raw values for `compare_columns` (missing ones may be left out)."""
        return {}

    def scored_set(self, metrics: dict[str, Any]) -> tuple[int | None, list[str] | None]:
        """How many labelled images an evaluation's figures count and which classes they
        cover (None where not known): `vislab compare` warns when the runs it ranks side by
        side were scored on sets that differ in these."""
        n, classes = metrics.get("num_samples"), metrics.get("classes")
        return (n if isinstance(n, int) else None), (list(classes) if isinstance(classes, list) else None)


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Register a task instance under `task.name`; a second registration of a name is a bug."""
    if task.name in _TASKS:
        raise ValueError(f"task '{task.name}' is registered twice")
    _TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Forget a registered task (a test's own, when the test is done); a built-in one is
    imported again on next use only in a new process."""
    _TASKS.pop(name, None)


def task_names() -> list[str]:
    """Every task name `task:` may hold: the built-in ones and those registered since."""
    return sorted(set(BUILTIN_TASKS) | set(_TASKS))


def get_task(name: str | None) -> Task:
    """The task registered as `name` (None: the default), importing a built-in one on first use."""
    name = name or DEFAULT_TASK
    if name not in _TASKS and name in BUILTIN_TASKS:
        importlib.import_module(BUILTIN_TASKS[name])
    if name not in _TASKS:
        raise VislabError(f"task: unknown task '{name}'; choose one of {', '.join(task_names())}")
    return _TASKS[name]


def section_tasks() -> dict[str, Task]:
    """The tasks that own a config section, by section key (imports the built-in ones)."""
    return {n: t for n in task_names() if (t := get_task(n)).config_section is not None}
