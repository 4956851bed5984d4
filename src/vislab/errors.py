"""User-facing errors.

A `VislabError` is bad input, not a bug: the CLI prints its message on one line and exits
with status 2, without a traceback. The message names the file, the field and the fix.
"""


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
