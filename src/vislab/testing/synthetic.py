"""Tiny synthetic classification datasets, written as real PNG files plus a manifest.

Training tests need images a small CNN can learn in seconds but cannot solve from one pixel:
each class is a stripe orientation (horizontal, vertical, diagonal, anti-diagonal, checker,
...) with random phase, period, colours and noise. The files go through the same path as a
user's photos (PNG on disk -> manifest -> datamodule), so the tests exercise the real thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from vislab.data.manifest import write_manifest

if TYPE_CHECKING:
    from vislab.config import RunConfig

PATTERNS = ("horizontal", "vertical", "diagonal", "antidiagonal", "checker", "rings")


def pattern_image(kind: str, size: int, rng: np.random.Generator, grayscale: bool = False) -> np.ndarray:
    """One noisy striped image (uint8 HxWx3, or HxW when grayscale) of the given pattern kind."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(3.0, 6.0)
    phase = rng.uniform(0, 2 * np.pi)
    w = 2 * np.pi / period
    if kind == "horizontal":
        wave = np.sin(w * yy + phase)
    elif kind == "vertical":
        wave = np.sin(w * xx + phase)
    elif kind == "diagonal":
        wave = np.sin(w * (xx + yy) / np.sqrt(2) + phase)
    elif kind == "antidiagonal":
        wave = np.sin(w * (xx - yy) / np.sqrt(2) + phase)
    elif kind == "checker":
        wave = np.sign(np.sin(w * xx + phase) * np.sin(w * yy + phase))
    elif kind == "rings":
        c = size / 2 + rng.uniform(-2, 2, 2)
        wave = np.sin(w * np.hypot(xx - c[0], yy - c[1]) + phase)
    else:
        raise ValueError(f"unknown pattern {kind!r}; choose from {PATTERNS}")
    t = (wave + 1) / 2  # 0..1
    if grayscale:
        img = 40 + 170 * t + rng.normal(0, 20, t.shape)
        return np.clip(img, 0, 255).astype(np.uint8)
    lo, hi = rng.uniform(0, 110, 3), rng.uniform(145, 255, 3)
    img = lo + (hi - lo) * t[..., None] + rng.normal(0, 20, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_pattern_dataset(
    root: str | Path,
    classes: Sequence[str] = ("horizontal", "vertical", "diagonal"),
    per_class: int | Sequence[int] = 24,
    size: int = 16,
    splits: tuple[float, float, float] | None = (0.6, 0.2, 0.2),
    seed: int = 0,
    grayscale: bool = False,
    patterns: Sequence[str] | None = None,
) -> Path:
    """Write `root/images/<class>/*.png` and `root/manifest.csv`; returns `root`.

    Class i draws the pattern `patterns[i]` (default: the class name if it is a pattern kind,
    else PATTERNS[i]). `per_class` may be one count or one per class (for imbalance tests).
    `splits=None` leaves the split column empty. Splits are assigned per class in file order,
    so every split holds every class whenever the counts allow it.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = [per_class] * len(classes) if isinstance(per_class, int) else list(per_class)
    if len(counts) != len(classes):
        raise ValueError("per_class needs one count per class")
    rows = []
    for ci, name in enumerate(classes):
        kind = patterns[ci] if patterns else (name if name in PATTERNS else PATTERNS[ci % len(PATTERNS)])
        folder = root / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        n = counts[ci]
        for i in range(n):
            px = pattern_image(kind, size, rng, grayscale)
            path = folder / f"{name}_{i:04d}.png"
            Image.fromarray(px).save(path)
            split = ""
            if splits is not None:
                frac = (i + 0.5) / n
                split = "train" if frac < splits[0] else ("val" if frac < splits[0] + splits[1] else "test")
            rows.append(
                {
                    "path": str(path.resolve()),
                    "label": name,
                    "split": split,
                    "status": "ok",
                    "reason": "",
                    "width": size,
                    "height": size,
                    "format": "PNG",
                }
            )
    write_manifest(pd.DataFrame(rows), root)
    return root


def tiny_config(**sections: Any) -> "RunConfig":
    """A seconds-fast classification config: 2-layer simple_cnn, 16 px, no workers.

    Keyword arguments are config sections merged over the defaults, e.g.
    `tiny_config(optim={"lr": 0.1}, train={"epochs": 3})`.
    """
    from vislab.config import build_config

    raw: dict[str, Any] = {
        "seed": 0,
        "model": {"name": "simple_cnn", "simple_cnn": {"layers": 2, "filters": 8, "fc": 32, "dropout": 0.1}},
        "data": {"img_size": 16, "batch_size": 16, "num_workers": 0, "augment": {"preset": "none"}},
        "optim": {"name": "adamw", "lr": 0.01},
        "train": {"epochs": 3, "progress": "none", "checkpoint_every_minutes": None},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = _merge(raw[key], value)
        else:
            raw[key] = value
    return build_config(raw, "tiny_config")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
