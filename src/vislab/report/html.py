"""`vislab report`: one self-contained HTML page per run.

The page answers the questions asked after training (how good, on which classes, confused
with what, looking at what, anything wrong) from the run directory alone. Images are
embedded as base64 PNGs and the CSS is inline, so the file opens anywhere with no network;
every piece of text from the run is HTML-escaped. Section ids are stable (config, data,
curves, metrics, confusion, per-class, cams, highest-loss, health; attention for ABN runs)
for links and tests.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from vislab.display import format_rate
from vislab.report import plots
from vislab.report.rundata import EvalSet, RunData, read_run

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


def e(value: Any) -> str:
    """Escape any value for HTML text or attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(key: str, value: Any) -> str:
    """A metric for people: fractions as percentages, small numbers with 3 decimals."""
    if value is None or (isinstance(value, float) and value != value):
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


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def img_tag(path: Path | None, alt: str, cls: str = "plot") -> str:
    """An <img> with the PNG embedded as a data URI (the page needs no other file)."""
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img class="{cls}" alt="{e(alt)}" src="data:image/png;base64,{data}">'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Rows must already be escaped HTML cells."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def note(text: str) -> str:
    return f'<p class="note">{e(text)}</p>'


def section(sid: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f'<p class="lead">{e(lead)}</p>' if lead else ""
    return f'<section id="{e(sid)}" class="card"><h2>{e(title)}</h2>{lead_html}{body}</section>'


def top_k_informative(metrics: dict[str, Any]) -> bool:
    """Top-k accuracy says something only with more than k classes (else it is 100%)."""
    n = len(metrics.get("classes") or metrics.get("per_class") or [])
    return "top5_accuracy" in metrics and int(metrics.get("top_k", 5)) < n


def class_lists_informative(metrics: dict[str, Any]) -> bool:
    """Best and worst classes are worth their own tables only when they are different classes
    and a small part of them all (more than twice the list length; the per-class table shows
    every class anyway)."""
    n = len([r for r in metrics.get("per_class", []) if r.get("support")]) or len(metrics.get("classes") or [])
    length = max(len(metrics.get("best_classes", [])), len(metrics.get("worst_classes", [])))
    return length > 0 and n > 2 * length


def _kpis(data: RunData, ev: EvalSet | None) -> str:
    m = ev.metrics if ev else {}
    s = data.summary
    best_val = (s.get("best_val") or {}).get("val/acc")
    if top_k_informative(m):
        f1_sub = f"top-{m.get('top_k', 5)} {fmt('top5_accuracy', m.get('top5_accuracy'))}"
    else:  # top-k of k classes or fewer is 100% by definition
        f1_sub = f"precision {fmt('precision_macro', m.get('precision_macro'))}" if m.get("precision_macro") is not None else ""
    rate = format_rate(s.get("train_images_per_s"))
    cards = [
        (f"{ev.name} accuracy" if ev else "accuracy", fmt("accuracy", m.get("accuracy")), f"{m.get('num_labelled', 0):,} images" if ev else "not evaluated"),
        ("mean class acc.", fmt("mca", m.get("mca")), "balanced accuracy"),
        ("macro F1", fmt("f1_macro", m.get("f1_macro")), f1_sub),
        ("GAP", fmt("gap", m.get("gap")), f"ECE {fmt('ece', m.get('ece'))}"),
        ("best val acc.", fmt("val/acc", best_val), f"epoch {s['best_epoch'] + 1}" if isinstance(s.get("best_epoch"), int) else ""),
        ("training time", duration(s.get("wall_time_s")), f"{rate} img/s" if rate else ""),
    ]
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="kpi-label">{e(a)}</div><div class="kpi-value">{e(b)}</div><div class="kpi-sub">{e(c)}</div></div>'
        for a, b, c in cards
    ) + "</div>"


def _health(data: RunData) -> str:
    if not data.health:
        return '<div class="ok-banner">✓ No health warnings: training looked normal.</div>'
    items = []
    for h in data.health:
        level = str(h.get("level", "warn")).lower()
        level = level if level in ("warn", "error", "info") else "warn"
        # health.json counts from 0, like Lightning; people (and the terminal) count from 1
        where = " · ".join(p for p in (f"epoch {h['epoch'] + 1}" if isinstance(h.get("epoch"), int) else "",
                                       f"step {h['step'] + 1}" if isinstance(h.get("step"), int) else "") if p)
        items.append(
            f'<li class="msg {level}"><span class="badge {level}">{e(level)}</span>'
            f'<code>{e(h.get("code", ""))}</code><span class="msg-text">{e(h.get("message", ""))}</span>'
            f'<span class="where">{e(where)}</span></li>'
        )
    return f'<ul class="messages">{"".join(items)}</ul>'


def _config(data: RunData) -> str:
    i, s = data.info, data.summary
    params = s.get("params") or {}
    spec = i.get("data_spec") or {}
    rows = [
        ("model", s.get("model") or (data.config.get("model") or {}).get("name")),
        ("input", "×".join(str(v) for v in (spec.get("input_size") or s.get("input_size") or [])[1:])),
        ("parameters", f"{params.get('total', 0):,} total · {params.get('trainable', 0):,} trainable · {params.get('frozen', 0):,} frozen" if params else None),
        ("epochs", f"{s.get('epochs_completed', '—')} of {s.get('epochs_planned', '—')} ({s.get('stopped_reason', '—')})" if s else None),
        ("device / precision", f"{i.get('device', '—')} / {i.get('precision', '—')}" if i else None),
        ("created", i.get("created")),
        ("versions", " · ".join(f"{k} {i[k]}" for k in ("vislab_version", "torch", "timm", "lightning", "python") if i.get(k))),
        ("git", i.get("git_sha")),
        ("command", " ".join(map(str, i.get("command") or [])) or None),
    ]
    info = table(["", ""], ([e(k), e(v)] for k, v in rows if v not in (None, "")), "kv")
    yaml_block = f"<pre>{e(data.config_text)}</pre>" if data.config_text else note("config.yaml is missing from this run.")
    return f'<div class="cols"><div>{info}</div><div><h3>config.yaml</h3>{yaml_block}</div></div>'


def _data(data: RunData, hist_png: Path | None, manifest: pd.DataFrame | None) -> str:
    i = data.info
    classes = data.classes
    facts = [
        table(
            ["", ""],
            [
                ["dataset", e(i.get("dataset_dir") or "—")],
                ["manifest sha256", f"<code>{e((i.get('manifest_hash') or '—')[:16])}</code>"],
                ["classes", e(f"{len(classes)}: " + ", ".join(classes[:30]) + (" …" if len(classes) > 30 else ""))],
            ],
            "kv",
        )
    ]
    if manifest is None:
        return facts[0] + note("The dataset directory is not reachable from here, so its class histogram is not shown.")
    ok = manifest[manifest["status"] == "ok"]
    counts = ok.groupby("split").size()
    status = manifest.groupby("status").size()
    rows = [[e(sp or "unsplit"), e(f"{int(counts.get(sp, 0)):,}")] for sp in ("train", "val", "test", "") if counts.get(sp, 0)]
    rows += [[e(st), e(f"{int(n):,}")] for st, n in status.items() if st != "ok"]
    facts.append(table(["split / status", "images"], rows, "compact"))
    return f'<div class="cols">{"".join(f"<div>{f}</div>" for f in facts)}</div>' + img_tag(hist_png, "images per class")


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
    pairs = m.get("confused_pairs", [])
    pair_html = (
        table(["true", "predicted as", "count", "of class"], ([e(p["true"]), e(p["pred"]), e(p["count"]), e(fmt("accuracy", p["fraction"]))] for p in pairs), "compact")
        if pairs
        else note("No confusions: every image was classified correctly.")
    )
    if not class_lists_informative(m):
        return f'<div class="stack"><div><h3>Most confused pairs</h3>{pair_html}</div></div>'
    best = table(["class", "accuracy", "n"], ([e(r["class"]), e(fmt("accuracy", r["accuracy"])), e(r["support"])] for r in m.get("best_classes", [])), "compact")
    worst = table(["class", "accuracy", "n"], ([e(r["class"]), e(fmt("accuracy", r["accuracy"])), e(r["support"])] for r in m.get("worst_classes", [])), "compact")
    return (
        f'<div class="stack"><div class="cols"><div><h3>Best classes</h3>{best}</div><div><h3>Worst classes</h3>{worst}</div></div>'
        f"<div><h3>Most confused pairs</h3>{pair_html}</div></div>"
    )


def _bar(v: float | None) -> str:
    if v is None:
        return '<span class="muted">—</span>'
    pct = max(0.0, min(100.0, 100 * v))
    hue = int(round(120 * v))  # red -> green
    return (
        f'<div class="bar"><span style="width:{pct:.1f}%;background:hsl({hue} 70% 45%)"></span>'
        f"<em>{pct:.1f}%</em></div>"
    )


def _per_class(ev: EvalSet, png: Path | None) -> str:
    rows = []
    for r in sorted(ev.metrics.get("per_class", []), key=lambda r: (r.get("accuracy") is None, -(r.get("accuracy") or 0), r["class"])):
        rows.append([e(r["class"]), e(f"{r['support']:,}"), _bar(r.get("accuracy")), e(fmt("precision_", r.get("precision"))),
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
    report of a run without checkpoints still renders.
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
    from vislab.explain.overlays import explain_images, load_trained
    from vislab.runs import run_paths

    def unavailable(method: str, err: Exception) -> tuple[None, str]:
        return None, f"{_maps_name(method)} unavailable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"

    try:
        loaded = load_trained(data.run_dir)
    except Exception as err:  # noqa: BLE001 - optional sections: say why instead of failing the report
        return [unavailable(m, err) for m in methods]
    images, readable = [], []
    for p in chosen["path"]:
        try:
            images.append(load_image(p))
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
            tiles.append((r.overlay, f"{mark} true {row.label}\npred {r.class_name} ({r.prob:.2f})"))
        stem = "attention" if method == "attention" else "cams"
        png = plots.plot_cam_gallery(tiles, run_paths(data.run_dir).plot(f"{stem}_{ev.name}.png"),
                                     title=f"{method} on layer {results[0].layer}: highest-loss images first, then the most confident correct ones")
        out.append((png, ""))
    return out


def sections(data: RunData) -> list[tuple[str, str]]:
    """The page's sections in order: SECTIONS, plus the attention gallery after the CAMs for ABN runs."""
    out = list(SECTIONS)
    if data.is_abn:
        out.insert(out.index(("cams", "CAMs")) + 1, ABN_SECTION)
    return out


def _cam_lead(method: str) -> str:
    if method == "attention":
        return ("The ABN's own attention map M (one per image, computed in the forward pass, no gradients), "
                "stretched per image to its min-max; red = the features M amplified most (perception sees f·M + f).")
    if method == "eigencam":
        return "eigencam: the main component of the layer's activations (not specific to a class); red = strongest."
    return f"{method} heatmaps for the predicted class: red = regions that raised its score the most."


CSS = """
:root{--bg:#f5f6fa;--card:#fff;--ink:#111827;--muted:#6b7280;--line:#e5e7eb;--accent:#4f46e5;--accent2:#f97316;
--good:#16a34a;--warn:#d97706;--bad:#dc2626;--radius:14px}
*{box-sizing:border-box}
html{scroll-behavior:smooth;scroll-padding-top:64px}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.wrap{max-width:1180px;margin:0 auto;padding:0 24px}
header.hero{background:linear-gradient(120deg,#312e81 0%,#4f46e5 55%,#7c3aed 100%);color:#fff;padding:34px 0 28px}
.eyebrow{text-transform:uppercase;letter-spacing:.12em;font-size:11px;opacity:.75;font-weight:600}
h1{margin:4px 0 4px;font-size:28px;font-weight:700;letter-spacing:-.01em;word-break:break-all}
.sub{margin:0;opacity:.85}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px;margin-top:22px}
.kpi{background:rgba(255,255,255,.12);border:1px solid rgba(255,255,255,.18);border-radius:12px;padding:12px 14px;backdrop-filter:blur(4px)}
.kpi-label{font-size:11px;text-transform:uppercase;letter-spacing:.08em;opacity:.8}
.kpi-value{font-size:26px;font-weight:700;font-variant-numeric:tabular-nums;line-height:1.2;margin-top:2px}
.kpi-sub{font-size:12px;opacity:.75;min-height:1em}
nav.toc{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.92);backdrop-filter:blur(6px);border-bottom:1px solid var(--line)}
nav.toc .wrap{display:flex;gap:4px;overflow-x:auto;padding-top:8px;padding-bottom:8px}
nav.toc a{color:var(--muted);text-decoration:none;padding:6px 12px;border-radius:999px;font-weight:500;white-space:nowrap;font-size:13px}
nav.toc a:hover{background:#eef2ff;color:var(--accent)}
main{padding:24px 0 40px}
.card{background:var(--card);border:1px solid var(--line);border-radius:var(--radius);padding:22px 24px;margin:0 0 20px;box-shadow:0 1px 2px rgba(17,24,39,.04),0 4px 16px rgba(17,24,39,.04)}
h2{margin:0 0 14px;font-size:18px;letter-spacing:-.01em}
h3{margin:0 0 8px;font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.lead{margin:-8px 0 14px;color:var(--muted)}
.cols{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:24px;align-items:start}
.cols.wide-left{grid-template-columns:minmax(0,1.1fr) minmax(0,1fr)}
.stack{display:grid;gap:18px}.stack .cols{gap:16px}
@media (max-width:900px){.cols,.cols.wide-left{grid-template-columns:1fr}}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);vertical-align:middle}
th{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);font-weight:600;background:#fafafa}
table.kv td{word-break:break-word}
table.metrics td:not(:first-child),table.metrics th:not(:first-child){text-align:right}
table.metrics tbody tr:hover,table.per-class tbody tr:hover{background:#f9fafb}
table.kv thead{display:none}
table.kv td:first-child{color:var(--muted);width:34%;white-space:nowrap}
table.compact td,table.compact th{padding:5px 8px}
table.compact td:first-child{overflow-wrap:anywhere}.cols>div{min-width:0}
.scroll{max-height:560px;overflow:auto;border:1px solid var(--line);border-radius:10px}
.scroll th{position:sticky;top:0}
.bar{position:relative;background:#f3f4f6;border-radius:6px;height:20px;min-width:120px;overflow:hidden}
.bar span{position:absolute;left:0;top:0;bottom:0;border-radius:6px;opacity:.85}
.bar em{position:relative;font-style:normal;font-size:12px;padding-left:8px;line-height:20px;font-weight:600}
pre{background:#0f172a;color:#e2e8f0;padding:14px 16px;border-radius:10px;overflow:auto;max-height:480px;font:12px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;margin:0}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f3f4f6;padding:1px 5px;border-radius:5px}
img.plot{display:block;max-width:100%;height:auto;margin:8px auto 0;border-radius:8px}
.note{color:var(--muted);background:#f9fafb;border:1px dashed var(--line);border-radius:10px;padding:12px 14px;margin:0}
.muted{color:var(--muted)}
.messages{list-style:none;margin:0;padding:0;display:grid;gap:8px}
.msg{display:flex;gap:10px;align-items:baseline;padding:10px 14px;border-radius:10px;border:1px solid var(--line);flex-wrap:wrap}
.msg.warn{background:#fffbeb;border-color:#fde68a}.msg.error{background:#fef2f2;border-color:#fecaca}.msg.info{background:#eff6ff;border-color:#bfdbfe}
.msg-text{flex:1;min-width:240px}.where{color:var(--muted);font-size:12px}
.badge{font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.06em;padding:2px 8px;border-radius:999px;color:#fff}
.badge.warn{background:var(--warn)}.badge.error{background:var(--bad)}.badge.info{background:#2563eb}
.ok-banner{background:#f0fdf4;border:1px solid #bbf7d0;color:#166534;padding:12px 14px;border-radius:10px;font-weight:500}
details summary{cursor:pointer;color:var(--accent);margin:12px 0 6px;font-weight:500}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 32px}
"""


def render(data: RunData, split: str | None = None, cams: bool = True, cam_method: str = "gradcam") -> str:
    """The report page as one HTML string (writes the plots into RUN_DIR/plots on the way)."""
    ev = data.primary_eval(split)
    made = plots.write_run_plots(data, split=ev.name if ev else None)
    manifest = plots.dataset_manifest(data)
    i, s = data.info, data.summary
    spec = i.get("data_spec") or {}
    size = "×".join(str(v) for v in (spec.get("input_size") or s.get("input_size") or [])[1:])
    subtitle = " · ".join(
        p for p in (data.model_label, f"{size} input" if size else "",
                    f"{len(data.classes)} classes" if data.classes else "", (i.get("created") or "")[:19].replace("T", " ")) if p
    )
    body: list[str] = []
    n_health = len(data.health)
    body.append(section("health", "Health checks", _health(data), f"{n_health} message(s) from training" if n_health else ""))
    metrics_body = f'<div class="cols wide-left"><div>{_metrics(data)}</div><div>{_lists(ev) if ev else ""}</div></div>'
    body.append(section("metrics", "Metrics", metrics_body, "One column per evaluated split." if data.evals else ""))
    body.append(section("curves", "Training curves", img_tag(made.get("curves"), "training curves") or note("metrics.csv is missing or empty."),
                        f"Best epoch {s['best_epoch'] + 1} of {s.get('epochs_completed', '?')}; stopped: {s.get('stopped_reason', '?')}."
                        if isinstance(s.get("best_epoch"), int) else ""))
    if ev is not None:
        body.append(section("confusion", "Confusion matrix", img_tag(made.get("confusion"), "confusion matrix") or note("No confusion matrix in metrics.json."),
                            f"Split '{ev.name}'; rows are true classes, normalised to 1."))
        body.append(section("per-class", "Per-class results", _per_class(ev, made.get("per_class")), "Sorted by accuracy; accuracy of a class is its recall."))
        items = plots.highest_loss_items(ev, 12)
        body.append(section("highest-loss", "Highest-loss images", _highest_loss(ev, made.get("highest_loss"), items),
                            "The images the model got most wrong: label noise, ambiguous classes or real failures."))
        methods = [cam_method] + (["attention"] if data.is_abn else [])
        galleries = cam_galleries(data, ev, methods) if cams else [(None, f"{_maps_name(m)} were not requested (--no-cams).") for m in methods]
        cam_png, why = galleries[0]
        body.append(section("cams", "Where the model looks", img_tag(cam_png, "class activation maps") or note(why),
                            _cam_lead(cam_method) if cam_png else ""))
        if data.is_abn:
            att_png, why = galleries[1]
            body.append(section("attention", "Attention branch maps", img_tag(att_png, "ABN attention maps") or note(why),
                                _cam_lead("attention") if att_png else ""))
    else:
        pending = [("confusion", "Confusion matrix"), ("per-class", "Per-class results"), ("highest-loss", "Highest-loss images"), ("cams", "Where the model looks")]
        for sid, title in pending + ([("attention", "Attention branch maps")] if data.is_abn else []):
            body.append(section(sid, title, note(f"No evaluation yet: run `vislab evaluate {data.run_dir}`.")))
    body.append(section("data", "Data", _data(data, made.get("class_histogram"), manifest)))
    body.append(section("config", "Run and configuration", _config(data)))

    from vislab import __version__

    nav = "".join(f'<a href="#{sid}">{e(label)}</a>' for sid, label in sections(data))
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(data.name)} · vislab report</title><style>{CSS}</style></head><body>"
        f'<header class="hero"><div class="wrap"><div class="eyebrow">vislab run report</div><h1>{e(data.name)}</h1>'
        f'<p class="sub">{e(subtitle)}</p>{_kpis(data, ev)}</div></header>'
        f'<nav class="toc"><div class="wrap">{nav}</div></nav>'
        f'<main class="wrap">{"".join(body)}</main>'
        f"<footer>{e(str(data.run_dir))} · written by vislab {e(__version__)} on {e(now)}</footer></body></html>\n"
    )


def write_report(run_dir: str | Path, split: str | None = None, cams: bool = True, cam_method: str = "gradcam", open_browser: bool = False) -> Path:
    """Write RUN_DIR/report.html (and RUN_DIR/plots/*.png) and return the page's path."""
    from vislab.runs import run_paths

    data = read_run(run_dir)
    page = render(data, split=split, cams=cams, cam_method=cam_method)
    out = run_paths(data.run_dir).report
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    if open_browser:
        import webbrowser

        webbrowser.open(out.resolve().as_uri())
    return out
