"""Tiny detection datasets in the layouts `vislab curate` reads: hand-written label files (YOLO
images/ + labels/ + data.yaml, and KITTI lines as kitti-tiny), and a learnable synthetic
set of coloured shapes (`write_shapes_dataset`) that a tiny detector learns in seconds.
Label text is given verbatim, so a test can put a broken line exactly where it wants one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vislab.testing.images import write_image

if TYPE_CHECKING:
    import numpy as np

    from vislab.config import RunConfig

KITTI_TAIL = "1.5 1.6 3.9 1.0 1.5 10.0 -1.5"  # h w l x y z rotation_y: unused for 2D boxes


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def kitti_line(kind: str, box: Sequence[float], truncated: float = 0.0, occluded: int = 0) -> str:
    """One KITTI label_2 line: type, truncation, occlusion, alpha, the 2D box x1 y1 x2 y2."""
    return f"{kind} {truncated:g} {occluded} -1.5 {' '.join(f'{v:g}' for v in box)} {KITTI_TAIL}\n"


def yolo_line(class_id: int, box: Sequence[float]) -> str:
    """One YOLO line from a box x1 y1 x2 y2 given as fractions of the image."""
    x1, y1, x2, y2 = box
    return f"{class_id} {(x1 + x2) / 2:g} {(y1 + y2) / 2:g} {x2 - x1:g} {y2 - y1:g}\n"


def write_label_dataset(
    root: str | Path,
    labels: Mapping[str, str | None],
    size: tuple[int, int] = (64, 48),
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """ROOT/images/<stem>.png per key of `labels` (each a different picture) and
    ROOT/labels/<stem>.txt holding its text (None: no label file, a negative); with `names`,
    a data.yaml naming the YOLO class ids in that order."""
    root = Path(root)
    for i, (stem, text) in enumerate(labels.items()):
        write_image(root / "images" / f"{stem}.png", seed=seed * 1000 + i, size=size)
        if text is not None:
            write_text(root / "labels" / f"{stem}.txt", text)
    if names is not None:
        write_text(root / "data.yaml", yaml.safe_dump({"path": ".", "names": dict(enumerate(names))}))
    return root


SHAPES = ("square", "circle", "triangle")
SHAPE_COLOURS = {"square": (220, 40, 40), "circle": (40, 200, 60), "triangle": (50, 80, 230)}


def shapes_image(rng: "np.random.Generator", size: int = 64, max_objects: int = 2, min_side: int = 14, max_side: int = 26) -> tuple["np.ndarray", list[tuple[int, tuple[float, float, float, float]]]]:
    """A noisy grey picture with 1..max_objects coloured shapes that do not overlap much;
    returns the pixels and (class id, box x1 y1 x2 y2 in pixels) per shape."""
    import numpy as np
    from PIL import Image, ImageDraw

    bg = rng.uniform(90, 170)
    pixels = np.clip(bg + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    placed: list[tuple[int, tuple[float, float, float, float]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(20):
            side = int(rng.integers(min_side, max_side + 1))
            x1, y1 = (int(v) for v in rng.integers(0, size - side, 2))
            box = (float(x1), float(y1), float(x1 + side), float(y1 + side))
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for _, b in placed):
                break
        else:
            continue
        k = int(rng.integers(len(SHAPES)))
        colour = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in SHAPE_COLOURS[SHAPES[k]])
        x2, y2 = box[2] - 1, box[3] - 1
        if SHAPES[k] == "square":
            draw.rectangle([box[0], box[1], x2, y2], fill=colour)
        elif SHAPES[k] == "circle":
            draw.ellipse([box[0], box[1], x2, y2], fill=colour)
        else:
            draw.polygon([(box[0], y2), (x2, y2), ((box[0] + x2) / 2, box[1])], fill=colour)
        placed.append((k, box))
    return np.asarray(img), placed


def write_shapes_dataset(root: str | Path, n: int = 96, size: int = 64, seed: int = 0, negatives: int = 0) -> Path:
    """A YOLO-layout detection set `vislab curate` reads: ROOT/images/*.png, ROOT/labels/*.txt
    and data.yaml naming the classes square, circle, triangle (each its own colour and shape);
    `negatives` more images without shapes (and without label files)."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n + negatives):
        if i < n:
            pixels, shapes = shapes_image(rng, size)
            write_text(root / "labels" / f"s{i:04d}.txt", "".join(yolo_line(k, [v / size for v in b]) for k, b in shapes))
        else:
            pixels = np.clip(rng.uniform(90, 170) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"s{i:04d}.png")
    write_text(root / "data.yaml", yaml.safe_dump({"path": ".", "names": dict(enumerate(SHAPES))}))
    return root


def tiny_detect_config(**sections: Any) -> "RunConfig":
    """A seconds-fast detection config for the shapes set: yolov3_tiny at a quarter of its
    width (0.5M weights) at 64 px, anchors of the shapes' sizes, the box loss weighted up
    (localisation is what a few hundred steps learn last), no workers, no hue shift (colour
    tells the classes apart). Keyword arguments are sections merged over it."""
    from vislab.testing.synthetic import tiny_config

    raw: dict[str, Any] = {
        "task": "detect",
        "model": {"name": "yolov3_tiny", "kwargs": {"width": 0.25}},
        "data": {"img_size": None, "batch_size": 8},
        "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0005},
        "scheduler": {"name": "cosine", "warmup_epochs": 1},
        "detect": {
            "img_size": 64, "anchors": [[12, 12], [16, 16], [20, 20], [20, 20], [25, 25], [30, 30]],
            "box_weight": 1.0, "hsv_h": 0.0, "scale": 0.15, "translate": 0.05,
        },
        "train": {"epochs": 12},
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return tiny_config(**raw)
