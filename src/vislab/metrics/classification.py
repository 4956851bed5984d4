"""The classification report: every number a user asks for after training, in one JSON dict.

Standard metrics come from torchmetrics so they match what the training loop logs; only the
Global Average Precision and the "which classes / pairs / images" lists are computed here.
The dict is plain JSON (floats, ints, strings, lists) so `metrics.json` is the report itself.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

ECE_BINS = 15
TOP_K = 5
UNKNOWN = -1  # label id of an item without ground truth (counts in GAP's ranking only)


def global_average_precision(pred: np.ndarray, confidence: np.ndarray, y_true: np.ndarray) -> float:
    """GAP (Kaggle landmark recognition): micro AP over predictions ranked by confidence.

    GAP = (1/M) * sum_i P(i) * rel(i), where predictions are sorted by descending confidence,
    P(i) is the precision over the first i predictions, rel(i) is 1 when prediction i is
    correct, and M is the number of items that have a ground truth (y_true != -1). Items
    without ground truth still take a rank, so confident guesses on them cost precision.
    """
    pred = np.asarray(pred)
    confidence = np.asarray(confidence, dtype=np.float64)
    y_true = np.asarray(y_true)
    m = int((y_true != UNKNOWN).sum())
    if m == 0:
        return float("nan")
    order = np.argsort(-confidence, kind="stable")
    rel = (pred[order] == y_true[order]) & (y_true[order] != UNKNOWN)
    precision_at_i = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision_at_i * rel).sum() / m)


def _or_none(v: float) -> float | None:
    """NaN is not JSON: an undefined metric is written as null."""
    return None if v != v else v


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().cpu().reshape(-1).tolist()]


def _check_inputs(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but y_true has {y.shape[0]} labels")
    if p.shape[1] != len(classes):
        raise ValueError(f"probs has {p.shape[1]} columns but {len(classes)} class names were given")
    if y.size and (y.max(initial=UNKNOWN) >= len(classes) or y.min(initial=0) < UNKNOWN):
        raise ValueError(f"y_true holds ids outside 0..{len(classes) - 1} (and -1 for unknown)")
    return y, p


def classification_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    losses: np.ndarray | None = None,
    paths: Sequence[str] | None = None,
    top_n: int = 5,
    top_images: int = 16,
) -> dict[str, Any]:
    """Everything about a classifier's predictions on one labelled set, as a JSON-ready dict.

    `y_true` holds class ids (-1 = no ground truth: such rows count only in GAP), `probs` the
    softmax rows in `classes` order. `losses` (per item) default to the cross-entropy of the
    probabilities; `paths` name the items in the highest-loss list. `top_n` sizes the best /
    worst classes and confused-pairs lists, `top_images` the highest-loss list.
    """
    y, p = _check_inputs(y_true, probs, classes)
    n_classes = len(classes)
    finite = np.isfinite(p).all(axis=1)
    p = np.where(np.isfinite(p), p, 0.0).astype(np.float32)
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    conf = p.max(axis=1) if len(p) else np.zeros(0, dtype=np.float32)
    labelled = y != UNKNOWN
    yl, pl = y[labelled], p[labelled]

    report: dict[str, Any] = {
        "num_samples": int(len(y)),
        "num_labelled": int(labelled.sum()),
        "num_classes": n_classes,
        "classes": list(classes),
        "nonfinite_predictions": int((~finite).sum()),
        "gap": _or_none(global_average_precision(pred, conf, y)),
    }
    if len(yl) == 0:
        report.update(accuracy=None, mca=None, per_class=[], confusion_matrix=[], confusion_matrix_normalized=[])
        return report

    pt, yt = torch.from_numpy(pl), torch.from_numpy(yl)
    k = min(TOP_K, n_classes)
    common = dict(num_classes=n_classes, validate_args=False)
    report["accuracy"] = float(multiclass_accuracy(pt, yt, average="micro", **common))
    report["top_k"] = k
    report["top5_accuracy"] = float(multiclass_accuracy(pt, yt, average="micro", top_k=k, **common))

    per_acc = _floats(multiclass_accuracy(pt, yt, average="none", **common))
    per_p = _floats(multiclass_precision(pt, yt, average="none", **common))
    per_r = _floats(multiclass_recall(pt, yt, average="none", **common))
    per_f1 = _floats(multiclass_f1_score(pt, yt, average="none", **common))
    support = np.bincount(yl, minlength=n_classes)
    # mean class accuracy over classes that occur (= balanced accuracy); the macro averages
    # below are scikit-learn's and torchmetrics': over the classes in the truth or the
    # predictions, a class only predicted counting with recall 0 (so they differ when the
    # model predicts classes the set lacks); both counts are recorded for the report to say
    present = support > 0
    report["mca"] = float(np.mean(np.asarray(per_acc)[present]))
    report["classes_present"] = int(present.sum())
    report["macro_classes"] = int((present | (np.bincount(pl.argmax(axis=1), minlength=n_classes) > 0)).sum())
    for avg in ("macro", "weighted"):
        report[f"precision_{avg}"] = float(multiclass_precision(pt, yt, average=avg, **common))
        report[f"recall_{avg}"] = float(multiclass_recall(pt, yt, average=avg, **common))
        report[f"f1_{avg}"] = float(multiclass_f1_score(pt, yt, average=avg, **common))
    report["ece"] = float(multiclass_calibration_error(pt, yt, n_bins=ECE_BINS, norm="l1", **common))
    report["ece_bins"] = ECE_BINS

    cm = multiclass_confusion_matrix(pt, yt, **common).cpu().numpy().astype(np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    cm_norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    report["confusion_matrix"] = cm.tolist()
    report["confusion_matrix_normalized"] = [[round(float(v), 6) for v in row] for row in cm_norm]

    report["per_class"] = [
        {
            "class": classes[i],
            "support": int(support[i]),
            "accuracy": per_acc[i] if present[i] else None,
            "precision": per_p[i],
            "recall": per_r[i] if present[i] else None,
            "f1": per_f1[i],
        }
        for i in range(n_classes)
    ]
    report.update(_class_lists(per_acc, support, classes, top_n))
    report["confused_pairs"] = _confused_pairs(cm, classes, top_n)
    report["highest_loss"] = _highest_loss(y, p, pred, conf, losses, paths, classes, top_images)
    return report


def _class_lists(per_acc: list[float], support: np.ndarray, classes: Sequence[str], top_n: int) -> dict[str, Any]:
    ids = [i for i in range(len(classes)) if support[i] > 0]
    # best: highest accuracy, ties to the larger class; worst: lowest, ties to the larger class
    best = sorted(ids, key=lambda i: (-per_acc[i], -support[i], i))[:top_n]
    worst = sorted(ids, key=lambda i: (per_acc[i], -support[i], i))[:top_n]

    def row(i: int) -> dict[str, Any]:
        return {"class": classes[i], "accuracy": per_acc[i], "support": int(support[i])}

    return {"best_classes": [row(i) for i in best], "worst_classes": [row(i) for i in worst]}


def _confused_pairs(cm: np.ndarray, classes: Sequence[str], top_n: int) -> list[dict[str, Any]]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top_n]
    pairs = []
    for idx in flat:
        t, q = np.unravel_index(idx, off.shape)
        if off[t, q] == 0:
            break
        row_total = int(cm[t].sum())
        pairs.append(
            {
                "true": classes[t],
                "pred": classes[q],
                "count": int(off[t, q]),
                "fraction": float(off[t, q] / row_total) if row_total else 0.0,
            }
        )
    return pairs


def _highest_loss(
    y: np.ndarray,
    p: np.ndarray,
    pred: np.ndarray,
    conf: np.ndarray,
    losses: np.ndarray | None,
    paths: Sequence[str] | None,
    classes: Sequence[str],
    n: int,
) -> list[dict[str, Any]]:
    labelled = np.flatnonzero(y != UNKNOWN)
    if losses is None:
        p_true = p[labelled, y[labelled]].astype(np.float64)
        loss = -np.log(np.clip(p_true, 1e-12, 1.0))
    else:
        loss = np.asarray(losses, dtype=np.float64).reshape(-1)[labelled]
    loss = np.where(np.isfinite(loss), loss, np.inf)
    order = labelled[np.argsort(-loss, kind="stable")][:n]
    by_index = dict(zip(labelled.tolist(), loss.tolist()))
    out = []
    for i in order.tolist():
        out.append(
            {
                "index": int(i),
                "path": str(paths[i]) if paths is not None else None,
                "true": classes[y[i]],
                "pred": classes[pred[i]],
                "confidence": float(conf[i]),
                "loss": float(by_index[i]) if np.isfinite(by_index[i]) else None,
            }
        )
    return out
