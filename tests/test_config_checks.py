"""Config mistakes caught at load, before a run folder is written, each as one line naming the
key (or the file) and the fix; and a local copy of a recipe winning over the packaged one."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from vislab.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def shown(*args: str) -> dict:
    """`vislab train ... --show-config` as a mapping (the run must succeed)."""
    res = invoke("train", *args, "--show-config")
    assert res.exit_code == 0, res.output
    return yaml.safe_load(res.stdout)


def refused(*args: str) -> str:
    """The one error line of `vislab train ... --show-config` that must fail."""
    res = invoke("train", *args, "--show-config")
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_an_edited_local_copy_of_a_recipe_wins_and_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke("configs", "copy", "digits-cnn").exit_code == 0
    copy = tmp_path / "digits-cnn.yaml"
    copy.write_text(copy.read_text().replace("lr: 0.003", "lr: 0.0123"))
    res = invoke("train", "digits-cnn", "--show-config")
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.stdout)["optim"]["lr"] == 0.0123
    assert res.stderr.strip() == "using ./digits-cnn.yaml (a local copy of the recipe digits-cnn)"
    copy.rename(tmp_path / "digits-cnn.yml")
    assert shown("digits-cnn")["optim"]["lr"] == 0.0123
    (tmp_path / "digits-cnn.yml").unlink()
    assert shown("digits-cnn")["optim"]["lr"] == 0.003  # no copy: the recipe, silently
    assert "digits-cnn" in invoke("configs").output


def test_model_kwargs_a_builder_never_reads_are_refused() -> None:
    import pytest

    from vislab.config import load_config
    from vislab.errors import VislabError
    from vislab.models.factory import create_model

    with pytest.raises(VislabError, match=r"^model\.kwargs\.totally_bogus: simple_cnn takes no model\.kwargs; its settings are model\.simple_cnn\.\*"):
        create_model(load_config("digits-cnn", ["model.kwargs.totally_bogus=1"]).model, 10)
    for key, instead in (("in_chans", "use model.in_chans"), ("drop_rate", "use model.drop_rate"), ("num_classes", "the classes come from the dataset")):
        cfg = load_config(None, ["model.name=test_resnet", f"model.kwargs.{key}=3"]).model
        with pytest.raises(VislabError, match=rf"^model\.kwargs\.{key}: vislab sets it itself; {instead}$"):
            create_model(cfg, 10, load_weights=False)


def test_true_or_false_is_not_a_number() -> None:
    assert refused("digits-cnn", "--set", "train.epochs=true") == "error: --set train.epochs=true: 'train.epochs' expects a number, not true/false (got true)"
    assert "'train.limit_train_batches' expects a number" in refused("digits-cnn", "--set", "train.limit_train_batches=true")
    assert shown("digits-cnn", "--set", "train.epochs=3")["train"]["epochs"] == 3
    assert shown("digits-cnn", "--set", "train.epochs='3'")["train"]["epochs"] == 3
    assert shown("digits-cnn", "--set", "model.pretrained=false")["model"]["pretrained"] is False


def test_values_that_would_fail_mid_training_are_refused_at_load() -> None:
    cases = {
        "train.monitor=val/accuracy": "'train.monitor' is not a metric task classify logs; did you mean val/acc? (got 'val/accuracy')",
        "train.early_stopping.monitor=val/lss": "'train.early_stopping.monitor' is not a metric task classify logs; did you mean val/loss?",
        "data.augment.scale=[1.1,0.9]": "'data.augment.scale' needs 0 < min <= max, as [min, max] (got [1.1, 0.9])",
        "train.limit_train_batches=1.5": "'train.limit_train_batches' must be a share in (0, 1] (a float)",
        "train.limit_train_batches=-1": "'train.limit_train_batches' must be a count of batches >= 1 (an int)",
        "model.in_chans=4": "'model.in_chans' must be 1 (grey) or 3 (RGB)",
        "model.in_chans=2": "'model.in_chans' must be 1 (grey) or 3 (RGB)",
    }
    for item, expected in cases.items():
        assert refused("digits-cnn", "--set", item).startswith(f"error: --set {item}: {expected}")
    line = refused("digits-cnn", "--set", "scheduler.name=plateau", "--set", "scheduler.monitor=val/lss")
    assert line.startswith("error: --set scheduler.monitor=val/lss: 'scheduler.monitor' is not a metric task classify logs; did you mean val/loss?")
    ok = shown("digits-cnn", "--set", "train.monitor=val/loss", "--set", "train.limit_train_batches=0.5", "--set", "data.augment.scale=[0.8,0.8]")
    assert ok["train"]["monitor"] == "val/loss" and ok["train"]["limit_train_batches"] == 0.5
    assert shown("digits-cnn", "--set", "train.monitor=epoch")["train"]["monitor"] == "epoch"


def test_file_encodings_and_yaml_errors_are_one_line_with_the_fix(tmp_path: Path) -> None:
    bad = {
        "latin.yaml": ("# caf\xe9\noptim:\n  lr: 0.1\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8"),
        "notepad.yaml": ("optim:\n  lr: 0.1\n".encode("utf-16"), "saved as UTF-16; save it as UTF-8"),
        "tab.yaml": (b"optim:\n\tlr: 0.1\n", "not valid YAML at line 2, column 1: found character '\\t' that cannot start any token (YAML indents with spaces, not tabs)"),
        "open.yaml": (b"optim: {lr: 0.1\n", "not valid YAML at line 2, column 1: expected ',' or '}'"),
    }
    for name, (data, expected) in bad.items():
        (tmp_path / name).write_bytes(data)
        assert refused(str(tmp_path / name)).startswith(f"error: {tmp_path / name}: {expected}")
    (tmp_path / "bom.yaml").write_bytes("\ufeff# café\noptim:\n  lr: 0.1\n".encode("utf-8"))
    assert shown(str(tmp_path / "bom.yaml"))["optim"]["lr"] == 0.1


def test_max_time_takes_seconds_and_is_checked_at_load(tmp_path: Path) -> None:
    cfg = tmp_path / "budget.yaml"
    cfg.write_text("train:\n  max_time: 90\n")
    assert shown(str(cfg))["train"]["max_time"] == "90"
    assert shown("digits-cnn", "--set", "train.max_time=90")["train"]["max_time"] == "90"
    cfg.write_text("train:\n  max_time: 5minutes\n")
    assert refused(str(cfg)).startswith(f"error: {cfg}: 'train.max_time' not a duration; use e.g. 5h, 90m")
    cfg.write_text("train:\n  max_time: 1:30\n")  # YAML 1.1 would read 90 (base 60); kept as text and refused
    assert refused(str(cfg)).startswith(f"error: {cfg}: 'train.max_time' h:mm or m:ss is ambiguous; write e.g. 1h30m or 1m30s")


def test_a_misspelt_section_suggests_the_key_inside_it_and_a_grid_says_run_grid(tmp_path: Path) -> None:
    """'model.simplecnn.layers' suggested model.simple_cnn.fc (the closest leaf to the section
    name); the library's load_config of a grid recipe suggested crops.grid."""
    import pytest

    from vislab.config import load_config
    from vislab.errors import VislabError

    for override, meant in [
        ("model.simplecnn.layers=2", "model.simple_cnn.layers"),
        ("trian.epochs=2", "train.epochs"),
        ("optim.lrr=0.1", "optim.lr"),
    ]:
        line = refused("digits-cnn", "--set", override)
        assert f"did you mean {meant}?" in line, line
    with pytest.raises(VislabError) as err:
        load_config("simple-cnn-grid")
    assert "is a grid of variants" in str(err.value) and "vislab grid" in str(err.value)


def test_attention_metrics_are_monitored_only_with_the_attention_branch() -> None:
    """val/att_acc was accepted at load without model.attention: abn, and Lightning found no
    such key after the first epoch."""
    line = refused("digits-cnn", "--set", "train.monitor=val/att_acc")
    assert "'train.monitor' is not a metric task classify logs" in line, line
    assert shown("digits-cnn", "--set", "train.monitor=val/att_acc", "--set", "model.attention=abn")["train"]["monitor"] == "val/att_acc"


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """YAML keeps the last of two blocks with one key: the first `optim:` (sgd, lr 0.5) was
    silently dropped and the run trained with adamw at 0.001."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("optim: {lr: 0.5, name: sgd}\ndata:\n  batch_size: 8\noptim: {weight_decay: 0.01}\n")
    assert refused(str(dup)) == (f"error: {dup}: line 4, column 1: key 'optim' written twice in one mapping (first on line 1); "
                                 "YAML would keep only the last, so merge them into one")
    dup.write_text("train:\n  epochs: 3\n  max_time: 5m\n  epochs: 4\n")
    assert "line 4, column 3: key 'epochs' written twice in one mapping (first on line 2)" in refused(str(dup))
    line = refused("digits-cnn", "--set", "model.kwargs={a: 1, a: 2}")
    assert line.startswith("error: --set value {a: 1, a: 2}: line 1, column 8: key 'a' written twice"), line
    merged = tmp_path / "merge.yaml"  # a YAML merge key is not a second key
    merged.write_text("optim: {<<: {lr: 0.5, name: sgd}, lr: 0.25}\n")
    optim = shown(str(merged))["optim"]
    assert (optim["lr"], optim["name"]) == (0.25, "sgd")


def test_aliases_that_expand_past_a_config_are_refused(tmp_path: Path) -> None:
    """Nested aliases (a YAML bomb: levels of ten uses each) exhausted memory; a few aliases
    are still fine."""
    lines = ["model:", "  kwargs:", "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    bomb = tmp_path / "lol.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert refused(str(bomb)) == f"error: {bomb}: line 4, column 14: aliases expand to more than 100000 values; write the values out"
    loop = tmp_path / "loop.yaml"
    loop.write_text("model:\n  kwargs: &k {again: *k}\n")
    assert "an alias refers to the value that holds it" in refused(str(loop))
    fine = tmp_path / "fine.yaml"
    fine.write_text("data:\n  augment:\n    scale: &s [0.8, 1.2]\n    random_resized_crop: *s\n")
    assert shown(str(fine))["data"]["augment"]["random_resized_crop"] == [0.8, 1.2]


def test_a_leading_zero_is_decimal_not_octal(tmp_path: Path) -> None:
    """YAML 1.1 reads 010 as octal 8: `epochs: 010` trained 8 epochs, `max_time: 010` was 8 s."""
    assert shown("digits-cnn", "--set", "train.epochs=010")["train"]["epochs"] == 10
    assert shown("digits-cnn", "--set", "train.max_time=010")["train"]["max_time"] == "10"
    cfg = tmp_path / "zeros.yaml"
    cfg.write_text("seed: -0_07\ntrain:\n  epochs: 0x10\n")  # an explicit hex prefix means hex
    assert refused(str(cfg)).startswith(f"error: {cfg}: 'seed' input should be greater than or equal to 0 (got -7)")
    cfg.write_text("seed: 0_07\ntrain:\n  epochs: 0x10\n")
    assert (shown(str(cfg))["seed"], shown(str(cfg))["train"]["epochs"]) == (7, 16)


def test_numbers_training_cannot_take_are_refused_at_load(tmp_path: Path) -> None:
    """seed -5 or 1e23 failed in Lightning's seed_everything, batch_size 1e20 mid-run (leaving
    a run folder), lr 1e400 (inf) trained nan; each is one line naming the key now."""
    cases = {
        "seed=-5": "'seed' input should be greater than or equal to 0 (got -5); allowed: int in [0, 4294967295]",
        "seed=4294967296": "'seed' input should be less than or equal to 4294967295",
        "seed=1e23": "'seed' ",
        "model.simple_cnn.init_seed=-1": "'model.simple_cnn.init_seed' input should be greater than or equal to 0",
        "data.batch_size=1e20": "'data.batch_size' ",
        "data.batch_size=2000000": "'data.batch_size' input should be less than or equal to 1000000",
        "data.num_workers=100000": "'data.num_workers' input should be less than or equal to 1024",
        "train.epochs=1000000000": "'train.epochs' input should be less than or equal to 1000000",
        "train.checkpoint_every_steps=100000000000000000000": "'train.checkpoint_every_steps' is too large: integers here are at most",
        "optim.lr=.inf": "'optim.lr' input should be a finite number (got inf)",
        "optim.lr=1e400": "'optim.lr' input should be a finite number (got inf)",
        "optim.weight_decay=.inf": "'optim.weight_decay' input should be a finite number",
        "train.early_stopping={min_delta: .nan}": "'train.early_stopping.min_delta' input should be a finite number (got nan)",
    }
    for item, expected in cases.items():
        line = refused("digits-cnn", "--set", item)
        assert line.startswith(f"error: --set {item}: {expected}"), line
    assert shown("digits-cnn", "--set", "seed=4294967295", "--set", "train.epochs=1000000")["seed"] == 4294967295
    from vislab.testing.synthetic import make_pattern_dataset

    data = make_pattern_dataset(tmp_path / "d", per_class=4, size=16)
    res = invoke("train", "digits-cnn", "--data", str(data), "--out", str(tmp_path / "run"), "--set", "data.batch_size=1e20")
    assert res.exit_code == 2 and res.output.startswith("error: --set data.batch_size=1e20: 'data.batch_size'"), res.output
    assert not (tmp_path / "run").exists()
