"""`vislab collect urls`: fetch a plain list of image URLs into a collect folder.

Same guarantees as a Flickr collect (atomic, resumable, duplicates skipped, truncated
downloads retried), without a licence: the photos.csv rows name the URL and leave the
attribution columns empty for the user to fill.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from vislab.collect.fetch import Job, Tally, fetch_all, progress_bar, retry_printer, safe_name
from vislab.collect.http import Client, RetryPolicy
from vislab.collect.store import Store
from vislab.errors import VislabError
from vislab.fsguard import SpecialFileError, folder_name_problem, printable, read_bounded

# Suffixes taken from a URL as the file's extension; others are decided by the response.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".heic", ".avif"}
_LIST_LIMIT = 64 * 1024 * 1024


def read_lines(path: str | Path, what: str) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a UTF-8 text file that are not
    comments ('#' first)."""
    try:
        data = read_bounded(path, _LIST_LIMIT)
    except FileNotFoundError:
        raise VislabError(f"{what} file {path} does not exist; check the path") from None
    except (SpecialFileError, OSError) as err:
        raise VislabError(f"{what} file {path}: cannot read ({err}); give a regular text file") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise VislabError(f"{what} file {path}: not UTF-8 text; save it as UTF-8, one entry per line") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


def check_url(url: str, where: str) -> str:
    """`url` if it is an absolute http(s) URL, else a one-line error naming `where`. Spaces
    and control characters (a tab) are refused: no server is asked for such a URL."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. "http://[::1/x.jpg": an unclosed IPv6 address
        parts = urllib.parse.SplitResult("", "", "", "", "")
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c <= " " or c == "\x7f" for c in url):
        raise VislabError(f"{where}: '{printable(url[:80])}' is not an http(s) URL; fix the line or comment it out with '#'")
    return url


MAX_TIMEOUT = 86400.0  # a day without data; beyond ~1e9 s the socket layer overflows


def check_label(label: str) -> str:
    """--label without surrounding blanks ("" = none), refused up front when curate would
    refuse it as a class name (`unsafe_label` for every image)."""
    label = label.strip()
    problem = folder_name_problem(label) if label else None
    if problem is not None:
        raise VislabError(f"--label '{label}': {problem}; a label must be usable as one folder name, e.g. red_fox")
    return label


def retry_policy(retries: int, backoff: float, timeout: float) -> RetryPolicy:
    """The --retries/--backoff/--timeout of a collect command, each checked by name."""
    if retries < 0:
        raise VislabError(f"--retries {retries}: must be 0 or more")
    if not (math.isfinite(backoff) and backoff >= 0):
        raise VislabError(f"--backoff {backoff:g}: must be a number of seconds, 0 or more")
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise VislabError(f"--timeout {timeout:g}: must be a number of seconds above 0, at most {MAX_TIMEOUT:g} (a day)")
    return RetryPolicy(retries=retries, backoff=backoff, timeout=timeout)


def read_url_list(path: str | Path) -> list[str]:
    """The URLs of a list file, in order, each once."""
    urls = [check_url(line, f"{path}:{n}") for n, line in read_lines(path, "URL list")]
    if not urls:
        raise VislabError(f"URL list file {path} has no URLs (blank lines and '#' comments are skipped)")
    return list(dict.fromkeys(urls))


def url_job(url: str, label: str) -> Job:
    """A URL's job: its file is named after the URL's last path segment plus a short hash
    of the whole URL, so two URLs never share a name and a rerun finds the same one."""
    path = urllib.parse.urlsplit(url).path
    stem, suffix = posixpath.splitext(posixpath.basename(urllib.parse.unquote(path)))
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:12]
    name = f"{safe_name(stem, 40)}-{digest}"
    suffix = suffix.lower()
    ext = (".jpg" if suffix == ".jpeg" else suffix) if suffix in IMAGE_SUFFIXES else ""
    row = {"id": name, "source": "url", "label": label, "url": url}
    return Job(f"url:{url}", url, name, ext, row)


@dataclass
class UrlOptions:
    label: str = ""
    workers: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def _check_labels(urls: list[str], label: str, store: Store) -> None:
    """Refuse a --label other than the one a listed URL was collected with: a photo already
    here is not fetched again, so it would keep its old label without a word."""
    listed = set(urls)
    before: dict[str, int] = {}
    for row in store.rows:
        if row["source"] == "url" and row["url"] in listed and row["label"] != label:
            before[row["label"]] = before.get(row["label"], 0) + 1
    if before:
        shown = ", ".join(f"'{lab}' ({n} URL{'s' if n > 1 else ''})" for lab, n in sorted(before.items()))
        raise VislabError(
            f"--label '{label}': URLs of this list were collected into {store.out} with label {shown}, and photos "
            f"already here keep theirs; give that --label again, or collect into another --out"
        )


def collect_urls(urls: Iterable[str], out: str | Path, opts: UrlOptions, console: Console | None = None) -> Tally:
    """Fetch every URL into `out`; returns the tally (failures included, never raised)."""
    urls = list(urls)
    tally = Tally()
    progress = progress_bar(console)
    client = Client(opts.retry, on_retry=retry_printer(progress))
    with Store(out) as store, progress:
        _check_labels(urls, opts.label, store)
        task = progress.add_task("urls", total=len(urls), note="")
        fetch_all((url_job(u, opts.label) for u in urls), store, client, tally, opts.workers, progress, task)
    return tally

