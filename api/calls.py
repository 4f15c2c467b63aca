"""Code that runs around every call of a gRPC method, whatever its kind: the one way the
auth, metrics and log interceptors wrap method handlers.

An :data:`Around` is called with the method, the request (for a client stream, the
request iterator) and the context before the behaviour runs; it may raise to refuse the
call, or return a :data:`Finish` that is called exactly once with the call's final status
code when it ends (also for a stream the client cancelled, and for an error: the code the
error interceptor will send). An optional :data:`Amend` may change a single response
before it is sent (the auth interceptor adds session tokens so). Non-blocking handlers
(grpc's health Watch) are left as they are: they end their calls from other threads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import grpc

from varstore.types import VarstoreError

__all__ = ["Amend", "Around", "Finish", "HandlerCache", "WrappingInterceptor", "code_of", "wrap"]

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Handler | None]"
#: Called once when the call ends, with its status code.
Finish: TypeAlias = Callable[[grpc.StatusCode], None]
#: Runs before the behaviour (may raise to refuse the call); returns a Finish or None.
Around: TypeAlias = Callable[[str, Any, grpc.ServicerContext], "Finish | None"]
#: Called with the method and its single response before it is sent; returns the response.
Amend: TypeAlias = Callable[[str, Any], Any]


class HandlerCache(grpc.ServerInterceptor):
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

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self.wrap(handler, method)
        with self._lock:
            self._wrapped[method] = (handler, wrapped)
        return wrapped


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


def code_of(error: BaseException | None, context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status a call ends with: the code the handler chose, else OK without an error,
    the code of a VarstoreError, CANCELLED for a stream closed under it, else INTERNAL."""
    chosen = getattr(context, "code", None)  # grpc's API, missing from its type stubs
    code = chosen() if callable(chosen) else None
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, VarstoreError):
        return error.grpc_code
    if isinstance(error, GeneratorExit | grpc.RpcError):
        return grpc.StatusCode.CANCELLED  # the client went away mid-stream
    return grpc.StatusCode.INTERNAL


def wrap(handler: Handler, method: str, around: Around, amend: Amend | None = None) -> Handler:
    """``handler`` with ``around`` run around each call (and ``amend`` applied to each
    single response)."""
    request, response = handler.request_deserializer, handler.response_serializer
    if _non_blocking(handler):
        return handler  # it ends its calls from other threads: leave it alone
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _answer(handler.unary_unary, method, around, amend), request, response
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _answer(handler.stream_unary, method, around, amend), request, response
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _stream(handler.unary_stream, method, around), request, response
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _stream(handler.stream_stream, method, around), request, response
        )
    return handler  # pragma: no cover - grpc always sets one behaviour


def _non_blocking(handler: Handler) -> bool:
    behaviours = (handler.unary_stream, handler.stream_stream)
    return any(getattr(b, "experimental_non_blocking", False) for b in behaviours)


def _answer(
    behaviour: Callable[[Any, grpc.ServicerContext], Any],
    method: str,
    around: Around,
    amend: Amend | None,
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Around a behaviour that returns one response (unary or client-streaming requests)."""

    @functools.wraps(behaviour)
    def answered(request: Any, context: grpc.ServicerContext) -> Any:
        finish = around(method, request, context)
        try:
            answer = behaviour(request, context)
            if amend is not None:
                answer = amend(method, answer)
        except BaseException as error:
            if finish is not None:
                finish(code_of(error, context))
            raise
        if finish is not None:
            finish(code_of(None, context))
        return answer

    return answered


def _stream(
    behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
    method: str,
    around: Around,
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """Around a behaviour that streams its responses: the call ends with the stream."""

    @functools.wraps(behaviour)
    def streamed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        finish = around(method, request, context)
        try:
            yield from behaviour(request, context)
        except BaseException as error:
            if finish is not None:
                finish(code_of(error, context))
            raise
        if finish is not None:
            finish(code_of(None, context))

    return streamed
