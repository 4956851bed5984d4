"""The LightningModule machinery every task shares: `BaseTask`.

A task's LightningModule (`ClassifyTask`, a detector's, ...) subclasses this and declares
its loss, its steps and its metrics; everything else a run needs is here, once:

- the config, the class names and the input DataSpec as hyper-parameters, so a checkpoint
  alone rebuilds the module (`hyper_parameters`), and the model built by the one factory
  (state_dict keys `model.*`);
- channels_last and torch.compile (only the network is compiled, and kept out of the
  module tree so checkpoints hold the plain weights);
- the prepared-cache batch hook: uint8 batches are normalised and augmented on the device;
- a frozen backbone for the first epochs, the stem and first feature levels frozen for the
  whole run (`freeze_stages`) and BatchNorm kept in eval mode (`freeze_bn`);
- the global RNG states in every checkpoint (Lightning does not save them), restored when
  training resumes, so dropout and augmentation continue exactly as without the interruption;
- the optimizer and the learning-rate schedule (schedule.py plans and re-plans it).

`predict_batches` runs Lightning's predict loop for `vislab evaluate` and `vislab predict`:
they go through the task's `predict_step` and its datamodule's `predict_dataloader`, on the
device and at the precision the run validated with.
"""

from __future__ import annotations

import logging
import random
import warnings
from dataclasses import replace
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn as nn

from vislab.config import RunConfig
from vislab.data.batch_augment import BatchTransform
from vislab.data.transforms import resolve_augment
from vislab.errors import VislabError
from vislab.models import backbones
from vislab.models.factory import create_model
from vislab.models.registry import DataSpec, data_spec
from vislab.optim import build_optimizer

RNG_KEY = "vislab_rng"
# Lightning warnings that do not apply to how vislab drives it
QUIET_WARNINGS = (
    r".*resuming from a checkpoint that ended before the epoch ended.*",  # the datamodule resumes mid-epoch
    r".*does not have many workers.*",  # data.num_workers is the user's choice
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*`training_step` returned `None`.*",
    r".*isinstance\(treespec, LeafSpec\).*",  # torch deprecation inside Lightning's pytree helper
    r".*overridden `on_after_batch_transfer` in `LightningModule`.*",  # the task's hook is the one meant
    r".*module\(s\) in eval mode at the start of training.*",  # train.freeze_bn keeps the backbone's BatchNorm in eval mode
)


def quiet_lightning() -> None:
    """Lightning's start-up lines (GPU available, seeds) are not for vislab's users."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolved_spec(model: nn.Module, cfg: RunConfig) -> DataSpec:
    """The model's DataSpec with `data.img_size`, `data.crop_pct` and `model.in_chans` applied."""
    spec = data_spec(model)
    size = cfg.data.img_size
    if size is None:
        hw = tuple(spec.input_size[-2:])
    else:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        backbones.check_input_size(model, (int(hw[0]), int(hw[1])), cfg.model.name)
    return replace(
        spec,
        input_size=(cfg.model.in_chans, int(hw[0]), int(hw[1])),
        crop_pct=cfg.data.crop_pct if cfg.data.crop_pct is not None else spec.crop_pct,
    )


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


class BaseTask(L.LightningModule):
    """A task's model, config, classes and input spec, with the generic training machinery.

    Subclasses call `super().__init__(config, classes, data_spec, model=model)` first and then
    add their loss and metrics; they implement `training_step`, `validation_step` and
    `predict_step` (evaluate and predict run through it), and may override `sanity_score` and
    `reset_train_metrics`. Without `model` the factory builds `config.model` with one output
    per class; `model` is one already built (a run rebuilt from its checkpoint, or a task's
    whose output count is not its class count, see `Task.model_outputs`); it is not a
    hyper-parameter.
    """

    def __init__(
        self, config: dict[str, Any], classes: Sequence[str], data_spec: dict[str, Any] | None = None, *, model: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.cfg = RunConfig.model_validate(config)
        self.classes = list(classes)
        self.model = model if model is not None else create_model(self.cfg.model, len(self.classes))
        # the stem and first feature levels frozen for the run (train.freeze_stages); None: none
        self.fixed_stages: dict[str, Any] | None = None
        if self.cfg.train.freeze_stages:
            if not self.cfg.model.starts_trained:
                raise VislabError("train.freeze_stages keeps pretrained layers as they are; set model.pretrained (or model.weights) or train.freeze_stages: 0")
            self.fixed_stages = backbones.fix_stages(self.model, self.cfg.train.freeze_stages, self.cfg.model.name)
        if data_spec is None:  # the input the built model expects, with the config's size overrides
            self.hparams["data_spec"] = resolved_spec(self.model, self.cfg).to_dict()
        self._rng_to_restore: dict[str, Any] | None = None

    # ---- model --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Any:
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        compiled = self.__dict__.get("_compiled_model")
        return compiled(x) if compiled is not None else self.model(x)

    def setup(self, stage: str) -> None:
        if self.cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.cfg.train.compile and stage == "fit" and "_compiled_model" not in self.__dict__:
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

    # ---- hooks a task may override --------------------------------------------------------
    def sanity_score(self, batch: Any) -> float | None:
        """How well the model in eval mode does on a training batch, 1.0 meaning learned by
        heart (the `--sanity` check's second criterion after the falling loss); None when
        the task has no such score."""
        return None

    def reset_train_metrics(self) -> None:
        """Forget the running train-epoch metrics (a rank other than 0 resuming mid-epoch:
        the checkpoint holds rank 0's partial sums only)."""

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

    def train(self, mode: bool = True) -> "BaseTask":
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
            if self.global_rank != 0:
                self.reset_train_metrics()
        self._apply_freeze()

    def on_train_epoch_start(self) -> None:
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready if self.trainer is not None else 0
        if done == 0 or done >= self.trainer.num_training_batches:
            # an epoch starting from its first batch: the persistent train metrics may hold the
            # previous epoch's sums, restored from a checkpoint saved at its end (--resume --epochs)
            self.reset_train_metrics()
        self._apply_freeze()

    # ---- checkpoint extras ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = collect_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied in on_train_start, after everything that runs between loading and training
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    # ---- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        from vislab import schedule

        opt = build_optimizer(self.model, self.cfg.optim)
        return schedule.configure(opt, self.cfg, schedule.steps_per_epoch(self.trainer), int(self.trainer.max_epochs or 1))


class _TransientProgress(L.Callback):
    """A rich progress bar over the predict batches that disappears when done; shown only
    when stderr is a terminal."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._progress: Any = None
        self._task: Any = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from rich.console import Console
        from rich.progress import Progress

        # on stderr: stdout may be carrying CSV or JSON (`vislab predict -f csv > out.csv`);
        # and only on a terminal: elsewhere rich still writes a blank line when it stops
        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self._progress = Progress(console=console, transient=True)
        self._progress.start()
        total = sum(trainer.num_predict_batches) if trainer.num_predict_batches else None
        self._task = self._progress.add_task(self.description, total=total)

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def predict_batches(
    module: L.LightningModule, datamodule: L.LightningDataModule, *, precision: str = "32-true", description: str | None = None
) -> list[Any]:
    """The module's `predict_step` outputs, one per batch of `datamodule.predict_dataloader()`,
    from Lightning's predict loop on one device (the GPU when there is one) in eval and
    inference mode; `precision` "bf16-mixed" evaluates as a run trained with it validated.
    `description` shows a transient progress bar."""
    quiet_lightning()
    trainer = L.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_TransientProgress(description)] if description else [],
    )
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        return list(trainer.predict(module, datamodule=datamodule) or [])
