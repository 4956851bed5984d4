"""Crop-detection figures checked by hand: IoU, crop factor and its error, flag and patch
accuracy, the baseline from training targets, and the batch accumulator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vislab.metrics.crops import Baseline, CropsEvaluation, crop_factor, crop_factor_error, crops_figures, rect_iou

FULL = (0.0, 1.0, 0.0, 1.0)


def test_rect_iou_by_hand() -> None:
    pred = np.array([FULL, (0, 0.5, 0, 1), (0.6, 1, 0, 1), (-0.2, 1.2, 0, 1.1), (0.7, 0.3, 0, 1), (0.25, 0.75, 0.25, 0.75)])
    true = np.array([FULL, FULL, (0, 0.5, 0, 1), FULL, FULL, (0.5, 1, 0.5, 1)])
    # 1; half of the frame; disjoint; clipped to the frame; empty (x2 < x1);
    # a quarter-square overlapping a quarter-square by 1/16: 0.0625 / (0.25 + 0.25 - 0.0625)
    assert rect_iou(pred, true) == pytest.approx([1.0, 0.5, 0.0, 1.0, 0.0, 0.0625 / 0.4375])


def test_crop_factor_and_error_by_hand() -> None:
    assert crop_factor(np.array([FULL, (0, 0.5, 0, 0.5), (0, 0.64, 0, 1), (0.5, 0.2, 0, 1)])) == pytest.approx([1, 0.5, 0.8, 0])
    # truth s = 0.5; prediction 0.6 x 0.6 -> s 0.6: error 0.2; an uncropped guess: error 1.0
    err = crop_factor_error(np.array([(0.4, 1, 0, 0.6), FULL]), np.array([(0.5, 1, 0, 0.5), (0.5, 1, 0, 0.5)]))
    assert err == pytest.approx([0.2, 1.0])


def test_baseline_from_training_targets_by_hand() -> None:
    rects = np.array([FULL, FULL, (0.5, 1, 0, 0.5)])
    base = Baseline.from_targets(rects, np.array([0, 0, 1]), np.array([[0, 1], [0, 1], [1, 1]]))
    assert base.rect == pytest.approx((1 / 6, 1.0, 0.0, 5 / 6))
    assert base.crop_rate == pytest.approx(1 / 3) and base.cell == 1
    assert json.loads(json.dumps(base.to_dict()))["cell"] == 1


def _eval_set() -> dict[str, np.ndarray]:
    # 4 images, 2 patches each (a 2-cell grid); images 2 and 3 cropped
    return {
        "rect_true": np.array([FULL, FULL, (0, 0.5, 0, 0.5), (0.5, 1, 0.5, 1)]),
        "cropped": np.array([0, 0, 1, 1]),
        "cells_true": np.array([[0, 1], [0, 1], [0, 0], [1, 1]]),
    }


def test_figures_of_a_model_by_hand() -> None:
    t = _eval_set()
    rect_pred = np.array([FULL, (0, 1, 0, 0.5), (0, 0.5, 0, 0.5), (0.5, 1, 0.5, 0.9)])
    flag_prob = np.array([0.1, 0.6, 0.7, 0.9])  # one false alarm, ranking perfect
    cell_pred = np.array([[0, 1], [1, 1], [0, 0], [1, 0]])
    f = crops_figures(rect_pred, flag_prob, cell_pred, t["rect_true"], t["cropped"], t["cells_true"], 2)
    assert f["images"] == 4 and f["cropped"] == 2
    assert f["flag_acc"] == 0.75 and f["flag_auc"] == 1.0
    assert f["patch_acc"] == 6 / 8
    # true cell 0: patches (0,0), (1,0), (2,0), (2,1) -> 3 of 4; cell 1: (0,1), (1,1), (3,0), (3,1) -> 3 of 4
    assert f["patch_acc_per_cell"] == [0.75, 0.75]
    ious = [1.0, 0.5, 1.0, 0.8]
    assert f["iou"] == pytest.approx(np.mean(ious))
    assert f["iou_cropped"] == pytest.approx(0.9) and f["iou_uncropped"] == pytest.approx(0.75)
    # image 3: s = 0.5, predicted sqrt(0.5 * 0.4) = 0.4472 -> error 0.1056
    assert f["crop_factor_error"] == pytest.approx((0 + (0.5 - np.sqrt(0.2)) / 0.5) / 2)
    json.dumps(f)


def test_evaluation_reports_model_and_baseline_in_one_pass() -> None:
    t = _eval_set()
    ev = CropsEvaluation(num_cells=2)
    rect = torch.tensor(np.array([FULL, (0, 1, 0, 0.5), (0, 0.5, 0, 0.5), (0.5, 1, 0.5, 0.9)]), dtype=torch.float32)
    logits = torch.logit(torch.tensor([0.1, 0.6, 0.7, 0.9]))
    cell_logits = torch.nn.functional.one_hot(torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0]]), 2).float()
    for sl in (slice(0, 3), slice(3, 4)):  # two batches
        ev.update(rect[sl], logits[sl], cell_logits[sl], torch.tensor(t["rect_true"][sl]),
                  torch.tensor(t["cropped"][sl]), torch.tensor(t["cells_true"][sl]))
    base = Baseline(rect=(0.2, 1.0, 0.0, 0.8), crop_rate=0.5, cell=1)
    report = ev.report(base)
    assert report["model"]["patch_acc"] == 6 / 8 and report["model"]["flag_auc"] == 1.0
    b = report["baseline"]
    # crop rate 0.5 is no majority: always "not cropped" -> 2 of 4; constant score: AUC 0.5
    assert b["flag_acc"] == 0.5 and b["flag_auc"] == 0.5
    assert b["patch_acc"] == 4 / 8 and b["patch_acc_per_cell"] == [0.0, 1.0]
    # the constant rectangle (0.2..1 x 0..0.8, area 0.64, s 0.8) against each truth: the
    # frame (0.64 / 1), and each quarter (overlap 0.3 x 0.5 = 0.15, union 0.64 + 0.25 - 0.15)
    assert b["iou"] == pytest.approx(np.mean([0.64, 0.64, 0.15 / 0.74, 0.15 / 0.74]))
    assert b["crop_factor_error"] == pytest.approx(0.6)
    assert report["chance"]["patch_acc"] == 0.5 and report["baseline_predicts"]["cell"] == 1
    json.dumps(report)


def test_the_baseline_flag_is_the_evaluation_sets_majority_not_the_training_crop_rate() -> None:
    # one whole photo and three crops of it, as `evaluate --crops-per-image 3` makes; the
    # training crop rate 0.49 would say "not cropped" (25%), a constant "cropped" scores 75%
    rects = torch.tensor([FULL, (0, 0.5, 0, 0.5), (0.5, 1, 0, 0.5), (0, 0.5, 0.5, 1)], dtype=torch.float32)
    ev = CropsEvaluation(num_cells=2)
    ev.update(rects, torch.zeros(4), torch.zeros(4, 2, 2), rects, torch.tensor([0.0, 1, 1, 1]), torch.zeros(4, 2, dtype=torch.long))
    report = ev.report(Baseline(rect=FULL, crop_rate=0.49, cell=0))
    assert report["baseline"]["flag_acc"] == 0.75 and report["baseline"]["flag_auc"] == 0.5
    assert report["baseline_predicts"]["flag"] == "cropped" and report["baseline_predicts"]["crop_rate"] == 0.49


def test_one_class_set_has_no_auc() -> None:
    t = _eval_set()
    f = crops_figures(t["rect_true"][:2], np.array([0.2, 0.3]), t["cells_true"][:2], t["rect_true"][:2],
                      t["cropped"][:2], t["cells_true"][:2], 2)
    assert f["flag_auc"] is None and f["crop_factor_error"] is None and f["iou_cropped"] is None


def test_non_finite_outputs_are_counted_and_left_out_of_the_models_figures() -> None:
    """A NaN logit used to stop the report in roc_auc_score (ValueError: Input contains NaN)."""
    ev = CropsEvaluation(num_cells=2)
    rects = torch.tensor([FULL, FULL, FULL, FULL])
    logits = torch.tensor([-3.0, 3.0, float("nan"), 3.0])
    ev.update(rects, logits, torch.zeros(4, 2, 2), rects, torch.tensor([0.0, 1, 0, 1]), torch.zeros(4, 2, dtype=torch.long))
    rect_nan = torch.tensor([[float("inf"), 1.0, 0.0, 1.0]])
    ev.update(rect_nan, torch.tensor([1.0]), torch.zeros(1, 2, 2), torch.tensor([FULL]), torch.tensor([1.0]), torch.zeros(1, 2, dtype=torch.long))
    report = ev.report(Baseline(rect=FULL, crop_rate=0.5, cell=0))
    assert report["nonfinite_predictions"] == 2
    assert report["model"]["images"] == 3 and report["model"]["flag_acc"] == 1.0 and report["model"]["flag_auc"] == 1.0
    assert report["baseline"]["images"] == 5
    json.dumps(report, allow_nan=False)
