"""One numbering of epochs for people: the terminal's lines and the progress bar count from 1,
like the report; the per-epoch results line prints with or without a bar."""

from __future__ import annotations

import json
import re

from vislab.display import format_rate
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train


def test_freeze_messages_count_epochs_like_the_epoch_lines(tmp_path, capsys) -> None:
    data = make_pattern_dataset(tmp_path / "data", classes=("horizontal", "vertical"), per_class=6, size=16)
    cfg = tiny_config(model={"name": "resnet18"}, train={"epochs": 2, "freeze_backbone_epochs": 1})
    train(cfg, data, tmp_path / "run")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1", "epoch 1/2", "epoch 2", "epoch 2/2"], lines
    assert lines[0].endswith("backbone frozen") and lines[2].endswith("backbone unfrozen")


def test_with_a_progress_bar_the_epoch_lines_still_print_and_all_count_from_1(tmp_path, capsys) -> None:
    data = make_pattern_dataset(tmp_path / "data", classes=("horizontal", "vertical"), per_class=12, size=16)
    run = train(tiny_config(train={"epochs": 2, "progress": "tqdm"}), data, tmp_path / "run")
    out = capsys.readouterr().out  # Lightning's tqdm bars write there too, ending their updates with \r
    lines = [ln.split("\r")[-1] for ln in out.splitlines() if ln.split("\r")[-1].startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"], out
    # Keras/Ultralytics-style results: train and val loss/acc, lr, time and images/s
    assert re.search(r"train loss [0-9.]+ acc [0-9.]+% \| val loss [0-9.]+ acc [0-9.]+% \| lr [0-9.e-]+ \| [0-9.]+s, [0-9.,]+ img/s$", lines[0])
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "Epoch 0" not in out  # the bar counts as the lines do
    summary = json.loads((run / "summary.json").read_text())
    final = next(ln.split("\r")[-1] for ln in out.splitlines() if ln.split("\r")[-1].startswith("stopped:"))
    assert f"at epoch {summary['best_epoch'] + 1}," in final
    assert final.endswith(f"{format_rate(summary['train_images_per_s'])} img/s")
