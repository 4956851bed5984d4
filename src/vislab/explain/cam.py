"""Class activation maps through the grad-cam library, for any vislab model.

Three things make the library fit every model here without special cases: the target layer
is found automatically (an explicit name, a model's own `cam_target_layer`, the simple CNN's
last conv block, a timm backbone's last feature stage, else the last conv); models whose
forward returns a dict or tuple are wrapped so the CAM sees only the logits; and hooks live
in a context manager that always releases them and lets errors through.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from vislab.errors import VislabError
from vislab.models.outputs import LOGITS_KEY, LogitsOnly

METHOD_NAMES = ("gradcam", "gradcam++", "scorecam", "eigencam")
MIN_CAM_CELLS = 4  # a last stage coarser than this (e.g. 2x2) gives blobs, so an earlier stage is used


def check_cam_method(method: str, also: Sequence[str] = ()) -> str:
    """`method`'s canonical name (gradcam++ also as gradcampp, grad-cam, ...), or a one-line
    error naming the methods: callers check before any long work, not deep inside it. `also`:
    the other methods the caller accepts (explain's attention), listed in that error too."""
    key = method.lower().replace("_", "").replace("-", "").replace("pp", "++")
    if key not in METHOD_NAMES:
        raise VislabError(f"--method {method!r}: unknown method; use one of {', '.join((*METHOD_NAMES, *also))}")
    return key


def _method_class(method: str) -> type:
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM, "eigencam": EigenCAM}
    return classes[check_cam_method(method)]


def _last_of(modules: Sequence[tuple[str, nn.Module]], kinds: tuple[type, ...]) -> tuple[str, nn.Module] | None:
    for name, mod in reversed(modules):
        if isinstance(mod, kinds):
            return name, mod
    return None


def _feature_stage(model: nn.Module, named: dict[str, nn.Module], input_hw: tuple[int, int] | None) -> str | None:
    """Module name of the timm stage to explain: the last one, or with `input_hw`, the last
    whose map still has MIN_CAM_CELLS cells a side (resnet at 64 px: layer3, not a 2x2 layer4)."""
    info = getattr(model, "feature_info", None)
    try:
        stages = [dict(i) for i in info] if info is not None else []
    except TypeError:
        stages = []
    stages = [st for st in stages if st.get("module")]
    if not stages:
        return None
    pick = stages[-1]
    if input_hw is not None:
        fine = [st for st in stages if min(input_hw) / float(st.get("reduction") or 1) >= MIN_CAM_CELLS]
        finest = min(float(st.get("reduction") or 1) for st in stages)
        pick = fine[-1] if fine else [st for st in stages if float(st.get("reduction") or 1) == finest][-1]
    key = pick["module"] if pick["module"] in named else pick["module"].replace("_", ".")
    if key not in named:  # a wrapper (e.g. ABN) lists its backbone's stages by the inner names
        key = next((n for n in named if n.endswith("." + key)), key)
    if f"{key}.norm1" in named and getattr(model, "num_prefix_tokens", 0):
        key = f"{key}.norm1"  # ViT: after the last block only the class token gets gradient
    return key if key in named else None


def find_target_layer(model: nn.Module, name: str | None = None, input_hw: tuple[int, int] | None = None) -> tuple[str, nn.Module]:
    """The layer whose activations the CAM weighs: `name` if given, else chosen for the model.

    Order: explicit name; the model's `cam_target_layer` attribute (a module name, for models
    that know best, e.g. attention branches); a `features` Sequential (the simple CNN: its
    last conv block's activation, before pooling, for the finest map); timm's `feature_info`
    (the last stage whose map is at least MIN_CAM_CELLS wide for `input_hw`; a transformer's
    last block input norm); the last Conv2d anywhere.
    """
    named = dict(model.named_modules())
    if name is None:
        name = getattr(model, "cam_target_layer", None)
    if name is not None:
        if name in named and name != "":
            return name, named[name]
        convs = [n for n, m in named.items() if isinstance(m, nn.Conv2d)][-5:]
        raise VislabError(
            f"--layer {name!r}: no such module in the model; try one of {', '.join(convs) or 'its module names'}"
        )
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        items = [(f"features.{n}", m) for n, m in features.named_children()]
        found = _last_of(items, (nn.ReLU, nn.SiLU, nn.GELU, nn.LeakyReLU)) or _last_of(items, (nn.Conv2d,))
        if found is not None:
            return found
    stage = _feature_stage(model, named, input_hw)
    if stage is not None:
        return stage, named[stage]
    found = _last_of(list(named.items()), (nn.Conv2d,))
    if found is None:
        raise VislabError("model has no Conv2d layer to explain; pass --layer NAME with a module whose output is a feature map")
    return found


def _token_reshape(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Turn transformer tokens [B, N, C] (or NHWC maps) into NCHW maps the CAM can weigh."""
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 3:
            t = t[:, prefix:, :]
            side = int(math.isqrt(t.shape[1]))
            if side * side != t.shape[1]:
                raise ValueError(f"cannot arrange {t.shape[1]} tokens into a square map")
            return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)
        if t.ndim == 4 and t.shape[1] < t.shape[-1] and t.shape[1] == t.shape[2]:
            return t.permute(0, 3, 1, 2)  # NHWC stage outputs (swin-like)
        return t

    return reshape


def _needs_reshape(model: nn.Module, layer: nn.Module, in_chans: int, size: tuple[int, int]) -> bool:
    seen: list[torch.Size] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape if isinstance(o, torch.Tensor) else torch.Size()))
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, in_chans, *size, device=device))
    finally:
        handle.remove()
    return bool(seen) and (len(seen[0]) == 3 or (len(seen[0]) == 4 and seen[0][1] < seen[0][-1] and seen[0][1] == seen[0][2]))


@dataclass
class CamResult:
    heatmaps: np.ndarray  # [B, H, W] float32 in [0, 1], input resolution
    probs: np.ndarray  # [B, C] softmax of the model's logits
    targets: list[int]  # class id each heatmap explains
    layer: str
    raw_range: list[tuple[float, float]] | None = None  # per map (min, max) before scaling to [0, 1], where that scaling loses meaning
    empty: list[bool] = field(default_factory=list)  # per map: zero everywhere (see `CamRunner.__call__`)


class CamRunner:
    """Computes heatmaps with one CAM method on one target layer; made by `cam_session`."""

    def __init__(self, cam: Any, layer: str, method: str) -> None:
        self.cam = cam
        self.layer = layer
        self.method = method

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities [B, C] without computing a map (to pick top-k targets)."""
        with torch.no_grad():
            return torch.softmax(self.cam.model(x).float(), dim=1)

    def __call__(self, x: torch.Tensor, targets: Sequence[int] | None = None) -> CamResult:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with torch.enable_grad():
            tgt = [ClassifierOutputTarget(int(t)) for t in targets] if targets is not None else None
            if self.method == "scorecam":
                with contextlib.redirect_stderr(io.StringIO()):  # the library prints a bar per image
                    maps = self.cam(input_tensor=x, targets=tgt)
            else:
                maps = self.cam(input_tensor=x, targets=tgt)
            logits = self.cam.outputs.detach().float()
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        chosen = list(targets) if targets is not None else probs.argmax(1).tolist()
        maps = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float32)), 0.0, 1.0)
        # a map the method found nowhere positive (Grad-CAM: the class's evidence at the layer is
        # negative or zero everywhere, cut by its ReLU) or flat is scaled to zeros: it shows nothing
        empty = [not bool(m.max() > 0) for m in maps]
        return CamResult(heatmaps=maps, probs=probs, targets=[int(t) for t in chosen], layer=self.layer, empty=empty)


@contextlib.contextmanager
def cam_session(
    model: nn.Module,
    method: str = "gradcam",
    layer: str | None = None,
    input_size: tuple[int, int, int] | None = None,
    logits_key: str = LOGITS_KEY,
) -> Iterator[CamRunner]:
    """Hook a model for CAMs; the hooks are released on exit, and errors propagate unchanged.

    `input_size` (C, H, W) lets a dry run detect token outputs (ViT) that need reshaping.
    """
    cls = _method_class(method)
    key = {"GradCAM": "gradcam", "GradCAMPlusPlus": "gradcam++", "ScoreCAM": "scorecam", "EigenCAM": "eigencam"}[cls.__name__]
    wrapped = LogitsOnly(model, logits_key)
    was_training = model.training
    wrapped.eval()
    name, module = find_target_layer(model, layer, tuple(input_size[1:]) if input_size is not None else None)
    reshape = None
    if input_size is not None and _needs_reshape(wrapped, module, input_size[0], tuple(input_size[1:])):
        reshape = _token_reshape(model)
    cam = cls(model=wrapped, target_layers=[module], reshape_transform=reshape)
    if cam.uses_gradients:
        cam.compute_input_gradient = True  # frozen backbones still give gradients at the layer
    cam.batch_size = 32
    try:
        yield CamRunner(cam, name, key)
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)


def compute_cams(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "gradcam",
    targets: Sequence[int] | None = None,
    layer: str | None = None,
) -> CamResult:
    """Heatmaps for a batch `x` [B, C, H, W]; `targets` are class ids (None = predicted class)."""
    with cam_session(model, method, layer, input_size=tuple(x.shape[1:])) as run:
        return run(x, targets)


def overlay(image: np.ndarray, heatmap: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """Blend a [0, 1] heatmap onto an RGB uint8 image of the same size (jet colours)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = image.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return show_cam_on_image(img, heatmap.astype(np.float32), use_rgb=True, image_weight=image_weight)
