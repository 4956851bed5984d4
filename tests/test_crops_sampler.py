"""Crop-detection sampler: the geometry exactly (rectangle, s, edge, aspect, patch cells),
the pixels it renders, seeding per (epoch, image), the fixed evaluation set across calls and
processes, portraits, too-small originals, and the aberration functions."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from vislab.data.aberrations import Aberrations, chromatic_aberration, radial_distortion, vignette
from vislab.data.crops import (
    EDGES,
    RESAMPLE,
    CropSample,
    CropsConfig,
    draw_crop,
    eval_samples,
    load_sample,
    make_sample,
    patch_cells,
    plan_sample,
    render_sample,
    sample_seed,
)
from vislab.errors import VislabError
from vislab.testing.lens import TINY_FRAME, lens_photo, tiny_crops_config, write_lens_photos

CFG = tiny_crops_config()


def test_uncropped_plan_is_the_whole_frame_with_identity_cells() -> None:
    for train in (False, True):
        plan = plan_sample(TINY_FRAME, 5, CFG, train=train, crop=False)
        assert not plan.cropped and plan.edge is None and plan.size_factor == 1.0
        assert plan.box == (0, 0, *TINY_FRAME) and plan.rect == (0.0, 1.0, 0.0, 1.0)
        assert plan.cells == tuple(range(16))  # jitter of 2 px never leaves a 48-px cell


def test_crop_rectangle_size_edge_and_aspect() -> None:
    w, h = TINY_FRAME
    edges: Counter[str] = Counter()
    for seed in range(400):
        cropped, s, edge, (left, top, right, bottom) = draw_crop((w, h), np.random.default_rng(seed), CFG, crop=True)
        assert cropped and 0.5 <= s < 0.9
        assert (right - left, bottom - top) == (round(s * w), round(s * h))  # aspect kept
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        touching = {"left": left == 0, "right": right == w, "top": top == 0, "bottom": bottom == h}
        assert touching[edge], (edge, left, top, right, bottom)
        edges[edge] += 1
        plan = plan_sample((w, h), seed, CFG, train=True, crop=True)
        x1, x2, y1, y2 = plan.rect
        assert plan.rect == (plan.box[0] / w, plan.box[2] / w, plan.box[1] / h, plan.box[3] / h)
        assert abs((x2 - x1) - plan.size_factor) <= 0.5 / w + 1e-12
        assert abs((y2 - y1) - plan.size_factor) <= 0.5 / h + 1e-12
    assert set(edges) == set(EDGES) and min(edges.values()) > 60  # each edge about a quarter


def test_crop_decision_follows_crop_prob() -> None:
    share = np.mean([plan_sample(TINY_FRAME, s, CFG, train=True).cropped for s in range(600)])
    assert 0.42 < share < 0.58
    never = tiny_crops_config(crop_prob=0.0)
    assert not any(plan_sample(TINY_FRAME, s, never, train=True).cropped for s in range(50))


def test_resize_width_and_interpolations_are_drawn_from_the_config() -> None:
    plans = [plan_sample(TINY_FRAME, s, CFG, train=True) for s in range(300)]
    widths = [p.resized[0] for p in plans]
    assert min(widths) >= 192 and max(widths) < 288 and len(set(widths)) > 40
    assert {p.resample for p in plans} == set(RESAMPLE) == {p.thumb_resample for p in plans}
    for p in plans:  # the aspect of the kept region survives the resize
        kw, kh = p.box[2] - p.box[0], p.box[3] - p.box[1]
        assert abs(p.resized[1] - p.resized[0] * kh / kw) <= 0.5


def test_patch_cells_hand_checked() -> None:
    # the top-right quarter of the frame, resized to 400 x 400, 20-px patches at cell centres:
    # centres at fractions 1/8, 3/8, 5/8, 7/8 of the kept image sit at x = 0.5625, 0.6875,
    # 0.8125, 0.9375 (columns 2, 2, 3, 3) and y = 0.0625 .. 0.4375 (rows 0, 0, 1, 1)
    corners = [(40 + 100 * c, 40 + 100 * r) for r in range(4) for c in range(4)]
    cells = patch_cells((0.5, 1.0, 0.0, 0.5), (400, 400), corners, 20, (4, 4))
    assert cells == (2, 2, 3, 3, 2, 2, 3, 3, 6, 6, 7, 7, 6, 6, 7, 7)
    # uncropped: the identity; a 2 x 3 grid labels row-major (row * columns + column)
    assert patch_cells((0, 1, 0, 1), (400, 400), corners, 20, (4, 4)) == tuple(range(16))
    two_by_three = [(90, 57), (290, 57), (90, 190), (290, 190), (90, 323), (290, 323)]
    assert patch_cells((0, 1, 0, 1), (400, 400), two_by_three, 20, (2, 3)) == (0, 1, 2, 3, 4, 5)
    # a patch centre just past a cell border of the original frame takes the next cell
    assert patch_cells((0.0, 0.5, 0.0, 1.0), (400, 400), [(240, 40)], 20, (4, 4)) == (1,)  # x = 0.3125
    assert patch_cells((0.0, 0.5, 0.0, 1.0), (400, 400), [(190, 40)], 20, (4, 4)) == (1,)  # x = 0.25 exactly
    assert patch_cells((0.0, 0.5, 0.0, 1.0), (400, 400), [(189, 40)], 20, (4, 4)) == (0,)


def _cell_coded_image(w: int, h: int) -> np.ndarray:
    """Each cell of the original 4 x 4 grid painted with its own id (red = 10 * id)."""
    ys, xs = np.mgrid[0:h, 0:w]
    cell = (ys * 4 // h) * 4 + (xs * 4 // w)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (10 * cell).astype(np.uint8)
    return img


def test_patch_labels_match_the_original_cell_under_their_centre() -> None:
    cfg = tiny_crops_config(interpolations=["nearest"], jitter=4)
    img = _cell_coded_image(*TINY_FRAME)
    for seed in range(40):
        for train in (False, True):
            plan = plan_sample(TINY_FRAME, seed, cfg, train=train, crop=seed % 4 != 0)
            sample = render_sample(img, plan, cfg)
            p = cfg.patch_size
            centre = sample.patches[:, 0, p // 2 - 1 : p // 2 + 1, p // 2 - 1 : p // 2 + 1].reshape(16, 4)
            for label, pixels in zip(sample.cells.tolist(), centre.tolist()):
                assert 10 * label in pixels, (seed, plan, label, pixels)


def test_evaluation_samples_carry_the_decode_grid_without_another_draw() -> None:
    """Evaluation plans (unless the rectangle is the head's) add the `decode_grid` patches: one
    at each cell's centre of the kept image, inside it, labelled by the cell under their centre,
    rendered as the kept image's pixels; the rest of the plan is what it is without them, and
    training samples carry none."""
    cfg = tiny_crops_config(interpolations=["nearest"])
    img = _cell_coded_image(*TINY_FRAME)
    p = cfg.patch_size
    for seed in range(20):
        plan = plan_sample(TINY_FRAME, seed, cfg, train=False, crop=seed % 3 != 0)
        head = plan_sample(TINY_FRAME, seed, cfg.model_copy(update={"rectangle": "head"}), train=False, crop=seed % 3 != 0)
        assert head.decode == () and dataclasses.replace(plan, decode=()) == head
        rw, rh = plan.resized
        assert len(plan.decode) == 64 and all(0 <= x <= rw - p and 0 <= y <= rh - p for x, y in plan.decode)
        sample = render_sample(img, plan, cfg)
        kept = np.asarray(Image.fromarray(img).crop(plan.box).resize(plan.resized, RESAMPLE[plan.resample]))
        for patch, (x, y), (u, v) in zip(sample.decode_patches, plan.decode, sample.decode_centres.tolist()):
            assert torch.equal(patch, torch.from_numpy(kept[y : y + p, x : x + p].transpose(2, 0, 1).copy()))
            assert (u, v) == pytest.approx(((x + p / 2) / rw, (y + p / 2) / rh))
        labels = patch_cells(plan.rect, plan.resized, plan.decode, p, cfg.grid)
        centre = sample.decode_patches[:, 0, p // 2 - 1 : p // 2 + 1, p // 2 - 1 : p // 2 + 1].reshape(64, 4)
        for label, pixels in zip(labels, centre.tolist()):
            assert 10 * label in pixels, (seed, plan, label, pixels)
    train = make_sample(img, 3, cfg, train=True)
    assert train.decode_patches.shape == (0, 3, p, p) and train.decode_centres.shape == (0, 2)


def test_rendered_patches_and_thumbnail_are_the_planned_pixels() -> None:
    img = lens_photo(*TINY_FRAME, np.random.default_rng(0))
    plan = plan_sample(TINY_FRAME, 11, CFG, train=True, crop=True)
    sample = render_sample(img, plan, CFG)
    kept = Image.fromarray(img).crop(plan.box).resize(plan.resized, RESAMPLE[plan.resample])
    arr = np.asarray(kept)
    p = CFG.patch_size
    for patch, (left, top) in zip(sample.patches, plan.patches):
        assert torch.equal(patch, torch.from_numpy(arr[top : top + p, left : left + p].transpose(2, 0, 1).copy()))
    thumb = np.asarray(kept.resize(CFG.thumb_size, RESAMPLE[plan.thumb_resample]))
    assert torch.equal(sample.thumb, torch.from_numpy(thumb.transpose(2, 0, 1).copy()))
    assert sample.thumb.dtype == torch.uint8 and sample.thumb.shape == (3, 37, 56)
    assert sample.patches.shape == (16, 3, 24, 24) and sample.cells.dtype == torch.int64
    assert sample.rect.tolist() == pytest.approx(plan.rect) and float(sample.cropped) == 1.0
    batch = default_collate([sample, sample])
    assert isinstance(batch, CropSample) and batch.patches.shape == (2, 16, 3, 24, 24)


def test_flips_mirror_the_original_before_the_crop_and_change_no_other_draw() -> None:
    img = lens_photo(*TINY_FRAME, np.random.default_rng(2))
    cfg = tiny_crops_config(hflip=1.0, vflip=1.0)
    for seed in range(5):
        plain, flipped = plan_sample(TINY_FRAME, seed, CFG, train=True), plan_sample(TINY_FRAME, seed, cfg, train=True)
        assert flipped.hflip and flipped.vflip and not plain.hflip
        assert dataclasses.replace(flipped, hflip=False, vflip=False) == plain  # same crop, resize, patches, targets
        # the sample of the flipped photo is the unflipped plan's sample of the photo turned 180 degrees
        want = render_sample(np.ascontiguousarray(img[::-1, ::-1]), plain, CFG)
        assert all(torch.equal(a, b) for a, b in zip(render_sample(img, flipped, cfg), want))
    assert not plan_sample(TINY_FRAME, 0, cfg, train=False).hflip  # evaluation never flips
    half = tiny_crops_config(hflip=0.5)
    assert 30 < sum(plan_sample(TINY_FRAME, s, half, train=True).hflip for s in range(100)) < 70


def test_same_seed_same_sample_and_seeds_per_epoch_and_image() -> None:
    img = lens_photo(*TINY_FRAME, np.random.default_rng(1))
    a, b = make_sample(img, 123, CFG, train=True), make_sample(img, 123, CFG, train=True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    seeds = {sample_seed(0, e, i) for e in range(5) for i in range(50)}
    assert len(seeds) == 250 and sample_seed(0, 2, 7) == sample_seed(0, 2, 7) != sample_seed(1, 2, 7)
    plans = {plan_sample(TINY_FRAME, sample_seed(0, e, 3), CFG, train=True) for e in range(20)}
    assert len(plans) == 20  # a new sample of the image every epoch


def test_portrait_turned_to_landscape() -> None:
    portrait = np.ascontiguousarray(np.rot90(lens_photo(*TINY_FRAME, np.random.default_rng(2))))
    assert portrait.shape[:2] == (288, 192)
    rotations = set()
    for seed in range(20):
        plan = plan_sample((192, 288), seed, CFG, train=True, crop=False)
        assert plan.frame == (288, 192)
        rotations.add(plan.rotation)
        sample = render_sample(portrait, plan, CFG)
        assert sample.thumb.shape == (3, 37, 56)
    assert rotations == {90, 270}
    for seed in (0, 1, 2, 3):  # rendering rotates the way the plan says
        plan = plan_sample((192, 288), seed, CFG, train=True, crop=True)
        turn = Image.Transpose.ROTATE_90 if plan.rotation == 90 else Image.Transpose.ROTATE_270
        landscape = np.asarray(Image.fromarray(portrait).transpose(turn))
        same = render_sample(landscape, dataclasses.replace(plan, rotation=0), CFG)
        assert all(torch.equal(x, y) for x, y in zip(render_sample(portrait, plan, CFG), same))


def test_too_small_original_is_a_one_line_error_naming_the_file() -> None:
    assert CFG.min_side == 192 and CropsConfig().min_side == 768
    with pytest.raises(VislabError, match=r"shots/a\.jpg: 287x191 is too small.*192 px"):
        plan_sample((287, 191), 0, CFG, train=True, name="shots/a.jpg")
    # a photo that may itself be a crop is still read whole (predict): only cropping needs the room
    plan = plan_sample((287, 191), 0, CFG, train=False, crop=False)
    assert plan.rect == (0.0, 1.0, 0.0, 1.0) and len(plan.cells) == 16


def test_config_rejects_impossible_ranges() -> None:
    for bad in ({"size_factor": (0.9, 0.5)}, {"size_factor": (0.5, 1.0)}, {"resize_width": (300, 300)},
                {"resize_width": (64, 128)}, {"interpolations": ["bicubic"]}, {"bogus": 1}):
        with pytest.raises(ValueError):
            tiny_crops_config(**bad)


def _eval_items_json(paths: list[str]) -> str:
    return json.dumps([(i.path, i.seed, i.crop) for i in eval_samples(paths, 2, seed=7)])


def test_eval_set_identical_across_calls_and_processes(tmp_path) -> None:
    paths = [str(p) for p in write_lens_photos(tmp_path, 3, portrait_every=3)]
    assert Image.open(paths[2]).size == (192, 288)  # stored upright
    items = eval_samples(paths, 2, seed=7)
    assert len(items) == 9 and [i.crop for i in items] == [False, True, True] * 3
    assert len({i.seed for i in items}) == 9
    assert _eval_items_json(paths) == _eval_items_json(paths)
    code = (
        "import json,sys; from vislab.data.crops import eval_samples; "
        "print(json.dumps([(i.path, i.seed, i.crop) for i in eval_samples(sys.argv[1:], 2, seed=7)]))"
    )
    other = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == json.loads(_eval_items_json(paths))
    # an image keeps its samples when the list changes
    assert eval_samples(paths[1:2], 2, seed=7) == items[3:6]
    assert eval_samples(paths, 2, seed=8) != items
    a, b = load_sample(items[4], CFG), load_sample(items[4], CFG)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and float(a.cropped) == 1.0
    assert load_sample(items[8], CFG).thumb.shape == (3, 37, 56)  # the portrait, turned


def test_stress_aberrations_change_the_eval_sample(tmp_path) -> None:
    item = eval_samples([write_lens_photos(tmp_path, 1)[0]], 1, seed=0)[1]
    clean = load_sample(item, CFG)
    assert torch.equal(load_sample(item, tiny_crops_config(stress=Aberrations())).patches, clean.patches)
    stressed = load_sample(item, tiny_crops_config(stress={"vignette": 0.5}))
    assert torch.equal(stressed.rect, clean.rect) and torch.equal(stressed.cells, clean.cells)
    assert stressed.patches.float().mean() < clean.patches.float().mean() - 5


def _dot(w: int = 201, h: int = 121, x: int = 170, y: int = 100) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[y - 1 : y + 2, x - 1 : x + 2] = 255
    return img


def _centroid(plane: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(plane > 40)
    w = plane[ys, xs].astype(float)
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


def test_aberration_functions_move_light_as_a_lens_does() -> None:
    flat = np.full((120, 180, 3), 200, np.uint8)
    v = vignette(flat, 0.6)
    assert v[60, 90, 0] >= 199 and v[0, 0, 0] == pytest.approx(200 * 0.4, abs=6)
    img = _dot()
    centre = np.array([100.0, 60.0])
    assert np.array_equal(chromatic_aberration(img, 0, 0), img)
    ca = chromatic_aberration(img, 4.0, -4.0)
    red, green, blue = (np.linalg.norm(_centroid(ca[..., c]) - centre) for c in range(3))
    assert red > green + 2 > blue + 4  # red fringe outward, blue inward, by ~4% of the radius
    assert np.linalg.norm(_centroid(radial_distortion(img, 0.2)[..., 1]) - centre) < green - 3  # barrel pulls in
    assert np.linalg.norm(_centroid(radial_distortion(img, -0.2)[..., 1]) - centre) > green + 3


def test_several_samples_per_photo_come_from_one_decode_in_batches_of_batch_size(tmp_path) -> None:
    from vislab.config import DataConfig
    from vislab.data.crops_datamodule import CropsDataModule, TrainSamples
    from vislab.testing.lens import make_lens_dataset

    data = make_lens_dataset(tmp_path / "data", splits=(9, 2, 0))
    three = CropsDataModule(data, tiny_crops_config(samples_per_image=3), DataConfig(batch_size=6, num_workers=0), seed=3)
    batches = list(three.train_dataloader())
    assert three.photos_per_batch == 2 and three.steps_per_epoch() == len(batches) == 4  # 9 photos, 2 a batch, the last dropped
    assert all(len(b.cells) == 6 for b in batches)
    # a photo's first sample is its one sample when samples_per_image is 1; its others are other draws
    paths = three.rows["train"]["path"].tolist()
    seed = sample_seed(3, 0, 1)
    (alone,) = TrainSamples(paths, tiny_crops_config())[(1, seed)]
    first, *others = TrainSamples(paths, tiny_crops_config(samples_per_image=3))[(1, seed)]
    assert all(torch.equal(x, y) for x, y in zip(alone, first))
    assert all(not torch.equal(o.patches, first.patches) for o in others) and not torch.equal(others[0].patches, others[1].patches)
