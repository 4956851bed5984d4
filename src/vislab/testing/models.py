"""Tiny models, a forward/backward check and weight files for tests.

Everything here runs in well under a second on a CPU and goes through the same factory as a
real run (`factory.create_model`), so a test of a tiny model tests the real code path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vislab.config import ModelConfig, SimpleCNNConfig
from vislab.models.registry import DataSpec, register_model
from vislab.models.simple_cnn import SimpleCNN

# timm's own test architectures: the real code of each family at a few thousand parameters
TINY_TIMM = ("test_resnet", "test_efficientnet", "test_convnext", "test_vit")


def tiny_model_config(name: str = "simple_cnn", **fields: Any) -> ModelConfig:
    """A ModelConfig for a model that builds and runs in milliseconds (a 2-block simple_cnn by default)."""
    raw: dict[str, Any] = {"name": name, **fields}
    if name == "simple_cnn":
        raw["simple_cnn"] = {"layers": 2, "filters": 4, "fc": 16, **fields.get("simple_cnn", {})}
    return ModelConfig.model_validate(raw)


def tiny_model(name: str = "simple_cnn", num_classes: int = 3, **fields: Any) -> nn.Module:
    """`create_model` on `tiny_model_config(name, **fields)`."""
    from vislab.models.factory import create_model

    return create_model(tiny_model_config(name, **fields), num_classes)


def check_forward_backward(
    model: nn.Module, num_classes: int, size: int = 32, batch: int = 2, in_chans: int = 3
) -> torch.Tensor:
    """One training-mode forward and backward; asserts logits of the right shape, all finite,
    and a gradient on every trainable parameter (an unused one would break DDP)."""
    model.train()
    x = torch.randn(batch, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    logits = model(x)
    assert logits.shape == (batch, num_classes), f"logits shape {tuple(logits.shape)} != {(batch, num_classes)}"
    assert torch.isfinite(logits).all(), "non-finite logits"
    model.zero_grad(set_to_none=True)
    logits.logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    return logits.detach()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread for a while: on a busy 2-core machine, intra-op
    threads mostly wait for each other (a YOLO training step measured 30x slower with 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def save_weights(model: nn.Module, path: str | Path, kind: str = "state_dict", prefix: str = "model.") -> Path:
    """Write `model`'s weights the way another tool would: `state_dict` (plain torch.save),
    `safetensors`, `lightning` (under `state_dict` with `prefix`, plus optimizer-like extras)
    or `timm` (timm's training checkpoint: under `state_dict` with an epoch and arch)."""
    path = Path(path)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if kind == "state_dict":
        torch.save(sd, path)
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif kind == "lightning":
        wrapped = {prefix + k: v for k, v in sd.items()}
        wrapped["criterion.weight"] = torch.ones(1)
        torch.save({"state_dict": wrapped, "epoch": 3, "global_step": 30, "optimizer_states": []}, path)
    elif kind == "timm":
        torch.save({"state_dict": sd, "epoch": 3, "arch": type(model).__name__}, path)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose state_dict, safetensors, lightning or timm")
    return path


class PacedCNN(SimpleCNN):
    """simple_cnn whose forward also waits a fixed time (`train_s` in training, `eval_s` in
    evaluation), so an epoch of a tiny test run takes a known wall time that a busy machine
    barely changes: time budgets and plans are then tested on real training with real costs."""

    def __init__(self, cfg: SimpleCNNConfig, num_classes: int, in_chans: int, train_s: float, eval_s: float) -> None:
        super().__init__(cfg, num_classes, in_chans=in_chans)
        self.train_s, self.eval_s = train_s, eval_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.train_s if self.training else self.eval_s)
        return super().forward(x)


@register_model(
    "paced_cnn",
    spec=DataSpec(input_size=(3, 64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0),
    description="test model (registered by vislab.testing.models): simple_cnn taking model.kwargs train_s / eval_s seconds a forward",
    pretrained=False,
)
def paced_cnn(cfg: ModelConfig, num_classes: int) -> PacedCNN:
    return PacedCNN(cfg.simple_cnn, num_classes, cfg.in_chans, float(cfg.kwargs.get("train_s", 0.0)), float(cfg.kwargs.get("eval_s", 0.0)))


def weights_digest(run: str | Path) -> str:
    """sha256 of a run's last.ckpt weights (names and bytes): two runs that trained the
    same steps from the same state have the same digest."""
    import hashlib

    from vislab.runs import load_checkpoint_file

    state = load_checkpoint_file(Path(run) / "checkpoints/last.ckpt")["state_dict"]
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].numpy().tobytes())
    return h.hexdigest()
