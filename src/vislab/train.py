"""`vislab train`: assemble the Lightning Trainer for a config and leave a run directory.

The loop, DDP, precision, time budget and checkpoint restore are Lightning's; this module
decides what goes in: the task `task:` names (its LightningModule, datamodule, metric
columns and health checks come from its plug-in, see tasks/registry.py), the callbacks that
write the run-directory contract (see callbacks.py), and the rules of resuming:

- `resume=True` reads config.yaml and the dataset from the run directory; only `epochs`
  (to extend a run) and `max_time` may change. The dataset's manifest must still hash the same.
  Every check that can refuse a resume (run.json, summary.json, metrics.csv, last.ckpt and its
  weights against the model config.yaml builds) runs before the session writes anything.
- `max_time` is the run's total training-time budget over all sessions, validation and
  checkpoint writes included: a new run is first fitted to it (plan.py: a short probe of
  real steps, then the epochs that fit, with the warm-up, the frozen epochs and the schedule
  scaled to them; `train.epochs` is the most it may train), and `callbacks.TimeBudget` ends
  it at an epoch end when the next epoch would not fit. The elapsed time is stored in every
  checkpoint, so a resumed run gets what is left (a budget spent, or too short for another
  epoch, is an error that says to pass a larger --max-time).
- A stop mid-epoch (a budget estimate that was wrong, a signal) writes last.ckpt at that
  step and skips the validation of the unfinished epoch; resuming continues that epoch where
  it stopped (data order, augmentation and RNG included) rather than starting it again.
- Extending a run (`--resume --epochs N`) re-plans its learning-rate schedule (schedule.py):
  a finished run gets a new cycle over the added epochs, a run stopped early has its
  schedule stretched to the new end.
- One process at a time trains into a run directory (`runs.run_lock`, held by rank 0 from
  before the first check until train() returns); temporary files killed writers left there
  are removed once it is held.
- Ctrl-C / SIGTERM stop at the next step with last.ckpt saved there (see interrupts.py):
  `TrainingInterrupted` says so and how to continue.
"""

from __future__ import annotations

import math
import signal
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from vislab.config import RunConfig, build_config, load_config, parse_duration, save_config
from vislab.display import format_rate
from vislab.errors import TrainingInterrupted, VislabError
from vislab.fsguard import printable
from vislab.runs import (
    RunPaths,
    checked_model_state,
    make_run_record,
    read_json,
    read_json_object,
    read_metrics,
    run_paths,
    write_json,
)

if TYPE_CHECKING:
    from vislab.interrupts import GracefulStop

def _with_limits(cfg: RunConfig, epochs: int | None, max_time: str | float | None) -> RunConfig:
    raw = cfg.model_dump(mode="json")
    if epochs is not None:
        raw["train"]["epochs"] = int(epochs)
    if max_time is not None:
        raw["train"]["max_time"] = str(max_time)
    return build_config(raw, "--epochs/--max-time")


def _diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def _callback_state(ckpt: dict[str, Any], name: str) -> dict[str, Any]:
    for key, state in (ckpt.get("callbacks") or {}).items():
        if key == name or key.startswith(name + "{"):
            return state
    return {}


# what Lightning needs to restore a training session from a checkpoint
_RESUMABLE_KEYS = ("state_dict", "optimizer_states", "loops", "callbacks", "epoch", "global_step")


def _resumable_keys(info: dict[str, Any]) -> set[str]:
    """The config keys a resume may change: epochs, the time budget, and what the budget's
    plan set (run.json's plan.changed)."""
    return {"train.epochs", "train.max_time", *((info.get("plan") or {}).get("changed") or {})}


def _saved_config(paths: RunPaths, info: dict[str, Any], ckpt: dict[str, Any]) -> RunConfig:
    """config.yaml, refused in one line when it no longer says what last.ckpt was trained with
    (edited by hand): an edited learning rate was ignored (the optimizer state wins) yet
    recorded, a batch size applied mid-schedule, a model edit a load_state_dict traceback. Only
    the keys a resume may change (epochs, time budget, what the budget's plan set) may differ."""
    from vislab.config_files import read_yaml
    from vislab.runs import check_config_matches

    check_config_matches(read_yaml(paths.config), info, ckpt, paths.config, paths.last)  # task/model first: another task's checks would mislead
    saved = load_config(paths.config)
    trained = (ckpt.get("hyper_parameters") or {}).get("config")
    if isinstance(trained, dict):
        resumable = _resumable_keys(info)
        edited = [k for k in _diff_keys(saved.model_dump(mode="json"), trained) if k not in resumable]
        if edited:
            raise VislabError(
                f"{paths.config}: differs from the config {paths.last.name} was trained with in {', '.join(edited[:5])}"
                f"{' and more' if len(edited) > 5 else ''} (edited?); --resume continues the run as trained: put those "
                "values back, or train a new --out with the changes (only --epochs and --max-time may change when resuming)"
            )
    return saved


def _load_last(paths: RunPaths) -> dict[str, Any]:
    """last.ckpt, or a one-line error naming it and what is left to fall back on."""
    from vislab.runs import CheckpointError, load_checkpoint_file

    try:
        ckpt = load_checkpoint_file(paths.last)
        missing = [k for k in _RESUMABLE_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(f"{paths.last}: not a training checkpoint of vislab (no {', '.join(missing)})")
        return ckpt
    except CheckpointError as err:
        raise CheckpointError(f"{err}; the run cannot be resumed from it; {_fallback_hint(paths, 'the fallback ')}") from None


def _fallback_hint(paths: RunPaths, prefix: str = "") -> str:
    """What is left when last.ckpt cannot resume the run: best.ckpt, kept (it may hold the
    run's only trained weights), for evaluate/export and as a new run's starting weights."""
    from vislab.runs import CheckpointError, epoch_label, load_checkpoint_file

    try:
        best = load_checkpoint_file(paths.best) if paths.best.is_file() else None
    except CheckpointError:
        best = None
    if best is None:
        return "no intact best.ckpt to fall back on either: start a new run"
    return (
        f"{prefix}{paths.best}{epoch_label(best)} is intact: evaluate/export use it, "
        f"and a new run (another --out) can train on from its weights with --set model.weights={paths.best}"
    )


def _stopped_reason(paths: RunPaths) -> str | None:
    """summary.json's stop reason: "running" while a session trains (a killed one leaves it)."""
    return read_json_object(paths.summary).get("stopped_reason") if paths.summary.is_file() else None


def _mark_running(paths: RunPaths) -> None:
    """A resumed session's summary says "running" until it ends: a session killed outright
    (SIGKILL, a dead Colab VM) must not leave the previous session's reason, which made the
    next resume refuse as 'the time budget stopped the run' under a budget that had not."""
    if paths.summary.is_file():
        write_json(paths.summary, {**read_json(paths.summary), "stopped_reason": "running"})


def _no_last_checkpoint(paths: RunPaths, out: Path) -> str:
    """Why a run directory without a last.ckpt file cannot resume, from what the folder shows,
    and what to do instead. best.ckpt beside it (a run killed as it saved its first epoch,
    best being written first, or a last.ckpt lost since) is kept: it may be the run's only
    trained weights."""
    from vislab.fsguard import regular_file_problem

    problem = regular_file_problem(paths.last)
    if paths.best.is_file():
        return (f"{out}: holds best.ckpt but no last.ckpt ({paths.last} is {problem}), so the run cannot be resumed "
                f"({_epochs_recorded(paths)}); {_fallback_hint(paths)}")
    if problem != "missing":
        return f"{paths.last}: {problem}, so there is nothing to resume; train the run again into a new --out"
    from vislab.interrupts import REASONS

    by_signal = {reason: signal.Signals(sig).name for sig, reason in REASONS.items()}
    stopped = _stopped_reason(paths)
    why = f": {by_signal[stopped]} stopped the run before its first one" if stopped in by_signal else ""
    return f"{paths.last}: nothing to resume (no last checkpoint{why}); start the run without --resume"


def _epochs_recorded(paths: RunPaths) -> str:
    """How far metrics.csv says the run got, for messages about a run that cannot resume."""
    try:
        rows = read_metrics(paths.metrics)
    except VislabError:
        return f"{paths.metrics.name} is unreadable"
    done = 0 if rows is None else int(rows["epoch"].nunique())
    if done == 0:
        return f"{paths.metrics.name} records no finished epoch: the run stopped as it saved its first"
    return f"{paths.metrics.name} records {done} finished epoch{'s' if done > 1 else ''}"


def _prepare_resume(
    out: Path, cfg: RunConfig | None, data_dir: str | Path | None, epochs: int | None, max_time: str | float | None
) -> tuple[RunConfig, Path, dict[str, Any], int]:
    """The saved config with the allowed changes, the dataset, last.ckpt and the epochs the run
    had before this session, after checking they still fit."""
    from vislab.data.manifest import manifest_hash
    from vislab.runs import resolve_run_dir

    paths = run_paths(resolve_run_dir(out))
    if not paths.last.is_file():
        raise VislabError(_no_last_checkpoint(paths, out))
    # every file the session goes on from is read (and refused in one line) before it writes any
    info = read_json_object(paths.run_json)
    stopped = _stopped_reason(paths)
    read_metrics(paths.metrics)
    ckpt = _load_last(paths)
    saved = _saved_config(paths, info, ckpt)
    if cfg is not None:  # the config as given, before a time-budget plan scaled it
        resumable = _resumable_keys(info)
        diff = [k for k in _diff_keys(cfg.model_dump(mode="json"), saved.model_dump(mode="json")) if k not in resumable]
        if diff:
            raise VislabError(
                f"--resume continues {paths.config}; the given config differs in {', '.join(diff[:5])}. "
                "Only --epochs and --max-time may change when resuming; start a new --out for other changes"
            )
    recorded = info.get("dataset_dir")
    if data_dir is None and not isinstance(recorded, str):
        raise VislabError(f"{paths.run_json}: no dataset_dir recorded; pass --data DATASET_DIR (the dataset the run was trained on)")
    if not isinstance(info.get("manifest_hash"), str):
        raise VislabError(
            f"{paths.run_json}: no manifest_hash recorded, so the dataset cannot be checked to be the one the run "
            "trained on; restore the run.json `vislab train` wrote, or start a new run"
        )
    data = Path(data_dir) if data_dir is not None else Path(recorded)
    if not (data / "manifest.csv").is_file():
        raise VislabError(f"{data}: the run's dataset is not there any more; pass --data DATASET_DIR")
    if manifest_hash(data) != info.get("manifest_hash"):
        raise VislabError(
            f"{data}: manifest differs from the one this run started with (hash changed); "
            "resume with the same dataset, or start a new run"
        )
    cfg = _with_limits(saved, epochs, max_time)
    next_epoch = int(_callback_state(ckpt, "RunRecorder").get("next_epoch", ckpt.get("epoch", 0)))
    if next_epoch >= cfg.train.epochs:
        raise VislabError(f"{out}: the run already finished {next_epoch} epochs; pass --epochs N (N > {next_epoch}) to extend it")
    if stopped == "early_stopping" and epochs is None:
        raise VislabError(
            f"{out}: the run stopped early ({cfg.train.early_stopping.monitor if cfg.train.early_stopping else 'monitor'} "
            "stopped improving); pass --epochs N to train on regardless"
        )
    if cfg.train.max_time:
        budget = parse_duration(cfg.train.max_time)
        spent = float(_callback_state(ckpt, "Timer").get("time_elapsed", {}).get("train", 0.0))
        if spent >= budget:
            raise VislabError(
                f"{out}: the time budget of {cfg.train.max_time} is spent ({spent:.0f}s trained); "
                "pass a larger --max-time (the total for the whole run) to continue"
            )
        if stopped == "max_time" and max_time is None:  # the budget judged no more fit; the same budget still holds
            raise VislabError(
                f"{out}: the time budget of {cfg.train.max_time} stopped the run with {budget - spent:.0f}s left, less than the "
                "rest of an epoch needed there; pass a larger --max-time (the total for the whole run) to continue"
            )
        need = _epoch_seconds(paths) - float(_callback_state(ckpt, "RunRecorder").get("elapsed_s", 0.0))
        if spent + need > budget:
            raise VislabError(
                f"{out}: the time budget of {cfg.train.max_time} has {budget - spent:.0f}s left, less than the "
                f"~{need:.0f}s an epoch takes here; pass a larger --max-time (the total for the whole run) to continue"
            )
    return cfg, data, ckpt, saved.train.epochs


def _epoch_seconds(paths: RunPaths) -> float:
    """The slowest epoch of a run so far (steps and validation), from metrics.csv; 0 when none."""
    rows = read_metrics(paths.metrics)
    times = rows.get("epoch_time_s") if rows is not None else None
    return float(times.max()) if times is not None and times.notna().any() else 0.0


def _plan_for_budget(cfg: RunConfig, data: Path, budget_s: float, out: Path) -> tuple[RunConfig, Any]:
    """`cfg` fitted to the budget after probing its training steps (see plan.py), and the plan."""
    from vislab.plan import fit_plan, probe

    # building counts as start-up, as the run's own does; without the stages train.freeze_stages
    # would fix, so that the probe times the run both ways
    task, dm, _ = build_task(cfg.model_copy(update={"train": cfg.train.model_copy(update={"freeze_stages": 0})}), data)
    measured = probe(task, dm, cfg, scratch=out, budget_s=budget_s)
    del task, dm
    planned, plan = fit_plan(cfg, str(cfg.train.max_time), budget_s, measured, measured.probe_s)
    print(plan.line(cfg.scheduler.name), flush=True)
    return planned, plan


def _progress_bar(choice: str) -> Any:
    import sys

    from vislab.callbacks import RichThroughputBar, TQDMThroughputBar

    if choice == "auto":
        choice = "rich" if sys.stdout.isatty() else "none"
    if choice == "rich":
        return RichThroughputBar()
    if choice == "tqdm":
        return TQDMThroughputBar()
    return None


def _strategy(cfg: RunConfig) -> Any:
    """The strategy name, or a DDP strategy that tolerates a frozen backbone's unused parameters."""
    name = cfg.train.strategy
    if cfg.train.freeze_backbone_epochs > 0 and name in ("ddp", "ddp_spawn"):
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True, start_method="spawn" if name == "ddp_spawn" else "popen")
    return name


def _on_gpu(accelerator: str) -> bool:
    from vislab.plan import device_for

    return device_for(accelerator).type == "cuda"


def build_task(cfg: RunConfig, data_dir: Path, sanity: bool = False, *, load_weights: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """The LightningModule, datamodule and data facts of the config's task (`Task.build`),
    after checking the task can train the config's model (and warning once when
    data.num_workers exceeds the cores); `load_weights=False` on resume: the checkpoint holds
    every weight, so `model.weights` (a Darknet file and its .names) is not read again."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from vislab.tasks import get_task
    from vislab.workers import warn_many_workers

    task = get_task(cfg.task)
    problem = task.accepts_model(cfg.model.name)
    if problem:
        raise VislabError(problem)
    if getattr(rank_zero_only, "rank", 0) == 0:
        warn_many_workers(cfg.data.num_workers)
    return task.build(cfg, data_dir, sanity, load_weights=load_weights)


def train(
    cfg: RunConfig | str | Path | None,
    data_dir: str | Path | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    max_time: str | float | None = None,
    epochs: int | None = None,
    sanity: bool = False,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train the model of the config's task (classification, detection, crops) on a curated
    dataset into `out_dir`, as `vislab train CONFIG --data DATA_DIR --out OUT_DIR` does;
    returns the run directory.

    `cfg` is a RunConfig (`load_config(name, overrides)`: the command's --set), or a YAML
    file or packaged recipe name loaded as `vislab train CONFIG` loads it
    (`train("digits-cnn", ...)`); it may be None with `resume=True` (the run's config.yaml
    is used). `callbacks` are extra Lightning callbacks (tests use them to observe
    training). With `sanity=True` the model instead overfits one fixed batch for
    `train.sanity_steps` steps and the result goes to `out_dir/sanity.json`.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from vislab.interrupts import GracefulStop
    from vislab.fsguard import remove_orphan_temps
    from vislab.runs import prepare_out_dir, resolve_run_dir, run_lock

    if isinstance(cfg, (str, Path)):
        cfg = load_config(cfg)
    out = Path(out_dir)
    rank0 = getattr(rank_zero_only, "rank", 0) == 0
    stopper = GracefulStop()
    with ExitStack() as session:
        stopper.install()
        session.callback(stopper.restore)
        if rank0:  # under DDP the other ranks write nothing but what rank 0 coordinates
            if resume:
                resolve_run_dir(out)
            else:
                created = not out.exists()
                prepare_out_dir(out)
            session.enter_context(run_lock(out))
            if not resume and created:
                # only the lock's holder cleans up, before letting go of it: a run that failed
                # before writing anything leaves no folder behind
                session.push(_remove_on_failure(out))
            removed = remove_orphan_temps(out)
            if removed:
                print(f"removed {len(removed)} temporary file(s) left by an interrupted write in {printable(out)}", flush=True)
        return _train_session(cfg, data_dir, out, stopper, resume, max_time, epochs, sanity, callbacks)


def _remove_on_failure(out: Path) -> Any:
    """An ExitStack exit callback removing `out` (see `locks.remove_if_unused`) when the block
    failed; it runs before the run lock is let go."""
    from vislab.locks import remove_if_unused

    def on_exit(kind: type[BaseException] | None, *_: Any) -> None:
        if kind is not None:
            remove_if_unused(out)

    return on_exit


def _train_session(
    cfg: RunConfig | None,
    data_dir: str | Path | None,
    out: Path,
    stopper: "GracefulStop",
    resume: bool,
    max_time: str | float | None,
    epochs: int | None,
    sanity: bool,
    callbacks: Sequence[Any],
) -> Path:
    """train() once the run directory is locked and signals are handled."""
    import lightning as L
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    paths = run_paths(out)
    rank0 = getattr(rank_zero_only, "rank", 0) == 0
    ckpt: dict[str, Any] | None = None
    epochs_before: int | None = None
    if resume:
        cfg, data, ckpt, epochs_before = _prepare_resume(out, cfg, data_dir, epochs, max_time)
    else:
        if cfg is None:
            raise VislabError("train: a config is required (e.g. configs/digits-cnn.yaml) unless --resume is given")
        if data_dir is None:
            raise VislabError("train: --data DATASET_DIR is required (a folder written by `vislab curate`)")
        cfg = _with_limits(cfg, epochs, max_time)
        data = Path(data_dir)
        if rank0 and not sanity and (paths.last.exists() or paths.best.exists()):
            raise VislabError(
                f"{out}: already holds a run; pass --resume to continue it, or choose another --out"
                if paths.last.is_file() else _no_last_checkpoint(paths, out)
            )
    from vislab.machine import check_machine, resolve_accelerator
    from vislab.tasks.base import QUIET_WARNINGS, quiet_lightning

    if sanity:  # one device, whatever train.devices says
        resolve_accelerator(cfg.train.accelerator)
    else:  # before anything is written: a config this machine cannot run is one line, not a half-made run
        check_machine(cfg.train)
    budget_s = parse_duration(cfg.train.max_time) if cfg.train.max_time else None
    quiet_lightning()
    if sanity:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        return _sanity(cfg, data, out, stopper)
    plan = None
    if budget_s and not resume:
        if rank0:  # before seeding: the probe's model and batches must not change the run's
            cfg, plan = _plan_for_budget(cfg, data, budget_s, out)
        else:  # DDP: rank 0 planned before it launched this process; its config.yaml holds the plan
            cfg = load_config(paths.config)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task, dm, facts = build_task(cfg, data, load_weights=ckpt is None)
    if ckpt is not None:  # before anything is written: another run's weights are one line, not load_state_dict's traceback
        checked_model_state(task.model, ckpt, paths.last, cfg.model.name, paths.config)
    if stopper.signum is not None:  # a signal while the run was set up (the budget's probe, building): nothing is written
        raise _interrupted(stopper.signum, out, None)
    if plan is not None:
        facts["plan"] = plan.to_dict()
    if rank0:
        from vislab.data.manifest import warn_changed

        warn_changed(data)  # once, for the cached and the file loaders alike
        _write_run_files(cfg, data, out, task, facts, resume)
        print(f"data: {facts['split_sizes']} images (train/val/test); validation: {facts['val_source']}", flush=True)
        fixed = task.fixed_stages
        if fixed:
            print(f"frozen for the run: the stem and {fixed['levels']} feature level(s), through {fixed['through']} "
                  f"({fixed['fixed_params'] / 1e6:.2f}M of {fixed['params'] / 1e6:.2f}M parameters)", flush=True)

    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from vislab.callbacks import (
        AtomicCheckpointIO,
        BestCheckpoint,
        ExtendedEarlyStopping,
        LastCheckpoint,
        RunRecorder,
        TimeBudget,
        stop_reason,
    )
    from vislab.health import HealthMonitor
    from vislab.schedule import Replan
    from vislab.tasks import get_task
    from vislab.tricks import recipe_callbacks, resolve_precision

    t = cfg.train
    plugin = get_task(cfg.task)
    bar = _progress_bar(t.progress)
    notes = [("warn", "plan_cut", plan.line(cfg.scheduler.name))] if plan is not None and plan.cut else []
    health = HealthMonitor(paths.health, plugin.health_checks(cfg), notes=notes)
    if resume:
        health.load_existing()
    recorded_plan = plan.to_dict() if plan is not None else (read_json_object(paths.run_json).get("plan") if resume else None)
    summary_base = {
        "model": cfg.model.name,
        "input_size": list(task.hparams["data_spec"]["input_size"]),
        "val_source": facts["val_source"],
        **({"plan": recorded_plan} if recorded_plan else {}),
    }
    last_ckpt = LastCheckpoint(paths.last, t.checkpoint_every_steps, t.checkpoint_every_minutes)
    recorder = RunRecorder(out, summary_base, t.monitor, t.monitor_mode, task=plugin)
    if rank0:
        stopper.record_unsaved_stop = _record_unsaved_stop(recorder, out, t.epochs)
    cbs: list[Any] = [
        stopper,
        health,
        recorder,
        _time_budget(TimeBudget, cfg, budget_s, plan, paths, health, recorder),  # after the recorder: the epoch's line first
        Replan(cfg.scheduler, epochs_before),
        BestCheckpoint(
            dirpath=paths.checkpoints,
            filename="best",
            monitor=t.monitor,
            mode=t.monitor_mode,
            save_top_k=1,
            save_last=False,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        last_ckpt,
    ]
    if t.early_stopping is not None:
        es = t.early_stopping
        # checked after each validation only: an epoch cut short by a signal or the budget has none
        kind = ExtendedEarlyStopping if resume and _stopped_reason(paths) == "early_stopping" else EarlyStopping
        cbs.append(kind(monitor=es.monitor, patience=es.patience, mode=es.mode, min_delta=es.min_delta, check_on_train_epoch_end=False))
    if bar is not None:
        cbs.append(bar)
    cbs += recipe_callbacks(cfg)
    cbs += list(callbacks)
    steps = dm.steps_per_epoch(1, t.accumulate_grad_batches, t.limit_train_batches)
    trainer = L.Trainer(
        default_root_dir=out,
        max_epochs=t.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=_strategy(cfg),
        num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),
        callbacks=cbs,
        logger=TensorBoardLogger(save_dir=out, name="tb", version="", default_hp_metric=False),
        plugins=[AtomicCheckpointIO(preloaded=(paths.last, ckpt) if ckpt is not None else None)],
        enable_progress_bar=bar is not None,
        enable_model_summary=False,
        gradient_clip_val=t.grad_clip,
        accumulate_grad_batches=t.accumulate_grad_batches,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the datamodule shards by rank itself (seeded, resumable)
        sync_batchnorm=t.sync_batchnorm and _on_gpu(t.accelerator),  # torch's SyncBatchNorm is GPU-only
        log_every_n_steps=max(1, min(50, steps)),
    )
    if stopper.signum is not None:  # a signal once the run's files were written: summary.json records the stop
        if stopper.record_unsaved_stop is not None:  # rank 0
            stopper.record_unsaved_stop(stopper.signum)
        raise _interrupted(stopper.signum, out, None)
    if resume and rank0:
        _mark_running(paths)
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            trainer.fit(task, datamodule=dm, ckpt_path=str(paths.last) if resume else None)
        except SIGTERMException:  # Lightning's SIGTERM path: a signal before GracefulStop took over
            stopper.stopped_by = signal.SIGTERM
        except ValueError as err:
            if ONE_VALUE_PER_CHANNEL not in str(err):
                raise
            raise VislabError(
                f"data.batch_size: {cfg.data.batch_size}: {cfg.model.name} at data.img_size {cfg.data.img_size} ends in a "
                "1x1 feature map, and BatchNorm cannot normalise a single value per channel in training; "
                "use data.batch_size: 2 or more (or a larger data.img_size)"
            ) from None
    if trainer.is_global_zero:
        _print_summary(paths.summary, plugin.summary_metric, plugin.percent_metrics)
        if stopper.reason is not None and stop_reason(trainer) == stopper.reason:
            raise _interrupted(stopper.stopped_by, out, last_ckpt.saved)
    return out


ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel when training"  # torch's BatchNorm on a 1x1 map of one image


def _time_budget(kind: type, cfg: RunConfig, budget_s: float | None, plan: Any, paths: RunPaths, health: Any, recorder: Any) -> Any:
    """The run's TimeBudget: its epoch estimates come from the plan's probe, or on resume from
    the epochs measured before; when it re-plans the run to fewer epochs, config.yaml,
    run.json, summary.json and health.json say so, and again when a cut run grows back (a
    warning while it still ends short of the epochs asked, an info once it is back to all)."""
    asked = plan.epochs_asked if plan is not None else cfg.train.epochs  # cfg holds the plan's epochs

    def replanned(trainer: Any, epochs: int, why: str) -> None:
        level, code = ("warn", "plan_cut") if epochs < asked else ("info", "plan_restored")
        health.add(trainer, level, code, f"time budget: {why}", int(trainer.global_step), echo=False)
        if not trainer.is_global_zero:
            return
        save_config(_with_limits(cfg, epochs, None), paths.config)
        entry = {"after_epoch": int(trainer.current_epoch) + 1, "epochs": epochs, "why": why}
        info = read_json(paths.run_json)
        for record in (info.get("plan"), recorder.summary_base.get("plan")):
            if isinstance(record, dict):
                record.setdefault("replanned", []).append(entry)
        write_json(paths.run_json, info)

    if plan is not None:
        probe, freeze, fixed = plan.probe, cfg.train.freeze_backbone_epochs, cfg.train.freeze_stages > 0
        return kind(budget_s, plan.spent_s, lambda e: probe.epoch_s(e < freeze, fixed), probe.save_s, probe.val_s(), cfg.scheduler, replanned, asked)
    before = _epoch_seconds(paths) if budget_s else 0.0
    return kind(budget_s, 0.0, (lambda e: before) if before else None, scheduler=cfg.scheduler, on_replan=replanned)


def _record_unsaved_stop(recorder: Any, out: Path, epochs: int) -> Callable[[int], str]:
    """What a stop outside training runs (the blocked-signal watchdog before it ends the process,
    see interrupts.py; a signal while the run was set up, after its files were written):
    summary.json records the signal as a stop in training does (`stopped_reason` sigterm or
    interrupted); returns the line such a stop ends with, which says where it leaves the run."""
    from vislab.interrupts import REASONS

    def record(signum: int) -> str:
        recorder.write_unsaved_stop(REASONS[signum], epochs)
        return str(_interrupted(signum, out, None))

    return record


def _interrupted(signum: int, out: Path, saved: tuple[int, int] | None) -> TrainingInterrupted:
    """The one line that says where a signal stopped training and how to go on."""
    name = signal.Signals(signum).name
    last = run_paths(out).last
    if saved is not None:
        where = f"at epoch {saved[0]} step {saved[1]}; saved {last}"
    elif last.is_file():
        where = f"before a new step was saved; {last} is unchanged"
    else:
        where = "before the first checkpoint; nothing was saved"
    then = f"continue with: vislab train --resume --out {out}" if last.is_file() else "start the run again"
    return TrainingInterrupted(f"interrupted by {name} {where}; {then}", signum)


def _write_run_files(cfg: RunConfig, data: Path, out: Path, task: Any, facts: dict[str, Any], resume: bool) -> None:
    """config.yaml (effective config) and run.json (environment, dataset, classes, spec)."""
    import sys
    from datetime import datetime

    from vislab.data.manifest import dataset_max_pixels, manifest_hash
    from vislab.data.transforms import resolve_augment
    from vislab.models.registry import DataSpec
    from vislab.tricks import resolve_precision

    paths = run_paths(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)
    if resume and paths.run_json.is_file():
        info = read_json(paths.run_json)
        info.setdefault("resumed", []).append({"at": datetime.now().isoformat(timespec="seconds"), "command": list(sys.argv)})
        write_json(paths.run_json, info)
        return
    spec = DataSpec.from_dict(task.hparams["data_spec"])
    extra = dict(facts)
    extra["augment"] = resolve_augment(cfg.data.augment)
    extra["weights"] = getattr(task.model, "vislab_load_report", None)
    if task.fixed_stages:
        extra["frozen_stages"] = task.fixed_stages
    extra["precision"] = resolve_precision(cfg.train.precision, cfg.train.accelerator)
    extra["max_pixels"] = dataset_max_pixels(data)  # predict and explain decode under it
    record = make_run_record(cfg, data, manifest_hash(data), task.classes, spec, extra)
    write_json(paths.run_json, record)


def _print_summary(path: Path, metric: str | None, percent: frozenset[str]) -> None:
    """The line training ends with; `metric` is the task's headline figure of the best epoch
    (of the last one under train.monitor: epoch, and then worded so)."""
    from vislab.runs import keeps_last_epoch

    if not path.is_file():
        return
    s = read_json(path)
    best = s.get("best_val") or {}
    value = best.get(metric) if metric else None
    best_txt = ""
    if isinstance(value, float):
        shown = f"{value:.2%}" if metric in percent else f"{value:.4f}"
        epoch, monitor = s["best_epoch"] + 1, s.get("monitor")
        if keeps_last_epoch(s):  # nothing was picked: best.ckpt is the last epoch
            best_txt = f", kept the last epoch ({epoch}, train.monitor: {monitor}): {metric} {shown}"
        elif monitor and monitor != metric and isinstance(best.get(monitor), float):
            # best.ckpt was picked by another metric: `metric` there is not its best figure
            best_txt = f", best checkpoint (by {monitor} {best[monitor]:.4g}) at epoch {epoch}: {metric} {shown}"
        else:
            best_txt = f", best {metric} {shown} at epoch {epoch}"
    rate = format_rate(s.get("train_images_per_s"))
    print(
        f"stopped: {s.get('stopped_reason')} after {s.get('epochs_completed')}/{s.get('epochs_planned')} epochs"
        f"{best_txt}, {s.get('wall_time_s')}s{', ' + rate + ' img/s' if rate else ''}",
        flush=True,
    )


def _sanity(cfg: RunConfig, data: Path, out: Path, stopper: "GracefulStop") -> Path:
    """Overfit one fixed batch: the loss should collapse and the batch be learned by heart."""
    import lightning as L

    from vislab.health import HealthMonitor, SanityRecorder
    from vislab.tasks.base import QUIET_WARNINGS
    from vislab.tricks import WhiteningInit, recipe_callbacks, resolve_precision

    raw = cfg.model_dump(mode="json")
    raw["data"]["augment"].update({"preset": "none", "mixup": 0.0, "cutmix": 0.0})
    raw["scheduler"]["name"] = "none"
    raw["train"]["freeze_backbone_epochs"] = 0
    raw["train"]["label_smoothing"] = 0.0
    scfg = build_config(raw)
    task, dm, _ = build_task(scfg, data, sanity=True)
    rec = SanityRecorder()
    steps = scfg.train.sanity_steps
    trainer = L.Trainer(
        max_epochs=steps,
        accelerator=scfg.train.accelerator,
        devices=1,
        precision=resolve_precision(scfg.train.precision, scfg.train.accelerator),
        callbacks=[stopper, rec, HealthMonitor(None), *[c for c in recipe_callbacks(scfg) if isinstance(c, WhiteningInit)]],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
    )
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", message=r".*val_dataloader.*")
        trainer.fit(task, datamodule=dm)
    if stopper.stopped_by is not None:
        name = signal.Signals(stopper.stopped_by).name
        raise TrainingInterrupted(f"interrupted by {name} during the sanity check; {run_paths(out).sanity} not written", stopper.stopped_by)
    result = rec.result()
    result.update({"batch_size": scfg.data.batch_size, "classes": len(task.classes), "lr": scfg.optim.lr})
    write_json(run_paths(out).sanity, result)
    verdict = "the pipeline can learn" if result["learned"] else (
        "the loss fell but the batch is not learned by heart yet (more train.sanity_steps, or a higher lr?)"
        if result.get("loss_dropped")
        else "the loss did not fall: check labels, learning rate and normalisation"
    )
    score = f", accuracy {result['accuracy_last']:.0%}" if "accuracy_last" in result else ""  # the task's sanity_score
    print(
        f"sanity: one batch of {result['batch_size']} for {result['steps']} steps: loss "
        f"{result.get('loss_first', math.nan):.4f} -> {result.get('loss_last', math.nan):.4f}{score}: {verdict}",
        flush=True,
    )
    return out
