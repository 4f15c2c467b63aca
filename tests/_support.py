"""Helpers shared by the test modules (imported as ``_support``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest

#: The repository root.
ROOT = Path(__file__).resolve().parents[1]

#: The Node project of the tests and the README's Node example: its package.json and
#: package-lock.json are committed, ``npm ci`` installs exactly the locked versions.
NODE_PROJECT = ROOT / "tests" / "node"

#: Seconds one ``npm ci`` may take.
NPM_TIMEOUT = 240


def running_in_ci() -> bool:
    """True when the CI environment variable is "true" (as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the current test with ``reason``, or fail it when running in CI.

    Use it for a missing tool or a failed download: a developer's machine may lack them,
    but CI must run every test, so a skip there would hide a check that never ran.
    """
    if running_in_ci():
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A loopback port no one listens on now (the kernel's pick; free until someone binds)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def venv_executable(name: str) -> Path:
    """The console script ``name`` installed beside the running interpreter."""
    return Path(sys.executable).parent / name


def run(args: Sequence[str | Path], *, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in the repository root, capturing stdout and stderr together."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_succeeded(result: subprocess.CompletedProcess[str], hint: str = "") -> None:
    """Fail the test unless ``result`` exited with 0, showing the command and its output."""
    if result.returncode != 0:
        command = " ".join(str(a) for a in result.args)
        message = f"`{command}` exited with {result.returncode}:\n{result.stdout}"
        pytest.fail(f"{message}\n{hint}" if hint else message, pytrace=False)


def _npm_error(output: str) -> str:
    """The gist of npm's error output: its error code and first message line."""
    errors = [
        line.removeprefix("npm error").strip()
        for line in output.splitlines()
        if line.startswith("npm error") and "complete log of this run" not in line
    ]
    code = next((e.split()[1] for e in errors if e.startswith("code ") and e.split()[1:]), "")
    detail = next((e for e in errors if e and e.split()[0] not in ("code", "syscall", "errno")), "")
    gist = ": ".join(part for part in (code, detail) if part)
    if gist:
        return gist
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _lock_digest() -> str:
    return hashlib.sha256((NODE_PROJECT / "package-lock.json").read_bytes()).hexdigest()


def npm_ci() -> Path:
    """``npm ci`` in :data:`NODE_PROJECT` unless its node_modules already holds what the
    committed lock file says; returns that node_modules.

    A stamp in node_modules records the digest of the lock file it was installed from, so a
    changed lock installs again. A file lock keeps two pytest processes from running npm at
    once. A missing npm or a failed install calls :func:`skip_or_fail`.
    """
    node_modules = NODE_PROJECT / "node_modules"
    stamp = node_modules / ".installed-from-lock"

    def current() -> bool:
        return stamp.is_file() and stamp.read_text(encoding="utf-8") == _lock_digest()

    if current():
        return node_modules
    npm = shutil.which("npm")
    if npm is None:
        skip_or_fail("npm is not installed, so tests/node's packages cannot be installed")
    with (NODE_PROJECT / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():  # another process installed them while we waited
            return node_modules
        command = [npm, "ci", "--no-audit", "--no-fund"]
        try:
            result = subprocess.run(
                command,
                cwd=NODE_PROJECT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=NPM_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            skip_or_fail(f"npm ci in tests/node timed out after {NPM_TIMEOUT} s")
        if result.returncode != 0:
            skip_or_fail(
                f"npm ci in tests/node failed (exit {result.returncode}): "
                f"{_npm_error(result.stdout)}"
            )
        stamp.write_text(_lock_digest(), encoding="utf-8")
    return node_modules


class FakeWallClock:
    """A wall clock (aware datetimes) that moves only when told to: the store's ``clock``."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def edited_events(events: Sequence[Any], position: int, change: Callable[[Any], None]) -> list[Any]:
    """Copies of exported ``varstore.v1.Event`` messages, the one at ``position`` changed by
    ``change`` (for imports that must be refused)."""
    copies = []
    for event in events:
        copy = type(event)()
        copy.CopyFrom(event)
        if copy.position == position:
            change(copy)
        copies.append(copy)
    return copies
