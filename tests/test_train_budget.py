"""The time budget: one story in the run directory, validation and saving inside the budget,
a plan fitted to it (epochs, frozen epochs, warm-up, schedule), and plain warnings when a
run did less than it was asked to. Real training runs with real budgets: `paced_cnn` waits a
fixed time in each forward, so the epochs cost what the test says on a busy machine too."""

from __future__ import annotations

import json
import re
import time

import pandas as pd
import pytest
import yaml
from lightning.pytorch.callbacks import Callback

import vislab.testing.models  # noqa: F401  (registers paced_cnn)
from vislab.errors import VislabError
from vislab.evaluate import evaluate
from vislab.plan import Probe, fit_plan
from vislab.runs import load_checkpoint_file
from vislab.testing.synthetic import make_pattern_dataset, tiny_config
from vislab.train import train

STEPS_PER_EPOCH = 4  # 36 training images in batches of 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_pattern_dataset(tmp_path_factory.mktemp("d"), per_class=20, size=16)


def paced(train_s: float, eval_s: float, **sections):
    """A tiny config whose training forward takes `train_s` and validation forward `eval_s` more."""
    model = {"name": "paced_cnn", "kwargs": {"train_s": train_s, "eval_s": eval_s}, **sections.pop("model", {})}
    data = {"batch_size": 8, "eval_batch_size": 12, **sections.pop("data", {})}
    return tiny_config(model=model, data=data, **sections)


def read(run, name):
    return json.loads((run / name).read_text())


def assert_one_story(run):
    """best.ckpt is the epoch summary.json names as best, a row of metrics.csv, and evaluating it
    on the validation split gives the accuracy the summary reports."""
    summary = read(run, "summary.json")
    rows = pd.read_csv(run / "metrics.csv")
    best = load_checkpoint_file(run / "checkpoints/best.ckpt")
    assert len(rows) == summary["epochs_completed"]
    assert best["epoch"] == summary["best_epoch"] in rows["epoch"].tolist()
    assert best["global_step"] == (summary["best_epoch"] + 1) * STEPS_PER_EPOCH  # a whole epoch, not a cut one
    assert evaluate(run, split="val")["accuracy"] == pytest.approx(summary["best_val"]["val/acc"], abs=1e-6)


class Validations(Callback):
    """Counts validations, and stops training after step `stop_at` (mid-epoch) as a budget would."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at, self.count = stop_at, 0

    def on_validation_end(self, trainer, pl_module):
        self.count += 1

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True


def test_a_stop_inside_an_epoch_validates_nothing_and_best_stays_a_whole_epoch(dataset, tmp_path):
    seen = Validations(stop_at=STEPS_PER_EPOCH + 2)  # half-way through epoch 2
    run = train(tiny_config(data={"batch_size": 8}, train={"epochs": 4}), dataset, tmp_path / "run", callbacks=[seen])
    assert seen.count == 1  # epoch 1's; Lightning would also validate the half-trained weights
    assert load_checkpoint_file(run / "checkpoints/last.ckpt")["global_step"] == STEPS_PER_EPOCH + 2  # resumable there
    assert_one_story(run)
    train(None, None, run, resume=True)  # the cut epoch is trained to its end, then validated
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1, 2, 3]
    assert_one_story(run)


def test_a_budget_run_ends_inside_its_budget_with_validation_and_saving(dataset, tmp_path):
    # an epoch: 4 steps of 0.15 s + a 1.2 s validation; 20 epochs asked, 10 s given
    run = train(paced(0.15, 1.2, train={"epochs": 20}), dataset, tmp_path / "run", max_time="10s")
    summary = read(run, "summary.json")
    # the Timer's clock: the probe, every step, validation and checkpoint write
    assert summary["wall_time_s"] <= 10.0 + 0.5, summary
    assert 1 <= summary["epochs_completed"] < 20
    assert summary["stopped_reason"] in ("completed", "max_time")
    assert_one_story(run)


def test_the_budget_fits_the_plan_and_the_schedule_ends_at_its_floor(dataset, tmp_path):
    cfg = paced(0.1, 0.3, train={"epochs": 30, "freeze_backbone_epochs": 6}, scheduler={"name": "cosine", "warmup_epochs": 3.0})
    run = train(cfg, dataset, tmp_path / "run", max_time="14s")
    summary, info = read(run, "summary.json"), read(run, "run.json")
    plan = info["plan"]
    assert summary["plan"]["epochs_asked"] == plan["epochs_asked"] == 30
    assert plan["probe"]["step_s"] >= 0.1 and plan["probe"]["frozen_step_s"] >= 0.1  # the waits were measured
    planned = plan["epochs"]
    assert 2 <= planned < 30
    saved = yaml.safe_load((run / "config.yaml").read_text())
    epochs = saved["train"]["epochs"]  # the plan, or what the measured epochs re-planned it to
    replans = plan.get("replanned", [])
    assert epochs == (replans[-1]["epochs"] if replans else planned) <= 30 and summary["epochs_planned"] == epochs
    freeze, warmup = saved["train"]["freeze_backbone_epochs"], saved["scheduler"]["warmup_epochs"]
    assert plan["changed"]["train.freeze_backbone_epochs"] == [6, freeze] and 1 <= freeze < planned
    assert plan["changed"]["scheduler.warmup_epochs"] == [3.0, pytest.approx(3.0 * planned / 30, abs=1e-3)]
    assert summary["wall_time_s"] <= 14.0 + 0.5
    rows = pd.read_csv(run / "metrics.csv")
    codes = [m["code"] for m in read(run, "health.json")]
    if summary["stopped_reason"] == "completed":  # the plan ran to its end: the lr reached its floor
        assert rows["epoch"].tolist() == list(range(epochs))
        assert rows["lr/last"].iloc[-1] < 0.1 * rows["lr"].max()
        assert "backbone_never_unfrozen" not in codes
    else:
        assert "budget_cut" in codes
    assert "plan_cut" in codes  # the report does not call this run normal
    assert_one_story(run)
    # resuming with the config as written (before the plan scaled it) is the same run
    train(cfg, dataset, run, resume=True, epochs=epochs + 1, max_time="10m")
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(epochs + 1))


def test_a_budget_shorter_than_an_epoch_is_a_one_line_error(dataset, tmp_path):
    with pytest.raises(VislabError, match=r"--max-time 1s: shorter than one epoch.*give at least"):
        train(paced(0.3, 0.3, train={"epochs": 5}), dataset, tmp_path / "run", max_time="1s")
    assert not (tmp_path / "run").exists()


def probe(step_s: float, frozen_step_s: float | None = None, fixed_step_s: float | None = None) -> Probe:
    return Probe(step_s=step_s, frozen_step_s=frozen_step_s, train_start_s=0.0, val_batch_s=1.0, val_start_s=0.0,
                 save_s=0.5, batch=32, eval_batch=32, train_batches=100, val_batches=10, probe_s=5.0, fixed_step_s=fixed_step_s)


def test_plan_arithmetic_scales_what_counts_in_epochs():
    cfg = tiny_config(train={"epochs": 6, "freeze_backbone_epochs": 2}, scheduler={"name": "cosine", "warmup_epochs": 0.5})
    # an epoch: 100 steps of 1 s (0.5 s frozen) + 10 s validation + 2 x 0.5 s saves
    planned, plan = fit_plan(cfg, "5m", 300.0, probe(1.0, 0.5), spent_s=5.0)
    assert plan.epochs == 2 and plan.cut  # 61 s + 111 s, with the margin, fits in 295 s; three do not
    assert planned.train.epochs == 2 and planned.train.freeze_backbone_epochs == 1 and planned.scheduler.warmup_epochs == pytest.approx(0.5 / 3, abs=1e-3)
    assert "fits 2 of the 6 epochs asked" in plan.line("cosine") and "backbone frozen for 1 epoch(s) (was 2)" in plan.line("cosine")
    planned, plan = fit_plan(cfg, "1h", 3600.0, probe(1.0, 0.5))
    assert plan.epochs == 6 and not plan.cut and planned.train.freeze_backbone_epochs == 2  # all fit: as asked
    one, plan = fit_plan(cfg, "2m", 120.0, probe(1.0, 0.5))
    assert plan.epochs == 1 and one.train.freeze_backbone_epochs == 1  # the head's warm-up first
    exp = tiny_config(train={"epochs": 10}, scheduler={"name": "exponential", "gamma": 0.9})
    planned, plan = fit_plan(exp, "10m", 600.0, probe(1.0))
    assert planned.scheduler.gamma ** planned.train.epochs == pytest.approx(0.9**10, rel=1e-4)  # decays as far


def test_stages_fixed_for_speed_stay_fixed_only_when_the_epochs_do_not_fit_without():
    cfg = tiny_config(train={"epochs": 6, "freeze_stages": 2})
    # an epoch: 100 steps of 1 s (0.5 s with the stages fixed) + 10 s validation + 2 x 0.5 s saves
    planned, plan = fit_plan(cfg, "1h", 3600.0, probe(1.0, fixed_step_s=0.5))
    assert plan.epochs == 6 and planned.train.freeze_stages == 0 and plan.changed["train.freeze_stages"] == [2, 0]
    assert "train.freeze_stages not needed, released" in plan.line("cosine")
    planned, plan = fit_plan(cfg, "10m", 600.0, probe(1.0, fixed_step_s=0.5))
    # 6 x 111 s do not fit 600 s; with the stages fixed, 61 s an epoch: 8 would fit, 6 are asked
    assert plan.epochs == 6 and planned.train.freeze_stages == 2 and "train.freeze_stages" not in plan.changed
    assert "~61.0 s an epoch with validation and saving, train.freeze_stages fixing the first stages (111.0 s without)" in plan.line("cosine")
    planned, plan = fit_plan(cfg, "5m", 300.0, probe(1.0, fixed_step_s=0.5))
    assert plan.epochs == 4 and plan.cut and planned.train.freeze_stages == 2  # 4 x 61 s x 1.1 fit 300 s; 2 unfixed would


class CountedProbe(Probe):
    """A Probe that counts how often the plan asks for an epoch's cost."""

    calls = 0

    def epoch_s(self, frozen: bool = False, fixed: bool = False) -> float:
        CountedProbe.calls += 1
        return super().epoch_s(frozen, fixed)


def test_as_many_epochs_as_fit_is_planned_without_counting_down_from_the_epochs_asked():
    """train.epochs 1e9 with --max-time spun at 100% CPU counting down one epoch at a time,
    before training, deaf to SIGTERM; the plan is now found in a few steps, and it is the
    same plan: the most epochs whose cost fits, as counting down found."""
    from vislab.plan import PLAN_MARGIN, frozen_epochs

    MOST = 1_000_000  # the most train.epochs takes
    for freeze, frozen in ((0, None), (3, 0.2), (3, 2.0), (50, 0.01)):
        fast = CountedProbe(**{**probe(1.0, frozen).__dict__, "train_batches": 1, "val_batches": 1})
        CountedProbe.calls = 0
        _, plan = fit_plan(tiny_config(train={"epochs": MOST, "freeze_backbone_epochs": freeze}), "1h", 3600.0, fast)
        assert 1000 < plan.epochs < MOST and CountedProbe.calls < 5000, (freeze, frozen, plan.epochs, CountedProbe.calls)
    for asked in range(1, 25):  # the plan counting down from the epochs asked would make
        for freeze, frozen, budget in ((0, None, 500.0), (2, 0.3, 700.0), (asked, 0.05, 300.0), (asked + 3, 0.9, 900.0), (1, 0.05, 250.0)):
            pr = probe(1.0, frozen)
            cfg = tiny_config(train={"epochs": asked, "freeze_backbone_epochs": freeze})

            def cost(e: int) -> float:
                f = frozen_epochs(freeze, e, asked) if frozen is not None else 0
                return f * pr.epoch_s(True) + (e - f) * pr.epoch_s()

            counted = asked
            while counted > 1 and cost(counted) * PLAN_MARGIN > budget:
                counted -= 1
            if cost(1) <= budget:
                assert fit_plan(cfg, "x", budget, pr)[1].epochs == counted, (asked, freeze, frozen, budget)


def test_a_run_of_a_million_epochs_asked_trains_the_epochs_that_fit_its_budget(dataset, tmp_path):
    run = train(paced(0.05, 0.05, train={"epochs": 1_000_000}), dataset, tmp_path / "run", max_time="5s")
    summary, plan = read(run, "summary.json"), read(run, "run.json")["plan"]
    assert plan["epochs_asked"] == 1_000_000 and 1 <= plan["epochs"] < 100
    assert summary["wall_time_s"] <= 5.0 + 0.5 and summary["epochs_completed"] >= 1


def test_a_backbone_that_never_unfroze_is_a_warning(dataset, tmp_path):
    run = train(tiny_config(train={"epochs": 2, "freeze_backbone_epochs": 3}), dataset, tmp_path / "run")
    warned = [m for m in read(run, "health.json") if m["code"] == "backbone_never_unfrozen"]
    assert len(warned) == 1 and "only the new head learned" in warned[0]["message"]
    from vislab.report.html import write_report

    assert "training looked normal" not in write_report(run).read_text()


class SlowsDown(Callback):
    """From epoch `epoch` (counted from 0) every training step takes `train_s`: the plan's estimate is now wrong."""

    def __init__(self, epoch: int, train_s: float) -> None:
        self.epoch, self.train_s = epoch, train_s

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            pl_module.model.train_s = self.train_s


def test_an_epoch_that_cannot_end_inside_the_budget_is_cut_unvalidated(dataset, tmp_path):
    run = train(paced(0.05, 0.3, train={"epochs": 6}), dataset, tmp_path / "run", max_time="12s", callbacks=[SlowsDown(1, 3.0)])
    summary = read(run, "summary.json")
    assert summary["stopped_reason"] == "max_time" and summary["wall_time_s"] <= 12.0 + 0.5
    step = load_checkpoint_file(run / "checkpoints/last.ckpt")["global_step"]
    assert step % STEPS_PER_EPOCH and summary["epochs_completed"] == step // STEPS_PER_EPOCH  # cut inside an epoch
    [cut] = [m for m in read(run, "health.json") if m["code"] == "budget_cut"]
    # counted from 0: the epoch and step it stopped in (the report showed a 6-epoch run's cut at "epoch 7")
    assert (cut["epoch"], cut["step"]) == (step // STEPS_PER_EPOCH, step - 1)
    assert_one_story(run)
    # the budget judged the rest would not fit: the same budget does not resume, a larger one does
    with pytest.raises(VislabError, match="time budget of 12s stopped the run with"):
        train(None, None, run, resume=True)
    train(None, None, run, resume=True, max_time="10m")
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(6))
    assert read(run, "summary.json")["stopped_reason"] == "completed"


class SlowFirstEpoch(Callback):
    """Epoch 1 (a cold start) takes `slow_s` a step, every later one `fast_s`."""

    def __init__(self, slow_s: float, fast_s: float) -> None:
        self.slow_s, self.fast_s = slow_s, fast_s

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.model.train_s = self.slow_s if trainer.current_epoch == 0 else self.fast_s


def test_a_plan_cut_by_a_slow_first_epoch_grows_back_when_later_epochs_are_fast(dataset, tmp_path, capsys):
    # the probe measures 0.05 s steps, so 8 epochs are planned; epoch 1 then takes ~5 s and the
    # budget cuts the plan to 3 or 4; epochs 2 and 3 take ~0.5 s and it grows back to all 8, the
    # cosine schedule stretched while still running, so the lr still ends at its floor. The
    # budget leaves room for a slow machine: after epoch 2, while epoch 1 is still the slower
    # of the last two, growing back needs 2 x epoch 1 x GROW_MARGIN (a 20-s budget under load
    # once left 11 s for 2 x 5.6 x 1.1, and the run ended at epoch 3)
    cfg = paced(0.05, 0.1, train={"epochs": 8}, scheduler={"name": "cosine", "warmup_epochs": 0.0})
    run = train(cfg, dataset, tmp_path / "run", max_time="24s", callbacks=[SlowFirstEpoch(1.2, 0.05)])
    out = capsys.readouterr().out
    assert "so only" in out and "grows back to end at epoch 8" in out, out
    summary = read(run, "summary.json")
    assert summary["epochs_completed"] == summary["epochs_planned"] == 8 and summary["stopped_reason"] == "completed"
    assert summary["wall_time_s"] <= 24.0 + 0.5
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["lr/last"].iloc[-1] < 0.1 * rows["lr"].max()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 8
    replans = read(run, "run.json")["plan"]["replanned"]
    assert [r["epochs"] for r in replans][0] < 8 and replans[-1]["epochs"] == 8
    codes = [(m["level"], m["code"]) for m in read(run, "health.json")]
    assert codes.index(("warn", "plan_cut")) < codes.index(("info", "plan_restored"))  # the whole story, in order
    assert_one_story(run)


class SlowEpoch(Callback):
    """One epoch (a neighbour's burst on a shared CPU) takes `slow_s` a step, the others `fast_s`."""

    def __init__(self, epoch: int, slow_s: float, fast_s: float) -> None:
        self.epoch, self.slow_s, self.fast_s = epoch, slow_s, fast_s

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.model.train_s = self.slow_s if trainer.current_epoch == self.epoch else self.fast_s


def test_one_slow_epoch_in_a_run_cuts_nothing(dataset, tmp_path, capsys):
    # epoch 4 takes ~8x the others: judged alone it says the 8 epochs left need twice the time
    # that is left, and the plan was cut (then grown back by the fast epochs after it, the lr
    # bouncing with each re-plan); the median of the last three says they all fit, as they do.
    # The budget leaves room for neighbouring epochs slowed 2-3x by a loaded machine (the full
    # suite once made epochs 2-3 take 0.9-1.3 s against 0.5, and a 16-s budget cut one epoch)
    cfg = paced(0.1, 0.05, train={"epochs": 12}, scheduler={"name": "cosine", "warmup_epochs": 0.0})
    run = train(cfg, dataset, tmp_path / "run", max_time="22s", callbacks=[SlowEpoch(3, 1.0, 0.1)])
    out = capsys.readouterr().out
    assert "time budget:" not in out, out
    summary = read(run, "summary.json")
    assert summary["epochs_completed"] == 12 and summary["stopped_reason"] == "completed", out
    assert not read(run, "run.json")["plan"].get("replanned")
    assert summary["wall_time_s"] <= 22.0 + 0.5


class FastOnceTraining(Callback):
    """The plan's probe times `paced`'s slow steps; from the first real step on they take `fast_s`."""

    def __init__(self, fast_s: float) -> None:
        self.fast_s = fast_s

    def on_train_start(self, trainer, pl_module):
        pl_module.model.train_s = self.fast_s


def test_an_exponential_schedule_grown_back_keeps_its_planned_decay(dataset, tmp_path, capsys):
    # the plan fits fewer of the 12 epochs (8 here) and steepens gamma 0.8 to spread the run's
    # decay (0.8 ** 12) over them; growing back to 12 kept that steeper gamma, and the lr ended
    # at 0.038 of its start, 0.8 ** 14.7 (the crops recipe, cut from 60 epochs to 2, trained its
    # last epochs at 1e-9). Re-planned, the last epoch ends near 0.8 ** 11, as the uncut run would.
    cfg = paced(0.3, 0.05, train={"epochs": 12}, scheduler={"name": "exponential", "gamma": 0.8, "warmup_epochs": 0.0})
    run = train(cfg, dataset, tmp_path / "run", max_time="14s", callbacks=[FastOnceTraining(0.02)])
    plan = read(run, "run.json")["plan"]
    assert plan["epochs"] < 12 and plan["changed"]["scheduler.gamma"][1] < 0.8
    out = capsys.readouterr().out
    assert "grows back to end at epoch 12" in out and "gamma" in out, out
    rows = pd.read_csv(run / "metrics.csv")
    assert len(rows) == 12
    final = rows["lr/last"].iloc[-1] / rows["lr/first"].iloc[0]
    assert 0.8 ** 13 < final < 0.8 ** 9, final


def test_a_plan_cut_by_a_pessimistic_probe_grows_back_to_the_epochs_asked(dataset, tmp_path, capsys):
    # the probe times 0.3 s steps, so 12 epochs do not fit 14 s; the real steps take 0.02 s and
    # the run grows back to all 12 the config asked for (a few seconds: room for a busy machine),
    # its cosine still ending at the floor
    cfg = paced(0.3, 0.05, train={"epochs": 12}, scheduler={"name": "cosine", "warmup_epochs": 0.0})
    run = train(cfg, dataset, tmp_path / "run", max_time="14s", callbacks=[FastOnceTraining(0.02)])
    plan = read(run, "run.json")["plan"]
    assert plan["epochs"] < 12 and plan["epochs_asked"] == 12
    assert "grows back to end at epoch 12" in capsys.readouterr().out
    summary = read(run, "summary.json")
    assert summary["epochs_completed"] == 12 and summary["stopped_reason"] == "completed"
    assert summary["wall_time_s"] <= 14.0 + 0.5
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["lr/last"].iloc[-1] < 0.1 * rows["lr"].max()
    assert ("info", "plan_restored") in [(m["level"], m["code"]) for m in read(run, "health.json")]
    assert_one_story(run)


class FastFirstEpoch(Callback):
    """The first epoch's steps take `fast_s`; from the second on they take what the probe timed."""

    def __init__(self, fast_s: float) -> None:
        self.fast_s, self.slow_s = fast_s, None

    def on_train_epoch_start(self, trainer, pl_module):
        self.slow_s = self.slow_s or pl_module.model.train_s
        pl_module.model.train_s = self.fast_s if trainer.current_epoch == 0 else self.slow_s


def test_a_plan_grows_back_only_on_two_measured_epochs(dataset, tmp_path, capsys):
    # the probe's 0.5-s steps fit about 4 of the 12 epochs; the first epoch runs at 0.02 s a step
    # and, judged alone, grew the plan back, yet the next ones run as slow as the probe said (a
    # crops run grown from 2 to 4 epochs on one fast epoch; its second took 44 s, not 9, and the
    # budget stopped it with its schedule mid-way). Nothing grows on the first epoch alone; from
    # the second on the slower of the last two decides, and the run ends as planned at its floor
    cfg = paced(0.5, 0.05, train={"epochs": 12}, scheduler={"name": "cosine", "warmup_epochs": 0.0})
    run = train(cfg, dataset, tmp_path / "run", max_time="12s", callbacks=[FastFirstEpoch(0.02)])
    out = capsys.readouterr().out
    plan = read(run, "run.json")["plan"]
    assert plan["epochs"] < 12, out
    assert not [r for r in plan.get("replanned", []) if r["after_epoch"] == 1], out
    summary = read(run, "summary.json")
    assert summary["epochs_completed"] == summary["epochs_planned"] and summary["stopped_reason"] == "completed", out
    assert summary["wall_time_s"] <= 12.0 + 0.5
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["lr/last"].iloc[-1] < 0.1 * rows["lr"].max()


def test_a_plan_grown_back_short_of_the_epochs_asked_is_still_a_cut(dataset, tmp_path):
    # the probe times 0.3 s steps (about 6 of 40 epochs fit 10 s); real steps take 0.1 s, so the
    # run grows to more than planned but far fewer than 40: each re-plan warns, none says restored
    cfg = paced(0.3, 0.05, train={"epochs": 40}, scheduler={"name": "cosine", "warmup_epochs": 0.0})
    run = train(cfg, dataset, tmp_path / "run", max_time="10s", callbacks=[FastOnceTraining(0.1)])
    plan = read(run, "run.json")["plan"]
    final = plan["replanned"][-1]["epochs"]
    assert plan["epochs"] < final < 40  # (on a busy machine the budget may still stop inside the last one)
    replans = [(m["level"], m["code"]) for m in read(run, "health.json") if "time budget:" in m["message"]]
    assert replans and set(replans) == {("warn", "plan_cut")}


class SlowSetup(Callback):
    """Waits `wait_s` before the first step, as fitting a probe head does; keeps the real clock."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.t0 = self.t1 = 0.0

    def on_fit_start(self, trainer, pl_module):
        self.t0 = time.monotonic()
        time.sleep(self.wait_s)

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.monotonic()


def test_the_time_before_the_first_step_counts_in_the_budget(dataset, tmp_path):
    setup = SlowSetup(3.0)
    run = train(paced(0.15, 0.1, train={"epochs": 20}), dataset, tmp_path / "run", max_time="8s", callbacks=[setup])
    summary = read(run, "summary.json")
    assert setup.t1 - setup.t0 <= 8.0 + 0.5  # the wait and the epochs together
    assert 3.0 <= summary["wall_time_s"] <= 8.0 + 0.5
    assert 1 <= summary["epochs_completed"] < 20
    assert_one_story(run)


class SlowValidation(Callback):
    """From epoch `epoch` (counted from 0) every validation forward takes `eval_s`."""

    def __init__(self, epoch: int, eval_s: float) -> None:
        self.epoch, self.eval_s = epoch, eval_s

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            pl_module.model.eval_s = self.eval_s


def test_an_epoch_that_ends_past_the_budget_says_the_budget_is_spent(dataset, tmp_path, capsys):
    # the first epoch's validation outlasts the whole budget: its end found -3 s left and said
    # the next epoch 'would not fit in the -3 s left'
    run = train(paced(0.02, 0.02, train={"epochs": 6}), dataset, tmp_path / "run", max_time="5s", callbacks=[SlowValidation(0, 8.0)])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("time budget:")]
    assert len(lines) == 1 and re.fullmatch(r"time budget: stopping after epoch 1: the time budget is spent \(\d+ s over, this epoch's last.ckpt counted\)", lines[0]), lines
    assert read(run, "summary.json")["epochs_completed"] == 1
