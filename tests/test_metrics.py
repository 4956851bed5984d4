"""The classification report agrees with scikit-learn and with a hand-computed GAP."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from vislab.metrics.classification import classification_report, global_average_precision


def _random_predictions(n: int = 400, c: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += rng.normal(1.0, 1.0, n)  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_report_matches_sklearn(seed: int) -> None:
    y, probs = _random_predictions(seed=seed)
    classes = [f"c{i}" for i in range(probs.shape[1])]
    pred = probs.argmax(1)
    r = classification_report(y, probs, classes)

    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert r["mca"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-6)
    assert r["top5_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y, probs, k=5, labels=range(len(classes))), abs=1e-6
    )
    for avg in ("macro", "weighted"):
        p, rc, f1, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert r[f"precision_{avg}"] == pytest.approx(p, abs=1e-6)
        assert r[f"recall_{avg}"] == pytest.approx(rc, abs=1e-6)
        assert r[f"f1_{avg}"] == pytest.approx(f1, abs=1e-6)
    p, rc, f1, support = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    per = r["per_class"]
    assert [row["support"] for row in per] == support.tolist()
    np.testing.assert_allclose([row["precision"] for row in per], p, atol=1e-6)
    np.testing.assert_allclose([row["recall"] for row in per], rc, atol=1e-6)
    np.testing.assert_allclose([row["f1"] for row in per], f1, atol=1e-6)
    np.testing.assert_allclose([row["accuracy"] for row in per], rc, atol=1e-6)  # per-class acc = recall
    cm = skm.confusion_matrix(y, pred, labels=range(len(classes)))
    assert r["confusion_matrix"] == cm.tolist()
    np.testing.assert_allclose(r["confusion_matrix_normalized"], cm / cm.sum(1, keepdims=True), atol=1e-6)
    json.dumps(r, allow_nan=False)  # strict JSON


def test_gap_hand_example() -> None:
    # ranked by confidence: A ok, B wrong, C (no ground truth) predicted, D ok, E ok
    # P(i) at the relevant ranks: 1/1, 2/4, 3/5; M = 4 items with a ground truth
    pred = np.array([0, 1, 2, 1, 0])
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([0, 2, -1, 1, 0])
    assert global_average_precision(pred, conf, y) == pytest.approx((1 + 0.5 + 0.6) / 4)
    # order of the input does not matter, only the confidence ranking
    perm = np.array([3, 0, 4, 2, 1])
    assert global_average_precision(pred[perm], conf[perm], y[perm]) == pytest.approx(0.525)
    assert global_average_precision(pred, conf, pred) == pytest.approx(1.0)


def test_gap_in_report_uses_confidence_of_argmax() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.15, 0.15, 0.7], [0.2, 0.6, 0.2], [0.5, 0.3, 0.2]])
    y = np.array([0, 2, -1, 1, 0])
    r = classification_report(y, probs, ["a", "b", "c"])
    assert r["gap"] == pytest.approx(0.525)
    assert r["num_labelled"] == 4 and r["num_samples"] == 5
    assert r["accuracy"] == pytest.approx(3 / 4)


def test_ece_sanity() -> None:
    rng = np.random.default_rng(0)
    n, c = 3000, 4
    y = rng.integers(0, c, n)
    # perfectly confident and always right: calibrated, ECE = 0
    assert classification_report(y, np.eye(c, dtype=np.float32)[y], list("abcd"))["ece"] == pytest.approx(0, abs=1e-6)
    # always 99% sure but right only 1/4 of the time: ECE ~ 0.99 - 0.25
    wrong = np.full((n, c), 0.01 / (c - 1), dtype=np.float32)
    wrong[np.arange(n), rng.integers(0, c, n)] = 0.99
    r = classification_report(y, wrong, list("abcd"))
    assert r["ece"] == pytest.approx(0.99 - r["accuracy"], abs=1e-3)
    assert r["ece"] > 0.6


def test_lists_best_worst_confused_and_highest_loss() -> None:
    classes = ["cat", "dog", "fox"]
    # cat always right, dog -> fox twice, fox right once and -> cat once
    y = np.array([0, 0, 1, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 2, 2, 2, 0])
    probs = np.full((7, 3), 0.1, dtype=np.float32)
    probs[np.arange(7), pred] = 0.8
    probs[3] = [0.01, 0.01, 0.98]  # most confident mistake: the highest loss
    paths = [f"img{i}.jpg" for i in range(7)]
    r = classification_report(y, probs, classes, paths=paths, top_n=2, top_images=3)
    assert [c["class"] for c in r["best_classes"]] == ["cat", "fox"]
    assert [c["class"] for c in r["worst_classes"]] == ["dog", "fox"]
    assert r["confused_pairs"][0] == {"true": "dog", "pred": "fox", "count": 2, "fraction": pytest.approx(2 / 3)}
    assert r["confused_pairs"][1]["true"] == "fox" and r["confused_pairs"][1]["pred"] == "cat"
    top = r["highest_loss"]
    assert len(top) == 3 and top[0]["path"] == "img3.jpg" and top[0]["pred"] == "fox"
    assert top[0]["loss"] == pytest.approx(-np.log(0.01), rel=1e-4)
    assert top[0]["loss"] >= top[1]["loss"] >= top[2]["loss"]
    # explicit losses win over the computed ones
    losses = np.arange(7, dtype=float)
    r2 = classification_report(y, probs, classes, losses=losses, paths=paths, top_images=2)
    assert [h["index"] for h in r2["highest_loss"]] == [6, 5]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_macro_averages_count_classes_only_predicted_as_sklearn_does_and_say_so() -> None:
    """A set holding 2 of 5 classes, scored by a model that also predicts 2 others: the macro
    figures are scikit-learn's (over the 4 classes true or predicted), mCA is over the 2 with
    images (balanced accuracy, the macro recall of those 2), and both counts are recorded."""
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 2, 3, 1, 2, 2, 1])
    probs = np.full((len(y), 5), 0.1, dtype=np.float32)
    probs[np.arange(len(y)), pred] = 0.6
    r = classification_report(y, probs, list("abcde"))
    assert r["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0)) == pytest.approx(0.25)
    assert r["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert r["mca"] == pytest.approx(skm.balanced_accuracy_score(y, pred)) == pytest.approx(skm.recall_score(y, pred, labels=[0, 1], average="macro"))
    assert (r["classes_present"], r["macro_classes"]) == (2, 4)


def test_absent_class_and_bad_shapes() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    r = classification_report(y, probs, ["a", "b", "c"])
    assert r["per_class"][2]["support"] == 0 and r["per_class"][2]["accuracy"] is None
    assert r["mca"] == pytest.approx(skm.balanced_accuracy_score(y, probs.argmax(1)))
    assert r["top_k"] == 3 and r["top5_accuracy"] == 1.0
    with pytest.raises(ValueError, match="columns"):
        classification_report(y, probs, ["a", "b"])
    with pytest.raises(ValueError, match="rows"):
        classification_report(y[:3], probs, ["a", "b", "c"])
    nan_probs = probs.copy()
    nan_probs[0] = np.nan
    assert classification_report(y, nan_probs, ["a", "b", "c"])["nonfinite_predictions"] == 1
