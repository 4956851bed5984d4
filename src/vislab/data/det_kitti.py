"""The KITTI reader: `label_2/` text labels paired with `image_2/` images by name.

Coordinates: `label_2` fields 5-8 `x1 y1 x2 y2`, 0-based pixels of the stored image.
`DontCare` boxes are ignore regions for every class.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from vislab.data.det_read import finite_number, is_dir, label_lines, list_files, read_label_text
from vislab.data.det_types import DONT_CARE, LABEL_WITHOUT_IMAGE, MALFORMED, DetectionSource, SourceBox
from vislab.data.io import IMAGE_EXTS
from vislab.errors import VislabError

def _key(path: str, base: Path) -> str:
    """Path relative to `base` without its suffix: how an image and its label file pair up."""
    return os.path.splitext(os.path.relpath(path, base))[0]


def _pair(
    images_dir: Path, labels_dir: Path, suffix: str, src: DetectionSource
) -> list[tuple[str, list[str]]]:
    """Record the images under `images_dir`; return (label file, its images) for the label
    files under `labels_dir`, reporting those without an image. Two images that differ only
    by extension share one label file."""
    images = list_files(images_dir, IMAGE_EXTS)
    src.images.extend(images)
    by_key: dict[str, list[str]] = {}
    for image in images:
        by_key.setdefault(_key(image, images_dir), []).append(image)
    pairs = []
    for label in list_files(labels_dir, {suffix}):
        matched = by_key.get(_key(label, labels_dir))
        if matched:
            pairs.append((label, matched))
        else:
            src.problem(label, None, f"{LABEL_WITHOUT_IMAGE}: no image with this name in {images_dir}")
    return pairs


def _kitti_dirs(root: Path) -> tuple[Path, Path] | None:
    for base in (root, root / "training"):
        if is_dir(base / "label_2"):
            return base / "image_2", base / "label_2"
    if is_dir(root / "labels") and is_dir(root / "images"):
        return root / "images", root / "labels"
    return None


def read_kitti(root: str | Path) -> DetectionSource:
    root = Path(os.path.abspath(root))
    dirs = _kitti_dirs(root)
    if dirs is None:
        raise VislabError(
            f"{root}: no label_2/ (or training/label_2/, or labels/ + images/) folder of KITTI labels"
        )
    if not is_dir(dirs[0]):
        raise VislabError(f"{root}: KITTI labels in {dirs[1]} but no image folder {dirs[0]}; put the images there")
    src = DetectionSource("kitti", str(root))
    seen: dict[str, None] = {}
    for label, images in _pair(*dirs, ".txt", src):
        text = read_label_text(label, src)
        if text is None:
            continue
        for n, tokens in label_lines(text):
            parsed = _kitti_line(tokens)
            if isinstance(parsed, str):
                src.problem(label, n, parsed)
                continue
            for image in images:
                src.boxes.append(SourceBox(image, *parsed, file=label, line=n))
            seen.setdefault(parsed[0])
    src.classes = sorted(c for c in seen if c != DONT_CARE)
    return src


def _kitti_line(tokens: list[str]) -> tuple[Any, ...] | str:
    """(type, x1, y1, x2, y2, normalized, ignore, truncated, occluded), or a reason."""
    if len(tokens) not in (15, 16):
        return (
            f"{MALFORMED}: {len(tokens)} fields; a KITTI line has 15 "
            "(type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry)"
        )
    values = [finite_number(t) for t in tokens[1:]]
    bad = [t for t, v in zip(tokens[1:], values) if v is None]
    if bad:
        return f"{MALFORMED}: '{bad[0]}' is not a finite number"
    kind = tokens[0]
    truncated, occluded, _alpha, x1, y1, x2, y2 = values[:7]
    dont_care = kind == DONT_CARE
    if not dont_care and occluded not in (0, 1, 2, 3):
        return f"{MALFORMED}: occluded '{tokens[2]}' is not 0, 1, 2 or 3 (fully visible .. unknown)"
    return (
        kind,
        x1,
        y1,
        x2,
        y2,
        False,
        dont_care,
        math.nan if dont_care else truncated,
        math.nan if dont_care else occluded,
    )

