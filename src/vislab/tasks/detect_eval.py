"""Evaluate and predict of the detect task: boxes through the run's `predict_step`, scored.

Evaluation matches classes by name: the dataset's boxes of the run's classes are truths,
its ignore regions stay ignore regions, boxes of other classes are left out (and listed in
metrics.json's `class_match`); a dataset sharing no class with the run is an error. The
detections kept go down to the lower of `detect.val_conf` and `detect.conf`: mAP counts those
down to `val_conf`, P/R/F1 are at `detect.conf` (0.5, as the seed report) and at the best-F1
confidence over all of them, so they count the boxes `predict --conf` returns even when
`val_conf` is the higher. Files beside metrics.json:
predictions.csv (every kept detection in image pixels) and images.csv (per image: truths,
detections at `conf`, TP, FP, FN, F1), which the report's galleries read.

Predict returns per image its boxes over `--conf` after NMS at `--iou`; with `--out DIR` it
also writes DIR/images/ (boxes drawn), DIR/labels/ (YOLO txt: class cx cy w h score, the box
normalised, the 6th field as Ultralytics' save_conf writes it and `vislab curate` reads past),
DIR/classes.txt (one line per class id, whatever a name holds), beside the predictions.json
and predictions.csv `vislab.predict` writes (DIR is predict's own folder: see `outfolder`),
every path checked by `fsguard.inside` and written by `fsguard.replacing`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from vislab.errors import VislabError
from vislab.fsguard import cannot_write, inside, printable, replacing, slug, write_file
from vislab.tasks.registry import Evaluation
from vislab.usertext import term

if TYPE_CHECKING:
    from vislab.outfolder import OutFolder
    from vislab.runs import LoadedRun
    from vislab.tasks.detect import DetectPlugin

PREDICTIONS = "predictions.csv"
IMAGES = "images.csv"
KITTI_CLASSES = ("Car", "Pedestrian", "Cyclist")


def _datamodule(run: "LoadedRun", dataset_dir: Path, max_pixels: int | None) -> Any:
    from vislab.data.det_datamodule import DetectAugment, DetectDataModule
    from vislab.tasks.detect import canvas

    return DetectDataModule(
        dataset_dir, run.cfg.data, run.spec.to_dict(), run.classes, run.cfg.seed, canvas(run.cfg), DetectAugment.off(), max_pixels=max_pixels
    )


def run_detector(
    plugin: "DetectPlugin", run: "LoadedRun", paths: Sequence[str], dataset_dir: Path, *, conf: float, iou: float,
    on_unreadable: Any, precision: str = "32-true", description: str | None = None, batch_size: int | None = None, num_workers: int | None = None,
    sizes: Sequence[tuple[int, int] | None] | None = None, max_pixels: int | None = None,
) -> dict[int, dict[str, Any]]:
    """Position in `paths` -> {boxes [n, 4] image pixels, scores, labels (class ids)}; with
    `sizes` (a dataset's manifest), a file of another size is unreadable (changed since curate).
    Files decode under `max_pixels`, None: `dataset_dir`'s curate --max-pixels."""
    from vislab.tasks.base import predict_batches

    module = plugin.load_module(run)
    module.predict_conf, module.predict_iou = conf, iou
    dm = _datamodule(run, dataset_dir, max_pixels)
    dm.predict_on(list(paths), on_unreadable=on_unreadable, batch_size=batch_size, num_workers=num_workers, sizes=sizes)
    return {d["pos"]: d for batch in predict_batches(module, dm, precision=precision, description=description) for d in batch}


def _refuse_unreadable(bad: list[tuple[str, str]]) -> None:
    from vislab.data.det_datamodule import CHANGED

    path, reason = bad[0]
    if reason.startswith(CHANGED):
        raise VislabError(f"{path}: {reason}")
    raise VislabError(f"{path}: cannot read image ({reason}); the dataset changed since `vislab curate`: restore the file or re-curate")


def class_match(run_classes: Sequence[str], boxes: pd.DataFrame, source: Path) -> dict[str, list[str]]:
    """Which of the run's classes the dataset has boxes of; none in common is an error."""
    have = sorted(set(boxes.loc[~boxes["ignore"], "class"]))
    matched = [c for c in run_classes if c in have]
    if have and not matched:
        raise VislabError(
            f"{source}: no box of the run's classes ({', '.join(run_classes)}); the dataset's classes are "
            f"{', '.join(have[:20])}; evaluate on data with boxes of at least one of them (names must match)"
        )
    return {"matched": matched, "run_only": [c for c in run_classes if c not in have], "dataset_only": [c for c in have if c not in run_classes]}


def _per_image(preds: list[dict[str, Any]], targets: list[dict[str, Any]], classes: Sequence[str], conf: float) -> list[dict[str, Any]]:
    from vislab.metrics.detection import precision_recall

    out = []
    for p, t in zip(preds, targets):
        r = precision_recall([p], [t], classes, confidence=conf)["at_confidence"]["all"]
        out.append({"truths": r["tp"] + r["fn"], "detections": r["tp"] + r["fp"], "tp": r["tp"], "fp": r["fp"], "fn": r["fn"], "f1": r["f1"]})
    return out


def evaluate_detection(
    plugin: "DetectPlugin", run: "LoadedRun", rows: pd.DataFrame, dataset_dir: Path, *, precision: str, description: str | None,
    batch_size: int | None, num_workers: int | None,
) -> Evaluation:
    from vislab.data.boxes import image_targets, read_boxes
    from vislab.data.det_datamodule import manifest_sizes
    from vislab.data.manifest import has_boxes
    from vislab.metrics.detection import KittiSpec, detection_report, kitti_ap, scored_at_least
    from vislab.runs import EVAL_PREDICTIONS

    if not has_boxes(dataset_dir):
        raise VislabError(f"{dataset_dir}: not a detection dataset (no boxes.csv); evaluate a detection run on data curated with boxes")
    sec = run.cfg.section()
    paths = rows["path"].tolist()
    boxes = read_boxes(dataset_dir)
    boxes = boxes[boxes["path"].isin(set(paths))]
    match = class_match(run.classes, boxes, dataset_dir)
    found = run_detector(plugin, run, paths, dataset_dir, conf=min(sec.val_conf, sec.conf), iou=sec.nms_iou, on_unreadable=_refuse_unreadable,
                         precision=precision, description=description, batch_size=batch_size, num_workers=num_workers, sizes=manifest_sizes(rows))
    preds = [found[i] for i in range(len(paths))]
    targets = image_targets(boxes, paths)
    report = detection_report(preds, targets, run.classes, confidence=sec.conf, iou=0.5, max_dets=sec.max_det, map_conf=sec.val_conf)
    kitti = [c for c in KITTI_CLASSES if c in match["matched"]]
    if kitti and boxes["truncated"].notna().any():
        report["kitti"] = kitti_ap(scored_at_least(preds, sec.val_conf), targets, run.classes, KittiSpec(), classes=kitti)
    at = report["at_confidence"]["all"]
    metrics = {
        "num_samples": len(paths),
        "conf": sec.conf,
        "map50": report["coco"]["map50"],
        "map50_95": report["coco"]["map50_95"],
        # not `precision`: vislab.evaluate records the numeric precision (32-true, bf16) under that key
        "precision_at_conf": at["precision"],
        "recall_at_conf": at["recall"],
        "f1_at_conf": at["f1"],
        "best_f1_conf": (report["at_best_f1"] or {}).get("confidence"),
        "per_class_ap": report["coco"]["per_class"],
        "class_match": match,
        **report,
    }
    per_image = _per_image(preds, targets, run.classes, sec.conf)

    def write(out: Path) -> None:
        from vislab.metrics.detection import score_text

        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(["path", "class", "score", "x1", "y1", "x2", "y2"])
        for path, p in zip(paths, preds):
            for b, s, k in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
                w.writerow([path, run.classes[k], score_text(s), *(f"{v:.2f}" for v in b)])
        write_file(inside(out, EVAL_PREDICTIONS), buf.getvalue())
        write_file(inside(out, IMAGES), pd.DataFrame([{"path": p, **s} for p, s in zip(paths, per_image)]).to_csv(index=False))

    return Evaluation(metrics, {"iou": 0.5, "val_conf": sec.val_conf, "nms_iou": sec.nms_iou}, write)


# ---------------------------------------------------------------- predict


def predict_files(
    plugin: "DetectPlugin", run: "LoadedRun", files: Sequence[Path], *, conf: float | None = None, iou: float | None = None,
    batch_size: int = 32, top_k: int | None = None,
) -> list[dict[str, Any]]:
    """One dict per file: path, width, height, boxes [{class, score, x1, y1, x2, y2}] (or error).
    The size is the decoded, EXIF-oriented image's, whose pixels the boxes are in (a header
    probe would miss an orientation a PNG stores after its pixel data)."""
    from vislab.data.manifest import recorded_max_pixels

    if top_k is not None:
        raise VislabError("--top-k: lists classes of a classification run; a detection run takes --conf and --iou")
    sec = run.cfg.section()
    conf = sec.conf if conf is None else conf
    iou = sec.nms_iou if iou is None else iou
    if not 0 <= conf <= 1 or not 0 < iou <= 1:
        raise VislabError(f"--conf {conf} / --iou {iou}: give a confidence in [0, 1] and an IoU in (0, 1]")
    unreadable: dict[str, str] = {}
    paths = [str(f) for f in files]
    limit = recorded_max_pixels(run.info)
    found = run_detector(plugin, run, paths, Path("."), conf=conf, iou=iou, on_unreadable=lambda bad: unreadable.update(bad), batch_size=batch_size, num_workers=0,
                         description="predict", max_pixels=limit)
    results: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        if i not in found:
            results.append({"path": path, "error": f"cannot read image: {unreadable.get(path, 'unknown reason')}"})
            continue
        d = found[i]
        boxes = [
            {"class": run.classes[k], "score": round(s, 5), "x1": round(b[0], 2), "y1": round(b[1], 2), "x2": round(b[2], 2), "y2": round(b[3], 2)}
            for b, s, k in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist())
        ]
        results.append({"path": path, "width": d["width"], "height": d["height"], "boxes": boxes})
    return results


def write_predictions(results: list[dict[str, Any]], sources: Sequence[str], out: "OutFolder", classes: Sequence[str], max_pixels: int) -> None:
    """OUT/images/ (boxes drawn), OUT/labels/ (YOLO txt: class cx cy w h score), classes.txt;
    each image read from its source and decoded under `max_pixels`, as it was for predicting."""
    from vislab.data.io import load_image
    from vislab.report.draw import PREDICTED, draw_boxes

    index = {c: i for i, c in enumerate(classes)}
    out.write("classes.txt", classes_text(classes))
    for i, (r, source) in enumerate(zip(results, sources)):
        if "error" in r:
            continue
        stem = f"{i:05d}_{slug(Path(r['path']).stem)[:80]}"
        img = load_image(source, max_pixels=max_pixels)
        drawn = draw_boxes(img, [(b["x1"], b["y1"], b["x2"], b["y2"]) for b in r["boxes"]], [f"{b['class']} {b['score']:.2f}" for b in r["boxes"]], PREDICTED)
        target = out.file(f"images/{stem}.jpg")
        try:
            with replacing(target) as fh:
                drawn.save(fh, format="JPEG", quality=90)
        except OSError as err:
            raise cannot_write(target, err) from None
        w, h = img.size
        lines = [
            f"{index[b['class']]} {(b['x1'] + b['x2']) / 2 / w:.6f} {(b['y1'] + b['y2']) / 2 / h:.6f} {(b['x2'] - b['x1']) / w:.6f} {(b['y2'] - b['y1']) / h:.6f} {b['score']:.5f}\n"
            for b in r["boxes"]
        ]
        out.write(f"labels/{stem}.txt", "".join(lines))
        r["drawn"] = str(target)


def classes_text(classes: Sequence[str]) -> str:
    """classes.txt: line N names YOLO class id N, so a name is written as one line whatever it
    holds (a newline or other control character is shown as `\\xNN`, as `printable` does);
    a raw newline would shift every later id onto the wrong name."""
    return "".join(f"{printable(c)}\n" for c in classes)


def format_predictions(results: list[dict[str, Any]], fmt: str) -> str:
    """JSON (a list), long CSV (path, class, score, x1, y1, x2, y2, error) or a table; the
    CSV and JSON keep each path exactly, only the table (for people) shows names through `term`."""
    if fmt == "json":
        return json.dumps(results, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "class", "score", "x1", "y1", "x2", "y2", "error"])
        for r in results:
            if "error" in r:
                w.writerow([r["path"], "", "", "", "", "", "", r["error"]])
            for b in r.get("boxes", []):
                w.writerow([r["path"], b["class"], b["score"], b["x1"], b["y1"], b["x2"], b["y2"], ""])
        return buf.getvalue()
    if fmt != "table":
        raise VislabError(f"--format {fmt!r}: choose table, json or csv")
    from vislab.display import text_table

    rows = []
    for r in results:
        if "error" in r:
            rows.append((term(r["path"]), "[red]error[/]", term(r["error"])))
            continue
        best = ", ".join(f"{b['class']} {b['score']:.2f}" for b in sorted(r["boxes"], key=lambda b: -b["score"])[:5])
        rows.append((term(r["path"]), str(len(r["boxes"])), term(best)))
    return text_table([("image", "left"), ("boxes", "right"), ("best", "left")], rows)
