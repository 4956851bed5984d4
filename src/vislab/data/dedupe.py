"""Perceptual hashing and duplicate grouping.

The hash is a 64-bit DCT hash: the low-frequency 8x8 corner of the DCT of a 32x32 grayscale
thumbnail, each bit set when its coefficient is above the block's median. Re-encoding,
resizing and mild colour changes move only a few bits, so near copies are found by a small
Hamming distance. Finding the close pairs uses the pigeonhole principle (two hashes within
distance t agree exactly on at least one of t+1 disjoint bit blocks), so 50,000 hashes need no
all-pairs scan. Copies are grouped around a leader, the copy kept (`near_copy_groups`), never
by chains of close pairs, which join unlike images one small step at a time.

A plain image (a blank frame, a solid colour, a faint gradient, two tones) has too little
structure for the hash to encode: its bits are decided by a handful of coefficients and by
ties at the median, so unrelated plain images hash within a few bits of each other (a
black/white left/right split and a top/bottom one differ in 4 bits; every flat image hashes
alike). Such images are marked by an 8x8 colour thumbnail instead and pair only with each
other, when their mean colours are close (`LEVELS_PER_BIT`) and so are their patterns around
that mean (`PATTERN_LEVELS_PER_BIT`, plus a share of the patterns' own contrast, so a strong
two-tone picture survives the blur of a small copy). Detailed images are matched by the hash,
which survives resizing, re-encoding, brightness and greyscale changes, and confirmed by colour:
the hash reads grey only, so a red picture and a green one of the same layout hash alike. Two
coloured images whose colour thumbnails' chroma (each pixel's offset from its own grey) differs
by more than CHROMA_LEVELS are never copies; a colourless one (a greyscale copy) has no colour
to differ and matches by hash alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

HASH_SIZE = 32
LOW = 8
MAX_THRESHOLD = 32
# A thumbnail whose grey levels all lie within this range is flat: its hash bits carry no
# structure (they are the same for every flat image), so its colour is compared instead.
FLAT_RANGE = 8
# A low-frequency coefficient this large is a cosine of about one grey level across the
# 32x32 thumbnail: real structure, above the noise of re-encoding. An image with fewer such
# components than PLAIN_COMPONENTS (a quarter of the 64 hash bits) is plain: unrelated plain
# images differ in about half of those few bits, within the default --near-threshold of 6.
COMPONENT_LEVEL = 16.0
PLAIN_COMPONENTS = 16
# Plain images are compared on a SIGNATURE_SIZE x SIGNATURE_SIZE colour thumbnail.
SIGNATURE_SIZE = 8
# Mean-colour tolerance per bit of --near-threshold: 4 x 64 bits spans the 0..255 range.
LEVELS_PER_BIT = 4
# Pattern tolerance (RMS levels around the mean colour) per bit of --near-threshold, plus 1/64
# per bit of the two patterns' summed RMS contrast: 6 levels + 0.19 x contrast at the default 6.
PATTERN_LEVELS_PER_BIT = 1.0
# Chroma (RMS levels over the colour thumbnail) that tells two detailed images apart despite
# close hashes, and below which an image counts as colourless. Resized and re-encoded copies
# move it by a few levels; a red and a green picture of one layout differ by over 100.
CHROMA_LEVELS = 16.0


@functools.lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis, rows = frequencies (so D @ X @ D.T is the 2-D DCT)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    mat = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    mat[0] /= np.sqrt(2.0)
    return mat


@functools.lru_cache(maxsize=1)
def _low_basis() -> np.ndarray:
    """The hash's 8x8 low-frequency DCT block of a flattened thumbnail as one (64, 1024)
    float32 matrix: one product per image, cheap enough to run on every file."""
    basis = _dct_matrix(HASH_SIZE)[:LOW]
    return np.kron(basis, basis).astype(np.float32)


def thumbnail(im: Image.Image) -> bytes:
    """The 32x32 grayscale pixels a hash is computed from (1,024 bytes)."""
    if im.mode != "L":
        im = im.convert("L")
    if im.size != (HASH_SIZE, HASH_SIZE):
        im = im.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX)
    return im.tobytes()


def is_plain(thumb: bytes) -> bool:
    """Whether a hash thumbnail is (nearly) one shade or holds fewer than PLAIN_COMPONENTS
    low-frequency components of about a grey level or more, so its hash cannot tell it from
    other plain images and its colour thumbnail must."""
    pixels = np.frombuffer(thumb, dtype=np.uint8)
    if int(pixels.max()) - int(pixels.min()) <= FLAT_RANGE:
        return True
    low = np.abs(_low_basis() @ pixels.astype(np.float32))
    return int(np.count_nonzero(low[1:] >= COMPONENT_LEVEL)) < PLAIN_COMPONENTS  # [0]: mean brightness


def plain_signature(rgb: Image.Image) -> str:
    """The SIGNATURE_SIZE x SIGNATURE_SIZE colour thumbnail of an RGB image as hex (row by
    row, r g b per pixel), what tells plain images apart."""
    small = rgb.resize((SIGNATURE_SIZE, SIGNATURE_SIZE), Image.Resampling.BOX)
    return small.tobytes().hex()


def perceptual_hashes(thumbs: list[bytes]) -> list[int]:
    """64-bit DCT hashes of many thumbnails at once (numpy's per-call cost, paid once per
    batch instead of once per image, was most of the hashing time for small files)."""
    if not thumbs:
        return []
    pixels = np.frombuffer(b"".join(thumbs), dtype=np.uint8).reshape(-1, HASH_SIZE, HASH_SIZE)
    basis = _dct_matrix(HASH_SIZE)[:LOW]  # only the 8 lowest frequencies are ever used
    # Rounding removes float noise, so a blank image gets exact zeros, not random bits.
    low = np.round(basis @ pixels.astype(np.float64) @ basis.T, 6).reshape(len(thumbs), LOW * LOW)
    ordered = np.sort(low, axis=1)
    median = (ordered[:, 31] + ordered[:, 32]) / 2
    bits = low > median[:, None]
    return np.packbits(bits, axis=1).view(">u8")[:, 0].tolist()


def perceptual_hash(im: Image.Image) -> int:
    """64-bit DCT hash of one image (any mode and size)."""
    return perceptual_hashes([thumbnail(im)])[0]


def hash_to_hex(value: int) -> str:
    return f"{value:016x}"


def hex_to_hashes(values: Iterable[str]) -> np.ndarray:
    return np.array([int(v, 16) for v in values], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between uint64 arrays (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def _blocks(threshold: int) -> list[tuple[int, int]]:
    """Split 64 bits into threshold+1 contiguous (shift, width) blocks of near-equal width."""
    n = threshold + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def _pairs_within(values: np.ndarray, members: np.ndarray, threshold: int) -> np.ndarray:
    """Pairs (i < j) of `members` whose hashes are within `threshold`, in row chunks
    so a large bucket never needs a members x members matrix at once."""
    out = []
    m = len(members)
    step = max(1, (1 << 22) // m)
    hashes = values[members]
    for start in range(0, m - 1, step):
        rows = np.arange(start, min(start + step, m))
        dist = hamming(hashes[rows][:, None], hashes[None, :])
        close = (dist <= threshold) & (np.arange(m)[None, :] > rows[:, None])
        ii, jj = np.nonzero(close)
        if len(ii):
            out.append(np.stack([members[rows[ii]], members[jj]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def near_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Index pairs (i < j) of hashes within `threshold` bits, as an (m, 2) array.

    Identical hashes are collapsed first (each copy pairs with the first holder), so
    thousands of blank images cost nothing extra.
    """
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise ValueError(f"threshold must be in 0..{MAX_THRESHOLD}, got {threshold}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    if len(hashes) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    uniq, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    found = []
    copies = np.nonzero(first[inverse] != np.arange(len(hashes)))[0]
    if len(copies):
        found.append(np.stack([first[inverse[copies]], copies], axis=1))
    if threshold > 0 and len(uniq) > 1:
        close: set[tuple[int, int]] = set()
        for shift, width in _blocks(threshold):
            keys = (uniq >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            order = np.argsort(keys, kind="stable")
            bounds = np.nonzero(np.diff(keys[order]))[0] + 1
            for bucket in np.split(order, bounds):
                if len(bucket) > 1:
                    close.update(map(tuple, _pairs_within(uniq, bucket, threshold).tolist()))
        if close:
            u = np.array(sorted(close), dtype=np.int64)
            found.append(first[u])
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.sort(np.concatenate(found).astype(np.int64), axis=1)


def _signature_pixels(signatures: Iterable[str]) -> np.ndarray:
    """Hex signatures as an (n, SIGNATURE_SIZE**2, 3) float array."""
    raw = b"".join(bytes.fromhex(v) for v in signatures)
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, SIGNATURE_SIZE * SIGNATURE_SIZE, 3).astype(np.float64)


def plain_pairs(signatures: np.ndarray, threshold: int) -> np.ndarray:
    """Index pairs (i < j) of plain images' colour thumbnails ((n, SIGNATURE_SIZE**2, 3)
    levels) that match at `threshold`, as an (m, 2) array: mean colours within
    `threshold * LEVELS_PER_BIT` levels in every channel, and patterns around them (RMS over
    pixels and channels) within `threshold * (PATTERN_LEVELS_PER_BIT + (contrast_i +
    contrast_j) / 64)`, contrast being a pattern's own RMS. Identical thumbnails pair with their
    first holder (a thousand blank frames cost one pass); distinct ones are compared in row
    chunks."""
    pixels = np.asarray(signatures, dtype=np.float64)
    n = len(pixels)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    _, first, inverse = np.unique(pixels.reshape(n, -1), axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    found = []
    copies = np.nonzero(first[inverse] != np.arange(n))[0]
    if len(copies):
        found.append(np.stack([first[inverse[copies]], copies], axis=1))
    m = len(first)
    if threshold > 0 and m > 1:
        uniq = pixels[first]
        mean = uniq.mean(axis=1)
        pattern = (uniq - mean[:, None, :]).reshape(m, -1)
        values = pattern.shape[1]
        square = (pattern**2).sum(axis=1)
        contrast = np.sqrt(square / values)
        step = max(1, (1 << 22) // (m * 4))
        for start in range(0, m - 1, step):
            rows = np.arange(start, min(start + step, m))
            colour = np.abs(mean[rows][:, None, :] - mean[None, :, :]).max(axis=2) <= threshold * LEVELS_PER_BIT
            apart = np.maximum(square[rows][:, None] + square[None, :] - 2 * pattern[rows] @ pattern.T, 0) / values
            allowed = threshold * (PATTERN_LEVELS_PER_BIT + (contrast[rows][:, None] + contrast[None, :]) / 64)
            ii, jj = np.nonzero(colour & (apart <= allowed**2) & (np.arange(m)[None, :] > rows[:, None]))
            if len(ii):
                found.append(np.stack([first[rows[ii]], first[jj]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.sort(np.concatenate(found).astype(np.int64), axis=1)


def _neighbours(hashes: np.ndarray, plain: np.ndarray, threshold: int) -> tuple[np.ndarray, list[list[int]]]:
    """Each image's node (its distinct hash, or for a plain image its distinct colour thumbnail)
    and, per node, the nodes within `threshold` of it: detailed images by hash, plain ones by
    `plain_pairs`, never a detailed and a plain one. Identical copies share a node, so a
    thousand blank frames are one node, not a million pairs."""
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1)
    plain = np.asarray(plain, dtype=object).reshape(-1)
    is_plain_row = np.array([bool(c) for c in plain], dtype=bool)
    detailed, plains = np.flatnonzero(~is_plain_row), np.flatnonzero(is_plain_row)
    node = np.zeros(len(hashes), dtype=np.int64)
    distinct, node[detailed] = np.unique(hashes[detailed], return_inverse=True)
    pairs = [near_pairs(distinct, threshold)]
    if len(plains):
        pixels = _signature_pixels(plain[plains])
        shades, inverse = np.unique(pixels.reshape(len(plains), -1), axis=0, return_inverse=True)
        node[plains] = len(distinct) + inverse.reshape(-1)
        pairs.append(len(distinct) + plain_pairs(shades.reshape(len(shades), *pixels.shape[1:]), threshold))
    near: list[list[int]] = [[] for _ in range(int(node.max(initial=-1)) + 1)]
    for a, b in np.concatenate(pairs).astype(np.int64).reshape(-1, 2).tolist():
        near[a].append(b)
        near[b].append(a)
    return node, near


def _chroma(colours: np.ndarray | None, n: int) -> np.ndarray:
    """Each image's colour thumbnail as chroma (pixel minus its grey), (n, SIGNATURE_SIZE**2 * 3);
    zeros (colourless, never told apart) where no colour thumbnail is given."""
    out = np.zeros((n, SIGNATURE_SIZE * SIGNATURE_SIZE * 3), dtype=np.float32)
    if colours is None:
        return out
    colours = np.asarray(colours, dtype=object).reshape(-1)
    given = np.flatnonzero([bool(c) for c in colours])
    if len(given):
        pixels = _signature_pixels(colours[given])
        out[given] = (pixels - pixels.mean(axis=2, keepdims=True)).reshape(len(given), -1)
    return out


def _colour_apart(chroma: np.ndarray) -> Any:
    """A test (leader, candidates) -> mask of the candidates whose colours differ clearly from
    the leader's: both coloured (chroma above CHROMA_LEVELS) and chromas further apart than it."""
    strength = np.sqrt((chroma**2).mean(axis=1))
    coloured = strength > CHROMA_LEVELS

    def apart(i: int, members: np.ndarray) -> np.ndarray:
        if not coloured[i]:
            return np.zeros(len(members), dtype=bool)
        dist = np.sqrt(((chroma[members] - chroma[i]) ** 2).mean(axis=1))
        return coloured[members] & (dist > CHROMA_LEVELS)

    return apart


def _stars(order: np.ndarray, node: np.ndarray, near: list[list[int]], apart: Any) -> dict[int, int]:
    """Leader (star) clustering of the images in `order`: the first one not yet taken leads,
    and takes every image not yet taken within the threshold of it (its node and the nodes
    near it) whose colour is not `apart` from its own. Returns each image's leader."""
    ranked, nodes = order.tolist(), node[order].tolist()
    lists: dict[int, list[int]] = {}
    for i, n in zip(ranked, nodes):
        lists.setdefault(n, []).append(i)
    waiting = {n: np.array(members, dtype=np.int64) for n, members in lists.items()}
    leader: dict[int, int] = {}
    for i, n in zip(ranked, nodes):
        if i in leader:
            continue
        for m in (n, *near[n]):
            members = waiting.pop(m, None)
            if members is None:
                continue
            far = apart(i, members)
            leader.update((j, i) for j in members[~far].tolist())
            if far.any():
                waiting[m] = members[far]
    return leader


def near_copy_groups(
    hashes: np.ndarray,
    plain: np.ndarray,
    threshold: int,
    order: np.ndarray,
    classes: np.ndarray,
    colours: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Copy sets and groups of near copies by leader (star) clustering, as fastdup and
    imagededup keep one image per cluster: (keeper, head) per index.

    `order` ranks the images, best copy first. A copy set is its keeper, the first image of
    its class not yet taken, with every image of that class not yet taken within `threshold`
    of it (by hash, or plain images by colour thumbnail): each member is a near
    copy of the image kept, and a copy never stands for an image of another class; an image whose
    colour thumbnail (`colours`, hex as `plain_signature`) is clearly apart from the keeper's
    (`CHROMA_LEVELS`) is no copy of it, whatever its hash. A group,
    what a split keeps together, is a copy set plus the copy sets of other classes whose keepers
    are within `threshold` of its keeper (the same picture under two labels). Connected
    components of the pairs would chain unlike images instead: on scikit-learn's digits at 6
    bits they joined 45 handwritten digits up to 26 bits apart, a '5' among 44 '6's.
    """
    order = np.asarray(order, dtype=np.int64)
    classes = np.asarray(classes, dtype=object).reshape(-1)
    node, near = _neighbours(hashes, plain, threshold)
    detailed = None if colours is None else np.where([bool(c) for c in plain], "", np.asarray(colours, dtype=object))
    apart = _colour_apart(_chroma(detailed, len(node)))  # plain images are compared by plain_pairs
    by_class: dict[Any, list[int]] = {}
    for i in order.tolist():
        by_class.setdefault(classes[i], []).append(i)
    keeper = np.arange(len(node), dtype=np.int64)
    for members in by_class.values():
        for i, lead in _stars(np.array(members, dtype=np.int64), node, near, apart).items():
            keeper[i] = lead
    kept = order[keeper[order] == order]
    head_of = np.arange(len(node), dtype=np.int64)
    for i, lead in _stars(kept, node, near, apart).items():
        head_of[i] = lead
    return keeper, head_of[keeper]
