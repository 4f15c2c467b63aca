"""The client cache's "watch" mode: one watch per session keeps cached entries current, so
another process's write reaches every cached reader within the watch lag while reads stay
hits; entries fall back to their TTL while the watch is down. Both flavours (``[sync]`` and
``[async]``) run through one body, as in ``test_client_cache.py``."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
import pytest

from varstore.api.server import RunningServer, start_server
from varstore.api.store import Store
from varstore.client import AsyncSessionContext, SessionContext, Unavailable
from varstore.client._core import ContextCore
from varstore.client._effects import RECEIVE, Open, Sleep
from varstore.client._flow import Runner
from varstore.client._watch import MAX_EVENTS_PER_MESSAGE, cache_watch
from varstore.eventstore.memory import MemoryRecorder
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Context = SessionContext | AsyncSessionContext
WATCH = {"cache_mode": "watch", "cache_ttl": 3600.0}
_ids = itertools.count(1)


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle(result: Any) -> Any:
    if inspect.isawaitable(result):
        return await result
    return result


class Opener:
    """Opens contexts of one flavour on their own channels; closes contexts and channels."""

    def __init__(self, flavour: str) -> None:
        self.flavour = flavour
        self._contexts: list[Context] = []
        self._closers: list[Callable[[], object]] = []

    def open(
        self,
        address: str,
        session_id: str,
        config: Mapping[str, Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> Context:
        context: Context
        if self.flavour == "sync":
            channel = grpc.insecure_channel(address)
            self._closers.append(channel.close)
            context = SessionContext(session_id, channel, config, clock=clock)
        else:
            aio_channel = grpc.aio.insecure_channel(address)
            self._closers.append(aio_channel.close)
            context = AsyncSessionContext(session_id, aio_channel, config, clock=clock)
        self._contexts.append(context)
        return context

    async def close(self) -> None:
        for context in self._contexts:
            await settle(context.close())
        for close in self._closers:
            await settle(close())


@pytest.fixture(params=["sync", "async"])
async def opener(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    made = Opener(request.param)
    yield made
    await made.close()


def new_session(stub: pb_grpc.VariableStoreStub) -> str:
    session_id = f"watchcache_{next(_ids)}"
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))
    return session_id


def external_set(stub: pb_grpc.VariableStoreStub, session_id: str, name: str, value: int) -> int:
    """Another process's write; returns its position."""
    response = stub.SetVariable(
        pb.SetVariableRequest(
            session_id=session_id,
            variable_identifier=name,
            value=pb.Value(integer_value=value),
            source="other",
        )
    )
    return response.header.position


async def eventually(check: Callable[[], Any], timeout: float = 2.0, interval: float = 0.01) -> Any:
    """Polls ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await settle(check())
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


def watch_running(session_id: str) -> bool:
    """Whether a cache watch (thread or task) on the session is alive."""
    name = f"varstore-watch-{session_id}"
    if any(thread.name == name for thread in threading.enumerate()):
        return True
    return any(task.get_name() == name and not task.done() for task in asyncio.all_tasks())


# -- watch mode against the shared server ---------------------------------------------------


async def test_another_writer_is_seen_by_a_cached_reader_and_reads_stay_hits(
    opener: Opener, server: RunningServer, stub: pb_grpc.VariableStoreStub
) -> None:
    session_id = new_session(stub)
    reader = opener.open(server.address, session_id, WATCH)
    writer = opener.open(server.address, session_id, WATCH)
    await settle(reader.register_variable("x", "integer", 0))
    assert await settle(reader.get_variable("x")) == 0

    position = external_set(stub, session_id, "x", 5)

    async def seen() -> bool:
        return bool(await settle(reader.get_variable("x")) == 5)

    assert await eventually(seen)
    stats = reader.get_cache_stats()
    assert stats["misses"] == 1 and stats["hits"] >= 1
    assert stats["mode"] == "watch" and stats["watch_connected"] is True
    assert stats["watch_position"] >= position
    assert stats["watch_lag"] is not None and 0 <= stats["watch_lag"] < 2
    assert stats["watch_lag_max"] >= stats["watch_lag"]

    # A write through a second context, then a deletion, reach the reader too.
    await settle(writer.set_variable("x", 7))

    async def seen_again() -> bool:
        return bool(await settle(reader.get_variable("x")) == 7)

    assert await eventually(seen_again)

    async def deleted() -> bool:
        return await settle(reader.get_variable("x", default=None)) is None

    await settle(writer.delete_variable("x"))
    assert await eventually(deleted)
    assert reader.get_cache_stats()["misses"] == 2  # only the read after the deletion


async def test_a_burst_of_another_writer_reaches_every_cached_entry(
    opener: Opener, server: RunningServer, stub: pb_grpc.VariableStoreStub
) -> None:
    session_id = new_session(stub)
    reader = opener.open(server.address, session_id, WATCH)
    names = [f"v{i}" for i in range(5)]
    for name in names:
        await settle(reader.register_variable(name, "integer", 0))
    assert await settle(reader.get_variables(names)) == dict.fromkeys(names, 0)
    misses = reader.get_cache_stats()["misses"]

    response = stub.SetVariables(  # five events in one commit: they travel together
        pb.SetVariablesRequest(
            session_id=session_id,
            updates={name: pb.Value(integer_value=index + 10) for index, name in enumerate(names)},
            atomic=False,
            source="other",
        )
    )

    async def all_seen() -> bool:
        values = await settle(reader.get_variables(names))
        return bool(values == {name: index + 10 for index, name in enumerate(names)})

    assert await eventually(all_seen)
    stats = reader.get_cache_stats()
    assert stats["misses"] == misses and stats["watch_position"] >= response.header.position


async def test_in_ttl_mode_a_long_ttl_serves_the_stale_value(
    opener: Opener, server: RunningServer, stub: pb_grpc.VariableStoreStub
) -> None:
    session_id = new_session(stub)
    reader = opener.open(server.address, session_id, {"cache_ttl": 3600.0})
    await settle(reader.register_variable("x", "integer", 0))
    assert await settle(reader.get_variable("x")) == 0

    external_set(stub, session_id, "x", 5)
    await asyncio.sleep(0.3)

    assert await settle(reader.get_variable("x")) == 0  # stale, as the TTL allows
    stats = reader.get_cache_stats()
    assert stats["mode"] == "ttl" and stats["watch_connected"] is False
    assert not watch_running(session_id)


async def test_a_deleted_session_drops_the_cached_entries(
    opener: Opener, server: RunningServer, stub: pb_grpc.VariableStoreStub
) -> None:
    session_id = new_session(stub)
    reader = opener.open(server.address, session_id, WATCH)
    await settle(reader.register_variable("x", "integer", 1))
    await settle(reader.register_variable("y", "integer", 2))
    await settle(reader.get_variables(["x", "y"]))
    assert reader.get_cache_stats()["size"] == 2

    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id))

    assert await eventually(lambda: reader.get_cache_stats()["size"] == 0)
    assert reader.get_cache_stats()["watch_connected"] is True  # the watch keeps going


async def test_close_stops_the_watch(
    opener: Opener, server: RunningServer, stub: pb_grpc.VariableStoreStub
) -> None:
    session_id = new_session(stub)
    reader = opener.open(server.address, session_id, WATCH)
    await settle(reader.register_variable("x", "integer", 0))
    assert await eventually(lambda: reader.get_cache_stats()["watch_connected"])
    assert watch_running(session_id)

    await settle(reader.close())

    assert await eventually(lambda: not watch_running(session_id))
    assert reader.get_cache_stats()["watch_connected"] is False


# -- the watch going down --------------------------------------------------------------------


async def test_entries_fall_back_to_the_ttl_while_the_watch_is_down(opener: Opener) -> None:
    running = start_server(Store(MemoryRecorder()))
    stopped = False
    try:
        clock = FakeClock()
        reader = opener.open(
            running.address,
            "down",
            {"cache_mode": "watch", "cache_ttl": 10.0, "timeout": 5.0, "retry_deadline": 0.5},
            clock,
        )
        await settle(reader.register_variable("x", "integer", 3))
        assert await settle(reader.get_variable("x")) == 3
        assert await eventually(lambda: reader.get_cache_stats()["watch_connected"])

        clock.now += 100  # far past the TTL: the healthy watch keeps the entry current
        assert await settle(reader.get_variable("x")) == 3
        assert reader.get_cache_stats()["hits"] == 1

        running.stop(grace=0.5)
        stopped = True
        assert await eventually(lambda: not reader.get_cache_stats()["watch_connected"], timeout=5)

        with pytest.raises(Unavailable):  # expired by TTL now, and the server is gone
            await settle(reader.get_variable("x"))
        stats = reader.get_cache_stats()
        assert stats["evictions"] == 1 and stats["hits"] == 1
    finally:
        if not stopped:
            running.stop(grace=0.5)


# -- the core's decisions --------------------------------------------------------------------


def _variable(version: int, value: int, position: int) -> pb.Variable:
    return pb.Variable(
        id="v1",
        name="x",
        type="integer",
        value=pb.Value(integer_value=value),
        version=version,
        position=position,
    )


def _update(position: int, version: int, value: int | None, kind: str) -> pb.WatchSessionResponse:
    change = pb.VariableChange(
        variable_id="v1", name="x", type="integer", version=version, position=position, kind=kind
    )
    if value is not None:
        change.value.CopyFrom(pb.Value(integer_value=value))
    message = pb.WatchSessionResponse()
    message.event.event.position = position
    message.event.event.type = "VariableUpdated"
    message.event.event.recorded_at.GetCurrentTime()
    message.event.changes.append(change)
    return message


def test_core_applies_updates_only_to_what_it_caches_and_never_caches_older_answers() -> None:
    core = ContextCore("s", {"cache_mode": "watch", "cache_ttl": 1.0}, clock=FakeClock())
    assert core.watch_due(5) and not core.watch_due(6)
    assert core.cache is not None

    core.apply_watch_message(_update(7, 2, 9, "updated"))  # x not cached: nothing filled
    assert core.cache.peek("x") is None
    core.remember_read(_variable(1, 4, 6), served_at=6)  # answered before position 7
    assert core.cache.peek("x") is None  # so it may be stale: not cached

    core.remember_read(_variable(2, 9, 7), served_at=7)
    core.apply_watch_message(_update(8, 3, 10, "updated"))
    assert core.cached("x", False) == (True, 10)
    core.apply_watch_message(_update(8, 3, 11, "updated"))  # seen already: ignored
    core.apply_watch_message(_update(9, 4, None, "deleted"))
    assert core.cached("x", False) == (False, None)
    assert core.stats()["watch_position"] == 9

    with pytest.raises(ValueError, match="cache_mode"):
        ContextCore("s", {"cache_mode": "push"})


def test_the_cache_watch_asks_for_several_events_a_message_and_applies_each() -> None:
    core = ContextCore("s", {"cache_mode": "watch", "cache_ttl": 1.0}, clock=FakeClock())
    assert core.watch_due(2) and core.cache is not None
    core.remember_read(_variable(1, 4, 2), served_at=2)
    run = Runner(cache_watch(core))
    assert isinstance(run.effect, Open)
    assert run.effect.request.max_events_per_message == MAX_EVENTS_PER_MESSAGE
    assert run.effect.request.from_position == 2
    run.send(None)

    several = pb.WatchSessionResponse()
    for update in (_update(3, 2, 5, "updated"), _update(4, 3, 6, "updated")):
        several.events.events.append(update.event)
    several.events.events.append(_update(5, 4, 7, "updated").event)
    run.send(several)

    assert run.effect is RECEIVE
    assert core.cached("x", False) == (True, 7)
    assert core.stats()["watch_position"] == 5
    run.fail(Unavailable("down"))  # resumes after the last event applied
    assert isinstance(run.effect, Sleep)
    run.send(None)
    assert isinstance(run.effect, Open) and run.effect.request.from_position == 5
