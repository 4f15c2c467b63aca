"""What reads of a session's past need, derived from its log: the history of every
variable, the time of every event, and snapshots of the state every N events."""

from __future__ import annotations

import bisect
from array import array
from datetime import datetime

from sortedcontainers import SortedDict

from varstore.eventstore.events import RecordedEvent
from varstore.projections.history import SessionHistory
from varstore.projections.state import SessionState

__all__ = ["SessionIndex"]


class SessionIndex:
    """One session's history, event times and snapshots, kept up to ``position``.

    ``apply`` ignores events it has already seen, so a builder reading the log and a
    writer reporting new events may overlap safely.
    """

    def __init__(self, snapshot_every: int) -> None:
        self.snapshot_every = snapshot_every
        self.history = SessionHistory()
        #: Event times in seconds since the epoch; index i is position i + 1.
        self.times: array[float] = array("d")
        #: Snapshot states by position (never mutated; copy before folding onto one).
        self.snapshots: SortedDict = SortedDict()
        self.position = 0

    def apply(self, event: RecordedEvent) -> bool:
        """Take one event in; False if it was already in."""
        if event.position <= self.position:
            return False
        self.history.apply(event)
        self.times.append(event.recorded_at.timestamp())
        self.position = event.position
        return True

    def snapshot_due(self, position: int) -> bool:
        """Whether a state at ``position`` would be kept: the last snapshot is
        ``snapshot_every`` events older."""
        last = self.snapshots.keys()[-1] if self.snapshots else 0
        return position - last >= self.snapshot_every

    def offer_snapshot(self, state: SessionState, copy: bool) -> None:
        """Keep ``state`` (or, with ``copy``, a copy: O(1)) as a snapshot if one is due."""
        if self.snapshot_due(state.position):
            self.snapshots[state.position] = state.copy() if copy else state

    def position_at(self, moment: datetime) -> int:
        """The position of the last event recorded at or before ``moment`` (0 if none)."""
        return bisect.bisect_right(self.times, moment.timestamp())

    def snapshot_before(self, position: int) -> SessionState | None:
        """A private copy of the latest snapshot at or before ``position``, if any."""
        index = self.snapshots.bisect_right(position)
        if not index:
            return None
        state: SessionState = self.snapshots.values()[index - 1]
        return state.copy()
