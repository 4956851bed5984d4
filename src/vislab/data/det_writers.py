"""A curated detection dataset written for other tools: YOLO (Ultralytics layout) or COCO.

`vislab materialize --format yolo|coco` calls these (`write_detection`). The usable manifest rows and their
boxes are written under OUT; images are put in place by a callback (`place(source, target)`,
a symbolic link by default) so the caller chooses links or copies. Every path written is
checked to stay inside OUT, and OUT must be new, empty or an earlier materialize's output:
like the class-folder materialize, a writer leaves its marker listing what it wrote
(`materialize.open_output`, `record_output`), so a re-run replaces exactly those files and
curate skips an export put inside a source.

Frames follow each format's convention, the same ones the readers assume (so a dataset read
back gives the same boxes): YOLO normalised to the displayed (EXIF-oriented) image, COCO in
pixels of the stored image with its stored width and height.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from vislab.data.boxes import ImageSize, dataset_box_classes, read_boxes, sizes_from_manifest, unorient_boxes
from vislab.data.det_types import DONT_CARE
from vislab.data.manifest import manifest_path, read_manifest, usable
from vislab.data.materialize import UNSPLIT, open_output, placer, record_output
from vislab.errors import VislabError
from vislab.fsguard import inside

Place = Callable[[str, Path], None]
WRITE_FORMATS = ("yolo", "coco")


def _prepare(dataset_dir: str | Path, out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    rows = usable(read_manifest(dataset_dir))
    boxes = read_boxes(dataset_dir)
    sizes = sizes_from_manifest(rows)
    unsized = [p for p in rows["path"] if p not in sizes]
    if unsized:
        raise VislabError(
            f"{manifest_path(dataset_dir)}: usable image {unsized[0]} has no width and height; "
            "re-run `vislab curate`"
        )
    out_dir = Path(os.path.abspath(out))
    open_output(out_dir, rows["path"])
    rows = rows.assign(folder=rows["split"].where(rows["split"] != "", UNSPLIT))
    return rows, boxes[boxes["path"].isin(rows["path"])], out_dir


@contextmanager
def _recorded(out_dir: Path, dataset_dir: str | Path, mode: str) -> Iterator[list[str]]:
    """The list a writer adds each file to, written as OUT's materialize marker at the end
    (after a failure too), as the class-folder materialize does: curate then skips OUT found
    inside a source, and the next run replaces exactly those files."""
    written: list[str] = []
    try:
        yield written
    finally:
        record_output(out_dir, dataset_dir, mode, written)


def _file_names(paths: list[str]) -> list[str]:
    """Names inside one folder, unique by stem (a label file is named by the image's stem);
    a stem shared by several images gets a short hash of the source path."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    counts = Counter(stems)
    out = []
    for path, stem in zip(paths, stems):
        if counts[stem] > 1:
            stem = f"{stem}-{hashlib.sha256(path.encode('utf-8')).hexdigest()[:8]}"
        out.append(stem + os.path.splitext(path)[1])
    return out


def _write_text(out: Path, rel: str, text: str, written: list[str]) -> None:
    target = inside(out, rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    written.append(rel)


def _place_image(out: Path, rel: str, source: str, place: Place, written: list[str]) -> None:
    target = inside(out, rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    place(source, target)
    written.append(rel)


def _layout(rows: pd.DataFrame) -> list[tuple[str, list[str], list[str]]]:
    """(folder, source paths, file names) per split folder, in a fixed order."""
    out = []
    for folder in sorted(set(rows["folder"])):
        paths = sorted(rows.loc[rows["folder"] == folder, "path"])
        out.append((folder, paths, _file_names(paths)))
    return out


def write_yolo(
    dataset_dir: str | Path, out: str | Path, place: Place = os.symlink, mode: str = "symlink"
) -> dict[str, Any]:
    """OUT/images/<split>/<image>, OUT/labels/<split>/<stem>.txt (one `id cx cy w h` line per
    box; an empty file for an image without boxes) and OUT/data.yaml naming the classes in
    the dataset's id order (`dataset_box_classes`).
    YOLO has no ignore regions, so those are left out and counted. Returns the files written
    (relative to OUT) and counts."""
    rows, boxes, out_dir = _prepare(dataset_dir, out)
    classes = dataset_box_classes(dataset_dir, boxes)
    ids = {c: i for i, c in enumerate(classes)}
    sizes = sizes_from_manifest(rows)
    by_path = {p: g for p, g in boxes[~boxes["ignore"]].groupby("path", sort=False)}
    with _recorded(out_dir, dataset_dir, mode) as written:
        for folder, paths, names in _layout(rows):
            for path, name in zip(paths, names):
                _place_image(out_dir, f"images/{folder}/{name}", path, place, written)
                size = sizes[path]
                lines = []
                g = by_path.get(path)
                if g is not None:
                    for c, x1, y1, x2, y2 in g[["class", "x1", "y1", "x2", "y2"]].itertuples(index=False):
                        cx, cy = (x1 + x2) / 2 / size.width, (y1 + y2) / 2 / size.height
                        w, h = (x2 - x1) / size.width, (y2 - y1) / size.height
                        lines.append(f"{ids[c]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
                _write_text(out_dir, f"labels/{folder}/{os.path.splitext(name)[0]}.txt", "".join(lines), written)
        folders = sorted(set(rows["folder"]))
        spec: dict[str, Any] = {"path": str(out_dir)}
        for folder in folders:
            spec["train" if folder == UNSPLIT and "train" not in folders else folder] = f"images/{folder}"
        spec["names"] = dict(enumerate(classes))
        _write_text(out_dir, "data.yaml", yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), written)
    return {
        "files": written,
        "images": int(len(rows)),
        "boxes": int((~boxes["ignore"]).sum()),
        "ignore_regions_left_out": int(boxes["ignore"].sum()),
    }


def _coco_images_and_annotations(
    paths: list[str],
    names: list[str],
    boxes: pd.DataFrame,
    sizes: dict[str, ImageSize],
    categories: dict[str, int],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    by_path = {p: g for p, g in boxes.groupby("path", sort=False)}
    images, annotations = [], []
    for image_id, (path, name) in enumerate(zip(paths, names), start=1):
        size = sizes[path]
        stored_w, stored_h = size.stored
        images.append({"id": image_id, "file_name": name, "width": stored_w, "height": stored_h})
        g = by_path.get(path)
        if g is None:
            continue
        xyxy = unorient_boxes(
            g[["x1", "y1", "x2", "y2"]].to_numpy(np.float64), size.orientation, size.width, size.height
        )
        for (x1, y1, x2, y2), c, ignore in zip(xyxy.tolist(), g["class"], g["ignore"]):
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[c],
                    "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)],
                    "area": round(w * h, 3),
                    "iscrowd": int(bool(ignore)),
                }
            )
    return images, annotations


def write_coco(
    dataset_dir: str | Path, out: str | Path, place: Place = os.symlink, mode: str = "symlink"
) -> dict[str, Any]:
    """OUT/<split>/<image> and OUT/annotations/instances_<split>.json (COCO's own layout).
    Ignore regions are `iscrowd: 1`; a class only of ignore regions (KITTI's DontCare, a Van
    kept beside Car) keeps a category after the dataset's classes (crowd boxes only, so COCO
    evaluation gives it no AP). Returns the files written (relative to OUT) and counts."""
    rows, boxes, out_dir = _prepare(dataset_dir, out)
    names = dataset_box_classes(dataset_dir, boxes)
    names += sorted(set(boxes["class"]) - set(names) - {DONT_CARE}) + ([DONT_CARE] if (boxes["class"] == DONT_CARE).any() else [])
    categories = {c: i for i, c in enumerate(names, start=1)}
    sizes = sizes_from_manifest(rows)
    with _recorded(out_dir, dataset_dir, mode) as written:
        for folder, paths, files in _layout(rows):
            for path, name in zip(paths, files):
                _place_image(out_dir, f"{folder}/{name}", path, place, written)
            images, annotations = _coco_images_and_annotations(paths, files, boxes, sizes, categories)
            data = {
                "info": {"description": f"written by vislab from {os.path.abspath(dataset_dir)}"},
                "images": images,
                "annotations": annotations,
                "categories": [{"id": i, "name": c} for c, i in categories.items()],
            }
            _write_text(
                out_dir,
                f"annotations/instances_{folder}.json",
                json.dumps(data, indent=1, ensure_ascii=False) + "\n",
                written,
            )
    return {"files": written, "images": int(len(rows)), "boxes": int(len(boxes))}


def write_detection(dataset_dir: str | Path, out: str | Path, fmt: str, mode: str = "symlink") -> dict[str, Any]:
    """`vislab materialize --format yolo|coco`: the dataset in `fmt`, its images put in
    place by `mode` (symlink, hardlink or copy; never the sources themselves)."""
    if fmt not in WRITE_FORMATS:
        raise VislabError(f"--format {fmt!r} is not one of {', '.join(WRITE_FORMATS)}")
    place = placer(mode)
    writer = write_yolo if fmt == "yolo" else write_coco
    return writer(dataset_dir, out, place=place, mode=mode)
