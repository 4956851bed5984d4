"""The detect task: boxes per image, YOLOv3-style models. The plug-in the generic commands call.

- config: the `detect:` section below (input size, anchors, thresholds, loss weights,
  augmentation switches, multi-scale, Darknet class mapping). Warm-up and EMA are the
  generic ones: `scheduler.warmup_epochs` and `train.averaging.kind: ema`.
- model: `create_model` builds the registered YOLO (`task="detect"`) at `detect.img_size`
  with `detect.anchors`; `model.weights` may be a Darknet `.weights` file (its `.cfg` and
  class-names file beside it are used when present): its classes are mapped to the run's by
  name (COCO `car` -> KITTI `Car`, or `detect.class_map`), others start fresh.
- train: `DetectTask` (tasks/detect_module.py) on `DetectDataModule`
  (data/det_datamodule.py); metrics.csv leads with train/val loss and val mAP; the best
  checkpoint is the best val/map50.
- evaluate: classes matched by name, metrics.json with mAP@0.5, mAP@0.5:0.95, per-class AP,
  P/R/F1 at `detect.conf` and at the best-F1 confidence, curves, and KITTI AP when the run
  has KITTI classes and the data KITTI's truncation/occlusion fields (metrics/detection.py);
  predictions.csv and images.csv (per-image counts) beside it (tasks/detect_eval.py).
- predict: boxes per image; `--out` writes drawn images, JSON, CSV and YOLO txt labels.
- report, compare: report/detect.py and the mAP columns below; export: decoded boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pydantic import Field, field_validator

from vislab.config import Section
from vislab.errors import SettingError, VislabError
from vislab.fsguard import printable
from vislab.tasks.registry import Column, Evaluation, Task, register_task

if TYPE_CHECKING:
    import lightning as L
    import pandas as pd
    import torch.nn as nn

    from vislab.config import RunConfig
    from vislab.outfolder import OutFolder
    from vislab.report.rundata import RunData
    from vislab.runs import LoadedRun


def _warn_untrained_classes(data_dir: Path, boxes: "pd.DataFrame", splits: Any, trained: set[str], names: list[str]) -> None:
    """One warning line naming the classes boxed in val/test but never in train: the model never
    learns them and their AP of 0 pulls mAP down. A warning, not classification's refusal: a
    rare class of a small COCO-style subset often lands in one split only."""
    import sys

    held = set(splits.val["path"]) | set(splits.test["path"])
    shown = boxes[boxes["path"].isin(held) & ~boxes["ignore"]]
    missing = [c for c in names if c not in trained and (shown["class"] == c).any()]
    if missing:
        listed = ", ".join(repr(c) for c in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        print(
            f"warning: {printable(data_dir)}: {listed} {'has' if len(missing) == 1 else 'have'} boxes in val/test but none in train, "
            "so the model never learns them and their AP is 0; curate again with more such images, or leave them out with --classes",
            file=sys.stderr,
            flush=True,
        )


class DetectConfig(Section):
    """Settings of task: detect."""

    img_size: int | tuple[int, int] = Field(416, description="Input (letterbox canvas) size: N or [H, W], multiples of 32 (e.g. [192, 608] for KITTI's wide frames).")
    anchors: list[tuple[float, float]] | None = Field(None, description="Anchor [w, h] pairs in input pixels, smallest first (`vislab anchors` fits them); null: the model's own.")
    conf: float = Field(0.5, ge=0.0, le=1.0, description="Confidence of the reported P/R/F1 and of `vislab predict` boxes.")
    nms_iou: float = Field(0.45, gt=0.0, le=1.0, description="IoU above which NMS drops the weaker of two boxes of a class.")
    val_conf: float = Field(0.001, ge=0.0, lt=1.0, description="Lowest score kept for mAP (validation and evaluate).")
    max_det: int = Field(300, ge=1, description="Most boxes kept per image.")
    ignore_iou: float = Field(0.7, gt=0.0, le=1.0, description="Loss: a prediction overlapping a truth by more IoU is not a negative.")
    ignore_ioa: float = Field(0.5, gt=0.0, le=1.0, description="Loss: a prediction more than this share inside an ignore region is not a negative.")
    anchor_iou: float = Field(0.213, gt=0.0, le=1.0, description="Loss: every anchor whose shape IoU with a box exceeds this learns it (plus the best).")
    box_weight: float = Field(0.05, ge=0.0, description="Loss weight of the box (CIoU) term.")
    obj_weight: float = Field(1.0, ge=0.0, description="Loss weight of the objectness term.")
    cls_weight: float = Field(0.5, ge=0.0, description="Loss weight of the class term.")
    flip: float = Field(0.5, ge=0.0, le=1.0, description="Probability of a horizontal flip.")
    scale: float = Field(0.25, ge=0.0, lt=1.0, description="Random scale of the letterboxed image: 1 +- this.")
    translate: float = Field(0.1, ge=0.0, le=0.5, description="Random shift, as a share of the canvas.")
    hsv_h: float = Field(0.015, ge=0.0, le=0.5, description="Hue shift range (share of the hue circle).")
    hsv_s: float = Field(0.5, ge=0.0, le=1.0, description="Saturation gain range: 1 +- this.")
    hsv_v: float = Field(0.3, ge=0.0, le=1.0, description="Value (brightness) gain range: 1 +- this.")
    mosaic: float = Field(0.0, ge=0.0, le=1.0, description="Probability of a 4-image mosaic.")
    mixup: float = Field(0.0, ge=0.0, le=1.0, description="Probability of blending with another sample (mixup).")
    multi_scale: float = Field(0.0, ge=0.0, lt=1.0, description="Each training batch at a random size within +- this share of img_size; 0 is off.")
    class_map: dict[str, str] = Field(default_factory=dict, description="Darknet transfer: run class -> class of model.weights it starts from (default: the same name, case-insensitive).")
    weights_classes: Path | None = Field(None, description="Class-names file of a Darknet model.weights (default: the one *.names file beside it).")

    @field_validator("img_size")
    @classmethod
    def _multiple_of_32(cls, v: Any) -> Any:
        sides = [v] if isinstance(v, int) else list(v)
        if any(s < 32 or s % 32 for s in sides):
            raise ValueError(f"{v}: give sides that are multiples of 32, at least 32 (e.g. 416 or [192, 608])")
        return v


def canvas(cfg: "RunConfig") -> tuple[int, int]:
    from vislab.data.det_datamodule import canvas_of

    return canvas_of(cfg.section().img_size)


def detect_spec(cfg: "RunConfig") -> dict[str, Any]:
    """The DataSpec of a detection run: [0, 1] RGB letterboxed to the canvas."""
    h, w = canvas(cfg)
    return {"input_size": [3, h, w], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "crop_pct": 1.0, "interpolation": "bilinear"}


def _augment(cfg: "RunConfig") -> Any:
    from vislab.data.det_datamodule import DetectAugment

    s = cfg.section()
    return DetectAugment(s.flip, s.scale, s.translate, s.hsv_h, s.hsv_s, s.hsv_v, s.mosaic, s.mixup)


def _check_settings(cfg: "RunConfig") -> None:
    """The generic keys a detection run cannot take (its detect section sets them)."""
    clash = [k for k in ("img_size", "anchors") if k in cfg.model.kwargs]
    if clash:
        raise SettingError(f"model.kwargs.{clash[0]}: a detection run takes it from detect.{clash[0]}; move it there", (f"model.kwargs.{clash[0]}",))
    if cfg.data.img_size is not None:
        raise SettingError("data.img_size: a detection run's input size is detect.img_size (the letterbox canvas); remove data.img_size", ("data.img_size",))
    if cfg.data.cache:
        raise SettingError("data.cache: the prepared uint8 cache serves classification runs; set data.cache: false for detection", ("data.cache",))


class DetectPlugin(Task):
    """Object detection: boxes with classes and scores, YOLO models."""

    name = "detect"
    description = "boxes per image (YOLOv3 family): mAP, P/R/F1, KITTI AP, box galleries"
    config_section = DetectConfig
    model_tasks = ("detect",)
    monitor = ("val/map50", "max")
    metric_columns = ("train/loss", "val/loss", "val/map50", "val/map")
    extra_metrics = ("train/box", "train/obj", "train/cls")
    percent_metrics = frozenset({"val/map50", "val/map"})
    summary_metric = "val/map50"
    curve_panels = (("mAP@0.5", "map50", "max"),)
    report_module = "vislab.report.detect"
    export_outputs = ("detections",)
    eval_marks = ("map50",)

    # ---- model ---------------------------------------------------------------------------
    def create_model(self, cfg: "RunConfig", classes: Sequence[str], *, load_weights: bool = True) -> "nn.Module":
        from vislab.models.factory import create_model
        from vislab.models.yolo import ANCHORS_KEY

        sec = cfg.section()
        kwargs = {**cfg.model.kwargs, "img_size": max(canvas(cfg))}
        if sec.anchors is not None:
            kwargs["anchors"] = [list(a) for a in sec.anchors]
        weights = cfg.model.weights
        darknet = weights is not None and Path(weights).suffix.lower() == ".weights"
        mcfg = cfg.model.model_copy(update={"kwargs": kwargs, "weights": None if darknet else weights})
        try:
            model = create_model(mcfg, len(classes), load_weights=load_weights)
        except SettingError as err:  # the anchors came from detect.anchors: name the key the user set
            if sec.anchors is None or err.keys != (ANCHORS_KEY,):
                raise
            raise SettingError(f"detect.anchors{str(err)[len(ANCHORS_KEY):]}", ("detect.anchors",)) from None
        if darknet and load_weights:
            from vislab.tasks.detect_weights import load_darknet_transfer

            model = load_darknet_transfer(model, Path(weights), list(classes), sec.class_map, sec.weights_classes)
        return model

    # ---- training ------------------------------------------------------------------------
    def check_dataset(self, cfg: "RunConfig", data_dir: Path) -> None:
        from vislab.data.det_datamodule import detection_splits_of, detection_table

        rows, _, names = detection_table(data_dir)
        detection_splits_of(rows, cfg.data.val_fraction, cfg.seed, names)
        _check_settings(cfg)

    def build(
        self, cfg: "RunConfig", data_dir: Path, sanity: bool = False, *, load_weights: bool = True
    ) -> tuple["L.LightningModule", "L.LightningDataModule", dict[str, Any]]:
        from vislab.data.det_datamodule import DetectDataModule, detection_splits_of, detection_table
        from vislab.tasks.detect_module import DetectTask

        _check_settings(cfg)
        rows, boxes, names = detection_table(data_dir)
        splits = detection_splits_of(rows, cfg.data.val_fraction, cfg.seed, names)
        module = DetectTask(cfg.model_dump(mode="json"), names, detect_spec(cfg), model=self.create_model(cfg, names, load_weights=load_weights))
        dm = DetectDataModule(data_dir, cfg.data, module.hparams["data_spec"], names, cfg.seed, canvas(cfg), _augment(cfg), sanity_batch=sanity)
        dm.box_rows, dm.splits = boxes, splits
        train_boxes = boxes[boxes["path"].isin(set(splits.train["path"])) & ~boxes["ignore"]]
        _warn_untrained_classes(data_dir, boxes, splits, set(train_boxes["class"]), names)
        facts = {
            "val_source": splits.val_source,
            "split_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
            "train_box_counts": {c: int((train_boxes["class"] == c).sum()) for c in names},
        }
        return module, dm, facts

    # ---- after training ------------------------------------------------------------------
    def load_module(self, run: "LoadedRun") -> "L.LightningModule":
        from vislab.tasks.detect_module import DetectTask

        return DetectTask(run.cfg.model_dump(mode="json"), run.classes, run.spec.to_dict(), model=run.model)

    def evaluate(
        self, run: "LoadedRun", rows: "pd.DataFrame", dataset_dir: Path, *, precision: str = "32-true", description: str | None = None,
        batch_size: int | None = None, num_workers: int | None = None, tta: bool = False, tta_translate: int = 0,
    ) -> Evaluation:
        from vislab.tasks.detect_eval import evaluate_detection

        if tta or tta_translate:
            raise VislabError("--tta: test-time augmentation is for classification runs; evaluate this detection run without it")
        return evaluate_detection(self, run, rows, dataset_dir, precision=precision, description=description, batch_size=batch_size, num_workers=num_workers)

    def evaluation_line(self, metrics: dict[str, Any]) -> str:
        def pct(v: Any) -> str:
            return f"{v:.1%}" if isinstance(v, (int, float)) else "n/a"

        kitti = metrics.get("kitti") or {}
        mean = kitti.get("mean") or {}
        kitti_txt = (
            f", KITTI AP ({', '.join(kitti.get('per_class') or {})}) easy {pct(mean.get('easy'))} moderate {pct(mean.get('moderate'))} "
            f"hard {pct(mean.get('hard'))}" if mean else ""
        )
        return (
            f"{metrics['name']}: mAP@0.5 {pct(metrics.get('map50'))}, mAP@0.5:0.95 {pct(metrics.get('map50_95'))}, "
            f"P {pct(metrics.get('precision_at_conf'))} R {pct(metrics.get('recall_at_conf'))} F1 {pct(metrics.get('f1_at_conf'))} "
            f"at conf {metrics.get('conf')}{kitti_txt} on {metrics.get('num_samples')} images"
        )

    def evaluation_notes(self, metrics: dict[str, Any]) -> list[str]:
        """One line when the data's classes and the run's differ (evaluate --data OTHER)."""
        match = metrics.get("class_match") or {}
        parts = []
        if match.get("dataset_only"):
            parts.append(f"{', '.join(match['dataset_only'])} (in the data, not a class of the run: its boxes are not scored)")
        if match.get("run_only"):
            parts.append(f"{', '.join(match['run_only'])} (a class of the run with no box in the data: no AP)")
        return super().evaluation_notes(metrics) + ([f"note: classes left out: {'; '.join(parts)}"] if parts else [])

    def predict(self, run: "LoadedRun", files: Sequence[Path], **options: Any) -> list[dict[str, Any]]:
        from vislab.tasks.detect_eval import predict_files

        return predict_files(self, run, files, **options)

    def write_prediction_files(self, run: "LoadedRun", results: list[dict[str, Any]], sources: Sequence[str], out: "OutFolder | None") -> None:
        from vislab.data.manifest import recorded_max_pixels
        from vislab.tasks.detect_eval import write_predictions

        if out is not None:
            write_predictions(results, sources, out, run.classes, recorded_max_pixels(run.info))

    def format_predictions(self, results: list[dict[str, Any]], fmt: str) -> str:
        from vislab.tasks.detect_eval import format_predictions

        return format_predictions(results, fmt)

    def export_metadata(self, run: "LoadedRun") -> dict[str, Any]:
        """The letterbox, the box format and the NMS the graph leaves out (data_spec's crop does not apply)."""
        from vislab.data.det_datamodule import PAD_VALUE
        from vislab.export_info import detect_preprocess

        s = run.cfg.section()
        return {"vislab_preprocess": detect_preprocess(canvas(run.cfg), PAD_VALUE, s.conf, s.nms_iou, s.max_det)}

    def export_module(self, model: "nn.Module") -> "nn.Module":
        return model.eval()  # eval mode returns the decoded [B, N, 5 + C] boxes, objectness, class probabilities

    # ---- report and compare ----------------------------------------------------------------
    def compare_columns(self) -> list[Column]:
        return [
            Column("best_val_map50", "best val mAP@0.5", "val mAP50 %", percent=True, higher_is_better=True),
            Column("map50", "test mAP@0.5", "mAP50 %", percent=True, higher_is_better=True, aliases=("map",)),
            Column("map50_95", "test mAP@0.5:0.95", "mAP %", percent=True, higher_is_better=True),
            Column("det_precision", "precision @conf", "P %", percent=True, higher_is_better=True),
            Column("det_recall", "recall @conf", "R %", percent=True, higher_is_better=True),
            Column("det_f1", "F1 @conf", "F1 %", percent=True, higher_is_better=True),
        ]

    def compare_values(self, data: "RunData", split: str) -> dict[str, Any]:
        ev = data.evals.get(split)
        m = ev.metrics if ev else {}
        return {
            "best_val_map50": (data.summary.get("best_val") or {}).get("val/map50"),
            "map50": m.get("map50"),
            "map50_95": m.get("map50_95"),
            "det_precision": m.get("precision_at_conf"),
            "det_recall": m.get("recall_at_conf"),
            "det_f1": m.get("f1_at_conf"),
        }


register_task(DetectPlugin())
