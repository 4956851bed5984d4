"""Tasks are plug-ins: a second task, defined only here, runs through the generic commands.

`brightness` regresses each image's mean brightness (one number per image), which shares
nothing with classification but the images: its own config section, datamodule,
LightningModule (MSE loss, MAE metric, monitor val/mae min), health check, evaluation
writer, predict output, report section and KPI, and compare column. It is registered
from this file alone; `vislab train / evaluate / predict / report / compare` run it with no
edit anywhere else, which is the acceptance test of the plug-in interface (tasks/registry.py).
The other tests pin the registry's rules and that runs made before tasks were plug-ins
(config.yaml without `task`) still evaluate, report, compare and export.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import Section, build_config
from vislab.errors import VislabError
from vislab.health import HealthCheck
from vislab.tasks import Column, Evaluation, ReportSection, Task, get_task, register_task, task_names, unregister_task
from vislab.tasks.base import BaseTask, predict_batches
from vislab.testing.rundirs import make_run_dir
from vislab.testing.synthetic import make_pattern_dataset, tiny_config

# ---- the toy task: everything it needs, in this file -----------------------------------------


class BrightnessConfig(Section):
    """The toy task's own config section (`brightness:` in the YAML)."""

    scale: float = Field(1.0, gt=0.0, description="Targets are the mean brightness in [0, 1] times this.")


def _image_tensor(path: str, spec: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """The normalised model input of an image, and its mean brightness in [0, 1]."""
    from vislab.data.io import load_image
    from vislab.data.transforms import eval_transform_for

    img = load_image(path)
    return eval_transform_for(spec)(img), float(np.asarray(img.convert("L"), dtype=np.float32).mean() / 255.0)


class BrightnessData(L.LightningDataModule):
    """Preloaded tensors of the manifest's usable rows per split; predicts on any files."""

    def __init__(self, dataset_dir: Path, spec: dict[str, Any], batch_size: int, scale: float) -> None:
        super().__init__()
        self.dataset_dir, self.spec, self.batch_size, self.scale = Path(dataset_dir), spec, batch_size, scale
        self.sets: dict[str, TensorDataset] = {}
        self.paths: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" or self.sets:
            return
        from vislab.data.manifest import read_manifest, usable

        df = usable(read_manifest(self.dataset_dir))
        for split in ("train", "val", "test"):
            self.sets[split] = self._tensors(df[df["split"] == split]["path"].tolist())

    def _tensors(self, paths: Sequence[str]) -> TensorDataset:
        pairs = [_image_tensor(p, self.spec) for p in paths]
        return TensorDataset(torch.stack([x for x, _ in pairs]), torch.tensor([[self.scale * y] for _, y in pairs]))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.sets["train"], batch_size=self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.sets["val"], batch_size=self.batch_size)

    def steps_per_epoch(self, world_size: int = 1, accumulate: int = 1, limit: Any = None) -> int:
        self.setup()
        return max(1, math.ceil(len(self.sets["train"]) / self.batch_size / accumulate))

    def predict_on(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self._tensors(self.paths), batch_size=self.batch_size)


class BrightnessModule(BaseTask):
    """One output of the factory's model is the brightness: MSE loss, MAE metric."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x).float(), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x).float()
        self.log("val/loss", F.mse_loss(out, y), on_step=False, on_epoch=True, batch_size=len(x))
        self.log("val/mae", (out - y).abs().mean(), on_step=False, on_epoch=True, batch_size=len(x))
        self.last_val_std = float(out.std()) if len(out) > 1 else 1.0

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0]).float()[:, 0]


class OutputSpread(HealthCheck):
    """The toy's own health check: says once how much the validation predictions vary."""

    def __init__(self) -> None:
        self.done = False

    def after_validation(self, trainer: Any, pl_module: Any, report: Any) -> None:
        if not self.done:
            self.done = True
            report("info", "output_spread", f"validation predictions vary by {pl_module.last_val_std:.3g} (std)")


class BrightnessTask(Task):
    name = "brightness"
    description = "toy regression: the mean brightness of each image"
    config_section = BrightnessConfig
    model_tasks = ("classify",)  # classifiers with one output are regressors
    monitor = ("val/mae", "min")
    metric_columns = ("train/loss", "val/loss", "val/mae")
    summary_metric = "val/mae"
    curve_panels = (("Mean absolute error", "mae", "min"),)

    def build(self, cfg: Any, data_dir: Path, sanity: bool = False, *, load_weights: bool = True) -> tuple[Any, Any, dict[str, Any]]:
        module = BrightnessModule(cfg.model_dump(mode="json"), ["brightness"], model=self.create_model(cfg, ["brightness"], load_weights=load_weights))
        dm = BrightnessData(data_dir, module.hparams["data_spec"], cfg.data.batch_size, cfg.section().scale)
        dm.setup()
        return module, dm, {"split_sizes": {k: len(v) for k, v in dm.sets.items()}, "val_source": "manifest"}

    def health_checks(self, cfg: Any) -> list[HealthCheck]:
        return [OutputSpread()]

    def load_module(self, run: Any) -> BrightnessModule:
        return BrightnessModule(run.cfg.model_dump(mode="json"), run.classes, run.spec.to_dict(), model=run.model)

    def evaluate(self, run: Any, rows: pd.DataFrame, dataset_dir: Path, *, precision: str, description: str | None, **options: Any) -> Evaluation:
        paths = rows["path"].tolist()
        dm = BrightnessData(dataset_dir, run.spec.to_dict(), 8, run.cfg.section().scale)
        dm.predict_on(paths)
        pred = torch.cat(predict_batches(self.load_module(run), dm, precision=precision)).numpy()
        truth = dm._tensors(paths).tensors[1][:, 0].numpy()
        residual = pred - truth

        def write(out: Path) -> None:
            pd.DataFrame({"path": paths, "truth": truth, "pred": pred}).to_csv(out / "residuals.csv", index=False)

        return Evaluation({"num_samples": len(paths), "mae": float(np.abs(residual).mean())}, {}, write)

    def evaluation_line(self, metrics: dict[str, Any]) -> str:
        return f"{metrics['name']}: brightness MAE {metrics['mae']:.4f} on {metrics['num_samples']} images"

    def predict(self, run: Any, files: Sequence[Path], **options: Any) -> list[dict[str, Any]]:
        dm = BrightnessData(Path("."), run.spec.to_dict(), 8, run.cfg.section().scale)
        dm.predict_on([str(f) for f in files])
        values = torch.cat(predict_batches(self.load_module(run), dm)).tolist()
        return [{"path": str(f), "brightness": v} for f, v in zip(files, values)]

    def format_predictions(self, results: list[dict[str, Any]], fmt: str) -> str:
        return json.dumps(results) if fmt == "json" else "".join(f"{r['path']}\t{r['brightness']:.3f}\n" for r in results)

    def report_sections(self, data: Any, page: Any) -> list[ReportSection]:
        rows = "".join(f"<tr><td>{name}</td><td>{ev.metrics.get('mae', float('nan')):.4f}</td></tr>" for name, ev in data.evals.items())
        mine = ReportSection("brightness", "Brightness", "Brightness error", f"<table>{rows}</table>", "Mean absolute error per evaluation.")
        return [page.health(), mine, page.curves(), page.dataset(), page.config()]

    def kpis(self, data: Any, page: Any) -> list[tuple[str, str, str]]:
        mae = page.ev.metrics.get("mae") if page.ev else None
        return [("test MAE", f"{mae:.4f}" if mae is not None else "—", "brightness"), page.training_time()]

    def compare_columns(self) -> list[Column]:
        return [Column("test_mae", "test MAE", "MAE")]

    def compare_values(self, data: Any, split: str) -> dict[str, Any]:
        ev = data.evals.get(split)
        return {"test_mae": ev.metrics.get("mae") if ev else None}


# ---- the toy task through the generic commands ------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def brightness_task():
    """Registered for this file's tests only: other tests see the built-in tasks alone."""
    task = register_task(BrightnessTask())
    yield task
    unregister_task(task.name)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("bright") / "data", per_class=8, size=16)


@pytest.fixture(scope="module")
def toy_run(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    cfg = tiny_config(task="brightness", brightness={"scale": 2.0}, train={"epochs": 3})
    (root / "toy.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    run = root / "run"
    res = CliRunner().invoke(app, ["train", str(root / "toy.yaml"), "--data", str(dataset), "--out", str(run)])
    assert res.exit_code == 0, res.output
    return run, res.output


def test_summary_line_names_the_monitor_when_it_is_not_the_headline_metric(dataset, tmp_path) -> None:
    cfg = tiny_config(task="brightness", brightness={"scale": 2.0}, train={"epochs": 2, "monitor": "val/loss", "monitor_mode": "min"})
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    res = CliRunner().invoke(app, ["train", str(tmp_path / "toy.yaml"), "--data", str(dataset), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    best = summary["best_val"]
    assert summary["monitor"] == "val/loss" and summary["best_epoch"] == int(pd.read_csv(tmp_path / "run" / "metrics.csv")["val/loss"].idxmin())
    line = f"best checkpoint (by val/loss {best['val/loss']:.4g}) at epoch {summary['best_epoch'] + 1}: val/mae {best['val/mae']:.4f}"
    assert line in res.output.replace("\n", " ") and "best val/mae" not in res.output


def test_train_writes_the_tasks_columns_monitor_and_section(toy_run) -> None:
    run, output = toy_run
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns[:7]) == ["epoch", "train/loss", "val/loss", "val/mae", "lr", "epoch_time_s", "train_images_per_s"]
    assert len(metrics) == 3 and metrics["val/mae"].notna().all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["monitor"] == "val/mae" and summary["best_epoch"] == int(metrics["val/mae"].idxmin())
    assert "epoch 1/3: train loss " in output and " | val loss " in output and " mae " in output
    assert f"best val/mae {summary['best_val']['val/mae']:.4f}" in output  # the task's summary metric, not accuracy
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task"] == "brightness" and saved["brightness"] == {"scale": 2.0}
    assert saved["train"]["monitor"] == "val/mae" and saved["train"]["monitor_mode"] == "min"
    assert json.loads((run / "run.json").read_text())["classes"] == ["brightness"]
    health = json.loads((run / "health.json").read_text())
    assert [(h["code"], h["epoch"]) for h in health] == [("output_spread", 0)]  # the task's check, run by the generic monitor


def test_evaluate_predict_report_and_compare_run_the_toy_task(toy_run, dataset, tmp_path) -> None:
    run, _ = toy_run
    res = CliRunner().invoke(app, ["evaluate", str(run), "--split", "test"])
    assert res.exit_code == 0, res.output
    assert "test: brightness MAE " in res.output
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["checkpoint"].endswith("best.ckpt") and 0 <= metrics["mae"] < 2.0
    residuals = pd.read_csv(run / "eval" / "test" / "residuals.csv")
    assert len(residuals) == metrics["num_samples"] and (residuals["truth"] - residuals["pred"]).abs().mean() == pytest.approx(metrics["mae"], rel=1e-5)
    assert residuals["truth"].max() > 1.0  # the section's scale (2.0) reached the datamodule

    image = sorted((dataset / "images").rglob("*.png"))[0]
    res = CliRunner().invoke(app, ["predict", str(run), str(image), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["path"] == str(image) and isinstance(json.loads(res.output)[0]["brightness"], float)

    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    page = (run / "report.html").read_text()
    assert '<section id="brightness"' in page and 'href="#brightness"' in page and "Brightness error" in page
    assert "test MAE" in page and f"{metrics['mae']:.4f}" in page
    for generic in ("health", "curves", "data", "config"):
        assert f'<section id="{generic}"' in page
    assert 'id="confusion"' not in page and "mean class acc." not in page
    assert (run / "plots" / "curves.png").is_file()

    classify = make_run_dir(tmp_path, name="classify-run", dataset=False)
    res = CliRunner().invoke(app, ["compare", str(run), str(classify), "--format", "csv", "--sort", "test_mae"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(io.StringIO(res.output))
    assert "test_mae" in table.columns and "test_acc" in table.columns  # both tasks' columns, one row each
    assert table.loc[0, "run"] == "run" and table.loc[0, "test_mae"] == pytest.approx(metrics["mae"])
    assert pd.isna(table.loc[1, "test_mae"]) and pd.isna(table.loc[0, "test_acc"])
    res = CliRunner().invoke(app, ["compare", str(run), str(classify), "--format", "md"])
    assert "| test MAE |" in res.output and "| test acc % |" in res.output


def test_the_section_is_validated_and_belongs_to_its_task() -> None:
    with pytest.raises(VislabError, match=r"'brightness.scale'.*greater than 0"):
        build_config({"task": "brightness", "brightness": {"scale": -1}}, "toy.yaml")
    with pytest.raises(VislabError, match=r"unknown key 'brightness.scal'; did you mean brightness.scale"):
        build_config({"task": "brightness", "brightness": {"scal": 2}}, "toy.yaml")
    with pytest.raises(VislabError, match=r"'brightness' holds the settings of task brightness; set task: brightness"):
        build_config({"brightness": {"scale": 2}}, "toy.yaml")
    assert build_config({"task": "brightness"}).section() == BrightnessConfig()
    assert build_config({}).section() is None  # classification has no section of its own


def test_registry_rules() -> None:
    assert get_task(None).name == "classify" and {"classify", "brightness"} <= set(task_names())
    with pytest.raises(ValueError, match="registered twice"):
        register_task(BrightnessTask())
    code = "import vislab.tasks as t; print(t.task_names())"  # another process: only the built-in tasks
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "['classify', 'crops', 'detect']"
    with pytest.raises(VislabError, match="unknown task 'segment'; choose one of brightness, classify, crops, detect"):
        get_task("segment")
    with pytest.raises(VislabError, match=r"'task' unknown task 'segment'"):
        build_config({"task": "segment"}, "x.yaml")


def test_a_task_refuses_models_of_another_task(dataset, tmp_path) -> None:
    from vislab.train import train

    cfg = tiny_config(model={"name": "yolov3_tiny"})
    with pytest.raises(VislabError, match="'yolov3_tiny' is a detect model; task classify trains classify models"):
        train(cfg, dataset, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_runs_made_before_tasks_were_plugins_still_work(tmp_path) -> None:
    """config.yaml written before `task` existed (and before train.monitor could be null)."""
    run = make_run_dir(tmp_path, checkpoint=True)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    del raw["task"]
    del raw["train"]["monitor"], raw["train"]["monitor_mode"]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    from vislab.evaluate import evaluate
    from vislab.export import export_run
    from vislab.report.compare import compare_runs
    from vislab.report.html import write_report

    assert evaluate(run, split="test")["task"] == "classify"
    assert '<section id="confusion"' in write_report(run, cams=False).read_text()
    assert compare_runs([run]).loc[0, "test_acc"] == pytest.approx(json.loads((run / "eval/test/metrics.json").read_text())["accuracy"])
    assert Path(export_run(run).path).is_file()


def test_imports_stay_light() -> None:
    """The model registry imports no builder and no torch (no import cycle in models/); the
    task registry and `vislab compare` do not import Lightning."""
    code = (
        "import sys, vislab.models.registry, vislab.tasks, vislab.tasks.classify, vislab.tasks.crops, vislab.report.compare, vislab.config\n"
        "vislab.config.build_config({'task': 'crops'})\n"
        "heavy = [m for m in ('torch', 'lightning', 'scipy', 'vislab.models.simple_cnn', 'vislab.models.yolo', 'vislab.models.factory') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_curves_mark_the_best_epoch_the_way_the_task_counts_best(tmp_path, monkeypatch) -> None:
    from vislab.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    hist = pd.DataFrame({"epoch": [0, 1, 2], "train/loss": [1.0, 0.5, 0.4], "val/mae": [0.5, 0.2, 0.3], "val/acc": [0.2, 0.9, 0.5]})
    plots.plot_curves(hist, tmp_path / "c.png", BrightnessTask.curve_panels + get_task("classify").curve_panels)
    marks = {ax.get_title(loc="left"): [t.get_text() for t in ax.texts] for ax in figures[0].axes}
    assert marks["Mean absolute error"] == ["best 0.200"] and marks["Accuracy"] == ["best 0.900"]
