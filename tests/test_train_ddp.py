"""DDP with two CPU processes (gloo): both ranks train on their shard and end with identical weights."""

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

cfg = tiny_config(train={"epochs": 2, "strategy": "ddp", "devices": 2, "accelerator": "cpu"}, data={"batch_size": 8})
train(cfg, sys.argv[1], sys.argv[2], callbacks=[RankDigest(sys.argv[3])])
"""


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    data = make_pattern_dataset(tmp_path / "data", per_class=20, size=16)
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), str(data), str(run), str(tmp_path)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    sha0, sha1 = (tmp_path / "rank0.sha").read_text(), (tmp_path / "rank1.sha").read_text()
    assert sha0 == sha1
    seen0 = (tmp_path / "rank0.seen").read_text().split()
    seen1 = (tmp_path / "rank1.seen").read_text().split()
    assert len(seen0) == len(seen1) == 4  # 2 epochs x 2 steps, in lockstep
    assert seen0 != seen1  # each rank trained on its own shard
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "completed"
    # 36 train images over 2 ranks: 18 each, 2 full batches of 8 -> 32 images per epoch
    assert summary["epochs_completed"] == 2
