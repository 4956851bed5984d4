"""The one place a model name is resolved.

vislab's own builders register here with their metadata; any other name is looked up in
timm. `create_model` is the single factory every command uses, and `data_spec` tells the
data pipeline which input size and normalisation the model expects, so nothing downstream
hard-codes them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

from vislab.errors import VislabError

if TYPE_CHECKING:
    from vislab.config import ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSpec:
    """What the model expects of its input: the data pipeline reads this, never guesses."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

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


Builder = Callable[..., nn.Module]


@dataclass
class Entry:
    name: str
    builder: Builder
    spec: DataSpec
    meta: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, Entry] = {}


def register_model(name: str, spec: DataSpec | None = None, **meta: Any) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under `name`; a second registration of a name is a bug.

    The builder is called as `builder(cfg=ModelConfig, num_classes=int)`. `meta` is free-form
    and shown by `model_info`; two keys change `create_model`'s checks: `pretrained=True`
    means the builder handles `cfg.pretrained` itself, `head=True` that it honours `cfg.head`.
    """

    def wrap(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = Entry(name, fn, spec or DataSpec(), dict(meta))
        return fn

    return wrap


def get_entry(name: str) -> Entry | None:
    _ensure_builtin()
    return _REGISTRY.get(name)


def list_models(pattern: str = "*", include_timm: bool = False) -> list[str]:
    """vislab's own model names matching a glob pattern (and timm's, when asked)."""
    _ensure_builtin()
    names = sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))
    if include_timm:
        import timm

        names += [n for n in timm.list_models(pattern) if n not in _REGISTRY]
    return names


def model_info(name: str) -> dict[str, Any]:
    """What is known about a model name before building it: source, input spec, metadata."""
    check_name(name)
    entry = get_entry(name)
    if entry is not None:
        return {"name": name, "source": "vislab", "spec": entry.spec.to_dict(), **entry.meta}
    import timm

    from vislab.models import pypi_weights

    cfg = timm.get_pretrained_cfg(name)
    spec = _spec_from_pretrained_cfg(cfg.to_dict() if cfg is not None else {})
    return {
        "name": name,
        "source": "timm",
        "spec": spec.to_dict(),
        "pretrained": ["true", "pypi"] if pypi_weights.supports(name) else ["true"],
    }


def _ensure_builtin() -> None:
    """Import the modules whose builders register themselves (lazily, no work at import)."""
    from vislab.models import crops, fast_cnn, simple_cnn, yolo  # noqa: F401


def check_name(name: str) -> None:
    """Fail with the closest names when a model name is neither vislab's nor timm's."""
    if get_entry(name) is not None:
        return
    import timm

    if timm.is_model(name):
        return
    import difflib

    known = list_models() + timm.list_models()
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `vislab models` for the list"
    raise VislabError(f"model.name: unknown model '{name}'{hint}")


def create_model(cfg: "ModelConfig", num_classes: int, *, load_weights: bool = True) -> nn.Module:
    """Build the model a config names: a vislab builder, or any timm model by name.

    `pretrained` and `weights` are applied here, and what was loaded is kept on the model as
    `vislab_load_report` (a dict, or None). `load_weights=False` builds the same architecture
    and DataSpec without touching any weights: restoring a run from its own checkpoint
    must not need the network or the original weight files.
    """
    from vislab.models import backbones
    from vislab.models import weights as local_weights

    check_name(cfg.name)
    if cfg.weights is not None and cfg.pretrained:
        raise VislabError(
            f"model: both pretrained: {cfg.pretrained} and weights: {cfg.weights} are set; "
            "keep one (the weights file would overwrite the pretrained weights)"
        )
    entry = get_entry(cfg.name)
    report: dict[str, Any] | None = None
    if entry is not None:
        if cfg.pretrained and not entry.meta.get("pretrained", False):
            raise VislabError(
                f"model.pretrained: vislab's '{cfg.name}' has no pretrained weights; "
                "set pretrained: false, or weights: PATH to a checkpoint of this model"
            )
        if cfg.head is not None and not entry.meta.get("head", False):
            raise VislabError(
                f"model.head: '{cfg.name}' has its own head settings; remove model.head "
                "(the custom head applies to timm backbones)"
            )
        model = entry.builder(cfg=cfg, num_classes=num_classes)
        model.vislab_spec = entry.spec
    else:
        model, report = backbones.create_timm(cfg, num_classes, load_weights=load_weights)
    if cfg.attention == "abn":
        from vislab.models.abn import ABN

        spec = data_spec(model)
        model = ABN(model, num_classes, stage=cfg.abn.stage)
        model.vislab_spec = spec
        report = dict(report or {}, new_modules=["attention_branch"])
    if cfg.weights is not None and load_weights:
        branch = model.attention_branch.score.weight.clone() if cfg.attention == "abn" else None
        report = local_weights.load_weights(model, cfg.weights).to_dict()
        if branch is not None and torch.equal(branch, model.attention_branch.score.weight):
            report["new_modules"] = ["attention_branch"]
    model.vislab_load_report = report
    return model


def _spec_from_pretrained_cfg(cfg: dict[str, Any]) -> DataSpec:
    return DataSpec(
        input_size=tuple(cfg.get("input_size", (3, 224, 224))),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=cfg.get("interpolation", "bilinear"),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


def data_spec(model: nn.Module) -> DataSpec:
    """The input a built model expects: its registry spec, else timm's pretrained config."""
    spec = getattr(model, "vislab_spec", None)
    if isinstance(spec, DataSpec):
        return spec
    return _spec_from_pretrained_cfg(getattr(model, "pretrained_cfg", None) or {})
