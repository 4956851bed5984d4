"""The files by which vislab knows a folder it wrote: a dataset, a materialized tree, a run
directory, a sweep folder, a `predict --out` folder.

One list, so that every command that reads or walks folders agrees on what a folder is:
curate's scan and predict's and explain's walks skip these folders (their plots and overlays
are outputs, not photos), and a command given one where it wants another says which it got.
It imports nothing of vislab, so `data/` reads the run and sweep names here without importing
runs.py or sweep/ (dependencies point one way).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

MANIFEST_NAME = "manifest.csv"  # a dataset: beside CURATION_NAME
CURATION_NAME = "curation.json"
MATERIALIZE_MARKER = ".vislab-materialized.json"  # a `vislab materialize` tree
PREDICT_MARKER = ".vislab-predict.json"  # a `vislab predict --out` folder (vislab.outfolder)
CONFIG_NAME = "config.yaml"  # a run directory: beside RUN_JSON
RUN_JSON = "run.json"
SWEEP_JSON = "sweep.json"  # a sweep folder; one made before sweep.json existed holds STUDY_DB
STUDY_DB = "study.db"

DATASET = "dataset"
MATERIALIZED = "materialized"
RUN = "run"
SWEEP = "sweep"
PREDICTED = "predicted"
# a folder of these kinds holds outputs of training, never photos to read
TRAINING_OUTPUTS = (RUN, SWEEP)

WHAT = {
    DATASET: "a dataset written by `vislab curate`",
    MATERIALIZED: "a `vislab materialize` tree",
    RUN: "a run directory (`vislab train`'s output)",
    SWEEP: "a sweep folder (`vislab sweep`'s output)",
    PREDICTED: "a `vislab predict --out` folder",
}


def vislab_output_kind(names: Iterable[str]) -> str | None:
    """DATASET, MATERIALIZED, RUN, SWEEP or PREDICTED when a folder holding these entry
    names was written by vislab (its files are outputs, not photos), else None."""
    present = set(names)
    if MATERIALIZE_MARKER in present:
        return MATERIALIZED
    if MANIFEST_NAME in present and CURATION_NAME in present:
        return DATASET
    if SWEEP_JSON in present or STUDY_DB in present:
        return SWEEP
    if RUN_JSON in present and CONFIG_NAME in present:
        return RUN
    if PREDICT_MARKER in present:
        return PREDICTED
    return None


def folder_kind(folder: str | Path) -> str | None:
    """`vislab_output_kind` of a folder on disk (None when it cannot be listed)."""
    try:
        return vislab_output_kind(os.listdir(folder))
    except OSError:
        return None


def trained_on(folder: str | Path) -> str | None:
    """The dataset folder a run directory (or a sweep's first trial) recorded in run.json,
    for a message that points from a run to its data; None when none is readable."""
    runs = [Path(folder)]
    if folder_kind(folder) == SWEEP:
        try:
            runs = sorted(p for p in Path(folder).iterdir() if folder_kind(p) == RUN)
        except OSError:
            return None
    for run in runs:
        try:
            with open(run / RUN_JSON, encoding="utf-8") as f:
                dataset = json.load(f).get("dataset_dir")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(dataset, str) and dataset:
            return dataset
    return None
