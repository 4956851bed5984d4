"""The YOLOv3 loss: which predictions answer for which box, and how wrong they are.

Targets: one float tensor for the batch, a row per box: image index in the batch, class,
x1, y1, x2, y2 in input pixels (after letterbox and augmentation), and optionally a 7th
column, an ignore flag: 1 marks an ignore region (KITTI DontCare, COCO iscrowd, VOC
difficult), 0 a real box. Boxes of zero width or height are dropped.

Assignment: a box is learnt by the anchor whose shape (w, h) overlaps it best, on any level,
and also by every other anchor whose shape IoU with it exceeds `anchor_iou` (AlexeyAB's
Darknet `iou_thresh`, 0.213), each in the grid cell holding the box centre. Why not only
the best anchor (original v3): a box between two anchor sizes teaches both, so there are
2-3x more positives per box and training from a few images converges sooner; why not
Ultralytics' neighbour cells: Darknet's decoding (sigmoid offset within the cell) cannot
reach a centre outside the cell, and we keep that decoding so imported weights work as is.

Box: 1 - CIoU of the decoded box and the truth (torchvision's `complete_box_iou_loss`).
Why not Darknet's MSE on tx, ty, tw, th: an IoU loss is in the terms the metric uses and is
scale-free, so small and large boxes weigh the same without a (2 - w*h) fudge, and CIoU's
centre-distance and aspect terms still pull when the boxes do not overlap.

Objectness: BCE over every anchor of every cell; positives have target 1. Any other
prediction is a negative (target 0) unless it is not counted at all because its box
overlaps a truth of its image with IoU > `ignore_iou` (it found an object, only with
another anchor) or more than `ignore_ioa` of its area lies inside an ignore region.
Each level's BCE is averaged over its counted anchors and weighted by `balance` (fine grids
weigh more: their mean is diluted by many more easy negatives).

Class: BCE per class (independent sigmoids, as Darknet v3) on the positives.
The total is box * lbox + obj * lobj + cls * lcls; the parts come back detached, for logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss

from vislab.errors import VislabError
from vislab.models.anchors import wh_iou
from vislab.models.yolo import decode_boxes

DEFAULT_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4}


@dataclass(frozen=True)
class LossConfig:
    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    anchor_iou: float = 0.213
    ignore_iou: float = 0.7
    ignore_ioa: float = 0.5
    balance: tuple[float, ...] | None = None  # per level, rising stride; None: 4.0 / 1.0 / 0.4 at strides 8 / 16 / 32


def _per_image(boxes: torch.Tensor, batch: int) -> torch.Tensor:
    """Rows (image, class, x1, y1, x2, y2) -> [batch, M, 4], each image's boxes padded with
    empty boxes (which overlap nothing)."""
    img = boxes[:, 0].long()
    counts = torch.bincount(img, minlength=batch)
    out = boxes.new_zeros(batch, max(int(counts.max()) if len(boxes) else 0, 1), 4)
    order = torch.argsort(img, stable=True)
    slot = torch.arange(len(boxes), device=boxes.device) - (counts.cumsum(0) - counts)[img[order]]
    out[img[order], slot] = boxes[order, 2:6]
    return out


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, P, 4] x [B, M, 4] -> (best IoU, best intersection over a's area) per box of a.
    Coordinates one at a time, so the largest temporary is [B, P, M] (stride 8 at 416 px:
    8,112 predictions per image)."""
    ax1, ay1, ax2, ay2 = (v[..., None] for v in a.unbind(-1))
    bx1, by1, bx2, by2 = (v[:, None] for v in b.unbind(-1))
    inter = (torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp(min=0) * (torch.min(ay2, by2) - torch.max(ay1, by1)).clamp(min=0)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    iou = inter / (area_a + (bx2 - bx1) * (by2 - by1) - inter).clamp(min=1e-9)
    return iou.amax(-1), (inter / area_a.clamp(min=1e-9)).amax(-1)


class YOLOLoss:
    """`YOLOLoss(model.anchors, model.strides)(model(x) in training mode, targets)` ->
    (total, {"box", "obj", "cls"})."""

    def __init__(self, anchors: torch.Tensor, strides: Sequence[int], cfg: LossConfig | None = None) -> None:
        self.anchors = anchors.detach().float().cpu()  # [levels, A, 2] pixels
        self.strides = list(strides)
        self.cfg = cfg or LossConfig()
        self.balance = list(self.cfg.balance or [DEFAULT_BALANCE.get(s, (16 / s) ** 2) for s in self.strides])
        if len(self.balance) != len(self.strides) or self.anchors.shape[0] != len(self.strides):
            raise VislabError(f"loss: {len(self.strides)} levels but {self.anchors.shape[0]} anchor sets and {len(self.balance)} balance weights")

    def __call__(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, device = self.cfg, outputs[0].device
        batch, num_anchors, num_classes = outputs[0].shape[0], self.anchors.shape[1], outputs[0].shape[-1] - 5
        anchors = self.anchors.to(device)
        t = targets.to(device=device, dtype=torch.float32)
        if t.dim() != 2 or t.shape[1] not in (6, 7):
            raise VislabError(f"loss targets: shape {tuple(t.shape)}; expected [N, 6] or [N, 7] rows (image, class, x1, y1, x2, y2[, ignore])")
        ignore = t[:, 6] > 0 if t.shape[1] == 7 else torch.zeros(len(t), dtype=torch.bool, device=device)
        sized = ((t[:, 4:6] - t[:, 2:4]) > 0).all(1)
        truths, regions = t[sized & ~ignore, :6], t[sized & ignore, :6]
        if len(truths) and ((truths[:, 1] < 0) | (truths[:, 1] >= num_classes)).any():
            raise VislabError(f"loss targets: a class index is outside the model's {num_classes} classes (0..{num_classes - 1})")
        truth_boxes, region_boxes = _per_image(truths, batch), _per_image(regions, batch)

        shape_iou = wh_iou(truths[:, 4:6] - truths[:, 2:4], anchors.view(-1, 2))  # [n, levels * A]
        assigned = shape_iou > cfg.anchor_iou
        if len(truths):
            assigned[torch.arange(len(truths), device=device), shape_iou.argmax(1)] = True
        assigned = assigned.view(len(truths), len(self.strides), num_anchors)

        zero = torch.zeros((), device=device)
        box_sum, cls_sum, lobj, n_pos = zero, zero, zero, 0
        for level, (raw, stride) in enumerate(zip(outputs, self.strides)):
            raw = raw.float()
            _, _, h, w, _ = raw.shape
            boxes = decode_boxes(raw, anchors[level], stride)
            ti, ai = assigned[:, level].nonzero(as_tuple=True)
            bi = truths[ti, 0].long()
            centre = (truths[ti, 2:4] + truths[ti, 4:6]) / 2
            gx = (centre[:, 0] / stride).long().clamp(0, w - 1)
            gy = (centre[:, 1] / stride).long().clamp(0, h - 1)

            with torch.no_grad():
                best_iou, _ = _overlaps(boxes.detach().view(batch, -1, 4), truth_boxes)
                _, region_ioa = _overlaps(boxes.detach().view(batch, -1, 4), region_boxes)
                counted = ((best_iou <= cfg.ignore_iou) & (region_ioa <= cfg.ignore_ioa)).view(batch, num_anchors, h, w)
                counted[bi, ai, gy, gx] = True
            tobj = torch.zeros_like(raw[..., 4])
            tobj[bi, ai, gy, gx] = 1.0
            bce = F.binary_cross_entropy_with_logits(raw[..., 4], tobj, reduction="none")
            lobj = lobj + self.balance[level] * (bce * counted).sum() / counted.sum().clamp(min=1)
            if len(ti):
                box_sum = box_sum + complete_box_iou_loss(boxes[bi, ai, gy, gx], truths[ti, 2:6], reduction="sum")
                onehot = F.one_hot(truths[ti, 1].long(), num_classes).float()
                cls_sum = cls_sum + F.binary_cross_entropy_with_logits(raw[bi, ai, gy, gx, 5:], onehot, reduction="sum")
                n_pos += len(ti)
        lbox = box_sum / max(n_pos, 1)
        lcls = cls_sum / max(n_pos * num_classes, 1)
        total = cfg.box * lbox + cfg.obj * lobj + cfg.cls * lcls
        return total, {"box": lbox.detach(), "obj": lobj.detach(), "cls": lcls.detach()}
