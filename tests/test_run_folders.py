"""Run directories and sweep folders where photos or a dataset are wanted: named, they are
called what they are (not "a folder of photos" to curate); found inside a folder that is
walked, they are skipped as vislab output (their plots and overlays are not photos). Also the
list of explain methods in its error, and help text that flows at any terminal width."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.data.io import collect_images
from vislab.errors import VislabError
from vislab.testing.images import write_image, write_image_folder
from vislab.testing.rundirs import make_run_dir


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """ROOT/run (a run directory with plots/ and explain/ pictures, trained on ROOT/run-data)
    and ROOT/sweep (sweep.json and one trial, a copy of the run)."""
    root = tmp_path_factory.mktemp("outputs")
    run = make_run_dir(root, name="run", n_test=3, checkpoint=True)
    write_image(run / "plots" / "confusion.png", seed=1)
    write_image(run / "explain" / "gradcam" / "a.png", seed=2)
    (root / "sweep").mkdir()
    (root / "sweep" / "sweep.json").write_text(json.dumps({"study_name": "s"}))
    shutil.copytree(run, root / "sweep" / "trial-0000")
    return root


def _one_line(args: list[str]) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    return res.output.strip()


def test_a_run_or_sweep_given_as_dataset_is_named_with_the_dataset_it_trained_on(outputs, tmp_path) -> None:
    run, sweep, data = outputs / "run", outputs / "sweep", (outputs / "run-data").resolve()
    for args in (["stats", run], ["materialize", run, "--out", tmp_path / "tree"], ["train", "digits-cnn", "--data", run, "--out", tmp_path / "r"]):
        line = _one_line(args)
        assert f"{run} is a run directory (`vislab train`'s output), not a dataset" in line, line
        assert f"the one it trained on is {data} (its run.json)" in line and "folder of photos" not in line, line
    line = _one_line(["stats", sweep])
    assert f"{sweep} is a sweep folder (`vislab sweep`'s output), not a dataset" in line, line
    assert f"the one it trained on is {data} (its trials' run.json)" in line, line
    assert not (tmp_path / "tree").exists() and not (tmp_path / "r").exists()


def test_a_folder_of_datasets_is_not_called_photos(tmp_path) -> None:
    write_image_folder(tmp_path / "photos", per_class=2, size=(16, 16))
    res = CliRunner().invoke(app, ["curate", str(tmp_path / "photos"), "--out", str(tmp_path / "datasets" / "pets")])
    assert res.exit_code == 0, res.output
    line = _one_line(["stats", tmp_path / "datasets"])
    assert "a folder of 1 dataset folder(s)" in line and f"e.g. {tmp_path / 'datasets' / 'pets'}" in line, line


def test_curate_skips_runs_and_sweeps_inside_a_source_and_refuses_them_named(outputs, tmp_path) -> None:
    root = tmp_path / "photos"
    write_image_folder(root, ["cat", "dog"], per_class=2, size=(16, 16))
    shutil.copytree(outputs / "run", root / "run")
    shutil.copytree(outputs / "sweep", root / "sweep")
    res = CliRunner().invoke(app, ["curate", str(root), "--out", str(tmp_path / "ds")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ds" / "curation.json").read_text())
    manifest = (tmp_path / "ds" / "manifest.csv").read_text()
    assert summary["vislab_folders_skipped"] == 2 and "confusion.png" not in manifest and "/run/" not in manifest
    for name, what in (("run", "a run directory"), ("sweep", "a sweep folder")):
        line = _one_line(["curate", outputs / name, "--out", tmp_path / f"from-{name}"])
        assert f"source {outputs / name} is {what}" in line and "not photos" in line, line
        assert not (tmp_path / f"from-{name}").exists()
    before = sorted(os.listdir(outputs / "run"))
    line = _one_line(["curate", root, "--out", outputs / "run"])  # a run is no dataset to write over
    assert "holds files curate did not write" in line, line
    assert sorted(os.listdir(outputs / "run")) == before


def test_predict_and_explain_skip_a_run_inside_a_folder_and_refuse_one_named(outputs, tmp_path) -> None:
    write_image(tmp_path / "frames" / "f1.png", seed=3)
    shutil.copytree(outputs / "run", tmp_path / "frames" / "run")
    found = collect_images([tmp_path / "frames"])
    assert [p.name for p in found] == ["f1.png"]
    assert [(p.name, "run directory or sweep folder" in why) for p, why in found.skipped] == [("run", True)]
    for name in ("run", "sweep"):
        with pytest.raises(VislabError, match=f"{outputs / name} is a (run directory|sweep folder).*, not images"):
            collect_images([outputs / name])
    line = _one_line(["predict", outputs / "run", outputs / "sweep" / "trial-0000"])
    assert "trial-0000 is a run directory (`vislab train`'s output), not images; name one run" in line, line


def test_an_unknown_explain_method_lists_every_method_explain_accepts(outputs) -> None:
    from vislab.explain.overlays import canonical_method

    with pytest.raises(VislabError, match=r"use one of gradcam, gradcam\+\+, scorecam, eigencam, attention$"):
        canonical_method("gradcam+")
    line = _one_line(["explain", outputs / "run", outputs / "run" / "plots" / "confusion.png", "--method", "gradcam+"])
    assert line.endswith("use one of gradcam, gradcam++, scorecam, eigencam, attention"), line


@pytest.mark.parametrize("columns", ["100", "140"])
def test_command_help_paragraphs_are_rewrapped_not_broken_where_the_source_broke_them(columns) -> None:
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": columns})
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "checkpoints/last.ckpt" in x)
    assert "checkpoints/last.ckpt saved there" in line, res.output
    for cmd in ("evaluate", "predict"):
        lines = [x.strip() for x in CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output.splitlines()]
        paragraph = {"evaluate": "Evaluate a run's best checkpoint", "predict": "Files that cannot be read get an error row"}[cmd]
        hit = next(x for x in lines if x.startswith(paragraph))
        assert hit.endswith(("never over it.", "(exit status 2).")), hit
