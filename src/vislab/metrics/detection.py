"""Detection metrics in one JSON dict: COCO mAP, P/R/F1 with curves, and KITTI's 2D AP.

Inputs are per image, in the same order:
- preds:   {"boxes": (N, 4) xyxy pixels, "scores": (N,), "labels": N class names or ids}
- targets: {"boxes": (M, 4), "labels": M class names or ids, "ignore": (M,) bool, and for
  KITTI "truncated", "occluded" (M,) (NaN or missing counts as 0)}
Arrays may be numpy or torch; ids index `class_names`.

Ignore regions: a target with `ignore` set is an ignore region for its class (COCO crowd,
VOC difficult); one of a class outside `class_names` (KITTI DontCare) is one for every
class; other targets of classes not evaluated are left out. A detection inside an ignore
region, measured as intersection over the detection's area (COCO's rule for crowd boxes),
is neither a true nor a false positive.

- `coco_map`: mAP@0.5 and mAP@0.5:0.95 (plus per-class AP) through torchmetrics'
  MeanAveragePrecision on the faster-coco-eval backend (COCOeval in C++, same numbers as
  pycocotools, about 3x faster), ignore regions passed as `iscrowd` targets, which COCOeval
  matches by intersection over detection area and never counts.
- `precision_recall`: our small greedy matcher (COCO's: detections by falling score, each
  to the best-IoU unmatched truth of its class at IoU >= threshold, else to an ignore
  region) gives P/R/F1 at a chosen confidence and at the F1-best one, and curve arrays.
- `kitti_ap`: the KITTI object devkit's 2D protocol (cpp/evaluate_object.cpp): per-class
  IoU (Car 0.7, Pedestrian and Cyclist 0.5), easy/moderate/hard by box height, occlusion
  and truncation, DontCare regions, Van/Person_sitting as neighbours of Car/Pedestrian, and
  AP over 40 recall positions (AP|R40, KITTI's protocol since 2019, not the older 11).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

DIFFICULTIES = ("easy", "moderate", "hard")
# the devkit's neighbour classes: truths it ignores (neither found nor missed) for the class
# they neighbour, and treats as any other class for the rest; `vislab curate --classes Car`
# of a KITTI source keeps them, as ignore rows under their own name, for this reason
KITTI_NEIGHBOURS: dict[str, tuple[str, ...]] = {"Car": ("Van",), "Pedestrian": ("Person_sitting",)}
GRID_POINTS = 101  # recall and confidence grids of the curves (COCO's 101 recall points)
_KITTI_SAMPLE_POINTS = 41


def kept(scores: Any, conf: float) -> Any:
    """Which detections a confidence keeps: score >= conf, as float64 says (numpy, torch or
    pandas alike). The one rule of predict, serve, evaluate's P/R/F1 and curves, the report's
    galleries and the ONNX note, so `predict --conf c` returns the boxes evaluate counts at c
    (its best-F1 confidence is a detection's own score, which must stay in)."""
    if isinstance(scores, torch.Tensor) and scores.dtype != torch.float64:
        # torch compares a float32 tensor with conf rounded to float32, and 0.7 rounds down
        # (0.69999999), which kept a score float64 puts under 0.7; the least float32 at or
        # over conf gives float64's verdict with no float64 on the device (MPS has none)
        at_least = np.float32(conf)
        if float(at_least) < conf:
            at_least = np.nextafter(at_least, np.float32(np.inf))
        return scores.float() >= float(at_least)
    return scores >= conf


def scored_at_least(preds: Sequence[Mapping[str, Any]], conf: float) -> list[dict[str, Any]]:
    """Each image's detections that `kept` keeps at `conf` (boxes, scores and labels alike,
    other keys as they are): mAP counts detections down to `detect.val_conf` while evaluate
    keeps them down to the lower of it and `detect.conf`, so P/R/F1 at conf count every box
    `predict --conf` returns."""
    out = []
    for p in preds:
        keep = np.asarray(kept(_array(p["scores"]).reshape(-1), conf), dtype=bool)
        labels = p["labels"]
        labels = labels[torch.from_numpy(keep)] if isinstance(labels, torch.Tensor) else [lab for lab, k in zip(labels, keep) if k]
        out.append({**p, "boxes": _array(p["boxes"]).reshape(-1, 4)[keep], "scores": _array(p["scores"]).reshape(-1)[keep], "labels": labels})
    return out


def score_text(score: float) -> str:
    """A detection's float32 score as predictions.csv writes it: the shortest decimal that reads
    back as the same float32 (0.499996, 0.7 for float32 0.7), so `read_scores` gives the very
    score evaluate counted and `kept` decides alike. Five decimals wrote 0.499996 as 0.50000,
    which the report's galleries drew at conf 0.5 while evaluate's figures did not count it."""
    return np.format_float_positional(np.float32(score), unique=True, trim="0")


def read_scores(scores: Any) -> np.ndarray:
    """Scores read from predictions.csv (text or numbers) as the float32 values `score_text`
    wrote, in float64 for `kept`: the report filters them by the rule evaluate counted by."""
    return np.asarray(scores, dtype=np.float64).astype(np.float32).astype(np.float64)


def _array(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _or_none(v: float) -> float | None:
    """NaN is not JSON: an undefined metric is written as null."""
    v = float(v)
    return None if math.isnan(v) else v


@dataclass
class _Image:
    """One image, labels as class ids: -1 for a target outside `class_names`."""

    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_ids: np.ndarray
    gt_boxes: np.ndarray
    gt_ids: np.ndarray
    gt_names: list[str]
    gt_ignore: np.ndarray
    gt_truncated: np.ndarray
    gt_occluded: np.ndarray

    def agnostic_regions(self) -> np.ndarray:
        """Boxes that are ignore regions for every class (KITTI DontCare)."""
        return self.gt_boxes[(self.gt_ids < 0) & self.gt_ignore]


def _names(labels: Any, class_names: Sequence[str]) -> list[str]:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().tolist()
    out = []
    for lab in list(labels):
        if isinstance(lab, (int, np.integer)):
            if not 0 <= lab < len(class_names):
                raise ValueError(f"class id {lab} is outside the {len(class_names)} evaluated classes")
            out.append(class_names[int(lab)])
        else:
            out.append(str(lab))
    return out


def _prepare(
    preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]], class_names: Sequence[str]
) -> list[_Image]:
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} prediction entries for {len(targets)} images; give one per image")
    ids = {c: i for i, c in enumerate(class_names)}
    images = []
    for p, t in zip(preds, targets):
        det_names = _names(p["labels"], class_names)
        unknown = [n for n in det_names if n not in ids]
        if unknown:
            raise ValueError(f"predicted class {unknown[0]!r} is not one of the evaluated classes")
        gt_names = _names(t["labels"], class_names)
        m = len(gt_names)
        images.append(
            _Image(
                det_boxes=_array(p["boxes"]).reshape(-1, 4),
                det_scores=_array(p["scores"]).reshape(-1),
                det_ids=np.array([ids[n] for n in det_names], dtype=np.int64),
                gt_boxes=_array(t["boxes"]).reshape(-1, 4),
                gt_ids=np.array([ids.get(n, -1) for n in gt_names], dtype=np.int64),
                gt_names=gt_names,
                gt_ignore=_array(t.get("ignore", np.zeros(m)), bool).reshape(-1),
                gt_truncated=np.nan_to_num(_array(t.get("truncated", np.zeros(m))).reshape(-1)),
                gt_occluded=np.nan_to_num(_array(t.get("occluded", np.zeros(m))).reshape(-1)),
            )
        )
    return images


def _overlaps(a: np.ndarray, b: np.ndarray, over_a: bool = False) -> np.ndarray:
    """IoU of boxes a (N, 4) with b (M, 4), or intersection over a's area when `over_a`."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    if over_a:
        denom = np.broadcast_to(area_a, inter.shape)
    else:
        area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
        denom = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, inter / denom, 0.0)


# ---------------------------------------------------------------- COCO mAP


def _coco_inputs(
    images: list[_Image], n_classes: int
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """torchmetrics' inputs: ignore regions as iscrowd targets; one for every class when
    they belong to none."""
    preds, targets = [], []
    for im in images:
        preds.append(
            {
                "boxes": torch.as_tensor(im.det_boxes, dtype=torch.float64),
                "scores": torch.as_tensor(im.det_scores, dtype=torch.float64),
                "labels": torch.as_tensor(im.det_ids, dtype=torch.int64),
            }
        )
        own = im.gt_ids >= 0
        regions = im.agnostic_regions()
        boxes = np.concatenate([im.gt_boxes[own], np.repeat(regions, n_classes, axis=0)])
        labels = np.concatenate([im.gt_ids[own], np.tile(np.arange(n_classes), len(regions))])
        crowd = np.concatenate([im.gt_ignore[own], np.ones(len(regions) * n_classes, bool)])
        targets.append(
            {
                "boxes": torch.as_tensor(boxes.reshape(-1, 4), dtype=torch.float64),
                "labels": torch.as_tensor(labels, dtype=torch.int64),
                "iscrowd": torch.as_tensor(crowd, dtype=torch.int64),
            }
        )
    return preds, targets


def _class_ap(precision: np.ndarray, k: int, thresholds: slice) -> float | None:
    """Mean precision of class index k over IoU thresholds and recall points (area all,
    most detections), as COCOeval.summarize averages it; None without ground truth."""
    values = precision[thresholds, :, k, 0, -1]
    values = values[values > -1]
    return float(values.mean()) if values.size else None


# COCOeval's own IoU and recall thresholds (float64). torchmetrics' defaults come from a
# float32 torch.linspace, so recall 0.6 became 0.6000000238 and a class whose recall is
# exactly 3/5 lost that recall point (AP50 0.79703 where pycocotools says 81/101 = 0.80198)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, GRID_POINTS).tolist()


def coco_metric(max_dets: int = 100, **kwargs: Any) -> Any:
    """torchmetrics' MeanAveragePrecision (faster-coco-eval, xyxy boxes) counting up to
    `max_dets` detections per image at COCOeval's thresholds: the one builder of validation's
    and evaluate's mAP, so both cut the same detections (torchmetrics' own default is 100,
    `detect.max_det` 300)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        iou_thresholds=IOU_THRESHOLDS,
        rec_thresholds=RECALL_THRESHOLDS,
        max_detection_thresholds=[1, 10, max_dets],
        backend="faster_coco_eval",
        **kwargs,
    )
    metric.warn_on_many_detections = False
    return metric


def coco_map(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO box mAP through torchmetrics (faster-coco-eval backend): mAP@0.5, mAP@0.5:0.95,
    mAP@0.75, by object size, mean recall, and AP@0.5 and AP@0.5:0.95 per class."""
    images = _prepare(preds, targets, class_names)
    metric = coco_metric(max_dets, extended_summary=True)
    tm_preds, tm_targets = _coco_inputs(images, len(class_names))
    metric.update(tm_preds, tm_targets)
    r = metric.compute()

    def value(key: str) -> float | None:
        v = float(r[key])
        return None if v < 0 else v

    per_class: dict[str, dict[str, float | None]] = {c: {"ap50": None, "ap50_95": None} for c in class_names}
    precision = r.get("precision")
    if isinstance(precision, torch.Tensor) and precision.ndim == 5:
        p = precision.numpy()
        for k, cid in enumerate(torch.atleast_1d(r["classes"]).tolist()):  # one class comes back 0-d
            per_class[class_names[cid]] = {
                "ap50": _class_ap(p, k, slice(0, 1)),
                "ap50_95": _class_ap(p, k, slice(None)),
            }
    return {
        "backend": "torchmetrics MeanAveragePrecision (faster-coco-eval)",
        "max_dets": max_dets,
        "map50": value("map_50"),
        "map50_95": value("map"),
        "map75": value("map_75"),
        "map_small": value("map_small"),
        "map_medium": value("map_medium"),
        "map_large": value("map_large"),
        f"mar_{max_dets}": value(f"mar_{max_dets}"),
        "per_class": per_class,
    }


# ---------------------------------------------------------------- greedy matcher, P/R/F1


def _match_image(im: _Image, k: int, iou: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, true-positive flags) of class k's detections in one image, detections in
    ignore regions removed, and the number of class k truths."""
    det = np.flatnonzero(im.det_ids == k)
    det = det[np.argsort(-im.det_scores[det], kind="mergesort")]
    truth = (im.gt_ids == k) & ~im.gt_ignore
    regions = np.concatenate([im.gt_boxes[(im.gt_ids == k) & im.gt_ignore], im.agnostic_regions()])
    ious = _overlaps(im.det_boxes[det], im.gt_boxes[truth])
    in_region = (_overlaps(im.det_boxes[det], regions, over_a=True) >= iou).any(axis=1)
    matched = np.zeros(ious.shape[1], bool)
    keep = np.ones(len(det), bool)
    tp = np.zeros(len(det), bool)
    for i in range(len(det)):
        free = np.where(matched, -1.0, ious[i])
        best = int(np.argmax(free)) if free.size else -1
        if best >= 0 and free[best] >= iou:
            matched[best] = True
            tp[i] = True
        elif in_region[i]:
            keep[i] = False
    return im.det_scores[det][keep], tp[keep], int(truth.sum())


@dataclass
class _Ranked:
    """One class's detections over all images, by falling score: true-positive flags, and
    how many truths there are."""

    scores: np.ndarray
    tp: np.ndarray
    n_truth: int

    @staticmethod
    def of(scores: list[np.ndarray], tp: list[np.ndarray], n_truth: int) -> _Ranked:
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        all_tp = np.concatenate(tp) if tp else np.zeros(0, bool)
        order = np.argsort(-all_scores, kind="mergesort")  # ties keep image order, as COCOeval
        return _Ranked(all_scores[order], all_tp[order], n_truth)


def _match_all(images: list[_Image], n_classes: int, iou: float) -> list[_Ranked]:
    scores: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    tp: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    n_truth = np.zeros(n_classes, np.int64)
    for im in images:
        present = np.union1d(im.det_ids, im.gt_ids[(im.gt_ids >= 0) & ~im.gt_ignore])
        for k in present.tolist():
            s, t, n = _match_image(im, k, iou)
            scores[k].append(s)
            tp[k].append(t)
            n_truth[k] += n
    return [_Ranked.of(scores[k], tp[k], int(n_truth[k])) for k in range(n_classes)]


def _prf(tp: int, fp: int, n_truth: int) -> dict[str, Any]:
    fn = n_truth - tp
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / n_truth if n_truth else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None,
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
    }


def _at(ranked: list[_Ranked], class_names: Sequence[str], confidence: float) -> dict[str, Any]:
    per_class = {}
    total = np.zeros(3, np.int64)
    for name, r in zip(class_names, ranked):
        tp = r.tp[kept(r.scores, confidence)]
        counts = np.array([tp.sum(), (~tp).sum(), r.n_truth])
        per_class[name] = _prf(*counts.tolist())
        total += counts
    return {"confidence": float(confidence), "all": _prf(*total.tolist()), "per_class": per_class}


def _best_confidence(pooled: _Ranked) -> float | None:
    """The score threshold with the highest F1 over all classes pooled (ties: the higher)."""
    if pooled.scores.size == 0:
        return None
    ctp = np.cumsum(pooled.tp)
    cfp = np.cumsum(~pooled.tp)
    # a threshold keeps every detection of equal score, so only the last of a tie counts
    last = np.r_[pooled.scores[1:] != pooled.scores[:-1], True]
    f1 = np.where(last, 2 * ctp / (ctp + cfp + pooled.n_truth), -1.0)
    return float(pooled.scores[int(np.argmax(f1))])


def _pr_curve(r: _Ranked) -> list[float | None]:
    """Precision at 101 recall points, made monotone (COCO's interpolation); 0 where the
    recall is never reached, all None without truths."""
    if r.n_truth == 0:
        return [None] * GRID_POINTS
    ctp = np.cumsum(r.tp)
    precision = ctp / np.arange(1, len(ctp) + 1)
    recall = ctp / r.n_truth
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    grid = np.linspace(0, 1, GRID_POINTS)
    idx = np.searchsorted(recall, grid, side="left")
    return [float(precision[i]) if i < len(precision) else 0.0 for i in idx]


def _confidence_curves(r: _Ranked) -> dict[str, list[float | None]]:
    """Precision, recall and F1 keeping the detections scored at least c, for each c of
    the confidence grid; None where undefined (no detection kept, no truth)."""
    grid = np.linspace(0, 1, GRID_POINTS)
    n_kept = np.array([np.count_nonzero(kept(r.scores, c)) for c in grid])  # scores fall: the first n_kept
    ctp = np.r_[0, np.cumsum(r.tp)][n_kept]
    precision = np.where(n_kept > 0, ctp / np.maximum(n_kept, 1), np.nan)
    recall = ctp / r.n_truth if r.n_truth else np.full(len(grid), np.nan)
    f1 = np.where(n_kept + r.n_truth > 0, 2 * ctp / np.maximum(n_kept + r.n_truth, 1), np.nan)
    return {
        name: [_or_none(v) for v in values]
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1))
    }


def precision_recall(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    confidence: float = 0.5,
    iou: float = 0.5,
) -> dict[str, Any]:
    """P/R/F1 (per class and all classes pooled) at `confidence` and at the confidence with
    the best pooled F1, plus curve arrays: precision at 101 recall points per class, and
    precision, recall and F1 at 101 confidences (0, 0.01, ..., 1) per class and pooled."""
    images = _prepare(preds, targets, class_names)
    ranked = _match_all(images, len(class_names), iou)
    pooled = _Ranked.of([r.scores for r in ranked], [r.tp for r in ranked], sum(r.n_truth for r in ranked))
    best = _best_confidence(pooled)
    by_confidence = {name: _confidence_curves(r) for name, r in zip(class_names, ranked)}
    by_confidence["all"] = _confidence_curves(pooled)
    grid = np.linspace(0, 1, GRID_POINTS).round(4).tolist()
    return {
        "iou": float(iou),
        "at_confidence": _at(ranked, class_names, confidence),
        "at_best_f1": _at(ranked, class_names, best) if best is not None else None,
        "curves": {
            "recall_grid": grid,
            "precision_at_recall": {name: _pr_curve(r) for name, r in zip(class_names, ranked)},
            "confidence_grid": grid,
            "by_confidence": by_confidence,
        },
    }


# ---------------------------------------------------------------- KITTI


@dataclass(frozen=True)
class KittiSpec:
    """KITTI's evaluation settings (devkit defaults); `min_iou` per class, `default_iou`
    for classes it does not name."""

    min_iou: Mapping[str, float] = field(
        default_factory=lambda: {
            "Car": 0.7,
            "Van": 0.7,
            "Truck": 0.7,
            "Pedestrian": 0.5,
            "Person_sitting": 0.5,
            "Cyclist": 0.5,
        }
    )
    default_iou: float = 0.5
    neighbours: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(KITTI_NEIGHBOURS))
    min_height: tuple[float, float, float] = (40, 25, 25)
    max_occlusion: tuple[float, float, float] = (0, 1, 2)
    max_truncation: tuple[float, float, float] = (0.15, 0.3, 0.5)

    def iou_for(self, name: str) -> float:
        lowered = {k.lower(): v for k, v in self.min_iou.items()}
        return lowered.get(name.lower(), self.default_iou)


def _kitti_roles(im: _Image, k: int, name: str, d: int, spec: KittiSpec) -> tuple[np.ndarray, np.ndarray]:
    """The devkit's cleanData for class k at difficulty d. Truths: 0 counted, 1 ignored
    (neighbour class, own ignore flag, or outside the difficulty), -1 another class.
    Detections: 1 when lower than the difficulty's minimum height (whatever their class, as
    the devkit does, which stores the height in an int), else 0 for class k, -1 otherwise."""
    lname = name.lower()
    near_names = {n.lower() for n in spec.neighbours.get(name, ())}
    names = [n.lower() for n in im.gt_names]
    same = np.array([n == lname for n in names], bool)
    near = np.array([n in near_names for n in names], bool)
    own = same & ~im.gt_ignore
    height = im.gt_boxes[:, 3] - im.gt_boxes[:, 1]
    outside = (
        (im.gt_occluded > spec.max_occlusion[d])
        | (im.gt_truncated > spec.max_truncation[d])
        | (height < spec.min_height[d])
    )
    gt_role = np.full(len(names), -1)
    gt_role[near | (same & im.gt_ignore) | (own & outside)] = 1
    gt_role[own & ~outside] = 0
    det_height = np.trunc(np.abs(im.det_boxes[:, 3] - im.det_boxes[:, 1]))
    det_role = np.where(det_height < spec.min_height[d], 1, np.where(im.det_ids == k, 0, -1))
    return gt_role, det_role


def _kitti_tp_scores(
    ov: np.ndarray, scores: np.ndarray, gt_role: np.ndarray, det_role: np.ndarray, min_iou: float
) -> list[float]:
    """The devkit's first pass (computeStatistics without FP): each truth in turn takes the
    highest-scoring free detection above the IoU; scores of counted matches."""
    assigned = np.zeros(len(scores), bool)
    out = []
    for i in np.flatnonzero(gt_role != -1):
        free = (det_role != -1) & ~assigned & (ov[:, i] > min_iou)
        if not free.any():
            continue
        j = int(np.argmax(np.where(free, scores, -np.inf)))
        assigned[j] = True
        if gt_role[i] == 0 and det_role[j] != 1:
            out.append(float(scores[j]))
    return out


def _kitti_thresholds(scores: list[float], n_truth: int) -> np.ndarray:
    """The devkit's getThresholds: scores at which recall passes 0, 1/40, 2/40, ..."""
    v = sorted(scores, reverse=True)
    out = []
    current = 0.0
    for i, score in enumerate(v):
        left = (i + 1) / n_truth
        right = (i + 2) / n_truth if i < len(v) - 1 else left
        if (right - current) < (current - left) and i < len(v) - 1:
            continue
        out.append(score)
        current += 1.0 / (_KITTI_SAMPLE_POINTS - 1)
    return np.array(out[:_KITTI_SAMPLE_POINTS])


def _kitti_counts(
    ov: np.ndarray,
    stuff: np.ndarray,
    scores: np.ndarray,
    gt_role: np.ndarray,
    det_role: np.ndarray,
    min_iou: float,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The devkit's second pass (computeStatistics with FP) at every threshold at once:
    each truth takes the free detection of largest IoU (a too-small one only when no other
    is left); unassigned counted detections are FP unless inside a DontCare region."""
    active = scores[None, :] >= thresholds[:, None]
    assigned = np.zeros_like(active)
    rows = np.arange(len(thresholds))
    tp = np.zeros(len(thresholds), np.int64)
    for i in np.flatnonzero(gt_role != -1):
        free = active & ~assigned & ((det_role != -1) & (ov[:, i] > min_iou))[None, :]
        counted = free & (det_role == 0)[None, :]
        small = free & (det_role == 1)[None, :]
        has_counted = counted.any(axis=1)
        found = has_counted | small.any(axis=1)
        j = np.where(
            has_counted,
            np.argmax(np.where(counted, ov[:, i][None, :], -1.0), axis=1),
            np.argmax(small, axis=1),
        )
        assigned[rows[found], j[found]] = True
        if gt_role[i] == 0:
            tp += found & (det_role[j] == 0)
    loose = active & ~assigned & (det_role == 0)[None, :]
    fp = loose.sum(axis=1) - (loose & (stuff > min_iou)[None, :]).sum(axis=1)
    return tp, fp


def kitti_ap(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    spec: KittiSpec | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """KITTI 2D detection AP per class and difficulty (easy, moderate, hard), computed as
    the official devkit does, with AP over 40 recall positions (AP|R40); the devkit needs
    40 or more counted truths to reach 1 (see the result's `note`). `classes` picks
    which of `class_names` to evaluate (all by default; KITTI's benchmark reports Car,
    Pedestrian and Cyclist)."""
    spec = spec or KittiSpec()
    unknown = [c for c in classes or () if c not in class_names]
    if unknown:
        raise ValueError(f"KITTI class {unknown[0]!r} is not one of the classes {list(class_names)}")
    images = _prepare(preds, targets, class_names)
    overlaps = [_overlaps(im.det_boxes, im.gt_boxes) for im in images]
    # DontCare-like regions only: a neighbour kept as an ignore row (Van) is a truth the
    # devkit ignores for its own class (Car) and counts as another class for the rest
    near = {n.lower() for names in spec.neighbours.values() for n in names}
    stuff = []
    for im in images:
        named = np.array([n.lower() not in near for n in im.gt_names], bool).reshape(-1)
        regions = im.gt_boxes[(im.gt_ids < 0) & im.gt_ignore & named]
        ioa = _overlaps(im.det_boxes, regions, over_a=True)
        stuff.append(ioa.max(axis=1) if regions.size else np.zeros(len(im.det_boxes)))
    per_class: dict[str, Any] = {}
    for name in classes or class_names:
        k = list(class_names).index(name)
        min_iou = spec.iou_for(name)
        result: dict[str, Any] = {"ground_truth": {}}
        for d, level in enumerate(DIFFICULTIES):
            roles = [_kitti_roles(im, k, name, d, spec) for im in images]
            n_truth = int(sum((g == 0).sum() for g, _ in roles))
            result["ground_truth"][level] = n_truth
            if n_truth == 0:
                result[level] = None
                continue
            scores = [
                s
                for im, ov, (g, r) in zip(images, overlaps, roles)
                for s in _kitti_tp_scores(ov, im.det_scores, g, r, min_iou)
            ]
            thresholds = _kitti_thresholds(scores, n_truth)
            tp = np.zeros(len(thresholds), np.int64)
            fp = np.zeros(len(thresholds), np.int64)
            for im, ov, st, (g, r) in zip(images, overlaps, stuff, roles):
                if not (r == 0).any():
                    continue  # TPs and FPs are both counted detections of the class
                t, f = _kitti_counts(ov, st, im.det_scores, g, r, min_iou, thresholds)
                tp += t
                fp += f
            precision = np.zeros(_KITTI_SAMPLE_POINTS)
            with np.errstate(divide="ignore", invalid="ignore"):
                precision[: len(thresholds)] = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            precision = np.maximum.accumulate(precision[::-1])[::-1]
            result[level] = float(precision[1:].sum() / (_KITTI_SAMPLE_POINTS - 1))
        per_class[name] = result
    means = {}
    for level in DIFFICULTIES:
        values = [r[level] for r in per_class.values() if r[level] is not None]
        means[level] = float(np.mean(values)) if values else None
    few = [c for c, r in per_class.items() if any(0 < n < 40 for n in r["ground_truth"].values())]
    return {
        "protocol": "KITTI object devkit 2D AP, 40 recall positions (AP|R40, KITTI's protocol since 2019)",
        "note": (
            f"{', '.join(few)}: under 40 counted truths in some difficulty; the devkit takes one recall "
            "position per true positive there, so even a perfect detector scores (n - 1) / 40"
            if few
            else ""
        ),
        "min_iou": {c: spec.iou_for(c) for c in classes or class_names},
        "difficulties": {
            level: {
                "min_height": spec.min_height[d],
                "max_occlusion": spec.max_occlusion[d],
                "max_truncation": spec.max_truncation[d],
            }
            for d, level in enumerate(DIFFICULTIES)
        },
        "per_class": per_class,
        "mean": means,
    }


# ---------------------------------------------------------------- everything


def detection_report(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    confidence: float = 0.5,
    iou: float = 0.5,
    max_dets: int = 100,
    kitti: KittiSpec | bool = False,
    map_conf: float = 0.0,
) -> dict[str, Any]:
    """Every detection figure in one JSON-serialisable dict: `coco` (mAP), P/R/F1 at
    `confidence` and at the best-F1 confidence with curve data, and `kitti` when asked.
    mAP and KITTI AP count the detections scored at least `map_conf` (`detect.val_conf`),
    P/R/F1 every one given."""
    out: dict[str, Any] = {"classes": list(class_names), "images": len(targets)}
    ranked = scored_at_least(preds, map_conf) if map_conf > 0 else preds
    out["coco"] = coco_map(ranked, targets, class_names, max_dets)
    out.update(precision_recall(preds, targets, class_names, confidence, iou))
    if kitti:
        out["kitti"] = kitti_ap(ranked, targets, class_names, kitti if isinstance(kitti, KittiSpec) else None)
    return out
