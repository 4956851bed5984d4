"""Crop-detection figures, with a trivial baseline computed in the same evaluation.

Definitions (rectangles are (x1, x2, y1, y2) in fractions of the original frame):

- a sample whose model outputs hold a NaN or infinity (a diverged model) is counted
  (`nonfinite_predictions`) and left out of the model's figures, which are over the others.
- flag: crop probability sigmoid(logit); accuracy at 0.5, and ROC AUC (None when the set
  holds one class only).
- patch location: accuracy of the 16-way (columns x rows) cell over all patches (chance
  1/cells), and per TRUE cell (None for a cell no patch came from).
- rectangle IoU with the truth, after clipping the prediction to the frame [0, 1] (the truth
  always lies inside it; a prediction with x2 <= x1 or y2 <= y1 is empty, IoU 0).
- crop factor s of a rectangle: sqrt(width * height) of the clipped rectangle, the side
  scale of a crop that keeps the aspect (the truth's s is the drawn size factor up to
  pixel rounding). Crop-factor error |s_pred - s| / s over the cropped images.

The baseline ignores its input: it always predicts the training targets' mean rectangle and
most frequent cell, and the flag the evaluation set holds most (the best constant flag: with 3
crops per photo, always "cropped" scores 75%, a figure no input-blind guess beats; the training
crop rate, near 0.5, would pick "uncropped" and score 25%). Its score is constant, so its AUC
is 0.5, the threshold-free figure. A model that does not beat it on every figure has learned
nothing about crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def clip_rect(rect: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(rect, dtype=np.float64), 0.0, 1.0)


def rect_iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """IoU per row of N x 4 (x1, x2, y1, y2) rectangles; predictions clipped to the frame."""
    p, t = clip_rect(pred).reshape(-1, 4), np.asarray(true, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(p[:, 1], t[:, 1]) - np.maximum(p[:, 0], t[:, 0]), 0, None)
    ih = np.clip(np.minimum(p[:, 3], t[:, 3]) - np.maximum(p[:, 2], t[:, 2]), 0, None)
    inter = iw * ih
    area_p = np.clip(p[:, 1] - p[:, 0], 0, None) * np.clip(p[:, 3] - p[:, 2], 0, None)
    area_t = (t[:, 1] - t[:, 0]) * (t[:, 3] - t[:, 2])
    union = area_p + area_t - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def crop_factor(rect: np.ndarray) -> np.ndarray:
    """sqrt(width * height) of each clipped rectangle: 1 for the whole frame, s for a crop."""
    r = clip_rect(rect).reshape(-1, 4)
    return np.sqrt(np.clip(r[:, 1] - r[:, 0], 0, None) * np.clip(r[:, 3] - r[:, 2], 0, None))


def crop_factor_error(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """|s_pred - s| / s per rectangle pair."""
    s = crop_factor(true)
    return np.abs(crop_factor(pred) - s) / s


@dataclass(frozen=True)
class Baseline:
    """What a model that ignores its input would predict, from the training targets (its flag
    is the evaluation set's majority: `majority_flag`)."""

    rect: tuple[float, float, float, float]
    crop_rate: float
    cell: int

    @classmethod
    def from_targets(cls, rects: np.ndarray, cropped: np.ndarray, cells: np.ndarray) -> "Baseline":
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        counts = np.bincount(np.asarray(cells, dtype=np.int64).ravel())
        return cls(
            rect=tuple(float(v) for v in rects.mean(0)),  # type: ignore[arg-type]
            crop_rate=float(np.mean(cropped)),
            cell=int(counts.argmax()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"rect": list(self.rect), "crop_rate": self.crop_rate, "cell": self.cell}


def majority_flag(cropped: np.ndarray) -> bool:
    """The best constant flag for a set: cropped when more than half of it is (a tie scores
    the same either way)."""
    cropped = np.asarray(cropped).astype(bool).ravel()
    return bool(cropped.size and cropped.mean() > 0.5)


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def crops_figures(
    rect_pred: np.ndarray, flag_prob: np.ndarray, cell_pred: np.ndarray,
    rect_true: np.ndarray, cropped: np.ndarray, cells_true: np.ndarray, num_cells: int,
) -> dict[str, Any]:
    """Every figure of one predictor on one set (N images, P patches each); plain JSON."""
    cropped = np.asarray(cropped).astype(bool).ravel()
    flag_prob = np.asarray(flag_prob, dtype=np.float64).ravel()
    cells_true = np.asarray(cells_true)
    cells_true = cells_true.reshape(len(cropped), -1 if cells_true.size else 0)  # no samples: none to score
    hit = np.asarray(cell_pred).reshape(cells_true.shape) == cells_true
    iou = rect_iou(rect_pred, rect_true)
    err = crop_factor_error(np.asarray(rect_pred)[cropped], np.asarray(rect_true)[cropped])
    auc = float(roc_auc_score(cropped, flag_prob)) if 0 < cropped.sum() < len(cropped) else None
    return {
        "images": int(len(cropped)),
        "cropped": int(cropped.sum()),
        "flag_acc": _mean((flag_prob > 0.5) == cropped),
        "flag_auc": auc,
        "patch_acc": _mean(hit),
        "patch_acc_per_cell": [_mean(hit[cells_true == c]) for c in range(num_cells)],
        "iou": _mean(iou),
        "iou_cropped": _mean(iou[cropped]),
        "iou_uncropped": _mean(iou[~cropped]),
        "crop_factor_error": _mean(err),
        "crop_factor_error_median": float(np.median(err)) if err.size else None,
    }


_KEYS = ("rect", "flag_prob", "cell_pred", "rect_true", "cropped", "cells_true", "finite")


@dataclass
class CropsEvaluation:
    """Collects a detector's outputs batch by batch, then reports model and baseline figures.

    `update` takes the model's output (rect, flag logits, cell logits) and the batch truth;
    everything is kept as small numpy arrays (21 numbers and 16 labels per image).
    """

    num_cells: int = 16
    _parts: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in _KEYS})

    def update(
        self, rect: torch.Tensor, flag_logit: torch.Tensor, cell_logits: torch.Tensor,
        rect_true: torch.Tensor, cropped: torch.Tensor, cells_true: torch.Tensor,
    ) -> None:
        values = {
            "rect": rect.float(),
            "flag_prob": torch.sigmoid(flag_logit.float()),
            "cell_pred": cell_logits.argmax(-1),
            "rect_true": rect_true.float(),
            "cropped": cropped.float(),
            "cells_true": cells_true,
            "finite": torch.isfinite(rect.float()).flatten(1).all(1) & torch.isfinite(flag_logit.float()).reshape(len(rect), -1).all(1)
            & torch.isfinite(cell_logits.float()).flatten(1).all(1),
        }
        for key, value in values.items():
            self._parts[key].append(value.detach().cpu().numpy())

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in self._parts.items()}

    def report(self, baseline: Baseline) -> dict[str, Any]:
        """{"model": figures, "baseline": figures, "baseline_predicts": ..., "chance": ...,
        "nonfinite_predictions": count}; baseline_predicts holds the training crop_rate for
        reference, and the flag the baseline predicts (the evaluation set's majority). The
        model's figures leave out the samples with non-finite outputs; the baseline's do not."""
        a = self.arrays()
        n = len(a["cropped"])
        truth = (a["rect_true"], a["cropped"], a["cells_true"], self.num_cells)
        flag = majority_flag(a["cropped"])
        ok = a["finite"].astype(bool)
        return {
            "model": crops_figures(a["rect"][ok], a["flag_prob"][ok], a["cell_pred"][ok], a["rect_true"][ok], a["cropped"][ok], a["cells_true"][ok], self.num_cells),
            "baseline": crops_figures(
                np.tile(np.asarray(baseline.rect), (n, 1)),
                np.full(n, float(flag)),
                np.full_like(a["cells_true"], baseline.cell),
                *truth,
            ),
            "baseline_predicts": {**baseline.to_dict(), "flag": "cropped" if flag else "not cropped", "flag_from": "evaluation set majority"},
            "chance": {"patch_acc": 1 / self.num_cells},
            "nonfinite_predictions": int(n - ok.sum()),
        }
