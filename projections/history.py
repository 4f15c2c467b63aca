"""The history projection: every version of every variable of a session, derived from
its events alone.

:class:`HistoryIndex` is what the server keeps: per variable lifetime (a
:class:`Lifetime`, from its registration on), the position and kind of each change as
one int in a flat array, and no object per version. A :class:`Change` is made on demand from the
events at the wanted positions (:meth:`Lifetime.change`; the caller reads them from the
log). (The plain fold of the same events into every :class:`Change` at once is the
tests' reference, ``tests/history_model.py``.)

What an event type does here is read from the event registry: its history kind, the
variables it names (with their new values), whether it changes every live variable, and
whether its changes are one batch. The handlers below are per kind, not per type."""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from varstore.eventstore.events import RecordedEvent
from varstore.types import PyValue
from varstore.types.events import EVENTS, ChangeKind, EventSpec

__all__ = ["KIND_BITS", "KIND_CODES", "Change", "HistoryIndex", "Lifetime"]

# Enum members as plain names: reading ``ChangeKind.X`` costs ~200 ns in Python 3.11.
_REGISTERED, _UPDATED = ChangeKind.REGISTERED, ChangeKind.UPDATED
_ROLLED_BACK, _DELETED = ChangeKind.ROLLED_BACK, ChangeKind.DELETED


@dataclass(frozen=True, slots=True)
class Change:
    """One version of one variable: what it became, what it was, who, when and why."""

    variable_id: str
    name: str
    type: str
    #: The version this change made; a deletion keeps the last version.
    version: int
    #: None for a deletion.
    value: PyValue | None
    #: None for a registration.
    previous_value: PyValue | None
    position: int
    recorded_at: datetime
    source: str
    metadata: Mapping[str, str]
    #: A :class:`~varstore.types.events.ChangeKind`: "registered", "updated", "rolled_back"
    #: or "deleted".
    kind: str
    in_batch: bool = False
    rollback_to_version: int | None = None


#: Each change kind as the code a :class:`Lifetime` keeps (its index in this tuple).
KIND_CODES: tuple[ChangeKind, ...] = (_REGISTERED, _UPDATED, _ROLLED_BACK, _DELETED)
_REGISTERED_CODE, _UPDATED_CODE, _ROLLED_BACK_CODE, _DELETED_CODE = range(4)
#: Bits of an entry that hold the kind; the position is above them.
KIND_BITS = 2
_KIND_MASK = (1 << KIND_BITS) - 1


class Lifetime:
    """One variable from its registration on: one int per change, its position shifted
    left by :data:`KIND_BITS` with its kind's code below (so entries sort by position,
    and a bisection finds a position without a key). Entry ``i`` made version ``i``; a
    deletion, always last, keeps the version before it. Appends only; a reader bounds
    itself by a length it took."""

    __slots__ = ("entries", "name", "type", "variable_id")

    def __init__(self, variable_id: str, name: str, type_name: str) -> None:
        self.variable_id = variable_id
        self.name = name
        self.type = sys.intern(type_name)  # a handful of types: one string each
        self.entries: array[int] = array("q")

    def __len__(self) -> int:
        return len(self.entries)

    def position(self, index: int) -> int:
        """The position of entry ``index``."""
        return self.entries[index] >> KIND_BITS

    def kind(self, index: int) -> int:
        """The code (see :data:`KIND_CODES`) of entry ``index``'s kind."""
        return self.entries[index] & _KIND_MASK

    def version(self, index: int) -> int:
        """The version change ``index`` made (a deletion keeps the one before)."""
        return index - 1 if self.entries[index] & _KIND_MASK == _DELETED_CODE else index

    def version_span(self, low: int, high: int | None, count: int) -> tuple[int, int]:
        """The entries ``start <= i < stop`` among the first ``count`` whose version is in
        ``[low, high]`` (versions never decrease: two bisections)."""
        entries = range(count)
        start = bisect_left(entries, low, key=self.version)
        stop = count if high is None else bisect_right(entries, high, key=self.version)
        return start, max(start, stop)

    def position_span(self, after: int, upto: int, count: int) -> tuple[int, int]:
        """The entries ``start <= i < stop`` among the first ``count`` whose position is in
        ``(after, upto]``."""
        return (
            bisect_right(self.entries, after << KIND_BITS | _KIND_MASK, 0, count),
            bisect_right(self.entries, upto << KIND_BITS | _KIND_MASK, 0, count),
        )

    def needs(self, index: int) -> tuple[int, ...]:
        """The positions whose events :meth:`change` reads for entry ``index``."""
        if index == 0:
            return (self.position(0),)
        return (self.position(index - 1), self.position(index))

    def value(self, index: int, events: Mapping[int, RecordedEvent]) -> PyValue | None:
        """The value entry ``index`` set (None for a deletion), from its event in ``events``
        (by position)."""
        if self.kind(index) == _DELETED_CODE:
            return None
        position = self.position(index)
        occurrence = 0  # an event naming the variable twice changed it twice
        while index - occurrence > 0 and self.position(index - occurrence - 1) == position:
            occurrence += 1
        event = events[position]
        seen = 0
        for variable_id, value in EVENTS[event.type].changes(event.payload):
            if variable_id == self.variable_id:
                if seen == occurrence:
                    return value  # type: ignore[no-any-return]
                seen += 1
        raise ValueError(f"the event at position {position} does not change {self.variable_id}")

    def change(self, index: int, events: Mapping[int, RecordedEvent]) -> Change:
        """Entry ``index`` as the :class:`Change` :class:`SessionHistory` makes, from the
        events at the positions :meth:`needs` names."""
        event = events[self.position(index)]
        kind = self.kind(index)
        updated = kind in (_UPDATED_CODE, _ROLLED_BACK_CODE)
        spec = EVENTS[event.type]
        return Change(
            self.variable_id,
            self.name,
            self.type,
            self.version(index),
            self.value(index, events),
            self.value(index - 1, events) if index else None,
            event.position,
            event.recorded_at,
            event.source,
            event.metadata,
            KIND_CODES[kind],
            spec.in_batch if updated else False,
            event.payload.get("rollback_to_version") if updated else None,
        )

    @property
    def live(self) -> bool:
        """Whether its last change is not a deletion."""
        return self.entries[-1] & _KIND_MASK != _DELETED_CODE


class HistoryIndex:
    """The changes of every variable of a session as :class:`Lifetime` arrays, and the
    ids each name has had. Appends only, from the single writer."""

    __slots__ = ("_current", "_ids_by_name", "lifetimes")

    def __init__(self, lifetimes: Iterable[Lifetime] = ()) -> None:
        #: Every lifetime, in the order of registration.
        self.lifetimes: list[Lifetime] = []
        self._current: dict[str, Lifetime] = {}  # variable id -> its latest lifetime
        # Name -> the id it had, or the ids, oldest first, once it had several.
        self._ids_by_name: dict[str, str | list[str]] = {}
        for lifetime in lifetimes:
            self._register(lifetime)

    def apply(self, event: RecordedEvent) -> None:
        """Record what ``event`` changed (nothing for a type without a history kind)."""
        found = _APPLY_COMPACT.get(event.type)
        if found is not None:
            handler, spec = found
            handler(self, spec, event)

    def ids_for(self, identifier: str) -> list[str]:
        """The variable ids ``identifier`` names: itself if it is an id, else every id the
        name has had, oldest first."""
        if identifier in self._current:
            return [identifier]
        ids = self._ids_by_name.get(identifier, [])
        return [ids] if isinstance(ids, str) else list(ids)

    def lifetime(self, variable_id: str) -> Lifetime | None:
        """The latest lifetime of ``variable_id``, if it ever existed."""
        return self._current.get(variable_id)

    def _register(self, lifetime: Lifetime) -> None:
        variable_id, name = lifetime.variable_id, lifetime.name
        self.lifetimes.append(lifetime)
        self._current[variable_id] = lifetime
        had = self._ids_by_name.get(name)
        if had is None:
            self._ids_by_name[name] = variable_id
        elif isinstance(had, str):
            self._ids_by_name[name] = [had, variable_id]
        else:
            had.append(variable_id)

    def _registered(self, spec: EventSpec, event: RecordedEvent) -> None:
        payload = event.payload
        for variable_id, _ in spec.changes(payload):
            lifetime = Lifetime(variable_id, payload["name"], payload["type"])
            lifetime.entries.append(event.position << KIND_BITS | _REGISTERED_CODE)
            self._register(lifetime)

    def _updated(self, spec: EventSpec, event: RecordedEvent) -> None:
        payload = event.payload
        rolled_back = payload.get("rollback_to_version") is not None
        entry = event.position << KIND_BITS | (_ROLLED_BACK_CODE if rolled_back else _UPDATED_CODE)
        current = self._current
        for variable_id, _ in spec.changes(payload):
            current[variable_id].entries.append(entry)

    def _deleted(self, spec: EventSpec, event: RecordedEvent) -> None:
        if spec.every_live_variable:
            gone = [lifetime for lifetime in self._current.values() if lifetime.live]
        else:
            gone = [self._current[variable_id] for variable_id, _ in spec.changes(event.payload)]
        entry = event.position << KIND_BITS | _DELETED_CODE
        for lifetime in gone:
            lifetime.entries.append(entry)


_CompactHandler = Callable[[HistoryIndex, EventSpec, RecordedEvent], None]

_COMPACT_BY_KIND: dict[ChangeKind, _CompactHandler] = {
    ChangeKind.REGISTERED: HistoryIndex._registered,
    ChangeKind.UPDATED: HistoryIndex._updated,
    ChangeKind.DELETED: HistoryIndex._deleted,
}

_APPLY_COMPACT: dict[str, tuple[_CompactHandler, EventSpec]] = {
    name: (_COMPACT_BY_KIND[spec.history], spec)
    for name, spec in EVENTS.items()
    if spec.history is not None
}
