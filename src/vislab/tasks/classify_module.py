"""Image classification as a LightningModule: loss, steps and metrics on top of `BaseTask`.

`BaseTask` (tasks/base.py) holds what every task shares: hyper-parameters, model building,
channels_last/compile, the cached-batch transform, freezing, RNG state and the optimizer
and schedules. This module declares classification's part of one step.

Loss: cross-entropy with optional class weights (`balanced`: n_samples / (n_classes *
count_c), or an explicit list) and label smoothing; PyTorch's semantics apply, i.e. with hard
labels the batch loss is the weighted mean sum_i w[y_i] * l_i / sum_i w[y_i]. Mixup/cutmix
(torchvision) turn labels into mixtures; accuracy then counts the dominant label.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vislab.data.batch_augment import tta_views
from vislab.errors import VislabError
from vislab.health import HealthCheck
from vislab.models.outputs import class_heads, logits_of
from vislab.tasks.base import BaseTask

def balanced_class_weights(counts: Sequence[int]) -> list[float]:
    """n_samples / (n_classes * count_c); a class without samples gets weight 0."""
    n, c = float(sum(counts)), len(counts)
    return [n / (c * k) if k else 0.0 for k in counts]


def resolve_class_weights(setting: str | list[float], counts: Sequence[int]) -> list[float] | None:
    """The weight vector for `train.class_weights` given the train counts per class."""
    if isinstance(setting, list):
        if len(setting) != len(counts):
            raise VislabError(
                f"train.class_weights: {len(setting)} weights given for {len(counts)} classes; give one per class (class-id order)"
            )
        return [float(w) for w in setting]
    if setting == "balanced":
        return balanced_class_weights(counts)
    return None



class ClassifyTask(BaseTask):
    """Classification of images into `classes` with the model `config.model` names."""

    def __init__(
        self,
        config: dict[str, Any],
        classes: list[str],
        data_spec: dict[str, Any] | None = None,
        class_weights: list[float] | None = None,
        *,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__(config, classes, data_spec, model=model)
        n = len(self.classes)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weight", weight, persistent=False)
        self.train_acc = MulticlassAccuracy(n, average="micro")
        self.train_loss = MeanMetric(nan_strategy="disable")
        # saved in checkpoints, so an epoch resumed mid-way reports its whole-epoch means
        self.train_acc.persistent(True)
        self.train_loss.persistent(True)
        self.val_acc = MulticlassAccuracy(n, average="micro")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_confusion = MulticlassConfusionMatrix(n)
        self.last_val_confusion: torch.Tensor | None = None
        self.mix = self._build_mix(n)
        # test-time views of `predict_step` (evaluate --tta / --tta-translate): mirror, shifts in pixels
        self.tta = False
        self.tta_translate = 0

    # ---- model --------------------------------------------------------------------------
    def _build_mix(self, n: int) -> nn.Module | None:
        from torchvision.transforms import v2

        aug = self.cfg.data.augment
        ops = []
        if aug.mixup > 0:
            ops.append(v2.MixUp(alpha=aug.mixup, num_classes=n))
        if aug.cutmix > 0:
            ops.append(v2.CutMix(alpha=aug.cutmix, num_classes=n))
        if not ops:
            return None
        return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (class weights, label smoothing) on hard ids or soft label mixtures."""
        weight = self.class_weight.to(logits.device) if self.class_weight is not None else None
        return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=self.cfg.train.label_smoothing)

    def criterion(self, output: Any, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch's model output, plus named extra terms to log.

        The one hook a task variant overrides (e.g. an attention branch adding its own
        cross-entropy); extras are logged per epoch as `train/<name>` and `val/<name>`.
        """
        if isinstance(output, dict) and "att_logits" in output:
            return self.abn_criterion(output, target)
        return self.loss(logits_of(output), target), {}

    def abn_criterion(self, output: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """alpha * CE(attention branch) + beta * CE(perception branch), both with the class
        weights and label smoothing; each branch's loss and accuracy are logged."""
        from vislab.models.abn import abn_loss

        weight = self.class_weight.to(output["logits"].device) if self.class_weight is not None else None
        abn = self.cfg.model.abn
        logits = {k: v.float() for k, v in output.items() if k != "attention"}
        total, parts = abn_loss(logits, target, abn.alpha, abn.beta, weight, self.cfg.train.label_smoothing)
        hard = target.argmax(1) if target.ndim == 2 else target
        parts["att_acc"] = (output["att_logits"].argmax(1) == hard).float().mean()
        return total, parts

    # ---- steps --------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        target = y
        if self.mix is not None:
            x, target = self.mix(x, y)
        output = self(x)
        loss, extra = self.criterion(output, target)
        logits = logits_of(output)
        hard = target.argmax(1) if target.ndim == 2 else target
        self.train_acc.update(logits.detach(), hard)
        bs = x.shape[0]
        self.train_loss.update(loss.detach(), weight=bs)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=bs)
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False, batch_size=bs)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=bs)
        for name, value in extra.items():
            self.log(f"train/{name}", value.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        output = self(x)
        loss, extra = self.criterion(output, y)
        logits = logits_of(output)
        for name, value in extra.items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        self.val_loss.update(loss, weight=x.shape[0])
        self.val_acc.update(logits, y)
        self.val_confusion.update(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, batch_size=x.shape[0])
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])

    def on_validation_epoch_end(self) -> None:
        # kept for the health checks (prediction collapse); synced over DDP ranks
        self.last_val_confusion = self.val_confusion.compute().cpu()
        self.val_confusion.reset()

    def reset_train_metrics(self) -> None:
        self.train_acc.reset()
        self.train_loss.reset()

    def sanity_score(self, batch: Any) -> float:
        """Accuracy of the model in eval mode on the batch."""
        x, y = batch
        with torch.no_grad():
            was = self.training
            self.eval()
            pred = logits_of(self(x)).argmax(1)
            self.train(was)
        return float((pred == y).float().mean())

    # ---- evaluate and predict ---------------------------------------------------------------
    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Softmax probabilities [B, C] of every class head, `probs` (the prediction) and, for a
        model with an attention branch, `att_probs`, with the batch's targets (`target`). With
        `tta` they are averaged over the image and its mirror image, with `tta_translate` also
        over those shifted by that many pixels (`batch_augment.tta_views`)."""
        x, y = batch
        views = tta_views(x, flip=True, translate=self.tta_translate) if (self.tta or self.tta_translate) else [x]
        sums: dict[str, torch.Tensor] = {}
        for v in views:
            for k, logits in class_heads(self(v)).items():
                p = logits.float().softmax(1)
                sums[k] = sums[k] + p if k in sums else p
        out = {k.replace("logits", "probs"): total / len(views) for k, total in sums.items()}
        out["target"] = y
        return out


class PredictionSpread(HealthCheck):
    """Warns (once each) when validation predictions collapse onto one class, and when
    validation accuracy is still at chance after `chance_after_epochs` epochs; reads the
    confusion matrix `ClassifyTask.on_validation_epoch_end` keeps."""

    def __init__(self, chance_after_epochs: int = 3, collapse_fraction: float = 0.95) -> None:
        self.chance_after_epochs = chance_after_epochs
        self.collapse_fraction = collapse_fraction
        self._warned: set[str] = set()

    def after_validation(self, trainer: Any, pl_module: Any, report: Any) -> None:
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
            report(
                "warn",
                "collapsed_predictions",
                f"{share:.0%} of validation predictions are '{name}': the model predicts (almost) one class. "
                "Check class balance (train.class_weights: balanced or data.sampler: weighted) and the learning rate",
            )
        epochs_done = trainer.current_epoch + 1
        if epochs_done < self.chance_after_epochs or "chance" in self._warned:
            return
        acc = float(cm.diag().sum()) / total
        majority = float(cm.sum(1).max()) / total
        chance = max(1.0 / n_classes, majority)
        if acc <= chance + 0.02:
            self._warned.add("chance")
            report(
                "warn",
                "chance_accuracy",
                f"validation accuracy {acc:.1%} is at chance ({chance:.1%}) after {epochs_done} epochs. "
                "Likely causes: labels not matching images (check the manifest), a learning rate far too high "
                "or too low (optim.lr), or data that does not reach the model (augmentation, normalisation)",
            )
