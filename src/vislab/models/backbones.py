"""timm backbones: creation, custom heads, freezing and local weights."""

from __future__ import annotations

import timm
import torch.nn as nn

from vislab.config import ModelConfig


def create_timm(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Any timm model by name; `pretrained: true` uses timm's own hub loading."""
    return timm.create_model(
        cfg.name,
        pretrained=cfg.pretrained is True,
        num_classes=num_classes,
        in_chans=cfg.in_chans,
        drop_rate=cfg.drop_rate,
        **cfg.kwargs,
    )
