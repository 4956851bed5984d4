"""Does this machine have what `train.accelerator`, `train.devices`, `train.strategy` and
`train.num_nodes` ask for? Checked before a run folder is written.

Why here and not in Lightning: Lightning finds out only when the Trainer is built, after
config.yaml and run.json are written, and says it as a traceback (MisconfigurationException,
TypeError, ModuleNotFoundError torch_xla); and `num_nodes > 1` without a cluster environment
does not fail at all, it waits forever for nodes nobody started. Each problem here is one line
naming the key, what this machine has, and the fix. Whatever the explicit checks miss,
Lightning's own argument parsing (the Trainer's accelerator connector, which starts nothing)
still catches, worded the same way.

CPU DDP (`train.devices: 2` on a CPU-only machine) is allowed: Lightning runs it with gloo,
and it is how DDP is tested without GPUs.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from vislab.errors import VislabError

# the variables Lightning's cluster environments read (fabric/plugins/environments)
_CLUSTER_HINT = (
    "set MASTER_ADDR, MASTER_PORT and NODE_RANK (0 on the main node) on every node, or launch with "
    "torchrun (--nnodes) or under SLURM (srun)"
)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_accelerator(name: str) -> str:
    """The accelerator a run actually gets: cuda, mps, tpu or cpu; a one-line error when this
    machine has none of what `train.accelerator` names."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    key = name.lower()
    gpus = _gpu_count()
    if key == "auto":
        return "cuda" if gpus else "mps" if _mps() else "cpu"
    if key == "gpu":
        if gpus:
            return "cuda"
        if _mps():
            return "mps"
        raise VislabError(f"train.accelerator: {name}: no GPU visible here (torch.cuda.is_available() is False); use cpu or auto")
    if key == "cuda" and not gpus:
        raise VislabError(f"train.accelerator: {name}: no CUDA GPU visible here (torch.cuda.is_available() is False); use cpu or auto")
    if key == "mps" and not _mps():
        raise VislabError(f"train.accelerator: {name}: no Apple MPS device here (torch.backends.mps.is_available() is False); use cpu or auto")
    if key == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise VislabError(f"train.accelerator: {name}: no TPU here (torch_xla is not installed); use cpu or auto")
    known = sorted(AcceleratorRegistry.available_accelerators())
    if key not in known:
        raise VislabError(f"train.accelerator: {name}: not an accelerator Lightning knows; use one of auto, gpu, {', '.join(known)}")
    return key


def _devices_value(devices: int | str | list[int]) -> int | str | list[int]:
    """`train.devices` as Lightning reads it: a count, a list of ids, or auto."""
    if isinstance(devices, str):
        text = devices.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        if "," in text:
            return [int(p) for p in text.split(",") if p.strip()]
    return devices


def check_devices(accelerator: str, devices: int | str | list[int]) -> None:
    """`train.devices` against what the resolved accelerator has here."""
    value = _devices_value(devices)
    if value == "auto":
        return
    if accelerator == "cpu":
        if isinstance(value, list):
            raise VislabError(
                f"train.devices: {devices}: a list picks GPU ids, and this run trains on the CPU (no GPU visible here); "
                "use auto, 1, or N for N-process CPU DDP"
            )
        if not isinstance(value, int) or value <= 0:
            raise VislabError(f"train.devices: {devices}: on the CPU this is the number of processes (an int > 0); use auto or 1")
        return
    have = _gpu_count() if accelerator == "cuda" else 1 if accelerator == "mps" else None
    if have is None:
        return  # tpu: Lightning's connector checks it
    if isinstance(value, int) and (value == 0 or value > have):
        raise VislabError(f"train.devices: {devices}: this machine has {have} {accelerator} device(s); use auto, -1 (all) or 1..{have}")
    if isinstance(value, list):
        bad = [i for i in value if not 0 <= i < have]
        if bad or not value:
            raise VislabError(
                f"train.devices: {devices}: device id(s) {bad or '[]'} not here; this machine has {have} {accelerator} device(s) "
                f"(ids 0..{have - 1}); use auto or a list of those ids"
            )


def check_strategy(strategy: str, accelerator: str) -> None:
    """`train.strategy`: a name Lightning knows, whose package and device are here."""
    from lightning.pytorch.strategies import StrategyRegistry

    name = strategy.lower()
    if name == "auto":
        return
    if name not in StrategyRegistry.available_strategies():
        raise VislabError(f"train.strategy: {strategy}: not a Lightning strategy; use auto, ddp, ddp_spawn, ddp_fork, fsdp or deepspeed")
    if name.startswith("deepspeed"):
        if importlib.util.find_spec("deepspeed") is None:
            raise VislabError(f"train.strategy: {strategy}: the deepspeed package is not installed here; use auto or ddp")
        if accelerator != "cuda":
            raise VislabError(f"train.strategy: {strategy}: DeepSpeed needs a CUDA GPU and this run trains on {accelerator}; use auto or ddp")
    if ("xla" in name or "tpu" in name) and accelerator != "tpu":
        raise VislabError(f"train.strategy: {strategy}: needs a TPU and this run trains on {accelerator}; use auto or ddp")


def cluster_environment() -> str | None:
    """The cluster environment Lightning would detect here (slurm, torchelastic, lsf, mpi, or
    env for MASTER_ADDR + NODE_RANK set by hand), or None."""
    from lightning.fabric.plugins.environments import LSFEnvironment, MPIEnvironment, SLURMEnvironment, TorchElasticEnvironment

    for name, env in (("slurm", SLURMEnvironment), ("torchelastic", TorchElasticEnvironment), ("lsf", LSFEnvironment), ("mpi", MPIEnvironment)):
        if env.detect():
            return name
    if "MASTER_ADDR" in os.environ and ("NODE_RANK" in os.environ or "GROUP_RANK" in os.environ):
        return "env"
    return None


def check_num_nodes(num_nodes: int) -> None:
    """Refuse several nodes with no cluster environment: node 0 would wait for the others forever."""
    if num_nodes > 1 and cluster_environment() is None:
        raise VislabError(
            f"train.num_nodes: {num_nodes}: no cluster environment here to find the other nodes (no SLURM, torchrun, LSF "
            f"or MPI job; MASTER_ADDR/NODE_RANK unset), so training would wait for them forever; {_CLUSTER_HINT}; "
            "or use train.num_nodes=1"
        )


def check_machine(train: Any) -> None:
    """All of `train`'s device settings against this machine; the first problem as a VislabError."""
    accelerator = resolve_accelerator(str(train.accelerator))
    check_devices(accelerator, train.devices)
    check_strategy(str(train.strategy), accelerator)
    check_num_nodes(int(train.num_nodes))
    _lightning_check(train)


def _lightning_check(train: Any) -> None:
    """Lightning's own parsing of the same arguments, for what the checks above do not cover."""
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    try:
        _AcceleratorConnector(
            devices=_devices_value(train.devices),
            num_nodes=train.num_nodes,
            accelerator=train.accelerator,
            strategy=train.strategy,
            use_distributed_sampler=False,
        )
    except Exception as err:  # Lightning raises several kinds here, each a configuration problem
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VislabError(
            f"train.accelerator/devices/strategy ({train.accelerator}/{train.devices}/{train.strategy}): {first}"
        ) from None
