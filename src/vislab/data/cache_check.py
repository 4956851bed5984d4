"""What a prepared cache must still match to be served: its source files, its own bytes, the
decoder that made it and the disk it is written to.

A manifest hash says which rows a cache holds, not that the files behind them are unchanged:
an image replaced under the same name (or deleted) after `vislab curate` keeps the hash. So
the index records each file's size and mtime_ns at prepare time, and every open stats them
again (about 0.26 s for 50,000 files on the 2-core machine this was measured on). A file
that is gone or no longer decodes is recorded as unreadable (with the no-cache path's reason)
and served by nobody: training skips it as it skips unreadable files.

The pixel bytes carry a SHA-256 per block (`BLOCK_BYTES`, truncated to 64 bits: enough to
catch corruption, not meant against tampering). An array loaded into RAM has every block
checked on open. A memory-mapped one (too big for RAM) has the header, first and last block
and `SAMPLED_BLOCKS` random others checked per open, so a large corruption is caught without
reading the whole file, and `BlockCheck` checks every other block the first time a batch
reads it, so a small corruption is a one-line error before its pixels are trained on.

Why not check every block on open: hashing costs more than reading. Measured on the 2-core
machine (SHA-256 at about 1.3 GB/s): 50,000 x 32x32x3 (154 MB) takes 0.12 s to hash against
0.035 s to read once from the page cache (0.07 s from disk); 2,000 x 224x224x3 (301 MB)
0.19-0.22 s against 0.074 s (0.16 s). A full check would add 120-340 % of an epoch's reading
to every open; checked on first read, the same hashing happens once per open, spread over
the loader's workers, and only for the blocks a run reads.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vislab.errors import VislabError

BLOCK_BYTES = 1 << 20
SAMPLED_BLOCKS = 32
# room for the filesystem's own blocks beyond the array and index.json
SPACE_MARGIN = 1 << 20

FileStat = tuple[int, int]  # (size in bytes, mtime_ns)


def file_stats(paths: Sequence[str]) -> list[FileStat | None]:
    """(size, mtime_ns) of each file, None for one that is gone."""
    out: list[FileStat | None] = []
    for p in paths:
        try:
            st = os.stat(p)
        except (OSError, ValueError):  # ValueError: a name no file can have (a NUL in it)
            out.append(None)
        else:
            out.append((st.st_size, st.st_mtime_ns))
    return out


def unreadable_error(bad: Sequence[tuple[str, str]], total: int) -> VislabError:
    """The one line for images the cache holds that cannot be read now, as (path, reason)."""
    path, reason = bad[0]
    return VislabError(
        f"{len(bad)} of the {total} images the cache holds cannot be read, e.g. {path}: {reason}; "
        "the dataset changed since `vislab curate`: restore the files or re-run `vislab curate` "
        "(`vislab train` skips them, up to train.health.max_bad_images)"
    )


def changed_rows(now: Sequence[FileStat | None], recorded: Sequence[Any]) -> list[int]:
    """Rows whose file differs in size or mtime (or in being there at all) from what the
    cache was built from."""
    return [i for i, (st, rec) in enumerate(zip(now, recorded)) if (None if st is None else list(st)) != rec]


def _digest(buf: Any) -> str:
    return hashlib.sha256(buf).hexdigest()[:16]


def header_bytes(store: Path, arr: np.memmap) -> bytes:
    with open(store, "rb") as f:
        return f.read(arr.offset)


def block_digests(store: Path) -> dict[str, Any]:
    """Digests of the .npy header and of each `BLOCK_BYTES` block of the pixel data."""
    arr = np.load(store, mmap_mode="r")
    flat = memoryview(np.ascontiguousarray(arr).reshape(-1))
    blocks = [_digest(flat[i : i + BLOCK_BYTES]) for i in range(0, len(flat), BLOCK_BYTES)]
    return {"block_bytes": BLOCK_BYTES, "header": _digest(header_bytes(store, arr)), "blocks": blocks}


def _recorded_blocks(store: Path, nbytes: int, recorded: Any) -> list[str] | None:
    """The recorded block digests of a store of `nbytes` pixel bytes, None when they do not
    fit it or its header does not match."""
    if not isinstance(recorded, dict) or recorded.get("block_bytes") != BLOCK_BYTES:
        return None
    blocks = recorded.get("blocks")
    if not isinstance(blocks, list) or len(blocks) != -(-nbytes // BLOCK_BYTES):
        return None
    if _digest(header_bytes(store, np.load(store, mmap_mode="r"))) != recorded.get("header"):
        return None
    return blocks


def blocks_intact(store: Path, images: np.ndarray, recorded: Any) -> bool:
    """Whether the recorded digests match: all blocks of an array in RAM, a sample of a
    memory-mapped one (see the module docstring)."""
    blocks = _recorded_blocks(store, images.nbytes, recorded)
    if blocks is None:
        return False
    n = len(blocks)
    flat = memoryview(np.ascontiguousarray(images).reshape(-1))
    if isinstance(images, np.memmap) and n > SAMPLED_BLOCKS + 2:
        which = sorted({0, n - 1, *random.sample(range(n), SAMPLED_BLOCKS)})
    else:
        which = list(range(n))
    return all(_digest(flat[b * BLOCK_BYTES : (b + 1) * BLOCK_BYTES]) == blocks[b] for b in which)


def corrupted_rows(store: Path, recorded: Any) -> set[int] | None:
    """Rows of a store lying in a block whose bytes no longer match its recorded digest
    (every block read), or None when the digests do not fit the store at all: what may be
    copied into an updated store is only what still matches."""
    try:
        images = np.load(store, mmap_mode="r")
        blocks = _recorded_blocks(store, images.nbytes, recorded)
    except (OSError, ValueError):
        return None
    if blocks is None:
        return None
    row = max(1, images[0].nbytes if len(images) else 1)
    flat = memoryview(np.ascontiguousarray(images).reshape(-1))
    bad: set[int] = set()
    for b, want in enumerate(blocks):
        if _digest(flat[b * BLOCK_BYTES : (b + 1) * BLOCK_BYTES]) != want:
            bad.update(range(b * BLOCK_BYTES // row, min(len(images), -(-(b + 1) * BLOCK_BYTES // row))))
    return bad


class BlockCheck:
    """Checks the blocks a batch reads from a memory-mapped store against their recorded
    digests, each block once per open: the blocks already checked are a shared-memory
    bitmap, so the loader's workers (forked or spawned) check each block once between them."""

    def __init__(self, store: Path, recorded: dict[str, Any], row_bytes: int, fix: str) -> None:
        import torch

        self.store = store
        self.block_bytes = int(recorded["block_bytes"])
        self.digests = list(recorded["blocks"])
        self.row_bytes = row_bytes
        self.fix = fix
        self.seen = torch.zeros(len(self.digests), dtype=torch.bool).share_memory_()

    def first_read(self, images: np.ndarray, rows: np.ndarray) -> str | None:
        """None when the blocks holding `rows` match (or were checked before), else the one
        line naming the store, the block and the fix."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return None
        lo, hi = rows * self.row_bytes // self.block_bytes, ((rows + 1) * self.row_bytes - 1) // self.block_bytes
        seen = self.seen.numpy()
        if self.row_bytes <= self.block_bytes and seen[lo].all() and seen[hi].all():  # the usual case after epoch 1
            return None
        span = np.arange(int((hi - lo).max()) + 1)
        blocks = np.unique(np.minimum(lo[:, None] + span, hi[:, None]))
        flat = memoryview(images.reshape(-1))
        for b in blocks[~seen[blocks]].tolist():
            if _digest(flat[b * self.block_bytes : (b + 1) * self.block_bytes]) != self.digests[b]:
                first, last = b * self.block_bytes // self.row_bytes, ((b + 1) * self.block_bytes - 1) // self.row_bytes
                return (
                    f"{self.store}: block {b} of its pixels (images {first}-{min(last, len(images) - 1)}) does not match "
                    f"the checksum recorded when it was prepared: the cache is corrupted; {self.fix}"
                )
            seen[b] = True
        return None


def decoder_versions(max_pixels: int) -> dict[str, Any]:
    """What decides the pixels besides the files and the size: the decoder and resizer
    versions and the pixel limit; a cache built under others is rebuilt."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    return {"pillow": version("pillow"), "torchvision": version("torchvision"), "max_pixels": int(max_pixels)}


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _existing(folder: Path) -> Path:
    """`folder` or its nearest existing parent (the cache folder may not be made yet)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def disk_full(folder: Path, needed: int | None = None, reclaim: str = "") -> VislabError:
    """The one line for a cache that does not fit in `folder`: what it needs (when known),
    what is free, and `reclaim` (space vislab's own leftovers there hold, if any)."""
    there = _existing(folder)
    need = "does not fit" if needed is None else f"needs {_mb(needed + SPACE_MARGIN)}"
    free = f"{_mb(free_bytes(there))} free"
    if os.statvfs(there).f_favail == 0:
        free += " and no file entries (inodes) left"
    return VislabError(f"disk full: the cache {need} in {folder}, {free}; {reclaim}free space there or prepare a smaller --size")


def require_space(folder: Path, needed: int, reclaim: Callable[[], str] = str) -> None:
    """A one-line 'disk full' error before writing a store of `needed` bytes that would not
    fit (a memory map over a sparse file dies with SIGBUS when the disk fills instead of
    raising); `reclaim` says what of the folder's own could be deleted."""
    if needed + SPACE_MARGIN > free_bytes(folder):
        raise disk_full(folder, needed, reclaim())


def reserve(store: Path, folder: Path, needed: int, reclaim: Callable[[], str] = str) -> None:
    """Allocate the store's blocks now, so a disk that filled since `require_space` fails
    here with the same line instead of killing a writer later."""
    fd = os.open(store, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(folder, needed, reclaim()) from None
        if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # the filesystem cannot preallocate
            raise
    finally:
        os.close(fd)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
