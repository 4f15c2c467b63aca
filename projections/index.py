"""What reads of a session's past need, derived from its log: snapshots of its state
every N events (:class:`Snapshots`, kept for every session and saved with checkpoints, so
a read of the past folds at most N events, after a restart too), and the history of every
variable with the time of every event (:class:`SessionIndex`: compact arrays, kept for
every session from its first event on and saved with checkpoints too)."""

from __future__ import annotations

import bisect
import threading
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sortedcontainers import SortedDict

from varstore.eventstore.events import RecordedEvent
from varstore.projections.history import HistoryIndex
from varstore.projections.state import SessionState

__all__ = ["IndexCut", "SessionIndex", "Snapshots"]


class Snapshots:
    """One session's states every ``every`` events (never mutated once kept; a reader
    gets a copy). A snapshot holds persistent maps, so keeping one costs O(1) memory
    beyond what the changes since the previous one made.

    ``pending`` (with the position of its last state, ``last``) gives states to decode on
    first use instead of now: a checkpoint's chains, so start-up does not wait for them."""

    def __init__(
        self,
        every: int,
        states: Iterable[SessionState] = (),
        *,
        pending: Callable[[], Iterable[SessionState]] | None = None,
        last: int = 0,
    ) -> None:
        self.every = every
        self._by_position: SortedDict = SortedDict((state.position, state) for state in states)
        self._pending = pending
        self._pending_lock = threading.Lock()
        #: Position of the last snapshot (0: none); asked once per event folded.
        self._last = max(last, self._by_position.keys()[-1] if self._by_position else 0)

    def settle(self) -> SortedDict:
        """Decode the pending states, if any (once, whoever asks first); the snapshots by
        position."""
        if self._pending is not None:
            with self._pending_lock:
                if self._pending is not None:  # cleared once decoded: others wait till then
                    for state in self._pending():
                        self._by_position.setdefault(state.position, state)
                    self._pending = None
        return self._by_position

    def due(self, position: int) -> bool:
        """Whether a state at ``position`` would be kept: the last snapshot is ``every``
        events older."""
        return position - self._last >= self.every

    def offer(self, state: SessionState, copy: bool) -> None:
        """Keep ``state`` (or, with ``copy``, a copy: O(1)) if a snapshot is due."""
        if self.due(state.position):
            self.settle()[state.position] = state.copy() if copy else state
            self._last = state.position

    def before(self, position: int) -> SessionState | None:
        """A private copy of the latest snapshot at or before ``position``, if any."""
        by_position = self.settle()
        index = by_position.bisect_right(position)
        if not index:
            return None
        state: SessionState = by_position.values()[index - 1]
        return state.copy()

    def merge(self, other: Snapshots) -> None:
        """Keep ``other``'s snapshots too, where this one has none at their position."""
        by_position = self.settle()
        for position, state in other.settle().items():
            by_position.setdefault(position, state)
        if by_position:
            self._last = max(self._last, by_position.keys()[-1])

    def states(self) -> list[SessionState]:
        """Every snapshot, oldest first (shared: never mutate them)."""
        return list(self.settle().values())

    def __len__(self) -> int:
        return len(self.settle())


@dataclass(frozen=True, slots=True)
class IndexCut:
    """A :class:`SessionIndex` up to ``position``: its first ``lifetimes`` lifetimes and
    their entries up to there (the arrays may have grown since)."""

    index: SessionIndex
    position: int
    lifetimes: int


class SessionIndex:
    """One session's history and event times, kept up to ``position``.

    ``apply`` ignores events it has already seen, so a builder reading the log and a
    writer reporting new events may overlap safely.
    """

    __slots__ = ("history", "position", "times")

    def __init__(
        self, history: HistoryIndex | None = None, times: array[float] | None = None
    ) -> None:
        self.history = history if history is not None else HistoryIndex()
        #: Event times in seconds since the epoch; index i is position i + 1.
        self.times: array[float] = times if times is not None else array("d")
        self.position = len(self.times)

    def apply(self, event: RecordedEvent) -> bool:
        """Take one event in; False if it was already in."""
        if event.position <= self.position:
            return False
        self.history.apply(event)
        self.times.append(event.recorded_at.timestamp())
        self.position = event.position
        return True

    def cut(self) -> IndexCut:
        """The index as it stands now, for a reader on another thread while appends go on
        (take it under the lock appends take)."""
        return IndexCut(self, self.position, len(self.history.lifetimes))

    def position_at(self, moment: datetime) -> int:
        """The position of the last event recorded at or before ``moment`` (0 if none)."""
        return bisect.bisect_right(self.times, moment.timestamp())
