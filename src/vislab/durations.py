"""Durations as people write them ('5h', '90m', '1h30m', or a number of seconds): the one
rule of `--max-time`, `--trial-max-time` and `train.max_time`."""

from __future__ import annotations

import re

from vislab.errors import VislabError


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([dhms])")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def duration_seconds(text: str) -> float:
    """'5h', '90m', '45s', '1h30m', '1.5h' or a plain number of seconds -> seconds; a
    ValueError says what is wrong, for the caller to name the flag or the config key.

    A number after a unit ('1h30') is refused: it reads as 1 h 30 min to most people; so is
    '1:30' (h:mm or m:ss?)."""
    s = text.strip().lower().replace(" ", "")
    hint = "use e.g. 5h, 90m, 1h30m or 45s (a plain number is seconds)"
    if not s:
        raise ValueError(f"empty duration; {hint}")
    if _NUMBER.fullmatch(s):
        total = float(s)
    else:
        parts = _DURATION_PART.findall(s)
        joined = "".join(n + u for n, u in parts)
        if joined != s:
            if joined and s.startswith(joined) and _NUMBER.fullmatch(s[len(joined) :]):
                raise ValueError(f"a number after a unit has no unit of its own; write {s}m or {s}s")
            if ":" in s:
                raise ValueError("h:mm or m:ss is ambiguous; write e.g. 1h30m or 1m30s")
            raise ValueError(f"not a duration; {hint}")
        units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
        total = sum(float(n) * units[u] for n, u in parts)
    if total <= 0:
        raise ValueError("must be positive")
    if total > 366 * 86400:
        raise ValueError("over a year; leave the budget out for a run without one")
    return total


def parse_duration(text: str, flag: str = "--max-time") -> float:
    """`duration_seconds` for a command-line flag: its problem as a one-line error naming the flag."""
    try:
        return duration_seconds(text)
    except ValueError as err:
        raise VislabError(f"{flag} {text!r}: {err}" if text.strip() else f"{flag}: {err}") from None


def duration_text(budget: str, seconds: float) -> str:
    """The budget as written, with its unit said when it was a plain number of seconds."""
    return f"{budget.strip()} s" if _NUMBER.fullmatch(budget.strip()) else budget.strip()
