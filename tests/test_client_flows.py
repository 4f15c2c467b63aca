"""The client's flows, stepped by hand: each operation is written once as a generator that
yields effects, and these tests play the driver, answering each effect as a server would
(or failing it), so the decisions (creating a session, following pages, reconnecting a
watch) are pinned without timing. The real drivers run the same flows against real
servers in the other ``test_client_*`` modules; here the sync and asyncio classes are
also checked to offer the same methods."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from varstore.client import (
    AsyncClient,
    AsyncSessionContext,
    AsyncSessionView,
    AsyncWatchStream,
    Client,
    SessionContext,
    SessionNotFound,
    SessionView,
    Unavailable,
    WatchProgress,
    WatchStream,
)
from varstore.client._core import ContextCore
from varstore.client._effects import END, RECEIVE, Call, ChannelClosed, Emit, Open, Sleep
from varstore.client._flow import Runner, every_page
from varstore.client._watch import WatchPosition, cache_watch, watch_flow
from varstore.types import OutOfRange
from varstore.v1 import varstore_pb2 as pb


def _page(names: list[str], token: str) -> pb.ListSessionsResponse:
    return pb.ListSessionsResponse(
        sessions=[pb.Session(id=name) for name in names], next_page_token=token
    )


def _progress(position: int) -> pb.WatchSessionResponse:
    return pb.WatchSessionResponse(progress=pb.WatchProgress(position=position))


def test_every_page_follows_the_tokens_until_the_last_page() -> None:
    call = Call("ListSessions", pb.ListSessionsRequest(), 1.0)
    run = Runner(every_page(call, lambda page: page.sessions))

    tokens = []
    for names, token in [(["a", "b"], "t1"), (["c"], "t2"), (["d"], "")]:
        assert run.effect is call
        tokens.append(call.request.page_token)
        run.send(_page(names, token))

    assert run.done
    assert [session.id for session in run.result] == ["a", "b", "c", "d"]
    assert tokens == ["", "t1", "t2"]


def test_every_page_stops_asking_once_it_has_the_limit_and_cuts_the_last_page() -> None:
    call = Call("ListSessions", pb.ListSessionsRequest(), 1.0)
    run = Runner(every_page(call, lambda page: page.sessions, limit=3))

    run.send(_page(["a", "b"], "t1"))
    run.send(_page(["c", "d"], "t2"))

    assert run.done
    assert [session.id for session in run.result] == ["a", "b", "c"]


def test_a_flow_that_raises_ends_its_run() -> None:
    call = Call("ListSessions", pb.ListSessionsRequest(), 1.0)
    run = Runner(every_page(call, lambda page: page.sessions))

    with pytest.raises(Unavailable):
        run.fail(Unavailable("down"))

    assert run.done


def _created_flow(log: list[str]) -> Any:
    def create() -> Any:
        log.append("created")
        yield Call("CreateSession", pb.CreateSessionRequest(session_id="s"), 1.0)

    return create


def test_a_watch_creates_a_session_the_server_does_not_know_once_and_opens_again() -> None:
    log: list[str] = []
    seen = WatchPosition(0)
    run = Runner(watch_flow(pb.WatchSessionRequest(), None, seen, _created_flow(log)))

    assert isinstance(run.effect, Open)
    run.send(None)
    assert run.effect is RECEIVE
    run.fail(SessionNotFound("no session"))
    assert log == ["created"] and isinstance(run.effect, Call)
    run.send(pb.CreateSessionResponse())
    assert isinstance(run.effect, Open)
    run.send(None)
    run.send(_progress(4))

    assert isinstance(run.effect, Emit) and run.effect.item == WatchProgress(position=4)
    run.send(None)  # handed out
    assert seen.position == 4


def test_a_watch_raises_session_not_found_after_an_item_arrived() -> None:
    log: list[str] = []
    run = Runner(watch_flow(pb.WatchSessionRequest(), None, WatchPosition(0), _created_flow(log)))
    run.send(None)  # opened
    run.send(_progress(1))
    run.send(None)  # emitted

    with pytest.raises(SessionNotFound):
        run.fail(SessionNotFound("deleted meanwhile"))

    assert log == [] and run.done


def test_a_watch_ends_when_the_server_ends_the_stream() -> None:
    run = Runner(watch_flow(pb.WatchSessionRequest(), None, WatchPosition(0), None))
    run.send(None)
    run.send(END)

    assert run.done


def test_the_cache_watch_reconnects_with_backoff_from_the_last_position_applied() -> None:
    core = ContextCore("s", {"cache_mode": "watch"})
    assert core.watch_due(2)
    run = Runner(cache_watch(core))

    pauses = []
    for attempt in range(3):
        assert isinstance(run.effect, Open)
        assert run.effect.request.from_position == 2 + attempt
        run.send(None)
        run.send(_progress(3 + attempt))  # applied: the next watch resumes after it
        assert core.watch.connected
        run.fail(Unavailable("gone"))
        assert isinstance(run.effect, Sleep) and not core.watch.connected
        pauses.append(run.effect.seconds)
        run.send(None)

    assert pauses == [core.watch_backoff(0)] * 3  # each watch got a message: no backoff
    assert core.stats()["watch_reconnects"] == 3


def test_the_cache_watch_backs_off_longer_after_failures_in_a_row() -> None:
    core = ContextCore("s", {"cache_mode": "watch"})
    run = Runner(cache_watch(core))

    pauses = []
    for _ in range(3):
        run.fail(Unavailable("down"))  # opening fails
        assert isinstance(run.effect, Sleep)
        pauses.append(run.effect.seconds)
        run.send(None)

    assert pauses == [core.watch_backoff(0), core.watch_backoff(1), core.watch_backoff(2)]
    assert pauses[0] < pauses[1] < pauses[2]


def test_the_cache_watch_starts_over_when_its_position_is_out_of_range() -> None:
    core = ContextCore("s", {"cache_mode": "watch"})
    assert core.watch_due(7)
    run = Runner(cache_watch(core))
    run.send(None)
    run.fail(OutOfRange("beyond the log"))
    run.send(None)  # the pause

    assert isinstance(run.effect, Open) and run.effect.request.from_position == 0


def test_the_cache_watch_ends_when_its_channel_is_closed() -> None:
    core = ContextCore("s", {"cache_mode": "watch"})
    run = Runner(cache_watch(core))
    run.send(None)
    run.fail(ChannelClosed("closed"))

    assert run.done and not core.watch.connected


PAIRS = [
    pytest.param(SessionContext, AsyncSessionContext, id="context"),
    pytest.param(SessionView, AsyncSessionView, id="view"),
    pytest.param(Client, AsyncClient, id="client"),
    pytest.param(WatchStream, AsyncWatchStream, id="watch-stream"),
]


def _public(cls: type) -> dict[str, Any]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize(("sync", "asyncio"), PAIRS)
def test_the_asyncio_class_offers_the_sync_classs_methods_with_the_same_signatures(
    sync: type, asyncio: type
) -> None:
    sync_members, async_members = _public(sync), _public(asyncio)
    assert set(async_members) - {"aclose"} == set(sync_members)
    for name, member in sync_members.items():
        if callable(member):
            assert inspect.signature(member) == inspect.signature(async_members[name]), name


@pytest.mark.parametrize(("sync", "asyncio"), PAIRS)
def test_what_the_asyncio_class_does_not_await_is_the_sync_classs_own_code(
    sync: type, asyncio: type
) -> None:
    sync_members = _public(sync)
    for name, member in _public(asyncio).items():
        if name != "aclose" and not inspect.iscoroutinefunction(member):
            assert member is sync_members[name], name


def test_an_operation_is_a_plain_function_of_each_class() -> None:
    register = SessionContext.__dict__["register_variable"]
    aregister = AsyncSessionContext.__dict__["register_variable"]

    assert inspect.isfunction(register) and not inspect.iscoroutinefunction(register)
    assert inspect.iscoroutinefunction(aregister)
    assert str(inspect.signature(register)).endswith("-> 'str'")
    assert SessionContext.close is SessionContext.cleanup
