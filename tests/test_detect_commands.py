"""`vislab stats`, `vislab materialize --format yolo|coco` and `vislab anchors` on a curated
detection dataset, through the CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vislab.cli import app
from vislab.data.boxes import probe_sizes, read_boxes, resolve_boxes
from vislab.data.det_sources import read_detection_source
from vislab.data.stats import dataset_summary
from vislab.testing.detection import write_label_dataset, yolo_line
from vislab.testing.images import write_image_folder

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: object):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert len(text.splitlines()) == 1 and text.startswith("error:"), text
    for needle in needles:
        assert needle in text, text


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """A curated YOLO dataset: class ids not in name order, a clipped box, broken lines, a negative."""
    root = write_label_dataset(
        tmp_path / "yolo",
        {
            "a": yolo_line(0, (0.25, 0.25, 0.75, 0.75)) + yolo_line(2, (0.1, 0.1, 0.3, 0.3)),
            "b": yolo_line(1, (0.3, 0.3, 0.7, 0.7)) + "7 0.5 0.5 0.1 0.1\n" + "0 0.5\n",
            "c": yolo_line(0, (0.6, 0.6, 1.1, 1.1)),
            "d": yolo_line(2, (0.0, 0.0, 0.5, 0.5)) + yolo_line(0, (0.5, 0.5, 0.9, 0.7)),
            "e": yolo_line(1, (0.2, 0.2, 0.4, 0.9)),
            "neg": None,
        },
        names=["zebra", "apple", "mango"],
    )
    out = tmp_path / "ds"
    ok("curate", root, "--out", out, "--split", "0.5,0.25,0.25", "--workers", "1")
    return out


def canonical(boxes) -> list[tuple]:
    return sorted(
        (Path(p).name, c, round(a, 2), round(b, 2), round(x, 2), round(y, 2), bool(i))
        for p, c, a, b, x, y, i in boxes[["path", "class", "x1", "y1", "x2", "y2", "ignore"]].itertuples(index=False)
    )


def test_stats_shows_boxes_per_class_sizes_and_problems(dataset):
    result = ok("stats", dataset)
    out = result.stdout
    for needle in ("YOLO detection dataset: 6 usable images (1 without boxes), 7 boxes", "boxes per class",
                   "zebra", "mango", "box sizes", "p50", "COCO size buckets", "clipped to the image edge: 1",
                   "label problems", "unknown_class", "malformed", "train", "val", "test"):
        assert needle in out, needle
    assert re.search(r"│\s+0 │ zebra\s+│\s+3 │\s+3 │", out), out  # id, class, boxes, images
    recorded = json.loads((dataset / "curation.json").read_text())["detection"]
    fresh = dataset_summary(dataset)["detection"]
    for key in ("boxes_per_class", "images_per_class", "width", "area", "size_buckets", "splits"):
        assert fresh[key] == recorded[key], key
    assert (dataset / "class_histogram.png").stat().st_size > 1000


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_materialize_writes_a_dataset_that_reads_back_the_same(tmp_path, dataset, fmt):
    out = tmp_path / f"out-{fmt}"
    result = ok("materialize", dataset, "--out", out, "--format", fmt)
    assert f"{fmt}: 6 images, 7 boxes" in result.stdout
    real_out = os.path.realpath(out)
    for path in out.rglob("*"):
        assert os.path.realpath(path.parent).startswith(real_out)
        if path.suffix == ".png":
            assert path.is_symlink() and Path(os.readlink(path)).parent.name == "images"
    src = read_detection_source(out)
    assert src.format == fmt and src.classes == ["zebra", "apple", "mango"]  # ids kept as curated
    back = resolve_boxes(src, probe_sizes(src.images))
    assert not back.problems
    assert canonical(back.boxes) == canonical(read_boxes(dataset))
    assert len(src.images) == 6
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    ok("materialize", dataset, "--out", out, "--format", fmt)  # its own earlier output: replaced
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    theirs = tmp_path / "theirs"
    (theirs / "notes.txt").parent.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert_one_line_error(invoke("materialize", dataset, "--out", theirs, "--format", fmt), "not made by vislab materialize")


def test_materialize_modes_and_refusals(tmp_path, dataset):
    ok("materialize", dataset, "--out", tmp_path / "copies", "--format", "yolo", "--mode", "copy")
    images = list((tmp_path / "copies" / "images").rglob("*.png"))
    assert len(images) == 6 and not any(p.is_symlink() for p in images)
    assert yaml.safe_load((tmp_path / "copies" / "data.yaml").read_text())["names"] == {0: "zebra", 1: "apple", 2: "mango"}
    assert_one_line_error(invoke("materialize", dataset, "--out", tmp_path / "t"), "detection dataset", "--format yolo")
    assert_one_line_error(invoke("materialize", dataset, "--out", tmp_path / "v", "--format", "voc"), "--format 'voc'")
    assert_one_line_error(
        invoke("materialize", dataset, "--out", tmp_path / "m", "--format", "coco", "--mode", "move"), "--mode 'move'"
    )
    photos = tmp_path / "photos"
    write_image_folder(photos, {"cat": 2}, size=(32, 24))
    ok("curate", photos, "--out", tmp_path / "cls", "--workers", "1")
    assert_one_line_error(
        invoke("materialize", tmp_path / "cls", "--out", tmp_path / "y", "--format", "yolo"), "no boxes table here"
    )


SHAPES = ((0.1, 0.2), (0.5, 0.3))  # box sizes as fractions of the image: 32x64 and 160x96 px at 320


def test_anchors_recovers_planted_shapes_and_compares_the_defaults(tmp_path):
    labels = {}
    for i in range(12):
        x, y = 0.02 * i, 0.03 * i
        labels[f"img{i:02d}"] = "".join(yolo_line(i % 2, (x, y, x + w, y + h)) for w, h in SHAPES)
    root = write_label_dataset(tmp_path / "src", labels, size=(64, 64), names=["thin", "wide"])
    ds = tmp_path / "ds"
    ok("curate", root, "--out", ds, "--workers", "1")
    out = ok("anchors", ds, "--n", "2", "--img-size", "320").stdout
    assert "2 anchors from 24 boxes of all 12 usable images (the dataset has no splits)" in out
    line = next(x for x in out.splitlines() if x.startswith("config: "))
    assert yaml.safe_load(line.removeprefix("config: ")) == {"detect.anchors": [[32, 64], [160, 96]]}
    assert "train with: --set 'detect.anchors=[[32, 64], [160, 96]]'" in out
    assert "fitness (mean best IoU): 1.000" in out
    defaults = dict(re.findall(r"default anchors of (\w+) \(\d+\): fitness ([0-9.]+)", out))
    assert set(defaults) == {"yolov3", "yolov3_tiny"} and all(float(v) < 0.9 for v in defaults.values())

    split_ds = tmp_path / "split"
    ok("curate", root, "--out", split_ds, "--split", "0.5,0.5", "--workers", "1")
    assert "of 6 train images" in ok("anchors", split_ds, "--n", "2", "--img-size", "320").stdout
    assert_one_line_error(invoke("anchors", ds, "--n", "30"), "fewer than the 30 anchors")
    assert_one_line_error(invoke("anchors", ds, "--n", "5"), "--n 5: a YOLO splits its anchors evenly over its 2 or 3 levels")
    assert_one_line_error(invoke("anchors", split_ds, "--split", "test"), "no usable image in split 'test'")
    photos = tmp_path / "photos"
    write_image_folder(photos, {"cat": 2}, size=(32, 24))
    ok("curate", photos, "--out", tmp_path / "cls", "--workers", "1")
    assert_one_line_error(invoke("anchors", tmp_path / "cls"), "no boxes table here")
