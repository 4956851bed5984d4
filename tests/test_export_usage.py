"""README's "Using the exported model": its plain-Python snippet (Pillow, numpy, onnxruntime,
no vislab), run as written from the README, gives `vislab predict`'s probabilities from the
exported file's metadata alone, for a rotated JPEG photo, a PNG with transparency, a very long
image, and a grey model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from vislab.cli import app
from vislab.predict import predict
from vislab.testing.rundirs import make_run_dir

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Using the exported model"


def readme_snippet() -> dict:
    """The names the README's first ```python block under HEADING defines."""
    from test_readme_tour import tour_block

    namespace: dict = {}
    exec(compile(tour_block(README.read_text(), HEADING, "python"), str(README), "exec"), namespace)
    return namespace


def images(folder: Path) -> list[str]:
    """A rotated JPEG photo (draft-decoded), a PNG with transparent pixels, a 6:1 PNG."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    photo = Image.fromarray(rng.integers(0, 256, (150, 220, 3), dtype=np.uint8)).resize((440, 300))
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(folder / "photo.jpg", quality=90, exif=exif)
    rgba = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    rgba[:, :, 3] = np.where(rng.random((40, 48)) < 0.5, 0, rgba[:, :, 3])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (30, 180, 3), dtype=np.uint8)).save(folder / "long.png")
    return [str(folder / n) for n in ("photo.jpg", "alpha.png", "long.png")]


@pytest.mark.parametrize("grayscale", [False, True], ids=["rgb", "grey"])
def test_readme_snippet_reproduces_vislab_predict(tmp_path: Path, grayscale: bool) -> None:
    spec = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.875}
    run = make_run_dir(tmp_path, checkpoint=True, input_size=24, grayscale=grayscale, spec=spec, dataset=False)
    res = CliRunner().invoke(app, ["export", str(run)])
    assert res.exit_code == 0, res.output
    model = run / "export" / "model.onnx"
    files = images(tmp_path / "images")
    got = readme_snippet()["classify"](str(model), files)
    for want in predict(run, files, top_k=3):
        probs = got[want["path"]]
        assert {t["label"]: pytest.approx(probs[t["label"]], abs=1e-5) for t in want["top"]} == {t["label"]: t["prob"] for t in want["top"]}


def test_export_metadata_describes_the_input_preparation(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, checkpoint=True, input_size=24, grayscale=True, spec={"mean": [0.2, 0.4, 0.6]}, dataset=False)
    assert CliRunner().invoke(app, ["export", str(run)]).exit_code == 0
    meta = {p.key: p.value for p in onnx.load(str(run / "export" / "model.onnx")).metadata_props}
    pre = json.loads(meta["vislab_preprocess"])
    ops = [s["op"] for s in pre["steps"]]
    assert ops.index("exif_transpose") < ops.index("alpha_on_white") < ops.index("resize_shorter_side") < ops.index("center_crop") < ops.index("normalize")
    assert next(s for s in pre["steps"] if s["op"] == "alpha_on_white")["background"] == [255, 255, 255]
    assert next(s for s in pre["steps"] if s["op"] == "normalize")["mean"] == [pytest.approx(0.4)]
    assert "white" in pre["summary"] and "grey" in pre["summary"]
    assert json.loads((run / "export" / "model.json").read_text())["vislab_preprocess"] == pre


def plugin_metadata(raw: dict) -> dict:
    """The task's export metadata for a run configured by `raw` (decoded from JSON as export writes it)."""
    from types import SimpleNamespace

    from vislab.config import RunConfig
    from vislab.tasks import get_task

    cfg = RunConfig.model_validate(raw)
    described = get_task(cfg.task).export_metadata(SimpleNamespace(cfg=cfg))
    return {k: json.loads(json.dumps(v)) for k, v in described.items()}


def test_detector_metadata_says_letterbox_and_that_nms_is_not_in_the_graph() -> None:
    from vislab.data.det_datamodule import PAD_VALUE

    pre = plugin_metadata({"task": "detect", "model": {"name": "yolov3_tiny"}, "detect": {"img_size": 320, "conf": 0.3, "nms_iou": 0.5, "max_det": 50}})["vislab_preprocess"]
    box = next(s for s in pre["steps"] if s["op"] == "letterbox")
    assert box["size_hw"] == [320, 320] and box["pad_value"] == PAD_VALUE
    assert "center_crop" not in [s["op"] for s in pre["steps"]]
    out = pre["output"]
    assert out["nms_in_graph"] is False and out["postprocess"]["conf"] == 0.3 and out["postprocess"]["nms_iou"] == 0.5 and out["postprocess"]["max_det"] == 50
    assert "unletterbox" in out and "x1, y1, x2, y2" in out["detections"]
    assert "without NMS" in pre["summary"]


def test_crop_detector_metadata_says_its_inputs_are_uint8_from_the_sampler() -> None:
    pre = plugin_metadata({"task": "crops", "model": {"name": "crop_detector"}})["vislab_preprocess"]
    thumb, patches = pre["inputs"]["thumb"], pre["inputs"]["patches"]
    assert thumb["dtype"] == patches["dtype"] == "uint8" and thumb["normalised"] is False
    assert "crops sampler" in pre["summary"] and "not something to apply" in pre["summary"]
