"""The history projection: every version of every variable of a session, derived from
its events alone (the previous value is the history's own last entry)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from varstore.eventstore.events import EventType, RecordedEvent
from varstore.types import PyValue

__all__ = ["Change", "SessionHistory"]


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
    #: "registered", "updated", "rolled_back" or "deleted".
    kind: str
    in_batch: bool = False
    rollback_to_version: int | None = None


class SessionHistory:
    """Changes per variable id, and the ids each name has had, in order.

    Appends only, from the single writer; readers copy the lists they page through.
    """

    def __init__(self) -> None:
        self._changes: dict[str, list[Change]] = {}
        self._ids_by_name: dict[str, list[str]] = {}
        self._live: dict[str, str] = {}  # live variable id -> name

    def apply(self, event: RecordedEvent) -> None:
        """Record what ``event`` changed."""
        payload = event.payload
        kind = event.type
        if kind == EventType.VARIABLE_REGISTERED:
            variable_id, name = payload["variable_id"], payload["name"]
            self._ids_by_name.setdefault(name, []).append(variable_id)
            self._live[variable_id] = name
            self._changes[variable_id] = [
                Change(
                    variable_id,
                    name,
                    payload["type"],
                    0,
                    payload["value"],
                    None,
                    event.position,
                    event.recorded_at,
                    event.source,
                    event.metadata,
                    "registered",
                )
            ]
        elif kind == EventType.VARIABLE_UPDATED:
            rollback = payload.get("rollback_to_version")
            self._change(event, payload["variable_id"], payload["value"], False, rollback)
        elif kind == EventType.BATCH_APPLIED:
            for item in payload["updates"]:
                self._change(event, item["variable_id"], item["value"], True, None)
        elif kind == EventType.VARIABLE_DELETED:
            self._delete(event, payload["variable_id"])
        elif kind == EventType.SESSION_DELETED:
            for variable_id in list(self._live):
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
                "rolled_back" if rollback_to_version is not None else "updated",
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
                "deleted",
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
            if change.version == version and change.kind != "deleted":
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
