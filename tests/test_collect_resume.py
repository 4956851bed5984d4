"""A collect killed (kill -9) or interrupted (Ctrl-C) mid-run continues with the same
command, never fetching a finished file again; the folder's files stay consistent."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.collect.http import Download
from vislab.collect.store import JOURNAL_NAME, LOCK_NAME, Store
from vislab.data.photos import PHOTOS_NAME
from vislab.errors import VislabError
from vislab.testing.flickr import FakeFlickr, FakePhoto

runner = CliRunner()
N = 40


def photos() -> list[FakePhoto]:
    return [FakePhoto(id=str(7000 + i), title="pelican", seed=500 + i) for i in range(N)]


def command(fake: FakeFlickr, out: Path) -> list[str]:
    return ["collect", "flickr", "--text", "pelican", "--out", str(out), "--api-url", fake.api_url,
            "--rate", "10000000", "--per-page", "10", "--workers", "2"]


def rows(out: Path) -> list[dict[str, str]]:
    try:
        with open(out / PHOTOS_NAME, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (FileNotFoundError, csv.Error):
        return []


def start_and_stop(fake: FakeFlickr, out: Path, sig: int, after_rows: int) -> tuple[subprocess.Popen, str]:
    """Run a real `vislab collect` process and send it `sig` once `after_rows` are done."""
    env = dict(os.environ, FLICKR_API_KEY=fake.api_key)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vislab.cli", *command(fake, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job starts with SIGINT ignored, and Python keeps it so: give the
        # child a terminal's default, as a user pressing Ctrl-C has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while len(rows(out)) < after_rows:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "collect made no progress"
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped; slow the fake down"
    proc.send_signal(sig)
    proc.signalled_at = time.monotonic()
    _, err = proc.communicate(timeout=60)
    return proc, err


def finished(out: Path) -> set[str]:
    return {p.stem for p in (out / "images").iterdir() if not p.name.startswith(".")}


def check_complete(fake: FakeFlickr, out: Path) -> None:
    table = rows(out)
    assert sorted(r["id"] for r in table) == [p.id for p in photos()]
    for row in table:
        data = (out / row["file"]).read_bytes()
        assert data == fake.image_bytes(row["id"]) and row["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{p.id}.jpg" for p in photos())


def test_kill_9_mid_run_then_the_same_command_fetches_only_the_rest(tmp_path):
    out = tmp_path / "pelicans"
    with FakeFlickr(photos(), download_delay=0.1) as fake:
        proc, _ = start_and_stop(fake, out, signal.SIGKILL, after_rows=8)
        assert proc.returncode == -signal.SIGKILL
        done_at_kill = finished(out)
        assert 8 <= len(done_at_kill) < N
        fake.download_delay = 0.0

        result = runner.invoke(app, command(fake, out), env={"FLICKR_API_KEY": fake.api_key})
        assert result.exit_code == 0, result.output
        check_complete(fake, out)
        for pid in done_at_kill:
            assert fake.photo_hits[pid] == 1, pid  # finished before the kill: never fetched again
        # Only the downloads in flight at the kill (at most one per worker) were fetched twice.
        assert sum(fake.photo_hits.values()) <= N + 2
        assert f"{N - len(done_at_kill)} new" in result.stdout


def test_ctrl_c_stops_at_once_cleans_up_and_the_same_command_continues(tmp_path):
    out = tmp_path / "pelicans"
    with FakeFlickr(photos(), download_delay=0.1) as fake:
        proc, err = start_and_stop(fake, out, signal.SIGINT, after_rows=4)
        assert proc.returncode == 130, err
        assert "interrupted" in err and "run the same command again to continue" in err
        assert "Traceback" not in err
        assert not [p for p in (out / "images").iterdir() if p.name.startswith(".")]  # temporary files removed
        done = finished(out)
        assert {r["id"] for r in rows(out)} == done
        fake.download_delay = 0.0

        result = runner.invoke(app, command(fake, out), env={"FLICKR_API_KEY": fake.api_key})
        assert result.exit_code == 0, result.output
        check_complete(fake, out)
        assert all(fake.photo_hits[pid] == 1 for pid in done)


def test_ctrl_c_does_not_wait_for_a_slow_server(tmp_path):
    out = tmp_path / "slow"
    with FakeFlickr(photos(), download_delay=0.1) as fake:
        for p in photos()[4:]:
            fake.photo_faults[p.id] = [("slow", 30.0)]
        proc, err = start_and_stop(fake, out, signal.SIGINT, after_rows=4)
        stopped = time.monotonic()
        assert proc.returncode == 130, err
        # The slow downloads wait 30 s (the client timeout too): cut, not waited for.
        assert stopped - proc.signalled_at < 15
        assert not [p for p in (out / "images").iterdir() if p.name.startswith(".")]


def _download(folder: Path, data: bytes) -> Download:
    tmp = folder / ".vislab-test.part"
    tmp.write_bytes(data)
    return Download(tmp, hashlib.sha256(data).hexdigest(), len(data), "image/jpeg", data[:16])


def test_torn_journal_and_csv_lines_are_repaired_from_the_journal(tmp_path):
    with Store(tmp_path) as store:
        store.commit("k1", _download(store.images, b"\xff\xd8\xff one"), "one", ".jpg", {"id": "1", "title": "a,\nb"})
        store.commit("k2", _download(store.images, b"\xff\xd8\xff two"), "two", ".jpg", {"id": "2"})
    good_csv = (tmp_path / PHOTOS_NAME).read_bytes()
    # A kill mid-append: half a journal line, and a photos.csv missing its last row.
    with open(tmp_path / JOURNAL_NAME, "a") as fh:
        fh.write('{"event": "photo", "key": "k3", "ro')
    (tmp_path / PHOTOS_NAME).write_bytes(good_csv[: good_csv.rindex(b"\n", 0, -1) + 1] + b"2,url,,,")
    (tmp_path / "images" / ".vislab-stale.part").write_bytes(b"half")
    with Store(tmp_path) as store:
        assert store.status("k1") and store.status("k2") and store.status("k3") is None
        assert [r["id"] for r in store.rows] == ["1", "2"]
    assert (tmp_path / PHOTOS_NAME).read_bytes() == good_csv
    assert (tmp_path / JOURNAL_NAME).read_text().endswith("}\n")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["one.jpg", "two.jpg"]


def test_an_edited_photos_csv_is_refused_never_overwritten(tmp_path):
    with Store(tmp_path) as store:
        store.commit("k1", _download(store.images, b"\xff\xd8\xff one"), "one", ".jpg", {"id": "1", "title": "old"})
    edited = (tmp_path / PHOTOS_NAME).read_text().replace("old", "my better title")
    (tmp_path / PHOTOS_NAME).write_text(edited)
    with pytest.raises(VislabError, match="does not match collect's journal"):
        Store(tmp_path)
    assert (tmp_path / PHOTOS_NAME).read_text() == edited
    with open(tmp_path / LOCK_NAME) as fh:  # the refused Store let go of its lock
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_finished_file_the_journal_missed_is_kept_once_its_bytes_are_fetched_again(tmp_path):
    """A kill between the rename into images/ and the journal line: no file is claimed on
    its name alone, so the photo is fetched again, and the same bytes keep the file."""
    out = tmp_path / "pelicans"
    with FakeFlickr(photos()[:3]) as fake:
        (out / "images").mkdir(parents=True)
        (out / "images" / "7001.jpg").write_bytes(fake.image_bytes("7001"))
        result = runner.invoke(app, command(fake, out), env={"FLICKR_API_KEY": fake.api_key})
        assert result.exit_code == 0, result.output
        assert dict(fake.photo_hits) == {"7000": 1, "7001": 1, "7002": 1}
        assert sorted(r["id"] for r in rows(out)) == ["7000", "7001", "7002"]
        assert sorted(p.name for p in (out / "images").iterdir()) == ["7000.jpg", "7001.jpg", "7002.jpg"]
        assert "2 new, 1 already here" in result.stdout


def _three_photo_journal(folder: Path) -> bytes:
    with Store(folder) as store:
        for n in range(3):
            store.commit(f"k{n}", _download(store.images, b"\xff\xd8\xff %d" % n), f"p{n}", ".jpg", {"id": str(n)})
    return (folder / JOURNAL_NAME).read_bytes()


def test_a_damaged_journal_line_before_the_last_stops_the_run_and_keeps_the_file(tmp_path):
    lines = _three_photo_journal(tmp_path).splitlines(keepends=True)
    damaged = b"x" * (len(lines[0]) - 1) + b"\n" + b"".join(lines[1:])
    (tmp_path / JOURNAL_NAME).write_bytes(damaged)
    with pytest.raises(VislabError, match=f"{tmp_path / JOURNAL_NAME}: line 1 is damaged") as err:
        Store(tmp_path)
    assert "\n" not in str(err.value)
    assert (tmp_path / JOURNAL_NAME).read_bytes() == damaged


@pytest.mark.parametrize(
    "line, needle",
    [('{"event": "photo", "key": "x"}', "without its 'row' field"),
     ('{"event": "query", "query": 7}', "'query' is 7, not text"),
     ('{"event": "duplicate", "key": 5}', "'key' is 5, not text")],
)
def test_a_journal_line_with_a_missing_or_wrong_field_is_a_one_line_error(tmp_path, line, needle):
    journal = _three_photo_journal(tmp_path).replace(b"\n", b"\n" + line.encode() + b"\n", 1)
    (tmp_path / JOURNAL_NAME).write_bytes(journal)
    with pytest.raises(VislabError, match="line 2 is damaged") as err:
        Store(tmp_path)
    assert needle in str(err.value)
    assert (tmp_path / JOURNAL_NAME).read_bytes() == journal


def test_a_second_collect_into_the_same_folder_is_refused(tmp_path):
    with FakeFlickr(photos()[:2]) as fake, Store(tmp_path / "busy"):
        result = runner.invoke(app, command(fake, tmp_path / "busy"), env={"FLICKR_API_KEY": fake.api_key})
        assert result.exit_code == 2, result.output
        assert "another `vislab collect` is writing there" in result.stderr
        assert fake.api_calls == []
