"""The Python client's cache, errors and config against a real in-process server.

One test per bug of the seed's ``SessionContext`` (stage 1, section 5), each docstring
saying what the seed did wrong. Every test that talks to the server runs twice, for the
sync ``SessionContext`` and the asyncio ``AsyncSessionContext`` (ids ``[sync]`` and
``[async]``), through one body: :func:`settle` awaits what the async context returns and
passes the sync context's answers through. The cache's clock is a :class:`FakeClock`, so
TTLs are crossed by advancing it, never by sleeping.
"""

from __future__ import annotations

import inspect
import itertools
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from varstore.api.server import RunningServer
from varstore.client import (
    AlreadyExists,
    AsyncSessionContext,
    LimitExceeded,
    SessionContext,
    SessionNotFound,
    Unavailable,
    ValidationError,
    VariableNotFound,
    VarstoreError,
    VersionConflict,
    aconnect,
    connect,
)
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

#: The cache TTL every context here is opened with, in fake seconds.
TTL = 10.0
GET_VARIABLE = "/varstore.v1.VariableStore/GetVariable"

Context = SessionContext | AsyncSessionContext
#: Runs once, after a GetVariable answer arrived and before the context sees it.
Hook = Callable[[], object]

_fresh_ids = itertools.count(1)


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def settle(result: Any) -> Any:
    """What a sync call returned, or what an async one returns once awaited."""
    if inspect.isawaitable(result):
        return await result
    return result


def _method_of(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _SyncHookAfterRead(grpc.UnaryUnaryClientInterceptor):
    """Runs the next hook once a GetVariable answer is in, before the caller gets it:
    a write the hook makes is acknowledged after the read was served but before the
    context can cache what it read (the race read-your-writes must survive)."""

    def __init__(self, hooks: list[Hook]) -> None:
        self.hooks = hooks

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        outcome = continuation(client_call_details, request)
        if _method_of(client_call_details) == GET_VARIABLE and self.hooks:
            outcome.result()  # the answer is in
            self.hooks.pop(0)()
        return outcome


class _AsyncHookAfterRead(grpc.aio.UnaryUnaryClientInterceptor):
    """:class:`_SyncHookAfterRead` for ``grpc.aio`` channels."""

    def __init__(self, hooks: list[Hook]) -> None:
        self.hooks = hooks

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        call = await continuation(client_call_details, request)
        if _method_of(client_call_details) == GET_VARIABLE and self.hooks:
            response = await call  # the answer is in
            await settle(self.hooks.pop(0)())
            return response
        return call


@dataclass
class Contexts:
    """Opens contexts of one flavour, each on its own channel, and closes the channels."""

    flavour: str
    address: str
    clock: FakeClock
    _closers: list[Callable[[], object]] = field(default_factory=list)

    def open(
        self,
        session_id: str,
        config: Mapping[str, Any] | None = None,
        *,
        address: str | None = None,
        hooks: list[Hook] | None = None,
    ) -> Context:
        """A context on ``session_id`` with a TTL of :data:`TTL` fake seconds unless
        ``config`` says otherwise; ``hooks`` run after GetVariable answers, one each."""
        settings = {"cache_ttl": TTL, **(config or {})}
        target = address or self.address
        if self.flavour == "sync":
            channel = grpc.insecure_channel(target)
            self._closers.append(channel.close)
            if hooks is not None:
                channel = grpc.intercept_channel(channel, _SyncHookAfterRead(hooks))
            return SessionContext(session_id, channel, settings, clock=self.clock)
        interceptors = [_AsyncHookAfterRead(hooks)] if hooks is not None else None
        aio_channel = grpc.aio.insecure_channel(target, interceptors=interceptors)
        self._closers.append(aio_channel.close)
        return AsyncSessionContext(session_id, aio_channel, settings, clock=self.clock)

    async def close(self) -> None:
        for close in self._closers:
            await settle(close())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sync", "async"])
async def contexts(
    request: pytest.FixtureRequest, server: RunningServer, clock: FakeClock
) -> AsyncIterator[Contexts]:
    """Contexts of the flavour named by the test id, on the module's in-process server."""
    made = Contexts(request.param, server.address, clock)
    yield made
    await made.close()


@pytest.fixture
def ctx(contexts: Contexts, session_id: str) -> Context:
    """A context on a new, empty session."""
    return contexts.open(session_id)


def unused_session_id() -> str:
    """A session id the server has never seen."""
    return f"fresh_{next(_fresh_ids)}"


def closed_port_address() -> str:
    """``127.0.0.1:PORT`` where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


def stats(context: Context) -> dict[str, Any]:
    return context.get_cache_stats()


def server_variable(
    stub: pb_grpc.VariableStoreStub, session_id: str, identifier: str
) -> pb.Variable:
    """The variable as the server has it, read past every client cache."""
    request = pb.GetVariableRequest(session_id=session_id, variable_identifier=identifier)
    return stub.GetVariable(request).variable


def external_set(
    stub: pb_grpc.VariableStoreStub, session_id: str, identifier: str, value: pb.Value
) -> None:
    """Another client's write, which this context's cache cannot know of."""
    stub.SetVariable(
        pb.SetVariableRequest(
            session_id=session_id, variable_identifier=identifier, value=value, source="other"
        )
    )


# -- the seed's bugs, one test each ------------------------------------------------------

FALSY = [
    pytest.param("integer", 0, id="zero"),
    pytest.param("float", 0.0, id="zero-float"),
    pytest.param("string", "", id="empty-string"),
    pytest.param("boolean", False, id="false"),
]


@pytest.mark.parametrize(("type_name", "falsy"), FALSY)
async def test_falsy_values_are_cached_and_served_as_hits(
    ctx: Context, type_name: str, falsy: object
) -> None:
    """The seed's cache said "miss" by returning None through the same channel as the
    values it held, and told hits from misses by looking at the value served. Here a
    falsy value read twice is a miss then a hit, with its own type (False, not 0)."""
    await settle(ctx.register_variable("v", type_name, falsy))

    first = await settle(ctx.get_variable("v"))
    second = await settle(ctx.get_variable("v"))

    assert (first, type(first)) == (falsy, type(falsy))
    assert (second, type(second)) == (falsy, type(falsy))
    assert (stats(ctx)["misses"], stats(ctx)["hits"]) == (1, 1)
    assert await settle(ctx.get_variables(["v"])) == {"v": falsy}
    assert stats(ctx)["hits"] == 2


async def test_a_falsy_value_written_is_served_from_the_cache(ctx: Context) -> None:
    """The same for a value this context wrote: setting 5 to 0 caches the 0."""
    await settle(ctx.register_variable("n", "integer", 5))
    await settle(ctx.set_variable("n", 0))

    assert await settle(ctx.get_variable("n")) == 0
    assert (stats(ctx)["hits"], stats(ctx)["misses"]) == (1, 0)


async def test_get_variable_returns_a_default_of_none_for_a_missing_variable(
    ctx: Context,
) -> None:
    """The seed returned the default only ``if default is not None``, so asking for
    ``default=None`` raised KeyError; a sentinel now tells "no default" apart from None."""
    assert await settle(ctx.get_variable("missing", default=None)) is None
    assert await settle(ctx.get_variable("missing", default=0)) == 0
    assert await settle(ctx.get_variables(["missing"], defaults={"missing": None})) == {
        "missing": None
    }


async def test_get_variable_without_a_default_raises_variable_not_found(ctx: Context) -> None:
    """VariableNotFound is also a KeyError, which is what the seed's tests catch."""
    with pytest.raises(VariableNotFound) as raised:
        await settle(ctx.get_variable("missing"))
    assert isinstance(raised.value, KeyError)


async def test_get_variable_raises_unavailable_even_with_a_default_when_the_server_is_down(
    contexts: Contexts,
) -> None:
    """The seed turned every failed read into the default or KeyError, so a server that
    was down looked like a missing variable. Only NOT_FOUND becomes the default."""
    ctx = contexts.open(
        unused_session_id(), {"timeout": 5.0, "retry_deadline": 0.5}, address=closed_port_address()
    )

    with pytest.raises(Unavailable):
        await settle(ctx.get_variable("x", default=1))
    with pytest.raises(Unavailable):
        await settle(ctx.get_variables(["x"], defaults={"x": 1}))


async def test_get_variable_raises_validation_error_even_with_a_default_for_bad_input(
    contexts: Contexts,
) -> None:
    """Bad input is not a missing variable either: a session id the server refuses
    raises ValidationError (a ValueError), not the default."""
    ctx = contexts.open("not a valid id!")

    with pytest.raises(ValidationError, match="session id"):
        await settle(ctx.get_variable("x", default=1))


async def test_a_variable_is_one_cache_entry_whether_read_by_name_or_by_id(
    ctx: Context,
) -> None:
    """The seed cached a read under the name AND the id as two keys: ``size`` counted
    keys, and a read by id after a read by name missed. One variable is one entry."""
    variable_id = await settle(ctx.register_variable("x", "integer", 1))

    await settle(ctx.get_variable("x"))
    assert await settle(ctx.get_variable(variable_id)) == 1
    assert await settle(ctx.get_variables(["x", variable_id])) == {"x": 1, variable_id: 1}

    assert stats(ctx)["size"] == 1
    assert (stats(ctx)["misses"], stats(ctx)["hits"]) == (1, 3)


async def test_writing_by_name_never_leaves_a_stale_value_under_the_id(ctx: Context) -> None:
    """The seed's set_variable cached the new value under the key it was given only, so
    after a write by name a read by id served the old value until the TTL ran out."""
    variable_id = await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.get_variable(variable_id))

    await settle(ctx.set_variable("x", 2))
    assert await settle(ctx.get_variable(variable_id)) == 2
    await settle(ctx.update_variables({"x": 3}))
    assert await settle(ctx.get_variable(variable_id)) == 3
    assert stats(ctx)["size"] == 1


async def test_writing_by_id_never_leaves_a_stale_value_under_the_name(ctx: Context) -> None:
    """The reverse: a write by id must not leave the old value under the name."""
    variable_id = await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.get_variable("x"))

    await settle(ctx.set_variable(variable_id, 2))
    assert await settle(ctx.get_variable("x")) == 2
    await settle(ctx.update_variables({variable_id: 3}, atomic=False))
    assert await settle(ctx.get_variable("x")) == 3
    assert stats(ctx)["size"] == 1


async def test_registering_does_not_fill_the_cache_or_move_its_stats(ctx: Context) -> None:
    """The seed's register_variable cached the initial value under the name and the id
    (two ``sets``, ``size`` 2), so the first read was a hit, while the seed's own
    test_cache_behavior expects it to be a miss."""
    await settle(ctx.register_variable("x", "integer", 42))

    after_register = stats(ctx)
    assert (after_register["size"], after_register["sets"]) == (0, 0)
    assert (after_register["hits"], after_register["misses"]) == (0, 0)
    assert await settle(ctx.get_variable("x")) == 42
    assert (stats(ctx)["misses"], stats(ctx)["hits"]) == (1, 0)


async def test_a_rejected_write_never_touches_the_cache(
    ctx: Context, stub: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    """A write the server refuses (a broken constraint, a stale expected version) leaves
    the cached entry and the ``sets`` count as they were."""
    await settle(ctx.register_variable("x", "integer", 50, constraints={"min": 0, "max": 100}))
    await settle(ctx.get_variable("x"))
    before = stats(ctx)

    with pytest.raises(ValidationError):
        await settle(ctx.set_variable("x", 150))
    with pytest.raises(VersionConflict):
        await settle(ctx.set_variable("x", 60, expected_version=7))

    assert await settle(ctx.get_variable("x")) == 50
    assert stats(ctx)["sets"] == before["sets"]
    assert server_variable(stub, session_id, "x").value.integer_value == 50


async def test_a_refused_atomic_batch_caches_nothing(ctx: Context) -> None:
    """When an atomic batch was refused, the seed cached every update the server's
    ``errors`` did not name as if it had been written, although nothing was."""
    await settle(ctx.register_variable("x", "integer", 1, constraints={"max": 10}))
    await settle(ctx.register_variable("y", "integer", 2))
    await settle(ctx.get_variables(["x", "y"]))

    with pytest.raises(ValidationError):
        await settle(ctx.update_variables({"x": 11, "y": 3}))

    assert await settle(ctx.get_variables(["x", "y"])) == {"x": 1, "y": 2}
    assert await settle(ctx.get_variables(["x", "y"], bypass_cache=True)) == {"x": 1, "y": 2}


async def test_a_partly_failed_batch_caches_only_what_succeeded(
    ctx: Context, stub: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    """A non-atomic batch reports per variable; only the accepted values are cached (as
    the server stored them: 3 for a float variable is 3.0), the refused one keeps its
    cached value."""
    await settle(ctx.register_variable("x", "integer", 1, constraints={"max": 10}))
    await settle(ctx.register_variable("f", "float", 0.5))
    await settle(ctx.get_variables(["x", "f"]))

    results = await settle(ctx.update_variables({"x": 11, "f": 3}, atomic=False))

    assert results["f"] is True
    assert "above maximum 10" in results["x"]
    cached = await settle(ctx.get_variables(["x", "f"]))
    assert cached == {"x": 1, "f": 3.0}
    assert isinstance(cached["f"], float)
    assert stats(ctx)["misses"] == 2  # both answers above came from the cache
    assert server_variable(stub, session_id, "f").value.float_value == 3.0


async def test_a_read_after_this_clients_own_write_returns_that_write(
    ctx: Context, stub: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    """Read-your-writes: the seed cached what was sent, not what the server stored, and
    a cached read could stay older than the client's own write. After this client
    writes, an immediate cached read returns that write, even when another client wrote
    in between."""
    await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.get_variable("x"))
    external_set(stub, session_id, "x", pb.Value(integer_value=5))

    assert await settle(ctx.get_variable("x")) == 1  # stale, but within the TTL: allowed
    await settle(ctx.set_variable("x", 7))
    assert await settle(ctx.get_variable("x")) == 7
    await settle(ctx.update_variables({"x": 9}))
    assert await settle(ctx.get_variable("x")) == 9
    await settle(ctx.update_variables({"x": 11}, atomic=False))
    assert await settle(ctx.get_variable("x")) == 11
    assert stats(ctx)["misses"] == 1


async def test_a_read_answered_before_this_clients_own_delete_is_not_cached(
    contexts: Contexts, session_id: str
) -> None:
    """A read served at position p whose answer arrives after this client's delete at
    p + 1 must not be cached: no version tells that it is older than the delete, only
    the session position in the response header does."""
    hooks: list[Hook] = []
    ctx = contexts.open(session_id, hooks=hooks)
    await settle(ctx.register_variable("x", "integer", 1))
    hooks.append(lambda: ctx.delete_variable("x"))

    assert await settle(ctx.get_variable("x")) == 1  # served before the delete

    assert not hooks, "the delete ran while the read was in flight"
    assert await settle(ctx.get_variable("x", default=None)) is None
    assert stats(ctx)["size"] == 0


async def test_a_read_answered_before_this_clients_own_write_is_not_cached(
    contexts: Contexts, session_id: str
) -> None:
    """The same race with a set: the late answer (version 0) never replaces the value
    this client wrote meanwhile (version 1)."""
    hooks: list[Hook] = []
    ctx = contexts.open(session_id, hooks=hooks)
    await settle(ctx.register_variable("x", "integer", 1))
    hooks.append(lambda: ctx.set_variable("x", 2))

    assert await settle(ctx.get_variable("x")) == 1

    assert not hooks
    assert await settle(ctx.get_variable("x")) == 2
    assert stats(ctx)["hits"] == 1


# -- the TTL and the config keys ---------------------------------------------------------


async def test_get_variable_serves_the_cache_until_the_ttl_expires(
    ctx: Context, clock: FakeClock, stub: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    """Within ``cache_ttl`` the cached value is served (another client's write is not
    seen); at the TTL it is not, and the server's value is read."""
    await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.get_variable("x"))
    external_set(stub, session_id, "x", pb.Value(integer_value=2))

    clock.advance(TTL - 0.001)
    assert await settle(ctx.get_variable("x")) == 1
    clock.advance(0.001)
    assert await settle(ctx.get_variable("x")) == 2
    cache = stats(ctx)
    assert (cache["hits"], cache["misses"], cache["evictions"]) == (1, 2, 1)


async def test_bypass_cache_reads_the_server_and_counts_as_a_miss(
    ctx: Context, stub: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.get_variable("x"))
    external_set(stub, session_id, "x", pb.Value(integer_value=2))

    assert await settle(ctx.get_variable("x", bypass_cache=True)) == 2
    assert await settle(ctx.get_variables(["x"], bypass_cache=True)) == {"x": 2}
    assert (stats(ctx)["misses"], stats(ctx)["hits"]) == (3, 0)


async def test_enable_caching_false_sends_every_read_to_the_server(
    contexts: Contexts, session_id: str, stub: pb_grpc.VariableStoreStub
) -> None:
    ctx = contexts.open(session_id, {"enable_caching": False})
    await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.get_variable("x"))
    external_set(stub, session_id, "x", pb.Value(integer_value=2))

    assert await settle(ctx.get_variable("x")) == 2
    assert stats(ctx) == {"enabled": False}


async def test_max_size_evicts_the_least_recently_used_and_counts_evictions(
    contexts: Contexts, session_id: str
) -> None:
    ctx = contexts.open(session_id, {"max_size": 2})
    for name in ("a", "b", "c"):
        await settle(ctx.register_variable(name, "integer", 0))
    await settle(ctx.get_variable("a"))
    await settle(ctx.get_variable("b"))
    await settle(ctx.get_variable("a"))  # b is now the least recently used

    await settle(ctx.get_variable("c"))

    cache = stats(ctx)
    assert (cache["size"], cache["evictions"], cache["max_size"]) == (2, 1, 2)
    await settle(ctx.get_variable("a"))
    assert stats(ctx)["hits"] == 2
    await settle(ctx.get_variable("b"))
    assert stats(ctx)["misses"] == 4


async def test_set_cache_config_changes_the_ttl_the_size_and_whether_caching_is_on(
    ctx: Context, clock: FakeClock
) -> None:
    for name in ("a", "b"):
        await settle(ctx.register_variable(name, "integer", 0))
    await settle(ctx.get_variables(["a", "b"]))

    ctx.set_cache_config(ttl=1.0)  # applies to entries already stored
    clock.advance(1.0)
    await settle(ctx.get_variables(["a", "b"]))
    assert stats(ctx)["hits"] == 0

    ctx.set_cache_config(max_size=1)
    assert (stats(ctx)["size"], stats(ctx)["max_size"]) == (1, 1)

    ctx.set_cache_config(enabled=False)
    assert stats(ctx) == {"enabled": False}
    ctx.set_cache_config(enabled=True)
    fresh = stats(ctx)
    assert (fresh["enabled"], fresh["size"], fresh["ttl"], fresh["max_size"]) == (True, 0, 1.0, 1)


async def test_invalidate_cache_forgets_one_variable_by_name_or_id_or_all_of_them(
    ctx: Context,
) -> None:
    a_id = await settle(ctx.register_variable("a", "integer", 0))
    await settle(ctx.register_variable("b", "integer", 0))
    await settle(ctx.get_variables(["a", "b"]))

    ctx.invalidate_cache(a_id)
    assert stats(ctx)["size"] == 1
    await settle(ctx.get_variable("a"))  # a miss: the name went with the id
    assert stats(ctx)["misses"] == 3

    ctx.invalidate_cache("b")
    ctx.invalidate_cache()
    assert stats(ctx)["size"] == 0
    assert stats(ctx)["evictions"] == 0  # forgetting on purpose is not an eviction


async def test_delete_variable_forgets_the_variable_by_name_and_by_id(ctx: Context) -> None:
    variable_id = await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.get_variable("x"))

    await settle(ctx.delete_variable(variable_id))

    assert await settle(ctx.get_variable("x", default=None)) is None
    assert await settle(ctx.get_variable(variable_id, default=None)) is None
    assert stats(ctx)["size"] == 0


async def test_an_unknown_config_key_is_refused(contexts: Contexts) -> None:
    with pytest.raises(ValueError, match="cache_tll"):
        contexts.open(unused_session_id(), {"cache_tll": 1.0})


# -- sessions ------------------------------------------------------------------------------


async def test_a_session_that_does_not_exist_is_created_on_first_use(
    contexts: Contexts, stub: pb_grpc.VariableStoreStub
) -> None:
    """The config's ``metadata`` goes with the session the context creates."""
    session_id = unused_session_id()
    ctx = contexts.open(session_id, {"metadata": {"owner": "tests"}})

    assert await settle(ctx.get_variable("x", default="none yet")) == "none yet"
    await settle(ctx.register_variable("x", "integer", 3))

    session = stub.GetSession(pb.GetSessionRequest(session_id=session_id)).session
    assert (session.variable_count, dict(session.metadata)) == (1, {"owner": "tests"})


async def test_a_deleted_session_raises_session_not_found_instead_of_being_recreated(
    ctx: Context, stub: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    """Once the context has used its session, losing it is an error, even for a read
    with a default: a recreated, empty session would hide the loss."""
    await settle(ctx.register_variable("x", "integer", 1))
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id))

    with pytest.raises(SessionNotFound):
        await settle(ctx.get_variable("x", default=0, bypass_cache=True))
    with pytest.raises(SessionNotFound):
        await settle(ctx.set_variable("x", 2))
    with pytest.raises(grpc.RpcError) as lookup:
        stub.GetSession(pb.GetSessionRequest(session_id=session_id))
    assert lookup.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("config", "source"),
    [pytest.param({}, "python", id="default"), pytest.param({"source": "tuner"}, "tuner")],
)
async def test_writes_are_marked_with_the_contexts_source(
    contexts: Contexts,
    session_id: str,
    stub: pb_grpc.VariableStoreStub,
    config: dict[str, Any],
    source: str,
) -> None:
    ctx = contexts.open(session_id, config)
    await settle(ctx.register_variable("r", "integer", 1))
    await settle(ctx.register_variable("s", "integer", 1))
    await settle(ctx.register_variable("b", "integer", 1))
    for name in ("s", "b"):
        external_set(stub, session_id, name, pb.Value(integer_value=0))

    await settle(ctx.set_variable("s", 2))
    await settle(ctx.update_variables({"b": 2}))

    assert ctx.source == source
    for name in ("r", "s", "b"):
        assert server_variable(stub, session_id, name).source == source, name


async def test_connect_creates_lists_and_deletes_sessions(
    contexts: Contexts, stub: pb_grpc.VariableStoreStub
) -> None:
    """``connect()`` (sync) and ``aconnect()`` (asyncio) own their channel."""
    opened = connect if contexts.flavour == "sync" else aconnect
    client = opened(contexts.address, {"cache_ttl": TTL})
    try:
        session_id = unused_session_id()
        ctx = await settle(client.create_session(session_id, metadata={"k": "v"}))
        await settle(ctx.register_variable("x", "integer", 1))
        assert await settle(ctx.get_variable("x")) == 1

        listed = {info.id: info for info in await settle(client.list_sessions())}
        assert (listed[session_id].variable_count, listed[session_id].metadata) == (1, {"k": "v"})
        with pytest.raises(AlreadyExists):
            await settle(client.create_session(session_id))

        await settle(client.delete_session(session_id))
        assert session_id not in {info.id for info in await settle(client.list_sessions())}
        with pytest.raises(SessionNotFound):
            await settle(client.get_session(session_id))
        with pytest.raises(SessionNotFound):
            await settle(ctx.get_variable("x", bypass_cache=True))
    finally:
        await settle(client.close())


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        pytest.param(VariableNotFound, (KeyError,), id="VariableNotFound"),
        pytest.param(SessionNotFound, (KeyError,), id="SessionNotFound"),
        pytest.param(ValidationError, (ValueError,), id="ValidationError"),
        pytest.param(VersionConflict, (), id="VersionConflict"),
        pytest.param(AlreadyExists, (), id="AlreadyExists"),
        pytest.param(LimitExceeded, (), id="LimitExceeded"),
        pytest.param(Unavailable, (), id="Unavailable"),
    ],
)
def test_errors_are_importable_from_varstore_client_under_varstore_error(
    error: type[VarstoreError], bases: tuple[type[Exception], ...]
) -> None:
    import varstore.client

    assert getattr(varstore.client, error.__name__) is error
    assert error.__name__ in varstore.client.__all__
    assert issubclass(error, VarstoreError)
    for base in bases:
        assert issubclass(error, base)


async def test_set_variable_raises_validation_error_with_the_servers_message(
    ctx: Context,
) -> None:
    await settle(ctx.register_variable("x", "integer", 50, constraints={"min": 0, "max": 100}))

    with pytest.raises(ValidationError, match="value 150 is above maximum 100"):
        await settle(ctx.set_variable("x", 150))
    with pytest.raises(ValidationError, match="expected an integer"):
        await settle(ctx.set_variable("x", "fifty"))
    with pytest.raises(ValueError, match="not a finite number"):
        await settle(ctx.set_variable("x", float("nan")))


async def test_a_stale_expected_version_of_zero_raises_version_conflict(ctx: Context) -> None:
    """The seed sent ``expected_version or 0``; proto3 reads 0 as "not set", so a
    compare-and-set on version 0 was never checked. The conflict carries both versions."""
    await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.set_variable("x", 2))

    with pytest.raises(VersionConflict) as raised:
        await settle(ctx.set_variable("x", 3, expected_version=0))

    assert (raised.value.expected, raised.value.current) == (0, 1)
    assert await settle(ctx.set_variable("x", 3, expected_version=1)) == 2


async def test_a_refused_atomic_batch_raises_validation_error_with_per_variable_violations(
    ctx: Context,
) -> None:
    await settle(ctx.register_variable("x", "integer", 1, constraints={"max": 10}))
    await settle(ctx.register_variable("s", "string", "", constraints={"max_length": 3}))
    await settle(ctx.register_variable("ok", "integer", 1))

    with pytest.raises(ValidationError) as raised:
        await settle(ctx.update_variables({"x": 11, "s": "toolong", "ok": 2}))

    assert set(raised.value.violations) == {"x", "s"}
    assert "value 11 is above maximum 10" in raised.value.violations["x"]
    assert "above maximum length 3" in raised.value.violations["s"]


async def test_registering_a_name_twice_raises_already_exists(ctx: Context) -> None:
    await settle(ctx.register_variable("x", "integer", 1))

    with pytest.raises(AlreadyExists):
        await settle(ctx.register_variable("x", "string", "again"))


async def test_too_much_metadata_raises_limit_exceeded(ctx: Context, server: RunningServer) -> None:
    await settle(ctx.register_variable("x", "integer", 1))
    too_many = {f"k{i}": "v" for i in range(server.store.limits.max_metadata_entries + 1)}

    with pytest.raises(LimitExceeded):
        await settle(ctx.set_variable("x", 2, metadata=too_many))


# -- client bugs found while writing these tests, now fixed ---------------------------------


async def test_a_batch_write_by_name_is_read_back_after_another_client_re_registered_it(
    contexts: Contexts, session_id: str
) -> None:
    ctx = contexts.open(session_id)
    other = contexts.open(session_id, {"enable_caching": False})
    await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.set_variable("x", 2))
    await settle(ctx.set_variable("x", 3))  # cached at version 2
    await settle(other.delete_variable("x"))
    await settle(other.register_variable("x", "integer", 0))

    await settle(ctx.update_variables({"x": 77}))  # the new x is now at version 1

    assert await settle(ctx.get_variable("x")) == 77


async def test_a_variable_this_client_registers_is_read_back_after_another_client_deleted_it(
    contexts: Contexts, session_id: str
) -> None:
    ctx = contexts.open(session_id)
    other = contexts.open(session_id, {"enable_caching": False})
    await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.get_variable("x"))
    await settle(other.delete_variable("x"))

    await settle(ctx.register_variable("x", "integer", 2))

    assert await settle(ctx.get_variable("x")) == 2


async def test_an_identifier_that_became_an_id_is_read_as_that_id(contexts: Contexts) -> None:
    ctx = contexts.open(unused_session_id())
    await settle(ctx.get_variable("nothing", default=None))  # creates the session: position 1
    await settle(ctx.register_variable("var_c_3", "string", "named var_c_3"))  # position 2
    await settle(ctx.get_variable("var_c_3"))
    assert await settle(ctx.register_variable("c", "string", "c")) == "var_c_3"  # position 3

    assert await settle(ctx.get_variable("var_c_3")) == "c"


async def test_a_session_used_only_by_reads_that_found_nothing_is_not_recreated(
    contexts: Contexts, session_id: str, stub: pb_grpc.VariableStoreStub
) -> None:
    ctx = contexts.open(session_id)
    assert await settle(ctx.get_variable("x", default=0)) == 0  # the session was there
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id))

    with pytest.raises(SessionNotFound):
        await settle(ctx.get_variable("x", default=0))


# -- another client re-registering a name under this context's cache ----------------------
#
# All three need another client to delete a name and register it again while this
# context holds the old variable in its cache. SetVariables and DeleteVariable answer
# with the variables they changed, so the context caches (or forgets) the right one.


async def _old_x_cached_then_replaced_by_another_client(
    contexts: Contexts, session_id: str, new_type: str
) -> tuple[Context, str, str]:
    """This context caches ``x`` (a float at version 0); another client deletes it and
    registers ``x`` again as ``new_type``. Returns the context, the old and the new id."""
    ctx = contexts.open(session_id)
    other = contexts.open(session_id, {"enable_caching": False})
    old_id = await settle(ctx.register_variable("x", "float", 0.5))
    await settle(ctx.get_variable(old_id))
    await settle(other.delete_variable("x"))
    new_id = await settle(other.register_variable("x", new_type, 0))
    return ctx, old_id, new_id


async def test_a_batch_write_after_another_client_re_registered_the_name_is_read_back_as_written(
    contexts: Contexts, session_id: str
) -> None:
    ctx, old_id, _ = await _old_x_cached_then_replaced_by_another_client(
        contexts, session_id, "integer"
    )

    await settle(ctx.update_variables({"x": 3}))

    answer = await settle(ctx.get_variable("x"))
    assert (answer, type(answer)) == (3, int)
    assert await settle(ctx.get_variable(old_id, default=None)) is None


async def test_a_batch_write_by_id_after_another_client_re_registered_the_name_is_read_back(
    contexts: Contexts, session_id: str
) -> None:
    ctx, _, new_id = await _old_x_cached_then_replaced_by_another_client(
        contexts, session_id, "float"
    )

    await settle(ctx.update_variables({new_id: 0.25}))

    assert await settle(ctx.get_variable("x")) == 0.25


async def test_a_delete_by_id_after_another_client_re_registered_the_name_is_read_back(
    contexts: Contexts, session_id: str
) -> None:
    ctx, _, new_id = await _old_x_cached_then_replaced_by_another_client(
        contexts, session_id, "float"
    )

    await settle(ctx.delete_variable(new_id))

    assert await settle(ctx.get_variable("x", default=None)) is None
