"""The training engine on tiny synthetic images: learning, the run directory, losses, freezing,
health checks, sanity mode and CLI errors."""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import RECIPES_DIR, dump_config
from vislab.errors import VislabError
from vislab.runs import load_checkpoint_file
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import build_task, train

# metrics.csv of a classification run starts with these columns (the run-directory contract)
METRIC_COLUMNS = ["epoch", "train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_time_s", "train_images_per_s"]

CLASSES = ("horizontal", "vertical", "diagonal", "checker")
CONFIGS = RECIPES_DIR


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("patterns"), classes=CLASSES, per_class=24, size=16)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_config(train={"epochs": 4}), dataset, run)
    return run


def test_learns_well_above_chance(trained):
    from vislab.evaluate import evaluate

    metrics = evaluate(trained, split="test")
    assert metrics["num_samples"] == 4 * 5
    assert metrics["accuracy"] >= 0.7  # chance is 0.25
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["best_val"]["val/acc"] >= 0.7


def test_run_dir_has_every_contract_file(trained):
    for name in ("config.yaml", "run.json", "metrics.csv", "summary.json", "health.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (trained / name).is_file(), name
    assert any((trained / "tb").glob("events.out.tfevents.*"))

    info = json.loads((trained / "run.json").read_text())
    for key in ("vislab_version", "git_sha", "python", "torch", "timm", "lightning", "device", "precision", "dataset_dir", "manifest_hash", "classes", "data_spec", "created", "command"):
        assert key in info, key
    assert info["classes"] == sorted(CLASSES)
    assert info["data_spec"]["input_size"] == [3, 16, 16]

    rows = pd.read_csv(trained / "metrics.csv")
    assert list(rows.columns[: len(METRIC_COLUMNS)]) == METRIC_COLUMNS
    assert rows["epoch"].tolist() == [0, 1, 2, 3]
    assert rows[["train/loss", "val/loss", "val/acc", "lr", "train_images_per_s"]].notna().all().all()
    assert rows["train/loss"].iloc[-1] < rows["train/loss"].iloc[0]

    summary = json.loads((trained / "summary.json").read_text())
    assert summary["stopped_reason"] == "completed"
    assert summary["epochs_completed"] == summary["epochs_planned"] == 4
    assert summary["params"]["total"] == summary["params"]["trainable"] > 0 and summary["params"]["frozen"] == 0
    assert summary["train_images_per_s"] > 0 and summary["wall_time_s"] > 0
    assert json.loads((trained / "health.json").read_text()) == []

    ckpt = load_checkpoint_file(trained / "checkpoints/best.ckpt")
    hp = ckpt["hyper_parameters"]
    assert hp["classes"] == sorted(CLASSES) and hp["config"]["model"]["name"] == "simple_cnn"
    assert hp["data_spec"]["input_size"] == [3, 16, 16]


def test_starting_over_an_existing_run_is_refused(trained, dataset):
    with pytest.raises(VislabError, match="already holds a run"):
        train(tiny_config(), dataset, trained)


def test_out_folder_holding_other_files_is_refused_and_an_empty_one_is_used(trained, dataset, tmp_path):
    """`--out` a folder of the user's photos used to be accepted, the run's files written
    among them; a folder holding only a run's own names (or nothing) is still a run's."""
    cfg = _write_cfg(tmp_path / "c.yaml", tiny_config(train={"epochs": 1}))
    photos = tmp_path / "photos"
    (photos / "2023").mkdir(parents=True)
    for name in ("IMG_0001.jpg", "IMG_0002.jpg", "notes.txt"):
        (photos / name).write_bytes(b"the user's own bytes")
    before = sorted(p.relative_to(photos) for p in photos.rglob("*"))
    res = CliRunner().invoke(app, ["train", str(cfg), "--data", str(dataset), "--out", str(photos)])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    line = " ".join(res.output.split())
    assert f"--out {photos}: holds files that are not a run's ('2023', 'IMG_0001.jpg', 'IMG_0002.jpg' and 1 more)" in line
    assert "choose another --out, a new or empty folder" in line
    assert sorted(p.relative_to(photos) for p in photos.rglob("*")) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["train", str(cfg), "--data", str(dataset), "--out", str(empty)])
    assert res.exit_code == 0, res.output
    assert (empty / "checkpoints" / "best.ckpt").is_file() and (empty / "config.yaml").is_file()
    from vislab.runs import RUN_ENTRIES

    assert {p.name for p in trained.iterdir()} <= RUN_ENTRIES  # every name a run writes counts as a run's


def test_more_workers_than_cores_is_one_warning_and_fewer_are_quiet(dataset, tmp_path, monkeypatch):
    """data.num_workers far above the cores used to pass in silence; now one warning line
    (the budget's probe builds the data a second time: still one line)."""
    from vislab import workers

    monkeypatch.setattr(workers, "available_cores", lambda: 1, raising=False)
    monkeypatch.setattr(workers, "_WARNED", set(), raising=False)
    cfg = _write_cfg(tmp_path / "c.yaml", tiny_config(train={"epochs": 1}))
    args = ["train", str(cfg), "--data", str(dataset)]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "many"), "--set", "data.num_workers=2", "--max-time", "5m"])
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if "data.num_workers" in line]
    assert warned == ["warning: data.num_workers 2 is more than the 1 CPU core(s) this process can use; "
                      "the extra DataLoader workers only compete for them (set data.num_workers to 1 or fewer)"], res.output
    for n in (0, 1):
        res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / f"few{n}"), "--set", f"data.num_workers={n}", "--sanity", "--set", "train.sanity_steps=2"])
        assert res.exit_code == 0, res.output
        assert "num_workers" not in res.output and "warning" not in res.output


def test_available_cores_is_the_process_affinity():
    from vislab.workers import available_cores

    assert available_cores() == len(os.sched_getaffinity(0))


def test_monitor_epoch_is_worded_as_the_last_epoch_not_the_best(dataset, tmp_path):
    """train.monitor: epoch keeps the last epoch; the end line and the report used to call it
    the best (e.g. 'best val/acc 40.00% at epoch 2'), as if a metric had picked it."""
    cfg = _write_cfg(tmp_path / "c.yaml", tiny_config(train={"epochs": 2, "monitor": "epoch"}))
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(cfg), "--data", str(dataset), "--out", str(run)])
    assert res.exit_code == 0, res.output
    end = next(line for line in res.output.splitlines() if line.startswith("stopped:"))
    assert "kept the last epoch (2, train.monitor: epoch): val/acc " in end and "best" not in end, end
    summary = json.loads((run / "summary.json").read_text())
    assert summary["monitor"] == "epoch" and summary["best_epoch"] == 1
    res = CliRunner().invoke(app, ["report", str(run), "--no-cams"])
    assert res.exit_code == 0, res.output
    page = (run / "report.html").read_text()
    assert "last val acc." in page and "Last epoch 2 kept (train.monitor: epoch) of 2" in page
    assert "best val acc." not in page and "Best epoch" not in page


def test_batches_of_one_image_train_every_step(dataset, tmp_path):
    """data.batch_size: 1 is a batch size users pick for large images: every image is a step
    (training batches of one were all dropped, and the run 'stopped after 0/1 epochs')."""
    run = train(tiny_config(data={"batch_size": 1}, train={"epochs": 1}), dataset, tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "completed" and summary["epochs_completed"] == 1
    n_train = int((pd.read_csv(dataset / "manifest.csv")["split"] == "train").sum())
    steps = pd.read_csv(run / "metrics.csv")
    assert len(steps) == 1
    ckpt = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == n_train


def test_one_image_batches_a_model_cannot_normalise_are_one_line(dataset, tmp_path):
    """A model whose last map is 1x1 at this size cannot train on batches of one (BatchNorm):
    the error names the key and the fix instead of torch's ValueError traceback."""
    cfg = tiny_config(model={"name": "resnet10t", "pretrained": False}, data={"batch_size": 1}, train={"epochs": 1})
    with pytest.raises(VislabError, match=r"^data\.batch_size: 1: resnet10t .*1x1 feature map.*data\.batch_size: 2 or more"):
        train(cfg, dataset, tmp_path / "run")


def test_class_weights_change_the_loss_as_specified(tmp_path):
    data = make_pattern_dataset(tmp_path / "d", classes=("a", "b", "c"), per_class=[10, 5, 15], size=16, splits=(0.6, 0.2, 0.2))
    task, _, facts = build_task(tiny_config(train={"class_weights": "balanced"}), data)
    counts = [6, 3, 9]  # 60 % of each class is train
    assert list(facts["train_class_counts"].values()) == counts
    expected_w = [18 / (3 * c) for c in counts]  # n_samples / (n_classes * count)
    assert task.class_weight.tolist() == pytest.approx(expected_w)

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 2])
    nll = -torch.log_softmax(logits, 1)[torch.arange(4), y]
    w = torch.tensor(expected_w)[y]
    assert float(task.loss(logits, y)) == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-6)

    plain, _, _ = build_task(tiny_config(), data)
    assert float(plain.loss(logits, y)) == pytest.approx(float(nll.mean()), rel=1e-6)

    explicit, _, _ = build_task(tiny_config(train={"class_weights": [1.0, 0.0, 0.0], "label_smoothing": 0.1}), data)
    assert float(explicit.loss(logits, y)) == pytest.approx(float(F.cross_entropy(logits, y, weight=torch.tensor([1.0, 0, 0]), label_smoothing=0.1)))

    with pytest.raises(VislabError, match="one per class"):
        build_task(tiny_config(train={"class_weights": [1.0, 2.0]}), data)


class GradRecorder(Callback):
    """Which parameters get gradients in each epoch, and BatchNorm statistics at epoch ends."""

    def __init__(self):
        self.with_grad: dict[int, set[str]] = {}
        self.bn_mean: dict[int, torch.Tensor] = {}
        self.lrs: dict[int, dict[str, float]] = {}

    def on_train_start(self, trainer, pl_module):
        self.bn_start = pl_module.model.features[1].running_mean.clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        names = {n for n, p in pl_module.model.named_parameters() if p.grad is not None}
        self.with_grad.setdefault(trainer.current_epoch, set()).update(names)
        self.lrs[trainer.current_epoch] = {g["name"]: g["lr"] for g in optimizer.param_groups}

    def on_train_epoch_end(self, trainer, pl_module):
        self.bn_mean[trainer.current_epoch] = pl_module.model.features[1].running_mean.clone()


def test_freeze_then_unfreeze_changes_which_params_learn(dataset, tmp_path):
    rec = GradRecorder()
    cfg = tiny_config(train={"epochs": 2, "freeze_backbone_epochs": 1}, optim={"backbone_lr_mult": 0.1})
    train(cfg, dataset, tmp_path / "run", callbacks=[rec])
    head = {n for n in rec.with_grad[1] if n.startswith("head.")}
    backbone = rec.with_grad[1] - head
    assert head and backbone
    assert rec.with_grad[0] == head  # frozen epoch: only the head learns
    assert backbone <= rec.with_grad[1]  # after the boundary: everything
    assert torch.equal(rec.bn_mean[0], rec.bn_start)  # frozen BatchNorm kept its statistics
    assert not torch.equal(rec.bn_mean[1], rec.bn_start)
    assert rec.lrs[1]["backbone"] == pytest.approx(0.1 * rec.lrs[1]["head"])
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["params_while_frozen"]["frozen"] > 0
    assert summary["params"]["frozen"] == 0


def test_freeze_bn_keeps_statistics_after_the_unfreeze(dataset, tmp_path):
    rec = GradRecorder()
    cfg = tiny_config(train={"epochs": 2, "freeze_backbone_epochs": 1, "freeze_bn": True})
    train(cfg, dataset, tmp_path / "run", callbacks=[rec])
    assert "features.0.weight" in rec.with_grad[1]  # the backbone learns after the boundary...
    assert torch.equal(rec.bn_mean[1], rec.bn_start)  # ...with its BatchNorm statistics fixed


def _write_cfg(path, cfg):
    path.write_text(dump_config(cfg))
    return path


def test_nan_loss_stops_with_a_message(dataset, tmp_path):
    cfg = _write_cfg(tmp_path / "c.yaml", tiny_config(optim={"name": "sgd", "lr": 1e30}, train={"epochs": 2}))
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(cfg), "--data", str(dataset), "--out", str(run)])
    assert res.exit_code != 0
    assert "loss became" in res.output and "at training step" in res.output
    assert "Traceback" not in res.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "nan"
    health = json.loads((run / "health.json").read_text())
    assert health[-1]["level"] == "error" and health[-1]["code"] == "nan_loss" and isinstance(health[-1]["step"], int)


class DivergeBeforeValidation(Callback):
    """The weights turn NaN after epoch `epoch`'s training steps: its validation loss is NaN
    while every training loss was finite (what an lr of 1e6 did to a sweep's trial)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def test_a_nan_validation_loss_stops_the_run_as_diverged(dataset, tmp_path, capsys):
    with pytest.raises(VislabError, match="validation loss became nan after epoch 2: the weights diverged"):
        train(tiny_config(train={"epochs": 4}), dataset, tmp_path / "run", callbacks=[DivergeBeforeValidation(1)])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_reason"] == "nan" and summary["epochs_completed"] <= 2
    health = json.loads((tmp_path / "run" / "health.json").read_text())
    assert health[-1]["level"] == "error" and health[-1]["code"] == "nan_loss"


def test_collapse_and_chance_warnings(tmp_path):
    # labels unrelated to the images and a frozen model: accuracy stays at chance
    data = make_pattern_dataset(tmp_path / "d", classes=("a", "b"), per_class=20, size=16, patterns=("horizontal", "horizontal"))
    cfg = tiny_config(optim={"lr": 1e-9}, train={"epochs": 2, "health": {"chance_after_epochs": 2, "collapse_fraction": 0.6}})
    train(cfg, data, tmp_path / "run")
    codes = {m["code"] for m in json.loads((tmp_path / "run/health.json").read_text())}
    assert {"collapsed_predictions", "chance_accuracy"} <= codes


def test_sanity_overfits_one_batch(dataset, tmp_path):
    out = train(tiny_config(train={"sanity_steps": 30}), dataset, tmp_path / "sanity", sanity=True)
    result = json.loads((out / "sanity.json").read_text())
    assert result["steps"] == 30
    assert result["loss_last"] < 0.5 * result["loss_first"]
    assert result["learned"] is True and result["accuracy_last"] == 1.0


def test_bad_config_key_is_one_line_error(dataset, tmp_path):
    raw = yaml.safe_load(dump_config(tiny_config()))
    raw["optim"]["lrr"] = 0.1
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["train", str(cfg), "--data", str(dataset), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "unknown key 'optim.lrr'" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--resume", "--set", "optim.lr=1"])
    assert res.exit_code == 2 and "only --epochs and --max-time" in res.output


def test_grid_config_names_variants_and_refuses_plain_train(tmp_path):
    from vislab.grid import grid_variants

    variants = grid_variants(CONFIGS / "simple-cnn-grid.yaml")
    assert len(variants) >= 4 and len({v[0] for v in variants}) == len(variants)
    layers = {v[2].model.simple_cnn.layers for v in variants}
    assert len(layers) > 1
    res = CliRunner().invoke(app, ["train", str(CONFIGS / "simple-cnn-grid.yaml"), "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "vislab grid" in res.output


def test_shipped_configs_validate():
    from vislab.config import load_config

    for name in ("digits-cnn", "flowers-transfer"):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg.train.epochs >= 1 and not math.isnan(cfg.optim.lr)


@pytest.mark.parametrize(
    "name, sections, check",
    [
        ("sgd-plateau", {"optim": {"name": "sgd", "nesterov": True}, "scheduler": {"name": "plateau"}}, None),
        ("asgd-exponential", {"optim": {"name": "asgd"}, "scheduler": {"name": "exponential", "gamma": 0.5}}, "halving"),
        ("adam-onecycle", {"optim": {"name": "adam"}, "scheduler": {"name": "onecycle"}}, "peak"),
        ("cosine-warmup", {"scheduler": {"name": "cosine", "warmup_epochs": 1}}, "peak"),
        ("muon-linear", {"optim": {"name": "muon", "lr": 0.01, "muon_lr": 0.02, "nesterov": True}, "scheduler": {"name": "linear"}}, "linear"),
        ("bf16-channels-last", {"train": {"precision": "bf16-mixed", "channels_last": True}}, None),
        ("grey-weighted-strong-mixing", {"model": {"in_chans": 1}, "data": {"grayscale": True, "sampler": "weighted", "augment": {"preset": "strong", "mixup": 0.4, "cutmix": 1.0}}}, "grey"),
        ("early-stopping", {"optim": {"lr": 1e-9}, "train": {"epochs": 6, "early_stopping": {"monitor": "val/loss", "mode": "min", "patience": 1, "min_delta": 1.0}}}, "early"),
    ],
)
def test_training_options_run(dataset, tmp_path, name, sections, check):
    run = train(tiny_config(**sections), dataset, tmp_path / name)
    rows = pd.read_csv(run / "metrics.csv")
    summary = json.loads((run / "summary.json").read_text())
    lr = rows["lr"].tolist()
    if check == "halving":
        assert lr == pytest.approx([0.01, 0.005, 0.0025])
    elif check == "peak":
        assert lr[0] < lr[1] > lr[2]  # warm-up, then decay
    elif check == "linear":
        assert rows["lr/first"][0] == pytest.approx(0.01) and lr[0] > lr[1] > lr[2] > 0
        assert rows["lr/backbone"].tolist() == pytest.approx([2 * v for v in lr])  # Muon's rate on the backbone filters
    elif check == "grey":
        assert json.loads((run / "run.json").read_text())["data_spec"]["input_size"] == [1, 16, 16]
    if check == "early":
        assert summary["stopped_reason"] == "early_stopping" and summary["epochs_completed"] == 2
        with pytest.raises(VislabError, match="stopped early"):
            train(None, None, run, resume=True)
    else:
        assert summary["stopped_reason"] == "completed" and len(rows) == 3
