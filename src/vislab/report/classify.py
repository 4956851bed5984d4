"""The classify task's report: its KPI cards and sections, and the figures they show.

Sections (stable ids, for links and tests): health, metrics, curves, confusion, per-class,
highest-loss, cams, data, config; attention after cams for ABN runs. Health, curves, data
and config are the generic ones (report/page.py); the others read the primary eval set's
metrics.json and predictions.csv, and the CAM galleries load the trained model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from vislab.report import plots
from vislab.report.page import Page, e, img_tag, note, table
from vislab.report.rundata import EvalSet, RunData
from vislab.tasks.registry import ReportSection

SECTIONS = (
    ("health", "Health"),
    ("metrics", "Metrics"),
    ("curves", "Curves"),
    ("confusion", "Confusion"),
    ("per-class", "Per class"),
    ("highest-loss", "Highest loss"),
    ("cams", "CAMs"),
    ("data", "Data"),
    ("config", "Config"),
)
ABN_SECTION = ("attention", "Attention")
FRACTIONS = {"accuracy", "top5_accuracy", "mca", "gap", "val/acc", "train/acc", "att_accuracy", "att_mca", "att_f1_macro"}
FRACTION_PREFIXES = ("precision_", "recall_", "f1_")
METRIC_ROWS = (
    ("accuracy", "Accuracy"),
    ("top5_accuracy", "Top-k accuracy"),
    ("mca", "Mean class accuracy (mCA)"),
    ("precision_macro", "Precision (macro)"),
    ("recall_macro", "Recall (macro)"),
    ("f1_macro", "F1 (macro)"),
    ("classes_present", "Classes in mCA (with images)"),
    ("macro_classes", "Classes in macro averages (true or predicted)"),
    ("precision_weighted", "Precision (weighted)"),
    ("recall_weighted", "Recall (weighted)"),
    ("f1_weighted", "F1 (weighted)"),
    ("gap", "Global Average Precision"),
    ("att_accuracy", "Attention branch: accuracy"),
    ("att_mca", "Attention branch: mCA"),
    ("att_f1_macro", "Attention branch: F1 (macro)"),
    ("ece", "Expected calibration error"),
    ("num_labelled", "Labelled images"),
)
HIGHEST_LOSS_IMAGES = 12
# what the averages cover, said where they are shown (the per-class table shows each class's recall)
AVERAGES = ("mCA averages the classes with images; macro precision, recall and F1, as scikit-learn's, "
            "the classes true or predicted, a class only predicted counting with recall 0.")


def fmt(key: str, value: Any) -> str:
    """A metric for people: fractions as percentages, small numbers with 3 decimals."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if key in FRACTIONS or key.startswith(FRACTION_PREFIXES) or key.endswith("acc"):
            return f"{100 * value:.1f}%"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:,.3f}"
    return str(value)


def top_k_informative(metrics: dict[str, Any]) -> bool:
    """Top-k accuracy says something only with more than k classes (else it is 100%)."""
    n = len(metrics.get("classes") or metrics.get("per_class") or [])
    return "top5_accuracy" in metrics and int(metrics.get("top_k", 5)) < n


def class_lists_informative(metrics: dict[str, Any]) -> bool:
    """Best and worst classes are worth their own tables only when they are different classes
    and a small part of them all (more than twice the list length; the per-class table shows
    every class anyway)."""
    n = len([r for r in metrics.get("per_class") or [] if r.get("support")]) or len(metrics.get("classes") or [])
    length = max(len(metrics.get("best_classes") or []), len(metrics.get("worst_classes") or []))
    return length > 0 and n > 2 * length


def kpis(data: RunData, page: Page) -> list[tuple[str, str, str]]:
    """Accuracy, mCA, macro F1, GAP, the kept epoch's validation accuracy and training time."""
    ev = page.ev
    m = ev.metrics if ev else {}
    s = data.summary
    best_val = (s.get("best_val") or {}).get("val/acc")
    if top_k_informative(m):
        f1_sub = f"top-{m.get('top_k', 5)} {fmt('top5_accuracy', m.get('top5_accuracy'))}"
    else:  # top-k of k classes or fewer is 100% by definition
        f1_sub = f"precision {fmt('precision_macro', m.get('precision_macro'))}" if m.get("precision_macro") is not None else ""
    return [
        (f"{ev.name} accuracy" if ev else "accuracy", fmt("accuracy", m.get("accuracy")), f"{m.get('num_labelled', 0):,} images" if ev else "not evaluated"),
        ("mean class acc.", fmt("mca", m.get("mca")), "balanced accuracy"),
        ("macro F1", fmt("f1_macro", m.get("f1_macro")), f1_sub),
        ("GAP", fmt("gap", m.get("gap")), f"ECE {fmt('ece', m.get('ece'))}"),
        (f"{data.kept} val acc.", fmt("val/acc", best_val), f"epoch {s['best_epoch'] + 1}" if isinstance(s.get("best_epoch"), int) else ""),
        page.training_time(),
    ]


def write_plots(data: RunData, ev: EvalSet, n_images: int = HIGHEST_LOSS_IMAGES) -> dict[str, Path]:
    """The eval set's confusion matrix, per-class bars and highest-loss images, into RUN_DIR/plots."""
    from vislab.runs import run_paths

    m = ev.metrics
    if not m.get("confusion_matrix"):
        return {}
    paths = run_paths(data.run_dir)
    classes = m.get("classes") or data.classes
    made = {
        "confusion": plots.plot_confusion(m["confusion_matrix"], classes, paths.plot(f"confusion_{ev.name}.png")),
        "per_class": plots.plot_per_class(m.get("per_class") or [], paths.plot(f"per_class_{ev.name}.png"), m.get("mca")),
        "highest_loss": plots.plot_image_grid(highest_loss_items(ev, n_images), paths.plot(f"highest_loss_{ev.name}.png"),
                                              title=f"Highest-loss images ({ev.name})", max_pixels=ev.max_pixels()),
    }
    return {k: v for k, v in made.items() if v is not None}


def highest_loss_items(ev: EvalSet, n: int) -> list[dict[str, Any]]:
    """The eval set's highest-loss rows: from predictions.csv when present, else metrics.json."""
    preds = ev.predictions
    if preds is not None and {"path", "label", "pred", "loss"} <= set(preds.columns):
        df = preds[preds["label"] != ""].copy()
        df["loss"] = pd.to_numeric(df["loss"], errors="coerce")
        if "confidence" in df:
            df["confidence"] = pd.to_numeric(df["confidence"], errors="coerce")
        df = df.sort_values("loss", ascending=False, kind="stable").head(n)
        return [
            {"path": r.path, "true": r.label, "pred": r.pred, "confidence": float(r.confidence) if "confidence" in df and pd.notna(r.confidence) else None,
             "loss": float(r.loss) if pd.notna(r.loss) else None}
            for r in df.itertuples()
        ]
    return list(ev.metrics.get("highest_loss") or [])[:n]


def report_sections(data: RunData, page: Page) -> list[ReportSection]:
    """The page's cards, in the order of SECTIONS (the attention maps after the CAMs for ABN runs)."""
    ev = page.ev
    metrics_body = f'<div class="cols wide-left"><div>{_metrics(data)}</div><div>{_lists(ev) if ev else ""}</div></div>'
    out = [
        page.health(),
        ReportSection("metrics", "Metrics", "Metrics", metrics_body, f"One column per evaluated split. {AVERAGES}" if data.evals else ""),
        page.curves(),
    ]
    if ev is not None:
        made = write_plots(data, ev)
        out.append(ReportSection("confusion", "Confusion", "Confusion matrix",
                                 img_tag(made.get("confusion"), "confusion matrix") or note("No confusion matrix in metrics.json."),
                                 f"Split '{ev.name}'; rows are true classes, normalised to 1."))
        out.append(ReportSection("per-class", "Per class", "Per-class results", _per_class(ev, made.get("per_class")),
                                 f"Sorted by accuracy; accuracy of a class is its recall. {AVERAGES}"))
        items = highest_loss_items(ev, HIGHEST_LOSS_IMAGES)
        out.append(ReportSection("highest-loss", "Highest loss", "Highest-loss images", _highest_loss(ev, made.get("highest_loss"), items),
                                 "The images the model got most wrong: label noise, ambiguous classes or real failures."))
        methods = [page.cam_method] + (["attention"] if data.is_abn else [])
        galleries = (cam_galleries(data, ev, methods) if page.cams
                     else [(None, f"{_maps_name(m)} were not requested (--no-cams).") for m in methods])
        cam_png, why = galleries[0]
        cams = img_tag(cam_png, "class activation maps") + (note(why) if why else "") if cam_png else note(why)
        out.append(ReportSection("cams", "CAMs", "Where the model looks", cams, _cam_lead(page.cam_method) if cam_png else ""))
        if data.is_abn:
            att_png, why = galleries[1]
            out.append(ReportSection("attention", "Attention", "Attention branch maps", img_tag(att_png, "ABN attention maps") or note(why),
                                     _cam_lead("attention") if att_png else ""))
    else:
        pending = [("confusion", "Confusion", "Confusion matrix"), ("per-class", "Per class", "Per-class results"),
                   ("highest-loss", "Highest loss", "Highest-loss images"), ("cams", "CAMs", "Where the model looks")]
        for sid, nav, title in pending + ([("attention", "Attention", "Attention branch maps")] if data.is_abn else []):
            out.append(page.not_evaluated(sid, nav, title))
    return out + [page.dataset(), page.config()]


def _metrics(data: RunData) -> str:
    if not data.evals:
        return note(f"No evaluation yet: run `vislab evaluate {data.run_dir}` to fill this section.")
    names = list(data.evals)
    rows = []
    for key, label in METRIC_ROWS:
        if not any(key in data.evals[n].metrics for n in names):
            continue
        if key == "top5_accuracy":
            if not any(top_k_informative(data.evals[n].metrics) for n in names):
                continue
            label = f"Top-{data.evals[names[0]].metrics.get('top_k', 5)} accuracy"
        rows.append([e(label)] + [e(fmt(key, data.evals[n].metrics.get(key))) for n in names])
    return table(["metric"] + names, rows, "metrics")


def _lists(ev: EvalSet) -> str:
    m = ev.metrics
    pairs = m.get("confused_pairs") or []
    pair_html = (
        table(["true", "predicted as", "count", "of class"], ([e(p.get("true")), e(p.get("pred")), e(p.get("count")), e(fmt("accuracy", p.get("fraction")))] for p in pairs), "compact")
        if pairs
        else note("No confusions: every image was classified correctly.")
    )
    if not class_lists_informative(m):
        return f'<div class="stack"><div><h3>Most confused pairs</h3>{pair_html}</div></div>'
    best = table(["class", "accuracy", "n"], ([e(r.get("class")), e(fmt("accuracy", r.get("accuracy"))), e(r.get("support"))] for r in m.get("best_classes") or []), "compact")
    worst = table(["class", "accuracy", "n"], ([e(r.get("class")), e(fmt("accuracy", r.get("accuracy"))), e(r.get("support"))] for r in m.get("worst_classes") or []), "compact")
    return (
        f'<div class="stack"><div class="cols"><div><h3>Best classes</h3>{best}</div><div><h3>Worst classes</h3>{worst}</div></div>'
        f"<div><h3>Most confused pairs</h3>{pair_html}</div></div>"
    )


def _bar(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return '<span class="muted">—</span>'
    pct = max(0.0, min(100.0, 100 * v))
    hue = int(round(120 * v))  # red -> green
    return (
        f'<div class="bar"><span style="width:{pct:.1f}%;background:hsl({hue} 70% 45%)"></span>'
        f"<em>{pct:.1f}%</em></div>"
    )


def _per_class(ev: EvalSet, png: Path | None) -> str:
    rows = []
    for r in sorted(ev.metrics.get("per_class") or [], key=lambda r: (fmt("", r.get("accuracy")) == "—", -(r.get("accuracy") or 0), str(r.get("class")))):
        rows.append([e(r.get("class")), e(fmt("n", r.get("support"))), _bar(r.get("accuracy")), e(fmt("precision_", r.get("precision"))),
                     e(fmt("recall_", r.get("recall"))), e(fmt("f1_", r.get("f1")))])
    tbl = table(["class", "n", "accuracy", "precision", "recall", "F1"], rows, "per-class")
    return f'<div class="cols"><div class="scroll">{tbl}</div><div>{img_tag(png, "per-class accuracy")}</div></div>'


def _highest_loss(ev: EvalSet, png: Path | None, items: list[dict[str, Any]]) -> str:
    if not items:
        return note("No per-image predictions were saved for this evaluation.")
    rows = [
        [f"<code>{e(Path(str(it.get('path'))).name)}</code>", e(it.get("true")), e(it.get("pred")), e(fmt("accuracy", it.get("confidence"))), e(fmt("loss", it.get("loss")))]
        for it in items
    ]
    return img_tag(png, "highest-loss images") + "<details><summary>as a table</summary>" + table(["image", "true", "predicted", "confidence", "loss"], rows, "compact") + "</details>"


def _maps_name(method: str) -> str:
    return "Attention maps" if method == "attention" else "CAMs"


def cam_galleries(data: RunData, ev: EvalSet, methods: Sequence[str], n: int = 8) -> list[tuple[Path | None, str]]:
    """One gallery per method (a CAM method, or `attention` for ABN runs) of the same few test
    images: half the worst, half the most confident right ones. The model and images are
    loaded once for all of them.

    Needs the trained model; when it cannot be loaded the reason is returned instead, so a
    report of a run without checkpoints still renders. Beside a gallery, the note on its maps
    that are zero everywhere (their tiles say 'map empty'), else "".
    """
    preds = ev.predictions
    if preds is None or preds.empty or "path" not in preds:
        return [(None, "No per-image predictions, so no images to explain.")] * len(methods)
    df = preds[preds["label"] != ""].copy()
    df["loss"] = pd.to_numeric(df.get("loss"), errors="coerce")
    worst = df.sort_values("loss", ascending=False, kind="stable").head(n // 2)
    right = df[df["label"] == df["pred"]].sort_values("confidence", ascending=False, kind="stable").head(n - len(worst))
    chosen = pd.concat([worst, right])
    chosen = chosen[[Path(p).is_file() for p in chosen["path"]]]
    if chosen.empty:
        return [(None, "The evaluated images are not reachable from here.")] * len(methods)
    from vislab.data.io import ImageDecodeError, load_image
    from vislab.data.transforms import decode_size
    from vislab.explain.overlays import empty_maps_note, explain_images, load_trained
    from vislab.runs import run_paths

    def unavailable(method: str, err: Exception) -> tuple[None, str]:
        return None, f"{_maps_name(method)} unavailable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"

    try:
        loaded = load_trained(data.run_dir)
    except Exception as err:  # noqa: BLE001 - optional sections: say why instead of failing the report
        return [unavailable(m, err) for m in methods]
    side = decode_size(loaded.spec)  # as evaluate decoded them, so the shown scores are its scores
    limit = ev.max_pixels()
    images, readable = [], []
    for p in chosen["path"]:
        try:
            images.append(load_image(p, (side, side), limit))
            readable.append(True)
        except ImageDecodeError:  # changed since evaluation: the gallery shows the others
            readable.append(False)
    chosen = chosen[readable]
    if chosen.empty:
        return [(None, "None of the evaluated images can be decoded any more.")] * len(methods)
    out: list[tuple[Path | None, str]] = []
    for method in methods:
        try:
            results = explain_images(loaded.model, loaded.spec, list(loaded.classes), images, list(chosen["path"]), method=method,
                                     grayscale=loaded.cfg.data.grayscale)
        except Exception as err:  # noqa: BLE001 - as above
            out.append(unavailable(method, err))
            continue
        tiles = []
        for r, row in zip(results, chosen.itertuples()):
            mark = "✓" if row.label == r.class_name else "✗"
            tiles.append((r.overlay, f"{mark} true {row.label}\npred {r.class_name} ({r.prob:.2f})" + ("\nmap empty" if r.empty else "")))
        stem = "attention" if method == "attention" else "cams"
        png = plots.plot_cam_gallery(tiles, run_paths(data.run_dir).plot(f"{stem}_{ev.name}.png"),
                                     title=f"{method} on layer {results[0].layer}: highest-loss images first, then the most confident correct ones")
        empty = empty_maps_note(results, "--method")
        out.append((png, f"Note: {empty}, with vislab report or vislab explain." if empty else ""))
    return out


def _cam_lead(method: str) -> str:
    if method == "attention":
        return ("The ABN's own attention map M (one per image, computed in the forward pass, no gradients), "
                "stretched per image to its min-max; red = the features M amplified most (perception sees f·M + f).")
    if method == "eigencam":
        return "eigencam: the main component of the layer's activations (not specific to a class); red = strongest."
    return f"{method} heatmaps for the predicted class: red = regions that raised its score the most."
