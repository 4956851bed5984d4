"""The output folder of `vislab collect`, and how it survives Ctrl-C, kill -9 and power loss.

```
DIR/images/<name>.<ext>      finished images; each appears only by an atomic rename
DIR/images/.vislab-*.part    downloads in flight (removed when the next run starts)
DIR/photos.csv               one row per image, for attribution (vislab.data.photos)
DIR/.vislab-collect.jsonl    the journal: queries finished, photos done,
                             duplicates skipped; one JSON object per line
DIR/.vislab-collect.lock     held (flock) while a collect writes DIR
```

The journal is the record of truth. A photo is done in this order: its complete download
(a whole image: `check_image`) is renamed into `images/` (and the folder fsynced), a
`photo` line carrying its full CSV row is appended to the journal (fsynced), then the row
is appended to photos.csv. A kill between any two steps loses nothing: the next run fetches
a photo the journal does not hold again and, finding its name taken by the very same bytes,
keeps that file; photos.csv is rewritten atomically from the journal whenever the two
disagree (a torn last line included). Appends are single writes of whole lines, so at most
the last line is lost, and the journal skips it; a damaged line before it stops the run.

A file in images/ is never replaced, and a key is recorded once: a second photo that
would land on a taken name, or a key already done, is refused instead of silently
overwriting the first photo's file and leaving its row describing another image. Files
the journal does not name are the user's: never claimed as a photo unless their bytes are
the photo's, never changed or removed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vislab.collect.http import TEMP_PREFIX, TEMP_SUFFIX, Download, Failed, Retryable
from vislab.data.checks import NOT_AN_IMAGE, UNSUPPORTED_FORMAT, classify_unopened
from vislab.data.io import RASTER_FORMATS, ImageDecodeError, apply_draft, open_image
from vislab.data.photos import COLUMNS, PHOTOS_NAME
from vislab.errors import VislabError
from vislab.fsguard import MAX_PIXELS, fsync_dir, inside
from vislab.usertext import without_terminal_controls

IMAGES_DIR = "images"
JOURNAL_NAME = ".vislab-collect.jsonl"
LOCK_NAME = ".vislab-collect.lock"

SAVED = "saved"
DUPLICATE = "duplicate"
PRESENT = "present"

# File signatures, for an extension when neither the URL nor the Content-Type gives one.
_SIGNATURES = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)
_SURROGATES = re.compile("[\ud800-\udfff]")
_TYPES = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/tiff": ".tif",
    "image/bmp": ".bmp",
    "image/heic": ".heic",
    "image/avif": ".avif",
}


def write_durable(path: Path, data: bytes) -> None:
    """Replace `path` by `data` atomically: a temporary file beside it, fsync, rename, fsync
    the folder. Readers (and a crash) see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def extension_for(hint: str, download: Download) -> str:
    """`hint` (from the URL or the API) if given, else from the Content-Type, else from the
    file's first bytes, else `.img` (curate decides what the file is)."""
    if hint:
        return hint
    if download.content_type in _TYPES:
        return _TYPES[download.content_type]
    for magic, ext in _SIGNATURES:
        if download.head.startswith(magic):
            return ext
    if download.head[:4] == b"RIFF" and download.head[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def check_image(download: Download) -> None:
    """Accept only a whole image: decoded to the end (a JPEG at 1/8 scale, cheap), since a
    server that closes the connection early without a Content-Length sends a short body that
    looks complete. Raises `Retryable` for an image cut short or damaged, `Failed` for a body
    that is no image at all (an HTML page sent as application/octet-stream). A format Pillow
    does not decode (HEIC, AVIF) is kept for curate to judge, as is a header over curate's
    pixel limit (not decoded here; curate's --max-pixels decides)."""
    try:
        with open_image(download.path, max_pixels=None) as im:
            if im.width * im.height <= MAX_PIXELS:
                apply_draft(im, (1, 1))
                im.load()
    except ImageDecodeError as err:
        if isinstance(err.__cause__, Image.DecompressionBombError):  # a header Pillow refuses at open
            return
        if not isinstance(err.__cause__, UnidentifiedImageError):
            raise Retryable(f"not a whole image ({err.reason})") from None
        kind = classify_unopened(download.head)
        if kind == NOT_AN_IMAGE:
            sent = download.content_type or "no Content-Type"
            raise Failed(f"not an image: the server sent {sent} whose bytes are no image format") from None
        if kind != UNSUPPORTED_FORMAT:
            raise Retryable("not a whole image (an image signature Pillow cannot open)") from None


def _image_size(path: Path) -> tuple[str, str]:
    """Width and height measured from the image header ("" when Pillow cannot read the
    format: then nobody knows them, and the API's claim is not written as a measurement)."""
    try:
        with Image.open(path, formats=RASTER_FORMATS) as im:
            return str(im.width), str(im.height)
    except Exception:  # a format Pillow does not read (HEIC): curate reports it
        return "", ""


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _field(record: dict[str, Any], name: str, kind: type) -> Any:
    """`record[name]`, which must be of `kind` (KeyError when missing, TypeError when not)."""
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{name!r} is {json.dumps(value)[:40]}, not {'text' if kind is str else kind.__name__}")
    return value


def _text(value: object) -> str:
    """A CSV cell: lone surrogates (valid in JSON, not in UTF-8) become U+FFFD, so the
    row can be written and the photo does not fail again on every run; ESC sequences and
    other terminal controls in a server's title or owner name are dropped, so no later
    `cat photos.csv` or attribution line obeys them. The rest of the text stays exact."""
    return without_terminal_controls(_SURROGATES.sub("\ufffd", str(value)))


def _file_mode() -> int:
    """The mode a new file gets under the umask (0644 typically), instead of mkstemp's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _csv_text(rows: list[dict[str, str]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class Store:
    """One collect's hold on its output folder. Use as a context manager: it takes the lock,
    replays the journal, repairs photos.csv, removes stale temporary files; `close` (or the
    end of the `with`) releases everything. Methods may be called from several threads."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(os.path.abspath(out))
        if self.out.exists() and not self.out.is_dir():
            raise VislabError(f"--out {out} is a file; give a folder for the images")
        self.images = inside(self.out, IMAGES_DIR)
        self._lock_fh = None
        try:
            self.images.mkdir(parents=True, exist_ok=True)
            self._lock_fh = self._take_lock()
        except OSError as err:  # a read-only filesystem, no permission, ...
            raise VislabError(f"--out {out}: cannot write ({err.strerror or err}); choose another --out") from None
        self._lock = threading.Lock()
        self._mode = _file_mode()
        self._status: dict[str, str] = {}
        self._rows: dict[str, dict[str, str]] = {}
        self._by_sha: dict[str, str] = {}
        self._files: set[str] = set()  # images/ names rows hold, even if deleted since
        self._queries: set[str] = set()
        self.journal_path = inside(self.out, JOURNAL_NAME)
        self.csv_path = inside(self.out, PHOTOS_NAME)
        try:
            self._replay()
            self._remove_stale_temps()
            self._repair_csv()
            self._journal = open(self.journal_path, "a", encoding="utf-8")
            self._csv = open(self.csv_path, "a", encoding="utf-8", newline="")
        except OSError as err:
            self.close()
            raise VislabError(f"--out {out}: cannot write ({err.strerror or err}); choose another --out") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ lifecycle

    def _take_lock(self) -> Any:
        path = inside(self.out, LOCK_NAME)
        fh = open(path, "a+", encoding="utf-8")
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock on this platform: run unguarded
            pass
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise VislabError(
                f"--out {self.out}: another `vislab collect` is writing there (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        return fh

    def close(self) -> None:
        """Release everything; never raises: after a failed write (a full disk) closing
        flushes the same bytes again, and that error must not replace the first one."""
        for fh in (getattr(self, "_journal", None), getattr(self, "_csv", None), self._lock_fh):
            if fh is not None and not fh.closed:
                try:
                    fh.close()
                except OSError:
                    pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ journal

    def _damaged(self, number: int, what: str) -> VislabError:
        return VislabError(
            f"{self.journal_path}: line {number} is damaged ({what}); only a last line cut short by a kill "
            "is repaired. Restore the file from a backup, or collect into another --out"
        )

    def _read_journal(self) -> list[tuple[int, dict[str, Any]]]:
        """The journal's events with their line numbers; a torn last line (a kill mid-write)
        is cut off the file. A bad line before the last is no torn write: cutting there
        would drop every later record, so it stops the run and the file stays as it is."""
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.splitlines(keepends=True)
        events, good = [], 0
        for number, line in enumerate(lines, start=1):
            try:
                event = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                event = None
            if not isinstance(event, dict):
                if number < len(lines):
                    raise self._damaged(number, "not a JSON object")
                write_durable(self.journal_path, data[:good])
                break
            events.append((number, event))
            good += len(line)
        return events

    def _replay(self) -> None:
        for number, event in self._read_journal():
            try:
                self._replay_event(event)
            except KeyError as err:
                raise self._damaged(number, f"a {event.get('event')} event without its {err} field") from None
            except TypeError as err:
                raise self._damaged(number, f"a {event.get('event')} event whose {err}") from None

    def _replay_event(self, event: dict[str, Any]) -> None:
        """Apply one journal event; a missing field raises KeyError, a wrong type TypeError."""
        kind = event.get("event")
        if kind == "photo":
            key = _field(event, "key", str)
            row = {k: str(v) for k, v in _field(event, "row", dict).items()}
            for col in ("sha256", "file"):
                _field(row, col, str)
            self._status[key] = SAVED
            self._rows[key] = row
            self._by_sha.setdefault(row["sha256"], key)
            self._files.add(row["file"])
        elif kind == "duplicate":
            self._status[_field(event, "key", str)] = DUPLICATE
        elif kind == "query":
            self._queries.add(_field(event, "query", str))

    def _append(self, event: dict[str, Any]) -> None:
        # ASCII: a lone surrogate from the API cannot be encoded as UTF-8, \uXXXX can
        self._journal.write(json.dumps(event, ensure_ascii=True, sort_keys=True) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def _remove_stale_temps(self) -> None:
        """Temporary files of a run that was killed: ours by name, and no run is using
        them while we hold the lock."""
        for entry in os.scandir(self.images):
            if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
                os.unlink(entry.path)

    def _repair_csv(self) -> None:
        """Rewrite photos.csv from the journal when a kill cut its last rows; refuse to
        touch one that says something else (edited by hand, or the journal was removed)."""
        expected = _csv_text(list(self._rows.values()), header=True)
        try:  # bytes, not read_text: that turns a "\r\n" inside a quoted cell into "\n"
            current = self.csv_path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            current = ""
        except UnicodeDecodeError:
            current = None
        if current == expected:
            return
        if current is None or not expected.startswith(current[: current.rfind("\n") + 1]):
            raise VislabError(
                f"{self.csv_path} does not match collect's journal {JOURNAL_NAME} (edited, or the journal "
                "was removed); move photos.csv away and collect rewrites it, or collect into another --out"
            )
        write_durable(self.csv_path, expected.encode("utf-8"))

    # ------------------------------------------------------------ queries

    def query_finished(self, query: str) -> bool:
        return query in self._queries

    def record_query(self, query: str, **info: Any) -> None:
        with self._lock:
            self._append({"event": "query", "query": query, **info})
            self._queries.add(query)

    # ------------------------------------------------------------ photos

    def status(self, key: str) -> str | None:
        """SAVED, DUPLICATE, or None for a photo this folder has not handled."""
        return self._status.get(key)

    @property
    def rows(self) -> list[dict[str, str]]:
        return list(self._rows.values())

    def commit(self, key: str, download: Download, name: str, ext: str, row: dict[str, str]) -> str:
        """Keep a complete download as images/<name><ext> (SAVED), or drop it when its
        sha256 matches an image already kept (DUPLICATE), or when that name already holds
        these very bytes (PRESENT: a run killed before its journal line, or the user's copy
        of the photo). Raises `Failed` for a key already recorded or a name taken by another
        file: nothing is overwritten."""
        with self._lock:
            if key in self._status:
                raise Failed(f"{key} is already recorded in {JOURNAL_NAME}; not saved twice")
            if download.sha256 in self._by_sha:
                download.path.unlink(missing_ok=True)
                return self._record(key, None, download.sha256, download.bytes, row)
            final = inside(self.images, name + ext)
            rel = final.relative_to(self.out).as_posix()
            if rel in self._files:
                raise Failed(f"{rel} already holds another photo; not overwritten")
            if final.exists() or final.is_symlink():
                if final.is_file() and not final.is_symlink() and _sha256_file(final) == (download.sha256, download.bytes):
                    self._record(key, final, download.sha256, download.bytes, row)
                    return PRESENT
                raise Failed(
                    f"{rel} is a file collect did not write, not this photo; it is left as it is: "
                    "move it out of images/ and run again to fetch the photo"
                )
            os.chmod(download.path, self._mode)
            os.replace(download.path, final)
            fsync_dir(self.images)
            return self._record(key, final, download.sha256, download.bytes, row)

    def _record(self, key: str, final: Path | None, sha: str, size: int, row: dict[str, str]) -> str:
        original = self._by_sha.get(sha)
        if final is None or original is not None:
            self._append({"event": "duplicate", "key": key, "sha256": sha, "of": original})
            self._status[key] = DUPLICATE
            return DUPLICATE
        width, height = _image_size(final)
        full = {col: _text(row.get(col, "")) for col in COLUMNS}
        full.update(
            width=width,
            height=height,
            bytes=str(size),
            sha256=sha,
            file=final.relative_to(self.out).as_posix(),
        )
        self._append({"event": "photo", "key": key, "row": full})
        self._status[key] = SAVED
        self._rows[key] = full
        self._by_sha[sha] = key
        self._files.add(full["file"])
        self._csv.write(_csv_text([full], header=False))
        self._csv.flush()
        os.fsync(self._csv.fileno())
        return SAVED
