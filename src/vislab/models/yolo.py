"""YOLOv3 detectors: Darknet-53, YOLOv3-tiny and a YOLOv3 head on any timm backbone.

One model class, `YOLO`, three bodies:

- `yolov3`: Darknet-53 (a 3x3 stem, five stride-2 stages of residual blocks), features at
  strides 8, 16 and 32;
- `yolov3_tiny`: six 3x3 convs with max-pools (the last pool has stride 1), features at
  strides 16 and 32;
- `yolov3_timm`: the last 2 or 3 feature maps of any timm model built with
  `features_only=True`; their widths come from its `feature_info`, never from a table.

The neck and heads follow Darknet's cfgs: starting at the deepest level, convs make a
"route" feature, a 3x3 conv and a 1x1 prediction conv make that level's output, and a 1x1
lateral conv, upsampled 2x, is concatenated with the next finer backbone feature.
Every per-level list (strides, anchors, outputs, `levels`, `pred`) is in rising stride.

Input is RGB in [0, 1] (Darknet's convention; a timm body normalises with its own mean and
std inside), letterboxed to `img_size`. Training mode returns the raw per-level tensors
[B, A, H, W, 5 + C] (tx, ty, tw, th, objectness, classes, all logits) for `YOLOLoss`; eval
mode returns them decoded as [B, N, 5 + C]: x1, y1, x2, y2 in input pixels, objectness and
class probabilities; `postprocess` turns that into per-image detections. A validation step
that needs the loss and the boxes calls `forward_head(forward_features(x))` and `decode`
once each. Boxes are decoded as Darknet does, so imported `.weights` files work unchanged:
centre = (cell + sigmoid(t)) * stride, size = anchor * exp(t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislab.config import ModelConfig
from vislab.errors import SettingError, VislabError
from vislab.metrics.detection import kept
from vislab.models.registry import DataSpec, register_model

# Anchors in pixels at 416 px, smallest first (Darknet's yolov3.cfg and yolov3-tiny.cfg).
COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
TINY_ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
ARCHS = ("yolov3", "yolov3_tiny", "timm")
MAX_LOG_WH = 10.0  # exp() input cap: only guards against overflow, no trained model gets near it
ANCHORS_KEY = "model.kwargs.anchors"  # named by a bad anchors error: a task that sets them renames it
MAX_NMS = 30000  # candidates kept (by score) before NMS, so a low threshold cannot stall it


@dataclass(frozen=True)
class YOLOConfig:
    """What a YOLO is. `anchors` are (w, h) in pixels at `img_size`, smallest first, split
    evenly over the levels in rising stride (None: COCO's 9 for three levels, yolov3-tiny's 6
    for two). `backbone`, `levels` and `pretrained` apply to arch "timm" only."""

    arch: str = "yolov3"
    num_classes: int = 80
    anchors: tuple[tuple[float, float], ...] | None = None
    img_size: int = 416
    in_chans: int = 3
    backbone: str = "tf_efficientnet_lite0"
    levels: int = 3
    pretrained: bool = False
    width: float = 1.0  # yolov3_tiny only: every layer's filters times this (a test-sized model; Darknet files need 1.0)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise VislabError(f"yolo arch '{self.arch}' is unknown; choose one of {', '.join(ARCHS)}")
        if self.num_classes < 1:
            raise VislabError(f"yolo num_classes must be at least 1 (got {self.num_classes})")
        if not isinstance(self.img_size, int) or self.img_size < 32:
            raise VislabError(f"model.kwargs.img_size: the training input size in pixels, at least 32 (got {self.img_size!r})")
        if not 0 < self.width <= 1 or (self.width != 1 and self.arch != "yolov3_tiny"):
            raise VislabError(f"model.kwargs.width: a yolov3_tiny filter multiplier in (0, 1] (got {self.width!r} for {self.arch})")
        if self.levels not in (2, 3):
            raise VislabError(f"model.kwargs.levels: a YOLO head uses the last 2 or 3 feature levels (got {self.levels})")
        if self.anchors is None:
            object.__setattr__(self, "anchors", COCO_ANCHORS if self.num_levels == 3 else TINY_ANCHORS)
        anchors = tuple((float(w), float(h)) for w, h in self.anchors)
        object.__setattr__(self, "anchors", anchors)
        if len(anchors) % self.num_levels or any(w <= 0 or h <= 0 for w, h in anchors):
            raise SettingError(
                f"{ANCHORS_KEY}: {len(anchors)} anchors do not split over {self.num_levels} levels, "
                "or one is not positive; give a multiple of the level count of positive [w, h] pairs",
                (ANCHORS_KEY,),
            )

    @property
    def num_levels(self) -> int:
        return {"yolov3": 3, "yolov3_tiny": 2}.get(self.arch, self.levels)

    @property
    def anchors_per_level(self) -> int:
        return len(self.anchors) // self.num_levels


# --- building blocks ---------------------------------------------------------------------


class ConvBN(nn.Module):
    """Darknet's [convolutional] with batch_normalize=1: conv (no bias), BN, leaky ReLU 0.1."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, momentum=0.03)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    """Darknet-53's block: 1x1 to half width, 3x3 back, plus the input ([shortcut])."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(c, c // 2, 1)
        self.conv2 = ConvBN(c // 2, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class Darknet53(nn.Module):
    """A 3x3 stem of 32, then five stages (a stride-2 3x3 conv doubling the width, then 1, 2,
    8, 8, 4 residual blocks); features: the last three stages (256, 512, 1024 wide)."""

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = ConvBN(in_chans, 32, 3)
        stages, c = [], 32
        for blocks in (1, 2, 8, 8, 4):
            stages.append(nn.Sequential(ConvBN(c, 2 * c, 3, 2), *[Residual(2 * c) for _ in range(blocks)]))
            c *= 2
        self.stages = nn.ModuleList(stages)
        self.channels, self.strides = [256, 512, 1024], [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, feats = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                feats.append(x)
        return feats


class PadPool(nn.Module):
    """Darknet's [maxpool] size=2 stride=1: the window reaches one pixel right and down, and
    outside the image only the pixels inside count (Darknet uses -FLT_MAX there). Replicating
    the edge gives exactly that; zero padding would differ wherever the edge is negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)


class TinyBackbone(nn.Module):
    """yolov3-tiny's body: 3x3 convs of 16..512 filters each followed by a 2x2 max-pool (the
    sixth with stride 1), then a 1024 conv. Features: the 256 conv (stride 16), the 1024 conv."""

    def __init__(self, in_chans: int = 3, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for i, filters in enumerate((16, 32, 64, 128, 256, 512)):
            # Darknet's stride-2 pool pads right/bottom too: ceil_mode matches it on odd sizes
            layers += [ConvBN(c, _scaled(filters, width), 3), PadPool() if i == 5 else nn.MaxPool2d(2, 2, ceil_mode=True)]
            c = _scaled(filters, width)
        layers.append(ConvBN(c, _scaled(1024, width), 3))
        self.layers = nn.Sequential(*layers)
        self.route = 8  # index of the 256 conv, whose output is the stride-16 feature
        self.channels, self.strides = [_scaled(256, width), _scaled(1024, width)], [16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        fine = self.layers[: self.route + 1](x)
        return [fine, self.layers[self.route + 1 :](fine)]


class TimmBackbone(nn.Module):
    """The last `levels` feature maps of a timm model; takes [0, 1] input and normalises it
    with the backbone's own mean and std, so every YOLO takes the same input."""

    def __init__(self, name: str, levels: int, in_chans: int = 3, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise VislabError(f"model.kwargs.backbone: timm has no model '{name}'; see `vislab models --timm`")
        kwargs = dict(features_only=True, out_indices=tuple(range(-levels, 0)), in_chans=in_chans)
        if pretrained:
            from vislab.models.backbones import hub_pretrained

            self.body = hub_pretrained(name, kwargs)
        else:
            self.body = timm.create_model(name, **kwargs)
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        pcfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean, std = pcfg.get("mean", (0.5,) * 3), pcfg.get("std", (0.5,) * 3)
        if len(mean) != in_chans:
            mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body((x - self.mean) / self.std))


class Level(nn.Module):
    """One detection scale: `neck` makes the route feature from the backbone feature (joined
    with the coarser level's upsampled lateral), `conv` the prediction conv's input, and
    `lateral` (absent on the finest level) the 1x1 conv passed on to the next finer level."""

    def __init__(self, neck: list[nn.Module], conv: ConvBN, lateral: ConvBN | None) -> None:
        super().__init__()
        self.neck = nn.Sequential(*neck)
        self.conv = conv
        self.lateral = lateral
        self.out_channels = conv.conv.out_channels


def v3_levels(channels: Sequence[int]) -> list[Level]:
    """YOLOv3's neck on features of `channels` (rising stride): per level five alternating
    1x1/3x3 convs at width w = channels // 2, a 3x3 at 2w, a 1x1 lateral at w // 2.
    On Darknet-53 (256, 512, 1024) this is yolov3.cfg layer for layer."""
    levels: list[Level] = []
    lateral = 0  # channels the coarser level passes down
    for i in reversed(range(len(channels))):
        w = channels[i] // 2
        c_in = channels[i] + lateral
        neck = [ConvBN(c_in, w, 1), ConvBN(w, 2 * w, 3), ConvBN(2 * w, w, 1), ConvBN(w, 2 * w, 3), ConvBN(2 * w, w, 1)]
        levels.insert(0, Level(neck, ConvBN(w, 2 * w, 3), ConvBN(w, w // 2, 1) if i > 0 else None))
        lateral = w // 2
    return levels


def _scaled(filters: int, width: float) -> int:
    return max(4, round(filters * width))


def tiny_levels(width: float = 1.0) -> list[Level]:
    """yolov3-tiny.cfg's neck: stride 16 takes the 128 lateral plus the 256 feature straight
    into a 3x3 256; stride 32 reduces the 1024 feature to 256, then a 3x3 512 (all times `width`)."""

    def w(filters: int) -> int:
        return _scaled(filters, width)

    return [
        Level([], ConvBN(w(128) + w(256), w(256), 3), None),
        Level([ConvBN(w(1024), w(256), 1)], ConvBN(w(256), w(512), 3), ConvBN(w(256), w(128), 1)),
    ]


# --- the model ---------------------------------------------------------------------------


class YOLO(nn.Module):
    def __init__(self, cfg: YOLOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.arch == "yolov3":
            self.backbone: nn.Module = Darknet53(cfg.in_chans)
            levels = v3_levels(self.backbone.channels)
        elif cfg.arch == "yolov3_tiny":
            self.backbone = TinyBackbone(cfg.in_chans, cfg.width)
            levels = tiny_levels(cfg.width)
        else:
            self.backbone = TimmBackbone(cfg.backbone, cfg.levels, cfg.in_chans, cfg.pretrained)
            levels = v3_levels(self.backbone.channels)
        self.levels = nn.ModuleList(levels)
        self.strides: list[int] = list(self.backbone.strides)
        a = cfg.anchors_per_level
        anchors = torch.tensor(cfg.anchors, dtype=torch.float32).view(cfg.num_levels, a, 2)
        # not in the state_dict: the config is the one source of the anchors
        self.register_buffer("anchors", anchors, persistent=False)
        self.feature_info = [
            {"module": f"levels.{i}.conv", "num_chs": lv.out_channels, "reduction": s}
            for i, (lv, s) in enumerate(zip(self.levels, self.strides))
        ]
        self.reset_classifier(cfg.num_classes)

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[1]

    # classifier-style API, so freezing, weight loading and transfer find the class outputs

    def get_classifier(self) -> nn.ModuleList:
        """The 1x1 prediction convs, one per level: the only layers whose shape depends on the classes."""
        return self.pred

    def head_module_names(self) -> list[str]:
        """What a frozen-backbone fine-tune trains: the neck and the prediction convs."""
        return ["levels", "pred"]

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh prediction convs for `num_classes`, biased so training starts with few, unsure boxes."""
        self.num_classes = num_classes
        self.cfg = replace(self.cfg, num_classes=num_classes)
        no = 5 + num_classes
        self.pred = nn.ModuleList(nn.Conv2d(lv.out_channels, self.num_anchors * no, 1) for lv in self.levels)
        for conv, stride in zip(self.pred, self.strides):
            init_pred_bias(conv, self.num_anchors, stride, self.cfg.img_size, num_classes)
        self.pred.to(self.anchors.device)

    # forward

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone feature maps, rising stride."""
        return self.backbone(x)

    def forward_head(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Neck and prediction convs: raw outputs [B, A, H, W, 5 + C] per level, rising stride."""
        outs: list[torch.Tensor] = []
        route: torch.Tensor | None = None
        for i in reversed(range(len(self.levels))):
            level, x = self.levels[i], feats[i]
            if route is not None:
                lateral = self.levels[i + 1].lateral(route)
                x = torch.cat([F.interpolate(lateral, size=x.shape[-2:], mode="nearest"), x], 1)
            route = level.neck(x)
            p = self.pred[i](level.conv(route))
            b, _, h, w = p.shape
            outs.insert(0, p.view(b, self.num_anchors, -1, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return outs

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw per-level outputs -> [B, N, 5 + C]: x1, y1, x2, y2 (input pixels), objectness, class probabilities."""
        out = []
        for r, anchors, stride in zip(raw, self.anchors, self.strides):
            boxes = decode_boxes(r, anchors, stride)
            out.append(torch.cat([boxes, r[..., 4:].float().sigmoid()], -1).flatten(1, 3))
        return torch.cat(out, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        raw = self.forward_head(self.forward_features(x))
        return raw if self.training else self.decode(raw)

    def darknet_layers(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
        """Every conv with its BN (None: the conv has a bias), in Darknet's cfg order:
        the backbone, then per level from the deepest: neck, 3x3, prediction conv, lateral."""
        if self.cfg.arch == "timm":
            raise VislabError(f"model: a timm-backbone YOLO ({self.cfg.backbone}) has no Darknet layout; use yolov3 or yolov3_tiny")
        layers = _conv_bn(self.backbone)
        for i in reversed(range(len(self.levels))):
            lv = self.levels[i]
            layers += _conv_bn(lv.neck) + _conv_bn(lv.conv) + [(self.pred[i], None)]
            if lv.lateral is not None:
                layers += _conv_bn(lv.lateral)
        return layers


def _conv_bn(module: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    return [(m.conv, m.bn) for m in module.modules() if isinstance(m, ConvBN)]


def init_pred_bias(conv: nn.Conv2d, num_anchors: int, stride: int, img_size: int, num_classes: int) -> None:
    """Objectness starts at about 8 objects per image spread over the grid, class scores at
    0.6 / C: a fresh head then predicts few, unsure boxes instead of thousands of confident
    ones, which keeps the first steps' objectness loss from swamping everything else."""
    with torch.no_grad():
        bias = conv.bias.view(num_anchors, 5 + num_classes)
        bias[:, 4] = math.log(8 / (img_size / stride) ** 2)
        bias[:, 5:] = math.log(0.6 / max(num_classes - 0.99, 0.01))


def decode_boxes(raw: torch.Tensor, anchors: torch.Tensor, stride: int) -> torch.Tensor:
    """[B, A, H, W, 5 + C] raw -> [B, A, H, W, 4] x1, y1, x2, y2 in input pixels (float32)."""
    raw = raw[..., :4].float()
    _, a, h, w, _ = raw.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, device=raw.device, dtype=raw.dtype), torch.arange(w, device=raw.device, dtype=raw.dtype), indexing="ij"
    )
    xy = (raw[..., :2].sigmoid() + torch.stack((gx, gy), -1)) * stride
    wh = raw[..., 2:4].clamp(max=MAX_LOG_WH).exp() * anchors.view(1, a, 1, 1, 2).to(raw)
    return torch.cat([xy - wh / 2, xy + wh / 2], -1)


def postprocess(
    preds: torch.Tensor, conf: float = 0.25, iou: float = 0.45, max_det: int = 300, multi_label: bool = False
) -> list[torch.Tensor]:
    """Eval output [B, N, 5 + C] -> per image [n, 6]: x1, y1, x2, y2, score, class.

    score = objectness x class probability; boxes under `conf` go (`metrics.detection.kept`:
    a score equal to it stays, as evaluate counts it), then per-class NMS at `iou`, best
    `max_det` kept. `multi_label` keeps every class at or over `conf` for a box, not only the
    best (a little higher mAP at a low `conf`, at the cost of more boxes).
    """
    from torchvision.ops import batched_nms

    results = []
    for p in preds:
        scores = p[:, 4:5] * p[:, 5:]
        if multi_label:
            idx, cls = kept(scores, conf).nonzero(as_tuple=True)
            score = scores[idx, cls]
        else:
            score, cls = scores.max(1)
            idx = kept(score, conf).nonzero(as_tuple=True)[0]
            score, cls = score[idx], cls[idx]
        if score.numel() > MAX_NMS:
            top = score.topk(MAX_NMS).indices
            idx, score, cls = idx[top], score[top], cls[top]
        boxes = p[idx, :4]
        keep = batched_nms(boxes, score, cls, iou)[:max_det]
        results.append(torch.cat([boxes[keep], score[keep, None], cls[keep, None].to(boxes.dtype)], 1))
    return results


def transfer_classes(
    model: YOLO, old_names: Sequence[str], new_names: Sequence[str], mapping: dict[str, str] | None = None
) -> dict[str, str | None]:
    """Re-head `model` from `old_names` to `new_names` keeping what it knows.

    The backbone, the neck and every box and objectness row of the prediction convs stay;
    a new class takes the class row (weights and bias, every anchor) of the old class of the
    same name, case-insensitive (COCO `car` -> KITTI `Car`), or of the one `mapping` names
    (new name -> old name, e.g. {"Pedestrian": "person"}); other classes start as a freshly
    built head would. Returns {new name: old name it came from, or None}.
    """
    if len(old_names) != model.num_classes:
        raise VislabError(f"transfer: the model has {model.num_classes} classes but {len(old_names)} old names were given")
    by_name: dict[str, int] = {}
    for i, name in enumerate(old_names):
        by_name.setdefault(name.lower(), i)
    mapping = mapping or {}
    unknown_new = [k for k in mapping if k not in new_names]
    unknown_old = [v for v in mapping.values() if v.lower() not in by_name]
    if unknown_new or unknown_old:
        what = f"new classes {unknown_new}" if unknown_new else f"old classes {unknown_old}"
        raise VislabError(f"transfer mapping: {what} are not in the class list; map new names to old names")
    source = [by_name.get(mapping.get(name, name).lower()) for name in new_names]

    old_pred, c_old, c_new, a = model.pred, model.num_classes, len(new_names), model.num_anchors
    model.reset_classifier(c_new)
    with torch.no_grad():
        for old, new in zip(old_pred, model.pred):
            ow, nw = old.weight.view(a, 5 + c_old, -1), new.weight.view(a, 5 + c_new, -1)
            ob, nb = old.bias.view(a, 5 + c_old), new.bias.view(a, 5 + c_new)
            nw[:, :5], nb[:, :5] = ow[:, :5], ob[:, :5]
            for j, i in enumerate(source):
                if i is not None:
                    nw[:, 5 + j], nb[:, 5 + j] = ow[:, 5 + i], ob[:, 5 + i]
    return {name: (old_names[i] if i is not None else None) for name, i in zip(new_names, source)}


# --- registry ----------------------------------------------------------------------------

DETECT_SPEC = DataSpec(input_size=(3, 416, 416), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0)
_KWARGS = {"yolov3": ("anchors", "img_size"), "yolov3_tiny": ("anchors", "img_size", "width"), "timm": ("anchors", "img_size", "backbone", "levels")}


def config_from_model(arch: str, cfg: ModelConfig, num_classes: int) -> YOLOConfig:
    """A `YOLOConfig` from a run's model section: `model.kwargs` sets anchors, img_size (and
    for timm backbone, levels); `pretrained` applies to a timm backbone only."""
    allowed = _KWARGS[arch]
    extra = [k for k in cfg.kwargs if k not in allowed]
    if extra:
        raise VislabError(f"model.kwargs: '{extra[0]}' is not a {cfg.name} setting; allowed: {', '.join(allowed)}")
    if cfg.pretrained == "pypi":
        raise VislabError(f"model.pretrained: {cfg.name} takes pretrained: true (timm's ImageNet backbone) or false, not pypi")
    kwargs = dict(cfg.kwargs)
    if "anchors" in kwargs:
        try:
            kwargs["anchors"] = tuple((float(w), float(h)) for w, h in kwargs["anchors"])
        except (TypeError, ValueError):
            raise VislabError("model.kwargs.anchors: give a list of [w, h] pairs in pixels at img_size") from None
    return YOLOConfig(arch=arch, num_classes=num_classes, in_chans=cfg.in_chans, pretrained=bool(cfg.pretrained), **kwargs)


@register_model(
    "yolov3",
    spec=DETECT_SPEC,
    task="detect",
    description="YOLOv3: Darknet-53, three scales (strides 8/16/32), 3 anchors each; Darknet .weights import",
    pretrained=False,
    anchors=[list(a) for a in COCO_ANCHORS],
    strides=[8, 16, 32],
    darknet=True,
)
def yolov3(cfg: ModelConfig, num_classes: int) -> YOLO:
    return YOLO(config_from_model("yolov3", cfg, num_classes))


@register_model(
    "yolov3_tiny",
    spec=DETECT_SPEC,
    task="detect",
    description="YOLOv3-tiny: 7-conv body, two scales (strides 16/32), 3 anchors each; Darknet .weights import",
    pretrained=False,
    anchors=[list(a) for a in TINY_ANCHORS],
    strides=[16, 32],
    darknet=True,
)
def yolov3_tiny(cfg: ModelConfig, num_classes: int) -> YOLO:
    return YOLO(config_from_model("yolov3_tiny", cfg, num_classes))


@register_model(
    "yolov3_timm",
    spec=DETECT_SPEC,
    task="detect",
    description="YOLOv3 head on the last 2-3 levels of any timm backbone (model.kwargs.backbone, default tf_efficientnet_lite0)",
    pretrained=True,
    anchors=[list(a) for a in COCO_ANCHORS],
    strides=[8, 16, 32],
    darknet=False,
)
def yolov3_timm(cfg: ModelConfig, num_classes: int) -> YOLO:
    return YOLO(config_from_model("timm", cfg, num_classes))
