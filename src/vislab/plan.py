"""Fitting a run to its time budget: measure a few real training steps, then plan the epochs
that fit, so the schedule ends (and the backbone unfreezes) inside the budget.

`probe` times the config's own training step on batches from its own data loader (decoding
and augmentation compete for the cores as they do in training), the fastest of a few steps
(noise on a shared machine only ever adds time), with the backbone frozen too when the run
starts frozen; then a few validation batches and a checkpoint write. `fit_plan` turns that
into epochs: `train.epochs` (or `--epochs`) is the most a budget may train; when fewer fit,
the run trains the epochs that fit and everything counted in epochs shrinks with them
(`train.freeze_backbone_epochs`, at least one frozen and one unfrozen epoch when two fit;
`scheduler.warmup_epochs`; an exponential `scheduler.gamma`, so the lr still decays as far),
while one-cycle, cosine and linear schedules are planned over the epochs that will run and so
reach their floor at the end of the budget. Stages fixed for speed (`train.freeze_stages`)
are timed both ways and stay fixed only when the epochs asked do not fit without them. The
plan is one printed line and a `plan` entry in run.json and summary.json; config.yaml holds
the values the run trained with.

The budget counts this probe and everything from the first training step to the last
checkpoint, validation and saving included (`callbacks.TimeBudget` keeps the run inside it).
"""

from __future__ import annotations

import io
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vislab.config import duration_text
from vislab.errors import VislabError

if TYPE_CHECKING:
    import lightning as L
    import torch

    from vislab.config import RunConfig

# a plan uses this share of the budget less than the measured costs allow: the fastest-step
# estimate is optimistic, and an epoch the budget cuts is an epoch lost to the result
PLAN_MARGIN = 1.1
PROBE_STEPS = 5
PROBE_SHARE = 0.05  # of the budget, after which the probe takes no more steps than it must


def device_for(accelerator: str) -> "torch.device":
    """The device a run with `train.accelerator` trains on (the first one)."""
    import torch

    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if gpu else "cpu")


@dataclass(frozen=True)
class Probe:
    """Measured costs of one run's epoch (seconds)."""

    step_s: float  # fastest training step, backbone trainable
    frozen_step_s: float | None  # fastest training step with the backbone frozen (when the run starts frozen)
    train_start_s: float  # extra cost of an epoch's first step (loader workers starting), when it recurs
    val_batch_s: float  # fastest validation batch, loading included
    val_start_s: float
    save_s: float  # one checkpoint written (model + optimizer state)
    batch: int
    eval_batch: int
    train_batches: int  # per epoch and device
    val_batches: int
    probe_s: float  # wall time of the measurements (building the model not included)
    fixed_step_s: float | None = None  # fastest training step with train.freeze_stages fixed (when it asks for some)

    def val_s(self) -> float:
        """One validation of the whole validation set."""
        return self.val_batches * self.val_batch_s + self.val_start_s

    def epoch_s(self, frozen: bool = False, fixed: bool = False) -> float:
        """One epoch: its training steps, validation and two checkpoint writes (best + last);
        `fixed`: with the stages of `train.freeze_stages` fixed."""
        step = self.fixed_step_s if fixed and self.fixed_step_s is not None else self.step_s
        if frozen and self.frozen_step_s is not None:
            step = self.frozen_step_s
        return self.train_batches * step + self.train_start_s + self.val_s() + 2 * self.save_s

    def to_dict(self) -> dict[str, Any]:
        out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["epoch_s"] = round(self.epoch_s(), 2)
        if self.frozen_step_s is not None:
            out["epoch_s_frozen"] = round(self.epoch_s(True), 2)
        if self.fixed_step_s is not None:
            out["epoch_s_fixed"] = round(self.epoch_s(fixed=True), 2)
        return out


def _world(cfg: "RunConfig") -> int:
    """Processes the run trains in: devices x nodes under DDP, else 1."""
    import torch

    t = cfg.train
    if not str(t.strategy).startswith("ddp"):
        return 1
    if isinstance(t.devices, int) and t.devices > 0:
        n = t.devices
    elif isinstance(t.devices, list):
        n = len(t.devices)
    else:
        n = max(1, torch.cuda.device_count()) if device_for(t.accelerator).type == "cuda" else 1
    return n * t.num_nodes


def _limit(n: int, limit: int | float | None) -> int:
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(n, limit)
    if isinstance(limit, float):
        return max(1, int(n * limit))
    return n


class _Batches:
    """Batches from a loader, endlessly (a new pass when one ends, its start timed with the batch)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.it = iter(loader)

    def next(self) -> Any:
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


def _timed_batches(batches: _Batches, n: int, step: Any, device: "torch.device", until: float | None = None) -> list[float]:
    """Seconds of `n` batches each fetched from `batches` and run through `step`; past the
    `until` deadline (perf_counter) two are enough."""
    import torch

    times: list[float] = []
    while len(times) < n and not (until is not None and len(times) >= min(2, n) and time.perf_counter() > until):
        start = time.perf_counter()
        batch = batches.next()
        step(tuple(b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def probe(
    task: "L.LightningModule",
    dm: Any,
    cfg: "RunConfig",
    steps: int = PROBE_STEPS,
    scratch: str | Path | None = None,
    budget_s: float | None = None,
) -> Probe:
    """Time `steps` training steps (after one that starts the loader; as many again with the
    backbone frozen when the run starts frozen, and with `cfg.train.freeze_stages` fixed when
    it asks for some: build `task` without them), a validation batch or two and a checkpoint
    write of `task` (built for the probe alone: its weights change) on `dm`'s loaders. With a
    `budget_s`, the probe takes fewer steps (two a phase at least) once it has used
    `PROBE_SHARE` of it. `scratch`: a folder to time the write to disk in (else only
    serialising counts)."""
    import contextlib

    import torch

    from vislab.optim import build_optimizer
    from vislab.tricks import resolve_precision

    t0 = time.perf_counter()
    until = t0 + PROBE_SHARE * budget_s if budget_s else None
    t = cfg.train
    device = device_for(t.accelerator)
    precision = resolve_precision(t.precision, t.accelerator)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    task = task.to(device)
    if t.channels_last:
        task.model.to(memory_format=torch.channels_last)
    opt = build_optimizer(task.model, cfg.optim)

    # the task's own steps (loss, metrics; its logging is off without a Trainer)
    def train_step(batch: tuple[Any, ...]) -> None:
        with autocast():
            loss = task.training_step(task.on_after_batch_transfer(batch, 0), 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def val_step(batch: tuple[Any, ...]) -> None:
        with torch.inference_mode(), autocast():
            task.validation_step(task.on_after_batch_transfer(batch, 0), 0)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*self\.log\(\)` but the `self\.trainer` reference is not registered.*")
        return _probe(task, dm, cfg, steps, scratch, until, t0, device, opt, train_step, val_step)


def _probe(
    task: Any, dm: Any, cfg: "RunConfig", steps: int, scratch: str | Path | None, until: float | None, t0: float,
    device: Any, opt: Any, train_step: Any, val_step: Any,
) -> Probe:
    """`probe` once its steps are set up (`train_step` steps `opt`)."""
    import torch

    from vislab.models import backbones

    t, d = cfg.train, cfg.data
    recurring = bool(d.num_workers) and not d.persistent_workers  # workers restart every epoch
    task.train()
    batches = _Batches(dm.train_dataloader())
    first = None  # the first step: it also starts the loader
    frozen_step = None
    if t.freeze_backbone_epochs > 0 and backbones.split_parameters(task.model)[0]:
        backbones.set_backbone_frozen(task.model, True)
        backbones.apply_frozen_bn_eval(task.model)
        times = _timed_batches(batches, steps + 1, train_step, device, until)
        first, frozen_step = times[0], min(times[1:])
        backbones.set_backbone_frozen(task.model, False)
        task.train()
    times = _timed_batches(batches, steps + (first is None), train_step, device, until)
    if first is None:
        first, times = times[0], times[1:]
    step_s = min(times)
    fixed_step = None
    if t.freeze_stages > 0 and task.fixed_stages is None:
        backbones.fix_stages(task.model, t.freeze_stages, cfg.model.name)
        fixed_step = min(_timed_batches(batches, steps, train_step, device, until))
    del batches
    world = _world(cfg)
    eval_batch = d.eval_batch_size or d.batch_size
    val_loader = dm.val_dataloader()
    val_batches = _limit(math.ceil(math.ceil(len(val_loader.dataset) / world) / eval_batch), t.limit_val_batches)
    task.eval()  # one batch when that is all there is (then its loader's start counts, as it does each epoch)
    vtimes = _timed_batches(_Batches(val_loader), min(2, val_batches), val_step, device) if val_batches else [0.0]
    val_s = min(vtimes[1:] or vtimes)

    state = {"state_dict": task.state_dict(), "optimizer_states": [opt.state_dict()]}
    start = time.perf_counter()
    buf = io.BytesIO()
    torch.save(state, buf)
    if scratch is not None:
        import tempfile

        # a nameless file, created exclusively in the scratch folder: nothing there is replaced or followed
        with tempfile.TemporaryFile(dir=scratch) as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    save_s = time.perf_counter() - start

    return Probe(
        step_s=step_s,
        frozen_step_s=frozen_step,
        fixed_step_s=fixed_step,
        train_start_s=max(0.0, first - step_s) if recurring else 0.0,
        val_batch_s=val_s,
        val_start_s=max(0.0, vtimes[0] - val_s) if recurring and len(vtimes) > 1 else 0.0,
        save_s=save_s,
        batch=d.batch_size,
        eval_batch=eval_batch,
        train_batches=dm.steps_per_epoch(world, 1, t.limit_train_batches),
        val_batches=val_batches,
        probe_s=time.perf_counter() - t0,
    )


def frozen_epochs(freeze: int, epochs: int, asked: int) -> int:
    """`train.freeze_backbone_epochs` for `epochs` of the `asked` ones: scaled alike, with at
    least one frozen epoch (the new head's warm-up) and, when two epochs fit, one unfrozen."""
    if freeze <= 0:
        return 0
    if epochs >= asked:
        return min(freeze, epochs)
    if epochs < 2:
        return 1
    return max(1, min(int(freeze * epochs / asked + 0.5), epochs - 1))


def scale_plan(cfg: "RunConfig", epochs: int, release_stages: bool = False) -> tuple["RunConfig", dict[str, list[Any]]]:
    """`cfg` planned for `epochs` instead of `train.epochs`, and what changed ({key: [asked, planned]});
    `release_stages`: train the stages `train.freeze_stages` would fix (the epochs fit without)."""
    from vislab.config import build_config

    asked = cfg.train.epochs
    raw = cfg.model_dump(mode="json")
    changed: dict[str, list[Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        old = raw[section][key]
        if value != old:
            raw[section][key] = value
            changed[f"{section}.{key}"] = [old, value]

    put("train", "epochs", epochs)
    if release_stages:
        put("train", "freeze_stages", 0)
    if epochs < asked:
        r = epochs / asked
        if cfg.train.freeze_backbone_epochs > 0:
            put("train", "freeze_backbone_epochs", frozen_epochs(cfg.train.freeze_backbone_epochs, epochs, asked))
        s = cfg.scheduler
        if s.warmup_epochs > 0 and s.name in ("cosine", "linear", "exponential"):
            put("scheduler", "warmup_epochs", round(s.warmup_epochs * r, 4))
        if s.name == "exponential" and s.gamma < 1:
            put("scheduler", "gamma", float(f"{s.gamma ** (1 / r):.6g}"))
    return build_config(raw, "the time-budget plan"), changed


@dataclass
class Plan:
    """What a budget made of a run: the epochs asked and planned, what was scaled, the probe."""

    budget: str
    budget_s: float
    spent_s: float  # counted against the budget before training: the probe
    epochs_asked: int
    epochs: int
    changed: dict[str, list[Any]]
    probe: Probe

    @property
    def cut(self) -> bool:
        return self.epochs < self.epochs_asked

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "budget_s": self.budget_s,
            "spent_before_training_s": round(self.spent_s, 2),
            "epochs_asked": self.epochs_asked,
            "epochs": self.epochs,
            "changed": self.changed,
            "probe": self.probe.to_dict(),
        }

    def line(self, scheduler: str) -> str:
        """The one line `vislab train` prints."""
        p = self.probe
        released = "train.freeze_stages" in self.changed
        fixed = p.fixed_step_s is not None and not released
        cost = f"~{p.epoch_s(fixed=fixed):.1f} s an epoch"
        if p.frozen_step_s is not None:
            cost = f"~{p.epoch_s(True):.1f} s an epoch frozen, {p.epoch_s(fixed=fixed):.1f} s unfrozen"
        cost += " with validation and saving"
        if released:
            cost += f"; train.freeze_stages not needed, released ({p.epoch_s(fixed=True):.1f} s with it)"
        elif fixed:
            cost += f", train.freeze_stages fixing the first stages ({p.epoch_s():.1f} s without)"
        if not self.cut:
            return f"plan: the {self.epochs} epochs asked fit the {duration_text(self.budget, self.budget_s)} budget ({cost}; probe {self.spent_s:.1f} s)"
        parts = []
        names = {"train.freeze_backbone_epochs": "backbone frozen for {new} epoch(s) (was {old})",
                 "scheduler.warmup_epochs": "warm-up {new:g} epochs (was {old:g})",
                 "scheduler.gamma": "exponential gamma {new:g} (was {old:g})"}
        for key, text in names.items():
            if key in self.changed:
                old, new = self.changed[key]
                parts.append(text.format(old=old, new=new))
        if scheduler in ("onecycle", "cosine", "linear"):
            parts.append(f"{scheduler} schedule over {self.epochs} epoch(s)")
        rest = (": " + ", ".join(parts)) if parts else ""
        return (f"plan: the {duration_text(self.budget, self.budget_s)} budget fits {self.epochs} of the {self.epochs_asked} epochs asked "
                f"({cost}; probe {self.spent_s:.1f} s){rest}")


def _most_epochs(asked: int, room: float, cost: Callable[[int], float], epoch_s: float, frozen_s: float | None, freeze: int) -> int:
    """The most epochs up to `asked` (at least 1) whose `cost` fits `room` seconds, found without
    counting down from `asked` (train.epochs: 1000000 under --max-time means as many as fit).

    The frozen share of a cut run is freeze / asked rounded (at least one of each, see
    `frozen_epochs`), so cost(e) lies within one epoch's difference of e * the mean epoch:
    no e past (room + that difference) / mean fits, and counting down from there is short."""
    share = min(1.0, freeze / asked) if frozen_s is not None else 0.0
    mean = share * (frozen_s or 0.0) + (1 - share) * epoch_s
    slack = abs((frozen_s or epoch_s) - epoch_s)
    bound = (room + slack) / mean if mean > 0 else math.inf
    epochs = asked if bound >= asked else max(1, math.floor(bound))
    while epochs > 1 and cost(epochs) > room:
        epochs -= 1
    return epochs


def fit_plan(cfg: "RunConfig", budget: str, budget_s: float, probe_result: Probe, spent_s: float = 0.0) -> tuple["RunConfig", Plan]:
    """The most epochs (up to `train.epochs`) whose measured cost fits what is left of the
    budget, and `cfg` scaled to them. A budget that fits no whole epoch is an error."""
    asked = cfg.train.epochs
    left = budget_s - spent_s
    freeze = cfg.train.freeze_backbone_epochs

    def cost(e: int, fixed: bool = False) -> float:
        f = frozen_epochs(freeze, e, asked) if probe_result.frozen_step_s is not None else 0
        return f * probe_result.epoch_s(True) + (e - f) * probe_result.epoch_s(False, fixed)

    # stages fixed for speed stay fixed only when the epochs asked do not fit without them
    fixed = probe_result.fixed_step_s is not None and cost(asked) * PLAN_MARGIN > left

    if cost(1, fixed) > left:
        raise VislabError(
            f"--max-time {budget}: shorter than one epoch of this run (~{cost(1, fixed):.0f} s measured: "
            f"{probe_result.train_batches} steps, validation and saving, after {spent_s:.0f} s of probing); "
            f"give at least {math.ceil(spent_s + cost(1, fixed) * PLAN_MARGIN)}s, or fewer batches per epoch (train.limit_train_batches)"
        )
    epochs = _most_epochs(asked, left / PLAN_MARGIN, lambda e: cost(e, fixed), probe_result.epoch_s(False, fixed),
                          probe_result.epoch_s(True) if freeze and probe_result.frozen_step_s is not None else None, freeze)
    planned, changed = scale_plan(cfg, epochs, release_stages=probe_result.fixed_step_s is not None and not fixed)
    return planned, Plan(budget, budget_s, spent_s, asked, epochs, changed, probe_result)
