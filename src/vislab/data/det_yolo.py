"""The YOLO reader: class names from data.yaml or classes.txt, label files paired with
images by Ultralytics' rule.

Coordinates: `class cx cy w h`, normalised to the image as displayed (EXIF orientation
applied, as Ultralytics reads images). A 6th field is a confidence from 0 to 1 (what
`vislab predict --out` and Ultralytics' `save_conf` write), read past: the box is a truth
like any other. A line of 7, 9, ... fields is a polygon, boxed by its extent.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from vislab.data.det_read import (
    declared_class,
    finite_number,
    is_dir,
    is_file,
    label_lines,
    list_files,
    read_label_text,
    read_whole,
    unique_names,
)
from vislab.data.det_types import LABEL_WITHOUT_IMAGE, MALFORMED, UNKNOWN_CLASS, DetectionSource, SourceBox
from vislab.data.io import IMAGE_EXTS
from vislab.errors import VislabError

YOLO_NAME_FILES = ("classes.txt", "obj.names", "classes.names")
YOLO_YAMLS = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")


def _class_index(token: str) -> int | None:
    value = finite_number(token)
    if value is None or value < 0 or not value.is_integer():
        return None
    return int(value)


def yaml_names(path: Path) -> list[str] | None:
    """Class names from a data.yaml (`names` as a list or an {id: name} mapping), None if it
    has no `names`; a file that does not parse is a VislabError naming its line."""
    try:
        data = yaml.safe_load(read_whole(path, "dataset YAML"))
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
    for path in (root / n for n in YOLO_YAMLS):
        if is_file(path):
            names = yaml_names(path)
            if names is not None:
                return _declared(path, [(f"names[{i}]", n) for i, n in enumerate(names)])
    for folder in (root, root / "labels"):
        for name in YOLO_NAME_FILES:
            path = folder / name
            if is_file(path):
                lines = [(n, line.strip()) for n, line in enumerate(read_whole(path, "class list").splitlines(), 1)]
                names = _declared(path, [(f"line {n}", line) for n, line in lines if line])
                if names:
                    return names
    for path in sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml")):  # coco8.yaml; hyp.yaml is skipped
        try:
            names = yaml_names(path) if is_file(path) else None
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


def label_dirs(root: Path) -> tuple[Path, Path]:
    """(images folder, labels folder): images/ + labels/ (Ultralytics), else side by side."""
    if is_dir(root / "images") and is_dir(root / "labels"):
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
    src.images = list_files(root, IMAGE_EXTS)
    claimed: dict[str, list[str]] = {}
    for image in src.images:
        claimed.setdefault(yolo_label_path(image), []).append(image)
    image_dirs = {os.path.dirname(p) for p in src.images}
    names_files = {str(root / n) for n in YOLO_NAME_FILES} | {
        str(root / "labels" / n) for n in YOLO_NAME_FILES
    }
    for label in list_files(root, {".txt"}):
        images = claimed.get(label)
        if not images:
            if label not in names_files and (_is_label_place(label) or os.path.dirname(label) in image_dirs):
                src.problem(label, None, f"{LABEL_WITHOUT_IMAGE}: no image whose label this would be")
            continue
        text = read_label_text(label, src)
        if text is None:
            continue
        for n, tokens in label_lines(text):
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
    values = [finite_number(t) for t in tokens[1:]]
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
