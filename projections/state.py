"""The state a session's log folds into: its variables, their name index and positions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from varstore.types import Constraints, PyValue

__all__ = ["SessionState", "VariableState"]


@dataclass(frozen=True, slots=True)
class VariableState:
    """One variable as of some position. Immutable: a change makes a new one."""

    id: str
    name: str
    type: str
    value: PyValue
    constraints: Constraints
    metadata: Mapping[str, str]
    source: str
    version: int
    created_at: datetime
    updated_at: datetime
    #: Session position of the last change.
    position: int
    #: Session position of the registration.
    created_position: int

    def changed(
        self,
        value: PyValue,
        metadata: Mapping[str, str],
        source: str,
        at: datetime,
        position: int,
    ) -> VariableState:
        """This variable one version later, with ``metadata`` merged into its own."""
        current = self.metadata
        # Most changes repeat metadata the variable already has: share the mapping then.
        merged = current if metadata.items() <= current.items() else {**current, **metadata}
        # Built directly rather than with dataclasses.replace: this runs once per change
        # on every replay, and replace costs several times more.
        return VariableState(
            self.id,
            self.name,
            self.type,
            value,
            self.constraints,
            merged,
            source,
            self.version + 1,
            self.created_at,
            at,
            position,
            self.created_position,
        )


@dataclass(slots=True)
class SessionState:
    """A session as of ``position``.

    Mutable only while a fold builds it; once published to readers it is never changed
    again (the writer folds into a :meth:`copy`), so a reader holding one sees a stable cut.
    """

    session_id: str
    metadata: Mapping[str, str]
    ttl_seconds: int
    created_at: datetime
    updated_at: datetime
    #: Position of the last event folded in.
    position: int
    #: Live variables by id.
    variables: dict[str, VariableState] = field(default_factory=dict)
    #: Live variable ids by name.
    names: dict[str, str] = field(default_factory=dict)
    #: True once a SessionDeleted event was folded in (until a new SessionCreated).
    deleted: bool = False
    #: Position of the SessionCreated event that began this life of the session (a session
    #: deleted and created again starts a new life; session tokens name it).
    created_position: int = 0

    def copy(self) -> SessionState:
        """A copy whose dicts can change without touching this one (values are shared)."""
        return replace(self, variables=dict(self.variables), names=dict(self.names))

    def find(self, identifier: str) -> VariableState | None:
        """The live variable with this id, else with this name, else None."""
        found = self.variables.get(identifier)
        if found is None:
            variable_id = self.names.get(identifier)
            if variable_id is not None:
                found = self.variables[variable_id]
        return found

    def by_name(self) -> list[VariableState]:
        """Live variables ordered by name."""
        return [self.variables[self.names[name]] for name in sorted(self.names)]
