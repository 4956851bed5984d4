"""`vislab anchors`: fit YOLO anchors to a dataset's boxes for one canvas and one model.

The anchors are only right for the canvas training letterboxes to (a wide KITTI canvas fits
frames by their height) and only usable when their count splits over the model's levels,
so both come from a run or recipe (`config`) or the options, and the printed setting is the
key training reads (`detect.anchors`), never a count the model refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vislab.errors import VislabError
from vislab.models.anchors import DEFAULT_ANCHOR_MODELS, AnchorFit, check_anchor_count, fit_anchors, model_levels

DEFAULT_IMG_SIZE = 416
DEFAULT_COUNT = 9


@dataclass
class AnchorPlan:
    """What was fitted: the canvas (H, W), the model it is for (None: not named), the
    models its count suits, the images used and the fit."""

    canvas: tuple[int, int]
    model: str | None
    suits: dict[str, int]
    used: str
    fit: AnchorFit


def parse_img_size(text: str) -> int | tuple[int, int]:
    """`--img-size` N (a square canvas) or H,W, checked as `detect.img_size` is."""
    from vislab.config import build_config

    parts = [p.strip() for p in text.strip().strip("[]").split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise VislabError(f"--img-size {text}: give N or H,W in pixels, as detect.img_size (e.g. 416 or 384,1248)")
    size: int | tuple[int, int] = int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    build_config({"task": "detect", "detect": {"img_size": size}}, source="--img-size")
    return size


def read_detect_config(config: str | Path) -> Any:
    """The config of a run directory (its config.yaml) or of a recipe / YAML file, which must
    be a detection config."""
    from vislab.config import load_config
    from vislab.runs import resolve_run_dir, run_paths

    path = Path(config)
    cfg = load_config(run_paths(resolve_run_dir(path)).config) if path.is_dir() else load_config(config)
    if cfg.task != "detect":
        raise VislabError(f"--config {config}: is a task: {cfg.task} config; anchors are for task: detect (a YOLO run or recipe)")
    return cfg


def plan_anchors(
    dataset_dir: str | Path,
    n: int | None = None,
    img_size: str | None = None,
    model: str | None = None,
    config: str | Path | None = None,
    split: str = "train",
    seed: int = 0,
) -> AnchorPlan:
    """Fit anchors on the canvas and for the model of `config` (a run or recipe), each
    replaced by `img_size` (N or H,W) and `model` when given. With a model, `n` defaults to
    3 per level and a count it cannot split is refused before fitting; without one, a count
    no YOLO can split (2 or 3 levels) is refused."""
    from vislab.data.boxes import anchor_box_sizes
    from vislab.data.det_datamodule import canvas_of

    size: Any = DEFAULT_IMG_SIZE
    kwargs: dict[str, Any] = {}
    if config is not None:
        cfg = read_detect_config(config)
        size, model, kwargs = cfg.section().img_size, model or cfg.model.name, dict(cfg.model.kwargs)
    if img_size is not None:
        size = parse_img_size(img_size)
    if model is not None:
        levels = model_levels(model, kwargs)
        n = 3 * levels if n is None else n
        check_anchor_count(n, model, levels)
        suits = {model: levels}
    else:
        n = DEFAULT_COUNT if n is None else n
        levels_of = {m: model_levels(m) for m in DEFAULT_ANCHOR_MODELS}
        suits = {m: lv for m, lv in levels_of.items() if n % lv == 0}
        if not suits:
            counts = " or ".join(str(lv) for lv in sorted(set(levels_of.values())))
            raise VislabError(f"--n {n}: a YOLO splits its anchors evenly over its {counts} levels; give a multiple of {counts}, or --model NAME")
    canvas = canvas_of(size)
    wh, used = anchor_box_sizes(dataset_dir, canvas, split)
    return AnchorPlan(canvas, model, suits, used, fit_anchors(wh, n=n, seed=seed))


def plan_lines(plan: AnchorPlan) -> list[str]:
    """The report `vislab anchors` prints, ending with the setting to train with."""
    fit, (h, w) = plan.fit, plan.canvas
    pairs = [[a, b] for a, b in fit.anchors]
    n = len(pairs)
    lines = [
        f"{n} anchors from {fit.boxes:,} boxes of {plan.used}, in pixels on the {w}x{h} canvas "
        f"(detect.img_size [{h}, {w}]) as its letterbox scales them (smallest first):",
        "  " + "  ".join(f"{a}x{b}" for a, b in pairs),
        f"fitness (mean best IoU): {fit.fitness:.3f}",
    ]
    lines += [f"default anchors of {name} ({len(default)}): fitness {fitness:.3f}" for name, (default, fitness) in fit.defaults.items()]
    suits = " and ".join(f"{m} ({lv} levels, {n // lv} per level)" for m, lv in plan.suits.items())
    note = f"for {suits}"
    if plan.model is None:
        other = [m for m in DEFAULT_ANCHOR_MODELS if m not in plan.suits]
        note += "".join(f"; not for {m} ({model_levels(m)} levels)" for m in other)
        note += "; --model NAME or --config RUN_OR_RECIPE fits them for one model"
    lines += [note, f"config: detect.anchors: {pairs}", f"train with: --set 'detect.anchors={pairs}'"]
    return lines
