"""Resume: after SIGKILL mid-epoch, after a time-budget run, and extending with --epochs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from vislab.errors import VislabError
from vislab.runs import load_checkpoint_file
from vislab.testing.models import weights_digest
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train

KILLER = """
import json, os, signal, sys
from lightning.pytorch.callbacks import Callback
from vislab.testing.synthetic import tiny_config
from vislab.train import train

class KillAt(Callback):
    def __init__(self, step):
        self.step = step
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

train(tiny_config(**json.loads(sys.argv[3])), sys.argv[1], sys.argv[2], callbacks=[KillAt(int(sys.argv[4]))])
"""

# dropout, mixup, augmentation and a per-step schedule: everything that consumes randomness
SECTIONS = {
    "seed": 3,
    "model": {"simple_cnn": {"dropout": 0.3}},
    "data": {"batch_size": 8, "augment": {"preset": "standard", "mixup": 0.2}},
    "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 3, "checkpoint_every_steps": 2},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("d"), per_class=20, size=16)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The same config trained without interruption."""
    return train(tiny_config(**SECTIONS), dataset, tmp_path_factory.mktemp("ref") / "full")


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(dataset, reference, tmp_path):
    full = reference

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    run = tmp_path / "killed"
    # 36 train images / batch 8 = 4 steps per epoch: step 7 is mid-way through epoch 2, 1 step after a save
    proc = subprocess.run(
        [sys.executable, str(script), str(dataset), str(run), json.dumps(SECTIONS), "7"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0]
    ckpt = load_checkpoint_file(run / "checkpoints/last.ckpt")
    assert ckpt["global_step"] == 6
    assert not list((run / "checkpoints").glob(".*tmp*"))

    train(None, None, run, resume=True)
    resumed = pd.read_csv(run / "metrics.csv")
    reference = pd.read_csv(full / "metrics.csv")
    assert resumed["epoch"].tolist() == [0, 1, 2]
    cols = ["train/loss", "train/acc", "val/loss", "val/acc", "lr"]
    pd.testing.assert_frame_equal(resumed[cols], reference[cols], rtol=1e-5)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_completed"] == 3 and summary["stopped_reason"] == "completed"
    # model, optimiser, scheduler, data position and RNG all restored: the same weights
    assert weights_digest(run) == weights_digest(full)


def test_same_seed_same_weights_with_or_without_workers(dataset, reference, tmp_path):
    # per-image augmentation seeds and a sampler outside the workers: worker count is irrelevant
    sections = {**SECTIONS, "data": {**SECTIONS["data"], "num_workers": 2}}
    run = train(tiny_config(**sections), dataset, tmp_path / "workers")
    assert weights_digest(run) == weights_digest(reference)


class StopAt(Callback):
    """Requests a stop after the given step, like the time budget does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_stop_mid_epoch_saves_that_step_and_resume_continues_it(dataset, reference, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(**SECTIONS), dataset, run, callbacks=[StopAt(5)])
    assert load_checkpoint_file(run / "checkpoints/last.ckpt")["global_step"] == 5
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0]  # the cut epoch is not a row yet
    train(None, None, run, resume=True)
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1, 2]
    assert weights_digest(run) == weights_digest(reference)


def test_budget_run_resumes_with_more_time_and_extends(dataset, tmp_path):
    import vislab.testing.models  # noqa: F401  (registers paced_cnn: 0.1 s a training step)

    run = tmp_path / "run"
    cfg = tiny_config(model={"name": "paced_cnn", "kwargs": {"train_s": 0.1}}, data={"batch_size": 8}, train={"epochs": 25})
    train(cfg, dataset, run, max_time="6s")  # >= 0.5 s an epoch: the plan fits fewer than the 25 epochs asked
    summary = json.loads((run / "summary.json").read_text())
    done = summary["epochs_completed"]
    assert 1 <= done < 25 and summary["plan"]["epochs_asked"] == 25
    assert (run / "checkpoints/last.ckpt").is_file()

    with pytest.raises(VislabError, match="time budget of 1s is spent"):
        train(None, None, run, resume=True, max_time="1s", epochs=25)
    with pytest.raises(VislabError, match="already finished|less than the"):
        train(None, None, run, resume=True)  # its planned epochs are done, or the budget has no epoch left

    train(None, None, run, resume=True, max_time="10m", epochs=25)
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["epoch"].tolist() == list(range(25))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "completed" and summary["epochs_completed"] == 25
    assert summary["wall_time_s"] >= 25 * 0.1 * 4  # the budget counts every session

    with pytest.raises(VislabError, match="already finished its 25 epochs"):
        train(None, None, run, resume=True)
    train(None, None, run, resume=True, epochs=26)
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(26))
    assert "epochs: 26" in (run / "config.yaml").read_text()


def test_resume_refuses_a_changed_config_or_dataset(dataset, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(train={"epochs": 1})
    train(cfg, dataset, run)
    other = tiny_config(train={"epochs": 1}, optim={"lr": 0.5})
    with pytest.raises(VislabError, match="optim.lr"):
        train(other, dataset, run, resume=True, epochs=2)
    changed = make_pattern_dataset(tmp_path / "other", per_class=5, size=16)
    with pytest.raises(VislabError, match="manifest differs"):
        train(None, changed, run, resume=True, epochs=2)


def test_checkpoints_load_with_weights_only(dataset, tmp_path):
    run = train(tiny_config(train={"epochs": 1}), dataset, tmp_path / "run")
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert "vislab_rng" in ckpt and ckpt["epoch"] >= 0


def test_interrupted_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    from vislab.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, target)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint_file(target)["w"], torch.ones(3))  # its checksum still matches
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
