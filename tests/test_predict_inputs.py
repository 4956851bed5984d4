"""What `predict` accepts and finds: linked folders, entries it cannot read (each named with
its reason), and in-memory images through the Python API."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vislab.cli import app
from vislab.errors import VislabError
from vislab.predict import predict
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pred_inputs")
    data = make_pattern_dataset(root / "data", per_class=20, size=16)
    return train(tiny_config(train={"epochs": 1}), data, root / "run")


def _images(run: Path, cls: str = "vertical") -> list[Path]:
    return sorted((run.parent / "data" / "images" / cls).glob("*.png"))


def test_predict_follows_linked_folders_and_names_every_entry_it_skips(run: Path, tmp_path: Path) -> None:
    lk = tmp_path / "lk"
    lk.mkdir()
    os.symlink(_images(run)[0].parent, lk / "three")
    (lk / "one.png").write_bytes(_images(run, "horizontal")[0].read_bytes())
    os.symlink(tmp_path / "gone.png", lk / "dangling.png")
    os.symlink(lk, lk / "loop")
    os.symlink("self.png", lk / "self.png")
    os.mkfifo(lk / "pipe.png")
    (lk / "empty.jpg").write_bytes(b"")
    res = CliRunner().invoke(app, ["predict", str(run), str(lk), "-f", "json"])
    assert res.exit_code == 0, res.output
    import json

    rows = {Path(r["path"]).relative_to(lk).as_posix(): r for r in json.loads(res.stdout)}
    linked = [k for k in rows if k.startswith("three/")]
    assert len(linked) == len(_images(run)) and all("top" in rows[k] for k in linked)
    assert "top" in rows["one.png"]
    assert "dangling symbolic link" in rows["dangling.png"]["error"]
    assert "symbolic link loop" in rows["self.png"]["error"]
    assert "symbolic link loop" in rows["loop"]["error"]
    assert "not a regular file" in rows["pipe.png"]["error"]
    assert rows["empty.jpg"]["error"] == "cannot read image: empty file (0 bytes)"
    assert "5 of " in res.stderr and "skipped" in res.stderr


def test_a_link_loop_through_an_outside_folder_is_walked_once(run: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.png").write_bytes(_images(run)[0].read_bytes())
    os.symlink(tmp_path / "out", tmp_path / "a" / "out")
    os.symlink(tmp_path / "a", tmp_path / "out" / "back")  # out/back -> a -> out -> ...
    results = predict(run, tmp_path / "a")
    assert [Path(r["path"]).name for r in results if "top" in r] == ["x.png"]
    assert [r["error"] for r in results if "error" in r] == ["skipped: symbolic link loop (links back to a folder being walked, or one walked already)"]


def test_predict_takes_one_path_as_str_or_path(run: Path) -> None:
    img = _images(run)[0]
    by_str, by_path = predict(run, str(img)), predict(run, img)
    assert [r["path"] for r in by_str] == [str(img)] and by_path[0]["top"] == by_str[0]["top"]


def test_in_memory_images_score_as_the_same_image_saved_as_png(run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (20, 24), dtype=np.uint8)]), "RGBA")
    files = []
    for name, im in (("rgb", Image.fromarray(rgb)), ("grey", Image.fromarray(grey)), ("rgba", rgba)):
        im.save(tmp_path / f"{name}.png")
        files.append(tmp_path / f"{name}.png")
    from_files = predict(run, files, top_k=3)
    from_memory = predict(run, [rgb, grey, rgba], top_k=3)
    assert [r["path"] for r in from_memory] == ["<image 0>", "<image 1>", "<image 2>"]
    for a, b in zip(from_files, from_memory):
        assert a["top"] == b["top"]
    single = predict(run, Image.fromarray(rgb), top_k=3)
    assert single[0]["top"] == from_files[0]["top"]
    with pytest.raises(VislabError, match=r"pass uint8 pixels shaped HxW \(grey\) or HxWx3"):
        predict(run, rgb.astype(np.float32))


def test_a_pil_image_with_exif_orientation_scores_as_the_same_photo_given_by_path(run: Path, tmp_path: Path) -> None:
    stored = Image.open(_images(run)[0]).convert("RGB").resize((24, 20))  # small: no JPEG draft on either side
    exif = Image.Exif()
    exif[0x0112] = 6  # a camera held sideways: shown turned 90 degrees clockwise
    path = tmp_path / "sideways.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as opened:
        assert opened.getexif()[0x0112] == 6
        by_path, in_memory = predict(run, path, top_k=3), predict(run, opened, top_k=3)
    assert in_memory[0]["top"] == by_path[0]["top"]
    with Image.open(path) as opened:
        as_stored = predict(run, np.asarray(opened), top_k=3)  # pixels without the tag: the turn matters
    assert as_stored[0]["top"] != by_path[0]["top"]


def _sideways_jpeg(run: Path, path: Path) -> Path:
    """A small JPEG (no draft on either side) tagged orientation 6: shown turned 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(_images(run)[0]).convert("RGB").resize((24, 20)).save(path, quality=95, exif=exif.tobytes())
    return path


def test_a_pil_image_turned_upright_by_the_caller_is_not_turned_again(run: Path, tmp_path: Path) -> None:
    path = _sideways_jpeg(run, tmp_path / "sideways.jpg")
    by_path = predict(run, path, top_k=3)
    with Image.open(path) as opened:
        upright = opened.transpose(Image.Transpose.ROTATE_270)  # the caller's own turn for orientation 6
    assert upright.getexif()[0x0112] == 6  # the old tag rides along with the turned pixels
    assert predict(run, upright, top_k=3)[0]["top"] == by_path[0]["top"]
    with Image.open(path) as opened:
        opened.load()  # changed in place: still the file's pixels as stored, so still turned
        assert predict(run, opened, top_k=3)[0]["top"] == by_path[0]["top"]
        converted = opened.convert("RGB")  # a new image: taken as its pixels, as a numpy array of them
    assert predict(run, converted, top_k=3)[0]["top"] == predict(run, np.asarray(converted), top_k=3)[0]["top"]


def test_a_lazily_opened_pil_image_with_bad_data_gets_the_error_row_its_file_gets(run: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole.jpg"
    Image.open(_images(run)[0]).convert("RGB").resize((24, 20)).save(whole, quality=95)  # small: no JPEG draft
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[:-100])
    by_path = predict(run, [truncated, whole], top_k=3)
    assert by_path[0]["error"].startswith("cannot read image: truncated image (OSError")
    with Image.open(truncated) as bad, Image.open(whole) as good:  # Image.open reads the header only
        in_memory = predict(run, [good, bad, whole], top_k=3)
    assert [r["path"] for r in in_memory] == ["<image 0>", "<image 1>", str(whole)]
    assert in_memory[1] == {"path": "<image 1>", "error": by_path[0]["error"]}
    assert in_memory[0]["top"] == in_memory[2]["top"] == by_path[1]["top"]
    with Image.open(truncated) as bad, pytest.raises(VislabError, match=r"^<image 0>: cannot read image: truncated image .*none of the 1 image"):
        predict(run, bad)


@pytest.mark.parametrize("which", ["run", "detect_run", "crops_run"])  # classify, detect, crops
def test_predict_shows_a_progress_bar_on_stderr_and_keeps_stdout_clean(which: str, request, tmp_path: Path, monkeypatch) -> None:
    import csv
    import io

    from vislab.testing.images import write_image

    run = shutil.copytree(request.getfixturevalue(which), tmp_path / "run")  # crops predict writes RUN/predict/: not into the shared run
    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", seed=i, size=(64, 48))
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich draws as on a terminal
    res = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "in"), "-f", "csv"])
    assert res.exit_code == 0, res.output
    assert "predict" in res.stderr and "\x1b" in res.stderr  # the (transient) bar was drawn
    assert "\x1b" not in res.stdout
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert {Path(r["path"]).name for r in rows} == {"0.png", "1.png", "2.png"}
    monkeypatch.setenv("TTY_COMPATIBLE", "0")  # not a terminal: no bar, not even a blank line
    res = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "in"), "-f", "csv"])
    assert res.exit_code == 0 and res.stderr == "" and res.stdout.startswith("path,")


def test_an_empty_in_memory_image_gets_an_error_row_and_no_images_is_one_line(run: Path) -> None:
    good = np.asarray(Image.open(_images(run)[0]).convert("RGB"))
    rows = predict(run, [good, np.zeros((0, 5), np.uint8), Image.new("RGB", (0, 0)), good], top_k=3)
    assert [r["path"] for r in rows] == ["<image 0>", "<image 1>", "<image 2>", "<image 3>"]
    assert rows[1] == {"path": "<image 1>", "error": "cannot read image: empty image (5x0 pixels)"}
    assert rows[2] == {"path": "<image 2>", "error": "cannot read image: empty image (0x0 pixels)"}
    assert rows[0]["top"] == rows[3]["top"]
    with pytest.raises(VislabError, match=r"^<image 0>: cannot read image: empty image \(0x0 pixels\); none of the 1 image"):
        predict(run, Image.new("L", (0, 0)))
    with pytest.raises(VislabError, match=r"^no images given; pass image files or folders of images$"):
        predict(run, [])
