"""Run configuration: pydantic models for every section, YAML loading and dotted overrides.

One YAML describes one run. Unknown keys and wrong values fail on load with a one-line
message naming the key and what is allowed, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vislab.errors import VislabError


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class HeadConfig(Section):
    """Custom classifier head: GAP -> Linear(hidden) -> ReLU -> Dropout -> Linear(classes)."""

    hidden: int = Field(512, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)


class SimpleCNNConfig(Section):
    """The from-scratch family: `layers` conv blocks, filters doubling from `filters`."""

    layers: int = Field(3, ge=1, le=6)
    filters: int = Field(32, ge=4)
    kernel_size: int = Field(3, ge=1, le=7)
    fc: int = Field(512, ge=0)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    init_std: float | None = Field(None, gt=0.0)
    init_seed: int | None = 1234
    batch_norm: bool = True


class ABNConfig(Section):
    """Attention-branch loss weights: alpha * CE(attention) + beta * CE(perception)."""

    alpha: float = Field(1.0, ge=0.0)
    beta: float = Field(1.0, ge=0.0)
    stage: int | None = None


class FastCNNConfig(Section):
    """The compact small-image net of the cifar10-fast recipe; each trick is a switch."""

    widths: list[int] = Field(default_factory=lambda: [64, 256, 256], min_length=1, max_length=5)
    # stem set from training patches as a whitening transform (frozen weights, learned bias)
    whiten: bool = True
    whiten_kernel: int = Field(2, ge=1, le=5)
    whiten_eps: float = Field(5e-4, gt=0.0)
    whiten_images: int = Field(5000, ge=1)
    dirac_init: bool = True
    logit_scale: float = Field(1 / 9, gt=0.0)
    bn_momentum: float = Field(0.4, gt=0.0, le=1.0)
    # false keeps the BatchNorm scales at 1 (their biases still learn): one scale fewer per
    # channel to fit, which a high-learning-rate recipe likes
    bn_weight: bool = True


class ModelConfig(Section):
    name: str = "simple_cnn"
    pretrained: bool | Literal["pypi"] = False
    weights: Path | None = None
    head: HeadConfig | None = None
    simple_cnn: SimpleCNNConfig = Field(default_factory=SimpleCNNConfig)
    fast_cnn: FastCNNConfig = Field(default_factory=FastCNNConfig)
    attention: Literal["none", "abn"] = "none"
    abn: ABNConfig = Field(default_factory=ABNConfig)
    in_chans: int = Field(3, ge=1)
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    kwargs: dict[str, Any] = Field(default_factory=dict)


AUG_PRESETS = ("none", "light", "standard", "strong")


class AugmentConfig(Section):
    """Training augmentation; `preset` gives defaults, explicit fields override them."""

    preset: Literal["none", "light", "standard", "strong"] = "light"
    hflip: float | None = Field(None, ge=0.0, le=1.0)
    vflip: float | None = Field(None, ge=0.0, le=1.0)
    rotation: float | None = Field(None, ge=0.0, le=180.0)
    random_resized_crop: tuple[float, float] | None = None
    crop_padding: int | None = Field(None, ge=0)
    color_jitter: float | None = Field(None, ge=0.0, le=1.0)
    shear: float | None = Field(None, ge=0.0, le=60.0)
    scale: tuple[float, float] | None = None
    random_erasing: float | None = Field(None, ge=0.0, le=1.0)
    mixup: float = Field(0.0, ge=0.0)
    cutmix: float = Field(0.0, ge=0.0)


class DataConfig(Section):
    img_size: int | tuple[int, int] | None = None
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    num_workers: int = Field(2, ge=0)
    grayscale: bool = False
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    sampler: Literal["random", "weighted"] = "random"
    cache: bool = False
    crop_pct: float | None = Field(None, gt=0.0, le=1.0)
    # share of train held out (stratified, seeded) as validation when the manifest has no val split
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    persistent_workers: bool = True


class OptimConfig(Section):
    # muon: Muon on the backbone's weight matrices and conv filters, SGD (lr, momentum,
    # nesterov, weight_decay) on the head, biases and norm parameters
    name: Literal["sgd", "asgd", "adam", "adamw", "muon"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    backbone_lr_mult: float = Field(1.0, gt=0.0)
    # learning-rate multiplier of biases and norm parameters (they take no weight decay)
    bias_lr_mult: float = Field(1.0, gt=0.0)
    muon_lr: float = Field(0.02, gt=0.0)
    muon_momentum: float = Field(0.95, ge=0.0, lt=1.0)
    muon_ns_steps: int = Field(5, ge=1, le=10)
    # keep each filter bank's norm fixed instead of weight decay: right when a norm layer
    # follows every Muon layer (the output then ignores the weight's scale)
    muon_normalize: bool = False


class SchedulerConfig(Section):
    name: Literal["none", "plateau", "exponential", "cosine", "linear", "onecycle"] = "none"
    warmup_epochs: float = Field(0.0, ge=0.0)
    gamma: float = Field(0.95, gt=0.0, le=1.0)
    patience: int = Field(3, ge=0)
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    min_lr: float = Field(0.0, ge=0.0)
    monitor: str = "val/loss"
    pct_start: float = Field(0.3, gt=0.0, lt=1.0)


class EarlyStoppingConfig(Section):
    monitor: str = "val/acc"
    patience: int = Field(5, ge=1)
    mode: Literal["min", "max"] = "max"
    min_delta: float = 0.0


class HealthConfig(Section):
    chance_after_epochs: int = Field(3, ge=1)
    collapse_fraction: float = Field(0.95, gt=0.0, le=1.0)
    # share of a split's images that may be unreadable (deleted or broken since curation):
    # skipped with a warning up to it, the run stops (after a checkpoint) above it
    max_bad_images: float = Field(0.01, ge=0.0, le=1.0)


class AveragingConfig(Section):
    """Weight averaging. `ema`: an exponential moving average of the weights (decay per update,
    every `every` steps) is what validation sees and what training ends with. `lookahead`:
    every `every` steps the slow weights move towards the trained ones by (1 - decay) and
    training restarts from them; with `warmup` the decay ramps up from 0 as progress**3."""

    kind: Literal["none", "ema", "lookahead"] = "none"
    decay: float = Field(0.99, ge=0.0, lt=1.0)
    every: int = Field(1, ge=1)
    warmup: bool = True


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    max_time: str | None = None
    freeze_backbone_epochs: int = Field(0, ge=0)
    # keep the backbone's BatchNorm statistics fixed (eval mode) after unfreezing too: small
    # datasets otherwise swap ImageNet statistics for batch ones and the trained head misfits
    freeze_bn: bool = False
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    early_stopping: EarlyStoppingConfig | None = None
    monitor: str = "val/acc"
    monitor_mode: Literal["min", "max"] = "max"
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    channels_last: bool = False
    compile: bool = False
    averaging: AveragingConfig = Field(default_factory=AveragingConfig)
    grad_clip: float | None = Field(None, gt=0.0)
    accumulate_grad_batches: int = Field(1, ge=1)
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    health: HealthConfig = Field(default_factory=HealthConfig)
    # mid-epoch last.ckpt, so a kill loses little: every N optimizer steps and/or every M minutes
    checkpoint_every_steps: int | None = Field(None, ge=1)
    checkpoint_every_minutes: float | None = Field(10.0, gt=0.0)
    progress: Literal["auto", "rich", "tqdm", "none"] = "auto"
    sync_batchnorm: bool = True
    sanity_steps: int = Field(40, ge=1)

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        allowed = {"32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true", "auto"}
        if v not in allowed:
            raise ValueError(f"must be one of {sorted(allowed)}")
        return v


class RunConfig(Section):
    """Everything one run needs; saved resolved into the run directory."""

    task: Literal["classify"] = "classify"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; check the spelling against the documented config keys"
    inp = first.get("input")
    shown = "" if isinstance(inp, dict) else f" (got {inp!r})"
    return f"{source}: '{key}' {first['msg'].lower()}{shown}"


def parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (numbers, booleans, lists, null)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings to a nested dict (creating sections as needed)."""
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
        node[parts[-1]] = parse_value(value)
    return raw


def build_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise VislabError(_format_error(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or defaults when `path` is None) and apply dotted overrides."""
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return build_config(raw, str(path) if path is not None else "config")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping, or a one-line error naming the file."""
    p = Path(path)
    if not p.is_file():
        raise VislabError(f"{p}: config file not found; pass a YAML file such as configs/digits-cnn.yaml")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise VislabError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise VislabError(f"{p}: expected a mapping of sections at the top level")
    return raw


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(dump_config(cfg))


def parse_duration(text: str) -> float:
    """'5h', '90m', '45s', '1h30m' or plain seconds -> seconds."""
    s = text.strip().lower()
    if not s:
        raise VislabError("--max-time: empty duration; use e.g. 5h, 90m or 1h30m")
    total, num = 0.0, ""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    for ch in s:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in units and num:
            total += float(num) * units[ch]
            num = ""
        else:
            raise VislabError(f"--max-time {text!r}: not a duration; use e.g. 5h, 90m or 1h30m")
    if num:
        total += float(num)
    if total <= 0:
        raise VislabError(f"--max-time {text!r}: must be positive")
    return total
