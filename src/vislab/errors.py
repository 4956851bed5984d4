"""User-facing errors.

A `VislabError` is bad input, not a bug: the CLI prints its message on one line and exits
with status 2, without a traceback. The message names the file, the field and the fix.
"""


class VislabError(Exception):
    """An error caused by the user's input or environment, with a one-line fix in its message."""
