"""The contract's files are consistent: generated code matches the .proto, and buf lint passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _support import NODE_PROJECT, assert_succeeded, npm_ci, run, skip_or_fail

BUF_PACKAGE = "@bufbuild/buf"
BUF = NODE_PROJECT / "node_modules" / ".bin" / "buf"


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
    """buf at the version tests/node/package.json pins, installed by ``npm ci`` there.

    npm 11 may warn that buf's postinstall script is "not yet covered by allowScripts" and
    skip it; the binary comes from a platform package and works anyway.
    """
    manifest = json.loads((NODE_PROJECT / "package.json").read_text(encoding="utf-8"))
    wanted = manifest["devDependencies"][BUF_PACKAGE]
    npm_ci()
    found = _buf_version()
    if found != wanted:
        skip_or_fail(f"npm ci installed {BUF_PACKAGE} {wanted} but `buf --version` gave {found}")
    return BUF


def test_buf_lint_passes_on_the_proto_files() -> None:
    buf = _installed_buf()
    result = run([buf, "lint"], timeout=120)
    assert_succeeded(result)
