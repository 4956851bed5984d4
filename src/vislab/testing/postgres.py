"""A throw-away PostgreSQL server for tests of studies shared between workers.

`temporary_postgres()` runs Debian's `initdb` and `pg_ctl` (package `postgresql`, binaries
in /usr/lib/postgresql/<version>/bin) on a fresh temporary folder, listening only on a Unix
socket inside it (no TCP port, nothing reachable from outside), with trust authentication,
and yields the SQLAlchemy URL. initdb refuses to run as root, so as root the server runs as
the `postgres` system user. `PostgresUnavailable` says why a server cannot be started here
(tests skip with it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started on this machine; the message names the package."""


def postgres_bin() -> Path | None:
    """The newest folder holding initdb and pg_ctl, or None."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").is_file() and Path(p, "pg_ctl").is_file()]
    if found:
        return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


@contextmanager
def temporary_postgres(timeout: float = 120) -> Iterator[str]:
    """Start a server for the duration of the block; yields its URL (database `postgres`)."""
    bindir = postgres_bin()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL's initdb and pg_ctl are not installed (Debian package: postgresql)")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user for initdb (Debian package: postgresql)") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and runuser is missing, so initdb cannot run as 'postgres'")
        prefix = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="vislab-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data = root / "data"

    def run(*args: str) -> None:
        res = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").is_file() else ""
            raise PostgresUnavailable(f"{Path(args[0]).name} failed: {(res.stderr or res.stdout).strip()[-800:]} {log[-800:]}")

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        run(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", str(int(timeout)),
            "-o", f"-k {root} -c listen_addresses='' -F", "start",
        )
    except (PostgresUnavailable, subprocess.TimeoutExpired):
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield f"postgresql://postgres@/postgres?host={root}"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=timeout)
        shutil.rmtree(root, ignore_errors=True)
