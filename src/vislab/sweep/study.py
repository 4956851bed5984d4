"""Run a sweep: an Optuna study whose trials are ordinary vislab runs.

Any number of workers (processes, machines) run the same command against one storage:
the default SQLite file SWEEP/study.db for one machine, `--storage postgresql://...` for
several. The rules that make that safe:

- `--trials N` counts completed + pruned trials of the whole study. A trial goes ahead only
  if fewer than N counted trials (complete, pruned, running, queued) were created before it
  (trial numbers are handed out atomically by the storage), so racing workers never overshoot;
  a trial that loses the race is closed at once as failed with the user attribute `skipped`
  and left out of the results.
- Each worker's heartbeat is stored every `heartbeat` seconds; a running trial silent for
  twice that (a killed worker, a lost machine) is failed by whichever worker looks next, and
  queued again with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback). Ctrl-C
  queues the interrupted trial the same way. A retried trial trains in its original run
  directory and resumes it from its last checkpoint.
- A worker stops when the study holds N counted trials; while others still run the last ones
  it waits (they may die and need a retry), unless `--max-time` for the whole sweep is spent.
  A running trial is never cut short by `--max-time`; `--trial-max-time` is each trial's own
  training budget (train's --max-time).
- With the grid sampler, grid point k goes to trial k (Optuna's GridSampler), the run
  directory is named after the point (`layers3-filters32`), and a point already taken by an
  earlier trial is never trained twice.

A diverged trial (non-finite loss) counts as pruned: the sampler learns to avoid the region.
A trial that fails otherwise (an error building the model, out of GPU memory, any unexpected
exception) is recorded with its message and replaced; three failures in a row stop the worker
with the last message, results.csv and sweep.html written first.
What no trial's values change is not left to the trials: the dataset is checked once before
the study (`Task.check_dataset`: a single class, an empty split, and a base config value the
task or the images cannot take, a `SettingError`, unless the sweep varies that key), and a
trial that fails on the dataset itself (a `DatasetError`, e.g. images deleted since curation)
stops the sweep.
Trials run in the worker's process on one device (train.devices: auto becomes 1): to use
several GPUs, start one worker per GPU.
"""

from __future__ import annotations

import json
import math
import random
import signal
import socket
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import optuna
import torch
from lightning.pytorch.callbacks import Callback
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from vislab.config import RunConfig, apply_overrides, build_config, load_config, parse_duration, read_yaml
from vislab.errors import DatasetError, SettingError, TrainingInterrupted, VislabError, check_keywords
from vislab.fsguard import inside
from vislab.runs import read_json, run_paths, write_json
from vislab.sweep.folder import STUDY_DB, check_out, claim
from vislab.sweep.space import Param, check_space, fixed_keys, grid_points, model_problem, override, parse_space, read_space, sets_model, trial_config, variant_name, varies

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
FINAL_STOPS = ("completed", "early_stopping", "max_time", "pruned", "nan")
MAX_FAILURES_IN_ROW = 3
MAX_RETRIES = 2  # a trial killed three times (say by the OOM killer) is left failed
DEFAULT_TRIALS = 20
SEED_SPAN = 2**32  # numpy's seeds, which Optuna's samplers take: 0 .. 2**32 - 1


@dataclass
class SweepOptions:
    """Everything of a sweep but the config, the dataset and the output folder."""

    space: str | Path | None = None  # None: the config's own `grid:` mapping
    trials: int | None = None  # default: the grid's size, else 20
    sampler: str | None = None  # default: grid for a `grid:` config, else tpe
    pruner: str = "median"
    storage: str | None = None  # default: sqlite:///OUT/study.db
    study_name: str | None = None  # default: the name of the output folder
    seed: int | None = None
    epochs: int | None = None
    trial_max_time: str | None = None
    max_time: str | None = None
    heartbeat: int = 60
    overrides: Sequence[str] = ()


@dataclass
class Setup:
    """A sweep resolved and checked: what every trial builds on."""

    base: dict[str, Any]  # the validated base config as plain data
    params: list[Param]
    sampler: str
    trials: int
    monitor: str
    direction: str
    source: str
    grid: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class SweepResult:
    out: Path
    study_name: str
    stopped: str  # done | time | exhausted
    table: Any  # pandas DataFrame of the results
    best_yaml: Path | None
    html: Path | None


class _Skipped(Exception):
    """The trial lost the race for the last place (or for its grid point)."""


class _TrialFailed(Exception):
    """Training the trial failed; the message says why."""


class PruneCallback(Callback):
    """Reports the monitored metric to the trial after each validation and, when the pruner
    says so, stops training at the end of that epoch (a stop, not an error, so the run
    directory is finished normally: checkpoints, metrics and summary)."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_at is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        with warnings.catch_warnings():  # a resumed trial may report an epoch again; Optuna keeps the first
            warnings.simplefilter("ignore")
            self.trial.report(float(value), int(trainer.current_epoch))
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if not last and self.trial.should_prune():  # a fully trained trial is a result, never pruned
            self.pruned_at = int(trainer.current_epoch)
            trainer.should_stop = True


def resolve(config: str | Path, opts: SweepOptions) -> Setup:
    """Read the config and the space, apply the sweep's limits, and check every swept value."""
    raw = read_yaml(config)
    grid = raw.pop("grid", None)
    if grid is not None and opts.space is not None:
        raise VislabError(f"{config}: has a grid: mapping and --space {opts.space} was given; use one of them")
    if grid is None and opts.space is None:
        raise VislabError(f"{config}: no search space; pass --space SPACE.yaml (or put a grid: mapping in the config)")
    sampler = opts.sampler or ("grid" if grid is not None else "tpe")
    if sampler not in SAMPLERS:
        raise VislabError(f"--sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if opts.pruner not in PRUNERS:
        raise VislabError(f"--pruner {opts.pruner!r}: use one of {', '.join(PRUNERS)}")
    if opts.seed is not None and not 0 <= opts.seed < SEED_SPAN:
        raise VislabError(f"--seed {opts.seed}: must be a whole number from 0 to {SEED_SPAN - 1}")
    if opts.heartbeat < 1:
        raise VislabError(f"--heartbeat {opts.heartbeat}: must be 1 second or more")
    for flag, text in (("--trial-max-time", opts.trial_max_time), ("--max-time", opts.max_time)):
        if text is not None:
            try:
                parse_duration(text)
            except VislabError as err:
                raise VislabError(str(err).replace("--max-time", flag)) from None
    limits = [override("train.epochs", opts.epochs)] if opts.epochs is not None else []
    limits += [override("train.max_time", opts.trial_max_time)] if opts.trial_max_time is not None else []
    raw = apply_overrides(raw, [*opts.overrides, *limits])
    cfg = _one_device(build_config(raw, str(config)), str(config))
    base = cfg.model_dump(mode="json")
    fixed = fixed_keys(cfg.task)
    params = read_space(opts.space, fixed) if opts.space is not None else parse_space(grid, f"{config}: grid", fixed)
    source = str(opts.space) if opts.space is not None else f"{config}: grid"
    for flag, given, key in (("--epochs", opts.epochs, "train.epochs"), ("--trial-max-time", opts.trial_max_time, "train.max_time")):
        if given is not None and any(varies(p, key) for p in params):
            raise VislabError(f"{source}: varies {key}, which {flag} {given} would fix for every trial; drop one of them")
    check_space(base, params, source)
    problem = None if any(sets_model(p) for p in params) else model_problem(cfg)
    if problem:  # the one model of every trial, which no trial would train
        raise VislabError(f"{config}: {problem}")
    points = grid_points(params, source) if sampler == "grid" else {}
    size = math.prod(len(v) for v in points.values()) if points else None
    trials = opts.trials if opts.trials is not None else (size or DEFAULT_TRIALS)
    if trials < 1:
        raise VislabError(f"--trials {trials}: must be 1 or more")
    if size is not None and trials > size:
        print(f"the grid has {size} points; --trials {trials} lowered to {size}", flush=True)
        trials = size
    t = cfg.train
    return Setup(base, params, sampler, trials, t.monitor, "maximize" if t.monitor_mode == "max" else "minimize", source, points)


def _one_device(cfg: RunConfig, source: str) -> RunConfig:
    """Trials train in the worker's own process: one device each (DDP would re-launch the sweep)."""
    t = cfg.train
    many = (isinstance(t.devices, int) and t.devices > 1) or (isinstance(t.devices, list) and len(t.devices) > 1) or (
        isinstance(t.devices, str) and t.devices not in ("auto", "1")
    )
    if many or t.num_nodes > 1 or t.strategy not in ("auto", "single_device"):
        raise VislabError(
            f"{source}: a sweep trains each trial on one device (train.devices: 1, train.strategy: auto); "
            "to use several GPUs run one worker per GPU, e.g. CUDA_VISIBLE_DEVICES=1 vislab sweep ... (same command)"
        )
    if t.devices == "auto":
        raw = cfg.model_dump(mode="json")
        raw["train"]["devices"] = 1
        return build_config(raw, source)
    return cfg


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for showing it
        return url.split("@")[-1]


def _schema_race(err: Exception) -> bool:
    """Another worker created Optuna's tables at the same moment (optuna#1092): the next try
    finds them there."""
    import sqlalchemy.exc as sx

    text = str(err).lower()
    return isinstance(err, (sx.IntegrityError, sx.ProgrammingError)) or (
        isinstance(err, sx.OperationalError) and ("already exists" in text or "locked" in text)
    )


def open_storage(url: str, heartbeat: int, attempts: int = 6) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats on; workers starting together on a new database retry
    the schema creation, other problems become one-line errors."""
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempt = 0
    while True:
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, heartbeat_stale_trial_callback=_retry())
        except ImportError:
            raise VislabError(
                f"--storage {_safe_url(url)}: the database driver for this URL is not installed "
                "(postgresql://: pip install 'psycopg[binary]'; postgresql+psycopg2://: pip install psycopg2-binary)"
            ) from None
        except Exception as err:  # noqa: BLE001 - SQLAlchemy raises many kinds; the first line says which
            attempt += 1
            if attempt < attempts and _schema_race(err):
                time.sleep(0.2 * 2**attempt * (1 + random.random()))
                continue
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise VislabError(f"--storage {_safe_url(url)}: cannot open the study storage ({first})") from None


def _retry() -> RetryHeartbeatStaleTrialCallback:
    """Queue a dead (or interrupted) trial again with its parameters and reported epochs."""
    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES, inherit_intermediate_values=True)


def retry_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial this one retries (the first of a chain), None for a fresh one."""
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def _sampler(setup: Setup, seed: int | None, n_existing: int) -> optuna.samplers.BaseSampler:
    if setup.sampler == "grid":  # every worker must shuffle the grid alike: a fixed seed
        return optuna.samplers.GridSampler(setup.grid, seed=seed or 0)
    # a seeded sampler restarted on a continued study would draw its first points again
    s = None if seed is None else (seed * 1_000_003 + n_existing) % SEED_SPAN
    if setup.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s)
    return optuna.samplers.TPESampler(seed=s)


def _pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    if kind == "median":  # prune from the second epoch on, once two trials have finished
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    return optuna.pruners.NopPruner()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _check_same_sweep(study: optuna.Study, setup: Setup, manifest: str, where: str) -> None:
    """A continued study must be the same sweep: config, space and dataset."""
    want = json.loads(json.dumps({"config": setup.base, "space": {p.key: p.describe() for p in setup.params}, "manifest_hash": manifest}))
    have = study.user_attrs.get("vislab")
    if have is None:  # a new study; read back what is stored, in case another worker set it first
        study.set_user_attr("vislab", want)
        have = study.user_attrs.get("vislab", want)
    if have == want:
        return
    if have.get("manifest_hash") != want["manifest_hash"]:
        what = "a different dataset (manifest hash)"
    elif have.get("space") != want["space"]:
        keys = sorted(set(have.get("space", {})) ^ set(want["space"])) or sorted(k for k in want["space"] if have["space"].get(k) != want["space"][k])
        what = f"a different search space ({', '.join(keys)})"
    else:
        a, b = _flat(have.get("config", {})), _flat(want["config"])
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        what = f"a different config ({', '.join(keys[:5])})"
    raise VislabError(
        f"{where}: study '{study.study_name}' was started with {what}; "
        "continue it with the same command, or start a new one with another --out"
    )


def _claim_problem(study: optuna.Study, number: int, trials_wanted: int) -> str | None:
    """Why trial `number` must not train (None when it may): the study already holds the
    wanted number of trials created before it, or its grid point is an earlier trial's."""
    trials = study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == number)
    earlier = [t for t in trials if t.number < number and t.state in COUNTED and not t.user_attrs.get("skipped")]
    if len(earlier) >= trials_wanted:
        return f"the study already has {trials_wanted} trial(s)"
    gid = me.system_attrs.get("grid_id")
    if gid is not None:
        taken = [t.number for t in earlier if t.system_attrs.get("grid_id") == gid]
        if taken:
            return f"its grid point is trial {taken[0]}'s"
    return None


def _same_config(path: Path, cfg: RunConfig) -> bool:
    try:
        return path.is_file() and load_config(path).model_dump(mode="json") == cfg.model_dump(mode="json")
    except VislabError:
        return False


class Objective:
    """Trains one trial into its run directory and returns the best monitored value."""

    def __init__(self, study: optuna.Study, setup: Setup, data: Path, out: Path) -> None:
        self.study, self.setup, self.data, self.out = study, setup, data, out
        self.current: int | None = None
        self.outcome = ""
        self.message = ""

    def __call__(self, trial: optuna.Trial) -> float:
        self.current, self.outcome, self.message = trial.number, "failed", ""
        problem = _claim_problem(self.study, trial.number, self.setup.trials)
        if problem:
            trial.set_user_attr("skipped", problem)
            self.outcome, self.message = "skipped", problem
            raise _Skipped(problem)
        values = {p.key: p.suggest(trial) for p in self.setup.params}
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        original = retry_of(frozen)
        name = variant_name(self.setup.params, values) if self.setup.sampler == "grid" else None
        name = name or f"trial-{original if original is not None else trial.number:04d}"
        trial.set_user_attr("run_dir", name)
        trial.set_user_attr("host", socket.gethostname())
        shown = " ".join(f"{k}={v}" for k, v in values.items())
        again = f" (retry of trial {original})" if original is not None else ""
        print(f"trial {trial.number}{again} -> {name}: {shown}", flush=True)
        try:
            cfg = trial_config(self.setup.base, values, f"trial {trial.number}")
        except VislabError as err:
            return self._fail(trial, str(err))
        return self._train(trial, cfg, inside(self.out, name))

    def _fail(self, trial: optuna.Trial, message: str) -> float:
        trial.set_user_attr("note", message)
        self.message = message
        raise _TrialFailed(message)

    def _train(self, trial: optuna.Trial, cfg: RunConfig, run_dir: Path) -> float:
        from vislab.health import NonFiniteLossError
        from vislab.train import train

        paths = run_paths(run_dir)
        if paths.config.is_file() and not _same_config(paths.config, cfg):
            return self._fail(trial, f"{run_dir}: holds a run with another config (of an earlier study?); sweep into a new --out")
        summary = read_json(paths.summary) if paths.summary.is_file() else {}
        if summary.get("stopped_reason") in FINAL_STOPS:
            print(f"  {run_dir.name} finished before ({summary['stopped_reason']}); its result is used", flush=True)
            return self._result(trial, summary)
        prune = PruneCallback(trial, self.setup.monitor)
        try:
            train(cfg, self.data, run_dir, resume=paths.last.is_file(), callbacks=[prune])
        except NonFiniteLossError as err:
            trial.set_user_attr("note", str(err))
            summary = read_json(paths.summary) if paths.summary.is_file() else {"stopped_reason": "nan"}
            return self._result(trial, summary)
        except DatasetError as err:  # the same for every trial: the worker loop stops the sweep
            trial.set_user_attr("note", str(err))
            self.message = str(err)
            raise
        except VislabError as err:
            return self._fail(trial, str(err))
        except torch.OutOfMemoryError as err:  # too large a batch or input for this GPU: the trial fails, the sweep goes on
            torch.cuda.empty_cache()
            return self._fail(trial, f"out of GPU memory ({str(err).splitlines()[0][:160]})")
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit
            raise KeyboardInterrupt from None
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker declared the trial dead: `_loop` says so
            raise
        except Exception as err:  # noqa: BLE001 - a bug or an unforeseen error fails this trial, not the study
            return self._unexpected(trial, err)
        summary = read_json(paths.summary)
        if prune.pruned_at is not None and summary.get("stopped_reason") not in FINAL_STOPS:
            summary["stopped_reason"] = "pruned"
            summary["pruned_at_epoch"] = prune.pruned_at
            write_json(paths.summary, summary)
        return self._result(trial, summary)

    def _unexpected(self, trial: optuna.Trial, err: Exception) -> float:
        """Fail the trial with the error's one line; the traceback goes to stderr and to the
        trial's user attribute `traceback` in the study, for a bug report."""
        text = "".join(traceback.format_exception(err))
        print(f"trial {trial.number}: unexpected error:\n{text}", file=sys.stderr, flush=True)
        trial.set_user_attr("traceback", text)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return self._fail(trial, f"unexpected {type(err).__name__}{': ' + first if first else ''} (traceback in the trial's user attribute 'traceback')")

    def _result(self, trial: optuna.Trial, summary: dict[str, Any]) -> float:
        stopped = summary.get("stopped_reason")
        trial.set_user_attr("stopped", stopped)
        trial.set_user_attr("epochs", summary.get("epochs_completed"))
        trial.set_user_attr("model_params", (summary.get("params") or {}).get("total"))
        if stopped in ("pruned", "nan"):
            self.outcome = "pruned"
            why = "the loss diverged" if stopped == "nan" else f"pruned after epoch {summary.get('epochs_completed')}"
            self.message = why
            trial.set_user_attr("note", why)
            raise optuna.TrialPruned(why)
        value = (summary.get("best_val") or {}).get(self.setup.monitor)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return self._fail(trial, f"no {self.setup.monitor} in summary.json (stopped: {stopped})")
        self.outcome, self.message = "complete", f"{self.setup.monitor} {value:.4f}"
        return float(value)


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial | None:
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def _free_grid_point(trials: list[optuna.trial.FrozenTrial], setup: Setup) -> bool:
    """Whether a new trial would get a grid point no trial has taken (GridSampler's rule:
    running and finished trials, failed ones included, hold theirs)."""
    size = math.prod(len(v) for v in setup.grid.values())
    used = {t.system_attrs.get("grid_id") for t in trials if t.state != TrialState.WAITING}
    return bool(set(range(size)) - used)


def _work(study: optuna.Study, setup: Setup, objective: Objective, opts: SweepOptions, poll_s: float) -> str:
    """This worker's loop: trials until the study is done, the grid exhausted or --max-time
    spent; a Ctrl-C or SIGTERM stops it between storage calls (see `SignalLatch`)."""
    from vislab.interrupts import SignalLatch

    with SignalLatch() as latch:
        return _loop(study, setup, objective, opts, poll_s, latch)


def _stop_if_signalled(latch: Any) -> None:
    if latch.signum is not None:
        raise TrainingInterrupted(f"stopped by {signal.Signals(latch.signum).name}", latch.signum)


def _loop(study: optuna.Study, setup: Setup, objective: Objective, opts: SweepOptions, poll_s: float, latch: Any) -> str:
    from vislab.sweep.results import write_results

    deadline = time.monotonic() + parse_duration(opts.max_time) if opts.max_time else None
    failures: list[str] = []
    said_waiting = False
    retry = _retry()
    while True:
        _stop_if_signalled(latch)
        optuna.storages.fail_stale_trials(study)
        everything = study.get_trials(deepcopy=False)
        trials = [t for t in everything if not t.user_attrs.get("skipped")]
        done = sum(t.state in DONE for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= setup.trials:
            return "done"
        if deadline is not None and time.monotonic() >= deadline:
            return "time"
        no_point = setup.sampler == "grid" and not waiting and not _free_grid_point(everything, setup)
        if no_point and not running:
            return "exhausted"
        if not waiting and (no_point or done + running >= setup.trials):
            if not said_waiting:
                print(
                    f"waiting for {running} running trial(s): another worker's, or a killed worker's "
                    f"(retried here after {2 * opts.heartbeat}s without a heartbeat)",
                    flush=True,
                )
                said_waiting = True
            time.sleep(poll_s)
            continue
        said_waiting = False
        study.sampler = _sampler(setup, opts.seed, len(everything))
        objective.current = None
        try:
            study.optimize(objective, n_trials=1, catch=(_Skipped, _TrialFailed))
        except KeyboardInterrupt:
            stopped = _trial(study, objective.current) if objective.current is not None else None
            if stopped is not None and stopped.state == TrialState.FAIL and not stopped.user_attrs.get("skipped"):
                retry(study, stopped)  # queued again: the next run resumes it
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            print(f"trial {objective.current} was declared dead by another worker (no heartbeat) and retried there", flush=True)
            continue
        except DatasetError as err:  # Optuna has recorded the trial as failed
            write_results(study, setup, objective.out, html=True)
            raise VislabError(f"trial {objective.current} failed on the dataset, which no trial's values change; the sweep stopped: {err}") from None
        outcome = objective.outcome
        if outcome == "skipped":
            continue
        print(f"trial {objective.current}: {outcome}{': ' + objective.message if objective.message else ''}", flush=True)
        failures = failures + [objective.message] if outcome == "failed" else []
        stop = len(failures) >= MAX_FAILURES_IN_ROW
        write_results(study, setup, objective.out, html=stop)  # every trial, the one that stops the sweep too
        if stop:
            raise VislabError(f"{len(failures)} trials in a row failed; the last: {failures[-1]}")


def run_sweep(config: str | Path, data: str | Path, out: str | Path, opts: SweepOptions | None = None, **options: Any) -> SweepResult:
    """Run (or join, or continue) the study of `config` over `opts.space` on `data`, training
    each trial into OUT/<run dir>, and write OUT/results.csv, best.yaml and sweep.html.

    The options are a `SweepOptions`, or its fields as keywords, which are `vislab sweep`'s
    options with underscores (`trials=10, max_time="2h"`; `--set` is `overrides`)."""
    if opts is not None and options:
        raise VislabError("run_sweep: pass a SweepOptions or its fields as keywords, not both")
    check_keywords("run_sweep", options, [f.name for f in fields(SweepOptions)])
    opts = opts if opts is not None else SweepOptions(**options)
    with warnings.catch_warnings():  # heartbeats, retries and stale-trial checks are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _run_sweep(config, data, out, opts)


def _check_dataset(setup: Setup, data: Path, config: str) -> None:
    """Check the dataset once, before the study: one no trial can train on (a single class, an
    empty split) is one line here, not the same failure in trial after trial; so is a value of
    the base config the task or the images cannot take (detection's data.cache), unless the
    sweep varies its key: then each trial's own value decides, and a bad one fails that trial."""
    from vislab.tasks.registry import get_task

    cfg = build_config(setup.base, setup.source)
    try:
        get_task(cfg.task).check_dataset(cfg, data)
    except SettingError as err:
        if not any(varies(p, key) for p in setup.params for key in err.keys):
            raise VislabError(f"{config}: {err}; no trial can train with it, so the sweep started none") from None
    except VislabError as err:
        raise VislabError(f"{err}; no trial can train on it, so the sweep started none") from None


def _run_sweep(config: str | Path, data: str | Path, out: str | Path, opts: SweepOptions) -> SweepResult:
    from vislab.data.manifest import manifest_hash, manifest_path
    from vislab.sweep.results import write_results

    setup = resolve(config, opts)
    data = Path(data)
    if not manifest_path(data).is_file():
        raise VislabError(f"{data}: no manifest.csv; pass a dataset folder written by `vislab curate`")
    _check_dataset(setup, data, str(config))
    out = Path(out)
    name = opts.study_name or out.resolve().name
    check_out(out, name)
    claim(out, name)
    url = opts.storage or f"sqlite:///{inside(out, STUDY_DB)}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own lines
    storage = open_storage(url, opts.heartbeat)
    epochs = int(setup.base["train"]["epochs"])
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=setup.direction,
            sampler=_sampler(setup, opts.seed, 0),
            pruner=_pruner(opts.pruner, epochs),
            load_if_exists=True,
        )
    except ValueError as err:
        raise VislabError(f"study '{name}' in {_safe_url(url)}: {str(err).splitlines()[0]}") from None
    _check_same_sweep(study, setup, manifest_hash(data), str(config))
    done = sum(t.state in DONE for t in study.get_trials(deepcopy=False))
    print(f"study '{name}' ({_safe_url(url)}): {done}/{setup.trials} trials done; sampler {setup.sampler}, pruner {opts.pruner}", flush=True)
    objective = Objective(study, setup, data, out)
    stopped = _work(study, setup, objective, opts, poll_s=min(5.0, float(opts.heartbeat)))
    table, best, html = write_results(study, setup, out, html=True)
    return SweepResult(out, name, stopped, table, best, html)

