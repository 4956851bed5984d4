"""The download pool both sources share: jobs in, files and a tally out, with a progress bar.

Downloads run in a few threads (they wait on the network, not the CPU); at most `workers`
are in flight, and with a `want` limit no more are started than could still count. Ctrl-C
sets the client's stop switch: downloads in flight give up at their next chunk and remove
their temporary files, and the interrupt goes on to the caller.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vislab.collect.http import Client, Failed
from vislab.collect.store import DUPLICATE, PRESENT, SAVED, Store, check_image, extension_for
from vislab.errors import VislabError
from vislab.fsguard import MAX_FILE_BYTES
from vislab.usertext import term

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name stem from arbitrary text: letters, digits, '-' and '_' only."""
    return _NAME_UNSAFE.sub("_", text).strip("_")[:limit] or "image"


@dataclass(frozen=True)
class Job:
    """One image to fetch: `key` identifies it in the journal, `name` + `ext` is its file
    name in images/ (`ext` "" = decide from the response), `row` its photos.csv fields."""

    key: str
    url: str
    name: str
    ext: str
    row: dict[str, str]


@dataclass
class Tally:
    """What a run did, for the summary and the exit status."""

    saved: int = 0
    present: int = 0
    duplicates: int = 0
    repeats: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.refused

    def summary(self) -> str:
        parts = [f"{self.saved:,} new", f"{self.present:,} already here"]
        if self.duplicates:
            parts.append(f"{self.duplicates:,} exact duplicate(s) skipped")
        if self.repeats:
            parts.append(f"{self.repeats:,} listed again in the results")
        text = ", ".join(parts)
        if self.skipped:
            text += "; not downloaded: " + ", ".join(f"{n:,} {why}" for why, n in sorted(self.skipped.items()))
        if self.failed:
            text += f"; {len(self.failed):,} failed"
        return text


def progress_bar(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
    )


def say(progress: Progress, message: str) -> None:
    """Print a line above the progress bar; silent when the bar is (library use, no console)."""
    if not progress.disable:
        progress.console.print(message, highlight=False, soft_wrap=True)


def retry_printer(progress: Progress) -> Callable[[str], None]:
    """The `on_retry` callback of a `Client`: one dim line per retry."""
    return lambda message: say(progress, f"[dim]retry: {term(message)}[/]")


def fetch_one(job: Job, store: Store, client: Client) -> str:
    """SAVED, DUPLICATE or PRESENT (its file already in images/, byte for byte); raises `Failed`."""
    download = client.download(job.url, store.images, MAX_FILE_BYTES, what=job.name, check=check_image)
    try:
        return store.commit(job.key, download, job.name, extension_for(job.ext, download), job.row)
    finally:
        download.path.unlink(missing_ok=True)


def fetch_all(
    jobs: Iterable[Job],
    store: Store,
    client: Client,
    tally: Tally,
    workers: int,
    progress: Progress,
    task: Any,
    want: int | None = None,
    seen: set[str] | None = None,
) -> tuple[int, bool]:
    """Fetch `jobs` until done or until `want` of them are kept (saved, or already here).
    Returns (kept, complete): `complete` is False when a job failed or `want` stopped the
    run early, so the caller does not mark the batch done.

    `seen` holds the keys already taken up (pass the same set for every page of one
    search): a key listed again is a repeat, neither fetched a second time (two
    downloads racing for one file) nor counted as kept."""
    workers = max(1, workers)
    seen = set() if seen is None else seen
    pending: Iterator[Job] = iter(jobs)
    running: dict[Future[str], Job] = {}
    kept = 0
    complete = True
    exhausted = False

    def note() -> None:
        progress.update(task, note=f"{tally.duplicates} dup, {len(tally.failed)} failed")

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="collect") as pool:
        try:
            while True:
                while not exhausted and len(running) < workers and (want is None or kept + len(running) < want):
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                        break
                    if job.key in seen:
                        tally.repeats += 1
                        progress.advance(task)
                        continue
                    seen.add(job.key)
                    status = store.status(job.key)
                    if status is not None:
                        kept += status != DUPLICATE
                        tally.present += status != DUPLICATE
                        progress.advance(task)
                        continue
                    running[pool.submit(fetch_one, job, store, client)] = job
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = running.pop(fut)
                    try:
                        outcome = fut.result()
                    except OSError as err:
                        raise VislabError(
                            f"--out {store.out}: cannot write ({err.strerror or err}); free some space or choose another --out"
                        ) from None
                    except Failed as err:
                        tally.failed.append((f"{job.name} ({job.url})", str(err)))
                        complete = False
                        say(progress, f"[yellow]failed:[/] {term(job.name)} ({term(job.url)}): {term(err)}")
                    else:
                        if outcome == DUPLICATE:
                            tally.duplicates += 1
                        else:
                            kept += 1
                            tally.saved += outcome == SAVED
                            tally.present += outcome == PRESENT
                    progress.advance(task)
                    note()
        except BaseException:
            client.abort()  # downloads in flight stop now and remove their temporary files
            for fut in running:
                fut.cancel()
            raise
    if not exhausted:
        complete = False
    return kept, complete
