"""The report reads as people expect: top-k and best/worst tables only when they say
something, one images/s format, epochs counted from 1 on whole-epoch ticks."""

from __future__ import annotations

import json

import pytest

from vislab.report.html import write_report
from vislab.testing.rundirs import make_run_dir


def _report(tmp_path, name: str, classes: int, images_per_s: float = 800.0) -> str:
    run = make_run_dir(tmp_path, name=name, classes=[f"c{i:02d}" for i in range(classes)], n_test=6 * classes, dataset=False)
    summary = json.loads((run / "summary.json").read_text())
    summary["train_images_per_s"] = images_per_s
    (run / "summary.json").write_text(json.dumps(summary))
    return write_report(run, cams=False).read_text()


def test_top_k_and_class_lists_only_when_they_say_something(tmp_path) -> None:
    few = _report(tmp_path, "few", 5)  # top-5 of 5 classes is 100% by definition
    assert "Top-5 accuracy" not in few and "top-5" not in few
    assert "Best classes" not in few and "Worst classes" not in few and "Most confused pairs" in few
    many = _report(tmp_path, "many", 11)  # 5 best and 5 worst of 11: different classes
    assert "Top-5 accuracy" in many and "top-5 " in many
    assert "Best classes" in many and "Worst classes" in many


@pytest.mark.parametrize("rate, shown", [(11.94, "11.9 img/s"), (1234.4, "1,234 img/s"), (0.834, "0.83 img/s")])
def test_images_per_s_reads_as_people_write_it(tmp_path, rate, shown) -> None:
    assert shown in _report(tmp_path, "speed", 3, rate)


@pytest.mark.parametrize("epochs", [1, 2, 3, 12, 60])
def test_curves_have_whole_epoch_ticks_from_one(tmp_path, monkeypatch, epochs) -> None:
    import numpy as np
    import pandas as pd

    from vislab.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    hist = pd.DataFrame({"epoch": np.arange(epochs, dtype=float), "train/loss": np.linspace(1, 0.5, epochs),
                         "val/acc": np.linspace(0.2, 0.9, epochs), "lr": np.full(epochs, 1e-3)})
    plots.plot_curves(hist, tmp_path / "c.png")
    for ax in figures[0].axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() and 1 <= t <= epochs for t in ticks), ticks
        assert lo < 1 and hi > epochs


def test_the_lr_curve_shows_the_lr_of_each_epochs_first_and_last_step(tmp_path, monkeypatch) -> None:
    import pandas as pd

    from vislab.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    hist = pd.DataFrame({"epoch": [0, 1, 2], "train/loss": [1.0, 0.8, 0.7], "lr": [0.5, 0.9, 0.4],
                         "lr/first": [0.2, 1.0, 0.7], "lr/last": [0.8, 0.8, 0.1]})  # a warm-up, then a decay
    plots.plot_curves(hist, tmp_path / "c.png")
    ax = figures[0].axes[-1]  # the learning-rate panel
    assert not {"lr/first", "lr/last"} & {line.get_label() for line in ax.get_lines()}
    shape = next(line for line in ax.get_lines() if len(line.get_xdata()) == 6)
    assert list(shape.get_xdata()) == [0.5, 1.5, 1.5, 2.5, 2.5, 3.5]  # epochs drawn from 1, edge to edge
    assert list(shape.get_ydata()) == [0.2, 0.8, 1.0, 0.8, 0.7, 0.1]


def test_a_log_scale_lr_axis_is_labelled_in_plain_numbers(tmp_path, monkeypatch) -> None:
    import pandas as pd

    from vislab.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    hist = pd.DataFrame({"epoch": range(4), "train/loss": [1.0, 0.8, 0.7, 0.6], "lr": [1e-2, 1e-3, 1e-4, 1e-5]})
    plots.plot_curves(hist, tmp_path / "c.png")
    ax = figures[0].axes[-1]
    figures[0].canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ax.get_yscale() == "log" and labels and not any("$" in t for t in labels), labels
