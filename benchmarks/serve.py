"""`vislab serve` under load: micro-batching against one request at a time, same model, same run.

A run directory with random weights (`--model`, default the cifar10-fast net `fast_cnn` at
32x32, 10 classes; `--model resnet18 --size 224` for a compute-bound one; or `--run RUN_DIR`
for a trained run) is served twice on a free loopback port by the real
command, `vislab serve RUN --port 0`: once as shipped (batches of up to `--max-batch`
images formed within a `--window-ms` window), once with `--max-batch 1` (every request its
own forward pass: the one-request-at-a-time baseline). Each gets the same load: `--clients`
threads, each sending POST /v1/predict with one 640x480 JPEG again and again (keep-alive)
for `--seconds`, then stopping. Reported per phase: requests/s, p50/p95 latency, errors (any
non-200 or failed connection), and the server's mean batch size; then the throughput
ratio. Prints one JSON object. Bounded: about 2 x (start-up + `--seconds`).

    python benchmarks/serve.py [--seconds 10] [--clients 32] [--model fast_cnn --size 32] [--onnx]

Targets: 0 errors, and micro-batching >= 2x the baseline's requests/s at 32 clients.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300


def cpu_flags() -> list[str]:
    """The SIMD features that decide CPU inference speed."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
    return [f for f in wanted if f in line.split()]


def photo_jpeg() -> bytes:
    from vislab.testing.images import smooth_image

    buf = io.BytesIO()
    smooth_image(0, (640, 480)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def start_server(run: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "vislab.cli", "serve", str(run), "--port", "0", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line)
        if line.startswith("vislab serve: http://"):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, line.split()[2]
    proc.kill()
    raise SystemExit("vislab serve did not start:\n" + "".join(lines[-20:]))


def load(url: str, body: bytes, ctype: str, clients: int, seconds: float) -> dict:
    """`clients` threads POSTing `body` back to back for `seconds`; latencies and errors."""
    parsed = urlparse(url)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        mine: list[float] = []
        bad: list[str] = []
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                payload = r.read()
                if r.status != 200:
                    bad.append(f"{r.status}: {payload[:120]!r}")
                    continue
            except (OSError, http.client.HTTPException) as err:
                bad.append(f"{type(err).__name__}: {err}")
                conn.close()
                conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
                continue
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0  # includes the requests in flight at the stop
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else [float("nan")] * 19
    return {
        "requests": len(lat),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 2),
        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "p95_ms": round(q[18] * 1000, 1) if lat else None,
    }


def batching_stats(url: str) -> dict:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    conn.request("GET", "/v1/models")
    stats = json.loads(conn.getresponse().read())["models"][0]["batching"]
    conn.close()
    return stats


def phase(run: Path, body: bytes, ctype: str, args: argparse.Namespace, max_batch: int) -> dict:
    extra = ["--max-batch", str(max_batch), "--batch-window-ms", str(args.window_ms)]
    if args.onnx:
        extra.append("--onnx")
    if args.threads:
        extra += ["--threads", str(args.threads)]
    proc, url = start_server(run, extra)
    try:
        load(url, body, ctype, min(4, args.clients), 1.0)  # warm-up: first-call allocations, connections
        before = batching_stats(url)
        result = load(url, body, ctype, args.clients, args.seconds)
        after = batching_stats(url)
    finally:
        proc.terminate()
        proc.wait(60)
    batches = after["batches"] - before["batches"]
    result["mean_batch"] = round((after["items"] - before["items"]) / batches, 2) if batches else None
    result["max_batch"] = max_batch
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="load time per phase")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument("--model", default="fast_cnn", help="model of the random-weight run (vislab or timm name)")
    ap.add_argument("--size", type=int, default=32, help="its input size")
    ap.add_argument("--run", type=Path, default=None, help="serve this run directory instead")
    ap.add_argument("--max-batch", type=int, default=32, help="micro-batching's largest batch")
    ap.add_argument("--window-ms", type=float, default=5.0, help="micro-batching's window")
    ap.add_argument("--onnx", action="store_true", help="serve with ONNX Runtime (the run is exported first)")
    ap.add_argument("--threads", type=int, default=0, help="server's intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from vislab.testing.rundirs import make_run_dir

    body, ctype = multipart(photo_jpeg())
    out: dict = {"benchmark": "serve", "cpus": os.cpu_count(), "cpu_flags": cpu_flags(), "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run_dir(Path(tmp), name=args.model, model=args.model, input_size=args.size, checkpoint=True,
                                       dataset=False, classes=tuple(f"c{i}" for i in range(10)))
        if args.onnx:
            from vislab.export import export_run

            export_run(run)
        out.update(model=args.model if args.run is None else str(args.run), input_size=args.size, engine="onnxruntime" if args.onnx else "pytorch",
                   clients=args.clients, seconds_per_phase=args.seconds, image="640x480 JPEG", window_ms=args.window_ms)
        out["micro_batching"] = phase(run, body, ctype, args, args.max_batch)
        out["baseline_one_at_a_time"] = phase(run, body, ctype, args, 1)
    base = out["baseline_one_at_a_time"]["requests_per_s"]
    out["throughput_ratio"] = round(out["micro_batching"]["requests_per_s"] / base, 2) if base else None
    out["errors"] = out["micro_batching"]["errors"] + out["baseline_one_at_a_time"]["errors"]
    out["targets"] = {"errors": 0, "throughput_ratio": 2.0}
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
