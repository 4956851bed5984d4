"""`vislab.train` takes what `vislab train CONFIG` takes: a RunConfig, a YAML path or a
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


def test_the_python_api_takes_the_cli_option_names_and_help_lists_it(dataset: Path, tmp_path: Path) -> None:
    """README: each command with a function takes its options as keywords; a misspelt one is
    named with the closest (as a config key is), and help(vislab) lists the functions."""
    import subprocess
    import sys

    import vislab

    with pytest.raises(VislabError, match=r"^--format 'tflite': supported formats are onnx"):
        vislab.export_run(tmp_path / "no-run", format="tflite")  # the CLI's --format, checked first
    with pytest.raises(VislabError, match=r"^curate: unknown option 'min_sise'; did you mean min_size\?$"):
        vislab.curate(dataset, out=tmp_path / "ds", min_sise="8x8")
    with pytest.raises(VislabError, match=r"^run_sweep: unknown option 'trails'; did you mean trials\?$"):
        vislab.run_sweep("digits-cnn", dataset, tmp_path / "sweep", trails=1)

    base = tmp_path / "base.yaml"
    base.write_text(dump_config(tiny_config(train={"epochs": 1})))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"optim.lr": {"float": [3e-3, 3e-2], "log": True}}))
    result = vislab.run_sweep(base, dataset, tmp_path / "sweep", space=space, trials=1, pruner="none", seed=0)
    assert len(result.table) == 1 and result.table["state"][0] == "complete"
    assert vislab.SweepOptions(trials=1).trials == 1

    shown = subprocess.run(
        [sys.executable, "-c", "import pydoc, vislab; print(sorted(dir(vislab))); print(pydoc.render_doc(vislab, renderer=pydoc.plaintext))"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    functions = shown.split("\nFUNCTIONS\n")[1].split("\nDATA\n")[0]
    for name in ("curate", "load_config", "train", "evaluate", "predict", "export_run", "run_sweep"):
        assert f"\n    {name}(" in functions, name
        assert f"'{name}'" in shown.splitlines()[0] and f"    {name}(" in shown.split("FUNCTIONS")[0], name  # dir() and the docstring
    assert "class SweepOptions" in shown and "class VislabError" in shown
