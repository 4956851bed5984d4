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


# ---------------------------------------------------------------- --out: a folder predict owns


def _det_images(detect_run: Path) -> list[Path]:
    return sorted((detect_run.parent / "src" / "images").glob("*.png"))


def _refused(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1, res.stderr
    for fragment in fragments:
        assert fragment in res.stderr, res.stderr


def test_predict_out_refuses_a_folder_it_did_not_write_before_predicting(detect_run: Path, tmp_path: Path, monkeypatch) -> None:
    """--out replaced a user's predictions.json and classes.txt, wrote drawn images and YOLO
    labels into a dataset's images/ and labels/ (the next curate took them as truths) and
    among the photos it was predicting; an --out that was a file was refused only after every
    image was predicted. Now such an --out is refused in one line before any prediction."""
    from vislab.tasks.detect import DetectPlugin

    image = _det_images(detect_run)[0]
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "predictions.json").write_text("my notes")
    (user / "classes.txt").write_text("cat\ndog\n")
    dataset = shutil.copytree(detect_run.parent / "src", tmp_path / "dcopy")
    dataset_files = sorted(p for p in dataset.rglob("*"))
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(image, frames / "f.png")
    (tmp_path / "afile").write_text("x")

    def never(*args, **kwargs):
        raise AssertionError("predicted before --out was checked")

    monkeypatch.setattr(DetectPlugin, "predict", never)
    runner = CliRunner()
    _refused(runner.invoke(app, ["predict", str(detect_run), str(image), "--out", str(user)]), "holds files predict did not write", "'classes.txt'")
    _refused(runner.invoke(app, ["predict", str(detect_run), str(image), "--out", str(dataset)]), "holds files predict did not write")
    _refused(runner.invoke(app, ["predict", str(detect_run), str(frames), "--out", str(frames)]), "'f.png'")
    _refused(runner.invoke(app, ["predict", str(detect_run), str(image), "--out", str(tmp_path / "afile")]), "is a file, not a folder")
    assert (user / "predictions.json").read_text() == "my notes" and (user / "classes.txt").read_text() == "cat\ndog\n"
    assert sorted(user.iterdir()) == [user / "classes.txt", user / "predictions.json"]
    assert sorted(p for p in dataset.rglob("*")) == dataset_files
    assert os.listdir(frames) == ["f.png"] and (tmp_path / "afile").read_text() == "x"


def test_predict_out_reuses_only_its_own_folder_and_leaves_no_stale_files(detect_run: Path, tmp_path: Path) -> None:
    """A second predict into the same --out with fewer images left the first one's drawings
    and labels (predictions.json listed 1 image, images/ held 4). Now it removes the files the
    previous predict wrote and this one did not, and never a file of the user's."""
    import json

    images = _det_images(detect_run)[:4]
    out = tmp_path / "pred"
    out.mkdir()  # an empty folder is accepted
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(detect_run), *map(str, images), "--conf", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(list((out / "images").iterdir())) == 4 and len(list((out / "labels").iterdir())) == 4
    (out / "notes.txt").write_text("mine")
    (out / "labels" / "mine.txt").write_text("mine too")
    res = runner.invoke(app, ["predict", str(detect_run), str(images[2]), "--conf", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "predictions.json").read_text())
    assert [r["path"] for r in rows] == [str(images[2])]
    assert [p.name for p in (out / "images").iterdir()] == [Path(rows[0]["drawn"]).name] == ["00000_" + images[2].stem + ".jpg"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["00000_" + images[2].stem + ".txt", "mine.txt"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "labels" / "mine.txt").read_text() == "mine too"


def test_a_folder_predict_wrote_inside_the_inputs_is_skipped_not_predicted(detect_run: Path, tmp_path: Path) -> None:
    """`predict frames --out frames/pred`, run again, predicted on its own drawings (the walk
    took frames/pred/images/*.jpg as inputs). The folder is now skipped, and said so."""
    import json

    frames = tmp_path / "frames"
    frames.mkdir()
    for image in _det_images(detect_run)[:2]:
        shutil.copy(image, frames / image.name)
    out = frames / "pred"
    runner = CliRunner()
    for _ in range(2):
        res = runner.invoke(app, ["predict", str(detect_run), str(frames), "--conf", "0", "--out", str(out), "--format", "json"])
        assert res.exit_code == 0, res.output
    rows = json.loads((out / "predictions.json").read_text())
    assert sorted(Path(r["path"]).name for r in rows if "error" not in r) == sorted(p.name for p in frames.glob("*.png"))
    skipped = [r for r in rows if "error" in r]
    assert [Path(r["path"]) for r in skipped] == [out] and "earlier `vislab predict --out`" in skipped[0]["error"]
    assert len(list((out / "images").iterdir())) == 2


def test_predict_out_that_cannot_be_written_is_one_line_before_predicting(detect_run: Path, tmp_path: Path) -> None:
    """A read-only --out was a PermissionError traceback after every image was predicted."""
    from vislab.testing.processes import vislab_with_read_only

    ro = tmp_path / "ro"
    ro.mkdir()
    said = vislab_with_read_only(ro, "predict", detect_run, _det_images(detect_run)[0], "--out", ro)
    if said is None:
        pytest.skip("needs util-linux unshare and user namespaces to make a folder read-only")
    assert f"{ro}/.vislab-predict.json: cannot write (Read-only file system); choose a writable --out" in said
    assert os.listdir(ro) == []


def test_predict_out_files_hold_the_rows_returned(detect_run: Path, tmp_path: Path) -> None:
    """predictions.json/.csv left out the rows of the entries a folder walk skipped (a broken
    link, a pipe), named in-memory images by a deleted temporary file, and a file name that
    is not UTF-8 was a UnicodeEncodeError traceback. Now they hold the rows `predict` returns,
    and the CSV names a non-UTF-8 file by its bytes, as the stdout CSV does."""
    import csv
    import io
    import json

    from vislab.tasks import get_task

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(_det_images(detect_run)[0], folder / "ok.png")
    shutil.copy(_det_images(detect_run)[1], os.fsencode(folder) + b"/e\xff.png")
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    os.mkfifo(folder / "pipe.png")
    out = tmp_path / "pred"
    rows = predict(detect_run, [Image.open(_det_images(detect_run)[2]), folder], conf=0.0, out=out)
    assert [r["path"] for r in rows][:3] == ["<image 0>", str(folder / "e\udcff.png"), str(folder / "ok.png")]
    assert {r["path"] for r in rows if "error" in r} == {str(folder / "dangling.png"), str(folder / "pipe.png")}
    assert json.loads((out / "predictions.json").read_text()) == json.loads(json.dumps(rows))
    written = (out / "predictions.csv").read_bytes()
    assert written == get_task("detect").format_predictions(rows, "csv").encode("utf-8", "surrogateescape")
    assert b"/e\xff.png," in written
    paths = [r["path"] for r in csv.DictReader(io.StringIO(written.decode("utf-8", "surrogateescape")))]
    assert set(paths) == {r["path"] for r in rows}
    assert len(list((out / "images").iterdir())) == 3  # the three readable images drawn


def test_classification_predict_out_writes_the_rows_returned(run: Path, tmp_path: Path) -> None:
    """One --out rule for every task: a classification run writes predictions.json/.csv too,
    into a folder predict owns."""
    import json

    out = tmp_path / "pred"
    rows = predict(run, _images(run)[:2], top_k=2, out=out)
    assert json.loads((out / "predictions.json").read_text()) == json.loads(json.dumps(rows))
    assert (out / "predictions.csv").read_text().startswith("path,rank,label,prob,error\n")
    (tmp_path / "photos").mkdir()
    shutil.copy(_images(run)[0], tmp_path / "photos" / "a.png")
    with pytest.raises(VislabError, match="holds files predict did not write"):
        predict(run, tmp_path / "photos", out=tmp_path / "photos")


def test_crops_predict_out_gets_its_pictures_instead_of_the_run(crops_run: Path, tmp_path: Path) -> None:
    """crops predict took --out and ignored it (its pictures went to RUN/predict/ only)."""
    import json

    from vislab.testing.images import write_image

    run = shutil.copytree(crops_run, tmp_path / "run")  # predict without --out writes RUN/predict/: not into the shared run
    photo = write_image(tmp_path / "in" / "a.png", seed=0, size=(64, 48))
    out = tmp_path / "pred"
    rows = predict(run, photo, out=out)
    assert Path(rows[0]["picture"]).parent == out.resolve() and Path(rows[0]["picture"]).is_file() and Path(rows[0]["json"]).is_file()
    assert json.loads((out / "predictions.json").read_text()) == json.loads(json.dumps(rows))
    assert not (run / "predict").exists()
    rows = predict(run, photo)
    assert Path(rows[0]["picture"]).parent == run / "predict"
    other = write_image(tmp_path / "in" / "b.png", seed=1, size=(64, 48))
    rows = predict(run, other)  # RUN/predict/ is predict's as an --out is: the earlier picture goes
    assert sorted(p.name for p in (run / "predict").glob("*.png")) == [Path(rows[0]["picture"]).name] == ["000_b.png"]
    assert (run / "predict" / ".vislab-predict.json").is_file() and (run / "predict" / "predictions.json").is_file()


def test_an_eps_file_gets_an_error_row_without_running_ghostscript(run: Path, tmp_path: Path, ghostscript_log: Path) -> None:
    from vislab.testing.images import write_eps

    eps = write_eps(tmp_path / "evil.eps")
    rows = predict(run, [eps, _images(run)[0]], top_k=1)
    assert rows[0]["error"].startswith("cannot read image: not an image vislab reads (EPS: PostScript, refused for safety")
    assert "top" in rows[1]
    with Image.open(eps) as im:
        assert predict(run, [im, _images(run)[0]], top_k=1)[0]["error"].startswith("cannot read image: a PIL image of format EPS")
    assert not ghostscript_log.exists()
