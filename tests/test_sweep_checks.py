"""What a sweep refuses before its first trial, and which trial failures end it: choices the
config reads as one value, keys every trial must share, a dataset no trial can train on
(checked once, not failed trial after trial), and a dataset problem found while training
(the sweep stops at the first trial), while a failure of one trial's own values is recorded
and the sweep goes on."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import dump_config
from vislab.errors import VislabError
from vislab.sweep.study import SweepOptions, resolve, run_sweep
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


@pytest.mark.parametrize(
    "space, key",
    [
        ({"task": ["classify", "crops"]}, "task"),
        ({"data.val_fraction": [0.2, 0.4]}, "data.val_fraction"),
        ({"train.limit_val_batches": [1, 2]}, "train.limit_val_batches"),
        ({"seed": [0, 1]}, "seed"),  # a lucky seed, and without a val split a lucky validation set
        ({"seed": {"int": [0, 9]}}, "seed"),
        ({"model.simple_cnn.init_seed": [1, 2]}, "model.simple_cnn.init_seed"),
        ({" task": ["classify", "crops"]}, "task"),  # the key as the override reads it
        # a whole section as a choice (merged into the base's train): the second sets train.monitor
        ({"train": [{"epochs": 1, "devices": 1}, {"epochs": 1, "devices": 1, "monitor": "val/acc", "monitor_mode": "max"}]}, "train.monitor"),
    ],
)
def test_keys_every_trial_must_share_cannot_be_swept(dataset, base, tmp_path, space, key):
    """A task, validation set or monitored metric that varies makes trials incomparable."""
    space_file = write(tmp_path / "space.yaml", space)
    out = tmp_path / "out"
    res = sweep_cli(base, space_file, dataset, out, "--set", "train.monitor=val/loss", "--set", "train.monitor_mode=min")
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and "space.yaml" in line and f"'{key}' cannot be swept" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "space, key",
    [
        ({"crops.eval_seed": [0, 1]}, "crops.eval_seed"),
        ({"crops.eval_crops_per_image": {"int": [1, 3]}}, "crops.eval_crops_per_image"),
        ({"crops.stress.vignette": [0.0, 0.4]}, "crops.stress.vignette"),  # a key under a fixed one
        ({"crops": [{"eval_seed": 0}, {"eval_seed": 1}]}, "crops.eval_seed"),  # a section choice that changes one
    ],
)
def test_a_tasks_keys_of_its_validation_samples_cannot_be_swept(tmp_path, space, key):
    """The crops task's evaluation set is drawn from crops.eval_seed (and made with
    eval_crops_per_image and stress): a sweep could pick the trial with the easiest one."""
    from vislab.testing.lens import tiny_crops_run

    base = tmp_path / "crops.yaml"
    base.write_text(dump_config(tiny_crops_run()))
    with pytest.raises(VislabError) as err:
        resolve(base, SweepOptions(space=write(tmp_path / "space.yaml", space)))
    line = str(err.value)
    assert len(line.splitlines()) == 1 and "space.yaml" in line and f"'{key}' cannot be swept" in line
    assert "changes the validation samples every trial is compared on" in line


@pytest.mark.parametrize("space", [{"train.devices": [1, 2]}, {"train.strategy": ["auto", "ddp"]}, {"train.num_nodes": [1, 2]}])
def test_a_trials_device_setup_cannot_be_swept(base, tmp_path, space):
    """Trials train in the worker's process on its one device; a trial with two would start
    DDP inside the sweep (checked as the sweep resolves: no trial is run on old code here)."""
    key = next(iter(space))
    with pytest.raises(VislabError, match=rf"space.yaml: '{key}' cannot be swept: .*one worker per GPU"):
        resolve(base, SweepOptions(space=write(tmp_path / "space.yaml", space)))


def test_a_one_class_dataset_fails_once_before_any_trial(base, tmp_path):
    """Every trial failed alike ('1 usable class(es)'), three in a row before the sweep stopped."""
    one = make_pattern_dataset(tmp_path / "one", classes=("horizontal",), per_class=10, size=16)
    space = write(tmp_path / "space.yaml", {"optim.lr": [0.01, 0.02]})
    out = tmp_path / "out"
    res = sweep_cli(base, space, one, out, "--trials", "5")
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1, res.output
    assert line.removeprefix("error: ").startswith(f"{one}: only one usable class ('horizontal'), and classification needs at least 2") and "curate" in line
    assert "no trial can train on it" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "base_model, space, expected",
    [
        ("yolov3_tiny", {"optim.lr": [0.01, 0.02]}, "base.yaml: model.name: 'yolov3_tiny' is a detect model; task classify trains classify models"),
        ("simple_cnn", {"model.name": ["simple_cnn", "yolov3_tiny"]}, "space.yaml: model.name='yolov3_tiny': model.name: 'yolov3_tiny' is a detect model"),
    ],
)
def test_a_model_the_task_cannot_train_fails_before_any_trial(dataset, tmp_path, base_model, space, expected):
    """Another task's model failed each trial that had it (every trial, for the base's model)."""
    base = tmp_path / "base.yaml"
    base.write_text(dump_config(tiny_config(model={"name": base_model}, train={"epochs": 1})))
    out = tmp_path / "out"
    res = sweep_cli(base, write(tmp_path / "space.yaml", space), dataset, out, "--trials", "3")
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and expected in res.output
    assert not out.exists()


def test_a_dataset_problem_found_in_a_trial_stops_the_sweep_there(base, tmp_path):
    """Images deleted since curation fail every trial alike: one failed trial, then one line."""
    data = make_pattern_dataset(tmp_path / "gone", classes=CLASSES, per_class=10, size=16)
    for png in sorted((data / "images").rglob("*.png"))[::2]:
        png.unlink()
    space = write(tmp_path / "space.yaml", {"optim.lr": [0.01, 0.02]})
    out = tmp_path / "out"
    with pytest.raises(VislabError) as err:
        run_sweep(base, data, out, SweepOptions(space=space, trials=4, pruner="none"))
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("trial 0 failed on the dataset, which no trial's values change; the sweep stopped:")
    assert "cannot be read" in message and "re-curate" in message
    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.get_trials()] == ["FAIL"]
    assert (out / "results.csv").read_text().count("\n") == 2  # the header and the failed trial


def test_a_failure_of_one_trials_values_is_recorded_and_the_sweep_goes_on(dataset, base, tmp_path):
    """A bad value of one trial (a class-weight list of the wrong length) fails that trial only."""
    space = write(tmp_path / "space.yaml", {"train.class_weights": ["balanced", [1.0, 2.0, 3.0]]})
    out = tmp_path / "out"
    result = run_sweep(base, dataset, out, SweepOptions(space=space, sampler="grid", pruner="none"))
    table = result.table.set_index("state")
    assert sorted(table.index) == ["complete", "fail"]
    assert "3 weights given for 2 classes" in table.loc["fail", "note"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A curated detection set of 12 synthetic shape images."""
    from vislab.testing.detection import write_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    res = CliRunner().invoke(app, ["curate", str(write_shapes_dataset(root / "src", n=12)), "--out", str(root / "ds"), "--split", "0.7,0.3,0", "--workers", "1"])
    assert res.exit_code == 0, res.output
    return root / "ds"


def detect_base(path: Path, **data) -> Path:
    from vislab.testing.detection import tiny_detect_config

    cfg = tiny_detect_config(data={"num_workers": 0, **data}, train={"epochs": 1, "progress": "none", "checkpoint_every_minutes": None})
    path.write_text(dump_config(cfg))
    return path


@pytest.mark.parametrize("data, key", [({"img_size": 64}, "data.img_size"), ({"cache": True}, "data.cache")])
def test_a_base_value_detection_cannot_take_fails_once_before_any_trial(shapes, tmp_path, data, key):
    """Detection refuses data.img_size and data.cache as a run is built: each trial built,
    failed alike, and three in a row stopped the sweep with the same line."""
    base = detect_base(tmp_path / "base.yaml", **data)
    out = tmp_path / "out"
    res = sweep_cli(base, write(tmp_path / "space.yaml", {"optim.lr": [0.01, 0.02]}), shapes, out, "--trials", "4")
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1, res.output
    assert line.removeprefix("error: ").startswith(f"{base}: {key}: ") and line.endswith("no trial can train with it, so the sweep started none")
    assert not out.exists()


def test_a_swept_value_detection_cannot_take_fails_that_trial_only(shapes, tmp_path):
    """When the sweep varies the key, the base config's value is no trial's: each trial's own
    value decides, a bad one is recorded as failed and the sweep goes on."""
    base = detect_base(tmp_path / "base.yaml", cache=True)
    space = write(tmp_path / "space.yaml", {"data.cache": [False, True]})
    result = run_sweep(base, shapes, tmp_path / "out", SweepOptions(space=space, sampler="grid", pruner="none"))
    table = result.table.set_index("data.cache")
    assert table.loc[False, "state"] == "complete" and table.loc[True, "state"] == "fail"
    assert table.loc[True, "note"].startswith("data.cache: the prepared uint8 cache serves classification runs")


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory) -> Path:
    """Crops photos of 240x160: too small for the tiny sampler's patch 24 (min side 192), large
    enough for patch 16 (128)."""
    from vislab.testing.lens import make_lens_dataset

    return make_lens_dataset(tmp_path_factory.mktemp("small") / "ds", splits=(4, 2, 0), size=(240, 160))


def crops_base(path: Path) -> Path:
    from vislab.testing.lens import tiny_crops_run

    path.write_text(dump_config(tiny_crops_run(train={"epochs": 1, "progress": "none", "checkpoint_every_minutes": None})))
    return path


def test_photos_too_small_for_the_base_crops_sampler_fail_once_before_any_trial(small_photos, tmp_path):
    base = crops_base(tmp_path / "base.yaml")
    out = tmp_path / "out"
    res = sweep_cli(base, write(tmp_path / "space.yaml", {"optim.lr": [0.001, 0.002]}), small_photos, out, "--trials", "4")
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1, res.output
    assert "240x160 is too small for crop samples (and 5 more)" in line and "--min-size 192x192" in line
    assert line.endswith("no trial can train with it, so the sweep started none")
    assert not out.exists()


def test_a_swept_patch_size_too_large_for_the_photos_fails_that_trial_only(small_photos, tmp_path):
    base = crops_base(tmp_path / "base.yaml")
    space = write(tmp_path / "space.yaml", {"crops.patch_size": [16, 24]})
    result = run_sweep(base, small_photos, tmp_path / "out", SweepOptions(space=space, sampler="grid", pruner="none"))
    table = result.table.set_index("crops.patch_size")
    assert table.loc[16, "state"] == "complete" and table.loc[24, "state"] == "fail"
    assert "is too small for crop samples" in table.loc[24, "note"]


def test_results_csv_neutralises_formulas_and_reads_back_its_numbers(dataset, base, tmp_path):
    """A swept choice '=1+1' was written as is: a spreadsheet opening results.csv ran it. Text
    that starts a formula gets a leading ' (as compare's CSV), numbers stay numbers, and a
    negative number in the same column is not taken for a formula."""
    space = write(tmp_path / "space.yaml", {"model.kwargs.tag": ["=1+1", -0.5]})  # simple_cnn takes no kwargs: both trials fail
    out = tmp_path / "out"
    result = run_sweep(base, dataset, out, SweepOptions(space=space, sampler="grid", pruner="none"))
    assert sorted(result.table["model.kwargs.tag"], key=str) == [-0.5, "=1+1"]  # the returned table is exact
    text = (out / "results.csv").read_text()
    assert "'=1+1" in text and ",-0.5," in text and "'-0.5" not in text
    back = pd.read_csv(out / "results.csv")
    assert sorted(back["model.kwargs.tag"]) == ["'=1+1", "-0.5"]
    assert back["trial"].dtype.kind == "i" and sorted(back["trial"]) == [0, 1] and back["duration_s"].dtype.kind == "f"
    assert back["note"].str.startswith("model.kwargs.tag: simple_cnn takes no model.kwargs").all()


@pytest.mark.parametrize(
    "space, outer, inner",
    [
        ("optim.lr: {float: [0.001, 0.1], log: true}\noptim: [{name: sgd}, {name: adam}]\n", "optim", "optim.lr"),
        ("data: [{batch_size: 8}, {batch_size: 16}]\ndata.augment.preset: [none, light]\n", "data", "data.augment.preset"),
    ],
)
def test_a_swept_key_under_another_swept_key_is_refused_naming_both(dataset, base, tmp_path, space, outer, inner):
    """optim.lr with an optim choice: the section written last overwrote the swept rate, so
    every trial trained with the base rate while results.csv showed the suggested ones."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text(space)
    out = tmp_path / "out"
    res = sweep_cli(base, space_file, dataset, out)
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and "space.yaml" in line
    assert f"'{inner}' lies under '{outer}', which is also swept" in line
    assert not out.exists()
    grid = tmp_path / "grid.yaml"  # a grid: mapping reads the same way
    grid.write_text(base.read_text() + "grid:\n" + "".join(f"  {row}\n" for row in space.splitlines()))
    res = CliRunner().invoke(app, ["grid", str(grid), "--list"])
    assert res.exit_code == 2 and f"grid.yaml: grid: '{inner}' lies under '{outer}'" in res.output, res.output


def test_a_section_choice_sets_its_keys_and_keeps_the_base_sections_others(base, tmp_path):
    """`data: [{batch_size: 8}, ...]` replaced the whole data section with defaults: the base's
    image size, workers and augmentation were silently lost in every trial."""
    from vislab.sweep.space import trial_config

    setup = resolve(base, SweepOptions(space=write(tmp_path / "space.yaml", {"data": [{"batch_size": 8}, {"batch_size": 16}]})))
    data = setup.base["data"]
    assert data["img_size"] != 224 and data["num_workers"] == 0  # tiny_config's, not the defaults
    p = setup.params[0]
    for n, choice in zip((8, 16), p.choices):
        cfg = trial_config(setup.base, {"data": p.decode(choice)}, "test")
        assert cfg.data.model_dump(mode="json") == {**data, "batch_size": n}


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"data.batch_size": {"int": [1, 1_000_000], "step": 1}}, "'data.batch_size': a step of 1 makes 1000000 grid points, over the limit of 10000"),
        ({"data.batch_size": {"int": [1, 200], "step": 1}, "optim.lr": {"float": [0.01, 1.0], "step": 0.01}}, "the grid has 20000 points (200 x 100), over the limit of 10000"),
    ],
)
def test_a_grid_too_large_to_train_is_refused_before_listing_its_points(base, tmp_path, space, expected):
    """A range with a small step made every point in memory first: a MemoryError traceback."""
    with pytest.raises(VislabError) as err:
        resolve(base, SweepOptions(space=write(tmp_path / "space.yaml", space), sampler="grid"))
    assert len(str(err.value).splitlines()) == 1 and expected in str(err.value)
    grid = tmp_path / "grid.yaml"
    grid.write_text(base.read_text() + yaml.safe_dump({"grid": {"data.batch_size": {"int": [1, 10_001], "step": 1}}}))
    res = CliRunner().invoke(app, ["grid", str(grid), "--list"])
    assert res.exit_code == 2 and "makes 10001 grid points, over the limit of 10000" in res.output, res.output


def test_an_unexpected_error_in_a_trial_fails_that_trial_and_the_sweep_goes_on(dataset, base, tmp_path, monkeypatch):
    """Only VislabError and out-of-memory were caught: any other exception (a bug) ended the
    study with no results.csv. Now it is one failed trial with a one-line note."""
    import importlib

    train_module = importlib.import_module("vislab.train")  # `vislab.train` can be the package's train function
    real, calls = train_module.train, []

    def first_call_breaks(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom\nsecond line")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", first_call_breaks)
    space = write(tmp_path / "space.yaml", {"optim.lr": [0.01, 0.02]})
    out = tmp_path / "out"
    result = run_sweep(base, dataset, out, SweepOptions(space=space, trials=1, sampler="random", seed=0, pruner="none"))
    table = result.table.set_index("state")
    assert sorted(table.index) == ["complete", "fail"]
    assert table.loc["fail", "note"].startswith("unexpected RuntimeError: boom (traceback")
    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")
    failed = next(t for t in study.get_trials() if t.state.name == "FAIL")
    assert "first_call_breaks" in failed.user_attrs["traceback"]
    assert (out / "results.csv").read_text().count("\n") == 3


def test_the_failure_that_stops_the_sweep_is_in_results_csv_and_sweep_html(dataset, base, tmp_path):
    """Three failures in a row stop the sweep; results.csv lacked the third and sweep.html was
    never written."""
    space = write(tmp_path / "space.yaml", {"train.class_weights": [[1, 2, 3], [1, 2, 3, 4]]})
    out = tmp_path / "out"
    with pytest.raises(VislabError, match="3 trials in a row failed; the last: train.class_weights: . weights given for 2 classes"):
        run_sweep(base, dataset, out, SweepOptions(space=space, trials=4, sampler="random", seed=0, pruner="none"))
    rows = pd.read_csv(out / "results.csv")
    assert sorted(rows["trial"]) == [0, 1, 2] and set(rows["state"]) == {"fail"}
    assert (out / "sweep.html").is_file()
