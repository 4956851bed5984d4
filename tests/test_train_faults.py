"""Faults around training, reproduced for real: two processes on one run directory, SIGTERM and
Ctrl-C sent to a running `vislab train`, a writer killed mid-checkpoint, corrupted checkpoint
files, and bad --out / --opset values."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from lightning.pytorch.callbacks import Callback
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import dump_config
from vislab.errors import TrainingInterrupted, VislabError
from vislab.runs import checksum_path, load_checkpoint_file, write_checksum
from vislab.testing.models import single_thread
from vislab.testing.processes import group_alive, single_thread_env, wait_group_gone
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train

# 36 train images per class x 2 classes... 72 train images / batch 8 = 9 steps per epoch
STEPS = 9
# long enough that a signal always lands while training; the tests stop it long before
LONG = {"train": {"epochs": 500}, "data": {"batch_size": 8, "num_workers": 2}}
SLOW_START = 180  # seconds: importing torch on a loaded 2-core machine can take a while


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("data"), per_class=40, size=16)


@pytest.fixture(scope="module")
def long_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "long.yaml"
    path.write_text(dump_config(tiny_config(**LONG)))
    return path


class Cli:
    """A real `vislab train` process whose output is read as it comes; torch on one thread
    unless not `one_thread` (a test that times the stop keeps the default's pace)."""

    def __init__(self, *args: str, new_session: bool = False, one_thread: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vislab.cli", "train", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=new_session,
            env=single_thread_env() if one_thread else None,
        )
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float = SLOW_START) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        self.kill()
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output}")

    def finish(self, timeout: float = SLOW_START) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout}s; output:\n{self.output}") from None
        while (line := self._q.get(timeout=30)) is not None:
            self.lines.append(line)
        return rc

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---- item 2: one process per run directory -----------------------------------------------------
def test_second_process_on_a_training_run_dir_is_refused(dataset, long_cfg, tmp_path):
    run = tmp_path / "run"
    first = Cli(str(long_cfg), "--data", str(dataset), "--out", str(run))
    try:
        first.wait_for(r"^data: ")  # the run directory is set up: training starts
        # the refused commands run here: the lock is the first process's, this is another one
        for args in (["train", str(long_cfg), "--data", str(dataset), "--out", str(run)], ["train", "--resume", "--out", str(run)]):
            line = _one_line_error(CliRunner().invoke(app, args))
            assert f"another vislab process (pid {first.proc.pid}) is training into this run directory" in line
            assert str(run) in line
        assert first.proc.poll() is None  # the first one trains on, undisturbed
        first.wait_for(r"^epoch 2/")  # and epoch 1 is saved: a checkpoint to resume from
    finally:
        first.proc.send_signal(signal.SIGKILL)  # the kernel releases the lock of a killed process
        first.finish()
    ckpt = load_checkpoint_file(run / "checkpoints/last.ckpt")
    epochs = int(ckpt["callbacks"]["RunRecorder"]["next_epoch"]) + 1
    with single_thread():
        train(None, None, run, resume=True, epochs=epochs)
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(epochs))


HOLDER = """
import os, signal, sys, time
from vislab.runs import run_lock

with run_lock(sys.argv[1]):
    child = os.fork()
    if child == 0:  # like a DataLoader worker: forked while the lock is held, outlives its parent
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # let the test read its parent's output to the end
        os.dup2(devnull, 2)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_holder_releases_the_lock_even_while_its_forked_workers_live(tmp_path):
    from vislab.runs import run_lock

    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.run([sys.executable, "-c", HOLDER, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    worker = int(proc.stdout.split()[0])
    try:
        os.kill(worker, 0)  # still alive
        with run_lock(run):
            pass
    finally:
        os.kill(worker, signal.SIGKILL)


# ---- item 5: SIGTERM / SIGINT ----------------------------------------------------------------
STOP_LINE = r"^interrupted by (SIGTERM|SIGINT) at epoch (\d+) step (\d+); saved (\S+); continue with: vislab train --resume --out (\S+)$"


def _check_stopped_run(output: str, run: Path, name: str, reason: str) -> tuple[int, int]:
    assert "Traceback" not in output and "Error" not in output, output
    stop = [m for m in (re.match(STOP_LINE, line) for line in output.splitlines()) if m]
    assert len(stop) == 1, output
    sig, epoch, step, saved, out = stop[0].groups()
    assert sig == name and Path(saved) == run / "checkpoints/last.ckpt" and Path(out) == run
    epoch, step = int(epoch), int(step)
    assert load_checkpoint_file(saved)["global_step"] == step > 0
    assert (epoch - 1) * STEPS < step <= epoch * STEPS
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == reason
    return epoch, step


def test_sigterm_saves_the_step_exits_143_and_resume_finishes(dataset, long_cfg, tmp_path):
    run = tmp_path / "run"
    proc = Cli(str(long_cfg), "--data", str(dataset), "--out", str(run))
    proc.wait_for(r"^epoch 1/")  # training runs: the signal lands in epoch 2
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.finish() == 143, proc.output
    epoch, step = _check_stopped_run(proc.output, run, "SIGTERM", "sigterm")
    assert len(pd.read_csv(run / "metrics.csv")) in (epoch - 1, epoch)  # the cut epoch has no row yet

    with single_thread():
        train(None, None, run, resume=True, epochs=epoch + 1)
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(epoch + 1))
    assert load_checkpoint_file(run / "checkpoints/last.ckpt")["global_step"] == (epoch + 1) * STEPS  # no step twice
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == "completed"


class _SignalAt(Callback):
    """Sends a real SIGTERM to this process after training step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("epochs", [5, 1])
def test_a_signal_in_the_first_epoch_with_early_stopping_stops_cleanly(dataset, tmp_path, epochs):
    # the cut epoch is not validated, so early stopping has no val/acc yet: it must wait for a
    # validation instead of failing the stop with Lightning's "metric not available" error;
    # and a cut last epoch is an interrupted run, not a completed one
    cfg = tiny_config(data={"batch_size": 4}, train={"epochs": epochs, "early_stopping": {"patience": 100}})  # 18 steps an epoch
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"^interrupted by SIGTERM at epoch 1 step [34];"):
        train(cfg, dataset, run, callbacks=[_SignalAt(3)])
    assert load_checkpoint_file(run / "checkpoints/last.ckpt")["global_step"] in (3, 4)
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == "sigterm"


def test_ctrl_c_to_the_process_group_with_workers_stops_cleanly(dataset, long_cfg, tmp_path):
    # a terminal's Ctrl-C reaches the DataLoader workers too: they must not die or print
    run = tmp_path / "run"
    proc = Cli(str(long_cfg), "--data", str(dataset), "--out", str(run), new_session=True)
    proc.wait_for(r"^epoch 1/")
    assert len(group_alive(proc.proc.pid)) > 1  # the workers are there
    os.killpg(proc.proc.pid, signal.SIGINT)
    assert proc.finish() == 130, proc.output
    _check_stopped_run(proc.output, run, "SIGINT", "interrupted")
    assert wait_group_gone(proc.proc.pid) == []


def test_second_ctrl_c_stops_at_once(dataset, long_cfg, tmp_path):
    run = tmp_path / "run"
    proc = Cli(str(long_cfg), "--data", str(dataset), "--out", str(run), new_session=True, one_thread=False)
    proc.wait_for(r"^epoch 1/")
    os.killpg(proc.proc.pid, signal.SIGINT)
    proc.wait_for(r"SIGINT received")
    t0 = time.monotonic()
    os.killpg(proc.proc.pid, signal.SIGINT)
    rc = proc.finish(timeout=60)
    assert rc == -signal.SIGINT, proc.output  # ended by the signal itself, as a shell expects
    assert time.monotonic() - t0 < 30
    assert "SIGINT again: stopping now" in proc.output and "Traceback" not in proc.output
    assert wait_group_gone(proc.proc.pid) == []  # workers leave with it
    assert not list((run / "checkpoints").glob("*.ckpt")) or load_checkpoint_file(run / "checkpoints/last.ckpt")


# `vislab train` with the tiny models of vislab.testing registered (paced_cnn)
WITH_TEST_MODELS = "import sys, vislab.testing.models; from vislab.cli import app; sys.exit(app())"
# `vislab train` that sends itself `sys.argv[1]` once the run's files (config.yaml, run.json) are written
SIGNAL_AFTER_RUN_FILES = """
import os, signal, sys
import vislab.train
from vislab.cli import app

signum = signal.Signals[sys.argv.pop(1)]
write = vislab.train._write_run_files

def write_then_signal(*args, **kwargs):
    write(*args, **kwargs)
    os.kill(os.getpid(), signum)  # the run's files are written; training has not started

vislab.train._write_run_files = write_then_signal
sys.exit(app())
"""


def test_sigterm_during_the_budget_probe_stops_before_anything_is_written(dataset, tmp_path):
    # the probe of a paced model takes seconds: the signal lands in it; the run used to go on to
    # write config.yaml and run.json of a run that never trained, with no summary.json
    cfg = tmp_path / "paced.yaml"
    cfg.write_text(dump_config(tiny_config(model={"name": "paced_cnn", "kwargs": {"train_s": 0.5}}, data={"batch_size": 8})))
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", WITH_TEST_MODELS, "train", str(cfg), "--data", str(dataset), "--out", str(run), "--max-time", "10m"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=single_thread_env(),
    )
    try:
        deadline = time.monotonic() + SLOW_START
        while not (run / ".vislab.lock").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # the run folder is locked: setup has begun
        output = proc.communicate(timeout=SLOW_START)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    assert not run.exists(), sorted(p.name for p in run.iterdir())  # the folder it made is gone with it
    assert "Traceback" not in output and "data: " not in output, output
    assert "SIGTERM received: stopping before training starts" in output, output
    assert output.strip().splitlines()[-1] == "interrupted by SIGTERM before the first checkpoint; nothing was saved; start the run again", output


@pytest.mark.parametrize("name, reason", [("SIGTERM", "sigterm"), ("SIGINT", "interrupted")])
def test_a_signal_after_the_run_files_are_written_records_the_stop(dataset, long_cfg, tmp_path, name, reason):
    # config.yaml and run.json written, training not started: the folder held a run with no
    # record of how it ended; now summary.json says so, as for the watchdog's stop
    script = tmp_path / "signal_after_run_files.py"
    script.write_text(SIGNAL_AFTER_RUN_FILES)
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), name, "train", str(long_cfg), "--data", str(dataset), "--out", str(run)],
        capture_output=True, text=True, timeout=SLOW_START, env=single_thread_env(),
    )
    signum = signal.Signals[name]
    assert proc.returncode == 128 + signum, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and (run / "config.yaml").is_file() and (run / "run.json").is_file()
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    assert summary.get("stopped_reason") == reason, sorted(p.name for p in run.iterdir())
    assert summary["epochs_completed"] == 0 and summary["best_epoch"] is None and summary["epochs_planned"] == LONG["train"]["epochs"]
    assert f"{name} received: stopping before training starts" in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"interrupted by {name} before the first checkpoint; nothing was saved; start the run again"
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())
    resumed = CliRunner().invoke(app, ["train", "--resume", "--out", str(run)])
    assert resumed.exit_code == 2 and len(resumed.output.strip().splitlines()) == 1, resumed.output
    assert f"nothing to resume (no last checkpoint: {name} stopped the run before its first one)" in resumed.output


def test_train_help_documents_the_exit_codes():
    res = CliRunner().invoke(app, ["train", "--help"])
    assert res.exit_code == 0
    assert "130" in res.output and "143" in res.output


# ---- item 6: temporary files of killed writers --------------------------------------------------
KILL_MID_WRITE = """
import json, os, signal, sys
import torch
from vislab.testing.synthetic import tiny_config
from vislab.train import train

real_save, calls = torch.save, []

def dies_on_third_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # best.ckpt and last.ckpt of epoch 1 are written; this is epoch 2's
        f.write(b"the first bytes of a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = dies_on_third_save
train(tiny_config(**json.loads(sys.argv[3])), sys.argv[1], sys.argv[2])
"""


def test_orphan_temp_files_of_a_killed_write_are_removed_on_the_next_start(dataset, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILL_MID_WRITE)
    run = tmp_path / "run"
    sections = {"train": {"epochs": 3}, "data": {"batch_size": 8}}
    proc = subprocess.run([sys.executable, str(script), str(dataset), str(run), json.dumps(sections)], capture_output=True, text=True, timeout=300, env=single_thread_env())
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    orphans = list((run / "checkpoints").glob(".best.ckpt.tmp*"))
    assert len(orphans) == 1 and orphans[0].read_bytes() == b"the first bytes of a checkpoint"
    dead_pid = orphans[0].name.rsplit("tmp", 1)[1]
    also_orphan = run / f".metrics.csv.tmp{dead_pid}"
    also_orphan.write_text("epoch\n0\n")
    keep = {
        run / "notes.tmp123": "a user's file",  # not vislab's pattern
        run / f".summary.json.tmp{os.getppid()}": "{}",  # its writer (this test's parent) is alive
        tmp_path / f".outside.tmp{dead_pid}": "outside the run",
    }
    for path, text in keep.items():
        path.write_text(text)
    (run / f".link.tmp{dead_pid}").symlink_to(tmp_path / f".outside.tmp{dead_pid}")

    with single_thread():
        train(None, None, run, resume=True)
    assert not orphans[0].exists() and not also_orphan.exists()
    assert all(p.read_text() == text for p, text in keep.items())
    assert (run / f".link.tmp{dead_pid}").is_symlink()
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1, 2]


# ---- item 8: corrupted checkpoints -------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    with single_thread():
        train(tiny_config(train={"epochs": 2}, data={"batch_size": 8}), dataset, run)
    return run


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    if how == "zero-byte":
        data = bytearray()
    elif how == "random-bytes":
        data = bytearray(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:  # 100 flipped bytes inside the largest tensor: torch.load reads the file without complaint
        with zipfile.ZipFile(path) as zf:
            rec = max((r for r in zf.infolist() if re.search(r"/data/[0-9]+$", r.filename)), key=lambda r: r.file_size)
        start = rec.header_offset + 30 + len(rec.filename.encode()) + len(rec.extra)  # the local header's size
        for i in rng.choice(np.arange(start, start + rec.file_size), 100, replace=False):
            data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _one_line_error(res) -> str:
    assert res.exit_code == 2, (res.output, res.exception)
    text = res.output.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    return text


KINDS = ["zero-byte", "random-bytes", "100-flipped-bytes"]


@pytest.mark.parametrize("how", KINDS)
def test_resume_from_a_corrupted_last_checkpoint_names_it_and_the_fallback(trained, tmp_path, how):
    run = _copy(trained, tmp_path)
    last = run / "checkpoints/last.ckpt"
    corrupt(last, how)
    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(run), "--epochs", "3"])
    text = _one_line_error(res)
    assert str(last) in text and "corrupted" in text and "sha256" in text
    assert f"fallback {run / 'checkpoints/best.ckpt'}" in text


@pytest.mark.parametrize("how", ["zero-byte", "random-bytes"])
def test_unreadable_checkpoint_without_a_checksum_is_a_one_line_error(trained, tmp_path, how):
    # checkpoints from before the checksums (or other tools) have no sidecar: torch.load's own
    # errors (EOFError with an empty message, UnpicklingError, ...) must still read as one line
    run = _copy(trained, tmp_path)
    last = run / "checkpoints/last.ckpt"
    corrupt(last, how)
    checksum_path(last).unlink(missing_ok=True)
    with pytest.raises(VislabError, match=re.escape(str(last)) + ": cannot read checkpoint"):
        load_checkpoint_file(last)
    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(run), "--epochs", "3"])
    assert str(last) in _one_line_error(res)


@pytest.mark.parametrize("how", KINDS)
def test_evaluate_predict_export_fall_back_to_last_and_say_so(trained, dataset, tmp_path, how):
    run = _copy(trained, tmp_path)
    best, last = run / "checkpoints/best.ckpt", run / "checkpoints/last.ckpt"
    corrupt(best, how)
    image = next((dataset / "images").rglob("*.png"))
    warning = f"warning: {best}: corrupted checkpoint"
    for args in (["evaluate", str(run), "--split", "test"], ["predict", str(run), str(image), "--format", "json"], ["export", str(run)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, (args, res.output, res.exception)
        assert warning in res.output and f"using the fallback {last}" in res.output, res.output
    meta = {m.key: m.value for m in onnx.load(str(run / "export/model.onnx")).metadata_props}
    assert json.loads(meta["vislab_checkpoint"])["file"] == last.name  # the file says which weights it holds

    corrupt(last, how)  # nothing left to fall back on
    for args in (["evaluate", str(run)], ["predict", str(run), str(image)], ["export", str(run)], ["explain", str(run), str(image)]):
        text = _one_line_error(CliRunner().invoke(app, args))
        assert str(best) in text and str(last) in text and "fallback is unusable" in text


def test_resume_from_a_checkpoint_of_another_kind_is_a_one_line_error(trained, tmp_path):
    import torch

    run = _copy(trained, tmp_path)
    last = run / "checkpoints/last.ckpt"
    torch.save({"weights": torch.ones(3)}, last)  # readable, but nothing Lightning can resume
    checksum_path(last).unlink()
    text = _one_line_error(CliRunner().invoke(app, ["train", "--resume", "--out", str(run), "--epochs", "3"]))
    assert f"{last}: not a training checkpoint of vislab (no state_dict" in text


def test_checkpoints_without_a_sidecar_load_unchecked(trained, tmp_path):
    run = _copy(trained, tmp_path)
    best = run / "checkpoints/best.ckpt"
    assert checksum_path(best).is_file()  # written with the checkpoint...
    checksum_path(best).unlink()  # ...and a checkpoint without one loads, unchecked
    assert "state_dict" in load_checkpoint_file(best)


def test_a_kill_between_the_sidecar_and_the_checkpoint_rename_still_loads(trained, tmp_path):
    # the sidecar is renamed into place first and also accepts the checkpoint it replaces
    run = _copy(trained, tmp_path)
    last = run / "checkpoints/last.ckpt"
    write_checksum(last, "0" * 64, 123)  # a newer checkpoint's sidecar; its rename never happened
    assert "state_dict" in load_checkpoint_file(last)
    corrupt(last, "100-flipped-bytes")
    with pytest.raises(VislabError, match="corrupted checkpoint"):
        load_checkpoint_file(last)


# ---- resuming a damaged or foreign run folder: refused in one line before anything is written ----
def _files(run: Path) -> dict[str, bytes]:
    """Every file of a run folder (tb/ included) and its bytes: what a refused resume must leave."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _refused_untouched(run: Path, *args: str) -> str:
    before = _files(run)
    text = _one_line_error(CliRunner().invoke(app, ["train", "--resume", "--out", str(run), *args]))
    assert _files(run) == before, text
    return text


def test_resume_from_another_configs_weights_is_refused_before_writing(trained, tmp_path):
    """A last.ckpt without hyper_parameters, its weights those of another config (filters 16):
    a size-mismatch traceback after config.yaml, summary.json, run.json and tb/ were rewritten."""
    import torch

    from vislab.models.factory import create_model

    run = _copy(trained, tmp_path)
    last = run / "checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    ckpt.pop("hyper_parameters")
    other = create_model(tiny_config(model={"simple_cnn": {"filters": 16}}).model, 2, load_weights=False)
    ckpt["state_dict"] = {f"model.{k}": v for k, v in other.state_dict().items()}
    torch.save(ckpt, last)
    checksum_path(last).unlink()
    text = _refused_untouched(run, "--epochs", "3")
    assert f"{last}: weights do not match model 'simple_cnn'" in text and "of another size" in text
    assert "the run's own last.ckpt" in text


@pytest.mark.parametrize("budget", [[], ["--max-time", "10m"]], ids=["no-budget", "budget"])
def test_resume_with_a_damaged_metrics_csv_is_refused_before_writing(trained, tmp_path, budget):
    run = _copy(trained, tmp_path)
    (run / "metrics.csv").write_text('epoch,"unterminated\n1,2\n')  # a parser error in pandas
    text = _refused_untouched(run, "--epochs", "3", *budget)
    assert f"{run / 'metrics.csv'}: cannot read as CSV" in text and "restore the metrics.csv" in text


@pytest.mark.parametrize("damage", ["no-dataset_dir", "a-list"])
def test_resume_with_a_damaged_run_json_is_refused_before_writing(trained, tmp_path, damage):
    run = _copy(trained, tmp_path)
    info = json.loads((run / "run.json").read_text())
    info.pop("dataset_dir")
    (run / "run.json").write_text(json.dumps(info if damage == "no-dataset_dir" else [info]))
    text = _refused_untouched(run, "--epochs", "3")
    expected = "no dataset_dir recorded; pass --data" if damage == "no-dataset_dir" else "holds a JSON list, not an object"
    assert f"{run / 'run.json'}: {expected}" in text


def test_a_finished_run_asked_for_fewer_epochs_names_the_epochs_done(trained, tmp_path):
    """It said 'already finished its 1 epochs; pass --epochs N (N > 1)', and --epochs 2 was refused again."""
    run = _copy(trained, tmp_path)
    for asked in ("1", "2"):
        text = _refused_untouched(run, "--epochs", asked)
        assert "already finished 2 epochs; pass --epochs N (N > 2)" in text


@pytest.mark.parametrize("how", ["removed", "a-folder"])
def test_a_finished_run_without_last_ckpt_says_how_far_it_got_and_keeps_best(trained, tmp_path, how):
    """It said the run stopped while saving its first epoch and advised deleting best.ckpt, its
    only good checkpoint."""
    run = _copy(trained, tmp_path)
    last, best = run / "checkpoints/last.ckpt", run / "checkpoints/best.ckpt"
    last.unlink()
    checksum_path(last).unlink()
    if how == "a-folder":
        last.mkdir()
    text = _refused_untouched(run, "--epochs", "3")
    assert f"({last} is {'missing' if how == 'removed' else 'not a regular file'})" in text
    assert "metrics.csv records 2 finished epochs" in text and "first" not in text
    assert f"{best} (epoch 2) is intact" in text and f"--set model.weights={best}" in text
    assert "delete" not in text


# ---- smaller: --out and --opset ------------------------------------------------------------
def test_out_that_is_a_file_or_under_a_file_is_a_one_line_error(dataset, long_cfg, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "sub" / "run"):
        text = _one_line_error(CliRunner().invoke(app, ["train", str(long_cfg), "--data", str(dataset), "--out", str(out)]))
        assert str(a_file) in text and "is a file" in text
    assert a_file.read_text() == "not a folder"
    missing = tmp_path / "no-dataset"
    new_out = tmp_path / "new" / "run"
    _one_line_error(CliRunner().invoke(app, ["train", str(long_cfg), "--data", str(missing), "--out", str(new_out)]))
    assert not new_out.exists()  # a run that failed before writing anything leaves no folder


@pytest.mark.parametrize("opset", ["1", "6", "99", "-3"])
def test_unsupported_opset_is_refused_naming_the_range(trained, tmp_path, opset):
    run = _copy(trained, tmp_path)
    text = _one_line_error(CliRunner().invoke(app, ["export", str(run), "--opset", opset]))
    assert f"--opset {opset}" in text and "from 7 to 20" in text
    assert not (run / "export").exists()
