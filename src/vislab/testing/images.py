"""Image files for curation tests: folder trees, near copies, and every kind of broken file.

Pictures are smooth random patterns (a few low-frequency waves), so two different seeds
give clearly different perceptual hashes while a resized or re-encoded copy stays close:
the same property real photos have, at a few hundred bytes per file.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112


def smooth_image(seed: int, size: tuple[int, int] = (48, 32), mode: str = "RGB") -> Image.Image:
    """A structured random picture of `size` (width, height); same seed, same picture."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xx, yy = xx / max(w, 1), yy / max(h, 1)
    channels = []
    for _ in range(3):
        acc = np.zeros((h, w))
        for _ in range(4):
            fx, fy = rng.uniform(0.5, 3.0, 2) * rng.choice([-1, 1], 2)
            acc += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
        channels.append(acc)
    arr = np.stack(channels, axis=-1)
    arr = (arr - arr.min()) / (np.ptp(arr) + 1e-9) * 255
    return Image.fromarray(arr.astype(np.uint8), "RGB").convert(mode)


def write_image(
    path: str | Path,
    seed: int = 0,
    size: tuple[int, int] = (48, 32),
    fmt: str | None = None,
    mode: str = "RGB",
    orientation: int | None = None,
    quality: int = 90,
) -> Path:
    """Write one picture; `fmt` defaults from the suffix, `orientation` adds an EXIF tag
    (the pixels are stored as given, so orientation 6 means 'display rotated')."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = smooth_image(seed, size, mode)
    kwargs: dict = {}
    fmt = fmt or Image.registered_extensions().get(path.suffix.lower(), "PNG")
    if fmt == "JPEG":
        kwargs["quality"] = quality
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        kwargs["exif"] = exif
    im.save(path, fmt, **kwargs)
    return path


def write_image_folder(
    root: str | Path,
    classes: Mapping[str, int] | Iterable[str] = ("cat", "dog"),
    per_class: int = 4,
    size: tuple[int, int] = (48, 32),
    suffix: str = ".png",
    seed: int = 0,
    nested: bool = False,
) -> list[Path]:
    """ROOT/<class>/<class>_NNN<suffix> (or ROOT/<class>/sub/... when `nested`); `classes`
    is a name list (each `per_class` images) or a name -> count mapping. Every image is
    distinct. Returns the paths in order."""
    counts = dict(classes) if isinstance(classes, Mapping) else {c: per_class for c in classes}
    paths = []
    k = seed * 100_003
    for name, n in counts.items():
        for i in range(n):
            folder = Path(root) / name / (f"part{i % 2}" if nested else "")
            paths.append(write_image(folder / f"{name}_{i:03d}{suffix}", seed=k, size=size))
            k += 1
    return paths


def write_unlabelled_folder(
    root: str | Path, n: int = 4, size: tuple[int, int] = (48, 32), seed: int = 0
) -> list[Path]:
    """A flat folder of pictures, no classes (self-supervised data)."""
    return [write_image(Path(root) / f"img_{i:03d}.jpg", seed=seed * 7919 + i, size=size) for i in range(n)]


def near_copy(src: str | Path, dst: str | Path, scale: float = 0.75, quality: int = 70) -> Path:
    """A resized, re-encoded copy: different bytes, same picture."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        w, h = im.size
        small = im.convert("RGB").resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS
        )
    fmt = Image.registered_extensions().get(dst.suffix.lower(), "JPEG")
    small.save(dst, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return dst


def exact_copy(src: str | Path, dst: str | Path) -> Path:
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(Path(src).read_bytes())
    return dst


# ---------------------------------------------------------------- broken files


def write_truncated(
    path: str | Path, seed: int = 0, size: tuple[int, int] = (64, 48), keep: float = 0.5
) -> Path:
    """A JPEG cut after `keep` of its bytes: the header opens, the decode fails."""
    buf = io.BytesIO()
    smooth_image(seed, size).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    return _write(path, data[: int(len(data) * keep)])


def write_zero_byte(path: str | Path) -> Path:
    return _write(path, b"")


def write_not_an_image(path: str | Path, text: str = "not a picture, whatever the name says\n") -> Path:
    return _write(path, text.encode("utf-8"))


EPS_BYTES = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def write_eps(path: str | Path) -> Path:
    """A tiny Encapsulated PostScript file: Pillow would hand it to Ghostscript to decode."""
    return _write(path, EPS_BYTES)


def fake_ghostscript(folder: str | Path) -> Path:
    """Put an executable `gs` in `folder` that appends each call's arguments to a log file and
    answers `--version` (so Pillow believes Ghostscript is installed); returns the log's path,
    which exists only once `gs` ran. Put `folder` first on PATH."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "gs.log"
    gs = folder / "gs"
    gs.write_text(f'#!/bin/sh\necho "gs $*" >> "{log}"\n[ "$1" = --version ] && {{ echo 10.02.1; exit 0; }}\nexit 1\n')
    gs.chmod(0o755)
    return log


def write_corrupt_png(path: str | Path, seed: int = 0) -> Path:
    """A PNG whose compressed pixel data is scrambled: it opens, but cannot be decoded."""
    buf = io.BytesIO()
    smooth_image(seed, (32, 32)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.find(b"IDAT") + 4
    for i in range(start + 8, min(start + 200, len(data) - 16)):
        data[i] ^= 0x5A
    return _write(path, bytes(data))


def write_broken_header(path: str | Path) -> Path:
    """Starts like a PNG, then garbage: an image file that no decoder can open."""
    return _write(path, b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8)


def write_sixteen_bit(
    path: str | Path, seed: int = 0, size: tuple[int, int] = (32, 32), mode: str = "L", scale: int = 257
) -> Path:
    """A 16-bit PNG of `smooth_image(seed, size, mode)` (mode L, LA, RGB or RGBA: Pillow reads
    the first as I;16, the others as 8-bit), each 8-bit value v stored as v * 257 so that an
    8-bit reading gives that picture back (`scale=16`: as 12-bit camera data, 0..4080, stored as
    is). Written chunk by chunk as the PNG specification lays it out, since Pillow writes only
    the greyscale kind."""
    colour_type = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}[mode]
    w, h = size
    samples = (np.asarray(smooth_image(seed, size, mode)).astype(np.uint16) * scale).astype(">u2")  # PNG is big-endian
    rows = samples.reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    return _write(path, data)


def write_float_tiff(path: str | Path, size: tuple[int, int] = (32, 32)) -> Path:
    """A 32-bit floating-point greyscale TIFF (mode F, like a depth map in metres): it decodes,
    but nothing says which values are black and white."""
    depth = np.linspace(0.5, 12.0, size[0] * size[1], dtype=np.float32).reshape(size[1], size[0])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(depth).save(path, "TIFF")
    return path


def write_bad_ztxt_png(path: str | Path, seed: int = 0, method: int = 1, size: tuple[int, int] = (32, 32)) -> Path:
    """A valid PNG with a zTXt chunk after its pixel data whose compression method is `method`
    (only 0 exists): it opens, and Pillow raises SyntaxError (not OSError) while loading.

    The chunk's CRC is correct, so Pillow gets as far as parsing it."""
    buf = io.BytesIO()
    smooth_image(seed, size).save(buf, "PNG")
    data = buf.getvalue()
    iend = data.rfind(b"IEND") - 4  # the IEND chunk starts with its length
    chunk = _png_chunk(b"zTXt", b"Comment\x00" + bytes([method]) + zlib.compress(b"hello"))
    return _write(path, data[:iend] + chunk + data[iend:])


def write_png_exif_after_pixels(path: str | Path, orientation: int, seed: int = 0, size: tuple[int, int] = (48, 32)) -> Path:
    """A PNG whose EXIF orientation is in an eXIf chunk after its pixel data (allowed by the
    PNG spec): a header-only read sees no orientation, a full decode applies it."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    buf = io.BytesIO()
    smooth_image(seed, size).save(buf, "PNG")
    data = buf.getvalue()
    iend = data.rfind(b"IEND") - 4  # the IEND chunk starts with its length
    chunk = _png_chunk(b"eXIf", exif.tobytes())
    return _write(path, data[:iend] + chunk + data[iend:])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def write_huge_header_png(path: str | Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )
    return _write(path, data)


def write_broken_set(folder: str | Path) -> dict[str, Path]:
    """One file per quarantine reason, keyed by the reason curation should give it."""
    folder = Path(folder)
    return {
        "truncated": write_truncated(folder / "truncated.jpg"),
        "zero_byte": write_zero_byte(folder / "empty.jpg"),
        "not_an_image": write_not_an_image(folder / "notes.jpg"),
        "unreadable": write_corrupt_png(folder / "scrambled.png"),
        "unsupported_mode": write_float_tiff(folder / "depth.tif"),
        "decompression_bomb": write_huge_header_png(folder / "bomb.png"),
    }


def _write(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
