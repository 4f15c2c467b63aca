"""The variable and session commands through the installed ``varstore`` executable, against
``varstore serve`` in a child process: the API's reach (delete, rollback, reads of the
past, batches, health), options anywhere, JSON with ``Z`` times, source ``cli``."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_support import VARSTORE, as_json, environment, json_lines, ok, one_line_error, varstore
from servers import ServerProcess, start_server_process
from test_cli import closed_port

from varstore.client import connect

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``varstore serve`` on a SQLite log in a temporary folder, shared by this module."""
    db = tmp_path_factory.mktemp("cli_variables") / "varstore.db"
    process = start_server_process(db, "--sync", "normal")
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.terminate()


@pytest.fixture
def session(served: ServerProcess) -> str:
    """A new session with ``t`` (float 0.5, then 0.7) and ``n`` (integer 1), made by the CLI."""
    name = f"vars_{next(_numbers)}"
    server = ("--server", served.address)
    ok(varstore("session", "create", name, *server))
    ok(varstore("register", name, "t", "float", "0.5", *server))
    ok(varstore("set", name, "t", "0.7", *server))
    ok(varstore("register", name, "n", "integer", "1", *server))
    return name


def test_version_names_the_installed_release() -> None:
    import importlib.metadata

    assert ok(varstore("--version")) == f"varstore {importlib.metadata.version('varstore')}\n"


def test_client_options_go_before_or_after_the_command(served: ServerProcess, session: str) -> None:
    before = as_json(varstore("--server", served.address, "--json", "get", session, "t"))
    after = as_json(varstore("get", session, "t", "--server", served.address, "--json"))
    mixed = as_json(varstore("--json", "get", session, "--server", served.address, "t"))
    assert before == after == mixed
    assert before["value"] == 0.7
    grouped = as_json(varstore("session", "--server", served.address, "show", session, "--json"))
    assert grouped["id"] == session
    # The last one given wins.
    down = f"127.0.0.1:{closed_port()}"
    one_line_error(
        varstore("--server", served.address, "get", session, "t", "--server", down),
        f"server {down} is unavailable",
    )


def test_get_reads_the_past_at_a_position_or_a_time(served: ServerProcess, session: str) -> None:
    server = ("--server", served.address)
    then = as_json(varstore("get", session, "t", "--at", "2", "--json", *server))
    assert (then["value"], then["version"]) == (0.5, 0)
    moment = then["created_at"]
    assert (
        as_json(varstore("get", session, "t", "--as-of", moment, "--json", *server))["value"] == 0.5
    )
    text = ok(varstore("get", session, "t", "--at", "3", *server))
    assert "value:       0.7" in text
    one_line_error(varstore("get", session, "t", "--at", "999", *server), "999")
    one_line_error(
        varstore("get", session, "t", "--as-of", "2000-01-01T00:00:00Z", *server), session
    )
    usage = varstore("get", session, "t", "--as-of", "yesterday", *server)
    one_line_error(usage, "not an RFC 3339 time", code=2)
    usage = varstore("get", session, "t", "--as-of", "2026-01-01T00:00:00", *server)
    one_line_error(usage, "no time zone", code=2)
    both = varstore("get", session, "t", "--at", "2", "--as-of", moment, *server)
    one_line_error(both, "not both", code=2)


def test_set_several_at_once_is_one_atomic_batch(served: ServerProcess, session: str) -> None:
    server = ("--server", served.address)
    done = as_json(varstore("set", session, "t=1", "n=2", "--json", *server))
    assert [(u["name"], u["value"], u["previous_value"]) for u in done["updated"]] == [
        ("t", 1.0, 0.7),
        ("n", 2, 1),
    ]
    events = json_lines(varstore("log", session, "--json", *server))
    assert events[-1]["type"] == "BatchApplied"
    # One value the variable refuses: nothing is written.
    refused = varstore("set", session, "t=2", "n=2.5", *server)
    one_line_error(refused, "not an integer")
    assert as_json(varstore("get", session, "t", "--json", *server))["value"] == 1.0
    usage = varstore("set", session, "t=1", "n", *server)
    one_line_error(usage, "NAME=VALUE", code=2)


def test_batch_from_a_json_file(served: ServerProcess, session: str, tmp_path: Path) -> None:
    server = ("--server", served.address)
    updates = tmp_path / "updates.json"
    updates.write_text(json.dumps({"t": 1, "n": 5}), encoding="utf-8")
    done = as_json(varstore("batch", session, "--file", str(updates), "--json", *server))
    assert {u["name"]: u["value"] for u in done["updated"]} == {"t": 1.0, "n": 5}
    piped = ok(varstore("batch", session, "--file", "-", "n=6", *server, stdin='{"t": 0.25}'))
    assert piped.splitlines()[0].split() == ["NAME", "TYPE", "VALUE", "PREVIOUS", "VERSION"]
    assert as_json(varstore("get", session, "n", "--json", *server))["value"] == 6
    events = json_lines(varstore("log", session, "--json", "--backwards", "--limit", "2", *server))
    assert [e["type"] for e in events] == ["BatchApplied", "BatchApplied"]

    updates.write_text(json.dumps({"t": "warm"}), encoding="utf-8")
    one_line_error(varstore("batch", session, "--file", str(updates), *server), "'warm'")
    updates.write_text("[1, 2]", encoding="utf-8")
    one_line_error(varstore("batch", session, "--file", str(updates), *server), "JSON object")
    one_line_error(varstore("batch", session, "--file", str(tmp_path / "no.json"), *server), "no")
    one_line_error(varstore("batch", session, *server), "nothing to set", code=2)


def test_delete_and_rollback(served: ServerProcess, session: str) -> None:
    server = ("--server", served.address)
    rolled = as_json(varstore("rollback", session, "t", "--to-version", "0", "--json", *server))
    assert (rolled["value"], rolled["version"]) == (0.5, 2)
    history = as_json(varstore("history", session, "t", "--json", *server))
    assert (history[-1]["kind"], history[-1]["rollback_to_version"]) == ("rolled_back", 0)
    one_line_error(varstore("rollback", session, "t", "--to-version", "9", *server), "version")
    usage = varstore("rollback", session, "t", *server)
    assert usage.returncode == 2 and "--to-version" in usage.stderr

    deleted = as_json(varstore("delete", session, "n", "--json", *server))
    assert deleted == {"session_id": session, "name": "n", "id": deleted["id"], "deleted": True}
    assert [v["name"] for v in as_json(varstore("list", session, "--json", *server))] == ["t"]
    one_line_error(varstore("delete", session, "n", *server), "not found")


def test_session_show(served: ServerProcess, session: str) -> None:
    shown = as_json(varstore("session", "show", session, "--json", "--server", served.address))
    assert (shown["id"], shown["position"], shown["variable_count"]) == (session, 4, 2)
    text = ok(varstore("session", "show", session, "--server", served.address))
    assert "position:    4" in text
    one_line_error(
        varstore("session", "show", "vars_nowhere", "--server", served.address), "not found"
    )


def test_health_is_one_line_and_its_exit_code(served: ServerProcess) -> None:
    assert ok(varstore("health", "--server", served.address)) == f"{served.address}: SERVING\n"
    data = as_json(varstore("health", "--json", "--server", served.address))
    assert data == {"server": served.address, "service": "", "status": "SERVING"}
    down = f"127.0.0.1:{closed_port()}"
    one_line_error(varstore("health", "--server", down), "unavailable")
    unknown = varstore("health", "--service", "no.Such", "--server", served.address)
    one_line_error(unknown, "no.Such")


def test_every_command_prints_json_with_z_times(
    served: ServerProcess, session: str, tmp_path: Path
) -> None:
    server = ("--server", served.address)
    export = str(tmp_path / "e.jsonl")
    documents = [
        ("session", "create", "--json"),
        ("session", "list", "--json"),
        ("session", "show", session, "--json"),
        ("register", session, "s", "string", "x", "--json"),
        ("get", session, "s", "--json"),
        ("get", session, "t", "--at", "3", "--json"),
        ("set", session, "s", "y", "--json"),
        ("set", session, "s=z", "n=3", "--json"),
        ("batch", session, "n=4", "--json"),
        ("rollback", session, "s", "--to-version", "0", "--json"),
        ("list", session, "--json"),
        ("history", session, "s", "--json"),
        ("export", session, export, "--json"),
        ("import", export, "--session", f"{session}_copy", "--json"),
        ("fork", session, "--json"),
        ("delete", session, "s", "--json"),
        ("health", "--json"),
        ("session", "delete", f"{session}_copy", "--json"),
    ]
    for command in documents:
        data = as_json(varstore(*command, *server))
        assert data is not None, command
    for command in (("log", session, "--json"), ("export", session, "--json")):
        assert json_lines(varstore(*command, *server)), command
    watched = json_lines(
        varstore("watch", session, "--from", "0", "--count", "3", "--initial", "--json", *server)
    )
    assert watched[0]["kind"] == "initial"


def test_every_write_of_the_cli_records_source_cli(served: ServerProcess, tmp_path: Path) -> None:
    server = ("--server", served.address)
    name = f"vars_source_{next(_numbers)}"
    for command in (
        ("session", "create", name),
        ("register", name, "t", "float", "0.5"),
        ("register", name, "n", "integer", "1"),
        ("set", name, "t", "0.7"),
        ("set", name, "t=0.8", "n=2"),
        ("batch", name, "n=3"),
        ("rollback", name, "t", "--to-version", "0"),
        ("delete", name, "n"),
    ):
        ok(varstore(*command, *server))
    fork = as_json(varstore("fork", name, "--json", *server))["id"]
    ok(varstore("session", "delete", name, *server))
    ok(varstore("session", "delete", fork, *server))
    for session_id in (name, fork):
        events = json_lines(varstore("log", session_id, "--json", *server))
        assert {e["source"] for e in events} == {"cli"}, events
    history = as_json(varstore("history", name, "t", "--json", *server))
    assert {c["source"] for c in history} == {"cli"}


def test_a_log_range_past_the_end_is_an_error(served: ServerProcess, session: str) -> None:
    server = ("--server", served.address)
    for extra in ((), ("--json",), ("--backwards",)):
        result = varstore("log", session, "--from", "100", "--to", "200", *extra, *server)
        one_line_error(result, "--from 100 is past the end of the log of session")
        assert "(its last position is 4)" in result.stderr
    # A range that starts inside the log prints what is there.
    tail = json_lines(varstore("log", session, "--from", "3", "--to", "200", "--json", *server))
    assert [e["position"] for e in tail] == [3, 4]
    usage = varstore("log", session, "--from", "5", "--to", "2", *server)
    one_line_error(usage, "--to 2 is before --from 5", code=2)


def test_a_closed_pipe_is_a_quiet_exit_0(served: ServerProcess) -> None:
    name = f"vars_big_{next(_numbers)}"
    server = ("--server", served.address)
    ok(varstore("session", "create", name, *server))
    ok(varstore("register", name, "s", "string", "x", *server))
    with connect(served.address) as client, client.session(name) as context:
        for i in range(150):  # 150 events of ~1 kB: more than a pipe holds
            context.set_variable("s", f"{i}" + "y" * 1000)
    for command in (("log", name), ("log", name, "--json"), ("export", name)):
        with subprocess.Popen(
            [VARSTORE, *command, *server],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        ) as reader:
            assert reader.stdout is not None and reader.stderr is not None
            assert reader.stdout.readline()
            reader.stdout.close()  # as `head -1` does
            assert reader.wait(timeout=60) == 0, command
            assert reader.stderr.read() == "", command


def test_usage_errors_are_one_line_and_exit_2(served: ServerProcess, tmp_path: Path) -> None:
    one_line_error(varstore("get", "only_a_session"), "Missing argument 'NAME'", code=2)
    one_line_error(varstore("nonsense"), "No such command 'nonsense'", code=2)
    one_line_error(varstore("get", "s", "n", "--bogus"), "--bogus", code=2)
    bogus = varstore("serve", "--db", str(tmp_path / "x.db"), "--log-level", "bogus")
    one_line_error(bogus, "'bogus' is not one of", code=2)
    assert "Traceback" not in bogus.stderr
    alone = varstore()
    assert alone.returncode == 2
    assert "Usage: varstore" in alone.stderr
    assert ok(varstore("--help")).startswith("Usage: varstore")


def test_serve_takes_its_log_level_in_any_case(tmp_path: Path) -> None:
    process = start_server_process(tmp_path / "v.db", "--log-level", "debug")
    try:
        assert ok(varstore("health", "--server", process.address)).endswith("SERVING\n")
    finally:
        assert process.terminate() == 0


def test_transfers_draw_no_progress_on_a_pipe(
    served: ServerProcess, session: str, tmp_path: Path
) -> None:
    server = ("--server", served.address)
    path = str(tmp_path / "p.jsonl")
    for command in (
        ("export", session, path),
        ("import", path, "--session", f"{session}_p"),
        ("fork", session),
        ("export", session),
    ):
        result = varstore(*command, *server)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", command


def test_shell_completion_comes_from_click() -> None:
    script = ok(varstore(env={"_VARSTORE_COMPLETE": "bash_source"}))
    assert "_VARSTORE_COMPLETE=bash_complete" in script
    words = ok(
        varstore(
            env={
                "_VARSTORE_COMPLETE": "bash_complete",
                "COMP_WORDS": "varstore ses",
                "COMP_CWORD": "1",
            }
        )
    )
    assert "plain,session" in words.splitlines()


def test_json_times_are_utc_with_z(served: ServerProcess, session: str) -> None:
    data = as_json(varstore("get", session, "t", "--json", "--server", served.address))
    moment = datetime.fromisoformat(data["updated_at"])
    assert moment.tzinfo is not None and moment.utcoffset() == UTC.utcoffset(moment)
