"""Image classification as a LightningModule: model + loss + metrics + optimiser.

The Trainer owns the loop; this module declares one step of it. The checkpoint's
hyper-parameters hold the resolved config, the class names and the DataSpec, so a checkpoint
alone rebuilds the model. It also carries the global RNG states (Lightning does not save
them), restored when training resumes so dropout and mixup continue exactly as they would
have without the interruption.

Loss: cross-entropy with optional class weights (`balanced`: n_samples / (n_classes *
count_c), or an explicit list) and label smoothing; PyTorch's semantics apply, i.e. with hard
labels the batch loss is the weighted mean sum_i w[y_i] * l_i / sum_i w[y_i]. Mixup/cutmix
(torchvision) turn labels into mixtures; accuracy then counts the dominant label.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vislab.config import RunConfig
from vislab.data.batch_augment import BatchTransform
from vislab.data.transforms import resolve_augment
from vislab.errors import VislabError
from vislab.models import backbones
from vislab.models.factory import create_model
from vislab.models.outputs import logits_of
from vislab.models.registry import DataSpec, data_spec
from vislab.optim import build_optimizer

RNG_KEY = "vislab_rng"


def resolved_spec(model: nn.Module, cfg: RunConfig) -> DataSpec:
    """The model's DataSpec with `data.img_size`, `data.crop_pct` and `model.in_chans` applied."""
    spec = data_spec(model)
    size = cfg.data.img_size
    if size is None:
        hw = tuple(spec.input_size[-2:])
    else:
        hw = (size, size) if isinstance(size, int) else tuple(size)
    return replace(
        spec,
        input_size=(cfg.model.in_chans, int(hw[0]), int(hw[1])),
        crop_pct=cfg.data.crop_pct if cfg.data.crop_pct is not None else spec.crop_pct,
    )


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


def collect_rng_state() -> dict[str, Any]:
    """Global RNG states as plain data (checkpoints stay loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ClassifyTask(L.LightningModule):
    """Classification of images into `classes` with the model `config.model` names."""

    def __init__(
        self,
        config: dict[str, Any],
        classes: list[str],
        data_spec: dict[str, Any] | None = None,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = RunConfig.model_validate(config)
        self.classes = list(classes)
        n = len(self.classes)
        self.model = create_model(self.cfg.model, n)
        if data_spec is None:  # the input the built model expects, with the config's size overrides
            self.hparams["data_spec"] = resolved_spec(self.model, self.cfg).to_dict()
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
        self._rng_to_restore: dict[str, Any] | None = None

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        compiled = self.__dict__.get("_compiled_model")
        return compiled(x) if compiled is not None else self.model(x)

    def setup(self, stage: str) -> None:
        if self.cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.cfg.train.compile and "_compiled_model" not in self.__dict__:
            # only the network is compiled (the metrics are not traceable); kept out of
            # the module tree so checkpoints hold the plain `model.*` weights
            self.__dict__["_compiled_model"] = torch.compile(self.model)

    @property
    def batch_transform(self) -> BatchTransform:
        """uint8 batch -> normalised (and in training augmented) float batch, for cached data."""
        tf = self.__dict__.get("_batch_transform")
        if tf is None:
            spec = self.hparams["data_spec"]
            tf = BatchTransform(
                size=(int(spec["input_size"][-2]), int(spec["input_size"][-1])),
                mean=spec["mean"],
                std=spec["std"],
                aug=resolve_augment(self.cfg.data.augment),
                channels=self.cfg.model.in_chans,
                grayscale=self.cfg.data.grayscale,
                channels_last=self.cfg.train.channels_last,
            )
            self.__dict__["_batch_transform"] = tf
        return tf

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Cached batches arrive as uint8 (plus, in training, the batch's augmentation seed) and
        are normalised and augmented here, on the device they landed on; float batches from
        the file loader pass unchanged."""
        x = batch[0]
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8):
            return batch
        seed = int(batch[2]) if len(batch) > 2 else None
        return self.batch_transform(x, train=seed is not None, seed=seed), batch[1]

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

    # ---- fine-tuning: frozen backbone for the first epochs -------------------------------
    def backbone_frozen_now(self) -> bool:
        return self.current_epoch < self.cfg.train.freeze_backbone_epochs

    def _apply_freeze(self) -> None:
        if self.cfg.train.freeze_backbone_epochs <= 0:
            return
        frozen = self.backbone_frozen_now()
        if frozen != backbones.is_backbone_frozen(self.model):
            backbones.set_backbone_frozen(self.model, frozen)
            if self.trainer is not None and self.trainer.is_global_zero:
                state = "frozen" if frozen else "unfrozen"
                print(f"epoch {self.current_epoch + 1}: backbone {state}", flush=True)  # counted from 1, as the epoch lines
        if frozen:
            backbones.apply_frozen_bn_eval(self.model)
        elif self.cfg.train.freeze_bn and self.training:
            self.train()  # unfreezing put BatchNorm back in training mode

    def train(self, mode: bool = True) -> "ClassifyTask":
        super().train(mode)
        if mode and self.cfg.train.freeze_bn:
            for m in self._backbone_norms():
                m.eval()
        return self

    def _backbone_norms(self) -> list[nn.Module]:
        """The backbone's BatchNorm layers (those `train.freeze_bn` keeps in eval mode)."""
        heads = backbones.head_module_names(self.model)
        return [
            m
            for name, m in self.model.named_modules()
            if isinstance(m, backbones.NORM_WITH_STATS) and not any(name == h or name.startswith(h + ".") for h in heads)
        ]

    def on_train_start(self) -> None:
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
            if self.global_rank != 0:  # the checkpoint holds rank 0's partial epoch sums only
                self.train_acc.reset()
                self.train_loss.reset()
        self._apply_freeze()

    def on_train_epoch_start(self) -> None:
        self._apply_freeze()

    # ---- checkpoint extras ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = collect_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied in on_train_start, after everything that runs between loading and training
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    # ---- optimisation --------------------------------------------------------------------
    def _steps_per_epoch(self) -> int:
        trainer = self.trainer
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "steps_per_epoch"):
            return dm.steps_per_epoch(trainer.world_size, trainer.accumulate_grad_batches, trainer.limit_train_batches)
        return max(1, int(trainer.estimated_stepping_batches // max(1, trainer.max_epochs or 1)))

    def configure_optimizers(self) -> Any:
        o, s = self.cfg.optim, self.cfg.scheduler
        opt = build_optimizer(self.model, o)
        groups = opt.param_groups
        if s.name == "none":
            return opt
        if s.name == "plateau":
            mode = "min" if "loss" in s.monitor else "max"
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=s.factor, patience=s.patience, min_lr=s.min_lr)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": s.monitor, "interval": "epoch"}}
        per_epoch = self._steps_per_epoch()
        total = max(1, per_epoch * int(self.trainer.max_epochs or 1))
        if s.name == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=[g["lr"] for g in groups], total_steps=total, pct_start=s.pct_start
            )
        else:
            warm = int(round(s.warmup_epochs * per_epoch))
            floor = s.min_lr / o.lr
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _step_schedule(s.name, warm, total, per_epoch, s.gamma, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # a run extended with --epochs past a one-cycle schedule holds its final learning rate
        if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.last_epoch + 1 >= scheduler.total_steps:
            return
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)


def _step_schedule(name: str, warmup: int, total: int, per_epoch: int, gamma: float, floor: float):
    """Per-step LR factor: linear warm-up, then cosine or linear decay to `floor`, or
    exponential decay per epoch.

    A plain closure on purpose: LambdaLR does not save it, so a resumed run that was given
    more epochs stretches the decay over the new total instead of keeping the old one.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        if name == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if name == "linear":
            return floor + (1 - floor) * (1 - t)
        return max(floor, gamma ** ((step - warmup) // max(1, per_epoch)))

    return factor
