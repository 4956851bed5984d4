"""Learning-rate schedules: planned over the optimizer steps of the epochs a run trains, and
re-planned when a resumed run is given another number of epochs.

`configure` builds Lightning's scheduler config for `scheduler.name`:
- `onecycle`: torch's OneCycleLR over the run's steps (lr and momentum cycle);
- `cosine`, `linear`, `exponential`: LambdaLR with a `StepFactor` (linear warm-up, then cosine
  or linear decay to `min_lr`, or exponential decay per epoch);
- `plateau`: ReduceLROnPlateau on `scheduler.monitor` each epoch; `none`: a constant lr.

Both step schedules keep their plan in their checkpointed state (OneCycleLR its own counters,
LambdaLR the `StepFactor`, a callable object for that reason), so a resumed run continues
the plan it was on. When a resume changes the run's length (`--resume --epochs N`),
`Replan` re-plans before the session's first step and says so in one line:

- a schedule that had reached its end (the run finished its epochs) gets a new cycle over
  the added epochs: one-cycle's rise (or the warm-up) again from the configured peak, then
  the decay to the floor at the new last epoch, as fastai's `fit_one_cycle` on a trained
  learner does. Holding the final lr (1e-8 for a one-cycle) would train nothing;
- a schedule stopped before its end (time budget, Ctrl-C, early stopping) is stretched so
  it ends at the new last epoch: the lr is what it would have been had the run been
  planned for N epochs from the start;
- exponential decay still running (a time budget's re-plan) keeps its planned final lr:
  its gamma is re-set so the epochs left decay from today's lr to that floor; exponential
  decay that has run its epochs, and plateau, have no end to move: they continue as they were.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau

if TYPE_CHECKING:
    import lightning as L

    from vislab.config import RunConfig, SchedulerConfig

NAMES = {"onecycle": "one-cycle", "cosine": "cosine", "linear": "linear", "exponential": "exponential", "plateau": "plateau"}


class StepFactor:
    """The lr factor of step `step` of a cycle of `total` steps starting at step `start`:
    linear warm-up over `warmup` steps, then cosine or linear decay to `floor`, or
    exponential decay by `gamma` per epoch of `per_epoch` steps (down to `floor`), from
    `anchor_factor` at decay epoch `anchor_epoch` (1 at 0; a re-plan moves them, so the lr
    does not jump when gamma changes)."""

    def __init__(self, name: str, warmup: int, start: int, total: int, per_epoch: int, gamma: float, floor: float) -> None:
        self.name = name
        self.warmup = int(warmup)
        self.start = int(start)
        self.total = int(total)
        self.per_epoch = int(per_epoch)
        self.gamma = float(gamma)
        self.floor = float(floor)
        self.anchor_epoch = 0
        self.anchor_factor = 1.0
        self.decay: float | None = None  # gamma ** epochs of the first plan, kept by re-plans

    def __call__(self, step: int) -> float:
        s = step - self.start
        if s < self.warmup:
            return (s + 1) / (self.warmup + 1)
        t = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        if self.name == "cosine":
            return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))
        if self.name == "linear":
            return self.floor + (1 - self.floor) * (1 - t)
        epoch = (s - self.warmup) // max(1, self.per_epoch)
        return max(self.floor, self.anchor_factor * self.gamma ** (epoch - self.anchor_epoch))

    def regamma(self, step: int, end: int) -> None:
        """Exponential decay re-planned at `step` to end at step `end`: from today's factor to
        the final one a plan of that many epochs gets (the plan spreads the run's whole decay,
        gamma ** epochs, over the epochs it keeps, as `vislab.plan` scales gamma)."""
        per = max(1, self.per_epoch)
        if self.decay is None:  # the whole run's decay, as first planned
            self.decay = self.gamma ** ((self.total - self.warmup) / per)
        epochs = max(1.0, (end - self.start - self.warmup) / per)
        now = (step - self.start - self.warmup) // per
        last = math.ceil(epochs) - 1
        here = self.anchor_factor * self.gamma ** (now - self.anchor_epoch)
        target = self.decay ** ((epochs - 1) / epochs)
        if last > now and here > 0 and target > 0:
            self.gamma = min(1.0, (target / here) ** (1 / (last - now)))
        self.anchor_epoch, self.anchor_factor = now, here
        self.total = end - self.start


def steps_per_epoch(trainer: "L.Trainer") -> int:
    """Optimizer steps per epoch of this trainer's run (the datamodule counts them without a loader)."""
    dm = trainer.datamodule
    if dm is not None and hasattr(dm, "steps_per_epoch"):
        return dm.steps_per_epoch(trainer.world_size, trainer.accumulate_grad_batches, trainer.limit_train_batches)
    return max(1, int(trainer.estimated_stepping_batches // max(1, trainer.max_epochs or 1)))


def one_cycle(opt: torch.optim.Optimizer, s: "SchedulerConfig", total: int, last_epoch: int = -1) -> OneCycleLR:
    """torch's OneCycleLR peaking at each group's lr (its `max_lr` once a cycle has set it)."""
    peaks = [g.get("max_lr", g["lr"]) for g in opt.param_groups]
    return OneCycleLR(opt, max_lr=peaks, total_steps=max(1, total), pct_start=s.pct_start, last_epoch=last_epoch)


def configure(opt: torch.optim.Optimizer, cfg: "RunConfig", per_epoch: int, epochs: int) -> Any:
    """What `configure_optimizers` returns for `cfg.scheduler` over `epochs` epochs of `per_epoch` steps."""
    o, s = cfg.optim, cfg.scheduler
    if s.name == "none":
        return opt
    if s.name == "plateau":
        mode = "min" if "loss" in s.monitor else "max"
        sched: Any = ReduceLROnPlateau(opt, mode=mode, factor=s.factor, patience=s.patience, min_lr=s.min_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": s.monitor, "interval": "epoch"}}
    total = max(1, per_epoch * epochs)
    if s.name == "onecycle":
        sched = one_cycle(opt, s, total)
    else:
        warm = int(round(s.warmup_epochs * per_epoch))
        sched = LambdaLR(opt, StepFactor(s.name, warm, 0, total, per_epoch, s.gamma, s.min_lr / o.lr))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def cycle_of(sched: Any, step: int) -> tuple[int, int] | None:
    """(first step, end step) of the cycle a step schedule is on at global step `step`; None
    for schedules without an end (exponential, plateau, constant)."""
    if isinstance(sched, OneCycleLR):
        start = step - int(sched.last_epoch)
        return start, start + int(sched.total_steps)
    if isinstance(sched, LambdaLR):
        f = sched.lr_lambdas[0]
        if isinstance(f, StepFactor) and f.name in ("cosine", "linear", "exponential"):
            return f.start, f.start + f.total
    return None


def replan(trainer: "L.Trainer", s: "SchedulerConfig", previous_epochs: int | None = None) -> str | None:
    """Fit the running schedule to the trainer's epochs (see the module doc); returns the line
    that says what changed, or None when nothing did. `previous_epochs`: the run's epochs
    before this session changed them (None when they did not)."""
    if not trainer.lr_scheduler_configs or s.name == "none":
        return None
    config = trainer.lr_scheduler_configs[0]
    sched = config.scheduler
    step, per_epoch, epochs = int(trainer.global_step), steps_per_epoch(trainer), int(trainer.max_epochs or 1)
    end = per_epoch * epochs
    name = NAMES.get(s.name, s.name)
    cycle = cycle_of(sched, step)
    if cycle is not None and s.name == "exponential" and step >= cycle[1]:
        cycle = None  # decay that ran its epochs has no end to move
    if cycle is None:
        if previous_epochs is not None and previous_epochs != epochs:
            return f"schedule: {name} has no end to re-plan; it continues over {_epochs(step // per_epoch + 1, epochs)} (lr {_head_lr(trainer):.3g} now)"
        return None
    start, old_end = cycle
    if old_end == end:
        return None
    first, last = step // per_epoch + 1, epochs
    if step >= old_end:  # the cycle is over: a new one over the added epochs
        verb = "gets" if first == last else "get"
        start, what = step, f"the run had finished its {name} schedule, so {_epochs(first, last)} {verb} a new cycle"
    else:
        was = f"{old_end / per_epoch:g}"
        what = f"the {name} schedule, still running, now ends at epoch {last} instead of {was}"
    total = end - start
    if isinstance(sched, OneCycleLR):
        config.scheduler = one_cycle(sched.optimizer, s, total, last_epoch=step - start - 1)
    else:
        f = sched.lr_lambdas[0]
        if s.name == "exponential":
            f.regamma(step, end)
            what += f", gamma {f.gamma:.4g} an epoch"
        else:
            f.start, f.total = start, total
            if start == step:  # a new cycle warms up again, within its first half at most
                f.warmup = min(f.warmup, total // 2)
        for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
            group["lr"] = base * f(step)
    peak = max(g.get("max_lr", 0.0) for g in config.scheduler.optimizer.param_groups) if isinstance(config.scheduler, OneCycleLR) else None
    peak_txt = f", peak lr {peak:.3g}" if peak else ""
    return f"schedule re-planned: {what} (lr {_head_lr(trainer):.3g} now{peak_txt})"


def _epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def _head_lr(trainer: "L.Trainer") -> float:
    groups = trainer.optimizers[0].param_groups
    head = next((g for g in groups if str(g.get("name", "")).startswith("head")), groups[-1])
    return float(head["lr"])


class Replan(Callback):
    """Re-plans the schedule at the start of a resumed session whose epochs changed (see `replan`)."""

    def __init__(self, s: "SchedulerConfig", previous_epochs: int | None = None) -> None:
        self.s = s
        self.previous_epochs = previous_epochs
        self.message: str | None = None

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.message = replan(trainer, self.s, self.previous_epochs)
        if self.message and trainer.is_global_zero:
            print(self.message, flush=True)
