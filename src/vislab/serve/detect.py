"""`vislab serve` for detection runs: boxes with class and score per image.

An upload is letterboxed to the run's input as `vislab predict` does it (data/det_datamodule),
the batch goes through the model (PyTorch, or ONNX Runtime on the run's export: its output
is the decoded boxes before NMS), NMS runs per image at the request's `iou`, and the boxes
come back in the uploaded image's own pixels, down to the request's `conf`. The page draws
them over the photo with a confidence slider (RENDERERS.detect in page.html).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from vislab.serve.predictors import ONNXRUNTIME, PYTORCH, Predictor, register


class DetectOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conf: float | None = Field(None, ge=0.0, le=1.0, description="Lowest box score returned (default: the run's detect.conf).")
    iou: float | None = Field(None, gt=0.0, le=1.0, description="NMS IoU: of two overlapping boxes of a class the weaker goes (default: the run's detect.nms_iou).")
    max_det: int | None = Field(None, ge=1, le=1000, description="Most boxes returned per image (default: the run's detect.max_det, as predict and evaluate).")


@dataclass
class DetectItem:
    x: torch.Tensor  # [3, H, W] letterboxed, [0, 1]
    meta: tuple[float, float, float, float, int, int]  # scale x, scale y, pad x, pad y, width, height


@register
class DetectPredictor(Predictor):
    """Boxes (class, score, x1, y1, x2, y2 in image pixels) of a detection run."""

    task = "detect"
    Options = DetectOptions

    def __init__(self, run: Any, session: Any = None) -> None:
        from vislab.tasks.detect import canvas

        super().__init__(run.run_dir, ONNXRUNTIME if session is not None else PYTORCH)
        self.run = run
        self.classes: list[str] = list(run.classes)
        self.model = run.model.float().eval()
        self.session = session
        self.canvas = canvas(run.cfg)
        self.section = run.cfg.section()

    def preprocess(self, image: Image.Image, options: BaseModel) -> DetectItem:
        from vislab.data.det_datamodule import letterbox

        canvas, _, meta = letterbox(image.convert("RGB"), self.canvas)
        x = torch.from_numpy(canvas).permute(2, 0, 1).float().div_(255)
        return DetectItem(x, meta)

    def decoded(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, 5 + C] boxes, objectness and class probabilities from the serving engine."""
        if self.session is not None:
            from vislab.export import INPUT_NAME
            from vislab.tasks import get_task

            return torch.from_numpy(self.session.run(list(get_task(self.task).export_outputs), {INPUT_NAME: x.numpy()})[0])
        with torch.inference_mode():
            return self.model(x).float()

    def predict_batch(self, items: Sequence[DetectItem], options: Sequence[BaseModel]) -> list[dict[str, Any]]:
        from vislab.data.det_datamodule import unletterbox
        from vislab.models.yolo import postprocess

        preds = self.decoded(torch.stack([item.x for item in items]))
        results = []
        for p, item, opts in zip(preds, items, options):
            conf = self.section.conf if getattr(opts, "conf", None) is None else float(opts.conf)
            iou = self.section.nms_iou if getattr(opts, "iou", None) is None else float(opts.iou)
            max_det = self.section.max_det if getattr(opts, "max_det", None) is None else int(opts.max_det)
            det = postprocess(p[None], conf=conf, iou=iou, max_det=max_det)[0]
            boxes = unletterbox(det[:, :4], *item.meta)
            results.append({
                "conf": conf,
                "boxes": [
                    {"class": self.classes[int(k)], "score": round(float(s), 5), "x1": round(b[0], 2), "y1": round(b[1], 2), "x2": round(b[2], 2), "y2": round(b[3], 2)}
                    for b, s, k in zip(boxes.tolist(), det[:, 4].tolist(), det[:, 5].tolist())
                ],
            })
        return results

    def describe(self) -> dict[str, Any]:
        s = self.run.spec
        return {
            **super().describe(),
            "model": self.run.cfg.model.name,
            "classes": self.classes,
            "num_classes": len(self.classes),
            "conf": self.section.conf,
            "input": {"size": list(s.input_size), "letterbox": True},
            "checkpoint": self.run.checkpoint.relative_to(self.run.run_dir).as_posix(),
        }
