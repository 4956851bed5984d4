"""Helpers for tests that start real `vislab` processes: their torch on one thread, process
groups (workers, background servers) that must all leave, and a folder made read-only for one
command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

_READ_ONLY = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'


def single_thread_env() -> dict[str, str]:
    """The environment for a test's child process with torch on one intra-op thread (as
    `vislab.testing.models.single_thread` does in the test's own process): on a busy 2-core
    machine two threads mostly wait for each other (an epoch of a tiny run measured 1 s with
    one, 5 s with two), and the child leaves the other core to the test runner's other worker."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


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


def read_only_command(folder: str | Path, argv: Sequence[str]) -> list[str] | None:
    """`argv` to run with `folder` read-only even for root (who ignores file modes): in its
    own user and mount namespace, `folder` bind-mounted read-only over itself (util-linux
    `unshare`; nothing outside that command sees the mount). None where this machine cannot
    (no `unshare`, user namespaces turned off), so the caller can skip."""
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _READ_ONLY, "sh", str(folder)]
    try:
        probe = subprocess.run([*prefix, "test", "!", "-w", str(folder)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [*prefix, *argv] if probe.returncode == 0 else None


def vislab_with_read_only(folder: str | Path, *args: str | Path) -> str | None:
    """Run `vislab ARGS` with `folder` read-only (see `read_only_command`) and return what it
    said (stdout and stderr) after checking it failed as a user error should: exit status 2,
    one line, no traceback. None where this machine cannot make the folder read-only."""
    cmd = read_only_command(folder, [sys.executable, "-m", "vislab.cli", *map(str, args)])
    if cmd is None:
        return None
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    said = (res.stdout + res.stderr).strip()
    assert res.returncode == 2, said
    assert "Traceback" not in said and len(said.splitlines()) == 1, said
    return said
