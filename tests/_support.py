"""Helpers shared by the test modules (imported as ``_support``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest

#: The repository root.
ROOT = Path(__file__).resolve().parents[1]

#: The git-ignored npm prefix that the tests install Node packages into.
NODE_PREFIX = ROOT / "tests" / ".node"

#: Seconds one ``npm install`` may take.
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


def npm_package_version(name: str) -> str | None:
    """The version of npm package ``name`` installed in :data:`NODE_PREFIX`, if any."""
    manifest = NODE_PREFIX / "node_modules" / name / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) else None


def _split_spec(spec: str) -> tuple[str, str]:
    """``"@scope/name@1.2.3"`` -> ``("@scope/name", "1.2.3")``."""
    name, at, version = spec.rpartition("@")
    if not at or not name or not version:
        raise ValueError(f"npm spec {spec!r} is not NAME@EXACT_VERSION")
    return name, version


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


def npm_install(*specs: str) -> Path:
    """Install the ``NAME@VERSION`` specs missing from :data:`NODE_PREFIX`; return its node_modules.

    Every test module shares the one prefix: ``npm install`` records each package in the
    prefix's package.json (``--save-exact``), so a later install keeps the earlier ones. A file
    lock keeps two pytest processes from running npm in the prefix at once. A missing npm or
    a failed install calls :func:`skip_or_fail`.
    """
    node_modules = NODE_PREFIX / "node_modules"

    def missing() -> list[str]:
        return [s for s in specs if npm_package_version(_split_spec(s)[0]) != _split_spec(s)[1]]

    if not missing():
        return node_modules
    npm = shutil.which("npm")
    if npm is None:
        skip_or_fail(f"npm is not installed, so {' '.join(specs)} cannot be installed")
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    with (NODE_PREFIX / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = missing()  # another process may have installed them while we waited
        if not wanted:
            return node_modules
        command: list[str | Path] = [npm, "install", "--prefix", NODE_PREFIX]
        command += ["--no-audit", "--no-fund", "--save-exact", *wanted]
        shown = "npm install " + " ".join(wanted)
        try:
            result = run(command, timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            skip_or_fail(f"{shown} timed out after {NPM_TIMEOUT} s")
        if result.returncode != 0:
            skip_or_fail(f"{shown} failed (exit {result.returncode}): {_npm_error(result.stdout)}")
        still = missing()
        if still:
            skip_or_fail(f"{shown} exited with 0 but left {' '.join(still)} missing")
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
