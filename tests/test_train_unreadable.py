"""Images deleted or broken after curation: skipped with a count in health.json while training,
the run stopped (after a checkpoint) past `train.health.max_bad_images`, with 0 or 2 workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import dump_config
from vislab.data.datamodule import EpochSampler, ImageTableDataset, SkippingLoader
from vislab.errors import VislabError
from vislab.health import UnreadableImagesError
from vislab.runs import load_checkpoint_file
from vislab.testing.images import write_bad_ztxt_png
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train


def _break(data: Path, split: str, n: int, how: str) -> list[str]:
    """Break the first `n` images of `split` the way a disk or a user would, after curation."""
    rows = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    paths = rows[rows["split"] == split]["path"].tolist()[:n]
    for p in paths:
        if how == "delete":
            Path(p).unlink()
        elif how == "truncate":
            Path(p).write_bytes(Path(p).read_bytes()[:40])
        else:  # a zTXt chunk Pillow fails on with SyntaxError
            write_bad_ztxt_png(p)
    return paths


def _health(run: Path, code: str = "unreadable_images") -> list[dict]:
    return [m for m in json.loads((run / "health.json").read_text()) if m["code"] == code]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_few_unreadable_images_are_skipped_and_counted(tmp_path, workers):
    data = make_pattern_dataset(tmp_path / "d", per_class=20, size=16)  # 36 train, 12 val, 12 test
    gone = _break(data, "train", 1, "delete")
    ztxt = _break(data, "val", 1, "ztxt")
    cfg = tiny_config(data={"num_workers": workers, "persistent_workers": False}, train={"epochs": 2, "health": {"max_bad_images": 0.1}})
    run = train(cfg, data, tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "completed" and summary["epochs_completed"] == 2
    entries = {m["split"]: m for m in _health(run)}
    assert entries["train"]["count"] == 1 and entries["train"]["paths"] == gone and entries["train"]["level"] == "warn"
    assert entries["val"]["count"] == 1 and entries["val"]["paths"] == ztxt
    assert "SyntaxError" in entries["val"]["message"] and "file not found" in entries["train"]["message"]


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_unreadable_images_stop_the_run_after_a_checkpoint(tmp_path, workers):
    data = make_pattern_dataset(tmp_path / "d", per_class=20, size=16)
    _break(data, "train", 2, "truncate")  # 2 of 36 > 1 %
    cfg = tiny_config(data={"num_workers": workers, "persistent_workers": False}, train={"epochs": 2})
    with pytest.raises(UnreadableImagesError, match=r"2 of the 36 train images cannot be read, over train.health.max_bad_images = 0.01") as info:
        train(cfg, data, tmp_path / "run")
    assert "\n" not in str(info.value) and "last.ckpt saved" in str(info.value)
    run = tmp_path / "run"
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] >= 1
    assert _health(run)[-1]["level"] == "error"
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == "error"


def test_unreadable_validation_images_stop_the_run_through_the_cli(tmp_path):
    data = make_pattern_dataset(tmp_path / "d", per_class=20, size=16)
    _break(data, "val", 2, "delete")  # 2 of 12 > 10 %
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(dump_config(tiny_config(data={"num_workers": 2}, train={"epochs": 2, "health": {"max_bad_images": 0.1}})))
    res = CliRunner().invoke(app, ["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    err = res.output.strip().splitlines()[-1]
    assert "2 of the 12 val images cannot be read" in err and "Traceback" not in res.output
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_replaces_training_images_and_drops_evaluation_ones(tmp_path, workers):
    from vislab.testing.images import write_image

    paths = [str(write_image(tmp_path / f"{i}.png", seed=i, size=(8, 8))) for i in range(4)]
    Path(paths[1]).unlink()
    write_bad_ztxt_png(paths[2])
    ds = ImageTableDataset(paths, [0, 1, 2, 3], lambda im: torch.tensor(np.array(im)[0, 0]))
    seen: list[list[tuple[str, str]]] = []

    def loader(train: bool, n: int = 4) -> SkippingLoader:
        sampler = EpochSampler(n, shuffle=False, train=train)
        return SkippingLoader(ds, on_unreadable=seen.append, min_batch=2 if train else 1, batch_size=4, sampler=sampler, num_workers=workers)

    (x, y), = list(loader(train=True))
    assert y.tolist() == [0, 3, 3, 3]  # the next readable image stands in, under the same seed
    assert {p for batch in seen for p, _ in batch} == {paths[1], paths[2]}
    (x, y), = list(loader(train=False))
    assert y.tolist() == [0, 3]  # evaluation counts each readable image once
    Path(paths[0]).unlink()
    Path(paths[3]).unlink()
    assert list(loader(train=True)) == [] and list(loader(train=False)) == []  # nothing readable: no batch of zero or one


def test_a_health_warning_prints_an_odd_path_visibly_and_records_it_exactly(tmp_path, capsys):
    data = make_pattern_dataset(tmp_path / "d\x1b[2J", per_class=20, size=16)  # every path holds an ESC sequence
    gone = _break(data, "train", 1, "delete")
    cfg = tiny_config(train={"epochs": 1, "health": {"max_bad_images": 0.1}})
    run = train(cfg, data, tmp_path / "run")
    printed = capsys.readouterr().out
    assert "health warn: 1 unreadable image(s)" in printed and r"d\x1b[2J" in printed and "\x1b" not in printed
    assert _health(run)[0]["paths"] == gone
