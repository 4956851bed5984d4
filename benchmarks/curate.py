"""Throughput of `vislab curate` on real data, with a naive baseline from the same run.

Measures the CLI end to end (process start, scan, checks, dedupe, splits, writing) on:
- the CIFAR-10 training set (50,000 small JPEGs), without and with `--dedupe exact`;
- the camera photos (84 large JPEGs) with `--min-size 1440x720 --dedupe near`, and again
  with `--landscape`, reporting the counts curation gives.
The baseline is the obvious single-process loop (read, sha256, Pillow open + full decode)
over the same CIFAR files. Prints one JSON object. Needs `../shared/data` beside the
repository (or VISLAB_SHARED_DATA); without it, prints a skip message and exits 0.

    python benchmarks/curate.py [--repeats 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VISLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR = "cifar10-train.tar.gz"
PHOTOS = "photos-digicam.tar"


def vislab_command() -> list[str]:
    exe = Path(sys.executable).with_name("vislab")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vislab.cli"]


def run_curate(args: list[str], out: Path, repeats: int) -> dict:
    """Wall-clock seconds of the whole command (best and median of `repeats`)."""
    walls, checks, cpus = [], [], []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(
            vislab_command() + ["curate", *args, "--out", str(out)],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "120"},
        )
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"vislab curate failed: {proc.stderr.strip() or proc.stdout[-2000:]}")
        m = re.search(r"checked (\d+) files in ([\d.]+) s", proc.stdout)
        if m:
            checks.append(float(m.group(2)))
    summary = json.loads((out / "curation.json").read_text())
    files = summary["files"]
    return {
        "files": files,
        "wall_s_best": round(min(walls), 2),
        "wall_s_median": round(statistics.median(walls), 2),
        "files_per_s": round(files / min(walls)),
        "files_per_s_median": round(files / statistics.median(walls)),
        "check_phase_files_per_s": round(files / min(checks)) if checks else None,
        # CPU seconds of the command and its workers: steadier than wall time on a busy host.
        "cpu_s_median": round(statistics.median(cpus), 2),
        "cpu_us_per_file": round(statistics.median(cpus) / files * 1e6),
        "status": summary["status"],
        "reasons": summary["reasons"],
        "exif_oriented": summary.get("exif_oriented"),
        "duplicate_groups": summary.get("duplicate_groups"),
    }


def naive_baseline(paths: list[Path]) -> dict:
    """One process: read, sha256, open and fully decode each file (what a script would do)."""
    from PIL import Image

    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(path) as im:
            im.load()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "files": len(paths),
        "wall_s": round(wall, 2),
        "files_per_s": round(len(paths) / wall),
        "cpu_us_per_file": round(cpu / len(paths) * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; best and median are reported")
    parser.add_argument(
        "--workers", type=int, default=0, help="--workers for vislab curate (0 = one per core)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="unpack and write here instead of a temp dir")
    args = parser.parse_args()
    if not (DATA / CIFAR).is_file() or not (DATA / PHOTOS).is_file():
        print(json.dumps({"skipped": f"real data not found in {DATA} (needs {CIFAR} and {PHOTOS})"}))
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="vislab-bench-"))
    try:
        for archive in (CIFAR, PHOTOS):
            with tarfile.open(DATA / archive) as tar:
                tar.extractall(work / "data", filter="data")
        cifar = work / "data" / "cifar10" / "train"
        photos = work / "data" / "photos"
        workers = ["--workers", str(args.workers)]
        result = {
            "benchmark": "vislab curate throughput",
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "workers": args.workers,
            "repeats": args.repeats,
            "baseline_single_process_decode_cifar": naive_baseline(sorted(cifar.rglob("*.jpg"))),
            "cifar10": run_curate([str(cifar), *workers], work / "out-cifar", args.repeats),
            "cifar10_dedupe_exact": run_curate(
                [str(cifar), "--dedupe", "exact", *workers], work / "out-cifar-exact", args.repeats
            ),
            "photos_min_size_dedupe_near": run_curate(
                [str(photos), "--min-size", "1440x720", "--dedupe", "near", *workers],
                work / "out-photos",
                args.repeats,
            ),
            "photos_min_size_landscape_dedupe_near": run_curate(
                [str(photos), "--min-size", "1440x720", "--landscape", "--dedupe", "near", *workers],
                work / "out-photos-landscape",
                args.repeats,
            ),
        }
        base = result["baseline_single_process_decode_cifar"]["files_per_s"]
        result["cifar10_speedup_vs_baseline"] = round(result["cifar10"]["files_per_s"] / base, 2)
        print(json.dumps(result, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
