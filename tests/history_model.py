"""The reference the compact history index is tested against: the plain fold of a
session's events into every :class:`Change` at once (what the server kept before the
index; it now lives here, for the tests only).

What an event type does is read from the event registry, as the index reads it: its
history kind, the variables it names (with their new values), whether it changes every
live variable, and whether its changes are one batch."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from varstore.eventstore.events import RecordedEvent
from varstore.projections.history import Change
from varstore.types import PyValue
from varstore.types.events import EVENTS, ChangeKind, EventSpec

__all__ = ["SessionHistory"]

_REGISTERED, _UPDATED = ChangeKind.REGISTERED, ChangeKind.UPDATED
_ROLLED_BACK, _DELETED = ChangeKind.ROLLED_BACK, ChangeKind.DELETED


class SessionHistory:
    """Changes per variable id, and the ids each name has had, in order: every
    :class:`Change` in memory (about 400 bytes a version). The server keeps a
    ``HistoryIndex`` instead; this plain fold is what it is tested against.
    """

    def __init__(self) -> None:
        self._changes: dict[str, list[Change]] = {}
        self._ids_by_name: dict[str, list[str]] = {}
        self._live: dict[str, str] = {}  # live variable id -> name

    def apply(self, event: RecordedEvent) -> None:
        """Record what ``event`` changed (nothing for a type without a history kind)."""
        found = _APPLY.get(event.type)
        if found is not None:
            handler, spec = found
            handler(self, spec, event)

    def _registered(self, spec: EventSpec, event: RecordedEvent) -> None:
        payload = event.payload
        for variable_id, value in spec.changes(payload):
            name = payload["name"]
            self._ids_by_name.setdefault(name, []).append(variable_id)
            self._live[variable_id] = name
            self._changes[variable_id] = [
                Change(
                    variable_id,
                    name,
                    payload["type"],
                    0,
                    value,
                    None,
                    event.position,
                    event.recorded_at,
                    event.source,
                    event.metadata,
                    _REGISTERED,
                )
            ]

    def _updated(self, spec: EventSpec, event: RecordedEvent) -> None:
        payload = event.payload
        rollback = payload.get("rollback_to_version")
        for variable_id, value in spec.changes(payload):
            self._change(event, variable_id, value, spec.in_batch, rollback)

    def _deleted(self, spec: EventSpec, event: RecordedEvent) -> None:
        if spec.every_live_variable:
            for variable_id in list(self._live):
                self._delete(event, variable_id)
        else:
            for variable_id, _ in spec.changes(event.payload):
                self._delete(event, variable_id)

    def _change(
        self,
        event: RecordedEvent,
        variable_id: str,
        value: PyValue,
        in_batch: bool,
        rollback_to_version: int | None,
    ) -> None:
        changes = self._changes[variable_id]
        last = changes[-1]
        changes.append(
            Change(
                variable_id,
                last.name,
                last.type,
                last.version + 1,
                value,
                last.value,
                event.position,
                event.recorded_at,
                event.source,
                event.metadata,
                _ROLLED_BACK if rollback_to_version is not None else _UPDATED,
                in_batch,
                rollback_to_version,
            )
        )

    def _delete(self, event: RecordedEvent, variable_id: str) -> None:
        changes = self._changes[variable_id]
        last = changes[-1]
        changes.append(
            Change(
                variable_id,
                last.name,
                last.type,
                last.version,
                None,
                last.value,
                event.position,
                event.recorded_at,
                event.source,
                event.metadata,
                _DELETED,
            )
        )
        self._live.pop(variable_id, None)

    def ids_for(self, identifier: str) -> list[str]:
        """The variable ids ``identifier`` names: itself if it is an id, else every id the
        name has had, oldest first."""
        if identifier in self._changes:
            return [identifier]
        return list(self._ids_by_name.get(identifier, ()))

    def changes(self, variable_id: str) -> list[Change]:
        """Every change of one variable, oldest first (a copy)."""
        return list(self._changes.get(variable_id, ()))

    def value_at_version(self, variable_id: str, version: int) -> PyValue | None:
        """The value a variable had at ``version`` (None if it never had that version)."""
        for change in self._changes.get(variable_id, ()):
            if change.version == version and change.kind != _DELETED:
                return change.value
        return None

    def changes_at(self, variable_id: str, position: int) -> list[Change]:
        """The changes one variable had at ``position`` (oldest first; usually one or
        none). A binary search: no copy of the variable's whole history."""
        changes = self._changes.get(variable_id, [])
        start = bisect_left(changes, position, key=lambda change: change.position)
        end = start
        while end < len(changes) and changes[end].position == position:
            end += 1
        return changes[start:end]


_Handler = Callable[[SessionHistory, EventSpec, RecordedEvent], None]

_BY_KIND: dict[ChangeKind, _Handler] = {
    ChangeKind.REGISTERED: SessionHistory._registered,
    ChangeKind.UPDATED: SessionHistory._updated,
    ChangeKind.DELETED: SessionHistory._deleted,
}

#: Event type -> its kind's handler and its entry (a plain dict: one lookup per event).
_APPLY: dict[str, tuple[_Handler, EventSpec]] = {
    name: (_BY_KIND[spec.history], spec)
    for name, spec in EVENTS.items()
    if spec.history is not None
}
