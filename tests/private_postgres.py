"""A PostgreSQL server of a test's own: a fresh cluster (``initdb``) in a temporary
directory, on a free loopback port, stopped and removed when the block ends.

For the tests that restart PostgreSQL: restarting the machine's shared server would cut
every other test's connections (and, with pytest-xdist, tests running beside it). Run as
root, the server runs as the ``postgres`` user, as PostgreSQL requires.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _support import free_port, skip_or_fail

__all__ = ["PrivatePostgres", "private_postgres"]

#: What ``pg_ctl`` may take to start, stop or restart a small fresh cluster.
PG_CTL_TIMEOUT = 120


@dataclass(frozen=True)
class PrivatePostgres:
    """A running private server: its DSN and the command that restarts it."""

    dsn: str
    restart_command: list[str]


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh PostgreSQL server for this block (skips, or fails under CI=true, when the
    machine has no PostgreSQL binaries)."""
    binaries = _binaries()
    directory = Path(tempfile.mkdtemp(prefix="varstore-pg-"))
    as_user = _as_postgres_user(directory)
    data = directory / "data"
    port = free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {directory} -c fsync=on"
    # With a log file: a server started without one keeps pg_ctl's output pipes open.
    log = ["-l", str(directory / "server.log")]
    control = [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    try:
        _run([*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"])
        _run([*control, "-o", options, *log, "start"])
        try:
            yield PrivatePostgres(
                f"postgresql://postgres@127.0.0.1:{port}/postgres",
                [*control, "-m", "fast", "-o", options, *log, "restart"],
            )
        finally:
            _run([*control, "-m", "immediate", "stop"])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _binaries() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        skip_or_fail("no PostgreSQL binaries under /usr/lib/postgresql to start a private server")
    return Path(found[-1]).parent


def _as_postgres_user(directory: Path) -> list[str]:
    """The command prefix that runs PostgreSQL's tools as the user they must run as (root
    may not run them), that user owning ``directory``."""
    if os.geteuid() != 0:
        return []
    user = pwd.getpwnam("postgres")
    os.chown(directory, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _run(command: list[str]) -> None:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)} failed: {done.stdout}{done.stderr}"
