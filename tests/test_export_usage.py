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


@pytest.mark.parametrize("made", ["trained", "older run.json"])
def test_a_grey_models_spec_has_one_mean_and_std_everywhere(tmp_path: Path, made: str) -> None:
    # vislab_preprocess said 1 channel, 1 mean; vislab_data_spec and serve's /v1/models said 3
    from fastapi.testclient import TestClient

    from vislab.serve.app import create_app
    from vislab.serve.predictors import load_all
    from vislab.testing.synthetic import make_pattern_dataset, tiny_config
    from vislab.train import train

    if made == "trained":
        data = make_pattern_dataset(tmp_path / "data", per_class=4, size=16)
        cfg = tiny_config(model={"in_chans": 1}, data={"grayscale": True}, train={"epochs": 1})
        run = train(cfg, data, tmp_path / "grey")
        assert json.loads((run / "run.json").read_text())["data_spec"]["mean"] == [0.5]
    else:  # a run recorded before: 3 values beside input_size [1, H, W]
        run = make_run_dir(tmp_path, checkpoint=True, input_size=24, grayscale=True, spec={"mean": [0.2, 0.4, 0.6]}, dataset=False)
    assert CliRunner().invoke(app, ["export", str(run)]).exit_code == 0
    meta = {p.key: p.value for p in onnx.load(str(run / "export" / "model.onnx")).metadata_props}
    spec = json.loads(meta["vislab_data_spec"])
    normalize = next(s for s in json.loads(meta["vislab_preprocess"])["steps"] if s["op"] == "normalize")
    assert spec["input_size"][0] == 1 and spec["mean"] == normalize["mean"] and spec["std"] == normalize["std"] and len(spec["mean"]) == 1
    assert json.loads((run / "export" / "model.json").read_text())["data_spec"] == spec
    with TestClient(create_app(load_all([run], onnx=True))) as client:
        (model,) = client.get("/v1/models").json()["models"]
    assert model["engine"] == "onnxruntime"  # the export's spec is this run's
    assert model["input"]["size"][0] == 1 and model["input"]["mean"] == spec["mean"] and model["input"]["std"] == spec["std"]


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


def detect_like_the_metadata(model_path: str, image_paths: list[str]) -> dict[str, list[tuple]]:
    """A consumer with onnxruntime, Pillow and numpy only that follows the detector's
    metadata as written: its letterbox "how", postprocess and "unletterbox" (boxes by score)."""
    import onnxruntime as ort
    import torch
    import torchvision
    from PIL import ImageOps

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes, pre = json.loads(meta["vislab_classes"]), json.loads(meta["vislab_preprocess"])
    box = next(s for s in pre["steps"] if s["op"] == "letterbox")
    post = pre["output"]["postprocess"]
    H, W = box["size_hw"]
    assert "nw = max(1, round(w * scale)), nh = max(1, round(h * scale))" in box["how"]
    assert "pad_x = (W - nw) // 2, pad_y = (H - nh) // 2" in box["how"]
    assert "keep score >= conf, then per-class NMS at nms_iou, at most max_det boxes" in post["how"]
    assert pre["output"]["unletterbox"] == "x = (x_canvas - pad_x) / (nw / w), y = (y_canvas - pad_y) / (nh / h), clipped to the image"
    found = {}
    for path in image_paths:
        im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        w, h = im.size
        scale = min(W / w, H / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        pad_x, pad_y = (W - nw) // 2, (H - nh) // 2
        canvas = Image.new("RGB", (W, H), (box["pad_value"],) * 3)
        canvas.paste(im.resize((nw, nh), Image.BILINEAR), (pad_x, pad_y))
        x = (np.asarray(canvas, np.float32) / 255).transpose(2, 0, 1)[None]
        det = torch.from_numpy(session.run(["detections"], {"input": x})[0][0])
        score, cls = (det[:, 4:5] * det[:, 5:]).max(1)
        keep = score.double() >= post["conf"]
        b, score, cls = det[keep, :4], score[keep], cls[keep]
        order = torchvision.ops.batched_nms(b, score, cls, post["nms_iou"])[: post["max_det"]]
        b = b[order].numpy().astype(np.float64)
        b[:, [0, 2]] = ((b[:, [0, 2]] - pad_x) / (nw / w)).clip(0, w)
        b[:, [1, 3]] = ((b[:, [1, 3]] - pad_y) / (nh / h)).clip(0, h)
        found[path] = [(classes[int(c)], *bb) for bb, c in zip(b.tolist(), cls[order].tolist())]
    return found


def test_a_consumer_following_the_detector_metadata_gets_vislab_predict_boxes(tmp_path: Path) -> None:
    """The metadata said to paste the letterboxed image at round((W - nw) / 2) while vislab
    pasted it at round((W - w * scale) / 2): a pixel apart for 17 of coco128's 128 images at
    416, and a consumer following the metadata got other boxes (a y2 of 422 for 456)."""
    from vislab.testing.detection import tiny_detect_config, write_shapes_dataset
    from vislab.testing.models import single_thread
    from vislab.train import train

    src = write_shapes_dataset(tmp_path / "src", n=6)
    assert CliRunner().invoke(app, ["curate", str(src), "--out", str(tmp_path / "ds"), "--split", "1,0,0", "--workers", "1"]).exit_code == 0
    with single_thread():
        run = train(tiny_detect_config(detect={"conf": 0.02}, train={"epochs": 1}), tmp_path / "ds", tmp_path / "run")
    res = CliRunner().invoke(app, ["export", str(run)])
    assert res.exit_code == 0, res.output
    rng = np.random.default_rng(1)
    files = []
    for w, h in ((100, 45), (45, 100), (100, 73), (131, 37)):  # sizes whose two pad formulas differ by a pixel
        files.append(str(tmp_path / f"odd{w}x{h}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    got = detect_like_the_metadata(str(run / "export" / "model.onnx"), files)
    for want in predict(run, files):
        boxes = [(b["class"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in want["boxes"]]
        assert boxes, want["path"]
        mine = got[want["path"]]
        assert [b[0] for b in mine] == [b[0] for b in boxes], want["path"]
        np.testing.assert_allclose([b[1:] for b in mine], [b[1:] for b in boxes], atol=0.02, err_msg=want["path"])
