"""Synthetic "photos" with a strong lens cue, for crop-detection tests.

The content is random grey texture (a dead-leaves image of rectangles, alike at every scale),
the same everywhere in the frame, so nothing but the lens tells where a patch came from. The lens
is shared by all photos, like one camera's: vignetting that darkens towards the corners and
red/blue fringes that grow with the radius and point away from the centre (lateral
chromatic aberration), both centred on the original frame. A crop moves that centre off the
middle of the image, which is what the detector must notice.

`tiny_crops_config` shrinks the sampler to match: 288 x 192 frames (3:2), 24-px patches of a
4 x 4 grid and 56 x 37 thumbnails, so a small model trains on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from vislab.data.aberrations import Aberrations, apply_aberrations
from vislab.data.crops import CropsConfig

if TYPE_CHECKING:
    from vislab.config import RunConfig

LENS = Aberrations(vignette=0.6, red=3.0, blue=-3.0)
TINY_FRAME = (288, 192)


def texture(width: int, height: int, rng: np.random.Generator, coverage: float = 3.0) -> np.ndarray:
    """A grey "dead leaves" image: overlapping rectangles of random brightness whose sides
    follow a power law (density ~ size^-3), plus pixel grain. Such images look alike at every
    scale, so a crop (a zoom) does not show in the content's scale, and everywhere are sharp
    edges for fringes to show on; nothing in it depends on the position."""
    lo, hi = 2.0, max(width, height) / 3
    grey = np.full((height, width), rng.uniform(40, 230), dtype=np.float32)
    mean_half = (1 / lo - 1 / hi) / (0.5 * (lo**-2 - hi**-2))  # E[half side] under the r^-3 law
    n = int(coverage * width * height / (2 * mean_half + 1) ** 2) + 1
    u = rng.random((n, 2))
    half = (lo**-2 - u * (lo**-2 - hi**-2)) ** -0.5  # inverse CDF of the r^-3 law
    cx, cy = rng.uniform(0, width, n), rng.uniform(0, height, n)
    values = rng.uniform(40, 230, n)
    for (a, b), x, y, v in zip(half, cx, cy, values):
        grey[max(0, int(y - b)) : int(y + b) + 1, max(0, int(x - a)) : int(x + a) + 1] = v
    grey += rng.normal(0, 6, (height, width)).astype(np.float32)
    return np.clip(np.repeat(grey[..., None], 3, axis=2), 0, 255).astype(np.uint8)


def lens_photo(width: int, height: int, rng: np.random.Generator, lens: Aberrations = LENS) -> np.ndarray:
    """One uint8 H x W x 3 photo: random texture seen through `lens`."""
    return apply_aberrations(texture(width, height, rng), lens)


def write_lens_photos(
    root: str | Path, n: int, size: tuple[int, int] = TINY_FRAME, seed: int = 0, lens: Aberrations = LENS,
    portrait_every: int = 0,
) -> list[Path]:
    """Write `n` PNG photos of `size` (width, height) under `root`; every `portrait_every`-th
    one (if > 0) is stored rotated to portrait, as a camera held upright would."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        im = Image.fromarray(lens_photo(*size, rng, lens))
        if portrait_every and i % portrait_every == portrait_every - 1:
            im = im.transpose(Image.Transpose.ROTATE_90)
        path = root / f"photo_{i:03d}.png"
        im.save(path)
        paths.append(path)
    return paths


TINY_CROPS: dict[str, Any] = {"resize_width": [192, 288], "thumb_size": [56, 37], "patch_size": 24, "jitter": 2}


def tiny_crops_config(**fields: object) -> CropsConfig:
    """Sampler settings scaled to `TINY_FRAME` photos (min side 192 = 24 * 4 / 0.5)."""
    return CropsConfig.model_validate({**TINY_CROPS, **fields})


def make_lens_dataset(
    root: str | Path, splits: tuple[int, int, int] = (24, 8, 8), size: tuple[int, int] = TINY_FRAME, seed: int = 0,
    lens: Aberrations = LENS,
) -> Path:
    """`root/images/*.png` lens photos and `root/manifest.csv` with (train, val, test) counts
    of them, as `vislab curate` would write it; returns `root`."""
    from vislab.data.manifest import write_manifest

    root = Path(root)
    paths = write_lens_photos(root / "images", sum(splits), size, seed, lens)
    names = ["train"] * splits[0] + ["val"] * splits[1] + ["test"] * splits[2]
    rows = [
        {"path": str(p.resolve()), "label": "", "split": split, "status": "ok", "reason": "", "width": size[0], "height": size[1], "format": "PNG"}
        for p, split in zip(paths, names)
    ]
    write_manifest(pd.DataFrame(rows), root)
    return root


def tiny_crops_run(**sections: Any) -> "RunConfig":
    """A seconds-fast crops run config on `TINY_FRAME` photos: crop_detector_tiny, the tiny
    sampler, Adam with the paper's per-epoch decay. Keyword arguments are merged sections."""
    from vislab.testing.synthetic import tiny_config

    base: dict[str, Any] = {
        "task": "crops",
        "model": {"name": "crop_detector_tiny"},
        "crops": dict(TINY_CROPS),
        "data": {"img_size": None, "batch_size": 8, "num_workers": 0},  # the size is crops.thumb_size
        "optim": {"name": "adam", "lr": 2e-3},
        "scheduler": {"name": "exponential", "gamma": 0.942},
        "train": {"epochs": 2},
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return tiny_config(**base)
