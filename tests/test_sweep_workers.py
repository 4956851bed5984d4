"""Real `vislab sweep` worker processes: killed with kill -9 or interrupted with Ctrl-C mid-trial,
the same command finishes the study and resumes the trial's run; two workers sharing one study
on a real PostgreSQL server train exactly the trials asked for, each once."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import dump_config
from vislab.sweep.study import _claim_problem
from vislab.testing.synthetic import make_pattern_dataset, tiny_config

pytestmark = pytest.mark.slow
CLASSES = ("horizontal", "vertical", "checker")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("patterns"), classes=CLASSES, per_class=12, size=16)


def write(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def vislab(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "vislab.cli", *map(str, args)]


def again(cmd: list[str]):
    """The same command once more, in this process: the stopped worker is the real process,
    the one that finishes after it is the same CLI without another ~8 s of imports."""
    return CliRunner().invoke(app, cmd[3:])


def trained_epochs(run: Path) -> int:
    """Full epochs with a checkpoint behind them (the row is written just before last.ckpt)."""
    metrics, last = run / "metrics.csv", run / "checkpoints/last.ckpt"
    if not (metrics.is_file() and last.is_file()):
        return 0
    return max(0, len(metrics.read_text().strip().splitlines()) - 1)


def stop_mid_trial(cmd: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a worker, and send it `sig` once a trial has a checkpointed epoch but is not finished."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(trained_epochs(run) >= 1 for run in out.glob("*/") if run.is_dir()):
        if proc.poll() is not None:
            pytest.fail(f"the worker ended before it could be stopped: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "the worker trained nothing"
        time.sleep(0.02)
    assert not list(out.glob("*/summary.json")), "the trial finished before it could be stopped; give it more epochs"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, "", err)


def test_claims_count_earlier_trials_and_grid_points(tmp_path):
    """The rule that keeps racing workers at exactly --trials: trial k goes ahead only if fewer
    than N counted trials were created before it, and never on an earlier trial's grid point."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    a, b, c = study.ask(), study.ask(), study.ask()  # three workers asked at once
    assert _claim_problem(study, a.number, 2) is None and _claim_problem(study, b.number, 2) is None
    assert "already has 2" in _claim_problem(study, c.number, 2)
    study.tell(b, state=TrialState.FAIL)  # one of the first two dies: the third may now train
    assert _claim_problem(study, c.number, 2) is None
    grid = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="g", sampler=optuna.samplers.GridSampler({"x": [1, 2]}))
    first = grid.ask()
    grid.ask()
    again = grid.ask()  # past the grid's size: GridSampler picks a point that may be taken
    taken = grid.get_trials(deepcopy=False)[again.number].system_attrs["grid_id"]
    assert _claim_problem(grid, again.number, 10) == f"its grid point is trial {taken}'s"
    assert _claim_problem(grid, first.number, 10) is None


def _open_at(url: str, start: float) -> str:
    from vislab.errors import VislabError
    from vislab.sweep.study import open_storage

    time.sleep(max(0.0, start - time.time()))
    try:
        open_storage(url, heartbeat=60)
        return "ok"
    except VislabError as err:
        return str(err)


def test_workers_starting_together_on_a_new_database_all_open_it(tmp_path):
    """Optuna creates its tables on first use, and workers starting at the same moment race
    for that (optuna#1092: 'table studies already exists', 'UNIQUE constraint failed')."""
    with multiprocessing.get_context("fork").Pool(6) as pool:
        for attempt in range(3):  # one race is lost without the retry about 3 times in 4
            url = f"sqlite:///{tmp_path / f'fresh{attempt}.db'}"
            start = time.time() + 0.75
            assert pool.starmap(_open_at, [(url, start)] * 6) == ["ok"] * 6


def test_kill_9_mid_trial_then_the_same_command_finishes_and_resumes_it(dataset, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(dump_config(tiny_config(train={"epochs": 3})))
    space = write(tmp_path / "space.yaml", {"optim.lr": {"float": [5e-3, 3e-2], "log": True}})
    out = tmp_path / "sweep"
    cmd = vislab("sweep", base, "--space", space, "--data", dataset, "--out", out, "--trials", 2, "--pruner", "none", "--heartbeat", 1, "--seed", 0)
    killed = stop_mid_trial(cmd, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    epochs_at_kill = trained_epochs(out / "trial-0000")
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]  # nobody told the study

    time.sleep(3)  # its heartbeat (1 s) is stale after 2 s: the command run again finds the trial dead
    res = again(cmd)
    assert res.exit_code == 0, res.output[-3000:]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    dead, retry, fresh = trials
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == dead.params
    assert retry.user_attrs["run_dir"] == "trial-0000" and fresh.user_attrs["run_dir"] == "trial-0002"
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-0000", "trial-0002"]
    run = out / "trial-0000"
    assert json.loads((run / "run.json").read_text()).get("resumed")  # resumed, not started again
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1, 2]
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == "completed"
    assert 1 <= epochs_at_kill < 3
    table = pd.read_csv(out / "results.csv")
    assert table.set_index("trial").loc[0, "note"].endswith("retried as trial 1")


def test_ctrl_c_mid_variant_then_vislab_grid_resumes_it(dataset, tmp_path):
    raw = yaml.safe_load(dump_config(tiny_config(train={"epochs": 3})))
    raw["grid"] = {"model.simple_cnn.filters": [4, 8]}
    grid = write(tmp_path / "grid.yaml", raw)
    out = tmp_path / "grid"
    cmd = vislab("grid", grid, "--data", dataset, "--out", out)
    stopped = stop_mid_trial(cmd, out, signal.SIGINT)
    assert stopped.returncode == 130 and "run the same command to continue" in stopped.stderr
    [interrupted] = [p.parent.name for p in out.glob("*/run.json")]
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]  # queued again at once

    res = again(cmd)
    assert res.exit_code == 0, res.output[-3000:]
    table = pd.read_csv(out / "results.csv")
    done = table[table["state"] == "complete"]
    assert sorted(done["run_dir"]) == ["filters4", "filters8"]
    assert json.loads((out / interrupted / "run.json").read_text()).get("resumed")
    assert pd.read_csv(out / interrupted / "metrics.csv")["epoch"].tolist() == [0, 1, 2]


def test_two_workers_share_one_study_on_postgresql(dataset, tmp_path):
    pytest.importorskip("psycopg", reason="PostgreSQL driver missing: pip install 'psycopg[binary]'")
    from vislab.testing.postgres import PostgresUnavailable, temporary_postgres

    base = tmp_path / "base.yaml"
    base.write_text(dump_config(tiny_config(train={"epochs": 1})))
    space = write(tmp_path / "space.yaml", {"optim.lr": {"float": [5e-3, 3e-2], "log": True}, "model.simple_cnn.filters": [4, 8]})
    try:
        server = temporary_postgres()
        url = server.__enter__()
    except PostgresUnavailable as err:
        pytest.skip(f"no PostgreSQL server: {err}")
    try:
        outs = [tmp_path / "machine-a" / "lr", tmp_path / "machine-b" / "lr"]  # two machines, one study
        workers = [
            subprocess.Popen(
                vislab("sweep", base, "--space", space, "--data", dataset, "--out", out, "--storage", url, "--trials", 3, "--pruner", "none"),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for out in outs
        ]
        logs = [w.communicate(timeout=600)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], logs
        study = optuna.load_study(study_name="lr", storage=url)
        trials = study.get_trials()
    finally:
        server.__exit__(None, None, None)
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 3  # exactly as asked, over both workers
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or t.user_attrs.get("skipped") for t in trials)
    dirs = [t.user_attrs["run_dir"] for t in counted]
    assert len(set(dirs)) == 3
    trained = [p.parent for out in outs for p in out.glob("trial-*/summary.json")]
    assert sorted(p.name for p in trained) == sorted(dirs)  # each trial trained once, by one worker
    assert {t.user_attrs["host"] for t in counted} and all(len(pd.read_csv(out / "results.csv")) == 3 for out in outs)

