"""The detection-source model: what every detection reader returns and every consumer reads.

A reader returns a `DetectionSource`: every image the dataset holds (images without boxes
are kept, as negatives), the boxes as the format writes them (`SourceBox`), the class names
it declares, and one problem `{file, line, reason}` per thing it could not use; each
reason starts with one of the reason kinds below. Only a file that makes the whole dataset
unreadable (a broken data.yaml, COCO JSON or class list) raises a one-line VislabError.
`vislab.data.boxes.resolve_boxes` later turns the boxes into one frame, pixels of the image
as displayed, once image sizes are known.

"Stored image" means the pixels as saved, before EXIF orientation; when a COCO or VOC file
records an image size equal to the displayed size of an image that EXIF turns by 90 degrees,
its boxes were drawn on the displayed image and are taken as such.

Ignore regions: KITTI `DontCare` (for every class), COCO `iscrowd`/`ignore`, VOC `difficult`
(for their class) become boxes with `ignore` set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from vislab.data.problems import ProblemLog

FORMATS = ("yolo", "kitti", "coco", "voc")
FORMAT_NAMES = {"yolo": "YOLO", "kitti": "KITTI", "coco": "COCO", "voc": "Pascal VOC"}
DONT_CARE = "DontCare"

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
