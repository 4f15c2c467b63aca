"""The asyncio client: :class:`AsyncSessionContext`, :class:`AsyncSessionView`,
:class:`AsyncWatchStream`, :class:`AsyncClient` and :func:`aconnect`, on ``grpc.aio``.

The operations are the sync client's flows, unchanged; this module awaits the effects
they ask for (blocking ones, such as a transfer's file work, in a worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, Self, TypeVar

import grpc

from varstore.client import _effects as effects
from varstore.client._channels import (
    Address,
    ChannelSecurity,
    Pem,
    address_text,
    open_aio_channel,
    open_channel,
)
from varstore.client._client import ClientOps
from varstore.client._core import MISSING
from varstore.client._flow import Async, Flow, Runner
from varstore.client._session import SessionOps, ViewOps
from varstore.client._watch import WatchItem, WatchPosition, WatchStreamBase
from varstore.types import VarstoreError
from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = [
    "AsyncClient",
    "AsyncSessionContext",
    "AsyncSessionView",
    "AsyncWatchStream",
    "aconnect",
]

T = TypeVar("T")
_CLOSED = (ValueError, grpc.aio.UsageError)


class _Line:
    """The server stream one run has open (all on the event loop's thread)."""

    def __init__(self) -> None:
        self.stopped = False
        self._call: Any = None

    def open(self, stub: pb_grpc.VariableStoreStub, effect: effects.Open) -> None:
        self.drop()
        try:
            self._call = getattr(stub, effect.method)(effect.request, timeout=effect.timeout)
        except _CLOSED as closed:
            raise effects.ChannelClosed(str(closed)) from closed
        if self.stopped:
            self._call.cancel()

    async def receive(self) -> Any:
        try:
            message = await self._call.read()
        except _CLOSED as closed:
            raise effects.ChannelClosed(str(closed)) from closed
        return effects.END if message is grpc.aio.EOF else message

    def drop(self) -> None:
        """Cancel the call that is open, if any."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def stop(self) -> None:
        self.stopped = True
        if self._call is not None:
            self._call.cancel()


class _AsyncDriver:
    """Awaits the effects of flows on one ``grpc.aio`` stub: the asyncio client's only
    I/O. Blocking effects get a sync channel of their own to ``address``, opened on
    first use and closed by :meth:`close`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        address: str | None = None,
        security: ChannelSecurity | None = None,
    ) -> None:
        self._security = security
        self.stub = pb_grpc.VariableStoreStub(channel)
        self._address = address
        self._blocking: grpc.Channel | None = None

    async def run(self, flow: Flow[T]) -> T:
        """Runs ``flow`` to its end and returns what it returned."""
        runner = Runner(flow)
        while not runner.done:
            await self._perform(runner)
        return runner.result

    async def next_item(self, runner: Runner[None], line: _Line) -> WatchItem | None:
        """The item a streaming flow emits next, or None when it is over."""
        while not (runner.done or line.stopped):
            effect = runner.effect
            if not isinstance(effect, effects.Emit):
                await self._perform(runner, line)
                continue
            runner.send(None)
            return effect.item  # type: ignore[no-any-return]
        return None

    async def _perform(self, runner: Runner[Any], line: _Line | None = None) -> None:
        try:
            answer = await self._answer(runner.effect, line)
        except Exception as failure:  # noqa: BLE001 - thrown into the flow
            runner.fail(failure)
        else:
            runner.send(answer)

    async def _answer(self, effect: object, line: _Line | None) -> Any:
        if isinstance(effect, effects.Call):
            method = getattr(self.stub, effect.method)
            return await method(effect.request, timeout=effect.timeout)
        if isinstance(effect, effects.Background):
            task = self._background(Runner(effect.flow), _Line())
            return asyncio.get_running_loop().create_task(task, name=effect.name)
        if isinstance(effect, effects.Stop):
            effect.handle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await effect.handle
            return None
        if isinstance(effect, effects.Blocking):
            stub = self._blocking_stub()
            return await asyncio.to_thread(effect.function, stub, *effect.args, **effect.kwargs)
        if isinstance(effect, effects.Sleep):  # a retry's pause, or a watch's
            return await asyncio.sleep(effect.seconds)
        if line is None:
            raise TypeError(f"{effect!r} outside a streaming run")
        if effect is effects.RECEIVE:
            return await line.receive()
        if isinstance(effect, effects.Open):
            return line.open(self.stub, effect)
        raise TypeError(f"no way to perform {effect!r}")

    async def _background(self, runner: Runner[None], line: _Line) -> None:
        try:
            await self.next_item(runner, line)
        finally:
            line.drop()

    def _blocking_stub(self) -> pb_grpc.VariableStoreStub:
        if self._blocking is None:
            if self._address is None:
                raise TypeError("blocking work needs a client's address")
            self._blocking = open_channel(self._address, self._security)
        return pb_grpc.VariableStoreStub(self._blocking)

    def close(self) -> None:
        """Close the channel of blocking work, if one was opened."""
        if self._blocking is not None:
            self._blocking.close()


class AsyncWatchStream(WatchStreamBase[_Line]):
    """:class:`~varstore.client.WatchStream` as an async iterator (``async for``,
    ``async with``); raises the same errors."""

    def __init__(self, driver: _AsyncDriver, flow: Flow[None], seen: WatchPosition) -> None:
        super().__init__(Runner(flow), _Line(), seen)
        self._driver = driver

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchItem:
        try:
            item = await self._driver.next_item(self._runner, self._line)
        except (asyncio.CancelledError, VarstoreError):
            if self._line.stopped:  # our own close() ended the read
                raise StopAsyncIteration from None
            raise
        if item is not None:
            return item
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """:meth:`close`, for ``contextlib.aclosing`` and the like."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class AsyncSessionView(ViewOps[Async]):
    """:class:`~varstore.client.SessionView` for asyncio: every read is awaited."""


class AsyncSessionContext(SessionOps[Async, grpc.aio.Channel, AsyncWatchStream, AsyncSessionView]):
    """The seed's ``SessionContext`` for asyncio: :class:`~varstore.client.SessionContext`
    with every call awaited, on a ``grpc.aio.Channel`` (the caller keeps ownership). In
    ``cache_mode="watch"`` the cache's watch is a task on the running loop, started by the
    first call."""

    _driver: _AsyncDriver

    def _driver_for(self, channel: grpc.aio.Channel) -> _AsyncDriver:
        return _AsyncDriver(channel)

    def _view(self, fields: dict[str, Any]) -> AsyncSessionView:
        return AsyncSessionView(self._run, self._core, fields)

    def _stream(self, flow: Flow[None], seen: WatchPosition) -> AsyncWatchStream:
        return AsyncWatchStream(self._driver, flow, seen)

    async def get_variable(
        self, name: str, default: Any = MISSING, bypass_cache: bool = False
    ) -> Any:
        """As :meth:`~varstore.client.SessionContext.get_variable`; a fresh cached value
        is returned without a round trip."""
        hit, value = self._core.cached(name, bypass_cache)
        return value if hit else await self._driver.run(self._fetch(name, default))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cleanup()


class AsyncClient(ClientOps[Async, AsyncSessionContext]):
    """:class:`~varstore.client.Client` for asyncio, owning a ``grpc.aio`` channel to one
    or several servers. Use :func:`aconnect`."""

    def __init__(
        self,
        address: Address,
        config: Mapping[str, Any] | None = None,
        security: ChannelSecurity | None = None,
    ) -> None:
        self.channel = open_aio_channel(address, security)
        text = address_text(address)
        self._driver = _AsyncDriver(self.channel, text, security)
        super().__init__(text, config, self._driver)

    def _context(self, session_id: str, config: Mapping[str, Any]) -> AsyncSessionContext:
        return AsyncSessionContext(session_id, self.channel, config, positions=self._seen)

    async def close(self) -> None:
        """Close the channels (the client's, and the one transfers use)."""
        await self.channel.close()
        self._driver.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def aconnect(
    address: Address = "127.0.0.1:50051",
    config: Mapping[str, Any] | None = None,
    *,
    root_certificates: Pem | None = None,
    certificate_chain: Pem | None = None,
    private_key: Pem | None = None,
    token: str | None = None,
    tls: bool | None = None,
) -> AsyncClient:
    """An :class:`AsyncClient` on ``address`` that owns its channel
    (``async with aconnect(...) as client``); addresses (one or several servers), TLS and
    tokens as for :func:`~varstore.client.connect`."""
    security = ChannelSecurity.of(
        root_certificates=root_certificates,
        certificate_chain=certificate_chain,
        private_key=private_key,
        token=token,
        tls=tls,
    )
    return AsyncClient(address, config, security)
