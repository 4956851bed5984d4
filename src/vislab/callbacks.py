"""Trainer plugins and callbacks that make a run directory: checkpoints, metrics, summary, bars.

- `AtomicCheckpointIO`: every checkpoint is written to a temporary file in the same folder,
  fsynced and renamed over the old one, so a kill during a write never leaves a broken file
  (Lightning's own writer goes through fsspec, whose temporary file lives in /tmp and is
  copied, not renamed, when /tmp is another filesystem). A sha256 sidecar goes with it.
- `LastCheckpoint`: last.ckpt after every full epoch, every N steps / M minutes inside an
  epoch, and at the step where something (the time budget, a signal) stops training
  mid-epoch. That stop ends the epoch unvalidated: Lightning would validate the half-trained
  weights, and best.ckpt, early stopping and the summary would take them for an epoch.
- `BestCheckpoint`: best.ckpt, saved only at the end of a complete epoch, so it always holds
  an epoch that metrics.csv and summary.json describe.
- `TimeBudget`: the time budget, validation and saving included (see its doc).
- `RunRecorder`: metrics.csv (one row per full epoch; a resumed run rewrites the epochs it
  repeats instead of duplicating them), the per-epoch line in the terminal, summary.json at
  the end or on failure. Its `lr` is the mean of the learning rates the epoch's steps used,
  with `lr/first` and `lr/last` (the schedule's shape inside the epoch, e.g. a warm-up).
- Progress bars (rich or tqdm) that show images per second and count epochs from 1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import lightning as L
import pandas as pd
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, ModelCheckpoint, RichProgressBar, Timer, TQDMProgressBar

from vislab.display import format_rate
from vislab.errors import VislabError
from vislab.fsguard import fsync_dir, replacing
from vislab.runs import atomic_write_text, checksum_path, load_checkpoint_file, metric_columns, read_json, read_metrics, run_paths, write_checksum, write_json

if TYPE_CHECKING:
    from vislab.tasks.registry import Task


class _HashingWriter:
    """A file wrapper that feeds every byte torch.save writes into a sha256."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.size += len(memoryview(data))
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a new temporary file beside the target (`fsguard.replacing`: a link planted
    at its name is never written through), fsync, write the sha256 sidecar, then rename the
    checkpoint onto the target. Loading goes through `runs.load_checkpoint_file`, so a resume
    checks the checksum too; `preloaded` hands Lightning a checkpoint already read (and
    checked) for its path instead of reading it a second time."""

    def __init__(self, preloaded: tuple[Path, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self._preloaded = preloaded

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        try:
            with replacing(path) as f:
                out = _HashingWriter(f)
                torch.save(checkpoint, out)
                f.flush()
                os.fsync(f.fileno())
                write_checksum(path, out.sha.hexdigest(), out.size)
        except (OSError, RuntimeError) as err:  # a full disk: torch's zip writer says "unexpected pos"
            if isinstance(err, RuntimeError) and "unexpected pos" not in str(err) and "write" not in str(err).lower():
                raise
            free = shutil.disk_usage(path.parent).free / 1e6
            why = err.strerror if isinstance(err, OSError) and err.strerror else "the write failed"
            raise VislabError(
                f"{path}: cannot write the checkpoint ({why}; {free:.0f} MB free on its disk); the one already "
                "there is unchanged: free some space, then vislab train --resume --out RUN"
            ) from None
        fsync_dir(path.parent)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if self._preloaded is not None and Path(path) == self._preloaded[0]:
            ckpt, self._preloaded = self._preloaded[1], None
            return ckpt
        return load_checkpoint_file(path)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        checksum_path(path).unlink(missing_ok=True)


def epoch_complete(trainer: "L.Trainer") -> bool:
    """Whether the running (or just ended) epoch went through all its batches."""
    done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    return done >= trainer.num_training_batches


class LastCheckpoint(Checkpoint):
    """Keeps `path` (last.ckpt) current: each full epoch, periodically mid-epoch, at a mid-epoch stop.

    A `Checkpoint` subclass so Lightning runs it after every other callback: it sees a stop
    requested in the same step by any of them (the Timer, early stopping, a user's), and the
    state it saves includes what they updated. List it after ModelCheckpoint, which
    `trainer.checkpoint_callback` must find first.
    """

    def __init__(self, path: str | Path, every_steps: int | None = None, every_minutes: float | None = None) -> None:
        self.path = Path(path)
        self.every_steps = every_steps
        self.every_s = every_minutes * 60 if every_minutes else None
        self._last = time.monotonic()
        self._last_step = -1
        self.saved: tuple[int, int] | None = None  # (epoch from 1, step) of this session's last save

    def _save(self, trainer: "L.Trainer") -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last = time.monotonic()
        self._last_step = trainer.global_step
        self.saved = (int(trainer.current_epoch) + 1, int(trainer.global_step))

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        if epoch_complete(trainer):
            return  # the end-of-epoch save follows
        if trainer.should_stop:  # training ends inside this epoch: no validation of half an epoch
            trainer.limit_val_batches = 0
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the summed gradients are not part of a checkpoint
        step = trainer.global_step
        due = bool(trainer.should_stop)
        if self.every_steps and step > 0 and step % self.every_steps == 0 and step != self._last_step:
            due = True
        if self.every_s is not None and time.monotonic() - self._last >= self.every_s:
            due = True
        if trainer.world_size > 1:  # clocks differ between ranks; saving is collective
            due = bool(trainer.strategy.broadcast(due))
        if due:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if epoch_complete(trainer):
            self._save(trainer)


def _parent_state_key(key: str, callback: Any, parent: str) -> str:
    """A subclass's checkpoint state key spelt with its Lightning parent's name, so the state
    saved by (or for) the parent is the one it restores."""
    name = type(callback).__qualname__
    return parent + key[len(name) :] if key.startswith(name) else key


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for best.ckpt, saving only at the end of a complete epoch:
    the checkpoint `evaluate`, `report` and `export` use is always an epoch of metrics.csv.

    Its state key stays ModelCheckpoint's, so runs saved before keep their best score on resume."""

    @property
    def state_key(self) -> str:
        return _parent_state_key(super().state_key, self, "ModelCheckpoint")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The saved paths moved to this run directory's: Lightning forgets the best score of
        a checkpoint saved under another folder, so a run copied (Drive to /content) or moved
        and then resumed replaced best.ckpt with its next epoch, however worse."""
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            moved = lambda p: os.path.join(new, os.path.relpath(p, old)) if isinstance(p, str) and p.startswith(old) else p  # noqa: E731
            state_dict = {
                **state_dict,
                "dirpath": new,
                **{k: moved(state_dict[k]) for k in ("best_model_path", "kth_best_model_path", "last_model_path") if k in state_dict},
                "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            }
        super().load_state_dict(state_dict)


class ExtendedEarlyStopping(EarlyStopping):
    """Early stopping for a run resumed past its early stop with `--epochs N`: the best score
    is kept, the patience starts again (the restored count, already at its limit, stopped the
    run after one more epoch). Same state key as EarlyStopping's."""

    @property
    def state_key(self) -> str:
        return _parent_state_key(super().state_key, self, "EarlyStopping")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.wait_count, self.stopped_epoch = 0, 0

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if epoch_complete(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if epoch_complete(trainer):
            super().on_validation_end(trainer, pl_module)


BUDGET_MARGIN = 1.02  # on measured epoch times: a next epoch starts only with this much room
# growing a cut run back is a choice, not a need: it asks for room for epochs 10% slower (a
# 2-core flowers run grew 6 -> 7 on 2% and its epochs then slowed from 28-32 s to 34 s, so the
# budget cut the 7th and the lr never reached its floor)
GROW_MARGIN = 1.1
# ... and it asks for two epochs measured in this session: the slower of them is the cost it
# plans with (one fast first epoch grew a probe's 2-epoch crops plan to 4 under a 1-minute
# budget; the second epoch then took 44 s, not 9, and the budget stopped the run with its
# schedule mid-way). A plan of 2 epochs therefore runs as planned.
GROW_AFTER = 2


class TimeBudget(Timer):
    """Lightning's Timer made to end a run inside its budget, validation and saving included.

    Lightning's Timer stops at the first step past the budget, and the validation and the
    checkpoint writes that follow come on top (a 6-minute budget once ran 391 s of steps and
    31 s more validating half an epoch). This one counts `spent_s` from before training (the
    plan's probe) and everything from `setup` to the first step (a probe head's fit, a
    restore), and:
    - at the end of each epoch, estimates the epochs still planned from the median of the last
      three measured (a 0.2-s epoch slowed to 0.4 s by a neighbour once cut a plan that the
      next fast epochs grew back, two dozen times in one run, the lr bouncing with each re-plan)
      (their steps, validation and checkpoint writes; scaled by the plan's `epoch_s(epoch)`
      where epochs differ, e.g. frozen and unfrozen). When they no longer all fit, the run
      is re-planned to the epochs that do: `max_epochs` shrinks, the lr schedule is
      re-planned to end there (`schedule.replan`, so the lr still reaches its floor), and
      `on_replan(trainer, epochs, why)` records it. When not even the next one fits, it
      stops there. A cut run, while epochs of its plan remain (its schedule still running, so
      re-planning stretches it), grows back towards `asked` (the epochs the config asked for
      before the plan cut them; else those this session started with) when the slower of its
      last two epochs (never fewer than `GROW_AFTER` measured) says more fit with 10% to spare
      (`GROW_MARGIN`): a first epoch slowed by one-off costs, such as a cold
      start, once cut a 60-epoch plan to 52 that later epochs ran in half the time, and a
      plan's probe that estimated 47 s an epoch where they then took 35-40 s fitted 4 of 12
      epochs in a 261-s budget and left over 80 s of it unused;
    - inside an epoch (an estimate that was wrong), stops at the first step from which the
      rest of the epoch (its remaining steps at the recent pace, its validation and saves)
      cannot end inside the budget, or that leaves just the time to write last.ckpt. That
      epoch is not validated (see `LastCheckpoint`); its last step is never cut, since a
      finished epoch is worth its validation.
    Its state key stays "Timer", so runs saved before keep their spent time on resume.
    """

    def __init__(
        self,
        budget_s: float | None,
        spent_s: float = 0.0,
        epoch_s: Callable[[int], float] | None = None,
        save_s: float = 0.0,
        val_s: float = 0.0,
        scheduler: Any = None,
        on_replan: Callable[["L.Trainer", int, str], None] | None = None,
        asked: int | None = None,
    ) -> None:
        super().__init__(timedelta(seconds=budget_s) if budget_s else None, interval="step")
        self._offset = spent_s
        self.epoch_s = epoch_s
        self.scheduler = scheduler  # the run's SchedulerConfig, to re-plan the lr schedule
        self.on_replan = on_replan
        self.save_s = save_s  # one checkpoint write: the estimate, then the slowest measured
        self.val_s = val_s  # one validation: the estimate, then the last measured
        self.cycles: list[float] = []  # seconds of each epoch of this session: steps, validation, best.ckpt
        self.stopped: str | None = None  # why this budget stopped training (also printed)
        self._epoch_t0: float | None = None
        self._ended_at: float | None = None
        self._batch_t: float | None = None
        self._batch_s: list[float] = []  # recent step durations (the epoch's first one left out)
        self._first = True
        self.asked = asked  # the epochs asked before the plan or any re-plan: a cut run may grow back to them
        self._setup_t: float | None = None

    @property
    def state_key(self) -> str:
        return "Timer"

    def _start_epoch(self) -> None:
        self._epoch_t0 = self._batch_t = time.monotonic()
        self._batch_s = []
        self._first = True

    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._setup_t = time.monotonic()

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_train_start(trainer, pl_module)
        if self._setup_t is not None:  # what ran before the first step (a probe head's fit, a restore) is spent too
            self._offset += time.monotonic() - self._setup_t
        self._start_epoch()  # a session resumed mid-epoch gets no epoch start
        self.asked = max(self.asked or 0, int(trainer.max_epochs or 0))

    def on_train_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._ended_at is not None:  # what ran after the last epoch's end hook: writing last.ckpt
            self.save_s = max(self.save_s, time.monotonic() - self._ended_at)
        self._start_epoch()

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self.val_s = self.time_elapsed("validate")

    def _request(self, trainer: "L.Trainer", stop: bool, why: str) -> None:
        stop = bool(trainer.strategy.broadcast(stop))
        if stop and not trainer.should_stop:
            self.stopped = why
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(f"time budget: {why}", flush=True)

    def on_train_batch_end(self, trainer: "L.Trainer", *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        if self._batch_t is not None and not self._first:
            self._batch_s = (self._batch_s + [now - self._batch_t])[-20:]
        self._batch_t, self._first = now, False
        if self._duration is None or epoch_complete(trainer):
            return
        left = self._duration - self.time_elapsed()
        rest = self.save_s
        if self._batch_s:
            pace = sorted(self._batch_s)[len(self._batch_s) // 2]
            todo = trainer.num_training_batches - trainer.fit_loop.epoch_loop.batch_progress.current.ready
            rest = todo * pace + self.val_s + 2 * self.save_s
        why = (f"stopping inside epoch {trainer.current_epoch + 1} at step {trainer.global_step}: its rest (~{rest:.0f} s with "
               f"validation and saving) cannot end in the {max(0.0, left):.0f} s left; last.ckpt is saved here and "
               "the unfinished epoch is not validated")
        self._request(trainer, left <= max(rest, self.save_s), why)

    def _cost(self, epoch: int, measured: int, last: float) -> float:
        """Seconds epoch `epoch` should take, from `last`, what epoch `measured` took with its saves."""
        if self.epoch_s is None:
            return last
        return last * self.epoch_s(epoch) / max(1e-9, self.epoch_s(measured))

    def _fit(self, done: int, until: int, left: float, last: float, margin: float = BUDGET_MARGIN) -> int:
        """How many of epochs done..until-1 fit in `left` seconds, each costing as `last` says."""
        fit, total = 0, 0.0
        for epoch in range(done, until):
            total += self._cost(epoch, done - 1, last) * margin
            if total > left:
                break
            fit += 1
        return fit

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._epoch_t0 is None or not epoch_complete(trainer):
            return
        now = time.monotonic()
        self.cycles.append(now - self._epoch_t0)
        self._ended_at = now
        done, planned = trainer.current_epoch + 1, int(trainer.max_epochs or 0)
        if self._duration is None or done >= planned:  # a finished plan's schedule is at its floor: it stays finished
            return
        left = self._duration - self.time_elapsed() - self.save_s  # after this epoch's last.ckpt
        # the median of the last three, each as the last epoch's kind (frozen or not): one slow
        # epoch on a shared CPU cuts nothing
        recent = sorted(self._cost(done - 1, done - 1 - k, c) for k, c in enumerate(reversed(self.cycles[-3:])))
        last = recent[len(recent) // 2] + self.save_s
        fit = int(trainer.strategy.broadcast(self._fit(done, planned, left, last)))  # rank 0's measurements decide for all
        if fit >= planned - done:  # all that is planned fits: grow back towards what was asked?
            asked = max(self.asked or planned, planned)
            slower = max(self.cycles[-2:]) + self.save_s
            grow = planned < asked and len(self.cycles) >= GROW_AFTER
            more = int(trainer.strategy.broadcast(self._fit(done, asked, left, slower, GROW_MARGIN) if grow else 0))
            if done + more > planned:
                why = (f"epochs take ~{slower:.1f} s now, so {more} more fit in the {left:.0f} s left: the run "
                       f"grows back to end at epoch {done + more} (this session started with {asked})")
                self._set_epochs(trainer, done + more, why)
            return
        if fit == 0:
            need = self._cost(done, done - 1, last) * BUDGET_MARGIN
            over = f" ({-left:.0f} s over, this epoch's last.ckpt counted)" if left <= -0.5 else ""
            why = (f"stopping after epoch {done}: the time budget is spent{over}" if left < 0.5 else
                   f"stopping after epoch {done}: epoch {done + 1} (~{need:.0f} s with validation and saving) would not fit in the {left:.0f} s left")
            self._request(trainer, True, why)
            return
        why = (f"epochs take ~{last:.1f} s here, so only {fit} more of the {planned - done} planned fit "
               f"in the {left:.0f} s left: the run now ends at epoch {done + fit}")
        self._set_epochs(trainer, done + fit, why)

    def _set_epochs(self, trainer: "L.Trainer", epochs: int, why: str) -> None:
        """Re-plan the run to end at `epochs`: the lr schedule too, printed and recorded."""
        trainer.fit_loop.max_epochs = epochs
        if self.scheduler is not None:
            from vislab.schedule import replan

            line = replan(trainer, self.scheduler)
            why += f"; {line.removeprefix('schedule re-planned: ')}" if line else ""
        if trainer.is_global_zero:
            print(f"time budget: {why}", flush=True)
        if self.on_replan is not None:
            self.on_replan(trainer, epochs, why)


def _lr_of(trainer: "L.Trainer", name: str = "head") -> float | None:
    if not trainer.optimizers:
        return None
    groups = trainer.optimizers[0].param_groups
    for g in groups:
        if str(g.get("name", "")).startswith(name):
            return float(g["lr"])
    return float(groups[-1]["lr"])


class _LrLog:
    """The learning rates of an epoch's steps (head and backbone): their mean, first and last."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        st = state or {}
        self.sums: dict[str, float] = dict(st.get("sums", {}))
        self.count = int(st.get("count", 0))
        self.first: float | None = st.get("first")
        self.last: float | None = st.get("last")

    def add(self, head: float | None, backbone: float | None) -> None:
        if head is None:
            return
        self.count += 1
        for name, lr in (("head", head), ("backbone", backbone if backbone is not None else head)):
            self.sums[name] = self.sums.get(name, 0.0) + lr
        self.first = head if self.first is None else self.first
        self.last = head

    def mean(self, name: str = "head") -> float | None:
        return self.sums[name] / self.count if self.count and name in self.sums else None

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count, "first": self.first, "last": self.last}


def say(trainer: "L.Trainer", line: str) -> None:
    """Print a line on rank 0 through the progress bar when there is one, so the bar stays whole."""
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    if bar is not None and bar.is_enabled:
        bar.print(line)
    else:
        print(line, flush=True)


def _scalar(v: Any) -> float | None:
    try:
        return float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        return None


class RunRecorder(Callback):
    """Writes metrics.csv and prints a line each full epoch, and summary.json when training
    ends (or fails). The task says which metrics lead metrics.csv and the epoch line, and
    how they read."""

    def __init__(self, run_dir: str | Path, summary_base: dict[str, Any], monitor: str, mode: str, task: "Task") -> None:
        self.run_dir = Path(run_dir)
        self.summary_base = dict(summary_base)
        self.monitor = monitor
        self.mode = mode
        self.task = task
        self.columns = metric_columns(task.metric_columns)
        self._resume_epoch: int | None = None
        self._resume_partial: dict[str, Any] | None = None
        self._t0 = self._val_s = 0.0
        self._v0: float | None = None
        self._images = 0
        self._lrs = _LrLog()

    @property
    def metrics_path(self) -> Path:
        return run_paths(self.run_dir).metrics

    # ---- resume: the epoch the next session starts with --------------------------------
    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return {}
        epoch = max(0, trainer.fit_loop.epoch_progress.current.started - 1)
        if epoch_complete(trainer):
            return {"next_epoch": epoch + 1}
        # mid-epoch: what the epoch's row needs from before the interruption
        return {
            "next_epoch": epoch,
            "elapsed_s": time.monotonic() - self._t0,
            "val_s": self._val_s,
            "images": self._images,
            "lrs": self._lrs.state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_epoch = state_dict.get("next_epoch")
        self._resume_partial = state_dict if "elapsed_s" in state_dict else None

    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._trainer = trainer

    def read_rows(self) -> pd.DataFrame:
        rows = read_metrics(self.metrics_path)
        return pd.DataFrame(columns=self.columns) if rows is None else rows

    def _write_rows(self, rows: pd.DataFrame) -> None:
        cols = self.columns + sorted(c for c in rows.columns if c not in self.columns)
        atomic_write_text(self.metrics_path, rows.reindex(columns=cols).to_csv(index=False, lineterminator="\n"))

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # a session resumed mid-epoch gets no on_train_epoch_start for that epoch
        self._start_epoch_clock(trainer)
        part = self._resume_partial
        if part is not None:
            self._t0 -= float(part["elapsed_s"])
            self._val_s, self._images = float(part["val_s"]), int(part["images"])
            self._lrs = _LrLog(part.get("lrs"))
            self._resume_partial = None
        if not trainer.is_global_zero:
            return
        keep_below = self._resume_epoch if self._resume_epoch is not None else trainer.current_epoch
        rows = self.read_rows()
        if len(rows) and (rows["epoch"] >= keep_below).any():
            self._write_rows(rows[rows["epoch"] < keep_below])

    # ---- per epoch ------------------------------------------------------------------------
    def _start_epoch_clock(self, trainer: "L.Trainer") -> None:
        self._t0, self._val_s, self._images = time.monotonic(), 0.0, 0
        self._lrs = _LrLog()

    def on_train_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._start_epoch_clock(trainer)

    def on_train_batch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: Any, batch_idx: int) -> None:
        # Lightning steps a per-step schedule before on_train_batch_end: the lr this step uses is read now
        self._lrs.add(_lr_of(trainer, "head"), _lr_of(trainer, "backbone"))

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        self._images += int(batch[0].shape[0]) * trainer.world_size

    def on_validation_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._v0 = time.monotonic()

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._v0 is not None:
            self._val_s += time.monotonic() - self._v0
            self._v0 = None

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not epoch_complete(trainer):
            return  # stopped mid-way: the resumed session writes this epoch's row
        wall = time.monotonic() - self._t0
        train_s = max(1e-9, wall - self._val_s)
        m = trainer.callback_metrics
        row: dict[str, Any] = {
            "epoch": int(trainer.current_epoch),
            **{key: _scalar(m.get(key)) for key in self.task.metric_columns},
            "lr": self._lrs.mean(),
            "epoch_time_s": round(wall, 3),
            "train_images_per_s": round(self._images / train_s, 1),
            "lr/first": self._lrs.first,
            "lr/last": self._lrs.last,
        }
        backbone = self._lrs.mean("backbone")
        if backbone is not None and backbone != row["lr"]:
            row["lr/backbone"] = backbone
        for key, value in m.items():
            if key not in row and key.startswith(("train/", "val/")) and not key.endswith("_step"):
                row[key] = _scalar(value)
        if not trainer.is_global_zero:
            return
        rows = self.read_rows()
        rows = rows[rows["epoch"] != row["epoch"]] if len(rows) else rows
        new = pd.DataFrame([row])
        self._write_rows(new if rows.empty else pd.concat([rows, new], ignore_index=True))
        say(trainer, _epoch_line(row, trainer.max_epochs, self.task))

    # ---- the end --------------------------------------------------------------------------
    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.write_summary(trainer, pl_module, stop_reason(trainer))

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from vislab.health import NonFiniteLossError

        if isinstance(exception, NonFiniteLossError):
            reason = "nan"
        elif isinstance(exception, KeyboardInterrupt):
            reason = "interrupted"
        elif isinstance(exception, SIGTERMException):  # Lightning's own SIGTERM path
            reason = "sigterm"
        else:
            reason = "error"
        self.write_summary(trainer, pl_module, reason)

    def write_summary(self, trainer: "L.Trainer", pl_module: "L.LightningModule", reason: str) -> dict[str, Any]:
        from vislab.models.backbones import count_parameters

        summary = self._summary_of_rows(reason, int(trainer.max_epochs or 0))
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        summary.update(
            {
                "wall_time_s": round(float(timer.time_elapsed("train")), 2) if timer else None,
                "params": count_parameters(pl_module.model),
            }
        )
        cfg = getattr(pl_module, "cfg", None)
        if cfg is not None and cfg.train.freeze_backbone_epochs > 0:
            from vislab.models.backbones import split_parameters

            backbone, head = split_parameters(pl_module.model)
            n_backbone, n_head = (sum(p.numel() for _, p in part) for part in (backbone, head))
            summary["params_while_frozen"] = {"trainable": n_head, "frozen": n_backbone, "total": n_head + n_backbone}
        if trainer.is_global_zero:
            write_json(run_paths(self.run_dir).summary, summary)
        return summary

    def write_unsaved_stop(self, reason: str, epochs_planned: int) -> None:
        """summary.json of a session ended where no end hook runs (the blocked-signal watchdog,
        from its thread, while the main thread waits in C code): what metrics.csv holds and why
        it stopped, over the previous session's figures (a resumed run's "running" included), so
        the run never reads as running, or as a run with no record of how it ended."""
        path = run_paths(self.run_dir).summary
        previous = read_json(path) if path.is_file() else {}
        write_json(path, {**previous, **self._summary_of_rows(reason, epochs_planned)})

    def _summary_of_rows(self, reason: str, epochs_planned: int) -> dict[str, Any]:
        """summary.json's fields that metrics.csv gives (best epoch and its val/ metrics, epochs
        completed, speed), with the run's own (`summary_base`) and why training stopped."""
        rows = self.read_rows()
        best_epoch, best_val = None, {}
        if len(rows) and self.monitor in rows.columns and rows[self.monitor].notna().any():
            col = rows[self.monitor]
            idx = col.idxmax() if self.mode == "max" else col.idxmin()
            best_epoch = int(rows.loc[idx, "epoch"])
            best_val = {k: _scalar(rows.loc[idx, k]) for k in rows.columns if k.startswith("val/")}
        ips = rows["train_images_per_s"].dropna() if len(rows) else pd.Series(dtype=float)
        return {
            **self.summary_base,
            "best_epoch": best_epoch,
            "best_val": best_val,
            "monitor": self.monitor,
            "epochs_completed": int(len(rows)),
            "epochs_planned": epochs_planned,
            "stopped_reason": reason,
            "train_images_per_s": round(float(ips.mean()), 1) if len(ips) else None,
        }


def stop_reason(trainer: "L.Trainer") -> str:
    """Why fit() returned: a signal, the time budget, early stopping, all epochs, or something else."""
    from vislab.interrupts import GracefulStop

    # Lightning counts a cut epoch as run: only an epoch that reached its last batch finishes the run
    whole = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    done = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs and whole
    stopper = next((c for c in trainer.callbacks if isinstance(c, GracefulStop)), None)
    if stopper is not None and stopper.reason is not None and not done:
        return stopper.reason
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is not None and (getattr(timer, "stopped", None) or (timer._duration is not None and timer.time_remaining("train") <= 0)):
        return "max_time"
    if any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in trainer.callbacks):
        return "early_stopping"
    if done:
        return "completed"
    if trainer.max_steps and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return "completed"
    return "stopped"


def _epoch_line(row: dict[str, Any], max_epochs: int | None, task: "Task") -> str:
    """Keras' and Ultralytics' per-epoch results line, epochs counted from 1: the task's
    train/ and val/ metrics in its column order (`epoch 3/10: train loss 0.4123 acc 88.0% |
    val loss ... | lr 0.001 | 2.1s, 812 img/s`)."""
    parts = []
    for phase in ("train", "val"):
        keys = [k for k in task.metric_columns if k.startswith(phase + "/")]
        parts.append(phase + " " + " ".join(f"{k.split('/', 1)[1]} {task.format_metric(k, row.get(k))}" for k in keys))
    lr = "-" if row["lr"] is None else f"{row['lr']:.3g}"
    return (
        f"epoch {row['epoch'] + 1}/{max_epochs}: {' | '.join(parts)} | lr {lr}"
        f" | {row['epoch_time_s']:.1f}s, {format_rate(row['train_images_per_s'])} img/s"
    )


class _ImagesPerSecond:
    """A smoothed images/s meter fed by training batches."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._t: float | None = None

    def update(self, n: int) -> None:
        now = time.monotonic()
        if self._t is not None and now > self._t:
            r = n / (now - self._t)
            self.rate = r if self.rate is None else 0.9 * self.rate + 0.1 * r
        self._t = now

    def reset(self) -> None:
        self._t = None


class _ThroughputMixin:
    """Adds images/s (all ranks) to one of Lightning's progress bars."""

    def __init__(self) -> None:
        super().__init__()
        self.meter = _ImagesPerSecond()

    def on_train_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.meter.reset()
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        self.meter.update(int(batch[0].shape[0]) * trainer.world_size)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict[str, Any]:
        m = super().get_metrics(trainer, pl_module)
        m.pop("v_num", None)
        if self.meter.rate is not None:
            m["img/s"] = f"{self.meter.rate:.0f}"
        return m


class RichThroughputBar(_ThroughputMixin, RichProgressBar):
    """Lightning's rich progress bar plus images/s, epochs counted from 1 as everywhere else."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs is not None else "")
        return f"{text:{len(self.validation_description)}}"  # as wide as "Validation": no flicker


class TQDMThroughputBar(_ThroughputMixin, TQDMProgressBar):
    """Lightning's tqdm progress bar plus images/s, epochs counted from 1 as everywhere else."""

    def on_train_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # Lightning's own hook, but with the epoch counted from 1 (it would draw "Epoch 0" first)
        from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

        self.meter.reset()
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.reset()
        bar.total, bar.initial = convert_inf(self.total_train_batches), 0
        total = f"/{trainer.max_epochs}" if trainer.max_epochs is not None else ""
        bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")
