"""ForkSession, ExportSession and ImportSession, the JSON Lines format, the client calls
and the ``varstore export|import|fork`` commands.

The properties: a fork at p is the origin as it stood at p, and replaying the origin's
later commands on it reproduces the origin; an export imported again is the same log
(up to the session id and global positions); a bad import is refused whole, naming the
position, and writes nothing.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from _support import edited_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varstore.api import commands, transfer
from varstore.api.server import RunningServer
from varstore.api.store import Store
from varstore.client import (
    AlreadyExists,
    Client,
    OutOfRange,
    SessionNotFound,
    ValidationError,
    connect,
)
from varstore.client.transfer import (
    FORMAT,
    event_from_json,
    event_to_json,
    read_events,
    write_events,
)
from varstore.eventstore.memory import MemoryRecorder
from varstore.projections import SessionState
from varstore.types import LimitExceeded, VarstoreError
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub
_numbers = itertools.count(1)


def fresh(prefix: str = "t") -> str:
    """A session id no test has used."""
    return f"{prefix}_{next(_numbers)}"


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    """A Python client on the module's server."""
    with connect(server.address) as made:
        yield made


def make_origin(stub: Stub, session_id: str) -> None:
    """A session with a few kinds of events: 7 in all, live at the end."""
    stub.CreateSession(
        pb.CreateSessionRequest(session_id=session_id, metadata={"team": "a"}, source="setup")
    )
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id,
            name="temperature",
            type="float",
            initial_value=pb.Value(float_value=0.5),
            constraints=pb.Constraints(min=0, max=2),
            metadata={"why": "start"},
        )
    )
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id,
            name="model",
            type="string",
            initial_value=pb.Value(string_value="small"),
            constraints=pb.Constraints(
                choices=[pb.Value(string_value=c) for c in ("small", "big")]
            ),
        )
    )
    stub.SetVariable(
        pb.SetVariableRequest(
            session_id=session_id,
            variable_identifier="temperature",
            value=pb.Value(float_value=1.0),
            metadata={"why": "warmer"},
            source="tuner",
        )
    )
    stub.SetVariables(
        pb.SetVariablesRequest(
            session_id=session_id,
            updates={
                "temperature": pb.Value(float_value=1.5),
                "model": pb.Value(string_value="big"),
            },
            atomic=True,
        )
    )
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id,
            name="steps",
            type="integer",
            initial_value=pb.Value(integer_value=3),
        )
    )
    stub.RollbackVariable(
        pb.RollbackVariableRequest(
            session_id=session_id, variable_identifier="temperature", to_version=0
        )
    )


def read_log(stub: Stub, session_id: str) -> list[pb.Event]:
    """Every event of a session, through ReadEvents."""
    events: list[pb.Event] = []
    token = ""
    while True:
        page = stub.ReadEvents(
            pb.ReadEventsRequest(session_id=session_id, page_size=1000, page_token=token)
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


def without_ids(events: Sequence[pb.Event]) -> list[pb.Event]:
    """Copies with the session id and global position cleared."""
    cleared = []
    for event in events:
        copy = pb.Event()
        copy.CopyFrom(event)
        copy.session_id = ""
        copy.global_position = 0
        cleared.append(copy)
    return cleared


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and message a failing call raised."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    return error.code(), error.details()


# -- fork ------------------------------------------------------------------------------------


def test_a_fork_is_the_origin_as_it_stood_at_the_position(stub: Stub) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    for position in range(1, 8):
        new_id = fresh("fork")
        response = stub.ForkSession(
            pb.ForkSessionRequest(session_id=origin, at_position=position, new_session_id=new_id)
        )
        assert response.header.session_id == new_id
        assert response.header.position == position + 1
        assert response.session.id == new_id
        assert response.session.position == position + 1
        then = stub.ListVariables(
            pb.ListVariablesRequest(session_id=origin, at_position=position)
        ).variables
        now = stub.ListVariables(pb.ListVariablesRequest(session_id=new_id)).variables
        assert list(now) == list(then)
        assert response.session.metadata == {"team": "a"}


def test_the_fork_log_is_the_copy_then_a_fork_event_naming_the_origin(stub: Stub) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    new_id = fresh("fork")
    stub.ForkSession(
        pb.ForkSessionRequest(
            session_id=origin,
            at_position=4,
            new_session_id=new_id,
            source="experiment",
            metadata={"why": "try a colder run"},
        )
    )
    copied = read_log(stub, new_id)
    assert without_ids(copied[:4]) == without_ids(read_log(stub, origin)[:4])
    assert all(event.session_id == new_id for event in copied)
    fork = copied[4]
    assert fork.position == 5
    assert fork.type == "SessionForked"
    assert fork.WhichOneof("body") == "session_forked"
    assert fork.session_forked.origin_session_id == origin
    assert fork.session_forked.origin_position == 4
    assert fork.source == "experiment"
    assert dict(fork.metadata) == {"why": "try a colder run"}
    assert fork.recorded_at.ToDatetime() >= copied[3].recorded_at.ToDatetime()


def test_a_fork_at_0_copies_everything_and_an_empty_id_is_generated(stub: Stub) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    response = stub.ForkSession(pb.ForkSessionRequest(session_id=origin))
    assert response.session.id.startswith("session_")
    assert response.session.position == 8
    fork = read_log(stub, response.session.id)[-1]
    assert fork.session_forked.origin_position == 7
    assert fork.source  # the caller's peer address when no source is given


def test_a_fork_and_its_origin_then_change_independently(stub: Stub) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    new_id = fresh("fork")
    stub.ForkSession(pb.ForkSessionRequest(session_id=origin, new_session_id=new_id))
    stub.SetVariable(
        pb.SetVariableRequest(
            session_id=new_id, variable_identifier="steps", value=pb.Value(integer_value=9)
        )
    )
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=origin))
    got = stub.GetVariable(pb.GetVariableRequest(session_id=new_id, variable_identifier="steps"))
    assert got.variable.value.integer_value == 9
    assert got.variable.version == 1


def test_fork_refusals(stub: Stub, server: RunningServer) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    taken = fresh("taken")
    stub.CreateSession(pb.CreateSessionRequest(session_id=taken))

    def fork(**fields: Any) -> tuple[grpc.StatusCode, str]:
        return code_of(lambda: stub.ForkSession(pb.ForkSessionRequest(**fields)))

    code, message = fork(session_id="never_was", new_session_id=fresh())
    assert code == grpc.StatusCode.NOT_FOUND
    code, message = fork(session_id=origin, at_position=8, new_session_id=fresh())
    assert code == grpc.StatusCode.OUT_OF_RANGE
    assert "position 8" in message
    code, _ = fork(session_id=origin, at_position=-1, new_session_id=fresh())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, message = fork(session_id=origin, new_session_id=taken)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert taken in message
    code, _ = fork(session_id=origin, new_session_id="bad id")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # A deleted session's id stays taken: its log is kept.
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=taken))
    code, _ = fork(session_id=origin, new_session_id=taken)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    # A deleted origin can be forked only where it was live.
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=origin))
    lost = fresh()
    code, message = fork(session_id=origin, new_session_id=lost)
    assert code == grpc.StatusCode.NOT_FOUND
    assert "not live at position 8" in message
    assert server.store.published(lost) is None
    saved = stub.ForkSession(
        pb.ForkSessionRequest(session_id=origin, at_position=7, new_session_id=fresh())
    )
    assert saved.session.variable_count == 3


# -- the fork property, on a store ------------------------------------------------------------

NAMES = ("a", "b", "c")
TYPES = ("float", "integer", "string", "boolean")
values = st.one_of(st.integers(-5, 5), st.floats(-5, 5), st.text(max_size=3), st.booleans())
metadata = st.dictionaries(st.sampled_from(["why", "who"]), st.text(max_size=3), max_size=2)


@st.composite
def a_command(draw: st.DrawFn) -> Any:
    """A command on session "o" (rebound to another session by ``on``)."""
    name = draw(st.sampled_from(NAMES))
    kind = draw(
        st.sampled_from(["register", "register", "set", "set", "batch", "delete", "drop", "create"])
    )
    if kind == "register":
        constraints = draw(st.sampled_from([{}, {"min": -2, "max": 2}, {"max_length": 2}]))
        return commands.RegisterVariable(
            "o", name, draw(st.sampled_from(TYPES)), draw(values), constraints, draw(metadata)
        )
    if kind == "set":
        return commands.SetVariable("o", name, draw(values), draw(metadata))
    if kind == "batch":
        updates = draw(st.dictionaries(st.sampled_from(NAMES), values, max_size=3))
        return commands.SetVariables("o", updates, draw(metadata), atomic=draw(st.booleans()))
    if kind == "delete":
        return commands.DeleteVariable("o", name)
    if kind == "drop":
        return commands.DeleteSession("o")
    return commands.CreateSession("o")


def run(store: Store, session_id: str, command: Any) -> str:
    """Run ``command`` on ``session_id``; its outcome: "ok" or the refusal's class."""
    try:
        store.execute(session_id, replace(command, session_id=session_id))
    except VarstoreError as refused:
        return type(refused).__name__
    return "ok"


def variables_by_name(state: SessionState | None) -> dict[str, Any]:
    """What a session's variables are, without their ids and positions (a fork's later
    registrations sit one position further on, so their ids differ)."""
    if state is None or state.deleted:
        return {"deleted": True}
    return {
        v.name: (v.type, v.value, type(v.value), v.version, v.constraints, dict(v.metadata))
        for v in state.variables.values()
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(a_command(), min_size=1, max_size=30), st.data())
def test_forking_at_p_then_replaying_the_later_commands_reproduces_the_origin(
    script: list[Any], data: st.DataObject
) -> None:
    store = Store(MemoryRecorder())
    try:
        store.execute("o", commands.CreateSession("o"))
        # (position the command started at, command, outcome); boundaries where "o" was live.
        ran: list[tuple[int, Any, str]] = []
        boundaries = [1]
        for command in script:
            before = store.published("o")
            assert before is not None
            ran.append((before.position, command, run(store, "o", command)))
            after = store.published("o")
            assert after is not None
            if not after.deleted:
                boundaries.append(after.position)
        p = data.draw(st.sampled_from(boundaries), label="fork position")
        fork = transfer.fork_session(
            store, pb.ForkSessionRequest(session_id="o", at_position=p, new_session_id="f"), "t"
        )
        assert fork.session.position == p + 1
        assert variables_by_name(store.published("f")) == variables_by_name(store.state_at("o", p))
        # Replay every command that ran once "o" had reached p: same outcomes, same state.
        later = [(command, outcome) for started, command, outcome in ran if started >= p]
        assert [run(store, "f", command) for command, _ in later] == [o for _, o in later]
        assert variables_by_name(store.published("f")) == variables_by_name(store.published("o"))
    finally:
        store.close()


# -- export ----------------------------------------------------------------------------------


def export(stub: Stub, session_id: str, **bounds: Any) -> list[pb.ExportSessionResponse]:
    """Every chunk of an export."""
    return list(stub.ExportSession(pb.ExportSessionRequest(session_id=session_id, **bounds)))


def test_an_export_is_the_log_in_order(stub: Stub) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    chunks = export(stub, origin)
    events = [event for chunk in chunks for event in chunk.events]
    assert events == read_log(stub, origin)
    assert [e.position for e in events] == list(range(1, 8))
    middle = [e for c in export(stub, origin, from_position=3, to_position=5) for e in c.events]
    assert [e.position for e in middle] == [3, 4, 5]
    clamped = [e for c in export(stub, origin, from_position=6, to_position=99) for e in c.events]
    assert [e.position for e in clamped] == [6, 7]


def test_a_long_export_comes_in_chunks(stub: Stub) -> None:
    session_id = fresh("long")
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id, name="n", type="integer", initial_value=pb.Value(integer_value=0)
        )
    )
    for i in range(1, 1199):
        stub.SetVariable(
            pb.SetVariableRequest(
                session_id=session_id, variable_identifier="n", value=pb.Value(integer_value=i)
            )
        )
    chunks = export(stub, session_id)
    assert [len(chunk.events) for chunk in chunks] == [500, 500, 200]
    positions = [event.position for chunk in chunks for event in chunk.events]
    assert positions == list(range(1, 1201))


def test_deleted_sessions_can_be_exported_unknown_ones_cannot(stub: Stub) -> None:
    session_id = fresh("gone")
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id))
    events = [e for chunk in export(stub, session_id) for e in chunk.events]
    assert [e.type for e in events] == ["SessionCreated", "SessionDeleted"]
    code, _ = code_of(lambda: export(stub, "never_was"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(lambda: export(stub, session_id, from_position=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# -- import ----------------------------------------------------------------------------------


def import_events(
    stub: Stub,
    events: Sequence[pb.Event],
    session_id: str = "",
    to_position: int = 0,
    chunk: int = 3,
) -> pb.ImportSessionResponse:
    """Import ``events`` in chunks of ``chunk``."""
    requests = [
        pb.ImportSessionRequest(events=events[i : i + chunk]) for i in range(0, len(events), chunk)
    ] or [pb.ImportSessionRequest()]
    requests[0].session_id = session_id
    requests[0].to_position = to_position
    return stub.ImportSession(iter(requests))


def test_export_then_import_is_the_identity(stub: Stub) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    forked = fresh("fork")
    stub.ForkSession(pb.ForkSessionRequest(session_id=origin, at_position=5, new_session_id=forked))
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=origin))
    stub.CreateSession(pb.CreateSessionRequest(session_id=origin, ttl_seconds=600))
    for source in (origin, forked):
        events = [e for chunk in export(stub, source) for e in chunk.events]
        copy = fresh("copy")
        response = import_events(stub, events, copy)
        assert response.header.session_id == copy
        assert response.header.position == len(events)
        assert response.session.id == copy
        again = [e for chunk in export(stub, copy) for e in chunk.events]
        assert without_ids(again) == without_ids(events)
        assert all(e.session_id == copy for e in again)
        assert list(stub.ListVariables(pb.ListVariablesRequest(session_id=copy)).variables) == list(
            stub.ListVariables(pb.ListVariablesRequest(session_id=source)).variables
        )


def test_an_import_takes_the_exported_id_by_default_and_stops_at_to_position(
    stub: Stub, server: RunningServer
) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    events = [e for chunk in export(stub, origin) for e in chunk.events]
    renamed = [pb.Event() for _ in events]
    target = fresh("named")
    for copy, event in zip(renamed, events, strict=True):
        copy.CopyFrom(event)
        copy.session_id = target
    response = import_events(stub, renamed)
    assert response.session.id == target
    partial = fresh("partial")
    response = import_events(stub, events, partial, to_position=4)
    assert response.header.position == 4
    assert without_ids(read_log(stub, partial)) == without_ids(events[:4])
    beyond = fresh("beyond")
    code, message = code_of(lambda: import_events(stub, events, beyond, to_position=9))
    assert code == grpc.StatusCode.OUT_OF_RANGE
    assert "ends at position 7" in message
    assert server.store.published(beyond) is None


def _good_log(stub: Stub) -> list[pb.Event]:
    origin = fresh("origin")
    make_origin(stub, origin)
    return [e for chunk in export(stub, origin) for e in chunk.events]


BREAKAGES: dict[str, tuple[int, Any, str]] = {
    # name: (position, change, words the message must hold)
    "a gap in positions": (4, lambda e: setattr(e, "position", 5), "position 5"),
    "a first position that is not 1": (1, lambda e: setattr(e, "position", 0), "start at 1"),
    "a body that does not match the type": (
        3,
        lambda e: setattr(e, "type", "VariableDeleted"),
        "position 3",
    ),
    "an unknown type": (3, lambda e: setattr(e, "type", "VariableRenamed"), "VariableRenamed"),
    "a value of the wrong type": (
        4,
        lambda e: e.variable_updated.value.CopyFrom(pb.Value(string_value="hot")),
        "expected a float",
    ),
    "a value that breaks a constraint": (
        4,
        lambda e: e.variable_updated.value.CopyFrom(pb.Value(float_value=5.0)),
        "above maximum",
    ),
    "a registration whose value breaks its own choices": (
        3,
        lambda e: e.variable_registered.value.CopyFrom(pb.Value(string_value="huge")),
        "not one of the choices",
    ),
    "an event for an unknown variable": (
        4,
        lambda e: setattr(e.variable_updated, "variable_id", "var_ghost_2"),
        "unknown variable",
    ),
    "a variable id the log would not derive": (
        2,
        lambda e: setattr(e.variable_registered, "variable_id", "var_other_2"),
        "var_temperature_2",
    ),
    "an unknown variable type": (
        2,
        lambda e: setattr(e.variable_registered, "type", "decimal"),
        "decimal",
    ),
    "a missing value": (4, lambda e: e.variable_updated.ClearField("value"), "position 4"),
    "an event of another session": (
        5,
        lambda e: setattr(e, "session_id", "someone_else"),
        "someone_else",
    ),
    "a missing time": (3, lambda e: e.ClearField("recorded_at"), "recorded_at"),
    "a time before the event before": (
        3,
        lambda e: e.recorded_at.FromDatetime(datetime(2001, 1, 1)),
        "earlier than the event before",
    ),
    "an unknown schema version": (3, lambda e: setattr(e, "schema_version", 7), "schema version"),
    "a rollback to a version that never was": (
        7,
        lambda e: setattr(e.variable_updated, "rollback_to_version", 9),
        "roll back",
    ),
    "a second creation of a live session": (
        2,
        lambda e: (
            e.ClearField("body"),
            setattr(e, "type", "SessionCreated"),
            e.session_created.SetInParent(),
        ),
        "created twice",
    ),
    "a fork event that misstates its origin position": (
        7,
        lambda e: (
            e.ClearField("body"),
            setattr(e, "type", "SessionForked"),
            e.session_forked.MergeFrom(pb.SessionForked(origin_session_id="x", origin_position=2)),
        ),
        "origin_position",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_bad_import_is_refused_whole_naming_the_position(
    stub: Stub, server: RunningServer, breakage: str
) -> None:
    position, change, words = BREAKAGES[breakage]
    events = edited_events(_good_log(stub), position, change)
    target = fresh("bad")
    code, message = code_of(lambda: import_events(stub, events, target))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert words in message
    assert "position" in message
    assert server.store.published(target) is None
    code, _ = code_of(lambda: stub.GetSession(pb.GetSessionRequest(session_id=target)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_an_event_from_the_future_is_refused(stub: Stub, server: RunningServer) -> None:
    future = datetime.now(UTC) + timedelta(days=1)
    events = edited_events(_good_log(stub), 7, lambda e: e.recorded_at.FromDatetime(future))
    target = fresh("future")
    code, message = code_of(lambda: import_events(stub, events, target))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "future" in message
    assert server.store.published(target) is None


def test_an_import_into_a_used_id_or_of_nothing_is_refused(stub: Stub) -> None:
    events = _good_log(stub)
    used = fresh("used")
    stub.CreateSession(pb.CreateSessionRequest(session_id=used))
    code, _ = code_of(lambda: import_events(stub, events, used))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, message = code_of(lambda: import_events(stub, [], fresh()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no events" in message
    nameless = edited_events(events, 1, lambda e: setattr(e, "session_id", ""))
    nameless = [e for e in nameless if e.position == 1]
    code, message = code_of(lambda: import_events(stub, nameless))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "session id" in message


def test_an_import_past_the_event_limit_is_refused() -> None:
    store = Store(MemoryRecorder())
    try:
        store.execute("o", commands.CreateSession("o"))
        for name in "abc":
            store.execute("o", commands.RegisterVariable("o", name, "integer", 1))
        chunks = list(transfer.export_session(store, pb.ExportSessionRequest(session_id="o")))
        requests = [pb.ImportSessionRequest(session_id="copy", events=chunks[0].events)]
        with pytest.raises(LimitExceeded):
            transfer.import_session(store, iter(requests), "test", max_events=3)
        assert store.published("copy") is None
        done = transfer.import_session(store, iter(requests), "test", max_events=4)
        assert done.header.position == 4
    finally:
        store.close()


@st.composite
def a_log(draw: st.DrawFn) -> list[Any]:
    return draw(st.lists(a_command(), max_size=25))


@settings(max_examples=40, deadline=None)
@given(a_log(), st.integers(1, 7))
def test_export_then_import_is_the_identity_for_any_log(script: list[Any], chunk: int) -> None:
    store = Store(MemoryRecorder())
    try:
        store.execute("o", commands.CreateSession("o", {"k": "v"}, source="me"))
        for command in script:
            run(store, "o", command)
        exported = [
            event
            for part in transfer.export_session(store, pb.ExportSessionRequest(session_id="o"))
            for event in part.events
        ]
        requests = [
            pb.ImportSessionRequest(events=exported[i : i + chunk])
            for i in range(0, len(exported), chunk)
        ]
        requests[0].session_id = "copy"
        transfer.import_session(store, iter(requests), "test")
        again = [
            event
            for part in transfer.export_session(store, pb.ExportSessionRequest(session_id="copy"))
            for event in part.events
        ]
        assert without_ids(again) == without_ids(exported)
        assert variables_by_name(store.published("copy")) == variables_by_name(store.published("o"))
        # ...and so is the JSON Lines form.
        text = io.StringIO()
        write_events(text, exported)
        text.seek(0)
        assert list(read_events(text)) == exported
    finally:
        store.close()


# -- the JSON Lines format ---------------------------------------------------------------------


def test_every_line_is_one_json_object_in_the_documented_shape(stub: Stub) -> None:
    events = _good_log(stub)
    text = io.StringIO()
    assert write_events(text, events) == 7
    lines = text.getvalue().splitlines()
    assert len(lines) == 7
    first, registered = json.loads(lines[0]), json.loads(lines[1])
    assert list(first) == [
        "format",
        "session_id",
        "position",
        "global_position",
        "type",
        "schema_version",
        "recorded_at",
        "source",
        "metadata",
        "payload",
    ]
    assert first["format"] == FORMAT == "varstore.v1.event"
    assert first["type"] == "SessionCreated"
    assert first["payload"] == {"metadata": {"team": "a"}, "ttl_seconds": 0}
    assert first["source"] == "setup"
    assert first["recorded_at"].endswith("Z")
    assert len(first["recorded_at"]) == len("2025-01-31T09:30:00.123456Z")
    assert registered["payload"] == {
        "variable_id": registered["payload"]["variable_id"],
        "name": "temperature",
        "type": "float",
        "value": 0.5,
        "constraints": {"min": 0.0, "max": 2.0},
    }
    assert registered["metadata"] == {"why": "start"}
    batch = json.loads(lines[4])["payload"]
    assert sorted(batch["updates"], key=lambda u: u["variable_id"]) == [
        {"variable_id": "var_model_3", "value": "big"},
        {"variable_id": "var_temperature_2", "value": 1.5},
    ]
    rollback = json.loads(lines[6])["payload"]
    assert rollback == {"variable_id": "var_temperature_2", "value": 0.5, "rollback_to_version": 0}


def test_values_keep_their_types_through_json() -> None:
    def registered(type_name: str, value: pb.Value) -> pb.Event:
        event = pb.Event(session_id="s", position=2, type="VariableRegistered", schema_version=1)
        event.recorded_at.FromDatetime(datetime(2025, 1, 31, 9, 30, 0, 123456))
        event.variable_registered.MergeFrom(
            pb.VariableRegistered(
                variable_id="var_x_2",
                name="x",
                type=type_name,
                value=value,
                constraints=pb.Constraints(),  # always set, as the server does
            )
        )
        return event

    for type_name, value in [
        ("float", pb.Value(float_value=1.0)),
        ("float", pb.Value(float_value=1e300)),
        ("float", pb.Value(float_value=-0.1)),
        ("integer", pb.Value(integer_value=2**63 - 1)),
        ("integer", pb.Value(integer_value=-(2**63))),
        ("string", pb.Value(string_value='1.0 \u00e9\u2603 "q"\n')),
        ("boolean", pb.Value(boolean_value=False)),
    ]:
        event = registered(type_name, value)
        line = json.dumps(event_to_json(event))
        assert event_from_json(json.loads(line)) == event
    # Numbers written without a decimal point still read as the variable's type.
    types: dict[str, str] = {}
    data = event_to_json(registered("float", pb.Value(float_value=2.0)))
    data["payload"]["value"] = 2
    assert event_from_json(data, types).variable_registered.value == pb.Value(float_value=2.0)
    update = {
        "position": 3,
        "type": "VariableUpdated",
        "recorded_at": "2025-01-31T09:30:01Z",
        "payload": {"variable_id": "var_x_2", "value": 3},
    }
    assert event_from_json(update, types).variable_updated.value == pb.Value(float_value=3.0)
    assert event_from_json(update).variable_updated.value == pb.Value(integer_value=3)


def test_a_hand_written_minimal_export_reads(tmp_path: Path) -> None:
    path = tmp_path / "minimal.jsonl"
    path.write_text(
        '{"position": 1, "type": "SessionCreated", "recorded_at": "2025-01-31T09:30:00Z", '
        '"payload": {}}\n'
        "\n"
        '{"position": 2, "type": "VariableRegistered", '
        '"recorded_at": "2025-01-31T10:30:00+01:00", "payload": {"variable_id": "var_t_2", '
        '"name": "t", "type": "float", "value": 1, "constraints": {"max": 2}}}\n',
        encoding="utf-8",
    )
    with path.open(encoding="utf-8") as file:
        created, registered = read_events(file)
    assert created.session_created == pb.SessionCreated()
    assert created.schema_version == 1
    assert registered.recorded_at.ToDatetime() == datetime(2025, 1, 31, 9, 30)
    assert registered.variable_registered.value == pb.Value(float_value=1.0)
    assert registered.variable_registered.constraints == pb.Constraints(max=2.0)


def _line(**fields: Any) -> str:
    """One line of an export: a SessionCreated event changed by ``fields`` (None drops a
    key)."""
    data: dict[str, Any] = {
        "position": 1,
        "type": "SessionCreated",
        "recorded_at": "2025-01-31T09:30:00Z",
        "payload": {},
    }
    data.update(fields)
    return json.dumps({key: value for key, value in data.items() if value is not None})


_UPDATE = {"position": 2, "type": "VariableUpdated"}


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("not json", "not a JSON object"),
        ("[1, 2]", "expected a JSON object"),
        (_line(recorded_at=None), "'recorded_at' is missing"),
        (_line(recorded_at="yesterday"), "RFC 3339"),
        (_line(recorded_at="2025-01-31T09:30:00"), "time zone"),
        (_line(format="other"), "format 'other'"),
        (_line(colour="red"), "unknown key 'colour'"),
        (_line(type="Renamed"), "unknown event type"),
        (_line(position=0), "'position' must be"),
        (_line(position=True), "'position' must be"),
        (_line(metadata={"n": 1}), "'metadata' must be an object of strings"),
        (_line(**_UPDATE, payload={"variable_id": "x", "value": None}), "bad value"),
        (_line(**_UPDATE, payload={"variable_id": "x", "value": [1]}), "bad value"),
        (_line(**_UPDATE, payload={"variable_id": "x", "value": 1, "why": "?"}), "key 'why'"),
        (_line(type="VariableDeleted", payload={}), "lacks 'variable_id'"),
        (
            _line(**_UPDATE, payload={"variable_id": "x", "value": 1}).replace("1}", "NaN}"),
            "NaN is not a valid JSON number",
        ),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(line: str, words: str) -> None:
    good = (
        '{"position": 1, "type": "SessionCreated", "recorded_at": "2025-01-31T09:30:00Z", '
        '"payload": {}}\n'
    )
    with pytest.raises(ValidationError) as caught:
        list(read_events(io.StringIO(good + line + "\n"), "x.jsonl"))
    assert str(caught.value).startswith("x.jsonl:2: ")
    assert words in str(caught.value)


# -- the Python client ---------------------------------------------------------------------------


def test_the_client_forks_exports_and_imports(stub: Stub, client: Client, tmp_path: Path) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    fork = client.fork_session(origin, 4, fresh("fork"), metadata={"why": "test"})
    assert fork.get_variable("temperature") == 1.0
    assert fork.get_variable("steps", default=None) is None
    path = tmp_path / "origin.jsonl"
    seen: list[int] = []
    result = client.export_session(origin, path, progress=seen.append)
    assert (result.session_id, result.events, result.first_position, result.last_position) == (
        origin,
        7,
        1,
        7,
    )
    assert seen == [7]
    assert len(path.read_text(encoding="utf-8").splitlines()) == 7
    copy = client.import_session(path, fresh("copy"))
    assert copy.get_variable("temperature") == 0.5
    assert copy.get_variable("steps") == 3
    early = client.import_session(path, fresh("early"), to_position=3)
    assert {v.name: v.value for v in early.list_variables()} == {
        "temperature": 0.5,
        "model": "small",
    }
    with path.open(encoding="utf-8") as file:
        assert client.import_session(file, fresh("from_file")).get_variable("model") == "big"
    middle = io.StringIO()
    client.export_session(origin, middle, from_position=2, to_position=3)
    assert [json.loads(line)["position"] for line in middle.getvalue().splitlines()] == [2, 3]
    # The default id is the exported session's, which is taken.
    with pytest.raises(AlreadyExists):
        client.import_session(path)
    with pytest.raises(SessionNotFound):
        client.export_session("never_was", tmp_path / "never.jsonl")
    assert not (tmp_path / "never.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    with pytest.raises(OutOfRange):
        client.fork_session(origin, 99)


def test_a_file_that_goes_bad_half_way_imports_nothing(
    client: Client, server: RunningServer, tmp_path: Path
) -> None:
    origin = fresh("origin")
    context = client.create_session(origin)
    context.register_variable("n", "integer", 0)
    for i in range(1, 1500):
        context.set_variable("n", i)
    path = tmp_path / "long.jsonl"
    client.export_session(origin, path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:1400]) + "{oops\n" + "".join(lines[1400:]), encoding="utf-8")
    target = fresh("half")
    with pytest.raises(ValidationError, match=r"long\.jsonl:1401: not a JSON object"):
        client.import_session(path, target)
    assert server.store.published(target) is None
    # The same file, cut before the bad line, imports.
    done = client.import_session(path, target, to_position=1400)
    assert done.get_variable("n") == 1398


# -- the command line --------------------------------------------------------------------------


def varstore(*args: str, server: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``varstore ARGS --server SERVER`` as a user would."""
    environment = {k: v for k, v in os.environ.items() if k != "VARSTORE_SERVER"}
    return subprocess.run(
        [sys.executable, "-m", "varstore.api.cli", *args, "--server", server],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        input=stdin,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def test_the_cli_exports_imports_and_forks(
    stub: Stub, server: RunningServer, tmp_path: Path
) -> None:
    address = server.address
    origin = fresh("cli_origin")
    make_origin(stub, origin)
    path = tmp_path / "export.jsonl"

    shown = ok(varstore("export", origin, str(path), server=address))
    assert shown.stderr == ""
    assert "events:     7" in shown.stdout
    assert "positions:  1-7" in shown.stdout
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["position"] for line in lines] == list(range(1, 8))

    middle = ok(varstore("export", origin, "--from", "2", "--to", "3", server=address))
    assert [json.loads(line)["position"] for line in middle.stdout.splitlines()] == [2, 3]
    streamed = ok(varstore("export", origin, server=address))
    assert streamed.stdout == path.read_text(encoding="utf-8")

    copy = fresh("cli_copy")
    imported = ok(varstore("import", str(path), "--session", copy, "--json", server=address))
    assert imported.stderr == ""
    data = json.loads(imported.stdout)
    assert (data["id"], data["events"], data["position"], data["variable_count"]) == (copy, 7, 7, 3)
    assert without_ids(read_log(stub, copy)) == without_ids(read_log(stub, origin))

    piped = fresh("cli_piped")
    table = ok(
        varstore(
            "import", "-", "--session", piped, "--to", "3", server=address, stdin=streamed.stdout
        )
    )
    assert f"id:          {piped}" in table.stdout

    forked = fresh("cli_fork")
    fork = json.loads(
        ok(
            varstore(
                "fork",
                origin,
                "--at",
                "4",
                "--new-id",
                forked,
                "--meta",
                "why=try",
                "--json",
                server=address,
            )
        ).stdout
    )
    assert (fork["id"], fork["origin_session_id"], fork["origin_position"]) == (forked, origin, 4)
    event = read_log(stub, forked)[-1]
    assert (event.source, dict(event.metadata)) == ("cli", {"why": "try"})
    text = ok(varstore("fork", origin, server=address)).stdout
    assert f"forked_from: {origin} at position 7" in text

    report = ok(varstore("export", origin, str(tmp_path / "p.jsonl"), "--progress", server=address))
    assert report.stderr.splitlines() == ["varstore: exported 7 events"]


def test_cli_transfer_errors_are_one_line(
    stub: Stub, server: RunningServer, tmp_path: Path
) -> None:
    address = server.address
    origin = fresh("cli_origin")
    make_origin(stub, origin)

    def one_line(result: subprocess.CompletedProcess[str], words: str) -> None:
        assert result.returncode == 1, result.stdout
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("varstore: ")
        assert words in line

    one_line(
        varstore("export", "never_was", str(tmp_path / "x.jsonl"), server=address), "never_was"
    )
    assert not (tmp_path / "x.jsonl").exists()
    one_line(varstore("import", str(tmp_path / "missing.jsonl"), server=address), "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n", encoding="utf-8")
    one_line(varstore("import", str(bad), server=address), "bad.jsonl:1:")
    path = tmp_path / "o.jsonl"
    ok(varstore("export", origin, str(path), server=address))
    one_line(varstore("import", str(path), server=address), "taken")
    one_line(varstore("fork", origin, "--at", "99", server=address), "beyond")
    usage = varstore("fork", origin, "--at", "-1", server=address)
    assert usage.returncode == 2


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_bar_with_total_and_rate(
    stub: Stub, server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from varstore.api.cli import main

    origin = fresh("tty")
    make_origin(stub, origin)
    path = tmp_path / "tty.jsonl"
    for args in (
        ["export", origin, str(path)],
        ["import", str(path), "--session", fresh("tty_copy")],
    ):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main([*args, "--server", server.address]) == 0
        shown = terminal.getvalue()
        assert "7/7" in shown  # the count of the total
        assert "events/s" in shown  # the rate
        assert "\033[" in shown  # drawn in place
