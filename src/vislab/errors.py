"""User-facing errors.

A `VislabError` is bad input, not a bug: the CLI prints its message on one line and exits
with status 2, without a traceback. The message names the file, the field and the fix.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class VislabError(Exception):
    """An error caused by the user's input or environment, with a one-line fix in its message."""


class DatasetError(VislabError):
    """The dataset itself cannot train, whatever the config's other values (one class, no
    train split, images deleted since curation): a sweep stops at the first one instead of
    failing every trial alike."""


class SettingError(VislabError):
    """A config value the task or the dataset cannot train with, found as the run is built
    (detection's data.cache, a crops.patch_size too large for the photos). `keys` names the
    config keys at fault: a sweep that varies none of them fails once, before its first
    trial; one that varies them fails only the trials with a bad value."""

    def __init__(self, message: str, keys: tuple[str, ...]) -> None:
        super().__init__(message)
        self.keys = keys


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a signal (Ctrl-C, SIGTERM) after saving what it could.

    The message says where it stopped and how to continue; the CLI prints it and exits with
    `exit_code`, 128 + the signal number as a shell reports it (130 for SIGINT, 143 for
    SIGTERM). A KeyboardInterrupt, so code that handles ordinary errors (a grid, a sweep)
    stops too."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def closest_name(name: str, known: Iterable[str], cutoff: float = 0.75) -> str | None:
    """The known name a misspelt one most likely meant, for a 'did you mean' hint: the closest
    by difflib, else the one known name that starts it or that it starts ('optimizer' ->
    'optim'); None when no name is near."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    if close:
        return close[0]
    starts = [k for k in known if len(min(k, name, key=len)) >= 3 and (name.startswith(k) or k.startswith(name))]
    return starts[0] if len(starts) == 1 else None


def check_keywords(call: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Refuse a keyword `call` does not take in one line naming the closest it does take, so a
    misspelt option of the Python API (`curate(min_sise=...)`) reads like the CLI's errors."""
    known = list(known)
    for name in given:
        if name not in known:
            close = closest_name(name, known)
            hint = f"did you mean {close}?" if close else f"it takes {', '.join(known)}"
            raise VislabError(f"{call}: unknown option {name!r}; {hint}")
