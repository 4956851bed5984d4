"""`vislab serve` for a crops run with FastAPI's test client: a real (tiny, briefly trained)
crop detector; its answers are `vislab predict`'s, its picture is an image, bad requests
get one-line 4xx answers, the page has a crops renderer, nothing is written to the run."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Iterator

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from vislab.runs import load_run
from vislab.serve.app import Limits, create_app
from vislab.serve.predictors import load_all
from vislab.tasks import get_task
from vislab.testing.images import write_corrupt_png

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def run(crops_run) -> Path:
    return crops_run


@pytest.fixture(scope="module")
def client(run) -> Iterator[TestClient]:
    app = create_app(load_all([run]), token=TOKEN, limits=Limits(max_files=4, window_ms=20))
    with TestClient(app) as c:
        yield c


def photos(run: Path, n: int = 2) -> list[Path]:
    return sorted((run.parent / "data" / "images").glob("*.png"))[:n]


def post(client: TestClient, files: list[tuple[str, bytes]], data: dict[str, str] | None = None):
    return client.post("/v1/predict", files=[("image", (n, b, "application/octet-stream")) for n, b in files], data=data or {}, headers=AUTH)


def test_models_describe_the_crops_run(client) -> None:
    (model,) = client.get("/v1/models", headers=AUTH).json()["models"]
    assert model["task"] == "crops" and model["model"] == "crop_detector_tiny" and model["grid"] == [4, 4]
    assert set(model["options"]["properties"]) == {"picture"}
    assert model["input"]["patch_size"] == 24


def test_answers_equal_vislab_predict(client, run) -> None:
    files = photos(run)
    r = post(client, [(f.name, f.read_bytes()) for f in files], {"picture": "false"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "crops"
    want = get_task("crops").predict(load_run(run), files)
    for got, exp in zip(body["results"], want):
        assert got["file"] == Path(exp["path"]).name and "picture" not in got
        assert got["crop_prob"] == pytest.approx(exp["crop_prob"], abs=1e-5) and got["cropped"] == exp["cropped"]
        assert got["rect"] == pytest.approx(exp["rect"], abs=1e-5) and got["rotation"] == exp["rotation"] == 0
        assert got["rect_if_cropped"] == pytest.approx(exp["rect_if_cropped"], abs=1e-5)
        assert got["rect"] == ([0.0, 1.0, 0.0, 1.0] if not got["cropped"] else got["rect_if_cropped"])
        assert torch.allclose(torch.tensor(got["cells"]), torch.tensor(exp["cells"]), atol=1e-5)


def test_served_rectangle_is_the_runs_crops_rectangle(run, monkeypatch) -> None:
    """Serve reports the rectangle `crops.rectangle` makes of the engine's raw outputs (the ONNX
    model keeps the head's) and of the decode grid's patches, as predict does. The tiny run
    calls nothing cropped, so the engine's flag is forced to "cropped" here; then the served
    rectangle is the crop the decode grid's cells decode to."""
    from vislab.models.crops_decode import decode_cells
    from vislab.serve.crops import CropsPredictor

    p = CropsPredictor.load(run)
    assert p.cfg.rectangle == "cells" and p.cfg.decode_grid == (8, 8)
    opts = p.Options(picture=False)
    items = [p.preprocess(Image.open(f).convert("RGB"), opts) for f in photos(run)]
    assert all(i.decode_patches.shape == (64, 3, 24, 24) and i.decode_centres.shape == (64, 2) for i in items)
    rect, flag, cells = p.outputs(torch.stack([i.thumb for i in items]), torch.stack([i.patches for i in items]))
    monkeypatch.setattr(p, "outputs", lambda thumb, patches: (rect, torch.full_like(flag, 5.0), cells))
    with torch.no_grad():
        logits = p.model.locate_patches(torch.stack([i.decode_patches for i in items]))
    want = decode_cells(logits, torch.stack([i.decode_centres for i in items]), p.cfg.grid, p.cfg.size_factor, p.cfg.decode_evidence)
    assert not torch.allclose(want, rect.float(), atol=1e-3)
    for got, exp in zip(p.predict_batch(items, [opts] * len(items)), want.tolist()):
        assert got["rect"] == pytest.approx(exp, abs=1e-5) and got["cropped"]


def test_the_picture_is_the_frame_and_heat_maps_and_portraits_turn_back(client, run, tmp_path) -> None:
    portrait = tmp_path / "portrait.png"
    Image.open(photos(run, 1)[0]).transpose(Image.Transpose.ROTATE_90).save(portrait)
    r = post(client, [("portrait.png", portrait.read_bytes())])
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["rotation"] in (90, 270) and (res["width"], res["height"]) == (192, 288)
    head, data = res["picture"].split(",", 1)
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_bad_requests_are_one_line_4xx(client, run, tmp_path) -> None:
    corrupt = write_corrupt_png(tmp_path / "a.png")
    r = post(client, [("a.png", corrupt.read_bytes())])
    assert r.status_code == 422 and "a.png: cannot read image" in r.json()["detail"] and "\n" not in r.json()["detail"]
    photo = photos(run, 1)[0]
    r = post(client, [(photo.name, photo.read_bytes())], {"top_k": "3"})  # a classify option
    assert r.status_code == 422 and "unknown field" in r.json()["detail"] and "picture" in r.json()["detail"]


def test_onnx_engine_serves_the_exported_crops_model_with_the_same_answers(run) -> None:
    from vislab.export import export_run
    from vislab.serve.crops import CropsPredictor

    plain = CropsPredictor.load(run, onnx=True)
    assert plain.engine == "pytorch" and "served with PyTorch" in plain.notes[0]
    export_run(run)
    fast = CropsPredictor.load(run, onnx=True)
    assert fast.engine == "onnxruntime" and fast.notes == []
    opts = fast.Options(picture=False)
    files = photos(run, 3)
    batch = lambda p: p.predict_batch([p.preprocess(Image.open(f).convert("RGB"), opts) for f in files], [opts] * len(files))  # noqa: E731
    for a, b in zip(batch(fast), batch(plain)):
        assert a["crop_prob"] == pytest.approx(b["crop_prob"], abs=1e-5) and a["rect"] == pytest.approx(b["rect"], abs=1e-4)
        assert torch.allclose(torch.tensor(a["cells"]), torch.tensor(b["cells"]), atol=1e-5)
    # the decode grid's patches through the exported model, padded to whole samples (21 patches
    # are one sample of 16 and 5 of another; 3 are less than a sample), give PyTorch's logits
    for shape in ((3, 7), (1, 3)):
        patches = torch.randint(0, 256, (*shape, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        got = fast.decode_logits(patches)
        assert got.shape == (*shape, 16) and torch.allclose(got, plain.decode_logits(patches), atol=1e-4)
    app = create_app([fast], token=TOKEN, limits=Limits(max_files=4, window_ms=20))
    with TestClient(app) as c:
        assert c.get("/v1/models", headers=AUTH).json()["models"][0]["engine"] == "onnxruntime"
        r = post(c, [(files[0].name, files[0].read_bytes())])
        assert r.status_code == 200 and r.json()["results"][0]["picture"].startswith("data:image/png;base64,"), r.text


def test_the_page_renders_crops_and_nothing_was_written(client, run) -> None:
    page = client.get("/").text
    assert "RENDERERS.crops" in page
    assert not (run / "predict").exists()


def test_pictures_are_drawn_outside_the_models_thread(client, run, monkeypatch) -> None:
    """The pictures (about a second each) were drawn in the model's one inference thread, so
    one client's picture request held up every other client's batch (a 1-image
    picture=false request waited 29 s). Now they are drawn in the request's own thread: the
    other client's answer comes while the pictures are still being drawn."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import vislab.report.crops as report_crops

    drawn_in: list[str] = []
    real = report_crops.prediction_picture

    def recorded(*args, **kwargs):
        drawn_in.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(report_crops, "prediction_picture", recorded)
    files = [(f.name, f.read_bytes()) for f in photos(run, 3)]

    def timed(data: dict[str, str], files: list) -> tuple[float, object]:
        start = time.perf_counter()
        r = post(client, files, data)
        return time.perf_counter() - start, r

    with ThreadPoolExecutor(2) as pool:
        pictures = pool.submit(timed, {"picture": "true"}, files)
        time.sleep(0.3)  # its batch has run; its pictures are being drawn
        alone = pool.submit(timed, {"picture": "false"}, files[:1])
        (slow, r_slow), (fast, r_fast) = pictures.result(), alone.result()
    assert r_slow.status_code == r_fast.status_code == 200, (r_slow.text, r_fast.text)
    assert all(res["picture"].startswith("data:image/png;base64,") for res in r_slow.json()["results"])
    assert len(drawn_in) == 3 and not any(name.startswith("vislab-infer") for name in drawn_in), drawn_in
    assert fast < slow / 2, f"a picture-free request took {fast:.2f} s beside a 3-picture one of {slow:.2f} s"
