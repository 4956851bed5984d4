"""What a sweep refuses before its first trial: choices the config reads as one value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import dump_config
from vislab.testing.synthetic import make_pattern_dataset, tiny_config

CLASSES = ("horizontal", "vertical")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_pattern_dataset(tmp_path_factory.mktemp("patterns"), classes=CLASSES, per_class=10, size=16)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "base.yaml"
    path.write_text(dump_config(tiny_config(train={"epochs": 1})))
    return path


def write(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def sweep_cli(base: Path, space: Path, data: Path, out: Path, *more: str):
    args = ["sweep", str(base), "--space", str(space), "--data", str(data), "--out", str(out), "--trials", "2", "--pruner", "none", *more]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(
    "space, same",
    [
        ("optim.lr: [0.01, '0.01']", "'optim.lr': choices 0.01 and '0.01' are the same value to the config (0.01)"),
        ("optim.lr: {choices: ['1e-2', 0.02, 0.01]}", "'optim.lr': choices '1e-2' and 0.01 are the same value to the config (0.01)"),
        ("train.precision: [32, 32-true, '32']", "'train.precision': choices 32 and '32' are the same value to the config ('32')"),
    ],
)
def test_choices_the_config_reads_as_one_value_are_duplicates(dataset, base, tmp_path, space, same):
    """[0.01, "0.01"] were two choices to Optuna and one config: the sweep trained it twice."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text(space + "\n")
    out = tmp_path / "out"
    res = sweep_cli(base, space_file, dataset, out)
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and f"space.yaml: {same}; list each value once" in line
    assert not out.exists()
