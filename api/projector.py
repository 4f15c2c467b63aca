"""The projector: the one path from recorded events to what readers see.

Only the projector moves the published session states, the per-session indexes (history,
event times, snapshots), the index of recent request ids, the last applied global position
and, through its listeners, the watch fan-out; and it moves them only by applying events the
log *recorded*. The committer
hands it what it recorded; :meth:`Projector.catch_up` reads what it has not seen (another
writer's events, or an append whose outcome was unknown); a tailer of a shared log will
use the same door. Applying is idempotent: positions already applied are skipped, so the
same event handed over twice, or by two paths, is folded once.

Invariants:

* A published :class:`SessionState` is never mutated; the projector folds into a copy and
  swaps the dict entry, so a reader holding one sees a stable cut.
* Every event with a global position ``<= global_position`` has been applied. Events above
  it may be applied too (our own commit past another writer's event not read yet); such a
  gap is closed by reading the log at once, so it never lasts past one apply.
* :meth:`cut` returns the global position and the states *together*, under the publication
  lock: each state is its session's log folded up to at least every event at or below the
  position, which is what a checkpoint must hold (start-up skips what a state already has).
* A request id is in the request index before the state its write published is, so once a
  write is answered, a retry of it finds its record. The index is not in checkpoints:
  :meth:`remember_requests` rebuilds it at start-up from the log's recent request events.

Lock order: ``_apply_lock`` (one applier at a time, so listeners see commits in order), then
``_publish`` (short: swapping states and the global position), then ``_index_lock``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from varstore.api.collector import collector_paused
from varstore.api.history import EventCache, History
from varstore.api.idempotency import REQUEST_TTL, RequestIndex, RequestKey, RequestRecord
from varstore.eventstore import EventReader, RecordedEvent
from varstore.projections import (
    Fold,
    IndexCut,
    ProjectionError,
    SessionIndex,
    SessionState,
    SnapshotChain,
    Snapshots,
    replay,
)
from varstore.types import OutOfRange, SessionNotFound

__all__ = ["Listener", "Projector"]

log = logging.getLogger(__name__)

#: Called with the events of every apply that brought something new, in global order.
Listener = Callable[[Sequence[RecordedEvent]], None]

#: Events read from the log per query while catching up.
CATCH_UP_PAGE = 1000
#: Events (a log at start-up, a session's index) from which what was just built is
#: frozen out of the garbage collector's scans (gc.freeze; below, a scan is cheap, and
#: freezing often would also keep any cyclic garbage alive at that moment).
FREEZE_AFTER = 100_000


class Projector:
    """Published session states and indexes, moved only by recorded events."""

    def __init__(
        self,
        reader: EventReader,
        *,
        snapshot_every: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        request_ttl: timedelta = REQUEST_TTL,
    ) -> None:
        self._reader = reader
        self.snapshot_every = snapshot_every
        self._clock = clock
        #: The request ids recorded in the last ``request_ttl``.
        self.requests = RequestIndex(request_ttl)
        # Published states, deleted sessions included (their position continues if the id
        # is created again). Read without a lock: one dict lookup.
        self._sessions: dict[str, SessionState] = {}
        self._global = 0
        self._apply_lock = threading.RLock()
        self._publish = threading.Condition(threading.Lock())
        # Snapshots of every session every `snapshot_every` events (saved with checkpoints,
        # so a read of the past folds at most that many events, after a restart too), and
        # the history indexes: kept for every session from its first event on, saved with
        # checkpoints; a session without one (a checkpoint of an older format, or indexes
        # dropped) has it built from its whole log on first use.
        self._snapshots: dict[str, Snapshots] = {}
        self._indexes: dict[str, SessionIndex] = {}
        self._index_lock = threading.Lock()
        #: The events history reads lately (see api/history.py).
        self._events = EventCache()
        #: Sessions whose whole log was folded to build an index (start-up's fold and
        #: folds of at most snapshot_every events for a read of the past are not counted).
        self.index_builds = 0
        self._listeners: list[Listener] = []

    # -- start-up -------------------------------------------------------------------------

    def start(
        self,
        checkpoint: tuple[int, Mapping[str, SessionState]] | None,
        snapshots: Mapping[str, SnapshotChain] | None = None,
        indexes: Mapping[str, SessionIndex] | None = None,
    ) -> None:
        """Publish the checkpoint's states (if any), keep its ``snapshots`` (decoded on
        first use, or by :meth:`settle_snapshots`) and history ``indexes`` and fold the
        log after its position into them all.

        A checkpoint whose states the log does not extend cleanly (a ProjectionError while
        folding the events after it) is ignored with a warning, and the whole log folded.
        """
        with self._apply_lock:
            if checkpoint is not None:
                try:
                    self._snapshots = {
                        sid: Snapshots(
                            self.snapshot_every,
                            pending=_decoder(sid, chain),
                            last=chain.last_position,
                        )
                        for sid, chain in (snapshots or {}).items()
                    }
                    self._indexes = _extending(indexes or {}, checkpoint[1])
                    self._load(checkpoint[0], dict(checkpoint[1]))
                    return
                except ProjectionError as problem:
                    log.warning("ignoring the checkpoint (%s); folding the whole log", problem)
            self._snapshots, self._indexes = {}, {}
            self._load(0, {})

    def settle_snapshots(self) -> None:
        """Decode every session's snapshots the checkpoint held that no read has needed
        yet (run on a thread of its own after start-up: a read that needs a session's
        snapshots meanwhile decodes them, or waits for this)."""
        with self._index_lock:
            every = list(self._snapshots.values())
        for snapshots in every:
            snapshots.settle()

    def remember_requests(self) -> int:
        """Index the request ids the log recorded within the request TTL (start-up: the
        index is not part of a checkpoint). Returns how many ids are remembered."""
        with self._apply_lock:
            now = self._clock()
            for event in self._reader.read_requests(now - self.requests.ttl):
                self.requests.add(event, event.recorded_at)
            self.requests.prune(now)
            return len(self.requests)

    def _load(self, after: int, sessions: dict[str, SessionState]) -> None:
        last = after
        # A fold per session, held open to the end (see Fold: a long fold costs less so).
        folds: dict[str, Fold] = {}
        every = self.snapshot_every
        for event in self._reader.read_all(after):
            sid = event.session_id
            fold = folds.get(sid)
            if fold is None:
                fold = folds[sid] = Fold(sessions.get(sid))
            if event.position > fold.position:
                fold.apply(event)
                self._index_event(event)
                if event.position % every == 0:  # cheap test first: one event in `every`
                    snapshots = self._snapshots_of(sid)
                    if snapshots.due(event.position):
                        folded = fold.state()
                        assert folded is not None  # an event was folded in
                        snapshots.offer(folded, copy=True)
            last = event.global_position
        for sid, fold in folds.items():
            state = fold.state()
            if state is not None:
                sessions[sid] = state
        with self._publish:
            self._sessions = sessions
            self._global = last
            self._publish.notify_all()
        if last >= FREEZE_AFTER:
            gc.freeze()  # the states and snapshots just loaded live long: see _index

    # -- reading --------------------------------------------------------------------------

    @property
    def global_position(self) -> int:
        """Every event at or below this global position is applied."""
        return self._global

    def published(self, session_id: str) -> SessionState | None:
        """The published state of a session, deleted ones included; None if never created."""
        return self._sessions.get(session_id)

    def states(self) -> dict[str, SessionState]:
        """A snapshot of every published state (a C-level copy: safe while writers publish)."""
        return self._sessions.copy()

    def cut(self) -> tuple[int, dict[str, SessionState]]:
        """The global position and the states, taken together (see the module docstring)."""
        with self._publish:
            return self._global, self._sessions.copy()

    def snapshot_chains(self, states: Mapping[str, SessionState]) -> dict[str, list[SessionState]]:
        """Each session's snapshots up to its state in ``states`` (a :meth:`cut`), oldest
        first: what a checkpoint saves beside the states."""
        with self._index_lock:
            chains = {sid: snapshots.states() for sid, snapshots in self._snapshots.items()}
        kept = {
            sid: [s for s in chain if s.position <= states[sid].position]
            for sid, chain in chains.items()
            if sid in states
        }
        return {sid: chain for sid, chain in kept.items() if chain}

    def wait_for(self, session_id: str, position: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until ``session_id`` is applied up to ``position``."""
        deadline = time.monotonic() + timeout
        with self._publish:
            while True:
                state = self._sessions.get(session_id)
                if state is not None and state.position >= position:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._publish.wait(left)

    def request(self, key: RequestKey) -> RequestRecord | None:
        """Where the write with ``key``'s request id was recorded, if it was within the
        request TTL; None for a new id.

        Raises:
            ValidationError: the id was recorded for a request with another body.
        """
        return self.requests.match(key, self._clock())

    def history(self, session_id: str) -> History:
        """The history of a session that exists or existed, or SessionNotFound."""
        return History(self._index(session_id).history, self._reader, session_id, self._events)

    def index_cuts(self, states: Mapping[str, SessionState]) -> dict[str, IndexCut]:
        """The history index of each session of ``states`` (a :meth:`cut`) that has one,
        as it stands now: what a checkpoint saves. An index may be ahead of the state
        (start-up skips what it already has)."""
        with self._index_lock:
            return {
                sid: index.cut()
                for sid, index in self._indexes.items()
                if sid in states and index.position >= states[sid].position
            }

    def position_at_time(self, session_id: str, moment: datetime) -> int:
        """The position of the session's last event recorded at or before ``moment``: from
        the index if it is built, else by a binary search of the log (a session's events
        are recorded in time order), reading one event per step."""
        index = self._indexes.get(session_id)
        if index is not None:
            return index.position_at(moment)
        current = self._sessions.get(session_id)
        if current is None:
            raise SessionNotFound(f"session {session_id!r} not found")
        low, high = 0, current.position  # the answer lies in [low, high]
        while low < high:
            middle = (low + high + 1) // 2
            [event] = self._reader.read_session(session_id, middle, middle)
            if event.recorded_at <= moment:
                low = middle
            else:
                high = middle - 1
        return low

    def state_at(self, session_id: str, position: int) -> SessionState | None:
        """The session as it stood at ``position`` (None before its first event), folded
        from the nearest snapshot at or before it.

        Raises:
            SessionNotFound: the session never existed.
            OutOfRange: the position is beyond the end of the session's applied log.
        """
        current = self._sessions.get(session_id)
        if current is None:
            raise SessionNotFound(f"session {session_id!r} not found")
        if position > current.position:
            raise OutOfRange(
                f"position {position} is beyond the end of session {session_id!r}'s log "
                f"(position {current.position})",
                info={"position": str(position), "last_position": str(current.position)},
            )
        if position == current.position:
            return current
        if position <= 0:
            return None
        base = self._snapshot_before(session_id, position)
        if _distance(base, position) > 2 * self.snapshot_every:
            # Snapshots missing below (dropped, or a checkpoint without them): building
            # the index folds the whole log once and keeps snapshots along the way.
            self._index(session_id)
            base = self._snapshot_before(session_id, position)
        start = base.position + 1 if base is not None else 1
        return replay(self._reader.read_session(session_id, start, position), base)

    def _snapshot_before(self, session_id: str, position: int) -> SessionState | None:
        with self._index_lock:
            snapshots = self._snapshots.get(session_id)
            return snapshots.before(position) if snapshots is not None else None

    def _snapshots_of(self, session_id: str) -> Snapshots:
        """The session's snapshots (made empty if it has none yet). Under _index_lock, or
        at start-up."""
        snapshots = self._snapshots.get(session_id)
        if snapshots is None:
            snapshots = self._snapshots[session_id] = Snapshots(self.snapshot_every)
        return snapshots

    def drop_indexes(self) -> None:
        """Forget every index and snapshot (derived data, rebuilt from the log on demand)."""
        with self._index_lock:
            self._indexes.clear()
            self._snapshots.clear()

    def _index(self, session_id: str) -> SessionIndex:
        index = self._indexes.get(session_id)
        if index is not None:
            return index
        if session_id not in self._sessions:
            raise SessionNotFound(f"session {session_id!r} not found")
        # Built from the log without the lock, so applies (which take it to keep indexes
        # current) never wait for a big session's build; then, under the lock, the events
        # applied meanwhile are folded in before the index is published.
        built = SessionIndex()
        snapshots = Snapshots(self.snapshot_every)
        state: SessionState | None = None
        with collector_paused():  # millions of long-lived objects: see api/collector.py
            while True:  # in pages: a million events read at once would hold them all
                first = built.position + 1
                last = first + CATCH_UP_PAGE * 10 - 1
                page = self._reader.read_session(session_id, first, last)
                if not page:
                    break
                state = _fold_into(built, snapshots, state, page)
        with self._index_lock:
            index = self._indexes.get(session_id)
            if index is None:
                tail = self._reader.read_session(session_id, built.position + 1)
                _fold_into(built, snapshots, state, tail)
                self._snapshots_of(session_id).merge(snapshots)
                index = self._indexes[session_id] = built
                self.index_builds += 1
        if index.position >= FREEZE_AFTER:
            # A big session's index is millions of objects that live as long as the
            # server: out of the collector's generations, a full collection no longer scans
            # them (it took seconds, holding the GIL, with a million-event index).
            gc.freeze()
        return index

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with the newly applied events of every apply, in order, on the
        applying thread (so it must be quick). Returns the function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- applying -------------------------------------------------------------------------

    def apply(
        self,
        events: Sequence[RecordedEvent],
        folded: Mapping[str, SessionState | None] | None = None,
    ) -> None:
        """Apply recorded ``events`` (any sessions, in global order); skip what is applied.

        ``folded`` may hold, per session, the state the committer already folded from the
        published state through exactly these events while deciding; it is adopted instead
        of folding again when its position is the session's last event here and the
        published state is where the events start (so it is that very fold).
        """
        if not events:
            return
        with self._apply_lock:
            fresh = self._apply(events, folded or {})
            self._notify(fresh)
            if events[-1].global_position > self._global:
                self.catch_up()  # another writer's events sit below ours: read them now

    def catch_up(self) -> int:
        """Apply every event the log holds after the global position; returns how many
        were new. Raises RecorderError if the log cannot be read."""
        new = 0
        while True:
            with self._apply_lock:
                page = list(self._reader.read_all(self._global, CATCH_UP_PAGE))
                # Everything up to the page's end is now applied, whatever its numbering.
                fresh = self._apply(page, {}, complete=True)
                self._notify(fresh)
            new += len(fresh)
            if len(page) < CATCH_UP_PAGE:
                return new

    def _apply(
        self,
        events: Sequence[RecordedEvent],
        folded: Mapping[str, SessionState | None],
        complete: bool = False,
    ) -> list[RecordedEvent]:
        """Fold, index and publish ``events``; returns the ones that were new. With
        ``complete``, ``events`` is every event after the global position up to its last
        one (a read of the log), so the global position moves to that last one."""
        by_session: dict[str, list[RecordedEvent]] = {}
        for event in events:
            by_session.setdefault(event.session_id, []).append(event)
        fresh: list[RecordedEvent] = []
        states: dict[str, SessionState] = {}
        for sid, its_events in by_session.items():
            published = self._sessions.get(sid)
            done = published.position if published is not None else 0
            new = [event for event in its_events if event.position > done]
            if not new:
                continue
            if new[0].position != done + 1:  # pragma: no cover - a tailer skipped a page
                new = self._reader.read_session(sid, done + 1, new[-1].position)
            hint = folded.get(sid)
            if (
                hint is not None
                and hint.position == new[-1].position
                and len(new) == len(its_events)
            ):
                states[sid] = hint
            else:
                state = published.copy() if published is not None else None
                states[sid] = replay(new, state)  # type: ignore[assignment]
            fresh.extend(new)
        if not fresh:
            with self._publish:
                self._advance(events, complete)
            return fresh
        fresh.sort(key=lambda event: event.global_position)
        self._index_requests(fresh)
        with self._index_lock:
            for event in fresh:
                self._index_event(event)
            for sid, state in states.items():
                self._snapshots_of(sid).offer(state, copy=False)
        with self._publish:
            self._sessions.update(states)
            self._advance(events, complete)
            self._publish.notify_all()
        return fresh

    def _index_event(self, event: RecordedEvent) -> None:
        """Fold ``event`` into its session's history index: a session's first event starts
        one; a session without one (see __init__) gets it built on first use."""
        index = self._indexes.get(event.session_id)
        if index is None:
            if event.position != 1:
                return
            index = self._indexes[event.session_id] = SessionIndex()
        index.apply(event)

    def _index_requests(self, fresh: Sequence[RecordedEvent]) -> None:
        """Remember the request ids of newly applied events, as recorded now (an import's
        events carry their old times), and forget the expired ones."""
        stamped = [event for event in fresh if event.request_id]
        if not stamped:
            return
        now = self._clock()
        for event in stamped:
            self.requests.add(event, now)
        self.requests.prune(now)

    def _advance(self, events: Sequence[RecordedEvent], complete: bool) -> None:
        """Move the global position over the contiguous run of ``events`` that follows it
        (or, for a complete read, to its end). Called under ``_publish``."""
        if complete:
            if events:
                self._global = max(self._global, events[-1].global_position)
            return
        for event in events:
            if event.global_position == self._global + 1:
                self._global = event.global_position
            elif event.global_position > self._global + 1:
                return

    def _notify(self, fresh: Sequence[RecordedEvent]) -> None:
        if not fresh:
            return
        for listener in list(self._listeners):
            try:
                listener(fresh)
            except Exception:  # a listener's bug must not fail the writers
                log.exception("listener failed")


def _fold_into(
    index: SessionIndex,
    snapshots: Snapshots,
    state: SessionState | None,
    events: Sequence[RecordedEvent],
) -> SessionState | None:
    fold = Fold(state)
    for event in events:
        fold.apply(event)
        index.apply(event)
        if snapshots.due(event.position):
            folded = fold.state()
            assert folded is not None  # an event was folded in
            snapshots.offer(folded, copy=True)
    return fold.state()


def _extending(
    indexes: Mapping[str, SessionIndex], states: Mapping[str, SessionState]
) -> dict[str, SessionIndex]:
    """The ``indexes`` that reach their session's state at least (so the log after the
    checkpoint extends them); any other is left to be built from the log."""
    return {
        sid: index
        for sid, index in indexes.items()
        if sid in states and index.position >= states[sid].position
    }


def _distance(base: SessionState | None, position: int) -> int:
    """Events a read at ``position`` folds from ``base``."""
    return position - (base.position if base is not None else 0)


def _decoder(session_id: str, chain: SnapshotChain) -> Callable[[], list[SessionState]]:
    """``chain``'s states when called; none (the log is folded instead: snapshots are
    derived data) if it does not decode, with a warning."""

    def decode() -> list[SessionState]:
        try:
            return chain.states()
        except Exception as problem:  # noqa: BLE001 - any failure: read the log instead
            log.warning(
                "session %r: the checkpoint's snapshots do not decode (%s: %s); reads of its "
                "past fold the log",
                session_id,
                type(problem).__name__,
                problem,
            )
            return []

    return decode
