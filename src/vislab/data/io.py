"""Robust image decoding shared by every reader of pixels.

Every reader of pixels (curation aside, which records reasons itself: predict, explain,
evaluate, the training datamodule, the cache builder, report thumbnails) goes through
`load_image`, so that all commands see the same image: EXIF orientation applied, one colour
mode (RGB), transparency flattened onto white, and JPEG draft mode used when only a small
version is needed (decoding at 1/2..1/8 scale is several times cheaper for camera photos).

It is also the one place hostile files are turned away: only regular files of bounded size
are opened (`fsguard.open_regular`), headers above curate's pixel limit are refused before
any pixel is allocated, and whatever Pillow raises on a broken file (OSError, SyntaxError,
ValueError, struct.error, EOFError, IndexError, zlib.error, MemoryError, ...; its fuzzers
keep finding new ones) becomes one `ImageDecodeError` with a short reason, which callers
catch to skip the image or report it on one line. Pillow is only ever asked for the raster
formats in `RASTER_FORMATS`, which it decodes in-process: its EPS plugin hands the file to
Ghostscript (attacker-controlled PostScript run by another program), so EPS, PDF and metafile
drawings are refused with a reason naming them, never probed.
"""

from __future__ import annotations

import io
import re
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vislab.data.walk import PREDICT_OUTPUT, SKIP_REASONS, VISLAB_OUTPUT, file_problem, walk_files
from vislab.errors import VislabError
from vislab.fsguard import MAX_PIXELS, SpecialFileError, open_regular
from vislab.markers import PREDICTED, TRAINING_OUTPUTS, WHAT, folder_kind, vislab_output_kind

ORIENTATION_TAG = 0x0112
# EXIF orientations 5..8 rotate by 90 degrees, so the stored width is the displayed height.
SWAPS_AXES = frozenset({5, 6, 7, 8})
# 16-bit greyscale (PNG, TIFF): the formats define samples on the full 0..65535 scale, so the
# 8-bit reading is no guess. It keeps the high byte, as Pillow itself reads 16-bit colour PNGs
# and TIFFs (a viewer shows the same picture).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# 12-bit camera data (scientific, medical) stored as is in 16-bit files uses 0..4095 only and
# reads nearly black. Nothing in the file says so: PNG's sBIT chunk means the opposite (the
# encoder scales fewer significant bits up to the full range, PNG 1.2 section 9.1), Pillow does
# not read it, and guessing by the maximum would brighten every dark 16-bit photo. So these
# files are read as defined, like every viewer, and curate warns (`uses_low_bits`).
LOW_BITS_MAX = 4095
# Modes with an unambiguous conversion to 8-bit RGB. 32-bit integer and float images (depth
# maps, scientific data) have no fixed range to scale, so curation quarantines them.
SUPPORTED_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
) | SIXTEEN_BIT_MODES
_MODE_KINDS = {"I": "32-bit integer", "F": "32-bit floating-point"}
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

ImageSource = str | Path | BinaryIO | bytes
# The only formats Pillow may open a user's file as: raster formats it decodes in-process, the
# ones photo folders hold and those IMAGE_EXTS names (PPM also reads PGM and PBM). Pass it as
# `Image.open(..., formats=)`. Pillow's JPEG opener also returns multi-picture JPEGs from phones
# and 3-D cameras, as format MPO (a name `formats=` does not take), so READ_FORMATS adds it.
RASTER_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
READ_FORMATS = frozenset(RASTER_FORMATS) | {"MPO"}
NOT_READ = f"not an image vislab reads (it reads {', '.join(RASTER_FORMATS)})"
SIGNATURE_BYTES = 64  # enough of a file's start to tell its format (EMF's mark is at 40)
# Formats recognised by their first bytes that vislab does not read, and why. Safety first:
# Pillow would run Ghostscript on PostScript, and metafiles are drawings in commands.
_UNREAD_SIGNATURES = (
    ((b"%!PS", b"\xc5\xd0\xd3\xc6"), "EPS: PostScript, refused for safety, as decoding it runs Ghostscript"),
    ((b"%PDF",), "PDF: a document, refused for safety"),
    ((b"\xd7\xcd\xc6\x9a", b"\x01\x00\x09\x00\x00\x03", b"\x02\x00\x09\x00\x00\x03"), "WMF: a Windows metafile drawing, refused for safety"),
    ((b"\xff\x0a", b"\x00\x00\x00\x0cJXL "), "JPEG XL: not decoded"),
)
_UNDECODABLE_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"hevx": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}
# curate's default --max-pixels (twice Pillow's warning limit): a header claiming more pixels
# is a decompression bomb, refused before its pixels are allocated
_REASON_CHARS = 160


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


class ImageDecodeError(VislabError, ValueError):
    """An image that cannot be read or decoded; `reason` says why in a few words.

    A VislabError, so one that no caller handles still ends as one line, not a traceback.
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.reason = reason
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {reason}" if path is not None else reason)

    def __reduce__(self) -> tuple[Any, ...]:  # survives a trip from a worker process
        return type(self), (self.reason, self.path)


class UnsupportedModeError(ImageDecodeError):
    """The image decodes, but its pixel mode has no faithful 8-bit RGB conversion."""


def _reason(err: BaseException) -> str:
    """A few words for what went wrong with a file, from whatever Pillow or the OS raised."""
    if isinstance(err, FileNotFoundError):
        return "file not found (deleted or moved?)"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, SpecialFileError):
        return str(err).rsplit(": ", 1)[-1]
    if isinstance(err, UnidentifiedImageError):
        return NOT_READ
    if isinstance(err, Image.DecompressionBombError):
        return f"decompression bomb ({str(err).split(', could')[0]})"
    if isinstance(err, MemoryError):
        return "too large to decode (out of memory)"
    text = (str(err).splitlines() or [""])[0][:_REASON_CHARS]
    kind = "truncated" if "truncat" in text.lower() else "corrupt"
    return f"{kind} image ({type(err).__name__}: {text})" if text else f"{kind} image ({type(err).__name__})"


def unread_format(head: bytes) -> str | None:
    """The format a file's first bytes show and why vislab does not read it ("EPS:
    PostScript, refused for safety, ..."), or None for bytes of no format it knows to refuse.
    HEIC/HEIF and AVIF are not read either: Pillow decodes neither without extra plugins, and
    vislab reads the same formats whichever Pillow build is installed."""
    for magics, why in _UNREAD_SIGNATURES:
        if head.startswith(magics):
            return why
    if head[4:8] == b"ftyp" and head[8:12] in _UNDECODABLE_BRANDS:
        return f"{_UNDECODABLE_BRANDS[head[8:12]]}: not decoded"
    if head[:4] == b"\x01\x00\x00\x00" and head[40:44] == b" EMF":
        return "EMF: a Windows metafile drawing, refused for safety"
    return None


def unread_reason(why: str) -> str:
    """The one-line reason for a file of a format vislab does not read (`unread_format`)."""
    return f"not an image vislab reads ({why}); convert it to PNG or JPEG"


def _unopened(fh: BinaryIO) -> ImageDecodeError | None:
    """Why a file Pillow would not open as a raster format is refused, when its first bytes
    name the format (EPS, PDF, WMF, HEIC, ...); None for bytes of no known format."""
    try:
        fh.seek(0)
        why = unread_format(fh.read(SIGNATURE_BYTES))
    except (OSError, AttributeError, ValueError):
        return None
    return ImageDecodeError(unread_reason(why)) if why else None


def _bomb_reason(size: str | None, limit: int) -> str:
    """Why an image of `size` pixels ("WxH = N" or "N") is refused, naming the limit that
    holds and how to raise it."""
    pixels = f"{size} pixels, " if size else ""
    return f"decompression bomb: {pixels}over the {limit:,}-pixel limit (curate and serve take --max-pixels to raise it)"


def _pillow_bomb(err: Image.DecompressionBombError, max_pixels: int | None) -> str:
    """`_bomb_reason` for a header Pillow refused at open (above twice its MAX_IMAGE_PIXELS,
    before vislab's own check could run; its message holds the pixel count, not the size).
    `open_image` keeps Pillow's refusal above `max_pixels`, so the limit that holds is ours."""
    claimed = re.search(r"\((\d+) pixels\)", str(err))
    limit = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return _bomb_reason(f"{int(claimed.group(1)):,}" if claimed else None, limit)


def _source_file(source: ImageSource) -> Any:
    """A context manager giving a binary file: regular files only (bounded size), a caller's
    stream left open, bytes wrapped."""
    if isinstance(source, bytes):
        return io.BytesIO(source)
    if isinstance(source, (str, Path)):
        return open_regular(source)
    return nullcontext(source)


def _is_empty(fh: BinaryIO) -> bool:
    """Whether a file or stream holds no bytes from where it stands (a zero-byte download:
    worth saying so rather than "not an image")."""
    try:
        here = fh.tell()
        end = fh.seek(0, io.SEEK_END)
        fh.seek(here)
    except (OSError, AttributeError, ValueError):  # a stream that cannot seek is read as it is
        return False
    return end == here


@contextmanager
def open_image(source: ImageSource, max_pixels: int | None = MAX_PIXELS) -> Iterator[Image.Image]:
    """The opened (not yet decoded) image; any failure, opening it or inside the block, is
    raised as `ImageDecodeError` naming the file.

    A header above `max_pixels` is refused before decoding; Pillow's own bomb warning is
    silenced here (the limit above replaces it), so running with warnings as errors does not
    turn an image curate accepted into a crash, and its refusal at open (above twice its own
    limit) is worded against `max_pixels`, the limit the user can change.
    """
    name = source if isinstance(source, (str, Path)) else None
    if max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow refuses 2x its own limit at open: ours is the one that holds
    try:
        with _source_file(source) as fh, warnings.catch_warnings():
            if _is_empty(fh):
                raise ImageDecodeError("empty file (0 bytes)")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                opened = Image.open(fh, formats=RASTER_FORMATS)
            except Image.DecompressionBombError as err:
                raise ImageDecodeError(_pillow_bomb(err, max_pixels)) from err
            except UnidentifiedImageError as err:
                refused = _unopened(fh)
                if refused is None:
                    raise
                raise refused from err
            with opened as im:
                w, h = im.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageDecodeError(_bomb_reason(f"{w}x{h} = {w * h:,}", max_pixels))
                yield im
    except ImageDecodeError as err:
        if err.path is not None or name is None:
            raise
        raise type(err)(err.reason, name) from err.__cause__
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many types; all mean "cannot decode"
        raise ImageDecodeError(_reason(err), name) from err


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
    """Read format, mode, displayed size and orientation from the header only (no decode,
    so no pixel limit)."""
    with open_image(path, max_pixels=None) as im:
        return info_of(im, header_only=True)


def apply_draft(im: Image.Image, size_hint: tuple[int, int] | None, mode: str = "RGB") -> None:
    """Ask a JPEG decoder for the smallest scale still at least `size_hint` (displayed WxH)."""
    if size_hint is None or im.format != "JPEG":
        return
    w, h = oriented_size(size_hint[0], size_hint[1], orientation_of(im, header_only=True))
    im.draft(mode, (max(1, w), max(1, h)))


def mode_problem(mode: str) -> str:
    """One line on why pixels of `mode` cannot be read as 8-bit RGB, and what to do."""
    kind = _MODE_KINDS.get(mode, "non-8-bit")
    return (
        f"mode {mode} ({kind} pixels) has no fixed 8-bit scale; "
        "convert the file to 8-bit greyscale or RGB, choosing which values become 0 and 255"
    )


def sixteen_bit(im: Image.Image) -> bool:
    """Whether an opened, not yet loaded, image stores 16-bit samples (Pillow reads 16-bit
    colour and grey+alpha PNGs as 8-bit modes; only their raw mode tells)."""
    if im.mode in SIXTEEN_BIT_MODES:
        return True
    raw = [tile.args[0] if isinstance(tile.args, tuple) and tile.args else tile.args for tile in im.tile]
    return any(isinstance(r, str) and ";16" in r for r in raw)


def uses_low_bits(im: Image.Image) -> bool:
    """Whether the loaded pixels of a 16-bit image (see `sixteen_bit`) never exceed
    LOW_BITS_MAX in a colour channel, so its 8-bit reading is nearly black. For a mode Pillow
    already read as 8 bits (the high bytes) that is a maximum of LOW_BITS_MAX >> 8."""
    pixels = np.asarray(im)
    if im.mode in SIXTEEN_BIT_MODES:
        return int(pixels.max(initial=0)) <= LOW_BITS_MAX
    if im.mode in ALPHA_MODES:
        pixels = pixels[..., :-1]
    return int(pixels.max(initial=0)) <= LOW_BITS_MAX >> 8


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any supported mode to RGB; transparent pixels become white, not black."""
    if im.mode == "RGB":
        return im
    if im.mode not in SUPPORTED_MODES:
        raise UnsupportedModeError(mode_problem(im.mode))
    if im.mode in SIXTEEN_BIT_MODES:  # Pillow's own convert clips every value above 255 to white
        high = (np.asarray(im) >> 8).astype(np.uint8)
        return Image.fromarray(high).convert("RGB")
    if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path: ImageSource, size_hint: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode to an oriented RGB image.

    `size_hint` (displayed width, height) lets a JPEG decode at a reduced scale that is
    still at least that large; callers resize afterwards. Every failure (missing or special
    file, truncated or corrupt data, a bomb over `max_pixels`, an unsupported mode) raises
    `ImageDecodeError`.
    """
    with open_image(path, max_pixels) as im:
        apply_draft(im, size_hint, "RGB")
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        out = to_rgb(im)
        return out if out is not im else im.copy()


def load_pil_image(im: Image.Image) -> Image.Image:
    """A caller's in-memory PIL image, decoded: one straight from a file (`format` set: what
    Image.open returned, or that image changed in place) turned upright by its EXIF
    orientation as `load_image` turns the file; one made from another (convert, resize,
    transpose, rotate, copy: `format` None) as its pixels are, since a turn by hand keeps the
    old tag. Image.open decodes lazily, so bad data (a truncated file) surfaces here, raised
    as the `ImageDecodeError` the same file by path gets, as is one of a format vislab does not
    read (loading an EPS would run Ghostscript)."""
    if im.format is not None and im.format not in READ_FORMATS:
        raise ImageDecodeError(
            f"a PIL image of format {im.format}: {NOT_READ}; "
            "convert it to PNG or JPEG"
        )
    try:
        im.load()
        return ImageOps.exif_transpose(im) if im.format is not None else im
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many types; all mean "cannot decode"
        raise ImageDecodeError(_reason(err)) from err


IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


class CollectedImages(list):
    """The image files `collect_images` found (a list of Paths, in order); `skipped` holds
    (path, reason) for every entry with an image name, or folder, it left out."""

    def __init__(self, files: list[Path], skipped: list[tuple[Path, str]]) -> None:
        super().__init__(files)
        self.skipped = skipped


def _vislab_output(folder: str, entries: Sequence[Any]) -> str | None:
    """The skip kind of a folder `vislab predict --out` wrote (its marker file is there), or
    of a run directory or sweep (their plots and overlays are not photos to predict on)."""
    kind = vislab_output_kind(e.name for e in entries)
    if kind == PREDICTED:
        return PREDICT_OUTPUT
    return VISLAB_OUTPUT if kind in TRAINING_OUTPUTS else None


def collect_images(inputs: str | Path | Sequence[str | Path]) -> CollectedImages:
    """Image files named directly or found in the given folders (sorted; folder links
    followed, loops refused, see `walk.walk_files`), for the commands that take images on the
    command line (predict, explain). A broken link, a pipe or a looping link inside a folder
    is not read but listed in `skipped` with its reason, so the caller can report it; so is a
    folder inside that an earlier `predict --out` wrote (`predict frames --out frames/pred`,
    run again, would otherwise predict on its own drawings), or a run directory or sweep. A
    run directory or sweep named itself is refused (`predict RUN OTHER_RUN` would predict on
    OTHER_RUN's overlays)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise VislabError("no images given; pass image files or folders of images")
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for item in items:
        p = Path(item)
        kind = folder_kind(p) if p.is_dir() else None
        if kind in TRAINING_OUTPUTS:
            raise VislabError(f"{p} is {WHAT[kind]}, not images; name one run, then image files or folders of images")
        if p.is_dir():
            walk = walk_files(str(p), skip_folder=_vislab_output)
            for path, _ in sorted(walk.files, key=lambda f: Path(f[0])):
                if Path(path).suffix.lower() not in IMAGE_EXTS:
                    continue
                problem = file_problem(path)
                if problem is None:
                    found.append(Path(path))
                else:
                    skipped.append((Path(path), problem))
            skipped += sorted((Path(path), SKIP_REASONS.get(kind, kind)) for path, kind in walk.skipped)
        elif p.is_file():
            found.append(p)
        elif p.exists():
            raise VislabError(f"{p}: not a regular file (a pipe or device?); pass image files or folders of images")
        else:
            raise VislabError(f"{p}: no such image or folder; pass image files or folders of images")
    if not found and not skipped:
        raise VislabError(f"no images found in {', '.join(map(str, items))} (looked for {', '.join(sorted(IMAGE_EXTS))})")
    return CollectedImages(found, skipped)
