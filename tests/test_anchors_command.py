"""`vislab anchors` prints a setting training accepts, fitted on the canvas training uses.

The key is `detect.anchors` (a detection run refuses `model.kwargs.anchors`), the count splits
over the model's levels, and box sizes are scaled as the letterbox scales their image into the
canvas, min(W / w, H / h), not by the image's longer side.
"""

from __future__ import annotations

import json
import re

import yaml
from test_detect_commands import assert_one_line_error
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import apply_overrides, build_config, dump_config
from vislab.tasks.registry import get_task
from vislab.testing.detection import tiny_detect_config, write_label_dataset, yolo_line

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: object) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def setting(out: str) -> list[list[int]]:
    line = next(x for x in out.splitlines() if x.startswith("config: "))
    return yaml.safe_load(line.removeprefix("config: "))["detect.anchors"]


def wide_dataset(tmp_path, images: int = 4, *split: str):
    """`images` images of 640x480, each with a 100x100 and a 200x60 box."""
    boxes = ((0.1, 0.1, 100 / 640 + 0.1, 100 / 480 + 0.1), (0.4, 0.5, 200 / 640 + 0.4, 60 / 480 + 0.5))
    labels = {f"img{i}": "".join(yolo_line(0, b) for b in boxes) for i in range(images)}
    root = write_label_dataset(tmp_path / "src", labels, size=(640, 480), names=["car"])
    ds = tmp_path / "ds"
    ok("curate", root, "--out", ds, "--workers", "1", *split)
    return ds


def test_sizes_are_scaled_as_the_letterbox_scales_a_wide_canvas(tmp_path):
    ds = wide_dataset(tmp_path)
    # KITTI's canvas: a 640x480 frame fits by its height, scale min(1248/640, 384/480) = 0.8
    out = ok("anchors", ds, "--n", "2", "--img-size", "384,1248")
    assert "2 anchors from 8 boxes" in out and "on the 1248x384 canvas (detect.img_size [384, 1248])" in out
    assert setting(out) == [[80, 80], [160, 48]]
    # a single N stays a square canvas: 416/640 = 0.65
    assert setting(ok("anchors", ds, "--n", "2", "--img-size", "416")) == [[65, 65], [130, 39]]
    # the recipe's canvas and model (yolov3_tiny: 2 levels, 6 anchors by default)
    out = ok("anchors", ds, "--config", "kitti-yolov3-tiny")
    assert "6 anchors" in out and "for yolov3_tiny (2 levels, 3 per level)" in out
    assert {tuple(a) for a in setting(out)} == {(80, 80), (160, 48)}


def test_the_printed_setting_is_one_training_accepts(tmp_path):
    ds = wide_dataset(tmp_path, 8, "--split", "0.75,0.25")
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(tiny_detect_config()))
    out = ok("anchors", ds, "--config", config)
    assert "6 anchors" in out and "on the 64x64 canvas" in out
    anchors = setting(out)  # 640x480 into 64x64: scale 0.1
    assert len(anchors) == 6 and {tuple(a) for a in anchors} == {(10, 10), (20, 6)}
    override = re.search(r"train with: --set '(.*)'", out).group(1)
    cfg = build_config(apply_overrides(yaml.safe_load(config.read_text()), [override]))
    task = get_task(cfg.task)
    task.check_dataset(cfg, ds)  # model.kwargs.anchors would be refused here
    model = task.create_model(cfg, ["car"], load_weights=False)
    assert model.anchors.reshape(-1, 2).tolist() == anchors

    # a count the model cannot split over its levels is refused, never printed
    assert_one_line_error(invoke("anchors", ds, "--config", config, "--n", "3"), "--n 3: yolov3_tiny splits its anchors evenly over its 2 levels", "multiple of 2")
    assert_one_line_error(invoke("anchors", ds, "--model", "yolov3_tiny", "--n", "9"), "multiple of 2")
    assert "for yolov3 (3 levels, 1 per level)" in ok("anchors", ds, "--model", "yolov3", "--n", "3")
    # without a model, the note says which models the count suits
    out = ok("anchors", ds, "--n", "3")
    assert "for yolov3 (3 levels, 1 per level); not for yolov3_tiny (2 levels)" in out
    assert "for yolov3 (3 levels, 2 per level) and yolov3_tiny (2 levels, 3 per level)" in ok("anchors", ds, "--n", "6")

    # a run directory's config is read the same way
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.read_text())
    (run / "run.json").write_text(json.dumps({}))
    assert setting(ok("anchors", ds, "--config", run)) == setting(ok("anchors", ds, "--config", config))


def test_bad_options_are_one_line_errors(tmp_path):
    ds = wide_dataset(tmp_path)
    assert_one_line_error(invoke("anchors", ds, "--img-size", "100"), "--img-size", "multiples of 32")
    assert_one_line_error(invoke("anchors", ds, "--img-size", "384x1248"), "--img-size 384x1248: give N or H,W")
    assert_one_line_error(invoke("anchors", ds, "--model", "resnet18"), "model resnet18: not a YOLO detection model", "yolov3_tiny")
    assert_one_line_error(invoke("anchors", ds, "--config", "digits-cnn"), "--config digits-cnn: is a task: classify config")
    assert_one_line_error(invoke("anchors", ds, "--config", tmp_path), "not a run directory")
