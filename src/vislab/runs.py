"""The run directory: its file names, the environment record, and loading a finished run.

Everything after `train` reads a run through here (see the run-directory contract), so the
names of the files live in one place and a run can be rebuilt from its directory alone.

It also owns what keeps a run directory whole when things go wrong:

- `run_lock`: one `vislab train` at a time per run directory (an flock the kernel drops
  when the process dies, even by kill -9), so two sessions never interleave their files.
- Temporary files `.NAME.tmpPID` (every atomic write, `fsguard.replacing`) left by a killed
  writer are removed by `fsguard.remove_orphan_temps` once train holds the lock.
- Checkpoints carry a sha256 sidecar `NAME.sha256`; `load_checkpoint_file`, the one place a
  checkpoint is read, checks it, and turns any unreadable file into a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Sequence

from vislab.errors import VislabError
from vislab.fsguard import TEMP_NAME, inside, replacing, write_file
from vislab.locks import LOCK_NAME, folder_lock
from vislab.markers import CONFIG_NAME, RUN_JSON

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch.nn as nn

    from vislab.config import RunConfig
    from vislab.models.registry import DataSpec

METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
HEALTH_JSON = "health.json"
SANITY_JSON = "sanity.json"
TB_DIR = "tb"
CKPT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
EVAL_DIR = "eval"
EVAL_METRICS = "metrics.json"  # in each eval/<name>/, beside the task's own files:
EVAL_PREDICTIONS = "predictions.csv"  # per-image results
EVAL_PROBS = "probs.npy"  # per-image scores (classification: class probabilities)
PLOTS_DIR = "plots"
PREDICT_DIR = "predict"  # pictures and JSON of `vislab predict` (tasks that draw, e.g. crops)
EXPLAIN_DIR = "explain"
EXPORT_DIR = "export"
REPORT_NAME = "report.html"
CHECKSUM_SUFFIX = ".sha256"
# `.NAME.tmpPID` (or `.NAME.RANDOM.tmpPID`): the temporary name of every atomic write (fsguard.replacing)
# every name vislab writes at the top of a run directory: a new run may start in a folder
# holding only these (a run that failed early, an earlier `--sanity` check), never among others
RUN_ENTRIES = frozenset({
    CONFIG_NAME, RUN_JSON, METRICS_CSV, SUMMARY_JSON, HEALTH_JSON, SANITY_JSON, TB_DIR, CKPT_DIR,
    EVAL_DIR, PLOTS_DIR, PREDICT_DIR, EXPLAIN_DIR, EXPORT_DIR, REPORT_NAME, LOCK_NAME,
})



def metric_columns(task_columns: Sequence[str]) -> list[str]:
    """metrics.csv's leading columns: the epoch, the task's metrics (`Task.metric_columns`),
    then the learning rate and the epoch's speed; other logged metrics follow, sorted."""
    return ["epoch", *task_columns, "lr", "epoch_time_s", "train_images_per_s"]


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

    @property
    def eval(self) -> Path:
        """eval/: one folder per evaluation (`eval/<name>/`)."""
        return self.root / EVAL_DIR

    def eval_dir(self, name: str) -> Path:
        """eval/<name>/, refused unless it stays inside eval/ (names come from users)."""
        return inside(self.root, EVAL_DIR, name)

    @property
    def predictions(self) -> Path:
        """predict/: what `vislab predict` draws for a task whose results are pictures."""
        return self.root / PREDICT_DIR

    @property
    def plots(self) -> Path:
        """plots/: the report's figures."""
        return self.root / PLOTS_DIR

    def plot(self, name: str) -> Path:
        """plots/<name>, refused unless it stays inside the run (names hold eval set names; a
        plots/ that is a link out of the run is refused too, as a symlinked eval/ is)."""
        return inside(self.root, PLOTS_DIR, name)

    @property
    def report(self) -> Path:
        return self.root / REPORT_NAME

    def explain_dir(self, method: str) -> Path:
        """explain/<method>/: the overlays of one explanation method."""
        return inside(self.root, EXPLAIN_DIR, method)

    @property
    def export_model(self) -> Path:
        """export/model.onnx: the default exported model (its description beside it, .json)."""
        return inside(self.root, EXPORT_DIR, "model.onnx")


def run_paths(run_dir: str | Path) -> RunPaths:
    return RunPaths(Path(run_dir))


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write via an exclusively created temporary file in the same folder and rename
    (`fsguard.replacing`), so readers never see half a file and no link is written through."""
    write_file(path, data, durable)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_eval_files(out: str | Path, table: "pd.DataFrame", probs: "np.ndarray") -> None:
    """predictions.csv (one row per image) and probs.npy (its scores) into an eval folder,
    each refused if it would leave the folder and written through `fsguard.replacing`."""
    import numpy as np

    atomic_write_text(inside(out, EVAL_PREDICTIONS), table.to_csv(index=False, lineterminator="\n"))
    with replacing(inside(out, EVAL_PROBS)) as fh:
        np.save(fh, probs)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VislabError(f"{path}: missing; is this a run directory written by `vislab train`?") from None
    except json.JSONDecodeError as err:
        raise VislabError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """`read_json` of a file vislab writes as an object (run.json, summary.json): anything else
    there (a hand-edited list) is one line naming the file, not an AttributeError later."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise VislabError(f"{path}: holds a JSON {type(value).__name__}, not an object; restore the file `vislab train` wrote")
    return value


def read_metrics(path: str | Path) -> "pd.DataFrame | None":
    """metrics.csv, one row per finished epoch (None when the run has none yet). A file that is
    not the numeric table training writes is one line naming it, read before a resumed session
    writes anything, so the run is never half rewritten and then stopped by a parser traceback."""
    import pandas as pd

    from vislab.fsguard import regular_file_problem

    path = Path(path)
    problem = regular_file_problem(path)
    if problem == "missing" or (problem is None and path.stat().st_size == 0):
        return None
    fix = "restore the metrics.csv `vislab train` wrote, or move it out of the run to go on without the earlier epochs' rows"
    if problem is not None:
        raise VislabError(f"{path}: {problem}; {fix}")
    try:
        rows = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as err:
        raise VislabError(f"{path}: cannot read as CSV ({_first_line(err)}); {fix}") from None
    if "epoch" not in rows.columns:
        raise VislabError(f"{path}: no epoch column; {fix}")
    odd = [str(c) for c in rows.columns if len(rows) and not pd.api.types.is_numeric_dtype(rows[c])]  # a header alone is text
    if odd or rows["epoch"].isna().any():
        raise VislabError(f"{path}: column {(odd or ['epoch'])[0]} holds values that are not numbers; {fix}")
    return rows


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


def keeps_last_epoch(summary: dict[str, Any]) -> bool:
    """Whether summary.json's `best_epoch` is simply the last epoch (`train.monitor: epoch`
    keeps it, for validation sets too small to pick one by): output then says 'last', not 'best'."""
    from vislab.config import LAST_EPOCH_MONITOR

    return summary.get("monitor") == LAST_EPOCH_MONITOR


def is_sanity_check(folder: str | Path) -> bool:
    """Whether a folder holds only a `vislab train --sanity` result (sanity.json), not a run:
    the sanity check trains no model worth keeping, so it writes no run directory."""
    p = Path(folder)
    return (p / SANITY_JSON).is_file() and not (p / CONFIG_NAME).is_file() and not (p / RUN_JSON).is_file()


def resolve_run_dir(run_dir: str | Path) -> Path:
    """Check that a folder is a run directory (config.yaml + run.json) and return it resolved."""
    p = Path(run_dir)
    if not p.is_dir():
        raise VislabError(f"{p}: no such run directory; pass the --out folder of `vislab train`")
    if is_sanity_check(p):
        raise VislabError(f"{p}: holds a `vislab train --sanity` check ({SANITY_JSON}), not a trained run; pass the --out folder of a training run")
    missing = [n for n in (CONFIG_NAME, RUN_JSON) if not (p / n).is_file()]
    if missing:
        raise VislabError(f"{p}: not a run directory (missing {', '.join(missing)}); pass the --out folder of `vislab train`")
    return p.resolve()


def prepare_out_dir(out: str | Path) -> Path:
    """Create the --out folder of a new run (and its parents), or say in one line why it cannot
    be: a file in the way, or an existing folder holding anything but a run's own files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VislabError(f"--out {out}: is a file, not a folder; choose a folder for the run directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise VislabError(f"--out {out}: {parent} is a file, not a folder; choose a folder for the run directory")
    if out.is_dir():
        refuse_foreign_files(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VislabError(f"--out {out}: cannot create the run directory ({err.strerror or err})") from None
    return out


def refuse_foreign_files(out: Path) -> None:
    """Refuse an existing --out that holds anything but a run's own files (a folder of photos,
    say): the run's files would be written among the user's, and mixed up with them."""
    try:
        names = sorted(n for n in os.listdir(out) if n not in RUN_ENTRIES and not TEMP_NAME.match(n))
    except OSError as err:
        raise VislabError(f"--out {out}: cannot read the folder ({err.strerror or err}); choose another --out") from None
    if names:
        shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise VislabError(
            f"--out {out}: holds files that are not a run's ({shown}); choose another --out, a new or empty folder, so the run never mixes with them"
        )


def run_lock(run_dir: str | Path) -> ContextManager[Path]:
    """Hold an exclusive lock on a run directory while a process trains into it
    (`locks.folder_lock`: an flock the kernel drops when the process dies, even by kill -9)."""
    return folder_lock(run_dir, "training into this run directory", "choose another --out")


def check_not_training(run_dir: str | Path, allow_running: bool, command: str, recorded: str = "") -> bool:
    """Whether a `vislab train` holds the run's lock now. Its best.ckpt is then not final, so a
    command that writes a result of the run from it (evaluate, export, explain, report) is
    refused in one line, or with `allow_running` goes on after a warning on stderr; `recorded`
    names where the caller also records it (e.g. 'as evaluated_while_training in metrics.json')."""
    from vislab.fsguard import printable
    from vislab.locks import lock_holder

    pid = lock_holder(resolve_run_dir(run_dir))
    if pid is None:
        return False
    if not allow_running:
        raise VislabError(
            f"{printable(run_dir)}: still training (vislab pid {pid}), so its best.ckpt is not final; run vislab {command} "
            "when training ends, or pass --allow-running to use the checkpoint as it is now"
        )
    also = f" (recorded {recorded})" if recorded else ""
    print(
        f"warning: {printable(run_dir)} is still training (vislab pid {pid}): vislab {command} uses its checkpoint as it is now"
        f"{also}; run it again when training ends",
        file=sys.stderr,
        flush=True,
    )
    return True


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """best.ckpt (falling back to last.ckpt), or last.ckpt when asked; error when there is none."""
    paths = run_paths(run_dir)
    order = [paths.best, paths.last] if which == "best" else [paths.last]
    for ckpt in order:
        if ckpt.is_file():
            return ckpt
    raise VislabError(
        f"{paths.checkpoints}: no checkpoint yet (the run stopped before its first epoch ended); "
        "nothing to resume either: train it again with a new --out"
    )


# ---- checkpoint checksums ----------------------------------------------------------------------
class CheckpointError(VislabError):
    """A checkpoint that cannot be used: unreadable, not a checkpoint, or not matching its checksum."""


def checksum_path(ckpt: str | Path) -> Path:
    """`NAME.sha256` beside a checkpoint."""
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.name + CHECKSUM_SUFFIX)


def _read_checksum(ckpt: Path) -> dict[str, Any] | None:
    side = checksum_path(ckpt)
    if not side.exists():
        return None
    from vislab.fsguard import SpecialFileError, read_bounded

    try:
        info = json.loads(read_bounded(side, 64 * 1024))
        accepted = [str(info["sha256"]), *[str(h) for h in info.get("previous", [])]]
        return {"sha256": accepted[0], "accepted": accepted, "bytes": int(info.get("bytes", -1))}
    except (OSError, SpecialFileError, ValueError, TypeError, KeyError, AttributeError):
        raise CheckpointError(
            f"{side}: unreadable checksum file, so {ckpt.name} cannot be checked; delete {side.name} to load it unchecked"
        ) from None


def write_checksum(ckpt: str | Path, sha256: str, size: int) -> None:
    """Write the sidecar of a checkpoint about to be renamed into place at `ckpt`.

    It is written (durably) before that rename, and also accepts the checkpoint it replaces,
    so a kill between the two renames leaves a pair that still checks: the new sidecar with
    the old checkpoint."""
    ckpt = Path(ckpt)
    previous: list[str] = []
    try:
        old = _read_checksum(ckpt) if ckpt.exists() else None
    except CheckpointError:
        old = None
    if old is not None:
        previous = old["accepted"][:2]
    body = {"file": ckpt.name, "sha256": sha256, "bytes": int(size), "previous": previous}
    atomic_write_bytes(checksum_path(ckpt), (json.dumps(body) + "\n").encode("ascii"), durable=True)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    from vislab.fsguard import open_regular

    with open_regular(path, limit=None) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(err: BaseException) -> str:
    """A short reason from an exception whose message may be empty or many lines long."""
    text = str(err).strip()
    if "Weights only load failed" in text or "Unpickl" in type(err).__name__:
        return "not a PyTorch checkpoint (cannot be unpickled)"
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """torch.load a Lightning checkpoint on the CPU (tensors and plain data only), after
    checking it against its sha256 sidecar when it has one (checkpoints made before sidecars
    existed, or by other tools, load unchecked). Any failure is a `CheckpointError` naming
    the file."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], str]:
    """`load_checkpoint_file` and the sha256 of the bytes loaded. The file is read once, so the
    digest is that of the checkpoint loaded even if a trainer replaces the file meanwhile
    (an evaluation records which checkpoint it scored)."""
    import io

    import torch

    from vislab.fsguard import SpecialFileError, open_regular, regular_file_problem

    path = Path(path)
    problem = regular_file_problem(path)
    if problem:
        raise CheckpointError(f"{path}: cannot read checkpoint ({problem})")
    expected = _read_checksum(path)
    try:
        with open_regular(path, limit=None) as fh:
            data = fh.read()
    except (OSError, SpecialFileError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({getattr(err, 'strerror', None) or err})") from None
    digest = hashlib.sha256(data).hexdigest()
    size = len(data)
    if expected is not None and digest not in expected["accepted"]:
        what = f"{size:,} bytes where {expected['bytes']:,} were written" if size != expected["bytes"] else "its bytes changed"
        raise CheckpointError(f"{path}: corrupted checkpoint ({what}: sha256 does not match {checksum_path(path).name})")
    if size == 0:
        raise CheckpointError(f"{path}: cannot read checkpoint: the file is empty (0 bytes)")
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # garbage makes torch.load raise pickle, zip, EOF, index, key, value, runtime errors
        raise CheckpointError(f"{path}: cannot read checkpoint: {_first_line(err)}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a vislab checkpoint (holds a {type(ckpt).__name__}, not a dict with a state_dict)")
    return ckpt, digest


def current_checksum(ckpt: str | Path) -> str | None:
    """The sha256 a checkpoint's sidecar names for it now (None without a readable sidecar):
    cheap enough for report and compare to tell whether an evaluation scored this file."""
    try:
        found = _read_checksum(Path(ckpt))
    except CheckpointError:
        return None
    return found["sha256"] if found else None


def epoch_label(ckpt: dict[str, Any]) -> str:
    """' (epoch N)', counted from 1, for messages that name a checkpoint ('' when unknown)."""
    epoch = ckpt.get("epoch")
    return f" (epoch {epoch + 1})" if isinstance(epoch, int) and not isinstance(epoch, bool) else ""


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
    epoch: int | None = None  # the checkpoint's epoch counted from 1 (None when it does not say)
    checkpoint_sha256: str | None = None  # of the bytes loaded


def _load_with_fallback(root: Path, which: str) -> tuple[Path, dict[str, Any], str]:
    """The first usable checkpoint of best.ckpt then last.ckpt (or last.ckpt alone).

    Using last.ckpt because best.ckpt is broken is said on stderr, so a result never comes
    silently from another checkpoint than the one the command names."""
    paths = run_paths(root)
    first = find_checkpoint(root, which)
    try:
        return (first, *read_checkpoint(first))
    except CheckpointError as err:
        fallback = paths.last if which == "best" and first == paths.best and paths.last.is_file() else None
        if fallback is None:
            raise CheckpointError(f"{err}; there is no other checkpoint to fall back to (retrain, or restore the file)") from None
        try:
            ckpt, digest = read_checkpoint(fallback)
        except CheckpointError as err2:
            raise CheckpointError(f"{err}; the fallback is unusable too: {err2}") from None
        print(f"warning: {err}; using the fallback {fallback}{epoch_label(ckpt)} instead", file=sys.stderr, flush=True)
        return fallback, ckpt, digest


def check_config_matches(raw: dict[str, Any], info: dict[str, Any], ckpt: dict[str, Any], config: Path, ckpt_path: Path) -> None:
    """config.yaml's task and model (as written, before validation) against those the
    checkpoint (and run.json) were made with: an edited task builds another task's model and
    data, and validates against another task's metrics, whose errors (a crops 'too small for
    crop samples' on a classification dataset) would hide the real cause."""
    from vislab.config import DEFAULT_TASK

    trained = (ckpt.get("hyper_parameters") or {}).get("config")
    trained = trained if isinstance(trained, dict) else {}
    recorded = {
        "task": trained.get("task", info.get("task")),
        "model.name": (trained.get("model") or {}).get("name"),
    }
    model = raw.get("model")
    written = {"task": raw.get("task", DEFAULT_TASK), "model.name": model.get("name") if isinstance(model, dict) else None}
    for key, now in written.items():
        then = recorded[key]
        if then is not None and now is not None and then != now:
            raise VislabError(
                f"{config}: {key} is '{now}' but {ckpt_path} was trained with {key} '{then}': config.yaml no longer "
                f"matches the checkpoint (was it edited?); set {key}: {then} again"
            )


def checked_model_state(model: "nn.Module", ckpt: dict[str, Any], ckpt_path: Path, model_name: str, config: Path) -> dict[str, Any]:
    """The checkpoint's model weights, after checking their names and shapes are those of
    `model` (built from config.yaml): an edited config.yaml, or a checkpoint from another run,
    is one line naming both files instead of load_state_dict's size-mismatch traceback."""
    state = model_state_from_checkpoint(ckpt)
    own = model.state_dict()
    resized = [k for k, v in state.items() if k in own and tuple(getattr(v, "shape", ())) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or resized:
        example = (
            f"; e.g. {resized[0]} is {list(state[resized[0]].shape)} in the checkpoint, {list(own[resized[0]].shape)} here"
            if resized else ""
        )
        raise VislabError(
            f"{ckpt_path}: weights do not match model '{model_name}' (missing {len(missing)}, unexpected "
            f"{len(unexpected)}, {len(resized)} of another size{example}); was config.yaml edited, or the checkpoint "
            f"taken from another run? Restore {config} to the config the run was trained with, or the run's own {ckpt_path.name}"
        )
    return state


def load_run(run_dir: str | Path, which: str = "best") -> LoadedRun:
    """Rebuild a run's model from its checkpoint (best.ckpt, else last.ckpt) without any download."""
    from vislab.config import load_config
    from vislab.config_files import read_yaml
    from vislab.models.registry import DataSpec
    from vislab.tasks import get_task

    root = resolve_run_dir(run_dir)
    paths = run_paths(root)
    info = read_json_object(paths.run_json)
    ckpt_path, ckpt, digest = _load_with_fallback(root, which)
    check_config_matches(read_yaml(paths.config), info, ckpt, paths.config, ckpt_path)
    cfg = load_config(paths.config)
    fix = "restore the run.json `vislab train` wrote"
    classes = info.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise VislabError(f"{paths.run_json}: 'classes' is missing or not a list of class names; {fix}")
    try:
        spec = DataSpec.from_dict(info["data_spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise VislabError(f"{paths.run_json}: 'data_spec' is missing or damaged ({type(err).__name__}: {err}); {fix}") from None
    # the checkpoint holds every weight: build the bare architecture, never fetch pretrained ones
    model = get_task(cfg.task).create_model(cfg, classes, load_weights=False)
    model.load_state_dict(checked_model_state(model, ckpt, ckpt_path, cfg.model.name, paths.config))
    model.eval()
    epoch = ckpt.get("epoch")
    epoch = epoch + 1 if isinstance(epoch, int) and not isinstance(epoch, bool) else None
    return LoadedRun(
        cfg=cfg, classes=classes, spec=spec, model=model, run_dir=root, info=info, checkpoint=ckpt_path, epoch=epoch,
        checkpoint_sha256=digest,
    )
