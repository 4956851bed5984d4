"""The crops task: was a photo cropped, and where in its original frame does it sit?
("Dissecting Image Crops", Van Hoorick 2021). The plug-in the generic commands call for it.

- train: `CropsModule` (tasks/crops_module.py) on `CropsDataModule` (samples made on the
  fly, data/crops.py); the model is a `crop_detector*` with one location class per grid cell
  (run.json's classes are the cells, r<row>c<col>); metrics.csv leads with the loss, flag
  accuracy and AUC, patch accuracy, rectangle IoU and crop-factor error on the fixed
  validation set; the best checkpoint is the lowest val/loss.
- evaluate: the fixed evaluation set of a split (`--crops-per-image N` cropped variants per
  photo beside the uncropped one; `--aberration` adds a lens profile first, written to
  eval/<split>-aberration-<values>/ beside the clean evaluation), scored with
  metrics/crops.py beside the trivial baseline (mean training rectangle, the evaluation
  set's majority flag, most frequent training cell) in the same evaluation; predictions.csv
  per sample, probs.npy the patches' cell probabilities (samples x patches x cells).
- predict: each photo read whole: crop probability, the estimated original frame, the
  patches' cell probabilities; a picture and a JSON per photo in RUN_DIR/predict/.
- report and compare: report/crops.py, and the columns below.
- export: the uint8 `thumb` (B x 3 x H x W) and `patches` (B x cells x 3 x P x P) the
  sampler makes, to the `rect`, `flag` (logit) and `cells` (logits) outputs.

Cheap to import (config validation imports it): the heavy parts are imported inside the hooks.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from typing_extensions import TypedDict

from vislab.config_crops import MAX_EVAL_CROPS_PER_IMAGE, RECTANGLES, Aberrations, CropsConfig
from vislab.errors import SettingError, VislabError
from vislab.tasks.registry import Column, Evaluation, Task, register_task

if TYPE_CHECKING:
    import lightning as L
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn as nn

    from vislab.config import RunConfig
    from vislab.health import HealthCheck
    from vislab.metrics.crops import Baseline
    from vislab.outfolder import OutFolder
    from vislab.report.rundata import RunData
    from vislab.runs import LoadedRun

# the metrics.json sections its report reads: each an object (or null)
CropsMetrics = TypedDict(
    "CropsMetrics", {k: dict[str, Any] | None for k in ("model", "baseline", "baseline_predicts", "chance")}, total=False
)

BASELINE_EPOCHS = 4  # the baseline's training targets: the sampler's draws over this many epochs
EXPORT_INPUTS = ("thumb", "patches")  # the exported model's inputs, in the order the model takes them
HEADLINE = (  # metrics.json's top-level copies of the model's figures (compare and report read them)
    ("crop_acc", "flag_acc"),
    ("auc", "flag_auc"),
    ("patch_acc", "patch_acc"),
    ("iou", "iou"),
    ("crop_factor_error", "crop_factor_error"),
)


def cell_names(cfg: CropsConfig) -> list[str]:
    """The location classes: one per grid cell, row-major."""
    cols, rows = cfg.grid
    return [f"r{r}c{c}" for r in range(rows) for c in range(cols)]


def parse_aberration(text: str) -> Aberrations:
    """`vignette=0.4,red=1.5` -> an Aberrations profile (a one-line error naming the bad part)."""
    from pydantic import ValidationError

    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if key in values:
            raise VislabError(f"--aberration {text!r}: {key} is given twice; give each key once")
        try:
            values[key] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise VislabError(f"--aberration {text!r}: '{part}' is not KEY=NUMBER; keys: {', '.join(Aberrations.model_fields)}")
    try:
        profile = Aberrations.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        raise VislabError(f"--aberration {text!r}: {'.'.join(map(str, first['loc']))}: {first['msg'].lower()} (keys: {', '.join(Aberrations.model_fields)})") from None
    if profile.is_identity():
        raise VislabError(f"--aberration {text!r}: every value is zero, which is the clean evaluation; leave --aberration out for it")
    return profile


def _exact(v: float) -> str:
    """A number as a folder name keeps it: '0.4' and '2' as before, the shortest exact form
    (repr) when the short one would round, so two profiles never share a folder."""
    short = f"{v:g}"
    return short if float(short) == v else repr(v)


def aberration_variant(stress: Aberrations | None) -> str:
    """The eval folder suffix of a stress test ('aberration-vignette0.5-red2', its non-zero
    values), so it sits beside the split's clean evaluation instead of replacing it."""
    if stress is None or stress.is_identity():
        return ""
    return "aberration-" + "-".join(f"{k}{_exact(v)}" for k, v in stress.model_dump().items() if v)


def _stress(cfg: CropsConfig, aberration: str | None) -> Aberrations | None:
    """The lens profile an evaluation adds: `--aberration`'s, else the run's `crops.stress`
    (None for an all-zero one: that is the clean evaluation)."""
    if aberration:
        return parse_aberration(aberration)
    return None if cfg.stress is None or cfg.stress.is_identity() else cfg.stress


def training_baseline(run: "LoadedRun", cfg: CropsConfig, fallback: Sequence[Any]) -> tuple["Baseline", str]:
    """The trivial predictor from the training targets: the sampler's plans (geometry only, no
    pixels) of the run's training photos over `BASELINE_EPOCHS` epochs; `fallback` plans
    (the evaluated samples') when the run's dataset is not reachable. Also says which."""
    import numpy as np

    from vislab.data.crops import plan_sample, sample_seed
    from vislab.data.manifest import read_manifest, usable
    from vislab.metrics.crops import Baseline

    plans = []
    try:
        train = usable(read_manifest(Path(run.info["dataset_dir"])), "train")
        for i, (w, h) in enumerate(zip(train["width"].astype(int), train["height"].astype(int))):
            plans += [plan_sample((w, h), sample_seed(run.cfg.seed, e, i), cfg, train=True) for e in range(BASELINE_EPOCHS)]
        source = f"training targets: {len(train)} photos x {BASELINE_EPOCHS} epochs of samples"
    except (VislabError, KeyError, ValueError, OSError):
        plans, source = list(fallback), "the evaluated samples (the run's dataset is not reachable)"
    if not plans:
        plans, source = list(fallback), "the evaluated samples (the run's dataset has no train rows)"
    return Baseline.from_targets(
        np.array([p.rect for p in plans]), np.array([p.cropped for p in plans]), np.array([p.cells for p in plans])
    ), source


def _refuse_unreadable(bad: list[tuple[str, str]]) -> None:
    path, reason = bad[0]
    raise VislabError(f"{path}: cannot read image ({reason}); the dataset changed since `vislab curate`: restore the file or re-curate")


def _fmt(v: Any, pct: bool = True) -> str:
    return "-" if v is None else (f"{v:.1%}" if pct else f"{v:.3f}")


def _check_settings(cfg: "RunConfig") -> None:
    if cfg.data.img_size is not None:
        raise SettingError("data.img_size: a crops run's thumbnail size is crops.thumb_size (width, height); remove data.img_size", ("data.img_size",))


class CropsPlugin(Task):
    """Crop detection: a rectangle in the original frame, a crop flag and patch cells per photo."""

    name = "crops"
    description = "was a photo cropped, and where in the original frame: flag, rectangle, patch cells"
    config_section = CropsConfig
    model_tasks = ("crops",)
    monitor = ("val/loss", "min")
    predicts_pictures = True
    metric_columns = ("train/loss", "train/flag_acc", "train/patch_acc", "val/loss", "val/flag_acc", "val/auc", "val/patch_acc", "val/iou", "val/cf_err")
    percent_metrics = frozenset({"train/flag_acc", "train/patch_acc", "val/flag_acc", "val/patch_acc", "val/cf_err"})
    summary_metric = "val/patch_acc"
    extra_metrics = ("train/loss_patch", "train/loss_rect", "train/loss_flag", "train/loss_size")
    curve_panels = (("Crop flag accuracy", "flag_acc", "max"), ("Patch location accuracy", "patch_acc", "max"), ("Rectangle IoU", "iou", "max"), ("Crop-factor error", "cf_err", "min"))
    report_module = "vislab.report.crops"
    evaluate_options = ("crops_per_image", "aberration", "rectangle")
    export_outputs = ("rect", "flag", "cells")
    eval_marks = ("model", "baseline")
    eval_fields = CropsMetrics
    sweep_fixed_keys = {
        key: "it changes the validation samples every trial is compared on; set it in the base config"
        for key in ("crops.eval_seed", "crops.eval_crops_per_image", "crops.stress")
    }

    # ---- training ------------------------------------------------------------------------
    def check_dataset(self, cfg: "RunConfig", data_dir: Path) -> None:
        import pandas as pd

        from vislab.data.crops_datamodule import check_sizes, crops_rows
        from vislab.data.manifest import manifest_path

        rows, _ = crops_rows(data_dir, cfg.data.val_fraction, cfg.seed)
        _check_settings(cfg)
        check_sizes(pd.concat([rows["train"], rows["val"]]), cfg.section(), str(manifest_path(data_dir)))

    def build(
        self, cfg: "RunConfig", data_dir: Path, sanity: bool = False, *, load_weights: bool = True
    ) -> tuple["L.LightningModule", "L.LightningDataModule", dict[str, Any]]:
        from vislab.data.crops_datamodule import CropsDataModule
        from vislab.tasks.crops_module import CropsModule

        _check_settings(cfg)
        section = cfg.section()
        dm = CropsDataModule(data_dir, section, cfg.data, cfg.seed, sanity_batch=sanity)
        sizes = dm.split_sizes()
        cells = cell_names(section)
        module = CropsModule(cfg.model_dump(mode="json"), cells, model=self.create_model(cfg, cells, load_weights=load_weights))
        return module, dm, {"split_sizes": sizes, "val_source": dm.val_source}

    def health_checks(self, cfg: "RunConfig") -> list["HealthCheck"]:
        from vislab.tasks.crops_module import ConstantOutputs

        return [ConstantOutputs(cfg.train.health.chance_after_epochs)]

    # ---- after training ------------------------------------------------------------------
    def load_module(self, run: "LoadedRun") -> "L.LightningModule":
        from vislab.tasks.crops_module import CropsModule

        return CropsModule(run.cfg.model_dump(mode="json"), run.classes, run.spec.to_dict(), model=run.model)

    def evaluate(
        self, run: "LoadedRun", rows: "pd.DataFrame", dataset_dir: Path, *, precision: str = "32-true", description: str | None = None,
        tta: bool = False, tta_translate: int = 0, batch_size: int | None = None, num_workers: int | None = None,
        crops_per_image: int | None = None, aberration: str | None = None, rectangle: str | None = None,
    ) -> Evaluation:
        import numpy as np
        import pandas as pd

        from vislab.data.crops import eval_samples, plan_sample
        from vislab.data.crops_datamodule import CropsDataModule, check_sizes
        from vislab.data.manifest import manifest_path
        from vislab.metrics.crops import CropsEvaluation, crop_factor, crop_factor_error, rect_iou
        from vislab.runs import write_eval_files
        from vislab.tasks.base import predict_batches

        if tta or tta_translate:
            raise VislabError("--tta: not an option of task crops (a flipped photo is another crop)")
        cfg: CropsConfig = run.cfg.section()
        n_crops = cfg.eval_crops_per_image if crops_per_image is None else int(crops_per_image)
        if not 0 <= n_crops <= MAX_EVAL_CROPS_PER_IMAGE:
            raise VislabError(f"--crops-per-image {n_crops}: must be 0 to {MAX_EVAL_CROPS_PER_IMAGE} (crops per photo an evaluation holds)")
        stress = _stress(cfg, aberration)
        if rectangle is not None and rectangle not in RECTANGLES:
            raise VislabError(f"--rectangle {rectangle}: not a choice; use one of {', '.join(RECTANGLES)}")
        ecfg = cfg.model_copy(update={"stress": stress, "rectangle": rectangle or cfg.rectangle})
        if n_crops:
            check_sizes(rows, cfg, str(manifest_path(dataset_dir)))
        paths = rows["path"].tolist()
        items = eval_samples(paths, n_crops, cfg.eval_seed)
        sizes = dict(zip(paths, zip(rows["width"].astype(int), rows["height"].astype(int))))
        plans = [plan_sample(sizes[i.path], i.seed, cfg, train=False, crop=i.crop, name=i.path) for i in items]
        dm = CropsDataModule(dataset_dir, cfg, run.cfg.data, run.cfg.seed)
        dm.predict_on_items(items, ecfg, _refuse_unreadable, batch_size=batch_size)
        module = self.load_module(run)
        module.crops = ecfg
        outs = predict_batches(module, dm, precision=precision, description=description)
        ev = CropsEvaluation(num_cells=len(run.classes))
        for o in outs:
            ev.update(o["rect"], o["flag"], o["cell_probs"], o["rect_true"], o["cropped"], o["cells_true"])
        baseline, source = training_baseline(run, cfg, plans)
        report = ev.report(baseline)
        metrics: dict[str, Any] = {
            "num_images": len(paths), "num_samples": len(items), **report, "baseline_from": source,
            **{key: report["model"][src] for key, src in HEADLINE},
        }
        a = ev.arrays()
        probs = np.concatenate([o["cell_probs"].cpu().numpy() for o in outs]).astype(np.float32) if outs else np.zeros((0, 0, 0), np.float32)

        def write(out: Path) -> None:
            rect, true = a["rect"].reshape(-1, 4), a["rect_true"].reshape(-1, 4)
            cropped = a["cropped"].astype(bool)
            err = np.full(len(cropped), np.nan)
            err[cropped] = crop_factor_error(rect[cropped], true[cropped])
            cells_true = a["cells_true"].reshape(len(cropped), -1)
            table = {
                "path": [i.path for i in items], "cropped": cropped, "rotation": [p.rotation for p in plans],
                **{f"true_{k}": true[:, j] for j, k in enumerate(("x1", "x2", "y1", "y2"))},
                **{f"pred_{k}": rect[:, j] for j, k in enumerate(("x1", "x2", "y1", "y2"))},
                "crop_prob": a["flag_prob"], "s_true": crop_factor(true), "s_pred": crop_factor(rect),
                "iou": rect_iou(rect, true), "cf_err": err,
                "patch_acc": (a["cell_pred"].reshape(cells_true.shape) == cells_true).mean(1),
                "cells_true": [" ".join(map(str, c)) for c in cells_true],
            }
            write_eval_files(out, pd.DataFrame(table), probs)

        options = {"crops_per_image": n_crops, "eval_seed": cfg.eval_seed, "aberration": stress.model_dump() if stress else None,
                   "rectangle": ecfg.rectangle}
        return Evaluation(metrics, options, write)

    def evaluate_variant(self, run: "LoadedRun", *, aberration: str | None = None, **options: Any) -> str:
        return aberration_variant(_stress(run.cfg.section(), aberration))

    def evaluation_notes(self, metrics: dict[str, Any]) -> list[str]:
        """The generic line, and that the crops figures leave those samples out."""
        return [line + ": the model's figures are over the other samples" for line in super().evaluation_notes(metrics)]

    def evaluation_line(self, metrics: dict[str, Any]) -> str:
        m, b = metrics.get("model", {}), metrics.get("baseline", {})
        flag = (metrics.get("baseline_predicts") or {}).get("flag")
        parts = [
            f"crop acc {_fmt(m.get('flag_acc'))} (baseline {_fmt(b.get('flag_acc'))}{f': always {flag}' if flag else ''})",
            f"AUC {_fmt(m.get('flag_auc'), False)}",
            f"patch acc {_fmt(m.get('patch_acc'))} (baseline {_fmt(b.get('patch_acc'))}, chance {_fmt((metrics.get('chance') or {}).get('patch_acc'))})",
            f"IoU {_fmt(m.get('iou'), False)} (baseline {_fmt(b.get('iou'), False)})",
            f"crop-factor error {_fmt(m.get('crop_factor_error'))} (baseline {_fmt(b.get('crop_factor_error'))})",
        ]
        return f"{metrics.get('name')}: {', '.join(parts)} on {metrics.get('num_samples')} samples of {metrics.get('num_images')} images"

    def predict(self, run: "LoadedRun", files: Sequence[Path], *, batch_size: int = 8, **_: Any) -> list[dict[str, Any]]:
        """One dict per photo: crop_prob, cropped, rect (x1, x2, y1, y2: where the photo sits
        in its estimated original frame, in fractions of that frame, the photo's orientation),
        crop_factor, cells (per patch, its cell probabilities in the model's landscape view);
        or error. `write_prediction_files` draws them."""
        from vislab.data.crops_datamodule import CropsDataModule
        from vislab.data.manifest import recorded_max_pixels
        from vislab.tasks.base import predict_batches

        cfg: CropsConfig = run.cfg.section()
        results: list[dict[str, Any]] = [{"path": str(f)} for f in files]
        unreadable: dict[str, str] = {}
        limit = recorded_max_pixels(run.info)
        dm = CropsDataModule(Path("."), cfg, run.cfg.data, run.cfg.seed, max_pixels=limit)
        dm.predict_on_photos([str(f) for f in files], lambda bad: unreadable.update(bad), batch_size=batch_size)
        for o in predict_batches(self.load_module(run), dm, description="predict"):
            for k, pos in enumerate(o["position"].tolist()):
                results[pos].update(prediction_fields(o["rect"][k].tolist(), float(o["flag"][k]), o["cell_probs"][k].tolist(), int(o["rotation"][k])))
        for entry in results:
            if "rect" not in entry and "error" not in entry:
                entry["error"] = f"cannot read image: {unreadable.get(entry['path'], 'unknown reason')}"
        return results

    def write_prediction_files(self, run: "LoadedRun", results: list[dict[str, Any]], sources: Sequence[str], out: "OutFolder | None") -> None:
        """A picture and a .json per photo (adding picture and json to its row) in `out`: --out
        when given, else RUN/predict/ (`predicts_pictures`)."""
        from vislab.data.manifest import recorded_max_pixels
        from vislab.report.crops import write_prediction_files

        assert out is not None, "predicts_pictures: predict always gives a folder"
        cfg: CropsConfig = run.cfg.section()
        write_prediction_files(out.file, results, sources, cfg.grid, recorded_max_pixels(run.info))

    def format_predictions(self, results: list[dict[str, Any]], fmt: str) -> str:
        """JSON (a list), CSV, or the table every task prints (the pictures' paths are in the
        JSON and CSV). The CSV and JSON keep each path exactly; the table, for people, shows
        names through `term`."""
        if fmt == "json":
            return json.dumps(results, indent=2)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["path", "crop_prob", "cropped", "x1", "x2", "y1", "y2", "crop_factor", "crop_factor_if_cropped", "picture", "error"])
            for r in results:
                rect = [f"{v:.3f}" for v in r["rect"]] if "rect" in r else [""] * 4
                prob, cf, cf_if = (f"{r[k]:.3f}" if k in r else "" for k in ("crop_prob", "crop_factor", "crop_factor_if_cropped"))
                w.writerow([r["path"], prob, r.get("cropped", ""), *rect, cf, cf_if, r.get("picture", ""), r.get("error", "")])
            return buf.getvalue()
        if fmt != "table":
            raise VislabError(f"--format {fmt!r}: choose table, json or csv")
        from vislab.display import text_table
        from vislab.usertext import term

        rows = []
        for r in results:
            if "error" in r:
                rows.append((term(r["path"]), "[red]error[/]", "", "", "", term(r["error"])))
                continue
            x1, x2, y1, y2 = r["rect"]
            rows.append((term(r["path"]), "cropped" if r["cropped"] else "not cropped", f"{r['crop_prob']:.3f}", f"{r['crop_factor']:.2f}",
                         f"{r['crop_factor_if_cropped']:.2f}", f"{x1:.2f}-{x2:.2f} / {y1:.2f}-{y2:.2f}"))
        columns = [("image", "left"), ("prediction", "left"), ("p(crop)", "right"), ("size factor", "right"),
                   ("if cropped", "right"), ("in its frame: x / y", "left")]
        return text_table(columns, rows)

    def export_metadata(self, run: "LoadedRun") -> dict[str, Any]:
        """What the uint8 inputs are and who builds them (data_spec describes the thumbnail branch only)."""
        from vislab.export_info import crops_inputs

        c: CropsConfig = run.cfg.section()
        return {"vislab_preprocess": crops_inputs(c.thumb_size, c.patch_size, c.cells)}

    def export_module(self, model: "nn.Module") -> "nn.Module":
        from vislab.models.crops import CropExport

        return CropExport(model)

    def export_inputs(self, cfg: "RunConfig | None", input_size: Sequence[int], batch: int, generator: "torch.Generator") -> dict[str, "torch.Tensor"]:
        """Random uint8 pixels shaped as the run's `crops:` section makes a sample: a thumbnail
        and one patch per grid cell (the spec's input size is the thumbnail's only)."""
        import torch

        if cfg is None:
            raise VislabError("export: a crops model's inputs come from its run's crops: section; export the run (`vislab export RUN`)")
        c: CropsConfig = cfg.section()
        (tw, th), p = c.thumb_size, c.patch_size
        thumb = torch.randint(0, 256, (batch, 3, th, tw), generator=generator, dtype=torch.uint8)
        patches = torch.randint(0, 256, (batch, c.cells, 3, p, p), generator=generator, dtype=torch.uint8)
        return dict(zip(EXPORT_INPUTS, (thumb, patches)))

    # ---- report and compare ----------------------------------------------------------------
    def compare_columns(self) -> list[Column]:
        return [
            Column("crop_acc", "crop acc", "crop %", percent=True, higher_is_better=True),
            Column("crop_auc", "crop AUC", "AUC", higher_is_better=True),
            Column("patch_acc", "patch acc", "patch %", percent=True, higher_is_better=True),
            Column("rect_iou", "rectangle IoU", "IoU", higher_is_better=True),
            Column("crop_factor_err", "crop-factor error", "s err %", percent=True),
        ]

    def compare_values(self, data: "RunData", split: str) -> dict[str, Any]:
        ev = data.evals.get(split)
        m = ev.metrics if ev else {}
        return {"crop_acc": m.get("crop_acc"), "crop_auc": m.get("auc"), "patch_acc": m.get("patch_acc"),
                "rect_iou": m.get("iou"), "crop_factor_err": m.get("crop_factor_error")}

    def scored_set(self, metrics: dict[str, Any]) -> tuple[int | None, list[str] | None]:
        """The photos scored (each may give several crops)."""
        n = metrics.get("num_images")
        return (n if isinstance(n, int) else None), None


FULL_FRAME = [0.0, 1.0, 0.0, 1.0]


def stable_sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow: exp of a non-positive number only."""
    import math

    if x >= 0:
        return 1 / (1 + math.exp(-x))
    z = math.exp(x)
    return z / (1 + z)  # the rectangle of a photo called uncropped: it is its own original frame


def prediction_fields(rect: Sequence[float], flag_logit: float, cell_probs: list[list[float]], rotation: int) -> dict[str, Any]:
    """predict's and serve's fields of one photo from the model's outputs on its landscape
    view: the rectangle clipped to the frame and turned back to the photo's orientation. A
    photo the flag calls uncropped fills its frame (`rect` the full frame, `crop_factor` 1);
    the rectangle the model gives stays in `rect_if_cropped` (`crop_factor_if_cropped`)."""
    import math

    if not all(math.isfinite(v) for v in [*rect, flag_logit, *(p for ps in cell_probs for p in ps)]):
        return {"error": "the model gave non-finite (NaN or infinite) outputs for this photo: it likely diverged; retrain or use an earlier checkpoint"}
    x1, x2, y1, y2 = (min(max(v, 0.0), 1.0) for v in rect)
    if rotation == 90:  # the view is the photo turned counter-clockwise
        x1, x2, y1, y2 = 1 - y2, 1 - y1, x1, x2
    elif rotation == 270:
        x1, x2, y1, y2 = y1, y2, 1 - x2, 1 - x1
    prob = stable_sigmoid(flag_logit)
    estimate = [x1, x2, y1, y2]
    shown = estimate if prob > 0.5 else list(FULL_FRAME)

    def factor(r: list[float]) -> float:
        return math.sqrt(max(r[1] - r[0], 0) * max(r[3] - r[2], 0))

    return {
        "crop_prob": prob, "cropped": prob > 0.5, "rect": shown, "crop_factor": factor(shown),
        "rect_if_cropped": estimate, "crop_factor_if_cropped": factor(estimate), "rotation": rotation, "cells": cell_probs,
    }


register_task(CropsPlugin())
