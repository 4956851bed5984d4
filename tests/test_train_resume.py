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
    cfg = tiny_config(model={"name": "paced_cnn", "kwargs": {"train_s": 0.1}}, data={"batch_size": 8}, train={"epochs": 16})
    train(cfg, dataset, run, max_time="6s")  # the 16 epochs asked sleep 6.4 s alone: the plan fits fewer
    summary = json.loads((run / "summary.json").read_text())
    done = summary["epochs_completed"]
    assert 1 <= done < 16 and summary["plan"]["epochs_asked"] == 16
    assert (run / "checkpoints/last.ckpt").is_file()

    with pytest.raises(VislabError, match="time budget of 1s is spent"):
        train(None, None, run, resume=True, max_time="1s", epochs=16)
    with pytest.raises(VislabError, match="already finished|less than the"):
        train(None, None, run, resume=True)  # its planned epochs are done, or the budget has no epoch left

    train(None, None, run, resume=True, max_time="10m", epochs=16)
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["epoch"].tolist() == list(range(16))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "completed" and summary["epochs_completed"] == 16
    assert summary["wall_time_s"] >= 16 * 0.1 * 4  # the budget counts every session

    with pytest.raises(VislabError, match="already finished 16 epochs"):
        train(None, None, run, resume=True)
    train(None, None, run, resume=True, epochs=17)
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(17))
    assert "epochs: 17" in (run / "config.yaml").read_text()


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


class RuinWeights(Callback):
    """Before each validation of this session, the weights are zeroed: its epochs score at chance."""

    def on_validation_epoch_start(self, trainer, pl_module):
        with torch.no_grad():
            for p in pl_module.model.parameters():
                p.zero_()


def test_a_copied_run_keeps_its_best_checkpoint_when_resumed(dataset, tmp_path):
    """Lightning forgets the best score of a checkpoint saved under another folder: a run
    copied (Drive to /content) and resumed replaced best.ckpt with its next, worse, epoch."""
    import shutil

    first = train(tiny_config(train={"epochs": 3}), dataset, tmp_path / "drive" / "run")
    best_epoch = load_checkpoint_file(first / "checkpoints/best.ckpt")["epoch"]
    copy = tmp_path / "content" / "run"
    shutil.copytree(first, copy)
    train(None, None, copy, resume=True, epochs=4, callbacks=[RuinWeights()])
    rows = pd.read_csv(copy / "metrics.csv")
    assert rows["val/acc"].iloc[-1] < rows["val/acc"].iloc[:3].max()  # the new epoch is worse
    assert load_checkpoint_file(copy / "checkpoints/best.ckpt")["epoch"] == best_epoch


def test_a_run_resumed_past_its_early_stop_trains_the_epochs_asked(dataset, tmp_path):
    """The restored patience count was already at its limit: `--resume --epochs N` after an
    early stop trained one epoch and stopped again."""
    es = {"monitor": "val/acc", "mode": "max", "patience": 2, "min_delta": 2.0}  # no epoch can improve by 2: stops after 3
    run = train(tiny_config(train={"epochs": 10, "early_stopping": es}), dataset, tmp_path / "run")
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == "early_stopping"
    done = len(pd.read_csv(run / "metrics.csv"))
    train(None, None, run, resume=True, epochs=done + 3, callbacks=[])
    assert len(pd.read_csv(run / "metrics.csv")) == done + 2  # patience 2 counts again from the resume


def test_a_session_killed_outright_leaves_no_stale_stop_reason(dataset, tmp_path):
    """summary.json is written when a session ends; a SIGKILL left the previous session's
    reason (max_time), and the next resume was refused as 'the time budget stopped the run'."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    run = tmp_path / "run"
    first = train(tiny_config(train={"epochs": 2}), dataset, run)
    summary = json.loads((first / "summary.json").read_text())
    (first / "summary.json").write_text(json.dumps({**summary, "stopped_reason": "max_time"}))  # as a budget had stopped it
    resumer = script.with_name("resumer.py")
    resumer.write_text(KILLER.replace(
        "train(tiny_config(**json.loads(sys.argv[3])), sys.argv[1], sys.argv[2], callbacks=[KillAt(int(sys.argv[4]))])",
        "train(None, None, sys.argv[2], resume=True, epochs=6, max_time='10m', callbacks=[KillAt(int(sys.argv[4]))])",
    ))
    proc = subprocess.run([sys.executable, str(resumer), str(dataset), str(run), "{}", "10"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == "running"
    train(None, None, run, resume=True)  # refused before: "the time budget of 10m stopped the run"
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == "completed"


def test_a_run_killed_as_it_saved_its_first_epoch_says_what_to_do(dataset, tmp_path):
    run = train(tiny_config(train={"epochs": 1}), dataset, tmp_path / "run")
    (run / "checkpoints" / "last.ckpt").unlink()  # best.ckpt is written first: a kill in between leaves it alone
    for call in (lambda: train(None, None, run, resume=True), lambda: train(tiny_config(), dataset, run)):
        with pytest.raises(VislabError, match="holds best.ckpt but no last.ckpt .* cannot be resumed .*records 1 finished epoch") as err:
            call()
        assert f"{run / 'checkpoints' / 'best.ckpt'} (epoch 1) is intact" in str(err.value) and "delete" not in str(err.value)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch):
    """torch's zip writer on a full disk raises RuntimeError('... unexpected pos ...'), which
    reached the user as a traceback; the checkpoint already there is left as it was."""
    import vislab.callbacks as callbacks

    io = callbacks.AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    before = target.read_bytes()

    def full_disk(obj, f):
        f.write(b"x" * 10)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 617216 vs 617108")

    monkeypatch.setattr(callbacks.torch, "save", full_disk)
    with pytest.raises(VislabError, match=r"last.ckpt: cannot write the checkpoint .*MB free on its disk\); the one already there is unchanged"):
        io.save_checkpoint({"step": 2}, target)
    assert target.read_bytes() == before and not list(tmp_path.glob(".*tmp*"))
    assert load_checkpoint_file(target)["step"] == 1


def test_a_received_run_resumed_never_writes_through_its_links(dataset, tmp_path):
    """A run folder from someone else: config.yaml a link to a shared file and links planted at
    the atomic writers' temporary names (`.NAME.tmpPID`, this process's pid). Resuming wrote
    the new config into the shared file and summary.json, metrics.csv, run.json and the
    checkpoint into the user's file; now each link is left alone or replaced, never followed."""
    import os

    import yaml

    run = train(tiny_config(train={"epochs": 1}), dataset, tmp_path / "run")
    shared = tmp_path / "shared.yaml"
    shared.write_text((run / "config.yaml").read_text())
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(shared)
    victim = tmp_path / "notes.txt"
    victim.write_text("a user's file")
    planted = [run / f".{n}.tmp{os.getpid()}" for n in ("summary.json", "metrics.csv", "run.json")]
    planted.append(run / "checkpoints" / f".last.ckpt.tmp{os.getpid()}")
    for link in planted:
        link.symlink_to(victim)
    before = shared.read_text()

    train(None, None, run, resume=True, epochs=2)
    assert shared.read_text() == before and victim.read_text() == "a user's file"
    assert not (run / "config.yaml").is_symlink() and yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1]
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert all(link.is_symlink() for link in planted)


def test_resume_refuses_a_config_yaml_edited_since_the_checkpoint(dataset, tmp_path):
    """An edited lr was ignored on resume (the optimizer state won) but recorded in config.yaml;
    an edited batch size changed the run mid-schedule; an edited model was a load_state_dict
    traceback. Each is now one line naming the key; --epochs still extends an unedited copy."""
    import shutil

    run = train(tiny_config(train={"epochs": 1}), dataset, tmp_path / "run")
    config = run / "config.yaml"
    original = config.read_text()
    for old, new, key in [("lr: 0.01", "lr: 0.5", "optim.lr"), ("batch_size: 16", "batch_size: 7", "data.batch_size"),
                          ("filters: 8", "filters: 16", "model.simple_cnn.filters")]:
        assert old in original, old
        copy = tmp_path / key
        shutil.copytree(run, copy)
        (copy / "config.yaml").write_text(original.replace(old, new, 1))
        with pytest.raises(VislabError, match=rf"differs from the config last\.ckpt was trained with in {key.replace('.', '[.]')}"):
            train(None, None, copy, resume=True, epochs=2)
        assert (copy / "config.yaml").read_text() == original.replace(old, new, 1)  # the user's edit is left as it is
    resumed = train(None, None, run, resume=True, epochs=2)
    assert len(pd.read_csv(resumed / "metrics.csv").dropna(subset=["val/acc"])) == 2


def test_a_run_started_from_a_weights_file_resumes_without_it(dataset, tmp_path):
    """Resume rebuilt the model with `model.weights` loaded, so a run whose weights file had
    moved could not continue though last.ckpt holds every weight; it no longer reads the file."""
    from vislab.models.factory import create_model
    from vislab.testing.models import save_weights

    weights = save_weights(create_model(tiny_config().model, 3), tmp_path / "start.pth")
    run = train(tiny_config(train={"epochs": 1}, model={"weights": str(weights)}), dataset, tmp_path / "run")
    weights.rename(tmp_path / "moved.pth")
    resumed = train(None, None, run, resume=True, epochs=2)
    assert pd.read_csv(resumed / "metrics.csv")["epoch"].tolist() == [0, 1]
