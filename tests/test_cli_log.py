"""``varstore history``, ``log`` and ``watch``, run as users run them (a child process of
``python -m varstore.api.cli``) against ``varstore serve`` in another child process."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import IO, Any

import pytest
from servers import ServerProcess, start_server_process
from test_cli import as_json, assert_one_line_error, varstore

from varstore.client import connect

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``varstore serve`` on a SQLite log in a temporary folder, shared by this module."""
    process = start_server_process(tmp_path_factory.mktemp("cli_log") / "varstore.db")
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.terminate()


@pytest.fixture
def session(served: ServerProcess) -> str:
    """A session with a known log, written from Python::

    1 SessionCreated  2 t registered 0.5  3 t = 0.7  4 n registered 1
    5 batch t = 0.9, n = 2  6 t rolled back to v1 (0.7)  7 n deleted
    """
    name = f"log_{next(_numbers)}"
    with connect(served.address) as client:
        client.create_session(name)
        with client.session(name, {"source": "tester"}) as context:
            context.register_variable("t", "float", 0.5)
            context.set_variable("t", 0.7, {"why": "warmer"})
            context.register_variable("n", "integer", 1)
            context.update_variables({"t": 0.9, "n": 2})
            context.rollback_variable("t", 1)
            context.delete_variable("n")
    return name


def rows_of(text: str) -> tuple[str, list[list[str]]]:
    """The header line and the rows of a table, cut where the header's columns start."""
    header, *lines = text.splitlines()
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return header, [
        [line[a:b].strip() for a, b in zip(starts, bounds, strict=True)] for line in lines
    ]


def json_lines(result: subprocess.CompletedProcess[str]) -> list[Any]:
    """The JSON objects a successful command printed one a line."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines()]


# -- history ---------------------------------------------------------------------------------


def test_history_as_a_table(served: ServerProcess, session: str) -> None:
    result = varstore("history", session, "t", server=served.address)
    assert result.returncode == 0, result.stderr
    header, rows = rows_of(result.stdout)
    assert header.split() == [
        "VERSION",
        "KIND",
        "VALUE",
        "PREVIOUS",
        "POSITION",
        "RECORDED_AT",
        "SOURCE",
        "METADATA",
    ]
    assert [row[:5] for row in rows] == [
        ["0", "registered", "0.5", "-", "2"],
        ["1", "updated", "0.7", "0.5", "3"],
        ["2", "updated (batch)", "0.9", "0.7", "5"],
        ["3", "rolled_back (to v1)", "0.7", "0.9", "6"],
    ]
    assert {row[6] for row in rows} == {"tester"}
    assert rows[1][7] == "why=warmer"

    newest = varstore(
        "history", session, "t", "--newest-first", "--limit", "2", server=served.address
    )
    assert [row[0] for row in rows_of(newest.stdout)[1]] == ["3", "2"]


def test_history_as_json(served: ServerProcess, session: str) -> None:
    address = served.address
    changes = as_json(varstore("history", session, "n", "--json", server=address))
    assert [(c["version"], c["kind"], c["value"], c["previous_value"]) for c in changes] == [
        (0, "registered", 1, None),
        (1, "updated", 2, 1),
        (1, "deleted", None, 2),  # a deletion keeps the last version
    ]
    assert [c["in_batch"] for c in changes] == [False, True, False]
    assert all(c["name"] == "n" and c["type"] == "integer" for c in changes)

    some = as_json(
        varstore(
            "history", session, "t", "--from-version", "1", "--to-version", "2", "--json",
            server=address,
        )
    )  # fmt: skip
    assert [c["version"] for c in some] == [1, 2]


def test_history_errors_are_one_line(served: ServerProcess, session: str) -> None:
    assert_one_line_error(
        varstore("history", session, "missing", server=served.address), "never existed"
    )
    assert_one_line_error(
        varstore("history", "log_nowhere", "t", server=served.address), "log_nowhere"
    )


# -- log -------------------------------------------------------------------------------------


def test_log_forwards_as_a_table(served: ServerProcess, session: str) -> None:
    result = varstore("log", session, server=served.address)
    assert result.returncode == 0, result.stderr
    header, rows = rows_of(result.stdout)
    assert header.split() == ["POSITION", "TYPE", "RECORDED_AT", "SOURCE", "SUMMARY"]
    assert [row[0] for row in rows] == [str(p) for p in range(1, 8)]
    assert [row[1] for row in rows] == [
        "SessionCreated",
        "VariableRegistered",
        "VariableUpdated",
        "VariableRegistered",
        "BatchApplied",
        "VariableUpdated",
        "VariableDeleted",
    ]
    summaries = [row[4] for row in rows]
    assert summaries[0] == "session created"
    assert summaries[2].startswith("t = 0.7 (var_")
    assert sorted(summaries[4].removeprefix("batch: ").split(", ")) == ["n=2", "t=0.9"]
    assert "rollback to v1" in summaries[5]
    assert summaries[6].startswith("deleted n (var_")
    assert rows[2][3] == "tester"


def test_log_backwards_with_a_range_and_limit(served: ServerProcess, session: str) -> None:
    address = served.address
    result = varstore("log", session, "--backwards", "--limit", "3", server=address)
    assert result.returncode == 0, result.stderr
    _, rows = rows_of(result.stdout)
    assert [row[0] for row in rows] == ["7", "6", "5"]
    # Names of variables registered outside the rows shown are still found.
    assert rows[0][4].startswith("deleted n (")
    assert rows[1][4].startswith("t = 0.7 (")

    ranged = varstore("log", session, "--from", "2", "--to", "4", "--backwards", server=address)
    assert [row[0] for row in rows_of(ranged.stdout)[1]] == ["4", "3", "2"]


def test_log_as_json_lines_in_the_export_format(served: ServerProcess, session: str) -> None:
    address = served.address
    events = json_lines(varstore("log", session, "--json", server=address))
    assert [e["position"] for e in events] == list(range(1, 8))
    assert all(e["format"] == "varstore.v1.event" for e in events)
    assert events[2]["type"] == "VariableUpdated"
    assert events[2]["payload"]["value"] == 0.7
    assert events[2]["metadata"] == {"why": "warmer"}

    backwards = json_lines(varstore("log", session, "--json", "--backwards", server=address))
    assert backwards == events[::-1]

    exported = varstore("export", session, server=address)
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line) for line in exported.stdout.splitlines()] == events


def test_log_errors(served: ServerProcess) -> None:
    assert_one_line_error(
        varstore("log", "log_nowhere", server=served.address), "session 'log_nowhere' not found"
    )
    assert_one_line_error(
        varstore("log", "log_nowhere", "--json", server=served.address), "not found"
    )
    usage = varstore("log", "s", "--limit", "0", server=served.address)
    assert usage.returncode == 2


# -- watch -----------------------------------------------------------------------------------


def test_watch_replays_the_log_from_0(served: ServerProcess, session: str) -> None:
    result = varstore("watch", session, "--from", "0", "--count", "7", server=served.address)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 7
    assert lines[0].split() == ["1", "SessionCreated", "python"]  # client.create_session
    assert lines[1].split() == ["2", "t:", "-", "->", "0.5", "tester"]
    assert lines[2].split() == ["3", "t:", "0.5", "->", "0.7", "tester"]
    assert "(batch)" in lines[4]
    assert "(rollback to v1)" in lines[5]
    assert lines[6].split() == ["7", "n:", "2", "->", "(deleted)", "tester"]


def test_watch_filters_and_prints_json(served: ServerProcess, session: str) -> None:
    result = varstore(
        "watch", session, "--from", "2", "--var", "n", "--initial", "--count", "2", "--json",
        server=served.address,
    )  # fmt: skip
    initial, *updates = json_lines(result)
    assert initial == {"kind": "initial", "position": 2, "variables": []}
    assert [u["kind"] for u in updates] == ["update", "update"]
    assert [u["position"] for u in updates] == [4, 5]
    assert [[c["name"] for c in u["changes"]] for u in updates] == [["n"], ["n"]]
    assert updates[1]["changes"][0]["previous_value"] == 1
    assert updates[1]["changes"][0]["value"] == 2


def _read_line(stream: IO[str]) -> str:
    line = stream.readline()
    assert line, "the watch ended early"
    return line


def test_watch_prints_live_updates(served: ServerProcess, session: str) -> None:
    command = [sys.executable, "-m", "varstore.api.cli", "watch", session, "--json", "-v"]
    command += ["--count", "2", "--timeout", "30", "--server", served.address]
    environment = {k: v for k, v in os.environ.items() if k != "VARSTORE_SERVER"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    ) as watching:
        try:
            assert watching.stdout is not None
            # Caught up (the watch is live) before anything is written.
            assert json.loads(_read_line(watching.stdout)) == {"kind": "progress", "position": 7}
            with connect(served.address) as client, client.session(session) as context:
                context.set_variable("t", 1.5)
                context.register_variable("s", "string", "on")
            lines = [json.loads(_read_line(watching.stdout)) for _ in range(2)]
            assert watching.wait(timeout=30) == 0
        finally:
            if watching.poll() is None:
                watching.kill()
    updates = [line for line in lines if line["kind"] == "update"]
    assert [u["position"] for u in updates] == [8, 9]
    assert updates[0]["changes"][0]["previous_value"] == 0.7
    assert updates[0]["changes"][0]["value"] == 1.5
    assert updates[0]["source"] == "python"
    assert updates[1]["changes"][0]["name"] == "s"


def test_watch_stops_at_its_timeout(served: ServerProcess, session: str) -> None:
    quiet = varstore("watch", session, "--timeout", "0.5", server=served.address)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == ""
    short = varstore("watch", session, "--timeout", "0.5", "--count", "1", server=served.address)
    assert_one_line_error(short, "timed out after 0.5 s with 0 of 1 updates")


def test_watch_exits_0_quietly_on_ctrl_c(served: ServerProcess, session: str) -> None:
    command = [sys.executable, "-m", "varstore.api.cli", "watch", session, "-v"]
    command += ["--server", served.address]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as watching:
        try:
            assert watching.stdout is not None
            assert _read_line(watching.stdout).split() == ["7", "(caught", "up)"]
            watching.send_signal(signal.SIGINT)
            assert watching.wait(timeout=30) == 0
            assert watching.stderr is not None
            assert watching.stderr.read() == ""
        finally:
            if watching.poll() is None:
                watching.kill()


def test_watch_errors_are_one_line(served: ServerProcess, session: str) -> None:
    address = served.address
    for command in (
        ("watch", "log_nowhere", "--count", "1"),
        ("watch", "log_nowhere", "--from", "0", "--count", "1", "--json"),
    ):
        assert_one_line_error(varstore(*command, server=address), "session 'log_nowhere' not found")
    beyond = varstore("watch", session, "--from", "99", "--count", "1", server=address)
    assert_one_line_error(beyond, "99")
