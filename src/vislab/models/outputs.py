"""Which part of a model's output is the class scores: the one rule, used everywhere.

A model returns either its logits, or a mapping of named heads (vislab's attention branch
network returns `logits`, `att_logits` and `attention`); a tuple's first tensor is taken
for foreign models that return (logits, extras). Training, evaluation, CAMs and export all
read outputs through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

LOGITS_KEY = "logits"  # the prediction of a multi-head output
BRANCH_KEYS = ("logits", "att_logits")  # heads with class scores: the prediction and, for ABN, the attention branch


def logits_of(output: Any, key: str = LOGITS_KEY) -> torch.Tensor:
    """The class scores of a model output: the tensor itself, `output[key]`, or a tuple's first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if key in output:
            return output[key]
        raise KeyError(f"model output has no {key!r} entry (keys: {', '.join(map(str, output))})")
    if hasattr(output, key):
        return getattr(output, key)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def class_heads(output: Any) -> dict[str, torch.Tensor]:
    """Every head with class scores, by name: {"logits": ...} and, for ABN, "att_logits"."""
    if isinstance(output, Mapping):
        return {k: output[k] for k in BRANCH_KEYS if k in output}
    return {LOGITS_KEY: logits_of(output)}


class LogitsOnly(nn.Module):
    """Wrap a model so its forward returns only the logits (CAM methods and ONNX export expect that)."""

    def __init__(self, model: nn.Module, key: str = LOGITS_KEY) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x), self.key)
