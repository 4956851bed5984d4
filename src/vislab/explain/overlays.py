"""Explain a trained run's predictions on image files: heatmap overlays written as PNGs.

Images go through the run's own DataSpec (size, crop, normalisation), so the heatmap shows
what the model saw; the overlay is drawn on that same crop, upscaled for viewing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from vislab.data.io import ImageDecodeError, collect_images
from vislab.errors import VislabError
from vislab.fsguard import inside, make_folder, replacing, slug, write_file
from vislab.locks import waiting_lock
from vislab.explain.attention import METHOD as ATTENTION, attention_session
from vislab.explain.cam import cam_session, check_cam_method, find_target_layer, overlay

MIN_VIEW = 224  # overlays are upscaled to at least this short side so small inputs stay visible


@dataclass
class Explanation:
    """One heatmap: which image, which class, how sure the model was, and the overlay."""

    source: str
    class_id: int
    class_name: str
    prob: float
    rank: int  # 1 = the model's top prediction; 0 = a class the user asked for
    heatmap: np.ndarray  # [H, W] in [0, 1] at the model's input size
    overlay: np.ndarray  # uint8 RGB, upscaled
    method: str
    layer: str
    output: Path | None = None
    raw_range: tuple[float, float] | None = None  # attention maps: M's own min and max before display scaling
    empty: bool = False  # the CAM is zero everywhere: the overlay shows no region (`other_methods` may)

    def to_dict(self) -> dict[str, Any]:
        extra = {"attention_min": round(self.raw_range[0], 6), "attention_max": round(self.raw_range[1], 6)} if self.raw_range else {}
        return {
            "source": self.source,
            "class": self.class_name,
            "class_id": self.class_id,
            "prob": round(self.prob, 6),
            "rank": self.rank,
            "method": self.method,
            "layer": self.layer,
            "output": str(self.output) if self.output else None,
            "empty_map": self.empty,
            **extra,
        }

    def other_methods(self) -> list[str]:
        """CAM methods to try when this map is empty: gradient ones other than this one, and
        EigenCAM, which needs no gradient of the class (it maps the layer's main component)."""
        return [m for m in ("gradcam++", "eigencam") if m != self.method]


def empty_maps_note(results: Sequence[Explanation], option: str, show: Callable[[str], str] = str, recorded: str = "") -> str | None:
    """The note on maps zero everywhere among `results` (None when there is none): the first
    one's image, class and layer, how many more, and the methods to try as `option` (explain's
    --method, report's --method); `recorded` says where the flag is kept. explain prints it, the
    report writes it under its CAM gallery; `show` makes names safe for where they go."""
    empty = [r for r in results if r.empty]
    if not empty:
        return None
    first = empty[0]
    which = f"{show(Path(first.source).name)} ({show(first.class_name)})" + (f" and {len(empty) - 1} more" if len(empty) > 1 else "")
    tries = " or ".join(f"{option} {m}" for m in first.other_methods())
    return (f"the {show(first.method)} map of {which} is zero everywhere at layer {show(first.layer)}, so its overlay "
            f"shows no region{recorded}; try {tries}")


def canonical_method(method: str) -> str:
    """`method`'s one spelling ("attention", or a CAM method as `check_cam_method` gives it),
    which names the overlays and their default folder: --method GradCAM++ writes where
    --method gradcam++ does; an unknown method is refused in one line."""
    return ATTENTION if method.lower() == ATTENTION else check_cam_method(method, also=(ATTENTION,))


def prepare(images: Sequence[Image.Image], spec: Any, grayscale: bool = False) -> tuple[torch.Tensor, list[np.ndarray]]:
    """(normalised batch for the model, the same crops as uint8 RGB for display).

    Uses the training engine's eval transform, so the model sees exactly what `evaluate` feeds it.
    """
    from vislab.data.transforms import eval_transform_for

    to_model = eval_transform_for(spec, grayscale)
    to_view = eval_transform_for(spec, grayscale, normalize=False)
    rgb = [im.convert("RGB") for im in images]
    x = torch.stack([to_model(im) for im in rgb])
    display = [(to_view(im).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in rgb]
    return x, display


def upscaled_overlay(display: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """`heat` blended onto the crop the model saw, upscaled to at least MIN_VIEW pixels a
    side so that a 32-pixel input is still visible (also what `vislab serve` returns)."""
    h, w = display.shape[:2]
    scale = max(1.0, MIN_VIEW / min(h, w))
    size = (round(w * scale), round(h * scale))
    img = Image.fromarray(display.squeeze(-1) if display.shape[-1] == 1 else display)
    img = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    big = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    return overlay(np.asarray(img), np.clip(big, 0.0, 1.0))


def explain_images(
    model: nn.Module,
    spec: Any,
    classes: Sequence[str],
    images: Sequence[Image.Image],
    sources: Sequence[str] | None = None,
    method: str = "gradcam",
    class_name: str | None = None,
    top_k: int = 1,
    layer: str | None = None,
    batch_size: int = 16,
    grayscale: bool = False,
) -> list[Explanation]:
    """Heatmaps for each image: for `class_name`, else for each of the top-k predicted classes.

    `method="attention"` shows an ABN's own attention map, which is one per image: it is
    labelled with the predicted class, and `class_name`, `top_k` > 1 and `layer` are refused.
    """
    attention = canonical_method(method) == ATTENTION
    if attention and (class_name is not None or top_k > 1):
        raise VislabError("--method attention: an ABN has one attention map per image, not per class; drop --class/--top-k")
    if attention and layer is not None:
        raise VislabError(
            f"--layer {layer}: --method attention reads the attention branch's own map, not a layer's; "
            "drop --layer, or use a CAM method (--method gradcam --layer NAME)"
        )
    if class_name is not None and class_name not in classes:
        raise VislabError(f"--class {class_name!r}: not a class of this run; classes are {', '.join(classes)}")
    if top_k < 1:
        raise VislabError(f"--top-k {top_k}: must be at least 1")
    top_k = min(top_k, len(classes))
    sources = list(sources) if sources is not None else [f"image{i}" for i in range(len(images))]
    device = next(model.parameters()).device
    results: list[Explanation] = []
    session = attention_session(model) if attention else cam_session(model, method, layer, input_size=tuple(spec.input_size))
    with session as run:
        for start in range(0, len(images), batch_size):
            x, display = prepare(images[start : start + batch_size], spec, grayscale)
            x = x.to(device)
            if class_name is not None:
                plan = [[classes.index(class_name)] * len(x)]
                ranks = [0]
            elif attention:  # one map per image, labelled with the prediction of the same forward pass
                plan, ranks = [None], [1]
            else:
                probs = run.predict(x)
                order = probs.argsort(dim=1, descending=True)[:, :top_k].cpu().numpy()
                plan = [order[:, k].tolist() for k in range(top_k)]
                ranks = list(range(1, top_k + 1))
            for targets, rank in zip(plan, ranks):
                res = run(x, targets)
                for i, cid in enumerate(res.targets):
                    results.append(
                        Explanation(
                            source=sources[start + i],
                            class_id=cid,
                            class_name=classes[cid],
                            prob=float(res.probs[i, cid]),
                            rank=rank,
                            heatmap=res.heatmaps[i],
                            overlay=upscaled_overlay(display[i], res.heatmaps[i]),
                            method=run.method,
                            layer=res.layer,
                            raw_range=res.raw_range[i] if res.raw_range else None,
                            empty=bool(res.empty[i]) if res.empty else False,
                        )
                    )
    return results


NAME_PART_CHARS = 60  # a stem and a class name each: overlay names stay far below 255 bytes


def name_parts(texts: Sequence[str]) -> dict[str, str]:
    """A safe file-name part for each text: [A-Za-z0-9._-] only, at most NAME_PART_CHARS long.

    Texts whose parts would coincide (`a/b` and `a_b`, two names in another script, two long
    names cut alike) get a short hash of the original appended, so no overlay overwrites
    another one.
    """
    parts = {t: slug(t)[:NAME_PART_CHARS] for t in dict.fromkeys(texts)}
    taken: dict[str, int] = {}
    for part in parts.values():
        taken[part] = taken.get(part, 0) + 1
    for text, part in parts.items():
        if taken[part] > 1:
            parts[text] = f"{part}-{hashlib.sha1(text.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    return parts


INDEX = "explanations.json"
INDEX_LOCK = ".explanations.lock"  # held while overlays and the index are written; removed after


class ExplainedImages(list):
    """What `explain_run` returns: its Explanations (a list), plus `failed`, one
    {"source", "error"} per input image that could not be read (also in explanations.json),
    and `repeated`, the inputs that named a file already given (explained once)."""

    def __init__(self, results: Sequence[Explanation], failed: Sequence[dict[str, str]], repeated: Sequence[Path] = ()) -> None:
        super().__init__(results)
        self.failed = list(failed)
        self.repeated = list(repeated)


def distinct_files(files: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(each file once, under the name it was first given; the later names of a file already
    given). `a.png ./a.png sub/../a.png` or a link to a.png are one file, explained once, as
    `cp` and `rsync` copy a source named twice once: two overlays of it would share a name."""
    seen: set[object] = set()
    kept: list[Path] = []
    repeated: list[Path] = []
    for f in files:
        try:
            st = os.stat(f)
            key: object = (st.st_dev, st.st_ino)
        except OSError:
            key = os.path.realpath(f)
        (repeated if key in seen else kept).append(f)
        seen.add(key)
    return kept, repeated


def earlier_index(path: Path) -> list[dict[str, Any]]:
    """The entries of an explanations.json that an earlier `vislab explain` left in the folder
    ([] when there is none); a file by that name that is not such an index is refused in one
    line rather than replaced."""
    from vislab.fsguard import SpecialFileError, read_bounded

    if not os.path.lexists(path):
        return []
    try:
        entries = json.loads(read_bounded(path))
    except (OSError, SpecialFileError, ValueError) as err:
        entries, why = None, str(getattr(err, "strerror", None) or err).splitlines()[0]
    else:
        why = "not a list of entries"
    if not isinstance(entries, list) or not all(isinstance(e, dict) and ("output" in e or "error" in e) for e in entries):
        raise VislabError(f"{path}: not an index written by vislab explain ({why}); move it away or choose another --out")
    return entries


def merged_index(out_dir: Path, earlier: Sequence[dict[str, Any]], fresh: Sequence[dict[str, Any]], sources: set[str]) -> list[dict[str, Any]]:
    """The folder's index after this call: this call's entries first, then each earlier entry
    whose overlay is still in the folder and was not rewritten now (an earlier --top-k 10
    keeps its ten entries when a later call adds one), and earlier errors of images not
    given this time. So the index lists every overlay explain wrote there, once."""
    written = {Path(e["output"]).name for e in fresh if e.get("output")}
    kept: dict[object, dict[str, Any]] = {}
    for i, e in enumerate(earlier):
        name = Path(str(e["output"])).name if e.get("output") else None
        if name is None:
            if e.get("source") not in sources:
                kept[i] = e
        elif name not in written and (out_dir / name).is_file():
            kept[name] = {**e, "output": str(inside(out_dir, name))}  # the folder may have moved since
    return list(fresh) + list(kept.values())


def explain_run(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    method: str = "gradcam",
    class_name: str | None = None,
    top_k: int = 1,
    layer: str | None = None,
    out: str | Path | None = None,
    allow_running: bool = False,
) -> ExplainedImages:
    """Load a run's model, explain the given images and write one overlay PNG per heatmap.

    Overlays go to `out` (default RUN_DIR/explain/<method>/) named image__class__method.png,
    with __layer added for a --layer other than the model's default one, and are listed in
    the folder's `explanations.json`, which keeps the entries of earlier calls whose overlays
    are still there. An image that cannot be decoded gets an error entry instead of stopping
    the others; when none can be read, that is an error. A run still training is refused,
    since its best.ckpt is not final yet, unless `allow_running` (then said on stderr).
    """
    from vislab.data.io import load_image
    from vislab.data.manifest import recorded_max_pixels
    from vislab.data.transforms import decode_size
    from vislab.runs import check_not_training, run_paths

    method = canonical_method(method)
    check_not_training(run_dir, allow_running, "explain")
    collected = collect_images(inputs)
    files, repeated = distinct_files(collected)
    out_dir = Path(out) if out is not None else run_paths(run_dir).explain_dir(slug(method))
    earlier_index(out_dir / INDEX)  # refused before the long work, not after it; read again when merging
    loaded = load_trained(run_dir)
    side = decode_size(loaded.spec)  # decoded as evaluate and predict decode (JPEG draft mode), so the scores agree
    limit = recorded_max_pixels(loaded.info)  # photos like those it was trained on
    images, read, failed = [], [], []
    for f in files:
        try:
            images.append(load_image(f, (side, side), limit))
            read.append(f)
        except ImageDecodeError as err:
            failed.append({"source": str(f), "error": f"cannot read image: {err.reason}"})
    failed += [{"source": str(path), "error": f"skipped: {reason}"} for path, reason in collected.skipped]
    if not images:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise VislabError(f"{failed[0]['source']}: {failed[0]['error']}{more}; no image left to explain")
    results = explain_images(
        loaded.model, loaded.spec, list(loaded.classes), images, [str(f) for f in read], method, class_name, top_k, layer,
        grayscale=loaded.cfg.data.grayscale,
    )
    default_layer = _default_layer(loaded.model, loaded.spec) if layer is not None else None
    out_dir = make_folder(out_dir)
    stems = [f.stem for f in read]
    numbered = len(set(stems)) != len(stems)
    stem_part = name_parts(stems)
    class_part = name_parts(list(loaded.classes))
    index = {str(f): i for i, f in enumerate(read)}
    with waiting_lock(inside(out_dir, INDEX_LOCK)):  # a second explain into the folder merges after the first, keeping its entries
        for r in results:
            i = index[r.source]
            stem = f"{i:04d}_{stem_part[stems[i]]}" if numbered else stem_part[stems[i]]
            tag = f"__{slug(r.layer)[:NAME_PART_CHARS]}" if layer is not None and r.layer != default_layer else ""
            r.output = inside(out_dir, f"{stem}__{class_part[r.class_name]}__{slug(r.method)}{tag}.png")
            with replacing(r.output) as fh:
                Image.fromarray(r.overlay).save(fh, format="PNG")
        sources = {str(f) for f in files} | {f["source"] for f in failed}
        entries = merged_index(out_dir, earlier_index(out_dir / INDEX), [r.to_dict() for r in results] + failed, sources)
        write_file(inside(out_dir, INDEX), json.dumps(entries, indent=2))
    return ExplainedImages(results, failed, repeated)


def _default_layer(model: nn.Module, spec: Any) -> str | None:
    """The layer a CAM uses without --layer (None when the model has none to choose)."""
    try:
        return find_target_layer(model, None, tuple(spec.input_size[1:]))[0]
    except VislabError:
        return None


def load_trained(run_dir: str | Path) -> Any:
    """The run's model in eval mode, with its classes and DataSpec (via vislab.runs.load_run)."""
    try:
        from vislab.runs import load_run
    except ImportError:
        raise VislabError("explaining a run needs vislab.runs (the training engine), which this install lacks") from None
    return load_run(run_dir)
