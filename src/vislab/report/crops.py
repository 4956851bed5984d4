"""The crops task's pictures and report: predict's picture per photo, and the report's
KPI cards and sections.

Sections (stable ids): health, metrics (every figure beside the trivial baseline of the same
evaluation, per-cell patch accuracy), curves, cf-error (histogram of the crop-factor error
of the cropped samples, model and baseline), frames (original frames with the true
rectangle in green and the predicted one in red), patches (the patches' cell-probability
heat maps with the true cell marked), cases (best and worst rectangles), data, config. All
read the primary eval set's metrics.json, predictions.csv and probs.npy (tasks/crops.py
writes them) and the photos they name; nothing needs the model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vislab.report.page import Page, e, img_tag, note, table
from vislab.report.plots import BAD, DPI, GOOD, INK, MUTED, STYLE, TRAIN, VAL, _save
from vislab.report.rundata import EvalSet, RunData
from vislab.tasks.registry import ReportSection

GALLERY = 8  # samples in the frames gallery
CASES = 4  # best and worst each
HEATMAP_SAMPLES = 2
FIGURES = (  # (key in the figures dict, label, fraction?)
    ("flag_acc", "Crop accuracy", True),
    ("flag_auc", "Crop ROC AUC", False),
    ("patch_acc", "Patch location accuracy", True),
    ("iou", "Rectangle IoU (all)", False),
    ("iou_cropped", "Rectangle IoU (cropped)", False),
    ("crop_factor_error", "Crop-factor error (cropped, mean)", True),
    ("crop_factor_error_median", "Crop-factor error (cropped, median)", True),
)


def fmt(value: Any, fraction: bool) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return f"{value:.1%}" if fraction else f"{value:.3f}"


# ---- pictures ---------------------------------------------------------------------------------


def photo_view(path: str, max_pixels: int, size: int = 384, rotation: int = 0) -> np.ndarray | None:
    """The photo (oriented, turned as the sampler turned it) at most `size` px a side, decoded
    under `max_pixels` (its dataset's or the run's limit)."""
    from PIL import Image

    from vislab.data.io import ImageDecodeError, load_image

    try:
        im = load_image(path, (size, size), max_pixels)
    except ImageDecodeError:
        return None
    if rotation:
        im = im.transpose(Image.Transpose.ROTATE_90 if rotation == 90 else Image.Transpose.ROTATE_270)
    im.thumbnail((size, size))
    return np.asarray(im)


def draw_frame(ax: Any, photo: np.ndarray, rect: Sequence[float]) -> None:
    """The photo placed where `rect` (x1, x2, y1, y2, fractions of the original frame) says it
    sits, inside the estimated original frame drawn as a grey canvas around it."""
    h, w = photo.shape[:2]
    x1, x2, y1, y2 = (min(max(float(v), 0.0), 1.0) for v in rect)
    fw, fh = w / max(x2 - x1, 0.05), h / max(y2 - y1, 0.05)  # the frame in photo pixels
    ox, oy = x1 * fw, y1 * fh
    ax.add_patch(Rectangle((0, 0), fw, fh, facecolor="#e5e7eb", edgecolor=MUTED, lw=1.2, ls="--", zorder=0))
    ax.imshow(photo, extent=(ox, ox + w, oy + h, oy), zorder=1)
    ax.set_xlim(-0.02 * fw, 1.02 * fw)
    ax.set_ylim(1.02 * fh, -0.02 * fh)
    ax.set_aspect("equal")
    ax.set_axis_off()


def draw_cells(fig: Figure, spec: Any, probs: np.ndarray, grid: tuple[int, int], true: Sequence[int] | None = None) -> None:
    """One small heat map per patch (patches in grid order): its probability of each cell of
    the original frame; the true cell outlined green, the most likely one dotted."""
    cols, rows = grid
    sub = spec.subgridspec(rows, cols, wspace=0.08, hspace=0.08)
    for k in range(min(len(probs), rows * cols)):
        ax = fig.add_subplot(sub[k // cols, k % cols])
        ax.imshow(np.asarray(probs[k]).reshape(rows, cols), cmap="magma", vmin=0, vmax=1)
        best = int(np.argmax(probs[k]))
        ax.add_patch(Rectangle((best % cols - 0.5, best // cols - 0.5), 1, 1, fill=False, edgecolor="white", lw=1, ls=":"))
        if true is not None:
            t = int(true[k])
            ax.add_patch(Rectangle((t % cols - 0.45, t // cols - 0.45), 0.9, 0.9, fill=False, edgecolor=GOOD, lw=1.6))
        ax.set_xticks([])
        ax.set_yticks([])


def prediction_picture(photo: np.ndarray, result: dict[str, Any], grid: tuple[int, int], path: Path | BinaryIO) -> Path | BinaryIO:
    """predict's picture (a PNG file, or into a binary stream for `vislab serve`): the photo
    inside its estimated original frame (`rect`: the whole canvas when the flag says not
    cropped), and the patches' heat maps."""
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(10, 4.4))
        gs = fig.add_gridspec(1, 2, width_ratios=(1.5, 1), wspace=0.1)
        ax = fig.add_subplot(gs[0])
        draw_frame(ax, photo, result["rect"])
        verdict = "cropped" if result["cropped"] else "not cropped"
        guess = "" if result["cropped"] else f" ({result['crop_factor_if_cropped']:.2f} if cropped)"
        ax.set_title(f"{verdict}: p(crop) {result['crop_prob']:.2f}, size factor {result['crop_factor']:.2f}{guess}", fontsize=10)
        draw_cells(fig, gs[1], np.asarray(result["cells"]), grid)
        fig.text(0.62, 0.95, "patch locations in the original frame" + (" (photo turned to landscape)" if result.get("rotation") else ""), fontsize=9, color=INK)
        if not isinstance(path, (str, Path)):
            fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
            return path
        return _save(fig, path)


def write_prediction_files(
    place: Callable[[str], Path], results: list[dict[str, Any]], sources: Sequence[str], grid: tuple[int, int], max_pixels: int
) -> None:
    """For each readable result: <nnn>_<name>.png and .json beside it (the result's fields),
    at the checked paths `place` gives (RUN_DIR/predict/ or predict's --out); their paths are
    added to the result. Photos are read from `sources` and decode under `max_pixels`, the
    run's limit, as they did for predicting."""
    from vislab.fsguard import slug
    from vislab.runs import write_json

    for i, (r, source) in enumerate(zip(results, sources)):
        if "error" in r:
            continue
        photo = photo_view(source, max_pixels, 512)
        if photo is None:
            r["error"] = "cannot read image"
            continue
        stem = f"{i:03d}_{slug(Path(r['path']).stem)[:80]}"
        png, js = place(stem + ".png"), place(stem + ".json")
        r["picture"], r["json"] = str(png), str(js)
        prediction_picture(photo, r, grid, png)
        write_json(js, r)


# ---- report -----------------------------------------------------------------------------------


def kpis(data: RunData, page: Page) -> list[tuple[str, str, str]]:
    ev = page.ev
    m = (ev.metrics.get("model") or {}) if ev else {}
    b = (ev.metrics.get("baseline") or {}) if ev else {}
    chance = ((ev.metrics.get("chance") or {}).get("patch_acc")) if ev else None

    def card(label: str, key: str, fraction: bool, extra: str = "") -> tuple[str, str, str]:
        return (label, fmt(m.get(key), fraction), f"baseline {fmt(b.get(key), fraction)}{extra}" if ev else "not evaluated")

    flag = ((ev.metrics.get("baseline_predicts") or {}).get("flag")) if ev else None
    return [
        card("crop accuracy", "flag_acc", True, f" (always {flag})" if flag else ""),
        (card("crop AUC", "flag_auc", False)[0], fmt(m.get("flag_auc"), False), "baseline 0.500" if ev else "not evaluated"),
        card("patch accuracy", "patch_acc", True, f", chance {fmt(chance, True)}"),
        card("rectangle IoU", "iou", False),
        card("crop-factor error", "crop_factor_error", True),
        page.training_time(),
    ]


def _metrics_body(ev: EvalSet) -> str:
    m, b = ev.metrics.get("model") or {}, ev.metrics.get("baseline") or {}
    rows = [(e(label), fmt(m.get(k), f), fmt(b.get(k), f)) for k, label, f in FIGURES]
    body = table(["figure", "model", "baseline"], rows, "metrics")
    per_cell = m.get("patch_acc_per_cell") or []
    cols = int(math.isqrt(len(per_cell))) if per_cell else 0
    if cols and cols * cols == len(per_cell):
        cells = [[fmt(per_cell[r * cols + c], True) for c in range(cols)] for r in range(cols)]
        body += "<h3>Patch accuracy per cell of the original frame</h3>" + table([f"col {c}" for c in range(cols)], cells, "per-cell")
    pred = ev.metrics.get("baseline_predicts") or {}
    stress = ev.metrics.get("aberration")
    flag = (
        f"the flag '{pred['flag']}' (the evaluation set's majority, the best constant guess; the training crop rate is {pred.get('crop_rate', 0):.2f})"
        if pred.get("flag") else f"crop probability {pred.get('crop_rate', 0):.2f}"
    )
    body += note(
        f"Baseline: always the mean training rectangle {[round(v, 3) for v in pred.get('rect', [])]}, {flag} "
        f"and cell {pred.get('cell')}, from {ev.metrics.get('baseline_from', 'the training targets')}. "
        f"{ev.metrics.get('num_samples')} samples of {ev.metrics.get('num_images')} photos ({ev.metrics.get('crops_per_image')} crop(s) per photo, "
        f"seed {ev.metrics.get('eval_seed')})." + (f" Stress test: {stress} added to every photo." if stress else "")
        + " Crop accuracy alone proves little: the random resize leaves resampling traces a net can read without any lens cue; patch accuracy is the lens cue."
    )
    return body


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    """predictions.csv as the report reads it (every value a string) with numbers as numbers."""
    out = df.copy()
    for col in out.columns:
        if col not in ("path", "cells_true"):
            out[col] = out[col].map({"True": True, "False": False}).fillna(out[col]) if col == "cropped" else pd.to_numeric(out[col], errors="coerce")
    return out


def _cf_histogram(ev: EvalSet, df: pd.DataFrame | None, path: Path) -> Path | None:
    if df is None or "cf_err" not in df or not df["cropped"].astype(bool).any():
        return None
    crops = df[df["cropped"].astype(bool)]
    rect = (ev.metrics.get("baseline_predicts") or {}).get("rect")
    base = None
    if rect:
        s_base = math.sqrt(max(rect[1] - rect[0], 0) * max(rect[3] - rect[2], 0))
        base = (s_base - crops["s_true"]).abs() / crops["s_true"]
    with rc_context(STYLE):
        fig = Figure(figsize=(7, 3.2))
        ax = fig.add_subplot()
        top = max(0.5, float(crops["cf_err"].max()), float(base.max()) if base is not None else 0)
        bins = np.linspace(0, top, 26)
        ax.hist(crops["cf_err"], bins=bins, color=TRAIN, alpha=0.85, label=f"model (mean {crops['cf_err'].mean():.1%})")
        if base is not None:
            ax.hist(base, bins=bins, color=VAL, alpha=0.5, label=f"baseline (mean {base.mean():.1%})")
        ax.set_xlabel("|s_pred - s| / s")
        ax.set_ylabel("cropped samples")
        ax.set_title("Crop-factor error")
        ax.legend()
        return _save(fig, path)


def _rect_gallery(ev: EvalSet, rows: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Each sample's ORIGINAL photo with the true rectangle (green) and the predicted one (red)."""
    if rows.empty:
        return None
    cols = min(4, len(rows))
    n_rows = math.ceil(len(rows) / cols)
    limit = ev.max_pixels()
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(3.2 * cols, 2.6 * n_rows + 0.4))
        for k, (_, r) in enumerate(rows.iterrows()):
            ax = fig.add_subplot(n_rows, cols, k + 1)
            ax.set_axis_off()
            photo = photo_view(str(r["path"]), limit, 320, int(r.get("rotation", 0) or 0))
            if photo is None:
                ax.text(0.5, 0.5, "image unreadable", ha="center", color=MUTED, transform=ax.transAxes)
                continue
            h, w = photo.shape[:2]
            ax.imshow(photo)
            for prefix, colour in (("true", GOOD), ("pred", BAD)):
                x1, x2, y1, y2 = (min(max(float(r[f"{prefix}_{c}"]), 0), 1) for c in ("x1", "x2", "y1", "y2"))
                ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False, edgecolor=colour, lw=2))
            ax.set_title(f"IoU {r['iou']:.2f}, p(crop) {r['crop_prob']:.2f}\ns {r['s_true']:.2f} -> {r['s_pred']:.2f}", fontsize=8, loc="center", fontweight="normal")
        fig.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold", color=INK)
        fig.tight_layout()
        return _save(fig, path)


def _heatmaps(ev: EvalSet, rows: pd.DataFrame, grid: tuple[int, int], path: Path) -> Path | None:
    if rows.empty or ev.probs is None or ev.probs.ndim != 3:
        return None
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(4.2 * len(rows), 4.6))
        gs = fig.add_gridspec(1, len(rows), wspace=0.15)
        for k, (i, r) in enumerate(rows.iterrows()):
            draw_cells(fig, gs[k], ev.probs[i], grid, [int(c) for c in str(r["cells_true"]).split()])
        fig.suptitle("Patch cell probabilities (true cell green, most likely dotted)", x=0.01, ha="left", fontsize=11, fontweight="bold", color=INK)
        return _save(fig, path)


def report_sections(data: RunData, page: Page) -> list[ReportSection]:
    from vislab.runs import run_paths

    ev = page.ev
    head = [page.health()]
    tail = [page.dataset(), page.config()]
    if ev is None:
        ids = (("metrics", "Metrics", "Crop detection"), ("cf-error", "Crop factor", "Crop-factor error"),
               ("frames", "Frames", "Original frames"), ("patches", "Patches", "Patch locations"), ("cases", "Cases", "Best and worst"))
        return head + [page.not_evaluated(*ids[0]), page.curves(), *(page.not_evaluated(*i) for i in ids[1:])] + tail
    plots = run_paths(data.run_dir)
    tag = ev.name
    grid = tuple((data.config.get("crops") or {}).get("grid") or (4, 4))
    df = _numeric(ev.predictions) if ev.predictions is not None else pd.DataFrame()
    cropped = df[df["cropped"].astype(bool)] if not df.empty else df
    hist = _cf_histogram(ev, df, plots.plot(f"crops_cf_error_{tag}.png"))
    gallery = _rect_gallery(ev, cropped.head(GALLERY), plots.plot(f"crops_frames_{tag}.png"), "Original frames: true rectangle green, predicted red")
    ranked = cropped.sort_values("iou", ascending=False) if not cropped.empty else cropped
    best = _rect_gallery(ev, ranked.head(CASES), plots.plot(f"crops_best_{tag}.png"), "Best rectangles (highest IoU)")
    worst = _rect_gallery(ev, ranked.tail(CASES)[::-1], plots.plot(f"crops_worst_{tag}.png"), "Worst rectangles (lowest IoU)")
    maps = _heatmaps(ev, cropped.head(HEATMAP_SAMPLES), grid, plots.plot(f"crops_patches_{tag}.png"))  # type: ignore[arg-type]
    missing = note("No cropped samples in this evaluation (--crops-per-image 0).")
    lead = f"Eval set '{ev.name}': every figure beside the trivial baseline measured in the same evaluation."
    return head + [
        ReportSection("metrics", "Metrics", "Crop detection", _metrics_body(ev), lead),
        page.curves(),
        ReportSection("cf-error", "Crop factor", "Crop-factor error", img_tag(hist, "crop-factor error histogram") or missing,
                      "|s_pred - s| / s of the cropped samples, s the side scale of the crop."),
        ReportSection("frames", "Frames", "Original frames", img_tag(gallery, "original frames with rectangles") or missing,
                      "Each cropped sample's original photo: where the crop really was (green) and where the model puts it (red)."),
        ReportSection("patches", "Patches", "Patch locations", img_tag(maps, "patch heat maps") or missing,
                      "For each of a sample's patches, the model's probability of each cell of the original frame."),
        ReportSection("cases", "Cases", "Best and worst", (img_tag(best, "best cases") + img_tag(worst, "worst cases")) or missing,
                      "Cropped samples ranked by rectangle IoU."),
    ] + tail
