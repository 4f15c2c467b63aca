"""WatchSession: a session's events from a position on, then live, as stream messages.

The fan-out (:mod:`varstore.api.fanout`) keeps each watched session's recent events in a
ring shared by its watchers, moves each watcher's cursor, gates the sends and drops the
watchers that fall behind; this module turns what a watcher takes into messages and
handles the gRPC call. How a watch works:

* **One listener, shared rings.** The fan-out subscribes ONE listener to the store; the
  committing thread only drops each commit's events into the watched sessions' rings.
* **One thread per watch.** Each stream runs on its own server thread with a cursor: the
  last position it has covered. Its next event comes from the ring when the ring still
  holds it; else, up to the position the session had when the watch registered, from the
  recorder a page at a time (catch-up); else it waits.
* **No gap, no repeat.** The watch registers its ring *before* it reads where the log
  stands (P). The store publishes a commit before calling listeners, so every event above
  P reaches the ring after the registration; events below P come from the recorder. The
  cursor only moves forward over consecutive positions (a message's events, in order), so
  every position is sent once, in order.
* **Slow watchers are dropped.** A watcher whose next event has left the ring fell more
  than ``buffer_size`` events behind: its stream ends with RESOURCE_EXHAUSTED "watcher fell
  more than N events behind; reconnect from position P". A stream stuck in a send (a
  client that stopped reading) is found by the fan-out's janitor, which cancels the call
  with that status so its thread is freed. Writers never wait for any of this.
* **Writers first.** Every streamed message costs the gRPC server's one completion-queue
  thread an event, and writers' calls queue behind them; so at most ``send_slots``
  watchers send at once, in turns (see :class:`~varstore.api.fanout.SendGate`); a turn
  also sends what reached the ring while the watcher waited for it. Writers' latency then
  stays flat however many watchers there are; watchers share the remaining capacity and,
  if the writes outrun it for long, fall behind and are dropped as above. Several events a
  message (below) is what makes that capacity go far: a watcher that waited sends all it
  has in one message, not one message per event.
* **Changes.** Each WatchEvent carries the event and, for every variable it touched (all
  the items of a batch, every live variable for a SessionDeleted), the change with its new
  and previous value, read from the session's history. Each event is encoded once and
  shared by the watchers that see the same thing (:mod:`varstore.api.watch_messages`).
* **Several events a message.** A request's ``max_events_per_message`` N above 1 lets
  the events a watcher takes at once (it is catching up, or a burst was written) go in
  WatchEvents messages of up to N (at most MAX_EVENTS_PER_MESSAGE), in order, each event
  whole; 0 or 1 sends one event a message, as before the field existed. Served through
  :func:`~varstore.api.watch_messages.encoded_watches`, the streams send the cached
  encodings themselves; otherwise they yield messages, as before.
* **Filters.** With ``variables`` set, a change is kept when its variable id or name is
  listed, and an event is sent only when it keeps a change or is a session event
  (SessionCreated, SessionDeleted, SessionForked); the positions of the events left out
  are covered by the next message or progress message.
* **Progress.** A WatchProgress(position) says every event up to the position has been
  sent (or filtered out). One is sent as soon as the stream has caught up with the log,
  then whenever nothing was sent for ``progress_interval_ms``.
* **Deleted sessions** keep their log: a watch may start on one, and a watch that sees the
  SessionDeleted event keeps streaming, since the id may be created again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import grpc

from varstore.api.convert import variable_to_proto
from varstore.api.fanout import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_WATCHERS,
    DEFAULT_SEND_SLOTS,
    SLOT_MESSAGES,
    FanOut,
    Watcher,
)
from varstore.api.limits import exceeded
from varstore.api.store import Store
from varstore.api.watch_messages import (
    MAX_EVENTS_PER_MESSAGE,
    Messages,
    Outgoing,
    View,
    encoded_watches,
    encoding,
)
from varstore.types import (
    OutOfRange,
    SessionNotFound,
    ValidationError,
    describe,
)
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_PROGRESS_INTERVAL",
    "MAX_EVENTS_PER_MESSAGE",
    "WatchHub",
    "encoded_watches",
]

#: Seconds without a message after which a progress message is sent (request value 0).
DEFAULT_PROGRESS_INTERVAL: Final = 1.0
#: Shortest progress interval honoured, in seconds.
MIN_PROGRESS_INTERVAL: Final = 0.01


class WatchHub:
    """Streams sessions' events to watchers, from a position on, then live.

    Args:
        store: The store to watch (the fan-out subscribes to it once).
        buffer_size: Events kept per watched session; a watcher further behind is dropped.
        max_watchers: Most open watches; one more is refused with RESOURCE_EXHAUSTED
            (None: the store's ``limits.max_watchers``).
        max_watchers_per_session: Most open watches of one session (None: the store's
            ``limits.max_watchers_per_session``).
        stuck_after: Seconds a send may hang, once its watcher fell off the ring, before
            the janitor cancels the call.
        send_slots: Watch streams that may send at once (see ``fanout.SendGate``).
        send_lease: Seconds a hung send keeps its slot.
        monotonic: Clock for progress and stuck sends (injectable for tests).
    """

    def __init__(
        self,
        store: Store,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        max_watchers: int | None = None,
        max_watchers_per_session: int | None = None,
        stuck_after: float = 1.0,
        send_slots: int = DEFAULT_SEND_SLOTS,
        send_lease: float = 0.2,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._monotonic = monotonic
        self._fanout = FanOut(
            store,
            buffer_size=buffer_size,
            max_watchers=store.limits.max_watchers if max_watchers is None else max_watchers,
            max_watchers_per_session=(
                store.limits.max_watchers_per_session
                if max_watchers_per_session is None
                else max_watchers_per_session
            ),
            stuck_after=stuck_after,
            send_slots=send_slots,
            send_lease=send_lease,
            monotonic=monotonic,
        )
        self._messages = Messages(store)

    @property
    def buffer_size(self) -> int:
        """Events kept per watched session."""
        return self._fanout.buffer_size

    @property
    def max_watchers(self) -> int:
        """Most watches open at once."""
        return self._fanout.max_watchers

    @property
    def max_watchers_per_session(self) -> int:
        """Most watches of one session open at once."""
        return self._fanout.max_watchers_per_session

    @property
    def watcher_count(self) -> int:
        """How many watches are open."""
        return self._fanout.watcher_count

    @property
    def dropped_watchers(self) -> int:
        """Watches dropped for falling behind since start."""
        return self._fanout.dropped_watchers

    # -- the stream -----------------------------------------------------------------------------

    def watch(
        self, request: pb.WatchSessionRequest, context: grpc.ServicerContext
    ) -> Iterator[Outgoing]:
        """The messages of one watch stream (see the module docstring): WatchSessionResponse
        messages, or their encodings when the call is served through
        :func:`~varstore.api.watch_messages.encoded_watches`.

        Raises:
            SessionNotFound: the session never existed.
            ValidationError: a negative from_position, progress_interval_ms or
                max_events_per_message.
            OutOfRange: from_position is beyond the end of the session's log.
            LimitExceeded: too many identifiers, too many watches, or the watcher fell
                behind (the stream had started).
            Unavailable: the server is shutting down.
        """
        session_id = request.session_id
        wanted = frozenset(request.variables)
        interval = self._interval(request)
        limit = self._store.limits.max_batch_size
        if len(wanted) > limit:
            raise exceeded("max_batch_size", limit, f"{len(wanted)} variables to watch")
        if request.from_position < 0:
            raise ValidationError(f"from_position must be 0 or more, not {request.from_position}")
        if request.max_events_per_message < 0:
            raise ValidationError(
                f"max_events_per_message must be 0 or more, not {request.max_events_per_message}"
            )
        per_message = min(max(1, request.max_events_per_message), MAX_EVENTS_PER_MESSAGE)
        view = View(wanted, per_message, encoding())
        if self._store.published(session_id) is None:
            raise SessionNotFound(f"session {describe(session_id)} not found")
        watcher = self._fanout.register(session_id, lambda details: _cancel(context, details))
        try:
            if not context.add_callback(watcher.end):
                return  # the call already ended
            until = self._fanout.start(watcher)  # every event above it will reach the ring
            if request.from_position > until:
                raise OutOfRange(
                    f"from_position {request.from_position} is beyond the end of session "
                    f"{describe(session_id)}'s log (position {until})",
                    info={
                        "position": str(request.from_position),
                        "last_position": str(until),
                    },
                )
            watcher.cursor = watcher.sent = request.from_position
            last_message = self._monotonic()
            if request.include_initial:
                initial = view.wire(self._initial(session_id, request.from_position, wanted))
                sent_at = yield from self._fanout.send(watcher, [(request.from_position, initial)])
                last_message = sent_at or last_message
            yield from self._follow(watcher, context, view, interval, last_message)
        finally:
            self._fanout.unregister(watcher)

    @staticmethod
    def _interval(request: pb.WatchSessionRequest) -> float:
        if request.progress_interval_ms < 0:
            raise ValidationError(
                f"progress_interval_ms must be 0 or more, not {request.progress_interval_ms}"
            )
        if request.progress_interval_ms == 0:
            return DEFAULT_PROGRESS_INTERVAL
        return max(MIN_PROGRESS_INTERVAL, request.progress_interval_ms / 1000)

    def _initial(
        self, session_id: str, position: int, wanted: frozenset[str]
    ) -> pb.WatchSessionResponse:
        state = self._store.state_at(session_id, position)
        variables = [
            variable_to_proto(variable)
            for variable in (state.by_name() if state is not None else ())
            if not wanted or variable.id in wanted or variable.name in wanted
        ]
        return pb.WatchSessionResponse(
            initial=pb.WatchInitial(position=position, variables=variables)
        )

    def _follow(
        self,
        watcher: Watcher,
        context: grpc.ServicerContext,
        view: View,
        interval: float,
        last_message: float,
    ) -> Iterator[Outgoing]:
        """Catch up, then stream live events and progress until the call ends."""
        fanout = self._fanout
        caught_up_sent = False
        while True:
            if watcher.done or not context.is_active():
                return
            # Once caught up, wait for a live event until the next progress is due.
            events = fanout.take(watcher, last_message + interval if caught_up_sent else None)
            if watcher.done:
                return
            if events:
                outgoing = self._messages.pack(events, view)
                for start in range(0, len(outgoing), SLOT_MESSAGES):  # one turn each
                    turn: Iterable[tuple[int, Outgoing | None]]
                    turn = outgoing[start : start + SLOT_MESSAGES]
                    if start + SLOT_MESSAGES >= len(outgoing):
                        turn = self._topped_up(watcher, turn, view)
                    sent_at = yield from fanout.send(watcher, turn)
                    last_message = sent_at or last_message
                    if watcher.done or watcher.ring.closed:
                        break  # the loop's top ends the stream
                if self._monotonic() < last_message + interval:
                    continue
            elif caught_up_sent and self._monotonic() < last_message + interval:
                continue  # woken for nothing (a cancellation check, or too early)
            # Caught up for the first time, or nothing sent for a whole interval.
            progress = view.wire(
                pb.WatchSessionResponse(progress=pb.WatchProgress(position=watcher.cursor))
            )
            last_message = (yield from fanout.send(watcher, [(watcher.cursor, progress)])) or (
                self._monotonic()
            )
            caught_up_sent = True

    def _topped_up(
        self, watcher: Watcher, turn: Sequence[tuple[int, Outgoing | None]], view: View
    ) -> Iterator[tuple[int, Outgoing | None]]:
        """A send turn's messages, then (while the turn holds fewer than SLOT_MESSAGES)
        those of the live events that reached the ring meanwhile: a watcher that waited
        for its slot sends them in this turn rather than after another wait."""
        yield from turn
        room = SLOT_MESSAGES - len(turn)
        position = turn[-1][0]
        while room > 0:
            more = self._fanout.ready(watcher, position + 1, room * view.per_message)
            if not more:
                return
            outgoing = self._messages.pack(more, view)
            yield from outgoing
            room -= len(outgoing)
            position = outgoing[-1][0]

    def close(self) -> None:
        """End every watch with UNAVAILABLE and refuse new ones (server shutdown)."""
        self._fanout.close()


def _cancel(context: grpc.ServicerContext, details: str) -> None:
    """End a call whose handler is stuck in a send with RESOURCE_EXHAUSTED and ``details``.

    gRPC's public ``cancel()`` would only say CANCELLED; the core call it wraps can carry a
    status, so that is used when present (falling back to the public one).
    """
    call: Any = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        call.cancel(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], details)
    except (AttributeError, TypeError, ValueError):  # not the core call this was written for
        context.cancel()
