"""A crops run through the real engine learns from the lens and keeps its memory flat; a
time budget fits it; the sanity check overfits one batch. Tiny synthetic lens photos
(vislab.testing.lens), one intra-op thread (two cores shared with other jobs)."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import pandas as pd
import pytest
import torch

from vislab.evaluate import evaluate
from vislab.testing.lens import make_lens_dataset, tiny_crops_run
from vislab.testing.memory import rss_mb
from vislab.train import train


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RssPerEpoch(L.Callback):
    def __init__(self) -> None:
        self.mb: list[float] = []
        self.held: list[int] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.mb.append(rss_mb())
        self.held.append(len(pl_module.val_spread))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_tiny_run_learns_flag_and_cells_and_memory_stays_flat(tmp_path) -> None:
    data = make_lens_dataset(tmp_path / "data", splits=(32, 8, 12), seed=1)
    rss = RssPerEpoch()
    run = train(tiny_crops_run(train={"epochs": 16}), data, tmp_path / "run", callbacks=[rss])
    m = evaluate(run, split="test", task_options={"crops_per_image": 1})
    model, base = m["model"], m["baseline"]
    assert m["num_samples"] == 24 and model["cropped"] == 12
    # measured: patch accuracy 0.66 (baseline 0.08, chance 1/16), flag accuracy 1.0 (baseline 0.5)
    assert model["patch_acc"] > 0.2 and model["patch_acc"] > base["patch_acc"] + 0.1, m
    assert model["flag_acc"] >= 0.7 and model["flag_auc"] > 0.8, m
    # nothing of an epoch stays behind: the module holds no outputs between epochs, and RSS
    # over the last 5 epochs is that of epochs 2-6 (medians: single readings wander by ~15 MB)
    assert rss.held == [0] * 16
    assert statistics.median(rss.mb[-5:]) - statistics.median(rss.mb[1:6]) < 8, rss.mb


def test_a_time_budget_fits_a_crops_run(tmp_path) -> None:
    data = make_lens_dataset(tmp_path / "data", splits=(16, 4, 4))
    start = time.perf_counter()
    run = train(tiny_crops_run(train={"epochs": 100}), data, tmp_path / "run", max_time="6s")
    wall = time.perf_counter() - start
    summary = json.loads((run / "summary.json").read_text())
    epochs = len(pd.read_csv(run / "metrics.csv"))
    assert 1 <= epochs < 100 and summary["epochs_completed"] == epochs
    assert summary["wall_time_s"] <= 6 * 1.5, summary  # the plan's probe counts; the run fits its budget
    assert wall < 60


def test_sanity_check_overfits_one_batch(tmp_path) -> None:
    data = make_lens_dataset(tmp_path / "data", splits=(8, 2, 2))
    run = train(tiny_crops_run(train={"sanity_steps": 60}, optim={"lr": 3e-3}), data, tmp_path / "run", sanity=True)
    result = json.loads((Path(run) / "sanity.json").read_text())
    assert result["loss_dropped"] and result["loss_last"] < result["loss_first"] * 0.7, result
    assert result["accuracy_last"] > 0.5, result  # the task's sanity score: flag and patch accuracy on that batch
