"""`vislab evaluate`: contract files, another dataset matched by label name, unknown labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.errors import VislabError
from vislab.evaluate import evaluate
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_pattern_dataset(root / "data", classes=("diagonal", "horizontal", "vertical"), per_class=24, size=16)
    return train(tiny_config(train={"epochs": 4}), data, root / "run")


def test_evaluate_writes_metrics_predictions_and_probs(run):
    m = evaluate(run, split="test")
    out = run / "eval" / "test"
    assert m["accuracy"] >= 0.7 and m["num_samples"] == 15
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(m["accuracy"]) and saved["classes"] == ["diagonal", "horizontal", "vertical"]
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["path", "label", "pred", "confidence", "loss", "correct"]
    probs = np.load(out / "probs.npy")
    assert probs.dtype == np.float32 and probs.shape == (15, 3)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    classes = saved["classes"]
    assert [classes[i] for i in probs.argmax(1)] == pred["pred"].tolist()
    assert np.allclose(probs.max(1), pred["confidence"], atol=1e-6)
    assert (pred["correct"] == (pred["label"] == pred["pred"])).all()
    assert pred["correct"].mean() == pytest.approx(m["accuracy"])


def test_other_dataset_is_matched_by_label_name(run, tmp_path):
    # a subset of the classes, so its own class ids (horizontal=0, vertical=1) differ from the run's
    other = make_pattern_dataset(tmp_path / "other", classes=("vertical", "horizontal"), per_class=12, size=16, seed=5)
    m = evaluate(run, split="test", data=other)
    name = f"test-{other.name}"
    assert m["name"] == name and (run / "eval" / name / "metrics.json").is_file()
    pred = pd.read_csv(run / "eval" / name / "predictions.csv")
    manifest = pd.read_csv(other / "manifest.csv").set_index("path")
    assert (pred["label"] == manifest.loc[pred["path"], "label"].to_numpy()).all()
    assert m["accuracy"] >= 0.7  # mapping by id instead of name would score near zero here
    assert np.load(run / "eval" / name / "probs.npy").shape == (len(pred), 3)


def test_unknown_labels_are_one_clear_error(run, tmp_path):
    other = make_pattern_dataset(tmp_path / "unknown", classes=("vertical", "rings", "zebra"), per_class=6, size=16)
    with pytest.raises(VislabError, match="rings, zebra.*diagonal, horizontal, vertical"):
        evaluate(run, data=other)
    res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(other)])
    assert res.exit_code == 2 and "does not know: rings, zebra" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cli_evaluate_prints_accuracy_and_missing_split_is_explained(run, tmp_path):
    res = CliRunner().invoke(app, ["evaluate", str(run), "--split", "val"])
    assert res.exit_code == 0 and "val: accuracy" in res.output
    unsplit = make_pattern_dataset(tmp_path / "unsplit", classes=("vertical",), per_class=4, size=16, splits=None)
    res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(unsplit)])
    assert res.exit_code == 2 and "--split all" in res.output
    assert evaluate(run, split="all", data=unsplit)["num_samples"] == 4
