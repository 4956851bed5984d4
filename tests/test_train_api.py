"""`vislab.train` takes what `vislab train --config` takes: a RunConfig, a YAML path or a
packaged recipe name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vislab.config import dump_config
from vislab.errors import VislabError
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_pattern_dataset(tmp_path_factory.mktemp("train_api") / "data", per_class=10, size=16)


def test_train_takes_a_recipe_name(dataset: Path, tmp_path: Path) -> None:
    run = train("digits-cnn", dataset, tmp_path / "run", epochs=1)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["simple_cnn"]["filters"] == 32 and saved["train"]["epochs"] == 1


def test_train_takes_a_yaml_path_as_str_or_path(dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_config(tiny_config(train={"epochs": 1}, seed=7)))
    assert yaml.safe_load((train(str(path), dataset, tmp_path / "a") / "config.yaml").read_text())["seed"] == 7
    assert yaml.safe_load((train(path, dataset, tmp_path / "b") / "config.yaml").read_text())["seed"] == 7
    with pytest.raises(VislabError):
        train("no-such-recipe", dataset, tmp_path / "c")
    assert not (tmp_path / "c").exists()
