"""`vislab evaluate`: a run's model on a split of its own dataset or of another curated one.

Another dataset's labels are matched to the run's classes by name, so it may hold a subset
of the classes in any order; a label the run does not know is an error that lists them.
Writes RUN_DIR/eval/<name>/{metrics.json, predictions.csv, probs.npy} (the run-directory
contract); `name` is the split, or `<split>-<dataset folder name>` with `--data`.

Evaluating the run's own dataset after its manifest changed is allowed, with a warning and
`manifest_changed: true` in metrics.json. An image that cannot be read any more is an error
naming it (metrics over fewer images than the split holds would not compare with others).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch

from vislab.errors import VislabError

UNKNOWN = -1
NAME_CHARS = 100  # eval folder names: room for the report's `highest_loss_<name>.png` within 255 bytes


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def match_labels(labels: Iterable[str], classes: list[str], source: str) -> list[int]:
    """Class ids of `labels` by name (-1 for an empty label); unknown names are one error."""
    index = {c: i for i, c in enumerate(classes)}
    labels = list(labels)
    unknown = sorted({lab for lab in labels if lab and lab not in index})
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else "")
        raise VislabError(
            f"{source}: label(s) the run does not know: {shown}; the run's classes are {', '.join(classes)}"
        )
    return [index[lab] if lab else UNKNOWN for lab in labels]


BRANCH_KEYS = ("logits", "att_logits")  # perception (the prediction) and, for ABN, the attention branch


def predict_branch_probs(
    model: torch.nn.Module,
    loader: Iterable[Any],
    tta: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
    tta_translate: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """Softmax probabilities [N, C] (float32) of every output head: `logits` always, and
    `att_logits` for a model with an attention branch.

    `tta` averages over the image and its mirror image, `tta_translate` > 0 also over those
    shifted by that many pixels (`batch_augment.tta_views`). `bf16` and `channels_last`
    evaluate the way a run trained with them validated (bf16 autocast, NHWC memory).
    """
    from vislab.data.batch_augment import tta_views

    device = _device()
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out: dict[str, list[np.ndarray]] = {}
    batches = progress(loader) if progress is not None else loader
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for x, _ in batches:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            views = tta_views(x, flip=True, translate=tta_translate) if (tta or tta_translate) else [x]
            sums: dict[str, torch.Tensor] = {}
            for v in views:
                y = model(v)
                heads = {k: y[k] for k in BRANCH_KEYS if k in y} if isinstance(y, dict) else {"logits": y}
                for k, logits in heads.items():
                    p = logits.float().softmax(1)
                    sums[k] = sums[k] + p if k in sums else p
            for k, total in sums.items():
                out.setdefault(k, []).append((total / len(views)).cpu().numpy())
    n_classes = getattr(model, "num_classes", 0)
    if not out:
        return {"logits": np.zeros((0, n_classes), np.float32)}
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def branch_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str], prefix: str) -> dict[str, Any]:
    """Accuracy, mCA and macro F1 of a second head (e.g. `att_`), for runs with two branches."""
    from vislab.metrics.classification import classification_report

    rep = classification_report(y, probs, classes)
    return {f"{prefix}{k}": rep.get(k) for k in ("accuracy", "mca", "f1_macro")}


def _report(y: np.ndarray, probs: np.ndarray, classes: list[str], losses: np.ndarray, paths: list[str]) -> dict[str, Any]:
    try:
        from vislab.metrics.classification import classification_report
    except ImportError:  # pragma: no cover - the metrics layer is part of vislab
        lab = y != UNKNOWN
        acc = float((probs[lab].argmax(1) == y[lab]).mean()) if lab.any() else None
        return {"num_samples": int(len(y)), "num_labelled": int(lab.sum()), "classes": classes, "accuracy": acc}
    return classification_report(y, probs, classes, losses=losses, paths=paths)


def evaluate(
    run_dir: str | Path,
    split: str = "test",
    data: str | Path | None = None,
    tta: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    tta_translate: int = 0,
) -> dict[str, Any]:
    """Evaluate the run's best checkpoint on `split` ('all' = every usable row); returns the metrics."""
    from rich.progress import track

    from vislab.data.datamodule import EpochSampler, ImageTableDataset, SkippingLoader
    from vislab.data.manifest import manifest_hash, read_manifest, usable
    from vislab.data.transforms import eval_transform
    from vislab.fsguard import make_folder
    from vislab.runs import EVAL_METRICS, EVAL_PREDICTIONS, EVAL_PROBS, load_run, run_paths, write_json

    run = load_run(run_dir)
    dataset_dir = Path(data) if data is not None else Path(run.info["dataset_dir"])
    df = read_manifest(dataset_dir)
    recorded = run.info.get("manifest_hash")
    own = run.info.get("dataset_dir") is not None and dataset_dir.resolve() == Path(run.info["dataset_dir"]).resolve()
    changed = own and recorded is not None and recorded != manifest_hash(dataset_dir)
    if changed:
        print(
            f"warning: {dataset_dir / 'manifest.csv'} changed since this run was trained; "
            "the metrics are of the current manifest (recorded as manifest_changed in metrics.json)",
            file=sys.stderr,
            flush=True,
        )
    rows = usable(df) if split == "all" else usable(df, split)
    if rows.empty:
        present = sorted({s for s in usable(df)["split"] if s})
        hint = f"splits with usable rows: {', '.join(present)}" if present else "its rows have no split"
        raise VislabError(f"{dataset_dir}: no usable rows in split '{split}' ({hint}); pass --split NAME or --split all")
    y = np.asarray(match_labels(rows["label"], run.classes, str(dataset_dir / "manifest.csv")), dtype=np.int64)
    spec = run.spec
    transform = eval_transform(
        spec.input_size, spec.mean, spec.std, spec.crop_pct, spec.interpolation, run.cfg.data.grayscale, run.cfg.model.in_chans
    )
    paths = rows["path"].tolist()
    size_hint = int(max(spec.input_size[-2:]) / spec.crop_pct + 0.5)
    ds = ImageTableDataset(paths, y.tolist(), transform, size_hint)
    bs = batch_size or run.cfg.data.eval_batch_size or run.cfg.data.batch_size
    workers = run.cfg.data.num_workers if num_workers is None else num_workers
    loader = SkippingLoader(
        ds, on_unreadable=_refuse_unreadable, batch_size=bs, num_workers=workers, sampler=EpochSampler(len(ds), shuffle=False, train=False)
    )
    from vislab.tricks import resolve_precision

    bf16 = resolve_precision(run.cfg.train.precision, run.cfg.train.accelerator) == "bf16-mixed"
    heads = predict_branch_probs(
        run.model,
        loader,
        tta,
        progress=lambda it: track(it, description=f"evaluate {split}", total=len(loader), transient=True),
        tta_translate=tta_translate,
        bf16=bf16,
        channels_last=run.cfg.train.channels_last,
    )
    probs = heads["logits"]
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    labelled = y != UNKNOWN
    losses = np.full(len(y), np.nan, dtype=np.float64)
    losses[labelled] = -np.log(np.clip(probs[labelled, y[labelled]], 1e-12, None))
    metrics = _report(y, probs, run.classes, losses, paths)
    if "att_logits" in heads:
        metrics.update(branch_metrics(y, heads["att_logits"], run.classes, "att_"))
    name = eval_name(split, None if data is None else dataset_dir.resolve().name)
    metrics.update(
        {
            "split": split,
            "name": name,
            "manifest_changed": bool(changed),
            "dataset_dir": str(dataset_dir.resolve()),
            "checkpoint": str(run.checkpoint),
            "tta": bool(tta or tta_translate),
            "tta_translate": tta_translate,
            "precision": "bf16-mixed" if bf16 else "32-true",
        }
    )
    out = make_folder(run_paths(run.run_dir).eval_dir(name), "eval folder")
    pd.DataFrame(
        {
            "path": paths,
            "label": [run.classes[t] if t != UNKNOWN else "" for t in y],
            "pred": [run.classes[p] for p in pred],
            "confidence": probs.max(1) if len(probs) else [],
            "loss": losses,
            "correct": [bool(p == t) if t != UNKNOWN else "" for p, t in zip(pred, y)],
        }
    ).to_csv(out / EVAL_PREDICTIONS, index=False)
    np.save(out / EVAL_PROBS, probs)
    write_json(out / EVAL_METRICS, json.loads(json.dumps(metrics, default=_jsonable)))
    metrics["eval_dir"] = str(out)
    return metrics


def _refuse_unreadable(bad: list[tuple[str, str]]) -> None:
    path, reason = bad[0]
    raise VislabError(
        f"{path}: cannot read image ({reason}); the dataset changed since `vislab curate`: restore the file or re-curate"
    )


def eval_name(split: str, dataset_name: str | None = None) -> str:
    """The eval folder's name: the split, or `<split>-<dataset folder name>`; one that is not a
    plain folder name, or is long, is reduced to a slug of bounded length plus a short hash."""
    from vislab.fsguard import folder_name_problem, slug

    raw = split if dataset_name is None else f"{split}-{dataset_name}"
    if folder_name_problem(raw) is None and len(raw) <= NAME_CHARS:
        return raw
    return f"{slug(raw)[:NAME_CHARS]}-{hashlib.sha1(raw.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
