"""Perceptual hash and duplicate grouping, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vislab.data.dedupe import (
    LEVELS_PER_BIT,
    PATTERN_LEVELS_PER_BIT,
    hamming,
    is_plain,
    near_copy_groups,
    near_pairs,
    perceptual_hash,
    plain_pairs,
    plain_signature,
    thumbnail,
)
from vislab.testing.images import smooth_image


def connected_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over `pairs` (the oracle for which images the pair finders connect):
    for each index the smallest index of its connected component."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in np.asarray(pairs, dtype=np.int64).tolist():
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def grouped_pairs(hashes: np.ndarray, plain: np.ndarray, threshold: int) -> list[list[int]]:
    """Index pairs (i < j) that `near_copy_groups` puts in one group (one class, index order)."""
    n = len(hashes)
    _, head = near_copy_groups(hashes, plain, threshold, np.arange(n), np.zeros(n))
    return [[i, j] for i in range(n) for j in range(i + 1, n) if head[i] == head[j]]


@pytest.mark.parametrize("threshold", [0, 1, 4, 6, 12])
def test_near_pairs_find_the_same_groups_as_brute_force(threshold):
    rng = np.random.default_rng(threshold)
    base = rng.integers(0, 2**63, 60, dtype=np.uint64)
    # Clusters: flip a few random bits of a base hash, plus exact repeats.
    flips = rng.integers(0, 64, (300, 3))
    members = base[rng.integers(0, 60, 300)]
    for k in range(3):
        members ^= np.uint64(1) << flips[:, k].astype(np.uint64)
    hashes = np.concatenate([base, members, base[:10]])
    d = hamming(hashes[:, None], hashes[None, :])
    ii, jj = np.nonzero(np.triu(d <= threshold, k=1))
    expected = connected_groups(len(hashes), np.stack([ii, jj], axis=1))
    got = connected_groups(len(hashes), near_pairs(hashes, threshold))
    assert (expected == got).all()


@pytest.mark.parametrize("threshold", [0, 2, 6])
def test_plain_pairs_find_the_same_groups_as_brute_force(threshold):
    rng = np.random.default_rng(threshold)
    base = rng.integers(0, 256, (40, 1, 3)) + rng.integers(-30, 31, (40, 64, 1)) * rng.integers(0, 2, (40, 1, 1))
    sigs = np.clip(base[rng.integers(0, 40, 150)] + rng.integers(-6, 7, (150, 64, 3)), 0, 255)
    sigs = np.concatenate([sigs, sigs[:20]]).astype(np.float64)
    mean = sigs.mean(axis=1)
    pattern = (sigs - mean[:, None, :]).reshape(len(sigs), -1)
    contrast = np.sqrt((pattern**2).mean(axis=1))
    colour = np.abs(mean[:, None] - mean[None]).max(axis=2) <= threshold * LEVELS_PER_BIT
    apart = np.sqrt(((pattern[:, None] - pattern[None]) ** 2).mean(axis=2))
    close = apart <= threshold * (PATTERN_LEVELS_PER_BIT + (contrast[:, None] + contrast[None]) / 64) + 1e-9
    ii, jj = np.nonzero(np.triu(colour & close, k=1))
    expected = connected_groups(len(sigs), np.stack([ii, jj], axis=1))
    got = connected_groups(len(sigs), plain_pairs(sigs, threshold))
    assert (expected == got).all()
    assert len(np.unique(got)) < len(sigs)  # some groups at every threshold (the repeats at least)


def test_plain_images_pair_by_colour_thumbnail_and_never_by_their_shared_hash():
    def solid(colour: tuple[int, int, int]) -> str:
        return plain_signature(Image.new("RGB", (40, 30), colour))

    hashes = np.array([0, 1 << 63, 1 << 63, 1 << 63, 1 << 63], dtype=np.uint64)
    plain = np.array([solid((0, 0, 0)), solid((255, 255, 255)), solid((220, 20, 20)), solid((0, 136, 0)), ""], dtype=object)
    assert grouped_pairs(hashes, plain, 6) == []
    plain[3] = solid((208, 26, 26))  # within 6 x 4 levels of the red
    assert grouped_pairs(hashes, plain, 6) == [[2, 3]]
    assert grouped_pairs(hashes, plain, 0) == []
    halves = np.zeros((30, 40, 3), np.uint8)
    halves[:, 20:] = 255
    left_right, top_bottom = Image.fromarray(halves), Image.fromarray(halves).rotate(90, expand=True)
    assert is_plain(thumbnail(left_right)) and is_plain(thumbnail(top_bottom))
    assert hamming(np.uint64(perceptual_hash(left_right)), np.uint64(perceptual_hash(top_bottom))) <= 6  # the hash cannot tell
    pair = np.array([plain_signature(left_right), plain_signature(top_bottom)], dtype=object)
    assert grouped_pairs(np.zeros(2, dtype=np.uint64), pair, 6) == []


def test_photos_are_not_plain():
    skimage_data = pytest.importorskip("skimage.data")
    for name in ("chelsea", "coffee", "camera", "astronaut", "moon", "coins", "text"):
        assert not is_plain(thumbnail(Image.fromarray(getattr(skimage_data, name)()))), name


def test_a_chain_of_close_pairs_is_cut_at_the_copy_kept():
    # A ~ B ~ C within 6 bits a step, A and C 8 bits apart: connected components join all three
    a, b, c = 0, 0b1111, 0b11111111
    hashes = np.array([a, b, c], dtype=np.uint64)
    plain = np.array(["", "", ""], dtype=object)
    keeper, head = near_copy_groups(hashes, plain, 6, np.array([0, 1, 2]), np.array(["x", "x", "x"]))
    assert keeper.tolist() == [0, 0, 2] and head.tolist() == [0, 0, 2]  # C is no copy of A, the copy kept
    keeper, head = near_copy_groups(hashes, plain, 6, np.array([1, 0, 2]), np.array(["x", "x", "x"]))
    assert keeper.tolist() == [1, 1, 1] and head.tolist() == [1, 1, 1]  # B kept: both are its copies
    # B under another label is never a copy of A: its own keeper, in A's group (one split)
    keeper, head = near_copy_groups(hashes, plain, 6, np.array([0, 1, 2]), np.array(["x", "y", "x"]))
    assert keeper.tolist() == [0, 1, 2] and head.tolist() == [0, 0, 2]
    assert connected_groups(3, near_pairs(hashes, 6)).tolist() == [0, 0, 0]


@pytest.mark.parametrize("threshold", [0, 4, 6])
def test_near_copy_groups_are_leader_clustering_by_brute_force(threshold):
    rng = np.random.default_rng(threshold + 1)
    base = rng.integers(0, 2**63, 30, dtype=np.uint64)
    members = base[rng.integers(0, 30, 200)]
    for flip in rng.integers(0, 64, (200, 3)).T:
        members ^= (np.uint64(1) << flip.astype(np.uint64)) * rng.integers(0, 2, 200).astype(np.uint64)
    hashes = np.concatenate([base, members, members[:20]])
    n = len(hashes)
    classes = rng.choice(["cat", "dog"], n, p=[0.8, 0.2])
    order = rng.permutation(n)
    close = hamming(hashes[:, None], hashes[None, :]) <= threshold

    def stars(ranked: list[int]) -> dict[int, int]:
        lead: dict[int, int] = {}
        for i in ranked:
            if i not in lead:
                lead.update({j: i for j in ranked if j not in lead and close[i, j]})
        return lead

    keeper = {}
    for name in ("cat", "dog"):
        keeper.update(stars([i for i in order.tolist() if classes[i] == name]))
    head = stars([i for i in order.tolist() if keeper[i] == i])
    got_keeper, got_head = near_copy_groups(hashes, np.full(n, "", dtype=object), threshold, order, classes)
    assert got_keeper.tolist() == [keeper[i] for i in range(n)]
    assert got_head.tolist() == [head[keeper[i]] for i in range(n)]
    assert all(close[i, got_keeper[i]] and classes[i] == classes[got_keeper[i]] for i in range(n))
    assert np.unique(got_head).size < n  # some copies at every threshold (the repeats at least)


def test_hash_survives_resizing_and_recompression_but_not_a_new_picture():
    import io

    im = smooth_image(5, (200, 150))
    buf = io.BytesIO()
    im.resize((90, 68), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=50)
    copy = Image.open(buf)
    same = np.uint64(perceptual_hash(im)), np.uint64(perceptual_hash(copy))
    other = np.uint64(perceptual_hash(smooth_image(6, (200, 150))))
    assert hamming(*same) <= 4
    assert hamming(same[0], other) > 12
    flat = np.array([perceptual_hash(Image.new("L", (10, 10), v)) for v in (0, 1, 128, 255)], dtype=np.uint64)
    assert hamming(flat[:, None], flat[None, :]).max() <= 1  # blank images hash alike: grouping compares their colour


def test_close_hashes_with_clearly_different_colours_are_never_copies():
    def signature(colour: tuple[int, int, int]) -> str:
        return plain_signature(Image.new("RGB", (8, 8), colour))

    hashes = np.full(4, 0xFF00FF00FF00FF00, dtype=np.uint64)  # one layout: the hash reads grey only
    colours = np.array([signature((220, 30, 30)), signature((30, 220, 30)), signature((212, 36, 30)), signature((90, 90, 90))])
    plain = np.full(4, "", dtype=object)
    _, head = near_copy_groups(hashes, plain, 6, np.arange(4), np.array(["red", "green", "red", "grey"]), colours)
    # the green picture is no copy of the red one; a recoloured-by-a-few-levels red is, and so is a
    # colourless (greyscale) copy, which has no colour to differ
    assert head.tolist() == [0, 1, 0, 0]
    assert near_copy_groups(hashes, plain, 6, np.arange(4), np.zeros(4))[1].tolist() == [0, 0, 0, 0]  # no colours given


def test_curate_tells_a_red_picture_from_a_green_one_of_the_same_layout_but_keeps_recompressed_copies(tmp_path):
    import json

    from vislab.data.curate import curate
    from vislab.testing.images import near_copy, write_image

    def mostly(colour: tuple[int, int, int], path) -> None:
        pixels = np.zeros((16, 16, 3), dtype=np.uint8)
        pixels[:] = colour
        pixels[:4, :4] = (40, 40, 200)  # a differently coloured corner: too much structure to be plain
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)

    root = tmp_path / "src"
    mostly((220, 30, 30), root / "red" / "a.png")
    mostly((30, 220, 30), root / "green" / "a.png")
    photo = write_image(root / "red" / "photo.jpg", seed=5, size=(120, 90))
    near_copy(photo, root / "green" / "photo_small.jpg", scale=0.6, quality=50)
    summary = curate(root, out=tmp_path / "ds", dedupe="near", workers=1)
    assert summary["conflicting_label_groups"] == 1, json.dumps(summary["conflicting_labels"])
    (group,) = summary["conflicting_labels"]
    assert {m["path"] for m in group["members"]} == {str(photo), str(root / "green" / "photo_small.jpg")}


def test_a_colour_jpeg_keeps_the_hash_of_its_grey_draft_and_gets_a_colour_thumbnail(tmp_path):
    from vislab.data.checks import HASH_DRAFT, inspect_chunk
    from vislab.data.dedupe import hash_to_hex

    path = tmp_path / "photo.jpg"
    smooth_image(3, (300, 200)).save(path, "JPEG", quality=80)
    (rec,) = inspect_chunk([str(path)], 10**8)
    with Image.open(path) as grey:
        grey.draft("L", HASH_DRAFT)  # what the hash read before colour was decoded too
        assert rec["phash"] == hash_to_hex(perceptual_hash(grey))
    with Image.open(path) as colour:
        assert rec["colour_thumb"] and np.abs(
            np.frombuffer(bytes.fromhex(rec["colour_thumb"]), np.uint8).astype(int)
            - np.frombuffer(bytes.fromhex(plain_signature(colour.convert("RGB"))), np.uint8)
        ).max() <= 8
