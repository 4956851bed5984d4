"""The boxes table: every box of a detection dataset, in pixels of the image as displayed.

`boxes.csv` sits beside the manifest, one row per box: path, class, x1, y1, x2, y2 (0-based
pixels of the EXIF-oriented image, x2/y2 the far edges), ignore (1 for an ignore region:
KITTI DontCare, COCO crowd, VOC difficult), truncated and occluded (empty where the format
has none). Images are the manifest's rows, so an image without boxes is a negative, never
lost. Rows are sorted by path (source order within an image) with fixed number formats, so
the same inputs give a byte-identical file.

Here: turning a reader's boxes into the table (`resolve_boxes`: frames, EXIF, clipping,
degenerate and repeated boxes), class selection and merging, image-level splits stratified on the classes
present, and box statistics.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vislab.data.csvfile import line_of_row, read_csv_file
from vislab.data.det_types import DONT_CARE, DetectionSource, SourceBox
from vislab.data.io import SWAPS_AXES, oriented_size, probe
from vislab.data.manifest import BOXES_NAME, read_curation, read_manifest, usable
from vislab.data.problems import ProblemLog
from vislab.data.split import SPLIT_NAMES
from vislab.errors import VislabError
from vislab.fsguard import inside, open_regular, write_file

BOX_COLUMNS = ["path", "class", "x1", "y1", "x2", "y2", "ignore", "truncated", "occluded"]
# Boxes past the image edge by at most this many pixels are clipped without being counted:
# rounding, and VOC tools that write 0-based instead of 1-based corners.
CLIP_TOLERANCE = 1.0
# A box (not an ignore region) more than this share of whose area lies outside the image is
# dropped: its sliver inside would be a truth of an object the picture barely shows.
MAX_OUTSIDE = 0.5
COCO_SMALL = 32 * 32
COCO_LARGE = 96 * 96
PERCENTILES = (5, 25, 50, 75, 95)
NO_BOXES = "(no boxes)"
_FLAGS = {"1": True, "0": False, "true": True, "false": False, "True": True, "False": False}

# Reason kinds added here (readers add theirs in det_types).
DEGENERATE = "degenerate_box"
DUPLICATE = "duplicate_box"
NOT_NORMALIZED = "not_normalized"
MOSTLY_OUTSIDE = "mostly_outside"
NOT_USABLE = "image_not_usable"
SIZE_MISMATCH = "size_mismatch"

# EXIF orientation -> where a stored-image point (x, y) lands in the displayed image, for a
# stored image of width w and height h (what PIL's exif_transpose does to the pixels).
_ORIENT = {
    2: lambda x, y, w, h: (w - x, y),
    3: lambda x, y, w, h: (w - x, h - y),
    4: lambda x, y, w, h: (x, h - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (h - y, x),
    7: lambda x, y, w, h: (h - y, w - x),
    8: lambda x, y, w, h: (y, w - x),
}
_INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


@dataclass(frozen=True)
class ImageSize:
    """An image as displayed: width and height after EXIF orientation, and the orientation."""

    width: int
    height: int
    orientation: int = 1

    @property
    def stored(self) -> tuple[int, int]:
        return oriented_size(self.width, self.height, self.orientation)


def sizes_from_manifest(df: pd.DataFrame) -> dict[str, ImageSize]:
    """Displayed sizes of the manifest rows that have one (broken files have none)."""
    w = pd.to_numeric(df["width"], errors="coerce")
    h = pd.to_numeric(df["height"], errors="coerce")
    o = (
        pd.to_numeric(df["orientation"], errors="coerce")
        if "orientation" in df.columns
        else pd.Series(1, index=df.index)
    )
    out = {}
    for path, wi, hi, oi in zip(df["path"], w, h, o.fillna(1)):
        if pd.notna(wi) and pd.notna(hi) and wi > 0 and hi > 0:
            out[path] = ImageSize(int(wi), int(hi), int(oi) if 1 <= oi <= 8 else 1)
    return out


def probe_sizes(paths: Sequence[str]) -> dict[str, ImageSize]:
    """Displayed sizes from image headers, for callers without a manifest; unreadable
    images are left out (their boxes are then reported as `image_not_usable`)."""
    out = {}
    for path in paths:
        try:
            with open_regular(path) as fh:
                info = probe(fh)
        except Exception:  # not a regular file, or Pillow's many exception types
            continue
        out[path] = ImageSize(info.width, info.height, info.orientation)
    return out


def orient_boxes(
    xyxy: np.ndarray, orientation: int, width: float | np.ndarray, height: float | np.ndarray
) -> np.ndarray:
    """Boxes (N, 4) in a stored image of `width` x `height` (numbers, or one per box) moved
    to where EXIF `orientation` displays them."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    move = _ORIENT.get(orientation)
    if move is None:
        return xyxy.copy()
    ax, ay = move(xyxy[:, 0], xyxy[:, 1], width, height)
    bx, by = move(xyxy[:, 2], xyxy[:, 3], width, height)
    return np.stack([np.minimum(ax, bx), np.minimum(ay, by), np.maximum(ax, bx), np.maximum(ay, by)], axis=1)


def unorient_boxes(
    xyxy: np.ndarray, orientation: int, width: float | np.ndarray, height: float | np.ndarray
) -> np.ndarray:
    """The inverse of `orient_boxes`: displayed-image boxes (image `width` x `height` as
    displayed) back to the stored image."""
    return orient_boxes(xyxy, _INVERSE.get(orientation, 1), width, height)


# ---------------------------------------------------------------- the table


@dataclass
class ResolvedBoxes:
    """The boxes table, the problems met on the way (a `ProblemLog`: counted, the first listed) and how many
    boxes were clipped to the image."""

    boxes: pd.DataFrame
    problems: ProblemLog
    clipped: int

    def record(self) -> dict[str, Any]:
        """What curation.json keeps: counts by reason kind, then the problems listed (the
        first `MAX_LISTED_PROBLEMS`) and how many more there were."""
        out = {
            "boxes": int(len(self.boxes)),
            "clipped_boxes": self.clipped,
            "problem_counts": dict(sorted(self.problems.counts.items())),
            "problems": self.problems.listed,
        }
        if self.problems.not_listed:
            out["problems_not_listed"] = self.problems.not_listed
        return out


def empty_boxes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": pd.Series(dtype=object),
            "class": pd.Series(dtype=object),
            **{c: pd.Series(dtype=np.float64) for c in ("x1", "y1", "x2", "y2")},
            "ignore": pd.Series(dtype=bool),
            "truncated": pd.Series(dtype=np.float64),
            "occluded": pd.Series(dtype="Int64"),
        }
    )


def frame_mismatch(recorded: tuple[int, int] | None, size: ImageSize) -> str | None:
    """Why boxes an annotation drew on a `recorded` width x height cannot be used on an image
    of `size`: the recorded size is neither the stored nor the displayed one (the image was
    resized or replaced since it was labelled), so its pixel boxes would land in the wrong
    place. None when the sizes agree or none is recorded. Boxes are never rescaled: a
    resize cannot be told from a different picture, and a crop would move them too."""
    if recorded is None or recorded in (size.stored, (size.width, size.height)):
        return None
    stored = size.stored
    return (
        f"{SIZE_MISMATCH}: the annotation records a {recorded[0]}x{recorded[1]} image, the file is "
        f"{stored[0]}x{stored[1]}: its boxes were drawn on a frame of another size (resized since labelling?) "
        "and are not used; label it anew, or put back the image that was labelled"
    )


def _drawn_on_displayed(
    src: DetectionSource, image: str, size: ImageSize, problems: ProblemLog
) -> bool | None:
    """Whether `image`'s pixel boxes were drawn on the displayed image (True) or the stored
    one (False), judged by the size the annotation records; a size matching neither is
    reported and None returned: those boxes are not used (`frame_mismatch`)."""
    recorded = src.recorded_sizes.get(image)
    mismatch = frame_mismatch(recorded, size)
    if mismatch is not None:
        problems.add(image, None, mismatch)
        return None
    return recorded is not None and recorded != size.stored and size.orientation in SWAPS_AXES


def _repeated(src: DetectionSource, known: np.ndarray, problems: ProblemLog) -> np.ndarray:
    """Which boxes (of images with a size) repeat an earlier box of their image exactly,
    each reported as a `DUPLICATE` naming the line it repeats."""
    first: dict[tuple[Any, ...], SourceBox] = {}
    out = np.zeros(len(src.boxes), dtype=bool)
    for i, b in enumerate(src.boxes):
        if not known[i]:
            continue
        key = (b.image, b.cls, b.ignore, b.x1, b.y1, b.x2, b.y2)
        seen = first.setdefault(key, b)
        if seen is b:
            continue
        out[i] = True
        where = f"line {seen.line}" if seen.line is not None and seen.file == b.file else "an earlier box of this image"
        problems.add(b.file, b.line, f"{DUPLICATE}: {_ref(b)}'{b.cls}' box repeats {where} (same class and coordinates)")
    return out


def _ref(b: SourceBox) -> str:
    """What names a box that has no line, to go after a problem's kind (a COCO annotation id)."""
    return f"{b.ref}: " if b.ref else ""


def _area(xyxy: np.ndarray) -> np.ndarray:
    return np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)


def _not_normalized(cls: str, box: np.ndarray) -> str:
    """Why a YOLO box (normalised x1 y1 x2 y2) with values over 1 is not used."""
    x1, y1, x2, y2 = box.tolist()
    written = " ".join(f"{v:g}" for v in ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
    return (
        f"{NOT_NORMALIZED}: '{cls}' box '{written}' has values over 1 and lies outside the image: they look like "
        "pixels; YOLO wants cx cy w h as fractions (0 to 1) of the image's width and height"
    )


def resolve_boxes(src: DetectionSource, sizes: Mapping[str, ImageSize]) -> ResolvedBoxes:
    """A reader's boxes in pixels of the displayed image, clipped to it.

    YOLO's normalised boxes are scaled by the displayed size; pixel boxes (KITTI, COCO, VOC)
    are moved by the image's EXIF orientation unless the annotation records the displayed
    size (see `_drawn_on_displayed`; a recorded size that is neither drops the image's boxes,
    `frame_mismatch`). Boxes past the edge are clipped (counted when more than
    CLIP_TOLERANCE px off); boxes with no area left, or with more than MAX_OUTSIDE of it
    outside the image (ignore regions excepted), are dropped with a reason (a YOLO box with
    values over 1, as pixels written where fractions belong, says so), as are the
    boxes of images without a size (unreadable, or not in the manifest), reported once per image,
    and a box that repeats an earlier one of its image exactly (class, ignore flag and
    coordinates as written): kept, it would be a second truth that no detection can match.
    """
    problems = src.problems.copy()
    if not src.boxes:
        return ResolvedBoxes(empty_boxes(), problems, 0)
    images = [b.image for b in src.boxes]
    xyxy = np.array([[b.x1, b.y1, b.x2, b.y2] for b in src.boxes], dtype=np.float64)
    sized = np.array([p in sizes for p in images])
    for path, n in Counter(p for p, k in zip(images, sized) if not k).items():
        problems.add(path, None, f"{NOT_USABLE}: {n} box(es) of an image that is unreadable or not in the dataset")
    displayed_frame = {
        p: _drawn_on_displayed(src, p, sizes[p], problems) for p in dict.fromkeys(images) if p in sizes
    }
    known = sized & np.array([displayed_frame.get(p) is not None for p in images])
    repeated = _repeated(src, known, problems)
    dims = np.array(
        [[sizes[p].width, sizes[p].height] if k else [1, 1] for p, k in zip(images, known)], dtype=np.float64
    )
    normalized = np.array([b.normalized for b in src.boxes])
    fractions = xyxy.copy()
    xyxy[normalized] *= np.concatenate([dims, dims], axis=1)[normalized]
    orientation = np.array(
        [sizes[p].orientation if k and not displayed_frame[p] else 1 for p, k in zip(images, known)]
    )
    stored = np.array([sizes[p].stored if k else (1, 1) for p, k in zip(images, known)], dtype=np.float64)
    for o in np.unique(orientation[~normalized & (orientation != 1)]).tolist():
        sel = ~normalized & (orientation == o)
        xyxy[sel] = orient_boxes(xyxy[sel], o, stored[sel, 0], stored[sel, 1])
    limit = np.concatenate([dims, dims], axis=1)
    clipped_xyxy = np.clip(xyxy, 0.0, limit)
    moved = np.abs(clipped_xyxy - xyxy).max(axis=1) > CLIP_TOLERANCE
    area_ok = (clipped_xyxy[:, 2] > clipped_xyxy[:, 0]) & (clipped_xyxy[:, 3] > clipped_xyxy[:, 1])
    inside = _area(clipped_xyxy) / np.maximum(_area(xyxy), np.finfo(np.float64).tiny)
    ignore = np.array([b.ignore for b in src.boxes], dtype=bool)
    outside = known & area_ok & ~repeated & moved & ~ignore & (inside < 1 - MAX_OUTSIDE)
    keep = known & area_ok & ~repeated & ~outside
    for i in np.flatnonzero(known & ~repeated & (~area_ok | outside)):
        b = src.boxes[i]
        if not area_ok[i]:
            reason = f"{DEGENERATE}: {_ref(b)}'{b.cls}' box has no area inside the image"
        else:
            x1, y1, x2, y2 = (f"{v:.1f}" for v in xyxy[i])
            w, h = (int(v) for v in dims[i])
            reason = f"{MOSTLY_OUTSIDE}: {_ref(b)}'{b.cls}' box {x1} {y1} {x2} {y2} is {1 - inside[i]:.0%} outside the {w}x{h} image"
        f = fractions[i]
        if b.normalized and (f > 1).any() and (not area_ok[i] or f[2] - f[0] > 1 or f[3] - f[1] > 1):
            reason = _not_normalized(b.cls, f)
        problems.add(b.file, b.line, reason)
    kept = [b for b, k in zip(src.boxes, keep) if k]
    table = pd.DataFrame(
        {
            "path": [b.image for b in kept],
            "class": [b.cls for b in kept],
            "x1": clipped_xyxy[keep, 0],
            "y1": clipped_xyxy[keep, 1],
            "x2": clipped_xyxy[keep, 2],
            "y2": clipped_xyxy[keep, 3],
            "ignore": np.array([b.ignore for b in kept], dtype=bool),
            "truncated": np.array([b.truncated for b in kept], dtype=np.float64),
            "occluded": pd.array(
                [None if math.isnan(b.occluded) else int(b.occluded) for b in kept], dtype="Int64"
            ),
        }
    )
    table = table.sort_values("path", kind="mergesort").reset_index(drop=True)
    return ResolvedBoxes(table, problems, int((moved & keep).sum()))


# ---------------------------------------------------------------- boxes.csv


def write_boxes(boxes: pd.DataFrame, dataset_dir: str | Path) -> Path:
    """Write `boxes.csv` in canonical order and number format; returns its path."""
    out = boxes[BOX_COLUMNS].sort_values("path", kind="mergesort").reset_index(drop=True)
    text = pd.DataFrame(
        {
            "path": out["path"],
            "class": out["class"],
            **{c: [f"{v:.3f}" for v in out[c]] for c in ("x1", "y1", "x2", "y2")},
            "ignore": ["1" if v else "0" for v in out["ignore"]],
            "truncated": ["" if pd.isna(v) else f"{v:g}" for v in out["truncated"]],
            "occluded": ["" if pd.isna(v) else str(int(v)) for v in out["occluded"]],
        }
    )
    path = inside(dataset_dir, BOXES_NAME)
    write_file(path, text.to_csv(index=False, lineterminator="\n"))  # a temporary name of its own, never shared
    return path


def read_boxes(dataset_dir: str | Path) -> pd.DataFrame:
    """Read `boxes.csv`, checking its columns and values (it may be edited by hand)."""
    path = Path(dataset_dir) / BOXES_NAME
    if not os.path.lexists(path):
        raise VislabError(f"{path}: no boxes table here; curate the dataset as a detection dataset first")
    df = read_csv_file(path, "boxes")
    missing = [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        raise VislabError(f"{path}: missing column(s) {', '.join(missing)}; re-run `vislab curate`")

    def refuse(bad: pd.Series, col: str, allowed: str) -> None:
        line = line_of_row(path, int(np.flatnonzero(bad.to_numpy())[0]))
        raise VislabError(
            f"{path}:{line}: column '{col}' holds '{df[col][bad].iloc[0]}', not {allowed}; "
            "fix the row or re-run `vislab curate`"
        )

    for col in ("x1", "y1", "x2", "y2", "truncated", "occluded"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & ((df[col] != "") | (col in ("x1", "y1", "x2", "y2")))
        bad |= values.notna() & ~np.isfinite(values.astype(np.float64))
        if col == "occluded":
            bad |= values.notna() & (values % 1 != 0)
        if bad.any():
            refuse(bad, col, "a whole number" if col == "occluded" else "a finite number")
        df[col] = values.astype("Int64") if col == "occluded" else values.astype(np.float64)
    flat = (df["x2"] <= df["x1"]) | (df["y2"] <= df["y1"])
    if flat.any():
        refuse(flat, "x2", "a box with area (x2 > x1 and y2 > y1)")
    for col in ("path", "class"):
        empty = df[col].str.strip() == ""
        if empty.any():
            refuse(empty, col, "a name")
    bad = ~df["ignore"].isin(list(_FLAGS))
    if bad.any():
        refuse(bad, "ignore", "1 or 0")
    df["ignore"] = df["ignore"].map(_FLAGS).astype(bool) | (df["class"] == DONT_CARE)
    return df[BOX_COLUMNS]


# ---------------------------------------------------------------- classes


def parse_class_list(text: str) -> list[str]:
    """'Car,Pedestrian' -> ['Car', 'Pedestrian']."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise VislabError(f"--classes {text!r}: name at least one class, e.g. Car,Pedestrian,Cyclist")
    return names


def parse_class_map(text: str) -> dict[str, str]:
    """'Van=Car,Tram=Car' -> {'Van': 'Car', 'Tram': 'Car'}."""
    mapping = {}
    for item in text.split(","):
        if not item.strip():
            continue
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise VislabError(
                f"--map {item.strip()!r}: write OLD=NEW pairs separated by commas, e.g. Van=Car,Tram=Car"
            )
        mapping[old.strip()] = new.strip()
    return mapping


def box_class_names(boxes: pd.DataFrame) -> list[str]:
    """Sorted classes of the table (DontCare regions are no class); a name's index is its id."""
    return sorted(c for c in boxes["class"].unique() if c != DONT_CARE)


def dataset_box_classes(dataset_dir: str | Path, boxes: pd.DataFrame) -> list[str]:
    """Class names in id order: the list curation.json records (the source's own order, such
    as a data.yaml's ids, or the order of --classes), then any class of the table it lacks
    (a hand-edited boxes.csv), sorted; without a record, the table's sorted classes."""
    detection = read_curation(dataset_dir).get("detection")
    recorded = detection.get("classes") if isinstance(detection, dict) else None
    if not isinstance(recorded, list) or not all(isinstance(c, str) for c in recorded):
        return box_class_names(boxes)
    names = [c for c in dict.fromkeys(recorded) if c != DONT_CARE]
    # a class only of ignore rows (a KITTI Van kept beside Car) is nothing to learn
    return names + [c for c in box_class_names(boxes[~boxes["ignore"]]) if c not in set(names)]


def select_box_classes(
    boxes: pd.DataFrame,
    classes: Sequence[str] | None = None,
    mapping: Mapping[str, str] | None = None,
    neighbours: Mapping[str, Sequence[str]] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Merge classes by `mapping` (Van=Car; mapping to DontCare makes ignore regions), then
    keep only `classes` plus DontCare regions, and the `neighbours` of a selected class
    (KITTI: Van of Car) as ignore rows under their own name, so an evaluation that ignores
    them for that class (KITTI's devkit) still sees them. Returns the kept boxes and the
    number of boxes dropped per class. A name that appears nowhere is a typo and a VislabError."""
    known = set(boxes["class"])
    for old in mapping or {}:
        if old not in known:
            raise VislabError(
                f"--map {old}=...: no box has class '{old}' (classes: {', '.join(sorted(known))})"
            )
    out = boxes.copy()
    if mapping:
        out["class"] = out["class"].map(lambda c: mapping.get(c, c))
        out.loc[out["class"] == DONT_CARE, "ignore"] = True
    if classes is None:
        return out.reset_index(drop=True), {}
    after = set(out["class"])
    unknown = [c for c in classes if c not in after]
    if unknown:
        raise VislabError(f"--classes: no box has class '{unknown[0]}' (classes: {', '.join(sorted(after))})")
    near = {n for c in classes for n in (neighbours or {}).get(c, ()) if n not in classes}
    as_ignore = out["class"].isin(list(near))
    out.loc[as_ignore, "ignore"] = True
    keep = out["class"].isin(list(classes)) | (out["class"] == DONT_CARE) | as_ignore
    dropped = Counter(out.loc[~keep, "class"])
    return out[keep].reset_index(drop=True), dict(sorted(dropped.items()))


# ---------------------------------------------------------------- splits


def _image_table(images: pd.DataFrame | Sequence[str]) -> pd.DataFrame:
    table = images.copy() if isinstance(images, pd.DataFrame) else pd.DataFrame({"path": list(images)})
    if "group" not in table.columns:
        table["group"] = ""
    return table.sort_values("path", kind="mergesort").reset_index(drop=True)


def detection_splits(
    images: pd.DataFrame | Sequence[str],
    boxes: pd.DataFrame,
    ratios: tuple[float, float, float],
    seed: int = 0,
) -> pd.Series:
    """train/val/test per image (a Series indexed by path), stratified on the classes present.

    An image holds several classes, so single-label stratification cannot balance them all.
    This is iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011): take the class
    with the fewest images left, hand each of its images to the split that still wants most
    of that class (then most images overall, then by the seeded generator), and repeat. Rare
    classes are placed first, while every split still has room for them, so each class lands
    in each split close to the ratios; stratifying on each image's rarest class alone would
    balance only those. Images without boxes count as one more class, so negatives spread
    too. A near-duplicate group (the manifest's `group` column) moves as one unit.
    """
    table = _image_table(images)
    wanted = np.asarray(ratios, dtype=np.float64)
    present = boxes[~boxes["ignore"] & boxes["path"].isin(table["path"])]
    classes_of = present.groupby("path")["class"].agg(lambda s: set(s)).to_dict()
    keys = table["group"].where(table["group"] != "", table["path"])
    units: dict[str, list[str]] = {}
    for key, path in zip(keys, table["path"]):
        units.setdefault(key, []).append(path)
    members = list(units.values())
    rng = np.random.default_rng(seed)
    members = [members[i] for i in rng.permutation(len(members))]
    unit_counts = [Counter(c for p in m for c in (classes_of.get(p) or {NO_BOXES})) for m in members]
    totals: Counter[str] = Counter()
    by_class: dict[str, list[int]] = {}
    for u, counts in enumerate(unit_counts):
        totals.update(counts)
        for c in counts:
            by_class.setdefault(c, []).append(u)
    desired = {c: n * wanted for c, n in totals.items()}
    room = len(table) * wanted
    active = np.flatnonzero(wanted > 0)
    left = dict(totals)
    chosen = np.full(len(members), -1)
    while any(left.values()):
        name = min((c for c, n in left.items() if n > 0), key=lambda c: (left[c], c))
        for u in by_class[name]:
            if chosen[u] >= 0:
                continue
            want = desired[name][active]
            best = active[want == want.max()]
            if len(best) > 1:
                best = best[room[best] == room[best].max()]
            s = int(best[0] if len(best) == 1 else rng.choice(best))
            chosen[u] = s
            room[s] -= len(members[u])
            for c, n in unit_counts[u].items():
                desired[c][s] -= n
                left[c] -= n
    split = {p: SPLIT_NAMES[s] for m, s in zip(members, chosen) for p in m}
    return pd.Series([split[p] for p in table["path"]], index=table["path"].to_numpy(), name="split")


# ---------------------------------------------------------------- statistics


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {f"p{q}": round(float(v), 2) for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}


def _buckets(area: np.ndarray) -> dict[str, int]:
    return {
        "small": int((area < COCO_SMALL).sum()),
        "medium": int(((area >= COCO_SMALL) & (area < COCO_LARGE)).sum()),
        "large": int((area >= COCO_LARGE).sum()),
    }


def box_stats(boxes: pd.DataFrame, images: pd.DataFrame | Sequence[str] | None = None) -> dict[str, Any]:
    """Boxes per class, images per class, box sizes (width/height/area percentiles and COCO
    small/medium/large buckets, by box area: < 32^2, < 96^2, larger), images without boxes;
    per split when `images` has a `split` column. Ignore regions are counted apart."""
    table = _image_table(images if images is not None else sorted(set(boxes["path"])))
    rows = boxes[boxes["path"].isin(table["path"])]
    used = rows[~rows["ignore"]]
    w = (used["x2"] - used["x1"]).to_numpy()
    h = (used["y2"] - used["y1"]).to_numpy()
    area = w * h
    per_image = used.groupby("path").size()
    out: dict[str, Any] = {
        "images": int(len(table)),
        "images_without_boxes": int(len(table) - len(per_image)),
        "boxes": int(len(used)),
        "ignore_regions": dict(sorted(Counter(rows.loc[rows["ignore"], "class"]).items())),
        "boxes_per_class": dict(sorted(Counter(used["class"]).items())),
        "images_per_class": {
            c: int(n) for c, n in used.groupby("class")["path"].nunique().sort_index().items()
        },
        "boxes_per_image": {
            "mean": round(float(len(used) / max(len(table), 1)), 3),
            "max": int(per_image.max()) if len(per_image) else 0,
        },
        "width": _percentiles(w),
        "height": _percentiles(h),
        "area": _percentiles(area),
        "size_buckets": _buckets(area),
        "size_buckets_per_class": {
            c: _buckets(area[(used["class"] == c).to_numpy()]) for c in sorted(set(used["class"]))
        },
    }
    if "split" in table.columns:
        split_of = dict(zip(table["path"], table["split"]))
        in_split = used["path"].map(split_of)
        out["splits"] = {
            s: {
                "images": int((table["split"] == s).sum()),
                "boxes_per_class": dict(sorted(Counter(used.loc[in_split == s, "class"]).items())),
            }
            for s in SPLIT_NAMES
            if (table["split"] == s).any()
        }
    return out


def anchor_box_sizes(dataset_dir: str | Path, canvas: tuple[int, int], split: str = "train") -> tuple[np.ndarray, str]:
    """Sizes (w, h) in canvas pixels of the boxes to fit anchors to, each scaled as training's
    letterbox into `canvas` (H, W) scales its image (`letterbox_params`, `pasted_size`; on a
    wide canvas a frame is fitted by its height, not its longer side): boxes that are not
    ignore regions, on usable images of `split`, or on every usable image when the dataset
    has no splits. Returns the sizes and, in words, which images they come from."""
    from vislab.data.det_datamodule import letterbox_params, pasted_size

    rows = usable(read_manifest(dataset_dir))
    boxes = read_boxes(dataset_dir)
    if (rows["split"] != "").any():
        rows = rows[rows["split"] == split]
        if rows.empty:
            raise VislabError(f"{dataset_dir}: no usable image in split '{split}'; choose another --split")
        used = f"{len(rows):,} {split} images"
    else:
        used = f"all {len(rows):,} usable images (the dataset has no splits)"
    sizes = sizes_from_manifest(rows)
    scales = {}
    for path, size in sizes.items():
        nw, nh = pasted_size(size.width, size.height, letterbox_params(size.width, size.height, canvas)[0])
        scales[path] = (nw / size.width, nh / size.height)
    kept = boxes[~boxes["ignore"] & boxes["path"].isin(list(sizes))]
    sx = kept["path"].map(lambda p: scales[p][0]).to_numpy(np.float64)
    sy = kept["path"].map(lambda p: scales[p][1]).to_numpy(np.float64)
    wh = np.stack([(kept["x2"] - kept["x1"]).to_numpy() * sx, (kept["y2"] - kept["y1"]).to_numpy() * sy], axis=1)
    return wh.reshape(-1, 2), used


# ---------------------------------------------------------------- for evaluation


def image_targets(boxes: pd.DataFrame, paths: Sequence[str]) -> list[dict[str, Any]]:
    """Per image (in `paths` order) the ground truth `vislab.metrics.detection` takes:
    boxes (M, 4) xyxy, labels (class names), ignore, truncated, occluded (NaN when unknown)."""
    groups = {p: g for p, g in boxes.groupby("path", sort=False)}
    out = []
    for path in paths:
        g = groups.get(path)
        if g is None:
            out.append(
                {
                    "boxes": np.zeros((0, 4)),
                    "labels": [],
                    "ignore": np.zeros(0, bool),
                    "truncated": np.zeros(0),
                    "occluded": np.zeros(0),
                }
            )
            continue
        out.append(
            {
                "boxes": g[["x1", "y1", "x2", "y2"]].to_numpy(np.float64),
                "labels": g["class"].tolist(),
                "ignore": g["ignore"].to_numpy(bool),
                "truncated": g["truncated"].to_numpy(np.float64),
                "occluded": g["occluded"].astype("Float64").to_numpy(np.float64, na_value=np.nan),
            }
        )
    return out
