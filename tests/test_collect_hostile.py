"""`vislab collect` against servers that misbehave: odd ids, repeated photos, non-http URLs,
endless or trickling bodies, odd text. Every server is a loopback one the test scripts."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.collect.http import Client, Download, Failed, RetryPolicy
from vislab.collect.store import JOURNAL_NAME, Store
from vislab.errors import VislabError
from vislab.testing.images import smooth_image

runner = CliRunner()
Route = Callable[[BaseHTTPRequestHandler], None]
API = "/services/rest/"


class Server:
    """A loopback HTTP server: `routes[path](handler)` answers a GET of `path` (the query
    string stays in `handler.path`); `hits` counts requests per path."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.hits: Counter[str] = Counter()

    def __enter__(self) -> Server:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                server.hits[path] += 1
                route = server.routes.get(path)
                try:
                    route(self) if route else self.send_error(404)
                except OSError:  # the client gave up: that is what some tests want
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"


def send(h: BaseHTTPRequestHandler, body: bytes, content_type: str = "application/json", length: object = None) -> None:
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body) if length is None else length))
    h.end_headers()
    h.wfile.write(body)


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    smooth_image(seed, (32, 24)).save(buf, "JPEG")
    return buf.getvalue()


def image(data: bytes) -> Route:
    return lambda h: send(h, data, "image/jpeg")


def search(*pages: list[Any], total: int | None = None) -> Route:
    """flickr.photos.search answering page n with `pages[n-1]` (the last one past the end)."""

    def route(h: BaseHTTPRequestHandler) -> None:
        n = int(dict(parse_qsl(urlsplit(h.path).query)).get("page", 1))
        photos = {"page": n, "pages": len(pages), "total": total or sum(map(len, pages)), "photo": pages[min(n, len(pages)) - 1]}
        send(h, json.dumps({"stat": "ok", "photos": photos}).encode())

    return route


def entry(pid: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": pid, "url_o": url, "license": "4", "title": f"photo {pid}", **extra}


def collect(server: Server, out: Path, *args: str):
    command = ["collect", "flickr", "--text", "x", "--out", str(out), "--api-url", server.url(API)]
    return runner.invoke(app, [*command, "--rate", "10000000", "--backoff", "0.01", *args], env={"FLICKR_API_KEY": "k"})


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "photos.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def journal_photos(out: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()]
    return [e for e in events if e["event"] == "photo"]


def client(retries: int = 0, timeout: float = 5.0) -> Client:
    return Client(RetryPolicy(retries=retries, backoff=0.01, timeout=timeout))


def part(folder: Path, data: bytes, name: str) -> Download:
    tmp = folder / f".vislab-{name}.part"
    tmp.write_bytes(data)
    return Download(tmp, hashlib.sha256(data).hexdigest(), len(data), "image/jpeg", data[:16])


# ---------------------------------------------------------------- one photo, one file, one row


def test_ids_that_sanitise_to_one_name_each_keep_their_own_file(tmp_path):
    ids = ["a/b", "a_b", "é", "ü"]
    data = {pid: jpeg(i) for i, pid in enumerate(ids)}
    routes = {f"/img/{i}.jpg": image(data[pid]) for i, pid in enumerate(ids)}
    with Server(routes) as server:
        server.routes[API] = search([entry(pid, server.url(f"/img/{i}.jpg")) for i, pid in enumerate(ids)])
        result = collect(server, tmp_path / "out")
    assert result.exit_code == 0, result.output
    table = rows(tmp_path / "out")
    assert sorted(r["id"] for r in table) == sorted(ids) and len({r["file"] for r in table}) == 4
    for row in table:  # each row describes the bytes in its own file
        assert (tmp_path / "out" / row["file"]).read_bytes() == data[row["id"]]
        assert row["sha256"] == hashlib.sha256(data[row["id"]]).hexdigest()
    assert "a_b.jpg" in {Path(r["file"]).name for r in table}  # an already-safe id keeps its plain name


def test_store_never_replaces_a_file_nor_records_a_key_twice(tmp_path):
    with Store(tmp_path) as store:
        store.commit("k1", part(store.images, jpeg(1), "1"), "same", ".jpg", {"id": "1"})
        with pytest.raises(Failed, match="already holds another photo"):
            store.commit("k2", part(store.images, jpeg(2), "2"), "same", ".jpg", {"id": "2"})
        with pytest.raises(Failed, match="already recorded"):
            store.commit("k1", part(store.images, jpeg(3), "3"), "other", ".jpg", {"id": "1"})
    assert (tmp_path / "images" / "same.jpg").read_bytes() == jpeg(1)
    assert [r["id"] for r in rows(tmp_path)] == ["1"] and len(journal_photos(tmp_path)) == 1


def test_an_id_listed_twice_on_a_page_is_fetched_once_and_the_folder_stays_resumable(tmp_path):
    out = tmp_path / "out"
    with Server({"/img/1.jpg": image(jpeg(1)), "/img/2.jpg": image(jpeg(2))}) as server:
        server.routes[API] = search([entry("5", server.url("/img/1.jpg")), entry("5", server.url("/img/2.jpg"))])
        result = collect(server, out, "--workers", "2")
        assert result.exit_code == 0, result.output
        assert [r["id"] for r in rows(out)] == ["5"] and len(journal_photos(out)) == 1
        assert (out / rows(out)[0]["file"]).read_bytes() == jpeg(1)
        assert server.hits["/img/2.jpg"] == 0
        again = collect(server, out)
    assert again.exit_code == 0, again.output


def test_photos_repeated_on_later_pages_count_as_repeats_not_kept(tmp_path):
    out = tmp_path / "out"
    routes = {f"/img/{c}.jpg": image(jpeg(i)) for i, c in enumerate("ABCD")}
    with Server(routes) as server:
        a, b, c, d = (entry(x, server.url(f"/img/{x}.jpg")) for x in "ABCD")
        server.routes[API] = search([a, b], [a, b], [c, d])
        result = collect(server, out, "--per-page", "2", "--per-query", "4")
    assert result.exit_code == 0, result.output
    assert sorted(r["id"] for r in rows(out)) == ["A", "B", "C", "D"]
    assert "4 new, 0 already here" in result.stdout and "2 listed again" in result.stdout


def test_null_fields_are_empty_and_a_photo_without_an_id_is_skipped(tmp_path):
    out = tmp_path / "out"
    with Server({"/img/1.jpg": image(jpeg(1)), "/img/2.jpg": image(jpeg(2))}) as server:
        nulls = entry("1", server.url("/img/1.jpg"), title=None, ownername=None, datetaken=None, originalformat=None)
        server.routes[API] = search([nulls, {**entry("2", server.url("/img/2.jpg")), "id": None}])
        result = collect(server, out)
    assert result.exit_code == 0, result.output
    assert "1 without an id" in result.stdout and server.hits["/img/2.jpg"] == 0
    row = rows(out)[0]
    assert (row["title"], row["owner_name"], row["date_taken"]) == ("", "", "")
    assert sorted(p.name for p in (out / "images").iterdir()) == ["1.jpg"]


# ---------------------------------------------------------------- only http(s)


def test_file_and_ftp_originals_are_never_fetched(tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg(9))
    out = tmp_path / "out"
    with Server({"/img/1.jpg": image(jpeg(1))}) as server:
        server.routes[API] = search(
            [entry("1", secret.as_uri()), entry("2", "ftp://127.0.0.1:9/x.jpg"), entry("3", "5"),
             entry("4", [server.url("/img/1.jpg")]), entry("6", server.url("/img/1.jpg"))]
        )
        result = collect(server, out)
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in rows(out)] == ["6"]
    assert "4 with an original URL that is not http(s)" in result.stdout


@pytest.mark.parametrize("url", ["file", "ftp://127.0.0.1:9/x.jpg", "5", "http://[::1/x.jpg"])
def test_the_client_refuses_what_is_not_an_http_url(tmp_path, url):
    local = tmp_path / "local.jpg"
    local.write_bytes(jpeg(1))
    (tmp_path / "dest").mkdir()
    with pytest.raises(Failed, match="not an http\\(s\\) URL|not a usable URL"):
        client(retries=2).download(local.as_uri() if url == "file" else url, tmp_path / "dest", 1 << 20, "x")
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_redirect_to_ftp_is_refused_not_followed_or_retried(tmp_path):
    def redirect(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", "ftp://127.0.0.1:9/x.jpg")
        h.send_header("Content-Length", "0")
        h.end_headers()

    with Server({"/r.jpg": redirect}) as server:
        with pytest.raises(Failed, match="redirect to a ftp URL refused"):
            client(retries=2).download(server.url("/r.jpg"), tmp_path, 1 << 20, "x")
        assert server.hits["/r.jpg"] == 1


# ---------------------------------------------------------------- bounded in size and time


def test_an_endless_api_body_is_cut_at_the_size_limit():
    def endless(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.end_headers()
        h.wfile.write(b'{"photos": "')
        for _ in range(1024):  # 64 MiB at most, so the old client ends too
            h.wfile.write(b"x" * (1 << 16))

    with Server({API: endless}) as server:
        with pytest.raises(Failed, match="over 16 MiB"):
            client().get_json(server.url(API), {}, "search")


def test_a_deeply_nested_api_body_is_a_bad_response_not_a_crash():
    with Server({API: lambda h: send(h, b"[" * 200_000)}) as server:
        with pytest.raises(Failed, match="not JSON"):
            client().get_json(server.url(API), {}, "search")


def trickle(content_type: str) -> Route:
    """A byte every 50 ms, each in time for --timeout, the body never done within 10 s."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(200):
            h.wfile.write(b"[")
            h.wfile.flush()
            time.sleep(0.05)

    return route


def test_a_trickling_server_meets_the_whole_request_time_limit(tmp_path):
    with Server({"/slow.jpg": trickle("image/jpeg"), API: trickle("application/json")}) as server:
        slow = client(timeout=0.2)  # so at most 2 s a request
        start = time.monotonic()
        with pytest.raises(Failed, match="took over 2 s"):
            slow.download(server.url("/slow.jpg"), tmp_path, 1 << 20, "x")
        with pytest.raises(Failed, match="took over 2 s"):
            slow.get_json(server.url(API), {}, "search")
        assert time.monotonic() - start < 7
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- odd text


def test_a_carriage_return_in_a_title_keeps_the_folder_resumable(tmp_path):
    out = tmp_path / "out"
    with Server({"/img/1.jpg": image(jpeg(1))}) as server:
        server.routes[API] = search([entry("1", server.url("/img/1.jpg"), title="line1\r\nline2")])
        assert collect(server, out).exit_code == 0
        again = collect(server, out)
    assert again.exit_code == 0, again.output
    assert rows(out)[0]["title"] == "line1\r\nline2"


def test_terminal_controls_in_a_title_or_owner_are_dropped_the_rest_kept(tmp_path):
    out = tmp_path / "out"
    title = "Red \x1b[31mfox\x1b[0m\x1b[2J at =dusk\t[bold]\r\n\x9b6n"
    owner = "\x1b]8;;https://evil.example\x07Ann\x1b]8;;\x1b\\ \x1b]0;pwned\x07Lee\x07"
    with Server({"/img/1.jpg": image(jpeg(1))}) as server:
        server.routes[API] = search([entry("1", server.url("/img/1.jpg"), title=title, ownername=owner)])
        result = collect(server, out)
    assert result.exit_code == 0, result.output
    for row in (rows(out)[0], journal_photos(out)[0]["row"]):
        assert row["title"] == "Red fox at =dusk\t[bold]\r\n6n"  # photos.csv is read back: no quote added
        assert row["owner_name"] == "Ann Lee"


def test_a_lone_surrogate_in_the_api_json_is_saved_once_not_a_crash(tmp_path):
    out = tmp_path / "out"
    with Server({"/img/1.jpg": image(jpeg(1))}) as server:
        body = {"stat": "ok", "photos": {"page": 1, "pages": 1, "total": 1,
                                         "photo": [entry("1", server.url("/img/1.jpg"), title="bad \ud800 x")]}}
        server.routes[API] = lambda h: send(h, json.dumps(body).encode())  # "\ud800" escaped, as valid JSON allows
        result = collect(server, out)
        assert result.exit_code == 0, result.output
        again = collect(server, out)
        assert again.exit_code == 0 and server.hits["/img/1.jpg"] == 1, again.output
    assert rows(out)[0]["title"] == "bad \ufffd x"


def test_control_characters_from_a_server_are_not_printed_raw(tmp_path):
    def evil_404(h: BaseHTTPRequestHandler) -> None:
        h.send_response(404, "\x1b[2Jgone")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def refused(h: BaseHTTPRequestHandler) -> None:
        send(h, json.dumps({"stat": "fail", "code": 3, "message": "no\x1b]0;pwned\x07"}).encode())

    with Server({"/img/1.jpg": evil_404}) as server:
        server.routes[API] = search([entry("1", server.url("/img/1.jpg"))])
        failed = collect(server, tmp_path / "a")
        server.routes[API] = refused
        refusal = collect(server, tmp_path / "b")
    assert failed.exit_code == 1 and "HTTP 404" in failed.stdout and "\x1b" not in failed.output
    assert refusal.exit_code == 1 and "code 3" in refusal.stdout and "\x1b" not in refusal.output


# ---------------------------------------------------------------- malformed answers


def test_non_dict_photo_entries_are_skipped_and_a_non_list_photo_is_a_one_line_error(tmp_path):
    with Server({"/img/1.jpg": image(jpeg(1))}) as server:
        server.routes[API] = search([1, "x", [2], entry("1", server.url("/img/1.jpg"))])
        result = collect(server, tmp_path / "a")
        assert result.exit_code == 0, result.output
        assert "3 malformed in the search results" in result.stdout and [r["id"] for r in rows(tmp_path / "a")] == ["1"]
        server.routes[API] = lambda h: send(h, json.dumps({"stat": "ok", "photos": {"photo": "abc"}}).encode())
        bad = collect(server, tmp_path / "b", "--retries", "1")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert len(bad.stderr.strip().splitlines()) == 1 and "photo list is not a list" in bad.stderr


def test_a_negative_content_length_is_ignored(tmp_path):
    with Server({"/img/1.jpg": lambda h: send(h, jpeg(1), "image/jpeg", length=-5)}) as server:
        got = client().download(server.url("/img/1.jpg"), tmp_path, 1 << 20, "x")
    assert got.path.read_bytes() == jpeg(1)


def test_saved_images_get_the_usual_file_mode(tmp_path):
    out = tmp_path / "out"
    with Server({"/img/1.jpg": image(jpeg(1))}) as server:
        server.routes[API] = search([entry("1", server.url("/img/1.jpg"))])
        assert collect(server, out).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert (out / rows(out)[0]["file"]).stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- the output folder


def test_a_full_disk_while_the_journal_is_written_does_not_break_closing(tmp_path):
    store = Store(tmp_path)
    store._journal.close()
    store._journal = open("/dev/full", "w", encoding="utf-8")  # every flush: ENOSPC
    with pytest.raises(OSError):
        store.commit("k1", part(store.images, jpeg(1), "1"), "one", ".jpg", {"id": "1"})
    store.close()  # the same unflushed bytes again: must not raise


def test_an_unwritable_out_is_a_one_line_error(tmp_path):
    with pytest.raises(VislabError, match="cannot write"):
        Store("/sys/vislab-collect-test")
    urls = tmp_path / "urls.txt"
    urls.write_text("http://example.org/a.jpg\n")
    result = runner.invoke(app, ["collect", "urls", str(urls), "--out", "/sys/vislab-collect-test"])
    assert result.exit_code == 2 and "cannot write" in result.stderr and "Traceback" not in result.output


def test_a_broken_ipv6_url_in_a_list_is_a_one_line_error(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://[::1/x.jpg\n")
    result = runner.invoke(app, ["collect", "urls", str(urls), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and f"{urls}:1" in result.stderr and "not an http(s) URL" in result.stderr


def test_the_users_own_files_in_images_are_never_claimed_nor_touched(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    mine = io.BytesIO()
    smooth_image(7, (64, 48)).save(mine, "JPEG")
    (out / "images" / "3.jpg").write_bytes(mine.getvalue())
    (out / "images" / "1.txt").write_text("my private notes\n")
    with Server({"/img/1.jpg": image(jpeg(1)), "/img/3.jpg": image(jpeg(3))}) as server:
        server.routes[API] = search([entry(p, server.url(f"/img/{p}.jpg")) for p in ("1", "3")])
        result = collect(server, out)
    assert result.exit_code == 1, result.output
    assert "images/3.jpg is a file collect did not write" in result.stdout and "1 new, 0 already here" in result.stdout
    assert [(r["id"], r["file"]) for r in rows(out)] == [("1", "images/1.jpg")]
    assert (out / "images" / "1.jpg").read_bytes() == jpeg(1)
    assert (out / "images" / "3.jpg").read_bytes() == mine.getvalue()
    assert (out / "images" / "1.txt").read_text() == "my private notes\n"


def test_a_file_holding_the_photos_own_bytes_is_kept_once_not_saved_twice(tmp_path):
    """A kill between the rename into images/ and the journal line: the next run fetches
    the photo again, finds the same bytes under its name, and records that file."""
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "1.jpg").write_bytes(jpeg(1))
    with Server({"/img/1.jpg": image(jpeg(1)), "/img/2.jpg": image(jpeg(2))}) as server:
        server.routes[API] = search([entry(p, server.url(f"/img/{p}.jpg")) for p in ("1", "2")])
        result = collect(server, out)
    assert result.exit_code == 0, result.output
    assert "1 new, 1 already here" in result.stdout
    assert sorted(r["file"] for r in rows(out)) == ["images/1.jpg", "images/2.jpg"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["1.jpg", "2.jpg"]


# ---------------------------------------------------------------- only whole images are kept


def raw(head: bytes, body: bytes) -> Route:
    """An HTTP/1.0 answer written by hand: `head` is the header lines, the connection
    closes after `body` (with no Content-Length, the end of the body is all the client sees)."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.0 200 OK\r\n" + head + b"\r\n" + body)

    return route


def test_cut_html_and_compressed_bodies_are_never_kept_and_a_typeless_jpeg_is(tmp_path):
    whole = jpeg(5)
    routes = {
        "/cut.jpg": raw(b"Content-Type: image/jpeg\r\n", whole[: len(whole) // 2]),
        "/page.jpg": raw(b"Content-Type: application/octet-stream\r\n", b"<html><body>Rate limit exceeded</body></html>"),
        "/gz.jpg": raw(b"Content-Type: image/jpeg\r\nContent-Encoding: gzip\r\n", gzip.compress(whole)),
        "/notype.jpg": raw(b"", whole),
    }
    listing = tmp_path / "urls.txt"
    out = tmp_path / "out"
    with Server(routes) as server:
        listing.write_text("".join(server.url(p) + "\n" for p in routes))
        args = ["collect", "urls", str(listing), "--out", str(out), "--retries", "1", "--backoff", "0.01", "--workers", "1"]
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "1 new, 0 already here" in result.stdout and "3 failed" in result.stdout
        assert "not a whole image (truncated image" in result.stdout
        assert "not an image: the server sent application/octet-stream" in result.stdout
        assert "gzip-encoded although asked not to" in result.stdout
        assert [(r["url"], r["width"], r["height"]) for r in rows(out)] == [(server.url("/notype.jpg"), "32", "24")]
        assert (out / rows(out)[0]["file"]).read_bytes() == whole
        assert [p.name for p in (out / "images").iterdir()] == [Path(rows(out)[0]["file"]).name]
        assert (server.hits["/cut.jpg"], server.hits["/page.jpg"], server.hits["/gz.jpg"]) == (2, 1, 1)
        again = runner.invoke(app, args)  # nothing broken was journalled as done: tried again
        assert again.exit_code == 1 and "0 new, 1 already here" in again.stdout
        assert server.hits["/cut.jpg"] == 4 and server.hits["/notype.jpg"] == 1


def test_sizes_in_photos_csv_are_measured_never_the_apis_claim(tmp_path):
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)  # a format Pillow does not read
    with Store(tmp_path) as store:
        download = part(store.images, heic, "h")
        store.commit("k1", download, "one", ".heic", {"id": "1", "width": "4000", "height": "3000"})
    assert (rows(tmp_path)[0]["width"], rows(tmp_path)[0]["height"]) == ("", "")


def test_a_control_character_in_a_url_is_refused_at_once_and_other_scripts_are_encoded(tmp_path):
    with Server({"/%E6%97%A5%E6%9C%AC.jpg": image(jpeg(1))}) as server:
        got = client().download(server.url("/日本.jpg"), tmp_path, 1 << 20, "x")
        assert got.path.read_bytes() == jpeg(1)
        got.path.unlink()
        start = time.monotonic()
        with pytest.raises(Failed, match="not a usable URL"):
            client(retries=3).download(server.url("/a\tb.jpg"), tmp_path, 1 << 20, "x")
        assert time.monotonic() - start < 1 and sum(server.hits.values()) == 1
    listing = tmp_path / "urls.txt"
    listing.write_text("http://example.org/a\tb.jpg\n")
    result = runner.invoke(app, ["collect", "urls", str(listing), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and f"{listing}:1" in result.stderr and "not an http(s) URL" in result.stderr
