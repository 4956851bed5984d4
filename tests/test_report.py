"""The HTML report of a (synthetic) run: every section, self-contained, escaped, plots written."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from vislab.cli import app
from vislab.report.classify import SECTIONS
from vislab.report.html import write_report
from vislab.testing.processes import vislab_with_read_only
from vislab.testing.rundirs import make_run_dir

HOSTILE = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    health = [
        {"level": "warn", "code": "val_loss_rising", "message": HOSTILE, "epoch": 3, "step": None},
        {"level": "error", "code": "nan_loss", "message": "loss became NaN", "epoch": 4, "step": 120},
    ]
    run = make_run_dir(root, name="flowers-resnet", health=health, checkpoint=True, n_test=30)
    page = write_report(run)
    return run, page, page.read_text(encoding="utf-8")


def test_all_sections_present(full_report) -> None:
    run, page, text = full_report
    assert page == run / "report.html"
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}"' in text, sid
        assert f'href="#{sid}"' in text  # in the navigation bar
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    assert f"{100 * metrics['accuracy']:.1f}%" in text  # the headline number is the evaluated one
    assert "Global Average Precision" in text and "Most confused pairs" in text
    assert "task: classify" in text  # config.yaml is shown


def test_self_contained(full_report) -> None:
    _, _, text = full_report
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<link" not in text.lower() and "@import" not in text
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(srcs) >= 6  # curves, histogram, confusion, per-class, highest loss, CAMs
    assert all(s.startswith("data:image/png;base64,") for s in srcs)


def test_text_is_escaped(full_report) -> None:
    _, _, text = full_report
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text
    assert "loss became NaN" in text


def test_health_epochs_and_steps_count_from_one(full_report) -> None:
    _, _, text = full_report  # health.json holds epochs 3 and 4 and step 120, counted from 0
    where = re.findall(r'<span class="where">([^<]*)</span>', text)
    assert where == ["epoch 4", "epoch 5 · step 121"]


def test_plots_written(full_report) -> None:
    run, _, text = full_report
    for name in ("curves", "class_histogram", "confusion_test", "per_class_test", "highest_loss_test", "cams_test"):
        png = run / "plots" / f"{name}.png"
        assert png.is_file(), name
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 100
    cams = text[text.index('<section id="cams"') :]
    cams = cams[: cams.index("</section>")]
    assert "<img" in cams and "CAMs unavailable" not in cams


def test_report_without_eval_checkpoint_or_dataset(tmp_path) -> None:
    run = make_run_dir(tmp_path, name="bare", dataset=False, health=[])
    shutil.rmtree(run / "eval")
    (run / "metrics.csv").unlink()
    text = write_report(run).read_text()
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}"' in text
    assert "No evaluation yet" in text and "vislab evaluate" in text
    assert "No health warnings" in text
    assert "not reachable" in text  # dataset histogram explains its absence


def test_the_report_says_which_classes_mca_and_the_macro_figures_average(tmp_path) -> None:
    import numpy as np

    from vislab.metrics.classification import classification_report

    run = make_run_dir(tmp_path, name="sub", dataset=False)
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])  # the set lacks class 2, the model predicts it
    probs = np.full((4, 3), 0.2, dtype=np.float32)
    probs[np.arange(4), pred] = 0.6
    (run / "eval" / "test" / "metrics.json").write_text(json.dumps(classification_report(y, probs, ["cat", "dog", "fox"])))
    text = write_report(run, cams=False).read_text()
    metrics = text[text.index('<section id="metrics"'):]
    metrics = metrics[: metrics.index("</section>")]
    assert re.search(r"Mean class accuracy \(mCA\)</td><td[^>]*>75\.0%", metrics)
    assert re.search(r"Recall \(macro\)</td><td[^>]*>50\.0%", metrics)
    assert re.search(r"Classes in mCA \(with images\)</td><td[^>]*>2<", metrics)
    assert re.search(r"Classes in macro averages \(true or predicted\)</td><td[^>]*>3<", metrics)
    assert "mCA averages the classes with images; macro precision, recall and F1" in metrics
    per_class = text[text.index('<section id="per-class"'):]
    assert "a class only predicted counting with recall 0" in per_class[: per_class.index("</section>")]


def test_cams_unavailable_is_explained(tmp_path) -> None:
    run = make_run_dir(tmp_path, name="nockpt")  # no checkpoint
    text = write_report(run).read_text()
    cams = text[text.index('<section id="cams"') :]
    assert "CAMs unavailable" in cams[: cams.index("</section>")]
    assert "checkpoint" in cams[: cams.index("</section>")]


def test_cli_report(tmp_path) -> None:
    run = make_run_dir(tmp_path, name="cli")
    res = CliRunner().invoke(app, ["report", str(run), "--no-cams"])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output and (run / "report.html").is_file()
    assert "CAMs were not requested" in (run / "report.html").read_text()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such run directory" in res.output
    res = CliRunner().invoke(app, ["report", str(run), "--split", "val", "--no-cams"])
    assert res.exit_code == 2 and "vislab evaluate" in res.output


def test_cli_report_prints_a_bracketed_run_path_as_written(tmp_path) -> None:
    run = make_run_dir(tmp_path / "runs", name="exp [final]")
    res = CliRunner().invoke(app, ["report", str(run), "--no-cams"])
    assert res.exit_code == 0, res.output
    assert f"report: {run / 'report.html'}\n" in res.output  # rich took '[final]' for a style: 'exp /report.html'


def test_cli_report_refuses_an_unknown_cam_method_up_front(tmp_path) -> None:
    run = make_run_dir(tmp_path, name="cams", checkpoint=True)
    res = CliRunner().invoke(app, ["report", str(run), "--method", "bogus"])
    assert res.exit_code == 2, res.output
    assert "--method 'bogus': unknown method; use one of gradcam, gradcam++" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (run / "report.html").exists()


def test_report_on_a_read_only_run_is_one_line(tmp_path) -> None:
    run = make_run_dir(tmp_path, name="ro")
    said = vislab_with_read_only(run, "report", run, "--no-cams")
    if said is None:
        pytest.skip("needs util-linux unshare and user namespaces to make a folder read-only")
    assert f"{run / 'plots'}" in said and "cannot write (Read-only file system)" in said


def test_confusion_plot_scales_to_100_classes(tmp_path) -> None:
    import numpy as np

    from vislab.report.plots import MAX_TICK_LABELS, confusion_order, label_step, plot_confusion

    rng = np.random.default_rng(0)
    n = 100
    cm = rng.integers(0, 3, (n, n))
    cm[np.arange(n), np.arange(n)] += rng.integers(0, 60, n)
    order = confusion_order(cm, [str(i) for i in range(n)])
    acc = np.diag(cm) / cm.sum(1)
    assert np.all(np.diff(acc[order]) <= 1e-12)  # best class first
    assert list(confusion_order(cm[:10, :10], [str(i) for i in range(10)])) == list(range(10))
    assert len(range(0, n, label_step(n))) <= MAX_TICK_LABELS
    png = plot_confusion(cm, [f"class_{i:03d}" for i in range(n)], tmp_path / "cm.png")
    with Image.open(png) as im:
        assert 1000 < im.width < 2500  # readable, not a poster


def test_history_merges_logger_rows(tmp_path) -> None:
    from vislab.report.plots import plot_curves
    from vislab.report.rundata import read_history

    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,val/loss,val/acc,lr\n0,10,1.0,,,0.1\n0,10,,0.9,0.5,\n1,20,0.8,,,0.05\n1,20,,0.7,0.6,\n")
    hist = read_history(csv)
    assert list(hist["epoch"]) == [0, 1] and list(hist["val/acc"]) == [0.5, 0.6] and list(hist["train/loss"]) == [1.0, 0.8]
    assert plot_curves(hist, tmp_path / "c.png").is_file()


def test_report_survives_images_broken_after_evaluation(tmp_path):
    """Thumbnails and CAM galleries use the one robust decode: a test image that now fails in
    Pillow with SyntaxError or a decompression bomb leaves a blank tile, not a traceback."""
    import pandas as pd

    from vislab.testing.images import write_bad_ztxt_png, write_huge_header_png

    run = make_run_dir(tmp_path, checkpoint=True, n_test=12)
    paths = pd.read_csv(run / "eval" / "test" / "predictions.csv")["path"].unique().tolist()
    write_bad_ztxt_png(paths[0])
    write_huge_header_png(paths[1])
    page = write_report(run)
    assert page.is_file() and (run / "plots" / "highest_loss_test.png").is_file()
    assert (run / "plots" / "cams_test.png").is_file()


def test_report_refuses_a_plots_folder_linked_out_of_the_run(tmp_path) -> None:
    """A run folder received from someone else, its plots/ a link to another folder: report
    overwrote curves.png and confusion_test.png there."""
    run = make_run_dir(tmp_path, name="received")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("curves.png", "confusion_test.png"):
        (elsewhere / name).write_text("a user's file")
    shutil.rmtree(run / "plots", ignore_errors=True)
    (run / "plots").symlink_to(elsewhere)
    res = CliRunner().invoke(app, ["report", str(run), "--no-cams"])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "through the symbolic link" in res.output and "plots" in res.output
    assert all((elsewhere / n).read_text() == "a user's file" for n in ("curves.png", "confusion_test.png"))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["confusion_test.png", "curves.png"]
    assert not (run / "report.html").exists()


def test_report_never_writes_through_a_link_at_a_temporary_name(tmp_path) -> None:
    """report.html.tmp (the old fixed name) or `.report.html.tmpPID` (the atomic writers'
    name) planted as a link to a user's file: the file got the page, report.html the link."""
    import os

    run = make_run_dir(tmp_path, name="received")
    victim = tmp_path / "notes.txt"
    victim.write_text("a user's file")
    (run / "report.html.tmp").symlink_to(victim)
    (run / f".report.html.tmp{os.getpid()}").symlink_to(victim)  # CliRunner runs in this process
    res = CliRunner().invoke(app, ["report", str(run), "--no-cams"])
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "a user's file"
    page = run / "report.html"
    assert not page.is_symlink() and page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_the_cam_gallery_says_which_maps_are_empty(tmp_path) -> None:
    """explain notes a Grad-CAM map that is zero everywhere; the report's CAM gallery drew such
    overlays (the image with no region) without a word. Now their tiles say 'map empty' and a
    note under the gallery names the first, counts the others and says which methods to try."""
    from vislab.testing.rundirs import blind_cams

    run = make_run_dir(tmp_path, name="blind", checkpoint=True)
    blind_cams(run)

    def cams_section(method: str) -> str:
        text = write_report(run, cam_method=method).read_text()
        section = text[text.index('<section id="cams"') :]
        return section[: section.index("</section>")]

    cams = cams_section("gradcam")
    assert "<img" in cams and "is zero everywhere at layer features.6, so its overlay shows no region" in cams
    assert re.search(r"Note: the gradcam map of \S+\.png \(\w+\) and 7 more is zero everywhere", cams), cams[-600:]
    assert "try --method gradcam++ or --method eigencam, with vislab report or vislab explain." in cams
    assert "zero everywhere" not in cams_section("eigencam")


def test_nonfinite_outputs_are_said_by_evaluate_and_under_the_title(tmp_path) -> None:
    """A diverged classifier's NaN outputs were counted in metrics.json only: evaluate and the
    page said nothing, so a run scored at the rate of class 0 looked merely poor."""
    from vislab.tasks import get_task

    run = make_run_dir(tmp_path, name="diverged", n_test=8)
    mfile = run / "eval/test/metrics.json"
    metrics = json.loads(mfile.read_text())
    metrics["nonfinite_predictions"] = 3
    mfile.write_text(json.dumps(metrics))
    line = get_task("classify").evaluation_notes(metrics)
    assert line and line[0].startswith("note: 3 of ") and "non-finite" in line[0]
    text = write_report(run, cams=False).read_text(encoding="utf-8")
    hero = text.split('<nav class="toc">')[0]
    assert "3 of " in hero and "non-finite (NaN or infinite) model outputs" in hero
    metrics["nonfinite_predictions"] = 0
    mfile.write_text(json.dumps(metrics))
    assert "non-finite" not in write_report(run, cams=False).read_text(encoding="utf-8")
