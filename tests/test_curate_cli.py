"""`vislab curate / stats / materialize` end to end through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.testing.images import near_copy, write_broken_set, write_image_folder

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def src(tmp_path) -> Path:
    root = tmp_path / "photos"
    paths = write_image_folder(root, {"cat": 6, "dog": 5, "emu": 2}, size=(40, 30), suffix=".jpg")
    near_copy(paths[0], root / "cat" / "cat_copy.jpg", scale=0.9)
    write_broken_set(root / "dog")
    return root


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path)] = (digest, st.st_mtime_ns, st.st_mode)
    return out


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error:") and "Traceback" not in result.output
    for needle in needles:
        assert needle in text, text


def test_curate_is_deterministic_and_leaves_sources_untouched(tmp_path, src):
    before = snapshot(src)
    args = ["curate", src, "--split", "0.5,0.25,0.25", "--dedupe", "near", "--workers", "1"]
    first = invoke(*args, "--out", tmp_path / "a")
    assert first.exit_code == 0, first.output
    manifest = (tmp_path / "a" / "manifest.csv").read_bytes()
    record = (tmp_path / "a" / "curation.json").read_bytes()
    assert invoke(*args, "--out", tmp_path / "a").exit_code == 0  # same inputs: rewrite allowed
    assert invoke(*args[:-2], "--workers", "2", "--out", tmp_path / "b").exit_code == 0
    for out in ("a", "b"):
        assert (tmp_path / out / "manifest.csv").read_bytes() == manifest
        assert (tmp_path / out / "curation.json").read_bytes() == record
    assert snapshot(src) == before
    assert (tmp_path / "a" / "class_histogram.png").stat().st_size > 1000

    summary = json.loads(record)
    assert summary["status"] == {"ok": 13, "quarantined": 6, "excluded": 1}
    assert summary["reasons"]["duplicate_of"] == 1
    assert summary["options"]["sources"] == [str(src)]
    assert summary["vislab_version"]
    assert "checked 20 files" in first.stdout and "manifest:" in first.stdout


def test_stats_prints_the_recorded_counts(tmp_path, src):
    assert (
        invoke("curate", src, "--out", tmp_path / "ds", "--split", "0.6,0.2,0.2", "--workers", "1").exit_code
        == 0
    )
    result = invoke("stats", tmp_path / "ds")
    assert result.exit_code == 0, result.output
    for word in ("quarantined", "truncated", "zero_byte", "cat", "train", "val", "test"):
        assert word in result.stdout
    assert_one_line_error(invoke("stats", tmp_path / "nothing"), "nothing: no such folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("stats", tmp_path / "empty"), "no manifest.csv here", "vislab curate SOURCE --out")
    # the photos themselves: the advice curates them into a dataset beside them, not into them
    assert_one_line_error(
        invoke("stats", src), "a folder of photos, not a curated dataset", f"vislab curate {src} --out datasets/{src.name}"
    )

    from vislab.data.stats import dataset_summary

    recorded = json.loads((tmp_path / "ds" / "curation.json").read_text())
    fresh = dataset_summary(tmp_path / "ds")
    for key in (
        "files",
        "status",
        "reasons",
        "classes",
        "splits",
        "formats",
        "exif_oriented",
        "duplicate_groups",
    ):
        assert fresh[key] == recorded[key], key


def test_other_dataset_in_out_is_refused_unless_overwrite(tmp_path, src):
    out = tmp_path / "ds"
    assert invoke("curate", src, "--out", out, "--workers", "1").exit_code == 0
    result = invoke("curate", src, "--out", out, "--min-size", "10x10", "--workers", "1")
    assert_one_line_error(result, "holds a different dataset", "--overwrite")
    assert (
        invoke("curate", src, "--out", out, "--min-size", "10x10", "--workers", "1", "--overwrite").exit_code
        == 0
    )
    assert json.loads((out / "curation.json").read_text())["options"]["min_size"] == "10x10"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.csv").write_text("path\n")
    assert_one_line_error(
        invoke("curate", src, "--out", foreign), "holds manifest.csv but no curation.json: a manifest curate did not write", "pass --overwrite"
    )
    assert (foreign / "manifest.csv").read_text() == "path\n"


def test_one_line_errors(tmp_path, src):
    out = ["--out", tmp_path / "ds"]
    assert_one_line_error(invoke("curate", tmp_path / "missing", *out), "does not exist")
    assert_one_line_error(
        invoke("curate", src, *out, "--split", "0.7,0.2,0.2"), "--split", "sum to 1.1, not 1"
    )
    assert_one_line_error(invoke("curate", src, *out, "--min-size", "big"), "--min-size", "WIDTHxHEIGHT")
    assert_one_line_error(invoke("curate", src, *out, "--dedupe", "fuzzy"), "--dedupe", "'fuzzy'")
    assert_one_line_error(
        invoke("curate", src, *out, "--val-per-class", "1", "--test-per-class", "1", "--workers", "1"),
        "class 'emu' has 2 usable images",
    )
    assert_one_line_error(
        invoke("curate", src, *out, "--split", "0.8,0.2", "--test-per-class", "1"), "not both"
    )
    assert_one_line_error(invoke("curate", *out), "give at least one SOURCE")
    assert_one_line_error(invoke("curate", src, "--out", src), "is the source folder itself")

    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file": ["photos/cat/cat_000.jpg"], "y": ["cat"]}).to_csv(labels, index=False)
    assert_one_line_error(invoke("curate", "--labels", labels, *out), "no column 'path' (columns: file, y)")

    ratings = tmp_path / "ratings.csv"
    pd.DataFrame(
        {"path": ["photos/cat/cat_000.jpg"] * 2, "annotator": ["ann", "bo"], "rating": [3, 4]}
    ).to_csv(ratings, index=False)
    assert_one_line_error(
        invoke("curate", "--ratings", ratings, "--annotator", "zed", *out), "annotators: ann, bo"
    )
    assert_one_line_error(
        invoke("curate", "--ratings", ratings, "--bins", "1-3neg", *out), "--bins", "1-3neg"
    )
    assert_one_line_error(invoke("curate", src, "--bins", "int", *out), "--bins applies to --ratings")


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
def test_materialize_modes(tmp_path, src, mode):
    ds = tmp_path / "ds"
    assert invoke("curate", src, "--out", ds, "--split", "0.5,0.25,0.25", "--workers", "1").exit_code == 0
    before = snapshot(src)
    out = tmp_path / "folders"
    result = invoke("materialize", ds, "--out", out, "--mode", mode)
    assert result.exit_code == 0, result.output
    files = sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert len(files) == 14 and result.stdout == f"14 files written into {out} ({mode})\n"  # no blank line from the progress bar
    assert {p.relative_to(out).parts[0] for p in files} == {"train", "val", "test"}
    manifest = pd.read_csv(ds / "manifest.csv", keep_default_na=False)
    ok = manifest[manifest["status"] == "ok"]
    for _, r in ok.iterrows():
        target = out / r["split"] / r["label"] / Path(r["path"]).name
        assert target.read_bytes() == Path(r["path"]).read_bytes()
        assert target.is_symlink() == (mode == "symlink")
        if mode == "hardlink":
            assert os.path.samefile(target, r["path"])
    # Re-running replaces its own files; the sources stay as they were.
    assert invoke("materialize", ds, "--out", out, "--mode", "copy").exit_code == 0
    assert snapshot(src) == before
    assert all(Path(p).exists() for p in ok["path"])


def test_materialize_refuses_foreign_folders_and_bad_modes(tmp_path, src):
    ds = tmp_path / "ds"
    assert invoke("curate", src, "--out", ds, "--workers", "1").exit_code == 0
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert_one_line_error(invoke("materialize", ds, "--out", busy), "not empty")
    assert_one_line_error(invoke("materialize", ds, "--out", tmp_path / "x", "--mode", "move"), "--mode")
    assert_one_line_error(invoke("materialize", ds, "--out", tmp_path), "not empty")
    assert (busy / "keep.txt").read_text() == "mine"
    assert invoke("materialize", ds, "--out", tmp_path / "flat").exit_code == 0
    assert len(list((tmp_path / "flat" / "unsplit" / "cat").iterdir())) == 7


def test_markup_and_control_characters_in_names_print_as_written(tmp_path):
    src = tmp_path / "src[/]x\x1b[2J"
    write_image_folder(src, {"[link=https:evil.example]cat": 3, "[bold red]pwn": 3, ":thumbs_up:": 3}, size=(40, 30))
    out = tmp_path / "ds-br [v1]"
    curated = invoke("curate", src, "--out", out, "--workers", "1")
    assert curated.exit_code == 0, curated.output  # wrote the dataset, then rich crashed on '[/]'
    assert f"manifest: {out / 'manifest.csv'}\n" in curated.stdout  # not 'ds-br /manifest.csv'
    stats = invoke("stats", out)
    assert stats.exit_code == 0, stats.output  # the source path is in curation.json: every stats crashed
    for result in (curated, stats):
        assert "[link=https:evil.example]cat " in result.stdout and "[bold red]pwn " in result.stdout
        assert ":thumbs_up: " in result.stdout  # a name, not an emoji code
        assert rf"sources: {tmp_path}/src[/]x\x1b[2J" in result.stdout and "\x1b" not in result.output


def test_an_error_naming_an_odd_path_is_one_line_as_written(tmp_path):
    odd = tmp_path / "nope[/]x[bold]\x1b[2J"
    assert_one_line_error(invoke("stats", odd), rf"nope[/]x[bold]\x1b[2J: no such folder")
