"""Every status a call can fail with reaches the caller as a ``VarstoreError`` subclass.

Each test runs for the sync and the asyncio context (ids ``[sync]`` and ``[async]``),
through real calls: varstore's server for a deadline, a closed port for UNAVAILABLE, and
for the codes varstore's server does not send yet, a small real gRPC server whose
handlers do what the request's session id says ("abort-INTERNAL" aborts with INTERNAL,
"cancel" cancels the call, "slow" answers late). The class a code becomes is the
catalogue's, read in reverse (:func:`varstore.types.errors.error_class_for`).
"""

from __future__ import annotations

import inspect
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import varstore.client
import varstore.types.errors
from varstore.api.server import RunningServer
from varstore.client import (
    AsyncSessionContext,
    Cancelled,
    DeadlineExceeded,
    SessionContext,
    Unavailable,
    VarstoreError,
    WatchProgress,
)
from varstore.types.errors import error_class_for
from varstore.v1 import varstore_pb2 as pb

#: Every code a call can fail with.
FAILURES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]

Context = SessionContext | AsyncSessionContext


async def settle(result: Any) -> Any:
    """What a sync call returned, or what an async one returns once awaited."""
    if inspect.isawaitable(result):
        return await result
    return result


def _session_of(data: bytes) -> str:
    # Every varstore request carries its session id as field 1.
    return pb.GetSessionRequest.FromString(data).session_id


def _misbehave(session_id: str, context: grpc.ServicerContext) -> None:
    if session_id == "cancel":
        context.cancel()
        return
    if session_id == "slow":
        time.sleep(2)
        context.abort(grpc.StatusCode.INTERNAL, "too late")
    code = grpc.StatusCode[session_id.removeprefix("abort-")]
    context.abort(code, f"told to fail with {code.name}")


def _unary(session_id: str, context: grpc.ServicerContext) -> bytes:
    _misbehave(session_id, context)
    return b""


def _stream(session_id: str, context: grpc.ServicerContext) -> Iterator[bytes]:
    _misbehave(session_id, context)
    yield b""


class _Misbehaving(grpc.GenericRpcHandler):
    """Serves every varstore method by failing as the request's session id says."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = str(details.method).rsplit("/", 1)[-1]
        if method == "WatchSession":
            return grpc.unary_stream_rpc_method_handler(_stream, _session_of)
        return grpc.unary_unary_rpc_method_handler(_unary, _session_of)


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    """The address of a real gRPC server that fails every call as told."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((_Misbehaving(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture(params=["sync", "async"])
async def opener(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Context]]:
    """Opens contexts of the flavour the test id names; closes their channels after."""
    closers: list[Callable[[], object]] = []

    def open_context(address: str, session_id: str, **config: Any) -> Context:
        config.setdefault("retry", False)  # how ONE failed call maps (retries: test_client_retry)
        if request.param == "sync":
            channel = grpc.insecure_channel(address)
            closers.append(channel.close)
            return SessionContext(session_id, channel, config)
        aio_channel = grpc.aio.insecure_channel(address)
        closers.append(aio_channel.close)
        return AsyncSessionContext(session_id, aio_channel, config)

    yield open_context
    for close in closers:
        await settle(close())


def closed_port_address() -> str:
    """``127.0.0.1:PORT`` where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


async def next_item(stream: Any) -> object:
    """The next item of a sync or an async watch stream."""
    if isinstance(stream, varstore.client.AsyncWatchStream):
        return await anext(stream)
    return next(stream)


def _assert_maps(error: BaseException, code: grpc.StatusCode) -> None:
    assert isinstance(error, VarstoreError)
    assert type(error) is error_class_for(code)
    assert isinstance(error.__cause__, grpc.RpcError)
    assert error.__cause__.code() is code


@pytest.mark.parametrize("code", FAILURES, ids=lambda code: code.name)
async def test_a_unary_call_failing_with_any_code_raises_its_varstore_error(
    opener: Callable[..., Context], misbehaving: str, code: grpc.StatusCode
) -> None:
    ctx = opener(misbehaving, f"abort-{code.name}")

    with pytest.raises(VarstoreError) as raised:
        await settle(ctx.set_variable("x", 1))

    _assert_maps(raised.value, code)


@pytest.mark.parametrize("code", FAILURES, ids=lambda code: code.name)
async def test_a_watch_failing_with_any_code_raises_its_varstore_error(
    opener: Callable[..., Context], misbehaving: str, code: grpc.StatusCode
) -> None:
    ctx = opener(misbehaving, f"abort-{code.name}", create_session=False)

    stream = ctx.watch()
    with pytest.raises(VarstoreError) as raised:
        await next_item(stream)
    stream.close()

    _assert_maps(raised.value, code)


async def test_a_call_the_server_cancels_raises_cancelled(
    opener: Callable[..., Context], misbehaving: str
) -> None:
    ctx = opener(misbehaving, "cancel")

    with pytest.raises(Cancelled):
        await settle(ctx.get_variable("x", default=None))


async def test_a_call_past_its_deadline_raises_deadline_exceeded(
    opener: Callable[..., Context], misbehaving: str
) -> None:
    ctx = opener(misbehaving, "slow", timeout=0.2)

    with pytest.raises(DeadlineExceeded):
        await settle(ctx.set_variable("x", 1))


async def test_a_watch_past_its_deadline_raises_deadline_exceeded(
    opener: Callable[..., Context], server: RunningServer, session_id: str
) -> None:
    ctx = opener(server.address, session_id)
    stream = ctx.watch(from_position=1, progress_interval=60, timeout=0.3)
    items: list[object] = []

    with pytest.raises(DeadlineExceeded):
        while True:
            items.append(await next_item(stream))

    assert all(isinstance(item, WatchProgress) for item in items)  # caught up, then idle


async def test_a_write_to_a_server_that_is_down_raises_unavailable(
    opener: Callable[..., Context],
) -> None:
    ctx = opener(closed_port_address(), "nowhere", timeout=5.0)

    with pytest.raises(Unavailable) as raised:
        await settle(ctx.set_variable("x", 1))

    _assert_maps(raised.value, grpc.StatusCode.UNAVAILABLE)


async def test_a_server_without_varstore_raises_varstore_error_for_unimplemented(
    opener: Callable[..., Context],
) -> None:
    bare = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    try:
        ctx = opener(f"127.0.0.1:{port}", "s")
        with pytest.raises(VarstoreError) as raised:
            await settle(ctx.get_variable("x"))
    finally:
        bare.stop(grace=None)

    _assert_maps(raised.value, grpc.StatusCode.UNIMPLEMENTED)


def test_every_error_class_of_the_catalogue_is_exported_from_varstore_client() -> None:
    classes = [
        getattr(varstore.types.errors, name)
        for name in varstore.types.errors.__all__
        if isinstance(getattr(varstore.types.errors, name), type)
    ]

    for error in classes:
        assert error.__name__ in varstore.client.__all__
        assert getattr(varstore.client, error.__name__) is error


def test_varstore_client_all_is_sorted_and_names_what_it_exports() -> None:
    names = varstore.client.__all__

    def order(name: str) -> tuple[int, str]:  # constants, then classes, then functions
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=order)
    assert all(hasattr(varstore.client, name) for name in names)
