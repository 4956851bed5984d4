"""Labels that do not fit their image: a COCO/VOC size that is not the file's (resized since
labelling), a VOC <filename> that names another image than the file's own name, and a
YOLO/COCO export put inside the source it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from vislab import curate
from vislab.data.det_writers import write_detection
from vislab.testing.detection import kitti_line, write_label_dataset, write_text
from vislab.testing.images import write_image

from test_curate_detect import box_rows, statuses
from test_detection_data import voc_object, voc_xml


def _reasons(dataset: Path) -> list[tuple[str, str]]:
    m = pd.read_csv(dataset / "manifest.csv", dtype=str, keep_default_na=False)
    return list(zip(m["path"], m["reason"]))


def test_a_coco_image_resized_since_labelling_is_excluded_not_given_wrong_boxes(tmp_path):
    root = tmp_path / "coco"
    for i in range(3):
        write_image(root / "images" / f"im{i}.png", seed=i, size=(64, 48))
    recorded = [(64, 48), (128, 96), (48, 64)]  # as stored; twice the size; the EXIF-less file turned
    json.dump(
        {
            "images": [{"id": i, "file_name": f"im{i}.png", "width": w, "height": h} for i, (w, h) in enumerate(recorded)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20]} for i in range(3)],
            "categories": [{"id": 1, "name": "thing"}],
        },
        (root / "annotations.json").open("w"),
    )
    out = tmp_path / "ds"
    record = curate(root / "annotations.json", out=out, workers=1)
    got = statuses(out)
    assert got["im0.png"] == ("ok", "")
    assert got["im1.png"] == got["im2.png"] == ("excluded", "size_mismatch")
    assert [r[0] for r in box_rows(out)] == ["im0.png"]
    assert record["detection"]["boxes_of_unusable_images"] == {"size_mismatch": 2}
    assert record["reasons"] == {"size_mismatch": 2}
    reason = {Path(p).name: r for p, r in _reasons(out)}["im1.png"]
    assert "records a 128x96 image, the file is 64x48" in reason


def test_a_stale_voc_filename_is_a_problem_and_the_boxes_stay_with_the_files_own_image(tmp_path):
    """g.xml (renamed with g.jpg) still says <filename>a.png</filename>: its box went to a.png
    and g.png was a negative, silently."""
    root = tmp_path / "voc"
    write_image(root / "JPEGImages" / "a.png", seed=1, size=(64, 48))
    write_image(root / "JPEGImages" / "g.png", seed=2, size=(64, 48))
    write_text(root / "Annotations" / "a.xml", voc_xml("a.png", voc_object("cat", (5, 5, 20, 20)), size=(64, 48)))
    write_text(root / "Annotations" / "g.xml", voc_xml("a.png", voc_object("dog", (30, 10, 50, 40)), size=(64, 48)))
    out = tmp_path / "ds"
    record = curate(root, out=out, workers=1)
    assert [(r[0], r[1]) for r in box_rows(out)] == [("a.png", "cat"), ("g.png", "dog")]
    problems = record["detection"]["problems"]
    assert [(Path(p["file"]).name, p["reason"].split(":")[0]) for p in problems] == [("g.xml", "filename_mismatch")]
    assert "'a.png'" in problems[0]["reason"] and "g.png" in problems[0]["reason"]


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_an_export_inside_the_source_is_skipped_by_curate_and_replaced_by_a_rerun(tmp_path, fmt):
    labels = {f"{i:06d}": kitti_line("Car", (5, 5, 30, 30)) for i in range(6)}
    root = write_label_dataset(tmp_path / "kt", labels)
    first = tmp_path / "ds1"
    curate(root, out=first, workers=1)
    export = root / "images" / "export"
    write_detection(first, export, fmt, "copy")
    assert (export / ".vislab-materialized.json").is_file()
    again = curate(root, out=tmp_path / "ds2", workers=1)
    assert again["status"]["ok"] == 6
    assert sorted(statuses(tmp_path / "ds2")) == sorted(f"{s}.png" for s in labels)
    assert again["vislab_folders_skipped"] == 1
    write_detection(first, export, fmt, "copy")  # an earlier export is replaced, not refused
    mine = export / "notes.txt"
    mine.write_text("mine")
    write_detection(first, export, fmt, "copy")
    assert mine.read_text() == "mine"
