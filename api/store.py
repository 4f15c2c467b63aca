"""The store: writers that commit in groups, and lock-free readers.

Writes are commands (:mod:`varstore.api.commands`). A writer that finds nobody
committing becomes the leader: it takes every command waiting (its own included),
decides each against a private copy of its session's state (folding each decision's
events in before deciding the next, so commands grouped together see each other),
appends all their events in ONE recorder transaction (group commit: one fsync for the
lot), publishes the new states, answers the others, and hands the lead to the first
command that arrived meanwhile. A lone writer therefore does its own work with no thread
handoff, and concurrent writers share fsyncs.

An answer always means "durable", and a reader never sees a change that could still be
lost. Readers take the published :class:`SessionState` of a session, which is never
mutated after publication: a read is one dict lookup, no lock, no database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from varstore.api.commands import Command, ExpireSession, WriteContext, live
from varstore.api.limits import Limits
from varstore.eventstore import Append, NewEvent, RecordedEvent, Recorder, RecorderError
from varstore.projections import (
    SessionHistory,
    SessionIndex,
    SessionState,
    apply_event,
    decode_sessions,
    encode_sessions,
    replay,
)
from varstore.types import OutOfRange, SessionNotFound, Unavailable, VarstoreError

__all__ = ["Store", "Written"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Most commands one group commit takes; bounds the latency a burst adds to its leader.
MAX_GROUP = 512
#: Default distance, in events, between two snapshots of a session (see state_at).
SNAPSHOT_EVERY = 1000

#: Default number of events between two checkpoints of every session's state.
CHECKPOINT_EVERY = 10_000

#: Called after every commit with the events it recorded, in order.
Listener = Callable[[Sequence[RecordedEvent]], None]


@dataclass(frozen=True, slots=True)
class Written(Generic[R]):
    """A command's answer, once its events are durable, and the position it left."""

    result: R
    position: int


@dataclass(slots=True, eq=False)
class _Job:
    """One command on its way through a group; ``signal`` is released exactly once,
    when the job is answered or promoted to lead."""

    session_id: str
    command: Command[Any]
    signal: threading.Lock = field(default_factory=threading.Lock)
    written: Written[Any] | None = None
    error: BaseException | None = None
    promoted: bool = False

    def __post_init__(self) -> None:
        self.signal.acquire()

    def outcome(self) -> Written[Any]:
        if self.error is not None:
            raise self.error
        assert self.written is not None
        return self.written


class Store:
    """Sessions' state, kept as the fold of their logs, and the one way to change it."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        limits: Limits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        snapshot_every: int = SNAPSHOT_EVERY,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.recorder = recorder
        self.snapshot_every = snapshot_every
        self.limits = limits or Limits()
        self._clock = clock
        self._monotonic = monotonic
        # Published states, including deleted sessions (their position continues if the
        # id is created again). The committing leader replaces a session's entry; a state
        # object is never mutated once it is here.
        self._sessions: dict[str, SessionState] = {}
        # Monotonic time of the last call that touched each session, for TTL expiry.
        self._touched: dict[str, float] = {}
        # Lock order: _lock guards _pending and _leading only; nothing else is taken
        # while holding it.
        self._lock = threading.Lock()
        self._pending: list[_Job] = []
        self._leading = False
        self._closed = False
        # Indexes for reads of the past (history, event times, snapshots), built per
        # session on first use from its log, then kept current by whoever commits.
        self._indexes: dict[str, SessionIndex] = {}
        self._index_lock = threading.Lock()
        self._last_time = 0.0
        self._listeners: list[Listener] = []
        # Notified whenever states are published (see wait_until_applied).
        self._applied = threading.Condition(threading.Lock())
        self.checkpoint_every = checkpoint_every
        self._checkpointed = 0
        self._last_global = 0
        self._rebuild()

    # -- reading --------------------------------------------------------------------------

    def session(self, session_id: str) -> SessionState:
        """The live session's current published state, or SessionNotFound."""
        state = live(self._sessions.get(session_id), session_id)
        self._touched[session_id] = self._monotonic()
        return state

    def published(self, session_id: str) -> SessionState | None:
        """The published state of a session, deleted ones included; None if never created.
        Does not count as a touch for TTL expiry."""
        return self._sessions.get(session_id)

    def sessions(self) -> list[SessionState]:
        """Every live session, ordered by id."""
        # copy() is one C call under the GIL: iterating the live dict while a writer adds
        # a session could fail with "dictionary changed size during iteration".
        snapshot = self._sessions.copy()
        return [snapshot[sid] for sid in sorted(snapshot) if not snapshot[sid].deleted]

    def wait_until_applied(self, session_id: str, position: int, timeout: float) -> bool:
        """Wait (up to ``timeout`` seconds) until the published state of ``session_id`` has
        folded in ``position``; True once it has, False on timeout."""
        deadline = time.monotonic() + timeout
        with self._applied:
            while True:
                published = self._sessions.get(session_id)
                if published is not None and published.position >= position:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied.wait(left)

    def expires_in(self, state: SessionState) -> float | None:
        """Seconds until the session expires if nothing touches it; None without a TTL."""
        if state.ttl_seconds <= 0:
            return None
        idle = self._monotonic() - self._touched.get(state.session_id, self._monotonic())
        return max(0.0, state.ttl_seconds - idle)

    def history(self, session_id: str) -> SessionHistory:
        """The history of a session that exists or existed, or SessionNotFound."""
        return self._index(session_id).history

    def position_at_time(self, session_id: str, moment: datetime) -> int:
        """The position of the session's last event recorded at or before ``moment``
        (0 if none was)."""
        return self._index(session_id).position_at(moment)

    def state_at(self, session_id: str, position: int) -> SessionState | None:
        """The session as it stood at ``position`` (None before its first event).

        Starts from the nearest snapshot at or before the position, so it folds at most
        about ``snapshot_every`` events read from the log.

        Raises:
            SessionNotFound: the session never existed.
            OutOfRange: the position is beyond the end of the session's log.
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
        base = self._index(session_id).snapshot_before(position)
        start = base.position + 1 if base is not None else 1
        return replay(self.recorder.read_session(session_id, start, position), base)

    def drop_snapshots(self) -> None:
        """Forget every index and the checkpoint: they are derived data, rebuilt from the
        log on demand, so no answer may change."""
        with self._index_lock:
            self._indexes.clear()
        self.recorder.drop_checkpoint()

    def _index(self, session_id: str) -> SessionIndex:
        index = self._indexes.get(session_id)
        if index is not None:
            return index
        if session_id not in self._sessions:
            raise SessionNotFound(f"session {session_id!r} not found")
        # Built from the log without the lock, so commits (which take it to keep indexes
        # current) never wait for a big session's build; then, under the lock, the events
        # committed meanwhile are folded in before the index is published. apply() skips
        # positions it has seen, so a commit reporting them again is harmless.
        built = SessionIndex(self.snapshot_every)
        state = self._fold_into(built, None, self.recorder.read_session(session_id))
        with self._index_lock:
            index = self._indexes.get(session_id)
            if index is None:
                tail = self.recorder.read_session(session_id, built.position + 1)
                self._fold_into(built, state, tail)
                index = self._indexes[session_id] = built
        return index

    @staticmethod
    def _fold_into(
        index: SessionIndex, state: SessionState | None, events: Sequence[RecordedEvent]
    ) -> SessionState | None:
        for event in events:
            state = apply_event(state, event)
            index.apply(event)
            index.offer_snapshot(state, copy=True)
        return state

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with the events of every commit, in order, on the committing
        thread (so it must be quick). Returns the function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- writing --------------------------------------------------------------------------

    def execute(self, session_id: str, command: Command[R]) -> Written[R]:
        """Run ``command`` on ``session_id``; return once its events are durable.

        Raises the command's VarstoreError, or Unavailable if the log cannot be written
        or the store is closed.
        """
        job = _Job(session_id, command)
        with self._lock:
            if self._closed:
                raise Unavailable("the store is shutting down")
            self._pending.append(job)
            lead = not self._leading
            self._leading = True
        if not lead:
            job.signal.acquire()  # answered, or promoted to lead the next group
            if not job.promoted:
                return job.outcome()
        self._lead(job)
        return job.outcome()

    def expire_idle_sessions(self) -> int:
        """Append SessionDeleted(reason="expired") for every session idle past its TTL.

        Returns how many expired. The server's sweeper calls this every second.
        """
        candidates = [
            state.session_id
            for state in self.sessions()
            if (left := self.expires_in(state)) is not None and left <= 0
        ]

        def is_expired(state: SessionState) -> bool:
            left = self.expires_in(state)
            return left is not None and left <= 0

        return sum(
            1 for sid in candidates if self.execute(sid, ExpireSession(sid, is_expired)).result
        )

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new writes, wait (up to ``timeout`` s) for the group being committed,
        and close the recorder. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._leading:
                    break
            time.sleep(0.005)
        self.recorder.close()

    # -- internals ------------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Published states at start-up: the latest checkpoint, plus the fold of the
        events after it (or of the whole log, without a usable checkpoint)."""
        sessions: dict[str, SessionState] = {}
        after = 0
        checkpoint = self.recorder.load_checkpoint()
        if checkpoint is not None:
            decoded = decode_sessions(checkpoint[1])
            if decoded is not None:
                after, sessions = checkpoint[0], decoded
        last: RecordedEvent | None = None
        for last in self.recorder.read_all(after):
            sessions[last.session_id] = apply_event(sessions.get(last.session_id), last)
        if last is not None:
            after = last.global_position
        self._checkpointed = self._last_global = after
        now = self._monotonic()
        self._sessions = sessions
        self._touched = dict.fromkeys(sessions, now)
        self._last_time = max((s.updated_at.timestamp() for s in sessions.values()), default=0.0)

    def checkpoint(self) -> None:
        """Save a checkpoint of every session's state now (start-up then folds only what
        comes after it)."""
        self._checkpoint(self._last_global)

    def _checkpoint(self, global_position: int) -> None:
        """Save every session's published state; a failure costs only start-up time."""
        try:
            self.recorder.save_checkpoint(global_position, encode_sessions(self._sessions))
            self._checkpointed = global_position
        except RecorderError:
            log.exception("checkpoint at global position %d failed", global_position)

    def _lead(self, me: _Job) -> None:
        """Commit every waiting command as one group, then pass the lead on."""
        with self._lock:
            jobs, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
        try:
            self._run_group(jobs)
        except Exception:  # a bug, not bad input: fail the group loudly, keep serving
            log.exception("commit failed for a group of %d commands", len(jobs))
            for job in jobs:
                if job.written is None and job.error is None:
                    job.error = Unavailable("internal error while writing")
        finally:
            for job in jobs:
                if job is not me:
                    job.signal.release()
            with self._lock:
                if self._pending:
                    successor = self._pending[0]
                    successor.promoted = True
                    successor.signal.release()
                else:
                    self._leading = False

    def _run_group(self, jobs: list[_Job]) -> None:
        now = self._clock()
        if now.timestamp() < self._last_time:  # the wall clock stepped back: keep order
            now = datetime.fromtimestamp(self._last_time, UTC)
        ctx = WriteContext(now=now, limits=self.limits)
        working: dict[str, SessionState | None] = {}
        accepted: list[_Accepted] = []
        for job in jobs:
            sid = job.session_id
            if sid not in working:
                published = self._sessions.get(sid)
                working[sid] = published.copy() if published is not None else None
            state = working[sid]
            try:
                decision = job.command.decide(state, ctx)
            except VarstoreError as refused:
                job.error = refused
                continue
            base = state.position if state is not None else 0
            try:
                after = self._fold(state, sid, base, decision.events)
                answer = decision.respond(after)
            except Exception:
                log.exception("fold failed for %s on session %r", type(job.command).__name__, sid)
                job.error = Unavailable("internal error while applying a change")
                working[sid] = self._refold(sid, accepted)
                continue
            working[sid] = after
            position = base + len(decision.events)
            accepted.append(
                _Accepted(job, Append(sid, base, decision.events), Written(answer, position))
            )
        self._commit(accepted, working)

    @staticmethod
    def _fold(
        state: SessionState | None, sid: str, base: int, events: list[NewEvent]
    ) -> SessionState | None:
        # global_position 0 is provisional: the projection never reads global positions.
        for offset, event in enumerate(events, start=1):
            state = apply_event(state, RecordedEvent.of(event, sid, base + offset, 0))
        return state

    def _refold(self, sid: str, accepted: list[_Accepted]) -> SessionState | None:
        """The working state of ``sid`` rebuilt from the published one and the decisions
        accepted so far (after a fold failed half-way through the working copy)."""
        published = self._sessions.get(sid)
        state = published.copy() if published is not None else None
        for item in accepted:
            if item.append.session_id == sid:
                state = self._fold(
                    state, sid, item.append.expected_position, list(item.append.events)
                )
        return state

    def _commit(self, accepted: list[_Accepted], working: dict[str, SessionState | None]) -> None:
        appends = [item.append for item in accepted if item.append.events]
        recorded: list[RecordedEvent] = []
        if appends:
            try:
                recorded = self.recorder.append_many(appends)
            except RecorderError as failure:
                # Nothing was written and nothing published: the working copies are dropped.
                log.error("append failed; %d commands refused: %s", len(accepted), failure)
                for item in accepted:
                    item.job.error = Unavailable(f"the event log could not be written: {failure}")
                return
        if recorded:
            self._last_time = max(self._last_time, recorded[-1].recorded_at.timestamp())
            self._last_global = recorded[-1].global_position
        now = self._monotonic()
        with self._index_lock:
            for event in recorded:
                index = self._indexes.get(event.session_id)
                if index is not None:
                    index.apply(event)
            for sid in {append.session_id for append in appends}:
                state = working[sid]
                if state is not None:
                    self._sessions[sid] = state
                    self._touched[sid] = now
                    index = self._indexes.get(sid)
                    if index is not None and index.position == state.position:
                        index.offer_snapshot(state, copy=False)
        with self._applied:
            self._applied.notify_all()
        if recorded and recorded[-1].global_position - self._checkpointed >= self.checkpoint_every:
            self._checkpoint(recorded[-1].global_position)
        if recorded:
            for listener in list(self._listeners):
                try:
                    listener(recorded)
                except Exception:  # a listener's bug must not fail the writers
                    log.exception("listener failed")
        for item in accepted:
            item.job.written = item.written


@dataclass(slots=True)
class _Accepted:
    job: _Job
    append: Append
    written: Written[Any]
