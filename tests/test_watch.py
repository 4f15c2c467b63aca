"""WatchSession: initial state, every event after a position exactly once and in order
(with new and previous values), several events a message (max_events_per_message), filters,
progress, reconnection, slow watchers, limits, shutdown, and the client's sync and asyncio
iterators; against real in-process servers (streams of messages, and of the cached bytes
that encoded_watches() passes through)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import aio_serving, stub_for

from varstore.api import commands
from varstore.api.interceptors import ErrorInterceptor
from varstore.api.server import RunningServer, start_server
from varstore.api.service import VariableStoreService
from varstore.api.store import Store
from varstore.api.watch import MAX_EVENTS_PER_MESSAGE, WatchHub
from varstore.client import (
    LimitExceeded,
    OutOfRange,
    SessionNotFound,
    Unavailable,
    WatchInitial,
    WatchProgress,
    WatchUpdate,
    aconnect,
    connect,
)
from varstore.client._effects import RECEIVE, Emit, Open, Sleep
from varstore.client._flow import Retry, Runner
from varstore.client._watch import WatchPosition, watch_flow, watch_request
from varstore.eventstore.memory import MemoryRecorder
from varstore.types import from_proto
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

_names = itertools.count(1)

Stub = pb_grpc.VariableStoreStub
Response = pb.WatchSessionResponse


# -- helpers ---------------------------------------------------------------------------------


def new_session(stub: Stub, *variables: str) -> str:
    """A fresh session with integer variables (value 0) registered in order."""
    session_id = f"watch_{next(_names)}"
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))
    for name in variables:
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=session_id, name=name, type="integer", initial_value=integer(0)
            )
        )
    return session_id


def integer(value: int) -> pb.Value:
    return pb.Value(integer_value=value)


def set_value(stub: Stub, session_id: str, name: str, value: int) -> int:
    """Set one variable; returns the event's position."""
    response = stub.SetVariable(
        pb.SetVariableRequest(session_id=session_id, variable_identifier=name, value=integer(value))
    )
    return response.header.position


def until_caught_up(
    stub: Stub, request: pb.WatchSessionRequest, timeout: float = 20
) -> tuple[list[Response], int]:
    """The messages a watch sends before its first progress message, and that progress's
    position (the server sends one as soon as the stream has caught up)."""
    call = stub.WatchSession(request, timeout=timeout)
    messages: list[Response] = []
    try:
        for message in call:
            if message.HasField("progress"):
                return messages, message.progress.position
            messages.append(message)
    finally:
        call.cancel()
    raise AssertionError("the stream ended without a progress message")


def positions(messages: Sequence[Response]) -> list[int]:
    return [event.event.position for event in watch_events(messages)]


def watch_events(messages: Sequence[Response]) -> list[pb.WatchEvent]:
    """The events of ``messages``, in order: one of an ``event`` message, every one of an
    ``events`` message."""
    found: list[pb.WatchEvent] = []
    for message in messages:
        if message.HasField("event"):
            found.append(message.event)
        elif message.HasField("events"):
            found.extend(message.events.events)
    return found


def changes_of(message: Response) -> list[tuple[str, str, Any, Any, int]]:
    """(name, kind, value, previous value, version) of an event message's changes."""
    return [
        (
            c.name,
            c.kind,
            from_proto(c.value) if c.HasField("value") else None,
            from_proto(c.previous_value) if c.HasField("previous_value") else None,
            c.version,
        )
        for c in message.event.changes
    ]


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@contextmanager
def server_with(hub_factory: Callable[[Store], WatchHub]) -> Iterator[RunningServer]:
    """A server in this process whose WatchHub is made by ``hub_factory``."""
    store = Store(MemoryRecorder())
    running = start_server(store, hub=hub_factory(store))
    try:
        yield running
    finally:
        running.stop(grace=1.0)


@contextmanager
def message_server() -> Iterator[str]:
    """A server in this process whose WatchSession streams write messages, not the cached
    encodings (no ``encoded_watches()``; the service and the error mapping as
    ``start_server`` has them); its address."""
    store = Store(MemoryRecorder())
    hub = WatchHub(store)

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_VariableStoreServicer_to_server(VariableStoreService(store, hub), server)

    try:
        with aio_serving(register, ErrorInterceptor(), workers=8) as address:
            yield address
            hub.close()
    finally:
        store.close()


@pytest.fixture(scope="module", params=["messages", "bytes"])
def either_address(request: pytest.FixtureRequest, server: RunningServer) -> Iterator[str]:
    """The shared server (its streams write the cached bytes, as ``start_server``'s do), or
    one whose streams write messages."""
    if request.param == "bytes":
        yield server.address
        return
    with message_server() as address:
        yield address


@pytest.fixture(scope="module")
def either_stub(either_address: str, server: RunningServer, stub: Stub) -> Iterator[Stub]:
    """A stub on :func:`either_address`."""
    if either_address == server.address:
        yield stub
        return
    with stub_for(either_address) as made:
        yield made


class FakeContext:
    """Enough of a ``grpc.aio.ServicerContext`` to drive ``WatchHub.watch`` directly: what
    it writes goes to ``written``; with ``busy`` set, a write waits until it is cleared."""

    def __init__(self) -> None:
        self.written: asyncio.Queue[Response] = asyncio.Queue()
        self.busy = asyncio.Event()
        self.free = asyncio.Event()
        self.free.set()

    async def write(self, message: Response) -> None:
        await self.free.wait()
        await self.written.put(message)


# -- initial state and events ----------------------------------------------------------------


def test_include_initial_sends_the_state_at_from_position_then_the_events_after_it(
    stub: Stub,
) -> None:
    sid = new_session(stub, "a", "b")  # positions 1 (created), 2 (a), 3 (b)
    set_value(stub, sid, "a", 5)  # 4
    set_value(stub, sid, "b", 7)  # 5
    request = pb.WatchSessionRequest(session_id=sid, from_position=4, include_initial=True)
    messages, caught_up = until_caught_up(stub, request)

    initial = messages[0].initial
    assert initial.position == 4
    assert [(v.name, from_proto(v.value), v.version) for v in initial.variables] == [
        ("a", 5, 1),
        ("b", 0, 0),
    ]
    assert positions(messages[1:]) == [5]
    assert changes_of(messages[1]) == [("b", "updated", 7, 0, 1)]
    assert caught_up == 5


def test_initial_at_position_0_is_empty(stub: Stub) -> None:
    sid = new_session(stub, "a")
    request = pb.WatchSessionRequest(session_id=sid, include_initial=True)
    messages, caught_up = until_caught_up(stub, request)
    assert messages[0].HasField("initial")
    assert messages[0].initial.position == 0
    assert list(messages[0].initial.variables) == []
    assert positions(messages[1:]) == [1, 2]
    assert caught_up == 2


def test_every_event_comes_in_order_with_its_new_and_previous_values(stub: Stub) -> None:
    sid = new_session(stub, "x")  # 1, 2
    for value in (10, 20, 30):  # 3, 4, 5
        set_value(stub, sid, "x", value)
    stub.DeleteVariable(pb.DeleteVariableRequest(session_id=sid, variable_identifier="x"))  # 6
    messages, caught_up = until_caught_up(stub, pb.WatchSessionRequest(session_id=sid))

    assert positions(messages) == [1, 2, 3, 4, 5, 6]
    assert caught_up == 6
    assert [m.event.event.type for m in messages] == [
        "SessionCreated",
        "VariableRegistered",
        "VariableUpdated",
        "VariableUpdated",
        "VariableUpdated",
        "VariableDeleted",
    ]
    assert [changes_of(m) for m in messages] == [
        [],
        [("x", "registered", 0, None, 0)],
        [("x", "updated", 10, 0, 1)],
        [("x", "updated", 20, 10, 2)],
        [("x", "updated", 30, 20, 3)],
        [("x", "deleted", None, 30, 3)],
    ]
    assert all(c.position == m.event.event.position for m in messages for c in m.event.changes)
    assert messages[2].event.event.variable_updated.value.integer_value == 10


def test_live_events_follow_the_catch_up_without_a_gap(stub: Stub) -> None:
    sid = new_session(stub, "x")
    call = stub.WatchSession(pb.WatchSessionRequest(session_id=sid), timeout=20)
    received: list[Response] = []
    try:
        for message in call:
            if message.HasField("progress") and message.progress.position == 2:
                set_value(stub, sid, "x", 1)
                set_value(stub, sid, "x", 2)
            if message.HasField("event"):
                received.append(message)
                if message.event.event.position == 4:
                    break
    finally:
        call.cancel()
    assert positions(received) == [1, 2, 3, 4]
    assert changes_of(received[-1]) == [("x", "updated", 2, 1, 2)]


def test_an_atomic_batch_arrives_as_one_event_with_every_change(stub: Stub) -> None:
    sid = new_session(stub, "a", "b", "c")  # 1..4
    stub.SetVariables(
        pb.SetVariablesRequest(
            session_id=sid,
            updates={"a": integer(1), "b": integer(2), "c": integer(3)},
            atomic=True,
            metadata={"reason": "together"},
        )
    )  # 5
    messages, caught_up = until_caught_up(
        stub, pb.WatchSessionRequest(session_id=sid, from_position=4)
    )
    assert positions(messages) == [5]
    assert caught_up == 5
    event = messages[0].event
    assert event.event.type == "BatchApplied"
    assert sorted(changes_of(messages[0])) == [
        ("a", "updated", 1, 0, 1),
        ("b", "updated", 2, 0, 1),
        ("c", "updated", 3, 0, 1),
    ]
    assert all(c.in_batch and c.position == 5 for c in event.changes)
    assert all(c.metadata["reason"] == "together" for c in event.changes)


def test_a_non_atomic_batch_is_one_event_per_change(stub: Stub) -> None:
    sid = new_session(stub, "a", "b")  # 1..3
    stub.SetVariables(
        pb.SetVariablesRequest(
            session_id=sid, updates={"a": integer(1), "b": integer(2)}, atomic=False
        )
    )  # 4, 5
    messages, _ = until_caught_up(stub, pb.WatchSessionRequest(session_id=sid, from_position=3))
    assert positions(messages) == [4, 5]
    assert all(len(m.event.changes) == 1 for m in messages)


# -- several events a message --------------------------------------------------------------------


#: A set, an atomic batch or a non-atomic batch (of the variable and one other).
_operation = st.tuples(
    st.sampled_from(["set", "batch", "nonatomic"]), st.sampled_from("abc"), st.integers(-5, 5)
)
_operations = st.lists(_operation, max_size=15)


def write_operations(stub: Stub, sid: str, operations: Sequence[tuple[str, str, int]]) -> None:
    """Sets, atomic batches and non-atomic batches of a, b, c (the second of b or c)."""
    for kind, name, value in operations:
        if kind == "set":
            set_value(stub, sid, name, value)
        else:
            other = "b" if name != "b" else "c"
            stub.SetVariables(
                pb.SetVariablesRequest(
                    session_id=sid,
                    updates={name: integer(value), other: integer(-value)},
                    atomic=kind == "batch",
                )
            )


_MAX_EVENTS = st.sampled_from([0, 1, 2, 5, MAX_EVENTS_PER_MESSAGE, 100_000])


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=st.lists(_operation, max_size=40), data=st.data())
def test_several_events_a_message_carry_each_event_once_whole_in_order(
    either_stub: Stub, operations: list[tuple[str, str, int]], data: st.DataObject
) -> None:
    stub = either_stub
    sid = new_session(stub, "a", "b", "c")
    write_operations(stub, sid, operations)
    end = stub.GetSession(pb.GetSessionRequest(session_id=sid)).session.position
    start = data.draw(st.integers(0, end), label="from_position")
    most = data.draw(_MAX_EVENTS, label="max_events_per_message")
    request = pb.WatchSessionRequest(session_id=sid, from_position=start)
    one_each, caught_up = until_caught_up(stub, request)
    request.max_events_per_message = most
    messages, batched_up_to = until_caught_up(stub, request)

    assert caught_up == batched_up_to == end
    # The same events, each whole (a batch is one event with all its changes), in order.
    assert watch_events(messages) == watch_events(one_each)
    assert positions(messages) == list(range(start + 1, end + 1))
    sizes = [len(m.events.events) if m.HasField("events") else 1 for m in messages]
    assert all(m.HasField("event") or m.HasField("events") for m in messages)
    if most <= 1:
        assert all(m.HasField("event") for m in messages)  # as before the field existed
    else:
        assert all(len(m.events.events) >= 2 for m in messages if m.HasField("events"))
        assert max(sizes, default=1) <= min(most, MAX_EVENTS_PER_MESSAGE)
    if most > 1 and end - start >= 2:
        assert len(messages) < end - start  # a catch-up does come several a message

    # Resuming from any event's position, wherever it was in its message, repeats nothing.
    cut = data.draw(st.integers(start, end), label="reconnect_from")
    rest, _ = until_caught_up(
        stub, pb.WatchSessionRequest(session_id=sid, from_position=cut, max_events_per_message=most)
    )
    assert positions(rest) == list(range(cut + 1, end + 1))


@pytest.mark.parametrize(
    ("most", "sizes"), [(0, [1] * 10), (1, [1] * 10), (3, [3, 3, 3, 1]), (256, [10])]
)
def test_a_burst_written_at_once_comes_in_as_few_messages_as_allowed(
    either_stub: Stub, most: int, sizes: list[int]
) -> None:
    stub = either_stub
    names = [f"v{i}" for i in range(10)]
    sid = new_session(stub, *names)  # 1..11
    call = stub.WatchSession(
        pb.WatchSessionRequest(session_id=sid, from_position=11, max_events_per_message=most),
        timeout=20,
    )
    received: list[Response] = []
    try:
        for message in call:
            if message.HasField("progress") and not received:
                stub.SetVariables(  # ten events in one commit
                    pb.SetVariablesRequest(
                        session_id=sid,
                        updates={name: integer(7) for name in names},
                        atomic=False,
                    )
                )
            elif not message.HasField("progress"):
                received.append(message)
                if positions(received)[-1] == 21:
                    break
    finally:
        call.cancel()
    assert positions(received) == list(range(12, 22))
    assert [len(watch_events([m])) for m in received] == sizes
    assert [m.WhichOneof("kind") for m in received] == [
        "event" if size == 1 else "events" for size in sizes
    ]


def test_a_filtered_watch_packs_only_the_events_it_keeps(either_stub: Stub) -> None:
    stub = either_stub
    sid = new_session(stub, "a", "b")  # 1..3
    for value in range(1, 31):  # 4..33: a, b, a, b...
        set_value(stub, sid, "a" if value % 2 else "b", value)
    request = pb.WatchSessionRequest(
        session_id=sid, variables=["a"], max_events_per_message=MAX_EVENTS_PER_MESSAGE
    )
    messages, caught_up = until_caught_up(stub, request)
    request.max_events_per_message = 0
    one_each, _ = until_caught_up(stub, request)

    assert [m.WhichOneof("kind") for m in messages] == ["events"]
    assert watch_events(messages) == watch_events(one_each)
    assert positions(messages) == [1, 2, *range(4, 34, 2)]
    assert caught_up == 33  # the progress covers b's events, left out


def test_progress_is_unchanged_with_several_events_a_message(either_stub: Stub) -> None:
    stub = either_stub
    sid = new_session(stub, "a")  # 1, 2
    call = stub.WatchSession(
        pb.WatchSessionRequest(session_id=sid, progress_interval_ms=30, max_events_per_message=64),
        timeout=20,
    )
    kinds: list[str] = []
    try:
        for message in call:
            kinds.append(message.WhichOneof("kind") or "")
            if message.HasField("progress"):
                assert message.progress.position == 2
                if kinds.count("progress") == 3:
                    break
    finally:
        call.cancel()
    assert kinds == ["events", "progress", "progress", "progress"]


# -- filters -----------------------------------------------------------------------------------


def test_a_filter_by_name_keeps_only_that_variables_changes(stub: Stub) -> None:
    sid = new_session(stub, "a", "b")  # 1..3
    set_value(stub, sid, "a", 1)  # 4
    set_value(stub, sid, "b", 1)  # 5
    stub.SetVariables(
        pb.SetVariablesRequest(
            session_id=sid, updates={"a": integer(2), "b": integer(2)}, atomic=True
        )
    )  # 6
    set_value(stub, sid, "b", 3)  # 7
    request = pb.WatchSessionRequest(session_id=sid, variables=["a"], include_initial=True)
    messages, caught_up = until_caught_up(stub, request)

    assert list(messages[0].initial.variables) == []
    events = messages[1:]
    # The session's creation is always sent; events that change only "b" are not.
    assert positions(events) == [1, 2, 4, 6]
    assert [changes_of(m) for m in events] == [
        [],
        [("a", "registered", 0, None, 0)],
        [("a", "updated", 1, 0, 1)],
        [("a", "updated", 2, 1, 2)],  # only a's half of the batch
    ]
    assert caught_up == 7  # progress covers the positions left out


def test_a_filter_by_id_keeps_that_variable_only(stub: Stub) -> None:
    sid = new_session(stub)
    registered = stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=sid, name="x", type="integer", initial_value=integer(0)
        )
    )  # 2
    stub.DeleteVariable(pb.DeleteVariableRequest(session_id=sid, variable_identifier="x"))  # 3
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=sid, name="x", type="integer", initial_value=integer(9)
        )
    )  # 4: a new variable of the same name
    set_value(stub, sid, "x", 10)  # 5

    by_id, _ = until_caught_up(
        stub,
        pb.WatchSessionRequest(session_id=sid, from_position=1, variables=[registered.variable_id]),
    )
    assert positions(by_id) == [2, 3]
    by_name, _ = until_caught_up(
        stub, pb.WatchSessionRequest(session_id=sid, from_position=1, variables=["x"])
    )
    assert positions(by_name) == [2, 3, 4, 5]
    initial, _ = until_caught_up(
        stub,
        pb.WatchSessionRequest(
            session_id=sid,
            from_position=2,
            variables=[registered.variable_id],
            include_initial=True,
        ),
    )
    assert [v.id for v in initial[0].initial.variables] == [registered.variable_id]


# -- reconnection: every position exactly once ---------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=_operations, data=st.data())
def test_a_watch_from_any_position_receives_exactly_the_events_after_it(
    stub: Stub, operations: list[tuple[str, str, int]], data: st.DataObject
) -> None:
    sid = new_session(stub, "a", "b", "c")
    write_operations(stub, sid, operations)
    end = stub.GetSession(pb.GetSessionRequest(session_id=sid)).session.position
    start = data.draw(st.integers(0, end), label="from_position")

    messages, caught_up = until_caught_up(
        stub, pb.WatchSessionRequest(session_id=sid, from_position=start)
    )
    assert positions(messages) == list(range(start + 1, end + 1))
    assert caught_up == end
    log = stub.ReadEvents(
        pb.ReadEventsRequest(session_id=sid, from_position=start + 1, page_size=1000)
    ).events
    assert [m.event.event for m in messages] == list(log)

    # Reconnecting from the last position seen (anywhere in between) repeats nothing.
    cut = data.draw(st.integers(start, end), label="reconnect_from")
    rest, _ = until_caught_up(stub, pb.WatchSessionRequest(session_id=sid, from_position=cut))
    assert positions(rest) == list(range(cut + 1, end + 1))


@pytest.mark.parametrize("most", [0, MAX_EVENTS_PER_MESSAGE])
def test_reconnecting_while_writers_write_misses_and_repeats_nothing(
    either_stub: Stub, most: int
) -> None:
    stub = either_stub
    sid = new_session(stub, "x", "y")
    total = 300
    done = threading.Event()

    def write() -> None:
        for value in range(total):
            if value % 3 == 0:
                stub.SetVariables(
                    pb.SetVariablesRequest(
                        session_id=sid,
                        updates={"x": integer(value), "y": integer(value)},
                        atomic=True,
                    )
                )
            else:
                set_value(stub, sid, "x" if value % 2 else "y", value)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[int] = []
    last = 0
    end = 3 + total
    try:
        while last < end:  # read a few events, drop the stream, resume from the last seen
            call = stub.WatchSession(
                pb.WatchSessionRequest(
                    session_id=sid, from_position=last, max_events_per_message=most
                ),
                timeout=30,
            )
            for count, message in enumerate(call):
                for event in watch_events([message]):
                    seen.append(event.event.position)
                    last = event.event.position
                if count >= 17 or last >= end:
                    break
            call.cancel()
    finally:
        writer.join()
    assert done.is_set()
    assert seen == list(range(1, end + 1))


# -- progress -------------------------------------------------------------------------------------


def test_progress_messages_arrive_while_idle_with_the_position_caught_up_to(stub: Stub) -> None:
    sid = new_session(stub, "a")  # position 2
    call = stub.WatchSession(
        pb.WatchSessionRequest(session_id=sid, progress_interval_ms=50), timeout=20
    )
    kinds: list[str] = []
    progress: list[tuple[float, int]] = []
    try:
        for message in call:
            kinds.append(message.WhichOneof("kind") or "")
            if message.HasField("progress"):
                progress.append((time.monotonic(), message.progress.position))
                if len(progress) == 4:
                    break
    finally:
        call.cancel()
    assert kinds == ["event", "event", "progress", "progress", "progress", "progress"]
    assert [position for _, position in progress] == [2, 2, 2, 2]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(progress)]
    assert all(gap >= 0.04 for gap in gaps)


# -- errors and limits ------------------------------------------------------------------------------


def test_a_from_position_beyond_the_log_is_out_of_range(stub: Stub) -> None:
    sid = new_session(stub, "a")
    with pytest.raises(grpc.RpcError) as failure:
        until_caught_up(stub, pb.WatchSessionRequest(session_id=sid, from_position=3))
    assert failure.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "beyond the end" in (failure.value.details() or "")


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"session_id": "never_created"}, grpc.StatusCode.NOT_FOUND),
        ({"from_position": -1}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"progress_interval_ms": -5}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"max_events_per_message": -1}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"variables": [f"v{i}" for i in range(1001)]}, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_bad_watch_requests_fail_with_their_status(
    stub: Stub, request_fields: dict[str, Any], code: grpc.StatusCode
) -> None:
    fields = {"session_id": new_session(stub), **request_fields}
    with pytest.raises(grpc.RpcError) as failure:
        until_caught_up(stub, pb.WatchSessionRequest(**fields))
    assert failure.value.code() == code


def test_a_watcher_that_stops_reading_is_dropped_while_writers_and_others_keep_going() -> None:
    def hub(store: Store) -> WatchHub:
        return WatchHub(store, buffer_size=600, stuck_after=0.2)

    with server_with(hub) as running, stub_for(running.address) as stub:
        assert running.hub is not None
        watch_hub = running.hub
        sid = new_session(stub)
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=sid, name="s", type="string", initial_value=pb.Value(string_value="")
            )
        )  # 2
        stuck = stub.WatchSession(pb.WatchSessionRequest(session_id=sid), timeout=60)
        assert next(stuck).event.event.position == 1  # open; from now on it reads nothing
        healthy_positions: list[int] = []
        total = 1_500

        healthy_errors: list[str] = []

        def follow() -> None:  # a healthy watcher of the same session, reading everything
            call = stub.WatchSession(pb.WatchSessionRequest(session_id=sid), timeout=60)
            try:
                for message in call:
                    if message.HasField("event"):
                        healthy_positions.append(message.event.event.position)
                        if message.event.event.position == 2 + total:
                            call.cancel()
                            return
            except grpc.RpcError as error:
                healthy_errors.append(f"{error.code()}: {error.details()}")

        healthy = threading.Thread(target=follow)
        healthy.start()
        wait_for(lambda: watch_hub.watcher_count == 2)

        big = "x" * 16_384  # fills the transport's flow-control windows quickly
        started = time.monotonic()
        for index in range(total):
            stub.SetVariable(
                pb.SetVariableRequest(
                    session_id=sid,
                    variable_identifier="s",
                    value=pb.Value(string_value=f"{index}{big}"),
                )
            )
        writing = time.monotonic() - started
        healthy.join(timeout=60)
        assert healthy_errors == []
        assert healthy_positions == list(range(1, 2 + total + 1))
        # The stuck stream was ended and forgotten, without the client reading.
        wait_for(lambda: watch_hub.watcher_count == 0)

        received = 1
        with pytest.raises(grpc.RpcError) as failure:
            for _ in stuck:
                received += 1
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = failure.value.details() or ""
        assert "watcher fell more than 600 events behind; reconnect from position" in details
        assert 1 < received < total
        assert writing < 60  # writers were never held up by the watcher

        # The position it names resumes the watch without a gap.
        resume = int(details.rsplit(" ", 1)[1])
        assert resume <= received
        rest, caught_up = until_caught_up(
            stub, pb.WatchSessionRequest(session_id=sid, from_position=resume)
        )
        assert positions(rest) == list(range(resume + 1, caught_up + 1))
        assert caught_up == 2 + total


async def test_a_watcher_that_falls_off_the_ring_while_busy_is_dropped_with_a_clear_error() -> None:
    # Drive the hub directly: its writes only go through when the context lets them.
    store = Store(MemoryRecorder())
    hub = WatchHub(store, buffer_size=4)
    store.execute("s", commands.CreateSession(session_id="s"))
    context = FakeContext()
    watch = asyncio.create_task(hub.watch(pb.WatchSessionRequest(session_id="s"), context))
    assert (await context.written.get()).event.event.position == 1
    assert (await context.written.get()).progress.position == 1  # caught up, waiting
    context.free.clear()  # busy: the next write waits
    store.execute("s", commands.RegisterVariable("s", "v", "integer", 0))
    await asyncio.sleep(0.2)  # the watcher took event 2 and is stuck writing it
    started = time.monotonic()
    for index in range(10):  # the writer never waits for the watcher
        store.execute("s", commands.RegisterVariable("s", f"v{index}", "integer", index))
    assert time.monotonic() - started < 5
    context.free.set()
    assert (await context.written.get()).event.event.position == 2
    with pytest.raises(LimitExceeded, match="fell more than 4 events behind") as failure:
        await asyncio.wait_for(watch, 10)
    assert str(failure.value).endswith("reconnect from position 2")
    assert failure.value.info["position"] == "2"
    assert hub.watcher_count == 0


async def test_a_watch_of_a_cancelled_call_ends_without_waiting() -> None:
    store = Store(MemoryRecorder())
    hub = WatchHub(store)
    store.execute("s", commands.CreateSession(session_id="s"))
    context = FakeContext()
    request = pb.WatchSessionRequest(session_id="s", progress_interval_ms=60_000)
    watch = asyncio.create_task(hub.watch(request, context))
    assert (await context.written.get()).HasField("event")
    assert (await context.written.get()).HasField("progress")
    assert hub.watcher_count == 1
    started = time.monotonic()
    watch.cancel()  # what grpc does when the client cancels or the deadline passes
    with pytest.raises(asyncio.CancelledError):
        await watch
    assert time.monotonic() - started < 5
    assert hub.watcher_count == 0


def test_watchers_beyond_the_limit_are_refused() -> None:
    with (
        server_with(lambda store: WatchHub(store, max_watchers=2)) as running,
        stub_for(running.address) as stub,
    ):
        sid = new_session(stub)
        calls = [stub.WatchSession(pb.WatchSessionRequest(session_id=sid)) for _ in range(2)]
        for call in calls:
            assert next(call).HasField("event")
        with pytest.raises(grpc.RpcError) as failure:
            until_caught_up(stub, pb.WatchSessionRequest(session_id=sid))
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many watchers" in (failure.value.details() or "")
        calls[0].cancel()
        assert running.hub is not None
        hub = running.hub
        wait_for(lambda: hub.watcher_count == 1)
        _, caught_up = until_caught_up(stub, pb.WatchSessionRequest(session_id=sid))
        assert caught_up == 1
        calls[1].cancel()


def test_a_cancelled_watch_frees_its_place(server: RunningServer, stub: Stub) -> None:
    sid = new_session(stub)
    assert server.hub is not None
    hub = server.hub
    before = hub.watcher_count
    call = stub.WatchSession(pb.WatchSessionRequest(session_id=sid, progress_interval_ms=60_000))
    assert next(call).HasField("event")
    assert next(call).HasField("progress")
    assert hub.watcher_count == before + 1
    call.cancel()
    wait_for(lambda: hub.watcher_count == before, timeout=5)


def test_stopping_the_server_ends_open_watches_with_unavailable() -> None:
    store = Store(MemoryRecorder())
    running = start_server(store)
    with stub_for(running.address) as stub:
        sid = new_session(stub)
        call = stub.WatchSession(pb.WatchSessionRequest(session_id=sid))
        assert next(call).HasField("event")
        assert next(call).HasField("progress")
        started = time.monotonic()
        stopper = threading.Thread(target=running.stop, kwargs={"grace": 10.0})
        stopper.start()
        with pytest.raises(grpc.RpcError) as failure:
            for _ in call:
                pass
        stopper.join()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5  # not held until the grace period ran out


def test_a_watch_keeps_going_through_the_sessions_deletion_and_re_creation(stub: Stub) -> None:
    sid = new_session(stub, "a", "b")  # 1..3
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid))  # 4
    stub.CreateSession(pb.CreateSessionRequest(session_id=sid))  # 5
    messages, caught_up = until_caught_up(
        stub, pb.WatchSessionRequest(session_id=sid, from_position=3)
    )
    assert [m.event.event.type for m in messages] == ["SessionDeleted", "SessionCreated"]
    assert changes_of(messages[0]) == [
        ("a", "deleted", None, 0, 0),
        ("b", "deleted", None, 0, 0),
    ]
    assert caught_up == 5


def test_many_watchers_on_one_session_each_get_every_event() -> None:
    with server_with(lambda store: WatchHub(store)) as running:

        async def scenario() -> None:
            async with aconnect(running.address) as client:
                ctx = await client.create_session()
                await ctx.register_variable("n", "integer", 0)  # 2
                streams = [ctx.watch(from_position=2, progress_interval=30) for _ in range(200)]

                async def read(stream: Any) -> list[int]:
                    seen: list[int] = []
                    async with stream:
                        async for item in stream:
                            if isinstance(item, WatchUpdate):
                                seen.append(item.position)
                                if item.position == 2 + 50:
                                    return seen
                    return seen

                readers = [asyncio.create_task(read(stream)) for stream in streams]
                await asyncio.sleep(0.5)  # let every watch open
                for value in range(1, 51):
                    await ctx.set_variable("n", value)
                    if value == 25:  # ordinary calls still get a thread
                        assert await ctx.get_variable("n", bypass_cache=True) == 25
                results = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
                assert all(result == list(range(3, 53)) for result in results)

        asyncio.run(scenario())


# -- the client --------------------------------------------------------------------------------------


def test_the_sync_client_iterates_a_watch_and_resumes_from_its_position(
    server: RunningServer,
) -> None:
    with connect(server.address) as client:
        ctx = client.session(f"client_watch_{next(_names)}")
        ctx.register_variable("temperature", "float", 0.5)  # creates the session: 1, 2
        ctx.set_variable("temperature", 0.7, metadata={"reason": "warmer"})  # 3
        ctx.update_variables({"temperature": 0.9})  # 4

        with ctx.watch(from_position=2, include_initial=True, progress_interval=0.05) as stream:
            items = [next(stream) for _ in range(4)]
        assert isinstance(items[0], WatchInitial)
        assert items[0].position == 2
        assert items[0].values() == {"temperature": 0.5}
        assert [type(item) for item in items[1:]] == [WatchUpdate, WatchUpdate, WatchProgress]
        first, second = items[1], items[2]
        assert isinstance(first, WatchUpdate) and isinstance(second, WatchUpdate)
        assert (first.position, first.type) == (3, "VariableUpdated")
        change = first.changes[0]
        assert (change.name, change.value, change.previous_value, change.version) == (
            "temperature",
            0.7,
            0.5,
            1,
        )
        assert change.metadata == {"reason": "warmer"}
        assert change.source == "python"
        assert (second.type, second.changes[0].in_batch) == ("BatchApplied", True)
        assert items[3].position == 4
        assert stream.position == 4
        assert list(stream) == []  # closed: iteration stops

        ctx.set_variable("temperature", 1.1)  # 5
        with ctx.watch(from_position=stream.position, variables=["temperature"]) as resumed:
            item = next(resumed)
        assert isinstance(item, WatchUpdate)
        assert (item.position, item.changes[0].value, item.changes[0].previous_value) == (
            5,
            1.1,
            0.9,
        )


def test_the_sync_client_maps_watch_errors_and_creates_its_session(
    server: RunningServer,
) -> None:
    with connect(server.address) as client:
        ctx = client.session(f"client_watch_{next(_names)}")
        with ctx.watch() as stream:  # the session does not exist yet: it is created
            first = next(stream)
        assert isinstance(first, WatchUpdate)
        assert first.type == "SessionCreated"

        with pytest.raises(OutOfRange), ctx.watch(from_position=99) as stream:
            next(stream)
        strict = client.session(f"missing_{next(_names)}", {"create_session": False})
        with pytest.raises(SessionNotFound), strict.watch() as stream:
            next(stream)


def test_closing_a_sync_watch_from_another_thread_stops_the_iteration(
    server: RunningServer,
) -> None:
    with connect(server.address) as client:
        ctx = client.session(f"client_watch_{next(_names)}")
        ctx.register_variable("a", "integer", 1)
        stream = ctx.watch(progress_interval=60)
        items: list[object] = []

        def consume() -> None:
            items.extend(stream)

        reader = threading.Thread(target=consume)
        reader.start()
        wait_for(lambda: any(isinstance(item, WatchProgress) for item in items))
        stream.close()
        reader.join(timeout=5)
        assert not reader.is_alive()


async def test_the_async_client_iterates_a_watch(server: RunningServer) -> None:
    async with aconnect(server.address) as client:
        ctx = client.session(f"client_watch_{next(_names)}")
        await ctx.register_variable("count", "integer", 0)  # 1, 2
        stream = ctx.watch(include_initial=True, progress_interval=0.05)
        seen: list[object] = []
        async with stream:
            async for item in stream:
                seen.append(item)
                if isinstance(item, WatchProgress) and item.position == 2:
                    await ctx.set_variable("count", 1)  # 3
                if isinstance(item, WatchUpdate) and item.position == 3:
                    break
        assert isinstance(seen[0], WatchInitial) and seen[0].variables == ()
        updates = [item for item in seen if isinstance(item, WatchUpdate)]
        assert [u.position for u in updates] == [1, 2, 3]
        assert (updates[-1].changes[0].value, updates[-1].changes[0].previous_value) == (1, 0)
        assert stream.position == 3

        with pytest.raises(OutOfRange):
            async with ctx.watch(from_position=50) as failing:
                await failing.__anext__()


def test_the_client_hands_out_one_item_per_event_and_resumes_mid_message(
    either_address: str, either_stub: Stub
) -> None:
    with connect(either_address) as client:
        ctx = client.session(f"client_watch_{next(_names)}")
        ctx.register_variable("n", "integer", 0)  # creates the session: 1, 2
        for value in range(1, 399):  # 3..400
            set_value(either_stub, ctx.session_id, "n", value)

        # The catch-up comes 256 events a message: stop in the middle of the first.
        with ctx.watch(progress_interval=30) as stream:
            items = [next(stream) for _ in range(200)]
        assert all(isinstance(item, WatchUpdate) for item in items)
        assert [item.position for item in items] == list(range(1, 201))
        assert stream.position == 200

        with ctx.watch(from_position=stream.position, progress_interval=30) as resumed:
            rest = list(itertools.takewhile(lambda i: not isinstance(i, WatchProgress), resumed))
        assert [item.position for item in rest] == list(range(201, 401))
        last = rest[-1]
        assert isinstance(last, WatchUpdate) and last.changes[0].value == 398


async def test_the_async_client_hands_out_one_item_per_event(either_address: str) -> None:
    async with aconnect(either_address) as client:
        ctx = client.session(f"client_watch_{next(_names)}")
        await ctx.register_variable("n", "integer", 0)  # 1, 2
        for value in range(1, 40):  # 3..41
            await ctx.set_variable("n", value)
        seen: list[int] = []
        async with ctx.watch(from_position=1, progress_interval=30) as stream:
            async for item in stream:
                assert isinstance(item, WatchUpdate)
                seen.append(item.position)
                if item.position == 20:
                    break
        assert seen == list(range(2, 21))
        assert stream.position == 20


def _events_message(*positions: int) -> pb.WatchSessionResponse:
    message = pb.WatchSessionResponse()
    for position in positions:
        event = message.events.events.add()
        event.event.position = position
        event.event.type = "VariableUpdated"
    return message


def test_the_watch_flow_asks_for_several_events_a_message_and_hands_them_out_one_by_one() -> None:
    request = watch_request("s", 2, None, False, None)
    assert request.max_events_per_message == MAX_EVENTS_PER_MESSAGE
    seen = WatchPosition(2)
    run = Runner(watch_flow(request, None, seen, None, Retry().with_deadline(10), draw=lambda: 0.5))
    assert isinstance(run.effect, Open)
    run.send(None)
    assert run.effect is RECEIVE
    run.send(_events_message(3, 4, 5))
    for position in (3, 4, 5):
        assert isinstance(run.effect, Emit) and run.effect.item.position == position
        assert seen.position == position - 1  # not handed out yet
        run.send(None)
        assert seen.position == position  # what a reader that stops here resumes from
    assert run.effect is RECEIVE  # a stream breaks only between messages

    run.fail(Unavailable("Socket closed"))
    assert isinstance(run.effect, Sleep)
    run.send(None)
    assert isinstance(run.effect, Open) and run.effect.request is request
    assert (request.from_position, request.max_events_per_message) == (5, 256)
