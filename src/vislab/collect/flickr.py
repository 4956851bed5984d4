"""`vislab collect flickr`: originals of `flickr.photos.search` results, licence-filtered.

What Flickr imposes, and what this module does about it:
- At most 4,000 results per search are served, whatever `total` says: a query that hits
  the cap is reported with how many photos are out of reach and how to split it.
- 3,600 API calls an hour per key: calls are evenly spaced (default 3,000 an hour).
- A geo search (`bbox`) pages at most 250 photos, and without words or dates returns
  only the last 12 hours of uploads: said before the run starts.
- Only photos whose owner shares the original (`url_o`) are fetched; size and licence are
  checked on the search results, before any download.
- `stat: fail` codes: 100 (invalid key) and the codes meaning every request is wrong stop
  the run with one line; 10/105/106 (service temporarily down) are retried with backoff;
  any other code (3 "parameterless search", 18 "illogical arguments", ...) rejects that
  query only: it is reported and skipped, since the same request would fail again.

Pages are read in upload order (`date-posted-asc` by default), so new uploads land on the
last page, not the first. A rerun of a query that did not finish reads all its pages again
(photos already here are counted, not fetched): a photo removed from the results shifts the
later ones onto earlier pages, so a page read before may now list a photo not yet fetched.
A query is recorded finished only when every photo it listed is here or was skipped on
purpose, under a key naming every filter (`_query_key`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import posixpath
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from vislab.collect.fetch import Job, Tally, fetch_all, progress_bar, retry_printer, safe_name, say
from vislab.collect.http import Client, Failed, RateLimiter, RetryPolicy, Retryable
from vislab.collect.store import Store
from vislab.collect.urls import check_label, check_url, read_lines, retry_policy
from vislab.errors import VislabError
from vislab.fsguard import printable
from vislab.usertext import term

API_URL = "https://api.flickr.com/services/rest/"
API_URL_ENV = "VISLAB_FLICKR_API_URL"
KEY_ENV = "FLICKR_API_KEY"
EXTRAS = "url_o,o_dims,license,owner_name,date_taken,original_format"
MAX_RESULTS = 4000
MAX_PER_PAGE = 500
MAX_PER_PAGE_GEO = 250
DEFAULT_RATE = 3000.0
SORTS = (
    "date-posted-asc",
    "date-posted-desc",
    "date-taken-asc",
    "date-taken-desc",
    "interestingness-desc",
    "interestingness-asc",
    "relevance",
)

# flickr.photos.licenses.getInfo (June 2025): id -> (name, url).
LICENSES: dict[int, tuple[str, str]] = {
    0: ("All Rights Reserved", ""),
    1: ("CC BY-NC-SA 2.0", "https://creativecommons.org/licenses/by-nc-sa/2.0/"),
    2: ("CC BY-NC 2.0", "https://creativecommons.org/licenses/by-nc/2.0/"),
    3: ("CC BY-NC-ND 2.0", "https://creativecommons.org/licenses/by-nc-nd/2.0/"),
    4: ("CC BY 2.0", "https://creativecommons.org/licenses/by/2.0/"),
    5: ("CC BY-SA 2.0", "https://creativecommons.org/licenses/by-sa/2.0/"),
    6: ("CC BY-ND 2.0", "https://creativecommons.org/licenses/by-nd/2.0/"),
    7: ("No known copyright restrictions", "https://www.flickr.com/commons/usage/"),
    8: ("United States Government Work", "https://www.usa.gov/government-copyright"),
    9: ("Public Domain Dedication (CC0)", "https://creativecommons.org/publicdomain/zero/1.0/"),
    10: ("Public Domain Mark", "https://creativecommons.org/publicdomain/mark/1.0/"),
    11: ("CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/"),
    12: ("CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0/"),
    13: ("CC BY-ND 4.0", "https://creativecommons.org/licenses/by-nd/4.0/"),
    14: ("CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/"),
    15: ("CC BY-NC-SA 4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    16: ("CC BY-NC-ND 4.0", "https://creativecommons.org/licenses/by-nc-nd/4.0/"),
}
# Licences that allow reuse, modification and commercial use (with attribution at most).
DEFAULT_LICENSES = (4, 5, 7, 8, 9, 10, 11, 12)

TRANSIENT_CODES = {0, 10, 105, 106}  # the service is down for a while: retry
FATAL_CODES = {95, 96, 97, 98, 99, 100, 111, 112, 114, 115, 116}  # every request would fail: stop


class QueryRefused(Exception):
    """Flickr rejects one query (not the key, not the service): skip it, go on."""


@dataclass
class FlickrOptions:
    """A parsed `vislab collect flickr` command (see `flickr_options` for the checks)."""

    queries: list[str]
    bbox: tuple[float, float, float, float] | None = None
    licenses: tuple[int, ...] | None = DEFAULT_LICENSES
    min_size: tuple[int, int] | None = None
    per_query: int | None = None
    per_page: int = MAX_PER_PAGE
    taken_after: str | None = None
    taken_before: str | None = None
    sort: str = "date-posted-asc"
    label: str = ""
    rate: float = DEFAULT_RATE
    workers: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    api_url: str = API_URL

    @property
    def page_size(self) -> int:
        return min(self.per_page, MAX_PER_PAGE_GEO) if self.bbox else self.per_page


# ---------------------------------------------------------------- options


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    hint = "write --bbox MIN_LON,MIN_LAT,MAX_LON,MAX_LAT, e.g. 5.9,45.8,10.5,47.8"
    try:
        lon1, lat1, lon2, lat2 = (float(v) for v in text.split(","))
    except ValueError:
        raise VislabError(f"--bbox '{text}': not four numbers; {hint}") from None
    if not (-180 <= lon1 <= 180 and -180 <= lon2 <= 180 and -90 <= lat1 <= 90 and -90 <= lat2 <= 90):
        raise VislabError(f"--bbox '{text}': longitudes run -180..180 and latitudes -90..90; {hint}")
    if lon1 >= lon2 or lat1 >= lat2:
        raise VislabError(f"--bbox '{text}': the first corner must be south-west of the second; {hint}")
    return lon1, lat1, lon2, lat2


def parse_licenses(text: str) -> tuple[int, ...] | None:
    """'4,5,9' -> (4, 5, 9); 'any' -> None (no filter)."""
    if text.strip().lower() == "any":
        return None
    known = ", ".join(f"{k} {v[0]}" for k, v in LICENSES.items())
    ids = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            value = -1
        if value not in LICENSES:
            raise VislabError(f"--license '{item.strip()}': not a Flickr licence id (ids: {known}; or 'any')")
        ids.append(value)
    return tuple(sorted(set(ids)))


def _parse_date(text: str | None, flag: str) -> str | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise VislabError(f"{flag} '{text}': not a date; write YYYY-MM-DD, e.g. 2019-06-01") from None


def flickr_options(
    text: str | None = None,
    queries: Path | None = None,
    bbox: str | None = None,
    license: str = ",".join(map(str, DEFAULT_LICENSES)),
    min_size: str | None = None,
    per_query: int | None = None,
    per_page: int = MAX_PER_PAGE,
    taken_after: str | None = None,
    taken_before: str | None = None,
    sort: str = "date-posted-asc",
    label: str = "",
    rate: float = DEFAULT_RATE,
    workers: int = 4,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    api_url: str = API_URL,
) -> FlickrOptions:
    """Check the command line; every problem is a one-line VislabError naming its flag."""
    from vislab.data.curate import parse_size

    if text is not None and queries is not None:
        raise VislabError("use --text or --queries, not both")
    if text is not None and not text.strip():
        raise VislabError("--text is empty; give the words to search for")
    if queries is not None:
        query_list = [line for _, line in read_lines(queries, "queries")]
        if not query_list:
            raise VislabError(f"queries file {queries} has no queries (blank lines and '#' comments are skipped)")
    elif text is not None:
        query_list = [text.strip()]
    elif bbox is not None:
        query_list = [""]  # a geo search: everything in the box
    else:
        raise VislabError("say what to search for: --text WORDS, --queries FILE or --bbox")
    size = None
    if min_size is not None:
        try:
            size = parse_size(min_size)
        except ValueError as err:
            raise VislabError(f"--min-size {err}") from None
    if per_query is not None and per_query < 1:
        raise VislabError(f"--per-query {per_query}: must be 1 or more")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise VislabError(f"--per-page {per_page}: Flickr pages 1 to {MAX_PER_PAGE} photos")
    if sort not in SORTS:
        raise VislabError(f"--sort '{sort}': choose one of {', '.join(SORTS)}")
    if not (math.isfinite(rate) and rate >= 1):
        raise VislabError(f"--rate {rate:g}: must be a number of API requests per hour, at least 1")
    if workers < 1:
        raise VislabError(f"--workers {workers}: must be 1 or more")
    after, before = _parse_date(taken_after, "--taken-after"), _parse_date(taken_before, "--taken-before")
    if after and before and after > before:
        raise VislabError(f"--taken-after {after} is later than --taken-before {before}; swap them")
    return FlickrOptions(
        queries=list(dict.fromkeys(query_list)),
        bbox=parse_bbox(bbox) if bbox is not None else None,
        licenses=parse_licenses(license),
        min_size=size,
        per_query=per_query,
        per_page=per_page,
        taken_after=after,
        taken_before=before,
        sort=sort,
        label=check_label(label),
        rate=rate,
        workers=workers,
        retry=retry_policy(retries, backoff, timeout),
        api_url=check_url(api_url, "--api-url"),
    )


def api_key_from_env() -> str:
    """The key from FLICKR_API_KEY; it is never printed, logged or written."""
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise VislabError(
            f"{KEY_ENV} is not set; get a key at https://www.flickr.com/services/apps/create/ "
            f"and run `export {KEY_ENV}=...` before `vislab collect flickr`"
        )
    return key


# ---------------------------------------------------------------- the API


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _checker(client: Client, opts: FlickrOptions) -> Any:
    host = urllib.parse.urlsplit(opts.api_url).netloc

    def check(data: Any) -> None:
        if not isinstance(data, dict):
            raise Retryable("unexpected response")
        if data.get("stat") == "ok":
            if not isinstance(data.get("photos"), dict):
                raise Retryable("response without photos")
            if not isinstance(data["photos"].get("photo") or [], list):
                raise Retryable("response whose photo list is not a list")
            return
        code = _int(data.get("code"))
        message = printable(client.redact(str(data.get("message") or "no message")))
        if code == 100:
            raise VislabError(
                f"{KEY_ENV}: Flickr rejects the API key (code 100: {message}); set a valid key "
                "(https://www.flickr.com/services/apps/); the key is not shown"
            )
        if code in TRANSIENT_CODES:
            raise Retryable(f"Flickr is temporarily unavailable (code {code}: {message})")
        if code in FATAL_CODES:
            raise VislabError(
                f"Flickr API at {host} refuses every request (code {code}: {message}); stopped, "
                "since retrying cannot help: check --api-url"
            )
        raise QueryRefused(f"code {code}: {message}")

    return check


def _search(client: Client, opts: FlickrOptions, api_key: str, text: str, page: int) -> dict[str, Any]:
    params = {
        "method": "flickr.photos.search",
        "api_key": api_key,
        "format": "json",
        "nojsoncallback": "1",
        "extras": EXTRAS,
        "media": "photos",
        "sort": opts.sort,
        "per_page": str(opts.page_size),
        "page": str(page),
    }
    if text:
        params["text"] = text
    if opts.bbox is not None:
        params["bbox"] = ",".join(f"{v:g}" for v in opts.bbox)
    if opts.licenses is not None:
        params["license"] = ",".join(map(str, opts.licenses))
    after, before = _taken_bounds(opts)
    if after:
        params["min_taken_date"] = after
    if before:
        params["max_taken_date"] = before
    host = urllib.parse.urlsplit(opts.api_url).netloc
    try:
        return client.get_json(opts.api_url, params, what=f"search {text!r} page {page}", check=_checker(client, opts))
    except Failed as err:
        raise VislabError(
            f"Flickr API at {host}: {err}; stopped, since no search can run; finished photos are kept: "
            "run the same command later to continue"
        ) from None


def _taken_bounds(opts: FlickrOptions) -> tuple[str | None, str | None]:
    """--taken-after/--taken-before as Flickr's MySQL datetimes: a bare date means its
    midnight there, so "on or before" a day has to say the day's last second."""
    after = f"{opts.taken_after} 00:00:00" if opts.taken_after else None
    before = f"{opts.taken_before} 23:59:59" if opts.taken_before else None
    return after, before


def _query_key(opts: FlickrOptions, text: str) -> str:
    """What decides which photos a query keeps (never the API key): a rerun that changes
    any of it is another query, not one "complete in an earlier run"."""
    return json.dumps(
        {
            "text": text,
            "bbox": opts.bbox,
            "license": opts.licenses,
            "taken": list(_taken_bounds(opts)),
            "min_size": opts.min_size,
            "sort": opts.sort,
            "per_page": opts.page_size,
        },
        sort_keys=True,
    )


def _extension(fmt: str, url: str) -> str:
    fmt = fmt.lower()
    if fmt in ("jpg", "jpeg", "png", "gif"):
        return ".jpg" if fmt == "jpeg" else "." + fmt
    suffix = posixpath.splitext(urllib.parse.urlsplit(url).path)[1].lower()
    return suffix if suffix in (".jpg", ".png", ".gif") else ""


def _file_name(pid: str) -> str:
    """The file stem of a photo id: the id itself when it is already a safe name, else its
    safe form plus a short hash of the id, so ids that sanitise alike ("a/b", "a_b") never
    share a file."""
    name = safe_name(pid)
    if name == pid:
        return name
    digest = hashlib.sha1(pid.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{safe_name(pid, 40)}-{digest}"


def _text(value: Any) -> str:
    """A field of the search results as text: JSON null (or a missing field) is ""."""
    return "" if value is None else str(value)


def _jobs(photos: list[Any], opts: FlickrOptions, text: str, tally: Tally) -> list[Job]:
    """Jobs for the photos worth downloading; the others are counted by reason."""
    jobs = []
    for p in photos:
        if not isinstance(p, dict):
            tally.skipped["malformed in the search results"] += 1
            continue
        pid = _text(p.get("id"))
        url = _text(p.get("url_o"))
        lic = _int(p.get("license"))
        w, h = _int(p.get("width_o") or p.get("o_width")), _int(p.get("height_o") or p.get("o_height"))
        if not pid:
            tally.skipped["without an id"] += 1
            continue
        if not url:
            tally.skipped["without a shared original"] += 1
            continue
        try:
            check_url(url, "url_o")
        except VislabError:  # file://, ftp://, not a URL: never fetched
            tally.skipped["with an original URL that is not http(s)"] += 1
            continue
        if opts.licenses is not None and lic not in opts.licenses:
            tally.skipped["under another licence"] += 1
            continue
        if opts.min_size is not None and (w is None or h is None or w < opts.min_size[0] or h < opts.min_size[1]):
            tally.skipped[f"smaller than {opts.min_size[0]}x{opts.min_size[1]}"] += 1
            continue
        owner = _text(p.get("owner"))
        name, license_url = LICENSES.get(lic if lic is not None else -1, ("", ""))
        row = {
            "id": pid,
            "source": "flickr",
            "query": text,
            "label": opts.label,
            "license": "" if lic is None else str(lic),
            "license_name": name,
            "license_url": license_url,
            "owner": owner,
            "owner_name": _text(p.get("ownername")),
            "title": _text(p.get("title")),
            "page_url": f"https://www.flickr.com/photos/{owner}/{pid}",
            "url": url,
            "width": "" if w is None else str(w),
            "height": "" if h is None else str(h),
            "date_taken": _text(p.get("datetaken")),
        }
        jobs.append(Job(f"flickr:{pid}", url, _file_name(pid), _extension(_text(p.get("originalformat")), url), row))
    return jobs


# ---------------------------------------------------------------- the run


def _tell_total(progress: Progress, shown: str, total: int, opts: FlickrOptions) -> None:
    say(progress, f"{shown}: {total:,} match(es)")
    if total > MAX_RESULTS and (opts.per_query is None or opts.per_query > MAX_RESULTS):
        say(
            progress,
            f"[yellow]warning:[/] {shown} matches {total:,} photos but Flickr serves only the first "
            f"{MAX_RESULTS:,} of a search: {total - MAX_RESULTS:,} are out of reach; split it into narrower "
            "searches (--taken-after/--taken-before date ranges, or smaller --bbox areas) run into the same --out",
        )


def _collect_query(
    text: str,
    opts: FlickrOptions,
    api_key: str,
    store: Store,
    client: Client,
    tally: Tally,
    progress: Progress,
) -> None:
    qkey = _query_key(opts, text)
    shown = term(f"query {text!r}" if text else "geo query")
    if store.query_finished(qkey):
        say(progress, f"{shown}: complete in an earlier run")
        return
    task = progress.add_task(shown, total=0, note="")
    kept, page, last_page, total, queued, complete = 0, 1, 1, 0, 0, True
    seen: set[str] = set()  # photo keys this search listed already (Flickr may repeat them)
    while page <= last_page:
        try:
            data = _search(client, opts, api_key, text, page)
        except QueryRefused as err:
            tally.refused.append((text, str(err)))
            say(
                progress,
                f"[yellow]skipped:[/] Flickr refuses {shown} ({term(err)}); not retried, "
                "since the same request would be refused again: change the query",
            )
            return
        photos = data["photos"]
        listed = list(photos.get("photo") or [])
        total = _int(photos.get("total")) or 0
        pages = _int(photos.get("pages")) or 0
        last_page = min(pages, math.ceil(min(total, MAX_RESULTS) / opts.page_size)) if listed else page
        jobs = _jobs(listed, opts, text, tally)
        queued += len(jobs)
        progress.update(task, total=queued)
        if page == 1:
            _tell_total(progress, shown, total, opts)
        want = None if opts.per_query is None else opts.per_query - kept
        got, page_complete = fetch_all(jobs, store, client, tally, opts.workers, progress, task, want, seen)
        kept += got
        complete &= page_complete
        if opts.per_query is not None and kept >= opts.per_query:
            return
        page += 1
    if complete:
        store.record_query(qkey, total=total, kept=kept)


def _check_labels(opts: FlickrOptions, store: Store) -> None:
    """Refuse a --label other than the one a query's photos were collected with: a photo
    already here is not fetched again, so it would keep its old label without a word."""
    labels: dict[str, set[str]] = {}
    for row in store.rows:
        if row["source"] == "flickr":
            labels.setdefault(row["query"], set()).add(row["label"])
    for text in opts.queries:
        others = sorted(labels.get(text, set()) - {opts.label})
        if others:
            shown = f"query {text!r}" if text else "the geo query"
            before = ", ".join(f"'{lab}'" for lab in others)
            raise VislabError(
                f"--label '{opts.label}': {shown} was collected into {store.out} with label {before}, and photos "
                f"already here keep theirs; give --label {before} again, collect into another --out, or let curate "
                f"label by search (vislab curate --photos {store.out} --label-column query)"
            )


def collect_flickr(opts: FlickrOptions, out: str | Path, api_key: str, console: Console | None = None) -> Tally:
    """Search, filter and download every query of `opts` into `out`. Failed downloads and
    refused queries are in the tally; a bad key, or an API that stays down, raises."""
    tally = Tally()
    progress = progress_bar(console)
    client = Client(opts.retry, RateLimiter(opts.rate), secrets=[api_key], on_retry=retry_printer(progress))
    with Store(out) as store, progress:
        _check_labels(opts, store)
        if opts.bbox is not None and not opts.taken_after and not opts.taken_before and "" in opts.queries:
            say(
                progress,
                "[yellow]note:[/] Flickr answers a --bbox search without words or dates with the last 12 hours "
                "of uploads only; add --taken-after DATE for older photos",
            )
        for text in opts.queries:
            _collect_query(text, opts, api_key, store, client, tally, progress)
    return tally
