"""The problems met reading a detection dataset, in bounded memory.

A problem is `{file, line, reason}`, its reason starting with its kind (`malformed: ...`).
A dataset whose every line is broken (a 10 MB label file of 'x' lines holds 5 million)
must not keep a record per line: every problem is counted by kind, but only the first
`MAX_LISTED_PROBLEMS` are kept in full (what curation.json lists; beyond that it would
grow past what `vislab stats` reads back), plus the first of each kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vislab.data.manifest import reason_kind

MAX_LISTED_PROBLEMS = 20_000


class ProblemLog:
    """Problems counted by kind, the first `limit` kept in full. Iterating gives the kept
    ones in the order met; `len` is how many were met in all."""

    def __init__(self, limit: int = MAX_LISTED_PROBLEMS) -> None:
        self.limit = limit
        self.listed: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.first: dict[str, dict[str, Any]] = {}

    def add(self, file: str | Path, line: int | None, reason: str) -> None:
        record = {"file": str(file), "line": line, "reason": reason}
        kind = reason_kind(reason)
        self.counts[kind] += 1
        self.first.setdefault(kind, record)
        if len(self.listed) < self.limit:
            self.listed.append(record)

    def copy(self) -> ProblemLog:
        out = ProblemLog(self.limit)
        out.listed = list(self.listed)
        out.counts = Counter(self.counts)
        out.first = dict(self.first)
        return out

    @property
    def not_listed(self) -> int:
        return len(self) - len(self.listed)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.listed)

    def __len__(self) -> int:
        return sum(self.counts.values())
