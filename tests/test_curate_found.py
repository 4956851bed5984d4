"""A tester's findings on curate, stats and materialize: names and labels holding a carriage
return, unreadable and linked folders, --out inside a source, special files behind links,
labels CSVs with trailing commas, hand-edited manifests and curation records. Each ends in a
correct result or a one-line error."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from test_curate_cli import invoke

from vislab.data.manifest import read_manifest
from vislab.testing.images import write_image, write_image_folder


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
