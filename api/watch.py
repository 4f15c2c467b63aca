"""WatchSession: a session's events from a position on, then live, as stream messages.

The fan-out (:mod:`varstore.api.fanout`) keeps each watched session's recent events in a
ring shared by its watchers, moves each watcher's cursor, gates the sends and drops the
watchers that fall behind; this module turns what a watcher takes into messages and
handles the gRPC call. How a watch works:

* **One listener, shared rings.** The fan-out subscribes ONE listener to the store; the
  committing thread only drops each commit's events into the watched sessions' rings.
* **No thread per watch.** Each stream is a coroutine on the server's event loop with a
  cursor: the last position it has covered. Its next event comes from the ring when the
  ring still holds it; else, up to the position the session had when the watch
  registered, from the recorder a page at a time, read in the thread pool (catch-up);
  else it waits. A thousand watches cost a thousand coroutines, not a thousand threads.
* **No gap, no repeat.** The watch registers its ring *before* it reads where the log
  stands (P). The store publishes a commit before calling listeners, so every event above
  P reaches the ring after the registration; events below P come from the recorder. The
  cursor only moves forward over consecutive positions (a message's events, in order), so
  every position is sent once, in order.
* **Slow watchers are dropped.** A watcher whose next event has left the ring fell more
  than ``buffer_size`` events behind: its stream ends with RESOURCE_EXHAUSTED "watcher fell
  more than N events behind; reconnect from position P". A stream stuck in a send (a
  client that stopped reading) is found by the fan-out's janitor, which ends the call
  with that status and forgets the watcher. Writers never wait for any of this.
* **Writers first.** The event loop writes every watch's messages and also carries the
  writers' calls, so at most ``send_slots`` watchers write at once, in turns (see
  :class:`~varstore.api.fanout.SendGate`); a turn also sends what reached the ring while
  the watcher waited for it, in as few messages as its ``max_events_per_message``
  allows. Writers keep their share of the loop however many watchers there are.
* **Changes.** Each WatchEvent carries the event and, for every variable it touched (all
  the items of a batch, every live variable for a SessionDeleted), the change with its new
  and previous value, read from the session's history. Each event is encoded once and
  shared by the watchers that see the same thing (:mod:`varstore.api.watch_messages`).
* **Several events a message.** A request's ``max_events_per_message`` N above 1 lets
  the events a watcher takes at once (it is catching up, or a burst was written) go in
  WatchEvents messages of up to N (at most MAX_EVENTS_PER_MESSAGE), in order, each event
  whole; 0 or 1 sends one event a message, as before the field existed. Served through
  :func:`~varstore.api.watch_messages.encoded_watches`, the streams write the cached
  encodings themselves; otherwise they write messages.
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

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import grpc

from varstore.api.convert import variable_to_proto
from varstore.api.fanout import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_WATCHERS,
    DEFAULT_SEND_SLOTS,
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
from varstore.eventstore.events import RecordedEvent
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
            the janitor ends the call.
        send_slots: Watch streams that may write at once (see ``fanout.SendGate``).
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
        self._messages = Messages(store)
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
            prepare=self._messages.prepare,
            monotonic=monotonic,
        )

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

    async def watch(self, request: pb.WatchSessionRequest, context: Any) -> None:
        """Write the messages of one watch stream (see the module docstring) to
        ``context`` (a ``grpc.aio.ServicerContext``): WatchSessionResponse messages, or
        their encodings when the call is served through
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
        watcher = self._fanout.register(session_id, lambda details: _drop(context, details))
        try:
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
                initial = await asyncio.get_running_loop().run_in_executor(
                    None, self._initial, session_id, request.from_position, wanted
                )
                sent_at = await self._fanout.send(
                    watcher, [(request.from_position, view.wire(initial))], context.write
                )
                last_message = sent_at or last_message
            await self._follow(watcher, context, view, interval, last_message)
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

    async def _follow(
        self,
        watcher: Watcher,
        context: Any,
        view: View,
        interval: float,
        last_message: float,
    ) -> None:
        """Catch up, then stream live events and progress until the call ends."""
        fanout = self._fanout
        caught_up_sent = False
        while True:
            if watcher.done:
                return
            # Once caught up, wait for a live event until the next progress is due.
            events = await fanout.take(watcher, last_message + interval if caught_up_sent else None)
            if watcher.done:
                return
            if events:
                await fanout.gate.acquire(watcher)
                try:
                    events = [*events, *fanout.more(watcher, events[-1].position)]
                    outgoing = await self._pack(events, view)
                    sent_at = await fanout.send(watcher, outgoing, context.write)
                finally:
                    fanout.gate.release(watcher)
                last_message = sent_at or last_message
                if self._monotonic() < last_message + interval:
                    continue
            elif caught_up_sent and self._monotonic() < last_message + interval:
                continue  # woken for nothing (or too early)
            # Caught up for the first time, or nothing sent for a whole interval.
            progress = view.wire(
                pb.WatchSessionResponse(progress=pb.WatchProgress(position=watcher.cursor))
            )
            sent_at = await fanout.send(watcher, [(watcher.cursor, progress)], context.write)
            last_message = sent_at or self._monotonic()
            caught_up_sent = True

    async def _pack(
        self, events: Sequence[RecordedEvent], view: View
    ) -> list[tuple[int, Outgoing | None]]:
        """The messages of ``events``: from the encodings at hand on the loop, else built
        in the thread pool (they read the session's history)."""
        packed = self._messages.pack(events, view, cached_only=True)
        if packed is not None:
            return packed
        return await asyncio.get_running_loop().run_in_executor(None, self._pack_now, events, view)

    def _pack_now(
        self, events: Sequence[RecordedEvent], view: View
    ) -> list[tuple[int, Outgoing | None]]:
        packed = self._messages.pack(events, view)
        assert packed is not None  # only cached_only answers None
        return packed

    def close(self) -> None:
        """End every watch with UNAVAILABLE and refuse new ones (server shutdown; any
        thread)."""
        self._fanout.close()


def _drop(context: Any, details: str) -> None:
    """End a call whose handler is stuck in a send with RESOURCE_EXHAUSTED and ``details``
    (on the loop). The status goes out after what the transport already holds, so a
    client that reads again learns why, and where to resume."""

    async def abort() -> None:
        # abort raises by design (and a call that already finished refuses it)
        with contextlib.suppress(Exception):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)

    _pending.add(task := asyncio.get_running_loop().create_task(abort()))
    task.add_done_callback(_pending.discard)


#: Aborts under way (the loop keeps only weak references to tasks).
_pending: set[asyncio.Task[None]] = set()
