"""Crop-detection samples made on the fly from uncropped photos ("Dissecting Image Crops").

A sample is drawn in two steps, so the geometry can be checked without pixels:

- `plan_sample` (pure, no pixels): turn a portrait to landscape; with probability
  `crop_prob` keep a rectangle of size factor s ~ U(size_factor) on both axes (the aspect is
  kept) that touches one random edge and sits uniformly along the other axis; resize what is
  kept to a random width in [resize_width) with a random interpolation (so the image's size
  does not tell a crop apart); place one patch at the centre of each cell of the `grid`
  over the kept image (jittered in training) and label it with the cell of the ORIGINAL
  frame its centre falls in. The target rectangle (x1, x2, y1, y2) is in fractions of the original
  frame: (0, 1, 0, 1) and s = 1 when not cropped. In training the original may first be
  mirrored (`hflip`, `vflip`): the frame is then the flipped one, and so are the targets.
- `render_sample`: the pixels of a plan: a `thumb_size` thumbnail of the kept image and the
  patches, as uint8 tensors (the model normalises them and adds its coordinate channels).
  Evaluation plans whose rectangle is decoded from the cells (`crops.rectangle` cells or mean)
  also carry the `decode_grid` patches and their centres; they take no random draw, so the
  sample is otherwise the same.

There is no patch-order shift here: the model puts all patches of a batch through one
BatchNorm batch, which mixes positions by itself (see `vislab.models.crops`).

A limit of the method, measured on the synthetic lens photos of `vislab.testing.lens`: the
random resize hides the kept image's size but not how much it was scaled. A crop is
upsampled by 1/s more than a whole frame on average, and a small net trained on photos
with NO lens cue at all still tells crops apart (accuracy 0.71-0.85) from resampling
traces (edge sharpness, grain), while its patch cells stay at chance. So a flag accuracy
means little without the patch accuracy, or without the same model trained on lens-free
photos as a control.

Randomness comes from one generator per sample: training seeds it by (run seed, epoch,
image index) with `sample_seed`, so an image gets the same sample with any number of
workers and after a resume; `eval_samples` fixes an evaluation set by (seed, path, variant),
identical in every call and process (keyed by the path string as given: pass the
manifest's paths).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from vislab.config_crops import CropsConfig, Interpolation  # noqa: F401  (the settings live in config_crops.py: config validation imports them)
from vislab.data.aberrations import apply_aberrations
from vislab.data.io import MAX_PIXELS, load_image
from vislab.errors import VislabError

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "linear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "cubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
EDGES = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class SamplePlan:
    """The geometry of one sample. Pixel boxes are (left, top, right, bottom), half-open.

    `frame` is the original's (width, height) after `rotation` (degrees counter-clockwise,
    0 for landscape originals); `box` the kept region in it; `rect` the same region as
    (x1, x2, y1, y2) fractions of the frame; `size_factor` the drawn s (1.0 uncropped);
    `resized` the kept region's size after the random resize; `patches` the patches' top-left
    corners in the resized image; `cells` their labels, row * columns + column of the
    original frame's grid.
    """

    frame: tuple[int, int]
    rotation: int
    cropped: bool
    size_factor: float
    edge: str | None
    box: tuple[int, int, int, int]
    resized: tuple[int, int]
    resample: str
    thumb_resample: str
    patches: tuple[tuple[int, int], ...]
    cells: tuple[int, ...]
    hflip: bool = False  # the original mirrored left-right (after `rotation`, before the crop)
    vflip: bool = False  # the original flipped upside down
    decode: tuple[tuple[int, int], ...] = ()  # top-left corners of the decode grid's patches (evaluation only)

    @property
    def rect(self) -> tuple[float, float, float, float]:
        return _rect(self.box, self.frame)


def _rect(box: tuple[int, int, int, int], frame: tuple[int, int]) -> tuple[float, float, float, float]:
    """A pixel box (left, top, right, bottom) as (x1, x2, y1, y2) fractions of the frame."""
    w, h = frame
    return box[0] / w, box[2] / w, box[1] / h, box[3] / h


class CropSample(NamedTuple):
    """Model-ready tensors of one sample; `default_collate` stacks a list into a batch of the
    same type. thumb: uint8 3 x H x W; patches: uint8 N x 3 x P x P in grid order (row-major
    over the kept image); cells: int64 N; rect: float32 (x1, x2, y1, y2); cropped: float32;
    decode_patches: uint8 M x 3 x P x P, the decode grid's patches (M = 0 in training or when the
    rectangle is the head's); decode_centres: float32 M x 2, their centres (u, v) in fractions
    of the kept image."""

    thumb: torch.Tensor
    patches: torch.Tensor
    cells: torch.Tensor
    rect: torch.Tensor
    cropped: torch.Tensor
    decode_patches: torch.Tensor
    decode_centres: torch.Tensor


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The training seed of image `index` in `epoch`: one sample per (run seed, epoch, image)."""
    from vislab.data.datamodule import aug_seed  # imported here: the datamodule pulls in Lightning

    return aug_seed(seed, epoch, index)


def _generator(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def draw_crop(
    frame: tuple[int, int], rng: np.random.Generator, cfg: CropsConfig, crop: bool | None = None
) -> tuple[bool, float, str | None, tuple[int, int, int, int]]:
    """(cropped, s, edge, box) for a frame of (width, height): the crop decision (`crop`
    forces it), the size factor, the edge touched and the kept box in pixels."""
    w, h = frame
    cropped = bool(rng.random() < cfg.crop_prob) if crop is None else crop
    if not cropped:
        return False, 1.0, None, (0, 0, w, h)
    s = float(rng.uniform(*cfg.size_factor))
    cw, ch = max(1, round(s * w)), max(1, round(s * h))
    edge = EDGES[int(rng.integers(4))]
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    if edge == "left":
        left = 0
    elif edge == "right":
        left = w - cw
    elif edge == "top":
        top = 0
    else:
        top = h - ch
    return True, s, edge, (left, top, left + cw, top + ch)


def patch_cells(
    rect: tuple[float, float, float, float],
    resized: tuple[int, int],
    corners: Sequence[tuple[int, int]],
    patch_size: int,
    grid: tuple[int, int],
) -> tuple[int, ...]:
    """The original-frame cell of each patch centre. A point at fraction f of the kept image
    sits at x1 + f * (x2 - x1) of the original frame (likewise for y)."""
    x1, x2, y1, y2 = rect
    rw, rh = resized
    gx, gy = grid
    out = []
    for left, top in corners:
        ox = x1 + (left + patch_size / 2) / rw * (x2 - x1)
        oy = y1 + (top + patch_size / 2) / rh * (y2 - y1)
        out.append(min(int(oy * gy), gy - 1) * gx + min(int(ox * gx), gx - 1))
    return tuple(out)


def grid_corners(
    resized: tuple[int, int], grid: tuple[int, int], patch_size: int, shifts: Sequence[tuple[int, int]] | None = None
) -> list[tuple[int, int]]:
    """Top-left corners of one patch at the centre of each cell of `grid` over an image of
    `resized` (width, height), row-major, each moved by its (dx, dy) of `shifts` (training's
    jitter) and then inside the image where it would overhang."""
    rw, rh = resized
    gx, gy = grid
    p = patch_size
    shifts = shifts or [(0, 0)] * (gx * gy)
    cells = [(row, col) for row in range(gy) for col in range(gx)]
    return [
        (min(max(round((col + 0.5) * rw / gx - p / 2) + dx, 0), rw - p), min(max(round((row + 0.5) * rh / gy - p / 2) + dy, 0), rh - p))
        for (row, col), (dx, dy) in zip(cells, shifts)
    ]


def plan_sample(
    size: tuple[int, int], seed: int | np.random.Generator, cfg: CropsConfig, train: bool,
    crop: bool | None = None, name: str = "image",
) -> SamplePlan:
    """The geometry of a sample of an image of `size` (width, height, as displayed)."""
    rng = _generator(seed)
    w, h = size
    rotation = 0
    if h > w:
        rotation = 90 if rng.random() < 0.5 else 270
        w, h = h, w
    if crop is not False and min(w, h) < cfg.min_side:  # an uncropped view needs no room for a crop
        raise VislabError(
            f"{name}: {w}x{h} is too small for crop samples: each side needs {cfg.min_side} px "
            "(patch_size * grid / smallest size_factor); curate with --min-size or lower crops.patch_size"
        )
    cropped, s, edge, box = draw_crop((w, h), rng, cfg, crop)
    cw, ch = box[2] - box[0], box[3] - box[1]
    rw = int(rng.integers(*cfg.resize_width))
    rh = max(cfg.patch_size, round(rw * ch / cw))
    resample = cfg.interpolations[int(rng.integers(len(cfg.interpolations)))]
    thumb_resample = cfg.interpolations[int(rng.integers(len(cfg.interpolations)))]
    p, j = cfg.patch_size, cfg.jitter if train else 0
    shifts = [tuple(int(v) for v in rng.integers(-j, j + 1, 2)) for _ in range(cfg.cells)] if j else None
    corners = grid_corners((rw, rh), cfg.grid, p, shifts)
    # flips are drawn last, and only when asked for, so every other draw is as without them
    hflip = bool(train and cfg.hflip and rng.random() < cfg.hflip)
    vflip = bool(train and cfg.vflip and rng.random() < cfg.vflip)
    decode = () if train or cfg.rectangle == "head" else tuple(grid_corners((rw, rh), cfg.decode_grid, p))
    return SamplePlan(
        frame=(w, h), rotation=rotation, cropped=cropped, size_factor=s, edge=edge, box=box,
        resized=(rw, rh), resample=resample, thumb_resample=thumb_resample,
        patches=tuple(corners), cells=patch_cells(_rect(box, (w, h)), (rw, rh), corners, p, cfg.grid),
        hflip=hflip, vflip=vflip, decode=decode,
    )


def render_sample(image: Image.Image | np.ndarray, plan: SamplePlan, cfg: CropsConfig) -> CropSample:
    """The pixels of a plan: thumbnail and patches of the rotated, cropped, resized image."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    im = im.convert("RGB")
    if plan.rotation:
        im = im.transpose(Image.Transpose.ROTATE_90 if plan.rotation == 90 else Image.Transpose.ROTATE_270)
    if plan.hflip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if plan.vflip:
        im = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    kept = im.crop(plan.box).resize(plan.resized, RESAMPLE[plan.resample])
    arr = np.asarray(kept)
    p = cfg.patch_size
    patches = np.stack([arr[top : top + p, left : left + p] for left, top in plan.patches])
    decode = np.stack([arr[top : top + p, left : left + p] for left, top in plan.decode]) if plan.decode else np.zeros((0, p, p, 3), np.uint8)
    rw, rh = plan.resized
    centres = [((left + p / 2) / rw, (top + p / 2) / rh) for left, top in plan.decode]
    thumb = np.asarray(kept.resize(cfg.thumb_size, RESAMPLE[plan.thumb_resample]))
    return CropSample(
        thumb=torch.from_numpy(thumb.transpose(2, 0, 1).copy()),
        patches=torch.from_numpy(patches.transpose(0, 3, 1, 2).copy()),
        cells=torch.tensor(plan.cells, dtype=torch.int64),
        rect=torch.tensor(plan.rect, dtype=torch.float32),
        cropped=torch.tensor(float(plan.cropped)),
        decode_patches=torch.from_numpy(decode.transpose(0, 3, 1, 2).copy()),
        decode_centres=torch.tensor(centres, dtype=torch.float32).reshape(len(centres), 2),
    )


def make_sample(
    image: Image.Image | np.ndarray, seed: int | np.random.Generator, cfg: CropsConfig, train: bool,
    crop: bool | None = None, name: str = "image",
) -> CropSample:
    """One sample of a decoded, oriented photo (PIL image or uint8 H x W x 3 array).

    `seed`: an int (e.g. `sample_seed(run_seed, epoch, index)`) or a generator; `crop`
    forces the crop decision; `name` is the file named in a too-small error.
    """
    size = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
    return render_sample(image, plan_sample(size, seed, cfg, train, crop, name), cfg)


@dataclass(frozen=True)
class EvalItem:
    """One sample of the fixed evaluation set: which file, its seed, cropped or not."""

    path: str
    seed: int
    crop: bool


def _path_key(path: str) -> list[int]:
    """A stable integer key of a path string (Python's hash() changes between processes)."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def eval_samples(paths: Sequence[str | Path], crops_per_image: int = 1, seed: int = 0) -> list[EvalItem]:
    """The evaluation set: each image once uncropped and `crops_per_image` times cropped, each
    variant seeded by (seed, path, variant), so the set is the same in every call and process
    and an image keeps its samples when others are added or removed."""
    items = []
    for path in paths:
        key = _path_key(str(path))
        for k in range(1 + crops_per_image):
            state = np.random.SeedSequence([seed & 0xFFFFFFFF, *key, k]).generate_state(2, np.uint32)
            items.append(EvalItem(str(path), int(state.view(np.uint64)[0] >> 1), crop=k > 0))
    return items


def load_sample(item: EvalItem, cfg: CropsConfig, max_pixels: int = MAX_PIXELS) -> CropSample:
    """Decode an evaluation item's file (under `max_pixels`, the dataset's limit) and make its
    sample, with `cfg.stress` added to the uncropped photo first (raises `ImageDecodeError`
    for an unreadable file)."""
    image = load_image(item.path, max_pixels=max_pixels)
    if cfg.stress is not None and not cfg.stress.is_identity():
        image = apply_aberrations(np.asarray(image), cfg.stress)
    return make_sample(image, item.seed, cfg, train=False, crop=item.crop, name=item.path)
