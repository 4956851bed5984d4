"""The sweep folder (--out of `vislab sweep` / `vislab grid`): which folders a sweep may write
into, and which study owns one.

A sweep writes study.db, results.csv, best.yaml, sweep.html, plots/ and one run directory per
trial, under names of its own choosing; so it starts only in a new or empty folder, or
continues in a folder an earlier sweep made (SWEEP/sweep.json; before sweep.json existed, its
study.db, or for a study in another database its results.csv and run directories alone), never among a user's files or in a training run. One folder holds
one study: a second study would train its trials into the first one's run directories."""

from __future__ import annotations

import os
from pathlib import Path

from vislab.errors import VislabError
from vislab.fsguard import TEMP_NAME, inside
from vislab.markers import STUDY_DB, SWEEP_JSON
from vislab.runs import RUN_JSON, read_json, write_json
from vislab.sweep.results import BEST_YAML, PLOTS_DIR, RESULTS_CSV, SWEEP_HTML

MARKER = SWEEP_JSON


def _entries(out: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(out) if not TEMP_NAME.match(n))
    except OSError as err:
        raise VislabError(f"--out {out}: cannot read the folder ({err.strerror or err}); choose another --out") from None


def owner(out: Path) -> str | None:
    """The study name recorded in the sweep folder `out`, None when none is."""
    marker = out / MARKER
    if not marker.is_file():
        return None
    try:
        name = read_json(marker).get("study_name")
    except (VislabError, AttributeError):
        name = None
    if not isinstance(name, str):
        raise VislabError(f"{marker}: unreadable (no study_name); restore it, or choose another --out")
    return name


def _legacy_owner(db: Path, study_name: str) -> str | None:
    """The study of a sweep folder made before sweep.json: one in its study.db other than
    `study_name`, if any."""
    import optuna

    try:
        names = optuna.get_all_study_names(storage=f"sqlite:///{db}")
    except Exception as err:  # noqa: BLE001 - SQLAlchemy raises many kinds; the first line says which
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise VislabError(f"{db}: cannot read the study database ({first}); choose another --out") from None
    return next((n for n in names if n != study_name), None)


def _older_sweep(out: Path, names: list[str]) -> bool:
    """A sweep folder made before sweep.json whose study lives in another database (--storage
    postgresql://...): results.csv and run directories, and nothing but the sweep's own files."""
    runs = [n for n in names if (out / n / RUN_JSON).is_file()]
    return RESULTS_CSV in names and bool(runs) and set(names) <= {RESULTS_CSV, BEST_YAML, SWEEP_HTML, PLOTS_DIR, *runs}


def check_out(out: Path, study_name: str) -> None:
    """Refuse an --out that is not a new folder, an empty one or this study's sweep folder,
    before anything is written there."""
    if out.exists() and not out.is_dir():
        raise VislabError(f"--out {out}: is a file, not a folder; choose a folder for the sweep")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise VislabError(f"--out {out}: {parent} is a file, not a folder; choose a folder for the sweep")
    if not out.is_dir():
        return
    names = _entries(out)
    if not names:
        return
    if MARKER not in names and STUDY_DB not in names and not _older_sweep(out, names):
        shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise VislabError(
            f"--out {out}: holds files that are not a sweep's ({shown}); choose another --out, a new or empty folder, so the sweep never mixes with them"
        )
    have = owner(out) if MARKER in names else _legacy_owner(out / STUDY_DB, study_name) if STUDY_DB in names else None
    if have is not None and have != study_name:
        raise VislabError(
            f"--out {out}: holds study '{have}', whose trials' run directories a second study would reuse; "
            f"continue it with --study-name {have}, or start study '{study_name}' in another --out"
        )


def claim(out: Path, study_name: str) -> None:
    """Create the sweep folder and record its study (once)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VislabError(f"--out {out}: cannot create the sweep folder ({err.strerror or err})") from None
    if owner(out) is None:
        write_json(inside(out, MARKER), {"study_name": study_name})
