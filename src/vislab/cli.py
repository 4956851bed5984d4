"""The `vislab` command: each subcommand parses, builds a config and makes one library call.

Library modules are imported inside the commands so `vislab --help` stays instant and a
command pays only for what it uses.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer
from rich.console import Console

from vislab.errors import VislabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="vislab: curate image datasets, train and evaluate recognition models, explain and compare them.",
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def user_errors(fn: F) -> F:
    """Turn a VislabError into one red line and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VislabError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def curate(
    sources: List[Path] = typer.Argument(None, help="Image folders (ROOT/<class>/... or a flat folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset directory to write the manifest into."),
    labels: Optional[Path] = typer.Option(None, help="CSV of labels; paths are relative to the CSV."),
    path_column: str = typer.Option("path", help="Column of --labels/--ratings holding image paths."),
    label_column: str = typer.Option("label", help="Column of --labels holding class names."),
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
    max_pixels: int = typer.Option(178_956_970, help="Refuse images above this many pixels (decompression bomb)."),
    dedupe: str = typer.Option("none", help="none | exact (sha256) | near (perceptual hash)."),
    near_threshold: int = typer.Option(6, help="Max Hamming distance of 64-bit perceptual hashes for --dedupe near."),
    min_per_class: Optional[int] = typer.Option(None, help="Exclude classes with fewer usable images."),
    max_per_class: Optional[int] = typer.Option(None, help="Keep at most this many images per class (seeded sample)."),
    top_k: Optional[int] = typer.Option(None, help="Keep the K most frequent classes."),
    skip_top: int = typer.Option(0, help="Drop the N most frequent classes first (long-tail selection)."),
    sample_classes: Optional[int] = typer.Option(None, help="Keep a random K of the classes left."),
    split: Optional[str] = typer.Option(None, help="Stratified train,val,test ratios, e.g. 0.75,0.15,0.10."),
    val_per_class: Optional[int] = typer.Option(None, help="Images per class for val (rest to train)."),
    test_per_class: Optional[int] = typer.Option(None, help="Images per class for test (rest to train)."),
    seed: int = typer.Option(0, help="Seed for sampling and splits."),
    workers: int = typer.Option(0, help="Worker processes (0 = one per core)."),
    overwrite: bool = typer.Option(False, help="Replace a manifest of a different dataset in --out."),
) -> None:
    """Scan images into a manifest: quarantine bad files, filter, dedupe, select classes, split."""
    from vislab.data.curate import CurateOptions, run_curate

    opts = CurateOptions(
        sources=list(sources or []),
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
        workers=workers,
        overwrite=overwrite,
    )
    summary = run_curate(opts, out, console=console)
    from vislab.data.stats import print_summary

    print_summary(summary, console)
    console.print(f"manifest: {Path(out) / 'manifest.csv'}")


@app.command()
@user_errors
def stats(dataset_dir: Path = typer.Argument(..., help="A curated dataset directory.")) -> None:
    """Print the summary of a curated dataset: counts by status, reason, class and split."""
    from vislab.data.stats import dataset_summary, print_summary

    print_summary(dataset_summary(dataset_dir), console)


@app.command()
@user_errors
def materialize(
    dataset_dir: Path = typer.Argument(..., help="A curated dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write split/class/ trees into."),
    mode: str = typer.Option("symlink", help="symlink | hardlink | copy"),
) -> None:
    """Write train/val/test/<class>/ folders of the usable images, for tools that want them."""
    from vislab.data.materialize import materialize as run

    n = run(dataset_dir, out, mode)
    console.print(f"{n} files linked into {out}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
