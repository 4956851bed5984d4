"""`vislab curate` for detection datasets: YOLO, KITTI, COCO and Pascal VOC.

The manifest has one row per image with an empty label (an image holds many classes), so
every image check of `vislab curate` applies unchanged: broken files are quarantined, EXIF
orientation is read, size filters and dedupe exclude rows. The boxes go into `boxes.csv`
beside the manifest (see `vislab.data.boxes`), in this order:

1. The source's label files are read (`det_sources`); a line or entry that cannot be used
   is a problem {file, line, reason}, never an error.
2. An image whose COCO/VOC annotation records a size the file does not have (resized since
   labelling) is excluded as `size_mismatch` (`frame_problems`). Dedupe compares copies by
   their boxes (`answers`): a copy without boxes is never kept over one with boxes, copies
   with different boxes both stay, in one group, reported as conflicting (byte-identical
   ones are all excluded as conflicting_labels), as class-folder copies under two labels are.
   Boxes of an image that does not end `ok` (quarantined, too small, a duplicate not kept,
   ...) are dropped and counted by that image's reason, so of a duplicate group only the
   kept copy's boxes stay.
3. The rest are put in pixels of the displayed image and clipped (`resolve_boxes`).
4. Classes are merged (--map) and selected (--classes); an image left without boxes stays,
   as a negative.
5. --split assigns images with `detection_splits`, stratified on the classes they hold.

Class names are checked as class-folder labels are (`fsguard.folder_name_problem`: no
control character, newline, '/' or padding), so none is printed raw or splits classes.txt:
one a names file declares (data.yaml, classes.txt, COCO categories) is a one-line error
naming the file and field (`det_read.declared_class`); one in a label file (a KITTI
type, a VOC <name>) excludes its image with reason `unsafe_label`, a problem naming the
file and line.

curation.json records `"task": "detect"` and a `detection` section: the format, the class
names in id order (the source's own order, or that of --classes), box counts and sizes,
every problem counted by reason kind and the first 20,000 listed with their reasons
(`vislab.data.problems`: memory stays bounded however many lines are broken). A class name
declared twice is a one-line error (merged, every later id would shift); names that look
alike are warned about, as class folders are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from vislab.data.boxes import (
    box_class_names,
    box_stats,
    detection_splits,
    empty_boxes,
    frame_mismatch,
    parse_class_list,
    parse_class_map,
    resolve_boxes,
    select_box_classes,
    sizes_from_manifest,
    write_boxes,
)
from vislab.data.det_sources import detection_layout, read_detection_source
from vislab.data.det_types import DONT_CARE, FORMAT_NAMES, MISSING_IMAGE, DetectionSource
from vislab.data.manifest import OK, reason_kind
from vislab.data.sources import Found, scan_folder
from vislab.data.split import SPLIT_NAMES, lookalike_warning
from vislab.errors import VislabError
from vislab.fsguard import folder_name_problem, printable

if TYPE_CHECKING:
    from vislab.data.curate import CurateOptions

# Options of class-folder curation that mean nothing for boxes, and the reverse.
CLASSIFY_ONLY = ("min_per_class", "max_per_class", "top_k", "skip_top", "sample_classes", "val_per_class", "test_per_class")
TABLE_SOURCES = ("photos", "labels", "ratings")
DETECT_ONLY = ("classes", "class_map", "images_dir")
_FLAGS = {"class_map": "--map"}
_SHOWN = 8


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def detection_format(opts: CurateOptions) -> str | None:
    """The detection format to curate the SOURCE as, or None for classification (class
    folders, a labels, ratings or photos CSV). Without --format a source is a detection
    dataset when its layout can be nothing else (`detection_layout`). Options that fit only
    the other kind are refused here, in one line, before any file is read."""
    tables = [n for n in TABLE_SOURCES if getattr(opts, n) is not None]
    if opts.format == "folders" or (opts.format == "auto" and tables):
        fmt = None
    elif opts.format != "auto":
        fmt = opts.format
    else:
        found = [(s, detection_layout(s)) for s in opts.sources]
        detected = [(s, f) for s, f in found if f is not None]
        if detected and len(opts.sources) > 1:
            source, f = detected[0]
            raise VislabError(
                f"source {source} is a {FORMAT_NAMES[f]} detection dataset; curate one detection dataset "
                "at a time (give it as the only SOURCE)"
            )
        fmt = detected[0][1] if detected else None
    if fmt is None:
        wanted = [n for n in DETECT_ONLY if getattr(opts, n) is not None]
        if wanted and all(os.path.exists(s) for s in opts.sources):  # else: curate says which is missing
            raise VislabError(
                f"{_flag(wanted[0])} applies to detection datasets (YOLO, KITTI, COCO, VOC) and this is "
                "curated as class folders; name the dataset's layout with --format yolo|kitti|coco|voc"
            )
        return None
    if tables:
        raise VislabError(
            f"{_flag(tables[0])} applies to classification; a {FORMAT_NAMES[fmt]} dataset's labels are its own "
            "label files: give the dataset folder as the only SOURCE"
        )
    if len(opts.sources) != 1:
        raise VislabError(
            f"--format {fmt}: give exactly one SOURCE, the dataset folder (or a COCO .json file); "
            f"got {len(opts.sources)}"
        )
    for name in CLASSIFY_ONLY:
        if getattr(opts, name) not in (None, 0):
            raise VislabError(
                f"{_flag(name)} applies to classification; a detection dataset keeps classes with --classes "
                "(and merges them with --map) and is split with --split ratios, stratified on the classes "
                "each image holds"
            )
    return fmt


def _known_names(names: list[str], known: set[str], flag: str) -> None:
    for name in names:
        if name not in known:
            shown = ", ".join(printable(c) for c in sorted(known))
            raise VislabError(f"{flag}: the dataset has no class '{printable(name)}' (classes: {shown})")


def _unsafe_classes(source: DetectionSource) -> dict[str, str]:
    """Class names of the source's boxes that could not be a class folder's name (a KITTI
    type or a VOC <name> holding a control character, a newline, '/'), each with why: like
    an unsafe folder label, they never become a class (see `DetectionCuration.gather`)."""
    names = {b.cls for b in source.boxes}
    return {c: why for c in names if (why := folder_name_problem(c)) is not None}


class DetectionCuration:
    """One detection source through `run_curate`: its images become manifest rows
    (`gather`), then, once the rows are decided, its boxes follow them (`finish`)."""

    def __init__(self, opts: CurateOptions, fmt: str) -> None:
        self.format = fmt
        self.root = os.path.abspath(opts.sources[0])
        self.source = read_detection_source(self.root, fmt, opts.images_dir)
        self.classes = parse_class_list(opts.classes) if opts.classes else None
        self.mapping = parse_class_map(opts.class_map) if opts.class_map else {}
        for old, new in self.mapping.items():
            if (problem := folder_name_problem(new)) is not None:
                raise VislabError(f"--map {printable(old)}={printable(new)}: the new class name {problem}; use a plain name")
        # A misspelt name fails now, before the images are checked.
        known = set(self.source.classes) | {b.cls for b in self.source.boxes}
        _known_names(list(self.mapping), known, "--map")
        if self.classes is not None:
            _known_names(self.classes, {self.mapping.get(c, c) for c in known} | {DONT_CARE}, "--classes")
        self.boxes = empty_boxes()
        self.names: list[str] = []
        self._record: dict[str, Any] = {}

    def gather(self, out_dir: Path) -> tuple[dict[str, Found], Counter[str]]:
        """The images (label "": a detection image has no single class) and what the folder
        scan skipped (hidden entries, vislab outputs, non-UTF-8 names), as `run_curate` takes them."""
        if not self.source.images:
            missing = self.source.problems.counts[MISSING_IMAGE]
            hint = (
                f"; {missing} named image(s) are missing, e.g. {printable(self.source.problems.first[MISSING_IMAGE]['file'])} "
                "(pass --images-dir FOLDER when they live elsewhere)"
                if missing
                else "; check the path"
            )
            raise VislabError(f"{self.root}: no image found for this {FORMAT_NAMES[self.format]} dataset{hint}")
        from vislab.data.curate import UNSAFE_LABEL

        unsafe = _unsafe_classes(self.source)
        excluded = set()
        for b in self.source.boxes:
            if b.cls in unsafe:
                excluded.add(b.image)
                self.source.problem(
                    b.file, b.line, f"{UNSAFE_LABEL}: class name '{printable(b.cls)}' {unsafe[b.cls]}; "
                    "rename it in this file (its image is excluded until then)",
                )
        found = {p: Found(p, "", UNSAFE_LABEL if p in excluded else "") for p in self.source.images}
        skipped = scan_folder(self.root, skip=[out_dir])[1] if os.path.isdir(self.root) else Counter()
        return found, skipped

    def frame_problems(self, df: pd.DataFrame) -> pd.Series:
        """Per row, why its image is excluded before dedupe ("" when it is not): a COCO or VOC
        annotation that records a size neither the stored nor the displayed image has
        (`frame_mismatch`): its boxes would be used in the wrong place."""
        sizes = sizes_from_manifest(df[df["status"] == OK])
        recorded = self.source.recorded_sizes
        why = {p: m for p, size in sizes.items() if (m := frame_mismatch(recorded.get(p), size)) is not None}
        return df["path"].map(lambda p: why.get(p, "")).astype(str)

    def answers(self, df: pd.DataFrame) -> pd.Series:
        """What dedupe compares copies by, per row: "" for an image without boxes (a copy of
        a labelled one is its duplicate, never its replacement), else its boxes (class, ignore
        flag, corners as fractions of the displayed image to 1%, so a resized copy with the
        same boxes matches) summed up as 'N box(es) of CLASSES #digest'."""
        sizes = sizes_from_manifest(df[df["status"] == OK])
        source = dataclasses.replace(self.source, boxes=[b for b in self.source.boxes if b.image in sizes])
        boxes = resolve_boxes(source, sizes).boxes
        out = {}
        for path, g in boxes.groupby("path", sort=False):
            w, h = sizes[path].width, sizes[path].height
            corners = g[["x1", "x2", "y1", "y2"]].to_numpy() / [w, w, h, h]
            rows = sorted(
                (c, bool(i), *(round(float(v), 2) for v in xy)) for c, i, xy in zip(g["class"], g["ignore"], corners)
            )
            digest = hashlib.sha256(repr(rows).encode("utf-8")).hexdigest()[:8]
            out[path] = f"{len(rows)} box(es) of {', '.join(sorted(set(g['class'])))} #{digest}"
        return df["path"].map(lambda p: out.get(p, "")).astype(str)

    def finish(self, df: pd.DataFrame, ratios: tuple[float, float, float] | None, seed: int) -> list[str]:
        """Boxes of the rows that ended `ok`, classes merged and selected, and the splits
        written into `df`; returns warnings (a class or a split left without boxes)."""
        ok = df["status"] == OK
        ok_paths = set(df.loc[ok, "path"])
        reason_of = dict(zip(df["path"], df["reason"]))
        dropped = Counter(
            reason_kind(reason_of.get(b.image, "")) for b in self.source.boxes if b.image not in ok_paths
        )
        kept = dataclasses.replace(self.source, boxes=[b for b in self.source.boxes if b.image in ok_paths])
        resolved = resolve_boxes(kept, sizes_from_manifest(df[ok]))
        present = set(resolved.boxes["class"])
        mapping = {k: v for k, v in self.mapping.items() if k in present}
        after = {mapping.get(c, c) for c in present}
        wanted = None if self.classes is None else [c for c in self.classes if c in after]
        warnings = [
            f"--classes: no box of '{c}' is left (its images are not usable)"
            for c in self.classes or []
            if c not in after and c != DONT_CARE
        ]
        neighbours = _kitti_neighbours() if self.format == "kitti" else {}
        self.boxes, unselected = select_box_classes(resolved.boxes, wanted, mapping, neighbours)
        near = {n for c in wanted or () for n in neighbours.get(c, ()) if n not in wanted}
        self.names = self._class_names()
        images = df.loc[ok, ["path", "group"]]
        if ratios is not None:
            split = detection_splits(images, self.boxes, ratios, seed)
            df.loc[ok, "split"] = df.loc[ok, "path"].map(split).to_numpy()
        stats = box_stats(self.boxes, df.loc[ok, ["path", "split"]])
        warnings += _box_warnings(stats)
        alike = lookalike_warning(self.names, _SHOWN)
        if alike:
            warnings.append(alike)
        problems = resolved.record()
        self._record = {
            "format": self.format,
            "source": self.root,
            "classes": self.names,
            **stats,
            "clipped_boxes": problems["clipped_boxes"],
            "boxes_of_unusable_images": dict(sorted(dropped.items())),
            "boxes_of_unselected_classes": unselected,
            "neighbours_kept_as_ignore": dict(sorted(Counter(self.boxes.loc[self.boxes["class"].isin(list(near)), "class"]).items())),
            "problem_counts": problems["problem_counts"],
            "problems": problems["problems"],
            **({"problems_not_listed": problems["problems_not_listed"]} if "problems_not_listed" in problems else {}),
        }
        return warnings

    def _class_names(self) -> list[str]:
        """Class names in id order: --classes as given, else the source's declared order
        (a data.yaml's ids, COCO's categories) merged by --map, then any other class found."""
        if self.classes is not None:
            names = self.classes
        else:
            names = [self.mapping.get(c, c) for c in self.source.classes] + box_class_names(self.boxes)
        return [c for c in dict.fromkeys(names) if c != DONT_CARE and folder_name_problem(c) is None]

    def write(self, out_dir: Path) -> None:
        write_boxes(self.boxes, out_dir)

    def record(self) -> dict[str, Any]:
        """What curation.json adds for a detection dataset."""
        return {"task": "detect", "detection": self._record}


def _kitti_neighbours() -> dict[str, tuple[str, ...]]:
    """KITTI's devkit neighbour classes (Van of Car, Person_sitting of Pedestrian)."""
    from vislab.metrics.detection import KITTI_NEIGHBOURS

    return KITTI_NEIGHBOURS


def _box_warnings(stats: dict[str, Any]) -> list[str]:
    """A dataset without boxes, and splits that miss classes (evaluation there cannot
    measure them), one line per split."""
    if stats["images"] and not stats["boxes"]:
        return [
            f"no boxes left: all {stats['images']:,} usable images are negatives; "
            "check the label files and --classes"
        ]
    out = []
    classes = stats["boxes_per_class"]
    for split in SPLIT_NAMES:
        counts = stats.get("splits", {}).get(split)
        if counts is None:
            continue
        missing = [c for c in classes if not counts["boxes_per_class"].get(c)]
        if missing:
            shown = ", ".join(f"'{c}'" for c in missing[:_SHOWN]) + (" ..." if len(missing) > _SHOWN else "")
            out.append(f"{split} has no box of {len(missing)} class(es): {shown}")
    return out
