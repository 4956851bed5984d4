"""`vislab collect flickr` against a loopback fake of the Flickr API (nothing leaves 127.0.0.1)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.collect.flickr import FlickrOptions, collect_flickr
from vislab.collect.http import RetryPolicy
from vislab.testing.flickr import FakeFlickr, FakePhoto

runner = CliRunner()
FAST = ["--rate", "10000000", "--backoff", "0.01"]


def invoke(fake: FakeFlickr, *args: object, key: str | None = None):
    env = {"FLICKR_API_KEY": fake.api_key if key is None else key}
    return runner.invoke(app, ["collect", "flickr", *map(str, args), "--api-url", fake.api_url], env=env)


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "photos.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def kept_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "images").iterdir()}


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert len(text.splitlines()) == 1 and text.startswith("error:"), text
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in text, text


def catalogue() -> list[FakePhoto]:
    """Fox photos under every kind of licence and size, one without a shared original,
    plus owls; ids are upload order."""
    photos = []
    licences = [4, 5, 9, 1, 0, 11]  # 1 (NC) and 0 (all rights reserved) are not in the default set
    for i in range(12):
        big = i % 4 != 3  # every fourth is too small
        photos.append(
            FakePhoto(
                id=str(1000 + i),
                title=f"Red fox {i}",
                tags=("fox", "wildlife"),
                license=licences[i % len(licences)],
                width=64 if big else 24,
                height=40 if big else 16,
                ownername=f"Owner {i}",
                seed=i,
            )
        )
    photos.append(FakePhoto(id="1100", title="fox, no original", license=4, width=64, height=40, original=False, seed=50))
    photos += [FakePhoto(id=str(2000 + i), title="Barn owl", tags=("owl",), width=64, height=40, seed=60 + i) for i in range(3)]
    return photos


def expected_ids(photos: list[FakePhoto], allowed=(4, 5, 7, 8, 9, 10, 11, 12), word="fox") -> set[str]:
    return {
        p.id
        for p in photos
        if word in p.title.lower() and p.original and p.license in allowed and p.width >= 48 and p.height >= 30
    }


def test_collect_filters_licences_and_sizes_before_download_across_pages(tmp_path):
    photos = catalogue()
    out = tmp_path / "foxes"
    with FakeFlickr(photos) as fake:
        result = invoke(fake, "--text", "fox", "--min-size", "48x30", "--per-page", "4", "--out", out, *FAST)
        assert result.exit_code == 0, result.output
        want = expected_ids(photos)
        assert len(want) == 6
        # Filtering happens on the search results: nothing else was ever requested.
        assert set(fake.photo_hits) == want and set(fake.photo_hits.values()) == {1}
        pages = [int(params["page"]) for _, params in fake.api_calls]
        assert pages == [1, 2, 3]  # 9 licensed fox photos at 4 per page
        params = fake.api_calls[0][1]
        assert params["format"] == "json" and params["nojsoncallback"] == "1"
        assert params["extras"] == "url_o,o_dims,license,owner_name,date_taken,original_format"
        assert params["license"] == "4,5,7,8,9,10,11,12" and params["sort"] == "date-posted-asc"

        rows = read_rows(out)
        assert {r["id"] for r in rows} == want
        files = kept_files(out)
        by_id = {p.id: p for p in photos}
        for row in rows:
            data = fake.image_bytes(row["id"])
            assert files[Path(row["file"]).name] == data
            assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == str(len(data))
            p = by_id[row["id"]]
            assert (row["width"], row["height"]) == (str(p.width), str(p.height))
            assert row["license"] == str(p.license) and row["license_name"].startswith(("CC BY", "Public Domain"))
            assert row["owner_name"] == p.ownername and row["title"] == p.title
            assert row["page_url"] == f"https://www.flickr.com/photos/{p.owner}/{p.id}"
            assert row["url"] == fake.photo_url(p.id) and row["query"] == "fox" and row["source"] == "flickr"
        licence_names = {r["license"]: r["license_name"] for r in rows}
        assert licence_names["9"] == "Public Domain Dedication (CC0)" and licence_names["11"] == "CC BY 4.0"
        assert "6 new" in result.stdout and "smaller than 48x30" in result.stdout

        # The same command again: the query is complete, nothing is asked or fetched.
        calls = len(fake.api_calls)
        again = invoke(fake, "--text", "fox", "--min-size", "48x30", "--per-page", "4", "--out", out, *FAST)
        assert again.exit_code == 0, again.output
        assert len(fake.api_calls) == calls and set(fake.photo_hits.values()) == {1}
        assert "complete in an earlier run" in again.stdout and "0 new, 0 already here" in again.stdout
        assert read_rows(out) == rows


def test_licence_any_and_queries_file_with_per_query_limit(tmp_path):
    photos = catalogue()
    queries = tmp_path / "queries.txt"
    queries.write_text("# one search per line\nfox\n\nowl\n")
    out = tmp_path / "both"
    with FakeFlickr(photos) as fake:
        args = ["--queries", queries, "--license", "any", "--per-query", "2", "--per-page", "3", "--label", "animal"]
        result = invoke(fake, *args, "--out", out, *FAST)
        assert result.exit_code == 0, result.output
        assert "license" not in fake.api_calls[0][1]
        rows = read_rows(out)
        assert sorted((r["query"], r["id"]) for r in rows) == [("fox", "1000"), ("fox", "1001"), ("owl", "2000"), ("owl", "2001")]
        assert {r["label"] for r in rows} == {"animal"}
        hits = dict(fake.photo_hits)
        # A rerun finds its two photos per query already here and downloads nothing.
        again = invoke(fake, *args, "--out", out, *FAST)
        assert again.exit_code == 0 and dict(fake.photo_hits) == hits
        assert "0 new, 4 already here" in again.stdout


def test_api_requests_keep_to_the_rate_limit(tmp_path):
    # No photo has a shared original, so nothing but the API calls takes time.
    photos = [FakePhoto(id=str(3000 + i), title="sky", original=False, seed=i) for i in range(5)]
    with FakeFlickr(photos) as fake:
        result = invoke(fake, "--text", "sky", "--per-page", "1", "--rate", "18000", "--out", tmp_path / "sky")
        assert result.exit_code == 0, result.output
        times = [t for t, _ in fake.api_calls]
    assert len(times) == 5
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) > 0.15, gaps  # 18,000 an hour = one every 0.2 s
    assert times[-1] - times[0] > 4 * 0.2 - 0.05


def test_retries_5xx_stat_105_slow_dropped_and_truncated_responses(tmp_path):
    photos = [FakePhoto(id=str(4000 + i), title="heron", seed=200 + i) for i in range(5)]
    out = tmp_path / "herons"
    with FakeFlickr(photos) as fake:
        fake.api_faults += [500, ("stat", 105), 503]
        fake.photo_faults.update(
            {"4000": [500, 502], "4001": [("slow", 2.0)], "4002": ["truncate"], "4003": ["drop"], "4004": ["truncate", 503]}
        )
        result = invoke(fake, "--text", "heron", "--out", out, "--timeout", "0.5", "--workers", "3", *FAST)
        assert result.exit_code == 0, result.output
        assert len(fake.api_calls) == 4  # three failures, then the page
        assert dict(fake.photo_hits) == {"4000": 3, "4001": 2, "4002": 2, "4003": 2, "4004": 3}
        assert "Flickr is temporarily unavailable (code 105" in result.stdout
        assert "download cut short" in result.stdout and "timed out" in result.stdout
        files = kept_files(out)
        assert {name: data for name, data in files.items()} == {f"{p.id}.jpg": fake.image_bytes(p.id) for p in photos}


def test_a_download_that_keeps_failing_is_reported_never_kept_and_retried_next_run(tmp_path):
    photos = [FakePhoto(id=str(4100 + i), title="stork", seed=300 + i) for i in range(3)]
    out = tmp_path / "storks"
    with FakeFlickr(photos) as fake:
        fake.photo_faults.update({"4100": ["truncate"] * 3, "4101": [404]})
        result = invoke(fake, "--text", "stork", "--out", out, "--retries", "2", *FAST)
        assert result.exit_code == 1, result.output
        assert "2 download(s) failed" in result.stderr and "run the same command again" in result.stderr
        assert fake.photo_hits["4100"] == 3 and fake.photo_hits["4101"] == 1  # a 404 is not retried
        assert sorted(kept_files(out)) == ["4102.jpg"]  # no partial file, no temporary file
        assert [r["id"] for r in read_rows(out)] == ["4102"]
        journal = (out / ".vislab-collect.jsonl").read_text()
        assert '"event": "query"' not in journal  # the query is not complete

        again = invoke(fake, "--text", "stork", "--out", out, "--retries", "2", *FAST)
        assert again.exit_code == 0, again.output
        assert sorted(kept_files(out)) == ["4100.jpg", "4101.jpg", "4102.jpg"]
        assert fake.photo_hits["4102"] == 1
        assert kept_files(out)["4100.jpg"] == fake.image_bytes("4100")


def test_exact_duplicates_are_skipped_within_and_across_runs(tmp_path):
    photos = [
        FakePhoto(id="5000", title="gull", seed=7),
        FakePhoto(id="5001", title="gull again", seed=7),  # the same bytes
        FakePhoto(id="5002", title="gull", seed=8),
        FakePhoto(id="5003", title="tern", seed=8),  # the same bytes as 5002, found by another query
    ]
    out = tmp_path / "birds"
    with FakeFlickr(photos) as fake:
        first = invoke(fake, "--text", "gull", "--out", out, "--workers", "1", *FAST)
        assert first.exit_code == 0, first.output
        assert "1 exact duplicate(s) skipped" in first.stdout
        second = invoke(fake, "--text", "tern", "--out", out, *FAST)
        assert second.exit_code == 0 and "1 exact duplicate(s) skipped" in second.stdout
        assert sorted(kept_files(out)) == ["5000.jpg", "5002.jpg"]
        assert [r["id"] for r in read_rows(out)] == ["5000", "5002"]
        third = invoke(fake, "--text", "gull", "--out", out, *FAST)
        assert third.exit_code == 0 and dict(fake.photo_hits) == {"5000": 1, "5001": 1, "5002": 1, "5003": 1}


def test_query_over_the_4000_cap_is_reported_and_never_paged_past_it(tmp_path):
    photos = [FakePhoto(id=str(10_000 + i), title="cloud", original=False) for i in range(4010)]
    with FakeFlickr(photos) as fake:
        result = invoke(fake, "--text", "cloud", "--out", tmp_path / "clouds", *FAST)
        assert result.exit_code == 0, result.output
        pages = [int(params["page"]) for _, params in fake.api_calls]
    assert pages == list(range(1, 9))  # 8 pages of 500, not the 9th Flickr would repeat
    text = " ".join(result.stdout.split())
    assert "4,010 photos but Flickr serves only the first 4,000" in text and "10 are out of reach" in text
    assert "--taken-after/--taken-before" in text and "--bbox" in text
    assert "4,000 without a shared original" in text


def test_bbox_and_dates_reach_the_api_and_filter(tmp_path):
    photos = [
        FakePhoto(id="6000", title="alp", lon=7.0, lat=46.0, taken="2019-07-01 10:00:00", seed=1),
        FakePhoto(id="6001", title="alp", lon=7.0, lat=46.0, taken="2015-07-01 10:00:00", seed=2),
        FakePhoto(id="6002", title="alp", lon=-70.0, lat=46.0, taken="2019-07-01 10:00:00", seed=3),
    ]
    out = tmp_path / "alps"
    with FakeFlickr(photos) as fake:
        result = invoke(fake, "--bbox", "5.9,45.8,10.5,47.8", "--taken-after", "2018-01-01", "--out", out, *FAST)
        assert result.exit_code == 0, result.output
        params = fake.api_calls[0][1]
    assert params["bbox"] == "5.9,45.8,10.5,47.8" and params["min_taken_date"] == "2018-01-01 00:00:00"
    assert "text" not in params and params["per_page"] == "250"  # Flickr's geo page size
    assert [r["id"] for r in read_rows(out)] == ["6000"]


def test_taken_dates_include_the_whole_first_and_last_day(tmp_path):
    # Flickr reads a bare date as its midnight: "on or before 2020-01-31" must say the day's end.
    photos = [
        FakePhoto(id="6200", title="owl", taken="2019-12-31 23:59:59", seed=1),
        FakePhoto(id="6201", title="owl", taken="2020-01-01 00:00:00", seed=2),
        FakePhoto(id="6202", title="owl", taken="2020-01-31 18:30:00", seed=3),
        FakePhoto(id="6203", title="owl", taken="2020-02-01 00:00:00", seed=4),
    ]
    out = tmp_path / "owls"
    with FakeFlickr(photos) as fake:
        dates = ["--taken-after", "2020-01-01", "--taken-before", "2020-01-31"]
        result = invoke(fake, "--text", "owl", *dates, "--out", out, *FAST)
        assert result.exit_code == 0, result.output
        params = fake.api_calls[0][1]
    assert (params["min_taken_date"], params["max_taken_date"]) == ("2020-01-01 00:00:00", "2020-01-31 23:59:59")
    assert sorted(r["id"] for r in read_rows(out)) == ["6201", "6202"]


def test_bbox_without_words_or_dates_warns_about_flickrs_12_hour_rule(tmp_path):
    with FakeFlickr([FakePhoto(id="6100", title="x", lon=1, lat=1)]) as fake:
        result = invoke(fake, "--bbox", "0,0,2,2", "--out", tmp_path / "geo", *FAST)
    assert result.exit_code == 0 and "last 12 hours" in result.stdout


def test_bad_key_is_a_one_line_error_that_never_shows_the_key(tmp_path):
    with FakeFlickr(catalogue()) as fake:
        wrong = "my-wrong-secret-key-42"
        result = invoke(fake, "--text", "fox", "--out", tmp_path / "x", *FAST, key=wrong)
        assert_one_line_error(result, "code 100", "FLICKR_API_KEY", "Invalid API Key")
        assert wrong not in result.output and len(fake.api_calls) == 1  # not retried
        missing = invoke(fake, "--text", "fox", "--out", tmp_path / "y", *FAST, key="")
        assert_one_line_error(missing, "FLICKR_API_KEY is not set")


def test_api_that_stays_down_stops_with_one_line_and_no_key(tmp_path):
    with FakeFlickr(catalogue()) as fake:
        fake.api_faults += [500] * 3
        result = invoke(fake, "--text", "fox", "--out", tmp_path / "x", "--retries", "2", *FAST)
        assert_one_line_error(result, "HTTP 500 (3 tries)", "run the same command later")
        assert fake.api_key not in result.output


def test_the_api_key_is_never_written_or_printed(tmp_path):
    photos = catalogue()
    out = tmp_path / "foxes"
    with FakeFlickr(photos, api_key="s3cr3t+key/with=odd&chars") as fake:
        fake.api_faults += [500, ("stat", 10)]
        fake.photo_faults["1000"] = [404]
        result = invoke(fake, "--text", "fox", "--out", out, *FAST)
        assert result.exit_code == 1, result.output  # the 404 is a failed download
        assert fake.api_calls[-1][1]["api_key"] == fake.api_key  # it did reach the server
        secrets = [fake.api_key.encode(), b"s3cr3t"]
    assert all(s not in result.output.encode() for s in secrets)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"photos.csv", ".vislab-collect.jsonl"}
    for path in files:
        assert all(s not in path.read_bytes() for s in secrets), path


def test_a_query_flickr_refuses_is_skipped_and_the_others_run(tmp_path):
    photos = catalogue()
    with FakeFlickr(photos) as fake:
        # An empty search has no limiting parameter: Flickr answers stat fail, code 3.
        opts = FlickrOptions(queries=["", "owl"], rate=1e7, retry=RetryPolicy(backoff=0.01), api_url=fake.api_url)
        tally = collect_flickr(opts, tmp_path / "out", fake.api_key)
    assert tally.refused == [("", "code 3: Parameterless searches have been disabled. Please use flickr.photos.getRecent instead.")]
    assert tally.saved == 3 and not tally.failed


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--text", "fox", "--bbox", "1,2,3"], ["--bbox '1,2,3'", "MIN_LON,MIN_LAT,MAX_LON,MAX_LAT"]),
        (["--text", "fox", "--bbox", "10,50,5,60"], ["south-west"]),
        (["--text", "fox", "--bbox", "0,95,1,96"], ["latitudes -90..90"]),
        (["--text", "fox", "--license", "4,99"], ["--license '99'", "9 Public Domain Dedication (CC0)"]),
        (["--text", "fox", "--min-size", "big"], ["--min-size", "WIDTHxHEIGHT"]),
        (["--text", "fox", "--taken-after", "yesterday"], ["--taken-after 'yesterday'", "YYYY-MM-DD"]),
        (["--text", "fox", "--per-page", "900"], ["--per-page 900"]),
        (["--text", "fox", "--sort", "newest"], ["--sort 'newest'", "relevance"]),
        (["--text", "fox", "--queries", "q.txt"], ["--text or --queries"]),
        ([], ["--text WORDS, --queries FILE or --bbox"]),
        (["--queries", "missing.txt"], ["missing.txt does not exist"]),
        (["--text", "fox", "--label", "birds/fox"], ["--label 'birds/fox'", "path separator"]),
        (["--text", "fox", "--label", "red\nfox"], ["--label 'red\\x0afox'", "control character"]),
        (["--text", "fox", "--timeout", "inf"], ["--timeout inf", "above 0, at most 86400"]),
        (["--text", "fox", "--timeout", "1e300"], ["--timeout 1e+300"]),
        (["--text", "fox", "--timeout", "nan"], ["--timeout nan"]),
        (["--text", "fox", "--backoff", "nan"], ["--backoff nan"]),
        (["--text", "fox", "--rate", "nan"], ["--rate nan", "at least 1"]),
        (["--text", "fox", "--rate", "inf"], ["--rate inf"]),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, args, needles):
    with FakeFlickr([]) as fake:
        result = invoke(fake, *args, "--out", tmp_path / "x")
        assert_one_line_error(result, *needles)
        assert fake.api_calls == []


def test_journal_records_photos_and_the_finished_query(tmp_path):
    out = tmp_path / "foxes"
    with FakeFlickr(catalogue()) as fake:
        assert invoke(fake, "--text", "fox", "--per-page", "5", "--out", out, *FAST).exit_code == 0
    events = [json.loads(line) for line in (out / ".vislab-collect.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "query" and kinds.count("photo") == 8


def test_a_rerun_retries_a_failed_photo_after_earlier_results_drop_out(tmp_path):
    # 1007 fails on page 2 (1006-1010); before the rerun 1002 and 1003 leave the results, so
    # 1007 moves onto page 1, a page the first run had read and finished.
    photos = [FakePhoto(id=str(1000 + i), title="fox", seed=i) for i in range(1, 13)]
    out = tmp_path / "foxes"
    args = ["--text", "fox", "--per-page", "5", "--retries", "0", "--out", out, *FAST]
    with FakeFlickr(photos) as fake:
        fake.photo_faults["1007"] = [500]
        first = invoke(fake, *args)
        assert first.exit_code == 1 and "1 download(s) failed" in first.stderr, first.output
        fake.photos[:] = [p for p in photos if p.id not in ("1002", "1003")]
        again = invoke(fake, *args)
        assert again.exit_code == 0, again.output
        assert "1 new, 9 already here" in again.stdout
        assert fake.photo_hits["1007"] == 2 and set(fake.photo_hits.values()) <= {1, 2}
        assert kept_files(out)["1007.jpg"] == fake.image_bytes("1007")
        assert "1007" in {r["id"] for r in read_rows(out)}
        third = invoke(fake, *args)
    assert third.exit_code == 0 and "complete in an earlier run" in third.stdout


def test_a_rerun_with_another_min_size_fetches_what_now_qualifies(tmp_path):
    photos = [FakePhoto(id="1", title="fox", width=64, height=40, seed=1), FakePhoto(id="2", title="fox", width=24, height=16, seed=2)]
    out = tmp_path / "foxes"
    with FakeFlickr(photos) as fake:
        first = invoke(fake, "--text", "fox", "--min-size", "48x30", "--out", out, *FAST)
        assert first.exit_code == 0 and [r["id"] for r in read_rows(out)] == ["1"], first.output
        again = invoke(fake, "--text", "fox", "--out", out, *FAST)
        assert again.exit_code == 0, again.output
        assert "complete in an earlier run" not in again.stdout and "1 new, 1 already here" in again.stdout
        assert [r["id"] for r in read_rows(out)] == ["1", "2"] and dict(fake.photo_hits) == {"1": 1, "2": 1}


def test_a_rerun_with_another_label_is_refused_before_any_request(tmp_path):
    photos = [FakePhoto(id="1", title="fox", seed=1), FakePhoto(id="2", title="owl", seed=2)]
    out = tmp_path / "animals"
    with FakeFlickr(photos) as fake:
        assert invoke(fake, "--text", "fox", "--out", out, *FAST).exit_code == 0
        calls = len(fake.api_calls)
        relabel = invoke(fake, "--text", "fox", "--label", "fox", "--out", out, *FAST)
        assert_one_line_error(relabel, "--label 'fox': query 'fox'", "with label ''", "--label-column query")
        assert len(fake.api_calls) == calls and [r["label"] for r in read_rows(out)] == [""]
        # Another search into the same folder takes its own label.
        owls = invoke(fake, "--text", "owl", "--label", "owl", "--out", out, *FAST)
        assert owls.exit_code == 0, owls.output
    assert [(r["id"], r["label"]) for r in read_rows(out)] == [("1", ""), ("2", "owl")]
