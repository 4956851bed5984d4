"""One HTTP client for `vislab collect`: spaced, retrying, and never leaving half a file.

- API requests wait for their slot in a `RateLimiter` (evenly spaced, so a burst never
  spends an hour's allowance at once).
- A request that fails in a way a later try can fix (HTTP 5xx, 408, 429, a timeout, a
  refused or dropped connection, a body shorter than its Content-Length) is tried again
  after an exponential backoff with jitter (a `Retry-After` header is honoured); anything
  else fails at once with the reason.
- A download streams into a temporary file in the destination folder while it is hashed;
  it is returned only when every byte the server announced has arrived and is on disk
  (fsync), passes the caller's `check` (collect's: a whole, decodable image), and the
  temporary file is removed on every other path. A body the server compressed although
  asked not to (Content-Encoding) is refused: its bytes are not the file.
- Only http(s) is spoken, redirects included: a URL or redirect to file://, ftp:// or any
  other scheme is refused, so a search result cannot copy a local file into the folder.
- Every request has a whole-request time limit besides the per-read timeout, and an API
  body a size limit, so a server trickling bytes or sending an endless body cannot hold
  a run (or its memory) forever.

Standard library only (urllib): no HTTP client is a vislab dependency. Secrets (the API
key) are passed in so every message this module writes has them replaced by `***`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vislab import __version__
from vislab.fsguard import printable

USER_AGENT = f"vislab-collect/{__version__} (Python urllib)"
TEMP_PREFIX = ".vislab-"
TEMP_SUFFIX = ".part"
_CHUNK = 1 << 16
_RETRY_STATUS = {408, 425, 429}
_MAX_RETRY_AFTER = 600.0
_MAX_API_BYTES = 16 << 20
_SCHEMES = ("http", "https")
# Characters a URL path or query keeps as they are; everything else (non-ASCII text, spaces)
# is percent-encoded, as a browser sends it. "%" stays: an encoded URL is not encoded twice.
_URL_SAFE = "/:@!$&'()*+,;=-._~%?#[]"


class Retryable(Exception):
    """A failure a later try may not meet: the message says what happened."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Failed(Exception):
    """A request that will not succeed by trying again (or has run out of tries)."""


class Interrupted(Exception):
    """The run is stopping (Ctrl-C): a request in flight gives up and cleans up."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to try. `retries` counts the tries after the first;
    the n-th wait is `backoff * 2**n` capped at `max_delay`, of which a random half is
    jitter, so clients that failed together do not retry together."""

    retries: int = 5
    backoff: float = 1.0
    max_delay: float = 120.0
    timeout: float = 30.0

    @property
    def deadline(self) -> float:
        """Seconds one whole request may take: `timeout` only bounds each wait for data,
        so a server sending a byte now and then would never hit it."""
        return 10 * self.timeout

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        base = min(self.max_delay, self.backoff * 2**attempt)
        wait = base / 2 + random.uniform(0, base / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, _MAX_RETRY_AFTER))
        return wait


class RateLimiter:
    """At most `per_hour` requests an hour, evenly spaced: each caller waits for its slot.

    Slots are handed out under a lock, so threads sharing a limiter queue up rather than
    race; a caller that comes late does not earn a burst.
    """

    def __init__(self, per_hour: float) -> None:
        if per_hour <= 0:
            raise ValueError("per_hour must be positive")
        self.interval = 3600.0 / per_hour
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event | None = None) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        delay = slot - now
        if delay > 0:
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise Interrupted()


@dataclass(frozen=True)
class Download:
    """A complete download, fsynced in a temporary file the caller now owns."""

    path: Path
    sha256: str
    bytes: int
    content_type: str
    head: bytes


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def _describe(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        return "connection dropped"
    if isinstance(reason, http.client.IncompleteRead):
        return "connection dropped mid-body"
    if isinstance(reason, socket.gaierror):
        return "host not found"
    text = printable(str(reason).strip())
    return text or type(reason).__name__


def _content_length(headers: Any) -> int | None:
    value = headers.get("Content-Length")
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None  # a negative one means nothing


def _wire_url(url: str) -> str:
    """`url` as it goes on the wire: a path or query in other scripts ("/日本.jpg") is
    percent-encoded as UTF-8 (http.client sends ASCII only); the host is left to http.client,
    which IDNA-encodes it."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.quote(parts.path, safe=_URL_SAFE)
    query = urllib.parse.quote(parts.query, safe=_URL_SAFE)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


def _opener(sockets: weakref.WeakSet[socket.socket], stop: threading.Event) -> urllib.request.OpenerDirector:
    """urllib's opener, but every connection's socket is remembered in `sockets`, so a
    stop can cut requests that are blocked waiting for a slow server. A stop that came while
    the connection was being made found no socket to cut: the connection cuts itself."""

    def tracked(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Tracked(base):  # type: ignore[valid-type, misc]
            def connect(self) -> None:
                super().connect()
                sockets.add(self.sock)
                if stop.is_set():
                    self.sock.shutdown(socket.SHUT_RDWR)

        return Tracked

    plain, tls = tracked(http.client.HTTPConnection), tracked(http.client.HTTPSConnection)

    class Plain(urllib.request.HTTPHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(plain, req, **kwargs)

    class TLS(urllib.request.HTTPSHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(tls, req, **kwargs)

    class Redirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            scheme = urllib.parse.urlsplit(newurl).scheme.lower()
            if scheme not in _SCHEMES:
                raise urllib.error.HTTPError(
                    req.full_url, code, f"redirect to a {printable(scheme) or 'schemeless'} URL refused", headers, fp
                )
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    # Not build_opener: its defaults include file:// and ftp:// handlers.
    opener = urllib.request.OpenerDirector()
    proxies = {k: v for k, v in urllib.request.getproxies().items() if k in _SCHEMES}
    for handler in (
        urllib.request.ProxyHandler(proxies),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        Redirect(),
        urllib.request.HTTPErrorProcessor(),
        Plain(),
        TLS(),
    ):
        opener.add_handler(handler)
    return opener


class Client:
    """HTTP GETs with a retry policy, an optional rate limit, and a stop switch (`abort`).

    `on_retry` receives one line per retry (already redacted), for the progress display.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        limiter: RateLimiter | None = None,
        secrets: Iterable[str] = (),
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy
        self.limiter = limiter
        self.secrets = [s for s in secrets if s]
        self.on_retry = on_retry
        self.stop = threading.Event()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._opener = _opener(self._sockets, self.stop)

    def abort(self) -> None:
        """Stop: no new tries, and requests in flight are cut now (their sockets shut), so
        Ctrl-C does not wait for a slow server's timeout."""
        self.stop.set()
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***").replace(urllib.parse.quote_plus(secret), "***")
        return text

    # ------------------------------------------------------------ plumbing

    def _open(self, url: str) -> http.client.HTTPResponse:
        try:
            if urllib.parse.urlsplit(url).scheme.lower() not in _SCHEMES:
                raise Failed(f"not an http(s) URL: {printable(url[:80])}")
            if any(c < " " or c == "\x7f" for c in url):
                raise Failed(f"not a usable URL (a control character in it): {printable(url[:80])}")
            request = urllib.request.Request(_wire_url(url), headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
            return self._opener.open(request, timeout=self.policy.timeout)
        except urllib.error.HTTPError as err:
            retry_after = _retry_after(err.headers)
            err.close()
            if err.code >= 500 or err.code in _RETRY_STATUS:
                raise Retryable(f"HTTP {err.code}", retry_after) from None
            raise Failed(printable(f"HTTP {err.code} {err.reason}".strip())) from None
        except http.client.InvalidURL as err:  # a control character in the URL or a redirect's
            raise Failed(f"not a usable URL ({printable(str(err))})") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise Retryable(_describe(err)) from None
        except ValueError as err:  # a URL urllib cannot parse ("unknown url type", bad IPv6)
            raise Failed(f"not a usable URL ({printable(str(err))})") from None

    def _retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        tries = self.policy.retries + 1
        for n in range(tries):
            if self.stop.is_set():
                raise Interrupted()
            try:
                return attempt()
            except Retryable as err:
                if self.stop.is_set():
                    raise Interrupted() from None
                if n == tries - 1:
                    raise Failed(self.redact(f"{err} ({tries} tries)")) from None
                delay = self.policy.delay(n, err.retry_after)
                if self.on_retry is not None:
                    self.on_retry(self.redact(f"{what}: {err}; try {n + 2} of {tries} in {delay:.1f} s"))
                if self.stop.wait(delay):
                    raise Interrupted() from None
            except Failed as err:
                raise Failed(self.redact(str(err))) from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ requests

    def get_json(
        self,
        url: str,
        params: Mapping[str, str],
        what: str,
        check: Callable[[Any], None] | None = None,
    ) -> Any:
        """GET `url?params` as JSON, waiting for the rate limit before every try. `check`
        may raise `Retryable` (an API-level temporary failure) or a final error."""
        full = f"{url}?{urllib.parse.urlencode(params)}"

        def attempt() -> Any:
            if self.limiter is not None:
                self.limiter.wait(self.stop)
            started = time.monotonic()
            try:
                with self._open(full) as resp:
                    expected = _content_length(resp.headers)
                    body = self._read_api_body(resp, started)
            except (OSError, http.client.HTTPException) as err:
                raise Retryable(_describe(err)) from None
            if expected is not None and len(body) != expected:
                raise Retryable(f"response cut short ({len(body):,} of {expected:,} bytes)")
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):  # RecursionError: nested too deep to be an answer
                raise Retryable("response is not JSON") from None
            if check is not None:
                check(data)
            return data

        return self._retrying(what, attempt)

    def _read_api_body(self, resp: Any, started: float) -> bytes:
        """The whole body, read a chunk at a time so the size and time limits hold."""
        body = bytearray()
        while True:
            self._check_time(started)
            chunk = resp.read1(_CHUNK)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > _MAX_API_BYTES:
                raise Retryable(f"response over {_MAX_API_BYTES >> 20} MiB: not a search result")

    def _check_time(self, started: float) -> None:
        if self.stop.is_set():
            raise Interrupted()
        if time.monotonic() - started > self.policy.deadline:
            raise Retryable(f"took over {self.policy.deadline:g} s (the limit is 10 x --timeout)")

    def download(
        self, url: str, folder: Path, max_bytes: int, what: str, check: Callable[[Download], None] | None = None
    ) -> Download:
        """Stream `url` into a temporary file in `folder` (same filesystem as the final
        place, so the caller can rename it atomically). Text responses (an error page
        served as 200) and bodies over `max_bytes` fail without retry. `check` may raise
        `Retryable` (a body cut short that no Content-Length told) or `Failed`."""

        def attempt() -> Download:
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as fh:
                    download = self._stream(url, fh, tmp, max_bytes)
                if check is not None:
                    check(download)
                return download
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        return self._retrying(what, attempt)

    def _stream(self, url: str, fh: Any, tmp: Path, max_bytes: int) -> Download:
        started = time.monotonic()
        with self._open(url) as resp:
            # no header: "" (get_content_type would say text/plain), and the bytes decide
            content_type = resp.headers.get_content_type() if resp.headers.get("Content-Type") else ""
            if content_type.startswith("text/"):
                raise Failed(f"not an image: the server sent {content_type}")
            encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding != "identity":
                raise Failed(f"the server sent the body {printable(encoding[:40])}-encoded although asked not to; not saved")
            expected = _content_length(resp.headers)
            if expected is not None and expected > max_bytes:
                raise Failed(f"{expected:,} bytes, over the {max_bytes:,}-byte limit")
            digest = hashlib.sha256()
            size = 0
            head = b""
            while True:
                self._check_time(started)
                try:
                    chunk = resp.read1(_CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise Retryable(_describe(err)) from None
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise Failed(f"over the {max_bytes:,}-byte limit")
                if len(head) < 16:
                    head = (head + chunk)[:16]
                digest.update(chunk)
                fh.write(chunk)
        if self.stop.is_set():  # a cut socket reads as the end of the body: not a whole file
            raise Interrupted()
        if expected is not None and size != expected:
            raise Retryable(f"download cut short ({size:,} of {expected:,} bytes)")
        if size == 0:
            raise Retryable("empty response")
        fh.flush()
        os.fsync(fh.fileno())
        return Download(tmp, digest.hexdigest(), size, content_type, head)
