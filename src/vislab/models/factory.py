"""The one factory: a model name (vislab's own or any timm model) to a built model.

Importing this module imports vislab's builder modules, which register themselves in
`registry`; a new builder module is one more import line below. Every command that builds,
lists or checks a model name comes through here, so a name means the same everywhere.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from vislab.errors import VislabError
from vislab.models import crops, fast_cnn, simple_cnn, yolo  # noqa: F401  (the builders register themselves)
from vislab.models.registry import DEFAULT_TASK, Entry, data_spec, registered, registered_names, spec_from_pretrained_cfg

if TYPE_CHECKING:
    from vislab.config import ModelConfig


def get_entry(name: str) -> Entry | None:
    """vislab's registry entry of `name`, or None (a timm name, or unknown)."""
    return registered(name)


def list_models(pattern: str = "*", include_timm: bool = False) -> list[str]:
    """vislab's own model names matching a glob pattern (and timm's, when asked)."""
    names = [n for n in registered_names() if fnmatch.fnmatch(n, pattern)]
    if include_timm:
        import timm

        names += [n for n in timm.list_models(pattern) if registered(n) is None]
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
    spec = spec_from_pretrained_cfg(cfg.to_dict() if cfg is not None else {})
    return {
        "name": name,
        "source": "timm",
        "spec": spec.to_dict(),
        "pretrained": ["true", "pypi"] if pypi_weights.supports(name) else ["true"],
    }


def model_task(name: str) -> str:
    """The task a model name's outputs serve: its registry `task`, classify for timm models."""
    check_name(name)
    entry = get_entry(name)
    return entry.task if entry is not None else DEFAULT_TASK


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


def check_kwargs(name: str, kwargs: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse a `model.kwargs` key the builder would never read (a typo trained as if unset)."""
    extra = [k for k in kwargs if k not in allowed]
    if not extra:
        return
    if allowed:
        raise VislabError(f"model.kwargs.{extra[0]}: not a setting of {name}; allowed: {', '.join(allowed)}")
    raise VislabError(f"model.kwargs.{extra[0]}: {name} takes no model.kwargs; its settings are model.{name}.* (`vislab config model.{name}`)")


def create_model(cfg: "ModelConfig", num_classes: int, *, load_weights: bool = True) -> nn.Module:
    """Build the model a config names: a vislab builder, or any timm model by name.

    `pretrained` and `weights` are applied here, and what was loaded is kept on the model as
    `vislab_load_report` (a dict, or None). A builder registered with `kwargs=(...)` names
    the `model.kwargs` it reads; any other is refused. `load_weights=False` builds the same architecture
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
        allowed = entry.meta.get("kwargs")
        if allowed is not None:
            check_kwargs(cfg.name, cfg.kwargs, tuple(allowed))
        # A restore builds the architecture only: a builder that loads its own pretrained
        # weights (a timm backbone from the hub, its `weight_kwargs`) must not reach for them.
        off = {key: False for key in entry.meta.get("weight_kwargs", ())}
        build_cfg = cfg if load_weights else cfg.model_copy(update={"pretrained": False, "kwargs": {**cfg.kwargs, **off}})
        model = entry.builder(cfg=build_cfg, num_classes=num_classes)
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
