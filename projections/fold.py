"""The fold: how each event changes a session's state. Pure apart from mutating the
state it is given (callers fold into a copy when others may be reading the original)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from varstore.eventstore.events import EventType, RecordedEvent
from varstore.projections.state import SessionState, VariableState
from varstore.types import Constraints

__all__ = ["ProjectionError", "apply_event", "replay"]


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
    expected = (state.position if state is not None else 0) + 1
    if event.position != expected:
        raise ProjectionError(
            f"session {event.session_id!r}: event at position {event.position} "
            f"follows position {expected - 1}"
        )
    if event.type == _SESSION_CREATED:
        if state is not None and not state.deleted:
            raise ProjectionError(f"session {event.session_id!r} created twice")
        return _session_created(event)
    if state is None or state.deleted:
        raise ProjectionError(
            f"session {event.session_id!r}: {event.type} at position {event.position} "
            "outside a live session"
        )
    try:
        handler = _HANDLERS[event.type]
    except KeyError:
        raise ProjectionError(f"unknown event type {event.type!r}") from None
    handler(state, event)
    state.position = event.position
    state.updated_at = event.recorded_at
    return state


def replay(
    events: Iterable[RecordedEvent], state: SessionState | None = None
) -> SessionState | None:
    """Fold ``events`` (of one session, in order) onto ``state``."""
    for event in events:
        state = apply_event(state, event)
    return state


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
    )


def _session_deleted(state: SessionState, event: RecordedEvent) -> None:
    state.deleted = True
    state.variables.clear()
    state.names.clear()


def _variable_registered(state: SessionState, event: RecordedEvent) -> None:
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
    if variable.name in state.names or variable.id in state.variables:
        raise ProjectionError(f"variable {variable.name!r} registered twice")
    state.variables[variable.id] = variable
    state.names[variable.name] = variable.id


def _change(state: SessionState, event: RecordedEvent, variable_id: str, value: object) -> None:
    current = _live(state, event, variable_id)
    state.variables[variable_id] = current.changed(
        value,  # type: ignore[arg-type]  # payloads are made by the schema models
        event.metadata,
        event.source,
        event.recorded_at,
        event.position,
    )


def _variable_updated(state: SessionState, event: RecordedEvent) -> None:
    # The commonest event, so _change's work is written out here (replay speed).
    variable_id = event.payload["variable_id"]
    current = state.variables.get(variable_id)
    if current is None:
        _live(state, event, variable_id)  # raises ProjectionError
        return
    state.variables[variable_id] = current.changed(
        event.payload["value"], event.metadata, event.source, event.recorded_at, event.position
    )


def _batch_applied(state: SessionState, event: RecordedEvent) -> None:
    for item in event.payload["updates"]:
        _change(state, event, item["variable_id"], item["value"])


def _variable_deleted(state: SessionState, event: RecordedEvent) -> None:
    variable = _live(state, event, event.payload["variable_id"])
    del state.variables[variable.id]
    del state.names[variable.name]


def _live(state: SessionState, event: RecordedEvent, variable_id: str) -> VariableState:
    try:
        return state.variables[variable_id]
    except KeyError:
        raise ProjectionError(
            f"session {event.session_id!r}: {event.type} at position {event.position} "
            f"names unknown variable {variable_id!r}"
        ) from None


def _session_forked(state: SessionState, event: RecordedEvent) -> None:
    """Marks where a fork's copied history ends; the state itself does not change."""


#: Every type of the event registry but SessionCreated (folded above, as it makes the state);
#: tests/test_event_registry.py folds an example of each type.
_HANDLERS: dict[str, Callable[[SessionState, RecordedEvent], None]] = {
    EventType.SESSION_FORKED: _session_forked,
    EventType.SESSION_DELETED: _session_deleted,
    EventType.VARIABLE_REGISTERED: _variable_registered,
    EventType.VARIABLE_UPDATED: _variable_updated,
    EventType.BATCH_APPLIED: _batch_applied,
    EventType.VARIABLE_DELETED: _variable_deleted,
}
