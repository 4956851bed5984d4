"""The report's figures as PNG files: curves, confusion matrix, per-class bars, class
histogram, highest-loss images and the CAM gallery (`write_run_plots` writes those every run
has; a task's report draws its own with the others).

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no
display needed) and one shared style, so every PNG of every run looks alike. Each function
takes plain data and a path and returns the path, so it is usable outside a run too.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from vislab.data.stats import PLAIN_TEXT
from vislab.errors import VislabError
from vislab import fsguard
from vislab.fsguard import MAX_PIXELS, inside, replacing

if TYPE_CHECKING:
    from vislab.report.rundata import RunData

TRAIN = "#4f46e5"
VAL = "#f97316"
OTHER = ("#0ea5e9", "#10b981", "#e11d48", "#a855f7", "#eab308")
GOOD = "#16a34a"
BAD = "#dc2626"
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
MAX_TICK_LABELS = 40  # per axis; more classes get every k-th label
DPI = 110

STYLE = {
    **PLAIN_TEXT,  # class names and captions are drawn as written, never as mathtext
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.edgecolor": "#d1d5db",
    "axes.labelcolor": INK,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlecolor": INK,
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.8,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "legend.frameon": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


def _save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG through `fsguard.replacing` (never through a link at `path`); a
    folder that cannot be written (a read-only run directory) is one line."""
    path = Path(path)
    try:
        with replacing(path) as fh:
            fig.savefig(fh, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    except OSError as err:
        raise cannot_write(path, err) from None
    return path


def cannot_write(path: Path, err: OSError) -> VislabError:
    """The one-line error for a report file that cannot be written."""
    return fsguard.cannot_write(path, err, "the report goes into the run directory, so make it writable or report a copy of the run")


def _series(history: pd.DataFrame, kind: str) -> list[str]:
    """Columns of one kind ('loss', 'acc'): train/val first, then extras such as ABN branches."""
    cols = [c for c in history.columns if c.split("/")[-1].endswith(kind) and pd.api.types.is_numeric_dtype(history[c])]
    first = [c for c in (f"train/{kind}", f"val/{kind}") if c in cols]
    return first + sorted(c for c in cols if c not in first)


def _colour(col: str, i: int) -> str:
    if col.startswith("train/"):
        return TRAIN if col.count("/") == 1 else OTHER[i % len(OTHER)]
    if col.startswith("val/"):
        return VAL if col.count("/") == 1 else OTHER[(i + 2) % len(OTHER)]
    return OTHER[i % len(OTHER)]


def plot_curves(history: pd.DataFrame, path: str | Path, panels: Sequence[tuple[str, str, str]] = ()) -> Path | None:
    """Loss, the task's metrics (`panels`: title, column suffix and whether higher or lower is
    better, e.g. ("Accuracy", "acc", "max")) and learning rate per epoch, train and val side
    by side; the best val epoch of each metric panel is marked."""
    if history is None or history.empty:
        return None
    x = history["epoch"].to_numpy() + 1 if "epoch" in history else np.arange(1, len(history) + 1)
    # lr/first and lr/last (the epoch's first and last step) draw the head lr's shape inside each epoch
    lr_cols = [c for c in history.columns if c.startswith("lr") and c not in LR_ENDS and pd.api.types.is_numeric_dtype(history[c])]
    metric_panels = {title: (kind, mode) for title, kind, mode in panels}
    shown = [("Loss", _series(history, "loss")), *[(title, _series(history, kind)) for title, kind, _ in panels], ("Learning rate", lr_cols)]
    shown = [p for p in shown if p[1]]
    if not shown:
        return None
    main_cols = {"lr"} | {f"{phase}/{kind}" for phase in ("train", "val") for kind in ("loss", *(k for k, _ in metric_panels.values()))}
    with rc_context(STYLE):
        fig = Figure(figsize=(4.2 * len(shown), 3.2))
        axes = fig.subplots(1, len(shown), squeeze=False)[0]
        for ax, (title, cols) in zip(axes, shown):
            for i, col in enumerate(cols):
                y = history[col].to_numpy(dtype=float)
                ok = np.isfinite(y)
                if not ok.any():
                    continue
                main = col in main_cols
                if col == "lr" and all(c in history for c in LR_ENDS):
                    _plot_lr_steps(ax, history, x, _colour(col, i))
                    ax.plot(x[ok], y[ok], color=_colour(col, i), lw=0, marker="o" if ok.sum() <= 30 else None, ms=3,
                            label="lr (epoch mean; line: first to last step)")
                    continue
                ax.plot(x[ok], y[ok], color=_colour(col, i), lw=2.0 if main else 1.3, ls="-" if main else "--",
                        marker="o" if ok.sum() <= 30 else None, ms=3, label=col)
            if title in metric_panels:
                kind, mode = metric_panels[title]
                best = f"val/{kind}" if f"val/{kind}" in cols else None
                if best is not None and history[best].notna().any():
                    j = int(history[best].idxmax() if mode == "max" else history[best].idxmin())
                    ax.scatter([x[j]], [history[best][j]], s=60, facecolor="white", edgecolor=VAL, lw=2, zorder=5)
                    ax.annotate(f"best {history[best][j]:.3f}", (x[j], history[best][j]), textcoords="offset points",
                                xytext=(0, -16), ha="center", fontsize=8, color=VAL)
            if title == "Learning rate":
                vals = history[cols].to_numpy(dtype=float)  # the epochs' lr: a one-cycle's last step alone does not make it log
                vals = vals[np.isfinite(vals) & (vals > 0)]
                if vals.size and vals.max() / max(vals.min(), 1e-30) > 50:
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # plain text: no mathtext here
                    ax.yaxis.set_minor_formatter(NullFormatter())
                elif vals.size and np.ptp(vals) <= 1e-12 * vals.max():
                    ax.set_ylim(0, vals.max() * 1.5)  # a constant lr: show it against zero, not as noise
            ax.set_title(title)
            epoch_axis(ax, x)
            if ax.get_legend_handles_labels()[0]:  # a panel whose columns are all empty (metrics.csv cut short) has none
                ax.legend(fontsize=8)
        fig.tight_layout()
        return _save(fig, path)


LR_ENDS = ("lr/first", "lr/last")


def _plot_lr_steps(ax: Any, history: pd.DataFrame, x: np.ndarray, colour: str) -> None:
    """The lr of each epoch's first step at its left edge and of its last step at its right
    edge, joined: a warm-up or a decay inside an epoch shows as the slope it had."""
    first = history[LR_ENDS[0]].to_numpy(dtype=float)
    last = history[LR_ENDS[1]].to_numpy(dtype=float)
    ok = np.isfinite(first) & np.isfinite(last)
    xs = np.column_stack([x[ok] - 0.5, x[ok] + 0.5]).ravel()
    ys = np.column_stack([first[ok], last[ok]]).ravel()
    ax.plot(xs, ys, color=colour, lw=2.0)


def epoch_axis(ax: Any, epochs: np.ndarray) -> None:
    """x axis of whole epochs numbered from 1 as the terminal counts them: integer ticks only,
    with half an epoch of room each side (one epoch gets one tick, not 0.95 ... 1.05)."""
    ax.set_xlim(float(np.min(epochs)) - 0.5, float(np.max(epochs)) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")


def confusion_order(cm: np.ndarray, classes: Sequence[str], order: str = "auto") -> np.ndarray:
    """Row/column order: class-id order up to 30 classes ('auto'), else by accuracy, best first."""
    if order == "auto":
        order = "name" if len(classes) <= 30 else "accuracy"
    if order == "accuracy":
        rows = cm.sum(1)
        acc = np.divide(np.diag(cm), rows, out=np.full(len(rows), -1.0), where=rows > 0)
        return np.lexsort((np.arange(len(acc)), -acc))
    return np.arange(len(classes))


def label_step(n: int) -> int:
    """Show every k-th tick label so at most MAX_TICK_LABELS remain."""
    return max(1, math.ceil(n / MAX_TICK_LABELS))


def plot_confusion(cm: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str], path: str | Path, order: str = "auto") -> Path:
    """Row-normalised confusion matrix; counts written in cells up to 15 classes.

    Above 30 classes rows are sorted by class accuracy (best first), so the weak classes
    gather at the bottom right; tick labels are thinned to at most 40 per axis.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = len(classes)
    idx = confusion_order(cm, classes, order)
    cm = cm[np.ix_(idx, idx)]
    names = [str(classes[i]) for i in idx]
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    side = float(np.clip(2.2 + 0.42 * n, 4.2, 15.0))
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(side + 1.2, side))
        ax = fig.subplots()
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        step = label_step(n)
        ticks = np.arange(0, n, step)
        fs = 9 if n <= 15 else (7 if n <= 40 else 6)
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=60 if n > 6 else 0, ha="right" if n > 6 else "center", fontsize=fs)
        ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=fs)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for s in ax.spines.values():
            s.set_visible(False)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8 if n > 8 else 9,
                                color="white" if norm[i, j] > 0.55 else INK)
        title = "Confusion matrix (row-normalised)"
        if step > 1:
            title += f" — 1 in {step} labels shown"
        if order == "accuracy" or (order == "auto" and n > 30):
            title += ", sorted by accuracy"
        ax.set_title(title)
        cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        cb.outline.set_visible(False)
        fig.tight_layout()
        return _save(fig, path)


def plot_per_class(per_class: Sequence[dict[str, Any]], path: str | Path, mca: float | None = None) -> Path | None:
    """Horizontal bars of per-class accuracy, best at the top, with the mean class accuracy."""
    rows = [r for r in per_class if r.get("accuracy") is not None and math.isfinite(r["accuracy"])]
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: (-r["accuracy"], str(r.get("class"))))
    n = len(rows)
    height = float(np.clip(0.22 * n + 1.0, 2.2, 22.0))
    fs = 9 if n <= 30 else (7 if n <= 60 else 5.5)
    with rc_context(STYLE):
        fig = Figure(figsize=(7.5, height))
        ax = fig.subplots()
        acc = np.array([r["accuracy"] for r in rows])
        colours = [GOOD if a >= (mca if mca is not None else acc.mean()) else BAD for a in acc]
        y = np.arange(n)
        ax.barh(y, acc, color=colours, alpha=0.85, height=0.72)
        ax.set_yticks(y, [f"{r.get('class')}  (n={r.get('support')})" for r in rows], fontsize=fs)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.0)
        ax.grid(axis="y", visible=False)
        if mca is not None:
            ax.axvline(mca, color=INK, lw=1.2, ls="--", label=f"mean class accuracy {mca:.3f}")
            ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0))
        if n <= 40:
            for yi, a in zip(y, acc):
                ax.text(min(a + 0.01, 0.93), yi, f"{a:.2f}", va="center", fontsize=fs - 1, color=INK)
        ax.set_xlabel("accuracy (recall)")
        ax.set_title("Per-class accuracy")
        fig.tight_layout()
        return _save(fig, path)


def plot_class_histogram(manifest: pd.DataFrame, path: str | Path) -> Path | None:
    """Usable images per class, stacked by split, largest class first."""
    df = manifest[(manifest["status"] == "ok") & (manifest["label"] != "")]
    if df.empty:
        return None
    table = df.groupby(["label", "split"]).size().unstack(fill_value=0)
    table = table.loc[table.sum(axis=1).sort_values(ascending=False, kind="stable").index]
    splits = [s for s in ("train", "val", "test", "") if s in table.columns]
    colours = {"train": TRAIN, "val": VAL, "test": "#10b981", "": "#9ca3af"}
    n = len(table)
    with rc_context(STYLE):
        fig = Figure(figsize=(float(np.clip(1.5 + 0.32 * n, 5.0, 16.0)), 3.4))
        ax = fig.subplots()
        bottom = np.zeros(n)
        x = np.arange(n)
        for s in splits:
            vals = table[s].to_numpy()
            ax.bar(x, vals, bottom=bottom, color=colours[s], width=0.78, label=s or "unsplit")
            bottom += vals
        step = label_step(n)
        ticks = x[::step]
        ax.set_xticks(ticks, [str(table.index[i]) for i in ticks], rotation=60 if n > 6 else 0,
                      ha="right" if n > 6 else "center", fontsize=8 if n <= 40 else 6)
        ax.grid(axis="x", visible=False)
        ax.set_ylabel("images")
        ax.set_title(f"Images per class ({n} classes, {int(bottom.sum())} usable images)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        return _save(fig, path)


def _thumbnail(path: str, size: int, max_pixels: int) -> np.ndarray | None:
    from vislab.data.io import ImageDecodeError, load_image

    try:
        im = load_image(path, (size, size), max_pixels)
    except ImageDecodeError:
        return None
    im.thumbnail((size, size))
    return np.asarray(im)


def _wrap_caption(caption: str, width: int, max_lines: int = 4) -> str:
    """Caption lines wrapped to a tile's width (long class names broken, not overlapping)."""
    lines = [part for line in caption.split("\n") for part in (textwrap.wrap(line, width, break_long_words=True) or [""])]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, width - 1)] + "…"
    return "\n".join(lines)


def _tile_grid(tiles: Sequence[tuple[np.ndarray | None, str, str]], path: str | Path, title: str, cols: int, tile: float = 2.0) -> Path | None:
    if not tiles:
        return None
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    width = max(12, int(tile * 72 / (8 * 0.6)))  # characters of 8-pt text across one tile
    tiles = [(img, _wrap_caption(cap, width), colour) for img, cap, colour in tiles]
    lines = max(cap.count("\n") + 1 for _, cap, _ in tiles)
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(tile * cols, (tile + 0.16 * lines + 0.15) * rows + 0.4))
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, (img, caption, colour) in zip(axes, tiles):
            if img is None:
                ax.imshow(np.full((8, 8, 3), 235, np.uint8))
                ax.text(3.5, 3.5, "image unreadable", ha="center", va="center", fontsize=8, color=MUTED)
            else:
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest" if max(img.shape[:2]) < 96 else "antialiased")
            ax.set_title(caption, fontsize=8, color=colour, loc="center", fontweight="normal")
        fig.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold", color=INK)
        fig.tight_layout()
        return _save(fig, path)


def plot_image_grid(
    items: Sequence[dict[str, Any]], path: str | Path, title: str = "Highest-loss images", cols: int = 6, size: int = 192, max_pixels: int = MAX_PIXELS
) -> Path | None:
    """Thumbnails with 'true / pred (confidence)' captions; wrong predictions in red. Images
    decode under `max_pixels`, the limit of the dataset they are from."""
    tiles = []
    for it in items:
        wrong = it.get("true") != it.get("pred")
        conf = it.get("confidence")
        cap = f"true: {it.get('true')}\npred: {it.get('pred')}" + (f" ({conf:.2f})" if conf is not None else "")
        if it.get("loss") is not None:
            cap += f"  loss {it['loss']:.2f}"
        tiles.append((_thumbnail(str(it.get("path")), size, max_pixels) if it.get("path") else None, cap, BAD if wrong else GOOD))
    return _tile_grid(tiles, path, title, cols)


def plot_cam_gallery(tiles: Sequence[tuple[np.ndarray, str]], path: str | Path, title: str = "Class activation maps", cols: int = 4) -> Path | None:
    """Overlays (uint8 RGB) with captions, in a grid."""
    return _tile_grid([(img, cap, INK) for img, cap in tiles], path, title, cols, tile=2.6)


def write_run_plots(data: "RunData", out_dir: str | Path | None = None, panels: Sequence[tuple[str, str, str]] = ()) -> dict[str, Path]:
    """The figures every run has, into RUN_DIR/plots (or `out_dir`): training curves (with the
    task's metric `panels`) and the dataset's class histogram; name -> path. A task's own
    figures (classification: confusion, per class, highest loss) are drawn by its report."""
    from vislab.runs import run_paths

    def place(name: str) -> Path:
        return inside(out_dir, name) if out_dir is not None else run_paths(data.run_dir).plot(name)

    made: dict[str, Path | None] = {}
    if data.history is not None:
        made["curves"] = plot_curves(data.history, place("curves.png"), panels)
    manifest = dataset_manifest(data)
    if manifest is not None:
        made["class_histogram"] = plot_class_histogram(manifest, place("class_histogram.png"))
    return {k: v for k, v in made.items() if v is not None}


def dataset_manifest(data: "RunData") -> pd.DataFrame | None:
    """The run's dataset manifest, if the dataset directory is still reachable."""
    from vislab.data.manifest import read_manifest

    ds = data.info.get("dataset_dir")
    if not ds or not (Path(ds) / "manifest.csv").is_file():
        return None
    try:
        return read_manifest(ds)
    except (VislabError, OSError, pd.errors.ParserError):
        return None


def plot_tiles(tiles: Sequence[tuple[np.ndarray | None, str]], path: str | Path, title: str, cols: int = 4, tile: float = 2.6) -> Path | None:
    """Any pictures (uint8 RGB, None: unreadable) with captions, in a grid."""
    return _tile_grid([(img, cap, INK) for img, cap in tiles], path, title, cols, tile=tile)


def plot_detection_curves(curves: dict[str, Any], classes: Sequence[str], conf: float, path: str | Path) -> Path | None:
    """Two panels from a detection evaluation's curve arrays: precision-recall per class,
    and precision, recall and F1 of all classes pooled against the confidence threshold."""
    recall = np.asarray(curves.get("recall_grid") or [], dtype=float)
    grid = np.asarray(curves.get("confidence_grid") or [], dtype=float)
    if not len(recall) or not len(grid):
        return None
    with rc_context(STYLE):
        fig = Figure(figsize=(11, 4.2))
        ax_pr, ax_c = fig.subplots(1, 2)
        for i, name in enumerate(list(classes)[:12]):
            p = curves.get("precision_at_recall", {}).get(name)
            if p and any(v is not None for v in p):
                ax_pr.plot(recall, [np.nan if v is None else v for v in p], lw=1.5, color=OTHER[i % len(OTHER)] if i else TRAIN, label=str(name))
        ax_pr.set_xlim(0, 1)
        ax_pr.set_ylim(0, 1.02)
        ax_pr.set_xlabel("recall")
        ax_pr.set_ylabel("precision")
        ax_pr.set_title("Precision-recall (IoU 0.5)")
        if ax_pr.lines:
            ax_pr.legend(fontsize=8, loc="lower left")
        pooled = curves.get("by_confidence", {}).get("all", {})
        for key, colour in (("precision", TRAIN), ("recall", VAL), ("f1", GOOD)):
            values = pooled.get(key)
            if values:
                ax_c.plot(grid, [np.nan if v is None else v for v in values], lw=1.6, color=colour, label=key)
        ax_c.axvline(conf, color=MUTED, lw=1, ls="--", label=f"conf {conf:g}")
        ax_c.set_xlim(0, 1)
        ax_c.set_ylim(0, 1.02)
        ax_c.set_xlabel("confidence threshold")
        ax_c.set_title("P / R / F1 against confidence (all classes)")
        ax_c.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        return _save(fig, path)


def plot_class_ap(per_class: dict[str, dict[str, Any]], path: str | Path) -> Path | None:
    """Horizontal bars of AP@0.5 and AP@0.5:0.95 per class, best at the top."""
    rows = sorted(((c, v.get("ap50"), v.get("ap50_95")) for c, v in per_class.items() if v.get("ap50") is not None), key=lambda r: -r[1])
    if not rows:
        return None
    n = len(rows)
    with rc_context(STYLE):
        fig = Figure(figsize=(7.5, float(np.clip(0.3 * n + 1.2, 2.2, 22.0))))
        ax = fig.subplots()
        y = np.arange(n)
        ax.barh(y - 0.18, [r[1] for r in rows], height=0.36, color=TRAIN, label="AP@0.5")
        ax.barh(y + 0.18, [r[2] or 0.0 for r in rows], height=0.36, color=VAL, label="AP@0.5:0.95")
        ax.set_yticks(y, [str(r[0]) for r in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.grid(axis="y", visible=False)
        ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0))
        ax.set_title("Per-class AP")
        fig.tight_layout()
        return _save(fig, path)
