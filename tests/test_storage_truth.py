"""Storage that tells the truth: a damaged checkpoint is never served, health says when the
log cannot be written, start-up refusals are one line, and no path reaches a client."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import grpc
import pytest
from _support import skip_or_fail
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import start_server_process, stub_for

from varstore.api import commands
from varstore.api.server import RunningServer, start_server
from varstore.api.store import Store
from varstore.eventstore.sqlite import SQLiteRecorder
from varstore.types import to_proto
from varstore.v1 import varstore_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def set_value(stub: object, value: int) -> None:
    stub.SetVariable(  # type: ignore[attr-defined]
        pb.SetVariableRequest(session_id="s", variable_identifier="n", value=to_proto(value))
    )


def served(stub: object) -> int:
    got = stub.GetVariable(  # type: ignore[attr-defined]
        pb.GetVariableRequest(session_id="s", variable_identifier="n")
    )
    return int(got.variable.value.integer_value)


def write_a_checkpointed_log(db: Path, value: int) -> None:
    """A log whose checkpoint holds ``value`` (checkpoints are taken every event)."""
    server = start_server_process(db, "--checkpoint-every", "1")
    try:
        with stub_for(server.address) as stub:
            stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
            stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id="s", name="n", type="integer", initial_value=to_proto(0)
                )
            )
            set_value(stub, value)
    finally:
        assert server.terminate() == 0
    with closing(sqlite3.connect(db)) as conn:
        (data,) = conn.execute("SELECT data FROM checkpoints").fetchone()
    assert str(value).encode() in bytes(data)


def tamper(db: Path, sql: str, *params: object) -> None:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(sql, params)
        conn.commit()


# -- checkpoints ---------------------------------------------------------------------------------


def test_a_checkpoint_with_one_digit_changed_is_ignored_and_the_log_served(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    write_a_checkpointed_log(db, 41_375)
    with closing(sqlite3.connect(db)) as conn:
        (data,) = conn.execute("SELECT data FROM checkpoints").fetchone()
    tamper(db, "UPDATE checkpoints SET data = ?", bytes(data).replace(b"41375", b"41376"))
    server = start_server_process(db)
    try:
        with stub_for(server.address) as stub:
            assert served(stub) == 41_375  # what the log holds, not the checkpoint
    finally:
        server.terminate()
    assert any(
        "ignoring the checkpoint: its checksum does not match" in line for line in server.output
    )


def test_a_checkpoint_row_whose_position_was_changed_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    write_a_checkpointed_log(db, 7)
    tamper(db, "UPDATE checkpoints SET global_position = global_position - 1")
    server = start_server_process(db)
    try:
        with stub_for(server.address) as stub:
            assert served(stub) == 7
    finally:
        server.terminate()
    assert any("its row says global position" in line for line in server.output)


def test_a_checkpoint_of_another_log_is_ignored(tmp_path: Path) -> None:
    """Same global position, same sessions, another log: the mark of its last event differs."""
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    write_a_checkpointed_log(first, 1)
    write_a_checkpointed_log(second, 2)
    with closing(sqlite3.connect(first)) as conn:
        row = conn.execute("SELECT global_position, data FROM checkpoints").fetchone()
    tamper(second, "UPDATE checkpoints SET global_position = ?, data = ?", *row)
    server = start_server_process(second)
    try:
        with stub_for(server.address) as stub:
            assert served(stub) == 2
    finally:
        server.terminate()
    assert any("the log does not hold the event it marks" in line for line in server.output)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="a-list"),
        pytest.param(b"\xff\xfe not even text", id="bytes"),
        pytest.param(b"varstore-checkpoint sha256=00\n{}", id="bad-sum"),
    ],
)
def test_a_checkpoint_that_does_not_parse_does_not_stop_the_server(
    tmp_path: Path, data: bytes
) -> None:
    db = tmp_path / "log.db"
    write_a_checkpointed_log(db, 5)
    tamper(db, "UPDATE checkpoints SET data = ?", data)
    server = start_server_process(db)
    try:
        with stub_for(server.address) as stub:
            assert served(stub) == 5
    finally:
        server.terminate()


# -- health while the log cannot be written ------------------------------------------------------


def health_status(address: str) -> int:
    with closing(grpc.insecure_channel(address)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(answer.status)


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@contextmanager
def sqlite_server(db: Path) -> Iterator[RunningServer]:
    running = start_server(Store(SQLiteRecorder(db), maintenance_interval=0.05))
    try:
        yield running
    finally:
        running.stop(grace=1.0)


def read_only(recorder: object, on: bool) -> None:
    """Make SQLite refuse every write on the recorder's writing connection (or allow them)."""
    writer: sqlite3.Connection = vars(recorder)["_writer"]
    writer.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")


def test_health_is_not_serving_while_the_log_cannot_be_written_and_serving_once_it_can(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    with sqlite_server(db) as running, stub_for(running.address) as stub:
        stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
        assert health_status(running.address) == SERVING
        with closing(grpc.insecure_channel(running.address)) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            assert next(watch).status == SERVING
            read_only(running.store.recorder, True)
            with pytest.raises(grpc.RpcError) as refused:
                stub.DeleteSession(pb.DeleteSessionRequest(session_id="s"))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert str(tmp_path) not in (refused.value.details() or "")
            assert next(watch).status == NOT_SERVING
            assert health_status(running.address) == NOT_SERVING
            # Reads still work while writes cannot.
            assert stub.GetSession(pb.GetSessionRequest(session_id="s")).session.id == "s"
            read_only(running.store.recorder, False)
            assert next(watch).status == SERVING  # the store's probe found it writable
            watch.cancel()
        stub.DeleteSession(pb.DeleteSessionRequest(session_id="s"))


def chattr_immutable(path: Path, on: bool) -> None:
    """Make ``path`` read-only even for root (chattr), or for others (chmod)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)
    else:
        path.chmod(0o444 if on else 0o644)


def test_a_read_only_database_starts_not_serving_and_its_refusals_name_no_path(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    write_a_checkpointed_log(db, 3)
    chattr_immutable(db, True)
    try:
        server = start_server_process(db)
        try:
            assert health_status(server.address) == NOT_SERVING
            with stub_for(server.address) as stub:
                assert served(stub) == 3
                with pytest.raises(grpc.RpcError) as refused:
                    set_value(stub, 4)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert str(tmp_path) not in (refused.value.details() or "")
                assert "log.db" not in (refused.value.details() or "")
        finally:
            server.terminate()
    finally:
        chattr_immutable(db, False)


def test_a_log_that_cannot_be_read_is_unavailable_and_names_no_path(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    with sqlite_server(db) as running, stub_for(running.address) as stub:
        running.store.execute("s", commands.CreateSession("s"))
        vars(running.store.recorder)["_reader"].close()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReadEvents(pb.ReadEventsRequest(session_id="s"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert str(tmp_path) not in (refused.value.details() or "")
        assert "log.db" not in (refused.value.details() or "")


# -- start-up refusals ---------------------------------------------------------------------------


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "varstore.api.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_refused_in_one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("varstore: cannot start: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_a_malformed_database_is_refused_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not a database at all" * 100)
    assert_refused_in_one_line(serve("--db", str(db), "--listen", "127.0.0.1:0"), "junk.db")


def test_a_folder_that_cannot_hold_the_database_is_refused_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = serve("--db", str(blocker / "log.db"), "--listen", "127.0.0.1:0")
    assert_refused_in_one_line(result, "a-file")
    assert_refused_in_one_line(serve("--db", str(tmp_path), "--listen", "127.0.0.1:0"))


def test_a_taken_port_is_refused_in_one_line(tmp_path: Path) -> None:
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--db", ":memory:", "--listen", f"127.0.0.1:{port}")
    assert_refused_in_one_line(result, f"127.0.0.1:{port}")


def test_a_database_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    server = start_server_process(db)
    try:
        assert_refused_in_one_line(
            serve("--db", str(db), "--listen", "127.0.0.1:0"), "in use by another varstore"
        )
    finally:
        server.terminate()


@contextmanager
def small_disk(tmp_path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted under ``tmp_path`` (root only: mount needs it)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its disk is full (to the last byte it takes)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)


def test_a_full_disk_turns_health_not_serving_refuses_writes_cleanly_and_recovers(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path) as disk:
        db = disk / "log.db"
        with sqlite_server(db) as running, stub_for(running.address) as stub:
            stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
            stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id="s", name="n", type="integer", initial_value=to_proto(0)
                )
            )
            filler = disk / "filler"
            fill(filler)
            before = running.store.recorder.last_global_position()
            refused = None
            for value in range(1, 200):  # until the log cannot grow (a page may be free)
                try:
                    stub.SetVariable(
                        pb.SetVariableRequest(
                            session_id="s", variable_identifier="n", value=to_proto(value)
                        )
                    )
                except grpc.RpcError as error:
                    refused = error
                    break
            assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
            assert "nothing was recorded" in (refused.details() or "")
            assert str(disk) not in (refused.details() or "")
            assert eventually(lambda: health_status(running.address) == NOT_SERVING)
            # Reads go on; what was answered is all there, and nothing else.
            got = stub.GetVariable(pb.GetVariableRequest(session_id="s", variable_identifier="n"))
            assert got.header.position == running.store.recorder.last_global_position()
            assert got.header.position >= before
            filler.unlink()  # space again
            assert eventually(lambda: health_status(running.address) == SERVING)
            stub.SetVariable(
                pb.SetVariableRequest(session_id="s", variable_identifier="n", value=to_proto(-1))
            )
