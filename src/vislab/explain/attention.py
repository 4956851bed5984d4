"""Attention maps of an Attention Branch Network, in the same shape as a CAM result.

An ABN computes its own map M in the forward pass, so explaining it needs no gradients
and no target layer: the map is read from the model's output, resized to the input and
scaled per image to [0, 1] for display (the raw range is kept, since M is what multiplies
the features). M is one map per image, not per class, so only the predicted class is shown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vislab.errors import VislabError
from vislab.explain.cam import CamResult

METHOD = "attention"


def has_attention(model: nn.Module) -> bool:
    """True for a model with an attention branch (vislab's ABN)."""
    return hasattr(model, "attention_branch")


def scale_maps(maps: torch.Tensor) -> np.ndarray:
    """[B, 1, H, W] -> [B, H, W] float32, each map stretched to [0, 1] (a flat map becomes 0)."""
    flat = maps.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1, 1) - lo).clamp_min(1e-8)
    return ((maps - lo) / span).squeeze(1).float().cpu().numpy()


class AttentionRunner:
    """Reads ABN attention maps; called like `cam.CamRunner` and returns the same `CamResult`."""

    method = METHOD

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layer = f"attention_branch (on {model.stage['module']})" if hasattr(model, "stage") else "attention_branch"

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self.model(x)
        if not isinstance(out, dict) or "attention" not in out:
            raise VislabError("the model returned no attention map; --method attention needs a model trained with model.attention: abn")
        return out

    def __call__(self, x: torch.Tensor, targets: Sequence[int] | None = None) -> CamResult:
        out = self._forward(x)
        probs = torch.softmax(out["logits"].float(), dim=1).cpu().numpy()
        att = out["attention"].float()
        flat = att.flatten(1)
        raw = list(zip(flat.min(1).values.tolist(), flat.max(1).values.tolist()))
        maps = scale_maps(F.interpolate(att, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False))
        chosen = list(targets) if targets is not None else probs.argmax(1).tolist()
        return CamResult(heatmaps=maps, probs=probs, targets=[int(t) for t in chosen], layer=self.layer, raw_range=raw)


@contextlib.contextmanager
def attention_session(model: nn.Module) -> Iterator[AttentionRunner]:
    """Eval-mode access to an ABN's attention maps; the model's mode is restored on exit."""
    if not has_attention(model):
        raise VislabError(
            f"--method attention: this run's model ({type(model).__name__}) has no attention branch; "
            "train with `model.attention: abn`, or use --method gradcam"
        )
    was_training = model.training
    model.eval()
    try:
        yield AttentionRunner(model)
    finally:
        model.train(was_training)
