"""Process-pool workers (curate's checks, prepare's decoding) that do not outlive their parent."""

from __future__ import annotations

import signal


def die_with_parent() -> None:
    """A process pool's initializer: the worker is killed when the process that made it dies
    (Linux PR_SET_PDEATHSIG), so a `vislab prepare` or `curate` killed with SIGKILL leaves no
    workers decoding on for nobody. Elsewhere it does nothing."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
