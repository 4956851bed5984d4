"""`vislab predict`: a trained run's model on image files or folders, or on images in memory.

Files are collected here (folders walked, in a stable order, see `data.walk`; in-memory
images saved as lossless files first, so they take the very path of a file); the run's task
runs them through its `predict_step` (images decoded like training data, EXIF orientation
and RGB, and given the eval transform of the run's DataSpec) and says what each result holds and how it
prints (classification: the top-k classes; see tasks/classify.py). A file that cannot be
read gets an `error` entry instead of stopping the others; when none of the files can be
read, that is an error (`vislab predict` exits 2, as `vislab explain` does), and the CLI
says how many failed in any case.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from vislab.data.io import ImageDecodeError, collect_images, load_pil_image
from vislab.errors import VislabError
from vislab.fsguard import printable
from vislab.outfolder import claim_out


class Predictions(list):
    """What `predict` returns: one dict per image, in input order; `task` names the task
    whose results they are (it formats them)."""

    def __init__(self, results: Iterable[dict[str, Any]], task: str) -> None:
        super().__init__(results)
        self.task = task


ImageInput = str | Path | Image.Image | np.ndarray
MEMORY_NAME = "<image {}>"


def _memory_image(item: Image.Image | np.ndarray, index: int) -> Image.Image:
    """An in-memory input as a decoded PIL image: a PIL image as `load_pil_image` reads it
    (turned upright only when straight from a file), a uint8 HxW or HxWx3 array as is. One
    without pixels (a 0-wide or 0-high image or array) raises `ImageDecodeError`, so it gets
    an error row as an unreadable file does, rather than stopping the batch at Pillow's
    'cannot write empty image'."""
    im = load_pil_image(item) if isinstance(item, Image.Image) else _array_image(item, index)
    if 0 in im.size:
        raise ImageDecodeError(f"empty image ({im.width}x{im.height} pixels)")
    return im


def _array_image(item: np.ndarray, index: int) -> Image.Image:
    """A uint8 HxW or HxWx3 array as a PIL image; any other array is refused in one line."""
    if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 3)):
        raise VislabError(
            f"{MEMORY_NAME.format(index)}: a numpy array of shape {item.shape} and dtype {item.dtype}; "
            "pass uint8 pixels shaped HxW (grey) or HxWx3 (RGB)"
        )
    return Image.fromarray(item)


def _as_paths(inputs: ImageInput | Sequence[ImageInput], folder: Path) -> tuple[list[str | Path], dict[str, str], dict[str, str]]:
    """The inputs as paths, in order: in-memory images saved as lossless PNG (TIFF for modes
    PNG cannot hold) in `folder`, so they are decoded, converted and transformed exactly as
    image files are (at the scale they have: the same JPEG by path may decode smaller, see
    `data.io.apply_draft`, so its probabilities can differ slightly); the display name of
    each saved one by its path; and, by its path, why an in-memory image that cannot be
    decoded (a truncated file opened lazily) was not saved (an empty file holds its place in
    the order)."""
    items = [inputs] if isinstance(inputs, (str, Path, Image.Image, np.ndarray)) else list(inputs)
    paths: list[str | Path] = []
    names: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            paths.append(item)
            continue
        if not isinstance(item, (Image.Image, np.ndarray)):
            raise VislabError(f"input {i}: a {type(item).__name__}; pass image paths, folders, PIL images or numpy arrays")
        path = folder / f"image-{i:06d}.png"
        try:
            im = _memory_image(item, i)
        except ImageDecodeError as err:
            path.touch()
            unreadable[str(path)] = err.reason
        else:
            try:
                im.save(path, format="PNG")
            except OSError:  # modes such as CMYK
                path = path.with_suffix(".tif")
                im.save(path, format="TIFF")
        paths.append(path)
        names[str(path)] = MEMORY_NAME.format(i)
    return paths, names, unreadable


def predict(
    run_dir: str | Path, inputs: ImageInput | Sequence[ImageInput], top_k: int | None = None, batch_size: int = 32,
    out: str | Path | None = None, **options: Any,
) -> Predictions:
    """One dict per image (classification: path, pred, confidence, top [{label, prob}];
    detection: path, boxes; or error), in input order, then one error dict per entry a
    folder walk skipped (a broken link, a pipe, a link loop). `inputs` is one image or a
    list: file or folder paths (str or Path), PIL images and uint8 numpy arrays (HxW or
    HxWx3, RGB), the last two named "<image N>" by their position. `top_k` and `options`
    (detection: conf, iou) go to the task only when given, so each task keeps its own
    defaults and refuses the options of another task. `out`, a folder predict owns (see
    `outfolder`, checked before predicting), gets predictions.json and predictions.csv,
    which hold the rows returned, and the task's own files (detection: drawn images, YOLO
    labels); a task whose results are pictures (crops) writes them to RUN/predict/ without
    `out`, a folder it owns the same way."""
    from vislab.runs import load_run, run_paths
    from vislab.tasks import get_task

    run = load_run(run_dir)
    task = get_task(run.cfg.task)
    if out is None and task.predicts_pictures:
        out = run_paths(run.run_dir).predictions
    folder = claim_out(out) if out is not None else None
    with tempfile.TemporaryDirectory(prefix="vislab-predict-") as tmp:
        paths, names, unreadable = _as_paths(inputs, Path(tmp))
        files = collect_images(paths)
        given = {k: v for k, v in {"top_k": top_k, **options}.items() if v is not None}
        readable = [f for f in files if str(f) not in unreadable]
        rows = iter(task.predict(run, readable, batch_size=batch_size, **given) if readable else [])
        results = [
            {"path": str(f), "error": f"cannot read image: {unreadable[str(f)]}"} if str(f) in unreadable else next(rows) for f in files
        ]
        sources = [r["path"] for r in results]
        for r in results:
            r["path"] = names.get(r["path"], r["path"])
        results += [{"path": str(path), "error": f"skipped: {reason}"} for path, reason in files.skipped]
        sources += [r["path"] for r in results[len(sources):]]
        failed = [r for r in results if "error" in r]
        if results and len(failed) == len(results):
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise VislabError(f"{printable(failed[0]['path'])}: {failed[0]['error']}{more}; none of the {len(results)} image(s) could be read")
        try:
            task.write_prediction_files(run, results, sources, folder)
            if folder is not None:  # the rows returned, as `--format json/csv` prints them
                folder.write("predictions.json", task.format_predictions(results, "json"))
                folder.write("predictions.csv", task.format_predictions(results, "csv"))
        finally:
            if folder is not None:
                folder.finish()
    return Predictions(results, task.name)


def format_predictions(results: list[dict[str, Any]], fmt: str = "table") -> str:
    """Text for the CLI in the task's own layout: a table, JSON (a list) or CSV; it ends with
    a newline whatever the task's formatter gives (JSON's does not), so a shell prompt or
    the next command's output does not run on from the last line."""
    from vislab.tasks import get_task

    text = get_task(getattr(results, "task", None)).format_predictions(list(results), fmt)
    return text if not text or text.endswith("\n") else text + "\n"
