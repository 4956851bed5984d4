"""The classify task: one label per image. The plug-in the generic commands call for it.

- train: `ClassifyTask` (tasks/classify_module.py: cross-entropy, accuracy, confusion) on
  `ClassifyDataModule` (or its prepared-cache variant); metrics.csv leads with train/val
  loss and accuracy; the best checkpoint is the best val/acc; health warns about collapsed
  predictions and accuracy at chance.
- evaluate: the run's classes matched by name to the manifest's labels, softmax
  probabilities through `ClassifyTask.predict_step` (test-time augmentation optional), the
  classification report (accuracy, mCA, F1, GAP, ECE, confusion) into metrics.json, and
  predictions.csv (path, label, pred, confidence, loss, correct) and probs.npy beside it.
- predict: the top-k classes of each image; export: the logits.
- report and compare: report/classify.py, and the accuracy columns below.

Cheap to import (compare and config validation import it): the heavy parts are imported
inside the hooks.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from typing_extensions import TypedDict

from vislab.errors import VislabError
from vislab.tasks.registry import Column, Evaluation, Task, register_task
from vislab.usertext import term

if TYPE_CHECKING:
    import lightning as L
    import numpy as np
    import pandas as pd
    import torch.nn as nn

    from vislab.config import RunConfig
    from vislab.data.datamodule import ClassifyDataModule
    from vislab.health import HealthCheck
    from vislab.report.rundata import RunData
    from vislab.runs import LoadedRun

UNKNOWN = -1  # class id of an image without a label
# the metrics.json fields its report and compare read (null: a figure not defined for the set)
_Figure = float | None
_Text = str | None
_ClassFigures = TypedDict("_ClassFigures", {"class": str, "support": int, "accuracy": _Figure, "precision": _Figure, "recall": _Figure, "f1": _Figure}, total=False)
_ClassAccuracy = TypedDict("_ClassAccuracy", {"class": str, "support": int, "accuracy": _Figure}, total=False)
_Confused = TypedDict("_Confused", {"true": str, "pred": str, "count": int, "fraction": _Figure}, total=False)
_Loss = TypedDict("_Loss", {"path": _Text, "true": _Text, "pred": _Text, "confidence": _Figure, "loss": _Figure}, total=False)
ClassifyMetrics = TypedDict(
    "ClassifyMetrics",
    {
        **{k: _Figure for k in ("accuracy", "top5_accuracy", "mca", "gap", "ece", "att_accuracy", "att_mca", "att_f1_macro")},
        **{f"{k}_{avg}": _Figure for k in ("precision", "recall", "f1") for avg in ("macro", "weighted")},
        "top_k": int, "num_labelled": int, "confusion_matrix": list[list[_Figure]] | None,
        "per_class": list[_ClassFigures] | None,
        "best_classes": list[_ClassAccuracy] | None,
        "worst_classes": list[_ClassAccuracy] | None,
        "confused_pairs": list[_Confused] | None,
        "highest_loss": list[_Loss] | None,
    },
    total=False,
)


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


def _refuse_unreadable(bad: list[tuple[str, str]]) -> None:
    path, reason = bad[0]
    raise VislabError(
        f"{path}: cannot read image ({reason}); the dataset changed since `vislab curate`: restore the file or re-curate"
    )


def _eval_datamodule(run: "LoadedRun", dataset_dir: Path | None = None) -> "ClassifyDataModule":
    """The run's datamodule for predicting on files (the eval transform of its DataSpec): a
    dataset's, decoding under its curate --max-pixels (evaluate), or the run's (predict)."""
    from vislab.data.datamodule import ClassifyDataModule
    from vislab.data.manifest import recorded_max_pixels

    limit = None if dataset_dir is not None else recorded_max_pixels(run.info)
    dataset = dataset_dir or run.info.get("dataset_dir") or run.run_dir
    return ClassifyDataModule(dataset, run.cfg.data, run.spec.to_dict(), run.classes, run.cfg.seed, run.cfg.model.in_chans, max_pixels=limit)


def _stack(outputs: list[dict[str, Any]], n_classes: int) -> dict[str, "np.ndarray"]:
    """predict_step outputs (one dict per batch) as one float32 array per key."""
    import numpy as np

    if not outputs:
        return {"probs": np.zeros((0, n_classes), np.float32), "target": np.zeros(0, np.int64)}
    return {k: np.concatenate([o[k].cpu().numpy() for o in outputs]) for k in outputs[0]}


class ClassifyPlugin(Task):
    """Image classification: a label per image, class logits out."""

    name = "classify"
    description = "one label per image: accuracy, mCA, GAP, confusion, CAMs"
    model_tasks = ("classify",)
    monitor = ("val/acc", "max")
    metric_columns = ("train/loss", "train/acc", "val/loss", "val/acc")
    extra_metrics = tuple(f"{p}/{m}" for p in ("train", "val") for m in ("att_loss", "per_loss", "att_acc"))  # model.attention: abn
    percent_metrics = frozenset({"train/acc", "val/acc"})
    summary_metric = "val/acc"
    curve_panels = (("Accuracy", "acc", "max"),)
    report_module = "vislab.report.classify"
    export_outputs = ("logits",)
    eval_marks = ("accuracy",)
    eval_fields = ClassifyMetrics

    # ---- training ------------------------------------------------------------------------
    def monitor_metrics(self, cfg: "RunConfig") -> tuple[str, ...]:
        """The attention branch's metrics only where there is one (model.attention: abn):
        without it Lightning would find no such key after the first epoch."""
        if cfg.model.attention == "abn":
            return self.metric_columns + self.extra_metrics
        return self.metric_columns

    def check_dataset(self, cfg: "RunConfig", data_dir: Path) -> None:
        from vislab.data.datamodule import classification_splits

        classification_splits(data_dir, cfg.data.val_fraction, cfg.seed)

    def build(
        self, cfg: "RunConfig", data_dir: Path, sanity: bool = False, *, load_weights: bool = True
    ) -> tuple["L.LightningModule", "L.LightningDataModule", dict[str, Any]]:
        from vislab.data.datamodule import ClassifyDataModule, classification_splits
        from vislab.tasks.classify_module import ClassifyTask, resolve_class_weights

        splits = classification_splits(data_dir, cfg.data.val_fraction, cfg.seed)
        counts = [int((splits.train["target"] == i).sum()) for i in range(len(splits.classes))]
        weights = resolve_class_weights(cfg.train.class_weights, counts)
        model = self.create_model(cfg, splits.classes, load_weights=load_weights)
        task = ClassifyTask(cfg.model_dump(mode="json"), splits.classes, None, weights, model=model)
        dm_class: type = ClassifyDataModule
        if cfg.data.cache:  # the prepared uint8 cache, augmented on batches by the task
            from vislab.data.cached import CachedClassifyDataModule

            dm_class = CachedClassifyDataModule
        dm = dm_class(data_dir, cfg.data, task.hparams["data_spec"], splits.classes, cfg.seed, cfg.model.in_chans, sanity_batch=sanity)
        dm.splits = splits
        facts = {
            "val_source": splits.val_source,
            "split_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
            "train_class_counts": dict(zip(splits.classes, counts)),
            "class_weights": weights,
        }
        return task, dm, facts

    def health_checks(self, cfg: "RunConfig") -> list["HealthCheck"]:
        from vislab.tasks.classify_module import PredictionSpread

        return [PredictionSpread(cfg.train.health.chance_after_epochs, cfg.train.health.collapse_fraction)]

    # ---- after training ------------------------------------------------------------------
    def load_module(self, run: "LoadedRun") -> "L.LightningModule":
        from vislab.tasks.classify_module import ClassifyTask

        return ClassifyTask(run.cfg.model_dump(mode="json"), run.classes, run.spec.to_dict(), model=run.model)

    def evaluate(
        self,
        run: "LoadedRun",
        rows: "pd.DataFrame",
        dataset_dir: Path,
        *,
        precision: str = "32-true",
        description: str | None = None,
        tta: bool = False,
        tta_translate: int = 0,
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> Evaluation:
        import numpy as np
        import pandas as pd

        from vislab.data.manifest import manifest_path, refuse_boxes
        from vislab.metrics.classification import classification_report
        from vislab.runs import write_eval_files
        from vislab.tasks.base import predict_batches

        refuse_boxes(dataset_dir)
        y = np.asarray(match_labels(rows["label"], run.classes, str(manifest_path(dataset_dir))), dtype=np.int64)
        paths = rows["path"].tolist()
        module = self.load_module(run)
        module.tta, module.tta_translate = tta, tta_translate
        dm = _eval_datamodule(run, dataset_dir)
        dm.predict_on(paths, y.tolist(), on_unreadable=_refuse_unreadable, batch_size=batch_size, num_workers=num_workers)
        heads = _stack(predict_batches(module, dm, precision=precision, description=description), len(run.classes))
        probs = heads["probs"].astype(np.float32)
        pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
        labelled = y != UNKNOWN
        losses = np.full(len(y), np.nan, dtype=np.float64)
        losses[labelled] = -np.log(np.clip(probs[labelled, y[labelled]], 1e-12, None))
        metrics = classification_report(y, probs, run.classes, losses=losses, paths=paths)
        if "att_probs" in heads:  # the attention branch's own predictions
            att = classification_report(y, heads["att_probs"].astype(np.float32), run.classes)
            metrics.update({f"att_{k}": att.get(k) for k in ("accuracy", "mca", "f1_macro")})

        def write(out: Path) -> None:
            table = pd.DataFrame(
                {
                    "path": paths,
                    "label": [run.classes[t] if t != UNKNOWN else "" for t in y],
                    "pred": [run.classes[p] for p in pred],
                    "confidence": probs.max(1) if len(probs) else [],
                    "loss": losses,
                    "correct": [bool(p == t) if t != UNKNOWN else "" for p, t in zip(pred, y)],
                }
            )
            write_eval_files(out, table, probs)

        return Evaluation(metrics, {"tta": bool(tta or tta_translate), "tta_translate": tta_translate}, write)

    def evaluation_line(self, metrics: dict[str, Any]) -> str:
        """Accuracy and mCA count the labelled images only, so the line says how many those are."""
        acc, mca = metrics.get("accuracy"), metrics.get("mca")
        n, labelled = metrics.get("num_samples"), metrics.get("num_labelled")
        acc_txt = f"accuracy {acc:.2%}" if acc is not None else "accuracy n/a (no labels)"
        mca_txt = f", mCA {mca:.2%}" if mca is not None else ""
        if not isinstance(n, int) or not isinstance(labelled, int) or labelled == n:
            on = f"{n} images"
        elif labelled == 0:
            on = f"{n} unlabelled images"
        else:
            on = f"{labelled} labelled images ({n - labelled} unlabelled)"
        return f"{metrics['name']}: {acc_txt}{mca_txt} on {on}"

    def predict(self, run: "LoadedRun", files: Sequence[Path], *, top_k: int = 5, batch_size: int = 32, **other: Any) -> list[dict[str, Any]]:
        """One dict per image: path, pred, confidence, top [{label, prob}] (or error)."""
        from vislab.tasks.base import predict_batches

        if other:
            raise VislabError(f"--{next(iter(other))}: an option of detection runs; a classification run takes --top-k")
        if top_k < 1:
            raise VislabError("--top-k: must be at least 1")
        results: list[dict[str, Any]] = [{"path": str(f)} for f in files]
        unreadable: dict[str, str] = {}
        dm = _eval_datamodule(run)
        # the position of each file rides along as its target, so results keep the input order
        dm.predict_on([str(f) for f in files], range(len(files)), on_unreadable=unreadable.update, batch_size=batch_size, num_workers=0)
        k = min(top_k, len(run.classes))
        for out in predict_batches(self.load_module(run), dm, description="predict"):
            top_p, top_i = out["probs"].float().cpu().topk(k, dim=1)
            for pos, ps, ids in zip(out["target"].tolist(), top_p.tolist(), top_i.tolist()):
                entry = results[pos]
                entry["pred"] = run.classes[ids[0]]
                entry["confidence"] = ps[0]
                entry["top"] = [{"label": run.classes[i], "prob": p} for i, p in zip(ids, ps)]
        for entry in results:
            if "pred" not in entry:
                entry["error"] = f"cannot read image: {unreadable.get(entry['path'], 'unknown reason')}"
        return results

    def format_predictions(self, results: list[dict[str, Any]], fmt: str) -> str:
        """Text for the CLI: a table, JSON (a list), or long CSV (path, rank, label, prob, error).
        The CSV and JSON keep each path exactly (two files must not share a row key); only
        the table, which is for people, shows names through `term`."""
        if fmt == "json":
            return json.dumps(results, indent=2)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["path", "rank", "label", "prob", "error"])
            for r in results:
                if "error" in r:
                    w.writerow([r["path"], "", "", "", r["error"]])
                for rank, t in enumerate(r.get("top", []), 1):
                    w.writerow([r["path"], rank, t["label"], f"{t['prob']:.6f}", ""])
            return buf.getvalue()
        if fmt != "table":
            raise VislabError(f"--format {fmt!r}: choose table, json or csv")
        from vislab.display import text_table

        rows = []
        for r in results:
            if "error" in r:
                rows.append((term(r["path"]), "[red]error[/]", "", term(r["error"])))
                continue
            rest = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in r["top"][1:])
            rows.append((term(r["path"]), term(r["pred"]), f"{r['confidence']:.3f}", term(rest)))
        return text_table([("image", "left"), ("prediction", "left"), ("prob", "right"), ("next", "left")], rows)

    def export_metadata(self, run: "LoadedRun") -> dict[str, Any]:
        """The eval transform written out, so the .onnx file alone reproduces vislab predict."""
        from vislab.export_info import classify_preprocess

        return {"vislab_preprocess": classify_preprocess(run.spec.to_dict(), run.cfg.data.grayscale)}

    def export_module(self, model: "nn.Module") -> "nn.Module":
        from vislab.models.outputs import LogitsOnly

        return LogitsOnly(model)

    # ---- report and compare ----------------------------------------------------------------
    def compare_columns(self) -> list[Column]:
        return [
            Column("best_val_acc", "best val acc", "val acc %", percent=True, higher_is_better=True, aliases=("val_acc",)),
            Column("test_acc", "test acc", "test acc %", percent=True, higher_is_better=True, aliases=("acc", "accuracy")),
            Column("mca", "mCA", "mCA %", percent=True, higher_is_better=True),
            Column("f1", "F1 (macro)", "F1 %", percent=True, higher_is_better=True),
            Column("att_test_acc", "attention-branch test acc", "att acc %", percent=True, higher_is_better=True, optional=True),
        ]

    def compare_values(self, data: "RunData", split: str) -> dict[str, Any]:
        ev = data.evals.get(split)
        m = ev.metrics if ev else {}
        return {
            "best_val_acc": (data.summary.get("best_val") or {}).get("val/acc"),
            "test_acc": m.get("accuracy"),
            "mca": m.get("mca"),
            "f1": m.get("f1_macro"),
            "att_test_acc": m.get("att_accuracy"),
        }

    def scored_set(self, metrics: dict[str, Any]) -> tuple[int | None, list[str] | None]:
        """The labelled images (accuracy's denominator) and the classes that have some (mCA's)."""
        n = metrics.get("num_labelled")
        per_class = metrics.get("per_class")
        classes = [str(r.get("class")) for r in per_class if r.get("support")] if isinstance(per_class, list) and n else None
        return (n if isinstance(n, int) else None), classes


register_task(ClassifyPlugin())
