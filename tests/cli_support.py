"""Running the installed ``varstore`` executable as a user does, and checking what it says."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

from _support import venv_executable

#: The console script pip installed (the same entry point users run).
VARSTORE = str(venv_executable("varstore"))


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without VARSTORE_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VARSTORE_")}
    env.update(extra or {})
    return env


def varstore(
    *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``varstore ARGS`` (no options added: tests say where --server goes)."""
    return subprocess.run(
        [VARSTORE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment(env),
        input=stdin,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that succeeded and said nothing on stderr."""
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr == "", result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON document a successful ``--json`` command printed, timestamps checked."""
    data = json.loads(ok(result))
    assert_z_timestamps(data)
    return data


def json_lines(result: subprocess.CompletedProcess[str]) -> list[Any]:
    """The JSON objects a successful command printed one a line, timestamps checked."""
    items = [json.loads(line) for line in ok(result).splitlines()]
    assert_z_timestamps(items)
    return items


def one_line_error(result: subprocess.CompletedProcess[str], text: str, code: int = 1) -> None:
    """Exit ``code``, nothing on stdout, one line ``varstore: ...text...`` on stderr."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("varstore: "), lines[0]
    assert text in lines[0], lines[0]


def _timestamps(data: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for name, value in data.items():
            yield from _timestamps(value, name)
    elif isinstance(data, list):
        for item in data:
            yield from _timestamps(item, key)
    elif key.endswith("_at") or key == "as_of":
        yield key, data


def assert_z_timestamps(data: Any) -> None:
    """Every ``*_at`` field is null or RFC 3339 in UTC with ``Z`` (never ``+00:00``)."""
    for key, value in _timestamps(data):
        if value is None:
            continue
        assert isinstance(value, str), (key, value)
        assert value.endswith("Z") and "+00:00" not in value, (key, value)
        assert value[10] == "T", (key, value)
