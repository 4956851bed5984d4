"""Robust decoding: orientation, draft mode, colour modes, header-only probing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vislab.data.io import UnsupportedModeError, load_image, probe, to_rgb
from vislab.testing.images import smooth_image, write_image, write_sixteen_bit


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


def test_sixteen_bit_is_refused_with_a_named_error(tmp_path):
    path = write_sixteen_bit(tmp_path / "depth.png")
    assert probe(path).mode.startswith("I;16")
    with pytest.raises(UnsupportedModeError):
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
    assert [p.name for p in collect_images([tmp_path])] == ["ok.png"]  # a folder's pipes are passed over
