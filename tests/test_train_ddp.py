"""DDP with two CPU processes (gloo): both ranks train on their shard and end with identical
weights, for classification and for detection (whose mAP gathers variable-length box lists)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from vislab.testing.synthetic import make_pattern_dataset

# Lightning's "ddp" relaunches the running script for rank 1, so the run is a script file
SCRIPT = """
import hashlib, sys
from pathlib import Path
from lightning.pytorch.callbacks import Callback
from vislab.testing.synthetic import tiny_config
from vislab.train import train

class RankDigest(Callback):
    def __init__(self, out):
        self.out = out
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        seen = Path(self.out, f"rank{trainer.global_rank}.seen")
        with seen.open("a") as f:
            f.write(",".join(str(round(float(v), 4)) for v in batch[0].flatten(1).mean(1)) + "\\n")
    def on_train_end(self, trainer, pl_module):
        h = hashlib.sha256()
        for k, v in sorted(pl_module.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        Path(self.out, f"rank{trainer.global_rank}.sha").write_text(h.hexdigest())

ddp = {"epochs": 2, "strategy": "ddp", "devices": 2, "accelerator": "cpu"}
if sys.argv[4] == "detect":
    from vislab.testing.detection import tiny_detect_config
    cfg = tiny_detect_config(train=ddp, data={"batch_size": 4}, detect={"conf": 0.05})
else:
    cfg = tiny_config(train=ddp, data={"batch_size": 8})
train(cfg, sys.argv[1], sys.argv[2], callbacks=[RankDigest(sys.argv[3])])
"""


def run_ddp(tmp_path, data, task: str) -> subprocess.CompletedProcess:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), str(data), str(tmp_path / "run"), str(tmp_path), task], capture_output=True, text=True, timeout=240
    )


def ranks_agree(tmp_path, steps: int) -> None:
    """Both ranks end with the same weights, after the same number of steps on different images."""
    assert (tmp_path / "rank0.sha").read_text() == (tmp_path / "rank1.sha").read_text()
    seen0 = (tmp_path / "rank0.seen").read_text().split()
    seen1 = (tmp_path / "rank1.seen").read_text().split()
    assert len(seen0) == len(seen1) == steps  # in lockstep
    assert seen0 != seen1  # each rank trained on its own shard


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    data = make_pattern_dataset(tmp_path / "data", per_class=20, size=16)
    proc = run_ddp(tmp_path, data, "classify")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks_agree(tmp_path, 4)  # 2 epochs x 2 steps
    run = tmp_path / "run"
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "completed"
    # 36 train images over 2 ranks: 18 each, 2 full batches of 8 -> 32 images per epoch
    assert summary["epochs_completed"] == 2


def test_ddp_detection_two_cpu_processes(tmp_path):
    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.detection import write_shapes_dataset

    write_shapes_dataset(tmp_path / "src", n=24)
    res = CliRunner().invoke(app, ["curate", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--split", "0.67,0.33,0", "--workers", "1"])
    assert res.exit_code == 0, res.output
    proc = run_ddp(tmp_path, tmp_path / "ds", "detect")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks_agree(tmp_path, 4)  # 16 train images over 2 ranks: 2 batches of 4 an epoch, 2 epochs
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert rows["epoch"].tolist() == [0, 1]
    assert rows["val/map50"].between(0, 1).all()  # mAP over both ranks' validation images
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped_reason"] == "completed"


def test_cli_cpu_ddp_prints_the_run_once(tmp_path):
    """`vislab train --set train.devices=2` on CPUs is two gloo processes (allowed, as above);
    Lightning relaunches the command for rank 1, which must not print its own 'run:' line."""
    from vislab.config import dump_config
    from vislab.testing.synthetic import tiny_config

    data = make_pattern_dataset(tmp_path / "data", per_class=10, size=16)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(dump_config(tiny_config(train={"epochs": 1})))
    proc = subprocess.run(
        [sys.executable, "-m", "vislab.cli", "train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"),
         "--set", "train.accelerator=cpu", "--set", "train.devices=2", "--set", "train.strategy=ddp"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("run:")] == [f"run: {tmp_path / 'run'}"], proc.stdout
