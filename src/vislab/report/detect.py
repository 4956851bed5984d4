"""The detect task's report: KPI cards and sections (stable ids: health, metrics, curves,
pr-curves, per-class, best-worst, errors, data, config).

Everything comes from the run directory: the primary eval set's metrics.json (mAP, P/R/F1,
curves, KITTI AP), its images.csv and predictions.csv, and the evaluated dataset's
boxes.csv for the truth drawn in the galleries (truth in green, predictions at the
evaluation's confidence in red). Without an evaluation, the cards say how to make one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vislab.report import plots
from vislab.report.page import Page, e, img_tag, note, table
from vislab.report.rundata import EvalSet, RunData
from vislab.tasks.registry import ReportSection

GALLERY = 8
THUMB = 320


def pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) and v == v else "—"


def kpis(data: RunData, page: Page) -> list[tuple[str, str, str]]:
    m = page.ev.metrics if page.ev else {}
    s = data.summary
    best = (s.get("best_val") or {}).get("val/map50")
    return [
        (f"{page.ev.name} mAP@0.5" if page.ev else "mAP@0.5", pct(m.get("map50")), f"{m.get('num_samples', 0):,} images" if page.ev else "not evaluated"),
        ("mAP@0.5:0.95", pct(m.get("map50_95")), "COCO"),
        (f"P / R at conf {m.get('conf', 0.5)}", f"{pct(m.get('precision_at_conf'))} / {pct(m.get('recall_at_conf'))}", f"F1 {pct(m.get('f1_at_conf'))}"),
        (f"{data.kept} val mAP@0.5", pct(best), f"epoch {s['best_epoch'] + 1}" if isinstance(s.get("best_epoch"), int) else ""),
        page.training_time(),
    ]


def _metrics_body(m: dict[str, Any]) -> str:
    best = m.get("at_best_f1") or {}
    rows = [
        ("mAP@0.5", pct(m.get("map50"))),
        ("mAP@0.5:0.95", pct(m.get("map50_95"))),
        ("mAP@0.75", pct((m.get("coco") or {}).get("map75"))),
        (f"precision / recall / F1 at conf {m.get('conf')}", f"{pct(m.get('precision_at_conf'))} / {pct(m.get('recall_at_conf'))} / {pct(m.get('f1_at_conf'))}"),
        (
            f"precision / recall / F1 at the best-F1 conf {best.get('confidence', 0):.3f}" if best else "best-F1 confidence",
            " / ".join(pct((best.get("all") or {}).get(k)) for k in ("precision", "recall", "f1")) if best else "—",
        ),
        ("images", f"{m.get('num_samples', 0):,}"),
    ]
    body = table(["metric", "value"], [(e(a), e(b)) for a, b in rows], "metrics")
    kitti = m.get("kitti")
    if kitti:
        krows = [(e(c), *(pct(r.get(d)) for d in ("easy", "moderate", "hard")), e(kitti["min_iou"].get(c))) for c, r in kitti["per_class"].items()]
        body += "<h3>KITTI 2D AP (AP|R40)</h3>" + table(["class", "easy", "moderate", "hard", "IoU"], krows, "metrics")
        if kitti.get("note"):
            body += note(kitti["note"])
    match = m.get("class_match") or {}
    if match.get("run_only") or match.get("dataset_only"):
        body += note(f"Classes matched by name: {', '.join(match.get('matched', []))}; only in the run: {', '.join(match.get('run_only', [])) or 'none'}; "
                     f"only in the data (not scored): {', '.join(match.get('dataset_only', [])) or 'none'}.")
    return body


def _draw(path: str, truth: pd.DataFrame, preds: pd.DataFrame, max_pixels: int) -> np.ndarray | None:
    from vislab.data.io import ImageDecodeError, load_image
    from vislab.report.draw import PREDICTED, TRUTH, draw_boxes

    try:
        img = load_image(path, max_pixels=max_pixels)
    except ImageDecodeError:
        return None
    img = draw_boxes(img, truth[["x1", "y1", "x2", "y2"]].to_numpy(), truth["class"].tolist(), TRUTH)
    img = draw_boxes(img, preds[["x1", "y1", "x2", "y2"]].to_numpy(), [f"{c} {s:.2f}" for c, s in zip(preds["class"], preds["score"])], PREDICTED)
    img.thumbnail((THUMB, THUMB))
    return np.asarray(img)


def _galleries(data: RunData, ev: EvalSet) -> dict[str, Path | None]:
    """best/worst, false-positive and missed galleries of the eval set, into RUN_DIR/plots."""
    from vislab.data.boxes import read_boxes
    from vislab.metrics.detection import kept, read_scores
    from vislab.runs import run_paths

    folder = run_paths(data.run_dir).eval_dir(ev.name)
    images_csv = folder / "images.csv"
    dataset = ev.metrics.get("dataset_dir")
    if not images_csv.is_file() or not dataset or not Path(dataset).is_dir():
        return {}
    per_image = pd.read_csv(images_csv, keep_default_na=False, dtype={"path": str})
    boxes = read_boxes(dataset)
    truth = boxes[~boxes["ignore"]]
    conf = float(ev.metrics.get("conf", 0.5))
    preds = ev.predictions if ev.predictions is not None else pd.DataFrame(columns=["path", "class", "score", "x1", "y1", "x2", "y2"])
    preds = preds[kept(read_scores(preds["score"]), conf)].astype({"score": float, "x1": float, "y1": float, "x2": float, "y2": float})
    f1 = pd.to_numeric(per_image["f1"], errors="coerce")
    scored = per_image.assign(f1=f1)[f1.notna()]

    limit = ev.max_pixels()

    def tiles(rows: pd.DataFrame) -> list[tuple[np.ndarray | None, str]]:
        return [
            (_draw(r.path, truth[truth["path"] == r.path], preds[preds["path"] == r.path], limit),
             f"{Path(r.path).name}\nTP {r.tp} FP {r.fp} FN {r.fn}")
            for r in rows.itertuples()
        ]

    plot = run_paths(data.run_dir).plot
    name = ev.name
    order = scored.sort_values("f1", kind="mergesort")
    return {
        "worst": plots.plot_tiles(tiles(order.head(GALLERY)), plot(f"det_worst_{name}.png"), "Worst images (lowest F1): truth green, predictions red"),
        "best": plots.plot_tiles(tiles(order.tail(GALLERY).iloc[::-1]), plot(f"det_best_{name}.png"), "Best images (highest F1)"),
        "fp": plots.plot_tiles(tiles(per_image[per_image["fp"] > 0].sort_values("fp", ascending=False, kind="mergesort").head(GALLERY)),
                               plot(f"det_false_positives_{name}.png"), "Most false positives"),
        "missed": plots.plot_tiles(tiles(per_image[per_image["fn"] > 0].sort_values("fn", ascending=False, kind="mergesort").head(GALLERY)),
                                   plot(f"det_missed_{name}.png"), "Most missed objects"),
    }


def report_sections(data: RunData, page: Page) -> list[ReportSection]:
    ev = page.ev
    if ev is None:
        return [
            page.health(),
            page.not_evaluated("metrics", "Metrics", "Detection metrics"),
            page.curves(),
            page.dataset(),
            page.config(),
        ]
    from vislab.runs import run_paths

    m = ev.metrics
    plot = run_paths(data.run_dir).plot
    curves = plots.plot_detection_curves(m.get("curves") or {}, m.get("classes") or data.classes, float(m.get("conf", 0.5)), plot(f"det_curves_{ev.name}.png"))
    per_class = plots.plot_class_ap(m.get("per_class_ap") or {}, plot(f"det_class_ap_{ev.name}.png"))
    class_rows = [
        (e(c), pct(v.get("ap50")), pct(v.get("ap50_95")),
         *(pct(((m.get("at_confidence") or {}).get("per_class") or {}).get(c, {}).get(k)) for k in ("precision", "recall", "f1")))
        for c, v in (m.get("per_class_ap") or {}).items()
    ]
    galleries = _galleries(data, ev)
    gallery_note = "" if galleries else note("The evaluated dataset is not reachable from here, so no images are drawn.")
    return [
        page.health(),
        ReportSection("metrics", "Metrics", f"Detection metrics ({ev.name})", _metrics_body(m), "COCO mAP (torchmetrics, faster-coco-eval); P/R/F1 at IoU 0.5."),
        page.curves(),
        ReportSection("pr-curves", "PR curves", "Precision-recall and F1-confidence curves", img_tag(curves, "detection curves") or note("No curve data.")),
        ReportSection("per-class", "Per class", "Per-class AP",
                      img_tag(per_class, "per-class AP") + table(["class", "AP@0.5", "AP@0.5:0.95", "P", "R", "F1"], class_rows, "per-class")),
        ReportSection("best-worst", "Best / worst", "Best and worst images",
                      gallery_note + img_tag(galleries.get("worst"), "worst images") + img_tag(galleries.get("best"), "best images"),
                      "Truth in green, predictions at the evaluation's confidence in red."),
        ReportSection("errors", "Errors", "False positives and missed objects",
                      gallery_note + img_tag(galleries.get("fp"), "false positives") + img_tag(galleries.get("missed"), "missed objects")),
        page.dataset(),
        page.config(),
    ]
