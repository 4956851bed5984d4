"""`vislab serve`'s API with FastAPI's test client, on a tiny CNN run and a tiny ABN run (real
checkpoints, random weights): predictions equal `vislab predict`'s, overlays are images, bad
uploads and bad requests get one-line 4xx answers, the token is enforced, the page loads
nothing from the network; and the micro-batcher really batches, and survives failures."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import io
import json
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.datastructures import UploadFile

from vislab.errors import VislabError
from vislab.predict import predict as cli_predict
from vislab.serve.app import Limits, create_app
from vislab.serve.batching import MicroBatcher, QueueFull
from vislab.serve.predictors import ClassifyPredictor, load_all
from vislab.serve.server import bind, check_access
from vislab.testing.images import (
    write_corrupt_png,
    write_huge_header_png,
    write_image,
    write_not_an_image,
    write_png_exif_after_pixels,
    write_truncated,
)
from vislab.testing.rundirs import make_run_dir

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    cls = make_run_dir(root, name="cnn", checkpoint=True)
    abn = make_run_dir(root, name="abn", checkpoint=True, attention="abn", classes=("red", "green", "blue", "grey"))
    return {"cnn": cls, "abn": abn, "root": root}


@pytest.fixture(scope="module")
def predictors(runs):
    return load_all([runs["cnn"], runs["abn"]])


@pytest.fixture(scope="module")
def client(predictors):
    app = create_app(predictors, token=TOKEN, limits=Limits(max_upload_bytes=LIMIT, max_files=4, window_ms=20))
    with TestClient(app) as c:
        yield c


def images_of(run, n: int = 3) -> list:
    return sorted((run.parent / f"{run.name}-data" / "images").rglob("*.png"))[:n]


def post(client, files, data=None, headers=AUTH):
    """POST /v1/predict with `files` [(name, bytes)] as `image` fields."""
    return client.post("/v1/predict", files=[("image", (n, b, "application/octet-stream")) for n, b in files], data=data or {}, headers=headers)


def one_line_error(r, status: int) -> str:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    return detail


def test_models_describe_tasks_classes_input_and_metrics(client, runs) -> None:
    body = client.get("/v1/models", headers=AUTH).json()
    assert body["default"] == "cnn"
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"cnn", "abn"}
    cnn, abn = models["cnn"], models["abn"]
    assert cnn["task"] == abn["task"] == "classify"
    assert cnn["engine"] == "pytorch"
    assert cnn["classes"] == ["cat", "dog", "fox"] and abn["classes"] == ["red", "green", "blue", "grey"]
    assert cnn["input"]["size"] == [3, 32, 32] and cnn["input"]["mean"] == [0.5, 0.5, 0.5]
    assert cnn["overlay"] == "gradcam" and abn["overlay"] == "attention" and abn["model"].endswith("+ABN")
    assert set(cnn["options"]["properties"]) == {"top_k", "overlay"}
    test_metrics = json.loads((runs["cnn"] / "eval" / "test" / "metrics.json").read_text())
    assert cnn["metrics"]["test"]["accuracy"] == pytest.approx(test_metrics["accuracy"])
    assert "val/acc" in cnn["metrics"]["best_val"]
    assert body["limits"]["max_upload_bytes"] == LIMIT
    assert cnn["batching"]["items"] >= 0


@pytest.mark.parametrize("model", ["cnn", "abn"])
def test_predictions_equal_vislab_predict(client, runs, model) -> None:
    files = images_of(runs[model], 3)
    r = post(client, [(f.name, f.read_bytes()) for f in files], {"model": model, "top_k": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and body["task"] == "classify"
    expected = cli_predict(runs[model], files, top_k=2)
    assert [res["file"] for res in body["results"]] == [f.name for f in files]
    for got, want in zip(body["results"], expected):
        assert (got["width"], got["height"]) == (32, 32)
        assert got["pred"] == want["pred"]
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
        assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in want["top"]], abs=1e-5)
        assert "overlay" not in got


@pytest.mark.parametrize("model,kind", [("cnn", "gradcam"), ("abn", "attention")])
def test_overlay_is_the_heat_map_on_the_image(client, runs, model, kind) -> None:
    f = images_of(runs[model], 1)[0]
    r = post(client, [(f.name, f.read_bytes())], {"model": model, "overlay": "true", "top_k": "1"})
    res = r.json()["results"][0]
    overlay = res["overlay"]
    assert overlay["kind"] == kind and overlay["layer"] and overlay["empty_map"] is False
    if kind == "gradcam":
        assert overlay["class"] == res["pred"]  # the CAM explains the class shown first
    head, data = overlay["image"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        assert im.size == (224, 224)  # the 32-pixel crop, upscaled for viewing
        px = np.asarray(im.convert("RGB"), dtype=np.float32)
    original = np.asarray(Image.open(f).convert("RGB").resize((224, 224)), dtype=np.float32)
    assert np.abs(px - original).mean() > 5  # the heat map is drawn over the image, not the image alone


def test_an_overlay_whose_map_is_zero_everywhere_says_so(tmp_path) -> None:
    """A Grad-CAM map zero everywhere (the class's evidence at the layer nowhere positive) came
    back as a plain image, looking like a heat map that found nothing to show; the overlay now
    carries empty_map as explain records it (and the page's caption says so)."""
    from vislab.testing.rundirs import blind_cams

    run = make_run_dir(tmp_path, name="blind", checkpoint=True)
    blind_cams(run)
    f = images_of(run, 1)[0]
    with TestClient(create_app(load_all([run]))) as c:
        r = post(c, [(f.name, f.read_bytes())], {"overlay": "true"}, headers={})
    overlay = r.json()["results"][0]["overlay"]
    assert overlay["kind"] == "gradcam" and overlay["empty_map"] is True


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: write_corrupt_png(p / "corrupt.png"), "corrupt.png: cannot read image: "),
        (lambda p: write_truncated(p / "cut.jpg"), "cut.jpg: cannot read image: "),
        (lambda p: write_not_an_image(p / "notes.txt"), "notes.txt: cannot read image: not an image vislab reads"),
        (lambda p: write_huge_header_png(p / "bomb.png"), "bomb.png: cannot read image: decompression bomb"),
    ],
)
def test_bad_images_get_one_line_422(client, tmp_path, make, reason) -> None:
    path = make(tmp_path)
    detail = one_line_error(post(client, [(path.name, path.read_bytes())]), 422)
    assert detail.startswith(reason), detail


def test_size_is_as_displayed_even_with_exif_after_the_pixels(client, tmp_path) -> None:
    # stored 48x32, shown rotated (orientation 6): the model sees 32x48, and so must the answer
    late = write_png_exif_after_pixels(tmp_path / "late.png", orientation=6)
    jpeg = write_image(tmp_path / "big.jpg", size=(480, 320), orientation=6)  # decoded at reduced scale
    r = post(client, [(late.name, late.read_bytes()), (jpeg.name, jpeg.read_bytes())])
    assert r.status_code == 200, r.text
    assert [(res["width"], res["height"]) for res in r.json()["results"]] == [(32, 48), (320, 480)]


def test_upload_names_are_text_never_paths(client, runs) -> None:
    f = images_of(runs["cnn"], 1)[0]
    r = post(client, [("../../../../tmp/evil.png", f.read_bytes()), ("a\nb.png", f.read_bytes())])
    names = [res["file"] for res in r.json()["results"]]
    assert names[0] == "../../../../tmp/evil.png" and "\n" not in names[1]


def test_one_bad_image_fails_the_request_naming_it(client, runs, tmp_path) -> None:
    good = images_of(runs["cnn"], 1)[0]
    bad = write_not_an_image(tmp_path / "second.png")
    detail = one_line_error(post(client, [(good.name, good.read_bytes()), (bad.name, bad.read_bytes())]), 422)
    assert detail.startswith("second.png: ")


def test_pixel_limit_is_the_servers_setting(predictors, runs) -> None:
    app = create_app(predictors, limits=Limits(max_pixels=32 * 32 - 1))
    f = images_of(runs["cnn"], 1)[0]
    with TestClient(app) as c:
        detail = one_line_error(post(c, [(f.name, f.read_bytes())], headers={}), 422)
    assert "decompression bomb: 32x32 = 1,024 pixels, over the 1,023-pixel limit" in detail


def test_a_header_pillow_refuses_at_open_is_measured_against_the_servers_limit(predictors, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default, as in a fresh process
    bomb = write_huge_header_png(tmp_path / "bomb.png", 30_000, 30_000)  # over twice Pillow's limit: it refuses at open
    with TestClient(create_app(predictors, limits=Limits(max_pixels=1_000_000))) as c:
        detail = one_line_error(post(c, [(bomb.name, bomb.read_bytes())], headers={}), 422)
    assert detail == (
        "bomb.png: cannot read image: decompression bomb: 900,000,000 pixels, "
        "over the 1,000,000-pixel limit (curate and serve take --max-pixels to raise it)"
    )


def test_upload_over_the_limit_is_413(client) -> None:
    detail = one_line_error(post(client, [("big.png", b"\0" * (LIMIT + 1))]), 413)
    assert "upload limit" in detail


def noise_png(side: int) -> bytes:
    """A PNG of random pixels: it does not compress, so it is about 3 * side**2 bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_an_upload_over_1_mb_stays_in_memory(predictors, tmp_path, monkeypatch) -> None:
    # Starlette spools a file part over 1 MB to $TMPDIR; with $TMPDIR gone, a spooled upload fails
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    data = noise_png(640)
    assert len(data) > 1024 * 1024
    with TestClient(create_app(predictors, limits=Limits(max_upload_bytes=4 * LIMIT))) as c:
        r = post(c, [("big.png", data)], headers={})
    assert r.status_code == 200, r.text
    assert (r.json()["results"][0]["width"], r.json()["results"][0]["height"]) == (640, 640)


def test_an_upload_the_server_cannot_store_is_a_json_503(predictors, runs, monkeypatch) -> None:
    async def disk_full(self, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(UploadFile, "write", disk_full)
    f = images_of(runs["cnn"], 1)[0]
    with TestClient(create_app(predictors)) as c:
        detail = one_line_error(post(c, [(f.name, f.read_bytes())], headers={}), 503)
    assert "No space left on device" in detail


def test_requests_that_are_not_a_prediction_get_422(client, runs, tmp_path) -> None:
    f = images_of(runs["cnn"], 1)[0]
    img = [(f.name, f.read_bytes())]
    assert "top_k" in one_line_error(post(client, img, {"top_k": "0"}), 422)
    assert "top_k" in one_line_error(post(client, img, {"top_k": "many"}), 422)
    assert one_line_error(post(client, img, {"topk": "3"}), 422).startswith("topk: unknown field")
    assert "no image" in one_line_error(post(client, [], {"top_k": "3"}), 422)
    assert "file upload" in one_line_error(client.post("/v1/predict", data={"image": "x"}, headers=AUTH), 422)
    r = client.post("/v1/predict", json={"image": "x"}, headers=AUTH)  # not multipart at all
    assert one_line_error(r, 415) == "Content-Type application/json: send the images as multipart/form-data (curl -F image=@photo.jpg)"
    assert one_line_error(post(client, img * 5), 400).startswith("more than 4 files in one request (the server's --max-files)")


# ---- what the multipart body says, read strictly -------------------------------------------


def raw_form(parts: list[tuple[str, bytes]], close: bool = True, boundary: str = "b0undary") -> tuple[bytes, dict]:
    """A multipart body of (Content-Disposition parameters, content) parts, with or without
    its closing boundary, and its Content-Type header."""
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; {disp}\r\n\r\n".encode() + data + b"\r\n" for disp, data in parts)
    return body + (f"--{boundary}--\r\n".encode() if close else b""), {"Content-Type": f"multipart/form-data; boundary={boundary}", **AUTH}


def post_raw(client, parts: list[tuple[str, bytes]], close: bool = True, **kw):
    body, headers = raw_form(parts, close, **kw)
    return client.post("/v1/predict", content=body, headers=headers)


def test_a_body_without_its_closing_boundary_is_a_truncated_upload(client, runs) -> None:
    """Starlette took a body cut short for a whole form: two images and no closing boundary
    answered 200 for the first alone, a trailing option was dropped, one image gave 'no image'."""
    f = images_of(runs["cnn"], 1)[0].read_bytes()
    image = ('name="image"; filename="a.png"', f)
    truncated = "multipart body ended before its closing boundary (truncated upload); send the whole request again"
    assert one_line_error(post_raw(client, [image, image], close=False), 400) == truncated
    assert one_line_error(post_raw(client, [image, ('name="top_k"', b"1")], close=False), 400) == truncated
    assert one_line_error(post_raw(client, [image], close=False), 400) == truncated
    r = post_raw(client, [image, image, ('name="top_k"', b"1")])  # the same, whole
    assert r.status_code == 200 and [len(res["top"]) for res in r.json()["results"]] == [1, 1], r.text


def test_a_misshapen_form_is_told_what_is_wrong(client, runs) -> None:
    f = images_of(runs["cnn"], 1)[0].read_bytes()
    image = ('name="image"; filename="a.png"', f)
    not_a_file = "image: must be a file upload (a part with filename=\"...\"; filename*= alone is not one), not a text field"
    assert one_line_error(post_raw(client, [('name="image"', b"\0" * 70_000)]), 422) == not_a_file  # was: Part exceeded 64KB
    assert one_line_error(post_raw(client, [("name=\"image\"; filename*=UTF-8''a%20b.png", b"\0" * 70_000)]), 422) == not_a_file
    assert one_line_error(post_raw(client, [image, ('name="model"; filename="m.txt"', b"cnn")]), 422) == "model: must be a text field, not a file"
    assert one_line_error(post_raw(client, [image, ('name="top_k"', b"3"), ('name="top_k"', b"1")]), 422) == "top_k given twice; send each option once"
    assert one_line_error(post_raw(client, [image, ('name="model"', b"cnn"), ('name="model"', b"abn")]), 422) == "model given twice; send each option once"
    body, headers = raw_form([image])
    r = client.post("/v1/predict", content=body, headers={**headers, "Content-Type": "multipart/mixed; boundary=b0undary"})
    assert one_line_error(r, 415).startswith("Content-Type multipart/mixed: send the images as multipart/form-data")
    long_name = "x" * 5000 + ".png"
    detail = one_line_error(post_raw(client, [(f'name="image"; filename="{long_name}"', f)]), 400)
    assert detail.startswith("a part's header line is too long for the multipart parser (a file name of thousands"), detail


def test_decoding_is_bounded_across_the_whole_server(predictors, runs, monkeypatch) -> None:
    """Every file of every request decoded at once: one request of 32 small 1-bit PNGs of
    169 M pixels each needed ~25 GB. Now at most `decode_slots` images decode at a time,
    however many requests and files arrive together."""
    import vislab.serve.app as app_module

    active, peak, lock = 0, 0, threading.Lock()
    real = app_module.load_image

    def counted(*args, **kwargs):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(app_module, "load_image", counted)
    img = [(f.name, f.read_bytes()) for f in images_of(runs["cnn"], 4)]
    with TestClient(create_app(predictors, limits=Limits(decode_slots=2))) as c, ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: post(c, img, headers={}), range(3)))
    assert [r.status_code for r in replies] == [200] * 3
    assert peak == 2  # 12 images in 3 requests, two at a time
    assert Limits().max_pixels == 50_000_000  # a web service's pixel limit, not curate's 179 M


@pytest.mark.parametrize("name", ["resnet", "../cnn", "/etc/passwd", "cnn/../abn"])
def test_unknown_model_is_404_and_never_a_path(client, runs, name) -> None:
    f = images_of(runs["cnn"], 1)[0]
    detail = one_line_error(post(client, [(f.name, f.read_bytes())], {"model": name}), 404)
    assert "models: cnn, abn" in detail


def test_token_is_required_on_the_api_only(client, runs) -> None:
    f = images_of(runs["cnn"], 1)[0]
    img = [(f.name, f.read_bytes())]
    r = post(client, img, headers={})
    assert "needs a token" in one_line_error(r, 401) and r.headers["www-authenticate"] == "Bearer"
    assert one_line_error(post(client, img, headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"}), 401) == "wrong token"
    assert one_line_error(client.get("/v1/models", headers={"Authorization": f"Basic {TOKEN}"}), 401)
    assert client.get("/v1/models").status_code == 401
    client.cookies.set("vislab_token", TOKEN.replace("-", "%2D"))  # the page sets it URL-encoded
    try:
        assert post(client, img, headers={}).status_code == 200
    finally:
        client.cookies.clear()
    assert client.get("/healthz").json() == {"status": "ok", "models": 2}
    assert client.get("/").status_code == 200


def test_page_is_one_self_contained_file(client) -> None:
    r = client.get("/")
    html = r.text
    assert r.headers["content-type"].startswith("text/html") and "<title>vislab serve</title>" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must not load anything from the network"
    assert "@import" not in html and "url(" not in html
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp  # the inline script is allowed by its hash, nothing else is
    assert "RENDERERS.classify" in html and 'name="viewport"' in html


def test_openapi_documents_the_predict_form(client) -> None:
    spec = client.get("/openapi.json", headers=AUTH).json()
    form = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"]
    assert form["properties"]["model"]["enum"] == ["cnn", "abn"]
    assert form["properties"]["top_k"]["x-tasks"] == ["classify"]
    assert "/v1/models" in spec["paths"] and "/healthz" in spec["paths"]


def test_onnx_engine_where_an_export_exists(runs, tmp_path) -> None:
    from vislab.export import export_run

    run = make_run_dir(tmp_path, name="onnx-run", checkpoint=True)
    plain = ClassifyPredictor.load(run, onnx=True)
    assert plain.engine == "pytorch" and "served with PyTorch" in plain.notes[0]
    export_run(run)
    fast = ClassifyPredictor.load(run, onnx=True)
    assert fast.engine == "onnxruntime" and fast.notes == []
    files = images_of(run, 4)
    opts = fast.Options(top_k=3)
    batch = lambda p: p.predict_batch([p.preprocess(Image.open(f).convert("RGB"), opts) for f in files], [opts] * len(files))  # noqa: E731
    for a, b in zip(batch(fast), batch(plain)):
        assert a["pred"] == b["pred"]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=1e-4)
    # an export of another run's model is refused, not served with the wrong class names
    other = make_run_dir(tmp_path, name="other", checkpoint=True, classes=("a", "b", "c"))
    export_run(other, out=run / "export" / "model.onnx")
    with pytest.raises(VislabError, match="not an export of this run's model"):
        ClassifyPredictor.load(run, onnx=True)


def test_runs_with_one_name_get_their_parent_in_it(tmp_path) -> None:
    a = make_run_dir(tmp_path / "a", name="run", checkpoint=True, dataset=False)
    b = make_run_dir(tmp_path / "b", name="run", checkpoint=True, dataset=False)
    assert [p.name for p in load_all([a, b])] == ["a/run", "b/run"]
    with pytest.raises(VislabError, match="served twice"):
        load_all([a, a])


def test_access_checks() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        check_access(host, None)
    for host in ("0.0.0.0", "192.168.1.10", "::", "myhost.example"):
        with pytest.raises(VislabError, match="needs|without a password"):
            check_access(host, None)
    check_access("0.0.0.0", TOKEN)
    for weak in ("short", "has spaces in it, long enough", "semi;colon-0123456789"):
        with pytest.raises(VislabError, match="--token"):
            check_access("0.0.0.0", weak)


def test_cli_refuses_the_network_without_a_token_before_loading(runs) -> None:
    from typer.testing import CliRunner

    from vislab.cli import app

    r = CliRunner().invoke(app, ["serve", str(runs["cnn"]), "--host", "0.0.0.0"], env={"VISLAB_SERVE_TOKEN": ""})
    assert r.exit_code == 2
    assert "--host 0.0.0.0: other machines could use the models" in r.output and "Traceback" not in r.output


def test_a_port_in_use_is_one_line() -> None:
    first = bind("127.0.0.1", 0)
    try:
        with pytest.raises(VislabError, match="already in use; choose another --port"):
            bind("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


# ---- the micro-batcher -------------------------------------------------------------------


def test_concurrent_requests_share_batches_with_the_same_answers(predictors, runs) -> None:
    """16 images submitted at once run in fewer forward passes, and each gets the result it
    gets alone (batch size 1)."""
    cnn = predictors[0]
    opts = cnn.Options(top_k=3)
    items = [cnn.preprocess(Image.open(f).convert("RGB"), opts) for f in images_of(runs["cnn"], 16)]

    async def run(max_batch: int) -> tuple[list, MicroBatcher]:
        batcher = MicroBatcher(cnn.predict_batch, max_batch=max_batch, window_s=0.05)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(it, opts) for it in items)), batcher
        finally:
            await batcher.stop()

    batched, b16 = asyncio.run(run(16))
    alone, b1 = asyncio.run(run(1))
    assert b1.stats.largest == 1 and b1.stats.batches == 16
    assert b16.stats.largest > 1 and b16.stats.batches < 16 and b16.stats.items == 16
    for a, b in zip(batched, alone):
        assert a["pred"] == b["pred"]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=1e-5)


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    def run_batch(items, options):
        if "poison" in items:
            raise ValueError("model exploded")
        return [f"ok {i}" for i in items]

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch=8, window_s=0.05)
        batcher.start()
        try:
            first = await asyncio.gather(batcher.submit("a", None), batcher.submit("poison", None), return_exceptions=True)
            later = await batcher.submit("b", None)
        finally:
            await batcher.stop()
        return first, later

    first, later = asyncio.run(scenario())
    assert all(isinstance(e, ValueError) and str(e) == "model exploded" for e in first)
    assert later == "ok b"


def test_a_full_queue_refuses_at_once() -> None:
    release = threading.Event()

    def slow(items, options):
        release.wait(10)
        return list(items)

    async def scenario():
        batcher = MicroBatcher(slow, max_batch=1, window_s=0, max_queue=1)
        batcher.start()
        try:
            running = asyncio.ensure_future(batcher.submit(1, None))
            await asyncio.sleep(0.2)  # the worker took item 1 and waits in `slow`
            queued = asyncio.ensure_future(batcher.submit(2, None))
            await asyncio.sleep(0)
            with pytest.raises(QueueFull, match="1 images are already waiting"):
                await batcher.submit(3, None)
            release.set()
            return await running, await queued
        finally:
            release.set()
            await batcher.stop()

    assert asyncio.run(scenario()) == (1, 2)


def test_serving_wrote_nothing_into_the_run_directories(runs, client) -> None:
    """Last in this file: after every request above, the served runs hold the files they held."""
    for name in ("cnn", "abn"):
        files = sorted(p.relative_to(runs[name]).as_posix() for p in runs[name].rglob("*"))
        assert files == RUN_FILES[name]


RUN_FILES = {
    name: ["checkpoints", "checkpoints/best.ckpt", "config.yaml", "eval", "eval/test", "eval/test/metrics.json",
           "eval/test/predictions.csv", "eval/test/probs.npy", "health.json", "metrics.csv", "run.json", "summary.json"]
    for name in ("cnn", "abn")
}


@pytest.mark.parametrize(
    "flag,value,says",
    [
        ("--max-upload-mb", "nan", "--max-upload-mb (a finite number)"),
        ("--max-upload-mb", "inf", "--max-upload-mb (a finite number)"),
        ("--batch-window-ms", "inf", "--batch-window-ms inf: choose from 0 to 1000 ms"),
        ("--batch-window-ms", "1e9", "--batch-window-ms 1e+09: choose from 0 to 1000 ms"),
        ("--batch-window-ms", "nan", "--batch-window-ms nan: choose from 0 to 1000 ms"),
        ("--batch-window-ms", "-1", "--batch-window-ms -1: choose from 0 to 1000 ms"),
    ],
)
def test_cli_refuses_limits_that_are_not_finite_or_sane(runs, flag, value, says) -> None:
    from typer.testing import CliRunner

    from vislab.cli import app

    r = CliRunner().invoke(app, ["serve", str(runs["cnn"]), "--port", "0", flag, value])
    assert r.exit_code == 2, r.output
    assert says in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
