"""`vislab predict`: top-k classes of files and folders, in table, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.errors import VislabError
from vislab.evaluate import evaluate
from vislab.predict import predict
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    data = make_pattern_dataset(root / "data", per_class=20, size=16)
    return train(tiny_config(train={"epochs": 3}), data, root / "run")


def test_predict_folder_matches_evaluate(run):
    evaluate(run, split="test")
    ev = pd.read_csv(run / "eval/test/predictions.csv")
    probs = np.load(run / "eval/test/probs.npy")
    results = predict(run, ev["path"].tolist(), top_k=2)
    assert [r["path"] for r in results] == ev["path"].tolist()
    for r, p, row in zip(results, probs, ev.itertuples()):
        assert len(r["top"]) == 2 and r["top"][0]["prob"] >= r["top"][1]["prob"]
        assert r["pred"] == row.pred and r["confidence"] == pytest.approx(float(p.max()), abs=1e-5)


def test_predict_walks_folders_and_reports_bad_files(run, tmp_path):
    folder = run.parent / "data" / "images" / "vertical"
    (tmp_path / "broken.png").write_bytes(b"not an image")
    results = predict(run, [folder, tmp_path / "broken.png"], top_k=10)
    assert len(results) == 21
    assert all(len(r["top"]) == 3 for r in results[:-1])  # top-k capped at the class count
    assert "error" in results[-1] and "top" not in results[-1]
    with pytest.raises(VislabError, match="no such image or folder"):
        predict(run, [tmp_path / "missing.png"])


def test_cli_formats(run):
    img = sorted((run.parent / "data" / "images" / "horizontal").glob("*.png"))[0]
    res = CliRunner().invoke(app, ["predict", str(run), str(img), "--format", "json", "--top-k", "2"])
    assert res.exit_code == 0
    parsed = json.loads(res.output)
    assert parsed[0]["path"] == str(img) and len(parsed[0]["top"]) == 2
    assert res.stdout.endswith("]\n")  # ends its line, as CSV and the table do
    res = CliRunner().invoke(app, ["predict", str(run), str(img), "-f", "csv"])
    assert res.stdout.endswith("\n") and not res.stdout.endswith("\n\n")
    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and rows[0]["label"] == parsed[0]["pred"]
    res = CliRunner().invoke(app, ["predict", str(run), str(img)])
    assert res.exit_code == 0 and parsed[0]["pred"] in res.output
    res = CliRunner().invoke(app, ["predict", str(run), str(img), "-f", "xml"])
    assert res.exit_code == 2


def test_predict_counts_unreadable_files_and_fails_when_none_can_be_read(run, tmp_path):
    bad = [tmp_path / "broken.png", tmp_path / "empty.jpg"]
    bad[0].write_bytes(b"not an image")
    bad[1].write_bytes(b"")
    res = CliRunner().invoke(app, ["predict", str(run), *map(str, bad)])
    assert res.exit_code == 2 and "none of the 2 image(s) could be read" in res.output
    assert "broken.png" in res.output and "(and 1 more)" in res.output
    with pytest.raises(VislabError, match="none of the 2 image"):
        predict(run, bad)
    good = sorted((run.parent / "data" / "images" / "vertical").glob("*.png"))[0]
    res = CliRunner().invoke(app, ["predict", str(run), str(good), *map(str, bad), "-f", "json"])
    assert res.exit_code == 0 and "2 of 3 image(s) could not be read" in res.output


@pytest.mark.parametrize("which", ["run", "detect_run", "crops_run"])  # classify, detect, crops
def test_csv_keeps_each_path_exactly_and_the_table_shows_each_on_one_line(which, request, tmp_path):
    from vislab.testing.images import write_image

    run = shutil.copytree(request.getfixturevalue(which), tmp_path / "run")  # crops predict writes RUN/predict/: not into the shared run
    folder = tmp_path / "odd"
    newline = write_image(folder / "a\nb.png", seed=1, size=(64, 48))  # a real newline
    spelled = write_image(folder / "a\\x0ab.png", seed=2, size=(64, 48))  # a backslash, 'x0a'
    res = CliRunner().invoke(app, ["predict", str(run), str(folder), "--format", "csv"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert {r["path"] for r in rows} == {str(newline), str(spelled)}  # both were written as 'a\x0ab.png'
    res = CliRunner().invoke(app, ["predict", str(run), str(folder)])
    assert res.exit_code == 0, res.output
    assert "a\nb" not in res.stdout and res.stdout.count("a\\x0ab.png") == 2


def test_detection_sizes_are_of_the_oriented_image_the_boxes_are_in(detect_run, tmp_path):
    """A PNG keeping its EXIF orientation after the pixel data: the boxes were in the turned
    image (64 wide, 96 tall) but width/height came from a header probe that missed the
    orientation, 96x64."""
    from vislab.data.io import load_image
    from vislab.testing.images import write_png_exif_after_pixels

    late = write_png_exif_after_pixels(tmp_path / "late.png", orientation=6, size=(96, 64))
    assert load_image(late).size == (64, 96)
    res = CliRunner().invoke(app, ["predict", str(detect_run), str(late), "--format", "json", "--conf", "0", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.stdout)
    assert (row["width"], row["height"]) == (64, 96)
    assert row["boxes"] and all(0 <= b["x1"] <= b["x2"] <= 64 and 0 <= b["y1"] <= b["y2"] <= 96 for b in row["boxes"])
