"""What a flow can ask a driver for (see :mod:`varstore.client._flow`): plain data, no I/O.

The effects, with what the flow receives back::

    Call(method, request, timeout)   one unary call          -> the response
    Open(method, request, timeout)   open the run's stream   -> None (cancels the last)
    RECEIVE                          its next message        -> the message, or END
    Emit(item)                       hand an item to the stream's reader -> None
    Sleep(seconds)                   pause (ends early when the run is stopped) -> None
    Blocking(function, args, kwargs) function(sync stub, ...): inline, or in a thread
    Background(flow, name)           run a flow beside the caller -> a handle for Stop
    Stop(handle)                     stop it and wait for it -> None

Effects are immutable tuples (cheap to build: one or two per call). A failure is thrown
into the flow at its ``yield``: a failed call as its VarstoreError (:func:`rpc_failure`),
a closed channel under a stream as :class:`ChannelClosed`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeAlias, TypeVar, final

import grpc
from google.protobuf.message import Message

from varstore.types import VarstoreError
from varstore.types.status import error_from_rpc_error

__all__ = [
    "END",
    "RECEIVE",
    "Background",
    "Blocking",
    "Call",
    "ChannelClosed",
    "Effect",
    "Emit",
    "Flow",
    "Open",
    "Sleep",
    "Stop",
    "rpc_failure",
]

T = TypeVar("T")


class Call(NamedTuple):
    """One unary call; ``method`` names the RPC on the stub ("GetVariable")."""

    method: str
    request: Message
    timeout: float | None


class Open(NamedTuple):
    """Open a server stream: the run's only one (opening another cancels it)."""

    method: str
    request: Message
    timeout: float | None


@final
class _Receive:
    def __repr__(self) -> str:
        return "RECEIVE"


@final
class _End:
    def __repr__(self) -> str:
        return "END"


#: Ask for the next message of the run's stream.
RECEIVE: Final = _Receive()
#: What :data:`RECEIVE` answers once the stream has ended (the server closed it).
END: Final = _End()


class Emit(NamedTuple):
    """Hand ``item`` to whoever iterates the run (a watch stream's reader)."""

    item: Any


class Sleep(NamedTuple):
    """Pause for ``seconds``; a stopped run ends instead of waiting them out."""

    seconds: float


class Blocking(NamedTuple):
    """``function(stub, *args, **kwargs)``: blocking code (files, a sync stub) that the
    sync driver runs inline and the asyncio driver in a worker thread."""

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = MappingProxyType({})


class Background(NamedTuple):
    """Run ``flow`` beside the caller (a daemon thread, or a task) named ``name``; the
    answer is a handle for :class:`Stop`."""

    flow: Flow[None]
    name: str


class Stop(NamedTuple):
    """Stop what :class:`Background` started, and wait for it to end."""

    handle: Any


Effect: TypeAlias = Call | Open | _Receive | Emit | Sleep | Blocking | Background | Stop
#: A flow: yields effects, receives their answers, returns its result.
Flow: TypeAlias = Generator[Effect, Any, T]


class ChannelClosed(ValueError):
    """The channel was closed under a stream (a ``ValueError``, as grpc raises)."""


def rpc_failure(failure: grpc.RpcError) -> VarstoreError:
    """The error a failed call stands for, chained to it: the client's one mapping."""
    error = error_from_rpc_error(failure)
    error.__cause__ = failure
    error.__suppress_context__ = True
    return error
