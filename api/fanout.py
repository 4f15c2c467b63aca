"""The watch fan-out: each watched session's recent events in one ring that all its
watchers read, each watcher's cursor, the send gate, and dropping whoever falls behind.

No gRPC and no messages here: :mod:`varstore.api.watch` turns what a watcher takes into
stream messages and sends them through :meth:`FanOut.send`.

* **One listener, shared rings.** The fan-out subscribes ONE listener to the store
  (``store.subscribe``). For every watched session it keeps a *ring*: the newest
  ``buffer_size`` recorded events of that session in a fixed-size circular buffer shared
  by all its watchers. The listener, which runs on the committing thread, only puts the
  commit's events into the rings and wakes the waiting watchers: no conversion, no I/O,
  nothing that waits on a watcher, and the same work whether a session has one watcher
  or two hundred.
* **One cursor per watcher.** A watcher's cursor is the last position it has covered.
  :meth:`FanOut.take` gives the events after it: from the ring while the ring still holds
  them; else, up to the position the session had when the watcher registered
  (``until``), from the recorder a page at a time (catch-up); else it waits.
* **No gap, no repeat.** A watcher registers its ring *before* it reads where the log
  stands (``until``). The store publishes a commit before calling listeners, so every
  event above ``until`` reaches the ring after the registration; events up to it come
  from the recorder. The cursor only moves one position at a time, so every position is
  covered once, in order.
* **Slow watchers are dropped.** A watcher whose next event has left the ring fell more
  than ``buffer_size`` events behind: :meth:`FanOut.take` raises LimitExceeded "watcher
  fell more than N events behind; reconnect from position P". A watcher stuck in a send
  (a client that stopped reading) is found by a janitor thread, which calls the watcher's
  ``cancel`` with that text so its thread is freed. Writers never wait for any of this.
* **Writers first.** At most ``send_slots`` watchers send at once, in turns of up to
  SLOT_MESSAGES messages (see :class:`SendGate`). A turn may grow, up to that many
  messages, with the events that reached the ring while the watcher waited for its slot
  (:meth:`FanOut.ready`), so a watcher that waited sends them now, not after another wait.

Lock order: the fan-out's lock, then a ring's ``cond``; never the other way round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from varstore.api.limits import Limits, exceeded
from varstore.api.store import Store
from varstore.eventstore.events import RecordedEvent
from varstore.types import LimitExceeded, Unavailable, describe

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_SEND_SLOTS",
    "PAGE_SIZE",
    "SLOT_MESSAGES",
    "FanOut",
    "Ring",
    "SendGate",
    "Watcher",
]

log = logging.getLogger(__name__)

#: Events a watched session's ring holds: how far a watcher may fall behind the writers.
DEFAULT_BUFFER_SIZE: Final = 10_000
#: Most watchers registered at once (each holds one server thread).
DEFAULT_MAX_WATCHERS: Final = Limits().max_watchers
#: Events read from the recorder, or taken from the ring, at a time.
PAGE_SIZE: Final = 256
#: Watchers sending at once (see SendGate).
DEFAULT_SEND_SLOTS: Final = 2
#: Most messages a watcher sends per turn of a send slot.
SLOT_MESSAGES: Final = 16

M = TypeVar("M")


class Ring:
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
        #: Changed under the fan-out's lock only.
        self.watchers: set[Watcher] = set()
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
        """Wake every watcher (to notice a cancellation or the fan-out closing)."""
        with self.cond:
            self.cond.notify_all()


@dataclass(eq=False)
class Watcher:
    """One watcher's place in its session's log and flags (shared with the janitor)."""

    ring: Ring
    #: Ends the watcher's call from outside with the given text (the janitor's drop).
    cancel: Callable[[str], None]
    #: The last position covered: sent, or filtered out.
    cursor: int = 0
    #: The last position whose message (if any) the transport has taken.
    sent: int = 0
    #: The session's position when the watcher registered: catch-up reads up to here.
    until: int = 0
    #: Monotonic time a send began; None when not sending.
    send_started: float | None = None
    #: The call ended (cancelled, deadline, finished).
    done: bool = False
    #: Cancelled by the janitor for falling behind.
    dropped: bool = False

    def end(self) -> None:
        """The call terminated (a transport callback): stop waiting and sending."""
        self.done = True
        self.ring.wake()


class SendGate:
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
        self._holders: set[Watcher] = set()
        self._queue: deque[tuple[Watcher, threading.Event]] = deque()

    def acquire(self, watcher: Watcher) -> bool:
        """Wait for a slot; False if the watcher ended (or the fan-out closed) meanwhile."""
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

    def release(self, watcher: Watcher) -> None:
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


class FanOut:
    """Every commit's events to the watchers of their sessions, each at its own pace.

    Args:
        store: Where commits come from (``subscribe``, once) and catch-up reads go
            (``published``, ``recorder.read_session``).
        buffer_size: Events kept per watched session; a watcher further behind is dropped.
        max_watchers: Most watchers at once; one more is refused with LimitExceeded.
        max_watchers_per_session: Most watchers of one session at once; one more is
            refused with LimitExceeded (so one session cannot take every slot).
        stuck_after: Seconds a send may hang, once its watcher fell off the ring, before
            the janitor cancels it.
        send_slots: Watchers that may send at once (see :class:`SendGate`).
        send_lease: Seconds a hung send keeps its slot.
        monotonic: Clock for waits and stuck sends (injectable for tests).
    """

    def __init__(
        self,
        store: Store,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        max_watchers_per_session: int | None = None,
        stuck_after: float = 1.0,
        send_slots: int = DEFAULT_SEND_SLOTS,
        send_lease: float = 0.2,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        per_session = max_watchers if max_watchers_per_session is None else max_watchers_per_session
        if buffer_size < 1 or max_watchers < 1 or send_slots < 1 or per_session < 1:
            raise ValueError(
                "buffer_size, max_watchers, max_watchers_per_session and send_slots must be "
                "at least 1"
            )
        self._store = store
        self.buffer_size = buffer_size
        self.max_watchers = max_watchers
        self.max_watchers_per_session = per_session
        self._stuck_after = stuck_after
        self.monotonic = monotonic
        # Lock order: _lock, then a ring's cond; never the other way round.
        self._lock = threading.Lock()
        # Read by the listener without the lock (one dict lookup per event).
        self._rings: dict[str, Ring] = {}
        #: Watchers dropped for falling behind since start (a metric; GIL-atomic enough).
        self.dropped_watchers = 0
        self._count = 0
        self._closed = False
        self._janitor: threading.Thread | None = None
        self._stop = threading.Event()
        self._gate = SendGate(send_slots, send_lease, monotonic)
        self._unsubscribe = store.subscribe(self._on_commit)

    # -- the writer's side --------------------------------------------------------------------

    def _on_commit(self, events: Sequence[RecordedEvent]) -> None:
        """Store listener: put each watched session's events into its ring."""
        rings = self._rings
        if not rings:
            return
        grouped: dict[Ring, list[RecordedEvent]] = {}
        for event in events:
            ring = rings.get(event.session_id)
            if ring is not None:
                grouped.setdefault(ring, []).append(event)
        for ring, its_events in grouped.items():
            ring.add(its_events)

    # -- watchers -------------------------------------------------------------------------------

    @property
    def watcher_count(self) -> int:
        """How many watchers are registered."""
        return self._count

    def register(self, session_id: str, cancel: Callable[[str], None]) -> Watcher:
        """A new watcher of ``session_id``, its cursor not yet placed (see :meth:`start`).

        Raises:
            Unavailable: the fan-out is closed (server shutdown).
            LimitExceeded: ``max_watchers`` are already registered, or
                ``max_watchers_per_session`` of this session.
        """
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if self._count >= self.max_watchers:
                raise exceeded(
                    "max_watchers",
                    self.max_watchers,
                    f"too many watchers: this server streams {self._count} watches; retry later",
                )
            ring = self._rings.get(session_id)
            if ring is not None and len(ring.watchers) >= self.max_watchers_per_session:
                raise exceeded(
                    "max_watchers_per_session",
                    self.max_watchers_per_session,
                    f"too many watchers of session {describe(session_id)}: it has "
                    f"{len(ring.watchers)} watches; retry later",
                    session_id=session_id[:200],
                )
            if ring is None:
                ring = self._rings[session_id] = Ring(session_id, self.buffer_size)
            watcher = Watcher(ring, cancel)
            ring.watchers.add(watcher)
            self._count += 1
            if self._janitor is None:
                self._janitor = threading.Thread(
                    target=self._sweep, name="varstore-watch-janitor", daemon=True
                )
                self._janitor.start()
        return watcher

    def start(self, watcher: Watcher) -> int:
        """Pin the end of the catch-up (``until``) to where the session's log stands now,
        after the registration, so no event falls between recorder and ring; returns it."""
        published = self._store.published(watcher.ring.session_id)
        watcher.until = published.position if published is not None else 0
        return watcher.until

    def unregister(self, watcher: Watcher) -> None:
        """Forget ``watcher`` (idempotent); a ring nobody watches is dropped."""
        ring = watcher.ring
        with self._lock:
            if watcher not in ring.watchers:
                return
            ring.watchers.discard(watcher)
            self._count -= 1
            if not ring.watchers and self._rings.get(ring.session_id) is ring:
                del self._rings[ring.session_id]

    # -- a watcher's side -----------------------------------------------------------------------

    def take(self, watcher: Watcher, wait_until: float | None = None) -> list[RecordedEvent]:
        """The next events after the watcher's cursor, in order and consecutive (up to
        PAGE_SIZE); empty when there are none yet. With ``wait_until`` (a ``monotonic``
        time), waits for a live event until then; a watcher that ends meanwhile gets none.

        Raises:
            Unavailable: the fan-out closed (server shutdown): "reconnect from position P".
            LimitExceeded: the next event has left the ring (the watcher fell behind).
        """
        ring = watcher.ring
        position = watcher.cursor + 1
        events, evicted = ring.take(position, PAGE_SIZE)
        if not events and not evicted and position > watcher.until and wait_until is not None:
            events, evicted = self._wait(watcher, position, wait_until)
            if watcher.done:
                return []
        if ring.closed:
            raise Unavailable(
                f"the server is shutting down; reconnect from position {watcher.sent}",
                info={"position": str(watcher.sent)},
            )
        if not events and position <= watcher.until:
            last = min(watcher.until, position + PAGE_SIZE - 1)
            events = self._store.recorder.read_session(ring.session_id, position, last)
        elif not events and evicted:
            if not watcher.dropped:
                watcher.dropped = True
                self.dropped_watchers += 1
            raise self.fell_behind(watcher)
        for offset, event in enumerate(events):
            if event.position != position + offset:  # pragma: no cover - a bug
                raise RuntimeError(
                    f"watch of {ring.session_id!r} expected position {position + offset}, "
                    f"got {event.position}"
                )
        return events

    def send(
        self, watcher: Watcher, outgoing: Iterable[tuple[int, M | None]]
    ) -> Generator[M, None, float | None]:
        """Yield the messages of ``outgoing`` in order, each with the last position it
        covers (None: positions left out, nothing to send), moving the cursor as each
        goes; a send slot is taken at the first message and held to the end (``outgoing``
        may be a generator that finds more to send meanwhile, see :meth:`ready`). Returns
        when the last message was sent (None if none was)."""
        holding = False
        sent_at: float | None = None
        try:
            for position, message in outgoing:
                if message is None:
                    watcher.cursor = watcher.sent = position
                    continue
                if not holding:
                    if not self._gate.acquire(watcher):
                        return sent_at  # the watcher ended, or the fan-out closed, meanwhile
                    holding = True
                watcher.cursor = position
                watcher.send_started = self.monotonic()
                yield message
                watcher.send_started = None
                sent_at = self.monotonic()
                watcher.sent = position
        finally:
            watcher.send_started = None
            if holding:
                self._gate.release(watcher)
        return sent_at

    def ready(self, watcher: Watcher, position: int, limit: int) -> list[RecordedEvent]:
        """Up to ``limit`` live events from ``position`` on that the ring holds right now:
        what a watcher holding a send slot may add to its turn. Never waits and never
        reads the recorder; empty during the catch-up, once ``position`` has left the
        ring (the next :meth:`take` says so), or once the fan-out closed."""
        ring = watcher.ring
        if position <= watcher.until or ring.closed or watcher.done:
            return []
        return ring.take(position, min(limit, PAGE_SIZE))[0]

    def _wait(
        self, watcher: Watcher, position: int, deadline: float
    ) -> tuple[list[RecordedEvent], bool]:
        """Wait (up to ``deadline``) for the event at ``position``; what the ring then has."""
        ring = watcher.ring
        with ring.cond:
            while True:
                events, evicted = ring.take(position, PAGE_SIZE)
                if events or evicted or ring.closed or watcher.done:
                    return events, evicted
                left = deadline - self.monotonic()
                if left <= 0:
                    return [], False
                ring.cond.wait(left)

    def fell_behind(self, watcher: Watcher) -> LimitExceeded:
        """The error that ends a watcher the writers left behind."""
        return LimitExceeded(
            f"watcher fell more than {self.buffer_size} events behind; "
            f"reconnect from position {watcher.sent}",
            info={
                "limit": str(self.buffer_size),
                "position": str(watcher.sent),
                "session_id": watcher.ring.session_id[:200],
            },
        )

    # -- upkeep -------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Janitor: cancel watchers that fell off their ring while stuck in a send (a
        client that stopped reading); runs while any watcher is registered."""
        period = max(0.05, self._stuck_after / 2)
        while not self._stop.wait(period):
            with self._lock:
                if self._count == 0:
                    self._janitor = None
                    return
                watchers = [w for ring in self._rings.values() for w in ring.watchers]
            now = self.monotonic()
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
                    self.dropped_watchers += 1
                    log.info(
                        "dropping a watcher of session %r stuck at position %d",
                        watcher.ring.session_id,
                        watcher.sent,
                    )
                    watcher.cancel(self.fell_behind(watcher).message)

    def close(self) -> None:
        """Stop every watcher (their ``take`` raises Unavailable) and refuse new ones."""
        with self._lock:
            self._closed = True
            rings = list(self._rings.values())
        self._stop.set()
        self._unsubscribe()
        for ring in rings:
            ring.closed = True
            ring.wake()
