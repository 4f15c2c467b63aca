"""The watch fan-out without gRPC: rings, cursors, catch-up, waiting, preparing once,
falling behind, the janitor and closing; watchers are coroutines on the test's event loop,
writers plain threads against a real Store."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
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


async def in_thread(store: Store, session_id: str, count: int) -> None:
    """:func:`write` on a thread of its own (as a gRPC handler writes)."""
    await asyncio.to_thread(write, store, session_id, count)


async def follow(fanout: FanOut, watcher: Watcher, upto: int, timeout: float = 10) -> list[int]:
    """Every position the watcher is given up to ``upto``, sending each as a message."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while watcher.cursor < upto:
        assert time.monotonic() < deadline, f"stuck at {watcher.cursor}"
        events = await fanout.take(watcher, fanout.monotonic() + 0.05)
        await fanout.send(watcher, [(e.position, e.position) for e in events], discard)
        seen.extend(e.position for e in events)
    return seen


async def discard(message: object) -> None:
    return None


def never_cancelled(details: str) -> None:
    raise AssertionError(f"cancelled: {details}")


async def test_a_watcher_gets_the_log_then_live_events_once_each_in_order(store: Store) -> None:
    create_with(store, "s", variables=1)
    write(store, "s", 600)  # more than a page of catch-up
    fanout = FanOut(store)
    watcher = fanout.register("s", never_cancelled)
    assert fanout.start(watcher) == 602
    writer = asyncio.create_task(in_thread(store, "s", 300))
    seen = await follow(fanout, watcher, 902)
    await writer
    assert seen == list(range(1, 903))
    fanout.unregister(watcher)
    assert fanout.watcher_count == 0
    fanout.close()


async def test_many_watchers_of_one_session_share_one_ring_and_each_sees_everything(
    store: Store,
) -> None:
    create_with(store, "s", variables=1)
    prepared: list[int] = []
    fanout = FanOut(store, prepare=lambda events: prepared.extend(e.position for e in events))
    watchers = [fanout.register("s", never_cancelled) for _ in range(8)]
    for watcher in watchers:
        fanout.start(watcher)
    assert len({watcher.ring for watcher in watchers}) == 1
    following = [asyncio.create_task(follow(fanout, watcher, 202)) for watcher in watchers]
    await in_thread(store, "s", 200)
    results = await asyncio.gather(*following)
    assert all(result == list(range(1, 203)) for result in results)
    assert prepared == list(range(3, 203))  # each event prepared once, before any watcher
    fanout.close()


async def test_a_watcher_that_falls_off_the_ring_is_told_where_to_reconnect(store: Store) -> None:
    create_with(store, "s", variables=1)
    fanout = FanOut(store, buffer_size=4)
    watcher = fanout.register("s", never_cancelled)
    fanout.start(watcher)
    assert await follow(fanout, watcher, 2) == [1, 2]
    write(store, "s", 10)
    await asyncio.sleep(0.05)  # the loop learns of the commits
    with pytest.raises(LimitExceeded) as failure:
        await fanout.take(watcher)
    assert str(failure.value) == (
        "watcher fell more than 4 events behind; reconnect from position 2"
    )
    assert failure.value.info == {"limit": "4", "position": "2", "session_id": "s"}
    fanout.close()


async def test_take_waits_for_a_live_event_until_its_deadline(store: Store) -> None:
    create_with(store, "s", variables=1)
    fanout = FanOut(store)
    watcher = fanout.register("s", never_cancelled)
    fanout.start(watcher)
    await follow(fanout, watcher, 2)
    started = time.monotonic()
    assert await fanout.take(watcher, fanout.monotonic() + 0.1) == []
    assert time.monotonic() - started >= 0.09
    threading.Timer(0.1, write, args=(store, "s", 1)).start()
    events = await fanout.take(watcher, fanout.monotonic() + 10)
    assert [event.position for event in events] == [3]
    fanout.close()


async def test_an_ended_watcher_stops_waiting_at_once(store: Store) -> None:
    create_with(store, "s")
    fanout = FanOut(store)
    watcher = fanout.register("s", never_cancelled)
    fanout.start(watcher)
    await follow(fanout, watcher, 1)
    asyncio.get_running_loop().call_later(0.1, watcher.end)
    started = time.monotonic()
    assert await fanout.take(watcher, fanout.monotonic() + 30) == []
    assert time.monotonic() - started < 5
    fanout.close()


async def test_closing_wakes_waiting_watchers_with_unavailable_and_refuses_new_ones(
    store: Store,
) -> None:
    create_with(store, "s")
    fanout = FanOut(store)
    watcher = fanout.register("s", never_cancelled)
    fanout.start(watcher)
    await follow(fanout, watcher, 1)
    threading.Timer(0.1, fanout.close).start()  # from another thread, as the server stops
    with pytest.raises(Unavailable, match="reconnect from position 1"):
        await fanout.take(watcher, fanout.monotonic() + 30)
    with pytest.raises(Unavailable, match="shutting down"):
        fanout.register("s", never_cancelled)


async def test_watchers_beyond_the_limit_are_refused_until_one_leaves(store: Store) -> None:
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


async def test_a_send_stuck_after_falling_off_the_ring_is_ended_by_the_janitor(
    store: Store,
) -> None:
    create_with(store, "s", variables=1)
    fanout = FanOut(store, buffer_size=4, stuck_after=0.1)
    cancelled: list[str] = []
    watcher = fanout.register("s", cancelled.append)
    fanout.start(watcher)
    await follow(fanout, watcher, 2)  # caught up: what follows comes from the ring
    held = asyncio.Event()

    async def hang(message: object) -> None:  # the transport never takes it
        held.set()
        await asyncio.sleep(60)

    stuck = asyncio.create_task(fanout.send(watcher, [(3, "three"), (4, "four")], hang))
    await held.wait()
    await in_thread(store, "s", 10)
    deadline = time.monotonic() + 10
    while not cancelled and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert cancelled == ["watcher fell more than 4 events behind; reconnect from position 2"]
    assert watcher.dropped and watcher.done
    assert fanout.watcher_count == 0  # forgotten at once, while its send still hangs
    stuck.cancel()
    fanout.close()


async def test_send_moves_the_cursor_past_left_out_positions_without_writing(
    store: Store,
) -> None:
    fanout = FanOut(store)
    create_with(store, "s")
    watcher = fanout.register("s", never_cancelled)
    written: list[object] = []

    async def keep(message: object) -> None:
        written.append(message)

    assert await fanout.send(watcher, [(1, None), (2, None)], keep) is None
    assert (watcher.cursor, watcher.sent) == (2, 2) and written == []
    assert await fanout.send(watcher, [(3, None), (4, "four")], keep) is not None
    assert (watcher.cursor, watcher.sent) == (4, 4) and written == ["four"]
    fanout.close()


async def test_a_ring_that_cannot_be_prepared_still_wakes_its_watchers(store: Store) -> None:
    create_with(store, "s", variables=1)

    def broken(events: Sequence[RecordedEvent]) -> None:
        raise RuntimeError("cannot prepare")

    fanout = FanOut(store, prepare=broken)
    watcher = fanout.register("s", never_cancelled)
    fanout.start(watcher)
    await follow(fanout, watcher, 2)
    threading.Timer(0.05, write, args=(store, "s", 1)).start()
    events = await fanout.take(watcher, fanout.monotonic() + 10)
    assert [event.position for event in events] == [3]
    fanout.close()


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
    ready = held[len(held) // 2] if held else 0  # watchers take only what was prepared
    events, _ = ring.take(asked, PAGE_SIZE, ready)
    assert all(e.position <= ready for e in events)


async def test_the_send_gate_lets_only_so_many_write_at_once_and_takes_back_a_hung_slot(
    store: Store,
) -> None:
    create_with(store, "s")
    fanout = FanOut(store)
    gate = SendGate(2, lease=0.05)
    first, second, third = (fanout.register("s", never_cancelled) for _ in range(3))
    await gate.acquire(first)
    await gate.acquire(second)
    waiting = asyncio.create_task(gate.acquire(third))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # both slots are held
    gate.release(second)
    await asyncio.wait_for(waiting, 5)  # handed over, first come first served
    gate.release(third)
    gate.release(third)  # a no-op once given back
    second.send_started = time.monotonic() - 1  # hung in a send for a second
    await gate.acquire(second)
    blocked = asyncio.create_task(gate.acquire(third))
    await asyncio.sleep(0.02)
    assert not blocked.done()
    gate.take_back_hung(time.monotonic())  # what the janitor does
    await asyncio.wait_for(blocked, 5)
    fanout.close()
