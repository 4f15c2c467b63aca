"""The messages of watch streams without gRPC: events packed several to a message (each
whole, in order, every position once), the bytes joined from cached encodings equal to
the messages protobuf builds, filters, the cache, and the pass-through serializer; against
a real Store."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varstore.api import commands
from varstore.api.store import Store
from varstore.api.watch_messages import (
    MAX_EVENTS_PER_MESSAGE,
    WATCH_METHOD,
    Messages,
    View,
    encoded_watches,
    encoding,
)
from varstore.eventstore.events import RecordedEvent
from varstore.eventstore.memory import MemoryRecorder
from varstore.v1 import varstore_pb2 as pb

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    made = Store(MemoryRecorder())
    try:
        yield made
    finally:
        made.close()


# (kind, variable, value): a value's length makes WatchEvents of every varint length.
_operations = st.lists(
    st.tuples(
        st.sampled_from(["set", "batch", "nonatomic"]),
        st.sampled_from("abc"),
        st.integers(0, 300),
    ),
    max_size=25,
)


def written(store: Store, operations: Sequence[tuple[str, str, int]]) -> list[RecordedEvent]:
    """A new session with string variables a, b, c, the operations done on it; its log."""
    sid = f"messages_{next(_ids)}"
    store.execute(sid, commands.CreateSession(sid))
    for name in "abc":
        store.execute(sid, commands.RegisterVariable(sid, name, "string", ""))
    for kind, name, size in operations:
        value = name * size
        if kind == "set":
            store.execute(sid, commands.SetVariable(sid, name, value))
        else:
            other = "b" if name != "b" else "c"
            updates = {name: value, other: value[::-1] + "!"}
            store.execute(sid, commands.SetVariables(sid, updates, atomic=kind == "batch"))
    published = store.published(sid)
    assert published is not None
    return list(store.recorder.read_session(sid, 1, published.position))


def as_message(outgoing: Any) -> pb.WatchSessionResponse:
    return pb.WatchSessionResponse.FromString(outgoing) if isinstance(outgoing, bytes) else outgoing


def watch_events(message: pb.WatchSessionResponse) -> list[pb.WatchEvent]:
    kind = message.WhichOneof("kind")
    assert kind in ("event", "events")
    return [message.event] if kind == "event" else list(message.events.events)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=_operations,
    per_message=st.sampled_from([1, 2, 3, 5, 64, MAX_EVENTS_PER_MESSAGE]),
    wanted=st.sampled_from([frozenset(), frozenset({"a"}), frozenset({"b", "c"})]),
    encoded=st.booleans(),
    data=st.data(),
)
def test_packed_messages_carry_every_kept_event_once_whole_and_in_order(
    store: Store,
    operations: list[tuple[str, str, int]],
    per_message: int,
    wanted: frozenset[str],
    encoded: bool,
    data: st.DataObject,
) -> None:
    log = written(store, operations)
    start = data.draw(st.integers(0, len(log) - 1), label="first event taken")
    events = log[start:]
    messages = Messages(store)
    one_each = [messages.encoded(event, wanted) for event in events]
    kept = [e for e in one_each if e is not None]

    packed = messages.pack(events, View(wanted, per_message, encoded))

    assert all(isinstance(m, bytes) == encoded for _, m in packed if m is not None)
    covered = [position for position, _ in packed]
    assert covered == sorted(set(covered)) and covered[-1] == events[-1].position
    sent: list[pb.WatchEvent] = []
    for position, outgoing in packed:
        if outgoing is None:  # only what a filter left out, at the end
            assert position == events[-1].position
            continue
        message = as_message(outgoing)
        group = watch_events(message)
        # A lone event goes as `event`; several in one `events`, up to the watch's maximum.
        assert (message.WhichOneof("kind") == "events") == (len(group) > 1)
        assert len(group) <= per_message
        assert group[-1].event.position == position
        sent += group
    # Every kept event once, in order, each whole: as one-event messages would carry it.
    assert sent == [e.response.event for e in kept]
    assert [e.event.position for e in sent] == [e.position for e in kept]
    if not wanted:
        assert [e.event.position for e in sent] == [e.position for e in events]
        # Batches are one event with every change: never split between messages.
        for event, watch_event in zip(events, sent, strict=True):
            if event.type == "BatchApplied":
                assert len(watch_event.changes) == len(event.payload["updates"])
    # Only the last message of a page may hold fewer events than allowed.
    sizes = [len(watch_events(as_message(m))) for _, m in packed if m is not None]
    assert all(size == per_message for size in sizes[:-1])


def test_joined_bytes_equal_what_protobuf_serializes_for_the_same_events(store: Store) -> None:
    log = written(store, [("set", "a", 200), ("batch", "b", 5000), ("set", "c", 70_000)])
    messages = Messages(store)
    group = [e for e in (messages.encoded(event, frozenset()) for event in log) if e is not None]
    wire = View(per_message=MAX_EVENTS_PER_MESSAGE, encoded=True).message(group)
    built = pb.WatchSessionResponse(events=pb.WatchEvents(events=[e.response.event for e in group]))
    assert len(wire) == built.ByteSize() > 70_000  # three-byte lengths and more
    assert pb.WatchSessionResponse.FromString(wire) == built
    assert group[0].single == group[0].response.SerializeToString()


def test_an_event_is_encoded_once_and_shared_by_the_watchers_of_one_filter(store: Store) -> None:
    log = written(store, [("batch", "a", 3)])
    messages = Messages(store)
    batch = log[-1]
    assert messages.encoded(batch, frozenset()) is messages.encoded(batch, frozenset())
    only_a = messages.encoded(batch, frozenset({"a"}))
    assert only_a is messages.encoded(batch, frozenset({"a"}))
    assert only_a is not None and [c.name for c in only_a.changes] == ["a"]
    assert messages.encoded(log[2], frozenset({"a"})) is None  # b's registration: left out
    assert messages.encoded(log[0], frozenset({"a"})) is not None  # the session's creation


def test_per_message_is_served_up_to_the_maximum() -> None:
    assert MAX_EVENTS_PER_MESSAGE == 256
    assert View().per_message == 1 and not View().encoded


async def test_the_pass_through_interceptor_serves_only_watch_session_and_says_so_per_call() -> (
    None
):
    interceptor = encoded_watches()
    seen: list[bool] = []
    written: list[Any] = []

    async def watch(request: Any, context: Any) -> None:
        seen.append(encoding())
        await context.write(b"bytes as they are")
        await context.write(pb.WatchSessionResponse(progress=pb.WatchProgress(position=3)))

    original = grpc.unary_stream_rpc_method_handler(
        watch,
        request_deserializer=pb.WatchSessionRequest.FromString,
        response_serializer=pb.WatchSessionResponse.SerializeToString,
    )

    class Context:
        async def write(self, message: Any) -> None:
            written.append(message)

    assert interceptor.wrapped(original, "/x.Y/Other") is original
    handler = interceptor.wrapped(original, WATCH_METHOD)
    assert handler is not None and handler.unary_stream is not None
    assert handler.response_serializer is not None
    serialize = handler.response_serializer
    await handler.unary_stream(pb.WatchSessionRequest(), Context())
    wire = [serialize(m) for m in written]
    assert seen == [True] and not encoding()  # set for the call only
    assert wire[0] == b"bytes as they are"
    assert pb.WatchSessionResponse.FromString(wire[1]).progress.position == 3
