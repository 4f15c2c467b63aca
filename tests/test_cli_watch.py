"""``varstore watch`` keeps watching across a restart of its server: it opens the watch
again by itself from the last position it printed (one note on stderr), and Ctrl-C ends
it quietly with exit code 0."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import IO, Any

from cli_support import VARSTORE, environment
from servers import ServerProcess, start_server_process
from test_cli import closed_port

from varstore.client import connect


def _serve(db: Path, address: str) -> ServerProcess:
    """``varstore serve`` on ``address`` (a later --listen replaces the helper's port 0)."""
    return start_server_process(db, "--listen", address, "--sync", "normal")


def _next_json(stream: IO[str]) -> dict[str, Any]:
    line = stream.readline()
    assert line, "the watch ended early"
    item: dict[str, Any] = json.loads(line)
    return item


def _next_update(stream: IO[str]) -> dict[str, Any]:
    """The next update line (progress lines skipped)."""
    while (item := _next_json(stream))["kind"] != "update":
        pass
    return item


def _set(address: str, session: str, value: float) -> None:
    with connect(address) as client, client.session(session) as context:
        context.set_variable("t", value)


def test_watch_reconnects_across_a_server_restart(tmp_path: Path) -> None:
    db = tmp_path / "watch.db"
    address = f"127.0.0.1:{closed_port()}"
    server = _serve(db, address)
    with connect(address) as client:
        client.create_session("w").register_variable("t", "float", 0.5)
    command = [VARSTORE, "watch", "w", "--json", "-v", "--server", address]
    watching = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment()
    )
    try:
        assert watching.stdout is not None and watching.stderr is not None
        assert _next_json(watching.stdout) == {"kind": "progress", "position": 2}
        _set(address, "w", 1.0)
        first = _next_update(watching.stdout)
        assert (first["position"], first["changes"][0]["value"]) == (3, 1.0)

        assert server.terminate() == 0
        server = _serve(db, address)  # the same log on the same port
        _set(address, "w", 2.0)
        second = _next_update(watching.stdout)
        # From where it was: nothing missed, nothing repeated.
        assert (second["position"], second["changes"][0]["previous_value"]) == (4, 1.0)
        assert second["changes"][0]["value"] == 2.0

        watching.send_signal(signal.SIGINT)
        assert watching.wait(timeout=30) == 0
        notes = watching.stderr.read().splitlines()
        assert len(notes) == 1, notes
        assert notes[0].startswith(f"varstore: lost the watch on {address} (")
        assert notes[0].count("position") == 1  # the server's own advice is not repeated
        assert notes[0].endswith("reconnecting from position 3")
    finally:
        if watching.poll() is None:
            watching.kill()
        watching.wait(timeout=10)
        if server.process.poll() is None:
            server.terminate()


def test_watch_with_a_count_finishes_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "count.db"
    address = f"127.0.0.1:{closed_port()}"
    server = _serve(db, address)
    with connect(address) as client:
        client.create_session("c").register_variable("t", "float", 0.5)
    command = [VARSTORE, "watch", "c", "--count", "1", "-v", "--server", address]
    watching = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment()
    )
    try:
        assert watching.stdout is not None and watching.stderr is not None
        assert watching.stdout.readline().split() == ["2", "(caught", "up)"]
        assert server.terminate() == 0
        server = _serve(db, address)
        _set(address, "c", 0.75)
        assert watching.wait(timeout=60) == 0
        rest = watching.stdout.read().splitlines()
        assert rest[-1].split() == ["3", "t:", "0.5", "->", "0.75", "python"]
        (note,) = watching.stderr.read().splitlines()
        assert "reconnecting from position 2" in note
    finally:
        if watching.poll() is None:
            watching.kill()
        watching.wait(timeout=10)
        if server.process.poll() is None:
            server.terminate()
