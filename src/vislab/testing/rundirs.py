"""Fake-but-valid run directories, for testing what reads runs without training a model.

`make_run_dir` writes every file of the run-directory contract (config.yaml, run.json,
metrics.csv, summary.json, health.json, eval/test/{metrics.json, predictions.csv, probs.npy})
plus a tiny curated dataset of coloured PNGs the predictions point at, so report, compare
and explain code can be exercised in a second. Values are seeded and plausible (the loss
falls, accuracy rises), not the output of a real model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from vislab.config import RunConfig, save_config
from vislab.data.manifest import manifest_hash, write_manifest
from vislab.metrics.classification import classification_report
from vislab.runs import EVAL_METRICS, EVAL_PREDICTIONS, EVAL_PROBS, run_paths

DEFAULT_CLASSES = ("cat", "dog", "fox")


def make_dataset(root: str | Path, classes: Sequence[str] = DEFAULT_CLASSES, per_class: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A curated dataset dir: one coloured, noisy PNG square per image and a manifest (70/15/15 split)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for ci, name in enumerate(classes):
        folder = root / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        hue = np.array([(ci * 97) % 256, (ci * 53 + 80) % 256, (ci * 151 + 40) % 256], dtype=np.float32)
        for i in range(per_class):
            px = np.clip(hue + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            path = folder / f"{name}_{i:03d}.png"
            Image.fromarray(px).save(path)
            frac = i / per_class
            split = "train" if frac < 0.7 else ("val" if frac < 0.85 else "test")
            rows.append({"path": str(path.resolve()), "label": name, "split": split, "status": "ok", "reason": "", "width": size, "height": size, "format": "PNG"})
    write_manifest(pd.DataFrame(rows), root)
    return root


def make_run_dir(
    root: str | Path,
    *,
    name: str = "run",
    classes: Sequence[str] = DEFAULT_CLASSES,
    model: str = "simple_cnn",
    input_size: int = 32,
    epochs: int = 5,
    n_test: int = 24,
    skill: float = 1.5,
    seed: int = 0,
    health: list[dict[str, Any]] | None = None,
    dataset: bool = True,
    wall_time_s: float = 12.5,
    params: dict[str, int] | None = None,
    checkpoint: bool = False,
    attention: str = "none",
    grayscale: bool = False,
    spec: dict[str, Any] | None = None,
) -> Path:
    """Write a complete run directory under `root/name` and return its path.

    `skill` shifts the true class's logit (higher = more accurate); with `dataset=True` a
    tiny image dataset is written beside it and the predictions point at its test images.
    `checkpoint=True` also saves a randomly initialised tiny model as checkpoints/best.ckpt
    (the `model.`-prefixed state_dict a Lightning checkpoint holds), so `vislab.runs.load_run`
    and everything built on it (explain, the report's CAM gallery, serve) work on the
    directory; `attention="abn"` gives the model an attention branch. `grayscale=True` makes
    a one-channel grey model (`data.grayscale`, `model.in_chans: 1`); `spec` overrides the
    data spec's values (mean, std, crop_pct, interpolation).
    """
    root = Path(root)
    run = root / name
    rng = np.random.default_rng(seed)
    classes = list(classes)
    run.mkdir(parents=True, exist_ok=True)
    files = run_paths(run)

    model_cfg: dict[str, Any] = {"name": model, "attention": attention}
    if model == "simple_cnn":
        model_cfg["simple_cnn"] = {"layers": 2, "filters": 8, "fc": 0}
    if grayscale:
        model_cfg["in_chans"] = 1
    data_cfg = {"img_size": input_size, "grayscale": grayscale}
    cfg = RunConfig.model_validate({"seed": seed, "model": model_cfg, "data": data_cfg, "train": {"epochs": epochs}})
    save_config(cfg, files.config)
    if checkpoint:
        _save_checkpoint(cfg, len(classes), files.best, seed)

    dataset_dir = None
    paths: list[str] = []
    if dataset:
        per_class = max(2, -(-n_test // len(classes)))
        dataset_dir = make_dataset(root / f"{name}-data", classes, per_class=per_class, size=input_size, seed=seed)
    channels = 1 if grayscale else 3
    spec = {"input_size": [channels, input_size, input_size], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0, **(spec or {})}
    files.run_json.write_text(
        json.dumps(
            {
                "vislab_version": "0.0.0",
                "git_sha": "0" * 40,
                "python": "3.11",
                "torch": "2",
                "timm": "1",
                "lightning": "2",
                "device": "cpu",
                "precision": "32-true",
                "dataset_dir": str(dataset_dir.resolve()) if dataset_dir else None,
                "manifest_hash": manifest_hash(dataset_dir) if dataset_dir else None,
                "classes": classes,
                "data_spec": spec,
                "created": "2024-01-01T00:00:00",
                "command": ["vislab", "train", "--fake"],
            },
            indent=2,
        )
    )

    ep = np.arange(epochs)
    decay = np.exp(-ep / max(1, epochs / 2))
    curves = pd.DataFrame(
        {
            "epoch": ep,
            "train/loss": 0.3 + 0.9 * decay + rng.normal(0, 0.01, epochs),
            "train/acc": 0.95 - 0.6 * decay,
            "val/loss": 0.4 + 0.8 * decay + rng.normal(0, 0.02, epochs),
            "val/acc": 0.9 - 0.55 * decay,
            "lr": 1e-3 * (0.5 ** (ep // 2)),
            "epoch_time_s": np.full(epochs, wall_time_s / epochs),
            "train_images_per_s": np.full(epochs, 800.0),
            "lr/first": 1e-3 * (0.5 ** (ep // 2)),
            "lr/last": 1e-3 * (0.5 ** (ep // 2)),
        }
    )
    curves.to_csv(files.metrics, index=False)

    y = rng.integers(0, len(classes), n_test)
    logits = rng.normal(size=(n_test, len(classes)))
    logits[np.arange(n_test), y] += skill
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    if dataset_dir is not None:
        imgs = sorted((dataset_dir / "images").rglob("*.png"))
        by_class = {c: [str(p.resolve()) for p in imgs if p.parent.name == c] for c in classes}
        paths = [by_class[classes[t]][i % len(by_class[classes[t]])] for i, t in enumerate(y)]
    else:
        paths = [f"/nonexistent/{classes[t]}/{i}.png" for i, t in enumerate(y)]
    pred = probs.argmax(1)
    loss = -np.log(probs[np.arange(n_test), y])
    ev = files.eval_dir("test")
    ev.mkdir(parents=True, exist_ok=True)
    np.save(ev / EVAL_PROBS, probs)
    pd.DataFrame(
        {
            "path": paths,
            "label": [classes[t] for t in y],
            "pred": [classes[q] for q in pred],
            "confidence": probs.max(1),
            "loss": loss,
            "correct": pred == y,
        }
    ).to_csv(ev / EVAL_PREDICTIONS, index=False)
    metrics = classification_report(y, probs, classes, losses=loss, paths=paths)
    (ev / EVAL_METRICS).write_text(json.dumps(metrics, indent=2))

    best = int(curves["val/acc"].idxmax())
    total = params or {"trainable": 120_000, "frozen": 0, "total": 120_000}
    summary = {
        "model": model,
        "input_size": [channels, input_size, input_size],
        "best_epoch": best,
        "best_val": {"val/acc": float(curves["val/acc"][best]), "val/loss": float(curves["val/loss"][best])},
        "epochs_completed": epochs,
        "epochs_planned": epochs,
        "stopped_reason": "completed",
        "wall_time_s": wall_time_s,
        "train_images_per_s": 800.0,
        "params": total,
    }
    files.summary.write_text(json.dumps(summary, indent=2))
    default_health = [{"level": "warn", "code": "val_loss_rising", "message": "val/loss rose for 2 epochs while train/loss fell (over-fitting?)", "epoch": epochs - 1, "step": None}]
    files.health.write_text(json.dumps(default_health if health is None else health, indent=2))
    return run


def _save_checkpoint(cfg: RunConfig, num_classes: int, path: Path, seed: int) -> None:
    import torch

    from vislab.models.factory import create_model

    torch.manual_seed(seed)
    net = create_model(cfg.model, num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"config": cfg.model_dump(mode="json")}}, path)


def blind_cams(run: str | Path, class_ids: Sequence[int] | None = None) -> None:
    """Make the Grad-CAM map of the given classes (all by default) zero everywhere, for any
    image: their classifier weights all negative, so at the last ReLU (activations >= 0) every
    channel's Grad-CAM weight is negative and the map's ReLU cuts it all (a simple_cnn run of
    `make_run_dir(checkpoint=True)`; EigenCAM, which needs no gradient, still maps a region)."""
    import torch

    path = run_paths(run).best
    saved = torch.load(path, weights_only=False)
    weight = saved["state_dict"]["model.head.1.weight"]
    rows = list(range(len(weight))) if class_ids is None else list(class_ids)
    weight[rows] = -weight[rows].abs() - 0.01
    torch.save(saved, path)
