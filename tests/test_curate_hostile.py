"""Hostile-but-honest inputs to curate, stats and materialize (issue 11): odd labels, special
files, non-finite numbers, hand-edited manifests, vislab's own outputs inside a source,
class names matplotlib would parse. Each ends in a correct result or a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from test_curate_cli import assert_one_line_error, invoke

from vislab.data import checks
from vislab.data.curate import CurateOptions, run_curate
from vislab.data.manifest import read_manifest
from vislab.errors import VislabError
from vislab.testing.images import write_image, write_image_folder


def curate(out: Path, *sources: Path, **options) -> tuple[pd.DataFrame, dict]:
    summary = run_curate(CurateOptions(sources=list(sources), workers=1, **options), out)
    return read_manifest(out).set_index("path", drop=False), summary


def cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command in its own process, so a blocking open shows up as a timeout."""
    return subprocess.run(
        [sys.executable, "-m", "vislab.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def sentinel(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a user's file")
    return path


# ---------------------------------------------------------------- item 1: labels as folder names


def test_unsafe_labels_are_excluded_and_materialize_stays_inside_out(tmp_path):
    photos = write_image_folder(tmp_path / "photos", ["cat"], per_class=4)
    escape = sentinel(tmp_path / "x" / photos[0].name)  # where '../../x' would have landed
    labels = tmp_path / "labels.csv"
    bad = ["../../x", str(tmp_path / "abs"), "tab\there"]
    pd.DataFrame({"path": [str(p) for p in photos], "label": bad + ["cat"]}).to_csv(labels, index=False)

    ds = tmp_path / "ds"
    assert invoke("curate", "--labels", labels, "--out", ds, "--workers", "1").exit_code == 0
    df = read_manifest(ds).set_index("path")
    for path, label in zip(photos, bad):
        assert (df.loc[str(path), "status"], df.loc[str(path), "reason"], df.loc[str(path), "label"]) == (
            "excluded",
            "unsafe_label",
            label,
        )
    assert json.loads((ds / "curation.json").read_text())["reasons"]["unsafe_label"] == 3
    assert df.loc[str(photos[3]), "status"] == "ok"

    for mode in ("copy", "symlink"):
        out = tmp_path / f"tree-{mode}"
        assert invoke("materialize", ds, "--out", out, "--mode", mode).exit_code == 0
        written = [p for p in out.rglob("*") if not p.is_dir() and p.name != ".vislab-materialized.json"]
        assert [p.relative_to(out) for p in written] == [Path("unsplit/cat") / photos[3].name]
    assert escape.read_text() == "a user's file"
    assert not (tmp_path / "abs").exists()


def test_folder_names_with_control_characters_or_bad_bytes(tmp_path):
    root = tmp_path / "photos"
    good = write_image(root / "cat" / "a.png", seed=1)
    tab = write_image(root / "tab\there" / "b.png", seed=2)
    write_image(os.fsdecode(bytes(root / "b") + b"\xff.png"), seed=3)  # not UTF-8: cannot be recorded
    df, summary = curate(tmp_path / "ds", root)
    assert (df.loc[str(tab), "status"], df.loc[str(tab), "reason"]) == ("excluded", "unsafe_label")
    assert df.loc[str(good), "status"] == "ok" and len(df) == 2
    assert summary["non_utf8_names_skipped"] == 1


def test_materialize_refuses_unsafe_label_in_hand_edited_manifest(tmp_path):
    write_image_folder(tmp_path / "photos", ["cat", "dog"], per_class=2)
    ds = tmp_path / "ds"
    curate(ds, tmp_path / "photos")
    text = (ds / "manifest.csv").read_text().splitlines()
    text[2] = text[2].replace(",cat,", ",../../x,", 1)
    (ds / "manifest.csv").write_text("\n".join(text) + "\n")
    out = tmp_path / "out" / "tree"
    for mode in ("copy", "symlink", "hardlink"):
        assert_one_line_error(
            invoke("materialize", ds, "--out", out, "--mode", mode), "line 3", "label '../../x'", "path separator"
        )
    assert not (tmp_path / "x").exists() and not out.exists()


def test_materialize_renames_unsafe_file_names(tmp_path):
    odd = write_image(tmp_path / "photos" / "cat" / "line\nbreak.png", seed=1)
    plain = write_image(tmp_path / "photos" / "cat" / "plain.png", seed=2)
    curate(tmp_path / "ds", tmp_path / "photos")
    out = tmp_path / "tree"
    assert invoke("materialize", tmp_path / "ds", "--out", out, "--mode", "copy").exit_code == 0
    names = sorted(p.name for p in (out / "unsplit" / "cat").iterdir())
    assert len(names) == 2 and "plain.png" in names
    renamed = next(n for n in names if n != "plain.png")
    assert renamed.endswith(".png") and "\n" not in renamed
    assert (out / "unsplit" / "cat" / renamed).read_bytes() == odd.read_bytes() != plain.read_bytes()


@pytest.mark.parametrize("mode", ["copy", "symlink", "hardlink"])
def test_materialize_never_replaces_an_existing_file(tmp_path, mode):
    write_image_folder(tmp_path / "photos", ["cat"], per_class=2)
    ds = tmp_path / "ds"
    curate(ds, tmp_path / "photos")
    out = tmp_path / "tree"
    out.mkdir()
    (out / ".vislab-materialized.json").write_text(json.dumps({"files": []}))  # e.g. a run that was cut short
    mine = sentinel(out / "unsplit" / "cat" / "cat_000.png")
    assert_one_line_error(invoke("materialize", ds, "--out", out, "--mode", mode), "already exists", "cat_000.png")
    assert mine.read_text() == "a user's file" and not mine.is_symlink()


@pytest.mark.parametrize("name", ["boxes.csv", "curation.json", "class_histogram.png"])
def test_curate_never_replaces_a_users_file_of_an_output_name_in_out(tmp_path, name):
    write_image_folder(tmp_path / "photos", ["cat", "dog"], per_class=2)
    out = tmp_path / "out"
    mine = sentinel(out / name)
    assert_one_line_error(invoke("curate", tmp_path / "photos", "--out", out), name, "not a vislab dataset", "--overwrite")
    assert mine.read_text() == "a user's file" and not (out / "manifest.csv").exists()
    assert invoke("curate", tmp_path / "photos", "--out", out, "--overwrite").exit_code == 0


# ---------------------------------------------------------------- item 3: special and huge files


def test_special_files_never_block_or_exhaust_memory(tmp_path):
    root = tmp_path / "photos"
    good = write_image_folder(root, ["cat"], per_class=2)
    os.mkfifo(root / "cat" / "pipe.jpg")
    (root / "cat" / "zero.jpg").symlink_to("/dev/zero")
    ds = tmp_path / "ds"
    done = cli("curate", root, "--out", ds, "--workers", "1", timeout=120)
    assert done.returncode == 0, done.stderr
    df = read_manifest(ds).set_index("path")
    for name in ("pipe.jpg", "zero.jpg"):
        assert (df.loc[str(root / "cat" / name), "status"], df.loc[str(root / "cat" / name), "reason"]) == (
            "quarantined",
            "not_a_regular_file",
        )
    assert all(df.loc[str(p), "status"] == "ok" for p in good)

    os.mkfifo(tmp_path / "labels.csv")
    for flag, path in (("--labels", tmp_path / "labels.csv"), ("--ratings", "/dev/zero")):
        done = cli("curate", flag, path, "--out", tmp_path / "ds2", timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "not a regular file" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_files_over_the_size_limit_are_too_large(tmp_path, monkeypatch):
    small = write_image(tmp_path / "photos" / "a" / "small.png", seed=1, size=(8, 8))
    big = write_image(tmp_path / "photos" / "a" / "big.png", seed=2, size=(64, 64))
    whole, _ = curate(tmp_path / "d1", tmp_path / "photos")
    monkeypatch.setattr(checks, "READ_WHOLE_LIMIT", 10)  # both files take the streamed path
    streamed, _ = curate(tmp_path / "d2", tmp_path / "photos")
    assert streamed.loc[str(big), "sha256"] == whole.loc[str(big), "sha256"] != ""
    assert streamed.loc[str(big), "phash"] == whole.loc[str(big), "phash"]
    monkeypatch.setattr(checks, "MAX_FILE_BYTES", small.stat().st_size)
    df, summary = curate(tmp_path / "d3", tmp_path / "photos")
    assert (df.loc[str(big), "status"], df.loc[str(big), "reason"]) == ("quarantined", "too_large")
    assert df.loc[str(big), "bytes"] == big.stat().st_size
    assert df.loc[str(small), "status"] == "ok"


def test_csv_path_with_a_nul_is_a_one_line_error(tmp_path):
    photos = write_image_folder(tmp_path / "photos", ["a"], per_class=1)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{photos[0]},a\n\nphotos/a/x\x00.png,a\n")
    assert_one_line_error(invoke("curate", "--labels", labels, "--out", tmp_path / "ds"), "line 4", "NUL")


# ---------------------------------------------------------------- item 4: numbers in options and ratings


def test_non_finite_ratings_name_file_column_and_line(tmp_path):
    photos = write_image_folder(tmp_path / "photos", ["a"], per_class=3)
    ratings = tmp_path / "ratings.csv"
    rows = [f"{photos[0]},ann,3", f"{photos[1]},ann,inf", f"{photos[2]},ann,1e400"]
    ratings.write_text("path,annotator,rating\n" + "\n".join(rows) + "\n")
    out = ["--out", tmp_path / "ds", "--workers", "1"]
    for extra in (["--bins", "int"], ["--annotator", "mean"], ["--bins", "1-3:low,4-9:high"]):
        assert_one_line_error(
            invoke("curate", "--ratings", ratings, *extra, *out), str(ratings), "line 3", "'rating'", "'inf'"
        )
    ratings.write_text("path,annotator,rating\n" + rows[2] + "\n")
    assert_one_line_error(invoke("curate", "--ratings", ratings, "--bins", "int", *out), "line 2", "'1e400'")
    # A named annotator's answers are labels as written: no number is invented.
    assert invoke("curate", "--ratings", ratings, *out).exit_code == 0
    assert read_manifest(tmp_path / "ds")["label"].tolist() == ["1e400"]


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--split", "nan,0.5,0.5", "not a finite number"),
        ("--split", "inf,0,0", "not a finite number"),
        ("--split", "-0.5,1,0.5", "non-negative"),
        ("--split", "0.5,0.2", "sum to 0.7"),
        ("--aspect", "nan", "finite"),
        ("--aspect", "inf", "finite"),
        ("--aspect", "-1", "greater than 0"),
        ("--aspect-tolerance", "nan", "finite"),
        ("--min-size", "nanxnan", "WIDTHxHEIGHT"),
        ("--min-size", "0x10", "positive"),
        ("--seed", "-1", "greater than or equal to 0"),
        ("--bins", "1-" + "9" * 400 + ":x", "too large"),
        ("--bins", "1-3:../x", "path separator"),
    ],
)
def test_options_are_checked_before_any_file_is_read(tmp_path, option, value, needle):
    write_image_folder(tmp_path / "photos", ["a"], per_class=2)
    ratings = tmp_path / "r.csv"
    ratings.write_text("path,annotator,rating\nphotos/a/a_000.png,x,1\n")
    source = ["--ratings", ratings] if option == "--bins" else [tmp_path / "photos"]
    result = invoke("curate", *source, "--out", tmp_path / "ds", option, value)
    assert_one_line_error(result, option, needle)
    assert "checked" not in result.stdout and not (tmp_path / "ds").exists()


# ---------------------------------------------------------------- item 10: manifests edited by hand


@pytest.fixture()
def dataset(tmp_path) -> Path:
    write_image_folder(tmp_path / "photos", ["cat", "dog"], per_class=3)
    curate(tmp_path / "ds", tmp_path / "photos", split="0.5,0.5")
    return tmp_path / "ds"


def edit_line(ds: Path, line: int, old: str, new: str) -> None:
    lines = (ds / "manifest.csv").read_bytes().split(b"\n")
    assert old.encode() in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old.encode(), new.encode() if isinstance(new, str) else new, 1)
    (ds / "manifest.csv").write_bytes(b"\n".join(lines))


@pytest.mark.parametrize(
    "old, new, needles",
    [
        (",train,", ",TRAIN,", ["split 'TRAIN'", "train, val, test or empty", "write 'train'"]),
        (",ok,", ",fine,", ["status 'fine'", "ok, quarantined, excluded"]),
        (",48,", ",48.5,", ["width '48.5'", "whole number"]),
        (",32,", ",-32,", ["height '-32'", "whole number"]),
    ],
)
def test_manifest_values_are_checked_on_read(dataset, old, new, needles):
    lines = (dataset / "manifest.csv").read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if ",train,ok,,48,32," in text and i > 1)
    edit_line(dataset, line, old, new)
    needles = [f"manifest.csv line {line}:", *needles]
    with pytest.raises(VislabError) as err:
        read_manifest(dataset)
    for needle in [str(dataset / "manifest.csv"), *needles]:
        assert needle in str(err.value)
    for command in (["stats", dataset], ["materialize", dataset, "--out", dataset.parent / "tree"]):
        assert_one_line_error(invoke(*command), *needles)


def test_manifest_that_is_not_utf8_or_not_csv(dataset, tmp_path):
    edit_line(dataset, 3, ",cat,", b",c\xe4t,")
    assert_one_line_error(invoke("stats", dataset), "manifest.csv line 3", "not UTF-8")
    (dataset / "manifest.csv").write_text('path,label,split,status\n"a.png,cat,train,ok\n')
    assert_one_line_error(invoke("stats", dataset), "manifest.csv", "cannot read as CSV")
    (dataset / "manifest.csv").unlink()
    os.mkfifo(dataset / "manifest.csv")
    assert_one_line_error(invoke("stats", dataset), "not a regular file")


# ---------------------------------------------------------------- item 12: vislab's own outputs in a source


def test_vislab_outputs_inside_a_source_are_skipped(tmp_path):
    root = tmp_path / "photos"
    write_image_folder(root, ["cat", "dog"], per_class=2)
    _, summary = curate(root / "ds", root)  # a dataset inside its own source
    assert summary["vislab_folders_skipped"] == 0
    assert invoke("materialize", root / "ds", "--out", root / "tree").exit_code == 0
    assert (root / "ds" / "class_histogram.png").is_file() and (root / "tree" / "unsplit" / "cat").is_dir()

    df, summary = curate(tmp_path / "again", root)
    assert sorted(df["label"].unique()) == ["cat", "dog"] and len(df) == 4
    assert summary["vislab_folders_skipped"] == 2
    assert "2 vislab output folders skipped" in invoke("stats", tmp_path / "again").stdout
    assert_one_line_error(invoke("curate", root / "ds", "--out", tmp_path / "x"), "written by `vislab curate`")
    assert_one_line_error(invoke("curate", root / "tree", "--out", tmp_path / "x"), "materialize")


def test_a_predict_out_folder_inside_a_source_is_not_a_class(tmp_path):
    """`vislab predict RUN photos --out photos/pred` left drawn images in photos/pred, which
    the next `curate photos` took as a class 'pred' (predict and explain already skipped it)."""
    from vislab.outfolder import claim_out

    root = tmp_path / "photos"
    write_image_folder(root, ["cat", "dog"], per_class=2)
    out = claim_out(root / "pred")  # the folder exactly as predict --out leaves it
    write_image(out.file("000_cat_0.png"))
    out.write("labels/000_cat_0.txt", "0 0.5 0.5 0.2 0.2\n")
    out.write("predictions.json", "[]")
    out.finish()
    df, summary = curate(tmp_path / "ds", root)
    assert sorted(df["label"].unique()) == ["cat", "dog"] and len(df) == 4
    assert summary["vislab_folders_skipped"] == 1
    df, _ = curate(tmp_path / "ds2", root / "pred")  # named as the source, it is curated as asked
    assert df["path"].str.endswith("000_cat_0.png").any()


# ---------------------------------------------------------------- item 13: class names are plain text


@pytest.fixture()
def drawn(monkeypatch) -> list[Figure]:
    """Every figure saved while the test runs."""
    figures: list[Figure] = []
    save = Figure.savefig

    def record(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def _texts(figures: list[Figure]) -> dict[str, list[Text]]:
    out: dict[str, list[Text]] = {}
    for fig in figures:
        for text in fig.findobj(Text):
            out.setdefault(text.get_text(), []).append(text)
    return out


NAMES = ["$x^{$", "$x^2$", "$\\badcmd{$"]  # broken and valid mathtext: all must be drawn as written


def test_curate_histogram_draws_class_names_as_written(tmp_path, drawn):
    write_image_folder(tmp_path / "photos", [*NAMES, "cat"], per_class=2)
    df, summary = curate(tmp_path / "ds", tmp_path / "photos")
    assert set(summary["classes"]) == {*NAMES, "cat"}
    assert (tmp_path / "ds" / "class_histogram.png").stat().st_size > 1000
    texts = _texts(drawn)
    for name in NAMES:
        assert texts[name] and not any(t.get_parse_math() for t in texts[name])


def test_report_plots_draw_class_names_as_written(tmp_path, drawn):
    from vislab.report import plots

    names = [*NAMES, "cat"]
    image = write_image(tmp_path / "a.png")
    manifest = pd.DataFrame({"label": names, "split": "train", "status": "ok"})
    per_class = [{"class": c, "accuracy": 0.5, "support": 2} for c in names]
    items = [{"path": str(image), "true": c, "pred": names[0], "confidence": 0.4, "loss": 1.0} for c in names]
    assert plots.plot_class_histogram(manifest, tmp_path / "hist.png") is not None
    assert plots.plot_confusion([[1, 0, 0, 1]] * 4, names, tmp_path / "confusion.png") is not None
    assert plots.plot_per_class(per_class, tmp_path / "per_class.png", mca=0.5) is not None
    assert plots.plot_image_grid(items, tmp_path / "grid.png") is not None
    texts = _texts(drawn)
    for name in NAMES:
        shown = [t for s, ts in texts.items() if name in s for t in ts]
        assert len(shown) >= 5, name  # histogram, confusion (x and y), per-class bars, captions
        assert not any(t.get_parse_math() for t in shown)


# ---------------------------------------------------------------- smaller: paths that are files


def test_paths_that_are_files_are_one_line_errors(tmp_path, dataset):
    photo = write_image(tmp_path / "some.jpg")
    photos = tmp_path / "photos"
    assert_one_line_error(invoke("curate", photos, "--out", photo), "is a file")
    assert_one_line_error(invoke("curate", photos, "--out", photo / "ds"), "which is a file")
    assert_one_line_error(invoke("stats", photo), "is a file, not a dataset folder")
    assert_one_line_error(invoke("materialize", photo, "--out", tmp_path / "t"), "is a file, not a dataset folder")
    assert_one_line_error(invoke("materialize", dataset, "--out", photo / "t"), "which is a file")
    assert photo.stat().st_size > 0 and not (tmp_path / "t").exists()


def test_hand_edited_curation_json_and_non_utf8_paths(tmp_path):
    write_image_folder(tmp_path / "photos", ["cat"], per_class=2)
    out = tmp_path / "ds"
    curate(out, tmp_path / "photos")
    (out / "curation.json").write_text('{"options": 5, "hidden_skipped": "many"}')
    assert "2 files" in invoke("stats", out).stdout
    assert_one_line_error(invoke("curate", tmp_path / "photos", "--out", out, "--seed", "3"), "unknown inputs")
    (out / "curation.json").write_text("[1, 2]")
    assert_one_line_error(invoke("stats", out), "not a JSON object")
    odd = os.fsdecode(bytes(tmp_path / "l") + b"\xff.csv")
    assert_one_line_error(invoke("curate", "--labels", odd, "--out", tmp_path / "x"), "--labels", "not a UTF-8 path")


def test_curate_never_writes_through_a_link_out_of_out(tmp_path):
    write_image_folder(tmp_path / "photos", ["cat"], per_class=2)
    mine = sentinel(tmp_path / "mine.png")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "class_histogram.png").symlink_to(mine)
    assert_one_line_error(invoke("curate", tmp_path / "photos", "--out", out, "--workers", "1"), "outside")
    assert mine.read_text() == "a user's file" and not (out / "manifest.csv").exists()
