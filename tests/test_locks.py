"""Output folders held by one vislab process at a time, reproduced with real processes started
together: two `train` into one new --out, two `curate` into one dataset folder."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
from typer.testing import CliRunner

from vislab.config import dump_config
from vislab.testing.models import single_thread
from vislab.testing.processes import single_thread_env
from vislab.testing.synthetic import make_pattern_dataset, tiny_config

RACERS = 2
TRIES = 3
SLOW_START = 240  # seconds: importing torch in two processes on a loaded 2-core machine

# The end of every racer script: import once, then for each try wait for the common start
# instant (asleep until just before it, then spinning) and run `attempt(*args)`.
RACE_LOOP = """
print("@ready", flush=True)
for line in sys.stdin:
    start, args = json.loads(line)
    while time.time() < start - 0.05:
        time.sleep(0.01)
    while time.time() < start:
        pass
    print("@" + json.dumps(attempt(*args)), flush=True)
    print("@ready", flush=True)
"""

# Each racer trains and, while training, checks that the lock of the run directory still
# holds: its file is there and a third taker is refused.
TRAINER = """
import json, os, sys, time
from lightning.pytorch.callbacks import Callback
from vislab.config import load_config
from vislab.errors import VislabError
from vislab.runs import run_lock
from vislab.train import train

cfg, data = load_config(sys.argv[1]), sys.argv[2]

class Probe(Callback):
    def __init__(self, out):
        self.out = out

    def on_train_start(self, trainer, module):
        self.seen = {"lock_file": os.path.exists(os.path.join(self.out, ".vislab.lock"))}
        try:
            with run_lock(self.out):
                self.seen["third_taker"] = "got the lock"
        except VislabError:
            self.seen["third_taker"] = "refused"

def attempt(out):
    probe = Probe(out)
    try:
        train(cfg.model_copy(deep=True), data, out, callbacks=[probe])
        return {"result": "trained", **probe.seen}
    except VislabError as err:
        return {"result": "refused", "message": str(err)}
""" + RACE_LOOP


class _Racer:
    """A real racer process: its '@' lines of stdout, read as they come."""

    def __init__(self, script: str, argv: list[str], err: Path) -> None:
        self.err = err
        with err.open("w") as sink:
            self.proc = subprocess.Popen([sys.executable, "-c", script, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sink, text=True,
                                         env=single_thread_env())
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("@"):
                self._q.put(line[1:].strip())
        self._q.put(None)

    def said(self) -> str:
        try:
            line = self._q.get(timeout=SLOW_START)
        except queue.Empty:
            line = None
        assert line is not None, self.err.read_text()
        return line


@contextmanager
def _racers(script: str, argv_of: list[list[str]], logs: Path) -> Iterator[Callable[[list[list[str]]], list[dict]]]:
    """One real process per argument list, each importing its modules once; yields `race`,
    which tells them all to begin a try at the same instant (the args of each for that try)
    and returns their results. Each must end cleanly, without a traceback."""
    racers = [_Racer(script, argv, logs / f"racer{i}.err") for i, argv in enumerate(argv_of)]

    def race(args_of: list[list[str]]) -> list[dict]:
        for racer in racers:
            assert racer.said() == "ready"
        start = json.dumps(time.time() + 0.5)  # all are waiting: the word reaches each well before
        for racer, args in zip(racers, args_of):
            racer.proc.stdin.write(f"[{start}, {json.dumps(args)}]\n")
            racer.proc.stdin.flush()
        return [json.loads(racer.said()) for racer in racers]

    try:
        yield race
        for racer in racers:
            racer.proc.stdin.close()
            assert racer.proc.wait(timeout=SLOW_START) == 0, racer.err.read_text()
            assert "Traceback" not in racer.err.read_text(), racer.err.read_text()
    finally:
        for racer in racers:
            if racer.proc.poll() is None:
                racer.proc.kill()
                racer.proc.wait()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("data"), per_class=12, size=16)


def test_two_trainers_on_one_new_out_one_trains_and_the_other_never_removes_its_lock(dataset, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(dump_config(tiny_config(train={"epochs": 1})))
    with _racers(TRAINER, [[str(cfg), str(dataset)]] * RACERS, tmp_path) as race:
        for attempt in range(TRIES):
            out = tmp_path / f"run{attempt}"
            results = race([[str(out)]] * RACERS)
            winners = [r for r in results if r["result"] == "trained"]
            losers = [r for r in results if r["result"] == "refused"]
            assert len(winners) == 1 and len(losers) == RACERS - 1, results
            assert winners[0]["lock_file"] and winners[0]["third_taker"] == "refused", results
            assert "another vislab process (pid" in losers[0]["message"] and "is training into this run directory" in losers[0]["message"]
            assert (out / "checkpoints" / "last.ckpt").is_file()


def _evaluate(*args: str):
    """`vislab evaluate ARGS` run here: the pytest process is not the one holding the run."""
    from vislab.cli import app

    return CliRunner().invoke(app, ["evaluate", *args])


def test_evaluate_of_a_run_still_training_is_refused_or_recorded_and_flagged_once_stale(dataset, tmp_path, capsys):
    """One rule for every command that writes a result of the run from its best.ckpt
    (evaluate, export, explain, report): refused while a trainer holds the run's lock, unless
    --allow-running. export used to write the unfinished model.onnx silently."""
    import onnx

    from vislab.errors import VislabError
    from vislab.explain.overlays import explain_run
    from vislab.export import export_run
    from vislab.report.compare import compare_runs
    from vislab.report.html import write_report
    from vislab.runs import load_checkpoint_file
    from vislab.train import train

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(dump_config(tiny_config(train={"epochs": 500, "monitor": "epoch", "monitor_mode": "max"})))
    run = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "vislab.cli", "train", str(cfg), "--data", str(dataset), "--out", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=single_thread_env(),
    )
    try:
        deadline = time.monotonic() + SLOW_START
        while not (run / "checkpoints" / "best.ckpt.sha256").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        refused = _evaluate(str(run))
        assert refused.exit_code != 0 and isinstance(refused.exception, SystemExit), refused.exception  # an exit, not a traceback
        assert "Traceback" not in refused.output
        lines = refused.output.strip().splitlines()  # stdout and stderr as they came
        assert len(lines) == 1 and f"still training (vislab pid {trainer.pid})" in lines[0] and "--allow-running" in lines[0], lines
        assert not (run / "eval").exists()
        allowed = _evaluate(str(run), "--allow-running")
        assert allowed.exit_code == 0, (allowed.output, allowed.exception)
        assert "is still training" in allowed.stderr
        image = next((dataset / "images").rglob("*.png"))
        for command, call in (
            ("export", lambda: export_run(run)),
            ("explain", lambda: explain_run(run, [image])),
            ("report", lambda: write_report(run, cams=False)),
        ):
            with pytest.raises(VislabError, match=rf"still training \(vislab pid {trainer.pid}\).*run vislab {command} when training ends.*--allow-running"):
                call()
        assert not any((run / name).exists() for name in ("export", "explain", "report.html"))
        capsys.readouterr()
        exported = export_run(run, allow_running=True)
        assert "is still training" in capsys.readouterr().err and exported.exported_while_training
    finally:
        trainer.send_signal(15)
        trainer.wait(timeout=SLOW_START)
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["evaluated_while_training"] is True
    meta = {p.key: p.value for p in onnx.load(exported.path).metadata_props}
    assert json.loads(meta["vislab_checkpoint"])["while_training"] is True
    assert isinstance(metrics["checkpoint_epoch"], int) and len(metrics["checkpoint_sha256"]) == 64
    epochs = int(load_checkpoint_file(run / "checkpoints" / "last.ckpt")["callbacks"]["RunRecorder"]["next_epoch"])
    with single_thread():
        train(None, None, run, resume=True, epochs=epochs + 1)  # best.ckpt (the last epoch) moves on
    capsys.readouterr()
    compare_runs([run])
    assert "evaluated an older checkpoint" in capsys.readouterr().err
    assert "evaluated an older checkpoint" in write_report(run, cams=False).read_text()
    again = _evaluate(str(run))
    assert again.exit_code == 0 and "warning" not in again.stderr, again.stderr
    capsys.readouterr()
    compare_runs([run])
    assert "older checkpoint" not in capsys.readouterr().err


CURATOR = """
import json, sys, time
from vislab.data.curate import curate
from vislab.errors import VislabError

source = sys.argv[1]

def attempt(out):
    try:
        curate(source, out=out, workers=1)
        return {"result": "curated", "source": source}
    except VislabError as err:
        return {"result": "refused", "message": str(err)}
""" + RACE_LOOP


def test_two_curates_into_one_folder_never_mix_their_files(tmp_path):
    import pandas as pd

    sources = [make_pattern_dataset(tmp_path / name, per_class=60, size=24, splits=None) / "images" for name in ("a", "b")]
    with _racers(CURATOR, [[str(s)] for s in sources], tmp_path) as race:
        for attempt in range(TRIES):
            out = tmp_path / f"dataset{attempt}"
            results = race([[str(out)]] * len(sources))
            done = [r for r in results if r["result"] == "curated"]
            assert len(done) == 1, results  # the other is refused: by the lock, or as a different dataset once the first ended
            refused = next(r for r in results if r["result"] == "refused")["message"]
            assert "is curating into this dataset folder" in refused or "holds a different dataset" in refused, refused
            assert "\n" not in refused
            curation = json.loads((out / "curation.json").read_text())
            assert curation["options"]["sources"] == [done[0]["source"]]
            paths = pd.read_csv(out / "manifest.csv")["path"]
            assert paths.str.startswith(done[0]["source"]).all()
            assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".vislab.lock"]


# A real `vislab evaluate` that holds its eval folder: it tells the test once the model is
# about to run (the folder locked) and waits for the word to go on.
PAUSED_EVALUATE = """
import pathlib, sys, time
from vislab.cli import app
from vislab.tasks.classify import ClassifyPlugin

run, here, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
scored = ClassifyPlugin.evaluate

def paused(self, *args, **kwargs):
    here.write_text("evaluating")
    while not go.exists():
        time.sleep(0.05)
    return scored(self, *args, **kwargs)

ClassifyPlugin.evaluate = paused
app(["evaluate", run], prog_name="vislab")
"""


def test_a_second_evaluate_into_the_same_eval_folder_is_refused_another_folder_runs(dataset, tmp_path):
    """Two evaluates into one eval folder each wrote their files whole, the last writer of each
    winning: metrics.json of one beside the predictions of the other."""
    from vislab.cli import app
    from vislab.train import train

    with single_thread():
        run = train(tiny_config(train={"epochs": 1}), dataset, tmp_path / "run")
    here, go = tmp_path / "evaluating", tmp_path / "go"
    holder = subprocess.Popen([sys.executable, "-c", PAUSED_EVALUATE, str(run), str(here), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=single_thread_env())
    try:
        deadline = time.monotonic() + SLOW_START
        while not here.exists() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert here.exists(), holder.communicate()
        refused = _evaluate(str(run))
        assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
        lines = refused.output.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"{run / 'eval' / 'test'}: another vislab process (pid {holder.pid}) is running vislab evaluate into this eval folder" in lines[0]
        assert "--name" in lines[0]
        assert not (run / "eval" / "test" / "metrics.json").exists()  # the refused one wrote nothing
        beside = _evaluate(str(run), "--name", "beside")
        assert beside.exit_code == 0, beside.output
        assert (run / "eval" / "beside" / "metrics.json").is_file()
        go.write_text("go")
        out, err = holder.communicate(timeout=SLOW_START)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 0, out + err
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["name"] == "test" and (run / "eval" / "test" / "predictions.csv").is_file()
