"""Augmentation presets and the eval transform, built from the model's DataSpec.

Training and evaluation see the same geometry family: eval resizes the shorter side to
`size / crop_pct` and centre-crops `size` (timm's convention); training replaces the crop
with random ones. Input size and mean/std always come from the spec, never from constants.
Presets give defaults; any explicit field of `data.augment` overrides its preset value.
Geometry and colour steps run on the PIL image (on small CPU images Pillow's affine is
tens of times faster than the tensor path); the tensor is made only for normalising and
random erasing.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from vislab.channels import channel_stats
from vislab.config import AugmentConfig

# Keys a preset may set; None / 0 means the step is off.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"hflip": 0.5, "random_resized_crop": (0.8, 1.0)},
    "standard": {"hflip": 0.5, "random_resized_crop": (0.35, 1.0), "rotation": 15.0, "color_jitter": 0.25},
    "strong": {
        "hflip": 0.5,
        "random_resized_crop": (0.25, 1.0),
        "rotation": 30.0,
        "color_jitter": 0.4,
        "shear": 10.0,
        "random_erasing": 0.25,
    },
}
STEP_KEYS = (
    "hflip",
    "vflip",
    "rotation",
    "random_resized_crop",
    "crop_padding",
    "color_jitter",
    "shear",
    "scale",
    "random_erasing",
)


def resolve_augment(aug: AugmentConfig) -> dict[str, Any]:
    """The preset's values overlaid with the explicitly set fields (the steps actually used)."""
    out: dict[str, Any] = {k: None for k in STEP_KEYS}
    out.update(PRESETS[aug.preset])
    for key in STEP_KEYS:
        value = getattr(aug, key)
        if value is not None:
            out[key] = value
    out["mixup"] = aug.mixup
    out["cutmix"] = aug.cutmix
    return out


def _interp(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name)
    except ValueError:
        return InterpolationMode.BILINEAR


def _size_hw(input_size: Sequence[int]) -> tuple[int, int]:
    return int(input_size[-2]), int(input_size[-1])


def _colour_steps(grayscale: bool, channels: int) -> list[Callable]:
    """Decoded images are RGB; convert when the model wants grey or a single channel."""
    if grayscale or channels == 1:
        return [T.Grayscale(num_output_channels=channels)]
    return []


def _finish(mean: Sequence[float], std: Sequence[float], channels: int) -> list[Callable]:
    return [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(channel_stats(mean, channels), channel_stats(std, channels)),
    ]


# An image longer than this many times its short side is trimmed before a short-side resize.
TRIM_ASPECT = 4.0


def trim_long_side(img: Any, side: int, keep: int) -> Any:
    """A PIL image centre-cropped along its long side to what resizing its short side to
    `side` and centre-cropping `keep` pixels reads (plus the resize filter's reach), when it
    is over `TRIM_ASPECT` times longer than wide; other images are returned as they are.

    Resizing first would scale the long side up with the short one: a 3.9-KB PNG of 1 x
    4,000,000 pixels, under any pixel limit, became a 4-GB resize for a 224-px model."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    if long <= TRIM_ASPECT * short:
        return img
    f = short / side  # source pixels per output pixel
    need = max(math.ceil(f * (keep + 4)) + 4, short + 1)  # the short side stays the short side
    if need >= long:
        return img
    o = (long - need) // 2
    return img.crop((o, 0, o + need, h) if w > h else (0, o, w, o + need))


class TrimLongSide:
    """`trim_long_side` as a pipeline step, before `T.Resize(side)` and `T.CenterCrop(keep)`."""

    def __init__(self, side: int, keep: int) -> None:
        self.side, self.keep = side, keep

    def __call__(self, img: Any) -> Any:
        return trim_long_side(img, self.side, self.keep)

    def __repr__(self) -> str:
        return f"TrimLongSide(side={self.side}, keep={self.keep})"


def resize_size(size: Sequence[int], crop_pct: float) -> tuple[int, int]:
    """(H, W) the eval transform resizes to before centre-cropping `size` (H, W): each side
    over crop_pct, floored. A square input resizes the shorter side to it (the other follows
    the aspect), any other input both sides (bounded)."""
    return int(math.floor(int(size[-2]) / crop_pct)), int(math.floor(int(size[-1]) / crop_pct))


def draft_side(resized: Sequence[int]) -> int:
    """The side of the square JPEG draft hint for an image resized to `resized` (H, W): its
    longer side, so the decoder picks the smallest DCT scale still at least that large on
    both sides and the resize never scales up. The one rule of the file loaders and the
    prepared cache: another hint picks another scale, and other pixels."""
    return max(int(v) for v in resized)


def _eval_geometry(size: tuple[int, int], crop_pct: float, interp: InterpolationMode) -> list[Callable]:
    both = resize_size(size, crop_pct)
    if size[0] == size[1]:
        return [TrimLongSide(both[0], size[0]), T.Resize(both[0], interpolation=interp, antialias=True), T.CenterCrop(size)]
    return [T.Resize(both, interpolation=interp, antialias=True), T.CenterCrop(size)]


def eval_transform(
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    grayscale: bool = False,
    channels: int = 3,
) -> T.Compose:
    """PIL RGB -> normalised float tensor: resize shorter side to size/crop_pct, centre crop."""
    size = _size_hw(input_size)
    steps: list[Callable] = _colour_steps(grayscale, channels) + _eval_geometry(size, crop_pct, _interp(interpolation))
    return T.Compose(steps + _finish(mean, std, channels))


def _spec_dict(spec: Any) -> dict[str, Any]:
    return spec if isinstance(spec, dict) else spec.to_dict()


def eval_transform_for(spec: Any, grayscale: bool = False, channels: int | None = None, normalize: bool = True) -> T.Compose:
    """The eval transform of a model's DataSpec (a `DataSpec` or its dict): what validation,
    evaluate, predict and explain all feed the model. `channels` defaults to the spec's;
    `normalize=False` keeps pixels in [0, 1] (the same crop, for display)."""
    s = _spec_dict(spec)
    c = int(channels if channels is not None else s["input_size"][0])
    mean, std = (s["mean"], s["std"]) if normalize else ((0.0,) * c, (1.0,) * c)
    return eval_transform(s["input_size"], mean, std, float(s.get("crop_pct", 1.0)), s.get("interpolation", "bilinear"), grayscale, c)


def decode_size(spec: Any) -> int:
    """The side of the square JPEG draft hint an image is decoded with for the eval transform
    (`draft_side` of its resize size), which lets draft mode decode large photos at a
    fraction of the cost."""
    s = _spec_dict(spec)
    return draft_side(resize_size(s["input_size"], float(s.get("crop_pct", 1.0))))


def train_transform(
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    aug: dict[str, Any],
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    grayscale: bool = False,
    channels: int = 3,
) -> T.Compose:
    """The eval pipeline with its geometry randomised and per-image augmentations added.

    `aug` is the dict of `resolve_augment`. Mixup/cutmix mix whole batches and live in the
    task, not here.
    """
    size = _size_hw(input_size)
    interp = _interp(interpolation)
    fill = [int(round(255 * m)) for m in channel_stats(mean, channels)]
    steps: list[Callable] = _colour_steps(grayscale, channels)
    if aug.get("random_resized_crop"):
        lo, hi = aug["random_resized_crop"]
        steps.append(T.RandomResizedCrop(size, scale=(float(lo), float(hi)), interpolation=interp, antialias=True))
    else:
        steps += _eval_geometry(size, crop_pct, interp)
    if aug.get("crop_padding"):
        steps.append(T.RandomCrop(size, padding=int(aug["crop_padding"]), padding_mode="reflect"))
    rotation, shear, scale = aug.get("rotation"), aug.get("shear"), aug.get("scale")
    if rotation or shear or scale:
        steps.append(
            T.RandomAffine(
                degrees=float(rotation or 0.0),
                shear=float(shear) if shear else None,
                scale=tuple(scale) if scale else None,
                interpolation=interp,
                fill=fill,
            )
        )
    if aug.get("hflip"):
        steps.append(T.RandomHorizontalFlip(float(aug["hflip"])))
    if aug.get("vflip"):
        steps.append(T.RandomVerticalFlip(float(aug["vflip"])))
    if aug.get("color_jitter"):
        j = float(aug["color_jitter"])
        sat = 0.0 if (grayscale or channels == 1) else j
        steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=sat))
    steps += _finish(mean, std, channels)
    if aug.get("random_erasing"):
        steps.append(T.RandomErasing(p=float(aug["random_erasing"]), value=0))
    return T.Compose(steps)
