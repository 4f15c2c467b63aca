"""The store: writers that commit in groups, and lock-free readers of the projection.

Writes are commands (:mod:`varstore.api.commands`). A writer that finds nobody
committing becomes the leader: it takes every command waiting (its own included),
decides each against a private copy of its session's published state (folding each
decision's events in before deciding the next, so commands grouped together see each
other), appends all their events in ONE recorder transaction (group commit: one fsync for
the lot), hands what was recorded to the :class:`~varstore.api.projector.Projector`,
answers the others, and passes the lead to the first command that arrived meanwhile.

Commits cannot leave the served state behind the log:

* An append that meets a **position conflict** (another writer came first) writes
  nothing; the leader catches the projector up from the log and decides the command again
  (commands are pure), up to ``MAX_ATTEMPTS`` times, then answers ABORTED. Other
  sessions' commands in the same group are recorded and answered as usual.
* An append whose **outcome is unknown** (the recorder raised: a failed COMMIT may still
  have reached the disk) is settled by reading the log: the projector catches up, and
  each command is answered from what the log shows: recorded (its answer), not recorded
  (UNAVAILABLE: nothing was written, safe to retry), or someone else's events (decided
  again). If the log cannot even be read, the answer is COMMIT_OUTCOME_UNKNOWN.

**Request ids** (:mod:`varstore.api.idempotency`). A command may come with a request key;
the leader, before deciding it, looks its id up in the projector's request index (and
among the commands of its own group): a recorded id with the same digest makes the command
a retry, which appends nothing and is answered as the first time (below); another digest
is INVALID_ARGUMENT; a command whose id another command of the group is writing waits for
the next round. Deciding this under the leader is what keeps two concurrent retries of one
id from both writing. An accepted command's events carry its key. A retry's answer is
rebuilt by the same code that made the first one: the command decides again on the state
just before the first write's events, at that write's time and with no limits (they were
checked the first time), and answers from the state at its last event.

Readers take published states from the projector: a read is one dict lookup, no lock,
no database. Checkpoints and sessions' last use (for TTL) are written by a maintenance
thread, off the write path.

**Several servers on one log** (PostgreSQL): a :class:`~varstore.api.tailer.Tailer` feeds
the other servers' events into the projector (notices, then a poll); a reader's
``min_position`` nudges it (:meth:`Store.wait_until_applied`). Writes need nothing more: a
command decided on a state behind the log meets a position conflict (or a refusal made on
a stale state) and is decided again after catching up. The TTL sweep runs on the one server
holding the recorder's ``ttl-sweeper`` role, and counts reads recorded by every server;
checkpoints are saved by the one holding the ``checkpointer`` role.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from varstore.api.commands import Command, ExpireSession, WriteContext, live
from varstore.api.history import History
from varstore.api.idempotency import REQUEST_TTL, RequestKey, RequestRecord
from varstore.api.limits import Limits, LiveSessions
from varstore.api.projector import Listener, Projector
from varstore.api.tailer import POLL_INTERVAL, Tailer
from varstore.eventstore import (
    Append,
    Conflict,
    NewEvent,
    RecordedEvent,
    Recorder,
    RecorderError,
)
from varstore.projections import (
    Checkpoint,
    CheckpointRejected,
    Fold,
    IndexEncodings,
    LogMark,
    SessionState,
    SnapshotEncodings,
    open_checkpoint,
    seal_checkpoint,
)
from varstore.types import (
    CommitOutcomeUnknown,
    InternalError,
    SessionNotFound,
    Unavailable,
    VarstoreError,
    VersionConflict,
    describe,
)

__all__ = ["Store", "Written"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Most commands one group commit takes; bounds the latency a burst adds to its leader.
MAX_GROUP = 512
#: Default distance, in events, between two snapshots of a session (see state_at).
SNAPSHOT_EVERY = 1000
#: Default number of events between two checkpoints of every session's state.
CHECKPOINT_EVERY = 10_000
#: Times a command is decided against a log that keeps moving before it is ABORTED.
MAX_ATTEMPTS = 10
#: Seconds between two rounds of the maintenance thread (checkpoints, durable touches).
MAINTENANCE_INTERVAL = 0.5
#: The role (see Recorder.holds_role) of the one server that expires idle sessions.
SWEEPER_ROLE = "ttl-sweeper"
#: The role of the one server that saves checkpoints of a shared log (any server's cut is
#: the same fold of the same log; one writer is enough).
CHECKPOINTER_ROLE = "checkpointer"
#: The session id of the touch row that probes whether the log can be written: no session
#: can have it (ids are 1 to 128 characters), so start-up ignores the row.
_PROBE = ""


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
    request: RequestKey | None = None
    signal: threading.Lock = field(default_factory=threading.Lock)
    written: Written[Any] | None = None
    error: BaseException | None = None
    promoted: bool = False
    #: The decider refused it (a VarstoreError from ``decide``, not from the commit).
    refused: bool = False
    #: Set when the job is a retry of a recorded request: the answer is rebuilt from it.
    replay: RequestRecord | None = None

    def __post_init__(self) -> None:
        self.signal.acquire()

    def outcome(self) -> Written[Any]:
        if self.error is not None:
            raise self.error
        assert self.written is not None
        return self.written


@dataclass(slots=True)
class _Accepted:
    """A decided command whose events are about to be appended."""

    job: _Job
    append: Append
    written: Written[Any]


class Store:
    """Sessions' state, kept as the fold of their logs, and the one way to change it."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        limits: Limits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        snapshot_every: int = SNAPSHOT_EVERY,
        checkpoint_every: int = CHECKPOINT_EVERY,
        maintenance_interval: float = MAINTENANCE_INTERVAL,
        request_ttl: timedelta = REQUEST_TTL,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.recorder = recorder
        self.limits = limits or Limits()
        self.checkpoint_every = checkpoint_every
        self._clock = clock
        self.projector = Projector(
            recorder, snapshot_every=snapshot_every, clock=clock, request_ttl=request_ttl
        )
        # Lock order: _lock guards _pending and _leading only; nothing else is taken
        # while holding it.
        self._lock = threading.Lock()
        self._pending: list[_Job] = []
        self._leading = False
        self._closed = False
        self._last_time = 0.0
        # Last use of sessions with a TTL (reads and writes), and the ones not yet saved.
        self._touches: dict[str, datetime] = {}
        self._unsaved: set[str] = set()
        self._checkpoint_lock = threading.Lock()
        self._checkpointed = 0
        # Snapshots encoded by the last checkpoint, reused by the next (under the lock).
        self._snapshot_encodings = SnapshotEncodings()
        self._index_encodings = IndexEncodings()
        # Whether the log can be written, as the last append or probe found; listeners hear
        # every change (the server's health follows it).
        self._writable = True
        self._writable_listeners: list[Callable[[bool], None]] = []
        self._commit_observers: list[Callable[[int, float], None]] = []
        self._start()
        self.projector.remember_requests()
        # Live sessions, for max_sessions: counted once here, then by a listener.
        self.live_sessions = LiveSessions(self.projector.states().values())
        self.subscribe(self.live_sessions.on_commit)
        self._stop = threading.Event()
        self._maintainer = threading.Thread(
            target=self._maintain_until_closed,
            args=(maintenance_interval,),
            name="varstore-maintenance",
            daemon=True,
        )
        self._maintainer.start()
        # Another server's events reach this one only through the log: follow it.
        notices = recorder.notices()
        self.tailer: Tailer | None = None
        if notices is not None:
            self.tailer = Tailer(self.projector, notices, poll_interval)
            self.tailer.start()

    @property
    def snapshot_every(self) -> int:
        """Distance, in events, between two snapshots of a session."""
        return self.projector.snapshot_every

    # -- reading --------------------------------------------------------------------------

    def session(self, session_id: str) -> SessionState:
        """The live session's current published state, or SessionNotFound. Counts as a
        use of the session (its TTL starts again)."""
        state = live(self.projector.published(session_id), session_id)
        if state.ttl_seconds > 0:
            self._touch(session_id, self._clock())
        return state

    def published(self, session_id: str) -> SessionState | None:
        """The published state of a session, deleted ones included; None if never created
        (or a chunked fork or import still being written: hidden until whole). Does not
        count as a use."""
        state = self.projector.published(session_id)
        return None if state is not None and state.hidden else state

    def sessions(self) -> list[SessionState]:
        """Every live session, ordered by id."""
        states = self.projector.states()
        return [
            states[sid]
            for sid in sorted(states)
            if not states[sid].deleted and not states[sid].hidden
        ]

    def last_used(self, state: SessionState) -> datetime:
        """When the session was last used: its last event, or a later read."""
        touched = self._touches.get(state.session_id)
        return max(state.updated_at, touched) if touched is not None else state.updated_at

    def expires_in(self, state: SessionState) -> float | None:
        """Seconds until the session expires if nothing uses it; None without a TTL."""
        if state.ttl_seconds <= 0:
            return None
        idle = (self._clock() - self.last_used(state)).total_seconds()
        return max(0.0, state.ttl_seconds - idle)

    def wait_until_applied(self, session_id: str, position: int, timeout: float) -> bool:
        """Wait (up to ``timeout`` seconds) until the published state of ``session_id`` has
        folded in ``position``; True once it has, False on timeout. A server following a
        shared log reads it at once rather than at its next notice or poll."""
        state = self.projector.published(session_id)
        if state is not None and state.position >= position:
            return True
        if self.tailer is not None:
            self.tailer.nudge()
        return self.projector.wait_for(session_id, position, timeout)

    def history(self, session_id: str) -> History:
        """The history of a session that exists or existed, or SessionNotFound."""
        self._visible(session_id)
        return self.projector.history(session_id)

    def position_at_time(self, session_id: str, moment: datetime) -> int:
        """The position of the session's last event recorded at or before ``moment``
        (0 if none was)."""
        self._visible(session_id)
        return self.projector.position_at_time(session_id, moment)

    def state_at(self, session_id: str, position: int) -> SessionState | None:
        """The session as it stood at ``position`` (None before its first event); see
        :meth:`Projector.state_at`."""
        self._visible(session_id)
        return self.projector.state_at(session_id, position)

    def _visible(self, session_id: str) -> None:
        """SessionNotFound for a chunked fork or import still being written."""
        state = self.projector.published(session_id)
        if state is not None and state.hidden:
            raise SessionNotFound(
                f"session {describe(session_id)} not found", info={"session_id": session_id[:200]}
            )

    def drop_snapshots(self) -> None:
        """Forget every index and the checkpoint: they are derived data, rebuilt from the
        log on demand, so no answer may change."""
        self.projector.drop_indexes()
        self.recorder.drop_checkpoint()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with the events of every apply, in order, on the applying
        thread (so it must be quick). Returns the function that unsubscribes it."""
        return self.projector.subscribe(listener)

    # -- writing --------------------------------------------------------------------------

    def execute(
        self, session_id: str, command: Command[R], request: RequestKey | None = None
    ) -> Written[R]:
        """Run ``command`` on ``session_id``; return once its events are durable.

        With a ``request`` key whose id was recorded (within the request TTL), nothing is
        appended: the answer is the first write's, rebuilt from the log (see the module
        docstring), whatever ``session_id`` says (a retry of a CreateSession or a fork
        whose id the server generated names the session it made).

        Raises the command's VarstoreError; ValidationError if the request id was used
        by a request with another body; Unavailable if the log cannot be written (nothing
        was) or the store is closed; VersionConflict if the session kept changing under
        the command; CommitOutcomeUnknown if the log could not tell whether the events
        were recorded; InternalError for a bug.
        """
        job = _Job(session_id, command, request)
        with self._lock:
            if self._closed:
                raise Unavailable("the store is shutting down")
            self._pending.append(job)
            lead = not self._leading
            self._leading = True
        if not lead:
            job.signal.acquire()  # answered, or promoted to lead the next group
            if not job.promoted:
                return self._answer(job)
        self._lead(job)
        return self._answer(job)

    def known_request(self, request: RequestKey | None) -> RequestRecord | None:
        """Where the write with ``request``'s id was recorded, if it was (within the
        request TTL): lets a handler prepare a retry as the first call was prepared (a
        generated id, a read the retry must not repeat). Only a hint: whether a command
        is a retry is decided when it runs.

        Raises:
            ValidationError: the id was used by a request with another body.
        """
        return self.projector.request(request) if request is not None else None

    def recorded_request(self, request_id: str) -> RequestRecord | None:
        """Where the write with ``request_id`` was recorded, if it was (within the request
        TTL), whatever its body: a streamed request knows its id before its digest."""
        return self.projector.requests.get(request_id, self._clock()) if request_id else None

    def _answer(self, job: _Job) -> Written[Any]:
        """A job's outcome; a retry's answer is rebuilt here, off the leader's thread."""
        if job.replay is None or job.error is not None:
            return job.outcome()
        return self._replayed(job.command, job.replay)

    def _replayed(self, command: Command[R], record: RequestRecord) -> Written[R]:
        """The answer ``command`` got when its request was first recorded (``record``)."""
        sid = record.session_id
        try:
            first = self._first_position(record)
            before = self.projector.state_at(sid, first - 1)
            after = self.projector.state_at(sid, record.last_position)
            [last] = self.recorder.read_session(sid, record.last_position, record.last_position)
        except RecorderError as unreadable:
            log.error("cannot read the log to answer a retry of %r: %s", record, unreadable)
            raise Unavailable(
                "the event log cannot be read to answer this retry; it was already "
                "recorded, nothing new was written: retry later",
                info={"session_id": sid[:200], "request_id": record.request_id[:200]},
            ) from None
        # The first decision's time and the server's rules, without limits: the write
        # passed them when it was decided, and a restart may have lowered them since.
        ctx = replace(self._write_context(), now=last.recorded_at, limits=_unlimited(self.limits))
        try:
            return Written(command.decide(before, ctx).respond(after), record.last_position)
        except Exception:
            log.exception("cannot rebuild the answer to a retry of %r", record)
            raise InternalError("internal error while answering a retry") from None

    def _first_position(self, record: RequestRecord) -> int:
        """The position of the first event the request wrote. A record read back at
        start-up may start late: a fork's copies keep their origin's (older) times."""
        first = record.first_position
        while first > 1:
            start = max(1, first - 1000)
            earlier = self.recorder.read_session(record.session_id, start, first - 1)
            for event in reversed(earlier):
                if event.request_id != record.request_id:
                    return first
                first = event.position
            if start == 1:
                break
        return first

    def expire_idle_sessions(self) -> int:
        """Append SessionDeleted(reason="expired") for every session idle past its TTL.

        Idle time counts from the session's last event or recorded use, so it survives a
        restart, and from the uses other servers on the log recorded. Returns how many
        expired: 0 on a server that does not hold the sweeper role (another one sweeps).
        The server's sweeper calls this every second.
        """
        if not self.recorder.holds_role(SWEEPER_ROLE):
            return 0

        def is_expired(state: SessionState) -> bool:
            left = self.expires_in(state)
            return left is not None and left <= 0

        candidates = [state.session_id for state in self.sessions() if is_expired(state)]
        if candidates:
            self._learn_touches()  # a read on another server may have kept one alive
        return sum(
            1 for sid in candidates if self.execute(sid, ExpireSession(sid, is_expired)).result
        )

    def _learn_touches(self) -> None:
        """Merge in the sessions' last uses the log's other writers recorded."""
        try:
            recorded = self.recorder.load_touches()
        except RecorderError as unreadable:
            log.warning("cannot read the sessions' last uses: %s", unreadable)
            return
        for sid, moment in recorded.items():
            known = self._touches.get(sid)
            if sid != _PROBE and (known is None or moment > known):
                self._touches[sid] = moment

    def checkpoint(self) -> None:
        """Save a checkpoint of every session's state now, from one consistent cut (start-up
        then folds only what comes after it), sealed with a checksum and the mark of the
        last event it folds. A failure costs only start-up time."""
        with self._checkpoint_lock:
            global_position, states = self.projector.cut()
            snapshots = self.projector.snapshot_chains(states)
            indexes = self.projector.index_cuts(states)
            try:
                mark = self._mark_at(global_position)
                sealed = seal_checkpoint(
                    mark,
                    states,
                    snapshots,
                    self._snapshot_encodings,
                    indexes,
                    self._index_encodings,
                )
                self.recorder.save_checkpoint(global_position, sealed)
                self._checkpointed = global_position
            except RecorderError:
                log.exception("checkpoint at global position %d failed", global_position)

    @property
    def writable(self) -> bool:
        """Whether the log could be written the last time an append or probe tried."""
        return self._writable

    def watch_writable(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener`` with True or False whenever the log becomes writable or stops
        being so (on the thread that found out). The server's health follows it."""
        self._writable_listeners.append(listener)

    def observe_commits(self, observer: Callable[[int, float], None]) -> None:
        """Call ``observer(appends, seconds)`` after every group commit's append that
        returned (metrics: the group's size and the append's latency)."""
        self._commit_observers.append(observer)

    def probe_writable(self) -> bool:
        """Try a small real write beside the log (a touch row no session can own) and
        record what it shows; True if it was written."""
        try:
            self.recorder.save_touches({_PROBE: self._clock()})
        except RecorderError as problem:
            if self._writable:
                log.warning("the event log cannot be written: %s", problem)
            self._set_writable(False)
            return False
        self._set_writable(True)
        return True

    def _set_writable(self, writable: bool) -> None:
        if writable == self._writable:
            return
        self._writable = writable
        if writable:
            log.warning("the event log can be written again")
        for listener in list(self._writable_listeners):
            listener(writable)

    def _mark_at(self, global_position: int) -> LogMark | None:
        """The mark of the event at ``global_position`` (None for 0, the empty log)."""
        if global_position == 0:
            return None
        found = next(iter(self.recorder.read_all(global_position - 1, 1)), None)
        if found is None or found.global_position != global_position:
            raise RecorderError(f"the log holds no event at global position {global_position}")
        return LogMark.of(found)

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new writes, wait (up to ``timeout`` s) for the group being committed,
        take a last checkpoint if one is due, and close the recorder. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.tailer is not None:
            self.tailer.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._leading:
                    break
            time.sleep(0.005)
        self._stop.set()
        self._maintainer.join(timeout=max(0.0, deadline - time.monotonic()))
        self._maintain()
        self.recorder.close()

    # -- start-up and maintenance ---------------------------------------------------------

    def _start(self) -> None:
        """Published states at start-up: the latest checkpoint, plus the fold of the events
        after it (or of the whole log, without a checkpoint it can trust)."""
        checkpoint = self._trusted_checkpoint()
        self.projector.start(
            (checkpoint.global_position, checkpoint.sessions) if checkpoint is not None else None,
            checkpoint.snapshots if checkpoint is not None else None,
            checkpoint.indexes if checkpoint is not None else None,
        )
        if checkpoint is not None and checkpoint.snapshots:
            threading.Thread(
                target=self.projector.settle_snapshots, name="varstore-snapshots", daemon=True
            ).start()
        self._checkpointed = checkpoint.global_position if checkpoint is not None else 0
        if checkpoint is not None:
            self._index_encodings = checkpoint.index_encodings
        states = self.projector.states()
        self._touches = {
            sid: moment for sid, moment in self.recorder.load_touches().items() if sid in states
        }
        self._last_time = max((s.updated_at.timestamp() for s in states.values()), default=0.0)

    def _trusted_checkpoint(self) -> Checkpoint | None:
        """The saved checkpoint if it can be trusted: it reads, its checksum matches, its
        row and content name one global position, and the log still holds the very event
        it marks there. Otherwise None, with a warning (start-up folds the whole log)."""
        try:
            saved = self.recorder.load_checkpoint()
        except RecorderError as problem:
            log.warning("ignoring the checkpoint: it cannot be read (%s); folding the log", problem)
            return None
        if saved is None:
            return None
        position, data = saved
        try:
            checkpoint = open_checkpoint(data)
            if checkpoint.global_position != position:
                raise CheckpointRejected(
                    f"its row says global position {position}, its content "
                    f"{checkpoint.global_position}"
                )
            mark = checkpoint.mark
            if mark is not None and self._mark_at_or_none(mark.global_position) != mark:
                raise CheckpointRejected(
                    f"the log does not hold the event it marks at global position "
                    f"{mark.global_position}"
                )
        except CheckpointRejected as problem:
            log.warning("ignoring the checkpoint: %s; folding the whole log", problem)
            return None
        return checkpoint

    def _mark_at_or_none(self, global_position: int) -> LogMark | None:
        try:
            return self._mark_at(global_position)
        except RecorderError:
            return None

    def _touch(self, session_id: str, moment: datetime) -> None:
        known = self._touches.get(session_id)
        if known is None or moment > known:
            self._touches[session_id] = moment
            self._unsaved.add(session_id)

    def _maintain_until_closed(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._maintain()
            except Exception:  # the thread must outlive one failed round
                log.exception("maintenance failed")

    def _maintain(self) -> None:
        """One round: save the sessions' last uses, and a checkpoint if one is due; while
        the log cannot be written, only probe whether it can again."""
        if not self._writable and not self.probe_writable():
            return
        unsaved, self._unsaved = self._unsaved, set()
        if unsaved:
            touches = {sid: self._touches[sid] for sid in unsaved if sid in self._touches}
            try:
                self.recorder.save_touches(touches)
            except RecorderError:
                self._unsaved |= unsaved  # try again next round
                log.exception("could not record the last use of %d sessions", len(touches))
                self._set_writable(False)
                return
        due = self.projector.global_position - self._checkpointed >= self.checkpoint_every
        if due and self.recorder.holds_role(CHECKPOINTER_ROLE):  # one server saves them
            self.checkpoint()

    # -- committing -----------------------------------------------------------------------

    def _lead(self, me: _Job) -> None:
        """Commit every waiting command as one group, then pass the lead on."""
        with self._lock:
            jobs, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
        try:
            self._run_group(jobs)
        except Exception:  # a bug, not bad input: fail what is unanswered, keep serving
            log.exception("commit failed for a group of %d commands", len(jobs))
            for job in jobs:
                if job.written is None and job.error is None and job.replay is None:
                    job.error = InternalError("internal error while writing; see the server log")
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
        """Decide and commit ``jobs``, deciding again those whose session moved."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            decided, decided_at = jobs, self.projector.global_position
            jobs = self._attempt(jobs, self._write_context())
            if attempt == 1:
                jobs += self._refused_on_a_stale_state(decided, decided_at)
            if not jobs:
                return
            try:
                self.projector.catch_up()
            except RecorderError as unreadable:  # the conflicting appends wrote nothing
                log.error("cannot read the log to catch up after a conflict: %s", unreadable)
                for job in jobs:
                    job.error = Unavailable(
                        f"session {job.session_id!r} was changed by another writer and the "
                        "event log cannot be read now; nothing was recorded, retry later",
                        info={"session_id": job.session_id[:200]},
                    )
                return
            if attempt == MAX_ATTEMPTS:
                for job in jobs:
                    state = self.projector.published(job.session_id)
                    job.error = VersionConflict(
                        f"session {job.session_id!r} kept changing while this write was "
                        f"decided ({MAX_ATTEMPTS} tries); read it again and retry",
                        info={
                            "session_id": job.session_id[:200],
                            "current_position": str(state.position if state else 0),
                        },
                    )

    def _refused_on_a_stale_state(self, decided: list[_Job], decided_at: int) -> list[_Job]:
        """The refused jobs, made pending again, if the log holds events past the global
        position the store had applied when it decided them (``decided_at``; another
        server's, maybe applied by the tailer since): a refusal (not found, a version
        conflict) must come from the log as it is, never from a state behind it. The loop
        catches up, then decides them again. One cheap read of the log's head, only when
        something was refused."""
        refused = [job for job in decided if job.refused]
        if not refused:
            return []
        try:
            behind = self.recorder.last_global_position() > decided_at
        except RecorderError:
            return []  # the refusals stand on what this store has
        if not behind:
            return []
        for job in refused:
            job.error, job.refused = None, False
        return refused

    def _write_context(self) -> WriteContext:
        now = self._clock()
        if now.timestamp() < self._last_time:  # the wall clock stepped back: keep order
            now = datetime.fromtimestamp(self._last_time, UTC)
        return WriteContext(now=now, limits=self.limits, live_sessions=self.live_sessions.count)

    def _attempt(self, jobs: list[_Job], ctx: WriteContext) -> list[_Job]:
        """Decide every job and commit what was accepted; returns the jobs to decide again
        (their session moved under them)."""
        working: dict[str, SessionState | None] = {}
        accepted: list[_Accepted] = []
        writing_ids: set[str] = set()  # request ids this round appends
        later: list[_Job] = []  # jobs whose request id another job of the round writes
        for job in jobs:
            key = job.request
            if key is not None:
                if key.id in writing_ids:
                    later.append(job)
                    continue
                try:
                    job.replay = self.projector.request(key)
                except VarstoreError as refused:
                    job.error = refused
                    continue
                if job.replay is not None:
                    continue
            sid = job.session_id
            if sid not in working:
                published = self.projector.published(sid)
                working[sid] = published.copy() if published is not None else None
            state = working[sid]
            try:
                decision = job.command.decide(state, ctx)
            except VarstoreError as refused:
                job.error, job.refused = refused, True
                continue
            base = state.position if state is not None else 0
            try:
                after = _fold(state, sid, base, decision.events)
                answer = decision.respond(after)
            except Exception:
                log.exception("fold failed for %s on session %r", type(job.command).__name__, sid)
                job.error = InternalError("internal error while applying a change")
                working[sid] = self._refold(sid, accepted)
                continue
            working[sid] = after
            position = base + len(decision.events)
            events = decision.events
            if key is not None and events:
                writing_ids.add(key.id)
                events = [_stamped(event, key) for event in events]
            accepted.append(_Accepted(job, Append(sid, base, events), Written(answer, position)))
        return self._commit(accepted, working) + later

    def _refold(self, sid: str, accepted: list[_Accepted]) -> SessionState | None:
        """The working state of ``sid`` rebuilt from the published one and the decisions
        accepted so far (after a fold failed half-way through the working copy)."""
        published = self.projector.published(sid)
        state = published.copy() if published is not None else None
        for item in accepted:
            if item.append.session_id == sid:
                state = _fold(state, sid, item.append.expected_position, item.append.events)
        return state

    def _commit(
        self, accepted: list[_Accepted], working: Mapping[str, SessionState | None]
    ) -> list[_Job]:
        """Append the accepted decisions, hand what was recorded to the projector, answer;
        returns the jobs whose appends conflicted."""
        writing = [item for item in accepted if item.append.events]
        if writing:
            try:
                started = time.perf_counter()
                results = self.recorder.append_many([item.append for item in writing])
            except RecorderError as failure:
                self._set_writable(False)
                return self._settle_unknown(accepted, writing, failure)
            elapsed = time.perf_counter() - started
            self._set_writable(True)
            for observe in self._commit_observers:
                observe(len(writing), elapsed)
        else:
            results = []
        retry: list[_Job] = []
        recorded: list[RecordedEvent] = []
        for item, result in zip(writing, results, strict=True):
            if isinstance(result, Conflict):
                retry.append(item.job)
            else:
                recorded.extend(result.events)
        retrying = {job.session_id for job in retry}
        self._publish(recorded, {sid: s for sid, s in working.items() if sid not in retrying})
        for item in accepted:
            if item.job not in retry:
                item.job.written = item.written
        return retry

    def _publish(
        self, recorded: Sequence[RecordedEvent], folded: Mapping[str, SessionState | None]
    ) -> None:
        """Hand recorded events to the projector; a write is a use of its session (an
        import's events may carry old times, so the commit's own time counts)."""
        if not recorded:
            return
        self._last_time = max(self._last_time, recorded[-1].recorded_at.timestamp())
        self.projector.apply(recorded, folded)
        now = self._clock()
        for sid in {event.session_id for event in recorded}:
            state = self.projector.published(sid)
            if state is not None and state.ttl_seconds > 0:
                self._touch(sid, now)

    def _settle_unknown(
        self, accepted: list[_Accepted], writing: list[_Accepted], failure: RecorderError
    ) -> list[_Job]:
        """After an append whose outcome is unknown: read the log, answer each command
        from what it shows, and return those whose session someone else moved."""
        log.error("append of %d commands failed: %s", len(writing), failure)
        try:
            self.projector.catch_up()
            landed = [self._landed(item.append) for item in writing]
        except RecorderError as unreadable:
            log.error("and the log cannot be read to settle it: %s", unreadable)
            for item in writing:
                item.job.error = CommitOutcomeUnknown(
                    f"session {item.append.session_id!r}: the event log failed while "
                    "recording this write and cannot be read back, so it may or may not "
                    "have been recorded; read the session before writing again",
                    info={"session_id": item.append.session_id[:200]},
                )
            landed = None
        retry: list[_Job] = []
        if landed is not None:
            for item, outcome in zip(writing, landed, strict=True):
                if outcome is True:
                    item.job.written = item.written
                elif outcome is False:
                    item.job.error = Unavailable(
                        "the event log could not be written; nothing was recorded, so the "
                        "call is safe to retry",
                        info={"session_id": item.append.session_id[:200]},
                    )
                else:
                    retry.append(item.job)
        for item in accepted:
            if not item.append.events:  # decided with nothing to write: answered as is
                item.job.written = item.written
        return retry

    def _landed(self, append: Append) -> bool | None:
        """Whether the log holds ``append``'s events: True (ours), False (nothing after
        its expected position), None (someone else's events are there)."""
        sid, base = append.session_id, append.expected_position
        found = self.recorder.read_session(sid, base + 1, base + len(append.events))
        if not found:
            return False
        if len(found) == len(append.events) and all(
            _same_event(new, event) for new, event in zip(append.events, found, strict=True)
        ):
            return True
        return None


def _fold(
    state: SessionState | None, sid: str, base: int, events: Sequence[NewEvent]
) -> SessionState | None:
    # global_position 0 is provisional: the projection never reads global positions.
    fold = Fold(state)
    for offset, event in enumerate(events, start=1):
        fold.apply(RecordedEvent.of(event, sid, base + offset, 0))
    return fold.state()


def _same_event(new: NewEvent, recorded: RecordedEvent) -> bool:
    """Whether ``recorded`` is ``new`` as the log stores it (JSON-normalised)."""
    return (
        new.type == recorded.type
        and new.recorded_at == recorded.recorded_at
        and new.source == recorded.source
        and new.request_id == recorded.request_id
        and _canonical(new.payload) == _canonical(recorded.payload)
        and _canonical(new.metadata) == _canonical(recorded.metadata)
    )


def _canonical(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=dict)


def _stamped(event: NewEvent, key: RequestKey) -> NewEvent:
    """``event`` as the write with ``key`` records it."""
    return NewEvent(
        event.type,
        event.payload,
        event.recorded_at,
        event.source,
        event.metadata,
        event.schema_version,
        key.id,
        key.digest,
    )


def _unlimited(limits: Limits) -> Limits:
    """``limits`` with every count and size raised out of reach (a retry's rebuilt
    decision re-checks nothing the first decision passed)."""
    raised = {
        spec.name: 2**62 for spec in fields(limits) if type(getattr(limits, spec.name)) is int
    }
    return replace(limits, **raised)
