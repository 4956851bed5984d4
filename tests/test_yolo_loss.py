"""The YOLOv3 loss on hand-built outputs (a perfect prediction scores zero, gradients land
where they should, ignore regions and near-misses are no negatives, multi-anchor
assignment), its input checks, and a tiny YOLO that overfits four synthetic images."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torchvision.ops import box_iou

from vislab.errors import VislabError
from vislab.models.yolo import YOLO, YOLOConfig, postprocess
from vislab.models.yolo_loss import LossConfig, YOLOLoss
from vislab.testing.models import single_thread

# two levels on a 64 px input: stride 16 (4 x 4 cells), stride 32 (2 x 2 cells)
SMALL_ANCHORS = ((8, 8), (16, 16), (24, 20), (20, 30), (32, 32), (48, 48))
ANCHORS = torch.tensor(SMALL_ANCHORS, dtype=torch.float32).view(2, 3, 2)
STRIDES = [16, 32]
C = 2
# a 16 x 16 box centred at (24, 40): anchor (16, 16) of stride 16, cell x 1, y 2, offsets 0.5
TRUTH = torch.tensor([[0, 1, 16, 32, 32, 48]], dtype=torch.float32)
BEST_ONLY = LossConfig(anchor_iou=1.0)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def _outputs(batch: int = 1, obj: float = -30.0, seed: int | None = None) -> list[torch.Tensor]:
    """Raw outputs with box logits 0 (anchor-sized boxes at cell centres) and objectness `obj`;
    random everywhere with a seed."""
    outs = []
    for cells in (4, 2):
        if seed is None:
            raw = torch.zeros(batch, 3, cells, cells, 5 + C)
            raw[..., 4] = obj
            raw[..., 5:] = -30.0
        else:
            raw = torch.randn(batch, 3, cells, cells, 5 + C, generator=torch.Generator().manual_seed(seed + cells))
        outs.append(raw.requires_grad_())
    return outs


def test_a_perfect_prediction_scores_zero_and_a_wrong_one_does_not() -> None:
    outs = _outputs()
    with torch.no_grad():
        outs[0][0, 1, 2, 1, 4] = 30.0  # the assigned anchor is sure, with the right class
        outs[0][0, 1, 2, 1, 5 + 1] = 30.0
    loss_fn = YOLOLoss(ANCHORS, STRIDES, BEST_ONLY)
    total, parts = loss_fn(outs, TRUTH)
    assert total.item() < 1e-6 and all(v.item() < 1e-6 for v in parts.values())
    with torch.no_grad():
        outs[0][0, 1, 2, 1, 2] = math.log(1.5)  # 50% too wide
        outs[0][0, 1, 2, 1, 5] = 30.0  # and the other class too
    _, parts = loss_fn(outs, TRUTH)
    assert parts["box"].item() > 0.1 and parts["cls"].item() > 1.0 and parts["obj"].item() < 1e-6


def _grad_cells(grad: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(i) for i in (grad != 0).any(-1).nonzero().tolist()}


def test_gradients_land_where_they_should_and_descend() -> None:
    outs = _outputs(seed=0)
    loss_fn = YOLOLoss(ANCHORS, STRIDES, BEST_ONLY)
    total, first = loss_fn(outs, TRUTH)
    total.backward()
    assert _grad_cells(outs[0].grad[..., :4]) == {(0, 1, 2, 1)}  # box: the assigned anchor only
    assert _grad_cells(outs[0].grad[..., 5:]) == {(0, 1, 2, 1)}  # class: likewise
    assert _grad_cells(outs[1].grad[..., :4]) == set() and _grad_cells(outs[1].grad[..., 5:]) == set()
    assert (outs[1].grad[..., 4] != 0).all()  # objectness: every counted anchor

    opt = torch.optim.Adam(outs, lr=0.1)  # per-element steps: objectness is a mean over many cells
    for _ in range(30):
        opt.zero_grad()
        total, parts = loss_fn(outs, TRUTH)
        total.backward()
        opt.step()
    assert all(parts[k] < first[k] / 2 for k in ("box", "obj", "cls")), (first, parts)


def test_a_box_teaches_every_anchor_of_a_similar_shape() -> None:
    # 16 x 16 vs the anchors' shape IoU: 0.25, 1, 0.53 at stride 16; 0.43, 0.25, 0.11 at stride 32
    outs = _outputs(seed=1)
    YOLOLoss(ANCHORS, STRIDES)(outs, TRUTH)[0].backward()
    assert _grad_cells(outs[0].grad[..., :4]) == {(0, 0, 2, 1), (0, 1, 2, 1), (0, 2, 2, 1)}
    assert _grad_cells(outs[1].grad[..., :4]) == {(0, 0, 1, 0), (0, 1, 1, 0)}


def test_ignore_regions_make_no_negatives() -> None:
    whole = torch.tensor([[0, 0, 0, 0, 64, 64, 1]], dtype=torch.float32)
    outs = _outputs(obj=2.0)  # confident everywhere: every negative would cost
    total, parts = YOLOLoss(ANCHORS, STRIDES)(outs, whole)
    total.backward()
    assert parts["obj"].item() == 0.0 and all((o.grad == 0).all() for o in outs)
    as_truth = whole.clone()
    as_truth[:, 6] = 0  # the same row as a real box: positives and negatives again
    assert YOLOLoss(ANCHORS, STRIDES)(_outputs(obj=2.0), as_truth)[1]["obj"].item() > 0.1

    left = torch.tensor([[0, 0, 0, 0, 32, 64, 1]], dtype=torch.float32)
    outs = _outputs(obj=2.0)
    YOLOLoss(ANCHORS, STRIDES)(outs, left)[0].backward()
    obj_grad = outs[0].grad[0, :, :, :, 4]  # stride 16: anchors, rows, columns
    assert (obj_grad[:, :, :2] == 0).all() and (obj_grad[:, :, 2:] != 0).all()


def test_a_prediction_overlapping_a_truth_is_no_negative() -> None:
    outs = _outputs(obj=2.0)
    with torch.no_grad():  # anchor (24, 20) in the truth's cell, reshaped onto the truth exactly
        outs[0][0, 2, 2, 1, 2:4] = torch.tensor([math.log(16 / 24), math.log(16 / 20)])
    YOLOLoss(ANCHORS, STRIDES, BEST_ONLY)(outs, TRUTH)[0].backward()
    grad = outs[0].grad[0, :, 2, 1, 4]
    assert grad[2] == 0  # not assigned, but it found the box: not counted
    assert grad[1] < 0 and grad[0] > 0  # the assigned anchor is pushed up, a plain miss down


def test_bad_targets_fail_in_one_line_and_empty_boxes_are_dropped() -> None:
    loss_fn = YOLOLoss(ANCHORS, STRIDES)
    with pytest.raises(VislabError, match=r"shape \(1, 5\)"):
        loss_fn(_outputs(), TRUTH[:, :5])
    with pytest.raises(VislabError, match="outside the model's 2 classes"):
        loss_fn(_outputs(), torch.tensor([[0, 2, 16, 32, 32, 48]], dtype=torch.float32))
    flat = torch.tensor([[0, 1, 16, 32, 16, 48]], dtype=torch.float32)  # zero width
    outs = _outputs(seed=2)
    assert torch.equal(loss_fn(outs, flat)[0], loss_fn(outs, torch.zeros(0, 6))[0])


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    """Four 64 px images of coloured rectangles (red: class 0, blue: class 1) on noise."""
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.2
    colours = torch.tensor([[1.0, 0.2, 0.2], [0.2, 0.3, 1.0]])
    # every centre off the grid's diagonal at both strides, so a swapped x/y cell cannot pass
    boxes = [[(0, 32, 2, 56, 26)], [(1, 2, 34, 26, 58)], [(0, 40, 6, 60, 34), (1, 6, 28, 30, 52)], [(1, 24, 8, 56, 36)]]
    rows = []
    for i, image_boxes in enumerate(boxes):
        for c, x1, y1, x2, y2 in image_boxes:
            images[i, :, y1:y2, x1:x2] = colours[c][:, None, None]
            rows.append([i, c, x1, y1, x2, y2])
    return images, torch.tensor(rows, dtype=torch.float32)


def test_a_tiny_yolo_overfits_a_few_images() -> None:
    torch.manual_seed(0)
    images, targets = _scene()
    cfg = YOLOConfig(arch="timm", backbone="test_efficientnet", levels=2, num_classes=2, img_size=64, anchors=SMALL_ANCHORS)
    model = YOLO(cfg)
    loss_fn = YOLOLoss(model.anchors, model.strides)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(150):
        total, _ = loss_fn(model(images), targets)
        opt.zero_grad()
        total.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        detections = postprocess(model(images), conf=0.5, iou=0.45)  # above the 0.33 objectness prior
    for i, det in enumerate(detections):
        truth = targets[targets[:, 0] == i]
        assert len(det), f"image {i}: no detection"
        match = (box_iou(truth[:, 2:6], det[:, :4]) > 0.5) & (truth[:, 1:2] == det[None, :, 5])
        # every box found, and nothing else found (a confident box in the wrong cell fails)
        assert match.any(1).all() and match.any(0).all(), f"image {i}: truths {truth.tolist()}, detections {det.tolist()}"
