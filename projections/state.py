"""The state a session's log folds into: its variables, their name index and positions.

The variables and the name index are persistent maps (``immutables.Map``, a hash array
mapped trie): a change makes a new map sharing all but O(log n) of the old one's nodes, so
:meth:`SessionState.copy`, which every write group and every apply makes, costs the same in
a session of 10 variables as in one of 10,000."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from immutables import Map

from varstore.types import Constraints, PyValue

__all__ = ["STAGED_EVENTS_KEY", "SessionState", "VariableState", "without_staging"]

#: Event metadata key, on the first event of a fork or import written in several chunks
#: only: how many events the whole copy holds. The session stays hidden until its log has
#: them all (see :attr:`SessionState.hidden`). Reserved: the server drops it from the
#: metadata of every other event it records, exports or imports.
STAGED_EVENTS_KEY = "varstore.staged_events"


def without_staging(metadata: Mapping[str, str]) -> Mapping[str, str]:
    """``metadata`` without the reserved :data:`STAGED_EVENTS_KEY` (the same mapping when
    it has none: the common case costs one lookup)."""
    if STAGED_EVENTS_KEY not in metadata:
        return metadata
    return {key: value for key, value in metadata.items() if key != STAGED_EVENTS_KEY}


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
    #: Live variables by id (persistent: the fold replaces the map, never changes it).
    variables: Map[str, VariableState] = field(default_factory=Map)
    #: Live variable ids by name (persistent, like ``variables``).
    names: Map[str, str] = field(default_factory=Map)
    #: True once a SessionDeleted event was folded in (until a new SessionCreated).
    deleted: bool = False
    #: Position of the SessionCreated event that began this life of the session (a session
    #: deleted and created again starts a new life; session tokens name it).
    created_position: int = 0
    #: The position at which the chunked copy that began this session is whole (0: it
    #: was not written in chunks). See :attr:`hidden`.
    staged_until: int = 0

    @property
    def hidden(self) -> bool:
        """Whether this, as the *current* state, is a chunked fork or import still being
        written: readers see no such session until its last chunk is recorded. (A past
        state of a complete copy has a position below ``staged_until`` too: ask this only
        of the published one.)"""
        return self.position < self.staged_until

    def copy(self) -> SessionState:
        """A copy the fold can change without touching this one. O(1): the maps are
        persistent, so the copy shares them until the fold replaces them."""
        # Built directly rather than with dataclasses.replace: it runs on every write.
        return SessionState(
            self.session_id,
            self.metadata,
            self.ttl_seconds,
            self.created_at,
            self.updated_at,
            self.position,
            self.variables,
            self.names,
            self.deleted,
            self.created_position,
            self.staged_until,
        )

    def find(self, identifier: str) -> VariableState | None:
        """The live variable with this id, else with this name, else None."""
        # `in` then `[]`: Map.get costs about twice as much as either.
        variables, names = self.variables, self.names
        if identifier in variables:
            return variables[identifier]
        if identifier in names:
            return variables[names[identifier]]
        return None

    def by_name(self) -> list[VariableState]:
        """Live variables ordered by name."""
        return [self.variables[self.names[name]] for name in sorted(self.names)]
