"""`vislab evaluate`: a run's model on a split of its own dataset or of another curated one.

What is the same for every task is here: the dataset and its usable rows, the warning when
the run's own manifest changed since training, the eval folder's name, and metrics.json
with where the numbers came from. The run's task (`Task.evaluate`) runs the model through
its `predict_step` and scores it; it writes its own files beside metrics.json (for
classification predictions.csv and probs.npy; see tasks/classify.py). The folder is
RUN_DIR/eval/<name>/ (the run-directory contract); `name` is the split, plus
`-<dataset folder name>` with `--data` and `-<variant>` when the task's options changed the
images (a crops `--aberration` stress test), or the user's `--name`. So a stress test never
replaces the split's plain evaluation, which report and compare read unless told otherwise,
and an evaluation of another dataset whose folder has the same name is refused, not replaced.
One evaluate at a time writes a folder (its lock, `locks.folder_lock`, held from before the
model is loaded until metrics.json is written); evaluations into other folders run together.

Evaluating the run's own dataset after its manifest changed is allowed, with a warning and
`manifest_changed: true` in metrics.json. An image that cannot be read any more is an error
naming it (metrics over fewer images than the split holds would not compare with others).
"""

from __future__ import annotations

import hashlib
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from vislab.errors import VislabError

NAME_CHARS = 100  # eval folder names: room for the report's `highest_loss_<name>.png` within 255 bytes


def evaluate(
    run_dir: str | Path,
    split: str = "test",
    data: str | Path | None = None,
    tta: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    tta_translate: int = 0,
    task_options: dict[str, Any] | None = None,
    name: str | None = None,
    allow_running: bool = False,
) -> dict[str, Any]:
    """Evaluate the run's best checkpoint on `split` ('all' = every usable row); returns the
    metrics (as in metrics.json, plus `eval_dir` and the run's `task`). `task_options` go to
    the run's task (its `evaluate_options`, e.g. crops_per_image); others are refused.
    `name` is the eval folder's name, to keep evaluations with other settings apart. A run
    still training is refused, since its best.ckpt is not final yet, unless `allow_running`:
    then it is evaluated as it is now, said on stderr and recorded in metrics.json."""
    from vislab.data.manifest import dataset_max_pixels, manifest_hash, manifest_path, read_manifest, usable
    from vislab.fsguard import inside
    from vislab.runs import EVAL_METRICS, check_not_training, load_run, run_paths, write_json
    from vislab.tasks import get_task
    from vislab.tricks import resolve_precision

    if name is not None:
        check_eval_name(name)
    training = check_not_training(run_dir, allow_running, "evaluate", "as evaluated_while_training in metrics.json")
    run = load_run(run_dir)
    task = get_task(run.cfg.task)
    task_options = dict(task_options or {})
    foreign = sorted(set(task_options) - set(task.evaluate_options))
    if foreign:
        raise VislabError(f"--{foreign[0].replace('_', '-')}: not an option of task {task.name} (run {run.run_dir}); it has {', '.join('--' + o.replace('_', '-') for o in task.evaluate_options) or 'none'}")
    if data is None and not run.info.get("dataset_dir"):
        raise VislabError(f"{run.run_dir}: run.json names no dataset; pass --data DATASET_DIR")
    dataset_dir = Path(data) if data is not None else Path(run.info["dataset_dir"])
    if data is None and not manifest_path(dataset_dir).is_file():
        raise VislabError(f"{dataset_dir}: the run's dataset is not there any more; pass --data DATASET_DIR")
    df = read_manifest(dataset_dir)
    recorded = run.info.get("manifest_hash")
    own = run.info.get("dataset_dir") is not None and dataset_dir.resolve() == Path(run.info["dataset_dir"]).resolve()
    changed = own and recorded is not None and recorded != manifest_hash(dataset_dir)
    if changed:
        from vislab.fsguard import printable

        print(
            f"warning: {printable(manifest_path(dataset_dir))} changed since this run was trained; "
            "the metrics are of the current manifest (recorded as manifest_changed in metrics.json)",
            file=sys.stderr,
            flush=True,
        )
    rows = usable(df) if split == "all" else usable(df, split)
    if rows.empty:
        present = sorted({s for s in usable(df)["split"] if s})
        hint = f"splits with usable rows: {', '.join(present)}" if present else "its rows have no split"
        raise VislabError(f"{dataset_dir}: no usable rows in split '{split}' ({hint}); pass --split NAME or --split all")
    precision = "bf16-mixed" if resolve_precision(run.cfg.train.precision, run.cfg.train.accelerator) == "bf16-mixed" else "32-true"
    variant = task.evaluate_variant(run, **task_options)
    name = name or eval_name(split, None if data is None else dataset_dir.resolve().name, variant)
    with _eval_folder(run_paths(run.run_dir).eval_dir(name)) as out:
        _refuse_other_dataset(out, dataset_dir)
        result = task.evaluate(
            run, rows, dataset_dir, precision=precision, description=f"evaluate {split}",
            tta=tta, tta_translate=tta_translate, batch_size=batch_size, num_workers=num_workers, **task_options,
        )
        metrics = dict(result.metrics)
        metrics.update(
            {
                "split": split,
                "name": name,
                "variant": variant or None,
                "manifest_changed": bool(changed),
                "dataset_dir": str(dataset_dir.resolve()),
                "manifest_hash": manifest_hash(dataset_dir),
                "max_pixels": dataset_max_pixels(dataset_dir),  # its images decode under it (the report's pictures too)
                "checkpoint": str(run.checkpoint),
                "checkpoint_epoch": run.epoch,  # counted from 1
                "checkpoint_sha256": run.checkpoint_sha256,
                "evaluated_while_training": training,
                **result.options,
                "precision": precision,
            }
        )
        result.write(out)
        write_json(inside(out, EVAL_METRICS), json.loads(json.dumps(metrics, default=_jsonable)))
    metrics["eval_dir"] = str(out)
    metrics["task"] = task.name
    return metrics


@contextmanager
def _eval_folder(folder: Path) -> Iterator[Path]:
    """The eval folder, made if missing and locked for the block (`locks.folder_lock`): two
    evaluations into one folder, each writing its files whole, left metrics.json of one beside
    the predictions of the other; the second is now refused before it loads the model. An
    evaluation that fails leaves no folder it made (nor an eval/ it made) behind."""
    from vislab.fsguard import make_folder
    from vislab.locks import folder_lock, remove_if_unused

    made = [p for p in (folder, folder.parent) if not p.exists()]
    make_folder(folder, "eval folder")
    with folder_lock(folder, "running vislab evaluate into this eval folder", "pass --name NAME to evaluate into another folder"):
        try:
            yield folder
        except BaseException:
            if made:  # only the lock's holder removes the folder, before letting go of it
                remove_if_unused(folder)
                if folder.parent in made:
                    try:
                        folder.parent.rmdir()  # only while empty: another evaluation's folder keeps it
                    except OSError:
                        pass
            raise


def _refuse_other_dataset(folder: Path, dataset_dir: Path) -> None:
    """An eval folder keeps one dataset's evaluation: `--data A/data` then `--data B/data`
    both name it `<split>-data`, and the second replaced the first without a word. Another
    evaluation of the same dataset (re-curated, another checkpoint) still replaces it; an
    evaluation that recorded no dataset, or an unreadable metrics.json, is replaced as before."""
    from vislab.fsguard import printable
    from vislab.runs import EVAL_METRICS

    try:
        before = json.loads((folder / EVAL_METRICS).read_text()).get("dataset_dir")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return
    if isinstance(before, str) and before and Path(before).resolve() != dataset_dir.resolve():
        raise VislabError(
            f"{printable(folder)} holds the evaluation of {printable(before)}, not of {printable(dataset_dir.resolve())}: "
            "pass --name NAME to evaluate into another folder"
        )


def eval_name(split: str, dataset_name: str | None = None, variant: str = "") -> str:
    """The eval folder's name: the split, then `-<dataset folder name>` and `-<variant>` when
    given; one that is not a plain folder name, or is long, is reduced to a slug of bounded
    length plus a short hash."""
    from vislab.fsguard import folder_name_problem, slug

    raw = "-".join(p for p in (split, dataset_name, variant) if p)
    if folder_name_problem(raw) is None and len(raw) <= NAME_CHARS:
        return raw
    return f"{slug(raw)[:NAME_CHARS]}-{hashlib.sha1(raw.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def check_eval_name(name: str) -> None:
    """Refuse a `--name` that is not one short plain folder name (it becomes eval/<name>/)."""
    from vislab.fsguard import folder_name_problem

    problem = folder_name_problem(name) or (f"longer than {NAME_CHARS} characters" if len(name) > NAME_CHARS else None)
    if problem:
        raise VislabError(f"--name {name!r}: {problem}; use a short folder name such as test-tta")


def _jsonable(v: Any) -> Any:
    import numpy as np

    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
