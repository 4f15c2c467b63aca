"""The recorder contract: the one narrow door to an append-only, per-session event log.

Every backend (memory, SQLite, later PostgreSQL) implements :class:`Recorder` and passes
the same contract suite, ``tests/test_recorder_contract.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from varstore.eventstore.events import NewEvent, RecordedEvent

__all__ = ["Append", "PositionConflict", "Recorder", "RecorderError"]


class RecorderError(Exception):
    """The log could not be read or written (I/O, corruption, closed recorder)."""


class PositionConflict(RecorderError):
    """An append's expected position is not the session's last position: someone wrote first."""

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


class Recorder(ABC):
    """An append-only log of events, ordered per session and globally."""

    @abstractmethod
    def append_many(self, appends: Sequence[Append]) -> list[RecordedEvent]:
        """Record every append in one durable transaction, all or nothing.

        Appends are applied in order, so two appends to one session chain their expected
        positions. Returns the recorded events in order.

        Raises:
            PositionConflict: an append's expected position is not the session's last
                position (nothing is written).
            RecorderError: the log could not be written (nothing is written).
        """

    def append(
        self, session_id: str, expected_position: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        """Record ``events`` after ``expected_position`` in one session (see append_many)."""
        return self.append_many([Append(session_id, expected_position, events)])

    @abstractmethod
    def read_session(
        self, session_id: str, from_position: int = 1, to_position: int | None = None
    ) -> list[RecordedEvent]:
        """A session's events with ``from_position <= position <= to_position``, in order
        (an unknown session has none)."""

    @abstractmethod
    def read_all(self, after_global_position: int = 0) -> Iterator[RecordedEvent]:
        """Every event with a global position above the given one, in global order."""

    @abstractmethod
    def last_position(self, session_id: str) -> int:
        """The position of a session's last event; 0 if it has none."""

    def save_checkpoint(self, global_position: int, data: bytes) -> None:
        """Keep ``data`` (derived state as of ``global_position``), replacing any earlier
        checkpoint. Checkpoints are derived data: losing one loses no event."""
        self._checkpoint = (global_position, bytes(data))

    def load_checkpoint(self) -> tuple[int, bytes] | None:
        """The latest checkpoint, or None."""
        return getattr(self, "_checkpoint", None)

    def drop_checkpoint(self) -> None:
        """Forget the checkpoint (start-up then folds the whole log)."""
        self.__dict__.pop("_checkpoint", None)

    @abstractmethod
    def close(self) -> None:
        """Release the backend's resources; later calls raise RecorderError."""
