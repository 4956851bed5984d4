"""The detect task's LightningModule: the YOLO loss in training, COCO mAP in validation.

- training: the model's raw per-level outputs through `YOLOLoss` (box CIoU, objectness with
  the ignore threshold and ignore regions, class BCE); with `detect.multi_scale` each batch
  is resized to a seeded random size (a multiple of 32) within +- that share of the input;
- validation: the loss, then the decoded boxes after NMS (scores down to `detect.val_conf`)
  scored by torchmetrics' MeanAveragePrecision (faster-coco-eval backend, up to
  `detect.max_det` detections per image) in each image's own pixels, detections clipped to
  it, exactly as evaluate scores them: val/map50 (the default monitor) and val/map
  (mAP@0.5:0.95). Scored on the canvas, a box spilling into the letterbox padding lost IoU
  that evaluate's clipped box keeps (coco128 val/map 14.97% where evaluate said 16.73%).
  Ignore regions are passed as COCO crowd boxes, so detections inside them are neither
  true nor false positives;
- predict (evaluate, predict): boxes mapped back to each image's own pixels.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislab.data.det_datamodule import unletterbox
from vislab.models.yolo import postprocess
from vislab.models.yolo_loss import LossConfig, YOLOLoss
from vislab.tasks.base import BaseTask

MAX_STRIDE = 32


def map_targets(targets: torch.Tensor, batch: int, num_classes: int) -> list[dict[str, torch.Tensor]]:
    """A batch's [N, 7] box table as torchmetrics targets per image: truths, and ignore
    regions as crowd boxes (one per class for a region of no class, such as DontCare)."""
    out = []
    for i in range(batch):
        t = targets[targets[:, 0] == i]
        cls, boxes, ignore = t[:, 1].long(), t[:, 2:6].float(), t[:, 6] > 0
        agnostic = ignore & (cls < 0)
        own = ~agnostic
        n_agn = int(agnostic.sum())
        all_boxes = torch.cat([boxes[own], boxes[agnostic].repeat_interleave(num_classes, 0)])
        labels = torch.cat([cls[own], torch.arange(num_classes, device=cls.device).repeat(n_agn)])
        crowd = torch.cat([ignore[own], torch.ones(n_agn * num_classes, dtype=torch.bool, device=cls.device)])
        out.append({"boxes": all_boxes, "labels": labels, "iscrowd": crowd.long()})
    return out


def image_pixels(boxes: torch.Tensor, meta: Sequence[float]) -> torch.Tensor:
    """One image's canvas boxes [n, 4] in its own pixels, clipped to it, by its batch meta
    (position, scale x, scale y, pad x, pad y, width, height): what validation and evaluate
    both score."""
    _, scale_x, scale_y, px, py, w, h = meta
    return unletterbox(boxes.float().cpu(), scale_x, scale_y, px, py, int(w), int(h))


class DetectTask(BaseTask):
    """A YOLO, its loss and mAP. `model` is always given (tasks/detect.py builds it: input
    size, anchors and Darknet weights come from the `detect:` section)."""

    def __init__(
        self, config: dict[str, Any], classes: Sequence[str], data_spec: dict[str, Any] | None = None, *, model: nn.Module | None = None
    ) -> None:
        super().__init__(config, classes, data_spec, model=model)
        sec = self.cfg.section()
        self.sec = sec
        self.loss_fn = YOLOLoss(
            self.model.anchors,
            self.model.strides,
            LossConfig(box=sec.box_weight, obj=sec.obj_weight, cls=sec.cls_weight, anchor_iou=sec.anchor_iou, ignore_iou=sec.ignore_iou, ignore_ioa=sec.ignore_ioa),
        )
        self.predict_conf = sec.val_conf  # what predict_step keeps (evaluate: every score for mAP; predict: --conf)
        self.predict_iou = sec.nms_iou
        self._val_map: Any = None
        self._val_images: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []  # this rank's, this epoch

    # ---- training ------------------------------------------------------------------------
    def _rescale(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-scale: the batch at a random size (seeded by the step) within +- multi_scale."""
        m = self.sec.multi_scale
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + int(self.global_step))
        f = 1 + (torch.rand(1, generator=g).item() * 2 - 1) * m
        h, w = x.shape[-2:]
        nh, nw = (max(MAX_STRIDE, round(s * f / MAX_STRIDE) * MAX_STRIDE) for s in (h, w))
        if (nh, nw) == (h, w):
            return x, targets
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        targets = targets.clone()
        targets[:, [2, 4]] *= nw / w
        targets[:, [3, 5]] *= nh / h
        return x, targets

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, targets = batch[0], batch[1]
        if self.sec.multi_scale > 0:
            x, targets = self._rescale(x, targets)
        loss, parts = self.loss_fn(self(x), targets)
        n = len(x)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        for k, v in parts.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=n)
        return loss

    # ---- validation ----------------------------------------------------------------------
    @property
    def val_map(self) -> Any:
        if self._val_map is None:
            from vislab.metrics.detection import coco_metric

            # no sync of its own: its list states must hold as many images on every rank, and
            # evaluation shards are not padded (on_validation_epoch_end gathers the images);
            # detect.max_det detections per image, as evaluate counts them
            self._val_map = coco_metric(self.sec.max_det, sync_on_compute=False)
        return self._val_map

    def detect(self, x: torch.Tensor, conf: float, iou: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(raw outputs, per-image [n, 6] detections x1, y1, x2, y2, score, class) of a batch."""
        raw = self.model.forward_head(self.model.forward_features(x))
        return raw, postprocess(self.model.decode(raw), conf=conf, iou=iou, max_det=self.sec.max_det)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, targets, metas = batch[0], batch[1], batch[2].tolist()
        raw, dets = self.detect(x, self.sec.val_conf, self.sec.nms_iou)
        loss, _ = self.loss_fn(raw, targets)
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=len(x), sync_dist=True)
        preds = [{"boxes": image_pixels(d[:, :4], m), "scores": d[:, 4].float().cpu(), "labels": d[:, 5].long().cpu()} for d, m in zip(dets, metas)]
        truths = [
            {"boxes": image_pixels(t["boxes"], m), "labels": t["labels"].cpu(), "iscrowd": t["iscrowd"].cpu()}
            for t, m in zip(map_targets(targets, len(x), len(self.classes)), metas)
        ]
        self._val_images.extend(zip(preds, truths))

    def on_validation_epoch_end(self) -> None:
        images, self._val_images = self._val_images, []
        if self.trainer.world_size > 1:  # every rank scores all validation images, so all log the same mAP
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, images)
            images = [item for part in gathered for item in part]
        if not images:
            return
        self.val_map.update([p for p, _ in images], [t for _, t in images])
        r = self.val_map.compute()
        self.val_map.reset()
        self.log("val/map50", max(float(r["map_50"]), 0.0))
        self.log("val/map", max(float(r["map"]), 0.0))

    # ---- evaluate and predict ------------------------------------------------------------
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per image: its position in the list, its boxes (own pixels), scores, class ids, and the
        width and height of the decoded (EXIF-oriented) image the boxes are in."""
        x, meta = batch[0], batch[1]
        _, dets = self.detect(x, self.predict_conf, self.predict_iou)
        return [
            {"pos": int(m[0]), "boxes": image_pixels(d[:, :4], m), "scores": d[:, 4].float().cpu(), "labels": d[:, 5].long().cpu(),
             "width": int(m[5]), "height": int(m[6])}
            for d, m in zip(dets, meta.tolist())
        ]
