"""Exact retries: a write with a request id already recorded answers as the first time and
writes nothing; the same id with another body is INVALID_ARGUMENT.

Every write RPC is a row of one table, run against a real server on a SQLite log: the same
request twice, again after the server restarts (a new store on the same file: the id is
found in the log), and with another body. The server in a child process is killed and
restarted under a retry; threads race one id; a store with a fake clock forgets ids after
24 hours and remembers them across a restart until then.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from _support import FakeWallClock
from servers import in_process_server, start_server_process, stub_for

from varstore.api import commands
from varstore.api.idempotency import REQUEST_TTL, RequestKey
from varstore.api.server import RunningServer
from varstore.api.store import Store
from varstore.client import transfer
from varstore.eventstore import (
    AppendResult,
    MemoryRecorder,
    NewEvent,
    RecorderError,
    SQLiteRecorder,
)
from varstore.types import to_proto
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub


class Restartable:
    """A real server on a SQLite log that can be stopped and started again on the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._servers: contextlib.ExitStack = contextlib.ExitStack()
        self.running: RunningServer
        self.stub: Stub
        self.start()

    def start(self) -> None:
        self.running = self._servers.enter_context(
            in_process_server(Store(SQLiteRecorder(self.path)))
        )
        self.stub = self._servers.enter_context(stub_for(self.running.address))

    def restart(self) -> None:
        self._servers.close()
        self._servers = contextlib.ExitStack()
        self.start()

    def events(self) -> int:
        """How many events the whole log holds."""
        return self.running.store.recorder.last_global_position()

    def close(self) -> None:
        self._servers.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Restartable]:
    restartable = Restartable(tmp_path / "log.db")
    yield restartable
    restartable.close()


def rid() -> str:
    return f"req-{uuid.uuid4().hex}"


def create(stub: Stub, session_id: str, *names: str) -> None:
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))
    for name in names:
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=session_id,
                name=name,
                type="integer",
                initial_value=to_proto(0),
                constraints=pb.Constraints(min=0, max=100),
            )
        )


# -- every write RPC -----------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One write RPC: what it needs, the call (``body`` picks one of two request bodies)."""

    setup: Callable[[Stub, str], None]
    call: Callable[[Stub, str, str, int], Any]


def _with_version_1(stub: Stub, session_id: str) -> None:
    create(stub, session_id, "x")
    stub.SetVariable(
        pb.SetVariableRequest(session_id=session_id, variable_identifier="x", value=to_proto(5))
    )


def _export(stub: Stub, session_id: str) -> list[pb.Event]:
    return [
        event
        for chunk in stub.ExportSession(pb.ExportSessionRequest(session_id=session_id))
        for event in chunk.events
    ]


def _import(stub: Stub, sid: str, request_id: str, body: int) -> pb.ImportSessionResponse:
    events = _export(stub, f"{sid}-origin")
    if body == 2:
        events = events[:-1]
    chunks = [
        pb.ImportSessionRequest(session_id=sid, events=events[:2], request_id=request_id),
        pb.ImportSessionRequest(events=events[2:]),
    ]
    response: pb.ImportSessionResponse = stub.ImportSession(iter(chunks))
    return response


WRITES = {
    "CreateSession": Write(
        lambda stub, sid: None,
        lambda stub, sid, r, body: stub.CreateSession(
            pb.CreateSessionRequest(session_id=sid, metadata={"v": str(body)}, request_id=r)
        ),
    ),
    "CreateSession-generated-id": Write(
        lambda stub, sid: None,
        lambda stub, sid, r, body: stub.CreateSession(
            pb.CreateSessionRequest(metadata={"v": str(body)}, request_id=r)
        ),
    ),
    "DeleteSession": Write(
        lambda stub, sid: create(stub, sid),
        lambda stub, sid, r, body: stub.DeleteSession(
            pb.DeleteSessionRequest(session_id=sid, metadata={"v": str(body)}, request_id=r)
        ),
    ),
    "RegisterVariable": Write(
        lambda stub, sid: create(stub, sid),
        lambda stub, sid, r, body: stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=sid, name="x", type="integer", initial_value=to_proto(body), request_id=r
            )
        ),
    ),
    "SetVariable": Write(
        lambda stub, sid: create(stub, sid, "x"),
        lambda stub, sid, r, body: stub.SetVariable(
            pb.SetVariableRequest(
                session_id=sid, variable_identifier="x", value=to_proto(body), request_id=r
            )
        ),
    ),
    "SetVariables-atomic": Write(
        lambda stub, sid: create(stub, sid, "x", "y"),
        lambda stub, sid, r, body: stub.SetVariables(
            pb.SetVariablesRequest(
                session_id=sid,
                updates={"x": to_proto(body), "y": to_proto(7)},
                atomic=True,
                request_id=r,
            )
        ),
    ),
    "SetVariables-per-variable": Write(  # one refusal in the answer: rebuilt too
        lambda stub, sid: create(stub, sid, "x", "y"),
        lambda stub, sid, r, body: stub.SetVariables(
            pb.SetVariablesRequest(
                session_id=sid,
                updates={"x": to_proto(body), "y": to_proto(7), "z": to_proto(1)},
                atomic=False,
                request_id=r,
            )
        ),
    ),
    "DeleteVariable": Write(
        lambda stub, sid: create(stub, sid, "x"),
        lambda stub, sid, r, body: stub.DeleteVariable(
            pb.DeleteVariableRequest(
                session_id=sid, variable_identifier="x", metadata={"v": str(body)}, request_id=r
            )
        ),
    ),
    "RollbackVariable": Write(
        lambda stub, sid: _with_version_1(stub, sid),
        lambda stub, sid, r, body: stub.RollbackVariable(
            pb.RollbackVariableRequest(
                session_id=sid,
                variable_identifier="x",
                to_version=0,
                metadata={"v": str(body)},
                request_id=r,
            )
        ),
    ),
    "ForkSession": Write(
        lambda stub, sid: create(stub, f"{sid}-origin", "x"),
        lambda stub, sid, r, body: stub.ForkSession(
            pb.ForkSessionRequest(
                session_id=f"{sid}-origin", new_session_id=sid, at_position=body, request_id=r
            )
        ),
    ),
    "ForkSession-generated-id": Write(
        lambda stub, sid: create(stub, f"{sid}-origin", "x"),
        lambda stub, sid, r, body: stub.ForkSession(
            pb.ForkSessionRequest(session_id=f"{sid}-origin", at_position=body, request_id=r)
        ),
    ),
    "ImportSession": Write(lambda stub, sid: create(stub, f"{sid}-origin", "x", "y"), _import),
}


def _invalid_argument(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    return str(raised.value.details())


@pytest.mark.parametrize("restart", [False, True], ids=["same-server", "after-a-restart"])
@pytest.mark.parametrize("name", list(WRITES))
def test_a_write_retried_with_its_request_id_answers_as_the_first_time_and_writes_nothing(
    server: Restartable, name: str, restart: bool
) -> None:
    write, sid, request_id = WRITES[name], f"s-{uuid.uuid4().hex[:12]}", rid()
    write.setup(server.stub, sid)
    first = write.call(server.stub, sid, request_id, 1)
    logged = server.events()
    if restart:
        server.restart()

    again = write.call(server.stub, sid, request_id, 1)

    assert again == first
    assert server.events() == logged
    details = _invalid_argument(lambda: write.call(server.stub, sid, request_id, 2))
    assert request_id in details
    assert server.events() == logged


def test_the_events_of_a_write_carry_its_request_id_and_a_retry_adds_none(
    server: Restartable,
) -> None:
    create(server.stub, "s", "x", "y")
    request = pb.SetVariablesRequest(
        session_id="s", updates={"x": to_proto(1), "y": to_proto(2)}, request_id="batch-1"
    )  # not atomic: one event per variable, each carrying the id
    for _ in range(3):
        server.stub.SetVariables(request)
    events = server.stub.ReadEvents(pb.ReadEventsRequest(session_id="s")).events
    assert [(e.type, e.request_id) for e in events] == [
        ("SessionCreated", ""),
        ("VariableRegistered", ""),
        ("VariableRegistered", ""),
        ("VariableUpdated", "batch-1"),
        ("VariableUpdated", "batch-1"),
    ]


def test_a_retry_answers_as_the_first_time_although_the_session_moved_on(
    server: Restartable,
) -> None:
    create(server.stub, "s", "x")
    request = pb.SetVariableRequest(
        session_id="s", variable_identifier="x", value=to_proto(3), request_id="set-3"
    )
    first = server.stub.SetVariable(request)
    server.stub.SetVariable(
        pb.SetVariableRequest(session_id="s", variable_identifier="x", value=to_proto(4))
    )
    server.stub.DeleteVariable(pb.DeleteVariableRequest(session_id="s", variable_identifier="x"))

    again = server.stub.SetVariable(request)

    assert again == first
    assert (again.new_version, again.header.position) == (1, 3)


def test_a_rollback_retried_after_its_variable_was_deleted_answers_as_the_first_time(
    server: Restartable,
) -> None:
    create(server.stub, "s", "x")
    server.stub.SetVariable(
        pb.SetVariableRequest(session_id="s", variable_identifier="x", value=to_proto(5))
    )
    request = pb.RollbackVariableRequest(
        session_id="s", variable_identifier="x", to_version=0, request_id="undo"
    )
    first = server.stub.RollbackVariable(request)
    server.stub.DeleteVariable(pb.DeleteVariableRequest(session_id="s", variable_identifier="x"))

    assert server.stub.RollbackVariable(request) == first


def test_one_request_id_is_unique_per_server_not_per_session(server: Restartable) -> None:
    create(server.stub, "a", "x")
    create(server.stub, "b", "x")
    server.stub.SetVariable(
        pb.SetVariableRequest(
            session_id="a", variable_identifier="x", value=to_proto(1), request_id="r"
        )
    )
    details = _invalid_argument(
        lambda: server.stub.SetVariable(
            pb.SetVariableRequest(
                session_id="b", variable_identifier="x", value=to_proto(1), request_id="r"
            )
        )
    )
    assert "'r'" in details and "session 'a'" in details


def test_a_refused_write_is_not_remembered_so_its_retry_is_decided_again(
    server: Restartable,
) -> None:
    create(server.stub, "s")
    request = pb.SetVariableRequest(
        session_id="s", variable_identifier="x", value=to_proto(1), request_id="early"
    )
    with pytest.raises(grpc.RpcError) as raised:
        server.stub.SetVariable(request)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    server.stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id="s", name="x", type="integer", initial_value=to_proto(0)
        )
    )

    assert server.stub.SetVariable(request).new_version == 1


@pytest.mark.parametrize(
    "request_id",
    [pytest.param("r" * 129, id="129-characters"), pytest.param("a\x00b", id="control-character")],
)
def test_an_unusable_request_id_is_invalid_argument_and_writes_nothing(
    server: Restartable, request_id: str
) -> None:
    logged = server.events()
    details = _invalid_argument(
        lambda: server.stub.CreateSession(pb.CreateSessionRequest(request_id=request_id))
    )
    assert "request_id" in details
    assert server.events() == logged


def test_a_request_id_of_128_characters_is_accepted(server: Restartable) -> None:
    request = pb.CreateSessionRequest(session_id="s", request_id="é" * 128)
    assert server.stub.CreateSession(request) == server.stub.CreateSession(request)


# -- races ---------------------------------------------------------------------------------


def test_threads_racing_one_request_id_write_one_event_and_get_one_answer(
    server: Restartable,
) -> None:
    create(server.stub, "s", "x")
    logged = server.events()
    request = pb.SetVariableRequest(
        session_id="s", variable_identifier="x", value=to_proto(9), request_id="race"
    )
    start = threading.Barrier(8)

    def send(_: int) -> pb.SetVariableResponse:
        start.wait()
        response: pb.SetVariableResponse = server.stub.SetVariable(request)
        return response

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))

    assert all(answer == answers[0] for answer in answers)
    assert server.events() == logged + 1


def test_threads_racing_a_create_session_with_a_generated_id_get_one_session(
    server: Restartable,
) -> None:
    logged = server.events()
    request = pb.CreateSessionRequest(request_id="one-session")
    start = threading.Barrier(6)

    def send(_: int) -> str:
        start.wait()
        return str(server.stub.CreateSession(request).session.id)

    with ThreadPoolExecutor(6) as pool:
        ids = set(pool.map(send, range(6)))

    assert len(ids) == 1
    assert server.events() == logged + 1


class GatedRecorder(MemoryRecorder):
    """A memory log whose first append waits for ``gate``: the writes sent meanwhile queue
    up and are committed together as the next group."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def append_many(self, appends: Any) -> list[AppendResult]:
        if not self.gate.is_set():
            self.entered.set()
            self.gate.wait(10)
        return super().append_many(appends)


def test_two_commands_with_one_request_id_in_one_group_write_once() -> None:
    recorder = GatedRecorder()
    recorder.gate.set()
    store = Store(recorder)
    try:
        store.execute("s", commands.CreateSession("s"))
        store.execute("s", commands.RegisterVariable("s", "x", "integer", 0))
        recorder.gate.clear()
        key = RequestKey("twice", "digest")
        with ThreadPoolExecutor(3) as pool:
            blocker = pool.submit(store.execute, "s", commands.SetVariable("s", "x", 1))
            assert recorder.entered.wait(10)  # the leader is appending: the rest queue
            twins = [
                pool.submit(store.execute, "s", commands.SetVariable("s", "x", 2), key)
                for _ in range(2)
            ]
            while len(store._pending) < 2:  # both wait behind the leader
                threading.Event().wait(0.001)
            recorder.gate.set()
            blocker.result(10)
            answers = [twin.result(10) for twin in twins]
        assert answers[0] == answers[1]
        assert [e.request_id for e in recorder.read_session("s")].count("twice") == 1
        assert recorder.last_position("s") == 4
    finally:
        store.close()


# -- how long ids are remembered -----------------------------------------------------------


def _set(store: Store, value: int, key: RequestKey) -> int:
    return store.execute("s", commands.SetVariable("s", "x", value), key).position


def test_request_ids_are_forgotten_after_24_hours(tmp_path: Path) -> None:
    clock = FakeWallClock()
    store = Store(SQLiteRecorder(tmp_path / "log.db"), clock=clock)
    try:
        store.execute("s", commands.CreateSession("s"))
        store.execute("s", commands.RegisterVariable("s", "x", "integer", 0))
        key = RequestKey("daily", "d")
        assert _set(store, 1, key) == 3
        clock.advance((REQUEST_TTL - timedelta(seconds=1)).total_seconds())
        assert _set(store, 1, key) == 3  # still remembered: the first answer
        clock.advance(2)
        assert _set(store, 1, key) == 4  # forgotten: decided again, written again
    finally:
        store.close()


@pytest.mark.parametrize(
    ("hours", "remembered"), [(23, True), (25, False)], ids=["within-24h", "after-24h"]
)
def test_a_restart_remembers_the_request_ids_of_the_last_24_hours(
    tmp_path: Path, hours: int, remembered: bool
) -> None:
    clock = FakeWallClock()
    path = tmp_path / "log.db"
    key = RequestKey("kept", "d")
    with contextlib.closing(Store(SQLiteRecorder(path), clock=clock, checkpoint_every=1)) as store:
        store.execute("s", commands.CreateSession("s"))
        store.execute("s", commands.RegisterVariable("s", "x", "integer", 0))
        assert _set(store, 1, key) == 3
        store.checkpoint()  # the index is not in it: start-up reads the log's recent ids
    clock.advance(hours * 3600)
    with contextlib.closing(Store(SQLiteRecorder(path), clock=clock)) as store:
        assert _set(store, 1, key) == (3 if remembered else 4)


def test_a_fork_retried_after_a_restart_is_answered_although_its_copies_are_old(
    tmp_path: Path,
) -> None:
    """The copies keep the origin's times, older than 24 hours, so start-up reads only
    the fork's own last event; the answer is still rebuilt from the whole fork."""
    clock = FakeWallClock()
    path = tmp_path / "log.db"
    with contextlib.closing(Store(SQLiteRecorder(path), clock=clock)) as store:
        store.execute("o", commands.CreateSession("o"))
        store.execute("o", commands.RegisterVariable("o", "x", "integer", 0))
        clock.advance(30 * 3600)
        copies = [
            NewEvent(e.type, e.payload, e.recorded_at, e.source, e.metadata)
            for e in store.recorder.read_session("o")
        ]
        fork = commands.ForkSession("f", "o", 2, copies)
        key = RequestKey("fork", "d")
        first = store.execute("f", fork, key)
    clock.advance(3600)
    with contextlib.closing(Store(SQLiteRecorder(path), clock=clock)) as store:
        again = store.execute("f", commands.ForkSession("f", "o", 2, ()), key)
        assert again == first
        assert again.position == 3
        assert store.recorder.last_position("f") == 3


def test_a_write_whose_commit_outcome_was_unknown_but_landed_is_remembered(
    tmp_path: Path,
) -> None:
    class FailsAfterWriting(SQLiteRecorder):
        fail = False

        def append_many(self, appends: Any) -> list[AppendResult]:
            results = super().append_many(appends)
            if self.fail:
                self.fail = False
                raise RecorderError("COMMIT failed (it may have reached the disk)")
            return results

    recorder = FailsAfterWriting(tmp_path / "log.db")
    with contextlib.closing(Store(recorder)) as store:
        store.execute("s", commands.CreateSession("s"))
        store.execute("s", commands.RegisterVariable("s", "x", "integer", 0))
        key = RequestKey("unknown", "d")
        recorder.fail = True
        first = store.execute("s", commands.SetVariable("s", "x", 5), key)
        again = store.execute("s", commands.SetVariable("s", "x", 5), key)
        assert again == first
        assert recorder.last_position("s") == 3


# -- a server in its own process -----------------------------------------------------------


def test_a_set_variable_retried_after_the_server_was_killed_and_restarted_writes_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    request = pb.SetVariableRequest(
        session_id="s", variable_identifier="x", value=to_proto(42), request_id="across-kill"
    )
    served = start_server_process(db)
    try:
        with stub_for(served.address) as stub:
            create(stub, "s", "x")
            first = stub.SetVariable(request)
    finally:
        served.kill()  # no drain, no checkpoint: the id must come from the log itself
    served = start_server_process(db)
    try:
        with stub_for(served.address) as stub:
            again = stub.SetVariable(request)
            events = stub.ReadEvents(pb.ReadEventsRequest(session_id="s")).events
    finally:
        served.terminate()
    assert again == first
    assert (again.new_version, again.header.position) == (1, 3)
    assert [e.request_id for e in events] == ["", "", "across-kill"]


# -- exports -------------------------------------------------------------------------------


def test_an_export_line_names_the_request_that_wrote_its_event_and_reads_back(
    server: Restartable, tmp_path: Path
) -> None:
    create(server.stub, "s", "x")
    server.stub.SetVariable(
        pb.SetVariableRequest(
            session_id="s", variable_identifier="x", value=to_proto(1), request_id="set-1"
        )
    )
    events = server.stub.ReadEvents(pb.ReadEventsRequest(session_id="s")).events
    lines = [transfer.event_to_json(event) for event in events]

    assert "request_id" not in lines[0]  # written without one: no key, as before
    assert lines[-1]["request_id"] == "set-1"
    assert list(lines[-1])[-2:] == ["request_id", "payload"]
    assert transfer.event_from_json(lines[-1], {"var_x_2": "integer"}) == events[-1]


def test_an_import_records_its_events_under_its_own_request_id(server: Restartable) -> None:
    create(server.stub, "s", "x")
    server.stub.SetVariable(
        pb.SetVariableRequest(
            session_id="s", variable_identifier="x", value=to_proto(1), request_id="set-1"
        )
    )
    events = _export(server.stub, "s")
    server.stub.ImportSession(
        iter([pb.ImportSessionRequest(session_id="copy", events=events, request_id="copy-1")])
    )
    copied = server.stub.ReadEvents(pb.ReadEventsRequest(session_id="copy")).events
    assert {event.request_id for event in copied} == {"copy-1"}
