"""The COCO reader: one or more instances JSON files, their `file_name`s found in the folder
that holds most of them (or the one given).

Coordinates: `bbox [x, y, w, h]`, 0-based pixels of the stored image. `iscrowd` and
`ignore` boxes are ignore regions for their class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vislab.data.det_read import declared_class, finite_number, is_file, read_whole, unique_names
from vislab.data.det_types import (
    MALFORMED,
    MISSING_IMAGE,
    OUTSIDE_DATASET,
    UNKNOWN_CLASS,
    UNKNOWN_IMAGE,
    DetectionSource,
    SourceBox,
)
from vislab.errors import VislabError
from vislab.fsguard import printable, regular_file_problem

def coco_files(root: Path) -> list[Path]:
    if is_file(root):
        return [root]
    found = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    instances = [p for p in found if p.name.startswith("instances_")]
    return instances or found


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_whole(path, "COCO JSON"))
    except json.JSONDecodeError as err:
        raise VislabError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}); fix or re-export the file"
        ) from None
    except (ValueError, RecursionError) as err:  # a 5000-digit number, arrays nested 100,000 deep
        raise VislabError(f"{path}: not readable JSON ({err}); fix or re-export the file") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise VislabError(
            f"{path}: not a COCO detection file (needs 'images', 'annotations' and 'categories' lists)"
        )
    return data


def _coco_id(value: Any) -> int | str | None:
    """A COCO id as given (a number or a string), or None for anything else (a list, a bool)."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _positive_int(value: Any) -> bool:
    """A COCO image size: a whole number above 0 (true is not 1 pixel)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_text(name: str) -> bool:
    """Whether `name` is valid Unicode (no lone surrogate, which JSON's "\\ud800" can write)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _coco_flag(value: Any) -> bool:
    """`iscrowd` / `ignore`: 1, true or "1" / "true"; "0" and "false" are not set."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true")
    return value is True or (isinstance(value, (int, float)) and value == 1)


def _coco_categories(path: Path, entries: list[Any]) -> dict[Any, str]:
    cats: dict[Any, str] = {}
    for i, cat in enumerate(entries):
        cat_id = _coco_id(cat.get("id")) if isinstance(cat, dict) else None
        if cat_id is None:
            raise VislabError(f"{path}: categories[{i}] has no id; each category needs an id and a name")
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise VislabError(f"{path}: categories[{i}] (id {cat_id}) has no name; add one")
        if cat_id in cats:
            raise VislabError(
                f"{path}: categories[{i}] repeats id {cat_id} (also '{printable(cats[cat_id])}'); give each category its own id"
            )
        cats[cat_id] = declared_class(path, f"categories[{i}].name", name.strip())
    unique_names(path, [(f"categories[{i}].name", n) for i, n in enumerate(cats.values())])
    return cats


def _coco_image_dir(path: Path, names: list[str], images_dir: str | Path | None) -> Path:
    """Where `file_name`s live: the folder given, else the candidate holding most of the
    first 100 names (the JSON's folder, its images/, its parent, the parent's images/ or
    the parent's `val2017` for `instances_val2017.json`)."""
    if images_dir is not None:
        return Path(os.path.abspath(images_dir))
    here = path.parent
    stem = path.stem.removeprefix("instances_")
    candidates = [here, here / "images", here.parent, here.parent / "images", here.parent / stem, here / stem]
    sample = names[:100]

    def hits(folder: Path) -> int:
        return sum(os.path.isfile(folder / n) for n in sample)

    return max(candidates, key=hits) if sample else here


def _coco_box(ann: dict[str, Any]) -> tuple[float, float, float, float] | str:
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        return f"{MALFORMED}: annotation id {ann.get('id')}: bbox is not [x, y, width, height]"
    values = [finite_number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in bbox]
    if any(v is None for v in values):
        return f"{MALFORMED}: annotation id {ann.get('id')}: bbox holds a value that is not a finite number"
    x, y, w, h = values
    return x, y, x + w, y + h


def read_coco(root: str | Path, images_dir: str | Path | None = None) -> DetectionSource:
    root = Path(os.path.abspath(root))
    files = coco_files(root)
    if not files:
        raise VislabError(f"{root}: no COCO .json file here or in annotations/; name the JSON file")
    src = DetectionSource("coco", str(root))
    classes: dict[str, None] = {}
    for path in files:
        _read_coco_file(path, images_dir, src, classes)
    src.classes = list(classes)
    src.images = sorted(set(src.images))
    return src


def _read_coco_file(
    path: Path, images_dir: str | Path | None, src: DetectionSource, classes: dict[str, None]
) -> None:
    data = _load_json(path)
    cats = _coco_categories(path, data["categories"])
    classes.update(dict.fromkeys(cats.values()))
    entries = [e for e in data["images"] if isinstance(e, dict)]
    folder = _coco_image_dir(
        path, [e["file_name"] for e in entries if isinstance(e.get("file_name"), str)], images_dir
    )
    images: dict[Any, str | None] = {}
    for i, entry in enumerate(data["images"]):
        name = entry.get("file_name") if isinstance(entry, dict) else None
        image_id = _coco_id(entry.get("id")) if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or image_id is None:
            src.problem(path, None, f"{MALFORMED}: images[{i}] needs an id and a file_name")
            continue
        if image_id in images:
            src.problem(
                path, None, f"{MALFORMED}: images[{i}] repeats image id {image_id}; only its first entry is kept"
            )
            continue
        if "\x00" in name or not _is_text(name):
            src.problem(
                path,
                None,
                f"{MALFORMED}: images[{i}] file_name '{printable(name)}' holds a NUL byte or a lone surrogate, "
                "which no file name can; fix the entry",
            )
            images[image_id] = None
            continue
        image = os.path.normpath(os.path.join(folder, name))
        if os.path.isabs(name) or os.path.commonpath([image, str(folder)]) != str(folder):
            src.problem(
                path,
                None,
                f"{OUTSIDE_DATASET}: images[{i}] file_name '{printable(name)}' lies outside {folder}; "
                "name images relative to their folder (--images-dir)",
            )
            images[image_id] = None
            continue
        why = regular_file_problem(image)
        if why is not None:
            src.problem(image, None, f"{MISSING_IMAGE}: named by {path.name} (image id {image_id}), {why}")
            images[image_id] = None
            continue
        images[image_id] = image
        src.images.append(image)
        w, h = entry.get("width"), entry.get("height")
        if _positive_int(w) and _positive_int(h):
            src.recorded_sizes[image] = (w, h)
        elif w is not None or h is not None:
            src.problem(
                path,
                None,
                f"{MALFORMED}: images[{i}] width {printable(json.dumps(w))}, height {printable(json.dumps(h))}: "
                "not whole numbers of pixels above 0; the size is not used",
            )
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            src.problem(path, None, f"{MALFORMED}: an annotation is not an object")
            continue
        image = images.get(_coco_id(ann.get("image_id")), "")
        if image is None:
            continue  # its image is missing, reported once above
        if image == "":
            src.problem(
                path,
                None,
                f"{UNKNOWN_IMAGE}: annotation id {ann.get('id')} names image id {ann.get('image_id')}, "
                "not in 'images'",
            )
            continue
        cat = _coco_id(ann.get("category_id"))
        if cat is None or cat not in cats:
            src.problem(
                path,
                None,
                f"{UNKNOWN_CLASS}: annotation id {ann.get('id')} has category_id {cat}, not in 'categories'",
            )
            continue
        box = _coco_box(ann)
        if isinstance(box, str):
            src.problem(path, None, box)
            continue
        ignore = _coco_flag(ann.get("iscrowd")) or _coco_flag(ann.get("ignore"))
        src.boxes.append(
            SourceBox(image, cats[cat], *box, False, ignore, file=str(path), line=None, ref=f"annotation id {ann.get('id')}")
        )


