"""Issue 10's findings, each through a real server: hostile input gets a clear error in
bounded time, and nothing it could not write breaks anyone's reads.

- One regex froze the whole server: ``(a+)+$`` against ``"a" * 30 + "!"`` took 60-75 s
  under the GIL while every other call waited. Patterns now run in RE2.
- One huge TTL broke GetSession and ListSessions for everyone, for good (also after a
  restart), and fork and import of such a session answered INTERNAL but wrote the copy.
  ``ttl_seconds`` is now range-checked before anything is written, and a log an older
  server wrote with such a TTL reads fine.
- A pattern in an older log that RE2 cannot run still folds; writes to its variable are
  FAILED_PRECONDITION (quickly), and its export cannot be imported.
- Out-of-range numbers (an import's recorded_at, history versions, expected versions and
  positions) are INVALID_ARGUMENT naming the field, never INTERNAL, and write nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from servers import ServerProcess, in_process_server, start_server_process, stub_for

from varstore.api.server import RunningServer
from varstore.eventstore.events import NewEvent
from varstore.eventstore.recorder import Append
from varstore.eventstore.sqlite import SQLiteRecorder
from varstore.types.events import EventType
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub

#: Generous bound on calls that used to take 60-75 s; RE2 answers in milliseconds.
BOUND = 10.0
#: The finding's TTL, and the largest int64 (what an older server wrote unchecked).
HUGE_TTLS = [1_000_000_000_000, 2**63 - 1]
#: The latest time a Timestamp can hold, in seconds since the epoch.
LATEST = 253_402_300_799


def _code(call: object) -> grpc.StatusCode:
    """The status code of ``call()`` (OK when it returns)."""
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as failure:
        return failure.code()
    return grpc.StatusCode.OK


def _refusal(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value


def _log_end(running: RunningServer) -> int:
    return running.store.recorder.last_global_position()


@pytest.fixture
def running() -> Iterator[RunningServer]:
    with in_process_server() as made:
        yield made


@pytest.fixture
def stub(running: RunningServer) -> Iterator[Stub]:
    with stub_for(running.address) as made:
        yield made


# -- the regex --------------------------------------------------------------------------------


def test_a_backtracking_pattern_refuses_its_value_quickly_and_holds_up_no_other_session(
    running: RunningServer, stub: Stub
) -> None:
    stub.CreateSession(pb.CreateSessionRequest(session_id="regex"))
    stub.CreateSession(pb.CreateSessionRequest(session_id="bystander"))
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id="regex",
            name="word",
            type="string",
            initial_value=pb.Value(string_value="aaa"),
            constraints=pb.Constraints(pattern="(a+)+$"),
        )
    )
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id="bystander",
            name="n",
            type="integer",
            initial_value=pb.Value(integer_value=0),
        )
    )
    hostile = pb.SetVariableRequest(
        session_id="regex", variable_identifier="word", value=pb.Value(string_value="a" * 30 + "!")
    )
    bystander_done: list[int] = []

    def bystander() -> None:  # another caller, on another session, meanwhile
        with stub_for(running.address) as own:
            for n in range(1, 51):
                own.SetVariable(
                    pb.SetVariableRequest(
                        session_id="bystander",
                        variable_identifier="n",
                        value=pb.Value(integer_value=n),
                    ),
                    timeout=BOUND,
                )
                bystander_done.append(n)

    thread = threading.Thread(target=bystander)
    started = time.monotonic()
    thread.start()
    failures = [_refusal(lambda: stub.SetVariable(hostile, timeout=BOUND)) for _ in range(20)]
    thread.join(timeout=BOUND)
    assert not thread.is_alive(), "the other session's writes were held up"
    assert time.monotonic() - started < BOUND
    assert len(bystander_done) == 50
    for failure in failures:
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "variable 'word'" in (failure.details() or "")
        assert "does not match pattern '(a+)+$'" in (failure.details() or "")
    got = stub.GetVariable(pb.GetVariableRequest(session_id="regex", variable_identifier="word"))
    assert got.variable.value.string_value == "aaa" and got.variable.version == 0


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param(r"(a)\1", id="backreference"),
        pytest.param("(?=a)a+", id="lookahead"),
        pytest.param("a{1001}", id="repeat-over-1000"),
    ],
)
def test_registering_a_pattern_re2_cannot_compile_is_invalid_argument_naming_the_variable(
    running: RunningServer, stub: Stub, pattern: str
) -> None:
    stub.CreateSession(pb.CreateSessionRequest(session_id="p"))
    before = _log_end(running)
    failure = _refusal(
        lambda: stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id="p",
                name="code",
                type="string",
                initial_value=pb.Value(string_value="a"),
                constraints=pb.Constraints(pattern=pattern),
            )
        )
    )
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "variable 'code'" in (failure.details() or "")
    assert "not a valid RE2 regex" in (failure.details() or "")
    assert _log_end(running) == before


# -- logs an older server wrote ---------------------------------------------------------------

T0 = datetime(2025, 6, 1, tzinfo=UTC)


def _old_log(path: Path, session_id: str, *events: tuple[EventType, dict[str, object]]) -> None:
    """Write ``events`` straight into the log at ``path``, as an older server (which checked
    less) may have: no decider runs."""
    recorder = SQLiteRecorder(path)
    try:
        recorder.append_many(
            [
                Append(
                    session_id, 0, [NewEvent(kind, body, T0, "old-server") for kind, body in events]
                )
            ]
        )
    finally:
        recorder.close()


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers started (``varstore serve`` child processes); stopped at the end."""
    started: list[ServerProcess] = []
    yield started
    for process in started:
        if process.process.poll() is None:
            process.kill()


def _serve(db: Path, started: list[ServerProcess]) -> ServerProcess:
    process = start_server_process(db)
    started.append(process)
    return process


@pytest.mark.parametrize("ttl", HUGE_TTLS, ids=["ttl-1e12", "ttl-int64-max"])
def test_a_huge_ttl_in_an_old_log_breaks_no_read_and_forks_but_does_not_import(
    tmp_path: Path, restartable: list[ServerProcess], ttl: int
) -> None:
    db = tmp_path / "old.db"
    _old_log(
        db,
        "huge",
        (EventType.SESSION_CREATED, {"metadata": {}, "ttl_seconds": ttl}),
        (
            EventType.VARIABLE_REGISTERED,
            {
                "variable_id": "var_x_2",
                "name": "x",
                "type": "integer",
                "value": 1,
                "constraints": {},
            },
        ),
    )
    server = _serve(db, restartable)
    with stub_for(server.address) as stub:
        got = stub.GetSession(pb.GetSessionRequest(session_id="huge"))
        assert got.session.ttl_seconds == ttl
        assert 0 < got.session.expires_at.seconds <= LATEST
        listed = stub.ListSessions(pb.ListSessionsRequest())
        assert [s.id for s in listed.sessions] == ["huge"]
        forked = stub.ForkSession(pb.ForkSessionRequest(session_id="huge", new_session_id="copy"))
        assert forked.session.id == "copy" and forked.session.ttl_seconds == ttl
        export = [
            e
            for page in stub.ExportSession(pb.ExportSessionRequest(session_id="huge"))
            for e in page.events
        ]
        failure = _refusal(
            lambda: stub.ImportSession(
                iter([pb.ImportSessionRequest(session_id="imported", events=export)])
            )
        )
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "position 1" in (failure.details() or "")
        assert "max_ttl_seconds" in (failure.details() or "")
        assert _code(lambda: stub.GetSession(pb.GetSessionRequest(session_id="imported"))) == (
            grpc.StatusCode.NOT_FOUND
        )
    assert server.terminate() == 0
    again = _serve(db, restartable)
    with stub_for(again.address) as stub:
        listed = stub.ListSessions(pb.ListSessionsRequest())
        assert sorted(s.id for s in listed.sessions) == ["copy", "huge"]
        assert stub.GetSession(pb.GetSessionRequest(session_id="copy")).session.ttl_seconds == ttl


def test_a_pattern_in_an_old_log_that_re2_cannot_run_folds_and_refuses_writes_quickly(
    tmp_path: Path, restartable: list[ServerProcess]
) -> None:
    db = tmp_path / "old.db"
    _old_log(
        db,
        "legacy",
        (EventType.SESSION_CREATED, {"metadata": {}, "ttl_seconds": 0}),
        (
            EventType.VARIABLE_REGISTERED,
            {
                "variable_id": "var_twice_2",
                "name": "twice",
                "type": "string",
                "value": "aa",
                "constraints": {"pattern": r"(a)\1"},
            },
        ),
    )
    server = _serve(db, restartable)
    with stub_for(server.address) as stub:
        got = stub.GetVariable(
            pb.GetVariableRequest(session_id="legacy", variable_identifier="twice")
        )
        assert got.variable.value.string_value == "aa"
        assert got.variable.constraints.pattern == r"(a)\1"
        started = time.monotonic()
        failure = _refusal(
            lambda: stub.SetVariable(
                pb.SetVariableRequest(
                    session_id="legacy",
                    variable_identifier="twice",
                    value=pb.Value(string_value="a" * 30 + "!"),
                ),
                timeout=BOUND,
            )
        )
        assert time.monotonic() - started < BOUND
        assert failure.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = failure.details() or ""
        assert "variable 'twice'" in details and "register it again" in details
        # Deleting it is how out: then the name takes an RE2 pattern.
        stub.DeleteVariable(
            pb.DeleteVariableRequest(session_id="legacy", variable_identifier="twice")
        )
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id="legacy",
                name="twice",
                type="string",
                initial_value=pb.Value(string_value="aa"),
                constraints=pb.Constraints(pattern="(a)a"),
            )
        )
        export = [
            e
            for page in stub.ExportSession(pb.ExportSessionRequest(session_id="legacy"))
            for e in page.events
        ]
        failure = _refusal(
            lambda: stub.ImportSession(
                iter([pb.ImportSessionRequest(session_id="again", events=export)])
            )
        )
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "position 2" in (failure.details() or "") and "RE2" in (failure.details() or "")


# -- the huge TTL, live -----------------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["big", ""], ids=["named", "generated-id"])
@pytest.mark.parametrize("ttl", [*HUGE_TTLS, -1], ids=["ttl-1e12", "ttl-int64-max", "negative"])
def test_creating_a_session_with_an_out_of_range_ttl_is_invalid_argument_and_writes_nothing(
    running: RunningServer, stub: Stub, session_id: str, ttl: int
) -> None:
    stub.CreateSession(pb.CreateSessionRequest(session_id="neighbour", ttl_seconds=60))
    before = _log_end(running)
    failure = _refusal(
        lambda: stub.CreateSession(pb.CreateSessionRequest(session_id=session_id, ttl_seconds=ttl))
    )
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = failure.details() or ""
    assert f"ttl_seconds must be from 0 to 315360000, not {ttl}" in details
    assert _log_end(running) == before
    # Everyone's reads still work.
    listed = stub.ListSessions(pb.ListSessionsRequest())
    assert [s.id for s in listed.sessions] == ["neighbour"]
    assert stub.GetSession(pb.GetSessionRequest(session_id="neighbour")).session.ttl_seconds == 60


def test_the_longest_ttl_is_accepted_and_its_expiry_is_shown(stub: Stub) -> None:
    made = stub.CreateSession(pb.CreateSessionRequest(session_id="decade", ttl_seconds=315_360_000))
    assert made.session.ttl_seconds == 315_360_000
    expected = time.time() + 315_360_000
    assert abs(made.session.expires_at.seconds - expected) < 60
    assert stub.GetSession(pb.GetSessionRequest(session_id="decade")).session.expires_at.seconds


def test_a_session_created_with_an_empty_id_answers_with_its_generated_id(stub: Stub) -> None:
    made = stub.CreateSession(pb.CreateSessionRequest(ttl_seconds=3600))
    assert made.session.id.startswith("session_")
    assert made.header.session_id == made.session.id
    again = stub.GetSession(pb.GetSessionRequest(session_id=made.session.id))
    assert again.session.ttl_seconds == 3600
    forked = stub.ForkSession(pb.ForkSessionRequest(session_id=made.session.id))
    assert forked.session.id.startswith("session_") and forked.session.id != made.session.id
    assert forked.header.session_id == forked.session.id


# -- other numbers out of range ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(253_402_300_800, 0), (-62_135_596_801, 0), (0, -1), (0, 1_000_000_000), (2**63 - 1, 0)],
    ids=["after-9999", "before-year-1", "negative-nanos", "nanos-overflow", "int64-max"],
)
def test_an_import_whose_recorded_at_is_out_of_range_is_invalid_argument_and_writes_nothing(
    running: RunningServer, stub: Stub, seconds: int, nanos: int
) -> None:
    stub.CreateSession(pb.CreateSessionRequest(session_id="origin"))
    export = [
        e
        for page in stub.ExportSession(pb.ExportSessionRequest(session_id="origin"))
        for e in page.events
    ]
    export[0].recorded_at.seconds = seconds
    export[0].recorded_at.nanos = nanos
    before = _log_end(running)
    failure = _refusal(
        lambda: stub.ImportSession(
            iter([pb.ImportSessionRequest(session_id="copy", events=export)])
        )
    )
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "position 1" in (failure.details() or "")
    assert "recorded_at is not a valid time" in (failure.details() or "")
    assert _log_end(running) == before


def _seeded(stub: Stub) -> None:
    stub.CreateSession(pb.CreateSessionRequest(session_id="n"))
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id="n", name="v", type="integer", initial_value=pb.Value(integer_value=1)
        )
    )
    stub.SetVariable(
        pb.SetVariableRequest(
            session_id="n", variable_identifier="v", value=pb.Value(integer_value=2)
        )
    )


NEGATIVE_FIELDS = [
    pytest.param(
        lambda stub: stub.GetVariableHistory(
            pb.GetVariableHistoryRequest(session_id="n", variable_identifier="v", from_version=-1)
        ),
        "from_version",
        id="history-from-version",
    ),
    pytest.param(
        lambda stub: stub.GetVariableHistory(
            pb.GetVariableHistoryRequest(session_id="n", variable_identifier="v", to_version=-1)
        ),
        "to_version",
        id="history-to-version",
    ),
    pytest.param(
        lambda stub: stub.ReadEvents(pb.ReadEventsRequest(session_id="n", to_position=-1)),
        "to_position",
        id="read-events-to-position",
    ),
    pytest.param(
        lambda stub: stub.SetVariable(
            pb.SetVariableRequest(
                session_id="n",
                variable_identifier="v",
                value=pb.Value(integer_value=3),
                expected_version=-1,
            )
        ),
        "expected_version",
        id="set-expected-version",
    ),
    pytest.param(
        lambda stub: stub.DeleteVariable(
            pb.DeleteVariableRequest(
                session_id="n", variable_identifier="v", expected_version=-(2**63)
            )
        ),
        "expected_version",
        id="delete-expected-version",
    ),
    pytest.param(
        lambda stub: stub.RollbackVariable(
            pb.RollbackVariableRequest(
                session_id="n", variable_identifier="v", to_version=0, expected_version=-5
            )
        ),
        "expected_version",
        id="rollback-expected-version",
    ),
    pytest.param(
        lambda stub: stub.SetVariables(
            pb.SetVariablesRequest(
                session_id="n", updates={"v": pb.Value(integer_value=3)}, expected_position=-1
            )
        ),
        "expected_position",
        id="batch-expected-position",
    ),
]


@pytest.mark.parametrize(("call", "field"), NEGATIVE_FIELDS)
def test_a_negative_number_is_invalid_argument_naming_its_field_and_writes_nothing(
    running: RunningServer, stub: Stub, call: object, field: str
) -> None:
    _seeded(stub)
    before = _log_end(running)
    failure = _refusal(lambda: call(stub))  # type: ignore[operator]
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} must be 0 or more" in (failure.details() or "")
    assert _log_end(running) == before


@pytest.mark.parametrize(
    "source",
    [pytest.param("a\x00b", id="nul"), pytest.param("line\nbreak", id="newline"), "x" * 257],
)
def test_a_source_label_no_backend_can_keep_is_invalid_argument_and_writes_nothing(
    stub: Stub, running: RunningServer, source: str
) -> None:
    stub.CreateSession(pb.CreateSessionRequest(session_id="labelled"))
    before = running.store.recorder.last_global_position()
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateSession(pb.CreateSessionRequest(session_id="other", source=source))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "source" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as refused:
        stub.DeleteSession(pb.DeleteSessionRequest(session_id="labelled", source=source))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert running.store.recorder.last_global_position() == before
