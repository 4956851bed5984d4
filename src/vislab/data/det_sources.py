"""Readers for detection datasets: YOLO, KITTI, COCO and Pascal VOC, told apart by layout.

Each reader returns a `DetectionSource`: every image the dataset holds (images without boxes
are kept, as negatives), the boxes as the format writes them, the class names it declares,
and one problem `{file, line, reason}` per thing it could not use. Only a file that makes
the whole dataset unreadable (a broken data.yaml, COCO JSON or class list) raises a one-line
VislabError. `vislab.data.boxes.resolve_boxes` later turns the boxes into one frame, pixels
of the image as displayed, once image sizes are known.

Coordinates, as each format writes them:
- YOLO `class cx cy w h`, normalised to the image as displayed (EXIF orientation applied, as
  Ultralytics reads images). A 6th field is a confidence from 0 to 1 (what `vislab predict
  --out` and Ultralytics' `save_conf` write), read past: the box is a truth like any other.
  A line of 7, 9, ... fields is a polygon, boxed by its extent.
- KITTI `label_2` fields 5-8 `x1 y1 x2 y2`, 0-based pixels of the stored image.
- COCO `bbox [x, y, w, h]`, 0-based pixels of the stored image.
- VOC `xmin ymin xmax ymax`, 1-based inclusive pixel indices of the stored image, so the box
  covers [xmin - 1, xmax] in 0-based coordinates.
"Stored image" means the pixels as saved, before EXIF orientation; when a COCO or VOC file
records an image size equal to the displayed size of an image that EXIF turns by 90 degrees,
its boxes were drawn on the displayed image and are taken as such.

A VOC file pairs with the image its own name gives (Annotations/g.xml, JPEGImages/g.jpg),
else the one its <filename> names; when the two name different images (a renamed pair keeps
a stale <filename>), its own name wins and a `filename_mismatch` problem names both.

Ignore regions: KITTI `DontCare` (for every class), COCO `iscrowd`/`ignore`, VOC `difficult`
(for their class) become boxes with `ignore` set.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vislab.data.io import IMAGE_EXTS
from vislab.data.problems import ProblemLog
from vislab.data.sources import scan_folder
from vislab.errors import VislabError
from vislab.fsguard import MAX_FILE_BYTES, SpecialFileError, folder_name_problem, printable, read_bounded, regular_file_problem

FORMATS = ("yolo", "kitti", "coco", "voc")
FORMAT_NAMES = {"yolo": "YOLO", "kitti": "KITTI", "coco": "COCO", "voc": "Pascal VOC"}
DONT_CARE = "DontCare"
# A per-image label file larger than this is not a label file.
LABEL_FILE_LIMIT = 16 * 1024 * 1024
_SNIFF_FILES = 20

# Reason kinds, the first word of every problem's reason.
MALFORMED = "malformed"
UNKNOWN_CLASS = "unknown_class"
LABEL_WITHOUT_IMAGE = "label_without_image"
MISSING_IMAGE = "missing_image"
UNKNOWN_IMAGE = "unknown_image"
UNREADABLE = "unreadable_label_file"
UNSAFE_XML = "unsafe_xml"
OUTSIDE_DATASET = "outside_dataset"
FILENAME_MISMATCH = "filename_mismatch"

_YOLO_NAME_FILES = ("classes.txt", "obj.names", "classes.names")
_YOLO_YAMLS = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")


@dataclass
class SourceBox:
    """One box as its format writes it: normalised (YOLO) or stored-image pixels."""

    image: str
    cls: str
    x1: float
    y1: float
    x2: float
    y2: float
    normalized: bool
    ignore: bool = False
    truncated: float = math.nan
    occluded: float = math.nan
    file: str = ""
    line: int | None = None
    # What names the box where there is no line: "annotation id 7" in a COCO file.
    ref: str = ""


@dataclass
class DetectionSource:
    """What a reader found; `recorded_sizes` holds the (width, height) a COCO/VOC file
    records for an image, used to tell which frame its boxes are in."""

    format: str
    root: str
    classes: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    boxes: list[SourceBox] = field(default_factory=list)
    recorded_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    problems: ProblemLog = field(default_factory=ProblemLog)

    def problem(self, file: str | Path, line: int | None, reason: str) -> None:
        self.problems.add(file, line, reason)


# ---------------------------------------------------------------- small helpers


def _number(token: str) -> float | None:
    """A finite float, or None (non-numbers, nan and inf are all malformed)."""
    try:
        value = float(token)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _class_index(token: str) -> int | None:
    value = _number(token)
    if value is None or value < 0 or not value.is_integer():
        return None
    return int(value)


def _read_text(path: str, src: DetectionSource) -> str | None:
    """A label file's text, or None with a problem (not a regular file, too big, not UTF-8)."""
    try:
        return read_bounded(path, LABEL_FILE_LIMIT).decode("utf-8-sig")
    except SpecialFileError as err:
        src.problem(path, None, f"{UNREADABLE}: {str(err).removeprefix(f'{path}: ')}")
    except UnicodeDecodeError:
        src.problem(path, None, f"{UNREADABLE}: not UTF-8 text")
    except OSError as err:
        src.problem(path, None, f"{UNREADABLE}: {err.strerror or err}")
    return None


def _is_dir(path: Path) -> bool:
    """Path.is_dir with a place that cannot be looked at (EACCES on Python 3.11) read as
    absent: a root-owned lost+found in a source must not stop layout sniffing."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    """Path.is_file with an unreadable place read as absent, as in `_is_dir`."""
    try:
        return path.is_file()
    except OSError:
        return False


def _read_whole(path: Path, what: str) -> str:
    """A file the whole dataset depends on; any failure is a one-line VislabError."""
    try:
        return read_bounded(path, MAX_FILE_BYTES).decode("utf-8-sig")
    except SpecialFileError as err:
        raise VislabError(f"{err} (the {what}); pass a regular file") from None
    except UnicodeDecodeError:
        raise VislabError(f"{path}: not UTF-8 text; save the {what} as UTF-8") from None
    except OSError as err:
        raise VislabError(f"{path}: cannot read the {what} ({err.strerror or err})") from None


def _files(folder: Path, suffixes: frozenset[str] | set[str]) -> list[str]:
    """Absolute paths of non-hidden files under `folder` with one of `suffixes`, sorted."""
    found, _ = scan_folder(folder)
    return sorted(f.path for f in found if os.path.splitext(f.path)[1].lower() in suffixes)


def _key(path: str, base: Path) -> str:
    """Path relative to `base` without its suffix: how an image and its label file pair up."""
    return os.path.splitext(os.path.relpath(path, base))[0]


def _pair(
    images_dir: Path, labels_dir: Path, suffix: str, src: DetectionSource
) -> list[tuple[str, list[str]]]:
    """Record the images under `images_dir`; return (label file, its images) for the label
    files under `labels_dir`, reporting those without an image. Two images that differ only
    by extension share one label file."""
    images = _files(images_dir, IMAGE_EXTS)
    src.images.extend(images)
    by_key: dict[str, list[str]] = {}
    for image in images:
        by_key.setdefault(_key(image, images_dir), []).append(image)
    pairs = []
    for label in _files(labels_dir, {suffix}):
        matched = by_key.get(_key(label, labels_dir))
        if matched:
            pairs.append((label, matched))
        else:
            src.problem(label, None, f"{LABEL_WITHOUT_IMAGE}: no image with this name in {images_dir}")
    return pairs


def _label_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank lines, one at a time: as a list, a 16 MB
    label file of one-character lines took gigabytes."""
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield n, line.split()


def unique_names(path: str | Path, names: list[tuple[str, str]]) -> list[str]:
    """The names (each with the field that declares it) if none repeats; a repeated one is a
    one-line VislabError: merged silently, every later class id would shift by one."""
    seen: dict[str, str] = {}
    for where, name in names:
        if name in seen:
            raise VislabError(
                f"{printable(path)}: {where} '{printable(name)}' repeats {seen[name]}; give each class one "
                "entry (or its own name)"
            )
        seen[name] = where
    return [name for _, name in names]


def declared_class(path: str | Path, field: str, name: str) -> str:
    """`name`, a class a names file declares, if it is usable as a class folder's name would
    be (`fsguard.folder_name_problem`); else a one-line VislabError naming the file, the
    field and the fix. A control character (ESC[2J clears the terminal that prints it) or a
    newline (it splits classes.txt, shifting every later id) never gets into a dataset."""
    problem = folder_name_problem(name)
    if problem is not None:
        raise VislabError(
            f"{printable(path)}: {field} '{printable(name)}' {problem}; rename the class there "
            "(a plain name: no control characters, '/' or padding spaces)"
        )
    return name


# ---------------------------------------------------------------- YOLO


def _yaml_names(path: Path) -> list[str] | None:
    """Class names from a data.yaml (`names` as a list or an {id: name} mapping), None if it
    has no `names`; a file that does not parse is a VislabError naming its line."""
    try:
        data = yaml.safe_load(_read_whole(path, "dataset YAML"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or type(err).__name__
        raise VislabError(f"{where}: not valid YAML ({problem}); fix the file") from None
    except RecursionError:
        raise VislabError(f"{path}: not readable YAML (nested too deeply); fix the file") from None
    if not isinstance(data, dict) or "names" not in data:
        return None
    names = data["names"]
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise VislabError(f"{path}: 'names' keys must be class ids 0, 1, ...; fix the file") from None
        if ids != list(range(len(ids))):
            raise VislabError(f"{path}: 'names' ids must run 0..{len(ids) - 1} without gaps; fix the file")
        names = [names.get(i, names.get(str(i))) for i in ids]
    if not isinstance(names, list) or not all(isinstance(n, (str, int)) and str(n).strip() for n in names):
        raise VislabError(f"{path}: 'names' must be a list of class names or an {{id: name}} mapping")
    return [str(n).strip() for n in names]


def _yolo_names(root: Path) -> list[str]:
    """The class names of a YOLO dataset, in id order, each checked by `declared_class`."""
    for path in (root / n for n in _YOLO_YAMLS):
        if _is_file(path):
            names = _yaml_names(path)
            if names is not None:
                return _declared(path, [(f"names[{i}]", n) for i, n in enumerate(names)])
    for folder in (root, root / "labels"):
        for name in _YOLO_NAME_FILES:
            path = folder / name
            if _is_file(path):
                lines = [(n, line.strip()) for n, line in enumerate(_read_whole(path, "class list").splitlines(), 1)]
                names = _declared(path, [(f"line {n}", line) for n, line in lines if line])
                if names:
                    return names
    for path in sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml")):  # coco8.yaml; hyp.yaml is skipped
        try:
            names = _yaml_names(path) if _is_file(path) else None
        except VislabError:
            continue
        if names is not None:
            return _declared(path, [(f"names[{i}]", n) for i, n in enumerate(names)])
    raise VislabError(
        f"{root}: no data.yaml with 'names' (or classes.txt) naming the YOLO class ids; add one"
    )


def _declared(path: Path, names: list[tuple[str, str]]) -> list[str]:
    """Class names a YOLO names file declares, each usable and none repeated."""
    return unique_names(path, [(where, declared_class(path, where, n)) for where, n in names])


def _label_dirs(root: Path) -> tuple[Path, Path]:
    """(images folder, labels folder): images/ + labels/ (Ultralytics), else side by side."""
    if _is_dir(root / "images") and _is_dir(root / "labels"):
        return root / "images", root / "labels"
    return root, root


def yolo_label_path(image: str) -> str:
    """Ultralytics' rule: the label of `.../images/x/a.jpg` is `.../labels/x/a.txt` (the last
    `images` folder becomes `labels`); an image outside any `images` folder has its label
    beside it. Covers images/ + labels/, Roboflow's train/images + train/labels, Darknet."""
    head, name = os.path.split(image)
    parts = head.split(os.sep)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
    return os.path.join(os.sep.join(parts), os.path.splitext(name)[0] + ".txt")


def _is_label_place(path: str) -> bool:
    return "labels" in Path(path).parent.parts


def read_yolo(root: str | Path) -> DetectionSource:
    """A YOLO dataset under `root`: every image found, each paired with its label file by
    `yolo_label_path`; a label file under a `labels` folder or beside images that no image
    claims is reported (a stray README elsewhere is not)."""
    root = Path(os.path.abspath(root))
    src = DetectionSource("yolo", str(root), classes=_yolo_names(root))
    src.images = _files(root, IMAGE_EXTS)
    claimed: dict[str, list[str]] = {}
    for image in src.images:
        claimed.setdefault(yolo_label_path(image), []).append(image)
    image_dirs = {os.path.dirname(p) for p in src.images}
    names_files = {str(root / n) for n in _YOLO_NAME_FILES} | {
        str(root / "labels" / n) for n in _YOLO_NAME_FILES
    }
    for label in _files(root, {".txt"}):
        images = claimed.get(label)
        if not images:
            if label not in names_files and (_is_label_place(label) or os.path.dirname(label) in image_dirs):
                src.problem(label, None, f"{LABEL_WITHOUT_IMAGE}: no image whose label this would be")
            continue
        text = _read_text(label, src)
        if text is None:
            continue
        for n, tokens in _label_lines(text):
            parsed = _yolo_line(tokens, src.classes)
            if isinstance(parsed, str):
                src.problem(label, n, parsed)
                continue
            cls, (x1, y1, x2, y2) = parsed
            for image in images:
                src.boxes.append(SourceBox(image, cls, x1, y1, x2, y2, True, file=label, line=n))
    return src


def _yolo_line(tokens: list[str], names: list[str]) -> tuple[str, tuple[float, ...]] | str:
    """(class name, normalised x1 y1 x2 y2) of one label line, or the reason it is unusable."""
    n = len(tokens)
    if n < 5 or (n > 6 and n % 2 == 0):
        return (
            f"{MALFORMED}: {n} fields; a YOLO line is 'class cx cy w h' (or 'class cx cy w h confidence', "
            "or a polygon 'class x y x y ...')"
        )
    idx = _class_index(tokens[0])
    if idx is None:
        return f"{MALFORMED}: class id '{tokens[0]}' is not a non-negative integer"
    values = [_number(t) for t in tokens[1:]]
    bad = [t for t, v in zip(tokens[1:], values) if v is None]
    if bad:
        return f"{MALFORMED}: '{bad[0]}' is not a finite number"
    if n == 6 and not 0 <= values[4] <= 1:
        return f"{MALFORMED}: 6th field '{tokens[5]}' is not a confidence from 0 to 1; a YOLO line is 'class cx cy w h [confidence]'"
    if idx >= len(names):
        return f"{UNKNOWN_CLASS}: class id {idx}, but only {len(names)} class names are declared"
    if n <= 6:
        cx, cy, w, h = values[:4]
        return names[idx], (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    xs, ys = values[0::2], values[1::2]
    return names[idx], (min(xs), min(ys), max(xs), max(ys))


# ---------------------------------------------------------------- KITTI


def _kitti_dirs(root: Path) -> tuple[Path, Path] | None:
    for base in (root, root / "training"):
        if _is_dir(base / "label_2"):
            return base / "image_2", base / "label_2"
    if _is_dir(root / "labels") and _is_dir(root / "images"):
        return root / "images", root / "labels"
    return None


def read_kitti(root: str | Path) -> DetectionSource:
    root = Path(os.path.abspath(root))
    dirs = _kitti_dirs(root)
    if dirs is None:
        raise VislabError(
            f"{root}: no label_2/ (or training/label_2/, or labels/ + images/) folder of KITTI labels"
        )
    if not _is_dir(dirs[0]):
        raise VislabError(f"{root}: KITTI labels in {dirs[1]} but no image folder {dirs[0]}; put the images there")
    src = DetectionSource("kitti", str(root))
    seen: dict[str, None] = {}
    for label, images in _pair(*dirs, ".txt", src):
        text = _read_text(label, src)
        if text is None:
            continue
        for n, tokens in _label_lines(text):
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
    values = [_number(t) for t in tokens[1:]]
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


# ---------------------------------------------------------------- COCO


def _coco_files(root: Path) -> list[Path]:
    if _is_file(root):
        return [root]
    found = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    instances = [p for p in found if p.name.startswith("instances_")]
    return instances or found


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_whole(path, "COCO JSON"))
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
    values = [_number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in bbox]
    if any(v is None for v in values):
        return f"{MALFORMED}: annotation id {ann.get('id')}: bbox holds a value that is not a finite number"
    x, y, w, h = values
    return x, y, x + w, y + h


def read_coco(root: str | Path, images_dir: str | Path | None = None) -> DetectionSource:
    root = Path(os.path.abspath(root))
    files = _coco_files(root)
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


# ---------------------------------------------------------------- Pascal VOC


class UnsafeXMLError(ValueError):
    """The XML declares a DOCTYPE or entities: refused, so nothing is expanded or fetched."""


def parse_xml(data: bytes) -> tuple[ET.Element, dict[ET.Element, int]]:
    """Parse XML with expat, refusing any DOCTYPE and entity declaration (so no entity
    expansion bomb and no external fetch), and record each element's line number.

    Raises UnsafeXMLError, or xml.parsers.expat.ExpatError for XML that is not well formed.
    """
    builder = ET.TreeBuilder()
    lines: dict[ET.Element, int] = {}
    parser = xml.parsers.expat.ParserCreate()
    parser.buffer_text = True

    def start(tag: str, attrs: dict[str, str]) -> None:
        lines[builder.start(tag, attrs)] = parser.CurrentLineNumber

    def refuse(*_: Any) -> None:
        raise UnsafeXMLError(
            f"line {parser.CurrentLineNumber}: DOCTYPE and entity declarations are not allowed"
        )

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.Parse(data, True)
    return builder.close(), lines


def _voc_dirs(root: Path) -> list[Path]:
    """Folders holding Annotations/ with a JPEGImages/ beside them: the root, or up to two
    levels down (VOCdevkit/VOC2007, VOCdevkit/VOC2012)."""

    def subfolders(folder: Path) -> list[Path]:
        try:
            return sorted(
                Path(e.path) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
            )
        except OSError:
            return []

    first = subfolders(root)
    levels = [root, *first, *(p for f in first for p in subfolders(f))]
    return [p for p in levels if _is_dir(p / "Annotations") and _is_dir(p / "JPEGImages")]


def read_voc(root: str | Path) -> DetectionSource:
    root = Path(os.path.abspath(root))
    dirs = _voc_dirs(root)
    if not dirs:
        raise VislabError(
            f"{root}: no Annotations/ + JPEGImages/ folders (Pascal VOC layout) here or two levels down"
        )
    src = DetectionSource("voc", str(root))
    classes: dict[str, None] = {}
    for base in dirs:
        images_dir = base / "JPEGImages"
        images = _files(images_dir, IMAGE_EXTS)
        src.images.extend(images)
        by_name = {os.path.relpath(p, images_dir): p for p in images}
        by_stem = {os.path.splitext(k)[0]: p for k, p in by_name.items()}
        for xml_path in _files(base / "Annotations", {".xml"}):
            _read_voc_file(xml_path, by_name, by_stem, src, classes)
    src.classes = sorted(classes)
    return src


def _read_voc_file(
    path: str,
    by_name: dict[str, str],
    by_stem: dict[str, str],
    src: DetectionSource,
    classes: dict[str, None],
) -> None:
    try:
        data = read_bounded(path, LABEL_FILE_LIMIT)
    except (SpecialFileError, OSError) as err:
        src.problem(path, None, f"{UNREADABLE}: {getattr(err, 'strerror', None) or err}")
        return
    try:
        root, lines = parse_xml(data)
    except UnsafeXMLError as err:
        src.problem(path, None, f"{UNSAFE_XML}: {err}")
        return
    except (ValueError, LookupError) as err:  # an encoding expat cannot read (shift_jis, a made-up name)
        src.problem(path, None, f"{UNREADABLE}: unsupported XML encoding ({err}); save the file as UTF-8")
        return
    except xml.parsers.expat.ExpatError as err:
        src.problem(
            path, err.lineno, f"{UNREADABLE}: not well-formed XML ({xml.parsers.expat.ErrorString(err.code)})"
        )
        return
    name = (root.findtext("filename") or "").strip()
    named, paired = by_name.get(name), by_stem.get(os.path.splitext(os.path.basename(path))[0])
    image = paired or named
    if named is not None and paired is not None and named != paired:
        # a renamed pair (g.jpg + g.xml) keeps its old <filename>: the file's own name is the pairing
        src.problem(
            path, None, f"{FILENAME_MISMATCH}: <filename> says '{name}', but this file is named after "
            f"{os.path.basename(paired)}; its boxes are used for {os.path.basename(paired)}: fix <filename> "
            "(or rename the file) if they belong to the other image",
        )
    if image is None:
        src.problem(
            path, None, f"{LABEL_WITHOUT_IMAGE}: no image '{name or os.path.basename(path)}' in JPEGImages"
        )
        return
    w, h = _number(root.findtext("size/width") or ""), _number(root.findtext("size/height") or "")
    if w and h and w > 0 and h > 0:
        src.recorded_sizes[image] = (int(w), int(h))
    for obj in root.iter("object"):
        parsed = _voc_object(obj)
        if isinstance(parsed, str):
            src.problem(path, lines.get(obj), parsed)
            continue
        src.boxes.append(SourceBox(image, *parsed, file=path, line=lines.get(obj)))
        classes.setdefault(parsed[0])


def _voc_flag(obj: ET.Element, tag: str) -> float:
    value = _number((obj.findtext(tag) or "").strip())
    return math.nan if value is None else value


def _voc_object(obj: ET.Element) -> tuple[Any, ...] | str:
    name = (obj.findtext("name") or "").strip()
    if not name:
        return f"{MALFORMED}: <object> without a <name>"
    corners = [(obj.findtext(f"bndbox/{t}") or "").strip() for t in ("xmin", "ymin", "xmax", "ymax")]
    values = [_number(v) for v in corners]
    if any(v is None for v in values):
        return f"{MALFORMED}: <object> '{name}' needs numeric bndbox xmin, ymin, xmax, ymax"
    xmin, ymin, xmax, ymax = values
    difficult = _voc_flag(obj, "difficult") == 1
    occluded = _voc_flag(obj, "occluded")
    if not math.isnan(occluded) and occluded not in (0, 1):
        return f"{MALFORMED}: <object> '{name}' <occluded> '{(obj.findtext('occluded') or '').strip()}' is not 0 or 1"
    return (
        name,
        xmin - 1,
        ymin - 1,
        xmax,
        ymax,
        False,
        difficult,
        _voc_flag(obj, "truncated"),
        occluded,
    )


# ---------------------------------------------------------------- format detection


def _sniff_txt_labels(labels_dir: Path) -> str | None:
    """'kitti' when label lines start with a type name and have 15 fields, 'yolo' when they
    start with a class id; None when no label line is found."""
    votes = {"kitti": 0, "yolo": 0}
    checked = 0
    for path in _files(labels_dir, {".txt"}):
        if checked >= _SNIFF_FILES:
            break
        try:
            text = read_bounded(path, LABEL_FILE_LIMIT).decode("utf-8-sig", errors="replace")
        except OSError:
            continue
        first = next(_label_lines(text), None)
        if first is None:
            continue
        checked += 1
        tokens = first[1]
        if _number(tokens[0]) is None and len(tokens) in (15, 16):
            votes["kitti"] += 1
        elif _number(tokens[0]) is not None:
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
    if _is_file(path):
        if path.suffix.lower() == ".json":
            return "coco"
        raise VislabError(f"{path}: cannot tell the detection format of this file; {hint}")
    if not _is_dir(path):
        raise VislabError(f"{path}: no such file or folder; check the path")
    if _voc_dirs(path):
        return "voc"
    if _is_dir(path / "label_2") or _is_dir(path / "training" / "label_2"):
        return "kitti"
    images_dir, labels_dir = _label_dirs(path)
    if images_dir != labels_dir:
        sniffed = _sniff_txt_labels(labels_dir)
        if sniffed is not None:
            return sniffed
    if any(_is_file(path / n) for n in _YOLO_YAMLS + _YOLO_NAME_FILES):
        return "yolo"
    if _coco_files(path):
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
    if _is_file(path):
        return "coco" if path.suffix.lower() == ".json" else None
    if not _is_dir(path):
        return None
    if _voc_dirs(path):
        return "voc"
    if _is_dir(path / "label_2") or _is_dir(path / "training" / "label_2"):
        return "kitti"
    images_dir, labels_dir = _label_dirs(path)
    sniffed = _sniff_txt_labels(labels_dir) if images_dir != labels_dir else None
    if sniffed is not None:
        return sniffed
    for name in _YOLO_YAMLS:
        if _is_file(path / name) and _yaml_names(path / name) is not None:
            return "yolo"
    if images_dir != labels_dir and any(_is_file(path / n) for n in _YOLO_NAME_FILES):
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
