"""Helpers shared by the test modules (imported as ``_support``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

#: The repository root.
ROOT = Path(__file__).resolve().parents[1]


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
