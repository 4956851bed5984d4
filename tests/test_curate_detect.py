"""`vislab curate` on detection datasets (KITTI, YOLO, COCO, VOC) through the CLI: boxes
follow the image rows, every unusable label is a reason, classes are merged and selected,
splits are stratified and seeded, and boxes.csv is part of the dataset hash."""

from __future__ import annotations

import hashlib
from collections import Counter
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.data.boxes import read_boxes
from vislab.data.manifest import manifest_hash
from vislab.testing.detection import kitti_line, write_label_dataset, write_text, yolo_line
from vislab.testing.images import exact_copy, write_image, write_image_folder, write_truncated

runner = CliRunner()
W, H = 64, 48


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def curate(source: Path, out: Path, *args: object):
    result = invoke("curate", source, "--out", out, "--workers", "1", *args)
    assert result.exit_code == 0, result.output
    return result


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert len(text.splitlines()) == 1 and text.startswith("error:"), text
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in text, text


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def box_rows(dataset: Path) -> list[tuple]:
    b = read_boxes(dataset)
    return [
        (Path(p).name, c, x1, y1, x2, y2, bool(i))
        for p, c, x1, y1, x2, y2, i in b[["path", "class", "x1", "y1", "x2", "y2", "ignore"]].itertuples(index=False)
    ]


def statuses(dataset: Path) -> dict[str, tuple[str, str]]:
    m = pd.read_csv(dataset / "manifest.csv", dtype=str, keep_default_na=False)
    return {Path(p).name: (s, r.split(":")[0]) for p, s, r in zip(m["path"], m["status"], m["reason"])}


@pytest.fixture()
def kitti(tmp_path) -> Path:
    """kitti-tiny's layout (images/ + labels/ of KITTI lines) with one of each trouble."""
    root = write_label_dataset(
        tmp_path / "kitti",
        {
            "000000": kitti_line("Car", (10, 5, 30, 25))
            + kitti_line("Van", (35, 5, 60, 30))
            + "DontCare -1 -1 -10 0 0 8 8 -1 -1 -1 -1000 -1000 -1000 -10\n",
            "000001": kitti_line("Pedestrian", (5, 5, 15, 40), 0.3, 1)
            + kitti_line("Cyclist", (20, 10, 40, 47))
            + kitti_line("Tram", (1, 1, 5, 5)),
            "000002": kitti_line("Car", (50, 10, 70, 30))  # 6 px past the right edge: clipped
            + kitti_line("Car", (20, 20, 20, 30))  # no width
            + "Car 0 0 1 2 3\n",  # 6 fields
            "000003": "",  # a negative with an empty label file
            "000004": None,  # a negative without one
        },
        size=(W, H),
    )
    write_truncated(root / "images" / "000005.jpg", size=(W, H))  # quarantined: its box goes too
    write_text(root / "labels" / "000005.txt", kitti_line("Car", (1, 1, 9, 9)))
    exact_copy(root / "images" / "000000.png", root / "images" / "000006.png")  # an unlabelled duplicate
    write_image(root / "images" / "000007.jpg", seed=77, size=(W, H), orientation=6)  # displayed 48x64
    write_text(root / "labels" / "000007.txt", kitti_line("Car", (10, 5, 25, 15)))  # on the stored pixels
    write_text(root / "labels" / "000099.txt", kitti_line("Car", (1, 1, 9, 9)))  # no such image
    return root


def test_kitti_curation_boxes_follow_the_images_and_every_problem_is_a_reason(tmp_path, kitti):
    before = snapshot(kitti)
    out = tmp_path / "ds"
    args = ("--classes", "Car,Pedestrian,Cyclist", "--map", "Van=Car", "--dedupe", "exact", "--split", "0.5,0.25,0.25")
    result = curate(kitti, out, *args)
    assert snapshot(kitti) == before
    assert "KITTI detection dataset" in result.stdout and "label problems" in result.stdout

    assert statuses(out) == {
        **{f"00000{i}.png": ("ok", "") for i in range(5)},
        "000005.jpg": ("quarantined", "truncated"),
        "000006.png": ("excluded", "duplicate_of"),
        "000007.jpg": ("ok", ""),
    }
    assert box_rows(out) == [
        ("000000.png", "Car", 10, 5, 30, 25, False),
        ("000000.png", "Car", 35, 5, 60, 30, False),  # a Van, merged
        ("000000.png", "DontCare", 0, 0, 8, 8, True),
        ("000001.png", "Pedestrian", 5, 5, 15, 40, False),
        ("000001.png", "Cyclist", 20, 10, 40, 47, False),
        ("000002.png", "Car", 50, 10, 64, 30, False),  # clipped
        ("000007.jpg", "Car", 33, 10, 43, 25, False),  # stored (10,5)-(25,15) turned by EXIF 6
    ]
    boxes = read_boxes(out)
    assert boxes["truncated"][3] == 0.3 and boxes["occluded"][3] == 1

    record = json.loads((out / "curation.json").read_text())
    det = record["detection"]
    assert record["task"] == "detect" and det["format"] == "kitti"
    assert det["classes"] == ["Car", "Pedestrian", "Cyclist"]  # the id order of --classes
    assert det["boxes_per_class"] == {"Car": 4, "Cyclist": 1, "Pedestrian": 1}
    assert det["images"] == 6 and det["images_without_boxes"] == 2
    assert det["clipped_boxes"] == 1
    assert det["boxes_of_unusable_images"] == {"truncated": 1}
    assert det["boxes_of_unselected_classes"] == {"Tram": 1}
    assert det["problem_counts"] == {"degenerate_box": 1, "label_without_image": 1, "malformed": 1}
    where = {(Path(p["file"]).name, p["line"]): p["reason"].split(":")[0] for p in det["problems"]}
    assert where == {
        ("000002.txt", 2): "degenerate_box",
        ("000002.txt", 3): "malformed",
        ("000099.txt", None): "label_without_image",
    }
    m = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(m.loc[m["status"] == "ok", "split"]) <= {"train", "val", "test"}
    assert (m.loc[m["status"] != "ok", "split"] == "").all() and (m["label"] == "").all()
    assert record["manifest_sha256"] == manifest_hash(out)

    first = {n: (out / n).read_bytes() for n in ("manifest.csv", "boxes.csv", "curation.json")}
    curate(kitti, out, *args)  # the same inputs: rewritten byte for byte
    assert {n: (out / n).read_bytes() for n in first} == first


def test_yolo_unknown_ids_malformed_lines_and_the_source_class_order(tmp_path):
    root = write_label_dataset(
        tmp_path / "yolo",
        {
            "a": yolo_line(0, (0.25, 0.25, 0.75, 0.75)) + yolo_line(2, (0.1, 0.1, 0.3, 0.3)),
            "b": yolo_line(1, (0.3, 0.3, 0.7, 0.7)) + "7 0.5 0.5 0.1 0.1\n" + "0 0.5\n" + "x 0.5 0.5 0.1 0.1\n",
            "neg": None,
        },
        names=["zebra", "apple", "mango"],
    )
    out = tmp_path / "ds"
    curate(root, out)
    det = json.loads((out / "curation.json").read_text())["detection"]
    assert det["format"] == "yolo" and det["classes"] == ["zebra", "apple", "mango"]  # data.yaml's ids
    assert det["problem_counts"] == {"malformed": 2, "unknown_class": 1}
    assert {(Path(p["file"]).name, p["line"]) for p in det["problems"]} == {("b.txt", 2), ("b.txt", 3), ("b.txt", 4)}
    assert box_rows(out) == [
        ("a.png", "zebra", 16, 12, 48, 36, False),
        ("a.png", "mango", 6.4, 4.8, 19.2, 14.4, False),
        ("b.png", "apple", 19.2, 14.4, 44.8, 33.6, False),
    ]
    assert statuses(out)["neg.png"] == ("ok", "")


def test_coco_json_file_missing_images_and_images_dir(tmp_path):
    pics = tmp_path / "pics"
    write_image(pics / "a.png", size=(W, H))
    write_image(pics / "b.png", seed=1, size=(W, H))
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png"},
            {"id": 3, "file_name": "gone.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 20]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 9, "bbox": [1, 1, 5, 5]},
            {"id": 4, "image_id": 3, "category_id": 5, "bbox": [1, 1, 5, 5]},
        ],
        "categories": [{"id": 5, "name": "person"}, {"id": 7, "name": "crowd"}],
    }
    ann = write_text(tmp_path / "labels" / "ann.json", json.dumps(data))
    assert_one_line_error(
        invoke("curate", ann, "--out", tmp_path / "none"), "no image found", "--images-dir"
    )
    assert not (tmp_path / "none").exists()
    out = tmp_path / "ds"
    curate(ann, out, "--images-dir", pics)
    assert box_rows(out) == [("a.png", "person", 10, 5, 30, 25, False), ("a.png", "crowd", 0, 0, 64, 48, True)]
    assert set(statuses(out)) == {"a.png", "b.png"}
    det = json.loads((out / "curation.json").read_text())["detection"]
    assert det["format"] == "coco" and det["classes"] == ["person", "crowd"]
    assert det["problem_counts"] == {"missing_image": 1, "unknown_class": 1}
    assert any(p["file"].endswith("gone.png") for p in det["problems"])


def test_voc_difficult_objects_are_ignore_regions(tmp_path):
    root = tmp_path / "VOC2007"
    write_image(root / "JPEGImages" / "x.png", size=(W, H))
    write_image(root / "JPEGImages" / "y.png", seed=1, size=(W, H))

    def obj(name: str, box: tuple[int, ...], difficult: int = 0) -> str:
        corners = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{corners}</bndbox></object>"

    xml = f"<annotation><filename>x.png</filename>{obj('dog', (11, 6, 30, 25))}{obj('cat', (1, 1, 10, 10), 1)}</annotation>"
    write_text(root / "Annotations" / "x.xml", xml)
    out = tmp_path / "ds"
    curate(tmp_path, out)
    assert box_rows(out) == [("x.png", "dog", 10, 5, 30, 25, False), ("x.png", "cat", 0, 0, 10, 10, True)]
    det = json.loads((out / "curation.json").read_text())["detection"]
    assert det["format"] == "voc" and det["images_without_boxes"] == 1 and det["ignore_regions"] == {"cat": 1}


def split_dataset(root: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(5)
    labels: dict[str, str | None] = {}
    for i in range(n):
        lines = [yolo_line(c, (0.1, 0.1, 0.4, 0.5)) for c, p in ((0, 0.6), (1, 0.3)) if rng.random() < p]
        if i % 5 == 0:
            lines.append(yolo_line(2, (0.5, 0.5, 0.9, 0.9)))
        labels[f"img{i:03d}"] = "".join(lines) or None
    return write_label_dataset(root, labels, size=(32, 24), names=["common", "mid", "rare"])


def test_splits_are_stratified_on_the_classes_present_and_seeded(tmp_path):
    root = split_dataset(tmp_path / "src")
    args = ("--split", "0.5,0.25,0.25", "--seed", "3")
    curate(root, tmp_path / "a", *args)
    curate(root, tmp_path / "b", *args)
    for name in ("manifest.csv", "boxes.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    curate(root, tmp_path / "c", "--split", "0.5,0.25,0.25", "--seed", "4")
    assert (tmp_path / "a" / "manifest.csv").read_bytes() != (tmp_path / "c" / "manifest.csv").read_bytes()

    m = pd.read_csv(tmp_path / "a" / "manifest.csv", dtype=str, keep_default_na=False)
    split = dict(zip(m["path"], m["split"]))
    boxes = read_boxes(tmp_path / "a")
    holders = {c: set(g["path"]) for c, g in boxes.groupby("class")}
    holders["(none)"] = set(m["path"]) - set(boxes["path"])
    assert len(holders["rare"]) == 8 and len(holders["(none)"]) > 4
    for name, paths in holders.items():
        for s, ratio in (("train", 0.5), ("val", 0.25), ("test", 0.25)):
            got = sum(split[p] == s for p in paths)
            assert abs(got - len(paths) * ratio) <= 1.0, (name, s, got, len(paths))


def test_boxes_csv_is_part_of_the_dataset_hash(tmp_path):
    root = split_dataset(tmp_path / "src", n=6)
    out = tmp_path / "ds"
    curate(root, out)
    manifest_only = hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest()
    before = manifest_hash(out)
    assert before != manifest_only and before == json.loads((out / "curation.json").read_text())["manifest_sha256"]
    text = (out / "boxes.csv").read_text()

    def cache_folder() -> str:
        result = invoke("prepare", out, "--size", "16", "--workers", "1")
        assert result.exit_code == 0, result.output
        return result.stdout.split("cache/")[-1].strip()

    first_cache = cache_folder()
    (out / "boxes.csv").write_text(text.replace("3.200", "3.300", 1))
    assert manifest_hash(out) != before  # resume, the cache and evaluate all compare this hash
    assert cache_folder() != first_cache
    (out / "boxes.csv").write_text(text)
    assert manifest_hash(out) == before and cache_folder() == first_cache

    (out / "boxes.csv").write_text(text.replace(",0,,", ",yes,,", 1))
    assert_one_line_error(invoke("stats", out), "boxes.csv:2", "column 'ignore'")


def test_classification_curation_is_unchanged_and_overwrite_drops_old_boxes(tmp_path, kitti):
    photos = tmp_path / "photos"
    write_image_folder(photos, {"cat": 3, "dog": 3}, size=(32, 24))
    out = tmp_path / "ds"
    curate(photos, out)
    record = json.loads((out / "curation.json").read_text())
    assert "task" not in record and "detection" not in record
    assert not {"format", "classes", "class_map", "images_dir"} & set(record["options"])
    assert not (out / "boxes.csv").exists()
    assert manifest_hash(out) == hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest()

    curate(kitti, out, "--overwrite")
    assert (out / "boxes.csv").is_file()
    curate(photos, out, "--overwrite")
    assert not (out / "boxes.csv").exists() and "detection" not in json.loads((out / "curation.json").read_text())

    curate(kitti, tmp_path / "as-folders", "--format", "folders")  # the layout read as class folders
    assert not (tmp_path / "as-folders" / "boxes.csv").exists()
    assert set(json.loads((tmp_path / "as-folders" / "curation.json").read_text())["classes"]) == {"images"}


def test_options_that_do_not_fit_are_one_line_errors_before_any_work(tmp_path, kitti):
    photos = tmp_path / "photos"
    write_image_folder(photos, {"cat": 2}, size=(32, 24))
    labels = write_text(tmp_path / "labels.csv", "path,label\nphotos/cat/cat_000.png,cat\n")
    out = tmp_path / "ds"
    cases = [
        ((kitti, "--val-per-class", "1"), ("--val-per-class applies to classification", "--split")),
        ((kitti, "--top-k", "2"), ("--top-k applies to classification",)),
        ((kitti, "--classes", "Car,Bus"), ("--classes", "no class 'Bus'", "Pedestrian")),
        ((kitti, "--map", "Bus=Car"), ("--map", "no class 'Bus'")),
        ((kitti, "--map", "Van"), ("--map", "OLD=NEW")),
        ((kitti, "--classes", " , "), ("--classes", "name at least one class")),
        ((kitti, photos), ("is a KITTI detection dataset", "one detection dataset at a time")),
        ((kitti, "--format", "darknet"), ("--format",)),
        ((photos, "--classes", "cat"), ("--classes applies to detection datasets", "--format")),
        (("--labels", labels, "--format", "yolo"), ("--labels applies to classification",)),
    ]
    for args, needles in cases:
        assert_one_line_error(invoke("curate", *args, "--out", out), *needles)
        assert not out.exists(), args
    write_text(kitti / "data.yaml", "names:\n  0: Car\n\t1: Van\n")
    assert_one_line_error(invoke("curate", kitti, "--out", out, "--format", "yolo"), "data.yaml:3: not valid YAML")


def test_a_label_problem_on_a_file_named_with_a_newline_prints_on_one_line(tmp_path):
    root = tmp_path / "yolo"
    write_image(root / "images" / "a\nb.png", size=(W, H))
    write_text(root / "labels" / "a\nb.txt", yolo_line(7, (0.2, 0.2, 0.6, 0.6)))
    write_text(root / "data.yaml", "names: [cat]\n")
    out = tmp_path / "ds"
    curate(root, out)
    lines = [line for line in invoke("stats", out).stdout.splitlines() if "unknown_class" in line and ":1:" in line]
    assert len(lines) == 1 and "a\\x0ab.txt:1: unknown_class" in lines[0], lines


def test_kitti_class_selection_keeps_the_devkit_neighbours_as_ignore_rows(tmp_path, kitti):
    """--classes Car keeps the Van (which KITTI's devkit ignores for Car) as an ignore row named
    Van, says so, and does not make it a class; the README's --map Van=Car keeps
    Person_sitting for Pedestrian; other formats drop unselected classes as before."""
    from vislab.data.boxes import dataset_box_classes
    from vislab.data.det_writers import write_coco

    write_text(kitti / "labels" / "000001.txt", (kitti / "labels" / "000001.txt").read_text() + kitti_line("Person_sitting", (40, 5, 50, 30)))
    out = tmp_path / "cars"
    result = curate(kitti, out, "--classes", "Car")
    assert "KITTI neighbours of the selected classes kept as ignore regions (the devkit ignores them): Van 1" in result.stdout
    assert [r for r in box_rows(out) if r[0] == "000000.png"] == [
        ("000000.png", "Car", 10, 5, 30, 25, False),
        ("000000.png", "Van", 35, 5, 60, 30, True),
        ("000000.png", "DontCare", 0, 0, 8, 8, True),
    ]
    det = json.loads((out / "curation.json").read_text())["detection"]
    assert det["neighbours_kept_as_ignore"] == {"Van": 1} and det["ignore_regions"] == {"DontCare": 1, "Van": 1}
    assert det["boxes_of_unselected_classes"] == {"Cyclist": 1, "Pedestrian": 1, "Person_sitting": 1, "Tram": 1}
    assert dataset_box_classes(out, read_boxes(out)) == ["Car"]
    write_coco(out, tmp_path / "coco")  # the Van is a crowd-only category there
    categories = json.loads((tmp_path / "coco/annotations/instances_unsplit.json").read_text())["categories"]
    assert [c["name"] for c in categories] == ["Car", "Van", "DontCare"]

    readme = tmp_path / "readme"
    curate(kitti, readme, "--classes", "Car,Pedestrian,Cyclist", "--map", "Van=Car")
    assert [r for r in box_rows(readme) if r[0] == "000001.png"][-1] == ("000001.png", "Person_sitting", 40, 5, 50, 30, True)

    yolo = write_label_dataset(tmp_path / "yolo", {"a": yolo_line(0, (0.1, 0.1, 0.4, 0.4)) + yolo_line(1, (0.5, 0.5, 0.9, 0.9))}, size=(W, H), names=["Car", "Van"])
    curate(yolo, tmp_path / "yolo_ds", "--classes", "Car")
    assert [r[1] for r in box_rows(tmp_path / "yolo_ds")] == ["Car"]


def test_declared_class_names_with_control_characters_are_one_line_errors(tmp_path):
    """A data.yaml, classes.txt or COCO category naming a class with ESC[2J (it cleared the
    terminal that printed it) or a newline (classes.txt got more lines than classes): refused
    before any image is read, naming the file, the field and the fix, shown escaped."""
    labels = {"a": yolo_line(0, (0.2, 0.2, 0.6, 0.6)) + yolo_line(1, (0.5, 0.5, 0.9, 0.9))}
    esc = write_label_dataset(tmp_path / "esc", labels, names=["cat", "\x1b[2Jdog"])
    newline = write_label_dataset(tmp_path / "newline", labels, names=["cat", "dog\nbird"])
    csi = write_label_dataset(tmp_path / "csi", labels, names=["cat", "dog\x9b2J"])  # C1 CSI: ESC [ on some terminals
    txt = write_label_dataset(tmp_path / "txt", labels)
    write_text(txt / "classes.txt", "cat\n\ndog\x07\n")
    write_image(tmp_path / "coco" / "a.png", size=(W, H))
    coco = write_text(tmp_path / "coco" / "ann.json", json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 9, 9]}],
        "categories": [{"id": 3, "name": "per\x1bson"}],
    }))
    for source, needles in (
        (esc, ("data.yaml: names[1] '\\x1b[2Jdog' contains a control character; rename the class there",)),
        (newline, ("data.yaml: names[1] 'dog\\x0abird' contains a control character",)),
        (csi, ("data.yaml: names[1] 'dog\\x9b2J' contains a control character",)),
        (txt, ("classes.txt: line 3 'dog\\x07' contains a control character",)),
        (coco, ("ann.json: categories[0].name 'per\\x1bson' contains a control character",)),
    ):
        out = tmp_path / f"ds-{source.name}"
        result = invoke("curate", source, "--out", out, "--workers", "1")
        assert_one_line_error(result, *needles)
        assert not any(c in result.output for c in "\x1b\x07\x9b")
        assert not out.exists()


def test_box_class_names_with_control_characters_exclude_their_images(tmp_path):
    """A VOC <name> or a KITTI type is per file: like an unsafe class folder, the name never
    becomes a class; its image is excluded (reason unsafe_label) and the problem names the
    file and line, escaped, so stats prints it on one line without clearing the terminal."""
    voc = tmp_path / "voc" / "VOC2007"
    for seed, stem in enumerate(("x", "y")):
        write_image(voc / "JPEGImages" / f"{stem}.png", seed=seed, size=(W, H))

    def obj(name: str) -> str:
        return f"<object><name>{name}</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object>"

    write_text(voc / "Annotations" / "x.xml", f"<annotation><filename>x.png</filename>{obj('dog')}</annotation>")
    write_text(voc / "Annotations" / "y.xml", f"<annotation><filename>y.png</filename>\n{obj('dog')}\n{obj('cat&#10;bird')}</annotation>")
    kitti = write_label_dataset(
        tmp_path / "kitti", {"000000": kitti_line("Car", (10, 5, 30, 25)), "000001": kitti_line("Car\x1b[2J", (10, 5, 30, 25))}
    )
    for source, bad, shown, line in ((voc.parent, "y.png", "cat\\x0abird", ("y.xml", 3)), (kitti, "000001.png", "Car\\x1b[2J", ("000001.txt", 1))):
        out = tmp_path / f"ds-{source.name}"
        curate(source, out)
        assert statuses(out)[bad] == ("excluded", "unsafe_label")
        assert {s for name, s in statuses(out).items() if name != bad} == {("ok", "")}
        det = json.loads((out / "curation.json").read_text())["detection"]
        assert det["classes"] == (["dog"] if source == voc.parent else ["Car"])
        assert {c for _, c, *_ in box_rows(out)} == set(det["classes"])
        problems = [p for p in det["problems"] if p["reason"].startswith("unsafe_label")]
        assert [(Path(p["file"]).name, p["line"]) for p in problems] == [line]
        assert f"class name '{shown}' contains a control character; rename it in this file" in problems[0]["reason"]
        printed = invoke("stats", out).stdout
        assert "\x1b" not in printed and shown in printed


@pytest.mark.parametrize("fmt", ["yolo", "kitti"])
def test_a_box_written_twice_is_kept_once_and_counted(tmp_path, fmt):
    """The same box twice in a label file (same class and coordinates) became two truths:
    a detector finding the object once scored AP50 0.505 for a perfect answer."""
    if fmt == "yolo":
        line, other = yolo_line(0, (0.25, 0.25, 0.5, 0.75)), yolo_line(1, (0.25, 0.25, 0.5, 0.75))
        labels = {"a": line + other + line + yolo_line(0, (0.5, 0.25, 0.75, 0.75)), "b": line}
        root = write_label_dataset(tmp_path / "src", labels, size=(W, H), names=["cat", "dog"])
        names = ("cat", "dog")
    else:
        line, other = kitti_line("Car", (16, 12, 32, 36)), kitti_line("Van", (16, 12, 32, 36))
        labels = {"a": line + other + line + kitti_line("Car", (32, 12, 48, 36)), "b": line}
        root = write_label_dataset(tmp_path / "src", labels, size=(W, H))
        names = ("Car", "Van")
    out = tmp_path / "ds"
    curate(root, out, "--format", fmt)
    assert box_rows(out) == [
        ("a.png", names[0], 16, 12, 32, 36, False),
        ("a.png", names[1], 16, 12, 32, 36, False),  # the same place, another class: kept
        ("a.png", names[0], 32, 12, 48, 36, False),
        ("b.png", names[0], 16, 12, 32, 36, False),  # the same box in another image: kept
    ]
    det = json.loads((out / "curation.json").read_text())["detection"]
    assert det["problem_counts"] == {"duplicate_box": 1}
    assert [(Path(p["file"]).name, p["line"], p["reason"]) for p in det["problems"]] == [
        ("a.txt", 3, f"duplicate_box: '{names[0]}' box repeats line 1 (same class and coordinates)")
    ]


def test_yolo_boxes_written_in_pixels_are_said_to_be_pixels(tmp_path):
    """'0 32 24 16 12' (pixels of a 64x48 image where YOLO wants fractions) was reported only
    as 'degenerate_box: box has no area inside the image', which says nothing of the cause."""
    root = write_label_dataset(tmp_path / "src", {"a": "0 32 24 16 12\n" + yolo_line(0, (0.25, 0.25, 0.5, 0.5))}, size=(W, H), names=["cat"])
    result = curate(root, tmp_path / "ds")
    det = json.loads((tmp_path / "ds/curation.json").read_text())["detection"]
    assert det["problem_counts"] == {"not_normalized": 1}
    reason = ("not_normalized: 'cat' box '32 24 16 12' has values over 1 and lies outside the image: they look like pixels; "
              "YOLO wants cx cy w h as fractions (0 to 1) of the image's width and height")
    assert [(p["line"], p["reason"]) for p in det["problems"]] == [(1, reason)]
    assert "look like pixels" in result.stdout
    assert box_rows(tmp_path / "ds") == [("a.png", "cat", 16, 12, 32, 24, False)]


@pytest.mark.parametrize("fmt", ["yolo", "kitti"])
def test_a_box_mostly_outside_the_image_is_dropped_and_counted(tmp_path, fmt):
    """A box more than half outside the image (YOLO cx 1.02: 70% out) was kept as a sliver
    inside and only counted as clipped. Now it is mostly_outside; a box less than half out is
    clipped, a 1-px overhang of a tiny box is rounding, and an ignore region stays."""
    if fmt == "yolo":
        text = ("0 1.02 0.5 0.1 0.1\n"  # 62.1-68.5 of 64: 70% out
                "0 0.9 0.5 0.4 0.2\n"  # 44.8-70.4: 25% out, clipped
                "0 10 8 20 16\n"  # pixels, partly inside: said to be pixels
                + yolo_line(0, (0.25, 0.25, 0.5, 0.5)))
        root = write_label_dataset(tmp_path / "src", {"a": text}, size=(W, H), names=["Car"])
        kept = [("a.png", "Car", 44.8, 19.2, 64, 28.8, False), ("a.png", "Car", 16, 12, 32, 24, False)]
        problems = [(1, "mostly_outside: 'Car' box 62.1 21.6 68.5 26.4 is 70% outside the 64x48 image"), (3, "not_normalized")]
    else:
        text = (kitti_line("Car", (40, 10, 100, 30))  # 60% out
                + kitti_line("Car", (50, 10, 70, 30))  # 30% out, clipped
                + kitti_line("Car", (-0.8, 10, 0.6, 20))  # 57% of a tiny box, within the 1-px tolerance
                + "DontCare -1 -1 -10 40 10 100 30 -1 -1 -1 -1000 -1000 -1000 -10\n")
        root = write_label_dataset(tmp_path / "src", {"a": text}, size=(W, H))
        kept = [("a.png", "Car", 50, 10, 64, 30, False), ("a.png", "Car", 0, 10, 0.6, 20, False), ("a.png", "DontCare", 40, 10, 64, 30, True)]
        problems = [(1, "mostly_outside: 'Car' box 40.0 10.0 100.0 30.0 is 60% outside the 64x48 image")]
    out = tmp_path / "ds"
    curate(root, out, "--format", fmt)
    assert box_rows(out) == kept
    det = json.loads((out / "curation.json").read_text())["detection"]
    assert det["problem_counts"] == dict(sorted(Counter(r.split(":")[0] for _, r in problems).items()))
    # the not_normalized wording is another test's
    assert [(p["line"], p["reason"] if ":" in want else p["reason"].split(":")[0]) for p, (_, want) in zip(det["problems"], problems)] == problems
    assert det["clipped_boxes"] == (1 if fmt == "yolo" else 2)


def test_a_label_file_of_broken_lines_keeps_a_bounded_number_of_problem_records(tmp_path):
    """Every broken line kept a problem record in memory (MAX_LISTED_PROBLEMS bounded only
    what curation.json listed): a 10 MB label file of 'x' lines took 3.4 GB and 27 s. Now
    every problem is counted and only the first MAX_LISTED_PROBLEMS are kept."""
    from vislab.data.boxes import probe_sizes, resolve_boxes
    from vislab.data.det_sources import read_detection_source

    listed = 20_000  # vislab.data.problems.MAX_LISTED_PROBLEMS
    lines = listed + 5000
    root = write_label_dataset(tmp_path / "yolo", {"a": "x\n" * lines + yolo_line(0, (0.2, 0.2, 0.6, 0.6))}, names=["cat"])
    src = read_detection_source(root)
    res = resolve_boxes(src, probe_sizes(src.images))
    for log in (src.problems, res.problems):
        assert len(log) == lines and len(list(log)) == listed
    out = tmp_path / "ds"
    curate(root, out)
    det = json.loads((out / "curation.json").read_text())["detection"]
    assert det["problem_counts"] == {"malformed": lines}
    assert len(det["problems"]) == listed and det["problems_not_listed"] == 5000
    assert det["problems"][0]["line"] == 1 and det["boxes"] == 1


def _voc(root: Path, objects: str) -> Path:
    write_image(root / "JPEGImages" / "x.png", size=(W, H))
    write_text(root / "Annotations" / "x.xml", f"<annotation><filename>x.png</filename>{objects}</annotation>")
    return root


def test_hostile_file_names_occlusions_and_nesting_are_problems_or_one_line_errors(tmp_path):
    """Tracebacks before: a COCO file_name with a NUL byte or a lone surrogate (ValueError,
    UnicodeEncodeError in os.stat), a class name with a lone surrogate (UnicodeEncodeError),
    an occluded field of 1e30 (OverflowError into Int64), a data.yaml nested 50,000 deep
    (RecursionError)."""
    coco = tmp_path / "coco"
    for i in range(3):
        write_image(coco / f"a{i}.png", seed=i, size=(W, H))
    data = {
        "images": [{"id": 1, "file_name": "a0.png"}, {"id": 2, "file_name": "a1\x00.png"}, {"id": 3, "file_name": "a2\ud800.png"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 2, 10, 10]} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "cat"}],
    }
    ann = write_text(coco / "ann.json", json.dumps(data))
    out = tmp_path / "ds-coco"
    curate(ann, out)
    det = json.loads((out / "curation.json").read_text())["detection"]
    assert det["problem_counts"] == {"malformed": 2} and det["boxes"] == 1
    assert [p["reason"] for p in det["problems"]] == [
        f"malformed: images[{i}] file_name '{shown}' holds a NUL byte or a lone surrogate, which no file name can; fix the entry"
        for i, shown in ((1, "a1\\x00.png"), (2, "a2\\ud800.png"))
    ]

    labels = {"a": kitti_line("Car", (10, 5, 30, 25)) + kitti_line("Car", (1, 1, 9, 9)).replace(" 0 -1.5 ", " 1e30 -1.5 ")}
    kitti = write_label_dataset(tmp_path / "kitti", labels)
    voc = _voc(tmp_path / "voc", "<object><name>cat</name><occluded>1e30</occluded><bndbox><xmin>2</xmin><ymin>2</ymin>"
               "<xmax>9</xmax><ymax>9</ymax></bndbox></object>")
    for source, fmt, line, reason in (
        (kitti, "kitti", 2, "malformed: occluded '1e30' is not 0, 1, 2 or 3 (fully visible .. unknown)"),
        (voc, "voc", 1, "malformed: <object> 'cat' <occluded> '1e30' is not 0 or 1"),
    ):
        out = tmp_path / f"ds-{fmt}"
        curate(source, out, "--format", fmt)
        det = json.loads((out / "curation.json").read_text())["detection"]
        assert [(p["line"], p["reason"]) for p in det["problems"]] == [(line, reason)]

    yolo_labels = {"a": yolo_line(0, (0.2, 0.2, 0.6, 0.6))}
    surrogate = write_label_dataset(tmp_path / "sur", yolo_labels)
    write_text(surrogate / "data.yaml", 'names: ["c\\ud800"]\n')
    deep = write_label_dataset(tmp_path / "deep", yolo_labels)
    write_text(deep / "data.yaml", "names: " + "[" * 50_000 + "]" * 50_000 + "\n")
    coco_cat = tmp_path / "coco-cat"
    write_image(coco_cat / "a.png", size=(W, H))
    coco_cat = write_text(coco_cat / "ann.json", json.dumps({**data, "images": data["images"][:1], "categories": [{"id": 1, "name": "c\ud800"}]}))
    refused_in_one_line(tmp_path, (
        (surrogate, "data.yaml: names[0] 'c\\ud800' is not valid Unicode text (a lone surrogate); rename the class there"),
        (deep, "data.yaml: not readable YAML (nested too deeply); fix the file"),
        (coco_cat, "ann.json: categories[0].name 'c\\ud800' is not valid Unicode text"),
    ))


def refused_in_one_line(tmp_path, cases) -> None:
    """Each (source, needle): curate refuses it in one line holding needle and writes no dataset."""
    for source, needle in cases:
        out = tmp_path / f"ds-{source.parent.name}-{source.name}"
        assert_one_line_error(invoke("curate", source, "--out", out, "--workers", "1"), needle)
        assert not out.exists()


def test_a_class_name_declared_twice_is_a_one_line_error(tmp_path):
    """`names: [cat, cat, dog]` was merged to ['cat', 'dog'] without a word: every box of
    id 2 (dog) became class 1 in the curated ids. Two COCO categories named alike, too."""
    yolo = write_label_dataset(tmp_path / "yolo", {"a": yolo_line(2, (0.2, 0.2, 0.6, 0.6))}, names=["cat", "cat", "dog"])
    txt = write_label_dataset(tmp_path / "txt", {"a": yolo_line(0, (0.2, 0.2, 0.6, 0.6))})
    write_text(txt / "classes.txt", "cat\ndog\n\ncat\n")
    coco = tmp_path / "coco"
    write_image(coco / "a.png", size=(W, H))
    coco = write_text(coco / "ann.json", json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 9, 9]}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "cat"}],
    }))
    refused_in_one_line(tmp_path, (
        (yolo, "data.yaml: names[1] 'cat' repeats names[0]; give each class one entry"),
        (txt, "classes.txt: line 4 'cat' repeats line 1"),
        (coco, "ann.json: categories[1].name 'cat' repeats categories[0].name"),
    ))


def test_detection_class_names_that_look_alike_are_warned_and_coco_problems_name_the_annotation(tmp_path):
    """Class folders that look alike ('cat' and 'cat' + a zero-width space) were warned
    about, detection classes not; a COCO box problem did not say which annotation; a COCO
    width of `true` was reported as 'annotation says TruexTrue'."""
    coco = tmp_path / "coco"
    write_image(coco / "a.png", size=(W, H))
    coco = write_text(coco / "ann.json", json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": True, "height": True}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 9, 9]},
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [30, 30, 0, 9]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "ca\u200bt"}],
    }))
    out = tmp_path / "ds"
    result = curate(coco, out)
    assert "1 group(s) of class names look alike but are separate classes: 'cat' and 'ca\\u200bt'" in result.output
    det = json.loads((out / "curation.json").read_text())["detection"]
    assert [p["reason"] for p in det["problems"]] == [
        "malformed: images[0] width true, height true: not whole numbers of pixels above 0; the size is not used",
        "degenerate_box: annotation id 7: 'cat' box has no area inside the image",
    ]
