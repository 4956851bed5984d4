"""The run directory: its file names, the environment record, and loading a finished run.

Everything after `train` reads a run through here (see the run-directory contract), so the
names of the files live in one place and a run can be rebuilt from its directory alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vislab.errors import VislabError

if TYPE_CHECKING:
    import torch.nn as nn

    from vislab.config import RunConfig
    from vislab.models.registry import DataSpec

CONFIG_NAME = "config.yaml"
RUN_JSON = "run.json"
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
HEALTH_JSON = "health.json"
SANITY_JSON = "sanity.json"
TB_DIR = "tb"
CKPT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
EVAL_DIR = "eval"

METRIC_COLUMNS = [
    "epoch",
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "lr",
    "epoch_time_s",
    "train_images_per_s",
]


@dataclass(frozen=True)
class RunPaths:
    """Every path of the run-directory contract, derived from the root."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_CSV

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_JSON

    @property
    def health(self) -> Path:
        return self.root / HEALTH_JSON

    @property
    def sanity(self) -> Path:
        return self.root / SANITY_JSON

    @property
    def tb(self) -> Path:
        return self.root / TB_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CKPT_DIR

    @property
    def last(self) -> Path:
        return self.root / CKPT_DIR / LAST_CKPT

    @property
    def best(self) -> Path:
        return self.root / CKPT_DIR / BEST_CKPT

    def eval_dir(self, name: str) -> Path:
        return self.root / EVAL_DIR / name


def run_paths(run_dir: str | Path) -> RunPaths:
    return RunPaths(Path(run_dir))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VislabError(f"{path}: missing; is this a run directory written by `vislab train`?") from None
    except json.JSONDecodeError as err:
        raise VislabError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def git_sha() -> str | None:
    """Commit of the vislab source tree when it is a git checkout (None for an installed wheel)."""
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def device_description(accelerator: str = "auto") -> str:
    """A readable name of the device training runs on."""
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)} x{torch.cuda.device_count()})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def environment_record(accelerator: str = "auto") -> dict[str, Any]:
    """Versions and device, so a run says what produced it."""
    import lightning
    import timm
    import torch

    from vislab import __version__

    return {
        "vislab_version": __version__,
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "device": device_description(accelerator),
    }


def make_run_record(
    cfg: "RunConfig",
    dataset_dir: str | Path,
    manifest_hash: str,
    classes: list[str],
    spec: "DataSpec",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run.json body: environment, dataset identity, classes and the input spec used."""
    rec = environment_record(cfg.train.accelerator)
    rec.update(
        {
            "precision": cfg.train.precision,
            "dataset_dir": str(Path(dataset_dir).resolve()),
            "manifest_hash": manifest_hash,
            "classes": list(classes),
            "data_spec": spec.to_dict(),
            "created": datetime.now().isoformat(timespec="seconds"),
            "command": list(sys.argv),
        }
    )
    rec.update(extra or {})
    return rec


def resolve_run_dir(run_dir: str | Path) -> Path:
    """Check that a folder is a run directory (config.yaml + run.json) and return it resolved."""
    p = Path(run_dir)
    if not p.is_dir():
        raise VislabError(f"{p}: no such run directory; pass the --out folder of `vislab train`")
    missing = [n for n in (CONFIG_NAME, RUN_JSON) if not (p / n).is_file()]
    if missing:
        raise VislabError(f"{p}: not a run directory (missing {', '.join(missing)}); pass the --out folder of `vislab train`")
    return p.resolve()


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """best.ckpt (falling back to last.ckpt), or last.ckpt when asked; error when there is none."""
    paths = run_paths(run_dir)
    order = [paths.best, paths.last] if which == "best" else [paths.last]
    for ckpt in order:
        if ckpt.is_file():
            return ckpt
    raise VislabError(f"{paths.checkpoints}: no checkpoint yet; train (or resume) the run first")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """torch.load a Lightning checkpoint on the CPU (tensors and plain data only)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise VislabError(f"{path}: cannot read checkpoint ({str(err).splitlines()[0]})") from None


def model_state_from_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model's own state_dict from a task checkpoint (keys under `model.`)."""
    state = ckpt.get("state_dict", {})
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


@dataclass
class LoadedRun:
    """A finished (or interrupted) run rebuilt from its directory, model in eval mode."""

    cfg: "RunConfig"
    classes: list[str]
    spec: "DataSpec"
    model: "nn.Module"
    run_dir: Path
    info: dict[str, Any]
    checkpoint: Path


def load_run(run_dir: str | Path, which: str = "best") -> LoadedRun:
    """Rebuild a run's model from its checkpoint (best.ckpt, else last.ckpt) without any download."""
    from vislab.config import load_config
    from vislab.models.registry import DataSpec, create_model

    root = resolve_run_dir(run_dir)
    paths = run_paths(root)
    cfg = load_config(paths.config)
    info = read_json(paths.run_json)
    classes = list(info["classes"])
    spec = DataSpec.from_dict(info["data_spec"])
    ckpt_path = find_checkpoint(root, which)
    ckpt = load_checkpoint_file(ckpt_path)
    # the checkpoint holds every weight: build the bare architecture, never fetch pretrained ones
    model = create_model(cfg.model, len(classes), load_weights=False)
    missing, unexpected = model.load_state_dict(model_state_from_checkpoint(ckpt), strict=False)
    if missing or unexpected:
        raise VislabError(
            f"{ckpt_path}: weights do not match model '{cfg.model.name}' "
            f"(missing {len(missing)}, unexpected {len(unexpected)} keys); was config.yaml edited?"
        )
    model.eval()
    return LoadedRun(cfg=cfg, classes=classes, spec=spec, model=model, run_dir=root, info=info, checkpoint=ckpt_path)
