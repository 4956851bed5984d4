"""`vislab predict`: a trained run's model on image files or folders.

Files are collected here (folders walked, in a stable order); the run's task runs them
through its `predict_step` (images decoded like training data, EXIF orientation and RGB, and
given the eval transform of the run's DataSpec) and says what each result holds and how it
prints (classification: the top-k classes; see tasks/classify.py). A file that cannot be
read gets an `error` entry instead of stopping the others; when none of the files can be
read, that is an error (`vislab predict` exits 2, as `vislab explain` does), and the CLI
says how many failed in any case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from vislab.data.io import collect_images
from vislab.errors import VislabError
from vislab.fsguard import printable


class Predictions(list):
    """What `predict` returns: one dict per image, in input order; `task` names the task
    whose results they are (it formats them)."""

    def __init__(self, results: Iterable[dict[str, Any]], task: str) -> None:
        super().__init__(results)
        self.task = task


def predict(run_dir: str | Path, inputs: Sequence[str | Path], top_k: int | None = None, batch_size: int = 32, **options: Any) -> Predictions:
    """One dict per image (classification: path, pred, confidence, top [{label, prob}];
    detection: path, boxes; or error). `top_k` and `options` (detection: conf, iou, out)
    go to the task only when given, so each task keeps its own defaults and refuses the
    options of another task."""
    from vislab.runs import load_run
    from vislab.tasks import get_task

    run = load_run(run_dir)
    task = get_task(run.cfg.task)
    files = collect_images(inputs)
    given = {k: v for k, v in {"top_k": top_k, **options}.items() if v is not None}
    results = task.predict(run, files, batch_size=batch_size, **given)
    failed = [r for r in results if "error" in r]
    if results and len(failed) == len(results):
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise VislabError(f"{printable(failed[0]['path'])}: {failed[0]['error']}{more}; none of the {len(results)} image(s) could be read")
    return Predictions(results, task.name)


def format_predictions(results: list[dict[str, Any]], fmt: str = "table") -> str:
    """Text for the CLI in the task's own layout: a table, JSON (a list) or CSV; it ends with
    a newline whatever the task's formatter gives (JSON's does not), so a shell prompt or
    the next command's output does not run on from the last line."""
    from vislab.tasks import get_task

    text = get_task(getattr(results, "task", None)).format_predictions(list(results), fmt)
    return text if not text or text.endswith("\n") else text + "\n"
