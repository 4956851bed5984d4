"""`vislab report`: one self-contained HTML page per run.

The page answers the questions asked after training (how good, where it fails, looking at
what, anything wrong) from the run directory alone. Images are embedded as base64 PNGs and
the CSS is inline, so the file opens anywhere with no network; every piece of text from
the run is HTML-escaped. The headline cards and the sections (with stable ids, for links
and tests) are the run's task's (`Task.kpis`, `Task.report_sections`; classification's are
in report/classify.py); the frame, the generic sections and the figures every run has
(training curves, class histogram) are drawn here and in report/page.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from vislab.report import plots
from vislab.report.page import CSS, Page, e, kpi_cards, note, section
from vislab.report.rundata import RunData, read_run


def render(data: RunData, split: str | None = None, cams: bool = True, cam_method: str = "gradcam") -> str:
    """The report page as one HTML string (writes the plots into RUN_DIR/plots on the way)."""
    from vislab import __version__
    from vislab.tasks import get_task

    task = get_task(data.task)
    ev = data.primary_eval(split)
    made = plots.write_run_plots(data, panels=task.curve_panels)
    page = Page(data, ev, made, plots.dataset_manifest(data), cams=cams, cam_method=cam_method)
    i, s = data.info, data.summary
    spec = i.get("data_spec") or {}
    size = "×".join(str(v) for v in (spec.get("input_size") or s.get("input_size") or [])[1:])
    subtitle = " · ".join(
        p for p in (data.model_label, f"{size} input" if size else "",
                    f"{len(data.classes)} classes" if data.classes else "", (i.get("created") or "")[:19].replace("T", " ")) if p
    )
    stale = data.stale_eval(ev)
    warnings = ([f"warning: {stale}"] if stale else []) + (task.evaluation_notes(ev.metrics) if ev else [])
    sections = task.report_sections(data, page)
    body = "".join(section(sec.id, sec.title, sec.body, sec.lead) for sec in sections)
    nav = "".join(f'<a href="#{sec.id}">{e(sec.nav)}</a>' for sec in sections)
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(data.name)} · vislab report</title><style>{CSS}</style></head><body>"
        f'<header class="hero"><div class="wrap"><div class="eyebrow">vislab run report</div><h1>{e(data.name)}</h1>'
        f'<p class="sub">{e(subtitle)}</p>{"".join(note(w) for w in warnings)}{kpi_cards(task.kpis(data, page))}</div></header>'
        f'<nav class="toc"><div class="wrap">{nav}</div></nav>'
        f'<main class="wrap">{body}</main>'
        f"<footer>{e(str(data.run_dir))} · written by vislab {e(__version__)} on {e(now)}</footer></body></html>\n"
    )


def write_report(
    run_dir: str | Path, split: str | None = None, cams: bool = True, cam_method: str = "gradcam", open_browser: bool = False,
    allow_running: bool = False,
) -> Path:
    """Write RUN_DIR/report.html (and RUN_DIR/plots/*.png) and return the page's path. A
    wrong `cam_method` is refused first (else it showed only inside the page). A run still
    training is refused, since its curves, summary and best.ckpt are not final yet, unless
    `allow_running` (then said on stderr)."""
    from vislab.explain.cam import check_cam_method
    from vislab.fsguard import inside, write_file
    from vislab.runs import REPORT_NAME, check_not_training

    check_cam_method(cam_method)
    check_not_training(run_dir, allow_running, "report")
    data = read_run(run_dir)
    out = inside(data.run_dir, REPORT_NAME)  # refused before any plot is drawn
    stale = data.stale_eval(data.primary_eval(split))
    if stale:
        import sys

        print(f"report: warning: {stale}", file=sys.stderr, flush=True)
    page = render(data, split=split, cams=cams, cam_method=cam_method)
    try:
        write_file(out, page)
    except OSError as err:
        raise plots.cannot_write(out, err) from None
    if open_browser:
        import webbrowser

        webbrowser.open(out.resolve().as_uri())
    return out
