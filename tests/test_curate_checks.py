"""Quarantine reasons, geometry filters, EXIF handling and duplicates in `vislab curate`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vislab.data.checks import inspect_chunk
from vislab.data.curate import CurateOptions, run_curate
from vislab.data.manifest import COLUMNS, read_manifest, reason_kind
from vislab.testing.images import (
    exact_copy,
    near_copy,
    write_broken_header,
    write_broken_set,
    write_float_tiff,
    write_image,
    write_image_folder,
    write_not_an_image,
    write_sixteen_bit,
    write_unlabelled_folder,
)


def curate(out: Path, *sources: Path, **options) -> tuple[pd.DataFrame, dict]:
    opts = CurateOptions(sources=list(sources), workers=1, **options)
    summary = run_curate(opts, out)
    return read_manifest(out).set_index("path", drop=False), summary


def row(df: pd.DataFrame, path: Path) -> pd.Series:
    return df.loc[str(path)]


def test_every_quarantine_reason_is_named_and_never_fatal(tmp_path):
    good = write_image_folder(tmp_path / "src", ["cat"], per_class=2)
    expected = {path: reason for reason, path in write_broken_set(tmp_path / "src" / "cat").items()}
    expected[write_broken_header(tmp_path / "src" / "cat" / "header.png")] = "unreadable"
    expected[write_not_an_image(tmp_path / "src" / "cat" / "doc.pdf")] = "not_an_image"
    heic = tmp_path / "src" / "cat" / "phone.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32)
    expected[heic] = "unsupported_format"

    df, summary = curate(tmp_path / "ds", tmp_path / "src", max_pixels=50_000_000)

    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    for path, reason in expected.items():
        assert (row(df, path)["status"], reason_kind(row(df, path)["reason"])) == ("quarantined", reason), path.name
    for path in good:
        assert row(df, path)["status"] == "ok"
        assert row(df, path)["reason"] == ""
    assert summary["status"] == {"ok": 2, "quarantined": 9, "excluded": 0}
    assert summary["reasons"]["unreadable"] == 2
    assert set(summary["reasons"]) == set(expected.values())


def test_sixteen_bit_pngs_are_usable_and_a_float_image_says_how_to_fix_it(tmp_path):
    grey = write_sixteen_bit(tmp_path / "src" / "a" / "grey16.png", seed=1)
    rgb = write_sixteen_bit(tmp_path / "src" / "a" / "rgb16.png", seed=2, mode="RGB")
    depth = write_float_tiff(tmp_path / "src" / "a" / "depth.tif")
    df, summary = curate(tmp_path / "ds", tmp_path / "src")
    assert (row(df, grey)["status"], row(df, grey)["reason"]) == ("ok", "")
    assert (row(df, rgb)["status"], row(df, rgb)["reason"]) == ("ok", "")
    assert row(df, depth)["status"] == "quarantined"
    assert row(df, depth)["reason"] == (
        "unsupported_mode:mode F (32-bit floating-point pixels) has no fixed 8-bit scale; "
        "convert the file to 8-bit greyscale or RGB, choosing which values become 0 and 255"
    )
    assert summary["reasons"] == {"unsupported_mode": 1}


def test_pixel_limit_is_an_option(tmp_path):
    path = write_image(tmp_path / "src" / "a" / "wide.png", size=(100, 50))
    df, _ = curate(tmp_path / "ds", tmp_path / "src", max_pixels=4_999)
    assert row(df, path)["reason"] == "decompression_bomb"
    assert (row(df, path)["width"], row(df, path)["height"]) == (100, 50)


def test_exif_orientation_gives_displayed_size(tmp_path):
    tagged = write_image(tmp_path / "src" / "a" / "r.jpg", seed=1, size=(60, 40), orientation=6)
    plain = write_image(tmp_path / "src" / "a" / "p.jpg", seed=2, size=(60, 40))
    df, summary = curate(tmp_path / "ds", tmp_path / "src")
    assert (row(df, tagged)["width"], row(df, tagged)["height"]) == (40, 60)
    assert (row(df, plain)["width"], row(df, plain)["height"]) == (60, 40)
    assert row(df, tagged)["orientation"] == "6"
    assert summary["exif_oriented"] == 1


def test_min_size_aspect_and_landscape(tmp_path):
    src = tmp_path / "src" / "a"
    big = write_image(src / "big.png", seed=1, size=(150, 100))
    small = write_image(src / "small.png", seed=2, size=(90, 60))
    portrait = write_image(src / "portrait.png", seed=3, size=(100, 150))
    rotated = write_image(src / "rotated.jpg", seed=4, size=(150, 100), orientation=8)  # shows as portrait
    square = write_image(src / "square.png", seed=5, size=(150, 150))

    df, _ = curate(tmp_path / "d1", tmp_path / "src", min_size="120x80")
    assert row(df, big)["status"] == "ok"
    assert row(df, small)["reason"] == "too_small"
    assert row(df, portrait)["reason"] == "too_small"
    assert row(df, rotated)["reason"] == "too_small"  # orientation is always applied
    assert row(df, square)["status"] == "ok"

    df, _ = curate(tmp_path / "d2", tmp_path / "src", min_size="120x80", aspect=1.5, landscape=True)
    assert row(df, portrait)["status"] == "ok" and row(df, rotated)["status"] == "ok"
    assert row(df, square)["reason"] == "wrong_aspect"
    assert row(df, small)["reason"] == "too_small"  # size is checked before aspect

    df, _ = curate(tmp_path / "d3", tmp_path / "src", aspect=1.5, aspect_tolerance=0.4)
    assert row(df, square)["status"] == "ok"  # 1.0 is within 40% of 1.5
    assert row(df, portrait)["reason"] == "wrong_aspect"  # 0.67 is not, without --landscape


def test_exact_duplicates_keep_one_and_name_it(tmp_path):
    a, b = write_image_folder(tmp_path / "src", ["cat"], per_class=2, size=(64, 48))
    copy1 = exact_copy(a, tmp_path / "src" / "cat" / "zz_copy.png")
    copy2 = exact_copy(a, tmp_path / "src" / "cat" / "aa_copy.png")

    df, summary = curate(tmp_path / "ds", tmp_path / "src", dedupe="exact")
    # Same pixels and size: the first path is kept.
    assert row(df, copy2)["status"] == "ok"
    for dup in (a, copy1):
        assert row(df, dup)["status"] == "excluded"
        assert row(df, dup)["reason"] == f"duplicate_of:{copy2}"
    assert row(df, b)["status"] == "ok"
    assert summary["reasons"] == {"duplicate_of": 2}
    assert row(df, a)["group"] == row(df, copy2)["group"] != ""


def test_near_duplicates_keep_the_largest_and_respect_the_threshold(tmp_path):
    originals = write_image_folder(tmp_path / "src", ["cat", "dog"], per_class=3, size=(128, 96))
    small = near_copy(originals[0], tmp_path / "src" / "cat" / "a_small.jpg", scale=0.5, quality=70)
    recoded = near_copy(originals[4], tmp_path / "src" / "dog" / "recoded.jpg", scale=1.0, quality=40)

    df, summary = curate(tmp_path / "ds", tmp_path / "src", dedupe="near")
    assert row(df, small)["reason"] == f"duplicate_of:{originals[0]}"  # more pixels wins
    assert row(df, originals[0])["status"] == "ok"
    # Same pixel count: the bigger (less compressed) file wins.
    assert row(df, recoded)["reason"] == f"duplicate_of:{originals[4]}"
    others = [p for i, p in enumerate(originals) if i not in (0, 4)]
    assert all(row(df, p)["status"] == "ok" for p in others)
    assert summary["duplicate_groups"] == 2

    # Exact dedupe leaves near copies in, but they still share a group.
    df, _ = curate(tmp_path / "exact", tmp_path / "src", dedupe="exact")
    assert row(df, small)["status"] == "ok"
    assert row(df, small)["group"] == row(df, originals[0])["group"] != ""
    # Threshold 0 only groups identical hashes.
    df, _ = curate(tmp_path / "strict", tmp_path / "src", dedupe="near", near_threshold=0)
    assert (df["reason"].str.startswith("duplicate_of")).sum() <= 2


def write_blend_chain(folder: Path) -> dict[str, Path]:
    """A (128x128) and blends of it towards another picture, 64x64: B 10% (4 bits from A),
    C 25% (6 bits from B, 10 from A), and D 5% under another label (2 bits from A)."""
    from PIL import Image

    from vislab.testing.images import smooth_image

    x, y = (np.asarray(smooth_image(seed, (64, 64)), dtype=np.float64) for seed in (1, 2))
    paths = {}
    for name, label, share in (("a", "cat", 0.0), ("b", "cat", 0.1), ("c", "cat", 0.25), ("d", "dog", 0.05)):
        im = Image.fromarray(((1 - share) * x + share * y).round().astype(np.uint8))
        paths[name] = folder / label / f"{name}.png"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        (im.resize((128, 128), Image.Resampling.NEAREST) if name == "a" else im).save(paths[name])
    return paths


def test_a_chain_of_near_copies_is_cut_at_the_copy_kept_and_never_crosses_labels(tmp_path):
    p = write_blend_chain(tmp_path / "src")
    df, summary = curate(tmp_path / "ds", tmp_path / "src", dedupe="near")
    bits = {n: int(row(df, path)["phash"], 16) for n, path in p.items()}
    apart = {pair: bin(bits[pair[0]] ^ bits[pair[1]]).count("1") for pair in ("ab", "bc", "ac", "ad")}
    assert apart["ab"] <= 6 and apart["bc"] <= 6 and apart["ac"] > 6 and apart["ad"] <= 6, apart  # the chain holds
    assert row(df, p["b"])["reason"] == f"duplicate_of:{p['a']}"
    assert (row(df, p["c"])["status"], row(df, p["c"])["group"]) == ("ok", "")  # 10 bits from the copy kept
    assert row(df, p["d"])["status"] == "ok"  # a dog is never a duplicate of a cat
    assert row(df, p["a"])["group"] == row(df, p["b"])["group"] == row(df, p["d"])["group"] != ""
    (conflict,) = summary["conflicting_labels"]
    assert conflict["labels"] == ["cat", "dog"]
    assert [(m["path"], m["kept"]) for m in conflict["members"]] == [(str(p["a"]), True), (str(p["d"]), True), (str(p["b"]), False)]
    # Without dropping, the group a split keeps together is the same star, not the chain
    df, _ = curate(tmp_path / "exact", tmp_path / "src", dedupe="exact", split="0.5,0.5")
    assert (df["status"] == "ok").all()
    assert row(df, p["a"])["group"] == row(df, p["b"])["group"] == row(df, p["d"])["group"] != row(df, p["c"])["group"]


def test_flat_images_are_told_apart_by_colour_and_photo_copies_stay_grouped(tmp_path):
    from PIL import Image, ImageEnhance

    skimage_data = pytest.importorskip("skimage.data")
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    flat = {}
    # Red and green of the same grey level: only their colour tells them apart.
    for name, colour in {"black": (0, 0, 0), "white": (255, 255, 255), "red": (220, 20, 20), "green": (0, 136, 0),
                         "grey": (120, 120, 120), "grey_brighter": (130, 130, 130)}.items():
        flat[name] = src / f"{name}.png"
        Image.new("RGB", (64, 48), colour).save(flat[name])
    red_copy = near_copy(flat["red"], src / "red_small.jpg", scale=0.75, quality=70)
    cat = src / "cat.png"
    photo = Image.fromarray(skimage_data.chelsea())
    photo.save(cat)
    cat_small = near_copy(cat, src / "cat_small.jpg", scale=0.5, quality=70)
    cat_bright = src / "cat_bright.png"
    ImageEnhance.Brightness(photo).enhance(1.1).save(cat_bright)
    coffee = src / "coffee.png"
    Image.fromarray(skimage_data.coffee()).resize(photo.size).save(coffee)

    df, summary = curate(tmp_path / "ds", tmp_path / "src", dedupe="near")
    for name in ("black", "white", "green"):
        assert (row(df, flat[name])["status"], row(df, flat[name])["group"]) == ("ok", ""), name
    assert row(df, red_copy)["reason"] == f"duplicate_of:{flat['red']}"
    assert row(df, flat["grey"])["group"] == row(df, flat["grey_brighter"])["group"] != ""
    assert row(df, cat)["group"] == row(df, cat_small)["group"] == row(df, cat_bright)["group"] != ""
    assert row(df, coffee)["group"] == ""
    assert summary["duplicate_groups"] == 3


def test_unrelated_plain_images_are_not_near_duplicates_but_their_copies_and_photo_copies_are(tmp_path):
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    ramp = np.linspace(60, 140, 64).astype(np.uint8)[None, :].repeat(48, axis=0)
    plain = {}
    for name, channel in (("blue_ramp", 2), ("red_ramp", 0)):  # faint left-to-right gradients
        pixels = np.zeros((48, 64, 3), np.uint8)
        pixels[..., channel] = ramp
        plain[name] = src / f"{name}.png"
        Image.fromarray(pixels).save(plain[name])
    for name, contrast in (("weak", (100, 120)), ("strong", (0, 255))):  # two tones, split two ways
        for split in ("left_right", "top_bottom"):
            pixels = np.full((48, 64, 3), contrast[0], np.uint8)
            (pixels[:, 32:] if split == "left_right" else pixels[24:])[...] = contrast[1]
            plain[f"{name}_{split}"] = src / f"{name}_{split}.png"
            Image.fromarray(pixels).save(plain[f"{name}_{split}"])
    ramp_copy = near_copy(plain["blue_ramp"], src / "blue_ramp_small.jpg", scale=0.75, quality=70)
    split_copy = near_copy(plain["strong_left_right"], src / "strong_left_right_small.jpg", scale=0.5, quality=70)
    cat = src / "cat.png"
    Image.fromarray(skimage_data.chelsea()).save(cat)
    cat_small = near_copy(cat, src / "cat_small.jpg", scale=0.5, quality=70)

    df, summary = curate(tmp_path / "ds", tmp_path / "src", dedupe="near")
    groups = {name: row(df, path)["group"] for name, path in plain.items()}
    assert groups["blue_ramp"] == row(df, ramp_copy)["group"] != ""
    assert groups["strong_left_right"] == row(df, split_copy)["group"] != ""
    assert row(df, cat)["group"] == row(df, cat_small)["group"] != ""
    others = [groups[n] for n in ("red_ramp", "weak_left_right", "weak_top_bottom", "strong_top_bottom")]
    assert others == ["", "", "", ""]
    assert summary["duplicate_groups"] == 3


def test_unlabelled_flat_folder_and_loose_files(tmp_path):
    flat = write_unlabelled_folder(tmp_path / "flat", n=3)
    df, summary = curate(tmp_path / "d1", tmp_path / "flat")
    assert (df["status"] == "ok").all() and (df["label"] == "").all()
    assert summary["classes"] == {"": 3} and len(flat) == 3

    write_image_folder(tmp_path / "tree", ["cat"], per_class=2)
    loose = write_image(tmp_path / "tree" / "loose.png", seed=99)
    (tmp_path / "tree" / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / "tree" / "cat" / "._cat_000.png").write_bytes(b"\x00\x05")
    df, summary = curate(tmp_path / "d2", tmp_path / "tree")
    assert row(df, loose)["reason"] == "unlabelled"
    assert len(df) == 3 and summary["hidden_skipped"] == 2


def test_nested_class_folders_take_the_first_level(tmp_path):
    paths = write_image_folder(tmp_path / "src", ["cat", "dog"], per_class=4, nested=True)
    assert any("part1" in str(p) for p in paths)
    df, summary = curate(tmp_path / "ds", tmp_path / "src")
    assert summary["classes"] == {"cat": 4, "dog": 4}


def test_workers_give_the_same_manifest(tmp_path):
    write_image_folder(tmp_path / "src", ["a", "b", "c"], per_class=12)
    write_broken_set(tmp_path / "src" / "a")
    run_curate(CurateOptions(sources=[tmp_path / "src"], workers=1, split="0.5,0.25,0.25"), tmp_path / "one")
    run_curate(CurateOptions(sources=[tmp_path / "src"], workers=2, split="0.5,0.25,0.25"), tmp_path / "two")
    one = (tmp_path / "one" / "manifest.csv").read_bytes()
    assert one == (tmp_path / "two" / "manifest.csv").read_bytes()


@pytest.mark.parametrize("dedupe", ["none", "exact", "near"])
def test_out_inside_a_source_is_not_scanned(tmp_path, dedupe):
    write_image_folder(tmp_path / "src", ["cat"], per_class=2)
    out = tmp_path / "src" / "_dataset"
    curate(out, tmp_path / "src", dedupe=dedupe)
    df, summary = curate(out, tmp_path / "src", dedupe=dedupe)  # second run sees no manifest/png
    assert summary["files"] == 2
    assert not df["path"].str.contains("_dataset").any()


def crash_on_marked_files(paths: list[str], max_pixels: int) -> list[dict]:
    """Stands in for a decoder that takes its worker process down."""
    if any("crash" in Path(p).name for p in paths):
        os._exit(1)
    return inspect_chunk(paths, max_pixels)


def test_a_worker_crash_quarantines_only_the_culprit(tmp_path, monkeypatch):
    import vislab.data.checks as checks

    paths = write_image_folder(tmp_path / "src", ["a", "b"], per_class=60, size=(8, 8))
    bad = [
        write_image(tmp_path / "src" / "a" / "a_003_crash.png", seed=5),
        write_image(tmp_path / "src" / "b" / "b_030_crash.png", seed=6),
    ]
    runs = []
    real_run_pool = checks._run_pool

    def counting(chunks, *args, **kwargs):
        runs.append(sum(len(c) for c in chunks))
        return real_run_pool(chunks, *args, **kwargs)

    monkeypatch.setattr(checks, "inspect_chunk", crash_on_marked_files)
    monkeypatch.setattr(checks, "_run_pool", counting)
    records = checks.inspect_files(sorted(str(p) for p in [*paths, *bad]), 10**8, workers=2)
    by_reason = {r["path"]: r["reason"] for r in records}
    assert [by_reason.pop(str(p)) for p in bad] == ["decoder_crash", "decoder_crash"]
    assert set(by_reason.values()) == {""} and len(by_reason) == 120
    # Retries re-check the unfinished files, not the whole set file by file.
    assert len(runs) < 30 and sum(runs) < 8 * 122


def test_a_tagged_photo_and_its_upright_copy_are_near_duplicates(tmp_path):
    from vislab.data.io import load_image

    tagged = write_image(tmp_path / "src" / "a" / "tagged.jpg", seed=11, size=(120, 80), orientation=6)
    upright = tmp_path / "src" / "a" / "upright.png"
    load_image(tagged).save(upright)
    write_image(tmp_path / "src" / "a" / "other.jpg", seed=12, size=(120, 80))
    df, summary = curate(tmp_path / "ds", tmp_path / "src", dedupe="near")
    assert summary["duplicate_groups"] == 1
    assert row(df, tagged)["group"] == row(df, upright)["group"] != ""


def test_an_eps_file_is_quarantined_without_running_ghostscript(tmp_path, ghostscript_log):
    from vislab.testing.images import EPS_BYTES, write_eps

    write_image_folder(tmp_path / "src", ["cat"], per_class=2)
    eps = write_eps(tmp_path / "src" / "cat" / "drawing.eps")
    disguised = tmp_path / "src" / "cat" / "photo.jpg"
    disguised.write_bytes(EPS_BYTES)
    df, summary = curate(tmp_path / "ds", tmp_path / "src")
    for path in (eps, disguised):
        assert row(df, path)["status"] == "quarantined"
        assert row(df, path)["reason"].startswith(
            "unsupported_format:not an image vislab reads (EPS: PostScript, refused for safety"
        )
    assert eps.read_bytes() == EPS_BYTES
    assert not ghostscript_log.exists()
