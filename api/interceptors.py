"""The one place the server turns exceptions into statuses: a gRPC server interceptor
that wraps every method handler of every service, unary and streaming alike.

- A :class:`VarstoreError` ends the call with its status (code, message and the
  ``google.rpc`` details of :func:`~varstore.types.status.status_for`).
- A status the handler chose itself (``context.abort``) and grpc's own errors (a request
  stream that broke because the client went away) pass through untouched.
- The event log failing (a RecorderError, e.g. a read of a damaged or vanished file) is
  UNAVAILABLE with a message that names no file; the details go to the server log.
- Anything else is a bug: it is logged with its traceback and an incident id, and the
  caller gets INTERNAL (reason ``INTERNAL``, the incident id in the ErrorInfo). A bug is
  never UNAVAILABLE, which promises that nothing was written.
- A request body that does not parse as the method's message is INVALID_ARGUMENT (gRPC
  itself would answer INTERNAL): the deserializer never raises, and the handler is not
  called with what it could not parse (a stream's bad message ends the call when read).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeAlias

import grpc

from varstore.api.calls import HandlerCache
from varstore.eventstore import RecorderError
from varstore.types import InternalError, Unavailable, ValidationError, VarstoreError
from varstore.types.status import status_for

__all__ = ["ErrorInterceptor", "guard"]

log = logging.getLogger(__name__)

# A string: grpc's classes are generic only in its type stubs.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class ErrorInterceptor(HandlerCache):
    """Maps every error raised by any handler to its status (see the module docstring).

    Wrapped handlers are kept per method, so a call pays one dict lookup, not a new wrap.
    """

    def wrap(self, handler: Handler, method: str) -> Handler:
        """``handler`` guarded (see :func:`guard`)."""
        return guard(handler, method)


def guard(handler: Handler, method: str) -> Handler:
    """``handler`` with its behaviour wrapped so that errors become statuses. The wrapper
    keeps the original as ``__wrapped__``."""
    if any(
        getattr(behaviour, "experimental_non_blocking", False)
        for behaviour in (handler.unary_stream, handler.stream_stream)
    ):
        return handler  # grpc's health Watch: it ends its calls from other threads itself
    request, response = _tolerant(handler.request_deserializer), handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _answer(handler.unary_unary, method, False), request, response
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _answer(handler.stream_unary, method, True), request, response
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _stream(handler.unary_stream, method, False), request, response
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _stream(handler.stream_stream, method, True), request, response
        )
    return handler  # pragma: no cover - grpc always sets one behaviour


class _Undecodable:
    """A request body the method's deserializer refused (why, in ``problem``)."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` returning an :class:`_Undecodable` instead of raising."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as problem:  # noqa: BLE001 - any failure: the body is not valid
            return _Undecodable(str(problem) or type(problem).__name__)

    return deserialize


def _decoded(request: Any, method: str) -> Any:
    """``request``, unless it did not parse: then INVALID_ARGUMENT."""
    if isinstance(request, _Undecodable):
        text = (
            f"the request is not a valid message for {method.rsplit('/', 1)[-1]}: "
            f"{request.problem[:200]}"
        )
        raise ValidationError(text, violations={"request": text})
    return request


def _decoded_stream(requests: Iterator[Any], method: str) -> Iterator[Any]:
    for request in requests:
        yield _decoded(request, method)


def _answer(
    behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str, streamed: bool
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """A behaviour that returns one response (unary or client-streaming requests)."""

    @functools.wraps(behaviour)
    def answered(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            request = _decoded_stream(request, method) if streamed else _decoded(request, method)
            return behaviour(request, context)
        except Exception as error:  # noqa: BLE001 - _end_call aborts or re-raises
            _end_call(error, context, method)

    return answered


def _stream(
    behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str, streamed: bool
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """A behaviour that streams its responses; an error mid-stream ends it the same way."""

    @functools.wraps(behaviour)
    def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            request = _decoded_stream(request, method) if streamed else _decoded(request, method)
            yield from behaviour(request, context)
        except Exception as error:  # noqa: BLE001 - _end_call aborts or re-raises
            _end_call(error, context, method)

    return streaming


def _end_call(error: Exception, context: grpc.ServicerContext, method: str) -> NoReturn:
    """End the call with the status ``error`` stands for (always raises)."""
    if isinstance(error, grpc.RpcError) or _status_chosen(context):
        raise error  # grpc's own: it ends the call with the status already chosen
    if isinstance(error, RecorderError):  # the storage failed, not the code; the log has
        # the details (paths included), the caller a message that names no file
        log.error("%s: the event log failed: %s", method, error)
        error = Unavailable(
            "the event log cannot be read or written now; nothing was written, retry later",
            info={"method": method},
        )
    if not isinstance(error, VarstoreError):
        incident = uuid.uuid4().hex[:12]
        log.error("%s failed (incident %s)", method, incident, exc_info=error)
        error = InternalError(
            f"{method.rsplit('/', 1)[-1]} failed because of a bug in the server "
            f"(logged as incident {incident}); please report it",
            info={"method": method, "incident": incident},
        )
    context.abort_with_status(status_for(error))


def _status_chosen(context: grpc.ServicerContext) -> bool:
    """True once the handler aborted the call (or set its code) itself."""
    # ServicerContext.code() is part of grpc's API (experimental) but missing from its
    # type stubs; a context without it has chosen nothing.
    code = getattr(context, "code", None)
    chosen = code() if callable(code) else None
    return chosen is not None and chosen != grpc.StatusCode.OK
