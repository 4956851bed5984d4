"""Per-file checks: what one worker process learns about one file, as a plain dict.

Each file is read once: the bytes feed sha256 and the decoder. The decode is real
(truncation is only visible once the compressed stream is consumed) but cheap: JPEGs are
decoded in draft mode at 1/8 scale as YCbCr, whose Y channel is the grayscale the perceptual
hash needs (the very pixels a grayscale draft gives) and whose colour gives the 8x8 colour
thumbnail dedupe compares (about 12% more decode time than grayscale alone on a 12 MP photo,
where decoding twice would double it).
Nothing here raises for a bad file; every problem becomes a named reason.

Only regular files are read, never more than `fsguard.MAX_FILE_BYTES`: a named pipe (which
would block the open forever), a device such as `/dev/zero` (which never ends) or a socket
is `not_a_regular_file`, and so is a file of /proc or /sys (kernel interfaces, never
photos); a bigger file is `too_large`, an empty one `zero_byte` without being opened.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, BinaryIO

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vislab.data.dedupe import HASH_SIZE, hash_to_hex, is_plain, perceptual_hashes, plain_signature, thumbnail
from vislab.data.io import (
    RASTER_FORMATS,
    SIGNATURE_BYTES,
    SUPPORTED_MODES,
    mode_problem,
    orientation_of,
    oriented_size,
    sixteen_bit,
    to_rgb,
    unread_format,
    unread_reason,
    uses_low_bits,
)
from vislab.fsguard import MAX_FILE_BYTES, SpecialFileError, open_regular
from vislab.workers import die_with_parent

# Files up to this size are read into memory once (sha256 + decode); larger ones are
# hashed in a stream and decoded from disk so memory stays bounded.
READ_WHOLE_LIMIT = 64 * 1024 * 1024
HASH_DRAFT = (2 * HASH_SIZE, 2 * HASH_SIZE)

ZERO_BYTE = "zero_byte"
NOT_AN_IMAGE = "not_an_image"
UNREADABLE = "unreadable"
TRUNCATED = "truncated"
UNSUPPORTED_MODE = "unsupported_mode"
UNSUPPORTED_FORMAT = "unsupported_format"
DECOMPRESSION_BOMB = "decompression_bomb"
MISSING_FILE = "missing_file"
DECODER_CRASH = "decoder_crash"
NOT_A_REGULAR_FILE = "not_a_regular_file"
TOO_LARGE = "too_large"
_THUMB = "_thumbnail"  # carried from decode to the batched hash, never returned

# Signatures of image formats: a file that starts like one but does not open is a broken
# image (unreadable), not a stray document; formats Pillow cannot decode get their own reason.
_BROKEN_IF_UNOPENED = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


def classify_unopened(head: bytes) -> str:
    """Why a file Pillow cannot open (as one of `RASTER_FORMATS`) is no usable image, from its
    first bytes: a known image signature is broken (UNREADABLE), a format vislab does not read
    (HEIC, AVIF, JPEG XL; EPS, PDF and metafiles, refused for safety) is UNSUPPORTED_FORMAT,
    anything else NOT_AN_IMAGE."""
    if head.startswith(_BROKEN_IF_UNOPENED) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return UNREADABLE
    if unread_format(head):
        return UNSUPPORTED_FORMAT
    return NOT_AN_IMAGE


def _unopened_reason(head: bytes) -> str:
    """`classify_unopened`, followed for a format vislab does not read by which one and why
    ("unsupported_format:not an image vislab reads (EPS: PostScript, refused for safety, ...)")."""
    kind = classify_unopened(head)
    why = unread_format(head) if kind == UNSUPPORTED_FORMAT else None
    return f"{kind}:{unread_reason(why)}" if why else kind


def _decode_error_reason(err: BaseException) -> str:
    return TRUNCATED if "truncat" in str(err).lower() else UNREADABLE


def _sha256_stream(fh: BinaryIO, limit: int) -> str | None:
    """sha256 of the rest of `fh`, or None when it holds more than `limit` bytes."""
    digest = hashlib.sha256()
    total = 0
    for block in iter(lambda: fh.read(1 << 20), b""):
        total += len(block)
        if total > limit:
            return None
        digest.update(block)
    return digest.hexdigest()


def _empty_record(path: str) -> dict[str, Any]:
    return {
        "path": path,
        "reason": "",
        "bytes": None,
        "sha256": "",
        "format": "",
        "mode": "",
        "width": None,
        "height": None,
        "orientation": None,
        "phash": "",
        "plain_thumb": "",
        "colour_thumb": "",
        "low_bits": False,
    }


def inspect_file(path: str, max_pixels: int) -> dict[str, Any]:
    """Check one file: size, sha256, header, full (draft) decode, perceptual hash.

    Returns a dict with `reason` empty when the file is a usable image.
    """
    return _add_hashes([_inspect_file(path, max_pixels)])[0]


def _add_hashes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with_thumb = [rec for rec in records if _THUMB in rec]
    for rec, value in zip(with_thumb, perceptual_hashes([rec.pop(_THUMB) for rec in with_thumb])):
        rec["phash"] = hash_to_hex(value)
    return records


@functools.cache
def _pseudo_devices() -> frozenset[int]:
    """Devices of /proc and /sys: files there are kernel interfaces that may block or change
    as they are read, never photos, so a link into them is quarantined unread."""
    found = set()
    for place in ("/proc", "/sys"):
        try:
            found.add(os.stat(place).st_dev)
        except OSError:
            pass
    return frozenset(found)


def _inspect_file(path: str, max_pixels: int) -> dict[str, Any]:
    rec = _empty_record(path)
    limit = MAX_FILE_BYTES
    try:
        st = os.stat(path)
    except FileNotFoundError:
        rec["reason"] = MISSING_FILE
        return rec
    except (OSError, ValueError):  # ValueError: a NUL in a hand-written path
        rec["reason"] = UNREADABLE
        return rec
    if not stat.S_ISREG(st.st_mode) or st.st_dev in _pseudo_devices():
        rec["reason"] = NOT_A_REGULAR_FILE
        return rec
    rec["bytes"] = size = st.st_size
    if size > limit:
        rec["reason"] = TOO_LARGE
        return rec
    if size == 0:  # never opened: a size-0 "file" may be a kernel stream that blocks (/proc/kmsg)
        rec["reason"] = ZERO_BYTE
        return rec
    try:
        with open_regular(path, limit) as fh:
            if size <= READ_WHOLE_LIMIT:
                data = fh.read(READ_WHOLE_LIMIT + 1)
                rec["bytes"] = size = len(data)  # what was read, should the file have changed
                rec["sha256"] = hashlib.sha256(data).hexdigest()
                return _inspect_source(io.BytesIO(data), data[:SIGNATURE_BYTES], size, max_pixels, rec)
            sha = _sha256_stream(fh, limit)
            if sha is None:
                rec["reason"] = TOO_LARGE
                return rec
            rec["sha256"] = sha
            fh.seek(0)
            head = fh.read(SIGNATURE_BYTES)
            fh.seek(0)
            return _inspect_source(fh, head, size, max_pixels, rec)
    except SpecialFileError:  # replaced by a pipe or device since the stat
        rec["reason"] = NOT_A_REGULAR_FILE
    except OSError:
        rec["reason"] = UNREADABLE
    return rec


def _inspect_source(source: Any, head: bytes, size: int, max_pixels: int, rec: dict[str, Any]) -> dict[str, Any]:
    if size == 0:
        rec["reason"] = ZERO_BYTE
        return rec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec["reason"] = _inspect_image(source, head, max_pixels, rec)
    return rec


def _inspect_image(source: Any, head: bytes, max_pixels: int, rec: dict[str, Any]) -> str:
    """Fill header facts and the hash thumbnail into `rec`; return the reason ('' when usable).

    A file that fails to open is unreadable (or not an image at all); one that opens but
    fails to decode is truncated when the decoder ran out of data, unreadable otherwise.
    """
    try:
        im = Image.open(source, formats=RASTER_FORMATS)
    except UnidentifiedImageError:
        return _unopened_reason(head)
    except Image.DecompressionBombError:
        return DECOMPRESSION_BOMB
    except Exception:  # a broken header surfaces as many exception types
        return UNREADABLE
    with im:
        rec.update(format=im.format or "", mode=im.mode, width=im.width, height=im.height)
        if im.width * im.height > max_pixels:
            return DECOMPRESSION_BOMB
        if im.mode not in SUPPORTED_MODES:
            return f"{UNSUPPORTED_MODE}:{mode_problem(im.mode)}"
        deep = sixteen_bit(im)
        try:
            if im.format == "JPEG":  # a colour one decodes as YCbCr: Y is the grey a hash reads
                im.draft("YCbCr", HASH_DRAFT)
            im.load()
        except Image.DecompressionBombError:
            return DECOMPRESSION_BOMB
        except Exception as err:
            return _decode_error_reason(err)
        try:
            orientation = orientation_of(im)
            width, height = oriented_size(rec["width"], rec["height"], orientation)
            rec.update(width=width, height=height, orientation=orientation, low_bits=deep and uses_low_bits(im))
            if orientation != 1:
                ImageOps.exif_transpose(im, in_place=True)
            rec[_THUMB] = thumbnail(im.getchannel(0) if im.mode == "YCbCr" else _gray(im))
            rec["colour_thumb"] = plain_signature(to_rgb(im))
            if is_plain(rec[_THUMB]):
                rec["plain_thumb"] = rec["colour_thumb"]
        except Exception as err:
            return _decode_error_reason(err)
    return ""


def _gray(im: Image.Image) -> Image.Image:
    """Grayscale as training will see it (transparency flattened onto white)."""
    if im.mode == "L":
        return im
    if im.mode in ("1", "P") and "transparency" not in im.info:
        return im.convert("L")
    return to_rgb(im).convert("L")


def inspect_chunk(paths: list[str], max_pixels: int) -> list[dict[str, Any]]:
    """Worker entry point: one task per chunk keeps inter-process overhead per file small.

    Truncation must raise (a caller may have relaxed Pillow's global), and Pillow's own
    bomb limit must not undercut an explicitly larger `max_pixels`; both are restored.
    """
    saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1
    try:
        return _add_hashes([_inspect_file(p, max_pixels) for p in paths])
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = saved


# ---------------------------------------------------------------- running checks in parallel


def worker_count(requested: int) -> int:
    """`requested` workers, or one per usable core when 0."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("checking files"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console is None,
    )


def _run_pool(
    chunks: list[list[str]],
    max_pixels: int,
    workers: int,
    done: dict[str, dict[str, Any]],
    advance: Callable[[int], None],
    start: Callable[[], None] | None = None,
) -> list[list[str]]:
    """Run chunks in one pool. Returns, in submission order, the chunks lost when a worker
    died (a decoder crash, or the out-of-memory killer), which breaks the whole pool."""
    failed: set[int] = set()
    pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(inspect_chunk, part, max_pixels): i for i, part in enumerate(chunks)}
        if start is not None:
            start()  # the progress thread starts only after the workers are forked
        for fut in as_completed(futures):
            try:
                records = fut.result()
            except BrokenProcessPool:
                failed.add(futures[fut])
                continue
            for rec in records:
                done[rec["path"]] = rec
            advance(len(records))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [chunks[i] for i in sorted(failed)]


def inspect_files(
    paths: list[str], max_pixels: int, workers: int = 0, console: Console | None = None
) -> list[dict[str, Any]]:
    """Check files in worker processes, in chunks, with a progress bar; records in `paths` order.

    Chunks are small enough to balance a few big photos across workers and large enough
    that 50,000 thumbnails do not pay inter-process overhead per file.

    A worker that dies takes the pool down. The pool feeds workers in submission order, so
    only the first `workers + 1` unfinished chunks can have started: those suspects are
    halved and retried after the others, down to single files, which one lone worker then
    checks in turn. The file it dies on is quarantined as `decoder_crash`; the run goes on.
    """
    n = len(paths)
    workers = worker_count(workers)
    size = max(1, min(256, -(-n // (workers * 8))))
    chunks = [paths[i : i + size] for i in range(0, n, size)]
    done: dict[str, dict[str, Any]] = {}
    progress = _progress(console)
    task = progress.add_task("check", total=n)

    def advance(k: int) -> None:
        progress.advance(task, k)

    try:
        if workers <= 1 or len(chunks) <= 1:
            progress.start()
            for part in chunks:
                for rec in inspect_chunk(part, max_pixels):
                    done[rec["path"]] = rec
                advance(len(part))
            return [done[p] for p in paths]
        lost = _run_pool(chunks, max_pixels, workers, done, advance, start=progress.start)
        while lost:
            suspects, others = lost[: workers + 1], lost[workers + 1 :]
            if all(len(part) == 1 for part in suspects):
                others = others + _isolate(suspects, max_pixels, done, advance)
                retry = others
            else:
                retry = others + [half for part in suspects for half in _halve(part)]
            lost = _run_pool(retry, max_pixels, workers, done, advance) if retry else []
    finally:
        progress.stop()
    return [done[p] for p in paths]


def _halve(part: list[str]) -> list[list[str]]:
    mid = max(1, len(part) // 2)
    return [p for p in (part[:mid], part[mid:]) if p]


def _isolate(
    singles: list[list[str]], max_pixels: int, done: dict[str, dict[str, Any]], advance: Callable[[int], None]
) -> list[list[str]]:
    """One worker, one file at a time: the first file whose task is lost is the one the
    worker died on; files queued behind it are handed back to be checked again."""
    lost = _run_pool(singles, max_pixels, 1, done, advance)
    if not lost:
        return []
    culprit = lost[0][0]
    done[culprit] = {**_empty_record(culprit), "reason": DECODER_CRASH}
    advance(1)
    return lost[1:]
