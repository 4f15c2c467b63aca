"""The typed body of a ``varstore.v1.Event`` as the plain payload the log stores (and
exports carry): one mapping, shared by the server's codec and the client's exports."""

from __future__ import annotations

from typing import Any, Final

from varstore.types.constraints import Constraints
from varstore.types.values import PyValue, RuleViolation, from_proto
from varstore.v1 import varstore_pb2 as pb

__all__ = ["BODY_FIELDS", "payload_of"]

#: The ``Event.body`` field that carries each event type.
BODY_FIELDS: Final[dict[str, str]] = {
    "SessionCreated": "session_created",
    "SessionDeleted": "session_deleted",
    "SessionForked": "session_forked",
    "VariableRegistered": "variable_registered",
    "VariableUpdated": "variable_updated",
    "BatchApplied": "batch_applied",
    "VariableDeleted": "variable_deleted",
}


def _value(value: pb.Value) -> PyValue:
    found = from_proto(value)
    if found is None:
        raise RuleViolation("a value is missing")
    return found


def payload_of(event: pb.Event) -> dict[str, Any]:
    """The payload an event's body holds (constraints as plain data, unchecked).

    Raises:
        RuleViolation: an unknown type, a body that is not the type's, a missing value.
    """
    expected = BODY_FIELDS.get(event.type)
    if expected is None:
        raise RuleViolation(f"unknown event type {event.type!r}")
    body = event.WhichOneof("body")
    if body != expected:
        raise RuleViolation(f"the body is {body or 'missing'}, not {expected}")
    if body == "session_created":
        created = event.session_created
        return {"metadata": dict(created.metadata), "ttl_seconds": created.ttl_seconds}
    if body == "session_deleted":
        return {"reason": event.session_deleted.reason}
    if body == "session_forked":
        forked = event.session_forked
        return {
            "origin_session_id": forked.origin_session_id,
            "origin_position": forked.origin_position,
        }
    if body == "variable_registered":
        registered = event.variable_registered
        return {
            "variable_id": registered.variable_id,
            "name": registered.name,
            "type": registered.type,
            "value": _value(registered.value),
            "constraints": Constraints.data_from_proto(registered.constraints),
        }
    if body == "variable_updated":
        updated = event.variable_updated
        payload: dict[str, Any] = {
            "variable_id": updated.variable_id,
            "value": _value(updated.value),
        }
        if updated.HasField("rollback_to_version"):
            payload["rollback_to_version"] = updated.rollback_to_version
        return payload
    if body == "batch_applied":
        return {
            "updates": [
                {"variable_id": item.variable_id, "value": _value(item.value)}
                for item in event.batch_applied.updates
            ]
        }
    return {"variable_id": event.variable_deleted.variable_id}
