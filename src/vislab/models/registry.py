"""Model names and what is known about them before building: the registry, and DataSpec.

Builders register themselves here with their metadata (`register_model`); the registry
imports no builder and no torch, so builder modules can import it without a cycle and
anything may ask what a name means cheaply. Building goes through `factory.create_model`,
the one factory every command uses (it imports vislab's builder modules, which fills the
registry). `data_spec` tells the data pipeline which input size and normalisation a built
model expects, so nothing downstream hard-codes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from vislab.channels import channel_stats

if TYPE_CHECKING:
    import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_TASK = "classify"  # the `task` of a model registered without one, and of every timm model


@dataclass(frozen=True)
class DataSpec:
    """What the model expects of its input: the data pipeline reads this, never guesses."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        """One mean and std per channel of `input_size` (a grey model's: the RGB values
        averaged), so every reader of the spec (run.json, serve, the export) says the same."""
        channels = int(self.input_size[0])
        object.__setattr__(self, "mean", tuple(channel_stats(self.mean, channels)))
        object.__setattr__(self, "std", tuple(channel_stats(self.std, channels)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d.get("interpolation", "bilinear"),
            crop_pct=float(d.get("crop_pct", 0.875)),
        )


Builder = Callable[..., "nn.Module"]


@dataclass
class Entry:
    name: str
    builder: Builder
    spec: DataSpec
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """The task whose outputs the model produces (`meta["task"]`, default classify)."""
        return str(self.meta.get("task", DEFAULT_TASK))


_REGISTRY: dict[str, Entry] = {}


def register_model(name: str, spec: DataSpec | None = None, **meta: Any) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under `name`; a second registration of a name is a bug.

    The builder is called as `builder(cfg=ModelConfig, num_classes=int)`. `meta` is free-form
    and shown by `model_info`; five keys change what others check: `kwargs` (a tuple) names
    the only `cfg.kwargs` the builder reads (any other is refused), `pretrained=True` means
    the builder handles `cfg.pretrained` itself, `head=True` that it honours `cfg.head`,
    `weight_kwargs` names the `cfg.kwargs` that make it load weights (set False when a run is
    restored from its checkpoint), and `task` names the task whose outputs it produces
    (default classify; a task accepts the models of its own task).
    """

    def wrap(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = Entry(name, fn, spec or DataSpec(), dict(meta))
        return fn

    return wrap


def registered(name: str) -> Entry | None:
    """The entry of a name registered so far (`factory.get_entry` first loads vislab's own builders)."""
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    """Names registered so far, sorted."""
    return sorted(_REGISTRY)


def spec_from_pretrained_cfg(cfg: dict[str, Any]) -> DataSpec:
    """A DataSpec from a timm `pretrained_cfg` dict (missing keys: ImageNet at 224)."""
    return DataSpec(
        input_size=tuple(cfg.get("input_size", (3, 224, 224))),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=cfg.get("interpolation", "bilinear"),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


def data_spec(model: "nn.Module") -> DataSpec:
    """The input a built model expects: its registry spec, else timm's pretrained config."""
    spec = getattr(model, "vislab_spec", None)
    if isinstance(spec, DataSpec):
        return spec
    return spec_from_pretrained_cfg(getattr(model, "pretrained_cfg", None) or {})
