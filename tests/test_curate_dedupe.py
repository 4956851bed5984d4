"""Perceptual hash and duplicate grouping, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vislab.data.dedupe import colour_pairs, connected_groups, hamming, near_pairs, perceptual_hash, similar_pairs
from vislab.testing.images import smooth_image


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


@pytest.mark.parametrize("tolerance", [0, 8, 24])
def test_colour_pairs_find_the_same_groups_as_brute_force(tolerance):
    rng = np.random.default_rng(tolerance)
    base = rng.integers(0, 256, (40, 3))
    colours = np.clip(base[rng.integers(0, 40, 200)] + rng.integers(-10, 11, (200, 3)), 0, 255)
    colours = np.concatenate([colours, colours[:20]])
    d = np.abs(colours[:, None, :] - colours[None, :, :]).max(axis=2)
    ii, jj = np.nonzero(np.triu(d <= tolerance, k=1))
    expected = connected_groups(len(colours), np.stack([ii, jj], axis=1))
    assert (expected == connected_groups(len(colours), colour_pairs(colours, tolerance))).all()


def test_flat_images_pair_by_colour_and_never_by_their_shared_hash():
    hashes = np.array([0, 1 << 63, 1 << 63, 1 << 63, 1 << 63], dtype=np.uint64)
    colours = np.array(["000000", "ffffff", "dc1414", "008800", ""], dtype=object)
    assert similar_pairs(hashes, colours, 6).tolist() == []
    colours[3] = "d01a1a"  # within 6 x 4 levels of the red
    assert similar_pairs(hashes, colours, 6).tolist() == [[2, 3]]
    assert similar_pairs(hashes, colours, 0).tolist() == []


def test_groups_are_labelled_by_their_smallest_index():
    groups = connected_groups(6, np.array([[4, 5], [1, 4], [2, 3]]))
    assert groups.tolist() == [0, 1, 2, 2, 1, 1]


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
