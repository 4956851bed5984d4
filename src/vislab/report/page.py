"""The report page's building blocks, and the sections every task's report has.

`vislab report` (report/html.py) draws one page per run; its cards come from the run's task
(`Task.report_sections`), which draws its own with the helpers here (escaping, tables,
embedded images) and places the generic ones where it wants them through `Page`: health
messages, training curves, the dataset and the run's configuration. Every piece of text
from the run is HTML-escaped here.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from vislab.display import format_rate
from vislab.report.rundata import EvalSet, RunData
from vislab.tasks.registry import ReportSection


def e(value: Any) -> str:
    """Escape any value for HTML text or attribute."""
    return html.escape("" if value is None else str(value), quote=True)


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


class Page:
    """What a task's report is drawn with: the run, the eval set the page details (`ev`, or
    None before any evaluation), the generic plots already written (`plots`: curves, class
    histogram), the dataset's manifest when reachable, and the command's options (`cams`,
    `cam_method`). Its methods are the generic sections and cards."""

    def __init__(
        self,
        data: RunData,
        ev: EvalSet | None,
        plots: dict[str, Path],
        manifest: pd.DataFrame | None,
        cams: bool = True,
        cam_method: str = "gradcam",
    ) -> None:
        self.data = data
        self.ev = ev
        self.plots = plots
        self.manifest = manifest
        self.cams = cams
        self.cam_method = cam_method

    def health(self) -> ReportSection:
        n = len(self.data.health)
        return ReportSection("health", "Health", "Health checks", _health_body(self.data), f"{n} message(s) from training" if n else "")

    def curves(self) -> ReportSection:
        s = self.data.summary
        how = " kept (train.monitor: epoch)" if self.data.kept == "last" else ""
        lead = (f"{self.data.kept.capitalize()} epoch {s['best_epoch'] + 1}{how} of {s.get('epochs_completed', '?')}; stopped: {s.get('stopped_reason', '?')}."
                if isinstance(s.get("best_epoch"), int) else "")
        body = img_tag(self.plots.get("curves"), "training curves") or note("metrics.csv is missing or empty.")
        return ReportSection("curves", "Curves", "Training curves", body, lead)

    def dataset(self) -> ReportSection:
        return ReportSection("data", "Data", "Data", _data_body(self.data, self.plots.get("class_histogram"), self.manifest))

    def config(self) -> ReportSection:
        return ReportSection("config", "Config", "Run and configuration", _config_body(self.data))

    def not_evaluated(self, sid: str, nav: str, title: str) -> ReportSection:
        """A card that needs an evaluation the run does not have yet."""
        return ReportSection(sid, nav, title, note(f"No evaluation yet: run `vislab evaluate {self.data.run_dir}`."))

    def training_time(self) -> tuple[str, str, str]:
        """The KPI card of the training time and speed."""
        s = self.data.summary
        rate = format_rate(s.get("train_images_per_s"))
        return ("training time", duration(s.get("wall_time_s")), f"{rate} img/s" if rate else "")


def kpi_cards(cards: Sequence[tuple[str, str, str]]) -> str:
    """The headline cards: (label, value, small print) each."""
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="kpi-label">{e(a)}</div><div class="kpi-value">{e(b)}</div><div class="kpi-sub">{e(c)}</div></div>'
        for a, b, c in cards
    ) + "</div>"


def _health_body(data: RunData) -> str:
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


def _config_body(data: RunData) -> str:
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


def _data_body(data: RunData, hist_png: Path | None, manifest: pd.DataFrame | None) -> str:
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
