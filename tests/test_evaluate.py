"""`vislab evaluate`: contract files, another dataset matched by label name, unknown labels."""

from __future__ import annotations

import json
import re
import shutil

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


def test_another_dataset_in_a_folder_of_the_same_name_is_refused_not_replaced(run, tmp_path):
    first = make_pattern_dataset(tmp_path / "A" / "data", classes=("vertical", "horizontal"), per_class=10, size=16, seed=1)
    second = make_pattern_dataset(tmp_path / "B" / "data", classes=("diagonal",), per_class=10, size=16, seed=2)
    metrics = run / "eval" / "test-data" / "metrics.json"
    evaluate(run, data=first)
    kept = metrics.read_bytes()
    res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(second)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"holds the evaluation of {first.resolve()}, not of {second.resolve()}" in res.output and "--name" in res.output
    assert metrics.read_bytes() == kept
    assert evaluate(run, data=first)["dataset_dir"] == str(first.resolve())  # the same dataset again still replaces it
    assert evaluate(run, data=second, name="test-b")["num_samples"] == 2


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


def test_the_evaluate_line_counts_the_labelled_images_its_accuracy_is_over(run, tmp_path):
    import csv

    data = make_pattern_dataset(tmp_path / "half", classes=("vertical", "horizontal"), per_class=10, size=16, seed=3)
    with open(data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if r["split"] == "test"]
    for r in test[: len(test) // 2]:  # half the test images lose their label
        r["label"] = ""
    with open(data / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(data)])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "eval" / f"test-{data.name}" / "metrics.json").read_text())
    assert (m["num_samples"], m["num_labelled"]) == (4, 2)
    assert f"mCA {m['mca']:.2%} on 2 labelled images (2 unlabelled)\n" in res.output
    res = CliRunner().invoke(app, ["evaluate", str(run), "--split", "val"])
    assert res.exit_code == 0 and re.search(r"^val: accuracy \S+, mCA \S+ on 15 images$", res.output, re.M), res.output


def test_cli_evaluate_and_train_print_a_bracketed_run_path_as_written(run, tmp_path):
    copy = shutil.copytree(run, tmp_path / "runs" / "exp [final]")
    res = CliRunner().invoke(app, ["evaluate", str(copy), "--split", "val"])
    assert res.exit_code == 0, res.output
    assert f"eval: {copy / 'eval' / 'val'}\n" in res.output  # rich took '[final]' for a style: 'exp /eval/val'
    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(copy), "--epochs", "5"])
    assert res.exit_code == 0, res.output
    assert f"run: {copy}\n" in res.output


def test_train_and_evaluate_show_control_characters_in_paths(run, tmp_path, capsys):
    from vislab.testing.rundirs import make_run_dir

    odd = shutil.copytree(run, tmp_path / "run\x1b[2J")
    (odd / ".summary.json.tmp999999999").write_text("{")  # left by a writer killed mid-write
    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(odd), "--epochs", "5"])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and rf"removed 1 temporary file(s) left by an interrupted write in {tmp_path}/run\x1b[2J" in res.output
    moved = make_run_dir(tmp_path / "d\x1b[2J", checkpoint=True)
    data = moved.parent / "run-data"
    rows = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    rows.iloc[1:].to_csv(data / "manifest.csv", index=False)  # one image dropped since training
    evaluate(moved, split="test")
    err = capsys.readouterr().err
    assert "\x1b" not in err and rf"warning: {tmp_path}/d\x1b[2J/run-data/manifest.csv changed" in err


def test_changed_manifest_is_a_warning_and_recorded(tmp_path, capsys):
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, checkpoint=True)
    data = tmp_path / "run-data"
    assert evaluate(run, split="test")["manifest_changed"] is False
    assert "changed" not in capsys.readouterr().err
    rows = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    rows.iloc[1:].to_csv(data / "manifest.csv", index=False)  # one image dropped since training
    m = evaluate(run, split="test")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "manifest.csv changed since this run was trained" in err[0]
    assert m["manifest_changed"] is True
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text())["manifest_changed"] is True
    other = make_pattern_dataset(tmp_path / "other", classes=("cat", "dog"), per_class=5, size=32)
    assert evaluate(run, split="test", data=other)["manifest_changed"] is False  # another dataset: nothing to compare
    assert "changed" not in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_image_deleted_after_curation_is_one_line_error(tmp_path, workers):
    from pathlib import Path

    from vislab.testing.images import write_bad_ztxt_png
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, checkpoint=True)
    rows = pd.read_csv(tmp_path / "run-data" / "manifest.csv", dtype=str, keep_default_na=False)
    test_paths = rows[rows["split"] == "test"]["path"].tolist()
    write_bad_ztxt_png(test_paths[1])
    with pytest.raises(VislabError, match=r"cannot read image \(corrupt image \(SyntaxError") as info:
        evaluate(run, split="test", num_workers=workers)
    assert str(info.value).startswith(test_paths[1]) and "re-curate" in str(info.value)
    Path(test_paths[0]).unlink()
    res = CliRunner().invoke(app, ["evaluate", str(run)])
    assert res.exit_code == 2 and "file not found" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_eval_folder_names_stay_inside_and_short(tmp_path):
    from vislab.evaluate import eval_name
    from vislab.testing.rundirs import make_run_dir

    assert eval_name("test") == "test" and eval_name("test", "my photos") == "test-my photos"
    run = make_run_dir(tmp_path, checkpoint=True)
    rows = pd.read_csv(tmp_path / "run-data" / "manifest.csv", dtype=str, keep_default_na=False)
    other = tmp_path / ("x" * 200)
    other.mkdir()
    rows.to_csv(other / "manifest.csv", index=False)
    with pytest.raises(VislabError):  # not a split name: refused before any folder is made
        evaluate(run, split="../../escaped", data=other)
    m = evaluate(run, split="test", data=other)
    out = run / "eval" / m["name"]
    assert out.parent == run / "eval" and (out / "metrics.json").is_file()
    assert len(m["name"]) <= 110 and "/" not in m["name"]
    assert not (tmp_path / "escaped").exists() and not (run / "escaped").exists()


def test_a_run_whose_dataset_moved_asks_for_data_not_a_new_curation(tmp_path):
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, checkpoint=True)
    (tmp_path / "run-data").rename(tmp_path / "moved")
    res = CliRunner().invoke(app, ["evaluate", str(run)])
    assert res.exit_code == 2 and "the run's dataset is not there any more; pass --data DATASET_DIR" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "vislab curate" not in res.output


@pytest.mark.parametrize("recorded", ["missing", None, ""])
def test_a_run_that_names_no_dataset_asks_for_data(tmp_path, recorded):
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, checkpoint=True)
    info = json.loads((run / "run.json").read_text())
    if recorded == "missing":
        del info["dataset_dir"]
    else:
        info["dataset_dir"] = recorded
    (run / "run.json").write_text(json.dumps(info))
    res = CliRunner().invoke(app, ["evaluate", str(run)])
    assert res.exit_code == 2 and "run.json names no dataset; pass --data DATASET_DIR" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(tmp_path / "run-data")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("damage", [
    {"classes": None}, {"classes": "cat,dog"}, {"classes": []},
    {"data_spec": None}, {"data_spec": {"mean": [0.5]}}, {"data_spec": {"input_size": 3, "mean": [0.5], "std": [0.5]}},
])
def test_a_run_json_without_its_classes_or_data_spec_is_one_line(run, tmp_path, damage):
    """load_run read run.json's classes and data_spec unchecked: a hand-edited file stopped
    evaluate (and export, predict, serve) with a KeyError or TypeError traceback."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, symlinks=True)
    info = json.loads((copy / "run.json").read_text())
    info.update(damage)
    info = {k: v for k, v in info.items() if v is not None}
    (copy / "run.json").write_text(json.dumps(info))
    res = CliRunner().invoke(app, ["evaluate", str(copy), "--data", str(info["dataset_dir"])])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and "run.json:" in line and "restore the run.json" in line, res.output


def test_a_detection_dataset_is_refused_by_a_classifier_in_one_line(run, tmp_path):
    from vislab.testing.detection import write_label_dataset, yolo_line

    raw = write_label_dataset(tmp_path / "yolo", {"a": yolo_line(0, (0.1, 0.1, 0.5, 0.5)), "b": None}, names=["cat"])
    det = tmp_path / "det"
    assert CliRunner().invoke(app, ["curate", str(raw), "--out", str(det), "--workers", "1"]).exit_code == 0
    before = sorted(p.name for p in (run / "eval").glob("*"))
    for args in (["evaluate", str(run), "--data", str(det), "--split", "all"],
                 ["train", str(run / "config.yaml"), "--data", str(det), "--out", str(tmp_path / "r")]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "is a detection dataset (it has boxes.csv), and this run classifies" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in (run / "eval").glob("*")) == before  # no eval folder left behind


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("filters: 8", "filters: 16"), ["weights do not match model 'simple_cnn'", "of another size", "was config.yaml edited"]),
        (("task: classify", "task: crops"), ["task is 'crops' but", "trained with task 'classify'", "no longer matches the checkpoint"]),
    ],
    ids=["size-mismatch", "task"],
)
def test_evaluate_after_config_yaml_was_edited_is_one_line(run, tmp_path, edit, expected):
    """An edited config.yaml builds another model (or another task's): one line saying the
    config no longer matches the checkpoint, not a load_state_dict RuntimeError traceback or
    another task's complaint about the images."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = copy / "config.yaml"
    assert edit[0] in config.read_text()
    config.write_text(config.read_text().replace(edit[0], edit[1], 1))
    res = CliRunner().invoke(app, ["evaluate", str(copy)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1, res.output
    text = " ".join(res.stderr.split())
    for part in expected:
        assert part in text, text


def test_evaluate_never_writes_through_a_file_linked_out_of_the_run(run, tmp_path):
    """eval/<name>/predictions.csv a link to a user's file (a run folder from someone else):
    the evaluation overwrote that file."""
    import shutil

    other = make_pattern_dataset(tmp_path / "linked", classes=("vertical", "horizontal"), per_class=6, size=16, seed=7)
    folder = run / "eval" / f"test-{other.name}"
    folder.mkdir(parents=True)
    victim = tmp_path / "notes.csv"
    victim.write_text("a user's file")
    (folder / "predictions.csv").symlink_to(victim)
    try:
        res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(other), "--split", "test"])
        assert res.exit_code == 2, res.output
        assert "predictions.csv: would be written outside" in res.output and "through the symbolic link" in res.output
        assert victim.read_text() == "a user's file"
    finally:
        shutil.rmtree(folder)  # the module's run stays as the other tests expect it


def test_a_dataset_curated_over_the_default_pixel_limit_is_evaluated_predicted_and_explained(tmp_path, low_pixel_limit, report_tiles):
    """curate --max-pixels above the default accepts large photos (60-megapixel frames); the
    loaders of evaluate, predict and explain, and the report's pictures, refused them as
    decompression bombs over the default. Now evaluate decodes under the dataset's recorded
    limit (kept in metrics.json for the report), predict and explain under the run's (run.json,
    kept when the dataset moves away)."""
    from vislab.data.curate import curate
    from vislab.explain.overlays import explain_run
    from vislab.predict import predict
    from vislab.report.html import write_report

    images = make_pattern_dataset(tmp_path / "src", per_class=8, size=16) / "images"  # 256 pixels, over the lowered default
    curate(images, out=tmp_path / "ds", split="0.5,0.25,0.25", max_pixels=1000, workers=1)
    run = train(tiny_config(train={"epochs": 1}), tmp_path / "ds", tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["max_pixels"] == 1000
    assert evaluate(run, split="test")["num_samples"] == 6
    html = write_report(run).read_text()
    assert "can be decoded" not in html and len(report_tiles) == 6 + 6  # highest-loss images, then CAMs
    assert all(tile is not None for tile in report_tiles)
    photo = next(images.rglob("*.png"))
    shutil.move(tmp_path / "ds", tmp_path / "moved")
    (result,) = predict(run, photo)
    assert "error" not in result and result["pred"] in ("horizontal", "vertical", "diagonal")
    assert len(explain_run(run, [photo], out=tmp_path / "cams")) == 1
    assert evaluate(run, split="test", data=tmp_path / "moved")["num_samples"] == 6  # the limit of the dataset evaluated
