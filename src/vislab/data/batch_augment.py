"""Augmentation and normalisation of whole batches of tensors, on whatever device they are.

The cached data path hands the task uint8 batches (N x 3 x H x W, channels_last strides);
`BatchTransform` turns one into the normalised float batch the model takes, with the same
augmentation steps as the per-image PIL path (`transforms.train_transform`) but drawn for
the whole batch at once: no per-image Python work, and on a GPU no host work at all.

Random parameters are drawn on the CPU from a generator seeded per batch, then moved to the
batch's device, so a seed gives the same augmented pixels on CPU and GPU, with any number of
workers, and after a resume.

Differences from the PIL path, by design: random-resized-crop and affine steps sample from
the cached (already centre-cropped) image and resample with `grid_sample` (bilinear, no
antialiasing); padding and erased areas take the mean colour (zero after normalisation),
as the PIL path's fill does. Grey conversion of a uint8 batch is Pillow's integer luma, so
a batch from a grey cache (grey repeated in 3 channels) stays exactly the grey the eval
transform feeds the model; colour jitter's grey uses the same weights in float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

GREY_WEIGHTS = (0.299, 0.587, 0.114)
# Pillow's convert("L"): the same ITU-R 601 weights in 16-bit fixed point, rounded
GREY_WEIGHTS_FIXED = (19595, 38470, 7471)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def _bernoulli(gen: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1 (float input is returned as is)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def to_grey(x: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB batch -> grey in `channels` channels: uint8 exactly as Pillow's convert("L"), float
    with the same weights in float."""
    if x.dtype == torch.uint8:
        w = torch.tensor(GREY_WEIGHTS_FIXED, dtype=torch.int32, device=x.device).view(1, 3, 1, 1)
        grey = ((x.to(torch.int32) * w).sum(1, keepdim=True) + 0x8000).bitwise_right_shift(16).to(torch.uint8)
    else:
        w = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        grey = (x * w).sum(1, keepdim=True)
    return grey if channels == 1 else grey.expand(-1, channels, -1, -1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, on x's device; x float in 0..1."""
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre crop to (H, W), with torchvision's rounding of the offsets."""
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def random_translate(x: torch.Tensor, pad: int, gen: torch.Generator, mode: str = "reflect") -> torch.Tensor:
    """Pad by `pad` and take a random crop of the original size per image (integer shifts)."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    if mode == "reflect" and pad >= min(h, w):  # F.pad refuses it; PIL's (numpy's) reflect repeats
        xp = x.index_select(2, reflect_index(h, pad, x.device)).index_select(3, reflect_index(w, pad, x.device))
    else:
        xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, :, None]  # B, H, 1
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, :]  # B, 1, W
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indices around a slice put the batch dims first: B x H x W x C, i.e. channels_last
    return xp.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def reflect_index(n: int, pad: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Source positions of a side of `n` reflect-padded by `pad` (edge not repeated), for any
    `pad`: a pad of the side or more reflects again, as numpy's and so PIL's reflect padding
    in the file loaders' `RandomCrop` does (torch's own refuses it)."""
    if n == 1:
        return torch.zeros(n + 2 * pad, dtype=torch.long, device=device)
    period = 2 * (n - 1)
    j = torch.arange(-pad, n + pad, device=device).abs() % period
    return torch.where(j >= n, period - j, j)


def _reflect_pad(y: torch.Tensor, pad: int) -> torch.Tensor:
    """NHWC batch reflect-padded by `pad` on H and W (edge not repeated), by slice copies:
    index ops move uint8 pixels one byte at a time, slices copy whole rows."""
    b, h, w, c = y.shape
    if pad >= min(h, w):  # rare (a pad as large as the image): the slices below would run off it
        return y.index_select(1, reflect_index(h, pad, y.device)).index_select(2, reflect_index(w, pad, y.device))
    out = y.new_empty(b, h + 2 * pad, w + 2 * pad, c)
    out[:, pad : pad + h, pad : pad + w] = y
    for i in range(pad):
        out[:, pad : pad + h, pad - 1 - i] = y[:, :, i + 1]
        out[:, pad : pad + h, pad + w + i] = y[:, :, w - 2 - i]
    for i in range(pad):
        out[:, pad - 1 - i] = out[:, pad + 1 + i]
        out[:, pad + h + i] = out[:, pad + h - 2 - i]
    return out


def shift_flip_normalize(
    x: torch.Tensor, pad: int, hflip: float, gen: torch.Generator, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """`random_translate` then `random_flip` then `normalize`, fused for uint8 batches.

    The same random draws in the same order and the same pixel values (the steps only move
    pixels, which commutes with the per-channel normalisation), but cheap on a CPU: every
    output row is a contiguous run of W x C bytes of the padded (or padded and mirrored)
    batch, so the crop is one row gather, and the normalisation runs on rows of W x C values
    with the channel constants tiled along them, which vectorises (a trailing dimension of 3
    does not). Returns channels_last strides.
    """
    b, c, h, w = x.shape
    dev = x.device
    y = x.permute(0, 2, 3, 1).contiguous()  # B x H x W x C; free for the cache's batches
    if pad > 0 or hflip > 0:
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen) if pad > 0 else torch.zeros(b, dtype=torch.long)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen) if pad > 0 else torch.zeros(b, dtype=torch.long)
        flip = _bernoulli(gen, b, hflip) if hflip > 0 else torch.zeros(b, dtype=torch.bool)
        padded = _reflect_pad(y, pad) if pad > 0 else y
        source = torch.cat([padded, padded.flip(2)]) if hflip > 0 else padded
        hp, wp = h + 2 * pad, w + 2 * pad
        image = torch.arange(b) + b * flip.long()
        left = torch.where(flip, 2 * pad - dx, dx)  # a crop of the mirror starts where the crop ends
        first = ((image[:, None] * hp + dy[:, None] + torch.arange(h)) * wp + left[:, None]).reshape(-1)
        flat = source.reshape(-1)
        runs = flat.as_strided(((flat.numel() - w * c) // c + 1, w * c), (c, 1))
        y = runs.index_select(0, first.to(dev)).view(b, h, w, c)
    m = torch.tensor(list(mean), dtype=torch.float32, device=dev).repeat(w)
    sd = torch.tensor(list(std), dtype=torch.float32, device=dev).repeat(w)
    out = y.view(b * h, w * c).float().div_(255.0).sub_(m).div_(sd)
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, p: float, gen: torch.Generator, dim: int = 3) -> torch.Tensor:
    """Flip each image along `dim` (3 = horizontal, 2 = vertical) with probability p."""
    if p <= 0:
        return x
    mask = _bernoulli(gen, x.shape[0], p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(dim), x)


def random_affine(
    x: torch.Tensor,
    size: tuple[int, int],
    gen: torch.Generator,
    crop_scale: tuple[float, float] | None = None,
    rotation: float = 0.0,
    shear: float = 0.0,
    zoom: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Random resized crop, rotation, shear and zoom as one resampling per image.

    `crop_scale` is the area share of the source kept (with aspect ratio in 3/4..4/3, as
    torchvision's RandomResizedCrop); the output is `size` (H, W). Areas outside the source
    read as zero (the mean colour once normalised).
    """
    b = x.shape[0]
    if crop_scale is not None:
        area = _uniform(gen, b, *crop_scale)
        log_ratio = _uniform(gen, b, math.log(3 / 4), math.log(4 / 3))
        ratio = torch.exp(log_ratio)
        fw = torch.sqrt(area * ratio).clamp(max=1.0)
        fh = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - fw)
        cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - fh)
    else:
        fw = fh = torch.ones(b)
        cx = cy = torch.zeros(b)
    angle = torch.deg2rad(_uniform(gen, b, -rotation, rotation)) if rotation else torch.zeros(b)
    sh = torch.tan(torch.deg2rad(_uniform(gen, b, -shear, shear))) if shear else torch.zeros(b)
    s = _uniform(gen, b, *zoom) if zoom else torch.ones(b)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output coords -> rotate, shear, zoom -> crop window of the source (normalised coords)
    m00, m01 = cos / s, (cos * sh - sin) / s
    m10, m11 = sin / s, (sin * sh + cos) / s
    theta = torch.stack(
        [torch.stack([fw * m00, fw * m01, cx], 1), torch.stack([fh * m10, fh * m11, cy], 1)], 1
    ).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [b, x.shape[1], size[0], size[1]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator, saturation: bool = True) -> torch.Tensor:
    """Brightness, contrast (and saturation) factors in [1 - s, 1 + s] per image; x in 0..1."""
    b = x.shape[0]
    lo, hi = max(0.0, 1 - strength), 1 + strength
    bright = _uniform(gen, b, lo, hi).to(x.device, x.dtype).view(-1, 1, 1, 1)
    contrast = _uniform(gen, b, lo, hi).to(x.device, x.dtype).view(-1, 1, 1, 1)
    x = (x * bright).clamp_(0, 1)
    if x.shape[1] == 3:
        grey_mean = to_grey(x, 1).mean((1, 2, 3), keepdim=True)
    else:
        grey_mean = x.mean((1, 2, 3), keepdim=True)
    x = ((x - grey_mean) * contrast + grey_mean).clamp_(0, 1)
    if saturation and x.shape[1] == 3:
        sat = _uniform(gen, b, lo, hi).to(x.device, x.dtype).view(-1, 1, 1, 1)
        grey = to_grey(x, 1)
        x = ((x - grey) * sat + grey).clamp_(0, 1)
    return x


def random_erasing(x: torch.Tensor, p: float, gen: torch.Generator, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> torch.Tensor:
    """Zero one random rectangle per chosen image (torchvision's area and aspect ranges)."""
    b, _, h, w = x.shape
    chosen = _bernoulli(gen, b, p)
    area = _uniform(gen, b, *scale) * h * w
    r = torch.exp(_uniform(gen, b, math.log(ratio[0]), math.log(ratio[1])))
    eh = torch.sqrt(area * r).round().clamp(1, h)
    ew = torch.sqrt(area / r).round().clamp(1, w)
    top = (torch.rand(b, generator=gen) * (h - eh + 1)).floor()
    left = (torch.rand(b, generator=gen) * (w - ew + 1)).floor()
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    box = (
        (ys >= top.view(-1, 1, 1))
        & (ys < (top + eh).view(-1, 1, 1))
        & (xs >= left.view(-1, 1, 1))
        & (xs < (left + ew).view(-1, 1, 1))
        & chosen.view(-1, 1, 1)
    )
    return x.masked_fill(box.unsqueeze(1).to(x.device), 0.0)


@dataclass
class BatchTransform:
    """uint8 batch -> normalised float batch; augmented when called with `train=True`.

    `size` is the model input (H, W); `aug` the dict of `transforms.resolve_augment`.
    """

    size: tuple[int, int]
    mean: Sequence[float]
    std: Sequence[float]
    aug: dict[str, Any] = field(default_factory=dict)
    channels: int = 3
    grayscale: bool = False
    channels_last: bool = True

    def _stats(self, values: Sequence[float]) -> list[float]:
        vals = [float(v) for v in values]
        if len(vals) == self.channels:
            return vals
        if self.channels == 1:
            return [sum(vals) / len(vals)]
        return [vals[0]] * self.channels if len(vals) == 1 else vals[: self.channels]

    def _shift_flip_only(self, x: torch.Tensor, a: dict[str, Any]) -> bool:
        """True when the steps are at most translate + horizontal flip on a uint8 RGB batch
        already at the model size (the small-image recipes): then the fused path applies."""
        others = ("color_jitter", "random_resized_crop", "rotation", "shear", "scale", "vflip", "random_erasing")
        return (
            x.dtype == torch.uint8 and x.ndim == 4 and tuple(x.shape[-2:]) == tuple(self.size)
            and not (self.grayscale or self.channels == 1) and x.shape[1] == self.channels
            and not any(a.get(k) for k in others)
        )

    def __call__(self, x: torch.Tensor, train: bool = False, seed: int | None = None) -> torch.Tensor:
        a = self.aug if train else {}
        gen = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
        if self._shift_flip_only(x, a):
            y = shift_flip_normalize(x, int(a.get("crop_padding") or 0), float(a.get("hflip") or 0.0), gen,
                                     self._stats(self.mean), self._stats(self.std))
            return y if self.channels_last else y.contiguous()
        if self.grayscale or self.channels == 1:
            x = to_grey(x, self.channels)
        x = to_float(x)
        if a.get("color_jitter"):
            x = color_jitter(x, float(a["color_jitter"]), gen, saturation=not (self.grayscale or self.channels == 1))
        x = normalize(x, self._stats(self.mean), self._stats(self.std))
        rrc = a.get("random_resized_crop")
        rotation, shear, zoom = a.get("rotation") or 0.0, a.get("shear") or 0.0, a.get("scale")
        if rrc or rotation or shear or zoom:
            crop = (float(rrc[0]), float(rrc[1])) if rrc else None
            if crop is None:
                x = center_crop(x, self.size)
            x = random_affine(x, self.size, gen, crop, float(rotation), float(shear), tuple(zoom) if zoom else None)
        else:
            x = center_crop(x, self.size)
        if a.get("crop_padding"):
            x = random_translate(x, int(a["crop_padding"]), gen)
        if a.get("hflip"):
            x = random_flip(x, float(a["hflip"]), gen, dim=3)
        if a.get("vflip"):
            x = random_flip(x, float(a["vflip"]), gen, dim=2)
        if a.get("random_erasing"):
            x = random_erasing(x, float(a["random_erasing"]), gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def tta_views(x: torch.Tensor, flip: bool = True, translate: int = 0) -> list[torch.Tensor]:
    """Test-time views of a normalised batch: the batch and its mirror image (`flip`), and with
    `translate` > 0 each of those shifted by `translate` pixels up-left and down-right
    (reflect padding): 1, 2, 3 or 6 views."""
    base = [x, x.flip(3)] if flip else [x]
    if translate <= 0:
        return base
    t = translate
    h, w = x.shape[-2:]
    views = list(base)
    for v in base:
        p = F.pad(v, (t, t, t, t), mode="reflect")
        views += [p[..., :h, :w], p[..., 2 * t : 2 * t + h, 2 * t : 2 * t + w]]
    return views
