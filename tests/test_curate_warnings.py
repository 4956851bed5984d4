"""Curate says loudly when a step leaves nothing (or empties a class), and names the groups
where the same picture carries two labels: which copy was kept and why."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from vislab.cli import app
from vislab.testing.images import near_copy, write_image, write_image_folder, write_sixteen_bit, write_unlabelled_folder

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_a_filter_that_leaves_nothing_warns_and_fails_with_strict(tmp_path):
    write_image_folder(tmp_path / "photos", ["cat", "dog"], per_class=3, size=(48, 32))
    res = invoke("curate", tmp_path / "photos", "--out", tmp_path / "ds", "--min-size", "224x224", "--workers", "1")
    assert res.exit_code == 0
    assert "warning: --min-size 224x224 left 0 of 6 usable images" in " ".join(res.output.split())
    summary = json.loads((tmp_path / "ds" / "curation.json").read_text())
    assert summary["warnings"] == ["--min-size 224x224 left 0 of 6 usable images; loosen it or check the data"]

    strict = invoke("curate", tmp_path / "photos", "--out", tmp_path / "ds2", "--min-size", "224x224", "--strict", "--workers", "1")
    assert strict.exit_code == 2
    assert "--strict: --min-size 224x224 left 0 of 6 usable images" in " ".join(strict.output.split())
    assert "Traceback" not in strict.output


def test_a_filter_that_empties_one_class_names_it(tmp_path):
    write_image_folder(tmp_path / "photos", ["big"], per_class=3, size=(64, 64))
    write_image_folder(tmp_path / "photos", ["small"], per_class=2, size=(20, 20), seed=7)
    res = invoke("curate", tmp_path / "photos", "--out", tmp_path / "ds", "--min-size", "32x32", "--workers", "1")
    assert res.exit_code == 0
    summary = json.loads((tmp_path / "ds" / "curation.json").read_text())
    assert summary["warnings"] == [
        "--min-size 32x32 emptied 1 class(es): 'small' (2)",
        "the dataset has a single class ('big', 3 images); a classifier needs at least 2: add images of another class",
    ]
    assert invoke("curate", tmp_path / "photos", "--out", tmp_path / "ds3", "--min-per-class", "3", "--strict", "--workers", "1").exit_code == 2
    quiet = invoke("curate", tmp_path / "photos", "--out", tmp_path / "ds4", "--workers", "1")
    assert quiet.exit_code == 0 and "warning" not in quiet.output
    assert json.loads((tmp_path / "ds4" / "curation.json").read_text())["warnings"] == []


def test_a_single_class_and_classes_of_one_image_are_warned(tmp_path):
    write_image_folder(tmp_path / "one", ["cat"], per_class=3)
    res = invoke("curate", tmp_path / "one", "--out", tmp_path / "ds1", "--split", "0.5,0.5", "--workers", "1")
    assert res.exit_code == 0, res.output
    single = "the dataset has a single class ('cat', 3 images); a classifier needs at least 2: add images of another class"
    assert f"warning: {single}" in " ".join(res.output.split())
    assert json.loads((tmp_path / "ds1" / "curation.json").read_text())["warnings"] == [single]

    write_image_folder(tmp_path / "few", {"cat": 3, "dog": 2, "emu": 1, "yak": 1}, seed=3)
    res = invoke("curate", tmp_path / "few", "--out", tmp_path / "ds2", "--split", "0.5,0.5", "--workers", "1")
    assert res.exit_code == 0, res.output
    lonely = (
        "2 class(es) have a single usable image, which cannot be in both train and test: 'emu', 'yak'; "
        "add images of them, or drop such classes with --min-per-class 2"
    )
    assert f"warning: {lonely}" in " ".join(res.output.split())
    assert json.loads((tmp_path / "ds2" / "curation.json").read_text())["warnings"] == [lonely]
    assert invoke("curate", tmp_path / "few", "--out", tmp_path / "ds3", "--strict", "--workers", "1").exit_code == 2
    dropped = invoke("curate", tmp_path / "few", "--out", tmp_path / "ds4", "--min-per-class", "2", "--workers", "1")
    assert dropped.exit_code == 0 and "single usable image" not in dropped.output

    write_unlabelled_folder(tmp_path / "unlabelled", n=3)  # photos for a self-supervised task: no class at all
    quiet = invoke("curate", tmp_path / "unlabelled", "--out", tmp_path / "ds5", "--workers", "1")
    assert quiet.exit_code == 0 and "warning" not in quiet.output


def test_class_names_that_look_alike_are_named_in_one_warning(tmp_path):
    """'café' composed and decomposed, 'cat' and 'cat' + zero-width space were separate
    classes without a word; 'Cat' and 'cat' differ visibly and are not warned about."""
    classes = {"caf\u00e9": 2, "cafe\u0301": 2, "cat": 2, "cat\u200b": 2, "Cat": 2}
    write_image_folder(tmp_path / "photos", classes)
    res = invoke("curate", tmp_path / "photos", "--out", tmp_path / "ds", "--workers", "1")
    assert res.exit_code == 0, res.output
    alike = (
        "2 group(s) of class names look alike but are separate classes: 'cafe\\u0301' and 'caf\\xe9'; "
        "'cat' and 'cat\\u200b'; give each class one spelling in the source"
    )
    assert json.loads((tmp_path / "ds" / "curation.json").read_text())["warnings"] == [alike]
    assert f"warning: {alike}" in " ".join(res.output.split())
    assert len(set(pd.read_csv(tmp_path / "ds" / "manifest.csv")["label"])) == 5  # nothing merged


def test_conflicting_label_groups_are_named_with_the_copy_kept_and_why(tmp_path):
    root = tmp_path / "photos"
    write_image_folder(root, ["cat", "dog"], per_class=2, size=(40, 30))
    big = write_image(root / "dog" / "shared_big.png", seed=999, size=(80, 60))
    small = near_copy(big, root / "cat" / "shared.png", scale=0.9)  # same picture, fewer pixels
    shutil.copy(small, root / "dog" / "zz_exact.png")  # byte-identical copy, labelled dog

    res = invoke("curate", root, "--out", tmp_path / "ds", "--dedupe", "near", "--workers", "1")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ds" / "curation.json").read_text())
    assert summary["conflicting_label_groups"] == 1
    (group,) = summary["conflicting_labels"]
    assert group["labels"] == ["cat", "dog"]
    members = {m["path"]: m for m in group["members"]}
    assert set(members) == {str(small), str(big), str(root / "dog" / "zz_exact.png")}
    kept = {m["path"]: m["why"] for m in group["members"] if m["kept"]}
    # a near copy under another label stays (the cat is never a duplicate of a dog), but one file's
    # bytes under two labels (cat/shared.png = dog/zz_exact.png) have no right answer: neither trains
    assert kept == {str(big): "kept: most pixels (80x60 vs 72x54)"}
    assert members[str(small)]["reason"] == members[str(root / "dog" / "zz_exact.png")]["reason"] == "conflicting_labels"
    manifest = pd.read_csv(tmp_path / "ds" / "manifest.csv", keep_default_na=False).set_index("path")
    assert manifest.loc[str(small), "reason"] == manifest.loc[str(root / "dog" / "zz_exact.png"), "reason"] == "conflicting_labels"
    out = " ".join(res.output.split())
    assert f"conflicting labels in {group['group']} (1 'cat', 2 'dog'; 1 kept):" in out
    assert "'dog' shared_big.png (kept: most pixels" in out and "'cat' shared.png (excluded: conflicting_labels)" in out

    none = invoke("curate", root, "--out", tmp_path / "ds-none", "--workers", "1")
    groups = json.loads((tmp_path / "ds-none" / "curation.json").read_text())["conflicting_labels"]
    assert groups and all(m["kept"] and "no --dedupe" in m["why"] for g in groups for m in g["members"])
    assert none.exit_code == 0


def test_conflicting_labels_say_what_the_manifest_says_in_a_short_line(tmp_path):
    root = tmp_path / "photos"
    write_image_folder(root, ["cat"], per_class=2, size=(40, 30))
    shared = write_image(root / "cat" / "shared.png", seed=999, size=(80, 60))
    for scale in (0.95, 0.9, 0.85, 0.8, 0.75):
        near_copy(shared, root / "cat" / f"shared_{round(scale * 100)}.jpg", scale=scale)
    near_copy(shared, root / "dog" / "shared.jpg", scale=0.7)  # the dog class is too small to keep

    res = invoke("curate", root, "--out", tmp_path / "ds", "--dedupe", "exact", "--min-per-class", "2", "--workers", "1")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ds" / "curation.json").read_text())
    (group,) = summary["conflicting_labels"]
    assert len(group["members"]) == 7
    manifest = {r["path"]: r for r in csv.DictReader((tmp_path / "ds" / "manifest.csv").open())}
    for m in group["members"]:
        assert m["kept"] == (manifest[m["path"]]["status"] == "ok")
        assert m.get("reason", "") == manifest[m["path"]]["reason"]
    dog = next(m for m in group["members"] if m["label"] == "dog")
    assert (dog["kept"], dog["reason"]) == (False, "class_too_small")
    (line,) = [line for line in " ".join(res.output.split()).split("conflicting labels in")[1:]]
    assert line.startswith(f" {group['group']} (6 'cat', 1 'dog'; 6 kept): 'cat' shared.png (kept: no byte-identical copy with its label); ")
    assert "'dog' shared.jpg (excluded: class_too_small); " in line and line.count("(kept") == 3 and "; 3 more in curation.json" in line


def test_sixteen_bit_images_using_only_twelve_bits_get_one_warning_naming_an_example(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos" / "cells"
    folder.mkdir(parents=True)
    ramp = np.linspace(0, 1, 48 * 64).reshape(48, 64)
    Image.fromarray((ramp * 4095).astype(np.uint16)).save(folder / "a_twelve_bit_grey.png")  # Pillow: I;16
    write_sixteen_bit(folder / "b_twelve_bit_rgb.png", seed=1, size=(64, 48), mode="RGB", scale=16)
    Image.fromarray((ramp * 20000).astype(np.uint16)).save(folder / "c_dark_sixteen_bit.png")  # an ordinary dark photo
    write_sixteen_bit(folder / "d_sixteen_bit_rgb.png", seed=2, size=(64, 48), mode="RGB")
    write_image(folder / "e_eight_bit.png", seed=3, size=(64, 48))
    with Image.open(folder / "a_twelve_bit_grey.png") as im:
        assert im.mode == "I;16" and np.asarray(im).max() == 4095
    res = invoke("curate", tmp_path / "photos", "--out", tmp_path / "ds", "--workers", "1")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ds" / "curation.json").read_text())
    twelve = [w for w in summary["warnings"] if "12 bits" in w]
    assert twelve == [
        f"2 16-bit image(s) use only the low 12 bits (no value above 4095, as 12-bit camera data stored as is), "
        f"so they read nearly black, e.g. {folder / 'a_twelve_bit_grey.png'}; if the data is 12-bit, scale it to "
        "the full 16-bit range (x16) or convert it to 8-bit before curating"
    ]
    assert "use only the low 12 bits" in " ".join(res.output.split())


def _plain_class(folder, channel: int, n: int, seed: int) -> None:
    """`n` photos of one flat colour plus faint noise: near copies of one picture (product shots
    on a plain background), one near-copy group that moves between splits whole."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
        pixels[..., channel] += 150
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")


def test_val_and_test_left_empty_by_near_copy_groups_are_warned_and_fail_strict(tmp_path):
    for channel, name in enumerate(["red", "green"]):
        _plain_class(tmp_path / "plain" / name, channel, 12, channel)
    args = ("curate", tmp_path / "plain", "--split", "0.5,0.25,0.25", "--workers", "1")
    res = invoke(*args, "--out", tmp_path / "ds")
    assert res.exit_code == 0, res.output
    manifest = pd.read_csv(tmp_path / "ds" / "manifest.csv", keep_default_na=False)
    assert set(manifest["split"]) == {"train"}  # each class is one group: nothing can go to val or test
    (warning,) = json.loads((tmp_path / "ds" / "curation.json").read_text())["warnings"]
    assert warning == (
        "val/test got far fewer images than asked in 2 class(es): 'green' (12 images in 1 near-copy group(s): "
        "val 0 of 3, test 0 of 3); 'red' (12 images in 1 near-copy group(s): val 0 of 3, test 0 of 3); near copies "
        "move between splits as one group; keep one photo of each near-copy group with --dedupe near, or add distinct photos"
    )
    assert f"warning: {warning}" in " ".join(res.output.split())
    strict = invoke(*args, "--out", tmp_path / "ds-strict", "--strict")
    assert strict.exit_code == 2 and "--strict: val/test got far fewer images" in " ".join(strict.output.split())

    write_image_folder(tmp_path / "distinct", ["cat", "dog"], per_class=8, size=(24, 16))
    quiet = invoke("curate", tmp_path / "distinct", "--out", tmp_path / "ds-quiet", "--split", "0.5,0.25,0.25", "--strict", "--workers", "1")
    assert quiet.exit_code == 0, quiet.output


def test_a_flat_folder_gets_a_note_that_strict_lets_through(tmp_path):
    write_unlabelled_folder(tmp_path / "flat", n=4, size=(24, 16))
    res = invoke("curate", tmp_path / "flat", "--out", tmp_path / "ds", "--split", "0.5,0.5", "--strict", "--workers", "1")
    assert res.exit_code == 0, res.output  # a crop detector's dataset is unlabelled: --strict must not refuse it
    summary = json.loads((tmp_path / "ds" / "curation.json").read_text())
    note = (
        "no class folders: all 4 usable images are unlabelled; fine for the crop detector (task: crops); for "
        f"classification sort the photos into a folder per class ({tmp_path / 'flat'}/<class>/) and curate again"
    )
    assert summary["warnings"] == [] and summary["notes"] == [note]
    assert f"note: {note}" in " ".join(res.output.split())
    write_image_folder(tmp_path / "classes", ["cat", "dog"], per_class=2, size=(24, 16))
    classes = invoke("curate", tmp_path / "classes", "--out", tmp_path / "ds2", "--workers", "1")
    assert classes.exit_code == 0 and "note:" not in classes.output
    assert json.loads((tmp_path / "ds2" / "curation.json").read_text())["notes"] == []
