"""One numbering of epochs for people: the terminal's lines count from 1, like the report."""

from __future__ import annotations

from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train


def test_freeze_messages_count_epochs_like_the_epoch_lines(tmp_path, capsys) -> None:
    data = make_pattern_dataset(tmp_path / "data", classes=("horizontal", "vertical"), per_class=6, size=16)
    cfg = tiny_config(model={"name": "resnet18"}, train={"epochs": 2, "freeze_backbone_epochs": 1})
    train(cfg, data, tmp_path / "run")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1", "epoch 1/2", "epoch 2", "epoch 2/2"], lines
    assert lines[0].endswith("backbone frozen") and lines[2].endswith("backbone unfrozen")
