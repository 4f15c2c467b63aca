"""The recorder contract: the one narrow door to an append-only, per-session event log.

Layered as the eventsourcing library layers its recorders, each layer one more capability:

* :class:`EventAppender`: append events to sessions, each append checked against the position
  its session is expected to be at; one result per append.
* :class:`EventReader`: read a session between two positions, everything after a global
  position (with a limit), the highest global position, the recent events that carry a
  request id.
* :class:`DerivedStore`: what is kept *beside* the log: the checkpoint of the projections and
  sessions' last activity (durable touches for TTL). Derived data: losing it loses no event.
* :class:`Recorder`: all three, plus ``close``. Every backend (memory, SQLite, PostgreSQL)
  implements it and passes one contract suite, ``tests/test_recorder_contract.py``.

A log that several servers write (PostgreSQL) adds two capabilities a private one does not
need: :meth:`Recorder.notices`, wake-ups when another writer commits (the tailer's hint), and
:meth:`Recorder.holds_role`, a lock that lets one server of the cluster do a job (the TTL
sweep). The defaults are those of a log one process owns: no notices, every role held.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from varstore.eventstore.events import NewEvent, RecordedEvent

__all__ = [
    "Append",
    "AppendResult",
    "Conflict",
    "DerivedStore",
    "EventAppender",
    "EventReader",
    "LogNotices",
    "PositionConflict",
    "Recorded",
    "Recorder",
    "RecorderError",
]


class RecorderError(Exception):
    """The log could not be read or written (I/O, corruption, closed recorder).

    Raised by an append, it does not say whether the append was recorded: a failed COMMIT
    may still have reached the disk. Callers read the log to find out.
    """


class PositionConflict(RecorderError):
    """An append's expected position is not the session's last position: someone wrote first.

    Raised only by the single-append convenience :meth:`EventAppender.append`;
    ``append_many`` reports a :class:`Conflict` per append instead.
    """

    def __init__(self, session_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"session {session_id!r} is at position {actual}, not the expected {expected}"
        )
        self.session_id = session_id
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class Append:
    """Events to add to one session's log, valid only if it ends at ``expected_position``
    (0 for a session with no events yet)."""

    session_id: str
    expected_position: int
    events: Sequence[NewEvent]


@dataclass(frozen=True, slots=True)
class Recorded:
    """An append that was recorded: its events as the log now holds them."""

    events: tuple[RecordedEvent, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    """An append that was not recorded because its session was at ``actual``, not at the
    ``expected`` position (another writer came first). Nothing of it was written."""

    session_id: str
    expected: int
    actual: int


#: What ``append_many`` reports for each append, in order.
AppendResult = Recorded | Conflict


class EventAppender(ABC):
    """Appending: the only way events get into the log."""

    @abstractmethod
    def append_many(self, appends: Sequence[Append]) -> list[AppendResult]:
        """Record every append whose expected position holds, in ONE durable transaction.

        Appends are taken in order, so two appends to one session chain their expected
        positions (and when the first conflicts, so does the second). An append that
        conflicts writes nothing and does not stop the others. Returns one result per
        append, in order.

        Raises:
            RecorderError: the log could not be written. Whether the transaction was
                recorded is unknown (read the log); a backend that knows nothing was written
                says so in the message.
        """

    def append(
        self, session_id: str, expected_position: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        """Record ``events`` after ``expected_position`` in one session.

        Raises:
            PositionConflict: the session is not at ``expected_position`` (nothing written).
            RecorderError: as for :meth:`append_many`.
        """
        [result] = self.append_many([Append(session_id, expected_position, events)])
        if isinstance(result, Conflict):
            raise PositionConflict(result.session_id, result.expected, result.actual)
        return list(result.events)


class EventReader(ABC):
    """Reading: one session between positions, or everything in global order."""

    @abstractmethod
    def read_session(
        self, session_id: str, from_position: int = 1, to_position: int | None = None
    ) -> list[RecordedEvent]:
        """A session's events with ``from_position <= position <= to_position``, in order
        (an unknown session has none)."""

    def read_positions(self, session_id: str, positions: Sequence[int]) -> list[RecordedEvent]:
        """A session's events at ``positions`` (any order, repeats allowed), in position
        order, each once; positions it does not hold are left out.

        This default reads each position on its own; a database overrides it with one
        query per chunk of positions.
        """
        found: list[RecordedEvent] = []
        for position in sorted(set(positions)):
            found += self.read_session(session_id, position, position)
        return found

    @abstractmethod
    def read_all(
        self, after_global_position: int = 0, limit: int | None = None
    ) -> Iterator[RecordedEvent]:
        """Events with a global position above the given one, in global order, at most
        ``limit`` of them (all without one). Lazy: appends may happen while it is consumed."""

    def read_requests(self, recorded_since: datetime) -> Iterator[RecordedEvent]:
        """The events that carry a ``request_id`` and were recorded at or after
        ``recorded_since`` (an aware time), ordered by ``recorded_at`` then global position
        (the order an index on their time gives): what start-up reads to remember recent
        request ids. Lazy, like :meth:`read_all`.

        This default scans the whole log (fine in memory); a database overrides it with an
        indexed query.

        Raises:
            RecorderError: a naive ``recorded_since``, or the log cannot be read.
        """
        if recorded_since.utcoffset() is None:
            raise RecorderError("recorded_since must be timezone-aware")
        found = [e for e in self.read_all() if e.request_id and e.recorded_at >= recorded_since]
        return iter(sorted(found, key=lambda e: (e.recorded_at, e.global_position)))

    @abstractmethod
    def last_position(self, session_id: str) -> int:
        """The position of a session's last event; 0 if it has none."""

    @abstractmethod
    def last_global_position(self) -> int:
        """The highest global position in the log; 0 while it is empty."""


class DerivedStore(ABC):
    """What is kept beside the log: one checkpoint, and each session's last activity.

    Both are derived data: dropping them loses no event (start-up folds the log instead,
    and a session without a recorded touch counts its idle time from its last event).
    """

    @abstractmethod
    def save_checkpoint(self, global_position: int, data: bytes) -> None:
        """Keep ``data`` (derived state as of ``global_position``), replacing any earlier
        checkpoint."""

    @abstractmethod
    def load_checkpoint(self) -> tuple[int, bytes] | None:
        """The latest checkpoint, or None."""

    @abstractmethod
    def drop_checkpoint(self) -> None:
        """Forget the checkpoint (start-up then folds the whole log)."""

    @abstractmethod
    def save_touches(self, touches: Mapping[str, datetime]) -> None:
        """Record that each session was last used at the given (aware) time; a time older
        than the one already recorded for a session is ignored."""

    @abstractmethod
    def load_touches(self) -> dict[str, datetime]:
        """Every session's last recorded use, in UTC."""


class LogNotices(ABC):
    """Wake-ups when the log grows: one notice per committed group of any writer."""

    @abstractmethod
    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for a notice. Returns the highest global position
        announced, 0 when notices may have been missed (the connection was re-established:
        read the log), or None when nothing came. Raises RecorderError while the notices
        cannot be listened to (the caller polls meanwhile)."""

    @abstractmethod
    def close(self) -> None:
        """Stop listening. Idempotent."""


class Recorder(EventAppender, EventReader, DerivedStore):
    """An append-only log of events, ordered per session and globally, and the derived data
    kept beside it."""

    def notices(self) -> LogNotices | None:
        """A listener to other writers' commits, for a log several processes write; None
        (the default) for a log only this process writes."""
        return None

    def holds_role(self, role: str) -> bool:
        """Whether this process holds ``role`` among every process writing the log (taking
        it if nobody does), so that a cluster-wide job runs on one server at a time. A log
        only this process writes: always True."""
        return True

    @abstractmethod
    def close(self) -> None:
        """Release the backend's resources; later calls raise RecorderError."""
