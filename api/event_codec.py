"""Recorded events to ``varstore.v1.Event`` messages and back, and history changes to
``VariableChange`` messages: the typed form of the log that clients see."""

from __future__ import annotations

from datetime import UTC

from varstore.api.convert import timestamp
from varstore.eventstore.events import NewEvent, RecordedEvent
from varstore.projections import Change, without_staging
from varstore.types import RuleViolation, ValidationError, to_proto
from varstore.types.event_bodies import TRUSTED
from varstore.types.events import EVENTS, checked_payload, payload_of
from varstore.v1 import varstore_pb2 as pb

__all__ = ["change_to_proto", "event_from_proto", "event_to_proto"]

#: Event type -> the writer of its body (a plain dict: one lookup per event sent).
_WRITERS = {name: spec.body.write for name, spec in EVENTS.items()}


def event_to_proto(event: RecordedEvent) -> pb.Event:
    """The typed message for a recorded event."""
    message = pb.Event(
        session_id=event.session_id,
        position=event.position,
        global_position=event.global_position,
        type=event.type,
        schema_version=event.schema_version,
        recorded_at=timestamp(event.recorded_at),
        source=event.source,
        metadata=dict(without_staging(event.metadata)),
        request_id=event.request_id,
    )
    _WRITERS[event.type](event.payload, message, TRUSTED)
    return message


def event_from_proto(message: pb.Event) -> NewEvent:
    """The event a typed message describes, its payload checked against its type's model
    (and stored in the model's form). Its ``request_id`` names the write that recorded it
    where it came from; the digest of that write's body is not sent, so it is "".

    Raises:
        ValidationError: unknown type, a body that does not match the type, or a value
            that is not a valid value.
    """
    where = f"event at position {message.position}"
    try:
        checked = checked_payload(message.type, payload_of(message))
    except RuleViolation as problem:
        raise ValidationError(f"{where} ({message.type or 'no type'}): {problem}") from None
    return NewEvent(
        type=message.type,
        payload=checked,
        recorded_at=message.recorded_at.ToDatetime(tzinfo=UTC),
        source=message.source,
        metadata=dict(without_staging(message.metadata)),
        schema_version=message.schema_version or 1,
        request_id=message.request_id,
    )


def change_to_proto(change: Change) -> pb.VariableChange:
    """The message for one version of a variable."""
    message = pb.VariableChange(
        variable_id=change.variable_id,
        name=change.name,
        type=change.type,
        version=change.version,
        position=change.position,
        recorded_at=timestamp(change.recorded_at),
        source=change.source,
        metadata=dict(change.metadata),
        kind=change.kind,
        in_batch=change.in_batch,
        rollback_to_version=change.rollback_to_version or 0,
    )
    if change.value is not None:
        message.value.CopyFrom(to_proto(change.value))
    if change.previous_value is not None:
        message.previous_value.CopyFrom(to_proto(change.previous_value))
    return message
