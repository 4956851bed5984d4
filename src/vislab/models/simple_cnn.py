"""The configurable from-scratch CNN family (the emotion-recognition report's grid).

`layers` conv blocks (conv -> BN -> ReLU -> max-pool), filters doubling from `filters`,
then global average pooling, an optional FC layer with dropout, and the classifier. Initial
weights are N(0, init_std) from a fixed generator seed, so every variant of a grid starts
alike whatever the global RNG did before.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vislab.config import ModelConfig, SimpleCNNConfig
from vislab.models.registry import DataSpec, register_model

INIT_SEED = 1234


class SimpleCNN(nn.Module):
    def __init__(self, cfg: SimpleCNNConfig, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        ch = in_chans
        for i in range(cfg.layers):
            out = cfg.filters * 2**i
            blocks += [
                nn.Conv2d(ch, out, cfg.kernel_size, padding="same", bias=not cfg.batch_norm),
                nn.BatchNorm2d(out) if cfg.batch_norm else nn.Identity(),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            ch = out
        self.features = nn.Sequential(*blocks)
        self.num_features = ch
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = cfg.dropout
        self.fc_width = cfg.fc
        self.reset_classifier(num_classes)
        self._init_std = cfg.init_std
        if cfg.init_std is not None:
            self._init_weights(cfg.init_std)

    def _init_weights(self, std: float) -> None:
        gen = torch.Generator().manual_seed(INIT_SEED)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                    if m.bias is not None:
                        m.bias.zero_()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        if self.fc_width:
            self.head = nn.Sequential(
                nn.Flatten(1),
                nn.Linear(self.num_features, self.fc_width),
                nn.ReLU(inplace=True),
                nn.Dropout(self.head_drop),
                nn.Linear(self.fc_width, num_classes),
            )
        else:
            self.head = nn.Sequential(nn.Flatten(1), nn.Dropout(self.head_drop), nn.Linear(self.num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if pre_logits:
            return x.flatten(1)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("simple_cnn", spec=DataSpec(input_size=(3, 64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0))
def simple_cnn(cfg: ModelConfig, num_classes: int) -> SimpleCNN:
    return SimpleCNN(cfg.simple_cnn, num_classes, in_chans=cfg.in_chans)
