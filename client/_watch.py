"""Watching a session: what a watch yields, built from the wire by I/O-free code both
contexts share, and the two thin iterators (sync and asyncio) over a WatchSession call.

A watch yields, in order: a :class:`WatchInitial` (when asked for), then one
:class:`WatchUpdate` per event after ``from_position`` (a batch is one update, with one
``ChangeInfo`` per variable: new and previous value), and a :class:`WatchProgress` once
the stream has caught up and whenever the server had nothing to send for a while. Every
item has a ``position``; the stream's :attr:`~WatchStream.position` is the last one seen,
so ``ctx.watch(from_position=stream.position)`` resumes a broken watch without missing or
repeating an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self

import grpc

from varstore.client._core import ChangeInfo, VariableInfo
from varstore.types import PyValue, SessionNotFound, ValidationError, VarstoreError
from varstore.types.status import error_from_rpc_error
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "AsyncWatchStream",
    "WatchInitial",
    "WatchItem",
    "WatchProgress",
    "WatchStream",
    "WatchUpdate",
    "item_from_proto",
    "watch_request",
]


@dataclass(frozen=True, slots=True)
class WatchInitial:
    """The state the watch starts from: the (watched) variables live at ``position``."""

    position: int
    #: Ordered by name; empty when the session did not exist yet at ``position``.
    variables: tuple[VariableInfo, ...]

    def values(self) -> dict[str, PyValue]:
        """The variables' values by name."""
        return {variable.name: variable.value for variable in self.variables}


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """One event of the session's log, with the changes it made to watched variables."""

    #: The event's position: one more than the previous update's in an unfiltered watch.
    position: int
    #: The event type: "VariableUpdated", "BatchApplied", "SessionDeleted"...
    type: str
    session_id: str
    recorded_at: datetime
    source: str
    metadata: dict[str, str]
    #: In the event's order; every item of a batch (that is watched) is here.
    changes: tuple[ChangeInfo, ...]


@dataclass(frozen=True, slots=True)
class WatchProgress:
    """Nothing more yet: every event up to ``position`` has been sent (or filtered out)."""

    position: int


#: What a watch yields.
WatchItem = WatchInitial | WatchUpdate | WatchProgress


def watch_request(
    session_id: str,
    from_position: int,
    variables: Iterable[str] | None,
    include_initial: bool,
    progress_interval: float | None,
) -> pb.WatchSessionRequest:
    """A WatchSession request; ``progress_interval`` in seconds (None: the server's 1 s).

    Raises:
        ValidationError: a negative position or interval.
    """
    if from_position < 0:
        raise ValidationError(f"from_position must be 0 or more, not {from_position}")
    if progress_interval is not None and progress_interval < 0:
        raise ValidationError(f"progress_interval must be 0 or more, not {progress_interval}")
    if isinstance(variables, str):
        variables = [variables]  # one name, not its characters
    return pb.WatchSessionRequest(
        session_id=session_id,
        from_position=from_position,
        variables=list(variables or ()),
        include_initial=include_initial,
        progress_interval_ms=max(1, round(progress_interval * 1000)) if progress_interval else 0,
    )


def item_from_proto(message: pb.WatchSessionResponse) -> WatchItem:
    """The item a WatchSessionResponse carries."""
    kind = message.WhichOneof("kind")
    if kind == "initial":
        return WatchInitial(
            position=message.initial.position,
            variables=tuple(VariableInfo.from_proto(v) for v in message.initial.variables),
        )
    if kind == "event":
        event = message.event.event
        return WatchUpdate(
            position=event.position,
            type=event.type,
            session_id=event.session_id,
            recorded_at=event.recorded_at.ToDatetime(tzinfo=UTC),
            source=event.source,
            metadata=dict(event.metadata),
            changes=tuple(ChangeInfo.from_proto(c) for c in message.event.changes),
        )
    if kind == "progress":
        return WatchProgress(position=message.progress.position)
    raise VarstoreError(f"the server sent a watch message of unknown kind {kind!r}")


class _Position:
    """The last position a watch has seen, and whether it has seen anything yet."""

    def __init__(self, start: int) -> None:
        self.position = start
        self.received = False

    def saw(self, message: pb.WatchSessionResponse) -> WatchItem:
        item = item_from_proto(message)
        self.position = max(self.position, item.position)
        self.received = True
        return item


class _SyncCall(Protocol):
    def __next__(self) -> pb.WatchSessionResponse: ...

    def cancel(self) -> object: ...


class _AsyncCall(Protocol):
    async def read(self) -> object: ...

    def cancel(self) -> object: ...


class WatchStream:
    """The items of one watch (an iterator); :meth:`close` cancels the call.

    Failures raise the client's usual errors: ``LimitExceeded`` when the server dropped a
    watcher that fell behind (reconnect from :attr:`position`), ``OutOfRange`` for a
    ``from_position`` beyond the log, ``Unavailable`` when the server shuts down.
    """

    def __init__(
        self,
        open_call: Callable[[], _SyncCall],
        from_position: int,
        on_missing: Callable[[], None] | None = None,
    ) -> None:
        self._open = open_call
        self._on_missing = on_missing
        self._call: _SyncCall | None = None
        self._seen = _Position(from_position)
        self._closed = False

    @property
    def position(self) -> int:
        """The last position seen (``from_position`` until the first item): where to
        resume from."""
        return self._seen.position

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchItem:
        while True:
            if self._closed:
                raise StopIteration
            if self._call is None:
                self._call = self._open()
            try:
                return self._seen.saw(next(self._call))
            except StopIteration:
                self._closed = True
                raise
            except grpc.RpcError as failure:
                if self._closed:  # closed from another thread while waiting
                    raise StopIteration from None
                error = error_from_rpc_error(failure)
                on_missing, self._on_missing = self._on_missing, None
                if isinstance(error, SessionNotFound) and on_missing and not self._seen.received:
                    on_missing()  # create the session, as every other call would
                    self._call = None
                    continue
                self._closed = True
                raise error from failure

    def close(self) -> None:
        """Cancel the call (idempotent); iteration then stops."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncWatchStream:
    """The items of one watch (an async iterator); :meth:`close` cancels the call.

    Raises the same errors as :class:`WatchStream`.
    """

    def __init__(
        self,
        open_call: Callable[[], _AsyncCall],
        from_position: int,
        on_missing: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._open = open_call
        self._on_missing = on_missing
        self._call: _AsyncCall | None = None
        self._seen = _Position(from_position)
        self._closed = False

    @property
    def position(self) -> int:
        """The last position seen (``from_position`` until the first item): where to
        resume from."""
        return self._seen.position

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchItem:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._call is None:
                self._call = self._open()
            try:
                message = await self._call.read()
            except asyncio.CancelledError:
                if self._closed:  # our own close() cancelled the read
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as failure:
                if self._closed:
                    raise StopAsyncIteration from None
                error = error_from_rpc_error(failure)
                on_missing, self._on_missing = self._on_missing, None
                if isinstance(error, SessionNotFound) and on_missing and not self._seen.received:
                    await on_missing()  # create the session, as every other call would
                    self._call = None
                    continue
                self._closed = True
                raise error from failure
            if message is grpc.aio.EOF:
                self._closed = True
                raise StopAsyncIteration
            assert isinstance(message, pb.WatchSessionResponse)
            return self._seen.saw(message)

    def close(self) -> None:
        """Cancel the call (idempotent); iteration then stops."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    async def aclose(self) -> None:
        """:meth:`close`, for ``contextlib.aclosing`` and the like."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
