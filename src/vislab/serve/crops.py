"""`vislab serve` for crops runs: the crop probability, the estimated original frame and the
patches' cell probabilities of each upload (the page's `RENDERERS.crops` draws them).

Each upload is read whole, as `vislab predict` reads a file (`data.crops_datamodule.whole_photo`:
never cropped, one fixed seeded resize for every photo), so the API's numbers are the CLI's.
On request (`picture`, on by default) the result carries predict's picture as a PNG data URI
(drawn by `finish` in the request's thread, not in the model's):
the photo inside its estimated frame, and the heat maps. With `--onnx` the model runs in ONNX
Runtime on the run's export (`vislab export RUN`: the same uint8 thumbnail and patches in,
rectangle, crop logit and cell logits out), else in PyTorch. The decode grid's patches
(`crops.rectangle` cells or mean) go through the same exported model, a grid's worth of
patches at a time beside a blank thumbnail: each patch's cell logits depend on that patch alone.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from vislab.serve.predictors import ONNXRUNTIME, PYTORCH, Predictor, register

PICTURE_SIDE = 512  # the photo in the picture, at most this many pixels a side
# matplotlib's rc_context sets and restores the process-wide rcParams: two pictures drawn at
# once in request threads would each draw in, and restore, the other's style
PICTURE_LOCK = threading.Lock()


class CropsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    picture: bool = Field(True, description="Also return the picture of `vislab predict` (the photo inside its estimated "
                          "original frame, and the patches' cell heat maps) as a PNG data URI.")


@dataclass
class CropsItem:
    thumb: torch.Tensor
    patches: torch.Tensor
    decode_patches: torch.Tensor
    decode_centres: torch.Tensor
    rotation: int
    view: np.ndarray | None  # the photo, small, for the picture (only when asked)


@register
class CropsPredictor(Predictor):
    """Crop detection: was the photo cropped, where in its original frame it sits, and which
    cell of that frame each patch came from."""

    task = "crops"
    Options = CropsOptions

    def __init__(self, run: Any, session: Any = None) -> None:
        super().__init__(run.run_dir, ONNXRUNTIME if session is not None else PYTORCH)
        self.run = run
        self.cfg = run.cfg.section()
        self.model = run.model.float().eval()
        self.session = session

    def preprocess(self, image: Image.Image, options: BaseModel) -> CropsItem:
        from vislab.data.crops_datamodule import whole_photo

        sample, rotation = whole_photo(image, self.cfg, self.cfg.eval_seed)
        view = None
        if getattr(options, "picture", True):
            small = image.copy()
            small.thumbnail((PICTURE_SIDE, PICTURE_SIDE))
            view = np.asarray(small.convert("RGB"))
        return CropsItem(sample.thumb, sample.patches, sample.decode_patches, sample.decode_centres, rotation, view)

    def warmup(self, options: BaseModel | None = None) -> None:
        """A grey photo big enough for the patch grid, through the whole path (picture included)."""
        side = self.cfg.patch_size * max(self.cfg.grid)
        self.run_alone(Image.new("RGB", (side * 3 // 2, side), (128, 128, 128)), options if options is not None else CropsOptions())

    def outputs(self, thumb: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rect, crop logit, cell logits) of a uint8 batch from the serving engine."""
        if self.session is not None:
            from vislab.tasks import get_task
            from vislab.tasks.crops import EXPORT_INPUTS

            feed = dict(zip(EXPORT_INPUTS, (thumb.numpy(), patches.numpy())))
            got = self.session.run(list(get_task(self.task).export_outputs), feed)
            return tuple(torch.from_numpy(g) for g in got)  # type: ignore[return-value]
        with torch.inference_mode():
            out = self.model(thumb, patches)
        return out.rect, out.flag, out.cells

    def decode_logits(self, patches: torch.Tensor) -> torch.Tensor:
        """B x M x cells location logits of the decode grid's uint8 patches (B x M x 3 x P x P)."""
        b, m = patches.shape[:2]
        if self.session is None or m == 0:
            with torch.inference_mode():
                return self.model.locate_patches(patches)
        # the exported graph takes samples of exactly one patch per cell: pad the patches to
        # whole samples, pair each with a blank thumbnail, keep only the cell logits
        n = self.cfg.cells
        flat = patches.flatten(0, 1)
        pad = (-len(flat)) % n
        flat = torch.cat([flat, flat.new_zeros((pad, *flat.shape[1:]))]) if pad else flat
        w, h = self.cfg.thumb_size
        thumb = torch.zeros((len(flat) // n, 3, h, w), dtype=torch.uint8)
        cells = self.outputs(thumb, flat.view(len(flat) // n, n, *flat.shape[1:]))[2]
        return cells.flatten(0, 1)[: b * m].view(b, m, -1)

    def predict_batch(self, items: Sequence[CropsItem], options: Sequence[BaseModel]) -> list[dict[str, Any]]:
        from vislab.models.crops_decode import final_rect
        from vislab.tasks.crops import prediction_fields

        rect, flag, cells = self.outputs(torch.stack([i.thumb for i in items]), torch.stack([i.patches for i in items]))
        if self.cfg.rectangle != "head":
            decode = self.decode_logits(torch.stack([i.decode_patches for i in items]))
            rect = final_rect(rect, flag, decode, torch.stack([i.decode_centres for i in items]), self.cfg)
        probs = torch.softmax(cells.float(), -1)
        return [prediction_fields(rect[k].float().tolist(), float(flag[k]), probs[k].tolist(), item.rotation) for k, item in enumerate(items)]

    def finish(self, item: CropsItem, result: dict[str, Any]) -> dict[str, Any]:
        """The picture, when asked, drawn outside the model's thread (about a second each)."""
        if item.view is not None and "error" not in result:
            result["picture"] = self.picture(item.view, result)
        return result

    def picture(self, view: np.ndarray, result: dict[str, Any]) -> str:
        from vislab.report.crops import prediction_picture

        buf = io.BytesIO()
        with PICTURE_LOCK:
            prediction_picture(view, result, self.cfg.grid, buf)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {
            **super().describe(),
            "model": self.run.cfg.model.name,
            "grid": list(c.grid),
            "input": {"thumb_size": list(c.thumb_size), "patch_size": c.patch_size, "resize_width": list(c.resize_width)},
            "checkpoint": self.run.checkpoint.relative_to(self.run.run_dir).as_posix(),
        }
