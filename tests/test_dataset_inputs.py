"""What `vislab prepare` and `vislab train` get handed instead of a finished dataset (a photo
folder, a pipe or device as manifest.csv, a curate not finished, a NUL in a hand-edited path),
and images changed since curate: one line each, never a traceback or a hang."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.data import cache as cache_mod
from vislab.data.cache_check import file_stats
from vislab.data.manifest import read_manifest
from vislab.errors import DatasetError, VislabError
from vislab.testing.images import write_image, write_image_folder
from vislab.testing.synthetic import tiny_config
from vislab.train import train

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Path:
    """Two classes of 6 small pictures, curated (so the manifest records each file's bytes)."""
    root = tmp_path_factory.mktemp("inputs")
    write_image_folder(root / "photos", per_class=6, size=(24, 20))
    res = CliRunner().invoke(app, ["curate", str(root / "photos"), "--out", str(root / "ds"), "--split", "0.5,0.5,0", "--seed", "0"])
    assert res.exit_code == 0, res.output
    return root / "ds"


def _copy(curated: Path, tmp_path: Path) -> Path:
    """A copy of the dataset and its photos, so a test may change them (paths rewritten)."""
    shutil.copytree(curated.parent / "photos", tmp_path / "photos")
    text = (curated / "manifest.csv").read_text().replace(str(curated.parent / "photos"), str(tmp_path / "photos"))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.csv").write_text(text)
    shutil.copy(curated / "curation.json", tmp_path / "ds" / "curation.json")
    return tmp_path / "ds"


def _not_datasets(tmp_path: Path, curated: Path) -> dict[str, tuple[Path, str]]:
    """name -> (folder, what its one line says)."""
    write_image(tmp_path / "photos" / "cat" / "a.png", seed=1)
    (tmp_path / "dir_manifest" / "manifest.csv").mkdir(parents=True)
    (tmp_path / "zero").mkdir()
    os.symlink("/dev/zero", tmp_path / "zero" / "manifest.csv")
    return {
        "photo folder": (tmp_path / "photos", "a folder of photos, not a curated dataset"),
        "missing": (tmp_path / "nope", "no such folder"),
        "a file": (curated / "manifest.csv", "is a file, not a dataset folder"),
        "manifest.csv a folder": (tmp_path / "dir_manifest", "not a regular file"),
        "manifest.csv /dev/zero": (tmp_path / "zero", "not a regular file"),
    }


def test_prepare_of_what_is_not_a_dataset_is_one_line(tmp_path, curated) -> None:
    for name, (folder, says) in _not_datasets(tmp_path, curated).items():
        res = CliRunner().invoke(app, ["prepare", str(folder), "--size", "16", "--workers", "1"])
        assert res.exit_code == 2 and res.exception is None or isinstance(res.exception, SystemExit), (name, res.output)
        assert says in res.output and "Traceback" not in res.output, (name, res.output)
        for call in (cache_mod.prepare_cache, cache_mod.open_cache):  # the library, which hashes the manifest first
            with pytest.raises(VislabError, match=says):
                call(folder, 16)


def test_a_pipe_as_manifest_is_refused_not_waited_on(tmp_path) -> None:
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "manifest.csv")
    code = (
        "import sys\nfrom vislab.data.cache import open_cache\nfrom vislab.errors import VislabError\n"
        "try:\n    open_cache(sys.argv[1], 16)\nexcept VislabError as err:\n    sys.exit(f'error: {err}')"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for argv in ([sys.executable, "-m", "vislab.cli", "prepare", "fifo", "--size", "16"], [sys.executable, "-c", code, "fifo"]):
        res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        out = res.stdout + res.stderr
        assert res.returncode != 0 and "not a regular file" in out and "Traceback" not in out, out


def test_an_unfinished_curate_is_refused_even_with_its_store_prepared(tmp_path, curated) -> None:
    ds = _copy(curated, tmp_path)
    cache_mod.prepare_cache(ds, 16, workers=1)
    record = json.loads((ds / "curation.json").read_text())
    (ds / "curation.json").write_text(json.dumps({**record, "state": "curating"}))
    for call in (cache_mod.prepare_cache, cache_mod.open_cache):
        with pytest.raises(DatasetError, match="has not finished"):
            call(ds, 16)
    res = CliRunner().invoke(app, ["prepare", str(ds), "--size", "16"])
    assert res.exit_code == 2 and "has not finished" in res.output, res.output


def test_a_nul_in_a_manifest_path_is_refused_with_its_line(tmp_path, curated) -> None:
    ds = _copy(curated, tmp_path)
    lines = (ds / "manifest.csv").read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(".png,", "\x00.png,", 1)
    (ds / "manifest.csv").write_text("".join(lines))
    with pytest.raises(VislabError, match=r"manifest.csv line 3: path .*NUL"):
        read_manifest(ds)
    with pytest.raises(VislabError, match="NUL"):
        cache_mod.prepare_cache(ds, 16, workers=1)
    res = CliRunner().invoke(app, ["prepare", str(ds), "--size", "16", "--workers", "1"])
    assert res.exit_code == 2 and "line 3" in res.output, res.output
    assert file_stats(["/tmp/a\x00b.png"]) == [None]  # what the cache's stat of a row meets


@pytest.mark.parametrize("cached", [False, True])
def test_images_changed_since_curate_are_counted_in_one_warning(tmp_path, curated, capfd, cached) -> None:
    ds = _copy(curated, tmp_path)
    photos = sorted((tmp_path / "photos" / "cat").iterdir())
    write_image(photos[0], seed=999, size=(30, 26))  # another picture under the same name
    before = photos[0].stat().st_size
    res = CliRunner().invoke(app, ["prepare", str(ds), "--size", "16", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert f"1 of the 12 images of {ds} changed since `vislab curate`" in res.output and str(photos[0]) in res.output
    capfd.readouterr()
    train(tiny_config(data={"cache": cached}, train={"epochs": 1}), ds, tmp_path / "run")
    err = capfd.readouterr().err
    assert err.count("changed since `vislab curate`") == 1 and str(photos[0]) in err, err
    assert photos[0].stat().st_size == before  # warned, never touched
