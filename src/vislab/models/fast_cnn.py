"""A compact conv net for small images (32x32), built for minutes-scale training.

The design follows published fast-CIFAR work (e.g. the "airbench" line of experiments),
written here from the ideas, not from any code:

- a stem of small (2x2) filters that is not learned but set from the training data as a
  patch-whitening transform: the eigenvectors of the covariance of image patches, scaled by
  1/sqrt(eigenvalue), each used with both signs so the activation keeps the information
  (`init_whitening`; the `WhiteningInit` callback calls it before the first step);
- three stages of conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU, pooling first so
  the second conv of each stage runs at the lower resolution;
- global max pooling, a bias-free linear classifier, and logits scaled by a constant
  (a large-batch, high-learning-rate recipe trains better with small initial logits);
- BatchNorm scales optionally kept at 1 (`bn_weight: false`), only the shifts learning;
- optional identity ("dirac") initialisation of the convs, which makes a deep plain net
  start close to a shallow one.

Each trick is a field of `model.fast_cnn`, so its effect can be measured alone.
`feature_info` lists each stage's output, as timm's models do, so CAMs and attention
branches find the stages without special cases.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vislab.config import FastCNNConfig, ModelConfig
from vislab.models.registry import DataSpec, register_model

# CIFAR-10 channel statistics (the recipe's data); other data only shifts the first BN a little
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def whitening_filters(images: torch.Tensor, kernel: int, eps: float = 5e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Filters and bias that map k x k patches of `images` to decorrelated unit-variance outputs.

    `images` is a float batch N x C x H x W, already normalised as the model will see it.
    Returns (weight [2*C*k*k, C, k, k], bias [2*C*k*k]): the eigenvectors of the patch
    covariance scaled by 1/sqrt(eigenvalue + eps), largest eigenvalue first, then the same
    filters negated; the bias removes the patch mean, so each output is zero-mean.
    """
    n, c = images.shape[:2]
    patches = images.float().unfold(2, kernel, 1).unfold(3, kernel, 1)  # N, C, H', W', k, k
    flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kernel * kernel)
    mean = flat.mean(0, dtype=torch.float64)
    gram = (flat.T @ flat).double() / flat.shape[0]
    cov = gram - torch.outer(mean, mean)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(eigvals, descending=True)
    eigvals, eigvecs = eigvals[order].clamp_min(0), eigvecs[:, order]
    filters = eigvecs.T / torch.sqrt(eigvals + eps)[:, None]  # one filter per row
    bias = -(filters @ mean)
    weight = torch.cat([filters, -filters]).reshape(-1, c, kernel, kernel)
    return weight.float(), torch.cat([bias, -bias]).float()


class ConvStage(nn.Module):
    """conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, in_ch: int, out_ch: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(out_ch, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, momentum=bn_momentum)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class FastCNN(nn.Module):
    def __init__(self, cfg: FastCNNConfig, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        k = cfg.whiten_kernel
        self.whiten = cfg.whiten
        self.whiten_eps = cfg.whiten_eps
        self.stem = nn.Conv2d(in_chans, 2 * in_chans * k * k, k, padding=0, bias=True)
        if cfg.whiten:
            # set from the data by init_whitening, then kept: only its bias learns
            self.stem.weight.requires_grad_(False)
        self.stem_act = nn.GELU()
        stages, ch = [], self.stem.out_channels
        for width in cfg.widths:
            stages.append(ConvStage(ch, width, cfg.bn_momentum))
            ch = width
        self.stages = nn.Sequential(*stages)
        self.feature_info = [
            {"module": f"stages.{i}", "num_chs": w, "reduction": 2 ** (i + 1)} for i, w in enumerate(cfg.widths)
        ]
        self.num_features = ch
        if not cfg.bn_weight:
            for m in self.stages.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
        self.global_pool = nn.AdaptiveMaxPool2d(1)
        self.logit_scale = cfg.logit_scale
        self.reset_classifier(num_classes)
        if cfg.dirac_init:
            for m in self.stages.modules():
                if isinstance(m, nn.Conv2d):
                    # identity on the first min(in, out) channels, default init elsewhere
                    n = min(m.in_channels, m.out_channels)
                    with torch.no_grad():
                        nn.init.dirac_(m.weight[:n, :n])

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor) -> None:
        """Set the stem to the patch-whitening transform of `images` (normalised N x C x H x W)."""
        weight, bias = whitening_filters(images, self.stem.kernel_size[0], self.whiten_eps)
        self.stem.weight.copy_(weight.to(self.stem.weight))
        self.stem.bias.copy_(bias.to(self.stem.bias))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes, bias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem_act(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.head(x) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(
    "fast_cnn",
    spec=DataSpec(input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, crop_pct=1.0),
    description="compact 3-stage conv net for 32x32 images with a patch-whitening stem (cifar10-fast)",
    pretrained=False,
    kwargs=(),
)
def fast_cnn(cfg: ModelConfig, num_classes: int) -> FastCNN:
    return FastCNN(cfg.fast_cnn, num_classes, in_chans=cfg.in_chans)
