"""A loopback stand-in for the Flickr REST API and its photo servers, for `vislab collect` tests.

`FakeFlickr(photos)` serves on 127.0.0.1 (a free port), in threads:
- `/services/rest/?method=flickr.photos.search&...`: a fixed catalogue, honouring `api_key`,
  `text` (every word in the title or tags, '-word' excludes), `bbox`, `license`,
  `min_taken_date`/`max_taken_date` (MySQL datetimes, inclusive: a bare date is its
  midnight, as Flickr reads it), `sort` (upload order is id order), `per_page` (100 by
  default, at most 500, 250 for a bbox search) and `page`; only the first 4,000 results are
  served while `total` counts them all; extras `url_o`, `o_dims`, `license`, `owner_name`,
  `date_taken`, `original_format`. `stat: fail` 100 for a wrong key, 3 for a search with no
  limiting parameter, 112 for another method.
- `/photos/<id>_<secret>_o.<fmt>`: the photo's original, a small generated picture of its
  stated size (the same seed gives the same bytes: exact duplicates).

Faults are scripted and consumed one per request: `api_faults` (an HTTP status such as 500,
`("stat", code)`, or `("slow", seconds)`) and `photo_faults[id]` (a status, `"truncate"`:
the full Content-Length but half the body then a closed connection, `"drop"`: the
connection closed without a response, or `("slow", seconds)` before answering);
`download_delay` slows every photo response. Every request is recorded: `api_calls`
(monotonic time, parameters) and `photo_hits` (requests per photo id).
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from vislab.testing.images import smooth_image

API_PATH = "/services/rest/"
MAX_SERVED = 4000
MESSAGES = {
    3: "Parameterless searches have been disabled. Please use flickr.photos.getRecent instead.",
    10: "Sorry, the Flickr search API is not currently available.",
    100: "Invalid API Key (Key has invalid format)",
    105: "Service currently unavailable",
    112: "Method not found",
}


@dataclass(frozen=True)
class FakePhoto:
    """One photo of the catalogue; `width` x `height` is both what the API states and the
    size of the served picture (keep it small)."""

    id: str
    title: str = ""
    tags: tuple[str, ...] = ()
    license: int = 4
    width: int = 48
    height: int = 32
    owner: str = "12345678@N00"
    ownername: str = "Ada Lovelace"
    lon: float = 0.0
    lat: float = 0.0
    taken: str = "2020-01-01 12:00:00"
    seed: int = 0
    original: bool = True
    fmt: str = "jpg"


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


@dataclass
class FakeFlickr:
    photos: list[FakePhoto]
    api_key: str = "fake-key-0123456789abcdef"
    download_delay: float = 0.0
    api_faults: list[Any] = field(default_factory=list)
    photo_faults: dict[str, list[Any]] = field(default_factory=dict)
    api_calls: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    photo_hits: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._by_id = {p.id: p for p in self.photos}
        self._bytes: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first (use it as a context manager)"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PATH

    def photo_url(self, photo_id: str) -> str:
        p = self._by_id[photo_id]
        return f"{self.url}/photos/{p.id}_def_o.{p.fmt}"

    def __enter__(self) -> FakeFlickr:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------ content

    def image_bytes(self, photo_id: str) -> bytes:
        """The served bytes of a photo (generated once)."""
        with self._lock:
            if photo_id not in self._bytes:
                p = self._by_id[photo_id]
                buf = io.BytesIO()
                fmt = {"jpg": "JPEG", "png": "PNG", "gif": "GIF"}[p.fmt]
                smooth_image(p.seed, (p.width, p.height)).save(buf, fmt)
                self._bytes[photo_id] = buf.getvalue()
            return self._bytes[photo_id]

    def search(self, params: dict[str, str]) -> dict[str, Any]:
        """The JSON body flickr.photos.search would answer."""
        if params.get("api_key") != self.api_key:
            return _fail(100)
        if params.get("method") != "flickr.photos.search":
            return _fail(112)
        text = params.get("text", "").strip()
        bbox = params.get("bbox")
        after, before = params.get("min_taken_date"), params.get("max_taken_date")
        if not (text or bbox or after or before):
            return _fail(3)
        licenses = {int(x) for x in params["license"].split(",")} if params.get("license") else None
        box = [float(v) for v in bbox.split(",")] if bbox else None
        terms = text.lower().split()
        wanted = {w for w in terms if not w.startswith("-")}
        excluded = {w[1:] for w in terms if w.startswith("-")}

        def matches(p: FakePhoto) -> bool:
            hay = _words(p.title) | {t.lower() for t in p.tags}
            return (
                wanted <= hay
                and not excluded & hay
                and (licenses is None or p.license in licenses)
                and (box is None or (box[0] <= p.lon <= box[2] and box[1] <= p.lat <= box[3]))
                and (after is None or p.taken >= _datetime(after))
                and (before is None or p.taken <= _datetime(before))
            )

        found = sorted((p for p in self.photos if matches(p)), key=lambda p: int(p.id))
        if params.get("sort", "date-posted-desc").endswith("-desc"):
            found.reverse()
        per_page = max(1, min(int(params.get("per_page", 100)), 250 if box else 500))
        page = max(1, int(params.get("page", 1)))
        served = found[:MAX_SERVED]
        chunk = served[(page - 1) * per_page : page * per_page]
        extras = set(params.get("extras", "").split(","))
        return {
            "photos": {
                "page": page,
                "pages": math.ceil(len(found) / per_page),
                "perpage": per_page,
                "total": len(found),
                "photo": [self._entry(p, extras) for p in chunk],
            },
            "stat": "ok",
        }

    def _entry(self, p: FakePhoto, extras: set[str]) -> dict[str, Any]:
        e: dict[str, Any] = {"id": p.id, "owner": p.owner, "secret": "abc", "server": "65535", "farm": 66,
                             "title": p.title, "ispublic": 1, "isfriend": 0, "isfamily": 0}
        if "license" in extras:
            e["license"] = str(p.license)
        if "owner_name" in extras:
            e["ownername"] = p.ownername
        if "date_taken" in extras:
            e.update(datetaken=p.taken, datetakengranularity=0, datetakenunknown="0")
        if p.original:
            if "original_format" in extras:
                e.update(originalsecret="def", originalformat=p.fmt)
            if "o_dims" in extras:
                e.update(o_width=str(p.width), o_height=str(p.height))
            if "url_o" in extras:
                e.update(url_o=self.photo_url(p.id), width_o=p.width, height_o=p.height)
        return e

    def _next_fault(self, queue: list[Any] | None) -> Any:
        with self._lock:
            return queue.pop(0) if queue else None


def _datetime(value: str) -> str:
    """A taken-date bound as MySQL compares it: "2020-01-31" is "2020-01-31 00:00:00"."""
    return value if len(value) > 10 else f"{value} 00:00:00"


def _fail(code: int) -> dict[str, Any]:
    return {"stat": "fail", "code": code, "message": MESSAGES.get(code, "Error")}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out closed its end: nothing to report


class _Handler(BaseHTTPRequestHandler):
    fake: FakeFlickr

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == API_PATH:
            self._api(dict(parse_qsl(parts.query)))
        elif parts.path.startswith("/photos/"):
            self._photo(parts.path.rsplit("/", 1)[-1].split("_", 1)[0])
        else:
            self.send_error(404)

    def _send(self, status: int, body: bytes, content_type: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _api(self, params: dict[str, str]) -> None:
        fake = self.fake
        with fake._lock:
            fake.api_calls.append((time.monotonic(), params))
        fault = fake._next_fault(fake.api_faults)
        if isinstance(fault, tuple) and fault[0] == "slow":
            time.sleep(fault[1])
        elif isinstance(fault, int):
            self._send(fault, b"<html>server error</html>", "text/html")
            return
        body = _fail(fault[1]) if isinstance(fault, tuple) and fault[0] == "stat" else fake.search(params)
        self._send(200, json.dumps(body).encode(), "application/json")

    def _photo(self, photo_id: str) -> None:
        fake = self.fake
        with fake._lock:
            fake.photo_hits[photo_id] += 1
        photo = fake._by_id.get(photo_id)
        if photo is None or not photo.original:
            self.send_error(404)
            return
        fault = fake._next_fault(fake.photo_faults.get(photo_id))
        if fake.download_delay:
            time.sleep(fake.download_delay)
        if isinstance(fault, tuple) and fault[0] == "slow":
            time.sleep(fault[1])
        elif isinstance(fault, int):
            self.send_error(fault)
            return
        elif fault == "drop":
            self.close_connection = True
            return
        data = fake.image_bytes(photo_id)
        content_type = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif"}[photo.fmt]
        if fault == "truncate":
            self._send(200, data[: len(data) // 2], content_type, length=len(data))
            self.close_connection = True
            return
        self._send(200, data, content_type)
