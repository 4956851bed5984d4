"""Which format a detection dataset is in, told apart by its layout, and reading it with the
reader for that format (`det_yolo`, `det_kitti`, `det_coco`, `det_voc`; what they return is
in `det_types`)."""

from __future__ import annotations

import os
from pathlib import Path

from vislab.data.det_coco import coco_files, read_coco
from vislab.data.det_kitti import read_kitti
from vislab.data.det_read import LABEL_FILE_LIMIT, finite_number, is_dir, is_file, label_lines, list_files
from vislab.data.det_types import FORMATS, DetectionSource
from vislab.data.det_voc import parse_xml, read_voc, voc_dirs
from vislab.data.det_yolo import YOLO_NAME_FILES, YOLO_YAMLS, label_dirs, read_yolo, yaml_names
from vislab.errors import VislabError
from vislab.fsguard import read_bounded

# parse_xml lives in det_voc; it stays importable from here, where tests import it.
__all__ = ["detect_format", "detection_layout", "parse_xml", "read_detection_source"]

_SNIFF_FILES = 20


def _sniff_txt_labels(labels_dir: Path) -> str | None:
    """'kitti' when label lines start with a type name and have 15 fields, 'yolo' when they
    start with a class id; None when no label line is found."""
    votes = {"kitti": 0, "yolo": 0}
    checked = 0
    for path in list_files(labels_dir, {".txt"}):
        if checked >= _SNIFF_FILES:
            break
        try:
            text = read_bounded(path, LABEL_FILE_LIMIT).decode("utf-8-sig", errors="replace")
        except OSError:
            continue
        first = next(label_lines(text), None)
        if first is None:
            continue
        checked += 1
        tokens = first[1]
        if finite_number(tokens[0]) is None and len(tokens) in (15, 16):
            votes["kitti"] += 1
        elif finite_number(tokens[0]) is not None:
            votes["yolo"] += 1
    if not any(votes.values()):
        return None
    return max(votes, key=lambda k: votes[k])


def detect_format(root: str | Path) -> str:
    """Which format a dataset is in, from its layout (and, for text labels, from the first
    lines of a few label files: KITTI lines start with a type name, YOLO lines with an id)."""
    path = Path(root)
    hint = (
        "expected YOLO (images/ + labels/ + data.yaml), KITTI (image_2/ + label_2/), "
        "COCO (a .json file) or VOC (Annotations/ + JPEGImages/); or name it with --format"
    )
    if is_file(path):
        if path.suffix.lower() == ".json":
            return "coco"
        raise VislabError(f"{path}: cannot tell the detection format of this file; {hint}")
    if not is_dir(path):
        raise VislabError(f"{path}: no such file or folder; check the path")
    if voc_dirs(path):
        return "voc"
    if is_dir(path / "label_2") or is_dir(path / "training" / "label_2"):
        return "kitti"
    images_dir, labels_dir = label_dirs(path)
    if images_dir != labels_dir:
        sniffed = _sniff_txt_labels(labels_dir)
        if sniffed is not None:
            return sniffed
    if any(is_file(path / n) for n in YOLO_YAMLS + YOLO_NAME_FILES):
        return "yolo"
    if coco_files(path):
        return "coco"
    sniffed = _sniff_txt_labels(labels_dir)
    if sniffed is not None:
        return sniffed
    raise VislabError(f"{path}: cannot tell the detection format; {hint}")


def detection_layout(root: str | Path) -> str | None:
    """The format of `root` when its layout can only be a detection dataset, else None (it
    may be a folder of class folders). What `vislab curate` goes by without --format: a .json
    file, Annotations/ + JPEGImages/, label_2/, images/ + labels/ holding label lines, a
    data.yaml (or dataset.yaml) naming classes, or COCO JSON in annotations/ (or named
    instances_*.json). A lone .txt or .json beside photos is not enough."""
    path = Path(root)
    if is_file(path):
        return "coco" if path.suffix.lower() == ".json" else None
    if not is_dir(path):
        return None
    if voc_dirs(path):
        return "voc"
    if is_dir(path / "label_2") or is_dir(path / "training" / "label_2"):
        return "kitti"
    images_dir, labels_dir = label_dirs(path)
    sniffed = _sniff_txt_labels(labels_dir) if images_dir != labels_dir else None
    if sniffed is not None:
        return sniffed
    for name in YOLO_YAMLS:
        if is_file(path / name) and yaml_names(path / name) is not None:
            return "yolo"
    if images_dir != labels_dir and any(is_file(path / n) for n in YOLO_NAME_FILES):
        return "yolo"
    if sorted((path / "annotations").glob("*.json")) or sorted(path.glob("instances_*.json")):
        return "coco"
    return None


def read_detection_source(
    root: str | Path, format: str = "auto", images_dir: str | Path | None = None
) -> DetectionSource:
    """Read a detection dataset in `format` (or the one `detect_format` finds).
    `images_dir` tells a COCO JSON where its `file_name`s live, when the layout does not."""
    if format != "auto" and format not in FORMATS:
        raise VislabError(f"--format {format!r} is not one of auto, {', '.join(FORMATS)}")
    if not os.path.exists(root):
        raise VislabError(f"{root}: no such file or folder; check the path")
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "coco":
        src = read_coco(root, images_dir)
    elif fmt == "voc":
        src = read_voc(root)
    elif fmt == "kitti":
        src = read_kitti(root)
    else:
        src = read_yolo(root)
    src.images = sorted(set(src.images))
    return src
