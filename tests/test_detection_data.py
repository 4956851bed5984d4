"""Detection data: YOLO, KITTI, COCO and VOC readers on hand-written label files (broken
ones included), the boxes table (frames, EXIF, clipping), class selection, splits, stats,
boxes.csv, and the YOLO/COCO writers read back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vislab.data.boxes import (
    BOXES_NAME,
    box_stats,
    detection_splits,
    image_targets,
    parse_class_map,
    probe_sizes,
    read_boxes,
    resolve_boxes,
    select_box_classes,
    sizes_from_manifest,
    write_boxes,
)
from vislab.data.det_sources import detect_format, parse_xml, read_detection_source
from vislab.data.det_writers import write_coco, write_yolo
from vislab.data.io import load_image
from vislab.data.manifest import write_manifest
from vislab.errors import VislabError
from vislab.testing.images import ORIENTATION_TAG, write_image

W, H = 64, 48
KITTI_TAIL = "1.5 1.6 3.9 1.0 1.5 10.0 -1.5"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def resolved(root: Path, fmt: str = "auto"):
    src = read_detection_source(root, fmt)
    return src, resolve_boxes(src, probe_sizes(src.images))


def reasons(res) -> dict[tuple[str, int | None], str]:
    return {(os.path.basename(p["file"]), p["line"]): p["reason"].split(":")[0] for p in res.problems}


def rows(res) -> list[tuple]:
    t = res.boxes
    return [
        (os.path.basename(p), c, round(a, 3), round(b, 3), round(x, 3), round(y, 3), bool(i))
        for p, c, a, b, x, y, i in zip(t["path"], t["class"], t["x1"], t["y1"], t["x2"], t["y2"], t["ignore"])
    ]


# ---------------------------------------------------------------- YOLO


@pytest.fixture()
def yolo(tmp_path) -> Path:
    root = tmp_path / "yolo"
    for name in ("a", "b", "neg"):
        write_image(root / "images" / f"{name}.png", seed=len(name), size=(W, H))
    write(root / "data.yaml", "path: .\ntrain: images\nnames:\n  0: cat\n  1: dog\n")
    write(
        root / "labels" / "a.txt",
        "0 0.5 0.5 0.25 0.5\n"  # 24 12 40 36
        "1 0.95 0.5 0.3 0.2\n"  # past the right edge by 6.4 px: clipped, counted
        "\n"
        "0 0.5 0.5 0 0.2\n"  # no width: degenerate
        "0 0.5 0.5 0.25\n"  # 4 fields
        "0 0.5 abc 0.25 0.5\n"
        "0 nan 0.5 0.25 0.5\n"
        "0 0.5 0.5 inf 0.5\n"
        "5 0.5 0.5 0.1 0.1\n"  # no class 5
        "1.5 0.5 0.5 0.1 0.1\n"
        "1 0.1 0.1 0.3 0.1 0.2 0.4\n"  # a triangle: boxed by its extent
        "1 1.5 1.5 0.2 0.2\n",  # wholly outside: values over 1, which YOLO's are not
    )
    write(root / "labels" / "b.txt", "1 0.5 0.5 1.0 1.0\n")
    write(root / "labels" / "orphan.txt", "0 0.5 0.5 0.1 0.1\n")
    return root


def test_yolo_reader_boxes_and_every_problem(yolo):
    src, res = resolved(yolo)
    assert src.format == "yolo" and src.classes == ["cat", "dog"]
    assert [os.path.basename(p) for p in src.images] == ["a.png", "b.png", "neg.png"]  # the negative is kept
    assert rows(res) == [
        ("a.png", "cat", 24.0, 12.0, 40.0, 36.0, False),
        ("a.png", "dog", 51.2, 19.2, 64.0, 28.8, False),
        ("a.png", "dog", 6.4, 4.8, 19.2, 19.2, False),
        ("b.png", "dog", 0.0, 0.0, 64.0, 48.0, False),
    ]
    assert res.clipped == 1
    assert reasons(res) == {
        ("a.txt", 4): "degenerate_box",
        ("a.txt", 5): "malformed",
        ("a.txt", 6): "malformed",
        ("a.txt", 7): "malformed",
        ("a.txt", 8): "malformed",
        ("a.txt", 9): "unknown_class",
        ("a.txt", 10): "malformed",
        ("a.txt", 12): "not_normalized",
        ("orphan.txt", None): "label_without_image",
    }
    record = res.record()
    assert record["problem_counts"] == {
        "degenerate_box": 1,
        "label_without_image": 1,
        "malformed": 5,
        "not_normalized": 1,
        "unknown_class": 1,
    }
    json.dumps(record)


def test_yolo_sixth_field_is_a_confidence_read_past(tmp_path):
    """'class cx cy w h score' (vislab predict --out, Ultralytics save_conf) is a box; a
    6th field that is no confidence from 0 to 1 is malformed, and so is an 8-field line."""
    root = tmp_path / "yolo"
    write_image(root / "images" / "a.png", size=(W, H))
    write(root / "classes.txt", "cat\n")
    write(root / "labels" / "a.txt", "0 0.5 0.5 0.25 0.5 0.87\n0 0.5 0.5 0.25 0.5 1.7\n0 0.5 0.5 0.25 0.5 abc\n0 0.5 0.5 0.25 0.5 0.9 0.1 0.2\n")
    _, res = resolved(root, "yolo")
    assert rows(res) == [("a.png", "cat", 24.0, 12.0, 40.0, 36.0, False)]
    assert [(p["line"], p["reason"]) for p in res.problems] == [
        (2, "malformed: 6th field '1.7' is not a confidence from 0 to 1; a YOLO line is 'class cx cy w h [confidence]'"),
        (3, "malformed: 'abc' is not a finite number"),
        (4, "malformed: 8 fields; a YOLO line is 'class cx cy w h' (or 'class cx cy w h confidence', or a polygon 'class x y x y ...')"),
    ]


def test_yolo_names_list_classes_txt_and_broken_yaml(tmp_path, yolo):
    write(yolo / "data.yaml", "names: [kitten, puppy]\n")
    assert read_detection_source(yolo).classes == ["kitten", "puppy"]
    os.remove(yolo / "data.yaml")
    write(yolo / "classes.txt", "owl\nhawk\n")
    assert read_detection_source(yolo, "yolo").classes == ["owl", "hawk"]
    os.remove(yolo / "classes.txt")
    with pytest.raises(VislabError, match="no data.yaml"):
        read_detection_source(yolo, "yolo")
    write(yolo / "data.yaml", "path: .\nnames:\n  0: cat\n\t1: dog\n")
    with pytest.raises(VislabError, match=r"data\.yaml:4: not valid YAML"):
        read_detection_source(yolo, "yolo")


def test_yolo_roboflow_and_darknet_layouts(tmp_path):
    """Labels are found by Ultralytics' rule (last images/ -> labels/), so split folders
    with their own images/ and labels/ work, and so do labels beside their images."""
    robo = tmp_path / "robo"
    write(robo / "data.yaml", "train: ../train/images\nval: ../valid/images\nnames: [cat]\n")
    write(robo / "README.dataset.txt", "exported\n")
    for split, seed in (("train", 1), ("valid", 2)):
        write_image(robo / split / "images" / "a.png", seed=seed, size=(W, H))
        write(robo / split / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    write(robo / "valid" / "labels" / "gone.txt", "0 0.5 0.5 0.5 0.5\n")
    src, res = resolved(robo)
    assert [os.path.relpath(p, robo) for p in res.boxes["path"]] == [
        "train/images/a.png",
        "valid/images/a.png",
    ]
    assert reasons(res) == {("gone.txt", None): "label_without_image"}  # the README is no label file
    darknet = tmp_path / "darknet"
    write_image(darknet / "obj" / "a.jpg", size=(W, H))
    write(darknet / "obj" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    write(darknet / "classes.txt", "cat\n")
    src, res = resolved(darknet, "yolo")
    assert rows(res) == [("a.jpg", "cat", 16.0, 12.0, 48.0, 36.0, False)] and not res.problems


@pytest.mark.timeout(60)
def test_pipes_are_reported_never_read(yolo):
    """A label file or an image that is a named pipe would block a reader forever."""
    os.remove(yolo / "labels" / "b.txt")
    os.mkfifo(yolo / "labels" / "b.txt")
    os.mkfifo(yolo / "images" / "pipe.png")
    write(yolo / "labels" / "pipe.txt", "0 0.5 0.5 0.1 0.1\n")
    src, res = resolved(yolo, "yolo")
    assert str(yolo / "images" / "pipe.png") in src.images  # curation quarantines it later
    assert reasons(res)[("b.txt", None)] == "unreadable_label_file"
    assert reasons(res)[("pipe.png", None)] == "image_not_usable"


# ---------------------------------------------------------------- KITTI


def test_kitti_reader_dontcare_truncation_and_problems(tmp_path):
    root = tmp_path / "kitti" / "training"
    write_image(root / "image_2" / "000000.png", size=(W, H))
    write_image(root / "image_2" / "000001.png", seed=1, size=(W, H))
    write(
        root / "label_2" / "000000.txt",
        f"Car 0.00 0 -1.5 10.0 5.0 30.0 25.0 {KITTI_TAIL}\n"
        f"Pedestrian 0.30 1 0.2 50.0 10.0 70.0 40.0 {KITTI_TAIL}\n"  # 6 px past the edge
        "DontCare -1 -1 -10 0.0 0.0 8.0 8.0 -1 -1 -1 -1000 -1000 -1000 -10\n"
        "Car 0.0 0 0 1 2 3\n"
        f"Car 0.0 0 0 abc 5 30 25 {KITTI_TAIL}\n"
        f"Van 0.0 0 0 20 20 20 30 {KITTI_TAIL}\n",
    )
    write(root / "label_2" / "000009.txt", f"Car 0 0 0 1 1 5 5 {KITTI_TAIL}\n")
    src, res = resolved(tmp_path / "kitti")
    assert src.format == "kitti" and src.classes == ["Car", "Pedestrian", "Van"]
    assert rows(res) == [
        ("000000.png", "Car", 10.0, 5.0, 30.0, 25.0, False),
        ("000000.png", "Pedestrian", 50.0, 10.0, 64.0, 40.0, False),
        ("000000.png", "DontCare", 0.0, 0.0, 8.0, 8.0, True),
    ]
    assert res.boxes["truncated"].tolist()[:2] == [0.0, 0.3] and np.isnan(res.boxes["truncated"][2])
    assert res.boxes["occluded"].tolist()[:2] == [0, 1] and pd.isna(res.boxes["occluded"][2])
    assert res.clipped == 1
    assert reasons(res) == {
        ("000000.txt", 4): "malformed",
        ("000000.txt", 5): "malformed",
        ("000000.txt", 6): "degenerate_box",
        ("000009.txt", None): "label_without_image",
    }


def test_format_detection(tmp_path, yolo):
    kitti_tiny = tmp_path / "kitti-tiny"
    write_image(kitti_tiny / "images" / "000000.jpeg", size=(W, H))
    write(kitti_tiny / "labels" / "000000.txt", f"Car 0.00 0 -1.5 10.0 5.0 30.0 25.0 {KITTI_TAIL}\n")
    assert detect_format(yolo) == "yolo"
    assert detect_format(kitti_tiny) == "kitti"  # images/ + labels/ holding KITTI lines
    assert read_detection_source(kitti_tiny).boxes[0].cls == "Car"
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    assert detect_format(tmp_path / "VOCdevkit") == "voc"
    with pytest.raises(VislabError, match="cannot tell the detection format"):
        detect_format(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages")
    with pytest.raises(VislabError, match="--format 'darknet' is not one of"):
        read_detection_source(yolo, "darknet")


# ---------------------------------------------------------------- COCO


def test_coco_reader_crowd_missing_images_and_broken_entries(tmp_path):
    root = tmp_path / "coco"
    write_image(root / "train" / "a.png", size=(W, H))
    write_image(root / "train" / "b.png", seed=1, size=(W, H))
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png"},
            {"id": 3, "file_name": "missing.png"},
            {"id": 4},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]},
            {"id": 4, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 1, "x", 5]},
            {"id": 6, "image_id": 2, "category_id": 1, "bbox": [1, 1, 0, 5]},
            {"id": 7, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 8, "image_id": 2, "category_id": 1, "bbox": [50, 30, 20, 20]},  # 37% outside: clipped
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    write(root / "annotations" / "instances_train.json", json.dumps(data, indent=1))
    src, res = resolved(root)
    assert src.format == "coco" and src.classes == ["cat", "dog"]
    assert [os.path.basename(p) for p in src.images] == ["a.png", "b.png"]
    assert rows(res) == [
        ("a.png", "cat", 10.0, 5.0, 30.0, 25.0, False),
        ("a.png", "dog", 0.0, 0.0, 64.0, 48.0, True),
        ("b.png", "cat", 50.0, 30.0, 64.0, 48.0, False),
    ]
    assert res.clipped == 1
    kinds = sorted(p["reason"].split(":")[0] for p in res.problems)
    assert kinds == [
        "degenerate_box",
        "malformed",
        "malformed",
        "missing_image",
        "unknown_class",
        "unknown_image",
    ]
    assert any("missing.png" in p["file"] for p in res.problems)

    write(root / "annotations" / "instances_train.json", '{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(VislabError, match=r"instances_train\.json:2: not valid JSON"):
        read_detection_source(root)
    write(root / "annotations" / "instances_train.json", '{"images": []}')
    with pytest.raises(VislabError, match="not a COCO detection file"):
        read_detection_source(root)


def test_coco_hostile_ids_numbers_names_and_flags_are_problems_not_tracebacks(tmp_path):
    root = tmp_path / "coco"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        write_image(root / "images" / name, seed=i, size=(W, H))
    write_image(tmp_path / "private" / "secret.png", seed=9, size=(W, H))
    data = {
        "images": [
            {"id": 1, "file_name": "a.png"},
            {"id": 1, "file_name": "b.png"},  # a repeated id keeps its first entry
            {"id": [2], "file_name": "b.png"},  # unhashable ids
            {"id": 3, "file_name": "../../private/secret.png"},  # outside the dataset
            {"id": 4, "file_name": str(tmp_path / "private" / "secret.png")},
            {"id": 5, "file_name": "c.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 20], "iscrowd": "0"},
            {"id": 2, "image_id": [1], "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 3, "image_id": 1, "category_id": {"a": 1}, "bbox": [1, 1, 5, 5]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [int("9" * 400), 1, 5, 5]},
            {"id": 5, "image_id": 5, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": "true"},
            {"id": 6, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]},
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }
    json_path = write(root / "annotations" / "instances_x.json", json.dumps(data))
    src, res = resolved(root)
    assert [os.path.basename(p) for p in src.images] == ["a.png", "c.png"]
    assert rows(res) == [
        ("a.png", "cat", 10.0, 5.0, 30.0, 25.0, False),  # iscrowd "0" is not a crowd
        ("c.png", "cat", 1.0, 1.0, 6.0, 6.0, True),
    ]
    kinds = sorted(p["reason"].split(":")[0] for p in res.problems)
    assert kinds == ["malformed"] * 2 + ["malformed"] + ["outside_dataset"] * 2 + ["unknown_class", "unknown_image"]
    assert all("secret" not in p for p in src.images)

    data["categories"].append({"id": 1, "name": "dog"})
    write(json_path, json.dumps(data))
    with pytest.raises(VislabError, match=r"categories\[1\] repeats id 1 \(also 'cat'\)"):
        read_detection_source(root)
    write(json_path, '{"images": [], "annotations": [], "categories": [], "n": ' + "1" * 5000 + "}")
    with pytest.raises(VislabError, match="instances_x.json: not readable JSON"):
        read_detection_source(root)
    write(json_path, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(VislabError, match="instances_x.json: not readable JSON"):
        read_detection_source(root)


def test_yolo_names_skip_a_broken_yaml_that_is_not_the_dataset_file(tmp_path, yolo):
    os.remove(yolo / "data.yaml")
    write(yolo / "classes.txt", "owl\nhawk\n")
    write(yolo / "aaa.yaml", "names: [zzz]\n")  # an unrelated YAML does not outrank classes.txt
    write(yolo / "hyp.yaml", "lr0: [0.01\n")
    assert read_detection_source(yolo, "yolo").classes == ["owl", "hawk"]
    os.remove(yolo / "classes.txt")
    assert read_detection_source(yolo, "yolo").classes == ["zzz"]  # coco8.yaml-style names still found


# ---------------------------------------------------------------- VOC


def voc_xml(filename: str, objects: str, size: tuple[int, int] = (W, H), head: str = "") -> str:
    return (
        f'<?xml version="1.0"?>\n{head}<annotation>\n  <filename>{filename}</filename>\n'
        f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>\n"
        f"{objects}</annotation>\n"
    )


def voc_object(name: str, box: tuple, difficult: int = 0, truncated: int = 0) -> str:
    corners = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    flags = f"<truncated>{truncated}</truncated><difficult>{difficult}</difficult>"
    return f"  <object>\n    <name>{name}</name>{flags}\n    <bndbox>{corners}</bndbox>\n  </object>\n"


def test_voc_reader_difficult_one_based_and_unsafe_xml(tmp_path):
    root = tmp_path / "VOC2007"
    for name in ("a", "b", "c"):
        write_image(root / "JPEGImages" / f"{name}.png", seed=ord(name), size=(W, H))
    write(
        root / "Annotations" / "a.xml",
        voc_xml(
            "a.png",
            voc_object("dog", (11, 6, 30, 25))
            + voc_object("cat", (1, 1, 10, 10), difficult=1, truncated=1)
            + "  <object><name>cat</name></object>\n"
            + voc_object("", (1, 1, 5, 5)),
        ),
    )
    bomb = '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n'
    write(root / "Annotations" / "b.xml", voc_xml("&lol2;", voc_object("dog", (1, 1, 5, 5)), head=bomb))
    write(root / "Annotations" / "c.xml", voc_xml("c.png", "<object><name>dog</name>"))
    write(root / "Annotations" / "ghost.xml", voc_xml("ghost.png", voc_object("dog", (1, 1, 5, 5))))
    write(root / "Annotations" / "sjis.xml", '<?xml version="1.0" encoding="shift_jis"?><annotation/>')
    write(root / "Annotations" / "made_up.xml", '<?xml version="1.0" encoding="bogus"?><annotation/>')
    src, res = resolved(tmp_path)
    assert src.format == "voc" and src.classes == ["cat", "dog"]
    assert rows(res) == [
        ("a.png", "dog", 10.0, 5.0, 30.0, 25.0, False),  # 1-based xmin 11 is x 10
        ("a.png", "cat", 0.0, 0.0, 10.0, 10.0, True),
    ]
    assert res.boxes["truncated"].tolist() == [0.0, 1.0]
    assert reasons(res) == {
        ("a.xml", 13): "malformed",  # the <object> without a box, by its line
        ("a.xml", 14): "malformed",  # the <object> without a name
        ("b.xml", None): "unsafe_xml",
        ("c.xml", 5): "unreadable_label_file",  # not well formed: </annotation> closes nothing open
        ("ghost.xml", None): "label_without_image",
        ("sjis.xml", None): "unreadable_label_file",  # an encoding expat cannot read
        ("made_up.xml", None): "unreadable_label_file",
    }


def test_parse_xml_refuses_entities_and_external_references():
    with pytest.raises(ValueError, match="DOCTYPE"):
        parse_xml(b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>')
    with pytest.raises(ValueError, match="DOCTYPE"):
        parse_xml(b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://example.com/a.dtd"><a/>')
    root, lines = parse_xml(b"<a>\n <b>1</b>\n</a>")
    assert root.findtext("b") == "1" and lines[root.find("b")] == 2


# ---------------------------------------------------------------- EXIF orientation


STORED_BOX = (10, 5, 25, 15)


def rect_image(path: Path, orientation: int) -> Path:
    """60x40 black picture with a white rectangle at STORED_BOX, stored unrotated with an
    EXIF orientation tag."""
    arr = np.zeros((40, 60, 3), np.uint8)
    x1, y1, x2, y2 = STORED_BOX
    arr[y1:y2, x1:x2] = 255
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "PNG", exif=exif)
    return path


def white_box(path: Path) -> tuple[float, ...]:
    arr = np.asarray(load_image(path))[..., 0]
    ys, xs = np.nonzero(arr > 128)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def test_pixel_boxes_follow_exif_orientation_onto_the_displayed_image(tmp_path):
    """A KITTI box on the stored pixels lands on the same pixels once EXIF is applied, for
    all eight orientations (checked against the decoded, oriented picture)."""
    root = tmp_path / "kitti"
    for o in range(1, 9):
        rect_image(root / "image_2" / f"{o:06d}.png", o)
        write(root / "label_2" / f"{o:06d}.txt", f"Car 0 0 0 {' '.join(map(str, STORED_BOX))} {KITTI_TAIL}\n")
    _, res = resolved(root)
    assert len(res.boxes) == 8 and not res.problems
    for path, *box in res.boxes[["path", "x1", "y1", "x2", "y2"]].itertuples(index=False):
        assert tuple(box) == white_box(Path(path)), path


def test_voc_recording_the_displayed_size_means_displayed_frame(tmp_path):
    root = tmp_path / "voc"
    rect_image(root / "JPEGImages" / "r.png", 6)  # stored 60x40, displayed 40x60
    displayed = white_box(root / "JPEGImages" / "r.png")
    x1, y1, x2, y2 = (int(v) for v in displayed)
    write(
        root / "Annotations" / "r.xml",
        voc_xml("r.png", voc_object("cat", (x1 + 1, y1 + 1, x2, y2)), size=(40, 60)),
    )
    _, res = resolved(root)
    assert rows(res) == [("r.png", "cat", *displayed, False)]
    write(
        root / "Annotations" / "r.xml",
        voc_xml("r.png", voc_object("cat", (x1 + 1, y1 + 1, x2, y2)), size=(50, 50)),
    )
    _, res = resolved(root)
    assert reasons(res) == {("r.png", None): "size_mismatch"}


# ---------------------------------------------------------------- boxes.csv, classes, stats


def table(entries: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [e[0] for e in entries],
            "class": [e[1] for e in entries],
            **{c: [float(e[2 + i]) for e in entries] for i, c in enumerate(("x1", "y1", "x2", "y2"))},
            "ignore": [bool(e[6]) if len(e) > 6 else False for e in entries],
            "truncated": [e[7] if len(e) > 7 else np.nan for e in entries],
            "occluded": pd.array([e[8] if len(e) > 8 else None for e in entries], dtype="Int64"),
        }
    )


def test_boxes_csv_round_trip_is_byte_stable(tmp_path):
    boxes = table(
        [
            ("/d/b.png", "Car", 1, 2, 3.25, 4, 0, 0.3, 1),
            ("/d/a.png", "DontCare", 0, 0, 8, 8, 1),
            ("/d/a.png", "Car", 1, 1, 2, 2),
        ]
    )
    path = write_boxes(boxes, tmp_path)
    first = path.read_bytes()
    back = read_boxes(tmp_path)
    assert back["path"].tolist() == ["/d/a.png", "/d/a.png", "/d/b.png"]  # by path, source order kept
    assert back["class"].tolist() == ["DontCare", "Car", "Car"]
    assert back["ignore"].tolist() == [True, False, False]
    assert back["x2"].tolist() == [8.0, 2.0, 3.25] and back["truncated"].tolist()[2] == 0.3
    write_boxes(back, tmp_path)
    assert path.read_bytes() == first
    path.write_text(first.decode().replace("3.250", "lots"))
    with pytest.raises(VislabError, match=r"boxes\.csv:4: column 'x2' holds 'lots'"):
        read_boxes(tmp_path)


def test_select_and_merge_classes():
    boxes = table(
        [
            ("a", "Car", 0, 0, 1, 1),
            ("a", "Van", 0, 0, 1, 1),
            ("a", "Tram", 0, 0, 1, 1),
            ("b", "DontCare", 0, 0, 1, 1, 1),
            ("b", "Pedestrian", 0, 0, 1, 1),
        ]
    )
    kept, dropped = select_box_classes(boxes, ["Car", "Pedestrian"], parse_class_map("Van=Car"))
    assert kept["class"].tolist() == ["Car", "Car", "DontCare", "Pedestrian"]
    assert dropped == {"Tram": 1}
    with pytest.raises(VislabError, match="no box has class 'Cyclist'"):
        select_box_classes(boxes, ["Car", "Cyclist"])
    with pytest.raises(VislabError, match="no box has class 'Bus'"):
        select_box_classes(boxes, None, {"Bus": "Car"})
    with pytest.raises(VislabError, match="OLD=NEW"):
        parse_class_map("Van:Car")


def test_box_stats_by_hand():
    boxes = table(
        [
            ("a", "cat", 0, 0, 10, 10),
            ("a", "cat", 0, 0, 40, 40),
            ("b", "dog", 0, 0, 100, 100),
            ("b", "dog", 0, 0, 5, 5, 1),
        ]
    )
    images = pd.DataFrame({"path": ["a", "b", "c"], "split": ["train", "train", "val"]})
    s = box_stats(boxes, images)
    assert (s["images"], s["images_without_boxes"], s["boxes"]) == (3, 1, 3)
    assert s["boxes_per_class"] == {"cat": 2, "dog": 1} and s["ignore_regions"] == {"dog": 1}
    assert s["size_buckets"] == {"small": 1, "medium": 1, "large": 1}  # 100, 1600, 10000 px
    assert s["width"]["p50"] == 40.0 and s["area"]["p50"] == 1600.0
    assert s["boxes_per_image"] == {"mean": 1.0, "max": 2}
    assert s["splits"] == {
        "train": {"images": 2, "boxes_per_class": {"cat": 2, "dog": 1}},
        "val": {"images": 1, "boxes_per_class": {}},
    }
    targets = image_targets(boxes, ["b", "c"])
    assert targets[0]["labels"] == ["dog", "dog"] and targets[0]["ignore"].tolist() == [False, True]
    assert targets[1]["boxes"].shape == (0, 4)


# ---------------------------------------------------------------- splits


def split_case(n: int = 120, seed: int = 3) -> tuple[list[str], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    paths = [f"/d/{i:03d}.png" for i in range(n)]
    entries = []
    for p in paths:
        for name, chance in (("common", 0.6), ("mid", 0.25), ("rare", 0.08)):
            if rng.random() < chance:
                entries.append((p, name, 0, 0, 5, 5))
    return paths, table(entries)


def test_detection_splits_are_stratified_deterministic_and_keep_groups():
    paths, boxes = split_case()
    ratios = (0.5, 0.25, 0.25)
    split = detection_splits(paths, boxes, ratios, seed=0)
    assert split.index.tolist() == paths
    present = boxes.drop_duplicates(["path", "class"])
    for name, group in list(present.groupby("class")) + [(None, None)]:
        members = set(group["path"]) if name else set(paths) - set(present["path"])
        for s, r in zip(("train", "val", "test"), ratios):
            got = int((split[list(members)] == s).sum())
            assert abs(got - len(members) * r) <= 1.0, (name, s, got, len(members))
    assert split.equals(detection_splits(paths, boxes, ratios, seed=0))
    assert not split.equals(detection_splits(paths, boxes, ratios, seed=1))
    images = pd.DataFrame({"path": paths, "group": ["g1" if i % 30 == 0 else "" for i in range(len(paths))]})
    grouped = detection_splits(images, boxes, (0.8, 0.2, 0.0), seed=0)
    assert grouped[[p for i, p in enumerate(paths) if i % 30 == 0]].nunique() == 1
    assert "test" not in set(grouped)


# ---------------------------------------------------------------- writers


def curated(tmp_path: Path, yolo_root: Path) -> Path:
    """A dataset folder (manifest + boxes.csv) from a YOLO source, one image EXIF-rotated."""
    src = read_detection_source(yolo_root)
    sizes = probe_sizes(src.images)
    res = resolve_boxes(src, sizes)
    dataset = tmp_path / "dataset"
    manifest = pd.DataFrame(
        {
            "path": src.images,
            "label": "",
            "split": ["train" if i % 2 == 0 else "val" for i in range(len(src.images))],
            "status": "ok",
            "width": [sizes[p].width for p in src.images],
            "height": [sizes[p].height for p in src.images],
            "orientation": [str(sizes[p].orientation) for p in src.images],
        }
    )
    write_manifest(manifest, dataset)
    write_boxes(res.boxes, dataset)
    return dataset


def canonical(boxes: pd.DataFrame) -> list[tuple]:
    return sorted(
        (os.path.basename(p), c, round(a, 2), round(b, 2), round(x, 2), round(y, 2), bool(i))
        for p, c, a, b, x, y, i in boxes[["path", "class", "x1", "y1", "x2", "y2", "ignore"]].itertuples(
            index=False
        )
    )


def test_yolo_to_coco_to_boxes_round_trip_with_exif(tmp_path):
    root = tmp_path / "src"
    write(root / "data.yaml", "names: [cat, dog]\n")
    write_image(root / "images" / "a.png", size=(W, H))
    write_image(root / "images" / "rot.jpg", seed=2, size=(W, H), orientation=6)  # displayed 48x64
    write_image(root / "images" / "neg.png", seed=3, size=(W, H))
    write(root / "labels" / "a.txt", "0 0.5 0.5 0.25 0.5\n1 0.2 0.3 0.1 0.2\n")
    write(root / "labels" / "rot.txt", "1 0.25 0.125 0.5 0.25\n0 0.9 0.9 0.1 0.1\n")
    dataset = curated(tmp_path, root)
    original = read_boxes(dataset)
    assert probe_sizes([str(root / "images" / "rot.jpg")])[str(root / "images" / "rot.jpg")].orientation == 6

    out = tmp_path / "coco"
    summary = write_coco(dataset, out)
    assert "annotations/instances_train.json" in summary["files"]
    data = json.loads((out / "annotations" / "instances_train.json").read_text())
    rot = next(i for i in data["images"] if i["file_name"] == "rot.jpg")
    assert (rot["width"], rot["height"]) == (W, H)  # the stored size: COCO boxes are on stored pixels
    src = read_detection_source(out)
    back = resolve_boxes(src, probe_sizes(src.images))
    assert not back.problems
    assert canonical(back.boxes) == canonical(original)
    assert sorted(os.path.basename(p) for p in src.images) == ["a.png", "neg.png", "rot.jpg"]

    out_yolo = tmp_path / "yolo_out"
    write_yolo(dataset, out_yolo)
    src = read_detection_source(out_yolo)
    assert src.classes == ["cat", "dog"]
    assert canonical(resolve_boxes(src, probe_sizes(src.images)).boxes) == canonical(original)
    assert (out_yolo / "labels" / "val" / "neg.txt").read_text() == ""  # a negative: an empty label file


def test_writers_refuse_a_used_folder_and_copy_with_a_callback(tmp_path, yolo):
    dataset = curated(tmp_path, yolo)
    used = tmp_path / "used"
    write(used / "keep.txt", "mine")
    with pytest.raises(VislabError, match="not empty and was not made by vislab materialize"):
        write_coco(dataset, used)
    assert (used / "keep.txt").read_text() == "mine"
    copied = []
    out = tmp_path / "copies"
    write_yolo(
        dataset, out, place=lambda s, t: copied.append((s, t)) or Path(t).write_bytes(Path(s).read_bytes())
    )
    assert len(copied) == 3 and all(Path(t).is_file() and not Path(t).is_symlink() for _, t in copied)
    assert all(out in Path(t).parents for _, t in copied)


def test_sizes_from_manifest_reads_orientation():
    df = pd.DataFrame(
        {
            "path": ["a", "b", "c"],
            "width": [48, 10, None],
            "height": [64, 20, None],
            "orientation": ["6", "", ""],
        }
    )
    sizes = sizes_from_manifest(df)
    assert sizes["a"].stored == (64, 48) and sizes["b"].orientation == 1 and "c" not in sizes


def test_boxes_name_constant_is_the_file_written(tmp_path):
    assert write_boxes(table([("a", "cat", 0, 0, 1, 1)]), tmp_path).name == BOXES_NAME


def test_kitti_labels_without_their_image_folder_say_which_folder(tmp_path):
    root = tmp_path / "kitti"
    write(root / "training" / "label_2" / "000000.txt", f"Car 0.00 0 -1.5 10.0 5.0 30.0 25.0 {KITTI_TAIL}\n")
    with pytest.raises(VislabError, match=r"KITTI labels in .*label_2 but no image folder .*training/image_2"):
        read_detection_source(root, "kitti")


def test_letterbox_maps_boxes_back_exactly_on_a_very_wide_image(tmp_path):
    """3000 x 200 at 416: the paste is 416 x 28 px (not 27.7), so y maps back by 28/200, not
    by the width's scale: a box at y 100-150 comes back at 100-150 (it came back at 101-151.4),
    through the datamodule's meta and serve's letterbox alike."""
    import torch

    from vislab.data.det_datamodule import DetectionDataset, letterbox, unletterbox

    path = tmp_path / "wide.png"
    Image.new("RGB", (3000, 200), (80, 90, 100)).save(path)
    box = np.array([[0, 1000.0, 100.0, 1300.0, 150.0, 0]])
    arr, moved, meta = letterbox(load_image(path), (416, 416), box)
    assert arr.shape == (416, 416, 3) and meta[0] == pytest.approx(416 / 3000) and meta[1] == pytest.approx(28 / 200)
    back = unletterbox(torch.as_tensor(moved[:, 1:5]), *meta)
    assert back[0].tolist() == pytest.approx([1000.0, 100.0, 1300.0, 150.0], abs=1e-4)
    _, dataset_meta = DetectionDataset([str(path)], [np.zeros((0, 6))], (416, 416), predict=True).load(0)
    assert dataset_meta.tolist() == pytest.approx([0.0, *meta])
