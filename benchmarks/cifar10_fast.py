"""CIFAR-10 held-out accuracy and wall time of the `cifar10-fast` recipe, with a baseline.

The whole path a user runs, timed from the JPEG folder:
  vislab curate cifar10/train --test-per-class 1000  (10,000 images held out as test)
  vislab prepare DATASET --size 32
  vislab train cifar10-fast --epochs E
  vislab evaluate RUN --split test [--tta [--tta-translate 1]]

Epochs: `vislab train --max-time` fits them to the budget (15 minutes for the whole path)
minus the measured curate/prepare time and a reserve for evaluation, with the probe of the
config's own training step on its own data loader that it plans every budgeted run with
(`vislab.plan`; `--epochs N` caps them instead of the default 100). The same probe, run
here first, sizes the evaluation reserve. The baseline is the same network and data with the
tricks off (no whitening stem, plain momentum SGD with a one-cycle schedule at batch 512
instead of Muon, learned BN scales and no bias learning-rate boost, no label smoothing, no
weight averaging, vislab's default `light` augmentation, fp32 NCHW, the JPEG loader instead
of the cache, no TTA), given the same wall-clock budget, so it shows what the tricks buy in
the same time. `--baseline-budget` gives it a shorter one (reported as such),
`--no-baseline` skips it. `--ablate` also trains the recipe with each trick off alone (same
budget each).

`--quick` is a few-minute smoke test of the whole path (not a measurement of the recipe):
1,000 training images per class, 200 held out, a narrower net, a 2.5-minute budget per run.
Needs `../shared/data` (or VISLAB_SHARED_DATA); without it,
prints a skip message and exits 0. Prints one JSON object.

    python benchmarks/cifar10_fast.py [--quick] [--budget 15] [--no-baseline] [--ablate]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VISLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR = "cifar10-train.tar.gz"
CONFIG = REPO / "src" / "vislab" / "recipes" / "cifar10-fast.yaml"

BASELINE = [
    "model.fast_cnn.whiten=false",
    "model.fast_cnn.bn_weight=true",
    "data.cache=false",
    "data.num_workers=2",
    "data.batch_size=512",
    "data.augment.preset=light",
    "data.augment.hflip=null",
    "data.augment.crop_padding=null",
    "optim.name=sgd",
    "optim.lr=1.5",
    "optim.momentum=0.9",
    "optim.nesterov=false",
    "optim.weight_decay=0.0005",
    "optim.bias_lr_mult=1",
    "scheduler.name=onecycle",
    "scheduler.pct_start=0.25",
    "train.label_smoothing=0.0",
    "train.averaging.kind=none",
    "train.precision=32-true",
    "train.channels_last=false",
]
# --quick: a smoke test of the whole path, not a measurement of the recipe
QUICK = ["model.fast_cnn.widths=[32,64,64]", "model.fast_cnn.whiten_images=2000"]
# one trick off at a time (TTA is measured on every run's evaluation instead)
ABLATIONS = {
    "no_whitening": ["model.fast_cnn.whiten=false"],
    "sgd_instead_of_muon": ["optim.name=sgd"],
    "bn_scales_learned": ["model.fast_cnn.bn_weight=true"],
    "no_bias_lr_boost": ["optim.bias_lr_mult=1"],
    "no_label_smoothing": ["train.label_smoothing=0.0"],
    "lookahead": ["train.averaging.kind=lookahead", "train.averaging.decay=0.77", "train.averaging.every=5"],
    "no_translate": ["data.augment.crop_padding=null"],
    "fp32": ["train.precision=32-true"],
    "no_channels_last": ["train.channels_last=false"],
    "no_cache": ["data.cache=false", "data.num_workers=2"],
}


def vislab(*args: str, log: Path | None = None) -> str:
    exe = Path(sys.executable).with_name("vislab")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "vislab.cli"]) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    return proc.stdout


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def probe_epoch_seconds(sets: list[str], ds: Path) -> dict[str, Any]:
    """The library's probe of the config (`vislab.plan.probe`, what `train --max-time` plans
    with): fastest training step, validation batch and checkpoint write, and an epoch's cost."""
    from vislab.config import load_config
    from vislab.plan import probe
    from vislab.train import build_task

    cfg = load_config(CONFIG, sets)
    task, dm, _ = build_task(cfg, ds)
    return probe(task, dm, cfg).to_dict()


def train_and_evaluate(
    name: str, ds: Path, work: Path, sets: list[str], budget_s: float, spent_s: float,
    epochs: int | None, sizes: dict[str, int], tta_levels: list[str],
) -> dict[str, Any]:
    """One training run to fit `budget_s` of wall time (already `spent_s` on data prep), leaving
    room for the final evaluation: ~15 s of process start plus a validation-sized batch per
    test batch and view (6 views with flip+translate TTA, 2 with flip, else 1)."""
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    probe = probe_epoch_seconds(sets, ds)
    views = 6 if "flip+translate" in tta_levels else 2 if "flip" in tta_levels else 1
    eval_reserve_s = 15.0 + views * math.ceil(sizes["test"] / probe["eval_batch"]) * probe["val_batch_s"]
    # ~15 s of process start, cache load and whitening come before train's budget starts
    train_budget = budget_s - spent_s - eval_reserve_s - 15.0
    start = time.perf_counter()
    load_before = load_average()
    vislab(
        "train", str(CONFIG), "--data", str(ds), "--out", str(run), "--epochs", str(epochs or 100),
        "--max-time", f"{max(30, int(train_budget))}s", *[a for s in sets for a in ("--set", s)],
        log=work / f"{name}-train.log",
    )
    train_s = time.perf_counter() - start
    summary = json.loads((run / "summary.json").read_text())
    result: dict[str, Any] = {
        "sets": sets,
        "epochs_planned": summary.get("epochs_planned"),
        "plan": summary.get("plan"),
        "epochs_completed": summary.get("epochs_completed"),
        "stopped_reason": summary.get("stopped_reason"),
        "probe": probe,
        "eval_reserve_s": round(eval_reserve_s, 1),
        "train_wall_s": round(train_s, 1),
        "train_images_per_s": summary.get("train_images_per_s"),
        "best_val_acc": (summary.get("best_val") or {}).get("val/acc"),
        "load_average_during_train": [load_before, load_average()],
        "test": {},
    }
    eval_total = 0.0
    for level in tta_levels:
        args = ["evaluate", str(run), "--split", "test"]
        if level != "none":
            args.append("--tta")
        if level == "flip+translate":
            args += ["--tta-translate", "1"]
        start = time.perf_counter()
        vislab(*args, log=work / f"{name}-eval-{level}.log")
        secs = time.perf_counter() - start
        eval_total += secs
        metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
        result["test"][level] = {"accuracy": metrics["accuracy"], "images": metrics["num_samples"], "eval_wall_s": round(secs, 1)}
    result["eval_wall_s"] = round(eval_total, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few-minute smoke version on a subset")
    ap.add_argument("--budget", type=float, default=None, help="minutes of wall time per run, data prep included (15; quick: 2)")
    ap.add_argument("--epochs", type=int, default=None, help="the most epochs train may fit to the budget (default 100)")
    ap.add_argument("--baseline-budget", type=float, default=None, help="minutes for the baseline (default: the same budget)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--ablate", action="store_true", help="also train with each trick off alone")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    args = ap.parse_args()
    if not (DATA / CIFAR).is_file():
        print(json.dumps({"skipped": f"no {CIFAR} under {DATA}; set VISLAB_SHARED_DATA to the shared data folder"}))
        return
    import torch

    budget_s = 60 * (args.budget if args.budget is not None else (2.5 if args.quick else 15.0))
    extra = QUICK if args.quick else []
    work = args.work or Path(tempfile.mkdtemp(prefix="vislab-cifar10-fast-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "benchmark": "cifar10_fast",
        "quick": args.quick,
        "budget_s_per_run": budget_s,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
    }
    t0 = time.perf_counter()
    src = work / "src"
    if not (src / "cifar10" / "train").is_dir():
        with tarfile.open(DATA / CIFAR) as tf:
            tf.extractall(src, filter="data")
    unpack_s = time.perf_counter() - t0
    ds = work / "ds"
    curate_args = ["curate", str(src / "cifar10" / "train"), "--out", str(ds), "--seed", "0", "--overwrite"]
    curate_args += ["--max-per-class", "1200", "--test-per-class", "200"] if args.quick else ["--test-per-class", "1000"]
    start = time.perf_counter()
    vislab(*curate_args, log=work / "curate.log")
    curate_s = time.perf_counter() - start
    start = time.perf_counter()
    vislab("prepare", str(ds), "--size", "32", log=work / "prepare.log")
    prepare_s = time.perf_counter() - start

    from vislab.config import load_config
    from vislab.data.datamodule import classification_splits

    cfg = load_config(CONFIG)
    splits = classification_splits(ds, cfg.data.val_fraction, cfg.seed)
    sizes = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    out["data"] = {**sizes, "unpack_s": round(unpack_s, 1), "curate_s": round(curate_s, 1), "prepare_s": round(prepare_s, 1)}
    recipe = train_and_evaluate(
        "recipe", ds, work, extra, budget_s, curate_s + prepare_s, args.epochs, sizes, ["none", "flip", "flip+translate"]
    )
    recipe["total_wall_s"] = round(curate_s + prepare_s + recipe["train_wall_s"] + recipe["test"]["flip+translate"]["eval_wall_s"], 1)
    out["recipe"] = recipe
    if not args.no_baseline:
        b_budget = 60 * args.baseline_budget if args.baseline_budget is not None else budget_s
        base = train_and_evaluate("baseline", ds, work, extra + BASELINE, b_budget, curate_s, args.epochs, sizes, ["none"])
        base["total_wall_s"] = round(curate_s + base["train_wall_s"] + base["eval_wall_s"], 1)
        base["budget_s"] = b_budget
        out["baseline"] = base
    if args.ablate:
        out["ablations"] = {}
        for name, sets in ABLATIONS.items():
            spent = curate_s + (0.0 if "data.cache=false" in sets else prepare_s)
            out["ablations"][name] = train_and_evaluate(name, ds, work, extra + sets, budget_s, spent, args.epochs, sizes, ["none", "flip+translate"])
    r = out["recipe"]
    out["headline"] = {
        "recipe_test_accuracy_tta": r["test"]["flip+translate"]["accuracy"],
        "recipe_total_wall_s": r["total_wall_s"],
        "baseline_test_accuracy": out["baseline"]["test"]["none"]["accuracy"] if "baseline" in out else None,
        "baseline_total_wall_s": out["baseline"]["total_wall_s"] if "baseline" in out else None,
        "target": "accuracy >= 0.94 within 900 s (full run, not --quick)",
    }
    out["load_average_end"] = load_average()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
