"""The crops task's LightningModule: `CropsModule` (loss, steps, validation metrics) and its
health check.

A batch is a `CropSample` (thumb, patches, cells, rect, cropped, and in evaluation the
decode grid's patches and centres; uint8 pixels the model normalises itself). The loss is
`models.crops.crops_loss` with the `crops.loss` weights.
Validation logs, on the fixed evaluation set: the loss, crop-flag accuracy and ROC AUC,
patch-location accuracy (chance 1/cells), rectangle IoU and the crop-factor error of the
cropped samples, both of the rectangle the run reports (`crops.rectangle`, see
models/crops_decode.py); metrics/crops.py defines them, this module computes the same
figures on tensors, batch by batch. Flag accuracy alone proves little (the resize leaves
resampling traces; see data/crops.py), hence patch accuracy beside it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC

from vislab.health import HealthCheck
from vislab.models.crops import CropOutput, crops_loss
from vislab.models.crops_decode import final_rect
from vislab.tasks.base import BaseTask


def rect_iou_t(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """IoU per row of B x 4 (x1, x2, y1, y2) rectangles, predictions clipped to the frame
    (as `metrics.crops.rect_iou`, on tensors)."""
    p = pred.float().clamp(0, 1)
    t = true.float()
    iw = (torch.minimum(p[:, 1], t[:, 1]) - torch.maximum(p[:, 0], t[:, 0])).clamp(min=0)
    ih = (torch.minimum(p[:, 3], t[:, 3]) - torch.maximum(p[:, 2], t[:, 2])).clamp(min=0)
    inter = iw * ih
    area_p = (p[:, 1] - p[:, 0]).clamp(min=0) * (p[:, 3] - p[:, 2]).clamp(min=0)
    union = area_p + (t[:, 1] - t[:, 0]) * (t[:, 3] - t[:, 2]) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def crop_factor_t(rect: torch.Tensor) -> torch.Tensor:
    r = rect.float().clamp(0, 1)
    return ((r[:, 1] - r[:, 0]).clamp(min=0) * (r[:, 3] - r[:, 2]).clamp(min=0)).sqrt()


class CropsModule(BaseTask):
    """Crop detector training: `classes` are the grid's cells (the model's location classes)."""

    def __init__(self, config: dict[str, Any], classes: Sequence[str], data_spec: dict[str, Any] | None = None, *, model: nn.Module | None = None) -> None:
        super().__init__(config, classes, data_spec, model=model)
        self.crops = self.cfg.section()
        if data_spec is None:  # the thumbnail the sampler makes, not the registry's size of the model
            width, height = self.crops.thumb_size
            self.hparams["data_spec"] = {**self.hparams["data_spec"], "input_size": [3, height, width]}
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_flag_acc = MeanMetric()
        self.train_patch_acc = MeanMetric()
        for m in (self.train_loss, self.train_flag_acc, self.train_patch_acc):
            m.persistent(True)  # an epoch resumed mid-way reports its whole-epoch means
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_auc = BinaryAUROC()
        self.val_cf_err = MeanMetric()
        self.val_spread: list[torch.Tensor] = []
        self.last_val_spread: float | None = None

    def forward(self, thumb: torch.Tensor, patches: torch.Tensor) -> CropOutput:  # type: ignore[override]
        compiled = self.__dict__.get("_compiled_model")
        return (compiled or self.model)(thumb, patches)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch  # uint8 pixels are the model's input (it normalises them)

    def _step(self, batch: Any) -> tuple[CropOutput, torch.Tensor, dict[str, torch.Tensor]]:
        thumb, patches, cells, rect, cropped = batch[:5]
        out = self(thumb, patches)
        loss, parts = crops_loss(out, cells, rect, cropped, self.crops.loss)
        return out, loss, parts

    def _reported_rect(self, out: CropOutput, sample: Any) -> torch.Tensor:
        """`crops.rectangle`'s rectangle: the head's, or decoded from the decode grid's patches."""
        if self.crops.rectangle == "head":
            return out.rect
        cells = self.model.locate_patches(sample[5])  # by position: a batch may come as a plain tuple
        return final_rect(out.rect, out.flag, cells, sample[6], self.crops)

    @staticmethod
    def _accuracies(out: CropOutput, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        cells, cropped = batch[2], batch[4]
        flag = ((out.flag.float() > 0) == (cropped > 0.5)).float().mean()
        patch = (out.cells.argmax(-1) == cells).float().mean()
        return flag, patch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out, loss, parts = self._step(batch)
        bs = batch[0].shape[0]
        flag, patch = self._accuracies(out, batch)
        self.train_loss.update(loss.detach())
        self.train_flag_acc.update(flag)
        self.train_patch_acc.update(patch)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/flag_acc", self.train_flag_acc, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/patch_acc", self.train_patch_acc, on_step=False, on_epoch=True, batch_size=bs)
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False, batch_size=bs)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=bs)
        for name in (n for n in ("patch", "rect", "flag", "size") if n in parts):
            self.log(f"train/loss_{name}", parts[name], on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        out, loss, parts = self._step(batch)
        bs = batch[0].shape[0]
        flag, patch = self._accuracies(out, batch)
        rect, cropped = batch[3], batch[4]
        pred = self._reported_rect(out, batch)
        self.val_loss.update(loss)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, batch_size=bs)
        self.log("val/flag_acc", flag, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs, prog_bar=True)
        self.log("val/patch_acc", patch, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        self.log("val/iou", rect_iou_t(pred, rect).mean(), on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        self.val_auc.update(torch.sigmoid(out.flag.float()), (cropped > 0.5).long())
        self.log("val/auc", self.val_auc, on_step=False, on_epoch=True, batch_size=bs)
        kept = cropped > 0.5
        if kept.any():
            s = crop_factor_t(rect[kept])
            self.val_cf_err.update((crop_factor_t(pred[kept]) - s).abs() / s)
            self.log("val/cf_err", self.val_cf_err, on_step=False, on_epoch=True, batch_size=int(kept.sum()))
        self.val_spread.append(torch.cat([out.rect.float(), torch.sigmoid(out.flag.float())[:, None]], 1).detach().cpu())

    def on_validation_epoch_end(self) -> None:
        if self.val_spread:
            outs = torch.cat(self.val_spread)
            self.last_val_spread = float(outs.std(0).max()) if len(outs) > 1 else None
        self.val_spread = []

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Outputs (rect, flag logit, cell probabilities) and, for evaluation samples, the truth;
        for whole photos (sample, rotation, position) the rotation and position ride along."""
        sample, extra = (batch[0], batch[1:]) if len(batch) == 3 else (batch, ())
        out = self(sample[0], sample[1])
        res = {"rect": self._reported_rect(out, sample).float(), "flag": out.flag.float(), "cell_probs": torch.softmax(out.cells.float(), -1)}
        if extra:
            res.update({"rotation": extra[0], "position": extra[1]})
        else:
            res.update({"cells_true": sample[2], "rect_true": sample[3].float(), "cropped": sample[4].float()})
        return res

    def sanity_score(self, batch: Any) -> float | None:
        """Mean of flag and patch accuracy on a training batch (1.0: learned by heart)."""
        with torch.no_grad():
            out, _, _ = self._step(batch)
        flag, patch = self._accuracies(out, batch)
        return float((flag + patch) / 2)

    def reset_train_metrics(self) -> None:
        for m in (self.train_loss, self.train_flag_acc, self.train_patch_acc):
            m.reset()


class ConstantOutputs(HealthCheck):
    """The seed's failure: a detector whose rectangles and crop probabilities no longer depend
    on the photo (all outputs' std over the validation set below `tol`), from epoch
    `after_epochs` on (train.health.chance_after_epochs). Warned once."""

    def __init__(self, after_epochs: int = 3, tol: float = 1e-3) -> None:
        self.after_epochs, self.tol = after_epochs, tol
        self.done = False

    def after_validation(self, trainer: Any, pl_module: Any, report: Any) -> None:
        spread = getattr(pl_module, "last_val_spread", None)
        if spread is None or self.done or spread >= self.tol or trainer.current_epoch + 1 < self.after_epochs:
            return
        self.done = True
        report("warn", "constant_outputs", f"the crop detector's outputs are constant over the validation set (std {spread:.2g}): "
               "it learned nothing about crops; lower optim.lr or check crops.loss")
