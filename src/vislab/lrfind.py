"""`vislab lr-find`: a learning-rate range test before training (Smith 2015, as fastai's
`lr_find`).

The learning rate grows exponentially from `min_lr` to `max_lr` over `steps` optimizer steps
of real training on the config's data, one point per step (with `accumulate_grad_batches`,
the mean loss of the batches it accumulated); the smoothed loss against the learning rate
shows where training is fast and where it diverges. The suggestion is fastai's `valley` rule
(the point two-thirds down the longest falling stretch of the curve, a little below where the
loss falls fastest), with the steepest descent reported beside it.

Our own sweep rather than Lightning's `Tuner.lr_find`, which sets every parameter group to the
same learning rate: here every group keeps its ratio to `optim.lr` (the backbone's
`backbone_lr_mult`, the biases' `bias_lr_mult`, Muon's `muon_lr`), so the suggestion is a
value for `optim.lr` under the config's own optimizer. The sweep runs in epoch-0 conditions
(a backbone frozen for the first epochs stays frozen throughout, however many epochs a small
dataset makes of the sweep) without the schedule, early stopping or weight averaging. It
writes a plot and a CSV, never checkpoints or run files, and trains a throw-away model: the
config and the caller's random state are left as they were. Its --out is checked before the
sweep, so a path that cannot take the files fails at once, in one line.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vislab.config import MAX_EPOCHS, RunConfig, build_config
from vislab.errors import VislabError
from vislab.fsguard import cannot_write, folder_problem, inside, make_folder, printable, replacing, write_file

SMOOTHING = 0.98  # the exponential moving average fastai and Lightning smooth the loss with
# Lightning warnings that do not apply to a sweep without validation, on the task's own batch hook
QUIET = r".*(val_dataloader|does not have many workers|smaller than the logging interval|LeafSpec|on_after_batch_transfer).*"
PLOT_NAME = "lr_find.png"
TABLE_NAME = "lr_find.csv"


@dataclass
class LRFindResult:
    """What the sweep measured and suggests; `sets` are the overrides to train with."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    steepest: float | None
    rule: str = "valley"
    diverged: bool = False
    plot: Path | None = None
    table: Path | None = None
    sets: list[str] = field(default_factory=list)


def valley_index(losses: Sequence[float]) -> int:
    """fastai's `valley` rule: the longest stretch over which the loss keeps falling (longest
    decreasing subsequence), and the point two-thirds of the way down it."""
    n = len(losses)
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end = i
            start = end - run[end]
    third = (end - start) / 3
    return max(0, min(n - 1, start + int(third) + int(third / 2)))


def steepest_index(lrs: Sequence[float], losses: Sequence[float]) -> int | None:
    """Where the loss falls fastest against log(lr); None when no two points differ in lr (a
    slope over a zero step would be infinite) or no slope is finite."""
    if len(losses) < 2:
        return None
    dx = np.diff(np.log(np.asarray(lrs, dtype=float)))
    dy = np.diff(np.asarray(losses, dtype=float))
    ok = dx > 0
    slopes = np.full(dx.shape, np.inf)
    np.divide(dy, dx, out=slopes, where=ok)
    slopes[~np.isfinite(slopes)] = np.inf
    return int(np.argmin(slopes)) if np.isfinite(slopes).any() else None


def _sweep_config(cfg: RunConfig) -> RunConfig:
    """The config trained by the sweep: no schedule, early stopping, averaging or time limit,
    and a backbone frozen at the start frozen throughout (a dataset of a few batches runs
    many epochs of the sweep, which would otherwise unfreeze it halfway along the curve)."""
    raw = cfg.model_dump(mode="json")
    if raw["train"]["freeze_backbone_epochs"] > 0:
        raw["train"]["freeze_backbone_epochs"] = MAX_EPOCHS
    raw["scheduler"]["name"] = "none"
    raw["train"]["early_stopping"] = None
    raw["train"]["averaging"]["kind"] = "none"
    raw["train"]["max_time"] = None
    return build_config(raw, "lr-find")


@contextlib.contextmanager
def _own_random_state() -> Iterator[None]:
    """Run a block without disturbing the caller's torch, numpy and Python random streams."""
    import torch

    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _sweep_callback(steps: int, min_lr: float, max_lr: float, base_lr: float, stop_factor: float) -> Any:
    from lightning.pytorch.callbacks import Callback

    class Sweep(Callback):
        """Sets every group's lr to its config ratio times the sweep's lr; records one point
        per optimizer step: its lr and the mean loss of the batches accumulated into it
        (Lightning hands each batch's loss divided by `accumulate_grad_batches`)."""

        def __init__(self) -> None:
            self.base: list[float] = []
            self.lrs: list[float] = []
            self.losses: list[float] = []
            self.smoothed: list[float] = []
            self.pending: list[float] = []
            self.stepped = 0
            self.avg = 0.0
            self.best = math.inf
            self.diverged = False

        def lr_at(self, step: int) -> float:
            return min_lr * (max_lr / min_lr) ** (step / max(1, steps - 1))

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.base = [g["lr"] / base_lr for g in trainer.optimizers[0].param_groups]

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            for group, ratio in zip(trainer.optimizers[0].param_groups, self.base):
                group["lr"] = self.lr_at(trainer.global_step) * ratio

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.pending.append(float(loss.detach()) * trainer.accumulate_grad_batches if loss is not None else math.nan)
            if trainer.global_step == self.stepped:  # still accumulating: the optimizer has not stepped
                return
            self.stepped = trainer.global_step
            value = sum(self.pending) / len(self.pending)
            self.pending.clear()
            self.lrs.append(self.lr_at(trainer.global_step - 1))
            self.losses.append(value)
            n = len(self.losses)
            if not math.isfinite(value):
                self.smoothed.append(math.nan)
                self.diverged = trainer.should_stop = True
                return
            self.avg = SMOOTHING * self.avg + (1 - SMOOTHING) * value
            smooth = self.avg / (1 - SMOOTHING**n)
            self.smoothed.append(smooth)
            self.best = min(self.best, smooth)
            if n > 1 and smooth > stop_factor * self.best:
                self.diverged = trainer.should_stop = True

    return Sweep()


def lr_find(
    cfg: RunConfig,
    data_dir: str | Path,
    out_dir: str | Path = ".",
    *,
    steps: int = 100,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    stop_factor: float = 4.0,
) -> LRFindResult:
    """Sweep the learning rate over `steps` training steps on `data_dir`; write the plot and
    the table into `out_dir` and return the suggestion for `optim.lr`."""
    import lightning as L

    from vislab.tasks.base import quiet_lightning
    from vislab.train import build_task
    from vislab.tricks import recipe_callbacks, resolve_precision

    if not 0 < min_lr < max_lr:
        raise VislabError(f"lr-find: --min-lr {min_lr:g} must be positive and below --max-lr {max_lr:g}")
    if steps < 20:
        raise VislabError(f"lr-find: --steps {steps} is too few for a curve; use 20 or more (100 is usual)")
    if data_dir is None or not (Path(data_dir) / "manifest.csv").is_file():
        raise VislabError(f"{data_dir}: not a curated dataset (no manifest.csv); pass --data DATASET_DIR from `vislab curate`")
    check_out(out_dir)
    scfg = _sweep_config(cfg)
    t = scfg.train
    sweep = _sweep_callback(steps, min_lr, max_lr, scfg.optim.lr, stop_factor)
    with _own_random_state(), tempfile.TemporaryDirectory(prefix="vislab-lr-find-") as scratch:
        L.seed_everything(scfg.seed, workers=True, verbose=False)
        task, dm, _ = build_task(scfg, Path(data_dir))
        quiet_lightning()
        trainer = L.Trainer(
            default_root_dir=scratch,
            max_steps=steps,
            max_epochs=-1,
            accelerator=t.accelerator,
            devices=1,
            precision=resolve_precision(t.precision, t.accelerator),
            callbacks=[sweep, *recipe_callbacks(scfg)],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            gradient_clip_val=t.grad_clip,
            accumulate_grad_batches=t.accumulate_grad_batches,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=QUIET)
            trainer.fit(task, datamodule=dm)
    result = suggest(sweep.lrs, sweep.losses, sweep.smoothed, steps, sweep.diverged)
    result.sets = [f"optim.lr={result.suggestion:.2g}"]
    if scfg.optim.name == "muon":  # Muon's groups were swept at the same ratio to optim.lr
        result.sets.append(f"optim.muon_lr={result.suggestion * scfg.optim.muon_lr / scfg.optim.lr:.2g}")
    out = check_out(out_dir)  # again: something may have taken a name during the sweep
    table, plot = inside(out, TABLE_NAME), inside(out, PLOT_NAME)
    for path, write in ((table, _write_table), (plot, plot_lr_find)):
        try:
            write(result, path)
        except OSError as err:  # a read-only folder, a full disk
            raise cannot_write(path, err) from None
    result.table, result.plot = table, plot
    return result


def check_out(out_dir: str | Path) -> Path:
    """The --out folder, made if missing, once the plot and the table can be written there;
    refused in one line (before the sweep) when it or a folder above it is a file, or a
    folder, link or special file has the name of one of them. The files are written whole
    and renamed into place: an existing one is replaced, a link is refused, never written
    through."""
    out = Path(out_dir)
    problem = folder_problem(out)
    if problem:
        raise VislabError(f"--out {printable(out)}: {problem}; choose a folder path")
    for name in (PLOT_NAME, TABLE_NAME):
        path = out / name
        kind = "a symbolic link" if path.is_symlink() else "a folder" if path.is_dir() else None
        if kind is None and os.path.lexists(path) and not path.is_file():
            kind = "not a regular file"
        if kind:
            raise VislabError(
                f"--out {printable(out)}: {printable(path)} is {kind}, not a file lr-find can replace "
                f"with its {name}; move it away or choose another --out"
            )
    return make_folder(out, "--out")


def suggest(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], steps: int, diverged: bool) -> LRFindResult:
    """The suggestion from a recorded sweep, fastai-style: the first tenth of the steps (still
    warming the average) and the last few (diverging) are left out."""
    n = len(smoothed)
    lo, hi = steps // 10, n - 5
    finite = [i for i in range(lo, max(lo, hi)) if math.isfinite(smoothed[i])]
    if len(finite) < 5:
        raise VislabError(
            f"lr-find: the loss diverged after {n} of {steps} steps, too early for a curve; "
            "lower --min-lr, or check the data and the model"
        )
    xs = [lrs[i] for i in finite]
    ys = [smoothed[i] for i in finite]
    steep = steepest_index(xs, ys)
    return LRFindResult(
        lrs=list(lrs), losses=list(losses), smoothed=list(smoothed),
        suggestion=float(xs[valley_index(ys)]), steepest=float(xs[steep]) if steep is not None else None, diverged=diverged,
    )


def _write_table(result: LRFindResult, path: Path) -> Path:
    lines = ["lr,loss,smoothed_loss"] + [f"{a:.6g},{b:.6g},{c:.6g}" for a, b, c in zip(result.lrs, result.losses, result.smoothed)]
    return write_file(path, "\n".join(lines) + "\n")


def plot_lr_find(result: LRFindResult, path: Path) -> Path:
    """Smoothed loss against the learning rate (log scale), the suggestion marked."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from vislab.report import plots

    lrs = np.asarray(result.lrs, dtype=float)
    raw = np.asarray(result.losses, dtype=float)
    smooth = np.asarray(result.smoothed, dtype=float)
    ok = np.isfinite(smooth)
    with rc_context(plots.STYLE):
        fig = Figure(figsize=(6.4, 3.8))
        ax = fig.subplots()
        ax.plot(lrs[np.isfinite(raw)], raw[np.isfinite(raw)], color=plots.TRAIN, alpha=0.25, lw=1, label="loss per step")
        ax.plot(lrs[ok], smooth[ok], color=plots.TRAIN, lw=2, label="smoothed loss")
        ax.set_xscale("log")
        if ok.any():  # the diverging tail would squash the curve: cap at 1.5x the starting loss
            top = max(smooth[ok][: max(1, len(smooth) // 10)].max(), smooth[ok].min()) * 1.5
            low = min(smooth[ok].min(), np.nanmin(np.where(np.isfinite(raw), raw, np.nan)))
            ax.set_ylim(low - 0.05 * (top - low), top)
        marks = [(result.suggestion, plots.VAL, f"suggested {result.suggestion:.2g} ({result.rule})")]
        if result.steepest is not None:
            marks.append((result.steepest, plots.MUTED, f"steepest descent {result.steepest:.2g}"))
        for lr, colour, label in marks:
            ax.axvline(lr, color=colour, ls="--", lw=1.4, label=label)
        ax.set_xlabel("learning rate (optim.lr)")
        ax.set_ylabel("training loss")
        ax.set_title("Learning-rate range test")
        ax.legend(fontsize=8)
        fig.tight_layout()
        with replacing(path) as fh:
            fig.savefig(fh, format="png", dpi=plots.DPI, bbox_inches="tight", pad_inches=0.15)
    return path
