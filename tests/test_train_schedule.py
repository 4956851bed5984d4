"""Learning-rate schedules over a run's real length: extending a finished run trains at a real
learning rate again, a run stopped early is stretched to its new end, and metrics.csv logs
the learning rates the epoch's steps used."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from lightning.pytorch.callbacks import Callback

from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train

PER_EPOCH = 4  # 36 training images in batches of 8
LR = 0.01


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("d"), per_class=20, size=16)


def config(scheduler: dict, epochs: int):
    return tiny_config(data={"batch_size": 8}, optim={"lr": LR}, scheduler=scheduler, train={"epochs": epochs})


class StepLrs(Callback):
    """The head's lr each optimizer step used (read before the step), and its loss."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[-1]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_extending_a_finished_one_cycle_run_trains_a_new_cycle(dataset, tmp_path, capsys):
    run = train(config({"name": "onecycle"}, 3), dataset, tmp_path / "run")
    before = pd.read_csv(run / "metrics.csv")
    assert before["lr/last"].iloc[-1] < 1e-6  # the cycle ended at its floor (0.01 / 25 / 1e4)
    seen = StepLrs()
    train(None, None, run, resume=True, epochs=5, callbacks=[seen])
    assert "epochs 4-5 get a new cycle" in capsys.readouterr().out
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert max(seen.lrs) == pytest.approx(LR, rel=0.05)  # back up to the configured peak
    assert rows["lr"].iloc[3:].min() > 0.1 * LR  # real training, not 4e-8
    assert rows["lr/last"].iloc[-1] < 1e-6  # and down to the floor again at the new last epoch
    assert abs(seen.losses[-1] - seen.losses[0]) > 0.01  # the weights moved
    assert rows["train/loss"].iloc[4] != pytest.approx(rows["train/loss"].iloc[2], abs=1e-3)


class StopAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_a_run_stopped_early_is_stretched_to_its_new_end(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train(config({"name": "cosine"}, 4), dataset, run, callbacks=[StopAfter(2 * PER_EPOCH)])
    seen = StepLrs()
    train(None, None, run, resume=True, epochs=8, callbacks=[seen])
    assert "now ends at epoch 8 instead of 4" in capsys.readouterr().out
    total = 8 * PER_EPOCH
    expected = [LR * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(2 * PER_EPOCH, total)]
    assert seen.lrs == pytest.approx(expected, rel=1e-6)  # as if planned for 8 epochs from the start


def test_metrics_log_the_learning_rates_the_steps_used(dataset, tmp_path):
    seen = StepLrs()
    run = train(config({"name": "cosine", "warmup_epochs": 1.0}, 2), dataset, tmp_path / "run", callbacks=[seen])
    rows = pd.read_csv(run / "metrics.csv")
    warm = [LR * (s + 1) / (PER_EPOCH + 1) for s in range(PER_EPOCH)]  # linear warm-up over epoch 1
    assert seen.lrs[:PER_EPOCH] == pytest.approx(warm)
    assert rows.loc[0, "lr/first"] == pytest.approx(warm[0]) and rows.loc[0, "lr/last"] == pytest.approx(warm[-1])
    assert rows.loc[0, "lr"] == pytest.approx(sum(warm) / PER_EPOCH)
    assert rows.loc[1, "lr"] == pytest.approx(sum(seen.lrs[PER_EPOCH:]) / PER_EPOCH)


def test_an_exponential_schedule_extended_continues_its_decay(dataset, tmp_path, capsys):
    run = train(config({"name": "exponential", "gamma": 0.5}, 2), dataset, tmp_path / "run")
    train(None, None, run, resume=True, epochs=3)
    assert "exponential has no end to re-plan; it continues over epoch 3" in capsys.readouterr().out
    assert pd.read_csv(run / "metrics.csv")["lr"].tolist() == pytest.approx([LR, LR / 2, LR / 4])
