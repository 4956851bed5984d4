"""The Pascal VOC reader, and the safe XML parser it reads with.

Coordinates: `xmin ymin xmax ymax`, 1-based inclusive pixel indices of the stored image, so
the box covers [xmin - 1, xmax] in 0-based coordinates. `difficult` objects are ignore
regions for their class.

A VOC file pairs with the image its own name gives (Annotations/g.xml, JPEGImages/g.jpg),
else the one its <filename> names; when the two name different images (a renamed pair keeps
a stale <filename>), its own name wins and a `filename_mismatch` problem names both.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
import xml.parsers.expat
from pathlib import Path
from typing import Any

from vislab.data.det_read import LABEL_FILE_LIMIT, finite_number, is_dir, list_files
from vislab.data.det_types import (
    FILENAME_MISMATCH,
    LABEL_WITHOUT_IMAGE,
    MALFORMED,
    UNREADABLE,
    UNSAFE_XML,
    DetectionSource,
    SourceBox,
)
from vislab.data.io import IMAGE_EXTS
from vislab.errors import VislabError
from vislab.fsguard import SpecialFileError, read_bounded

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


def voc_dirs(root: Path) -> list[Path]:
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
    return [p for p in levels if is_dir(p / "Annotations") and is_dir(p / "JPEGImages")]


def read_voc(root: str | Path) -> DetectionSource:
    root = Path(os.path.abspath(root))
    dirs = voc_dirs(root)
    if not dirs:
        raise VislabError(
            f"{root}: no Annotations/ + JPEGImages/ folders (Pascal VOC layout) here or two levels down"
        )
    src = DetectionSource("voc", str(root))
    classes: dict[str, None] = {}
    for base in dirs:
        images_dir = base / "JPEGImages"
        images = list_files(images_dir, IMAGE_EXTS)
        src.images.extend(images)
        by_name = {os.path.relpath(p, images_dir): p for p in images}
        by_stem = {os.path.splitext(k)[0]: p for k, p in by_name.items()}
        for xml_path in list_files(base / "Annotations", {".xml"}):
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
    w, h = finite_number(root.findtext("size/width") or ""), finite_number(root.findtext("size/height") or "")
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
    value = finite_number((obj.findtext(tag) or "").strip())
    return math.nan if value is None else value


def _voc_object(obj: ET.Element) -> tuple[Any, ...] | str:
    name = (obj.findtext("name") or "").strip()
    if not name:
        return f"{MALFORMED}: <object> without a <name>"
    corners = [(obj.findtext(f"bndbox/{t}") or "").strip() for t in ("xmin", "ymin", "xmax", "ymax")]
    values = [finite_number(v) for v in corners]
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

