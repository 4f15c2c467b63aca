"""The store: one writer thread that decides, appends and publishes; lock-free readers.

Writes are commands (:mod:`varstore.api.commands`). Callers queue them; the writer takes
every command waiting, decides each against a private copy of its session's state
(folding each decision's events in before deciding the next, so commands queued
together see each other), appends all their events in ONE recorder transaction (group
commit: one fsync for the lot), and only then publishes the new states and answers.
So an answer always means "durable", and a reader never sees a change that could still
be lost. Readers take the published :class:`SessionState` of a session, which is never
mutated after publication: a read is one dict lookup, no lock, no database.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from varstore.api.commands import Command, ExpireSession, WriteContext, live
from varstore.api.limits import Limits
from varstore.eventstore import Append, NewEvent, RecordedEvent, Recorder, RecorderError
from varstore.projections import SessionState, apply_event
from varstore.types import Unavailable, VarstoreError

__all__ = ["Store", "Written"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Most commands one group commit takes; bounds the latency a burst adds to its first write.
MAX_GROUP = 512


@dataclass(frozen=True, slots=True)
class Written(Generic[R]):
    """A command's answer, once its events are durable, and the position it left."""

    result: R
    position: int


@dataclass(slots=True)
class _Job:
    session_id: str
    command: Command[Any]
    future: Future[Written[Any]]


class Store:
    """Sessions' state, kept as the fold of their logs, and the one way to change it."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        limits: Limits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recorder = recorder
        self.limits = limits or Limits()
        self._clock = clock
        self._monotonic = monotonic
        # Published states, including deleted sessions (their position continues if the
        # id is created again). Replaced whole by the writer, never mutated once here.
        self._sessions: dict[str, SessionState] = {}
        # Monotonic time of the last call that touched each session, for TTL expiry.
        self._touched: dict[str, float] = {}
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._rebuild()
        self._writer = threading.Thread(
            target=self._write_loop, name="varstore-writer", daemon=True
        )
        self._writer.start()

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
        return [state for _, state in sorted(self._sessions.items()) if not state.deleted]

    def expires_in(self, state: SessionState) -> float | None:
        """Seconds until the session expires if nothing touches it; None without a TTL."""
        if state.ttl_seconds <= 0:
            return None
        idle = self._monotonic() - self._touched.get(state.session_id, self._monotonic())
        return max(0.0, state.ttl_seconds - idle)

    # -- writing --------------------------------------------------------------------------

    def execute(
        self, session_id: str, command: Command[R], timeout: float | None = None
    ) -> Written[R]:
        """Run ``command`` on ``session_id``; return once its events are durable.

        Raises the command's VarstoreError, or Unavailable if the log cannot be written
        or the store is closed.
        """
        return self.submit(session_id, command).result(timeout)

    def submit(self, session_id: str, command: Command[R]) -> Future[Written[R]]:
        """Queue ``command``; the future resolves once its events are durable."""
        if self._closed.is_set():
            raise Unavailable("the store is shutting down")
        future: Future[Written[R]] = Future()
        self._queue.put(_Job(session_id, command, future))
        return future

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

        futures = [self.submit(sid, ExpireSession(sid, is_expired)) for sid in candidates]
        return sum(1 for future in futures if future.result().result)

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued writes, stop the writer and close the recorder. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        self._writer.join(timeout)
        self.recorder.close()

    # -- internals ------------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Fold the whole log into the published states (server start-up)."""
        sessions: dict[str, SessionState] = {}
        for event in self.recorder.read_all():
            sessions[event.session_id] = apply_event(sessions.get(event.session_id), event)
        now = self._monotonic()
        self._sessions = sessions
        self._touched = dict.fromkeys(sessions, now)

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            jobs = [first]
            while len(jobs) < MAX_GROUP:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
            try:
                self._run_group(jobs)
            except Exception:  # a bug, not bad input: keep serving, fail the group loudly
                log.exception("writer failed on a group of %d commands", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(Unavailable("internal error while writing"))
        # Anything queued after the stop marker is refused, never dropped silently.
        while True:
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is not None:
                late.future.set_exception(Unavailable("the store is shutting down"))

    def _run_group(self, jobs: list[_Job]) -> None:
        ctx = WriteContext(now=self._clock(), limits=self.limits)
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
                job.future.set_exception(refused)
                continue
            base = state.position if state is not None else 0
            try:
                after = self._fold(state, sid, base, decision.events)
                answer = decision.respond(after)
            except Exception:
                log.exception("fold failed for %s on session %r", type(job.command).__name__, sid)
                job.future.set_exception(Unavailable("internal error while applying a change"))
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
        if appends:
            try:
                self.recorder.append_many(appends)
            except RecorderError as failure:
                # Nothing was written and nothing published: the working copies are dropped.
                log.error("append failed; %d commands refused: %s", len(accepted), failure)
                for item in accepted:
                    item.job.future.set_exception(
                        Unavailable(f"the event log could not be written: {failure}")
                    )
                return
        now = self._monotonic()
        for sid in {append.session_id for append in appends}:
            state = working[sid]
            if state is not None:
                self._sessions[sid] = state
                self._touched[sid] = now
        for item in accepted:
            item.job.future.set_result(item.written)


@dataclass(slots=True)
class _Accepted:
    job: _Job
    append: Append
    written: Written[Any]
