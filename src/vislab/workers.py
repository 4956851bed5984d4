"""Worker processes: process pools (curate's checks, prepare's decoding) that do not outlive
their parent, and a check of the DataLoader worker count against the cores there are."""

from __future__ import annotations

import os
import signal
import sys

_WARNED: set[int] = set()  # worker counts already warned about in this process


def die_with_parent(parent: int) -> None:
    """A process pool's initializer (initargs=(os.getpid(),)): the worker is killed when the
    process that made it dies (Linux PR_SET_PDEATHSIG), so a `vislab prepare` or `curate`
    killed with SIGKILL leaves no workers decoding on for nobody. An owner that died before
    the signal was armed is caught by the check after it. Elsewhere it does nothing."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the loaded C library: no ldconfig subprocess to wait on
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent and not _alive(parent):  # reparented: the owner died before the signal was armed
        os._exit(1)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. under taskset or a container's
    cpuset), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def warn_many_workers(num_workers: int) -> None:
    """One warning line (once per process and value) when `data.num_workers` exceeds the cores:
    more loader processes than cores only compete for them. A warning, not an error: the config
    may have been written for a larger machine."""
    cores = available_cores()
    if num_workers <= cores or num_workers in _WARNED:
        return
    _WARNED.add(num_workers)
    print(
        f"warning: data.num_workers {num_workers} is more than the {cores} CPU core(s) this process can use; "
        f"the extra DataLoader workers only compete for them (set data.num_workers to {cores} or fewer)",
        file=sys.stderr,
        flush=True,
    )
