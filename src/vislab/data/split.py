"""Class selection and splits over the usable rows of a manifest table.

Randomness is seeded per class from (seed, class name), so adding or removing one class
never reshuffles the others. Splits move whole near-duplicate groups (the `group` column):
two copies of one photo never end up on both sides of a train/test boundary.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd

from vislab.data.manifest import EXCLUDED, OK
from vislab.errors import VislabError

SPLIT_NAMES = ("train", "val", "test")
CLASS_TOO_SMALL = "class_too_small"
CLASS_NOT_SELECTED = "class_not_selected"
OVER_CLASS_LIMIT = "over_class_limit"


def class_rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on the seed and the class name."""
    key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, key])


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'0.75,0.15,0.10' -> (train, val, test); two numbers mean no test split."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"'{text}' is not numbers; write train,val,test ratios e.g. 0.75,0.15,0.10"
        ) from None
    if len(values) == 2:
        values.append(0.0)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"'{text}' holds a value that is not a finite number; e.g. 0.75,0.15,0.10")
    if len(values) != 3 or any(v < 0 for v in values):
        raise ValueError(f"'{text}' needs two or three non-negative ratios, e.g. 0.75,0.15,0.10")
    total = sum(values)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"ratios {text} sum to {total:g}, not 1; e.g. 0.75,0.15,0.10")
    return values[0], values[1], values[2]


def _exclude(df: pd.DataFrame, mask: pd.Series, reason: str) -> None:
    df.loc[mask, "status"] = EXCLUDED
    df.loc[mask, "reason"] = reason


def _ranked_classes(df: pd.DataFrame) -> list[tuple[str, int]]:
    """Usable classes by count, most frequent first, ties by name."""
    counts = Counter(df.loc[df["status"] == OK, "label"])
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def select_classes(
    df: pd.DataFrame,
    *,
    min_per_class: int | None = None,
    max_per_class: int | None = None,
    top_k: int | None = None,
    skip_top: int = 0,
    sample_classes: int | None = None,
    seed: int = 0,
) -> None:
    """Exclude classes and images in place, in this order: too small, skip the N most
    frequent, keep the top K, sample K at random, cap images per class."""
    if min_per_class:
        small = [c for c, n in _ranked_classes(df) if n < min_per_class]
        _exclude(df, (df["status"] == OK) & df["label"].isin(small), CLASS_TOO_SMALL)
    ranked = [c for c, _ in _ranked_classes(df)]
    keep = ranked[skip_top:]
    if top_k is not None:
        keep = keep[:top_k]
    if sample_classes is not None and sample_classes < len(keep):
        picked = np.random.default_rng(seed).choice(len(keep), size=sample_classes, replace=False)
        keep = [keep[i] for i in sorted(picked)]
    _exclude(df, (df["status"] == OK) & ~df["label"].isin(keep), CLASS_NOT_SELECTED)
    if max_per_class:
        for name in sorted(keep):
            idx = df.index[(df["status"] == OK) & (df["label"] == name)]
            if len(idx) <= max_per_class:
                continue
            ordered = df.loc[idx].sort_values("path", kind="mergesort").index.to_numpy()
            drop = class_rng(seed, name).permutation(len(ordered))[max_per_class:]
            _exclude(df, df.index.isin(ordered[drop]), OVER_CLASS_LIMIT)


def class_warnings(df: pd.DataFrame, shown: int = 8) -> list[str]:
    """Warnings about classes a classifier cannot use: a dataset of a single class (training
    refuses it), classes of one usable image (never in both train and test), and classes
    whose names look alike (see `lookalike_labels`). Unlabelled images (label '', photos for
    a self-supervised task) are not a class."""
    counts = _ranked_classes(df[df["label"] != ""])
    if len(counts) == 1:
        name, n = counts[0]
        return [f"the dataset has a single class ('{name}', {n:,} images); a classifier needs at least 2: add images of another class"]
    warnings = []
    lonely = sorted(c for c, n in counts if n == 1)
    if lonely:
        names = ", ".join(f"'{c}'" for c in lonely[:shown]) + (" ..." if len(lonely) > shown else "")
        warnings.append(
            f"{len(lonely)} class(es) have a single usable image, which cannot be in both train and test: {names}; "
            "add images of them, or drop such classes with --min-per-class 2"
        )
    alike = lookalike_warning((c for c, _ in counts), shown)
    return warnings + ([alike] if alike else [])


def lookalike_warning(labels: Iterable[str], shown: int = 8) -> str | None:
    """The warning about class names that look alike (`lookalike_labels`), or None: for
    class folders and detection classes alike."""
    alike = lookalike_labels(labels)
    if not alike:
        return None
    groups = "; ".join(" and ".join(ascii(c) for c in group) for group in alike[:shown])
    return (
        f"{len(alike)} group(s) of class names look alike but are separate classes: {groups}"
        f"{' ...' if len(alike) > shown else ''}; give each class one spelling in the source"
    )


def lookalike_labels(labels: Iterable[str]) -> list[list[str]]:
    """Groups (sorted) of distinct labels that read the same: equal once invisible format
    characters (zero-width spaces, bidi controls) are dropped and compatibility forms folded
    (NFKC: 'café' composed or not, full-width letters). Case is a visible difference."""
    by_key: dict[str, list[str]] = {}
    for label in sorted(set(labels)):
        visible = "".join(ch for ch in label if unicodedata.category(ch) != "Cf")
        by_key.setdefault(unicodedata.normalize("NFKC", visible), []).append(label)
    return sorted(group for group in by_key.values() if len(group) > 1)


def _units(rows: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """(class, index array) of images that must travel together: a near-duplicate group or
    one image, in path order of the first member, whose label is the unit's class."""
    ordered = rows.sort_values("path", kind="mergesort")
    keys = ordered["group"].where(ordered["group"] != "", ordered["path"]).to_numpy()
    units: dict[str, tuple[str, list]] = {}
    for idx, key, label in zip(ordered.index, keys, ordered["label"]):
        if key in units:
            units[key][1].append(idx)
        else:
            units[key] = (label, [idx])
    return [(label, np.array(members)) for label, members in units.values()]


def _largest_remainder(n: int, ratios: tuple[float, float, float]) -> list[int]:
    raw = [n * r for r in ratios]
    counts = [int(np.floor(x + 1e-9)) for x in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _fill(units: list[np.ndarray], targets: list[int]) -> list[int]:
    """Assign shuffled units to splits: test and val take units that fit their target,
    train the rest; a unit larger than any room left goes to the split furthest below target."""
    filled = [0, 0, 0]
    out = []
    for unit in units:
        size = len(unit)
        for s in (2, 1, 0):
            if filled[s] + size <= targets[s]:
                break
        else:
            s = int(np.argmax([t - f for t, f in zip(targets, filled)]))
        filled[s] += size
        out.append(s)
    return out


class Shortfall(NamedTuple):
    """A val or test split of one class that got under half the images asked for, because
    its near-copy groups (which move whole) were too big to fit."""

    label: str
    split: str
    asked: int
    got: int
    images: int
    groups: int
    singles: int


def assign_splits(
    df: pd.DataFrame,
    *,
    ratios: tuple[float, float, float] | None = None,
    val_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
) -> list[Shortfall]:
    """Write train/val/test into the `split` column of usable rows, stratified by class.

    Ratios are applied per class with largest-remainder rounding; per-class counts take
    N images for val and test and leave the rest to train. A group counts toward the class
    of its first member (by path) and moves as a whole, so val/test may fall short of their
    target when the groups left are too big to fit: each val/test that got under half its
    target is returned (`shortfall_warning` words them), since a user never asked for that.
    """
    df["split"] = ""
    short: list[Shortfall] = []
    per_class = val_per_class is not None or test_per_class is not None
    if ratios is None and not per_class:
        return short
    usable = df[df["status"] == OK]
    by_class: dict[str, list[np.ndarray]] = {}
    for label, unit in _units(usable):
        by_class.setdefault(label, []).append(unit)
    nval, ntest = val_per_class or 0, test_per_class or 0
    chosen: list[list[np.ndarray]] = [[], [], []]
    for name in sorted(by_class):
        units = by_class[name]
        n = sum(len(u) for u in units)
        if per_class:
            if n < nval + ntest + 1:
                shown = name or "(unlabelled)"
                raise VislabError(
                    f"class '{shown}' has {n} usable images, too few for --val-per-class {nval} "
                    f"--test-per-class {ntest} plus one for train; lower them or drop small classes "
                    f"with --min-per-class {nval + ntest + 1}"
                )
            targets = [n - nval - ntest, nval, ntest]
        else:
            assert ratios is not None
            targets = _largest_remainder(n, ratios)
        shuffled = [units[i] for i in class_rng(seed, name).permutation(len(units))]
        got = [0, 0, 0]
        for unit, s in zip(shuffled, _fill(shuffled, targets)):
            chosen[s].append(unit)
            got[s] += len(unit)
        short += [
            Shortfall(name, SPLIT_NAMES[s], targets[s], got[s], n, sum(len(u) > 1 for u in units), sum(len(u) == 1 for u in units))
            for s in (1, 2)
            if 2 * got[s] < targets[s]
        ]
    for s, units in enumerate(chosen):
        if units:
            df.loc[np.concatenate(units), "split"] = SPLIT_NAMES[s]
    return short


def shortfall_warning(short: list[Shortfall], deduped: bool, shown: int = 8) -> str | None:
    """One warning for the val/test splits that fell far short (`assign_splits`), naming the
    near-copy groups that caused it and the fix; None when none did."""
    if not short:
        return None
    classes = list(dict.fromkeys(s.label for s in short))
    parts = []
    for label in classes[:shown]:
        mine = [s for s in short if s.label == label]
        splits = ", ".join(f"{s.split} {s.got} of {s.asked}" for s in mine)
        first = mine[0]
        singles = f" and {first.singles:,} single image(s)" if first.singles else ""
        parts.append(f"'{label or '(unlabelled)'}' ({first.images:,} images in {first.groups:,} near-copy group(s){singles}: {splits})")
    more = f" and {len(classes) - shown} more" if len(classes) > shown else ""
    fix = "add distinct photos of them" if deduped else "keep one photo of each near-copy group with --dedupe near, or add distinct photos"
    return (
        f"val/test got far fewer images than asked in {len(classes)} class(es): {'; '.join(parts)}{more}; "
        f"near copies move between splits as one group; {fix}"
    )
