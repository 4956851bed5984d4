"""`vislab collect urls`, and `vislab curate --photos` reading what collect wrote."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.collect.flickr import FlickrOptions, collect_flickr
from vislab.collect.http import RetryPolicy
from vislab.data.curate import CurateOptions, run_curate
from vislab.data.manifest import read_manifest
from vislab.data.photos import MANIFEST_COLUMNS, read_photos_csv
from vislab.testing.flickr import FakeFlickr, FakePhoto
from vislab.testing.images import write_image_folder

runner = CliRunner()


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "photos.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_collect_urls_skips_comments_blanks_and_duplicates_and_resumes(tmp_path):
    photos = [
        FakePhoto(id="8000", seed=1),
        FakePhoto(id="8001", seed=1),  # the same bytes as 8000
        FakePhoto(id="8002", seed=2, fmt="png"),
    ]
    out = tmp_path / "web"
    with FakeFlickr(photos) as fake:
        listing = tmp_path / "urls.txt"
        urls = [fake.photo_url(p.id) for p in photos]
        missing = fake.url + "/photos/9999_x_o.jpg"
        listing.write_text(
            f"# photos for the test\n\n{urls[0]}\n  {urls[1]}  \n{urls[2]}\n{urls[0]}\n{missing}\n{fake.url}/photos/8002_def_o\n"
        )
        fake.photo_faults["8002"] = ["truncate"]
        args = ["collect", "urls", str(listing), "--out", str(out), "--backoff", "0.01", "--label", "web", "--workers", "1"]
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output  # the missing URL failed
        assert "1 download(s) failed" in result.stderr and "HTTP 404" in result.stdout
        rows = read_rows(out)
        assert [r["url"] for r in rows] == [urls[0], urls[2]]
        assert "2 new" in result.stdout and "2 exact duplicate(s) skipped" in result.stdout
        assert {r["source"] for r in rows} == {"url"} and {r["label"] for r in rows} == {"web"}
        assert rows[1]["file"].endswith(".png") and (rows[0]["width"], rows[0]["height"]) == ("48", "32")
        assert (out / rows[1]["file"]).read_bytes() == fake.image_bytes("8002")  # the cut one was fetched again
        assert fake.photo_hits["8002"] == 3 and fake.photo_hits["8000"] == 1

        again = runner.invoke(app, args)
        assert again.exit_code == 1
        assert fake.photo_hits["8000"] == 1 and fake.photo_hits["8001"] == 1 and fake.photo_hits["9999"] == 2


def test_url_list_problems_are_one_line_errors(tmp_path):
    bad = tmp_path / "urls.txt"
    bad.write_text("https://example.org/a.jpg\nftp://example.org/b.jpg\n")
    result = runner.invoke(app, ["collect", "urls", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and f"{bad}:2" in result.stderr and "not an http(s) URL" in result.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    result = runner.invoke(app, ["collect", "urls", str(empty), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "has no URLs" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--label", "birds/fox"], "--label 'birds/fox': contains the path separator '/'"),
        (["--label", "a\tb"], "--label 'a\\x09b': contains a control character"),
        (["--timeout", "inf"], "--timeout inf"),
        (["--timeout", "nan"], "--timeout nan"),
        (["--backoff", "inf"], "--backoff inf"),
    ],
)
def test_unusable_labels_and_limits_are_refused_before_anything_is_fetched(tmp_path, args, needle):
    listing = tmp_path / "urls.txt"
    listing.write_text("http://127.0.0.1:1/a.jpg\n")
    result = runner.invoke(app, ["collect", "urls", str(listing), "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


def test_a_rerun_of_a_url_list_with_another_label_is_refused_before_any_download(tmp_path):
    """A URL already collected is not fetched again, so a rerun with another --label kept the
    old label without a word; now it is refused, and a new URL list takes its own label."""
    photos = [FakePhoto(id="8100", seed=1), FakePhoto(id="8101", seed=2)]
    out = tmp_path / "web"
    with FakeFlickr(photos) as fake:
        first, second = tmp_path / "a.txt", tmp_path / "b.txt"
        first.write_text(fake.photo_url("8100") + "\n")
        second.write_text(fake.photo_url("8100") + "\n" + fake.photo_url("8101") + "\n")
        base = ["--out", str(out), "--backoff", "0.01", "--workers", "1"]
        assert runner.invoke(app, ["collect", "urls", str(first), "--label", "cat", *base]).exit_code == 0
        relabel = runner.invoke(app, ["collect", "urls", str(second), "--label", "dog", *base])
        assert relabel.exit_code == 2, relabel.output
        line = relabel.output.strip()
        assert len(line.splitlines()) == 1 and "--label 'dog'" in line and "'cat' (1 URL)" in line, relabel.output
        assert fake.photo_hits.get("8101", 0) == 0 and [r["label"] for r in read_rows(out)] == ["cat"]
        second.write_text(fake.photo_url("8101") + "\n")
        assert runner.invoke(app, ["collect", "urls", str(second), "--label", "dog", *base]).exit_code == 0
    assert [(r["url"].rsplit("/", 1)[1][:4], r["label"]) for r in read_rows(out)] == [("8100", "cat"), ("8101", "dog")]


def _collect(fake: FakeFlickr, out: Path, queries: list[str]) -> None:
    opts = FlickrOptions(queries=queries, rate=1e7, retry=RetryPolicy(backoff=0.01), api_url=fake.api_url)
    tally = collect_flickr(opts, out, fake.api_key)
    assert tally.ok, tally


def test_curate_reads_photos_csv_and_keeps_the_licence_columns(tmp_path):
    photos = [FakePhoto(id=str(9000 + i), title="otter", license=[4, 9][i % 2], ownername=f"Owner {i}", seed=i) for i in range(4)]
    photos += [FakePhoto(id="9100", title="beaver", license=11, seed=20)]
    out = tmp_path / "collected"
    with FakeFlickr(photos) as fake:
        _collect(fake, out, ["otter", "beaver"])

    found = read_photos_csv(out)  # the folder or the file
    assert len(found) == 5 and {f.label for f in found.values()} == {""}  # no labels: unlabelled dataset
    result = runner.invoke(app, ["curate", "--photos", str(out / "photos.csv"), "--out", str(tmp_path / "ds"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    df = read_manifest(tmp_path / "ds").set_index("path")
    assert set(MANIFEST_COLUMNS) <= set(df.columns)
    assert (df["status"] == "ok").all() and len(df) == 5
    row = df.loc[str(out / "images" / "9001.jpg")]
    assert row["license"] == "9" and row["license_name"] == "Public Domain Dedication (CC0)"
    assert row["owner_name"] == "Owner 1" and row["page_url"] == "https://www.flickr.com/photos/12345678@N00/9001"
    assert row["license_url"] == "https://creativecommons.org/publicdomain/zero/1.0/" and row["title"] == "otter"

    # The search that found each photo as its class; the attribution still travels.
    by_query = tmp_path / "by_query"
    run_curate(CurateOptions(photos=out, label_column="query", workers=1), by_query)
    df = read_manifest(by_query)
    assert sorted(df["label"].unique()) == ["beaver", "otter"]
    assert df.loc[df["label"] == "beaver", "license_name"].tolist() == ["CC BY 4.0"]

    # A labels CSV may replace the labels; the attribution stays with its image.
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"path": [f"collected/images/{p.id}.jpg" for p in photos], "label": ["a", "b", "a", "b", "a"]}).to_csv(labels, index=False)
    relabelled = tmp_path / "relabelled"
    run_curate(CurateOptions(photos=out / "photos.csv", labels=labels, workers=1), relabelled)
    df = read_manifest(relabelled).set_index("path")
    assert df.loc[str(out / "images" / "9100.jpg"), ["label", "license"]].tolist() == ["a", "11"]


def test_curate_without_photos_writes_no_licence_columns(tmp_path):
    write_image_folder(tmp_path / "src", {"cat": 2, "dog": 2})
    run_curate(CurateOptions(sources=[tmp_path / "src"], workers=1), tmp_path / "ds")
    header = (tmp_path / "ds" / "manifest.csv").read_text().splitlines()[0].split(",")
    assert not set(MANIFEST_COLUMNS) & set(header)


def test_photos_csv_that_is_not_collects_is_a_one_line_error(tmp_path):
    other = tmp_path / "photos.csv"
    other.write_text("file,label\na.jpg,cat\n")
    result = runner.invoke(app, ["curate", "--photos", str(other), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "written by `vislab collect`" in result.stderr


def test_a_photos_csv_without_rows_is_named_as_listing_no_photos(tmp_path):
    """A collect that downloaded nothing leaves a photos.csv of its header alone; curate said
    'no files found in None'."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    header = "id,source,query,label,license,license_name,license_url,owner,owner_name,title,page_url,url,width,height,date_taken,bytes,sha256,file"
    (downloads / "photos.csv").write_text(header + "\n")
    result = runner.invoke(app, ["curate", "--photos", str(downloads), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {downloads / 'photos.csv'}: lists no photos (no row names a file; did `vislab collect` download none?); "
        "collect some, or pass another --photos\n"
    )
    assert not (tmp_path / "ds").exists()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["curate", str(tmp_path / "empty"), "--photos", str(downloads), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2 and f"no files found in {tmp_path / 'empty'}, {downloads / 'photos.csv'};" in result.stderr


def test_a_photo_listed_twice_with_different_labels_is_excluded_as_conflicting(tmp_path):
    """The last row won silently, where a labels CSV excludes such a file."""
    folder = tmp_path / "downloads"
    write_image_folder(folder, {"images": 3})
    header = "id,source,query,label,license,license_name,license_url,owner,owner_name,title,page_url,url,width,height,date_taken,bytes,sha256,file"
    rows = [("0", "cat"), ("0", "dog"), ("1", "cat"), ("1", "cat"), ("2", "dog")]
    lines = [f"{i},urls,,{label},,,,,,t{i},,,,,,,,images/images_00{i}.png" for i, label in rows]
    (folder / "photos.csv").write_text("\n".join([header, *lines]) + "\n")
    run_curate(CurateOptions(photos=folder, workers=1), tmp_path / "ds")
    df = read_manifest(tmp_path / "ds").set_index("path")
    image = str(folder / "images" / "images_00{}.png")
    assert df.loc[image.format(0), ["status", "reason"]].tolist() == ["excluded", "conflicting_labels"]
    assert df.loc[image.format(1), ["status", "label", "title"]].tolist() == ["ok", "cat", "t1"]
    assert df.loc[image.format(2), ["status", "label"]].tolist() == ["ok", "dog"]
