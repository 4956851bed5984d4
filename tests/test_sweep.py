"""`vislab sweep` in one process on tiny synthetic images: trials are ordinary runs, the study
continues where it stopped, a bad space fails before anything trains, the median pruner stops
a hopeless trial, and `vislab grid` is the sweep's grid sampler."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import vislab.testing.models  # noqa: F401  (registers paced_cnn)
from vislab.cli import app
from vislab.config import dump_config, load_config
from vislab.errors import VislabError
from vislab.sweep.study import SweepOptions, run_sweep
from vislab.testing.synthetic import make_pattern_dataset, tiny_config

CLASSES = ("horizontal", "vertical", "diagonal", "checker")
SPACE = {"optim.lr": {"float": [3e-3, 3e-2], "log": True}, "model.simple_cnn.filters": {"choices": [4, 8]}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("patterns"), classes=CLASSES, per_class=16, size=16)


def write(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    base = d / "base.yaml"
    base.write_text(dump_config(tiny_config(train={"epochs": 2})))
    return base, write(d / "space.yaml", SPACE)


@pytest.fixture(scope="module")
def sweep2(dataset, files):
    base, space = files
    out = files[0].parent / "sweep"
    result = run_sweep(base, dataset, out, SweepOptions(space=space, trials=2, seed=3, pruner="none"))
    return out, result


def study_of(out: Path, name: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name or out.name, storage=f"sqlite:///{out / 'study.db'}")


def test_two_trial_sweep_leaves_runs_results_best_config_and_page(sweep2):
    out, result = sweep2
    assert result.stopped == "done"
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["trial"]) == [0, 1] and set(table["state"]) == {"complete"}
    filled = [c for c in result.table.columns if result.table[c].notna().any()]  # (an empty cell reads back as NaN)
    pd.testing.assert_frame_equal(table[filled], result.table[filled], check_dtype=False)  # the same values, numbers as numbers
    assert table["value"].notna().all() and list(table["value"]) == sorted(table["value"], reverse=True)  # best first
    assert {"optim.lr", "model.simple_cnn.filters", "duration_s", "run_dir"} <= set(table.columns)
    for _, row in table.iterrows():
        run = out / row["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["stopped_reason"] == "completed" and summary["best_val"]["val/acc"] == pytest.approx(row["value"])
        cfg = load_config(run / "config.yaml")
        assert cfg.optim.lr == pytest.approx(row["optim.lr"]) and cfg.model.simple_cnn.filters == row["model.simple_cnn.filters"]
    # best.yaml is the full config of the best trial, ready for `vislab train`
    best = load_config(out / "best.yaml")
    assert best == load_config(out / table["run_dir"][0] / "config.yaml")
    page = (out / "sweep.html").read_text()
    for sid in ("best", "results", "history", "importance", "slice", "curves"):
        assert f'id="{sid}"' in page
    pngs = page.split('src="data:image/png;base64,')[1:]
    assert len(pngs) == 4  # history, importances, slices, learning curves
    assert all(base64.b64decode(p.split('"')[0])[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "http://" not in page and "https://" not in page
    # `vislab compare SWEEP/*` skips the sweep's own files and compares the trials
    res = CliRunner().invoke(app, ["compare", *sorted(map(str, out.iterdir())), "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert sorted(pd.read_csv(io.StringIO(res.output))["run"]) == ["trial-0000", "trial-0001"]


def test_rerun_continues_the_study_without_repeats(sweep2, dataset, files, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(sweep2[0], out)
    base, space = files
    first = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("trial-*/summary.json")}
    run_sweep(base, dataset, out, SweepOptions(space=space, trials=3, seed=3, pruner="none", study_name="sweep"))
    trials = study_of(out, "sweep").get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3  # the seeded sampler did not redraw trial 0
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]
    assert {d: (out / d / "summary.json").stat().st_mtime_ns for d in first} == first and len(first) == 2  # not retrained
    # asked again for 3: nothing to do
    run_sweep(base, dataset, out, SweepOptions(space=space, trials=3, pruner="none", study_name="sweep"))
    assert len(study_of(out, "sweep").get_trials()) == 3
    assert len(pd.read_csv(out / "results.csv")) == 3
    # another base config is another sweep: refused, naming the key
    with pytest.raises(VislabError, match=r"different config \(optim.weight_decay\)"):
        run_sweep(base, dataset, out, SweepOptions(space=space, trials=4, study_name="sweep", overrides=["optim.weight_decay=0.1"]))


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"optim.lrr": {"float": [1e-4, 1e-1], "log": True}}, "unknown key 'optim.lrr'"),
        ({"optim.lr": {"float": [-1.0, 0.1]}}, "'optim.lr' input should be greater than 0"),
        ({"optim.lr": {"float": [0.1, 0.01]}}, "LOW must be below HIGH"),
        ({"optim.name": {"choices": ["sgd", "lion"]}}, "optim.name='lion'"),
        ({"model.name": ["simple_cnn", "resnet181"]}, "unknown model 'resnet181'"),
        ({"data.batch_size": {"int": [32, 256], "step": 30}}, "must be a multiple of step 30"),
        ({"data.batch_size": {"int": [32.5, 256]}}, "int bounds must be whole numbers"),
        ({"optim.lr": {"float": [1e-4, 1e-1], "log": True, "step": 0.01}}, "step and log: true cannot be combined"),
        ({"train.monitor": ["val/acc", "val/loss"]}, "cannot be swept"),
        ({"optim.lr": {"range": [1, 2]}}, "unknown field(s) range"),
    ],
)
def test_bad_space_is_one_line_error_and_nothing_trains(dataset, files, tmp_path, space, expected):
    base, _ = files
    space_file = write(tmp_path / "space.yaml", space)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["sweep", str(base), "--space", str(space_file), "--data", str(dataset), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and expected in res.output and "space.yaml" in res.output
    assert not out.exists()  # checked before the study or any run


def test_median_pruner_stops_a_hopeless_trial(dataset, files, tmp_path):
    base, _ = files
    space = write(tmp_path / "space.yaml", {"optim.lr": [1e-7, 0.01, 0.03]})
    out = tmp_path / "pruned"
    # the grid's seeded order trains lr 0.03 and 0.01 first, so the median pruner has two
    # finished trials to compare lr 1e-7 with when its second epoch ends
    result = run_sweep(base, dataset, out, SweepOptions(space=space, sampler="grid", pruner="median", epochs=3))
    table = result.table.set_index("optim.lr")
    assert table.loc[0.03, "state"] == table.loc[0.01, "state"] == "complete"
    assert table.loc[1e-7, "state"] == "pruned" and table.loc[1e-7, "run_dir"] == "lr1e-07"
    run = out / "lr1e-07"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "pruned" and summary["epochs_completed"] == 2 < summary["epochs_planned"] == 3
    assert (run / "checkpoints/best.ckpt").is_file() and len(pd.read_csv(run / "metrics.csv")) == 2
    res = CliRunner().invoke(app, ["compare", str(run), "--format", "csv"])  # still a run like any other
    assert res.exit_code == 0 and "lr1e-07" in res.output
    assert result.stopped == "done"  # the pruned trial counts: 3 of 3


def test_max_time_is_the_whole_sweeps_and_trial_max_time_each_trials(dataset, files, tmp_path):
    _, space = files
    # each training forward waits 0.25 s (ten of them: 2.5 s a trial), longer than the 1-s
    # budget, which is itself far longer than the study's set-up, even on a loaded machine
    paced = tiny_config(model={"name": "paced_cnn", "kwargs": {"train_s": 0.25}}, train={"epochs": 2})
    base = write(tmp_path / "paced.yaml", yaml.safe_load(dump_config(paced)))
    out = tmp_path / "timed"
    result = run_sweep(base, dataset, out, SweepOptions(space=space, trials=5, pruner="none", max_time="1s", trial_max_time="1h"))
    assert result.stopped == "time" and len(result.table) == 1  # the first trial outlasts the budget; no second starts
    assert result.table["state"][0] == "complete"  # a running trial is never cut short
    assert load_config(out / "trial-0000/config.yaml").train.max_time == "1h"
    with pytest.raises(VislabError, match="--trial-max-time '1x': not a duration"):
        run_sweep(base, dataset, tmp_path / "bad", SweepOptions(space=space, trial_max_time="1x"))


def test_grid_is_the_sweeps_grid_sampler(dataset, tmp_path):
    from vislab.grid import run_grid

    raw = yaml.safe_load(dump_config(tiny_config(train={"epochs": 1})))
    raw["grid"] = {"model.simple_cnn.filters": [4, 8]}
    grid_file = write(tmp_path / "grid.yaml", raw)
    out = tmp_path / "g"
    table = run_grid(grid_file, dataset, out).table
    assert sorted(table["run_dir"]) == ["filters4", "filters8"] and set(table["state"]) == {"complete"}
    assert list(table["value"]) == sorted(table["value"], reverse=True)  # ranked on val/acc
    assert table["model_params"].nunique() == 2 and (out / "results.csv").is_file()
    before = {d: (out / d / "summary.json").stat().st_mtime_ns for d in ("filters4", "filters8")}
    res = CliRunner().invoke(app, ["grid", str(grid_file), "--data", str(dataset), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert {d: (out / d / "summary.json").stat().st_mtime_ns for d in before} == before  # finished: not retrained
    assert len(study_of(out).get_trials()) == 2
    best = load_config(out / "best.yaml")
    assert best.model.simple_cnn.filters == int(table["model.simple_cnn.filters"][0])


def test_a_space_written_as_its_docstring_shows_reads_its_numbers(tmp_path):
    from vislab.sweep.space import read_space

    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {float: [1e-4, 1e-1], log: true}\noptim.weight_decay: {float: [0, 1e-2], step: 1e-3}\n")
    lr, wd = read_space(path)  # PyYAML's YAML 1.1 rules read 1e-4 as a string
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-1, True) and (wd.low, wd.high, wd.step) == (0.0, 1e-2, 1e-3)


def test_ctrl_c_in_a_trials_last_step_stops_the_sweep_after_that_trial(dataset, tmp_path):
    """The signal lands in the only (so last) step of trial 0, a paced 3-s one: the run
    completes, and the sweep must still stop there (it went on through every trial, exit 0),
    its result kept and the next trial never started."""
    import os
    import signal
    import threading
    import time

    from vislab.errors import TrainingInterrupted

    cfg = tiny_config(model={"name": "paced_cnn", "kwargs": {"train_s": 3.0}}, data={"batch_size": 64}, train={"epochs": 1})
    base = write(tmp_path / "base.yaml", yaml.safe_load(dump_config(cfg)))
    space = write(tmp_path / "space.yaml", {"model.simple_cnn.filters": [4, 8, 16]})
    out = tmp_path / "out"

    def interrupt_inside_the_step() -> None:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/run.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_inside_the_step, daemon=True).start()
    with pytest.raises(TrainingInterrupted):
        run_sweep(base, dataset, out, SweepOptions(space=space, trials=3, pruner="none"))
    [run] = [p.parent for p in out.glob("*/run.json")]  # no second trial started
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == "completed"
    assert pd.read_csv(out / "results.csv")["state"].tolist() == ["complete"]


def test_ctrl_c_during_the_studys_bookkeeping_stops_between_trials(dataset, files, tmp_path, monkeypatch):
    """A signal while the sweep talks to its storage (here: as the second round's stale-trial
    check runs) is only noted there, never a KeyboardInterrupt inside a commit: the sweep stops
    before the next trial, with no trial left RUNNING."""
    import os
    import signal

    from vislab.errors import TrainingInterrupted

    base, space = files
    real = optuna.storages.fail_stale_trials
    rounds = []

    def stale_check_then_signal(study):
        rounds.append(1)
        if len(rounds) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(study)

    monkeypatch.setattr(optuna.storages, "fail_stale_trials", stale_check_then_signal)
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted):
        run_sweep(base, dataset, out, SweepOptions(space=space, trials=3, pruner="none"))
    states = [t.state.name for t in optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}").get_trials()]
    assert states == ["COMPLETE"]


def test_sweep_refuses_an_out_holding_a_users_files_or_a_run_before_writing(dataset, files, tmp_path):
    base, space = files
    mine = tmp_path / "mine"
    mine.mkdir()
    for n, text in (("notes.txt", "my notes"), ("results.csv", "my,results\n"), ("best.yaml", "mine: 1\n")):
        (mine / n).write_text(text)
    run = tmp_path / "run"  # a training run's folder
    run.mkdir()
    for n in ("config.yaml", "run.json", "summary.json"):
        (run / n).write_text("{}")
    for out, shown in ((mine, "'best.yaml', 'notes.txt', 'results.csv'"), (run, "'config.yaml', 'run.json', 'summary.json'")):
        before = {p.name: p.read_text() for p in out.iterdir()}
        res = CliRunner().invoke(app, ["sweep", str(base), "--space", str(space), "--data", str(dataset), "--out", str(out), "--trials", "1"])
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and f"holds files that are not a sweep's ({shown})" in res.output
        assert {p.name: p.read_text() for p in out.iterdir()} == before  # no study.db, nothing overwritten


def test_one_sweep_folder_holds_one_study(sweep2, dataset, files, tmp_path):
    """A second study would train its trials into the first one's trial-NNNN folders: refused,
    before anything is written, in a folder with sweep.json and in one made before it."""
    base, space = files
    out = tmp_path / "sweep"
    shutil.copytree(sweep2[0], out)
    results = (out / "results.csv").read_text()
    for legacy in (False, True):
        if legacy:
            (out / "sweep.json").unlink()
        with pytest.raises(VislabError, match=r"holds study 'sweep'.*continue it with --study-name sweep, or start study 'other' in another --out"):
            run_sweep(base, dataset, out, SweepOptions(space=space, trials=3, study_name="other"))
        assert optuna.get_all_study_names(f"sqlite:///{out / 'study.db'}") == ["sweep"]
        assert (out / "results.csv").read_text() == results and sorted(p.name for p in out.glob("trial-*")) == ["trial-0000", "trial-0001"]
    # a changed sweep suggests only another --out
    with pytest.raises(VislabError, match=r"different config \(optim.weight_decay\).*start a new one with another --out$"):
        run_sweep(base, dataset, out, SweepOptions(space=space, trials=3, study_name="sweep", overrides=["optim.weight_decay=0.1"]))


def test_a_sweep_folder_from_before_sweep_json_with_its_study_elsewhere_continues(sweep2):
    """A sweep run with --storage postgresql://... before sweep.json existed left neither
    study.db nor sweep.json: its results.csv and trial run directories still mark it a sweep's
    folder, while the same names beside a user's file do not."""
    from vislab.sweep.folder import check_out

    out = sweep2[0]
    older = out.parent / "older"
    shutil.copytree(out, older)
    (older / "sweep.json").unlink()
    (older / "study.db").unlink()
    check_out(older, "sweep")
    assert not (older / "study.db").exists()  # the check writes nothing
    (older / "notes.txt").write_text("mine")
    with pytest.raises(VislabError, match=r"holds files that are not a sweep's \('best.yaml'"):
        check_out(older, "sweep")


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range_is_refused_naming_seed_before_anything(dataset, files, tmp_path, seed):
    base, space = files
    out = tmp_path / "out"
    with pytest.raises(VislabError, match=rf"^--seed {seed}: must be a whole number from 0 to 4294967295$"):
        run_sweep(base, dataset, out, SweepOptions(space=space, trials=1, seed=seed))
    assert not out.exists()


def test_any_seed_up_to_2_to_the_32_makes_a_sampler(files, tmp_path):
    """The sampler's seed is derived from --seed and the trials so far: it must stay a seed
    numpy takes (it overflowed from --seed 4295 on)."""
    from vislab.sweep.study import _sampler, resolve

    base, _ = files
    space = write(tmp_path / "space.yaml", {"optim.lr": [0.01, 0.03]})
    for sampler in ("tpe", "random", "grid"):
        setup = resolve(base, SweepOptions(space=space, sampler=sampler))
        for seed in (4295, 2**32 - 1):
            for n in (0, 7):
                _sampler(setup, seed, n)  # Optuna's samplers check the seed as they are built


def test_epochs_swept_and_given_by_flag_is_refused(files, tmp_path):
    from vislab.sweep.study import resolve

    base, _ = files
    space = write(tmp_path / "space.yaml", {"train.epochs": [1, 2]})
    with pytest.raises(VislabError, match=r"varies train.epochs, which --epochs 3 would fix for every trial"):
        resolve(base, SweepOptions(space=space, epochs=3))


def test_max_time_swept_and_given_by_trial_max_time_is_refused(files, tmp_path):
    """--trial-max-time was silently overridden by each trial's swept train.max_time."""
    from vislab.sweep.study import resolve

    base, _ = files
    for space in ({"train.max_time": ["1m", "2m"]}, {"train": [{"max_time": "1m"}, {"max_time": "2m"}]}):
        with pytest.raises(VislabError, match=r"varies train.max_time, which --trial-max-time 5m would fix for every trial; drop one"):
            resolve(base, SweepOptions(space=write(tmp_path / "space.yaml", space), trial_max_time="5m"))


def test_a_trial_is_never_pruned_at_its_last_epoch(dataset, files, tmp_path):
    """As in the pruner test, lr 1e-7 is worse than the two finished trials when its second
    epoch ends; with 2 epochs that is its last: it trained fully, so it is a result."""
    base, _ = files
    space = write(tmp_path / "space.yaml", {"optim.lr": [1e-7, 0.01, 0.03]})
    result = run_sweep(base, dataset, tmp_path / "out", SweepOptions(space=space, sampler="grid", pruner="median", epochs=2))
    assert set(result.table["state"]) == {"complete"} and result.table["value"].notna().all()
    summary = json.loads((tmp_path / "out/lr1e-07/summary.json").read_text())
    assert summary["stopped_reason"] == "completed" and "pruned_at_epoch" not in summary
