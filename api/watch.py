"""WatchSession: a session's events from a position on, then live, fanned out to watchers.

How a watch works:

* **One listener, shared rings.** The hub subscribes ONE listener to the store. For every
  watched session it keeps a *ring*: the newest ``buffer_size`` recorded events of that
  session in a fixed-size circular buffer shared by all its watchers. The listener, which
  runs on the committing thread, only puts the commit's events into the rings and wakes
  the waiting watchers: no conversion, no I/O, nothing that waits on a watcher, and the
  same work whether a session has one watcher or two hundred.
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
  client that stopped reading) is found by a janitor thread, which cancels the call with
  that status so its thread is freed. Writers never wait for any of this.
* **Writers first.** Every streamed message costs the gRPC server's one completion-queue
  thread an event, and writers' calls queue behind them; so at most ``send_slots``
  watchers send at once, in turns (see :class:`_SendGate`). Writers' latency then stays
  flat however many watchers there are; watchers share the remaining capacity and, if
  the writes outrun it for long, fall behind and are dropped as above.
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

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from cachetools import LRUCache

from varstore.api.convert import variable_to_proto
from varstore.api.event_codec import change_to_proto, event_to_proto
from varstore.api.store import Store
from varstore.eventstore.events import EventType, RecordedEvent
from varstore.types import (
    LimitExceeded,
    OutOfRange,
    SessionNotFound,
    Unavailable,
    ValidationError,
    describe,
)
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_PROGRESS_INTERVAL",
    "WatchHub",
]

log = logging.getLogger(__name__)

#: Events a watched session's ring holds: how far a watcher may fall behind the writers.
DEFAULT_BUFFER_SIZE: Final = 10_000
#: Most watch streams open at once (each holds one server thread).
DEFAULT_MAX_WATCHERS: Final = 256
#: Seconds without a message after which a progress message is sent (request value 0).
DEFAULT_PROGRESS_INTERVAL: Final = 1.0
#: Shortest progress interval honoured, in seconds.
MIN_PROGRESS_INTERVAL: Final = 0.01
#: Events read from the recorder, or taken from the ring, at a time.
PAGE_SIZE: Final = 256
#: Bytes of event messages kept for the other watchers of a session (by encoded size).
ENCODED_CACHE_BYTES: Final = 32 << 20
#: Watch streams sending at once (see _SendGate).
DEFAULT_SEND_SLOTS: Final = 2
#: Most messages a watcher sends per turn of a send slot.
SLOT_MESSAGES: Final = 16

#: Events sent to filtered watches even when they change none of the watched variables.
_SESSION_EVENTS: Final = frozenset(
    {EventType.SESSION_CREATED, EventType.SESSION_DELETED, EventType.SESSION_FORKED}
)
_SINGLE_VARIABLE_EVENTS: Final = frozenset(
    {EventType.VARIABLE_REGISTERED, EventType.VARIABLE_UPDATED, EventType.VARIABLE_DELETED}
)


class _Ring:
    """The newest ``capacity`` events of one session, in a circular buffer.

    Only the listener writes (under ``cond``); watchers read without the lock and check
    that each slot still holds the position they asked for (a lapped slot means evicted).
    """

    def __init__(self, session_id: str, capacity: int) -> None:
        self.session_id = session_id
        self.capacity = capacity
        self.slots: list[RecordedEvent | None] = [None] * capacity
        #: (position of the newest event held, how many are held); replaced whole.
        self.span: tuple[int, int] = (0, 0)
        self.cond = threading.Condition(threading.Lock())
        #: Changed under the hub's lock only.
        self.watchers: set[_Watcher] = set()
        self.closed = False

    def add(self, events: Sequence[RecordedEvent]) -> None:
        """Append one commit's events of this session and wake the watchers."""
        with self.cond:
            newest, count = self.span
            for event in events:
                if count and event.position <= newest:
                    continue  # already held (cannot happen: commits arrive in order)
                if count and event.position != newest + 1:
                    count = 0  # a gap (cannot happen): restart; watchers behind it drop
                self.slots[event.position % self.capacity] = event
                newest, count = event.position, min(count + 1, self.capacity)
            self.span = (newest, count)
            self.cond.notify_all()

    def oldest(self) -> int | None:
        """Position of the oldest event held; None while empty."""
        newest, count = self.span
        return newest - count + 1 if count else None

    def take(self, position: int, limit: int) -> tuple[list[RecordedEvent], bool]:
        """Up to ``limit`` events from ``position`` on, and whether ``position`` has already
        left the ring (evicted). Lock-free."""
        newest, count = self.span
        if not count or position > newest:
            return [], False
        if position < newest - count + 1:
            return [], True
        found: list[RecordedEvent] = []
        for wanted in range(position, min(newest, position + limit - 1) + 1):
            event = self.slots[wanted % self.capacity]
            if event is None or event.position != wanted:  # lapped while reading
                return found, not found
            found.append(event)
        return found, False

    def wake(self) -> None:
        """Wake every watcher (to notice a cancellation or the hub closing)."""
        with self.cond:
            self.cond.notify_all()


@dataclass(eq=False)
class _Watcher:
    """One open watch stream's position and flags (shared with the janitor)."""

    ring: _Ring
    context: grpc.ServicerContext
    #: The last position covered: sent, or filtered out.
    cursor: int = 0
    #: The last position whose message (if any) the transport has taken.
    sent: int = 0
    #: The session's position when the watch registered: catch-up reads up to here.
    until: int = 0
    #: Monotonic time a send began; None when not sending.
    send_started: float | None = None
    #: The call ended (cancelled, deadline, finished).
    done: bool = False
    #: Cancelled by the janitor for falling behind.
    dropped: bool = False

    def end(self) -> None:
        """gRPC callback: the call terminated."""
        self.done = True
        self.ring.wake()


class _SendGate:
    """Lets at most ``slots`` watchers send at once, first come, first served.

    Every streamed message costs the gRPC server's one completion-queue thread an event,
    and writers' calls queue behind whatever is in flight. Capping the sends in flight
    keeps writers' latency flat however many watchers there are: the watchers share the
    rest, in turns of up to SLOT_MESSAGES messages, and one that falls too far behind is
    dropped. A holder whose send has hung for ``lease`` seconds (a client that stopped
    reading) loses its slot to the next in line.
    """

    def __init__(self, slots: int, lease: float, monotonic: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._slots = slots
        self._lease = lease
        self._monotonic = monotonic
        self._holders: set[_Watcher] = set()
        self._queue: deque[tuple[_Watcher, threading.Event]] = deque()

    def acquire(self, watcher: _Watcher) -> bool:
        """Wait for a slot; False if the watch ended (or the hub closed) meanwhile."""
        with self._lock:
            if len(self._holders) < self._slots and not self._queue:
                self._holders.add(watcher)
                return True
            entry = (watcher, threading.Event())
            self._queue.append(entry)
        while not entry[1].wait(self._lease):
            with self._lock:
                if entry[1].is_set():
                    break  # handed a slot just now
                if watcher.done or watcher.ring.closed:
                    self._queue.remove(entry)
                    return False
                now = self._monotonic()
                for holder in list(self._holders):
                    started = holder.send_started
                    if started is not None and now - started >= self._lease:
                        self._holders.discard(holder)  # hung: it keeps going without one
                self._hand_over()
        return True

    def release(self, watcher: _Watcher) -> None:
        """Give the slot back (a no-op if it was taken back from a hung send)."""
        with self._lock:
            if watcher in self._holders:
                self._holders.discard(watcher)
                self._hand_over()

    def _hand_over(self) -> None:
        while self._queue and len(self._holders) < self._slots:
            watcher, turn = self._queue.popleft()
            self._holders.add(watcher)
            turn.set()


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
        store: The store to watch (the hub subscribes to it once).
        buffer_size: Events kept per watched session; a watcher further behind is dropped.
        max_watchers: Most open watches; one more is refused with RESOURCE_EXHAUSTED.
        stuck_after: Seconds a send may hang, once its watcher fell off the ring, before
            the janitor cancels the call.
        send_slots: Watch streams that may send at once (see ``_SendGate``).
        send_lease: Seconds a hung send keeps its slot.
        monotonic: Clock for progress and stuck sends (injectable for tests).
    """

    def __init__(
        self,
        store: Store,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        stuck_after: float = 1.0,
        send_slots: int = DEFAULT_SEND_SLOTS,
        send_lease: float = 0.2,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if buffer_size < 1 or max_watchers < 1 or send_slots < 1:
            raise ValueError("buffer_size, max_watchers and send_slots must be at least 1")
        self._store = store
        self.buffer_size = buffer_size
        self.max_watchers = max_watchers
        self._stuck_after = stuck_after
        self._monotonic = monotonic
        # Lock order: _lock, then a ring's cond; never the other way round.
        self._lock = threading.Lock()
        # Read by the listener without the lock (one dict lookup per event).
        self._rings: dict[str, _Ring] = {}
        self._count = 0
        self._closed = False
        self._janitor: threading.Thread | None = None
        self._stop = threading.Event()
        self._encoded: LRUCache[tuple[str, int, int], _Encoded] = LRUCache(
            ENCODED_CACHE_BYTES, getsizeof=lambda encoded: encoded.size
        )
        self._encoded_lock = threading.Lock()
        self._gate = _SendGate(send_slots, send_lease, monotonic)
        self._unsubscribe = store.subscribe(self._on_commit)

    # -- the writer's side --------------------------------------------------------------------

    def _on_commit(self, events: Sequence[RecordedEvent]) -> None:
        """Store listener: put each watched session's events into its ring."""
        rings = self._rings
        if not rings:
            return
        grouped: dict[_Ring, list[RecordedEvent]] = {}
        for event in events:
            ring = rings.get(event.session_id)
            if ring is not None:
                grouped.setdefault(ring, []).append(event)
        for ring, its_events in grouped.items():
            ring.add(its_events)

    # -- the stream -----------------------------------------------------------------------------

    @property
    def watcher_count(self) -> int:
        """How many watches are open."""
        return self._count

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
            raise LimitExceeded(
                f"{len(wanted)} variables to watch; the limit is {limit}",
                info={"limit": str(limit)},
            )
        if request.from_position < 0:
            raise ValidationError(f"from_position must be 0 or more, not {request.from_position}")
        if self._store.published(session_id) is None:
            raise SessionNotFound(f"session {describe(session_id)} not found")
        watcher = self._register(session_id, context)
        try:
            if not context.add_callback(watcher.end):
                return  # the call already ended
            # After the registration: every event above `until` will reach the ring.
            published = self._store.published(session_id)
            watcher.until = published.position if published is not None else 0
            if request.from_position > watcher.until:
                raise OutOfRange(
                    f"from_position {request.from_position} is beyond the end of session "
                    f"{describe(session_id)}'s log (position {watcher.until})",
                    info={
                        "position": str(request.from_position),
                        "last_position": str(watcher.until),
                    },
                )
            watcher.cursor = watcher.sent = request.from_position
            last_message = self._monotonic()
            if request.include_initial:
                initial = self._initial(session_id, request.from_position, wanted)
                sent_at = yield from self._send(watcher, [(request.from_position, initial)])
                last_message = sent_at or last_message
            yield from self._follow(watcher, wanted, interval, last_message)
        finally:
            self._unregister(watcher)

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
        watcher: _Watcher,
        wanted: frozenset[str],
        interval: float,
        last_message: float,
    ) -> Iterator[pb.WatchSessionResponse]:
        """Catch up, then stream live events and progress until the call ends."""
        ring, context = watcher.ring, watcher.context
        caught_up_sent = False
        while True:
            if watcher.done or not context.is_active():
                return
            position = watcher.cursor + 1
            events, evicted = ring.take(position, PAGE_SIZE)
            if not events and not evicted and position > watcher.until and caught_up_sent:
                events, evicted = self._wait(watcher, position, last_message + interval)
                if watcher.done:
                    return
            if ring.closed:
                raise Unavailable(
                    f"the server is shutting down; reconnect from position {watcher.sent}",
                    info={"position": str(watcher.sent)},
                )
            if not events and position <= watcher.until:
                last = min(watcher.until, position + PAGE_SIZE - 1)
                events = self._store.recorder.read_session(ring.session_id, position, last)
            elif not events and evicted:
                raise self._fell_behind(watcher)
            if events:
                for start in range(0, len(events), SLOT_MESSAGES):
                    outgoing: list[tuple[int, pb.WatchSessionResponse | None]] = []
                    for event in events[start : start + SLOT_MESSAGES]:
                        expected = watcher.cursor + 1 + len(outgoing)
                        if event.position != expected:  # pragma: no cover - a bug
                            raise RuntimeError(
                                f"watch of {ring.session_id!r} expected position {expected}, "
                                f"got {event.position}"
                            )
                        outgoing.append((event.position, self._message(event, wanted)))
                    sent_at = yield from self._send(watcher, outgoing)
                    last_message = sent_at or last_message
                    if watcher.done or ring.closed:
                        break  # the loop's top ends the stream
                if self._monotonic() < last_message + interval:
                    continue
            elif caught_up_sent and self._monotonic() < last_message + interval:
                continue  # woken for nothing (a cancellation check, or too early)
            # Caught up for the first time, or nothing sent for a whole interval.
            progress = pb.WatchSessionResponse(progress=pb.WatchProgress(position=watcher.cursor))
            last_message = (yield from self._send(watcher, [(watcher.cursor, progress)])) or (
                self._monotonic()
            )
            caught_up_sent = True

    def _send(
        self,
        watcher: _Watcher,
        outgoing: Sequence[tuple[int, pb.WatchSessionResponse | None]],
    ) -> Generator[pb.WatchSessionResponse, None, float | None]:
        """Send the messages (None: an event filtered out) of consecutive positions,
        holding a send slot; returns when the last one was sent (None if none was)."""
        if all(message is None for _, message in outgoing):
            for position, _ in outgoing:
                watcher.cursor = watcher.sent = position
            return None
        if not self._gate.acquire(watcher):
            return None  # the call ended or the hub closed while waiting for a slot
        sent_at: float | None = None
        try:
            for position, message in outgoing:
                watcher.cursor = position
                if message is not None:
                    watcher.send_started = self._monotonic()
                    yield message
                    watcher.send_started = None
                    sent_at = self._monotonic()
                watcher.sent = position
        finally:
            watcher.send_started = None
            self._gate.release(watcher)
        return sent_at

    def _wait(
        self, watcher: _Watcher, position: int, deadline: float
    ) -> tuple[list[RecordedEvent], bool]:
        """Wait (up to ``deadline``) for the event at ``position``; what the ring then has."""
        ring = watcher.ring
        with ring.cond:
            while True:
                events, evicted = ring.take(position, PAGE_SIZE)
                if events or evicted or ring.closed or watcher.done:
                    return events, evicted
                left = deadline - self._monotonic()
                if left <= 0:
                    return [], False
                ring.cond.wait(left)

    def _fell_behind(self, watcher: _Watcher) -> LimitExceeded:
        return LimitExceeded(
            f"watcher fell more than {self.buffer_size} events behind; "
            f"reconnect from position {watcher.sent}",
            info={
                "limit": str(self.buffer_size),
                "position": str(watcher.sent),
                "session_id": watcher.ring.session_id[:200],
            },
        )

    # -- messages -------------------------------------------------------------------------------

    def _message(
        self, event: RecordedEvent, wanted: frozenset[str]
    ) -> pb.WatchSessionResponse | None:
        """The message for one event, or None when a filter leaves it out."""
        encoded = self._encode(event)
        if not wanted:
            return encoded.response
        changes = [c for c in encoded.changes if c.variable_id in wanted or c.name in wanted]
        if not changes and event.type not in _SESSION_EVENTS:
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
        """Ids of the variables an event changed, in the event's order."""
        payload = event.payload
        if event.type in _SINGLE_VARIABLE_EVENTS:
            return [payload["variable_id"]]
        if event.type == EventType.BATCH_APPLIED:
            return list(dict.fromkeys(item["variable_id"] for item in payload["updates"]))
        if event.type == EventType.SESSION_DELETED:
            before = self._store.state_at(event.session_id, event.position - 1)
            return [variable.id for variable in before.by_name()] if before is not None else []
        return []

    # -- watchers -------------------------------------------------------------------------------

    def _register(self, session_id: str, context: grpc.ServicerContext) -> _Watcher:
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if self._count >= self.max_watchers:
                raise LimitExceeded(
                    f"too many watchers: this server streams at most {self.max_watchers} "
                    "watches at once; retry later",
                    info={"limit": str(self.max_watchers)},
                )
            ring = self._rings.get(session_id)
            if ring is None:
                ring = self._rings[session_id] = _Ring(session_id, self.buffer_size)
            watcher = _Watcher(ring, context)
            ring.watchers.add(watcher)
            self._count += 1
            if self._janitor is None:
                self._janitor = threading.Thread(
                    target=self._sweep, name="varstore-watch-janitor", daemon=True
                )
                self._janitor.start()
        return watcher

    def _unregister(self, watcher: _Watcher) -> None:
        ring = watcher.ring
        with self._lock:
            if watcher not in ring.watchers:
                return
            ring.watchers.discard(watcher)
            self._count -= 1
            if not ring.watchers and self._rings.get(ring.session_id) is ring:
                del self._rings[ring.session_id]

    def _sweep(self) -> None:
        """Janitor: cancel the calls of watchers that fell off their ring while stuck in a
        send (a client that stopped reading); runs while any watch is open."""
        period = max(0.05, self._stuck_after / 2)
        while not self._stop.wait(period):
            with self._lock:
                if self._count == 0:
                    self._janitor = None
                    return
                watchers = [w for ring in self._rings.values() for w in ring.watchers]
            now = self._monotonic()
            for watcher in watchers:
                started, oldest = watcher.send_started, watcher.ring.oldest()
                if (
                    started is not None
                    and not watcher.dropped
                    and now - started >= self._stuck_after
                    and oldest is not None
                    and watcher.until < watcher.cursor + 1 < oldest
                ):
                    watcher.dropped = True
                    log.info(
                        "dropping a watcher of session %r stuck at position %d",
                        watcher.ring.session_id,
                        watcher.sent,
                    )
                    _cancel(watcher.context, self._fell_behind(watcher).message)

    def close(self) -> None:
        """End every watch with UNAVAILABLE and refuse new ones (server shutdown)."""
        with self._lock:
            self._closed = True
            rings = list(self._rings.values())
        self._stop.set()
        self._unsubscribe()
        for ring in rings:
            ring.closed = True
            ring.wake()


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
