"""One vislab process at a time per output folder: a run directory (train) or a dataset (curate).

The lock is `flock` on FOLDER/.vislab.lock, which holds the owner's pid for the message
another process gets. The kernel drops it when the owner exits in any way (kill -9 included),
so a stale lock never blocks a later command; forked children close their copy of it, so
orphaned DataLoader workers do not hold it either.

Only the holder may remove the lock file (`remove_if_unused`, with the lock still held): a
process refused by the lock never touches the file or the folder. Removing the file while
others wait could let one lock an unlinked file and another a new one at the same time, so
a process that got the flock checks that the file is still the one the path names, and
tries again if it is not.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vislab.errors import VislabError
from vislab.fsguard import inside

LOCK_NAME = ".vislab.lock"

_HELD_LOCKS: set[int] = set()


def _drop_locks_in_child() -> None:
    """A forked child (a DataLoader worker) must not keep the lock alive after its parent dies."""
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


def _open_lock_file(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except FileNotFoundError:
        raise VislabError(f"{path.parent}: the folder was removed by another vislab process as this one started; run the command again") from None
    except OSError as err:
        raise VislabError(f"{path}: cannot open the folder's lock file ({err.strerror or err}); remove it if it is not a file") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise VislabError(f"{path}: not a regular file; remove it (vislab keeps the folder's lock there)")
    return fd


def _still_named(fd: int, path: Path) -> bool:
    """Whether the locked file is still the one at `path` (its holder may have removed it)."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


@contextmanager
def folder_lock(folder: str | Path, doing: str, instead: str) -> Iterator[Path]:
    """Hold an exclusive lock on an existing `folder` for the block.

    Refused in one line when another process holds it: '{folder}: another vislab process
    (pid N) is {doing}; wait for it to finish (or stop it), or {instead}'. On a filesystem
    without flock support the block runs unlocked, after a warning."""
    import fcntl

    root = Path(folder)
    path = inside(root, LOCK_NAME)
    while True:
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise VislabError(
                f"{root}: another vislab process (pid {holder}) is {doing}; wait for it to finish (or stop it), or {instead}"
            ) from None
        except OSError as err:
            print(f"warning: {path}: cannot lock the folder ({err.strerror or err}); another process writing into it would not be noticed", flush=True)
            locked = False
        else:
            if not _still_named(fd, path):  # the previous holder removed it after we opened it
                os.close(fd)
                continue
            locked = True
        break
    try:
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            _HELD_LOCKS.add(fd)
        yield root
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)


def remove_if_unused(folder: str | Path) -> None:
    """Remove a folder this process created, and holds the lock of, when nothing but the lock
    file is in it (a command that failed before writing anything leaves no folder behind).
    Call it only inside `folder_lock`: a process that was refused the lock must never remove
    the file another process holds."""
    folder = Path(folder)
    try:
        if folder.is_dir() and not folder.is_symlink() and set(os.listdir(folder)) <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass


def _held_by(path: Path, unknown: str | None) -> str | None:
    """Who holds the flock on the lock file `path`: None when nobody does (or the file is
    absent), the holder's pid as text ('unknown' if unreadable) when someone does, `unknown`
    when it cannot be told (not a regular file, no flock support). Probes with a shared lock
    let go at once and never creates the file."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        return unknown
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return unknown
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        except OSError:
            return unknown
        return None
    finally:
        os.close(fd)


def lock_holder(folder: str | Path) -> str | None:
    """The pid (as text, 'unknown' if unreadable) of the process holding `folder`'s lock, or
    None when none does (or it cannot be told): a reader (evaluate) learns that a trainer is
    writing the folder without blocking it."""
    return _held_by(Path(folder) / LOCK_NAME, None)


def file_lock_is_free(path: str | Path) -> bool:
    """Whether nobody holds the lock file `path` (a `waiting_lock`): absent, or flock-able
    now. False where flock cannot tell (the filesystem lacks it): the caller assumes held."""
    return _held_by(Path(path), "unknown") is None


@contextmanager
def waiting_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on the file `path` (created if absent) for the block, waiting
    while another process holds it: for work that two processes may both start and the second
    should do after the first (then see its result) instead of alongside it.

    The holder removes the file as it lets go, so none is left behind: a waiter that then
    gets the removed file's lock sees it is no longer the one `path` names and locks the new
    one. An OSError opening it (a read-only folder) is the caller's to explain; on a
    filesystem without flock support the block runs unlocked, after a warning."""
    import fcntl

    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise VislabError(f"{path}: not a regular file; remove it (vislab keeps a lock there)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            print(f"warning: {path}: cannot lock it ({err.strerror or err}); another process doing the same work would not be noticed", flush=True)
            locked = False
            break
        if _still_named(fd, path):
            _HELD_LOCKS.add(fd)
            locked = True
            break
        os.close(fd)
    try:
        yield
    finally:
        if locked:
            try:
                path.unlink()
            except OSError:
                pass
        _HELD_LOCKS.discard(fd)
        os.close(fd)
