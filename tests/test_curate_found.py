"""A tester's findings on curate, stats and materialize: names and labels holding a carriage
return, unreadable and linked folders, --out inside a source, special files behind links,
labels CSVs with trailing commas, hand-edited manifests and curation records. Each ends in a
correct result or a one-line error."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_curate_cli import assert_one_line_error, invoke

from vislab.config import dump_config
from vislab.data.manifest import read_manifest
from vislab.testing.images import write_image, write_image_folder
from vislab.testing.synthetic import tiny_config


def test_carriage_returns_in_names_and_labels_round_trip(tmp_path):
    photos = tmp_path / "photos"
    odd = write_image(photos / "cat" / "b\rc.jpg", seed=1)
    plain = write_image(photos / "dog" / "d.jpg", seed=2)
    ds = tmp_path / "ds"
    assert invoke("curate", photos, "--out", ds, "--workers", "1").exit_code == 0
    df = read_manifest(ds).set_index("path")
    assert (df.loc[str(odd), "label"], df.loc[str(odd), "status"]) == ("cat", "ok")
    stats = invoke("stats", ds)
    assert stats.exit_code == 0 and "2 files" in stats.stdout, stats.output
    assert invoke("materialize", ds, "--out", tmp_path / "tree", "--mode", "copy").exit_code == 0
    assert len(list((tmp_path / "tree" / "unsplit" / "cat").iterdir())) == 1

    labels = tmp_path / "labels.csv"
    pd.DataFrame({"path": [str(odd), str(plain)], "label": ["ca\rt", "dog"]}).to_csv(labels, index=False, quoting=csv.QUOTE_ALL)
    ds2 = tmp_path / "ds2"
    assert invoke("curate", "--labels", labels, "--out", ds2, "--workers", "1").exit_code == 0
    df = read_manifest(ds2).set_index("path")
    assert df.loc[str(odd), "label"] == "ca\rt" and df.loc[str(plain), "status"] == "ok"
    assert invoke("stats", ds2).exit_code == 0


def test_manifests_without_carriage_returns_keep_their_bytes(tmp_path):
    write_image_folder(tmp_path / "photos", ["cat", "dog"], per_class=2)
    ds = tmp_path / "ds"
    assert invoke("curate", tmp_path / "photos", "--out", ds, "--workers", "1").exit_code == 0
    lines = (ds / "manifest.csv").read_text().splitlines()
    assert lines[0] == "path,label,split,status,reason,width,height,format,bytes,sha256,phash,group,orientation"
    assert lines[1].startswith(str(tmp_path / "photos" / "cat") + "/") and '"' not in lines[1]


def unprivileged() -> list[str]:
    """A command prefix under which a mode-000 folder cannot be read: none for a normal
    user; for root, setpriv dropping the capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a folder unreadable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def locked_folder(path: Path) -> Path:
    """A folder this test's CLI runs cannot list, like a root-owned lost+found."""
    path.mkdir(parents=True)
    write_image(path / "secret.jpg", seed=9)
    path.chmod(0)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    probe = [*unprivileged(), sys.executable, "-c", "import os, sys; os.listdir(sys.argv[1])", str(path)]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        pytest.skip("cannot make an unreadable folder here")
    return path


@pytest.mark.parametrize("layout", ["folders", "voc"])
def test_unreadable_folders_are_skipped_counted_and_warned(tmp_path, layout):
    photos = tmp_path / "photos"
    if layout == "voc":
        write_image(photos / "JPEGImages" / "a.jpg", seed=1)
        (photos / "Annotations").mkdir()
        (photos / "Annotations" / "a.xml").write_text(
            "<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
        )
    else:
        write_image_folder(photos, ["cat", "dog"], per_class=2)
    locked_folder(photos / "lost+found")
    ds = tmp_path / "ds"
    try:
        run = subprocess.run(
            [*unprivileged(), sys.executable, "-m", "vislab.cli", "curate", str(photos), "--out", str(ds), "--workers", "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        (photos / "lost+found").chmod(0o700)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "1 unreadable folders skipped" in run.stdout
    assert "warning: 1 folder(s) in the sources could not be read" in run.stdout
    record = json.loads((ds / "curation.json").read_text())
    assert record["unreadable_folders_skipped"] == 1
    paths = read_manifest(ds)["path"]
    assert len(paths) == (1 if layout == "voc" else 4) and not paths.str.contains("secret").any()


def test_out_in_a_folder_of_the_source_that_holds_photos_is_refused(tmp_path):
    photos = tmp_path / "photos"
    write_image_folder(photos, ["cat", "dog"], per_class=2)
    before = sorted(p.name for p in (photos / "cat").iterdir())
    result = invoke("curate", photos, "--out", photos / "cat", "--workers", "1")
    assert_one_line_error(result, "lies inside source", "'cat_000.png'")
    assert sorted(p.name for p in (photos / "cat").iterdir()) == before

    ds = photos / "dataset"  # a new folder inside the source stays allowed, and re-runs
    for _ in range(2):
        assert invoke("curate", photos, "--out", ds, "--workers", "1").exit_code == 0
    assert sorted(read_manifest(ds)["label"].unique()) == ["cat", "dog"]
    (ds / ".manifest.csv.tmp999999999").write_text("path\n")  # left by a curate killed mid-write
    result = invoke("curate", photos, "--out", ds, "--workers", "1")
    assert result.exit_code == 0, result.output


def test_an_out_folder_holding_other_photos_is_refused(tmp_path):
    photos = tmp_path / "photos"
    write_image_folder(photos, ["cat", "dog"], per_class=2)
    before = sorted(p.name for p in (photos / "dog").iterdir())
    result = invoke("curate", photos / "cat", "--out", photos / "dog", "--workers", "1")
    assert_one_line_error(result, "holds files curate did not write ('dog_000.png', 'dog_001.png')")
    assert sorted(p.name for p in (photos / "dog").iterdir()) == before

    ds = tmp_path / "ds"  # a dataset curate wrote stays its own to rewrite, whatever lies beside it
    ds.mkdir()
    assert invoke("curate", photos, "--out", ds, "--workers", "1").exit_code == 0
    (ds / "cache").mkdir()
    result = invoke("curate", photos, "--out", ds, "--workers", "1", "--seed", "1", "--overwrite")
    assert result.exit_code == 0, result.output


def test_a_source_inside_another_is_refused_in_either_order(tmp_path):
    photos = tmp_path / "photos"
    write_image_folder(photos, ["cat", "dog"], per_class=2)
    for order in ((photos / "cat", photos), (photos, photos / "cat")):
        result = invoke("curate", *order, "--out", tmp_path / "ds", "--workers", "1")
        assert_one_line_error(result, f"source {photos / 'cat'} lies inside source {photos},")
    assert_one_line_error(invoke("curate", photos, f"{photos}/", "--out", tmp_path / "ds"), "the same folder")
    assert not (tmp_path / "ds").exists()
    result = invoke("curate", photos / "cat", photos / "dog", "--out", tmp_path / "ds", "--workers", "1")
    assert result.exit_code == 0, result.output


# A real curate stopped in the middle of writing manifest.csv (its temporary file open, half
# written), to be killed outright.
STUCK_CURATE = """
import sys, time
import vislab.data.manifest as manifest
from vislab.data.curate import curate
from vislab.fsguard import replacing

def stuck(path, data, durable=False):
    with replacing(path) as fh:
        fh.write(data[: len(data) // 2].encode())
        fh.flush()
        print("writing", flush=True)
        time.sleep(600)

manifest.write_file = stuck
curate(sys.argv[1], out=sys.argv[2], workers=1)
"""


def killed_at(script: str, line: str, photos: Path, ds: Path) -> int:
    """Run a curate `script` in a real process, SIGKILL it once it prints `line`; its pid."""
    killed = subprocess.Popen([sys.executable, "-c", script, str(photos), str(ds)], stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == line
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    return killed.pid


def test_a_curate_killed_mid_write_has_its_temporary_file_removed_by_the_next(tmp_path):
    photos = tmp_path / "photos"
    write_image_folder(photos, ["cat", "dog"], per_class=2)
    ds = tmp_path / "ds"
    pid = killed_at(STUCK_CURATE, "writing", photos, ds)
    leftover = ds / f".manifest.csv.tmp{pid}"
    assert leftover.is_file()
    live = ds / f".curation.json.tmp{os.getpid()}"  # a live process's: being written now
    live.write_text("{")
    theirs = [ds / ".notes.txt.tmp999999999", ds / ".manifest.csv.bak.tmp999999999", ds / "manifest.csv.tmp999999999"]
    for path in theirs:
        path.write_text("not curate's")
    result = invoke("curate", photos, "--out", ds, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "removed 1 temporary file(s) left by an interrupted curate" in result.output
    assert not leftover.exists() and live.exists() and all(p.read_text() == "not curate's" for p in theirs)
    assert len(read_manifest(ds)) == 4


# A real curate that stops once manifest.csv is written, before curation.json's full record,
# to be killed outright there.
CURATE_STOPPED_AFTER_MANIFEST = """
import sys, time
import vislab.data.curate as curate_module

write_manifest = curate_module.write_manifest

def then_wait(*args, **kwargs):
    path = write_manifest(*args, **kwargs)
    print("written", flush=True)
    time.sleep(600)
    return path

curate_module.write_manifest = then_wait
curate_module.curate(sys.argv[1], out=sys.argv[2], workers=1, split="0.5,0.25,0.25")
"""


def test_a_curate_killed_between_manifest_and_curation_json_is_made_again_and_never_trained(tmp_path):
    # the next curate into that --out refused it as 'a different dataset (made from unknown
    # inputs)', and training took its manifest as a finished dataset
    photos = tmp_path / "photos"
    write_image_folder(photos, ["cat", "dog"], per_class=4)
    ds = tmp_path / "ds"
    killed_at(CURATE_STOPPED_AFTER_MANIFEST, "written", photos, ds)
    assert (ds / "manifest.csv").is_file()

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(dump_config(tiny_config(train={"epochs": 1})))
    trained = invoke("train", cfg, "--data", ds, "--out", tmp_path / "run")
    assert_one_line_error(trained, f"{ds}: a `vislab curate` into it has not finished", "run that curate again")
    assert not (tmp_path / "run").exists()
    assert_one_line_error(invoke("stats", ds), "has not finished")
    other = invoke("curate", photos, "--out", ds, "--workers", "1", "--split", "0.5,0.25,0.25", "--seed", "3")
    assert_one_line_error(other, "holds a curate that stopped before it finished", f"made from {photos}", "--overwrite")

    again = invoke("curate", photos, "--out", ds, "--workers", "1", "--split", "0.5,0.25,0.25")  # the same options: made again
    assert again.exit_code == 0, again.output
    record = json.loads((ds / "curation.json").read_text())
    assert "state" not in record and record["manifest_sha256"] == hashlib.sha256((ds / "manifest.csv").read_bytes()).hexdigest()
    assert len(read_manifest(ds)) == 8


def test_links_to_folders_inside_the_source_are_not_followed(tmp_path):
    photos = tmp_path / "photos"
    cat = write_image(photos / "cat" / "c.jpg", seed=1)
    dog = write_image(photos / "dog" / "d.jpg", seed=2)
    outside = write_image(tmp_path / "elsewhere" / "e.jpg", seed=3)
    (photos / "dog" / "more").symlink_to("../cat")
    (photos / "kitten").symlink_to("cat")
    (photos / "dog" / "linked").symlink_to(outside.parent)  # a link out of the source is followed
    ds = tmp_path / "ds"
    result = invoke("curate", photos, "--out", ds, "--workers", "1")
    assert result.exit_code == 0, result.output
    df = read_manifest(ds).set_index("path")
    assert dict(df["label"]) == {str(cat): "cat", str(dog): "dog", str(photos / "dog" / "linked" / "e.jpg"): "dog"}
    assert json.loads((ds / "curation.json").read_text())["inner_folder_links_skipped"] == 2
    assert "2 links to folders inside the source skipped" in invoke("stats", ds).stdout


def test_links_into_proc_and_sys_are_quarantined_unread(tmp_path):
    kmsg, sysfs = Path("/proc/kmsg"), Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (os.access(kmsg, os.R_OK) and sysfs.is_file()):
        pytest.skip("needs a readable /proc/kmsg (it blocks when read) and a sysfs file")
    photos = tmp_path / "photos"
    write_image_folder(photos, ["cat"], per_class=1)
    (photos / "cat" / "kmsg.jpg").symlink_to(kmsg)
    (photos / "cat" / "sys.jpg").symlink_to(sysfs)
    ds = tmp_path / "ds"
    run = subprocess.run(
        [sys.executable, "-m", "vislab.cli", "curate", str(photos), "--out", str(ds), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=60,  # the old check read /proc/kmsg and never returned
    )
    assert run.returncode == 0, run.stderr
    df = read_manifest(ds).set_index("path")
    for name in ("kmsg.jpg", "sys.jpg"):
        assert df.loc[str(photos / "cat" / name), "reason"] == "not_a_regular_file"
    assert (df["status"] == "ok").sum() == 1


def test_labels_csv_rows_longer_than_the_header_never_shift_columns(tmp_path):
    write_image(tmp_path / "img" / "0.jpg", seed=1)
    write_image(tmp_path / "img" / "1.jpg", seed=2)
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("path,label\nimg/0.jpg,cat,\nimg/1.jpg,dog,\n")
    ds = tmp_path / "ds"
    assert invoke("curate", "--labels", trailing, "--out", ds, "--workers", "1").exit_code == 0
    df = read_manifest(ds).set_index("path")
    assert dict(df["label"]) == {str(tmp_path / "img" / "0.jpg"): "cat", str(tmp_path / "img" / "1.jpg"): "dog"}

    extra = tmp_path / "extra.csv"
    extra.write_text("path,label\nimg/0.jpg,cat,x\nimg/1.jpg,dog,y\n")
    result = invoke("curate", "--labels", extra, "--out", tmp_path / "ds2", "--workers", "1")
    assert_one_line_error(result, "extra.csv line 2:", "3 cells", "2 columns")


@pytest.fixture()
def dataset(tmp_path) -> Path:
    write_image_folder(tmp_path / "photos", ["cat", "dog"], per_class=2)
    ds = tmp_path / "ds"
    assert invoke("curate", tmp_path / "photos", "--out", ds, "--workers", "1").exit_code == 0
    return ds


def test_stats_reads_a_manifest_without_a_reason_column(dataset):
    df = pd.read_csv(dataset / "manifest.csv", dtype=str, keep_default_na=False)
    df.drop(columns=["reason"]).to_csv(dataset / "manifest.csv", index=False)
    result = invoke("stats", dataset)
    assert result.exit_code == 0 and "4 files" in result.stdout, result.output


@pytest.mark.parametrize(
    "field, value",
    [("warnings", 5), ("warnings", {"a": 1}), ("conflicting_labels", ["x"]), ("conflicting_labels", [{"members": 3}])],
)
def test_stats_survives_wrongly_typed_fields_in_curation_json(dataset, field, value):
    record = json.loads((dataset / "curation.json").read_text())
    record[field] = value
    (dataset / "curation.json").write_text(json.dumps(record))
    result = invoke("stats", dataset)
    assert result.exit_code == 0 and "4 files" in result.stdout, result.output


def test_relative_manifest_paths_are_read_against_the_dataset_folder(dataset, tmp_path, monkeypatch):
    lines = (dataset / "manifest.csv").read_text().splitlines()
    photo = tmp_path / "photos" / "cat" / "cat_000.png"
    assert lines[1].startswith(f"{photo},")
    lines[1] = lines[1].replace(str(photo), "../photos/cat/cat_000.png", 1)
    (dataset / "manifest.csv").write_text("\n".join(lines) + "\n")
    assert read_manifest(dataset)["path"].iloc[0] == str(photo)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert invoke("materialize", dataset, "--out", tmp_path / "tree").exit_code == 0
    placed = tmp_path / "tree" / "unsplit" / "cat" / "cat_000.png"
    assert placed.is_symlink() and placed.resolve() == photo


def test_a_manifest_listing_a_file_twice_is_refused(dataset, tmp_path):
    lines = (dataset / "manifest.csv").read_text().splitlines()
    (dataset / "manifest.csv").write_text("\n".join([*lines, lines[2]]) + "\n")
    for command in (["stats", dataset], ["materialize", dataset, "--out", tmp_path / "tree"]):
        assert_one_line_error(invoke(*command), "manifest.csv line 6:", "repeats line 3", "one row per file")
