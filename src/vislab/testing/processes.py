"""Process-group helpers for tests that start real `vislab` processes (and their workers or
background servers) and must see every one of them leave."""

from __future__ import annotations

import time
from pathlib import Path


def group_alive(pgid: int) -> list[int]:
    """Pids of the processes still in a process group (zombies excluded)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def wait_group_gone(pgid: int, timeout: float = 30) -> list[int]:
    """Wait until no live process is left in the group; returns those still there at the timeout."""
    deadline = time.monotonic() + timeout
    while (left := group_alive(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
