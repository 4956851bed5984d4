"""Training health checks that stop or warn in plain words, and the `--sanity` recorder.

Generic checks, for every task:
- A NaN/inf loss stops training before the bad step is applied, naming the step, with
  `stopped_reason: "nan"` in summary.json (raised as `NonFiniteLossError`, a VislabError, so
  the CLI prints one line and exits non-zero).
- Images that cannot be read any more (deleted or broken since curation; the datamodule
  skips them): a warning `unreadable_images` with the count and the first paths, per split;
  above `train.health.max_bad_images` of a split, last.ckpt is saved and the run stops
  (`UnreadableImagesError`).
- A run that did less than it was asked to: `plan_cut` (the time budget fit fewer epochs
  than asked; the plan passed in as a note), `budget_cut` (the budget stopped the run
  before its planned epochs, so the schedule never reached its end), and
  `backbone_never_unfrozen` (a run with `train.freeze_backbone_epochs` ended with the
  backbone still frozen: only the head learned).

A task adds its own checks (`Task.health_checks`: `HealthCheck` objects run after each
validation; classification warns about predictions collapsed onto one class and accuracy
at chance). Every message goes to the console and to RUN_DIR/health.json as
`{level, code, message, epoch, step}` (the run-directory contract).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from vislab.errors import DatasetError, VislabError
from vislab.fsguard import printable
from vislab.runs import write_json


class NonFiniteLossError(VislabError):
    """The training loss became NaN or infinite; the message names the step and likely causes."""


class UnreadableImagesError(DatasetError):
    """More images of a split than `train.health.max_bad_images` allows could not be read."""


SHOWN_PATHS = 5  # unreadable images named in health.json and on the console


class HealthCheck:
    """A task's check after each validation epoch (sanity checking excluded). `report(level,
    code, message)` adds a health message (level warn or info; an error is raised instead)."""

    def after_validation(self, trainer: "L.Trainer", pl_module: "L.LightningModule", report: Callable[[str, str, str], None]) -> None:
        raise NotImplementedError


class HealthMonitor(Callback):
    """Checks loss and unreadable images while training runs, and after each validation the
    task's `checks`. `max_bad_images` applies when the task carries no config (the run's
    `train.health.max_bad_images` wins)."""

    def __init__(
        self,
        path: str | Path | None,
        checks: Sequence[HealthCheck] = (),
        max_bad_images: float = 0.01,
        notes: list[tuple[str, str, str]] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.checks = list(checks)
        self.notes = list(notes or [])  # (level, code, message) known before training, added when it starts
        self.max_bad_images = max_bad_images
        self.messages: list[dict[str, Any]] = []
        self._unreadable: dict[str, dict[str, Any]] = {}  # split -> its health.json entry

    def load_existing(self) -> None:
        """Keep the messages of earlier sessions of a resumed run."""
        if self.path is not None and self.path.is_file():
            import json

            try:
                self.messages = list(json.loads(self.path.read_text()))
            except (ValueError, TypeError):
                self.messages = []

    def add(
        self, trainer: "L.Trainer", level: str, code: str, message: str, step: int | None = None, echo: bool = True, epoch: int | None = None
    ) -> None:
        """Record a message (and print it, unless `echo` is off because it was printed already).
        `epoch` and `step` count from 0, as Lightning does: the epoch and step it concerns."""
        entry = {"level": level, "code": code, "message": message, "epoch": int(trainer.current_epoch) if epoch is None else epoch, "step": step}
        self.messages.append(entry)
        if trainer.is_global_zero:
            if level != "error" and echo:  # errors are raised, and the CLI prints them
                print(f"health {level}: {printable(message)}", flush=True)
            self.save()

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, self.messages)

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        for level, code, message in self.notes:  # printed when they were found
            self.add(trainer, level, code, message, int(trainer.global_step), echo=False)
        self.notes = []
        if trainer.is_global_zero:
            self.save()

    # ---- a run that did less than asked ---------------------------------------------------
    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        from vislab.callbacks import epoch_complete, stop_reason
        from vislab.models import backbones

        reason = stop_reason(trainer)
        done = int(trainer.current_epoch) - (0 if epoch_complete(trainer) else 1)
        planned = int(trainer.max_epochs or 0)
        step, last_epoch = max(0, int(trainer.global_step) - 1), max(0, int(trainer.current_epoch) - 1)  # the last that ran
        if reason == "max_time":
            self.add(
                trainer,
                "warn",
                "budget_cut",
                f"the time budget stopped the run after {done} of its {planned} planned epochs, so the learning-rate "
                f"schedule never reached its end (lr {_current_lr(trainer):.3g} at the stop). "
                "Continue it with a larger total budget: vislab train --resume --out RUN --max-time LONGER",
                step,
                epoch=last_epoch,
            )
        cfg = getattr(pl_module, "cfg", None)
        model = getattr(pl_module, "model", None)
        final = reason in ("completed", "max_time", "early_stopping")
        if final and cfg is not None and cfg.train.freeze_backbone_epochs > 0 and model is not None and backbones.is_backbone_frozen(model):
            self.add(
                trainer,
                "warn",
                "backbone_never_unfrozen",
                f"the backbone stayed frozen for the whole run ({done} epoch(s) trained, train.freeze_backbone_epochs = "
                f"{cfg.train.freeze_backbone_epochs}): only the new head learned and the pretrained features were never "
                "fine-tuned. Train longer (--epochs, or a larger --max-time) or lower train.freeze_backbone_epochs",
                step,
                epoch=last_epoch,
            )

    def on_before_backward(self, trainer: "L.Trainer", pl_module: "L.LightningModule", loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank must stop together, or the others wait forever
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        step = int(trainer.global_step)
        value = "NaN" if torch.isnan(loss.detach()).any() else "infinite"
        lr = _current_lr(trainer)
        batch = trainer.fit_loop.epoch_loop.batch_idx
        msg = (
            f"loss became {value} at training step {step + 1} (batch {batch + 1} of epoch {trainer.current_epoch + 1}); "
            "training stopped before applying it. "
            f"Likely causes: learning rate too high (now {lr:g}), exploding gradients "
            "(try train.grad_clip), or bad input values"
        )
        self.add(trainer, "error", "nan_loss", msg, step)
        raise NonFiniteLossError(msg)

    def _check_val_loss(self, trainer: "L.Trainer", step: int) -> None:
        """A validation loss that is NaN or infinite means the weights diverged even when the
        training loss looked finite (BatchNorm statistics blown up by an lr of 1e6): its
        accuracy is then argmax of NaN, class 0 everywhere, which a sweep once ranked best."""
        value = trainer.callback_metrics.get("val/loss")
        bad = value is not None and not bool(torch.isfinite(torch.as_tensor(value)).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        msg = (
            f"validation loss became {float(value) if value is not None else float('nan'):g} after epoch "
            f"{trainer.current_epoch + 1}: the weights diverged (its accuracy means nothing). "
            f"Likely causes: learning rate too high (now {_current_lr(trainer):g}), exploding gradients (try train.grad_clip)"
        )
        self.add(trainer, "error", "nan_loss", msg, step)
        raise NonFiniteLossError(msg)

    # ---- images that cannot be read -------------------------------------------------------
    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        self.check_unreadable(trainer, pl_module)

    def check_unreadable(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """Warn about newly found unreadable images; past the limit save last.ckpt and stop."""
        logs = getattr(getattr(trainer, "datamodule", None), "unreadable", None) or {}
        cfg = getattr(pl_module, "cfg", None)
        fraction = cfg.train.health.max_bad_images if cfg is not None else self.max_bad_images
        failing = None
        for log in logs.values():
            entry = self._unreadable.get(log.split)
            if len(log.bad) > (entry["count"] if entry else 0):
                self._warn_unreadable(trainer, log, fraction)
            if failing is None and len(log.bad) > fraction * log.total:
                failing = log
        over = failing is not None
        if trainer.world_size > 1:  # every rank must stop together, or the others wait forever
            over = trainer.strategy.reduce_boolean_decision(over, all=False)
        if not over:
            return
        saved = _save_last_checkpoint(trainer)
        if failing is not None:
            path, reason = next(iter(failing.bad.items()))
            what = (
                f"{len(failing.bad)} of the {failing.total} {failing.split} images cannot be read, over "
                f"train.health.max_bad_images = {fraction:g}; e.g. {path} ({reason})"
            )
        else:
            what = f"another process found more unreadable images than train.health.max_bad_images = {fraction:g} allows"
        kept = f"; {saved} saved" if saved is not None else ""
        msg = (
            f"{what}{kept}. The dataset changed since `vislab curate`: restore the files or re-curate "
            "(or raise train.health.max_bad_images)"
        )
        self.add(trainer, "error", "unreadable_images", msg, int(trainer.global_step))
        raise UnreadableImagesError(msg)

    def _warn_unreadable(self, trainer: "L.Trainer", log: Any, fraction: float) -> None:
        n = len(log.bad)
        shown = [f"{p} ({r})" for p, r in list(log.bad.items())[:SHOWN_PATHS]]
        msg = (
            f"{n} unreadable image(s) in the {log.split} split skipped: {'; '.join(shown)}{' ...' if n > SHOWN_PATHS else ''}. "
            f"The run stops above {fraction * 100:g}% of the {log.total} (train.health.max_bad_images); "
            "re-run `vislab curate` to drop them from the manifest"
        )
        entry = self._unreadable.get(log.split)
        if entry is None:
            entry = {"level": "warn", "code": "unreadable_images", "split": log.split}
            self._unreadable[log.split] = entry
            self.messages.append(entry)
        entry.update(message=msg, count=n, paths=list(log.bad)[:SHOWN_PATHS], epoch=int(trainer.current_epoch), step=int(trainer.global_step))
        if trainer.is_global_zero:
            if n <= SHOWN_PATHS:  # the first few on the console; the count keeps growing in health.json
                print(f"health warn: {printable(msg)}", flush=True)  # health.json keeps the paths exact
            self.save()

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.check_unreadable(trainer, pl_module)
        # after the task's on_validation_epoch_end, which computes what its checks read
        if trainer.sanity_checking:
            return
        step = max(0, int(trainer.global_step) - 1)  # the epoch's last step
        self._check_val_loss(trainer, step)
        for check in self.checks:
            check.after_validation(trainer, pl_module, lambda level, code, message: self.add(trainer, level, code, message, step))


def _save_last_checkpoint(trainer: "L.Trainer") -> Path | None:
    """Save the run's last.ckpt now (the `LastCheckpoint` callback's file), so a run stopped
    by a health check can be resumed; None when the trainer keeps no last checkpoint."""
    from vislab.callbacks import LastCheckpoint

    last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    if last is None:
        return None
    trainer.save_checkpoint(last.path, weights_only=False)
    return last.path


def _current_lr(trainer: "L.Trainer") -> float:
    try:
        return float(trainer.optimizers[0].param_groups[-1]["lr"])
    except (IndexError, KeyError, AttributeError):
        return math.nan


class SanityRecorder(Callback):
    """Loss and the task's `sanity_score` (classification: accuracy) of every step of the `--sanity` run
    (one batch, seen again and again)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.accs: list[float] = []

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))
        score = pl_module.sanity_score(batch)
        if score is not None:
            self.accs.append(score)

    def result(self) -> dict[str, Any]:
        if not self.losses:
            return {"steps": 0, "learned": False}
        first, last = self.losses[0], self.losses[-1]
        out: dict[str, Any] = {"steps": len(self.losses), "loss_first": first, "loss_last": last, "loss_min": min(self.losses)}
        if self.accs:
            out["accuracy_last"] = self.accs[-1]
        out["loss_dropped"] = bool(last < 0.5 * first)
        out["learned"] = bool(out["loss_dropped"] and (not self.accs or self.accs[-1] >= 0.999))
        return out
