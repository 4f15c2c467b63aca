"""The client commands of the ``varstore`` program, run as users run them (a child process of
``python -m varstore.api.cli``) against ``varstore serve`` in another child process."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import pytest
from servers import ServerProcess, start_server_process

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``varstore serve`` on a SQLite log in a temporary folder, shared by this module."""
    process = start_server_process(tmp_path_factory.mktemp("cli") / "varstore.db")
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.terminate()


@pytest.fixture
def session(served: ServerProcess) -> str:
    """A new session, created through the command line."""
    name = f"cli_{next(_numbers)}"
    done = varstore("session", "create", name, server=served.address)
    assert done.returncode == 0, done.stderr
    return name


def varstore(
    *args: str, server: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``varstore ARGS [--server SERVER]``; VARSTORE_SERVER is unset unless in ``env``."""
    environment = {k: v for k, v in os.environ.items() if k != "VARSTORE_SERVER"}
    environment.update(env or {})
    command = [sys.executable, "-m", "varstore.api.cli", *args]
    if server is not None:
        command += ["--server", server]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=environment, check=False
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful ``--json`` command printed."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    """Exit code 1, nothing on stdout, and ``varstore: ...text...`` as the only line."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("varstore: ")
    assert text in lines[0]
    assert "Traceback" not in result.stderr


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- sessions --------------------------------------------------------------------------------


def test_session_create_list_and_delete(served: ServerProcess) -> None:
    address = served.address
    created = varstore(
        "session", "create", "cli_life", "--ttl", "600", "--meta", "owner=ops", server=address
    )
    assert created.returncode == 0, created.stderr
    assert "id:" in created.stdout
    assert "cli_life" in created.stdout
    assert "owner=ops" in created.stdout

    table = varstore("session", "list", server=address)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["ID", "VARIABLES", "TTL"]
    row = next(r for r in rows if r.startswith("cli_life "))
    assert row.split()[1:3] == ["0", "600"]

    listed = as_json(varstore("session", "list", "--json", server=address))
    (info,) = [s for s in listed if s["id"] == "cli_life"]
    assert info["metadata"] == {"owner": "ops"}
    assert info["ttl_seconds"] == 600
    assert info["variable_count"] == 0
    for key in ("created_at", "updated_at", "expires_at"):
        assert datetime.fromisoformat(info[key]).tzinfo is not None

    deleted = varstore("session", "delete", "cli_life", server=address)
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted session cli_life" in deleted.stdout
    after = as_json(varstore("session", "list", "--json", server=address))
    assert "cli_life" not in [s["id"] for s in after]
    assert_one_line_error(
        varstore("session", "delete", "cli_life", server=address), "session 'cli_life' not found"
    )


def test_session_create_without_an_id_generates_one(served: ServerProcess) -> None:
    made = as_json(varstore("session", "create", "--json", server=served.address))
    assert made["id"]
    assert made["ttl_seconds"] == 0
    assert made["expires_at"] is None
    listed = as_json(varstore("session", "list", "--json", server=served.address))
    assert made["id"] in [s["id"] for s in listed]


def test_creating_an_existing_session_is_an_error(served: ServerProcess, session: str) -> None:
    result = varstore("session", "create", session, server=served.address)
    assert_one_line_error(result, session)


# -- variables -------------------------------------------------------------------------------


def test_register_get_set_and_list_as_tables(served: ServerProcess, session: str) -> None:
    address = served.address
    register = f"register {session} temperature float 0.7 --min 0 --max 100"
    registered = varstore(*register.split(), server=address)
    assert registered.returncode == 0, registered.stderr
    assert "temperature" in registered.stdout
    assert "source:" in registered.stdout

    shown = varstore("get", session, "temperature", server=address)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(":", 1) for line in shown.stdout.splitlines())
    fields = {key: value.strip() for key, value in fields.items()}
    assert fields["name"] == "temperature"
    assert fields["type"] == "float"
    assert fields["value"] == "0.7"
    assert fields["source"] == "cli"

    changed = varstore("set", session, "temperature", "1", server=address)
    assert changed.returncode == 0, changed.stderr
    assert "1.0" in changed.stdout  # a float variable got a float

    assert varstore("register", session, "mode", "string", "fast", server=address).returncode == 0
    table = varstore("list", session, server=address)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "VALUE", "VERSION", "SOURCE", "UPDATED_AT"]
    assert [row.split()[:5] for row in rows] == [
        ["mode", "string", "fast", "0", "cli"],
        ["temperature", "float", "1.0", "1", "cli"],
    ]
    # Columns line up: every row starts its cells where the header does.
    assert rows[0].index("string") == header.index("TYPE")
    assert rows[1].index("float") == header.index("TYPE")


def test_register_get_set_and_list_as_json(served: ServerProcess, session: str) -> None:
    address = served.address
    register = f"register {session} count integer 3 --min 0 --max 10 --meta why=test --json"
    made = as_json(varstore(*register.split(), server=address))
    assert made["name"] == "count"
    assert made["type"] == "integer"
    assert made["value"] == 3
    assert made["constraints"] == {"min": 0, "max": 10}
    assert made["metadata"] == {"why": "test"}
    assert made["source"] == "cli"
    first_version = made["version"]

    flag = as_json(varstore("register", session, "on", "boolean", "TRUE", "--json", server=address))
    assert flag["value"] is True
    choices = f"register {session} mode string fast --choice fast --choice slow --json"
    choice = as_json(varstore(*choices.split(), server=address))
    assert choice["constraints"] == {"choices": ["fast", "slow"]}

    update = f"set {session} count 7 --expected-version {first_version} --json"
    written = as_json(varstore(*update.split(), server=address))
    assert written["value"] == 7
    assert written["previous_value"] == 3
    assert written["version"] == first_version + 1

    read = as_json(varstore("get", session, "count", "--json", server=address))
    assert read["value"] == 7
    assert isinstance(read["value"], int)
    assert read["version"] == first_version + 1
    assert datetime.fromisoformat(read["updated_at"]) >= datetime.fromisoformat(read["created_at"])
    by_id = as_json(varstore("get", session, read["id"], "--json", server=address))
    assert by_id["name"] == "count"

    assert (
        as_json(varstore("set", session, "on", "false", "--json", server=address))["value"] is False
    )
    everything = as_json(varstore("list", session, "--json", server=address))
    assert [(v["name"], v["value"]) for v in everything] == [
        ("count", 7),
        ("mode", "fast"),
        ("on", False),
    ]
    some = as_json(varstore("list", session, "c*", "--json", server=address))
    assert [v["name"] for v in some] == ["count"]
    assert as_json(varstore("list", session, "zzz*", "--json", server=address)) == []


def test_set_reads_the_value_as_the_variable_type(served: ServerProcess, session: str) -> None:
    address = served.address
    assert varstore("register", session, "t", "float", "0.5", server=address).returncode == 0
    written = as_json(varstore("set", session, "t", "1", "--json", server=address))
    assert written["type"] == "float"
    assert written["value"] == 1.0
    assert isinstance(written["value"], float)
    stored = as_json(varstore("get", session, "t", "--json", server=address))
    assert isinstance(stored["value"], float)

    assert varstore("register", session, "n", "integer", "1", server=address).returncode == 0
    assert_one_line_error(varstore("set", session, "n", "1.5", server=address), "not an integer")


# -- errors ----------------------------------------------------------------------------------


def test_a_constraint_violation_is_one_line_and_exit_1(served: ServerProcess, session: str) -> None:
    address = served.address
    registered = varstore(
        "register", session, "temperature", "float", "0.7", "--max", "100", server=address
    )
    assert registered.returncode == 0, registered.stderr
    refused = varstore("set", session, "temperature", "150", server=address)
    assert_one_line_error(refused, "value 150 is above maximum 100")
    refused_json = varstore("set", session, "temperature", "150", "--json", server=address)
    assert_one_line_error(refused_json, "value 150 is above maximum 100")
    unchanged = as_json(varstore("get", session, "temperature", "--json", server=address))
    assert unchanged["value"] == 0.7


def test_a_version_conflict_is_an_error(served: ServerProcess, session: str) -> None:
    address = served.address
    made = as_json(varstore("register", session, "v", "integer", "1", "--json", server=address))
    stale = str(made["version"] + 5)
    result = varstore("set", session, "v", "2", "--expected-version", stale, server=address)
    assert_one_line_error(result, "version")


def test_an_unknown_session_is_an_error_and_is_not_created(served: ServerProcess) -> None:
    address = served.address
    for command in (
        ("get", "cli_nowhere", "x"),
        ("set", "cli_nowhere", "x", "1"),
        ("register", "cli_nowhere", "x", "float", "1"),
        ("list", "cli_nowhere"),
        ("session", "delete", "cli_nowhere"),
    ):
        assert_one_line_error(varstore(*command, server=address), "session 'cli_nowhere' not found")
    listed = as_json(varstore("session", "list", "--json", server=address))
    assert "cli_nowhere" not in [s["id"] for s in listed]


def test_an_unknown_variable_is_an_error(served: ServerProcess, session: str) -> None:
    assert_one_line_error(
        varstore("get", session, "missing", server=served.address),
        f"variable 'missing' not found in session '{session}'",
    )
    assert_one_line_error(
        varstore("set", session, "missing", "1", server=served.address), "not found"
    )


def test_a_bad_value_for_the_type_is_an_error(served: ServerProcess, session: str) -> None:
    result = varstore("register", session, "b", "boolean", "maybe", server=served.address)
    assert_one_line_error(result, "'maybe' is not a boolean")


def test_usage_errors_exit_2(served: ServerProcess, session: str) -> None:
    unknown_type = varstore("register", session, "x", "decimal", "1", server=served.address)
    assert unknown_type.returncode == 2
    assert "'decimal' is not one of" in unknown_type.stderr
    assert len(unknown_type.stderr.splitlines()) == 1
    bad_meta = varstore("set", session, "x", "1", "--meta", "novalue", server=served.address)
    assert bad_meta.returncode == 2
    assert "KEY=VALUE" in bad_meta.stderr
    assert bad_meta.stderr.startswith("varstore: ")
    missing = varstore("get", session)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr


def test_a_server_that_is_down_is_one_plain_line() -> None:
    address = f"127.0.0.1:{closed_port()}"
    for command in (("session", "list"), ("get", "s", "x"), ("list", "s", "--json")):
        result = varstore(*command, server=address)
        assert_one_line_error(result, f"server {address} is unavailable")


def test_the_varstore_server_variable_is_honoured(served: ServerProcess, session: str) -> None:
    env = {"VARSTORE_SERVER": served.address}
    listed = as_json(varstore("session", "list", "--json", env=env))
    assert session in [s["id"] for s in listed]
    # --server wins over the environment.
    down = f"127.0.0.1:{closed_port()}"
    overridden = varstore("session", "list", "--server", down, env=env)
    assert_one_line_error(overridden, f"server {down} is unavailable")
    # Without either, the default address is used (nothing is expected to listen there
    # during tests, but either way the command must not crash).
    default = varstore("session", "list", "--json", env={"VARSTORE_SERVER": ""})
    if default.returncode != 0:
        assert_one_line_error(default, "server 127.0.0.1:50051 is unavailable")
