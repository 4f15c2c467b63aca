"""What the log gives: history, the raw log, reads at a past position or time, rollback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import in_process_server, stub_for

from varstore.api import commands
from varstore.api.server import RunningServer
from varstore.api.store import Store
from varstore.eventstore.memory import MemoryRecorder
from varstore.projections import replay
from varstore.types import from_proto, to_proto
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with in_process_server(Store(MemoryRecorder(), snapshot_every=3)) as server:
        yield server


@pytest.fixture(scope="module")
def stub(running: RunningServer) -> Iterator[Stub]:
    with stub_for(running.address) as made:
        yield made


_numbers = iter(range(1, 1_000_000))


@pytest.fixture
def sid(stub: Stub) -> str:
    name = f"h{next(_numbers)}"
    stub.CreateSession(pb.CreateSessionRequest(session_id=name))
    return name


def register(stub: Stub, sid: str, name: str, value: Any, **constraints: Any) -> str:
    return stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=sid,
            name=name,
            type="integer",
            initial_value=to_proto(value),
            constraints=pb.Constraints(**constraints),
        )
    ).variable_id


def set_value(stub: Stub, sid: str, name: str, value: Any, **metadata: str) -> int:
    return stub.SetVariable(
        pb.SetVariableRequest(
            session_id=sid,
            variable_identifier=name,
            value=to_proto(value),
            metadata=metadata,
            source="tester",
        )
    ).header.position


def history(stub: Stub, sid: str, identifier: str, **kwargs: Any) -> list[pb.VariableChange]:
    changes: list[pb.VariableChange] = []
    token = ""
    while True:
        page = stub.GetVariableHistory(
            pb.GetVariableHistoryRequest(
                session_id=sid, variable_identifier=identifier, page_token=token, **kwargs
            )
        )
        changes.extend(page.changes)
        token = page.next_page_token
        if not token:
            return changes


def test_history_lists_every_version_with_previous_value_source_and_reason(
    stub: Stub, sid: str
) -> None:
    register(stub, sid, "n", 1)
    set_value(stub, sid, "n", 2, reason="first")
    stub.SetVariables(
        pb.SetVariablesRequest(session_id=sid, updates={"n": to_proto(3)}, atomic=True)
    )
    changes = history(stub, sid, "n")
    assert [c.version for c in changes] == [0, 1, 2]
    assert [from_proto(c.value) for c in changes] == [1, 2, 3]
    assert [c.HasField("previous_value") for c in changes] == [False, True, True]
    assert from_proto(changes[1].previous_value) == 1
    assert changes[1].metadata["reason"] == "first"
    assert changes[1].source == "tester"
    assert [c.kind for c in changes] == ["registered", "updated", "updated"]
    assert [c.in_batch for c in changes] == [False, False, True]


def test_history_pages_newest_first_and_by_version_range(stub: Stub, sid: str) -> None:
    register(stub, sid, "n", 0)
    for value in range(1, 8):
        set_value(stub, sid, "n", value)
    newest = history(stub, sid, "n", newest_first=True, page_size=3)
    assert [c.version for c in newest] == list(range(7, -1, -1))
    window = history(stub, sid, "n", from_version=2, to_version=4)
    assert [c.version for c in window] == [2, 3, 4]


def test_a_deleted_and_reregistered_name_shows_both_lifetimes(stub: Stub, sid: str) -> None:
    first = register(stub, sid, "n", 1)
    stub.DeleteVariable(pb.DeleteVariableRequest(session_id=sid, variable_identifier="n"))
    second = register(stub, sid, "n", 5)
    changes = history(stub, sid, "n")
    assert [(c.variable_id, c.kind) for c in changes] == [
        (first, "registered"),
        (first, "deleted"),
        (second, "registered"),
    ]
    assert [c.variable_id for c in history(stub, sid, first)] == [first, first]


def test_a_page_token_from_another_request_is_refused(stub: Stub, sid: str) -> None:
    register(stub, sid, "n", 0)
    for value in range(1, 4):
        set_value(stub, sid, "n", value)
    page = stub.GetVariableHistory(
        pb.GetVariableHistoryRequest(session_id=sid, variable_identifier="n", page_size=1)
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetVariableHistory(
            pb.GetVariableHistoryRequest(
                session_id=sid,
                variable_identifier="n",
                page_size=1,
                newest_first=True,
                page_token=page.next_page_token,
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_read_events_returns_the_typed_log_forwards_and_backwards(stub: Stub, sid: str) -> None:
    register(stub, sid, "n", 1)
    set_value(stub, sid, "n", 2)
    forwards = stub.ReadEvents(pb.ReadEventsRequest(session_id=sid))
    assert [e.position for e in forwards.events] == [1, 2, 3]
    assert [e.WhichOneof("body") for e in forwards.events] == [
        "session_created",
        "variable_registered",
        "variable_updated",
    ]
    assert from_proto(forwards.events[2].variable_updated.value) == 2
    backwards = stub.ReadEvents(pb.ReadEventsRequest(session_id=sid, backwards=True, page_size=2))
    assert [e.position for e in backwards.events] == [3, 2]
    rest = stub.ReadEvents(
        pb.ReadEventsRequest(
            session_id=sid, backwards=True, page_size=2, page_token=backwards.next_page_token
        )
    )
    assert [e.position for e in rest.events] == [1]
    assert rest.next_page_token == ""


def test_reads_at_a_past_position_see_the_session_as_it_stood(stub: Stub, sid: str) -> None:
    register(stub, sid, "n", 1)
    positions = [set_value(stub, sid, "n", value) for value in range(2, 12)]
    for value, position in zip(range(2, 12), positions, strict=True):
        got = stub.GetVariable(
            pb.GetVariableRequest(session_id=sid, variable_identifier="n", at_position=position)
        )
        assert from_proto(got.variable.value) == value
    listed = stub.ListVariables(pb.ListVariablesRequest(session_id=sid, at_position=1))
    assert list(listed.variables) == []  # before the registration
    many = stub.GetVariables(
        pb.GetVariablesRequest(session_id=sid, variable_identifiers=["n"], at_position=2)
    )
    assert from_proto(many.variables["n"].value) == 1


def test_a_position_beyond_the_log_is_out_of_range(stub: Stub, sid: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetVariable(
            pb.GetVariableRequest(session_id=sid, variable_identifier="n", at_position=99)
        )
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "beyond the end" in refused.value.details()


def test_reads_as_of_a_time_see_that_moment(stub: Stub, sid: str) -> None:
    register(stub, sid, "n", 1)
    time.sleep(0.01)
    between = datetime.now(UTC)
    time.sleep(0.01)
    set_value(stub, sid, "n", 2)
    stamp = Timestamp()
    stamp.FromDatetime(between)
    got = stub.GetVariable(
        pb.GetVariableRequest(session_id=sid, variable_identifier="n", as_of=stamp)
    )
    assert from_proto(got.variable.value) == 1
    before = Timestamp(seconds=1)
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetVariable(
            pb.GetVariableRequest(session_id=sid, variable_identifier="n", as_of=before)
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_rollback_appends_a_change_that_restores_an_earlier_value(stub: Stub, sid: str) -> None:
    register(stub, sid, "n", 1)
    set_value(stub, sid, "n", 2)
    set_value(stub, sid, "n", 3)
    rolled = stub.RollbackVariable(
        pb.RollbackVariableRequest(
            session_id=sid,
            variable_identifier="n",
            to_version=0,
            metadata={"reason": "bad deploy"},
            source="ops",
        )
    )
    assert rolled.new_version == 3
    assert from_proto(rolled.variable.value) == 1
    last = history(stub, sid, "n")[-1]
    assert (last.kind, last.rollback_to_version, last.source) == ("rolled_back", 0, "ops")
    assert last.metadata["reason"] == "bad deploy"
    assert from_proto(last.previous_value) == 3
    assert len(history(stub, sid, "n")) == 4  # nothing erased


@pytest.mark.parametrize("to_version", [3, 7, -1])
def test_rollback_to_a_version_that_is_not_earlier_is_refused(
    stub: Stub, sid: str, to_version: int
) -> None:
    register(stub, sid, "n", 1)
    set_value(stub, sid, "n", 2)
    with pytest.raises(grpc.RpcError) as refused:
        stub.RollbackVariable(
            pb.RollbackVariableRequest(
                session_id=sid, variable_identifier="n", to_version=to_version
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- properties --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(-100, 100), min_size=1, max_size=30),
    every=st.integers(1, 7),
    data=st.data(),
)
def test_the_state_at_position_p_is_the_fold_of_the_first_p_events(
    values: list[int], every: int, data: st.DataObject
) -> None:
    recorder = MemoryRecorder()
    store = Store(recorder, snapshot_every=every)
    try:
        store.execute("s", commands.CreateSession("s"))
        store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
        for value in values:
            if data.draw(st.booleans()):
                store.execute("s", commands.SetVariable("s", "n", value))
            else:
                store.execute("s", commands.SetVariables("s", {"n": value}, atomic=True))
        last = store.published("s")
        assert last is not None
        position = data.draw(st.integers(1, last.position))
        folded = replay(recorder.read_session("s", 1, position))
        assert store.state_at("s", position) == folded
        store.drop_snapshots()  # derived data: dropping them changes no answer
        assert store.state_at("s", position) == folded
        history = store.history("s").changes("var_n_2")
        assert [c.value for c in history] == [0, *values]  # exactly the accepted values
    finally:
        store.close()


def test_an_index_built_while_writes_go_on_misses_none_of_them() -> None:
    store = Store(MemoryRecorder(), snapshot_every=5)
    try:
        store.execute("s", commands.CreateSession("s"))
        store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
        for value in range(1, 200):
            store.execute("s", commands.SetVariable("s", "n", value))
        done = threading.Event()

        def write() -> None:
            for value in range(200, 400):
                store.execute("s", commands.SetVariable("s", "n", value))
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        store.history("s")  # built while the writer commits
        writer.join()
        assert done.is_set()
        values = [change.value for change in store.history("s").changes("var_n_2")]
        assert values == list(range(400))
        last = store.published("s")
        assert last is not None
        assert store.position_at_time("s", last.updated_at) == last.position
    finally:
        store.close()
