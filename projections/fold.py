"""The fold: how each event changes a session's state. Pure apart from mutating the
state it is given (callers fold into a copy when others may be reading the original).
The state's maps are persistent: the fold puts new maps in the state it is given and
never changes a map, so a copy made before the fold keeps the maps it had."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from immutables import Map, MapMutation

from varstore.eventstore.events import EventType, RecordedEvent
from varstore.projections.state import STAGED_EVENTS_KEY, SessionState, VariableState
from varstore.types import Constraints

__all__ = ["Fold", "ProjectionError", "apply_event", "replay"]


# An enum member as a plain name: reading ``EventType.X`` costs ~200 ns in Python 3.11, and
# the test below runs once per folded event.
_SESSION_CREATED: str = EventType.SESSION_CREATED


class ProjectionError(Exception):
    """An event does not fit the state it is folded into: the log or the fold is wrong."""


def apply_event(state: SessionState | None, event: RecordedEvent) -> SessionState:
    """The state after ``event``: ``state`` changed in place, or a new one on SessionCreated.

    Raises:
        ProjectionError: the event is out of sequence or names an unknown variable.
    """
    fold = Fold(state)
    fold.apply(event)
    folded = fold.state()
    assert folded is not None  # an event was applied
    return folded


def replay(
    events: Iterable[RecordedEvent], state: SessionState | None = None
) -> SessionState | None:
    """Fold ``events`` (of one session, in order) onto ``state`` (changed in place)."""
    fold = Fold(state)
    for event in events:
        fold.apply(event)
    return fold.state()


class Fold:
    """One session's state while events are folded into it (changed in place, as
    :func:`apply_event` does).

    Its maps are opened as mutations on first change and stay open across events until
    :meth:`state` closes them: a mutation changes a map for a fraction of what a new
    persistent map per change costs, so a long fold runs at the speed of a plain dict.
    The maps the state had before are never changed.
    """

    __slots__ = ("_names", "_state", "_variables")

    def __init__(self, state: SessionState | None = None) -> None:
        self._state = state
        self._variables: MapMutation[str, VariableState] | None = None
        self._names: MapMutation[str, str] | None = None

    @property
    def position(self) -> int:
        """The position of the last event folded in (0 before the session's first)."""
        return self._state.position if self._state is not None else 0

    def state(self) -> SessionState | None:
        """The state so far, its maps closed; folding may go on after (into it)."""
        state = self._state
        if state is not None:
            if self._variables is not None:
                state.variables, self._variables = self._variables.finish(), None
            if self._names is not None:
                state.names, self._names = self._names.finish(), None
        return state

    def apply(self, event: RecordedEvent) -> None:
        """Fold ``event`` in.

        Raises:
            ProjectionError: the event is out of sequence or names an unknown variable
                (the fold may then hold part of the event: drop it).
        """
        state = self._state
        expected = (state.position if state is not None else 0) + 1
        if event.position != expected:
            raise ProjectionError(
                f"session {event.session_id!r}: event at position {event.position} "
                f"follows position {expected - 1}"
            )
        if event.type == _SESSION_CREATED:
            if state is not None and not state.deleted:
                raise ProjectionError(f"session {event.session_id!r} created twice")
            self._state, self._variables, self._names = _session_created(event), None, None
            return
        if state is None or state.deleted:
            raise ProjectionError(
                f"session {event.session_id!r}: {event.type} at position {event.position} "
                "outside a live session"
            )
        try:
            handler = _HANDLERS[event.type]
        except KeyError:
            raise ProjectionError(f"unknown event type {event.type!r}") from None
        handler(self, event)
        state.position = event.position
        state.updated_at = event.recorded_at

    def _variables_open(self) -> MapMutation[str, VariableState]:
        if self._variables is None:
            assert self._state is not None
            self._variables = self._state.variables.mutate()
        return self._variables

    def _names_open(self) -> MapMutation[str, str]:
        if self._names is None:
            assert self._state is not None
            self._names = self._state.names.mutate()
        return self._names

    def _clear(self) -> None:
        assert self._state is not None
        self._state.variables, self._state.names = Map(), Map()
        self._variables = self._names = None


def _session_created(event: RecordedEvent) -> SessionState:
    payload = event.payload
    return SessionState(
        session_id=event.session_id,
        metadata=dict(payload.get("metadata", {})),
        ttl_seconds=int(payload.get("ttl_seconds", 0)),
        created_at=event.recorded_at,
        updated_at=event.recorded_at,
        position=event.position,
        created_position=event.position,
        staged_until=int(event.metadata.get(STAGED_EVENTS_KEY, 0)),
    )


def _session_deleted(fold: Fold, event: RecordedEvent) -> None:
    assert fold._state is not None
    fold._state.deleted = True
    fold._clear()


def _variable_registered(fold: Fold, event: RecordedEvent) -> None:
    payload = event.payload
    variable = VariableState(
        id=payload["variable_id"],
        name=payload["name"],
        type=payload["type"],
        value=payload["value"],
        constraints=Constraints.trusted(payload.get("constraints", {})),
        metadata=dict(event.metadata),
        source=event.source,
        version=0,
        created_at=event.recorded_at,
        updated_at=event.recorded_at,
        position=event.position,
        created_position=event.position,
    )
    variables, names = fold._variables_open(), fold._names_open()
    if variable.name in names or variable.id in variables:
        raise ProjectionError(f"variable {variable.name!r} registered twice")
    variables[variable.id] = variable
    names[variable.name] = variable.id


def _variable_updated(fold: Fold, event: RecordedEvent) -> None:
    # The commonest event: kept short (replay speed).
    variables = fold._variables
    if variables is None:
        variables = fold._variables_open()
    variable_id = event.payload["variable_id"]
    try:
        current = variables[variable_id]
    except KeyError:
        raise _unknown(event, variable_id) from None
    variables[variable_id] = current.changed(
        event.payload["value"], event.metadata, event.source, event.recorded_at, event.position
    )


def _batch_applied(fold: Fold, event: RecordedEvent) -> None:
    variables = fold._variables_open()
    for item in event.payload["updates"]:
        variable_id = item["variable_id"]
        variables[variable_id] = _live(variables, event, variable_id).changed(
            item["value"], event.metadata, event.source, event.recorded_at, event.position
        )


def _variable_deleted(fold: Fold, event: RecordedEvent) -> None:
    variables = fold._variables_open()
    variable = _live(variables, event, event.payload["variable_id"])
    del variables[variable.id]
    del fold._names_open()[variable.name]


def _live(
    variables: MapMutation[str, VariableState], event: RecordedEvent, variable_id: str
) -> VariableState:
    try:
        return variables[variable_id]
    except KeyError:
        raise _unknown(event, variable_id) from None


def _unknown(event: RecordedEvent, variable_id: str) -> ProjectionError:
    return ProjectionError(
        f"session {event.session_id!r}: {event.type} at position {event.position} "
        f"names unknown variable {variable_id!r}"
    )


def _session_forked(fold: Fold, event: RecordedEvent) -> None:
    """Marks where a fork's copied history ends; the state itself does not change."""


#: Every type of the event registry but SessionCreated (folded above, as it makes the state);
#: tests/test_event_registry.py folds an example of each type.
_HANDLERS: dict[str, Callable[[Fold, RecordedEvent], None]] = {
    EventType.SESSION_FORKED: _session_forked,
    EventType.SESSION_DELETED: _session_deleted,
    EventType.VARIABLE_REGISTERED: _variable_registered,
    EventType.VARIABLE_UPDATED: _variable_updated,
    EventType.BATCH_APPLIED: _batch_applied,
    EventType.VARIABLE_DELETED: _variable_deleted,
}
