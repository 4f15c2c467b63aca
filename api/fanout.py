"""The watch fan-out: each watched session's recent events in one ring that all its
watchers read, each watcher's cursor, and dropping whoever falls behind.

No gRPC and no messages here: :mod:`varstore.api.watch` turns what a watcher takes into
stream messages and sends them through :meth:`FanOut.send`. Watchers are coroutines on
the server's event loop: none holds a thread, however many there are.

* **One listener, shared rings.** The fan-out subscribes ONE listener to the store
  (``store.subscribe``). For every watched session it keeps a *ring*: the newest
  ``buffer_size`` recorded events of that session in a fixed-size circular buffer shared
  by all its watchers. The listener, which runs on the committing thread, only puts the
  commit's events into the rings and tells the loop (one ``call_soon_threadsafe`` per
  ring, however many watchers it has): no conversion, no I/O, nothing that waits on a
  watcher.
* **Prepared once, then woken.** On the loop, a ring's new events are first handed to
  ``prepare`` in the thread pool, once (the watch encodes them there, so that no watcher
  reads the store on the loop), and only then do its waiting watchers wake.
* **One cursor per watcher.** A watcher's cursor is the last position it has covered.
  :meth:`FanOut.take` gives the events after it: from the ring while the ring still holds
  them; else, up to the position the session had when the watcher registered
  (``until``), from the recorder a page at a time, in the pool (catch-up); else it waits.
* **No gap, no repeat.** A watcher registers its ring *before* it reads where the log
  stands (``until``). The store publishes a commit before calling listeners, so every
  event above ``until`` reaches the ring after the registration; events up to it come
  from the recorder. The cursor only moves one position at a time, so every position is
  covered once, in order.
* **Slow watchers are dropped.** A watcher whose next event has left the ring fell more
  than ``buffer_size`` events behind: :meth:`FanOut.take` raises LimitExceeded "watcher
  fell more than N events behind; reconnect from position P". A watcher stuck in a send
  (a client that stopped reading: the transport's flow control holds the write) is found
  by a janitor on the loop, which calls the watcher's ``cancel`` with that text and
  forgets it. Writers never wait for any of this, and nothing is buffered past the ring
  and the transport's window.
* **Writers first.** At most ``send_slots`` watchers write at once, in turns (see
  :class:`SendGate`); a turn also sends what reached the ring while the watcher waited
  for it (:meth:`FanOut.more`), so the messages per second stay within what the loop can
  write beside the writers' calls, and the events per message grow with the load.

Threads: the listener and :meth:`FanOut.close` may run on any thread; everything else
runs on the event loop. The fan-out's lock guards the rings and their watcher sets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
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
    "FanOut",
    "Ring",
    "SendGate",
    "Watcher",
]

log = logging.getLogger(__name__)

#: Events a watched session's ring holds: how far a watcher may fall behind the writers.
DEFAULT_BUFFER_SIZE: Final = 10_000
#: Most watchers registered at once.
DEFAULT_MAX_WATCHERS: Final = Limits().max_watchers
#: Events read from the recorder, or taken from the ring, at a time.
PAGE_SIZE: Final = 256
#: Watchers writing at once (see SendGate).
DEFAULT_SEND_SLOTS: Final = 4

M = TypeVar("M")


class Ring:
    """The newest ``capacity`` events of one session, in a circular buffer.

    The listener writes (under ``lock``); watchers read without it and check that each
    slot still holds the position they asked for (a lapped slot means evicted). ``ready``
    (the newest position prepared), ``waiters`` and ``loop`` belong to the event loop.
    """

    def __init__(self, session_id: str, capacity: int) -> None:
        self.session_id = session_id
        self.capacity = capacity
        self.slots: list[RecordedEvent | None] = [None] * capacity
        #: (position of the newest event held, how many are held); replaced whole.
        self.span: tuple[int, int] = (0, 0)
        self.lock = threading.Lock()
        #: Changed under the fan-out's lock only.
        self.watchers: set[Watcher] = set()
        self.closed = False
        #: The newest position whose events were prepared: watchers take up to it.
        self.ready = 0
        #: Futures of the watchers waiting for an event (resolved by :meth:`wake`).
        self.waiters: set[asyncio.Future[None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Called on the loop after events were added (or the ring closed).
        self.on_change: Callable[[Ring], None] = Ring.wake
        self._told = False
        self.preparing = False

    def add(self, events: Sequence[RecordedEvent]) -> None:
        """Append one commit's events of this session and tell the loop (any thread)."""
        with self.lock:
            newest, count = self.span
            for event in events:
                if count and event.position <= newest:
                    continue  # already held (cannot happen: commits arrive in order)
                if count and event.position != newest + 1:
                    count = 0  # a gap (cannot happen): restart; watchers behind it drop
                self.slots[event.position % self.capacity] = event
                newest, count = event.position, min(count + 1, self.capacity)
            self.span = (newest, count)
        self.tell()

    def tell(self) -> None:
        """Have the loop run ``on_change`` soon (any thread; one call however many times
        this is told before it runs)."""
        loop = self.loop
        if loop is not None and not self._told:
            self._told = True
            try:
                loop.call_soon_threadsafe(self._changed)
            except RuntimeError:  # the loop is closed (the server has stopped)
                self._told = False

    def _changed(self) -> None:
        self._told = False  # before reading the span: a later add tells again
        self.on_change(self)

    def oldest(self) -> int | None:
        """Position of the oldest event held; None while empty."""
        newest, count = self.span
        return newest - count + 1 if count else None

    def take(
        self, position: int, limit: int, upto: int | None = None
    ) -> tuple[list[RecordedEvent], bool]:
        """Up to ``limit`` events from ``position`` on (none above ``upto``), and whether
        ``position`` has already left the ring (evicted). Lock-free."""
        top, count = self.span
        newest = top if upto is None else min(top, upto)
        if not count or position > newest:
            return [], False
        if position < top - count + 1:
            return [], True
        found: list[RecordedEvent] = []
        for wanted in range(position, min(newest, position + limit - 1) + 1):
            event = self.slots[wanted % self.capacity]
            if event is None or event.position != wanted:  # lapped while reading
                return found, not found
            found.append(event)
        return found, False

    def wake(self) -> None:
        """Wake every waiting watcher (on the loop)."""
        waiters, self.waiters = self.waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


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
    #: The call ended (cancelled, dropped, finished).
    done: bool = False
    #: Cancelled by the janitor for falling behind.
    dropped: bool = False
    #: What the watcher waits on while it waits for an event.
    waiting: asyncio.Future[None] | None = None

    def end(self) -> None:
        """The call ended: stop waiting and sending (on the loop)."""
        self.done = True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)


class SendGate:
    """Lets at most ``slots`` watchers write at once, first come, first served (on the loop).

    Every message costs the event loop, which also carries the writers' calls: capping the
    writes in flight keeps the writers' share of the loop however many watchers there are,
    and a watcher that waited for its turn sends everything that arrived meanwhile in as
    few messages as it may (see :meth:`FanOut.more`). A holder whose send has hung for
    ``lease`` seconds (a client that stopped reading) loses its slot to the next in line.
    """

    def __init__(self, slots: int, lease: float) -> None:
        self._slots = slots
        self._lease = lease
        self._holders: set[Watcher] = set()
        self._queue: deque[tuple[Watcher, asyncio.Future[None]]] = deque()

    async def acquire(self, watcher: Watcher) -> None:
        """Wait for a slot."""
        if len(self._holders) < self._slots and not self._queue:
            self._holders.add(watcher)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((watcher, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if (watcher, turn) in self._queue:
                self._queue.remove((watcher, turn))
            self.release(watcher)
            raise

    def release(self, watcher: Watcher) -> None:
        """Give the slot back (a no-op if it was taken back from a hung send)."""
        if watcher in self._holders:
            self._holders.discard(watcher)
            self._hand_over()

    def take_back_hung(self, now: float) -> None:
        """Free the slots of holders whose send has hung for the lease."""
        for holder in list(self._holders):
            started = holder.send_started
            if started is not None and now - started >= self._lease:
                self._holders.discard(holder)  # it keeps going without one
        self._hand_over()

    def _hand_over(self) -> None:
        while self._queue and len(self._holders) < self._slots:
            watcher, turn = self._queue.popleft()
            if not turn.done():
                self._holders.add(watcher)
                turn.set_result(None)


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
        send_slots: Watchers that may write at once (see :class:`SendGate`).
        send_lease: Seconds a hung send keeps its slot.
        prepare: Called in the thread pool with a ring's new events, once, before its
            watchers wake (None: nothing to prepare).
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
        prepare: Callable[[Sequence[RecordedEvent]], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        per_session = max_watchers if max_watchers_per_session is None else max_watchers_per_session
        if buffer_size < 1 or max_watchers < 1 or per_session < 1:
            raise ValueError(
                "buffer_size, max_watchers and max_watchers_per_session must be at least 1"
            )
        self._store = store
        self.buffer_size = buffer_size
        self.max_watchers = max_watchers
        self.max_watchers_per_session = per_session
        self._stuck_after = stuck_after
        self._prepare = prepare
        self.monotonic = monotonic
        self._lock = threading.Lock()
        # Read by the listener without the lock (one dict lookup per event).
        self._rings: dict[str, Ring] = {}
        #: Watchers dropped for falling behind since start (a metric; GIL-atomic enough).
        self.dropped_watchers = 0
        self._count = 0
        self._closed = False
        self._janitor: asyncio.TimerHandle | None = None
        self.gate = SendGate(send_slots, send_lease)
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

    def _on_change(self, ring: Ring) -> None:
        """On the loop, after events reached ``ring``: prepare them, then wake."""
        newest = ring.span[0]
        if ring.preparing:
            return  # the running preparation looks again when it is done
        if ring.closed or self._prepare is None or newest <= ring.ready:
            ring.ready = max(ring.ready, newest)
            ring.wake()
            return
        ring.preparing = True
        asyncio.get_running_loop().create_task(self._prepared(ring))

    async def _prepared(self, ring: Ring) -> None:
        """Prepare the ring's new events in the pool (until none is left), waking its
        watchers after each batch."""
        assert self._prepare is not None
        loop = asyncio.get_running_loop()
        try:
            while not ring.closed:
                newest, count = ring.span
                if newest <= ring.ready:
                    break
                first = max(ring.ready + 1, newest - count + 1)
                events, _ = ring.take(first, newest - first + 1)
                if events:
                    try:
                        await loop.run_in_executor(None, self._prepare, events)
                    except Exception:  # the watchers prepare their own (and say why)
                        log.exception("preparing the events of a watched session failed")
                ring.ready = max(ring.ready, events[-1].position if events else newest)
                ring.wake()
        finally:
            ring.preparing = False
            ring.wake()

    # -- watchers -------------------------------------------------------------------------------

    @property
    def watcher_count(self) -> int:
        """How many watchers are registered."""
        return self._count

    def register(self, session_id: str, cancel: Callable[[str], None]) -> Watcher:
        """A new watcher of ``session_id``, its cursor not yet placed (see :meth:`start`);
        on the event loop.

        Raises:
            Unavailable: the fan-out is closed (server shutdown).
            LimitExceeded: ``max_watchers`` are already registered, or
                ``max_watchers_per_session`` of this session.
        """
        loop = asyncio.get_running_loop()
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
                ring = Ring(session_id, self.buffer_size)
                ring.loop = loop
                ring.on_change = self._on_change
                self._rings[session_id] = ring
            watcher = Watcher(ring, cancel)
            ring.watchers.add(watcher)
            self._count += 1
        if self._janitor is None:
            period = max(0.05, self._stuck_after / 2)
            self._janitor = loop.call_later(period, self._sweep, loop, period)
        return watcher

    def start(self, watcher: Watcher) -> int:
        """Pin the end of the catch-up (``until``) to where the session's log stands now,
        after the registration, so no event falls between recorder and ring; returns it."""
        published = self._store.published(watcher.ring.session_id)
        watcher.until = published.position if published is not None else 0
        return watcher.until

    def unregister(self, watcher: Watcher) -> None:
        """Forget ``watcher`` (idempotent); a ring nobody watches is dropped."""
        watcher.end()
        ring = watcher.ring
        with self._lock:
            if watcher not in ring.watchers:
                return
            ring.watchers.discard(watcher)
            self._count -= 1
            if not ring.watchers and self._rings.get(ring.session_id) is ring:
                del self._rings[ring.session_id]

    # -- a watcher's side -----------------------------------------------------------------------

    async def take(self, watcher: Watcher, wait_until: float | None = None) -> list[RecordedEvent]:
        """The next events after the watcher's cursor, in order and consecutive (up to
        PAGE_SIZE); empty when there are none yet. With ``wait_until`` (a ``monotonic``
        time), waits for a live event until then; a watcher that ends meanwhile gets none.

        Raises:
            Unavailable: the fan-out closed (server shutdown): "reconnect from position P".
            LimitExceeded: the next event has left the ring (the watcher fell behind).
        """
        ring = watcher.ring
        position = watcher.cursor + 1
        events, evicted = ring.take(position, PAGE_SIZE, ring.ready)
        if not events and not evicted and position > watcher.until and wait_until is not None:
            await self._wait(watcher, wait_until)
            if watcher.done:
                return []
            events, evicted = ring.take(position, PAGE_SIZE, ring.ready)
        if ring.closed:
            raise Unavailable(
                f"the server is shutting down; reconnect from position {watcher.sent}",
                info={"position": str(watcher.sent)},
            )
        if not events and position <= watcher.until:
            last = min(watcher.until, position + PAGE_SIZE - 1)
            events = await asyncio.get_running_loop().run_in_executor(
                None, self._store.recorder.read_session, ring.session_id, position, last
            )
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

    async def send(
        self,
        watcher: Watcher,
        outgoing: Iterable[tuple[int, M | None]],
        write: Callable[[M], Awaitable[None]],
    ) -> float | None:
        """``write`` the messages of ``outgoing`` in order, each with the last position it
        covers (None: positions left out, nothing to send), moving the cursor as each
        goes. Returns when the last message was sent (None if none was)."""
        sent_at: float | None = None
        for position, message in outgoing:
            if watcher.done:
                break
            if message is None:
                watcher.cursor = watcher.sent = position
                continue
            watcher.cursor = position
            watcher.send_started = self.monotonic()
            try:
                await write(message)
            finally:
                watcher.send_started = None
            sent_at = self.monotonic()
            watcher.sent = position
        return sent_at

    def more(self, watcher: Watcher, after: int) -> list[RecordedEvent]:
        """The live events after position ``after`` the ring holds prepared right now (up
        to PAGE_SIZE): what a watcher that waited for its send slot adds to its turn. Never
        waits and never reads the recorder."""
        ring = watcher.ring
        if after < watcher.until or ring.closed or watcher.done:
            return []
        return ring.take(after + 1, PAGE_SIZE, ring.ready)[0]

    async def _wait(self, watcher: Watcher, deadline: float) -> None:
        """Wait until the ring has news (or closes, or the watcher ends), or ``deadline``."""
        ring = watcher.ring
        left = deadline - self.monotonic()
        if left <= 0 or ring.closed or watcher.done:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        ring.waiters.add(waiter)
        watcher.waiting = waiter
        timer = loop.call_later(left, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            ring.waiters.discard(waiter)
            watcher.waiting = None

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

    def _sweep(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        """Janitor (on the loop): cancel watchers that fell off their ring while stuck in a
        send (a client that stopped reading); runs while any watcher is registered."""
        with self._lock:
            if self._count == 0 or self._closed:
                self._janitor = None
                return
            watchers = [w for ring in self._rings.values() for w in ring.watchers]
        now = self.monotonic()
        self.gate.take_back_hung(now)
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
                self.unregister(watcher)
        self._janitor = loop.call_later(period, self._sweep, loop, period)

    def close(self) -> None:
        """Stop every watcher (their ``take`` raises Unavailable) and refuse new ones (any
        thread)."""
        with self._lock:
            self._closed = True
            rings = list(self._rings.values())
        self._unsubscribe()
        for ring in rings:
            ring.closed = True
            ring.tell()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
