"""Training health checks that stop or warn in plain words, and the `--sanity` recorder.

- A NaN/inf loss stops training before the bad step is applied, naming the step, with
  `stopped_reason: "nan"` in summary.json (raised as `NonFiniteLossError`, a VislabError, so
  the CLI prints one line and exits non-zero).
- Predictions collapsed onto one class on the validation set: a warning.
- Validation accuracy still at chance after `train.health.chance_after_epochs` epochs: a
  warning listing the usual causes.

Every message goes to the console and to RUN_DIR/health.json as
`{level, code, message, epoch, step}` (the run-directory contract).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from vislab.errors import VislabError
from vislab.runs import write_json


class NonFiniteLossError(VislabError):
    """The training loss became NaN or infinite; the message names the step and likely causes."""


class HealthMonitor(Callback):
    """Checks loss, prediction spread and accuracy against chance while training runs."""

    def __init__(self, path: str | Path | None, chance_after_epochs: int = 3, collapse_fraction: float = 0.95) -> None:
        self.path = Path(path) if path is not None else None
        self.chance_after_epochs = chance_after_epochs
        self.collapse_fraction = collapse_fraction
        self.messages: list[dict[str, Any]] = []
        self._warned: set[str] = set()

    def load_existing(self) -> None:
        """Keep the messages of earlier sessions of a resumed run."""
        if self.path is not None and self.path.is_file():
            import json

            try:
                self.messages = list(json.loads(self.path.read_text()))
            except (ValueError, TypeError):
                self.messages = []

    def add(self, trainer: "L.Trainer", level: str, code: str, message: str, step: int | None = None) -> None:
        entry = {"level": level, "code": code, "message": message, "epoch": int(trainer.current_epoch), "step": step}
        self.messages.append(entry)
        if trainer.is_global_zero:
            if level != "error":  # errors are raised, and the CLI prints them
                print(f"health {level}: {message}", flush=True)
            self.save()

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, self.messages)

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.is_global_zero:
            self.save()

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

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # after the task's on_validation_epoch_end, which computes this epoch's confusion matrix
        if trainer.sanity_checking:
            return
        cm = getattr(pl_module, "last_val_confusion", None)
        n_classes = len(getattr(pl_module, "classes", []) or [])
        if cm is None or n_classes < 2:
            return
        cm = cm.double()
        total = float(cm.sum())
        if total <= 0:
            return
        pred_counts = cm.sum(0)
        top = int(pred_counts.argmax())
        share = float(pred_counts[top]) / total
        name = pl_module.classes[top]
        if share >= self.collapse_fraction and "collapse" not in self._warned:
            self._warned.add("collapse")
            self.add(
                trainer,
                "warn",
                "collapsed_predictions",
                f"{share:.0%} of validation predictions are '{name}': the model predicts (almost) one class. "
                "Check class balance (train.class_weights: balanced or data.sampler: weighted) and the learning rate",
                int(trainer.global_step),
            )
        epochs_done = trainer.current_epoch + 1
        if epochs_done < self.chance_after_epochs or "chance" in self._warned:
            return
        acc = float(cm.diag().sum()) / total
        majority = float(cm.sum(1).max()) / total
        chance = max(1.0 / n_classes, majority)
        if acc <= chance + 0.02:
            self._warned.add("chance")
            self.add(
                trainer,
                "warn",
                "chance_accuracy",
                f"validation accuracy {acc:.1%} is at chance ({chance:.1%}) after {epochs_done} epochs. "
                "Likely causes: labels not matching images (check the manifest), a learning rate far too high "
                "or too low (optim.lr), or data that does not reach the model (augmentation, normalisation)",
                int(trainer.global_step),
            )


def _current_lr(trainer: "L.Trainer") -> float:
    try:
        return float(trainer.optimizers[0].param_groups[-1]["lr"])
    except (IndexError, KeyError, AttributeError):
        return math.nan


class SanityRecorder(Callback):
    """Loss and accuracy of every step of the `--sanity` run (one batch, seen again and again)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.accs: list[float] = []

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))
        from vislab.tasks.classify import logits_of

        x, y = batch
        with torch.no_grad():
            was = pl_module.training
            pl_module.eval()
            pred = logits_of(pl_module(x)).argmax(1)
            pl_module.train(was)
        self.accs.append(float((pred == y).float().mean()))

    def result(self) -> dict[str, Any]:
        if not self.losses:
            return {"steps": 0, "learned": False}
        first, last = self.losses[0], self.losses[-1]
        acc = self.accs[-1]
        return {
            "steps": len(self.losses),
            "loss_first": first,
            "loss_last": last,
            "loss_min": min(self.losses),
            "accuracy_last": acc,
            "loss_dropped": bool(last < 0.5 * first),
            "learned": bool(last < 0.5 * first and acc >= 0.999),
        }
