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
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeAlias

import grpc

from varstore.api.calls import Behaviour, HandlerCache, rebuild
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
    """``handler`` with its behaviour wrapped so that errors become statuses (and its
    request deserializer so that it never raises). The wrapper keeps the original as
    ``__wrapped__``."""
    streamed = handler.stream_unary is not None or handler.stream_stream is not None

    def make(behaviour: Behaviour) -> Behaviour:
        @functools.wraps(behaviour)
        async def guarded(request: Any, context: Any) -> Any:
            try:
                if streamed:
                    request = _decoded_stream(request, method)
                else:
                    request = _decoded(request, method)
                return await behaviour(request, context)
            except Exception as error:  # noqa: BLE001 - _end_call aborts or re-raises
                await _end_call(error, context, method)

        return guarded

    return rebuild(handler, make, request=_tolerant(handler.request_deserializer))


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


async def _decoded_stream(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request, method)


async def _end_call(error: Exception, context: Any, method: str) -> NoReturn:
    """End the call with the status ``error`` stands for (always raises)."""
    if isinstance(error, grpc.RpcError) or _status_chosen(context):
        raise error  # grpc's own (an abort): it ends the call with the status chosen
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
    status = status_for(error)
    await context.abort(status.code, status.details, tuple(status.trailing_metadata))
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


def _status_chosen(context: Any) -> bool:
    """True once the handler aborted the call (or set its code) itself."""
    code = getattr(context, "code", None)
    chosen = code() if callable(code) else None
    return chosen is not None and chosen != grpc.StatusCode.OK
