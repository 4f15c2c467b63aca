"""Code that runs around every call of a gRPC method, whatever its kind: the one way the
auth, metrics, log and rate-limit interceptors wrap method handlers.

The server is :mod:`grpc.aio`'s, and every behaviour an interceptor sees is a coroutine
function ``(request, context) -> response``: a method that streams its responses writes
them itself (``await context.write``) and returns None. The sync servicers are made so by
:class:`~varstore.api.bridge.SyncBridge`, the innermost interceptor, which runs them in
a thread pool.

An :data:`Around` is called with the method, the request (for a client stream, the
request iterator) and the context before the behaviour runs; it may raise to refuse the
call, or return a :data:`Finish` that is called exactly once with the call's final status
code when it ends (also for a call the client cancelled, and for an error: the code the
error interceptor will send). An optional :data:`Amend` may change a single response
before it is sent (the auth interceptor adds session tokens so).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import grpc
import grpc.aio

from varstore.types import VarstoreError

__all__ = [
    "Amend",
    "Around",
    "Behaviour",
    "Chain",
    "Finish",
    "HandlerCache",
    "WrappingInterceptor",
    "code_of",
    "rebuild",
    "wrap",
]

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
#: What every interceptor wraps: ``await behaviour(request, context)``.
Behaviour: TypeAlias = Callable[[Any, Any], Awaitable[Any]]
#: Called once when the call ends, with its status code.
Finish: TypeAlias = Callable[[grpc.StatusCode], None]
#: Runs before the behaviour (may raise to refuse the call); returns a Finish or None.
Around: TypeAlias = Callable[[str, Any, Any], "Finish | None"]
#: Called with the method and its single response before it is sent; returns the response.
Amend: TypeAlias = Callable[[str, Any], Any]


class HandlerCache(grpc.aio.ServerInterceptor):
    """A server interceptor that replaces each method's handler by :meth:`wrap` of it, built
    once per method and kept, so a call pays one dict lookup."""

    def __init__(self) -> None:
        # method -> (the handler as registered, the same handler wrapped); only methods a
        # service registered get here, so the dict stays as small as the services.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        self._lock = threading.Lock()

    def wrap(self, handler: Handler, method: str) -> Handler:
        """``handler`` as this interceptor serves it."""
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrapped(handler, handler_call_details.method)

    def wrapped(self, handler: Handler, method: str) -> Handler:
        """:meth:`wrap` of ``handler``, built once per method."""
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self.wrap(handler, method)
        with self._lock:
            self._wrapped[method] = (handler, wrapped)
        return wrapped


class Chain(HandlerCache):
    """Several :class:`HandlerCache` interceptors served as one, the first listed
    outermost: each method's handler is wrapped by every link once, and a call pays one
    interceptor step instead of one per link (grpc.aio awaits each interceptor of a call
    in turn, with a continuation of its own)."""

    def __init__(self, links: Sequence[HandlerCache]) -> None:
        super().__init__()
        self._links = tuple(links)

    def wrap(self, handler: Handler, method: str) -> Handler:
        """``handler`` as every link serves it, the last link innermost."""
        for link in reversed(self._links):
            handler = link.wrap(handler, method)
        return handler


class WrappingInterceptor(HandlerCache):
    """A server interceptor that runs ``around`` for every call of every method (see the
    module docstring)."""

    def __init__(self, around: Around, amend: Amend | None = None) -> None:
        super().__init__()
        self._around = around
        self._amend = amend

    def wrap(self, handler: Handler, method: str) -> Handler:
        """``handler`` with ``around`` (and ``amend``) about its behaviour."""
        return wrap(handler, method, self._around, self._amend)


def code_of(error: BaseException | None, context: Any) -> grpc.StatusCode:
    """The status a call ends with: the code the handler chose, else OK without an error,
    the code of a VarstoreError, CANCELLED for a call cancelled under it, else INTERNAL."""
    chosen = getattr(context, "code", None)  # grpc's API, missing from its type stubs
    code = chosen() if callable(chosen) else None
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, VarstoreError):
        return error.grpc_code
    if isinstance(error, asyncio.CancelledError | GeneratorExit | grpc.RpcError):
        return grpc.StatusCode.CANCELLED  # the client went away, or the deadline passed
    return grpc.StatusCode.INTERNAL


def rebuild(
    handler: Handler,
    make: Callable[[Behaviour], Behaviour],
    *,
    request: Callable[[bytes], Any] | None = None,
    response: Callable[[Any], bytes] | None = None,
) -> Handler:
    """``handler`` of the same kind with its behaviour replaced by ``make(behaviour)`` (and
    its request deserializer or response serializer, when given)."""
    request = request or handler.request_deserializer
    response = response or handler.response_serializer
    # Any: grpc's stubs type behaviours as sync functions; here they are coroutines.
    unary_unary: Any = handler.unary_unary
    stream_unary: Any = handler.stream_unary
    unary_stream: Any = handler.unary_stream
    stream_stream: Any = handler.stream_stream
    if unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(make(unary_unary), request, response)
    if stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(make(stream_unary), request, response)
    if unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(make(unary_stream), request, response)
    if stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(make(stream_stream), request, response)
    return handler  # pragma: no cover - grpc always sets one behaviour


def wrap(handler: Handler, method: str, around: Around, amend: Amend | None = None) -> Handler:
    """``handler`` with ``around`` run around each call (and ``amend`` applied to each
    single response)."""
    single = handler.unary_unary is not None or handler.stream_unary is not None

    def make(behaviour: Behaviour) -> Behaviour:
        @functools.wraps(behaviour)
        async def wrapped(request: Any, context: Any) -> Any:
            finish = around(method, request, context)
            try:
                answer = await behaviour(request, context)
                if amend is not None and single:
                    answer = amend(method, answer)
            except BaseException as error:
                if finish is not None:
                    finish(code_of(error, context))
                raise
            if finish is not None:
                finish(code_of(None, context))
            return answer

        return wrapped

    return rebuild(handler, make)
