"""Training tricks of the fast recipes, each behind its own config switch.

- `WhiteningInit` (model.fast_cnn.whiten): before the first step, sets a model's stem to the
  patch-whitening transform of a sample of training images (the model's `init_whitening`).
- `ProbeHeadInit` (train.head_init: probe): before the first step, sets a new linear head to
  a logistic-regression probe of the pretrained features, so fine-tuning starts from the
  probe instead of a random head (LP-FT).
- weight averaging (train.averaging): `ema` is Lightning's `EMAWeightAveraging`; `lookahead`
  is the `Lookahead` callback here.
- `resolve_precision` (train.precision: auto): bf16 mixed precision where the hardware runs
  it natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX), else full fp32.

`recipe_callbacks(cfg)` returns the callbacks a config asks for; the trainer adds them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import Callback

from vislab.config import RunConfig
from vislab.errors import VislabError


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """`auto` -> 'bf16-mixed' where bf16 is native on the device that will train, else '32-true'."""
    if precision != "auto":
        return precision
    gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


class WhiteningInit(Callback):
    """Set the model's stem from `n_images` training images before training (not on resume).

    The datamodule's `sample_batch(n)` gives the images, and the task's batch hooks turn them
    into exactly what the model sees (normalised, channels as configured).
    """

    def __init__(self, n_images: int) -> None:
        self.n_images = n_images
        self.done = False

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        model = pl_module.model
        if trainer.ckpt_path is not None or not getattr(model, "whiten", False) or not hasattr(model, "init_whitening"):
            return
        dm = trainer.datamodule
        batch = dm.sample_batch(self.n_images)
        batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
        x = pl_module.on_after_batch_transfer(batch, 0)[0]
        model.init_whitening(x.float())
        self.done = True


class ProbeHeadInit(Callback):
    """LP-FT: fit the new linear head as an L2 logistic regression on the pretrained features of
    up to `n_images` training images before the first step (not on resume).

    A random head sends large, arbitrary gradients into the pretrained backbone during the first
    fine-tuning steps and distorts the features it was chosen for; starting from the probe's
    solution, fine-tuning only has to improve on it (Kumar et al., "Fine-Tuning can Distort
    Pretrained Features", ICLR 2022). The regularisation strength is the one of `cs` that scores
    best on up to `n_images` validation images; features are standardised for the fit and the
    scaling is folded into the head's weights and bias.
    """

    def __init__(self, n_images: int, cs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)) -> None:
        self.n_images = n_images
        self.cs = cs

    @staticmethod
    @torch.no_grad()
    def features(pl_module: Any, loader: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features (the head's input) and targets of every batch of `loader`."""
        model, feats, targets = pl_module.model, [], []
        for batch in loader:
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            x, y = pl_module.on_after_batch_transfer(batch, 0)[:2]
            if pl_module.cfg.train.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
            targets.append(y.cpu())
        if not feats:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return torch.cat(feats).numpy(), torch.cat(targets).numpy()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.ckpt_path is not None:
            return
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        head = pl_module.model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise VislabError(f"train.head_init: probe fits a linear classifier, and {type(head).__name__} is not one; set train.head_init: random")
        t0, was_training = time.perf_counter(), pl_module.training
        pl_module.eval()
        try:
            dm = trainer.datamodule
            xtr, ytr = self.features(pl_module, dm.sample_loader("train", self.n_images))
            xva, yva = self.features(pl_module, dm.sample_loader("val", self.n_images))
        finally:
            pl_module.train(was_training)  # the task's train(): keeps BatchNorm frozen where configured
        if len(np.unique(ytr)) < 2:
            raise VislabError("train.head_init: probe needs training images of at least two classes; set train.head_init: random")
        scaler = StandardScaler().fit(xtr)
        ztr, zva = scaler.transform(xtr), scaler.transform(xva) if len(xva) else xva
        best: tuple[float, float, Any] | None = None
        for c in self.cs:
            clf = LogisticRegression(C=c, max_iter=1000).fit(ztr, ytr)
            score = float((clf.predict(zva) == yva).mean()) if len(zva) else -c  # no val images: the strongest L2
            if best is None or score > best[0]:
                best = (score, c, clf)
        assert best is not None
        weight, bias = self.linear_head(best[2], scaler, head.out_features)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight).to(head.weight))
            head.bias.copy_(torch.from_numpy(bias).to(head.bias))
        if trainer.is_global_zero:
            val = f", {best[0]:.1%} on {len(yva)} validation images" if len(zva) else ""
            print(f"probe head: C={best[1]} fitted on {len(ytr)} training images{val} ({time.perf_counter() - t0:.1f}s)", flush=True)

    @staticmethod
    def linear_head(clf: Any, scaler: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """The fitted classifier as (weight, bias) of one linear layer on unscaled features, a row
        per class; a class the probe never saw gets zero weights and the lowest bias."""
        coef, intercept = clf.coef_ / scaler.scale_, clf.intercept_.astype(np.float64)
        if len(clf.classes_) == 2:  # sklearn's binary model: one logit, split evenly over the two classes
            coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        intercept = intercept - coef @ scaler.mean_
        weight = np.zeros((num_classes, coef.shape[1]), np.float32)
        bias = np.full(num_classes, intercept.min(), np.float32)
        weight[clf.classes_], bias[clf.classes_] = coef, intercept
        return weight, bias


class Lookahead(Callback):
    """Slow weights that trail the trained ones: every `every` optimizer steps
    slow <- decay * slow + (1 - decay) * fast, then fast <- slow (floating weights and BN
    statistics of the task's `model`). With `warmup` the decay is decay * progress**3, so
    early training runs at full speed and the averaging tightens towards the end. Training
    ends on the slow weights; resume continues from the saved slow weights."""

    def __init__(self, decay: float, every: int = 5, warmup: bool = True) -> None:
        self.decay = decay
        self.every = every
        self.warmup = warmup
        self.slow: list[torch.Tensor] | None = None
        self.last_step = 0

    @staticmethod
    def _tensors(pl_module: Any) -> list[torch.Tensor]:
        return [t for t in pl_module.model.state_dict(keep_vars=True).values() if t.is_floating_point()]

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        fast = self._tensors(pl_module)
        if self.slow is None:
            self.slow = [t.detach().clone() for t in fast]
        else:  # restored from a checkpoint
            self.slow = [s.to(t.device, t.dtype) for s, t in zip(self.slow, fast)]

    @torch.no_grad()
    def _sync(self, pl_module: Any, progress: float) -> None:
        assert self.slow is not None
        d = self.decay * (min(1.0, progress) ** 3 if self.warmup else 1.0)
        for s, f in zip(self.slow, self._tensors(pl_module)):
            s.lerp_(f.detach(), 1.0 - d)
            f.data.copy_(s)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step > self.last_step and step % self.every == 0:
            total = max(1, int(trainer.estimated_stepping_batches))
            self._sync(pl_module, step / total)
            self.last_step = step

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.slow is not None and trainer.global_step > self.last_step:
            total = max(1, int(trainer.estimated_stepping_batches))
            self._sync(pl_module, trainer.global_step / total)
            self.last_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "slow": [s.cpu() for s in self.slow] if self.slow is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict.get("last_step", 0))
        self.slow = state_dict.get("slow")


def recipe_callbacks(cfg: RunConfig) -> list[Callback]:
    """The trick callbacks `cfg` switches on (probe head, whitening init, weight averaging)."""
    cbs: list[Callback] = []
    if cfg.train.head_init == "probe":
        if cfg.model.head is not None:
            raise VislabError("train.head_init: probe fits a linear head; set model.head: null (the model's own classifier) or head_init: random")
        if not cfg.model.starts_trained:
            raise VislabError("train.head_init: probe reads pretrained features; set model.pretrained (or model.weights) or head_init: random")
        cbs.append(ProbeHeadInit(cfg.train.probe_images))
    if cfg.model.name == "fast_cnn" and cfg.model.fast_cnn.whiten:
        cbs.append(WhiteningInit(cfg.model.fast_cnn.whiten_images))
    avg = cfg.train.averaging
    if avg.kind == "ema":
        from lightning.pytorch.callbacks import EMAWeightAveraging

        cbs.append(EMAWeightAveraging(decay=avg.decay, update_every_n_steps=avg.every))
    elif avg.kind == "lookahead":
        cbs.append(Lookahead(avg.decay, avg.every, avg.warmup))
    return cbs
