"""Device settings this machine cannot run are refused before a run folder is written: one line
naming the key, what the machine has and the fix (tests run on CPU-only machines; the GPU cases
skip where a GPU is visible)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import dump_config
from vislab.testing.synthetic import make_pattern_dataset, tiny_config

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="these settings are valid where a GPU is visible")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("machine")
    data = make_pattern_dataset(root / "data", per_class=10, size=16)
    cfg = root / "tiny.yaml"
    cfg.write_text(dump_config(tiny_config(train={"epochs": 1})))
    return root, data, cfg


def _refused(setup, key_value: str, *expected: str) -> str:
    root, data, cfg = setup
    out = root / ("run-" + key_value.replace("=", "-").replace(",", "_").replace("[", "").replace("]", ""))
    res = CliRunner().invoke(app, ["train", str(cfg), "--data", str(data), "--out", str(out), "--set", key_value])
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    for text in expected:
        assert text in res.output, res.output
    assert not out.exists(), sorted(p.name for p in out.iterdir())  # nothing half-made left behind
    return res.output


@CPU_ONLY
@pytest.mark.parametrize("name", ["gpu", "cuda"])
def test_gpu_accelerator_without_gpu_is_one_line(setup, name):
    _refused(setup, f"train.accelerator={name}", "train.accelerator", "no", "GPU visible here", "use cpu or auto")


def test_unavailable_or_unknown_accelerators_are_one_line(setup):
    if not torch.backends.mps.is_available():
        _refused(setup, "train.accelerator=mps", "train.accelerator: mps", "use cpu or auto")
    _refused(setup, "train.accelerator=tpu", "train.accelerator: tpu", "torch_xla", "use cpu or auto")
    _refused(setup, "train.accelerator=quantum", "train.accelerator: quantum", "cpu")


@CPU_ONLY
@pytest.mark.parametrize("devices", ["[0,1]", "-1", "0"])
def test_devices_that_do_not_fit_a_cpu_are_one_line(setup, devices):
    _refused(setup, f"train.devices={devices}", "train.devices", "CPU", "use auto")


@CPU_ONLY
def test_strategies_this_machine_cannot_run_are_one_line(setup):
    _refused(setup, "train.strategy=bogus", "train.strategy: bogus", "not a Lightning strategy", "use auto, ddp")
    _refused(setup, "train.strategy=deepspeed", "train.strategy: deepspeed", "use auto or ddp")


def test_num_nodes_without_cluster_environment_is_refused(setup, monkeypatch):
    for var in ("MASTER_ADDR", "NODE_RANK", "GROUP_RANK", "SLURM_NTASKS", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "LSB_JOBID"):
        monkeypatch.delenv(var, raising=False)
    _refused(setup, "train.num_nodes=2", "train.num_nodes: 2", "MASTER_ADDR", "NODE_RANK", "torchrun")


def test_sigterm_stops_a_run_blocked_waiting_for_other_nodes_and_records_the_stop(setup, tmp_path):
    """With a cluster environment set by hand but no second node, rank 0 blocks in the DDP
    rendezvous, where Python signal handlers never run; SIGTERM must still end it (it used to
    be ignored until kill -9), and the run folder must say how it ended: it held config.yaml
    and run.json of a run that never trained, with no summary.json (a resumed one's said
    'running')."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    _, data, cfg = setup
    run = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "0"}
    # `vislab train` with the watchdog's grace cut from 10 s to 2 s: it is blocked all along
    cli = "import sys, vislab.interrupts as i; i.BLOCKED_GRACE_S = 2.0; from vislab.cli import app; sys.exit(app(prog_name='vislab'))"
    proc = subprocess.Popen(
        [sys.executable, "-c", cli, "train", str(cfg), "--data", str(data), "--out", str(run),
         "--set", "train.num_nodes=2", "--set", "train.accelerator=cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        seen = []
        for line in proc.stdout:  # Lightning says this just before it blocks
            seen.append(line)
            if "Initializing distributed" in line:
                break
        assert any("Initializing distributed" in line for line in seen), "".join(seen)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    assert "SIGTERM received while blocked" in rest, rest
    assert "interrupted by SIGTERM before the first checkpoint; nothing was saved; start the run again" in rest, rest
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "sigterm" and summary["epochs_completed"] == 0 and summary["best_epoch"] is None
    resumed = CliRunner().invoke(app, ["train", "--resume", "--out", str(run)])
    assert resumed.exit_code != 0 and len(resumed.output.strip().splitlines()) == 1, resumed.output
    assert "nothing to resume (no last checkpoint: SIGTERM stopped the run before its first one)" in resumed.output
