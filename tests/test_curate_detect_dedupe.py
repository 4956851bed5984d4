"""Dedupe of a detection dataset compares copies by their boxes: every manifest row has the
label "", so ranking copies by pixels, bytes and path alone kept an unlabelled copy and
dropped the labelled picture with its boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vislab import curate
from vislab.testing.detection import write_label_dataset, write_text, yolo_line
from vislab.testing.images import exact_copy, near_copy

from test_curate_detect import box_rows, statuses

BOX = yolo_line(0, (0.3, 0.3, 0.7, 0.7))
OTHER = yolo_line(0, (0.1, 0.1, 0.3, 0.3))


def dataset(tmp_path: Path) -> Path:
    return write_label_dataset(tmp_path / "yd", {"photo1": BOX, "photo2": OTHER, "photo3": None}, names=["car"])


@pytest.mark.parametrize("mode", ["exact", "near"])
def test_an_unlabelled_copy_never_replaces_the_labelled_picture(tmp_path, mode):
    """'backup_photo1' sorts first (and, for near, has 1.5x the pixels): it used to be kept
    and photo1 with its box dropped, the picture training as a negative."""
    root = dataset(tmp_path)
    if mode == "exact":
        exact_copy(root / "images" / "photo1.png", root / "images" / "backup_photo1.png")
    else:
        near_copy(root / "images" / "photo1.png", root / "images" / "backup_photo1.png", scale=1.5)
    out = tmp_path / "ds"
    curate(root, out=out, dedupe=mode, workers=1)
    assert statuses(out)["photo1.png"] == ("ok", "")
    assert statuses(out)["backup_photo1.png"] == ("excluded", "duplicate_of")
    assert [r[0] for r in box_rows(out)] == ["photo1.png", "photo2.png"]
    record = json.loads((out / "curation.json").read_text())
    assert record["conflicting_label_groups"] == 0


def test_copies_with_different_boxes_are_conflicts_as_labels_are(tmp_path):
    """Byte-identical files with different boxes (one picture, two answers) are all excluded
    as conflicting_labels; a near copy with other boxes stays beside the picture, in one group,
    reported as conflicting, as class-folder copies under two labels are; a copy with the same
    boxes is a plain duplicate."""
    root = dataset(tmp_path)
    exact_copy(root / "images" / "photo2.png", root / "images" / "photo2_again.png")
    write_text(root / "labels" / "photo2_again.txt", BOX)
    near_copy(root / "images" / "photo1.png", root / "images" / "photo1_big.png", scale=1.5)
    write_text(root / "labels" / "photo1_big.txt", OTHER)
    exact_copy(root / "images" / "photo3.png", root / "images" / "photo3_same.png")
    write_text(root / "labels" / "photo3.txt", BOX)
    write_text(root / "labels" / "photo3_same.txt", BOX)
    out = tmp_path / "ds"
    record = curate(root, out=out, dedupe="near", workers=1)
    got = statuses(out)
    assert got["photo2.png"] == got["photo2_again.png"] == ("excluded", "conflicting_labels")
    assert got["photo1.png"] == got["photo1_big.png"] == ("ok", "")
    assert got["photo3.png"] == ("ok", "") and got["photo3_same.png"] == ("excluded", "duplicate_of")
    groups = {tuple(sorted(Path(m["path"]).name for m in g["members"])) for g in record["conflicting_labels"]}
    assert ("photo1.png", "photo1_big.png") in groups
    assert all(len(g["labels"]) == 2 and all("box(es) of car" in lab for lab in g["labels"]) for g in record["conflicting_labels"])
