"""`vislab serve` of a detection run with FastAPI's test client: boxes equal `vislab predict`'s,
with the run's defaults or the request's conf and iou; a corrupt upload is a one-line 422; the
page has the detect renderer (boxes on the photo, a confidence slider)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from vislab.predict import predict as cli_predict
from vislab.serve.app import Limits, create_app
from vislab.serve.predictors import load_all
from vislab.testing.images import write_corrupt_png
from vislab.testing.models import single_thread

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def run(detect_run):
    return detect_run


@pytest.fixture(scope="module")
def client(run):
    with TestClient(create_app(load_all([run]), token=TOKEN, limits=Limits(max_upload_bytes=1 << 20, max_files=4, window_ms=20))) as c:
        yield c


def post(client, files, data):
    return client.post("/v1/predict", files=[("image", (n, b, "application/octet-stream")) for n, b in files], data=data, headers=AUTH)


def test_detect_model_is_described(client) -> None:
    models = client.get("/v1/models", headers=AUTH).json()["models"]
    assert len(models) == 1 and models[0]["task"] == "detect"
    m = models[0]
    assert m["classes"] == ["square", "circle", "triangle"] and m["conf"] == 0.05 and m["input"]["size"] == [3, 64, 64]
    assert set(m["options"]["properties"]) == {"conf", "iou", "max_det"}


@pytest.mark.parametrize("data", [{}, {"conf": "0.06", "iou": "0.3"}])
def test_boxes_equal_vislab_predict(client, run, data) -> None:
    files = sorted((run.parent / "src/images").glob("*.png"))[:3]
    r = post(client, [(f.name, f.read_bytes()) for f in files], {"model": "det", **data})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "detect"
    want = cli_predict(run, files, conf=float(data["conf"]) if data else None, iou=float(data["iou"]) if data else None)
    for got, expected in zip(body["results"], want):
        assert (got["width"], got["height"]) == (64, 64) and got["conf"] == (float(data["conf"]) if data else 0.05)
        assert [b["class"] for b in got["boxes"]] == [b["class"] for b in expected["boxes"]]
        for a, b in zip(got["boxes"], expected["boxes"]):
            assert [a[k] for k in ("score", "x1", "y1", "x2", "y2")] == pytest.approx([b[k] for k in ("score", "x1", "y1", "x2", "y2")], abs=1e-3)
    assert any(res["boxes"] for res in body["results"])  # a 1-epoch model still has boxes over 0.05


def test_corrupt_upload_is_a_one_line_422_and_the_page_draws_boxes(client, tmp_path) -> None:
    bad = write_corrupt_png(tmp_path / "bad.png")
    r = post(client, [(bad.name, bad.read_bytes())], {"model": "det"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "bad.png" in detail
    r = post(client, [("x.png", b"\x89PNG")], {"model": "det", "conf": "2"})
    assert r.status_code == 422
    page = client.get("/", headers=AUTH).text
    assert "RENDERERS.detect" in page and 'type = "range"' in page


def test_max_det_follows_the_run_unless_the_request_sets_it(run) -> None:
    """Serve keeps the run's detect.max_det boxes per image, as predict and evaluate do (it
    kept 100 while they kept 300); a request's max_det still wins."""
    (predictor,) = load_all([run])
    predictor.section = predictor.section.model_copy(update={"max_det": 2})
    files = sorted((run.parent / "src/images").glob("*.png"))[:3]
    with TestClient(create_app([predictor], token=TOKEN, limits=Limits(max_upload_bytes=1 << 20, max_files=4, window_ms=20))) as c:
        counts = {}
        for data in ({}, {"max_det": "5"}):
            r = post(c, [(f.name, f.read_bytes()) for f in files], {"model": "det", "conf": "0.0", **data})
            assert r.status_code == 200, r.text
            counts[len(data)] = max(len(res["boxes"]) for res in r.json()["results"])
    assert counts == {0: 2, 1: 5}
