"""The code passes ruff and mypy --strict, run with the tools installed beside this Python."""

from __future__ import annotations

from _support import assert_succeeded, run, skip_or_fail, venv_executable

PACKAGES = ["types", "eventstore", "projections", "api", "client", "testing", "v1"]


def _tool(name: str) -> str:
    path = venv_executable(name)
    if not path.exists():
        skip_or_fail(f"{name} is not installed beside the running Python ({path.parent})")
    return str(path)


def test_ruff_check_passes() -> None:
    result = run([_tool("ruff"), "check", "."])
    assert_succeeded(result)


def test_mypy_strict_passes_on_every_package() -> None:
    packages = [arg for name in PACKAGES for arg in ("-p", f"varstore.{name}")]
    result = run([_tool("mypy"), "--strict", *packages], timeout=600)
    assert_succeeded(result)


def test_mypy_strict_passes_on_the_benchmarks() -> None:
    result = run([_tool("mypy"), "--strict", "bench"], timeout=600)
    assert_succeeded(result)
