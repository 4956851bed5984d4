"""Prepared cache: every usable image decoded and resized once, kept as one uint8 array.

Decoding JPEGs costs more than training a small net on them, so `vislab prepare` (or
`data.cache: true`) writes `DATASET_DIR/cache/<manifest-hash[:12]>-<W>x<H>/`:

- `images.npy`: N x H x W x 3 uint8, read back memory-mapped (or loaded whole into RAM);
- `index.json`: format version, manifest hash, what the pixels are (`Pixels`: size, the
  model's crop, resize method, grey or colour, JPEG draft hint), decoder versions, the
  dataset folder it was prepared in, and the paths, labels, splits and file (size, mtime_ns)
  of the rows in array order, the rows whose file cannot be read (with why), and block
  checksums of `images.npy`.

Correctness rules (the checks themselves live in `cache_check`):

- The key holds the manifest's hash, so a changed dataset gets a new key: a cache is never
  served for a manifest it was not built from. An index whose hash, version, size or row
  count does not match is treated as absent and rebuilt.
- The same outcome as reading the files: every open stats the files and re-decodes those
  replaced or deleted since prepare (one line says so). With `skip_unreadable` (training) a
  file that is gone or no longer decodes becomes an unreadable row, which the cached loader
  skips and reports exactly as the no-cache loader does (so `train.health.max_bad_images`
  applies the same); without it (`vislab prepare`) it is a one-line error. A store built by
  another Pillow / torchvision or pixel limit is rebuilt, and so is one whose bytes no
  longer match their checksums. Re-decoding only the changed rows copies the others from
  blocks whose checksums all still match (every block read), never unchecked bytes.
- A store of a dataset folder copied or moved elsewhere is served only while the manifest's
  paths resolve to the files it holds (relative ones do not): else it is rebuilt.
- The space of the array and the index is checked and the array allocated before writing,
  and a disk that fills anyway (or runs out of inodes) is mapped to the same one line,
  naming stores of earlier manifests that could be deleted; the temporary folder is
  removed on any failure, and those of killed prepares (of any store) by the next build.
- A store folder that is a symbolic link is served, but not rebuilt through the link (that
  would replace the link or empty its target): one line says so.
- A store is written into a temporary folder and renamed into place in one step, so a
  crash leaves no half-written store under the real key.
- Builds of one store hold `cache/<key>.lock` (the next waits) and look for a valid store
  again once they hold it, so trainings that start together build it once and none removes
  a store another is renaming into place. A folder where the store cannot be written (a
  read-only share) is one line with the ways out; a store prepared there before is served
  without writing.
- The pixels are exactly what the eval transform produces before its centre crop, so that
  `BatchTransform`'s centre crop of them is exactly what `vislab evaluate` feeds the model:
  decode with EXIF orientation and the file loaders' JPEG draft hint
  (`transforms.draft_side`), grey runs converted to grey before resizing as the eval
  transform does, then for a square target the eval's trim and shorter-side resize and the
  window whose centre crop is the eval's (`resize_to`), for a WxH target resize to WxH,
  with torchvision's antialiased resize. Tests check this equality for every crop_pct.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vislab.data.cache_check import (
    BLOCK_BYTES,
    BlockCheck,
    block_digests,
    blocks_intact,
    changed_rows,
    corrupted_rows,
    decoder_versions,
    disk_full,
    file_stats,
    require_space,
    reserve,
    unreadable_error,
)
from vislab.data.manifest import dataset_max_pixels, manifest_hash, read_manifest, require_dataset, usable
from vislab.errors import VislabError
from vislab.fsguard import MAX_PIXELS, pid_alive
from vislab.locks import file_lock_is_free, waiting_lock
from vislab.workers import die_with_parent

CACHE_DIRNAME = "cache"
INDEX_NAME = "index.json"
IMAGES_NAME = "images.npy"
# 2: per-file stats, block checksums and decoder versions; 3: unreadable rows; 4: the model's
# crop, grey and the file loaders' draft hint (3's crop_pct < 1 stores sat a pixel off)
FORMAT_VERSION = 4
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# at or above this share of available memory the array stays memory-mapped instead of loaded
RAM_SHARE = 0.5


def parse_cache_size(size: int | str | Sequence[int], option: str = "--size") -> tuple[int, int]:
    """'32' / 32 -> (32, 32); '64x48' / (64, 48) -> (64, 48) as (width, height)."""
    if isinstance(size, int):
        w = h = size
    elif isinstance(size, str):
        parts = size.lower().replace("*", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise VislabError(f"{option} {size!r}: expected a number (32) or WIDTHxHEIGHT (64x48)") from None
        if len(nums) not in (1, 2):
            raise VislabError(f"{option} {size!r}: expected a number (32) or WIDTHxHEIGHT (64x48)")
        w, h = (nums[0], nums[0]) if len(nums) == 1 else (nums[0], nums[1])
    else:
        w, h = (int(v) for v in size)
    if w < 1 or h < 1 or w > 4096 or h > 4096:
        raise VislabError(f"{option} {size!r}: width and height must be between 1 and 4096")
    return w, h


@dataclass(frozen=True)
class Pixels:
    """What a store's pixels are, all of it in its key: the eval geometry at `size` (W, H)
    for a model that centre-crops `keep` (W, H) of it, resized with `interpolation`, in
    colour or `grey`."""

    size: tuple[int, int]
    keep: tuple[int, int]
    interpolation: str = "bilinear"
    grey: bool = False

    @property
    def draft(self) -> int:
        """The JPEG draft hint's side, as the file loaders decode for this geometry."""
        from vislab.data.transforms import draft_side

        return draft_side(self.size)

    def key(self, manifest_sha: str) -> str:
        (w, h), (kw, kh) = self.size, self.keep
        crop = "" if self.keep == self.size else f"-crop{kw}x{kh}"
        interp = "" if self.interpolation == "bilinear" else f"-{self.interpolation}"
        return f"{manifest_sha[:12]}-{w}x{h}{crop}{interp}{'-grey' if self.grey else ''}"

    def fields(self) -> dict[str, Any]:
        """The index entries that say what the pixels are (all must match to serve a store)."""
        return {"size": list(self.size), "keep": list(self.keep), "interpolation": self.interpolation, "grey": self.grey, "draft": self.draft}

    def prepare_options(self) -> str:
        """The `vislab prepare` options that build this store."""
        (w, h), (kw, kh) = self.size, self.keep
        crop = "" if self.keep == self.size else f" --crop {kw}x{kh}"
        interp = "" if self.interpolation == "bilinear" else f" --interpolation {self.interpolation}"
        return f"--size {w}x{h}{crop}{interp}{' --grey' if self.grey else ''}"


def pixels_of(
    size: int | str | Sequence[int], interpolation: str = "bilinear", keep: int | str | Sequence[int] | None = None, grey: bool = False
) -> Pixels:
    """The `Pixels` of a store at `size` for a model input `keep` (default: all of it)."""
    if interpolation not in INTERPOLATIONS:
        raise VislabError(f"--interpolation {interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}")
    wh = parse_cache_size(size)
    kept = wh if keep is None else parse_cache_size(keep, "--crop")
    if kept[0] > wh[0] or kept[1] > wh[1]:
        raise VislabError(f"--crop {kept[0]}x{kept[1]}: larger than --size {wh[0]}x{wh[1]}; the model's input is cropped from the store, so it is at most --size")
    return Pixels(wh, kept, interpolation, bool(grey))


def cache_root(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / CACHE_DIRNAME


def resize_to(img: Any, size: tuple[int, int], interpolation: str = "bilinear", keep: tuple[int, int] | None = None) -> Any:
    """The eval geometry before its centre `keep` crop (W, H; default `size`), at `size`.

    WxH: resized to it. Square: the eval's trim of over-long images, its shorter-side resize,
    then the size x size window whose own centre `keep` crop is the eval's centre crop of the
    resized image. The centred window would not do: the two crops each round their offset,
    and land a pixel off the eval's whenever size - keep is odd."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from vislab.data.transforms import trim_long_side

    w, h = size
    kw, kh = keep or size
    mode = InterpolationMode(interpolation)
    if w != h:
        return F.resize(img, [h, w], interpolation=mode, antialias=True)
    out = F.resize(trim_long_side(img, h, kh), [h], interpolation=mode, antialias=True)
    oh, ow = F.get_size(out)
    top = round((oh - kh) / 2) - round((h - kh) / 2)  # Python's round, as torchvision's centre crop
    left = round((ow - kw) / 2) - round((w - kw) / 2)
    return F.crop(out, top, left, h, w)


def decode_resized(path: str, pixels: Pixels, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image as H x W x 3 uint8, the way the cache stores it (grey repeated 3 times)."""
    from vislab.data.io import load_image

    img = load_image(path, (pixels.draft, pixels.draft), max_pixels)
    if pixels.grey:  # before resizing, as the eval transform converts
        img = img.convert("L")
    out = np.asarray(resize_to(img, pixels.size, pixels.interpolation, pixels.keep), dtype=np.uint8)
    return np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out


@dataclass
class PreparedCache:
    """An opened cache: the pixel array (memory-mapped or in RAM) and its rows; `unreadable`:
    row -> why, for rows whose file could not be read (their pixels are never served);
    `check`: for a memory-mapped array, what checks each block the first time it is read."""

    root: Path
    images: np.ndarray
    paths: list[str]
    labels: list[str]
    splits: list[str]
    pixels: Pixels
    manifest_hash: str
    unreadable: dict[int, str] = field(default_factory=dict)
    check: BlockCheck | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.size

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def in_memory(self) -> bool:
        return not isinstance(self.images, np.memmap)

    def indices(self, paths: Sequence[str]) -> np.ndarray:
        """Array rows of `paths` (all must be in the cache)."""
        where = {p: i for i, p in enumerate(self.paths)}
        missing = [p for p in paths if p not in where]
        if missing:
            raise VislabError(
                f"{self.root}: {len(missing)} image(s) not in the cache, e.g. {missing[0]}; "
                "delete the folder or run `vislab prepare` again"
            )
        return np.fromiter((where[p] for p in paths), dtype=np.int64, count=len(paths))


def _read_index(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / INDEX_NAME).read_text())
    except (OSError, ValueError):
        return None


@dataclass
class _Stale:
    """Why a store cannot be served as it is: `reason` (None: absent or partial, rebuilt
    silently) and, when only some files changed, their rows (re-decoded into a copy)."""

    reason: str | None = None
    index: dict[str, Any] | None = None
    changed: list[int] = field(default_factory=list)


def _inspect(
    folder: Path, sha: str, pixels: Pixels, decoder: dict[str, Any], skip_unreadable: bool, dataset_dir: Path
) -> tuple[dict[str, Any] | None, _Stale]:
    """(the index, nothing stale) for a complete store built from this manifest with these
    pixels by this decoder from the files its paths name now, unchanged since, else (None,
    why not). Files gone, and files unchanged since they failed to decode, are the one-line
    error unless `skip_unreadable`."""
    index = _read_index(folder)
    if not index or index.get("version") != FORMAT_VERSION or index.get("manifest_hash") != sha:
        return None, _Stale()
    if any(index.get(k) != v for k, v in pixels.fields().items()):
        return None, _Stale()
    try:
        arr = np.load(folder / IMAGES_NAME, mmap_mode="r")
    except (OSError, ValueError):
        return None, _Stale()
    w, h = pixels.size
    paths = index.get("paths", [])
    if arr.shape != (len(paths), h, w, 3) or arr.dtype != np.uint8 or len(index.get("files", [])) != len(paths):
        return None, _Stale()
    if index.get("decoder") != decoder:
        was = ", ".join(f"{k} {v}" for k, v in (index.get("decoder") or {}).items()) or "unknown"
        now = ", ".join(f"{k} {v}" for k, v in decoder.items())
        return None, _Stale(f"prepared with {was}, now {now}")
    if index.get("dataset") != str(dataset_dir.absolute()):  # moved or copied: relative manifest paths name other files
        named = usable(read_manifest(dataset_dir))["path"].tolist()
        if named != paths:
            moved = next((old, new) for old, new in zip(paths, named) if old != new)
            return None, _Stale(f"it holds the images at {moved[0]}, the manifest now names {moved[1]} (the dataset folder was copied or moved)")
    now = file_stats(paths)
    changed = changed_rows(now, index["files"])
    if not skip_unreadable:
        bad = {i: "file not found" for i, st in enumerate(now) if st is None}
        redone = set(changed)
        bad.update({int(r): why for r, why in index.get("unreadable", []) if int(r) not in redone})
        if bad:
            raise unreadable_error([(paths[r], why) for r, why in sorted(bad.items())], len(paths))
    if changed:
        return None, _Stale(f"{len(changed)} image(s) changed since it was prepared, e.g. {paths[changed[0]]}", index, changed)
    return index, _Stale()


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def open_cache(
    dataset_dir: str | Path,
    size: int | str | Sequence[int],
    interpolation: str = "bilinear",
    in_memory: bool | None = None,
    skip_unreadable: bool = False,
    *,
    keep: int | str | Sequence[int] | None = None,
    grey: bool = False,
) -> PreparedCache | None:
    """The valid cache of the dataset's current manifest at `size` for a model input `keep`
    (default: `size`), in grey or colour, or None.

    `in_memory=None` loads the array into RAM when it takes under half the available
    memory, else keeps it memory-mapped (the OS then pages it in as batches touch it).
    Images it holds that cannot be read are the cache's `unreadable` rows with
    `skip_unreadable`, else a one-line error.
    """
    return _open(dataset_dir, pixels_of(size, interpolation, keep, grey), in_memory, skip_unreadable)[0]


def _open(dataset_dir: str | Path, pixels: Pixels, in_memory: bool | None, skip_unreadable: bool) -> tuple[PreparedCache | None, _Stale]:
    require_dataset(dataset_dir)  # a photo folder, or a curate not finished, is read_manifest's one line
    sha = manifest_hash(dataset_dir)
    folder = cache_root(dataset_dir) / pixels.key(sha)
    index, stale = _inspect(folder, sha, pixels, decoder_versions(dataset_max_pixels(dataset_dir)), skip_unreadable, Path(dataset_dir))
    if index is None:
        return None, stale
    unreadable = {int(row): str(why) for row, why in index.get("unreadable", [])}
    images: np.ndarray = np.load(folder / IMAGES_NAME, mmap_mode="r")
    if in_memory or (in_memory is None and images.nbytes < RAM_SHARE * _available_memory()):
        images = np.array(images)  # a real copy: reads the file once, then no page faults
    if not blocks_intact(folder / IMAGES_NAME, images, index.get("digests")):
        return None, _Stale("its images.npy does not match the checksums recorded when it was prepared (corrupted)")
    check = None
    if isinstance(images, np.memmap) and len(images):
        fix = f"delete {folder} (or run `vislab prepare {dataset_dir} {pixels.prepare_options()} --force`) and run again"
        check = BlockCheck(folder / IMAGES_NAME, index["digests"], images[0].nbytes, fix)
    cache = PreparedCache(folder, images, index["paths"], index["labels"], index["splits"], pixels, sha, unreadable, check)
    return cache, stale


def _fill_chunk(store: str, items: list[tuple[int, str]], pixels: Pixels, max_pixels: int) -> dict[int, str]:
    """Worker: decode each (row, path) into its row of the store (zeros for one that cannot
    be decoded); returns row -> why for those."""
    from vislab.data.io import ImageDecodeError

    arr = np.load(store, mmap_mode="r+")
    failed: dict[int, str] = {}
    for row, path in items:
        try:
            arr[row] = decode_resized(path, pixels, max_pixels)
        except ImageDecodeError as err:
            arr[row] = 0
            failed[row] = err.reason
    arr.flush()
    return failed


def _progress(console: Any, what: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, disable=console is None
    )


def _fill(store: Path, items: list[tuple[int, str]], pixels: Pixels, workers: int, console: Any, max_pixels: int) -> dict[int, str]:
    """Decode each (row, path) into its row of `store`, in `workers` processes; returns row ->
    why for the images that cannot be decoded."""
    from concurrent.futures.process import BrokenProcessPool

    from vislab.data.checks import worker_count

    n = len(items)
    workers = min(worker_count(workers), max(1, n))
    chunk = max(1, min(512, -(-n // (workers * 8))))
    starts = list(range(0, n, chunk))
    progress = _progress(console, f"preparing {pixels.size[0]}x{pixels.size[1]}")
    task = progress.add_task("prepare", total=n)
    failed: dict[int, str] = {}
    try:
        if workers <= 1:
            progress.start()
            for s in starts:
                failed.update(_fill_chunk(str(store), items[s : s + chunk], pixels, max_pixels))
                progress.advance(task, min(chunk, n - s))
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                todo = {pool.submit(_fill_chunk, str(store), items[s : s + chunk], pixels, max_pixels): min(chunk, n - s) for s in starts}
                progress.start()  # after the workers are forked
                for fut in as_completed(todo):
                    failed.update(fut.result())
                    progress.advance(task, todo[fut])
    except BrokenProcessPool:
        raise VislabError(
            f"a worker preparing the cache in {store.parent} died (out of memory or disk?); "
            "run `vislab prepare --workers 1` to see the error"
        ) from None
    finally:
        progress.stop()
    return failed


def _clean_tmp(root: Path) -> None:
    """Remove the temporary folders of any store left by a process that died mid-prepare
    (killed outright: nothing removed them). A store's temporary folder exists only while
    its builder holds the store's lock, so one whose lock is free is left over even when
    its pid now names another process."""
    for tmp in root.glob("*.tmp-*"):
        key, _, pid = tmp.name.rpartition(".tmp-")
        if not pid.isdigit() or tmp.is_symlink():
            continue
        if not pid_alive(int(pid)) or file_lock_is_free(root / f"{key}.lock"):
            shutil.rmtree(tmp, ignore_errors=True)


def _reclaimable(root: Path, sha: str) -> str:
    """What stores of other manifests hold under `root` (this dataset opens only its current
    manifest's), as the start of the disk-full line's advice; '' when none."""
    try:
        old = [f for f in root.glob("*-*") if f.is_dir() and not f.is_symlink() and ".tmp-" not in f.name and not f.name.startswith(sha[:12])]
        held = sum(p.lstat().st_blocks * 512 for f in old for p in f.iterdir())
    except OSError:  # the line it adds to is worth more than this detail
        return ""
    if not old:
        return ""
    return (
        f"{len(old)} store(s) there of earlier manifests of this dataset hold {held / 1e6:,.1f} MB and are never opened "
        f"again (e.g. {old[0].name}): delete them, or "
    )


def prepare_cache(
    dataset_dir: str | Path,
    size: int | str | Sequence[int],
    *,
    interpolation: str = "bilinear",
    keep: int | str | Sequence[int] | None = None,
    grey: bool = False,
    workers: int = 0,
    force: bool = False,
    console: Any = None,
    in_memory: bool | None = None,
    skip_unreadable: bool = False,
    explain: bool = False,
) -> PreparedCache:
    """The dataset's cache at `size` for a model input `keep` (default: `size`), in grey or
    colour, built first when absent, stale or `force`d.

    Decodes every usable manifest row (all splits) in `workers` processes (0 = one per
    core) with a progress bar on `console` (None = silent). An image that cannot be read
    is an `unreadable` row with `skip_unreadable` (what training asks for: it skips them up
    to `train.health.max_bad_images`), else a one-line error. `explain` (training, which
    builds its store unasked) names the store it builds, the `vislab prepare` command for it
    and any store of the manifest that does not fit the model, and why.

    Builds of one store wait for each other (a lock file beside it), so two trainings that
    start together build it once.
    """
    pixels = pixels_of(size, interpolation, keep, grey)
    dataset_dir = Path(dataset_dir)
    if not force:  # without the lock: a read-only dataset with its store prepared is served
        found = _open(dataset_dir, pixels, in_memory, skip_unreadable)[0]
        if found is not None:
            return found
    sha = manifest_hash(dataset_dir)
    root = cache_root(dataset_dir)
    with _writing(root, dataset_dir, pixels):
        root.mkdir(parents=True, exist_ok=True)
        # one build per store at a time: the next waits, then opens what the first built
        with waiting_lock(root / f"{pixels.key(sha)}.lock"):
            stale = _Stale()
            if not force:
                found, stale = _open(dataset_dir, pixels, in_memory, skip_unreadable)
                if found is not None:
                    return found
            _build(dataset_dir, root, sha, pixels, stale, workers, console, skip_unreadable, explain)
            found = _open(dataset_dir, pixels, in_memory, skip_unreadable)[0]
    if found is None:  # pragma: no cover - only if the dataset changed during the build
        raise VislabError(f"{dataset_dir}: the dataset changed while the cache was built; run `vislab prepare` again")
    return found


@contextmanager
def _writing(root: Path, dataset_dir: Path, pixels: Pixels) -> Iterator[None]:
    """A store that cannot be written under `root` (a read-only or someone else's dataset
    folder) is one line naming the folder and the ways out, not an OSError traceback."""
    try:
        yield
    except OSError as err:
        where = Path(os.path.abspath(err.filename)) if isinstance(err.filename, (str, os.PathLike)) else None
        if where is None or not where.is_relative_to(os.path.abspath(dataset_dir)):
            raise
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(root) from None
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise VislabError(
            f"{root}: the cache cannot be written there ({err.strerror}); set data.cache: false to train from the "
            f"image files, or make the folder writable, or run `vislab prepare {dataset_dir} {pixels.prepare_options()}` "
            "once where it can be written (a prepared store is then read without writing)"
        ) from None


def _explain_build(dataset_dir: Path, root: Path, sha: str, pixels: Pixels, update: bool) -> None:
    """Say which store training builds (or `update`s: re-decodes the changed rows of), the
    `vislab prepare` command that does it ahead, and why a store of this manifest already
    there is not the one this model needs."""
    doing, ahead = ("updating", "updates") if update else ("building", "builds")
    print(
        f"cache {root / pixels.key(sha)}: {doing} it (`vislab prepare {dataset_dir} {pixels.prepare_options()}` {ahead} it ahead)",
        file=sys.stderr,
        flush=True,
    )
    for folder in sorted(root.glob(f"{sha[:12]}-*")):
        index = _read_index(folder) if folder.is_dir() and folder.name != pixels.key(sha) else None
        if not index or index.get("manifest_hash") != sha:
            continue
        why = [
            f"{name} {_shown(index.get(name))}, this model's {_shown(want)}"
            for name, want in pixels.fields().items()
            if name != "draft" and index.get(name) != want
        ]
        if index.get("version") != FORMAT_VERSION:
            why.append("prepared by an older vislab")
        print(f"cache {folder}: not this model's store ({'; '.join(why)})", file=sys.stderr, flush=True)


def _shown(value: Any) -> str:
    """An index field as the prepare options write it: [64, 48] -> 64x48, grey True -> yes."""
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _reused_rows(store: Path, stale: _Stale, paths: list[str]) -> tuple[set[int] | None, str]:
    """The rows to re-decode when the old store's other rows can be copied (None: rebuild
    it all) and what the line saying so adds: only rows in blocks that still match their
    checksums are copied, so a store corrupted since it was checked is not carried over."""
    if stale.index is None or stale.index.get("paths") != paths:
        return None, ""
    corrupted = corrupted_rows(store, stale.index.get("digests"))
    if corrupted is None:
        return None, ", and its images.npy does not match its checksums"
    extra = corrupted - set(stale.changed)
    said = f", and the blocks holding {len(extra)} other image(s) no longer match their checksums (corrupted)" if extra else ""
    return set(stale.changed) | corrupted, said


def _index_bytes(paths: list[str], labels: list[str], splits: list[str], pixel_bytes: int) -> int:
    """About what index.json takes: its per-row lists, a [size, mtime_ns] per file and a
    digest per block (unreadable rows' reasons are not known yet)."""
    rows = len(json.dumps(paths)) + len(json.dumps(labels)) + len(json.dumps(splits))
    return rows + 48 * len(paths) + 24 * (pixel_bytes // BLOCK_BYTES + 1) + 4096


def _build(
    dataset_dir: Path,
    root: Path,
    sha: str,
    pixels: Pixels,
    stale: _Stale,
    workers: int,
    console: Any,
    skip_unreadable: bool,
    explain: bool = False,
) -> None:
    """Write the store into a temporary folder and rename it over the key's (with its lock held)."""
    df = read_manifest(dataset_dir)
    rows = usable(df)
    if rows.empty:
        raise VislabError(f"{dataset_dir}: the manifest has no usable rows (status ok) to prepare")
    key = pixels.key(sha)
    final = root / key
    if final.is_symlink():  # replacing it would either drop the link or empty its target
        raise VislabError(
            f"{final}: a symbolic link (to {os.readlink(final)}), and this store must be rebuilt, which replaces its "
            f"folder; remove the link (and its target, if no longer wanted), or link the whole {root} folder instead"
        )
    _clean_tmp(root)
    paths = rows["path"].tolist()
    stats = file_stats(paths)  # before decoding: a file changed meanwhile is caught on the next open
    missing = [p for p, st in zip(paths, stats) if st is None]
    if missing and not skip_unreadable:
        raise unreadable_error([(p, "file not found") for p in missing], len(paths))
    redo, said = _reused_rows(final / IMAGES_NAME, stale, paths)
    if explain:
        _explain_build(dataset_dir, root, sha, pixels, redo is not None)
    if stale.reason:
        what = "rebuilding it" if redo is None else f"re-decoding those {len(redo)}"
        print(f"cache {final}: {stale.reason}{said}; {what}", file=sys.stderr, flush=True)
    tmp = root / f"{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    w, h = pixels.size
    max_pixels = dataset_max_pixels(dataset_dir)
    labels, splits = rows["label"].tolist(), rows["split"].tolist()
    try:
        pixel_bytes = len(paths) * h * w * 3
        needed = pixel_bytes + _index_bytes(paths, labels, splits, pixel_bytes)
        reclaim = partial(_reclaimable, root, sha)  # only worked out for the disk-full line
        require_space(root, needed, reclaim)
        store = np.lib.format.open_memmap(tmp / IMAGES_NAME, mode="w+", dtype=np.uint8, shape=(len(paths), h, w, 3))
        del store  # workers open it themselves
        reserve(tmp / IMAGES_NAME, root, needed, reclaim)
        start = time.perf_counter()
        unreadable: dict[int, str] = {}
        if redo is not None:
            _copy_rows(final / IMAGES_NAME, tmp / IMAGES_NAME)
            todo = [(i, paths[i]) for i in sorted(redo)]
            redone = redo  # the others keep their pixels, and their unreadable mark
            unreadable = {int(r): why for r, why in (stale.index or {}).get("unreadable", []) if int(r) not in redone}
        else:
            todo = list(enumerate(paths))
        unreadable.update(_fill(tmp / IMAGES_NAME, todo, pixels, workers, console, max_pixels))
        if unreadable and not skip_unreadable:
            raise unreadable_error([(paths[r], why) for r, why in sorted(unreadable.items())], len(paths))
        index = {
            "version": FORMAT_VERSION,
            "manifest_hash": sha,
            **pixels.fields(),
            "decoder": decoder_versions(max_pixels),
            "resize": "eval geometry before the centre keep crop: square -> shorter side + the window whose centre keep crop is the eval's; WxH -> direct resize (antialiased)",
            "layout": "N x H x W x 3 uint8 RGB",
            "count": len(paths),
            "dataset": str(dataset_dir.absolute()),  # where the manifest's relative paths were resolved
            "paths": paths,
            "labels": labels,
            "splits": splits,
            "files": [None if st is None else list(st) for st in stats],
            "unreadable": sorted(unreadable.items()),
            "digests": block_digests(tmp / IMAGES_NAME),
            "prepare_seconds": round(time.perf_counter() - start, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / INDEX_NAME).write_text(json.dumps(index))
        if final.exists():  # stale or partial (a valid one returned above), or force
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_rows(old: Path, new: Path, rows_per_step: int = 4096) -> None:
    """Copy an old store's pixels into a new one of the same shape, a slice at a time."""
    src = np.load(old, mmap_mode="r")
    dst = np.load(new, mmap_mode="r+")
    for s in range(0, len(src), rows_per_step):
        dst[s : s + rows_per_step] = src[s : s + rows_per_step]
    dst.flush()


def cache_summary(cache: PreparedCache) -> str:
    mb = cache.images.nbytes / 1e6
    where = "in RAM" if cache.in_memory else "memory-mapped"
    (w, h), (kw, kh) = cache.size, cache.pixels.keep
    extra = ("" if (kw, kh) == (w, h) else f", cropped to {kw}x{kh} by the model") + (", grey" if cache.pixels.grey else "")
    return f"{len(cache)} images at {w}x{h}{extra} ({mb:.1f} MB, {where}): {cache.root}"
