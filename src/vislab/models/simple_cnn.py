"""The configurable from-scratch CNN family (the emotion-recognition report's grid).

`layers` conv blocks (conv -> BN -> ReLU -> 2x2 max-pool), filters doubling from `filters`,
then global average pooling, an optional FC layer with ReLU and dropout, and the classifier.
Even kernels (4) get TF-style "same" padding (the extra row/column on the bottom/right) from
an explicit pad layer, which exports cleanly and avoids PyTorch's even-kernel warning.

Weights are drawn inside a private RNG seeded with `init_seed`, so two builds of one config
are identical and every variant of a grid starts from the same draws whatever the global
seed did before (`init_seed: null` follows the global RNG instead). `init_std` draws conv
and linear weights from N(0, init_std); without it PyTorch's default init is used.
`feature_info` lists each block's output before pooling, as timm's models do, so attention
branches and CAMs find the stages without special cases.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vislab.config import ModelConfig, SimpleCNNConfig
from vislab.models.registry import DataSpec, register_model


def conv_same(in_ch: int, out_ch: int, kernel_size: int, bias: bool) -> nn.Module:
    """A stride-1 conv whose output keeps the input's height and width, for odd or even kernels."""
    if kernel_size % 2:
        return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias)
    before, after = (kernel_size - 1) // 2, kernel_size // 2
    return nn.Sequential(
        nn.ZeroPad2d((before, after, before, after)),
        nn.Conv2d(in_ch, out_ch, kernel_size, bias=bias),
    )


class SimpleCNN(nn.Module):
    def __init__(self, cfg: SimpleCNNConfig, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        if cfg.init_seed is None:
            self._build(cfg, num_classes, in_chans)
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            self._build(cfg, num_classes, in_chans)

    def _build(self, cfg: SimpleCNNConfig, num_classes: int, in_chans: int) -> None:
        """Layers, then (with `init_std`) N(0, std) weights drawn afresh from the seed, so
        layers of the same shape in two variants get the same draws."""
        blocks: list[nn.Module] = []
        ch = in_chans
        for i in range(cfg.layers):
            out = cfg.filters * 2**i
            blocks += [
                conv_same(ch, out, cfg.kernel_size, bias=not cfg.batch_norm),
                nn.BatchNorm2d(out) if cfg.batch_norm else nn.Identity(),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            ch = out
        self.features = nn.Sequential(*blocks)
        self.feature_info = [
            {"module": f"features.{4 * i + 2}", "num_chs": cfg.filters * 2**i, "reduction": 2**i}
            for i in range(cfg.layers)
        ]
        self.num_features = ch
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = cfg.dropout
        self.fc_width = cfg.fc
        self.reset_classifier(num_classes)
        if cfg.init_std is not None:
            if cfg.init_seed is not None:
                torch.manual_seed(cfg.init_seed)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, 0.0, cfg.init_std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for `num_classes` (FC -> ReLU -> dropout -> classifier when `fc` > 0)."""
        self.num_classes = num_classes
        if self.fc_width:
            self.head = nn.Sequential(
                nn.Linear(self.num_features, self.fc_width),
                nn.ReLU(inplace=True),
                nn.Dropout(self.head_drop),
                nn.Linear(self.fc_width, num_classes),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(self.head_drop), nn.Linear(self.num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the feature map; `pre_logits` returns what `get_classifier()` takes as input."""
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(
    "simple_cnn",
    spec=DataSpec(input_size=(3, 64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0),
    description="from-scratch CNN family: 1-6 conv blocks, filters doubling, GAP, FC, dropout",
    pretrained=False,
    kwargs=(),
)
def simple_cnn(cfg: ModelConfig, num_classes: int) -> SimpleCNN:
    return SimpleCNN(cfg.simple_cnn, num_classes, in_chans=cfg.in_chans)
