"""Robust decoding: orientation, draft mode, colour modes, header-only probing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vislab.data.io import UnsupportedModeError, load_image, probe, to_rgb
from vislab.testing.images import smooth_image, write_float_tiff, write_image, write_sixteen_bit


def test_exif_orientation_6_is_applied(tmp_path):
    upright = write_image(tmp_path / "plain.png", seed=3, size=(48, 32))
    tagged = write_image(tmp_path / "tagged.jpg", seed=3, size=(48, 32), orientation=6, quality=100)

    info = probe(tagged)
    assert (info.width, info.height, info.orientation) == (32, 48, 6)
    assert (info.stored_width, info.stored_height) == (48, 32)

    shown = np.asarray(load_image(tagged), dtype=float)
    assert shown.shape == (48, 32, 3)
    # Orientation 6 means "rotate 90 degrees clockwise to display".
    expected = np.asarray(load_image(upright).transpose(Image.Transpose.ROTATE_270), dtype=float)
    assert np.abs(shown - expected).mean() < 4
    assert np.abs(np.asarray(load_image(upright), dtype=float).mean() - shown.mean()) < 4


def test_size_hint_uses_jpeg_draft_and_respects_orientation(tmp_path):
    path = write_image(tmp_path / "big.jpg", seed=1, size=(800, 400), orientation=8)
    full = load_image(path)
    assert full.size == (400, 800)
    small = load_image(path, size_hint=(50, 100))
    assert small.mode == "RGB"
    assert small.size[0] >= 50 and small.size[1] >= 100
    assert small.size[0] < 400 and small.size[1] < 800  # decoded at reduced scale
    assert small.size[0] / small.size[1] == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "RGBA", "LA"])
def test_modes_convert_to_rgb(tmp_path, mode):
    fmt = {"CMYK": "JPEG"}.get(mode, "PNG")
    path = tmp_path / f"img.{fmt.lower()}"
    smooth_image(0, (20, 10), mode).save(path, fmt)
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (20, 10)


def test_transparency_becomes_white_not_black():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("LA", (2, 2), (0, 128))
    assert 120 < to_rgb(half).getpixel((0, 0))[0] < 135


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_sixteen_bit_pngs_decode_to_their_8_bit_picture(tmp_path, mode):
    path = write_sixteen_bit(tmp_path / "img16.png", seed=3, size=(20, 10), mode=mode)
    expected = np.asarray(to_rgb(smooth_image(3, (20, 10), mode)))
    assert np.array_equal(np.asarray(load_image(path)), expected)  # not clipped to white


def test_float_images_are_refused_naming_the_mode_and_the_fix(tmp_path):
    path = write_float_tiff(tmp_path / "depth.tif")
    assert probe(path).mode == "F"
    with pytest.raises(UnsupportedModeError, match=r"depth.tif: mode F \(32-bit floating-point pixels\).*; convert the file to 8-bit"):
        load_image(path)


def test_probe_does_not_decode_pixels(tmp_path):
    # A header claiming a huge image must be probed without allocating its pixels.
    from vislab.testing.images import write_huge_header_png

    path = write_huge_header_png(tmp_path / "huge.png", 10_000, 8_000)
    info = probe(path)
    assert (info.width, info.height, info.format) == (10_000, 8_000, "PNG")


# ---------------------------------------------------------------- hostile files: one error type


def test_bad_ztxt_chunk_is_a_decode_error_not_a_syntax_error(tmp_path):
    from vislab.data.io import ImageDecodeError
    from vislab.testing.images import write_bad_ztxt_png

    path = write_bad_ztxt_png(tmp_path / "ztxt.png")
    with Image.open(path) as im, pytest.raises(SyntaxError):  # what Pillow itself raises
        im.load()
    with pytest.raises(ImageDecodeError, match=r"ztxt.png: corrupt image \(SyntaxError: Unknown compression method"):
        load_image(path)


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    from vislab.data.io import MAX_PIXELS, ImageDecodeError
    from vislab.testing.images import write_huge_header_png

    huge = write_huge_header_png(tmp_path / "huge.png", 100_000, 100_000)  # Pillow's DecompressionBombError
    with pytest.raises(ImageDecodeError, match="huge.png: decompression bomb"):
        load_image(huge)
    assert MAX_PIXELS == 178_956_970  # curate's default --max-pixels
    small = write_image(tmp_path / "small.png", size=(40, 30))
    with pytest.raises(ImageDecodeError, match="40x30 = 1,200 pixels, over the 1,000-pixel limit"):
        load_image(small, max_pixels=1000)
    # Pillow's warning band (a header between its limit and twice it): curate accepts such an
    # image, so decoding it must not crash even when warnings are errors
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(small)
        assert load_image(small, max_pixels=2000).size == (40, 30)


def test_only_regular_files_are_read(tmp_path):
    import os

    from vislab.data.io import ImageDecodeError

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError, match="pipe.png: not a regular file"):
        load_image(fifo)  # would block forever on a plain open()
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        load_image(tmp_path)
    with pytest.raises(ImageDecodeError, match="gone.png: file not found"):
        load_image(tmp_path / "gone.png")


@pytest.mark.parametrize("writer", ["write_truncated", "write_corrupt_png", "write_broken_header", "write_not_an_image", "write_zero_byte"])
def test_every_broken_file_is_one_error_type(tmp_path, writer):
    import vislab.testing.images as images
    from vislab.data.io import ImageDecodeError

    path = getattr(images, writer)(tmp_path / "bad.png")
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    import pickle

    again = pickle.loads(pickle.dumps(info.value))  # as a DataLoader worker hands it back
    assert (again.path, again.reason) == (info.value.path, info.value.reason)


def test_collect_images_names_a_special_file(tmp_path):
    import os

    from vislab.data.io import collect_images
    from vislab.errors import VislabError

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(VislabError, match="pipe.png: not a regular file"):
        collect_images([tmp_path / "pipe.png"])
    write_image(tmp_path / "ok.png")
    found = collect_images([tmp_path])
    assert [p.name for p in found] == ["ok.png"]  # a folder's pipes are not read, but named
    assert [(p.name, why) for p, why in found.skipped] == [("pipe.png", "not a regular file (a pipe, socket or device)")]


def test_a_very_thin_image_is_trimmed_before_its_short_side_is_resized():
    """A 1 x 2,000,000 image (3 KB as a PNG, far under any pixel limit) resized by its short
    side to 224 would be 448 million pixels; trimmed first, every step stays small, and the
    result matches the untrimmed pipeline on a smaller long image."""
    import numpy as np
    import torch
    from torchvision.transforms import v2 as T

    from vislab.data.cache import resize_to
    from vislab.data.transforms import TrimLongSide, eval_transform

    pipeline = eval_transform((3, 224, 224), (0.5,) * 3, (0.5,) * 3, crop_pct=0.875)
    thin = Image.new("RGB", (2_000_000, 1), (200, 30, 30))
    x = thin
    for step in pipeline.transforms:
        x = step(x)
        side = x.size if isinstance(x, Image.Image) else tuple(x.shape[-2:])
        assert max(side) <= 2048, (step, side)  # a few source pixels of margin, never the long side scaled up
    assert x.shape == (3, 224, 224) and isinstance(pipeline.transforms[0], TrimLongSide)
    assert np.asarray(resize_to(thin, (64, 64))).shape == (64, 64, 3)

    yy, xx = np.mgrid[0:300, 0:2000]
    smooth = (127 + 100 * np.sin(xx / 37.0) * np.cos(yy / 23.0)).astype(np.uint8)
    long = Image.fromarray(np.stack([smooth] * 3, -1))
    untrimmed = T.Compose([T.Resize(256, antialias=True), T.CenterCrop(224), T.ToImage(),
                           T.ToDtype(torch.float32, scale=True), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    assert float((pipeline(long) - untrimmed(long)).abs().mean()) < 0.02  # about one grey level of 255
    photo = long.crop((0, 0, 400, 300))  # an ordinary photo is not touched: identical to the untrimmed pipeline
    assert torch.equal(pipeline(photo), untrimmed(photo))


def test_a_header_pillow_refuses_at_open_names_vislabs_limit_not_pillows(tmp_path, monkeypatch):
    """Pillow refuses at open above twice its MAX_IMAGE_PIXELS, before vislab's own check runs:
    the reason names the image's pixels against the limit asked for (serve --max-pixels) and
    the option, not Pillow's internal figure."""
    from vislab.data.io import ImageDecodeError
    from vislab.testing.images import write_huge_header_png

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default, as in a fresh process
    for (w, h), limit in (((20_000, 10_000), 1_000_000), ((30_000, 30_000), 1_000_000), ((30_000, 30_000), 178_956_970)):
        bomb = write_huge_header_png(tmp_path / f"{w}x{h}.png", w, h)
        with pytest.raises(ImageDecodeError) as err:
            load_image(bomb, max_pixels=limit)
        assert err.value.reason == (
            f"decompression bomb: {w * h:,} pixels, over the {limit:,}-pixel limit (curate and serve take --max-pixels to raise it)"
        )
        assert str(err.value).startswith(f"{bomb}: decompression bomb")


def test_a_pixel_limit_above_pillows_own_is_the_one_that_holds(tmp_path, monkeypatch):
    """`vislab serve --max-pixels 1000000000`: a 20000x20000 header (over twice Pillow's
    default) is measured against the limit asked for, not refused by Pillow's."""
    from vislab.data.io import ImageDecodeError, open_image
    from vislab.testing.images import write_huge_header_png

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    huge = write_huge_header_png(tmp_path / "huge.png", 20_000, 20_000)
    with open_image(huge, max_pixels=10**9) as im:  # opened, not decoded
        assert im.size == (20_000, 20_000)
    with pytest.raises(ImageDecodeError, match="over the 300,000,000-pixel limit"):
        with open_image(huge, max_pixels=300_000_000):
            pass


def test_an_eps_file_is_refused_without_running_ghostscript(tmp_path, ghostscript_log):
    from vislab.data.io import ImageDecodeError, load_pil_image
    from vislab.testing.images import EPS_BYTES, write_eps

    eps = write_eps(tmp_path / "evil.eps")
    disguised = tmp_path / "evil.jpg"
    disguised.write_bytes(EPS_BYTES)
    for source in (eps, disguised, EPS_BYTES):
        with pytest.raises(ImageDecodeError, match=r"not an image vislab reads \(EPS: PostScript, refused for safety"):
            load_image(source)
        with pytest.raises(ImageDecodeError, match="EPS"):
            probe(source)
    assert not ghostscript_log.exists()
    with Image.open(eps) as im, pytest.raises(ImageDecodeError, match="format EPS: not an image vislab reads"):
        load_pil_image(im)  # a caller's own Image.open: loading it would run gs
    assert not ghostscript_log.exists()


@pytest.mark.parametrize(
    "data, name",
    [
        (b"%PDF-1.7\n", "PDF"),
        (b"\xd7\xcd\xc6\x9a" + bytes(40), "WMF"),
        (b"\x01\x00\x00\x00" + bytes(36) + b" EMF" + bytes(20), "EMF"),
        (b"\x00\x00\x00\x1cftypavif" + bytes(40), "AVIF"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(40), "HEIC"),
    ],
)
def test_vector_documents_and_undecoded_formats_are_named(tmp_path, data, name):
    path = tmp_path / "x.img"
    path.write_bytes(data)
    with pytest.raises(Exception, match=rf"not an image vislab reads \({name}"):
        load_image(path)


def test_the_raster_formats_cover_every_image_name_vislab_accepts_and_phone_mpos(tmp_path):
    from vislab.data.io import IMAGE_EXTS, READ_FORMATS

    known = Image.registered_extensions()
    assert {known[ext] for ext in IMAGE_EXTS} <= READ_FORMATS
    grey = smooth_image(1, (20, 12)).convert("L")
    grey.save(tmp_path / "grey.pgm")
    assert load_image(tmp_path / "grey.pgm").size == (20, 12)
    smooth_image(2, (20, 12)).save(tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[smooth_image(3, (20, 12))])
    assert probe(tmp_path / "phone.jpg").format == "MPO"
    assert load_image(tmp_path / "phone.jpg").size == (20, 12)
