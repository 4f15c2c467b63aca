"""The contract's files are consistent: generated code matches the .proto, and buf lint passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _support import NODE_PREFIX, assert_succeeded, npm_install, run, skip_or_fail

BUF_PACKAGE = "@bufbuild/buf"
BUF_VERSION = "1.75.0"
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


def _installed_buf() -> Path:
    """buf at BUF_VERSION, installed with npm into tests/.node unless it is already there.

    npm 11 may warn that buf's postinstall script is "not yet covered by allowScripts" and
    skip it; the binary comes from a platform package and works anyway.
    """
    if BUF.exists() and _buf_version() == BUF_VERSION:
        return BUF
    spec = f"{BUF_PACKAGE}@{BUF_VERSION}"
    npm_install(spec)
    found = _buf_version()
    if found != BUF_VERSION:
        skip_or_fail(f"npm installed {spec} but `buf --version` gave {found or 'an error'}")
    return BUF


def test_buf_lint_passes_on_the_proto_files() -> None:
    buf = _installed_buf()
    result = run([buf, "lint"], timeout=120)
    assert_succeeded(result)
