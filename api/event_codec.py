"""Recorded events to ``varstore.v1.Event`` messages and back, and history changes to
``VariableChange`` messages: the typed form of the log that clients see."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any

from varstore.api.convert import timestamp
from varstore.eventstore import schema
from varstore.eventstore.events import EventType, NewEvent, RecordedEvent
from varstore.projections import Change
from varstore.types import Constraints, RuleViolation, ValidationError, to_proto
from varstore.types.event_bodies import payload_of
from varstore.v1 import varstore_pb2 as pb

__all__ = ["change_to_proto", "event_from_proto", "event_to_proto"]


def _value(value: Any) -> pb.Value:
    return to_proto(value)


def _body_created(payload: dict[str, Any], message: pb.Event) -> None:
    message.session_created.metadata.update(payload.get("metadata", {}))
    message.session_created.ttl_seconds = payload.get("ttl_seconds", 0)


def _body_deleted(payload: dict[str, Any], message: pb.Event) -> None:
    message.session_deleted.reason = payload.get("reason", "deleted")


def _body_forked(payload: dict[str, Any], message: pb.Event) -> None:
    message.session_forked.origin_session_id = payload["origin_session_id"]
    message.session_forked.origin_position = payload["origin_position"]


def _body_registered(payload: dict[str, Any], message: pb.Event) -> None:
    body = message.variable_registered
    body.variable_id = payload["variable_id"]
    body.name = payload["name"]
    body.type = payload["type"]
    body.value.CopyFrom(_value(payload["value"]))
    body.constraints.CopyFrom(Constraints.trusted(payload.get("constraints", {})).to_proto())


def _body_updated(payload: dict[str, Any], message: pb.Event) -> None:
    body = message.variable_updated
    body.variable_id = payload["variable_id"]
    body.value.CopyFrom(_value(payload["value"]))
    if payload.get("rollback_to_version") is not None:
        body.rollback_to_version = payload["rollback_to_version"]


def _body_batch(payload: dict[str, Any], message: pb.Event) -> None:
    for item in payload["updates"]:
        message.batch_applied.updates.add(
            variable_id=item["variable_id"], value=_value(item["value"])
        )


def _body_variable_deleted(payload: dict[str, Any], message: pb.Event) -> None:
    message.variable_deleted.variable_id = payload["variable_id"]


_BODIES: dict[str, Callable[[dict[str, Any], pb.Event], None]] = {
    EventType.SESSION_CREATED: _body_created,
    EventType.SESSION_DELETED: _body_deleted,
    EventType.SESSION_FORKED: _body_forked,
    EventType.VARIABLE_REGISTERED: _body_registered,
    EventType.VARIABLE_UPDATED: _body_updated,
    EventType.BATCH_APPLIED: _body_batch,
    EventType.VARIABLE_DELETED: _body_variable_deleted,
}


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
        metadata=dict(event.metadata),
    )
    _BODIES[event.type](dict(event.payload), message)
    return message


def event_from_proto(message: pb.Event) -> NewEvent:
    """The event a typed message describes, its payload checked against the schema.

    Raises:
        ValidationError: unknown type, a body that does not match the type, or a value
            that is not a valid value.
    """
    where = f"event at position {message.position}"
    try:
        payload = payload_of(message)
        if message.type == EventType.VARIABLE_REGISTERED:  # constraints must make sense
            checked_rules = Constraints.for_type(payload["type"], payload["constraints"])
            payload["constraints"] = checked_rules.to_dict()
        model = schema.PAYLOAD_MODELS[message.type]
        checked = model.model_validate(payload).as_json_data()
    except (KeyError, ValueError, RuleViolation) as problem:
        raise ValidationError(f"{where} ({message.type or 'no type'}): {problem}") from None
    return NewEvent(
        type=message.type,
        payload=checked,
        recorded_at=message.recorded_at.ToDatetime(tzinfo=UTC),
        source=message.source,
        metadata=dict(message.metadata),
        schema_version=message.schema_version or 1,
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
