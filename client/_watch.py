"""Watching a session: what a watch yields, and the two watch flows (a reader's watch and
the "watch"-mode cache's reconnecting watch), written once for both drivers.

A watch yields, in order: a :class:`WatchInitial` (when asked for), then one
:class:`WatchUpdate` per event after ``from_position`` (a batch is one update, with one
``ChangeInfo`` per variable: new and previous value), and a :class:`WatchProgress` once
the stream has caught up and whenever the server had nothing to send for a while. Every
item has a ``position``; the stream's :attr:`~WatchStream.position` is the last one seen,
so ``ctx.watch(from_position=stream.position)`` resumes a broken watch without missing or
repeating an event. Both watches do that themselves when their server goes away
(UNAVAILABLE): they open the watch again from there, on whichever server gRPC picks, one
that has applied the session at least that far and as far as the client has seen.

Both ask the server for up to :data:`MAX_EVENTS_PER_MESSAGE` events a message (a watch
that is behind then catches up in few messages) and still hand out one item, or apply
one event, at a time: the position is the last item handed out, wherever it was in its
message, and a stream breaks only between messages, once all of one was handed out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Generic, Protocol, TypeVar

from varstore.client._core import ChangeInfo, ContextCore, VariableInfo
from varstore.client._effects import END, RECEIVE, ChannelClosed, Emit, Flow, Open, Sleep
from varstore.client._flow import READ_RETRYABLE, Retry, Runner, next_delay
from varstore.client._positions import SeenPositions
from varstore.types import PyValue, SessionNotFound, ValidationError, VarstoreError
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "MAX_EVENTS_PER_MESSAGE",
    "WatchInitial",
    "WatchItem",
    "WatchPosition",
    "WatchProgress",
    "WatchStreamBase",
    "WatchUpdate",
    "cache_watch",
    "item_from_proto",
    "items_from_proto",
    "watch_flow",
    "watch_request",
]

#: Events a watch lets the server put in one message (the most a server sends).
MAX_EVENTS_PER_MESSAGE: Final = 256


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
        max_events_per_message=MAX_EVENTS_PER_MESSAGE,
    )


def items_from_proto(message: pb.WatchSessionResponse) -> list[WatchItem]:
    """The items a WatchSessionResponse carries, in order: one, or one per event of an
    ``events`` message."""
    if message.WhichOneof("kind") == "events":
        return [_update(event) for event in message.events.events]
    return [item_from_proto(message)]


def item_from_proto(message: pb.WatchSessionResponse) -> WatchItem:
    """The item a one-item WatchSessionResponse carries (see :func:`items_from_proto`)."""
    kind = message.WhichOneof("kind")
    if kind == "initial":
        return WatchInitial(
            position=message.initial.position,
            variables=tuple(VariableInfo.from_proto(v) for v in message.initial.variables),
        )
    if kind == "event":
        return _update(message.event)
    if kind == "progress":
        return WatchProgress(position=message.progress.position)
    raise VarstoreError(f"the server sent a watch message of unknown kind {kind!r}")


def _update(message: pb.WatchEvent) -> WatchUpdate:
    event = message.event
    return WatchUpdate(
        position=event.position,
        type=event.type,
        session_id=event.session_id,
        recorded_at=event.recorded_at.ToDatetime(tzinfo=UTC),
        source=event.source,
        metadata=dict(event.metadata),
        changes=tuple(ChangeInfo.from_proto(c) for c in message.changes),
    )


def _single_messages(message: pb.WatchSessionResponse) -> list[pb.WatchSessionResponse]:
    """``message`` as one-item messages: one per event of an ``events`` message."""
    if message.WhichOneof("kind") == "events":
        return [pb.WatchSessionResponse(event=event) for event in message.events.events]
    return [message]


class WatchPosition:
    """The last position a watch has handed out, and whether it has handed out anything."""

    def __init__(self, start: int) -> None:
        self.position = start
        self.received = False

    def saw(self, item: WatchItem) -> None:
        """``item`` is being handed out."""
        self.position = max(self.position, item.position)
        self.received = True


def watch_flow(
    request: pb.WatchSessionRequest,
    timeout: float | None,
    seen: WatchPosition,
    create_session: Callable[[], Flow[None]] | None,
    retry: Retry | None = None,
    positions: SeenPositions | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    draw: Callable[[], float] = random.random,
) -> Flow[None]:
    """A reader's watch: every item, as it comes (:class:`Emit`), until the server ends
    the stream. When the server does not know the session before anything arrived and
    ``create_session`` is given, the session is created (once), as every other call
    would, and the watch opened again.

    With ``retry``, a stream that fails UNAVAILABLE (its server went away, or is behind)
    is opened again after a pause (:func:`~varstore.client._flow.next_delay`), from the
    last position delivered and without the initial state once that was delivered: no
    gap, no repeat. It gives up, raising the failure, once ``retry.deadline`` seconds pass
    without a message. With ``positions`` (the client's record), every opening asks for a
    server that has applied what the client has seen, and every item is recorded there.
    ``timeout`` bounds the whole watch, reopenings included.
    """
    started = clock()
    failures = 0
    give_up_at = 0.0
    while True:
        if positions is not None:
            positions.stamp(request, at_least=seen.position if seen.received else 0)
        left = None if timeout is None else max(timeout - (clock() - started), 0.001)
        try:
            yield Open("WatchSession", request, left)
            while (message := (yield RECEIVE)) is not END:
                failures = 0
                for item in items_from_proto(message):
                    yield Emit(item)
                    # Handed out: a driver moves the flow on as it hands the item over, so
                    # the position is the last item the reader has, mid-message too.
                    seen.saw(item)
                    if positions is not None:
                        positions.saw(request.session_id, item.position)
        except SessionNotFound:
            if create_session is None or seen.received:
                raise
            yield from create_session()
            create_session = None
            continue
        except READ_RETRYABLE as failure:
            if retry is None:
                raise
            failures += 1
            if failures == 1:
                give_up_at = clock() + retry.deadline
            left_to_try = give_up_at - clock()
            pause = next_delay(retry, failures, failure, write=False, left=left_to_try, draw=draw())
            if pause is None:
                raise
            request.from_position = seen.position
            request.include_initial = request.include_initial and not seen.received
            yield Sleep(pause)
            continue
        return


def cache_watch(core: ContextCore) -> Flow[None]:
    """A "watch"-mode cache's watch, until stopped: hand every event (and progress) to the
    core, one at a time, and after a failure reconnect with backoff from the last
    position applied (the core decides everything). A closed channel ends it."""
    failures = 0
    while True:
        error: BaseException | None = None
        try:
            request = core.watch_request()
            request.max_events_per_message = MAX_EVENTS_PER_MESSAGE
            yield Open("WatchSession", request, None)
            while (message := (yield RECEIVE)) is not END:
                for single in _single_messages(message):
                    core.apply_watch_message(single)
                failures = 0
        except ChannelClosed:
            core.watch_lost(None)
            return
        except Exception as failure:  # noqa: BLE001 - a failed call or message: reconnect
            error = failure
        core.watch_lost(error)
        yield Sleep(core.watch_backoff(failures))
        failures += 1


class _Line(Protocol):
    """What a stream reads from: its run's call, which can be stopped from anywhere."""

    def stop(self) -> None: ...


L = TypeVar("L", bound=_Line)


class WatchStreamBase(Generic[L]):
    """What a watch stream is, in either flavour: a run of :func:`watch_flow` on a line
    (the call it has open), and the position it has reached.

    Failures raise the client's usual errors: ``LimitExceeded`` when the server dropped a
    watcher that fell behind (reconnect from :attr:`position`), ``OutOfRange`` for a
    ``from_position`` beyond the log, ``Unavailable`` when the server shuts down.
    """

    def __init__(self, runner: Runner[None], line: L, seen: WatchPosition) -> None:
        self._runner = runner
        self._line = line
        self._seen = seen

    @property
    def position(self) -> int:
        """The last position seen (``from_position`` until the first item): where to
        resume from."""
        return self._seen.position

    def close(self) -> None:
        """Cancel the call (idempotent); iteration then stops."""
        self._line.stop()
