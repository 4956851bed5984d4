"""`vislab export`: a run's model as an ONNX file, checked against PyTorch before it is kept.

The export is of the eval-mode model with a dynamic batch dimension on every input and
output (other sizes fixed at the run's). What the file takes and returns is the run's task's
choice (`Task.export_inputs`, `export_module`, `export_outputs`): for classification one
image batch `input` and the `logits`, also of models that return a dict (e.g. the
attention-branch network); for crops the uint8 `thumb` and `patches` and the `rect`, `flag`
and `cells` outputs. After writing, ONNX Runtime runs a random batch (of a different size
than the one traced, which proves the batch axis is dynamic) and every output must match
PyTorch's within tolerance; otherwise the file is removed and the command fails. The class
names, the data spec and the task's `export_metadata` (`vislab_preprocess`: every step that
prepares an input, and how to read the outputs; export_info.py) go into the file's metadata,
so a consumer needs nothing else to preprocess inputs and name outputs.
"""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from vislab.errors import VislabError
from vislab.fsguard import cannot_write, inside, write_file
from vislab.tasks import DEFAULT_TASK, get_task
from vislab.tasks.registry import INPUT_NAME

if TYPE_CHECKING:
    from vislab.config import RunConfig
    from vislab.runs import LoadedRun

FORMATS = ("onnx",)
__all__ = ["INPUT_NAME", "ExportResult", "check_onnx", "export_onnx_model", "export_run", "onnx_session"]


def supported_opsets() -> range:
    """The ONNX opsets torch's TorchScript exporter (the one used here) can write."""
    try:
        from torch.onnx import _constants as c

        return range(int(c.ONNX_MIN_OPSET), int(c.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET) + 1)
    except (ImportError, AttributeError):  # the constants moved: the range of torch 2.x
        return range(7, 21)


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter cannot write, before any work, naming the range."""
    ok = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in ok:
        raise VislabError(f"--opset {opset}: not supported; choose an ONNX opset from {ok.start} to {ok.stop - 1} (17 is a safe default)")


@dataclass
class ExportResult:
    path: str
    format: str
    opset: int
    input_shape: list[Any]  # the first input's
    inputs: dict[str, list[Any]]  # every input's shape by name
    outputs: list[str]
    max_abs_diff: float
    atol: float
    rtol: float
    checked_batch: int
    exported_while_training: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def example_inputs(task: str, cfg: "RunConfig | None", input_size: Sequence[int], batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The task's example inputs by name (`Task.export_inputs`), drawn from `seed`."""
    return get_task(task).export_inputs(cfg, input_size, batch, torch.Generator().manual_seed(seed))


def as_outputs(out: Any) -> tuple[torch.Tensor, ...]:
    """An export module's result as a tuple of tensors (one output is a tuple of one)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def export_onnx_model(
    model: nn.Module,
    input_size: Sequence[int],
    path: str | Path,
    opset: int = 17,
    metadata: dict[str, str] | None = None,
    task: str = DEFAULT_TASK,
    cfg: "RunConfig | None" = None,
) -> Path:
    """Write `model` (eval mode, its inputs and outputs as `task` exports them: classification's
    image batch and logits) to `path` with a dynamic batch axis. `cfg`: the run's config, for a
    task whose inputs its section shapes (crops)."""
    check_opset(opset)
    path = Path(path)
    plugin = get_task(task)
    net = plugin.export_module(model).eval()
    examples = example_inputs(task, cfg, input_size, 2)
    names = list(plugin.export_outputs)
    buf = io.BytesIO()  # the model is written once, whole, through fsguard.write_file
    with warnings.catch_warnings():
        # the TorchScript-based exporter needs no extra packages; its deprecation notice is not for users
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                net,
                tuple(examples.values()),
                buf,
                dynamo=False,
                input_names=list(examples),
                output_names=names,
                dynamic_axes={name: {0: "batch"} for name in [*examples, *names]},
                opset_version=opset,
                do_constant_folding=True,
            )
        except (torch.onnx.errors.OnnxExporterError, RuntimeError, ValueError, TypeError) as err:
            # the exporter's errors are long dumps; the first line names the operator
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise VislabError(f"{path}: ONNX export at opset {opset} failed ({first}); try another --opset (e.g. 17)") from None
    data = buf.getvalue()
    if metadata:
        import onnx

        proto = onnx.load_model_from_string(data)
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        data = proto.SerializeToString()
    try:
        write_file(path, data)
    except OSError as err:
        raise cannot_write(path, err) from None
    return path


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(
    path: str | Path,
    model: nn.Module,
    input_size: Sequence[int],
    batch: int = 3,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seed: int = 0,
    task: str = DEFAULT_TASK,
    cfg: "RunConfig | None" = None,
) -> float:
    """Max |ONNX Runtime - PyTorch| over every output on a random batch; raises VislabError
    beyond atol + rtol*|ref| on any of them."""
    plugin = get_task(task)
    inputs = example_inputs(task, cfg, input_size, batch, seed)
    names = list(plugin.export_outputs)
    with torch.inference_mode():
        refs = [r.float().numpy() for r in as_outputs(plugin.export_module(model).eval()(*inputs.values()))]
    try:
        gots = onnx_session(path).run(names, {k: v.numpy() for k, v in inputs.items()})
    except Exception as err:  # onnxruntime raises its own error types (NotImplemented, InvalidGraph, Fail, ...)
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise VislabError(f"{path}: ONNX Runtime cannot run the exported model ({first})") from None
    max_diff = 0.0
    for name, got, ref in zip(names, gots, refs):
        if got.shape != ref.shape:
            raise VislabError(f"{path}: ONNX output {name} has shape {got.shape}, PyTorch {ref.shape}; the export is wrong")
        diff = np.abs(got - ref)
        worst = float(diff.max()) if diff.size else 0.0
        if not np.all(diff <= atol + rtol * np.abs(ref)):
            raise VislabError(
                f"{path}: ONNX Runtime outputs differ from PyTorch by up to {worst:.3g} in {name} "
                f"(tolerance {atol:g} + {rtol:g}*|x|); the exported model is not faithful"
            )
        max_diff = max(max_diff, worst)
    return max_diff


def is_export_description(path: Path) -> bool:
    """Whether `path` is the .json that `vislab export` writes beside a model (so an earlier
    export, which may be replaced, and not someone's file that shares the name)."""
    from vislab.fsguard import read_bounded

    try:
        info = json.loads(read_bounded(path, 1024 * 1024))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") in FORMATS and "max_abs_diff" in info and "opset" in info


def export_path(run_dir: Path, out: str | Path | None) -> Path:
    """The file to write: RUN_DIR/export/model.onnx, or `--out` when it names a file that can be
    written (its folder is created); a folder, a path under a file, a special file or a `.json`
    name (the description written beside the model) is refused in one line. An `--out` must end
    in .onnx, and replaces an existing model or .json only where they are an earlier export's:
    `--out RUN/run.onnx` replaced run.json, `--out RUN/checkpoints/best.ckpt` the checkpoint."""
    from vislab.fsguard import make_folder
    from vislab.runs import run_paths

    if out is None:
        path = run_paths(run_dir).export_model
    else:
        path = Path(out)
        if path.is_dir():
            raise VislabError(f"--out {path}: is a folder; name the file to write, e.g. {path / 'model.onnx'}")
        if path.exists() and not path.is_file():
            raise VislabError(f"--out {path}: not a regular file; name a file to write, e.g. model.onnx")
        if path.suffix.lower() == ".json":
            raise VislabError(f"--out {path}: the .json name is the export's description; name the model file *.onnx")
        if path.suffix.lower() != ".onnx":
            raise VislabError(f"--out {path}: name the model file *.onnx (its description goes beside it as .json)")
        description = path.with_suffix(".json")
        ours = is_export_description(description)
        if os.path.lexists(description) and not ours:
            raise VislabError(f"--out {path}: {description} exists and is not a vislab export's description; choose another name")
        if os.path.lexists(path) and not ours:
            raise VislabError(f"--out {path}: exists and was not written by vislab export; choose another name")
    make_folder(path.parent, "--out")
    return path


def checkpoint_note(run: "LoadedRun") -> str | None:
    """One line when the export is not of best.ckpt, so last.ckpt is never used silently."""
    from vislab.runs import run_paths

    if run.checkpoint.name == run_paths(run.run_dir).best.name:
        return None
    epoch = f", epoch {run.epoch}" if run.epoch is not None else ""
    why = "no best.ckpt (run interrupted?)" if not run_paths(run.run_dir).best.exists() else "best.ckpt unusable"
    return f"{why}: exported {run.checkpoint.name}{epoch}"


def export_run(
    run_dir: str | Path,
    format: str = "onnx",  # the CLI's --format (curate takes `format` alike)
    out: str | Path | None = None,
    opset: int = 17,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    allow_running: bool = False,
) -> ExportResult:
    """Export a run's best checkpoint (else last) and check it; default file RUN_DIR/export/model.onnx.
    The keywords are `vislab export`'s options. A run still training is refused, since its
    best.ckpt is not final yet, unless `allow_running` (then said on stderr and recorded as
    `while_training` in the file's vislab_checkpoint metadata and `exported_while_training`
    in its .json)."""
    from vislab.runs import check_not_training, load_run

    fmt = format
    if fmt not in FORMATS:
        raise VislabError(f"--format {fmt!r}: supported formats are {', '.join(FORMATS)}")
    check_opset(opset)
    training = check_not_training(run_dir, allow_running, "export", "as exported_while_training in the export's .json")
    run = load_run(run_dir)
    path = export_path(run.run_dir, out)
    description = inside(path.parent, path.with_suffix(".json").name)  # a link out of the folder: refused now, not after the export
    model = run.model.float().eval()
    input_size = list(run.spec.input_size)
    described = get_task(run.cfg.task).export_metadata(run)
    meta = {
        "vislab_classes": json.dumps(run.classes),
        "vislab_data_spec": json.dumps(run.spec.to_dict()),
        "vislab_model": run.cfg.model.name,
        "vislab_checkpoint": json.dumps({"file": run.checkpoint.name, "epoch": run.epoch, "while_training": training}),  # not the local path: the file is shared
        **{key: json.dumps(value) for key, value in described.items()},
    }
    note = checkpoint_note(run)
    if note:
        print(note, file=sys.stderr, flush=True)
    export_onnx_model(model, input_size, path, opset, meta, task=run.cfg.task, cfg=run.cfg)
    batch = 3  # traced with 2: a different size proves the batch axis is dynamic
    try:
        max_diff = check_onnx(path, model, input_size, batch, atol, rtol, task=run.cfg.task, cfg=run.cfg)
    except VislabError:
        path.unlink(missing_ok=True)
        raise
    shapes = {k: ["batch", *v.shape[1:]] for k, v in example_inputs(run.cfg.task, run.cfg, input_size, 1).items()}
    outputs = list(get_task(run.cfg.task).export_outputs)
    result = ExportResult(str(path), fmt, opset, next(iter(shapes.values())), shapes, outputs, max_diff, atol, rtol, batch, training)
    try:
        write_file(description, json.dumps({**result.to_dict(), "classes": run.classes, "data_spec": run.spec.to_dict(), **described}, indent=2))
    except OSError as err:
        path.unlink(missing_ok=True)
        raise cannot_write(description, err) from None
    return result
