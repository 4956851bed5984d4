"""Inference images/s: eager PyTorch against ONNX Runtime, same model, batch and threads.

Models: a ResNet18 (timm, 224x224) and the cifar10-fast net (`fast_cnn`, 32x32). Each is put
in a run directory (random weights, or `--fast-run RUN_DIR` for a trained cifar10-fast run)
and exported with `vislab export RUN_DIR --format onnx`, which checks ONNX Runtime's outputs
against PyTorch's before the file is kept. Eager is fp32 `torch.inference_mode()`; ONNX
Runtime uses its CPU provider with graph optimisations. Both use the same thread count.
Needs no data. Prints one JSON object.

    python benchmarks/inference.py [--seconds 5] [--threads 0] [--fast-run RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rate(fn, batch: int, seconds: float) -> float:
    """Images/s of `fn()` (one batch per call) after warm-up, over about `seconds`."""
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            return n * batch / elapsed


def export(run: Path) -> Path:
    exe = Path(sys.executable).with_name("vislab")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vislab.cli"]
    subprocess.run(cmd + ["export", str(run), "--format", "onnx"], check=True, capture_output=True, text=True)
    return run / "export" / "model.onnx"


def measure(run: Path, batches: list[int], seconds: float, threads: int) -> dict:
    import torch

    from vislab.export import onnx_session
    from vislab.runs import load_run

    path = export(run)
    loaded = load_run(run)
    model = loaded.model.float().eval()
    c, h, w = loaded.spec.input_size
    session = onnx_session(path, threads)
    rows = []
    for batch in batches:
        x = torch.randn(batch, c, h, w)
        xn = x.numpy()

        def eager() -> None:
            with torch.inference_mode():
                model(x)

        def ort() -> None:
            session.run(None, {"input": xn})

        e, o = rate(eager, batch, seconds), rate(ort, batch, seconds)
        rows.append({"batch": batch, "eager_images_per_s": round(e, 1), "onnxruntime_images_per_s": round(o, 1), "ratio": round(o / e, 2)})
    return {"model": loaded.cfg.model.name, "input_size": [c, h, w], "onnx_bytes": path.stat().st_size, "results": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="timing window per case")
    ap.add_argument("--threads", type=int, default=0, help="threads for both engines (0 = torch's default)")
    ap.add_argument("--fast-run", type=Path, default=None, help="a trained cifar10-fast run directory to use")
    args = ap.parse_args()
    import torch

    from vislab.testing.rundirs import make_run_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    out: dict = {"benchmark": "inference", "threads": threads, "cpus": os.cpu_count(), "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        resnet = make_run_dir(Path(tmp) / "r18", model="resnet18", input_size=224, checkpoint=True, classes=tuple(f"c{i}" for i in range(10)))
        fast = args.fast_run or make_run_dir(Path(tmp) / "fast", model="fast_cnn", input_size=32, checkpoint=True, classes=tuple(f"c{i}" for i in range(10)))
        out["resnet18"] = measure(resnet, [1, 16], args.seconds, threads)
        out["fast_cnn"] = measure(fast, [1, 256], args.seconds, threads)
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    out["target_ratio"] = 1.5
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
