"""Tiny detection datasets written by hand, in the layouts `vislab curate` reads: YOLO
(images/ + labels/ + data.yaml) and KITTI (images/ + labels/ of KITTI lines, as kitti-tiny).
Label text is given verbatim, so a test can put a broken line exactly where it wants one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from vislab.testing.images import write_image

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
