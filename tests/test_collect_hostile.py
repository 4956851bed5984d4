"""`vislab collect` against servers that misbehave: odd ids, repeated photos, non-http URLs,
endless or trickling bodies, odd text. Every server is a loopback one the test scripts."""

from __future__ import annotations

import csv
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


def test_store_never_replaces_a_file_nor_records_a_key_twice(tmp_path):
    with Store(tmp_path) as store:
        store.commit("k1", part(store.images, jpeg(1), "1"), "same", ".jpg", {"id": "1"})
        with pytest.raises(Failed, match="already holds another photo"):
            store.commit("k2", part(store.images, jpeg(2), "2"), "same", ".jpg", {"id": "2"})
        with pytest.raises(Failed, match="already recorded"):
            store.commit("k1", part(store.images, jpeg(3), "3"), "other", ".jpg", {"id": "1"})
    assert (tmp_path / "images" / "same.jpg").read_bytes() == jpeg(1)
    assert [r["id"] for r in rows(tmp_path)] == ["1"] and len(journal_photos(tmp_path)) == 1


# ---------------------------------------------------------------- only http(s)


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


# ---------------------------------------------------------------- malformed answers


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
