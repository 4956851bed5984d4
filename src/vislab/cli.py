"""The `vislab` command: each subcommand parses, builds a config and makes one library call.

Library modules are imported inside the commands so `vislab --help` stays instant and a
command pays only for what it uses.
"""

from __future__ import annotations

import functools
import math
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, TypeVar

import typer
from rich.console import Console

from vislab.clihelp import HelpGroup
from vislab.errors import TrainingInterrupted, VislabError
from vislab.fsguard import MAX_PIXELS, SERVE_MAX_PIXELS
from vislab.usertext import term, visible_lines

if TYPE_CHECKING:
    from vislab.collect.fetch import Tally
    from vislab.sweep.study import SweepResult

app = typer.Typer(
    cls=HelpGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="vislab: curate image datasets, train and evaluate recognition models, explain and compare them.",
)
# Every user string printed here goes through `term`; emoji codes are off as well, so a
# file named `:warning:.png` is not drawn as an emoji (vislab's own lines use none).
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

F = TypeVar("F", bound=Callable)


def user_errors(fn: F) -> F:
    """Turn a VislabError into one red line and exit status 2, never a traceback; training
    stopped by a signal prints its line and exits 128 + the signal number."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VislabError as err:
            err_console.print(f"[bold red]error:[/] {term(err)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except TrainingInterrupted as stop:
            err_console.print(term(stop), highlight=False, soft_wrap=True)
            raise typer.Exit(code=stop.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _write(text: str) -> None:
    """Machine-readable output (CSV, JSON, Markdown) on stdout: exact when piped or
    redirected; on a terminal, control characters in names show as `\\xNN` (`visible_lines`)."""
    sys.stdout.write(visible_lines(text) if sys.stdout.isatty() else text)


def _config_note(config: Path | None) -> None:
    """Say on stderr when a bare name means ./NAME.yaml instead of the packaged recipe (stdout
    may be `--show-config`'s YAML)."""
    from vislab.config_files import config_note

    note = config_note(config) if config is not None else None
    if note:
        err_console.print(term(note), highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from vislab import __version__

        print(f"vislab {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print vislab's version and exit."),
) -> None:
    """vislab: curate image datasets, train and evaluate recognition models, explain and compare them."""


configs_app = typer.Typer(cls=HelpGroup, help="The recipes shipped with vislab: list them, or copy one out to edit.", no_args_is_help=False)
app.add_typer(configs_app, name="configs")


@app.command()
@user_errors
def curate(
    sources: List[Path] = typer.Argument(None, help="Image folders (ROOT/<class>/... or a flat folder), or one detection dataset (YOLO, KITTI, COCO folder or .json, VOC)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset directory to write the manifest into."),
    photos: Optional[Path] = typer.Option(None, help="photos.csv of `vislab collect` (or its folder); its licence columns go into the manifest."),
    labels: Optional[Path] = typer.Option(None, help="CSV of labels; paths are relative to the CSV."),
    path_column: str = typer.Option("path", help="Column of --labels/--ratings holding image paths."),
    label_column: str = typer.Option("label", help="Column of --labels (or --photos) holding class names."),
    ratings: Optional[Path] = typer.Option(None, help="CSV of annotator ratings (one row per answer)."),
    annotator: Optional[str] = typer.Option(None, help="Annotator name, or mean|median|majority."),
    question: Optional[str] = typer.Option(None, help="Question whose answers become labels."),
    annotator_column: str = typer.Option("annotator", help="Column of --ratings naming the annotator."),
    question_column: str = typer.Option("question", help="Column of --ratings naming the question."),
    rating_column: str = typer.Option("rating", help="Column of --ratings holding the answer."),
    bins: Optional[str] = typer.Option(None, help="Map ratings to classes: '1-3:neg,4-6:neu,7-9:pos' or 'int'."),
    min_size: Optional[str] = typer.Option(None, help="Minimum WxH after orientation, e.g. 1440x720."),
    aspect: Optional[float] = typer.Option(None, help="Required aspect ratio width/height, e.g. 1.5."),
    aspect_tolerance: float = typer.Option(0.05, help="Allowed relative deviation from --aspect."),
    landscape: bool = typer.Option(False, help="Treat portrait images as rotated to landscape for size/aspect."),
    max_pixels: int = typer.Option(MAX_PIXELS, help="Refuse images above this many pixels (decompression bomb)."),
    dedupe: str = typer.Option("none", help="none | exact (sha256) | near (perceptual hash)."),
    near_threshold: int = typer.Option(6, help="Max Hamming distance (0-32) of 64-bit perceptual hashes (plain images, flat or nearly so, whose hashes carry too little structure, compare 8x8 colour thumbnails: mean colour within 4 levels per bit, pattern within 1 level per bit plus a share of its contrast): the images within it of the copy kept (most pixels, then largest file) share its group, kept in one split, and --dedupe near drops those of its label; a copy under another label is kept and reported."),
    min_per_class: Optional[int] = typer.Option(None, help="Exclude classes with fewer usable images."),
    max_per_class: Optional[int] = typer.Option(None, help="Keep at most this many images per class (seeded sample)."),
    top_k: Optional[int] = typer.Option(None, help="Keep the K most frequent classes."),
    skip_top: int = typer.Option(0, help="Drop the N most frequent classes first (long-tail selection)."),
    sample_classes: Optional[int] = typer.Option(None, help="Keep a random K of the classes left."),
    split: Optional[str] = typer.Option(None, help="Stratified train,val,test ratios, e.g. 0.75,0.15,0.10."),
    val_per_class: Optional[int] = typer.Option(None, help="Images per class for val (rest to train)."),
    test_per_class: Optional[int] = typer.Option(None, help="Images per class for test (rest to train)."),
    seed: int = typer.Option(0, help="Seed for sampling and splits."),
    fmt: str = typer.Option("auto", "--format", help="auto | folders (class folders) | yolo | kitti | coco | voc; auto takes a detection layout for what it is, anything else as class folders."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Detection: keep boxes of these classes, in this id order, e.g. Car,Pedestrian,Cyclist."),
    class_map: Optional[str] = typer.Option(None, "--map", help="Detection: merge classes first, e.g. Van=Car,Tram=Car (=DontCare makes ignore regions)."),
    images_dir: Optional[Path] = typer.Option(None, "--images-dir", help="COCO: the folder its file_names are relative to, when not beside the JSON."),
    workers: int = typer.Option(0, help="Worker processes (0 = one per core)."),
    overwrite: bool = typer.Option(False, help="Replace a manifest of a different dataset in --out."),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 2) on any warning: a step leaves no usable image or empties a class, a single class, a class of one image, 16-bit images using only 12 bits."),
) -> None:
    """Scan images into a manifest: quarantine bad files, filter, dedupe, select classes, split."""
    from vislab.data.curate import CurateOptions, run_curate

    opts = CurateOptions(
        sources=list(sources or []),
        photos=photos,
        labels=labels,
        path_column=path_column,
        label_column=label_column,
        ratings=ratings,
        annotator=annotator,
        question=question,
        annotator_column=annotator_column,
        question_column=question_column,
        rating_column=rating_column,
        bins=bins,
        min_size=min_size,
        aspect=aspect,
        aspect_tolerance=aspect_tolerance,
        landscape=landscape,
        max_pixels=max_pixels,
        dedupe=dedupe,
        near_threshold=near_threshold,
        min_per_class=min_per_class,
        max_per_class=max_per_class,
        top_k=top_k,
        skip_top=skip_top,
        sample_classes=sample_classes,
        split=split,
        val_per_class=val_per_class,
        test_per_class=test_per_class,
        seed=seed,
        format=fmt,
        classes=classes,
        class_map=class_map,
        images_dir=images_dir,
        workers=workers,
        overwrite=overwrite,
        strict=strict,
    )
    summary = run_curate(opts, out, console=console)
    from vislab.data.stats import print_summary

    print_summary(summary, console)
    console.print(f"manifest: {term(Path(out) / 'manifest.csv')}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def stats(dataset_dir: Path = typer.Argument(..., help="A curated dataset directory.")) -> None:
    """Print the summary of a curated dataset: counts by status, reason, class and split (for detection: boxes per class, box sizes)."""
    from vislab.data.stats import dataset_summary, print_summary

    print_summary(dataset_summary(dataset_dir), console)


@app.command()
@user_errors
def materialize(
    dataset_dir: Path = typer.Argument(..., help="A curated dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write split/class/ trees (or the detection dataset) into."),
    mode: str = typer.Option("symlink", help="symlink | hardlink | copy"),
    fmt: Optional[str] = typer.Option(None, "--format", help="Detection datasets: yolo (images/, labels/, data.yaml) | coco (annotations/instances_<split>.json)."),
) -> None:
    """Write train/val/test/<class>/ folders of the usable images, or a detection dataset as YOLO or COCO, for tools that want them."""
    if fmt is None:
        from vislab.data.materialize import materialize as run

        n = run(dataset_dir, out, mode)
        console.print(f"{n} files written into {term(out)} ({term(mode)})", highlight=False, soft_wrap=True)
        return
    from vislab.data.det_writers import write_detection

    r = write_detection(dataset_dir, out, fmt, mode)
    console.print(
        f"{term(fmt)}: {r['images']} images, {r['boxes']} boxes written into {term(out)} ({term(mode)}, {len(r['files'])} files)",
        highlight=False,
        soft_wrap=True,
    )
    if r.get("ignore_regions_left_out"):
        console.print(f"{r['ignore_regions_left_out']} ignore region(s) left out: YOLO labels have none", highlight=False)


@app.command()
@user_errors
def anchors(
    dataset_dir: Path = typer.Argument(..., help="A curated detection dataset directory."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Number of anchors, a multiple of the model's levels (default: 3 per level, yolov3 9, yolov3_tiny 6; 9 without a model)."),
    img_size: Optional[str] = typer.Option(None, "--img-size", help="Training canvas as detect.img_size: N or H,W, e.g. 384,1248 (default: the --config's, else 416)."),
    model: Optional[str] = typer.Option(None, "--model", help="The YOLO model the anchors are for (default: the --config's), e.g. yolov3_tiny."),
    config: Optional[str] = typer.Option(None, "--config", help="A run directory, recipe or YAML whose detect.img_size and model the anchors are fitted for."),
    split: str = typer.Option("train", "--split", help="Split whose boxes are fitted (all usable images when the dataset has none)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the k-means++ starts."),
) -> None:
    """Fit YOLO anchors to a dataset's boxes as training letterboxes them: k-means with 1 - IoU distance; prints them with their fitness (mean best IoU), that of the default anchors, and the detect.anchors setting."""
    from vislab.anchor_plan import plan_anchors, plan_lines

    plan = plan_anchors(dataset_dir, n=n, img_size=img_size, model=model, config=config, split=split, seed=seed)
    for line in plan_lines(plan):
        console.print(term(line), highlight=False, soft_wrap=True)


@app.command()
@user_errors
def prepare(
    dataset_dir: Path = typer.Argument(..., help="A curated dataset directory."),
    size: str = typer.Option(..., "--size", "-s", help="Target size: 32, 64, 224 or WIDTHxHEIGHT."),
    fmt: str = typer.Option("uint8", "--format", help="Pixel format of the store (uint8)."),
    interpolation: str = typer.Option("bilinear", help="Resize filter: bilinear | bicubic | nearest (match the model's)."),
    crop: Optional[str] = typer.Option(
        None, "--crop", help="The model's input size, centre-cropped from --size (a model crop_pct below 1: --size is input / crop_pct, floored); default: all of --size."
    ),
    grey: bool = typer.Option(False, "--grey", help="For a grey model (data.grayscale or one input channel): convert before resizing."),
    workers: int = typer.Option(0, help="Decoding processes (0 = one per core)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when a valid cache exists."),
) -> None:
    """Decode and resize every usable image once into DATASET_DIR/cache/, for fast epochs (data.cache: true)."""
    from vislab.data.cache import cache_summary, prepare_cache
    from vislab.data.manifest import warn_changed

    if fmt != "uint8":
        raise VislabError(f"--format {fmt!r}: only uint8 is supported")
    warn_changed(dataset_dir)
    cache = prepare_cache(
        dataset_dir, size, interpolation=interpolation, keep=crop, grey=grey, workers=workers, force=force, console=console, in_memory=False
    )
    console.print(f"cache: {term(cache_summary(cache))}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def models(
    pattern: str = typer.Argument("*", help="Glob pattern, e.g. '*efficientnet*'; a plain word matches anywhere in a name."),
    timm: bool = typer.Option(False, "--timm", help="Include timm's architectures (any works as model.name)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="List the models whose pretrained weights load here without a network."),
) -> None:
    """List model names usable as `model.name`, one per line."""
    from vislab.models.factory import list_models

    if not any(c in pattern for c in "*?["):  # `vislab models resnet` means names containing it
        pattern = f"*{pattern}*"
    if pretrained:
        from vislab.models.backbones import offline_weights

        rows = offline_weights(pattern)
        if not rows:
            raise VislabError(f"no model with offline weights matches '{pattern}'")
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  pretrained: {r['pretrained']:<5}  {r['status']}")
        return
    names = list_models(pattern, include_timm=timm)
    if not names:
        hint = "" if timm else "; add --timm to search timm's architectures too"
        raise VislabError(f"no model name matches '{pattern}'{hint}")
    for name in names:
        print(name)


@app.command()
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `vislab train`."),
    split: Optional[str] = typer.Option(None, help="Eval set (a folder name under RUN_DIR/eval/) to detail (default: test, else the first plain one: not a stress test)."),
    cams: bool = typer.Option(True, "--cams/--no-cams", help="Compute a CAM gallery (needs the checkpoint)."),
    method: str = typer.Option("gradcam", help="CAM method for the gallery: gradcam|gradcam++|scorecam|eigencam."),
    open_browser: bool = typer.Option(False, "--open", help="Open the report in a browser."),
    allow_running: bool = typer.Option(False, "--allow-running", help="Report a run that is still training (as it is now)."),
) -> None:
    """Write RUN_DIR/report.html: one self-contained page with metrics, plots, CAMs and health checks."""
    from vislab.report.html import write_report

    path = write_report(run_dir, split=split, cams=cams, cam_method=method, open_browser=open_browser, allow_running=allow_running)
    console.print(f"report: {term(path)}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def compare(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories to compare."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | md | csv | html | json (a list of one object per run, the csv's columns)"),
    sort: Optional[str] = typer.Option(None, help="Column to sort by (in any case), e.g. test_acc, mca, map50, wall_time_s, or a config key that differs such as optim.lr ('+'/'-' prefix forces the order)."),
    split: str = typer.Option("test", help="Eval set (a folder name under RUN_DIR/eval/, e.g. test-aberration-vignette0.4) whose accuracy, mCA and F1 are shown."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file instead of the terminal (its folder is made; a file there is replaced, a folder or symbolic link refused)."),
) -> None:
    """One row per run: model, input, the config keys that differ, parameters, epochs, accuracies, mCA, F1, wall time, speed; runs scored on different test sets get a warning and dataset / n test columns."""
    from vislab.report.compare import check_format, check_out, compare_runs, render, rich_table, save

    check_format(fmt)
    if out is not None:
        check_out(out, fmt)
    df = compare_runs(run_dirs, sort=sort, split=split)
    if fmt == "table" and out is None:
        from rich.measure import Measurement

        table = rich_table(df)
        width = Measurement.get(console, console.options.update(max_width=1000), table).maximum
        Console(width=max(console.width, width), emoji=False).print(table)  # let lines wrap rather than truncate cells
        return
    text = render(df, "md" if fmt == "table" else fmt)
    if out is not None:
        save(text, out, fmt)
        console.print(f"comparison: {term(out)}", highlight=False, soft_wrap=True)
    else:
        _write(text)


@app.command("config")
@user_errors
def config_help(
    prefix: str = typer.Argument("", metavar="[KEY-PREFIX]", help="Only keys starting with this, e.g. optim or train.averaging."),
) -> None:
    """Print every config key with its default, allowed values and help (`key: default  # (type) help`)."""
    from vislab.config import describe_keys

    print("\n".join(describe_keys(prefix)))


@configs_app.callback(invoke_without_command=True)
@user_errors
def configs_list(ctx: typer.Context) -> None:
    """List the recipes shipped with vislab (usable by name: `vislab train NAME ...`)."""
    if ctx.invoked_subcommand is not None:
        return
    from vislab.config import recipe_description, recipe_names, recipe_path

    names = recipe_names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {recipe_description(recipe_path(name))}")


@configs_app.command("copy")
@user_errors
def configs_copy(
    name: str = typer.Argument(..., help="Recipe name, e.g. flowers-transfer (see `vislab configs`)."),
    dest: Optional[Path] = typer.Argument(None, help="File or folder to write (default ./NAME.yaml); never overwritten."),
) -> None:
    """Write a recipe out as a YAML file to edit and train with."""
    from vislab.config import copy_recipe

    path = copy_recipe(name, dest)
    console.print(f"recipe {term(name)}: {term(path)}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def explain(
    run_dir: Path = typer.Argument(..., help="A run directory written by `vislab train`."),
    inputs: List[Path] = typer.Argument(..., help="Images or folders of images."),
    method: str = typer.Option("gradcam", help="gradcam | gradcam++ | scorecam | eigencam | attention (ABN runs: the attention branch's own map)"),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class instead of the predictions."),
    top_k: int = typer.Option(1, "--top-k", help="Explain each of the K most likely classes."),
    layer: Optional[str] = typer.Option(None, help="Target layer by module name (default: chosen for the model)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the overlays (default RUN_DIR/explain/METHOD)."),
    allow_running: bool = typer.Option(False, "--allow-running", help="Explain with a run that is still training (its best.ckpt as it is now)."),
) -> None:
    """Write heatmap overlays showing which image regions drove the model's scores."""
    from vislab.explain.overlays import empty_maps_note, explain_run

    results = explain_run(run_dir, inputs, method=method, class_name=class_name, top_k=top_k, layer=layer, out=out, allow_running=allow_running)
    for r in results:
        console.print(f"{term(Path(r.source).name)}: {term(r.class_name)} {r.prob:.3f} -> {term(r.output.name)}", highlight=False, soft_wrap=True)
    empty = empty_maps_note(results, "--method", term, " (empty_map in explanations.json)")
    if empty:
        console.print(f"note: {empty}", highlight=False, soft_wrap=True)
    for f in results.failed:
        console.print(f"{term(Path(f['source']).name)}: error: {term(f['error'])}", highlight=False, soft_wrap=True)
    if results.repeated:
        names = ", ".join(term(p) for p in dict.fromkeys(map(str, results.repeated)))
        console.print(f"note: {len(results.repeated)} input(s) named a file given before ({names}); each file is explained once", highlight=False, soft_wrap=True)
    if results:
        where = term(results[0].output.parent)
        console.print(f"{len(results)} overlay(s) in {where} ({term(r.method)} on layer {term(results[0].layer)})", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def train(
    config: Optional[Path] = typer.Argument(None, help="Run config: a YAML file or a recipe name such as digits-cnn (`vislab configs`); optional with --resume."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Curated dataset directory (from `vislab curate`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write, or to continue with --resume."),
    set_: List[str] = typer.Option(None, "--set", help="Override a config key, e.g. --set optim.lr=0.01 (repeatable; `vislab config` lists the keys). A mapping merges into its section: --set 'optim={lr: 0.01, weight_decay: 0.01}' sets those two keys and keeps the others; {} resets a section to its defaults."),
    max_time: Optional[str] = typer.Option(None, "--max-time", help="Training-time budget for the whole run, validation and saving included, e.g. 5h, 90m, 1h30m or 600 (seconds); a new run plans the epochs that fit."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs to train (with --max-time: the most); more than before extends a resumed run."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from checkpoints/last.ckpt."),
    sanity: bool = typer.Option(False, "--sanity", help="Only overfit one batch, to check that the pipeline can learn."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the resolved config (overrides applied) and exit."),
) -> None:
    """Train a model on a curated dataset and leave a run directory (metrics, checkpoints, summary).

    Ctrl-C (SIGINT) or SIGTERM stops after the current step with checkpoints/last.ckpt saved
    there, and exits with status 130 (SIGINT) or 143 (SIGTERM); `--resume` continues from
    that step. A second signal stops at once without saving. Only one process at a time can
    train into an --out folder.
    """
    try:
        from vislab.config import dump_config, load_config
        from vislab.grid import is_grid
        from vislab.train import train as run_train

        _config_note(config)
        if config is not None and is_grid(config):
            raise VislabError(f"{config}: is a grid of variants; run `vislab grid {config} --data DATASET --out DIR`")
        if resume and set_:
            raise VislabError("--set: a resumed run keeps its config.yaml; only --epochs and --max-time may change")
        if show_config:
            if config is None:
                raise VislabError("--show-config: pass the config (a YAML file or a recipe name) to resolve")
            cfg = load_config(config, set_ or [])
            if epochs is not None:  # both always valid here (typer checks --epochs >= 1)
                cfg.train.epochs = epochs
            if max_time is not None:
                cfg.train.max_time = max_time
            sys.stdout.write(dump_config(cfg))
            return
        if out is None:
            raise VislabError("train: --out DIR is required (the run directory to write, or to continue with --resume)")
        cfg = load_config(config, set_ or []) if config is not None else None
        run_dir = run_train(cfg, data, out, resume=resume, max_time=max_time, epochs=epochs, sanity=sanity)
    except KeyboardInterrupt as err:
        if isinstance(err, TrainingInterrupted):
            raise
        # Ctrl-C while starting up, before training handles signals itself
        raise TrainingInterrupted("interrupted by SIGINT while starting, before anything was written", signal.SIGINT) from None
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:  # CPU/GPU DDP relaunches this command once per extra rank
        console.print(f"run: {term(run_dir)}", highlight=False, soft_wrap=True)


@app.command("lr-find")
@user_errors
def lr_find(
    config: Path = typer.Argument(..., help="Run config: a YAML file or a recipe name (`vislab configs`)."),
    data: Path = typer.Option(..., "--data", "-d", help="Curated dataset directory (from `vislab curate`)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for lr_find.png and lr_find.csv (no run files are written)."),
    set_: List[str] = typer.Option(None, "--set", help="Override a config key, as for `vislab train` (repeatable)."),
    steps: int = typer.Option(100, "--steps", help="Training steps of the sweep."),
    min_lr: float = typer.Option(1e-7, "--min-lr", help="Learning rate the sweep starts at."),
    max_lr: float = typer.Option(10.0, "--max-lr", help="Learning rate the sweep ends at (it stops early when the loss diverges)."),
) -> None:
    """Learning-rate range test: train briefly with an exponentially growing lr, plot the loss, suggest optim.lr."""
    from vislab.config import load_config
    from vislab.lrfind import lr_find as run_lr_find

    _config_note(config)
    cfg = load_config(config, set_ or [])
    r = run_lr_find(cfg, data, out, steps=steps, min_lr=min_lr, max_lr=max_lr)
    steep = f"; steepest descent at {r.steepest:.2g}" if r.steepest is not None else ""
    console.print(
        f"lr-find: suggested optim.lr {r.suggestion:.2g} ({r.rule} rule{steep}) over {len(r.lrs)} steps; "
        f"plot {term(r.plot)}; train with {term(' '.join(f'--set {s}' for s in r.sets))}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@user_errors
def sweep(
    config: Path = typer.Argument(..., help="Base run config YAML (a grid file's grid: mapping can serve as the space)."),
    data: Path = typer.Option(..., "--data", "-d", help="Curated dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Sweep folder, new or empty (or this sweep's, to continue it): study.db, sweep.json, one run directory per trial, results.csv, best.yaml, sweep.html."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search space YAML: dotted config key -> {float: [LOW, HIGH], log: true} | {int: [LOW, HIGH], step: N} | {choices: [...]}."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Completed + pruned trials for the whole study, all workers together (default: the grid's size, else 20)."),
    max_time: Optional[str] = typer.Option(None, "--max-time", help="This worker's budget for the whole sweep, e.g. 8h: no trial starts after it (a running one finishes)."),
    trial_max_time: Optional[str] = typer.Option(None, "--trial-max-time", help="Training-time budget of each trial, e.g. 20m (train's --max-time)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Study database URL (default sqlite:///OUT/study.db); a shared postgresql://USER:PASS@HOST/DB lets workers on several machines run one study."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe | random | grid (default: grid for a grid: config, else tpe)."),
    pruner: str = typer.Option("median", "--pruner", help="median | hyperband | none: stop poor trials early on the monitored metric."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per trial (sets train.epochs)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampler seed, for a reproducible single-worker sweep (leave it out when several workers share a study)."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Study name in the storage (default: the name of the --out folder)."),
    set_: List[str] = typer.Option(None, "--set", help="Override a key of the base config, e.g. --set data.img_size=64 (repeatable)."),
    heartbeat: int = typer.Option(60, "--heartbeat", help="Seconds between a worker's heartbeats; a trial silent for twice as long is taken as dead and retried."),
) -> None:
    """Search hyper-parameters: an Optuna study over config keys, each trial an ordinary run directory.

    Run the same command again to continue the study, or on several machines at once with a
    shared --storage; killed trials are detected by their heartbeat and resumed."""
    from vislab.sweep.study import SweepOptions, run_sweep

    opts = SweepOptions(
        space=space, trials=trials, sampler=sampler, pruner=pruner, storage=storage, study_name=study_name, seed=seed,
        epochs=epochs, trial_max_time=trial_max_time, max_time=max_time, heartbeat=heartbeat, overrides=set_ or [],
    )
    _finish_sweep(lambda: run_sweep(config, data, out, opts), out)


def _finish_sweep(run: Callable[[], SweepResult], out: Path) -> None:
    """Run a sweep; print its best trials and files; exit 130 on Ctrl-C (the trial is queued again)."""
    try:
        result = run()
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: run the same command to continue the study in {term(out)} (an interrupted trial resumes from its last checkpoint)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=130) from None
    table = result.table
    if len(table):
        keep = [c for c in table.columns if c not in ("host", "model_params", "retry_of", "note", "duration_s")]
        lines = table[keep].head(10).to_string(index=False).splitlines()
        console.print("\n".join(map(term, lines)), highlight=False, soft_wrap=True)
    why = {"done": "all trials done", "time": "--max-time spent", "exhausted": "every grid point tried"}[result.stopped]
    console.print(f"sweep '{term(result.study_name)}': {why}", highlight=False, soft_wrap=True)
    for label, path in (("results", out / "results.csv"), ("best config", result.best_yaml), ("report", result.html)):
        if path is not None:
            console.print(f"{label}: {term(path)}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def grid(
    config: Path = typer.Argument(..., help="Grid YAML (or recipe name): a run config plus `grid:` of dotted keys -> value lists."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Curated dataset directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for one run directory per variant (and the sweep's files)."),
    set_: List[str] = typer.Option(None, "--set", help="Override a key in every variant (repeatable)."),
    list_: bool = typer.Option(False, "--list", help="Print the variants and exit."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per variant."),
    max_time: Optional[str] = typer.Option(None, "--max-time", help="Training-time budget per variant, e.g. 10m."),
) -> None:
    """Train every variant of a grid config (e.g. the recipe simple-cnn-grid) and rank them on validation: `vislab sweep FILE --sampler grid --pruner none`."""
    from vislab.grid import grid_variants, run_grid

    if list_:
        for name, sets, _ in grid_variants(config, set_ or []):
            console.print(f"{term(name)}: {term(' '.join(sets))}", highlight=False, soft_wrap=True)
        return
    if data is None or out is None:
        raise VislabError("grid: --data DATASET_DIR and --out DIR are required (or --list to see the variants)")
    _finish_sweep(lambda: run_grid(config, data, out, set_ or [], epochs=epochs, max_time=max_time), out)


@app.command()
@user_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `vislab train`."),
    split: str = typer.Option("test", help="Split to evaluate: train | val | test | all."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Another curated dataset; labels matched by name."),
    tta: bool = typer.Option(False, "--tta", help="Average with the horizontally flipped image."),
    tta_translate: int = typer.Option(0, "--tta-translate", help="Also average over views shifted by N pixels (implies --tta)."),
    crops_per_image: Optional[int] = typer.Option(None, "--crops-per-image", help="crops task: each image once uncropped and N times cropped (default: the run's crops.eval_crops_per_image)."),
    aberration: Optional[str] = typer.Option(None, "--aberration", help="crops task: stress test, e.g. vignette=0.4,red=1.5,blue=-1.5,distortion=0.05 added to each photo."),
    rectangle: Optional[str] = typer.Option(None, "--rectangle", help="crops task: head | cells | mean, the rectangle to score (default: the run's crops.rectangle)."),
    name: Optional[str] = typer.Option(None, "--name", help="Folder name under RUN_DIR/eval/ (default: the split, plus the --data folder's name and the --aberration values); keeps e.g. a --tta evaluation beside the plain one."),
    allow_running: bool = typer.Option(False, "--allow-running", help="Evaluate a run that is still training (its best.ckpt as it is now; recorded in metrics.json)."),
) -> None:
    """Evaluate a run's best checkpoint; writes RUN_DIR/eval/<name>/ (metrics.json and the task's
    files). A stress test (--aberration) goes beside the split's plain evaluation, never over it."""
    from vislab.evaluate import evaluate as run_evaluate

    if tta_translate < 0:
        raise VislabError(f"--tta-translate {tta_translate}: must be 0 or more pixels")
    from vislab.tasks import get_task

    given = {"crops_per_image": crops_per_image, "aberration": aberration, "rectangle": rectangle}  # task options: only those given reach the task
    task_options = {k: v for k, v in given.items() if v is not None}
    m = run_evaluate(run_dir, split=split, data=data, tta=tta, tta_translate=tta_translate, task_options=task_options, name=name, allow_running=allow_running)
    task = get_task(m["task"])
    console.print(term(task.evaluation_line(m)), highlight=False, soft_wrap=True)
    for line in task.evaluation_notes(m):
        console.print(term(line), highlight=False, soft_wrap=True)
    console.print(f"eval: {term(m['eval_dir'])}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def predict(
    run_dir: Path = typer.Argument(..., help="A run directory written by `vislab train`."),
    inputs: List[Path] = typer.Argument(..., help="Image files or folders of images."),
    top_k: Optional[int] = typer.Option(None, "--top-k", "-k", help="Classification: how many classes to list per image (default 5)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv"),
    conf: Optional[float] = typer.Option(None, "--conf", help="Detection: lowest box score shown (default: the run's detect.conf)."),
    iou: Optional[float] = typer.Option(None, "--iou", help="Detection: NMS IoU (default: the run's detect.nms_iou)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the rows as predictions.json and .csv here (detection: and images with boxes drawn, YOLO txt labels; crops: its pictures); a new or empty folder, or one predict wrote before."),
) -> None:
    """Print the top-k classes (classification) or the boxes (detection) of images with a
    trained run's model.

    Files that cannot be read get an error row and are counted on stderr; when none can be
    read, the command fails (exit status 2)."""
    from vislab.predict import format_predictions, predict as run_predict

    if fmt not in ("table", "json", "csv"):
        raise VislabError(f"--format {fmt!r}: choose table, json or csv")
    results = run_predict(run_dir, inputs, top_k=top_k, conf=conf, iou=iou, out=out)
    _write(format_predictions(results, fmt))
    failed = sum("error" in r for r in results)
    if failed:
        err_console.print(f"{failed} of {len(results)} image(s) could not be read or were skipped (see their rows)", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `vislab train`."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Export format (onnx)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default RUN_DIR/export/model.onnx)."),
    opset: int = typer.Option(17, help="ONNX opset version."),
    allow_running: bool = typer.Option(False, "--allow-running", help="Export a run that is still training (its best.ckpt as it is now; recorded in the export's .json)."),
) -> None:
    """Export a run's model (dynamic batch size) and check ONNX Runtime's outputs against PyTorch's."""
    from vislab.export import export_run

    r = export_run(run_dir, format=fmt, out=out, opset=opset, allow_running=allow_running)
    shapes = "; ".join(f"{k} {v}" for k, v in r.inputs.items()) if len(r.inputs) > 1 else f"input {r.input_shape}"
    console.print(f"exported: {term(r.path)} ({shapes}; ONNX Runtime matches PyTorch, max |diff| {r.max_abs_diff:.2e})", highlight=False, soft_wrap=True)


collect_app = typer.Typer(
    cls=HelpGroup,
    no_args_is_help=True,
    help="Build a photo folder from Flickr searches or a list of image URLs: licences kept, resumable.",
)
app.add_typer(collect_app, name="collect")


def _finish_collect(run: Callable[[], Tally], out: Path) -> None:
    """Run a collect; print its tally; exit 1 when downloads failed or queries were refused,
    130 on Ctrl-C (finished files stay, the same command continues)."""
    try:
        tally = run()
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: finished images stay in {term(out)}; run the same command again to continue",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=130) from None
    console.print(f"collected into {term(out)}: {term(tally.summary())}", highlight=False, soft_wrap=True)
    console.print(f"photos.csv: {term(Path(out) / 'photos.csv')}", highlight=False, soft_wrap=True)
    problems = []
    if tally.failed:
        problems.append(f"{len(tally.failed)} download(s) failed; run the same command again to retry them")
    if tally.refused:
        problems.append(f"{len(tally.refused)} query(ies) refused by Flickr; change them")
    if problems:
        err_console.print(f"[bold red]incomplete:[/] {'; '.join(problems)} (details above)", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


@collect_app.command("flickr")
@user_errors
def collect_flickr(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for images/, photos.csv and the resume journal."),
    text: Optional[str] = typer.Option(None, "--text", help="Words to search for (title, description, tags)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="File of searches, one per line ('#' comments)."),
    bbox: Optional[str] = typer.Option(None, "--bbox", help="Area MIN_LON,MIN_LAT,MAX_LON,MAX_LAT, e.g. 5.9,45.8,10.5,47.8."),
    license: Optional[str] = typer.Option(None, "--license", show_default="4,5,7,8,9,10,11,12: reuse, also commercial, allowed", help="Flickr licence ids, or 'any'."),
    min_size: Optional[str] = typer.Option(None, "--min-size", help="Skip originals smaller than WIDTHxHEIGHT (checked before download)."),
    per_query: Optional[int] = typer.Option(None, "--per-query", help="Keep at most N photos per search."),
    per_page: int = typer.Option(500, "--per-page", help="Results per API page (max 500; 250 with --bbox)."),
    taken_after: Optional[str] = typer.Option(None, "--taken-after", help="Only photos taken on or after YYYY-MM-DD."),
    taken_before: Optional[str] = typer.Option(None, "--taken-before", help="Only photos taken on or before YYYY-MM-DD."),
    sort: str = typer.Option("date-posted-asc", "--sort", help="Result order; the default keeps pages stable when a run resumes."),
    label: str = typer.Option("", "--label", help="Value of photos.csv's label column for these photos (curate reads it)."),
    rate: float = typer.Option(3000, "--rate", help="Most API requests per hour (Flickr allows 3,600 per key)."),
    workers: int = typer.Option(4, "--workers", help="Parallel downloads."),
    retries: int = typer.Option(5, "--retries", help="Tries after the first on 5xx, timeouts, dropped or cut-short downloads."),
    backoff: float = typer.Option(1.0, "--backoff", help="First wait before a retry, in seconds; doubles each time (plus jitter)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds without data before a request counts as failed; a whole request may take at most 10 times this."),
    api_url: Optional[str] = typer.Option(None, "--api-url", envvar="VISLAB_FLICKR_API_URL", show_default="https://api.flickr.com/services/rest/", help="Flickr REST endpoint."),
) -> None:
    """Download originals of Flickr search results with their licences (API key in FLICKR_API_KEY)."""
    from vislab.collect.flickr import API_URL, api_key_from_env, collect_flickr as run, flickr_options

    opts = flickr_options(
        text=text,
        queries=queries,
        bbox=bbox,
        license=license or "4,5,7,8,9,10,11,12",
        min_size=min_size,
        per_query=per_query,
        per_page=per_page,
        taken_after=taken_after,
        taken_before=taken_before,
        sort=sort,
        label=label,
        rate=rate,
        workers=workers,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        api_url=api_url or API_URL,
    )
    key = api_key_from_env()
    _finish_collect(lambda: run(opts, out, key, console=console), out)


@collect_app.command("urls")
@user_errors
def collect_urls(
    file: Path = typer.Argument(..., help="Text file of image URLs, one per line ('#' comments, blank lines skipped)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for images/, photos.csv and the resume journal."),
    label: str = typer.Option("", "--label", help="Value of photos.csv's label column for these images."),
    workers: int = typer.Option(4, "--workers", help="Parallel downloads."),
    retries: int = typer.Option(5, "--retries", help="Tries after the first on 5xx, timeouts, dropped or cut-short downloads."),
    backoff: float = typer.Option(1.0, "--backoff", help="First wait before a retry, in seconds; doubles each time (plus jitter)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds without data before a request counts as failed; a whole request may take at most 10 times this."),
) -> None:
    """Download a list of image URLs: atomic, resumable, exact duplicates skipped, rows in photos.csv."""
    from vislab.collect.urls import UrlOptions, check_label, collect_urls as run, read_url_list, retry_policy

    if workers < 1:
        raise VislabError(f"--workers {workers}: must be 1 or more")
    opts = UrlOptions(label=check_label(label), workers=workers, retry=retry_policy(retries, backoff, timeout))
    urls = read_url_list(file)
    _finish_collect(lambda: run(urls, out, opts, console=console), out)


@app.command()
@user_errors
def serve(
    runs: List[Path] = typer.Argument(..., help="Run directories written by `vislab train` (the first is the default model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", envvar="VISLAB_SERVE_PORT", help="TCP port (0 picks a free one; the start-up line names it)."),
    onnx: bool = typer.Option(False, "--onnx", help="Infer with ONNX Runtime where RUN/export/model.onnx exists (`vislab export`)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="VISLAB_SERVE_TOKEN", help="Clients must send Authorization: Bearer TOKEN (the page asks for it)."),
    max_batch: int = typer.Option(32, "--max-batch", help="Most images per forward pass (1 turns micro-batching off)."),
    window_ms: float = typer.Option(5.0, "--batch-window-ms", help="How long a batch's first image waits for others."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest request body, in MB (refused while it streams in)."),
    max_files: int = typer.Option(32, "--max-files", help="Most images per request."),
    max_pixels: int = typer.Option(SERVE_MAX_PIXELS, "--max-pixels", help="Larger images are refused as decompression bombs (a web service's limit: 50 M, a 48 MP photo passes)."),
    decode_slots: Optional[int] = typer.Option(None, "--decode-slots", help="Images decoded at once by the whole server (default: CPUs, at most 4); decoding takes up to about slots x max-pixels x 5 bytes."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads of PyTorch and ONNX Runtime (default: their own)."),
    log_requests: bool = typer.Option(False, "--log-requests", help="Print one line per request."),
) -> None:
    """Serve runs as a web service on this machine: a page at /, a JSON API under /v1, docs at /docs."""
    from vislab.serve.app import Limits
    from vislab.serve.server import serve as run_server

    if not math.isfinite(max_upload_mb) or max_upload_mb <= 0 or max_pixels < 1 or (decode_slots is not None and decode_slots < 1) or (threads is not None and threads < 1):
        raise VislabError("--max-upload-mb (a finite number), --max-pixels, --decode-slots and --threads must be positive")
    limits = Limits(
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        max_files=max_files,
        max_batch=max_batch,
        window_ms=window_ms,
        **({"decode_slots": decode_slots} if decode_slots is not None else {}),
    )
    run_server(runs, host=host, port=port, onnx=onnx, token=token, limits=limits, threads=threads, log_requests=log_requests)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
