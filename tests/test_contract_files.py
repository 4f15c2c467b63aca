"""The contract's files are consistent: generated code matches the .proto, and buf lint passes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from _support import ROOT, assert_succeeded, run, skip_or_fail

BUF_PACKAGE = "@bufbuild/buf"
BUF_VERSION = "1.75.0"
NODE_PREFIX = ROOT / "tests" / ".node"  # git-ignored
BUF = NODE_PREFIX / "node_modules" / ".bin" / "buf"


def test_generated_code_matches_the_proto_files() -> None:
    result = run([sys.executable, "proto/generate.py", "--check"])
    assert_succeeded(
        result, hint="Regenerate with: python proto/generate.py (and commit the result)"
    )


def _buf_version() -> str | None:
    try:
        result = run([BUF, "--version"], timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _installed_buf() -> Path:
    """buf at BUF_VERSION, installed with npm into tests/.node unless it is already there.

    npm 11 may warn that buf's postinstall script is "not yet covered by allowScripts" and
    skip it; the binary comes from a platform package and works anyway.
    """
    if BUF.exists() and _buf_version() == BUF_VERSION:
        return BUF
    npm = shutil.which("npm")
    if npm is None:
        skip_or_fail("npm is not installed, so buf cannot be installed to lint the proto files")
    spec = f"{BUF_PACKAGE}@{BUF_VERSION}"
    command: list[str | Path] = [
        npm,
        "install",
        "--prefix",
        NODE_PREFIX,
        "--no-audit",
        "--no-fund",
        spec,
    ]
    try:
        result = run(command, timeout=240)
    except subprocess.TimeoutExpired:
        skip_or_fail(f"npm install {spec} timed out after 240 s")
    if result.returncode != 0:
        skip_or_fail(
            f"npm install {spec} failed (exit {result.returncode}): {_last_line(result.stdout)}"
        )
    found = _buf_version()
    if found != BUF_VERSION:
        skip_or_fail(f"npm installed {spec} but `buf --version` gave {found or 'an error'}")
    return BUF


def test_buf_lint_passes_on_the_proto_files() -> None:
    buf = _installed_buf()
    result = run([buf, "lint"], timeout=120)
    assert_succeeded(result)
