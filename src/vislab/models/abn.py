"""Attention Branch Network (Fukui et al., CVPR 2019) around any CNN backbone.

The backbone is split at one of its stages (timm's `feature_info` names the module). A
forward hook on that module hands its output `f` to the attention branch, which produces
per-class score maps, attention-branch logits (their global average) and a one-channel
attention map `M`; the hook then returns `f * M + f`, so the backbone's remaining layers and
its own head form the perception branch. Splitting by hook rather than by re-assembling
layers is what lets one implementation serve VGG, ResNet, EfficientNet, ConvNeXt or the
simple CNN, at any input size, and keeps the backbone's parameter names unchanged so a plain
backbone checkpoint loads as it is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislab.errors import VislabError
from vislab.models.registry import data_spec

_POOL_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def stage_info(backbone: nn.Module) -> list[dict[str, Any]]:
    """The backbone's stages as dicts with `module`, `num_chs` and `reduction`."""
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise VislabError(
            f"model.attention: abn needs a backbone that lists its stages (feature_info); "
            f"{type(backbone).__name__} does not. Use a timm CNN or simple_cnn"
        )
    return [dict(i) for i in info]


def default_stage(backbone: nn.Module) -> int:
    """Index of the last stage whose output comes from a conv block, not a pooling layer."""
    info = stage_info(backbone)
    modules = dict(backbone.named_modules())
    for idx in range(len(info) - 1, -1, -1):
        if not isinstance(modules.get(info[idx]["module"]), _POOL_TYPES):
            return idx
    return len(info) - 1


class _Probed(Exception):
    """Stops the layout probe's forward pass once the stage has produced its output."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape


def stage_output_shape(backbone: nn.Module, module: nn.Module) -> tuple[int, ...]:
    """The shape `module` outputs for one image at the backbone's own input size.

    `feature_info` names a stage and its channels but not its layout: ViT, DeiT, Mixer and
    Hiera stages output tokens (B, N, C) and Swin or MambaOut stages channels-last maps
    (B, H, W, C). Only running the backbone tells, so it runs once, in eval mode and without
    gradients, and stops at the stage (the rest of the network never runs).
    """
    channels, height, width = (int(v) for v in data_spec(backbone).input_size)
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None:
        channels = conv.in_channels

    def stop(_module: nn.Module, _args: Any, out: Any) -> None:
        raise _Probed(tuple(out.shape) if isinstance(out, torch.Tensor) else ())

    modes = {m: m.training for m in backbone.modules()}
    handle = module.register_forward_hook(stop)
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(1, channels, height, width))
    except _Probed as probed:
        return probed.shape
    finally:
        handle.remove()
        for m, training in modes.items():
            m.training = training
    return ()


def check_stage_layout(backbone: nn.Module, stage: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Refuse a stage whose output is not a (B, C, H, W) map with the stage's channel count."""
    if len(shape) == 4 and shape[1] == stage["num_chs"]:
        return
    layout = {3: "tokens (B, N, C)", 4: "a channels-last map (B, H, W, C)"}.get(len(shape), f"shape {list(shape)}")
    raise VislabError(
        f"model.attention: abn needs a backbone whose stages output (B, C, H, W) feature maps; "
        f"{type(backbone).__name__}'s stage '{stage['module']}' outputs {layout}. Use a CNN "
        "(resnet, efficientnet, convnext, vgg, simple_cnn) or set model.attention: none"
    )


class AttentionBranch(nn.Module):
    """Features -> per-class score maps -> (attention logits, attention map in [0, 1])."""

    def __init__(self, in_chs: int, num_classes: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or min(in_chs, 512)
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_chs),
            nn.Conv2d(in_chs, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, 1, bias=False),
            nn.BatchNorm2d(num_classes),
            nn.ReLU(inplace=True),
        )
        self.score = nn.Conv2d(num_classes, num_classes, 1, bias=False)
        self.attention = nn.Sequential(
            nn.Conv2d(num_classes, 1, 1, bias=False),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        # the map starts as the summed (non-negative) class evidence, so it begins where the
        # score maps fire instead of at a random signed mix of them
        nn.init.constant_(self.attention[0].weight, 1.0 / num_classes)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.body(f)
        logits = self.score(s).mean(dim=(2, 3))
        return logits, self.attention(s)


class ABN(nn.Module):
    """A backbone whose stage `stage` output is re-weighted by a learned attention map.

    `forward` returns a dict: `logits` (perception branch, used for prediction),
    `att_logits` (attention branch) and `attention` (B x 1 x h x w map at the stage's size).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, stage: int | None = None) -> None:
        super().__init__()
        info = stage_info(backbone)
        idx = default_stage(backbone) if stage is None else stage
        if not -len(info) <= idx < len(info):
            raise VislabError(
                f"model.abn.stage: {stage} is out of range; this backbone has stages 0..{len(info) - 1}"
            )
        self.stage = info[idx]
        target = dict(backbone.named_modules())[self.stage["module"]]
        check_stage_layout(backbone, self.stage, stage_output_shape(backbone, target))
        self.backbone = backbone
        self.attention_branch = AttentionBranch(self.stage["num_chs"], num_classes)
        self.num_classes = num_classes
        self.num_features = getattr(backbone, "num_features", None)
        self._out: dict[str, torch.Tensor] = {}
        target.register_forward_hook(self._reweight)

    def _reweight(self, module: nn.Module, args: Any, f: torch.Tensor) -> torch.Tensor:
        att_logits, m = self.attention_branch(f)
        self._out = {"att_logits": att_logits, "attention": m}
        return f * m + f

    def head_module_names(self) -> list[str]:
        """Trained while the backbone is frozen: the new attention branch and the classifier."""
        from vislab.models.backbones import head_module_names

        return ["attention_branch"] + [f"backbone.{n}" for n in head_module_names(self.backbone)]

    @property
    def vislab_head_prefixes(self) -> list[str]:
        """Keys a plain backbone checkpoint lacks or sizes differently: the branch and the head."""
        from vislab.models.weights import head_prefixes

        return ["attention_branch"] + [f"backbone.{p}" for p in head_prefixes(self.backbone)]

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        return stage_info(self.backbone)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return getattr(self.backbone, "pretrained_cfg", {}) or {}

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        self.backbone.reset_classifier(num_classes)
        self.attention_branch = AttentionBranch(self.stage["num_chs"], num_classes)
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.backbone(x)
        out, self._out = self._out, {}
        return {"logits": logits, **out}


def abn_loss(
    out: dict[str, torch.Tensor],
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha * CE(attention logits) + beta * CE(perception logits); returns total and parts.

    Soft (mixup/cutmix) targets are accepted as probabilities, like F.cross_entropy.
    """
    att = F.cross_entropy(out["att_logits"], target, weight=weight, label_smoothing=label_smoothing)
    per = F.cross_entropy(out["logits"], target, weight=weight, label_smoothing=label_smoothing)
    return alpha * att + beta * per, {"att_loss": att, "per_loss": per}


def attention_upsampled(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Attention maps resized to the input image size, for overlays."""
    return F.interpolate(attention, size=size, mode="bilinear", align_corners=False)
