"""The client's lists are whole however many pages the server answers in: sessions,
events and versions, for the sync and the asyncio context (ids ``[sync]`` and
``[async]``), against a real server. The paging loop is written once
(:func:`varstore.client._flow.every_page`); a write between two pages neither repeats nor
drops an item (the server pins the pages to where the log stood at the first)."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from varstore.api.server import RunningServer
from varstore.client import AsyncClient, AsyncSessionContext, Client, SessionContext
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

#: More than one page of the client's (1000 items) and of the server's default (100).
UPDATES = 1100
READ_EVENTS = "/varstore.v1.VariableStore/ReadEvents"

Context = SessionContext | AsyncSessionContext
_names = itertools.count(1)


async def settle(result: Any) -> Any:
    """What a sync call returned, or what an async one returns once awaited."""
    if inspect.isawaitable(result):
        return await result
    return result


def long_session(stub: pb_grpc.VariableStoreStub) -> str:
    """A new session whose variable ``x`` went through versions 0..UPDATES: events 1
    (created), 2 (registered) and 3..UPDATES+2 (one per update)."""
    session_id = f"long_{next(_names)}"
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id, name="x", type="integer", initial_value=pb.Value(integer_value=0)
        )
    )
    for value in range(1, UPDATES + 1):
        write(stub, session_id, value)
    return session_id


def write(stub: pb_grpc.VariableStoreStub, session_id: str, value: int) -> None:
    stub.SetVariable(
        pb.SetVariableRequest(
            session_id=session_id, variable_identifier="x", value=pb.Value(integer_value=value)
        )
    )


@pytest.fixture(scope="module")
def written(stub: pb_grpc.VariableStoreStub) -> str:
    """One long session, shared by the tests that only read it."""
    return long_session(stub)


def _method_of(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _AfterFirstPage(grpc.UnaryUnaryClientInterceptor):
    """Runs ``hook`` once, when the first ReadEvents page has arrived."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self.hooks = [hook]

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        outcome = continuation(details, request)
        if _method_of(details) == READ_EVENTS and self.hooks:
            outcome.result()
            self.hooks.pop()()
        return outcome


class _AsyncAfterFirstPage(grpc.aio.UnaryUnaryClientInterceptor):
    """:class:`_AfterFirstPage` for ``grpc.aio`` channels."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self.hooks = [hook]

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        call = await continuation(details, request)
        if _method_of(details) == READ_EVENTS and self.hooks:
            response = await call
            self.hooks.pop()()
            return response
        return call


@pytest.fixture(params=["sync", "async"])
async def opener(
    request: pytest.FixtureRequest, server: RunningServer
) -> AsyncIterator[Callable[..., Context]]:
    """Opens contexts of the flavour the test id names (``after_first_page`` runs once the
    first ReadEvents page is in); closes their channels after the test."""
    closers: list[Callable[[], object]] = []

    def open_context(
        session_id: str, after_first_page: Callable[[], None] | None = None
    ) -> Context:
        if request.param == "sync":
            channel = grpc.insecure_channel(server.address)
            closers.append(channel.close)
            if after_first_page is not None:
                channel = grpc.intercept_channel(channel, _AfterFirstPage(after_first_page))
            return SessionContext(session_id, channel)
        interceptors = [_AsyncAfterFirstPage(after_first_page)] if after_first_page else None
        aio_channel = grpc.aio.insecure_channel(server.address, interceptors=interceptors)
        closers.append(aio_channel.close)
        return AsyncSessionContext(session_id, aio_channel)

    yield open_context
    for close in closers:
        await settle(close())


@pytest.fixture(params=["sync", "async"])
async def client(
    request: pytest.FixtureRequest, server: RunningServer
) -> AsyncIterator[Client | AsyncClient]:
    """A client of the flavour the test id names."""
    made: Client | AsyncClient = (
        Client(server.address) if request.param == "sync" else AsyncClient(server.address)
    )
    yield made
    await settle(made.close())


def _positions(events: list[dict[str, Any]]) -> list[int]:
    return [event["position"] for event in events]


async def test_list_sessions_returns_every_session_however_many_pages_it_takes(
    client: Client | AsyncClient, stub: pb_grpc.VariableStoreStub
) -> None:
    prefix = f"many_{next(_names)}_"
    made = [f"{prefix}{number:03d}" for number in range(230)]
    for session_id in made:
        stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))

    ids = [session.id for session in await settle(client.list_sessions())]

    assert [i for i in ids if i.startswith(prefix)] == made
    assert ids == sorted(set(ids))


async def test_read_events_returns_the_whole_log_across_pages(
    opener: Callable[..., Context], written: str
) -> None:
    ctx = opener(written)
    last = UPDATES + 2

    assert _positions(await settle(ctx.read_events())) == list(range(1, last + 1))
    backwards = await settle(ctx.read_events(backwards=True))
    assert _positions(backwards) == list(range(last, 0, -1))
    assert _positions(await settle(ctx.read_events(limit=1050))) == list(range(1, 1051))
    assert _positions(await settle(ctx.read_events(5, 1010))) == list(range(5, 1011))


async def test_history_returns_every_version_across_pages(
    opener: Callable[..., Context], written: str
) -> None:
    ctx = opener(written)

    oldest_first = await settle(ctx.history("x"))
    newest_first = await settle(ctx.history("x", newest_first=True))

    assert [change.version for change in oldest_first] == list(range(UPDATES + 1))
    assert [change.version for change in newest_first] == list(range(UPDATES, -1, -1))
    assert [change.value for change in newest_first[:2]] == [UPDATES, UPDATES - 1]


async def test_a_write_between_two_pages_is_neither_repeated_nor_dropped(
    opener: Callable[..., Context], stub: pb_grpc.VariableStoreStub
) -> None:
    session_id = long_session(stub)
    ctx = opener(session_id, after_first_page=lambda: write(stub, session_id, -1))
    last = UPDATES + 2

    events = await settle(ctx.read_events())

    assert _positions(events) == list(range(1, last + 1))  # as the log stood at page one
    assert _positions(await settle(ctx.read_events(last))) == [last, last + 1]
