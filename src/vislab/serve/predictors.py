"""What `vislab serve` knows about tasks: one `Predictor` class per task, nothing elsewhere.

The web app (`app.py`) and the batcher are task-blind: they decode an upload, call
`preprocess` in a request thread, hand the result to the model's micro-batcher, which calls
`predict_batch` with several requests' items at once, then `finish` each result in the
request's own thread (work that needs no model, such as drawing a picture, so the model's
one thread runs only model work), and return the JSON-ready dicts. A
task plugs in as one subclass registered with `@register` (its `task` is the run config's
`task:` value; in a module of its own named in `PREDICTOR_MODULES`, as serve/detect.py and serve/crops.py),
plus a renderer of its results in the page (`RENDERERS[task]` in page.html).

Classification (with or without an attention branch) is the first: top-k classes, and on
request the heat map of the top class (Grad-CAM; an ABN's own attention map) drawn on the
crop the model saw, as a JPEG data URI. Inference uses ONNX Runtime when `--onnx` is given
and the run has an export (`vislab export RUN`), else PyTorch; heat maps always come from
the PyTorch model, since Grad-CAM needs gradients and the attention map is not exported.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import math
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vislab.errors import VislabError

PYTORCH = "pytorch"
ONNXRUNTIME = "onnxruntime"


class OptionsError(VislabError):
    """A request's option field is unknown or has a bad value (the API answers 422)."""


class Predictor(ABC):
    """One served run: loads once, preprocesses one image, predicts a batch, describes itself.

    Subclasses set `task` and `Options` (a pydantic model of the request's option fields:
    its JSON schema is the API's documentation and the page's option controls) and
    implement the abstract methods. `predict_batch` runs in the model's one inference
    thread; `preprocess` runs in request threads, several at a time.
    """

    task: ClassVar[str]
    Options: ClassVar[type[BaseModel]]

    def __init__(self, run_dir: Path, engine: str) -> None:
        self.run_dir = run_dir
        self.engine = engine
        self.name = run_dir.name  # the server makes names unique
        self.notes: list[str] = []  # said once at start-up (e.g. why PyTorch serves a run asked to use ONNX)

    @classmethod
    def load(cls, run_dir: Path, onnx: bool = False, threads: int | None = None) -> "Predictor":
        """Build the model of a run directory (checked by `vislab.runs`): `cls(run, session)`,
        with an ONNX Runtime session of the run's export when `onnx` is asked and one exists
        (else PyTorch serves it, and `notes` says why)."""
        from vislab.runs import load_run

        run = load_run(run_dir)
        session, note = None, None
        if onnx:
            session, note = onnx_export_session(run.run_dir, run.classes, run.spec.to_dict(), run.checkpoint, threads)
        predictor = cls(run, session)  # type: ignore[call-arg]  (subclasses take the loaded run and the session)
        if note:
            predictor.notes.append(note)
        return predictor

    @property
    def size_hint(self) -> tuple[int, int] | None:
        """Smallest decoded size (width, height) the model needs: JPEGs decode at reduced
        scale down to it. None decodes at full size."""
        return None

    @abstractmethod
    def preprocess(self, image: Image.Image, options: BaseModel) -> Any:
        """An RGB image -> what `predict_batch` takes (tensors, and what the result needs)."""

    @abstractmethod
    def predict_batch(self, items: Sequence[Any], options: Sequence[BaseModel]) -> list[dict[str, Any]]:
        """One JSON-ready dict per item, in order; `options[i]` are item i's request's options."""

    def finish(self, item: Any, result: dict[str, Any]) -> dict[str, Any]:
        """`result` of `item` completed after its batch, in the request's thread: what needs no
        model goes here, not in `predict_batch`, so it never holds up other clients' batches."""
        return result

    def warmup(self, options: BaseModel | None = None) -> None:
        """One grey image through the whole path, so the first request pays neither lazy
        imports nor first-call allocations."""
        self.run_alone(Image.new("RGB", (64, 64), (128, 128, 128)), options if options is not None else self.Options())

    def run_alone(self, image: Image.Image, options: BaseModel) -> dict[str, Any]:
        """One image through preprocess, predict_batch and finish, as the server runs it."""
        item = self.preprocess(image, options)
        return self.finish(item, self.predict_batch([item], [options])[0])

    def parse_options(self, fields: Mapping[str, str]) -> BaseModel:
        """The request's option fields validated by `Options`; a bad one is an `OptionsError`."""
        try:
            return self.Options.model_validate(dict(fields))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "options"
            allowed = ", ".join(self.Options.model_fields)
            msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].lower()
            raise OptionsError(f"{where}: {msg} (the {self.task} options are: {allowed})") from None

    def describe(self) -> dict[str, Any]:
        """What /v1/models says of this model: the task-blind part; subclasses add theirs."""
        return {
            "name": self.name,
            "task": self.task,
            "engine": self.engine,
            "run": self.run_dir.name,
            "options": self.Options.model_json_schema(),
            "metrics": run_metrics(self.run_dir),
        }


PREDICTORS: dict[str, type[Predictor]] = {}
# tasks whose Predictor lives in a module of its own, imported when a run of the task is served
PREDICTOR_MODULES = {"crops": "vislab.serve.crops", "detect": "vislab.serve.detect"}


def register(cls: type[Predictor]) -> type[Predictor]:
    """Class decorator: serve runs whose config says `task: <cls.task>` with `cls`."""
    if cls.task in PREDICTORS:
        raise ValueError(f"a predictor for task {cls.task!r} is already registered ({PREDICTORS[cls.task].__name__})")
    PREDICTORS[cls.task] = cls
    return cls


def load_predictor(run_dir: str | Path, onnx: bool = False, threads: int | None = None) -> Predictor:
    """The predictor of a run directory's task, loaded."""
    from vislab.config import load_config
    from vislab.runs import resolve_run_dir, run_paths

    root = resolve_run_dir(run_dir)
    task = load_config(run_paths(root).config).task
    if task not in PREDICTORS and task in PREDICTOR_MODULES:
        importlib.import_module(PREDICTOR_MODULES[task])
    cls = PREDICTORS.get(task)
    if cls is None:
        raise VislabError(f"{root}: task {task!r} cannot be served yet; `vislab serve` serves {', '.join(sorted(set(PREDICTORS) | set(PREDICTOR_MODULES)))} runs")
    return cls.load(root, onnx=onnx, threads=threads)


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's headline numbers: best validation values (summary.json) and the scalar
    metrics of each evaluated split (eval/<split>/metrics.json); missing files give nothing."""
    from vislab.fsguard import read_bounded
    from vislab.runs import EVAL_METRICS, run_paths

    def read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(read_bounded(path, 16 * 1024 * 1024))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def scalars(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}

    paths = run_paths(run_dir)
    out: dict[str, Any] = {}
    summary = read(paths.summary)
    if isinstance(summary.get("best_val"), dict):
        out["best_val"] = scalars(summary["best_val"])
    evals = paths.eval
    if evals.is_dir():
        for split in sorted(p.name for p in evals.iterdir() if (p / EVAL_METRICS).is_file()):
            out[split] = scalars(read(evals / split / EVAL_METRICS))
    return out


def image_data_uri(rgb: np.ndarray, quality: int = 88) -> str:
    """An RGB uint8 array as a `data:image/jpeg;base64,...` URI (a heat map is a photo:
    JPEG is a fifth of the PNG's bytes, which matters on a phone)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def onnx_export_session(run_dir: Path, classes: Sequence[str], spec: dict[str, Any], checkpoint: Path, threads: int | None) -> tuple[Any, str | None]:
    """(ONNX Runtime session of RUN/export/model.onnx or None, a note to print or None).

    An export made for other classes or another input spec is refused (its outputs would
    be named wrongly); one older than the checkpoint is served with a warning."""
    from vislab.export import onnx_session
    from vislab.fsguard import regular_file_problem
    from vislab.models.registry import DataSpec
    from vislab.runs import run_paths

    path = run_paths(run_dir).export_model
    if regular_file_problem(path):
        return None, f"{run_dir.name}: no {path.parent.name}/{path.name}, served with PyTorch (run `vislab export {run_dir}` for ONNX Runtime)"
    try:
        session = onnx_session(path, threads)
    except Exception as err:  # onnxruntime raises its own error types for a broken file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise VislabError(f"{path}: ONNX Runtime cannot load it ({first}); run `vislab export {run_dir}` again, or serve without --onnx") from None
    meta = session.get_modelmeta().custom_metadata_map
    try:
        same = json.loads(meta["vislab_classes"]) == list(classes) and DataSpec.from_dict(json.loads(meta["vislab_data_spec"])).to_dict() == spec
    except (KeyError, ValueError, TypeError, IndexError):
        same = False
    if not same:
        raise VislabError(f"{path}: not an export of this run's model (other classes or input spec); run `vislab export {run_dir}` again, or serve without --onnx")
    note = None
    if checkpoint.stat().st_mtime > path.stat().st_mtime:
        note = f"warning: {path} is older than {checkpoint.name}; run `vislab export {run_dir}` again to serve the newer weights"
    return session, note


# ---- classification (and attention branch networks) --------------------------------------


class ClassifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(5, ge=1, le=1000, description="How many classes to return, most probable first.")
    overlay: bool = Field(
        False,
        description="Also return the heat map of the top class on the image the model saw, as a data URI: "
        "Grad-CAM, or the attention branch's own map for an ABN run.",
    )


@dataclass
class ClassifyItem:
    x: torch.Tensor  # the normalised input [C, H, W]
    view: np.ndarray | None  # the same crop as uint8 RGB, for the overlay (only when asked)


@register
class ClassifyPredictor(Predictor):
    """Top-k classes with probabilities; on request the top class's Grad-CAM or attention map."""

    task = "classify"
    Options = ClassifyOptions

    def __init__(self, run: Any, session: Any = None) -> None:
        from vislab.data.transforms import eval_transform_for
        from vislab.explain.attention import has_attention

        super().__init__(run.run_dir, ONNXRUNTIME if session is not None else PYTORCH)
        self.run = run
        self.classes: list[str] = list(run.classes)
        self.spec = run.spec
        self.grayscale = bool(run.cfg.data.grayscale)
        self.model = run.model.float().eval()
        self.session = session
        self.attention = has_attention(self.model)
        self.transform = eval_transform_for(self.spec, self.grayscale, run.cfg.model.in_chans)

    @property
    def size_hint(self) -> tuple[int, int]:
        from vislab.data.transforms import decode_size

        side = decode_size(self.spec)  # as `vislab predict` decodes
        return side, side

    def preprocess(self, image: Image.Image, options: BaseModel) -> ClassifyItem:
        if getattr(options, "overlay", False):
            from vislab.explain.overlays import prepare

            x, views = prepare([image], self.spec, self.grayscale)
            return ClassifyItem(x[0], views[0])
        return ClassifyItem(self.transform(image), None)

    def warmup(self, options: BaseModel | None = None) -> None:
        super().warmup(options if options is not None else ClassifyOptions(overlay=True))  # Grad-CAM imports slowly

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax [B, C] from the serving engine."""
        if self.session is not None:
            from vislab.export import INPUT_NAME
            from vislab.tasks import get_task

            logits = torch.from_numpy(self.session.run(list(get_task(self.task).export_outputs), {INPUT_NAME: x.numpy()})[0])
        else:
            from vislab.models.outputs import logits_of

            with torch.inference_mode():
                logits = logits_of(self.model(x))
        return logits.float().softmax(1)

    def predict_batch(self, items: Sequence[ClassifyItem], options: Sequence[BaseModel]) -> list[dict[str, Any]]:
        probs = self.probabilities(torch.stack([item.x for item in items]))
        k = min(max(int(getattr(o, "top_k", 5)) for o in options), len(self.classes))
        top_p, top_i = (t.tolist() for t in probs.topk(k, dim=1))
        results = []
        for ps, ids, opts in zip(top_p, top_i, options):
            n = min(int(getattr(opts, "top_k", 5)), k)
            results.append({
                "pred": self.classes[ids[0]],
                "confidence": ps[0],
                "top": [{"label": self.classes[i], "prob": p} for i, p in zip(ids[:n], ps[:n])],
            })
        want = [i for i, o in enumerate(options) if getattr(o, "overlay", False)]
        if want:
            maps = self.overlays([items[i] for i in want], [top_i[i][0] for i in want])
            for i, overlay in zip(want, maps):
                results[i]["overlay"] = overlay
        return results

    def overlays(self, items: Sequence[ClassifyItem], targets: Sequence[int]) -> list[dict[str, Any]]:
        """The heat map of class `targets[i]` on item i's crop (an ABN's attention map is one
        per image: it is labelled with the class the attention branch's forward predicts)."""
        from vislab.explain.attention import attention_session
        from vislab.explain.cam import cam_session
        from vislab.explain.overlays import upscaled_overlay

        x = torch.stack([item.x for item in items])
        if self.attention:
            with attention_session(self.model) as runner:
                res = runner(x)
        else:
            with cam_session(self.model, "gradcam", input_size=tuple(self.spec.input_size)) as runner:
                res = runner(x, list(targets))
        out = []
        for i, (item, heat, target) in enumerate(zip(items, res.heatmaps, res.targets)):
            assert item.view is not None, "preprocess() keeps the view when an overlay is asked for"
            out.append({
                "kind": runner.method,
                "class": self.classes[target],
                "layer": res.layer,
                "image": image_data_uri(upscaled_overlay(item.view, heat)),
                "empty_map": bool(res.empty[i]) if res.empty else False,  # zero everywhere: the image shows no region (as explain's)
            })
        return out

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {
            **super().describe(),
            "model": self.run.cfg.model.name + ("+ABN" if self.attention else ""),
            "overlay": "attention" if self.attention else "gradcam",
            "classes": self.classes,
            "num_classes": len(self.classes),
            "input": {
                "size": list(s.input_size),
                "mean": list(s.mean),
                "std": list(s.std),
                "crop_pct": s.crop_pct,
                "interpolation": s.interpolation,
                "grayscale": self.grayscale,
            },
            "checkpoint": self.run.checkpoint.relative_to(self.run.run_dir).as_posix(),
        }


def served_names(run_dirs: Sequence[Path]) -> list[str]:
    """A unique name per run: its folder name, or PARENT/NAME when two runs share one."""
    base = [d.name for d in run_dirs]
    names = [f"{d.parent.name}/{d.name}" if base.count(d.name) > 1 else d.name for d in run_dirs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise VislabError(f"{run_dirs[i]}: served twice, or named like {run_dirs[names.index(name)]} ({name}); pass each run once")
    return names


def load_all(runs: Sequence[str | Path], onnx: bool = False, threads: int | None = None) -> list[Predictor]:
    """Load and warm up every run, named by `served_names`; their notes go to stderr."""
    from vislab.runs import resolve_run_dir

    names = served_names([resolve_run_dir(r) for r in runs])
    predictors = []
    for run, name in zip(runs, names):
        p = load_predictor(run, onnx=onnx, threads=threads)
        p.name = name
        for note in p.notes:
            print(note, file=sys.stderr, flush=True)
        p.warmup()
        predictors.append(p)
    return predictors
