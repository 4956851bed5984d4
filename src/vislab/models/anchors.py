"""Anchor shapes: the IoU of two box sizes, and k-means anchors fitted to a dataset's boxes.

A YOLO anchor is only a size; what matters is how well it overlaps a box of the same centre,
so distances are 1 - IoU of the two sizes placed at a common corner ("shape IoU"), not
Euclidean (which would let large boxes dominate). The loss uses the same shape IoU to pick
which anchors learn a box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vislab.errors import VislabError

# Models whose registry metadata holds default anchors, compared against by `fit_anchors`.
DEFAULT_ANCHOR_MODELS = ("yolov3", "yolov3_tiny")


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """[N, 2] x [M, 2] sizes -> [N, M] IoU of the boxes placed at a common corner."""
    inter = torch.min(wh1[:, None], wh2[None]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter)


def anchor_fitness(boxes_wh: torch.Tensor | np.ndarray, anchors: torch.Tensor | Sequence[Sequence[float]]) -> float:
    """Mean over boxes of the best anchor's shape IoU (both in pixels): how well a set of
    anchors fits a dataset, 1.0 when every box has an anchor of exactly its shape."""
    wh = torch.as_tensor(np.asarray(boxes_wh), dtype=torch.float64).reshape(-1, 2)
    return wh_iou(wh, torch.as_tensor(np.asarray(anchors), dtype=torch.float64).reshape(-1, 2)).amax(1).mean().item()


def _kmeans_pp(wh: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding under the 1 - IoU distance: each next centre drawn with probability
    proportional to its squared distance from the centres so far."""
    centres = wh[torch.randint(len(wh), (1,), generator=gen)]
    for _ in range(n - 1):
        d = 1 - wh_iou(wh, centres).amax(1)
        pick = torch.multinomial(d**2 + 1e-12, 1, generator=gen)
        centres = torch.cat([centres, wh[pick]])
    return centres


def kmeans_anchors(
    boxes_wh: torch.Tensor | np.ndarray, n: int = 9, seed: int = 0, restarts: int = 5, iters: int = 300
) -> tuple[torch.Tensor, float]:
    """`n` anchors (w, h in the pixels of `boxes_wh`, smallest area first) and their fitness,
    the mean over boxes of the best anchor's shape IoU.

    `boxes_wh` [N, 2] are box sizes in input (canvas) pixels, as the letterbox puts them
    (`vislab.data.boxes.anchor_box_sizes`). k-means under 1 - IoU with k-means++ seeding and
    median updates (robust to a few huge boxes), best of `restarts`; seeded, so the same
    boxes always give the same anchors.
    """
    wh = torch.as_tensor(np.asarray(boxes_wh), dtype=torch.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(1)]
    if len(wh) < n:
        raise VislabError(f"anchors: {len(wh)} boxes with a positive size, fewer than the {n} anchors asked for; use fewer anchors")
    gen = torch.Generator().manual_seed(seed)
    best, best_fit = wh[:n], -1.0
    for _ in range(restarts):
        centres = _kmeans_pp(wh, n, gen)
        for _ in range(iters):
            assign = wh_iou(wh, centres).argmax(1)
            new = torch.stack([wh[assign == k].median(0).values if (assign == k).any() else centres[k] for k in range(n)])
            if torch.equal(new, centres):
                break
            centres = new
        fit = anchor_fitness(wh, centres)
        if fit > best_fit:
            best, best_fit = centres, fit
    best = best[best.prod(1).argsort()]
    return best.float(), best_fit


@dataclass
class AnchorFit:
    """Anchors fitted to a dataset (whole pixels at the training size, smallest first, as a
    config holds them), their fitness, and each default set's fitness on the same boxes."""

    anchors: list[tuple[int, int]]
    fitness: float
    boxes: int
    defaults: dict[str, tuple[list[tuple[float, float]], float]]


def fit_anchors(boxes_wh: torch.Tensor | np.ndarray, n: int = 9, seed: int = 0) -> AnchorFit:
    """`kmeans_anchors` rounded to whole pixels, the fitness of those rounded anchors, and,
    for comparison, the fitness of the default anchors in the registry metadata of
    DEFAULT_ANCHOR_MODELS, taken as the models use them when `detect.anchors` is unset: in
    pixels at whatever the input size. `boxes_wh` as for `kmeans_anchors`."""
    from vislab.models.factory import model_info

    wh = torch.as_tensor(np.asarray(boxes_wh), dtype=torch.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(1)]
    centres, _ = kmeans_anchors(wh, n=n, seed=seed)
    anchors = [(max(1, round(w)), max(1, round(h))) for w, h in centres.tolist()]
    defaults = {}
    for name in DEFAULT_ANCHOR_MODELS:
        default = [(float(w), float(h)) for w, h in model_info(name)["anchors"]]
        defaults[name] = (default, anchor_fitness(wh, default))
    return AnchorFit(anchors, anchor_fitness(wh, anchors), len(wh), defaults)


def model_levels(name: str, kwargs: Mapping[str, Any] | None = None) -> int:
    """How many output levels the YOLO `name` has, which its anchors split evenly over (a
    count training refuses otherwise): its registry strides, or a timm head's `levels`."""
    from vislab.models.factory import list_models, model_info

    info = model_info(name)
    if info.get("task") != "detect" or not info.get("strides"):
        yolos = [m for m in list_models() if model_info(m).get("task") == "detect" and model_info(m).get("strides")]
        raise VislabError(f"model {name}: not a YOLO detection model, which anchors are for; choose one of {', '.join(yolos)}")
    return int((kwargs or {}).get("levels", len(info["strides"])))


def check_anchor_count(n: int, name: str, levels: int) -> None:
    """Refuse an anchor count the model `name` cannot split over its `levels` (training would)."""
    if n % levels:
        raise VislabError(
            f"--n {n}: {name} splits its anchors evenly over its {levels} levels; give a multiple of {levels} "
            f"(its default is {3 * levels}, 3 per level)"
        )
