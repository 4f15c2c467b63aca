"""The watch fan-out without gRPC: rings, cursors, catch-up, waiting, the send gate,
falling behind, the janitor and closing; driven by plain threads against a real Store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from varstore.api import commands
from varstore.api.fanout import PAGE_SIZE, FanOut, Ring, SendGate, Watcher
from varstore.api.store import Store
from varstore.eventstore.events import RecordedEvent
from varstore.eventstore.memory import MemoryRecorder
from varstore.types import LimitExceeded, Unavailable


@pytest.fixture
def store() -> Iterator[Store]:
    made = Store(MemoryRecorder())
    try:
        yield made
    finally:
        made.close()


def create_with(store: Store, session_id: str, variables: int = 0) -> None:
    store.execute(session_id, commands.CreateSession(session_id))
    for index in range(variables):
        store.execute(session_id, commands.RegisterVariable(session_id, f"v{index}", "integer", 0))


def write(store: Store, session_id: str, count: int) -> None:
    """``count`` more events on a session with a variable ``v0``."""
    for index in range(count):
        store.execute(session_id, commands.SetVariable(session_id, "v0", index))


def follow(fanout: FanOut, watcher: Watcher, upto: int, timeout: float = 10) -> list[int]:
    """Every position the watcher is given up to ``upto``, sending each as a message."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while watcher.cursor < upto:
        assert time.monotonic() < deadline, f"stuck at {watcher.cursor}"
        events = fanout.take(watcher, fanout.monotonic() + 0.05)
        list(fanout.send(watcher, [(e.position, e.position) for e in events]))
        seen.extend(e.position for e in events)
    return seen


def never_cancelled(details: str) -> None:
    raise AssertionError(f"cancelled: {details}")


def test_a_watcher_gets_the_log_then_live_events_once_each_in_order(store: Store) -> None:
    create_with(store, "s", variables=1)
    write(store, "s", 600)  # more than a page of catch-up
    fanout = FanOut(store)
    watcher = fanout.register("s", never_cancelled)
    assert fanout.start(watcher) == 602
    writer = threading.Thread(target=write, args=(store, "s", 300))
    writer.start()
    seen = follow(fanout, watcher, 902)
    writer.join()
    assert seen == list(range(1, 903))
    fanout.unregister(watcher)
    assert fanout.watcher_count == 0
    fanout.close()


def test_many_watchers_of_one_session_share_one_ring_and_each_sees_everything(
    store: Store,
) -> None:
    create_with(store, "s", variables=1)
    fanout = FanOut(store, send_slots=1)
    watchers = [fanout.register("s", never_cancelled) for _ in range(8)]
    for watcher in watchers:
        fanout.start(watcher)
    assert len({watcher.ring for watcher in watchers}) == 1
    results: dict[int, list[int]] = {}

    def run(index: int) -> None:
        results[index] = follow(fanout, watchers[index], 202)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(watchers))]
    for thread in threads:
        thread.start()
    write(store, "s", 200)
    for thread in threads:
        thread.join(timeout=30)
    assert all(results[i] == list(range(1, 203)) for i in range(len(watchers)))
    fanout.close()


def test_a_watcher_that_falls_off_the_ring_is_told_where_to_reconnect(store: Store) -> None:
    create_with(store, "s", variables=1)
    fanout = FanOut(store, buffer_size=4)
    watcher = fanout.register("s", never_cancelled)
    fanout.start(watcher)
    assert follow(fanout, watcher, 2) == [1, 2]
    write(store, "s", 10)
    with pytest.raises(LimitExceeded) as failure:
        fanout.take(watcher)
    assert str(failure.value) == (
        "watcher fell more than 4 events behind; reconnect from position 2"
    )
    assert failure.value.info == {"limit": "4", "position": "2", "session_id": "s"}
    fanout.close()


def test_take_waits_for_a_live_event_until_its_deadline(store: Store) -> None:
    create_with(store, "s", variables=1)
    fanout = FanOut(store)
    watcher = fanout.register("s", never_cancelled)
    fanout.start(watcher)
    follow(fanout, watcher, 2)
    started = time.monotonic()
    assert fanout.take(watcher, fanout.monotonic() + 0.1) == []
    assert time.monotonic() - started >= 0.09
    threading.Timer(0.1, write, args=(store, "s", 1)).start()
    events = fanout.take(watcher, fanout.monotonic() + 10)
    assert [event.position for event in events] == [3]
    fanout.close()


def test_an_ended_watcher_stops_waiting_at_once(store: Store) -> None:
    create_with(store, "s")
    fanout = FanOut(store)
    watcher = fanout.register("s", never_cancelled)
    fanout.start(watcher)
    follow(fanout, watcher, 1)
    threading.Timer(0.1, watcher.end).start()
    started = time.monotonic()
    assert fanout.take(watcher, fanout.monotonic() + 30) == []
    assert time.monotonic() - started < 5
    fanout.close()


def test_closing_wakes_waiting_watchers_with_unavailable_and_refuses_new_ones(
    store: Store,
) -> None:
    create_with(store, "s")
    fanout = FanOut(store)
    watcher = fanout.register("s", never_cancelled)
    fanout.start(watcher)
    follow(fanout, watcher, 1)
    threading.Timer(0.1, fanout.close).start()
    with pytest.raises(Unavailable, match="reconnect from position 1"):
        fanout.take(watcher, fanout.monotonic() + 30)
    with pytest.raises(Unavailable, match="shutting down"):
        fanout.register("s", never_cancelled)


def test_watchers_beyond_the_limit_are_refused_until_one_leaves(store: Store) -> None:
    fanout = FanOut(store, max_watchers=2)
    first = fanout.register("a", never_cancelled)
    fanout.register("b", never_cancelled)
    with pytest.raises(LimitExceeded, match="too many watchers"):
        fanout.register("c", never_cancelled)
    fanout.unregister(first)
    fanout.unregister(first)  # idempotent
    assert fanout.watcher_count == 1
    fanout.register("c", never_cancelled)
    fanout.close()


def test_a_send_stuck_after_falling_off_the_ring_is_cancelled_by_the_janitor(
    store: Store,
) -> None:
    create_with(store, "s", variables=1)
    fanout = FanOut(store, buffer_size=4, stuck_after=0.1)
    cancelled: list[str] = []
    watcher = fanout.register("s", cancelled.append)
    fanout.start(watcher)
    follow(fanout, watcher, 2)  # caught up: what follows comes from the ring
    stream = fanout.send(watcher, [(3, "three"), (4, "four")])
    assert next(stream) == "three"  # the transport holds it and never takes the next one
    write(store, "s", 10)
    deadline = time.monotonic() + 10
    while not cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cancelled == ["watcher fell more than 4 events behind; reconnect from position 2"]
    assert watcher.dropped
    stream.close()
    fanout.close()


def test_the_send_gate_lets_only_so_many_send_at_once() -> None:
    clock = time.monotonic
    gate = SendGate(2, lease=5.0, monotonic=clock)
    ring = Ring("s", 4)
    watchers = [Watcher(ring, never_cancelled) for _ in range(3)]
    assert gate.acquire(watchers[0]) and gate.acquire(watchers[1])
    got: list[bool] = []
    third = threading.Thread(target=lambda: got.append(gate.acquire(watchers[2])))
    third.start()
    time.sleep(0.1)
    assert got == []  # waiting its turn
    gate.release(watchers[0])
    third.join(timeout=5)
    assert got == [True]


def test_the_send_gate_takes_a_slot_back_from_a_hung_send() -> None:
    gate = SendGate(1, lease=0.05, monotonic=time.monotonic)
    ring = Ring("s", 4)
    hung, next_in_line = Watcher(ring, never_cancelled), Watcher(ring, never_cancelled)
    assert gate.acquire(hung)
    hung.send_started = time.monotonic()
    started = time.monotonic()
    assert gate.acquire(next_in_line)
    assert time.monotonic() - started < 5
    gate.release(hung)  # a no-op: its slot was taken back


def test_a_waiting_watcher_that_ends_gives_up_its_place_in_line() -> None:
    gate = SendGate(1, lease=0.05, monotonic=time.monotonic)
    ring = Ring("s", 4)
    holder, waiting = Watcher(ring, never_cancelled), Watcher(ring, never_cancelled)
    assert gate.acquire(holder)
    threading.Timer(0.1, waiting.end).start()
    assert gate.acquire(waiting) is False


def event(position: int) -> RecordedEvent:
    return RecordedEvent("s", position, position, "VariableUpdated", {}, datetime.now(UTC))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(1, 6), max_size=12), st.integers(1, 20))
def test_a_ring_holds_exactly_the_newest_events(
    capacity: int, commits: list[int], asked: int
) -> None:
    ring = Ring("s", capacity)
    newest = 0
    for size in commits:
        ring.add([event(p) for p in range(newest + 1, newest + size + 1)])
        newest += size
    held = list(range(max(1, newest - capacity + 1), newest + 1)) if newest else []
    assert ring.oldest() == (held[0] if held else None)
    events, evicted = ring.take(asked, PAGE_SIZE)
    if asked in held:
        assert [e.position for e in events] == [p for p in held if p >= asked]
        assert not evicted
    else:
        assert events == []
        assert evicted == (bool(held) and asked < held[0])


def test_send_moves_the_cursor_past_left_out_positions_without_a_slot(store: Store) -> None:
    fanout = FanOut(store, send_slots=1)
    create_with(store, "s")
    watcher = fanout.register("s", never_cancelled)
    other = fanout.register("s", never_cancelled)
    busy = fanout.send(other, [(1, "busy")])
    assert next(busy) == "busy"  # `other` holds the only slot
    assert list(fanout.send(watcher, [(1, None), (2, None)])) == []
    assert (watcher.cursor, watcher.sent) == (2, 2)
    busy.close()
    fanout.close()


def test_ready_gives_only_live_events_the_ring_holds_now(store: Store) -> None:
    create_with(store, "s", variables=1)
    write(store, "s", 3)  # the log stands at 5 when the watcher starts
    fanout = FanOut(store, buffer_size=4)
    watcher = fanout.register("s", never_cancelled)
    assert fanout.start(watcher) == 5
    assert fanout.ready(watcher, 1, 10) == []  # the catch-up is the recorder's: not here
    write(store, "s", 3)  # 6, 7, 8
    assert [e.position for e in fanout.ready(watcher, 6, 10)] == [6, 7, 8]
    assert [e.position for e in fanout.ready(watcher, 7, 1)] == [7]
    assert fanout.ready(watcher, 9, 10) == []  # nothing yet, and no waiting
    write(store, "s", 4)  # 9..12: 6, 7 and 8 have left the ring
    assert fanout.ready(watcher, 6, 10) == []  # the next take says the watcher fell behind
    fanout.close()
    assert fanout.ready(watcher, 9, 10) == []


def test_send_takes_its_slot_at_the_first_message_and_holds_it_to_the_end(store: Store) -> None:
    fanout = FanOut(store, send_slots=1)
    create_with(store, "s")
    watcher = fanout.register("s", never_cancelled)
    other = fanout.register("s", never_cancelled)
    found_more: list[int] = []

    def outgoing() -> Iterator[tuple[int, str | None]]:
        yield 1, None  # left out: no slot needed yet
        yield 2, "two"
        found_more.append(3)  # found while holding the slot (what `ready` is for)
        yield 3, "three"

    stream = fanout.send(watcher, outgoing())
    assert next(stream) == "two"
    assert (watcher.cursor, watcher.sent) == (2, 1)
    busy = fanout.send(other, [(1, "busy")])
    waiting = threading.Thread(target=lambda: next(busy))
    waiting.start()  # waits: the only slot is held across the whole send
    assert next(stream) == "three" and found_more == [3]
    time.sleep(0.05)
    assert waiting.is_alive()
    assert list(stream) == []
    assert (watcher.cursor, watcher.sent) == (3, 3)
    waiting.join(timeout=5)  # released at the end
    assert not waiting.is_alive()
    busy.close()
    fanout.close()
