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
  cursor only moves one position at a time, so every position is sent once, in order.
* **Slow watchers are dropped.** A watcher whose next event has left the ring fell more
  than ``buffer_size`` events behind: its stream ends with RESOURCE_EXHAUSTED "watcher fell
  more than N events behind; reconnect from position P". A stream stuck in a send (a
  client that stopped reading) is found by the fan-out's janitor, which cancels the call
  with that status so its thread is freed. Writers never wait for any of this.
* **Writers first.** Every streamed message costs the gRPC server's one completion-queue
  thread an event, and writers' calls queue behind them; so at most ``send_slots``
  watchers send at once, in turns (see :class:`~varstore.api.fanout.SendGate`). Writers'
  latency then stays flat however many watchers there are; watchers share the remaining
  capacity and, if the writes outrun it for long, fall behind and are dropped as above.
* **Changes.** Each WatchEvent carries the event and, for every variable it touched (all
  the items of a batch, every live variable for a SessionDeleted), the change with its new
  and previous value, read from the session's history. Messages are built once per event
  and shared by the watchers that see the same thing.
* **Filters.** With ``variables`` set, a change is kept when its variable id or name is
  listed, and an event is sent only when it keeps a change or is a session event
  (SessionCreated, SessionDeleted, SessionForked); the positions of the events left out
  are covered by the next progress message.
* **Progress.** A WatchProgress(position) says every event up to the position has been
  sent (or filtered out). One is sent as soon as the stream has caught up with the log,
  then whenever nothing was sent for ``progress_interval_ms``.
* **Deleted sessions** keep their log: a watch may start on one, and a watch that sees the
  SessionDeleted event keeps streaming, since the id may be created again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from cachetools import LRUCache

from varstore.api.convert import variable_to_proto
from varstore.api.event_codec import change_to_proto, event_to_proto
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
from varstore.eventstore.events import RecordedEvent
from varstore.types import (
    OutOfRange,
    SessionNotFound,
    ValidationError,
    describe,
)
from varstore.types.events import is_session_event, touched_variable_ids
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_PROGRESS_INTERVAL",
    "WatchHub",
]

#: Seconds without a message after which a progress message is sent (request value 0).
DEFAULT_PROGRESS_INTERVAL: Final = 1.0
#: Shortest progress interval honoured, in seconds.
MIN_PROGRESS_INTERVAL: Final = 0.01
#: Bytes of event messages kept for the other watchers of a session (by encoded size).
ENCODED_CACHE_BYTES: Final = 32 << 20


@dataclass(frozen=True, slots=True)
class _Encoded:
    """One event's messages, built once and shared by the watchers."""

    event: pb.Event
    changes: list[pb.VariableChange]
    #: The message for unfiltered watches.
    response: pb.WatchSessionResponse = field(repr=False)
    #: Encoded size of ``response``, the cache's measure.
    size: int = 0


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
        self._encoded: LRUCache[tuple[str, int, int], _Encoded] = LRUCache(
            ENCODED_CACHE_BYTES, getsizeof=lambda encoded: encoded.size
        )
        self._encoded_lock = threading.Lock()

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
    ) -> Iterator[pb.WatchSessionResponse]:
        """The messages of one watch stream (see the module docstring).

        Raises:
            SessionNotFound: the session never existed.
            ValidationError: a negative from_position or progress_interval_ms.
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
                initial = self._initial(session_id, request.from_position, wanted)
                sent_at = yield from self._fanout.send(watcher, [(request.from_position, initial)])
                last_message = sent_at or last_message
            yield from self._follow(watcher, context, wanted, interval, last_message)
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
        wanted: frozenset[str],
        interval: float,
        last_message: float,
    ) -> Iterator[pb.WatchSessionResponse]:
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
                for start in range(0, len(events), SLOT_MESSAGES):
                    outgoing = [
                        (event.position, self._message(event, wanted))
                        for event in events[start : start + SLOT_MESSAGES]
                    ]
                    sent_at = yield from fanout.send(watcher, outgoing)
                    last_message = sent_at or last_message
                    if watcher.done or watcher.ring.closed:
                        break  # the loop's top ends the stream
                if self._monotonic() < last_message + interval:
                    continue
            elif caught_up_sent and self._monotonic() < last_message + interval:
                continue  # woken for nothing (a cancellation check, or too early)
            # Caught up for the first time, or nothing sent for a whole interval.
            progress = pb.WatchSessionResponse(progress=pb.WatchProgress(position=watcher.cursor))
            last_message = (yield from fanout.send(watcher, [(watcher.cursor, progress)])) or (
                self._monotonic()
            )
            caught_up_sent = True

    # -- messages -------------------------------------------------------------------------------

    def _message(
        self, event: RecordedEvent, wanted: frozenset[str]
    ) -> pb.WatchSessionResponse | None:
        """The message for one event, or None when a filter leaves it out."""
        encoded = self._encode(event)
        if not wanted:
            return encoded.response
        changes = [c for c in encoded.changes if c.variable_id in wanted or c.name in wanted]
        if not changes and not is_session_event(event.type):
            return None
        return pb.WatchSessionResponse(event=pb.WatchEvent(event=encoded.event, changes=changes))

    def _encode(self, event: RecordedEvent) -> _Encoded:
        key = (event.session_id, event.position, event.global_position)
        with self._encoded_lock:
            found = self._encoded.get(key)
        if found is not None:
            return found
        message = event_to_proto(event)
        history = self._store.history(event.session_id)
        changes = [
            change_to_proto(change)
            for variable_id in self._touched(event)
            for change in history.changes_at(variable_id, event.position)
        ]
        response = pb.WatchSessionResponse(event=pb.WatchEvent(event=message, changes=changes))
        encoded = _Encoded(message, changes, response, response.ByteSize())
        if encoded.size <= ENCODED_CACHE_BYTES // 8:  # a huge one would evict all the rest
            with self._encoded_lock:
                self._encoded[key] = encoded
        return encoded

    def _touched(self, event: RecordedEvent) -> list[str]:
        """Ids of the variables an event changed, in the event's order (the registry says
        which; a SessionDeleted changes every variable live just before it)."""

        def live() -> list[str]:
            before = self._store.state_at(event.session_id, event.position - 1)
            return [variable.id for variable in before.by_name()] if before is not None else []

        return touched_variable_ids(event.type, event.payload, live)

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
