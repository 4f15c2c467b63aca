"""Sync servicers under the asyncio server: a thread pool runs them, the loop does the I/O.

The server is :mod:`grpc.aio`'s (one event loop thread serves every call's I/O); the
store is synchronous. :class:`SyncBridge`, the innermost interceptor, turns every method
handler into the one shape the other interceptors wrap (:mod:`varstore.api.calls`): a
coroutine function that returns the response, or writes a stream's responses itself.

* A **sync** behaviour runs in the pool with a :class:`SyncContext` (the sync
  ``grpc.ServicerContext`` methods the servicers use) and the call's context variables
  (so what an interceptor set, such as the caller's identity, is seen by the handler).
  A streamed response is taken from the generator a message at a time, each in the pool,
  then written by the loop; a request stream reaches it as a blocking iterator over the
  call's async one. An ``abort`` in the pool ends the call from the loop. The unary
  calls ``inline`` picks (reads of the current state, which never wait) run on the loop
  itself: the hop to the pool and back would cost more than they do.
* An **async** behaviour (the watch, health, reflection) runs on the loop; an async
  generator is written out message by message.

The thread pool is the only place sync handlers run: a WatchSession (async) holds no
thread, however long it streams.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import AsyncIterable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, Final, NoReturn, TypeAlias

import grpc

from varstore.api.calls import Behaviour, HandlerCache, rebuild

__all__ = ["SyncBridge", "SyncContext"]

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

_END: Final = object()


class _Aborted(Exception):
    """A sync handler's ``abort``: the loop ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[Any, ...]) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = trailing


class SyncContext:
    """What a sync handler, running in the pool, sees of its call: the sync
    ``grpc.ServicerContext`` methods, over the loop's ``grpc.aio.ServicerContext``."""

    def __init__(self, context: Any, task: asyncio.Task[Any] | None) -> None:
        self._context = context
        self._task = task

    def is_active(self) -> bool:
        """False once the call ended (cancelled by the client, deadline passed)."""
        return self._task is None or not self._task.done()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` when the call ends; False if it already has."""
        if not self.is_active():
            return False
        self._context.add_done_callback(lambda _context: callback())
        return True

    def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        """End the call with ``code`` and ``details`` (raises, as grpc's ``abort``)."""
        raise _Aborted(code, details, tuple(trailing_metadata or ()))

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        """End the call with ``status`` (raises)."""
        self.abort(status.code, status.details, status.trailing_metadata)

    def cancel(self) -> NoReturn:
        """End the call as cancelled (raises)."""
        self.abort(grpc.StatusCode.CANCELLED, "cancelled by the server")

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()  # type: ignore[no-any-return]

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()  # type: ignore[no-any-return]

    def auth_context(self) -> Any:
        return self._context.auth_context()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> Any:
        return self._context.peer_identity_key()

    def code(self) -> Any:
        return self._context.code()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._context.set_trailing_metadata(metadata)


class SyncBridge(HandlerCache):
    """The innermost interceptor: every handler as a coroutine function (see the module
    docstring); sync behaviours run in ``pool``."""

    def __init__(self, pool: Executor, inline: Callable[[str, Any], bool] | None = None) -> None:
        super().__init__()
        self._pool = pool
        self._inline = inline

    def wrap(self, handler: Handler, method: str) -> Handler:
        """``handler`` as a coroutine function."""
        streams = handler.unary_stream is not None or handler.stream_stream is not None
        requests = handler.stream_unary is not None or handler.stream_stream is not None

        def make(behaviour: Behaviour) -> Behaviour:
            if inspect.iscoroutinefunction(behaviour):
                return behaviour
            if inspect.isasyncgenfunction(behaviour):
                return _written(behaviour)
            return self._pooled(behaviour, streams, requests, method)

        return rebuild(handler, make)

    def _pooled(
        self, behaviour: Callable[..., Any], streams: bool, requests: bool, method: str
    ) -> Behaviour:
        pool = self._pool
        inline = self._inline if not (streams or requests) else None

        @functools.wraps(behaviour)
        async def pooled(request: Any, context: Any) -> Any:
            if inline is not None and inline(method, request):
                try:  # a read of memory that never waits: no hop to the pool and back
                    return behaviour(request, SyncContext(context, None))
                except _Aborted as aborted:
                    await context.abort(aborted.code, aborted.details, aborted.trailing)
            loop = asyncio.get_running_loop()
            sync = SyncContext(context, asyncio.current_task())
            call = contextvars.copy_context()  # one per call: steps run one after another
            if requests:
                request = _blocking(request, loop)
            try:
                if not streams:
                    return await loop.run_in_executor(pool, call.run, behaviour, request, sync)
                stream = await loop.run_in_executor(pool, call.run, _open, behaviour, request, sync)
                while True:
                    message = await loop.run_in_executor(pool, call.run, _next, stream)
                    if message is _END:
                        return None
                    await context.write(message)
            except _Aborted as aborted:
                await context.abort(aborted.code, aborted.details, aborted.trailing)

        return pooled


def _next(stream: Iterator[Any]) -> Any:
    return next(stream, _END)


def _open(behaviour: Callable[..., Any], request: Any, context: SyncContext) -> Iterator[Any]:
    return iter(behaviour(request, context))


def _written(behaviour: Callable[..., Any]) -> Behaviour:
    """An async generator behaviour as one that writes its messages itself."""

    @functools.wraps(behaviour)
    async def written(request: Any, context: Any) -> None:
        async for message in behaviour(request, context):
            await context.write(message)

    return written


def _blocking(requests: AsyncIterable[Any], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """The call's request stream as a blocking iterator for a handler in the pool."""
    iterator = aiter(requests)

    async def step() -> Any:
        try:
            return await anext(iterator)
        except StopAsyncIteration:
            return _END

    while True:
        request = asyncio.run_coroutine_threadsafe(step(), loop).result()
        if request is _END:
            return
        yield request
