"""Robust image decoding shared by curation and training.

Every reader of pixels goes through here so that all commands see the same image: EXIF
orientation applied, one colour mode (RGB), transparency flattened onto white, and JPEG
draft mode used when only a small version is needed (decoding at 1/2..1/8 scale is several
times cheaper for camera photos).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

from PIL import Image, ImageOps

from vislab.errors import VislabError

ORIENTATION_TAG = 0x0112
# EXIF orientations 5..8 rotate by 90 degrees, so the stored width is the displayed height.
SWAPS_AXES = frozenset({5, 6, 7, 8})
# Modes with an unambiguous conversion to 8-bit RGB. 16-bit and float images (depth maps,
# medical scans) need a scaling choice this tool cannot guess, so curation quarantines them.
SUPPORTED_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

ImageSource = str | Path | BinaryIO | bytes


@dataclass(frozen=True)
class ImageInfo:
    """What an image header tells without decoding pixels; sizes are as displayed."""

    format: str
    mode: str
    width: int
    height: int
    orientation: int
    stored_width: int
    stored_height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


class UnsupportedModeError(ValueError):
    """The image decodes, but its pixel mode has no faithful 8-bit RGB conversion."""


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    return Image.open(source)


def orientation_of(im: Image.Image, header_only: bool = False) -> int:
    """EXIF orientation 1..8 (1 when absent or malformed: a broken EXIF block is not fatal).

    A PNG may keep its EXIF after the pixel data, and Pillow decodes the whole image to find
    it; `header_only` skips that search (a probe must stay cheap). Call this after `load()`
    when a decode error must not be mistaken for missing EXIF.
    """
    if header_only and im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF comes in many exception types
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in SWAPS_AXES else (width, height)


def info_of(im: Image.Image, header_only: bool = False) -> ImageInfo:
    """Facts of an opened image; see `orientation_of` for `header_only`."""
    orientation = orientation_of(im, header_only)
    w, h = im.size
    ow, oh = oriented_size(w, h, orientation)
    return ImageInfo(im.format or "", im.mode, ow, oh, orientation, w, h)


def probe(path: ImageSource) -> ImageInfo:
    """Read format, mode, displayed size and orientation from the header only (no decode)."""
    with _open(path) as im:
        return info_of(im, header_only=True)


def apply_draft(im: Image.Image, size_hint: tuple[int, int] | None, mode: str = "RGB") -> None:
    """Ask a JPEG decoder for the smallest scale still at least `size_hint` (displayed WxH)."""
    if size_hint is None or im.format != "JPEG":
        return
    w, h = oriented_size(size_hint[0], size_hint[1], orientation_of(im, header_only=True))
    im.draft(mode, (max(1, w), max(1, h)))


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any supported mode to RGB; transparent pixels become white, not black."""
    if im.mode == "RGB":
        return im
    if im.mode not in SUPPORTED_MODES:
        raise UnsupportedModeError(f"mode {im.mode} has no 8-bit RGB conversion")
    if im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path: ImageSource, size_hint: tuple[int, int] | None = None) -> Image.Image:
    """Decode to an oriented RGB image.

    `size_hint` (displayed width, height) lets a JPEG decode at a reduced scale that is
    still at least that large; callers resize afterwards. Errors are Pillow's own
    (OSError for truncated or corrupt files, UnidentifiedImageError for non-images).
    """
    with _open(path) as im:
        apply_draft(im, size_hint, "RGB")
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        out = to_rgb(im)
        return out if out is not im else im.copy()


IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the given folders, for
    the commands that take images on the command line (predict, explain)."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            found.append(p)
        else:
            raise VislabError(f"{p}: no such image or folder; pass image files or folders of images")
    if not found:
        raise VislabError(f"no images found in {', '.join(map(str, inputs))} (looked for {', '.join(sorted(IMAGE_EXTS))})")
    return found
