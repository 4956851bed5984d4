"""Issue 15's API acceptance for every task `vislab serve` serves (classify, detect, crops),
with FastAPI's test client on a tiny real run of each: a good image is answered, and a
corrupt image, a text file, a huge image (a decompression bomb's header), a wrong model
name and a missing token each get their one-line 4xx answer, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from vislab.serve.app import Limits, create_app
from vislab.serve.predictors import load_all
from vislab.testing.images import write_corrupt_png, write_huge_header_png, write_not_an_image
from vislab.testing.rundirs import make_run_dir

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TASKS = ("classify", "detect", "crops")


def _good_image(task: str, run: Path) -> Path:
    folder = {"classify": run.parent / f"{run.name}-data" / "images", "detect": run.parent / "src" / "images", "crops": run.parent / "data" / "images"}[task]
    return sorted(folder.rglob("*.png"))[0]


@pytest.fixture(scope="module", params=TASKS)
def served(request, tmp_path_factory) -> Iterator[tuple[str, TestClient, Path]]:
    """(task, client serving one run of it, an image of its data)."""
    task = request.param
    if task == "classify":
        run = make_run_dir(tmp_path_factory.mktemp("serve-classify"), name="cnn", checkpoint=True)
    else:
        run = request.getfixturevalue(f"{task}_run")
    with TestClient(create_app(load_all([run]), token=TOKEN, limits=Limits(max_upload_bytes=1 << 22, max_files=4, window_ms=20))) as client:
        yield task, client, _good_image(task, run)


def post(client: TestClient, path: Path, data: dict[str, str] | None = None, headers: dict[str, str] = AUTH):
    return client.post("/v1/predict", files=[("image", (path.name, path.read_bytes(), "application/octet-stream"))], data=data or {}, headers=headers)


def one_line(r, status: int) -> str:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    return detail


def test_a_good_image_is_answered_by_its_task(served) -> None:
    task, client, good = served
    r = post(client, good)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == task and [res["file"] for res in body["results"]] == [good.name]
    fields = {"classify": "pred", "detect": "boxes", "crops": "crop_prob"}[task]
    assert fields in body["results"][0]


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "corrupt image": (lambda d: write_corrupt_png(d / "corrupt.png"), "corrupt.png: cannot read image: "),
    "text file": (lambda d: write_not_an_image(d / "notes.txt"), "notes.txt: cannot read image: not an image vislab reads"),
    "huge image": (lambda d: write_huge_header_png(d / "bomb.png"), "bomb.png: cannot read image: decompression bomb"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_uploads_are_one_line_422(served, tmp_path, case) -> None:
    _, client, _ = served
    make, reason = BAD[case]
    assert one_line(post(client, make(tmp_path)), 422).startswith(reason)


def test_a_wrong_model_name_is_404_naming_the_served_ones(served) -> None:
    _, client, good = served
    (name,) = [m["name"] for m in client.get("/v1/models", headers=AUTH).json()["models"]]
    detail = one_line(post(client, good, {"model": "no-such-model"}), 404)
    assert "no-such-model" in detail and f"models: {name}" in detail


def test_a_missing_or_wrong_token_is_401(served) -> None:
    _, client, good = served
    assert "needs a token" in one_line(post(client, good, headers={}), 401)
    assert one_line(post(client, good, headers={"Authorization": "Bearer wrong"}), 401) == "wrong token"
    assert client.get("/v1/models").status_code == 401
