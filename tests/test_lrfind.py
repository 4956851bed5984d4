"""`vislab lr-find`: the learning-rate range test on tiny synthetic data, its suggestion rules,
and what it must leave behind (a plot and a table, no run, the caller's state untouched)."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import save_config
from vislab.errors import VislabError
from vislab.lrfind import lr_find, steepest_index, suggest, valley_index
from vislab.testing.synthetic import make_pattern_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("lrfind") / "data", per_class=12, size=16)


def test_suggestion_rules_on_a_known_curve() -> None:
    lrs = np.logspace(-6, 1, 71)
    # flat until 1e-4, falls until 1e-1, then blows up: the classic shape
    x = np.log10(lrs)
    loss = np.where(x < -4, 2.0, np.where(x < -1, 2.0 - 0.5 * (x + 4), 0.5 + 3 * (x + 1) ** 2))
    i = valley_index(list(loss))
    assert 1e-4 < lrs[i] < 1e-1  # inside the falling stretch, before its bottom
    j = steepest_index(list(lrs), list(loss))
    assert 1e-4 <= lrs[j] <= 1e-1
    with pytest.raises(VislabError, match="diverged after 8 of 100 steps"):
        suggest(list(lrs[:8]), list(loss[:8]), list(loss[:8]), 100, True)


def test_lr_find_suggests_an_lr_and_leaves_no_run(data, tmp_path) -> None:
    cfg = tiny_config(scheduler={"name": "onecycle"}, train={"averaging": {"kind": "ema"}, "early_stopping": {"patience": 1}})
    before = cfg.model_dump()
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    out = tmp_path / "out"
    result = lr_find(cfg, data, out, steps=30, min_lr=1e-6, max_lr=10.0)
    assert math.isfinite(result.suggestion) and 1e-6 <= result.suggestion <= 10.0
    assert min(result.lrs) <= result.suggestion <= max(result.lrs)
    assert result.steepest is not None and 1e-6 <= result.steepest <= 10.0
    assert result.lrs == sorted(result.lrs) and len(result.lrs) == len(result.losses) <= 30
    assert result.sets == [f"optim.lr={result.suggestion:.2g}"]
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.csv", "lr_find.png"]  # no checkpoints, config or metrics
    with Image.open(result.plot) as im:
        assert im.format == "PNG" and im.width > 300
    assert len(result.table.read_text().splitlines()) == len(result.lrs) + 1
    assert cfg.model_dump() == before  # the config trained later is the one given
    assert torch.equal(torch.rand(3), expected[0]) and np.random.rand() == expected[1] and random.random() == expected[2]


def test_cli_lr_find(data, tmp_path) -> None:
    cfg = tmp_path / "tiny.yaml"
    save_config(tiny_config(), cfg)
    out = tmp_path / "lr"
    # the real command in its own process: Lightning's start-up lines (devices, tips) would show there
    res = subprocess.run(
        [sys.executable, "-m", "vislab.cli", "lr-find", cfg, "--data", data, "--out", out, "--steps", "25"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "GPU available" not in res.stderr + res.stdout and "Tip" not in res.stderr + res.stdout, res.stderr
    line = " ".join(res.stdout.split())
    assert line.startswith("lr-find: suggested optim.lr ") and "(valley rule; steepest descent at" in line
    value = float(line.rsplit("--set optim.lr=", 1)[1].split()[0])
    assert 1e-7 <= value <= 10 and (out / "lr_find.png").is_file()
    res = CliRunner().invoke(app, ["lr-find", str(cfg), "--data", str(tmp_path), "--steps", "25"])
    assert res.exit_code == 2 and "not a curated dataset" in res.output
    res = CliRunner().invoke(app, ["lr-find", str(cfg), "--data", str(data), "--min-lr", "1", "--max-lr", "0.1"])
    assert res.exit_code == 2 and "--min-lr" in res.output


def test_steepest_descent_ignores_repeated_lrs_and_non_finite_losses() -> None:
    lrs = [1e-5, 1e-5, 1e-4, 1e-4, 1e-3, 1e-2]
    with np.errstate(all="raise"):  # no division by a zero step in log(lr)
        j = steepest_index(lrs, [2.0, 1.9, 1.5, 1.4, 1.0, 0.9])
    assert j is not None and lrs[j] < lrs[j + 1]
    losses = [2.0, float("nan"), 1.5, float("inf"), 1.0, 0.9]
    with np.errstate(invalid="ignore"):
        j = steepest_index([1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], losses)
    assert j is not None and math.isfinite(losses[j]) and math.isfinite(losses[j + 1])
    assert steepest_index([1e-3, 1e-3, 1e-3], [1.0, 0.5, 0.2]) is None


def test_one_point_per_optimizer_step_with_accumulation_and_a_frozen_backbone_over_many_epochs(data, tmp_path, capsys) -> None:
    # 4 images a batch, 2 batches a step: the 20 steps run many epochs of the small train split
    cfg = tiny_config(data={"batch_size": 4}, train={"accumulate_grad_batches": 2, "freeze_backbone_epochs": 1})
    result = lr_find(cfg, data, tmp_path / "out", steps=20, min_lr=1e-7, max_lr=1e-3)
    assert len(result.lrs) == 20 and all(a < b for a, b in zip(result.lrs, result.lrs[1:]))
    assert result.lrs[0] == pytest.approx(1e-7) and result.lrs[-1] == pytest.approx(1e-3)
    # the loss of each step as trained (3 classes, near ln 3 at these small lrs), not divided by 2
    assert all(0.7 * math.log(3) < v < 1.5 * math.log(3) for v in result.losses), result.losses
    assert len(result.table.read_text().splitlines()) == 21
    assert "backbone unfrozen" not in capsys.readouterr().out  # frozen for the whole sweep


@pytest.mark.parametrize("case", ["file", "under_file", "folder_at_name", "link_at_name"])
def test_out_refused_before_the_sweep(case, data, tmp_path, monkeypatch) -> None:
    import importlib

    train_module = importlib.import_module("vislab.train")  # `vislab.train` can be the package's train function

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(train_module, "build_task", no_training)
    cfg = tmp_path / "tiny.yaml"
    save_config(tiny_config(), cfg)
    victim = tmp_path / "victim.csv"
    victim.write_text("keep\n")
    out = tmp_path / "out"
    if case == "file":
        out.write_text("hi\n")
        expected = "is a file, not a folder"
    elif case == "under_file":
        (tmp_path / "afile").write_text("hi\n")
        out = tmp_path / "afile" / "sub"
        expected = "which is a file, not a folder"
    elif case == "folder_at_name":
        (out / "lr_find.png").mkdir(parents=True)
        expected = "lr_find.png is a folder"
    else:
        out.mkdir()
        (out / "lr_find.csv").symlink_to(victim)
        expected = "lr_find.csv is a symbolic link"
    res = CliRunner().invoke(app, ["lr-find", str(cfg), "--data", str(data), "--out", str(out), "--steps", "20"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: --out {out}") and expected in res.output and len(res.output.strip().splitlines()) == 1
    assert victim.read_text() == "keep\n"
