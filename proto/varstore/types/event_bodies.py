"""The typed body of each ``varstore.v1.Event`` as the plain payload the log stores (and
exports carry), both ways: one reader and one writer per member of the ``body`` oneof.

Which event type uses which body is declared in :mod:`varstore.types.events`; this module
only knows the messages. Readers trust nothing but the message's own types (constraints
come back as plain data, unchecked). Writers check the shape of what they are given
(strings, whole numbers, lists), so a payload read from an export fails here with a
plain message; the values and constraints go through a :class:`BodyValues`, which the
server's codec trusts (the log's payloads were made by the payload models) and an export
reader replaces to type and check them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from varstore.types.constraints import Constraints
from varstore.types.values import PyValue, RuleViolation, from_proto, to_proto
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "BATCH_APPLIED_BODY",
    "SESSION_CREATED_BODY",
    "SESSION_DELETED_BODY",
    "SESSION_FORKED_BODY",
    "TRUSTED",
    "VARIABLE_DELETED_BODY",
    "VARIABLE_REGISTERED_BODY",
    "VARIABLE_UPDATED_BODY",
    "BodyCodec",
    "BodyValues",
]


class BodyValues:
    """How a writer turns a payload's values and constraints into messages.

    This base trusts the payload (the log's own); a subclass may convert or check, e.g. read
    a JSON number as its variable's type. Methods raise :class:`RuleViolation` to refuse.
    """

    def value(self, raw: object, variable_id: str, type_name: str | None) -> pb.Value:
        """The message for a value of ``variable_id``; ``type_name`` is set when the event
        itself declares the variable's type (a registration)."""
        return to_proto(raw)

    def constraints(self, type_name: str, raw: Mapping[str, Any]) -> pb.Constraints:
        """The message for a variable's constraints (as :meth:`Constraints.to_dict` gives)."""
        return Constraints.trusted(raw).to_proto()


#: The writers' default: the payload is the log's own.
TRUSTED = BodyValues()

Reader = Callable[[pb.Event], dict[str, Any]]
Writer = Callable[[Mapping[str, Any], pb.Event, BodyValues], None]


@dataclass(frozen=True, slots=True)
class BodyCodec:
    """One member of ``Event.body``: its field name, and its payload both ways."""

    #: The oneof member, e.g. "variable_updated".
    field: str
    #: The payload the event's body holds (the body must be ``field``'s).
    read: Reader
    #: Sets ``field`` of the event from a payload.
    write: Writer


# -- checks for writers -------------------------------------------------------------------------


def _text(payload: Mapping[str, Any], key: str) -> str:
    value = payload[key]
    if not isinstance(value, str):
        raise RuleViolation(f"{key!r} must be a string, not {value!r}")
    return value


def _whole(payload: Mapping[str, Any], key: str) -> int:
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RuleViolation(f"{key!r} must be a whole number of at least 0, not {value!r}")
    return value


def _strings(payload: Mapping[str, Any], key: str) -> Mapping[str, str]:
    value = payload[key]
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise RuleViolation(f"{key!r} must be an object of strings, not {value!r}")
    return value


def _value(value: pb.Value) -> PyValue:
    found = from_proto(value)
    if found is None:
        raise RuleViolation("a value is missing")
    return found


# -- session_created ----------------------------------------------------------------------------


def _read_session_created(event: pb.Event) -> dict[str, Any]:
    created = event.session_created
    return {"metadata": dict(created.metadata), "ttl_seconds": created.ttl_seconds}


def _write_session_created(payload: Mapping[str, Any], event: pb.Event, _: BodyValues) -> None:
    body = event.session_created
    body.SetInParent()
    if "metadata" in payload:
        body.metadata.update(_strings(payload, "metadata"))
    if "ttl_seconds" in payload:
        body.ttl_seconds = _whole(payload, "ttl_seconds")


SESSION_CREATED_BODY = BodyCodec("session_created", _read_session_created, _write_session_created)


# -- session_deleted ----------------------------------------------------------------------------


def _read_session_deleted(event: pb.Event) -> dict[str, Any]:
    return {"reason": event.session_deleted.reason}


def _write_session_deleted(payload: Mapping[str, Any], event: pb.Event, _: BodyValues) -> None:
    body = event.session_deleted
    body.SetInParent()
    if "reason" in payload:
        body.reason = _text(payload, "reason")


SESSION_DELETED_BODY = BodyCodec("session_deleted", _read_session_deleted, _write_session_deleted)


# -- session_forked -----------------------------------------------------------------------------


def _read_session_forked(event: pb.Event) -> dict[str, Any]:
    forked = event.session_forked
    return {
        "origin_session_id": forked.origin_session_id,
        "origin_position": forked.origin_position,
    }


def _write_session_forked(payload: Mapping[str, Any], event: pb.Event, _: BodyValues) -> None:
    body = event.session_forked
    body.origin_session_id = _text(payload, "origin_session_id")
    body.origin_position = _whole(payload, "origin_position")
    body.SetInParent()


SESSION_FORKED_BODY = BodyCodec("session_forked", _read_session_forked, _write_session_forked)


# -- variable_registered ------------------------------------------------------------------------


def _read_variable_registered(event: pb.Event) -> dict[str, Any]:
    registered = event.variable_registered
    return {
        "variable_id": registered.variable_id,
        "name": registered.name,
        "type": registered.type,
        "value": _value(registered.value),
        "constraints": Constraints.data_from_proto(registered.constraints),
    }


def _write_variable_registered(
    payload: Mapping[str, Any], event: pb.Event, values: BodyValues
) -> None:
    body = event.variable_registered
    body.variable_id = _text(payload, "variable_id")
    body.name = _text(payload, "name")
    body.type = _text(payload, "type")
    body.value.CopyFrom(values.value(payload["value"], body.variable_id, body.type))
    raw = payload.get("constraints", {})
    if not isinstance(raw, Mapping):
        raise RuleViolation(f"'constraints' must be an object, not {raw!r}")
    # Always set, even when empty, so a registration's message always carries its rules.
    body.constraints.CopyFrom(values.constraints(body.type, raw))


VARIABLE_REGISTERED_BODY = BodyCodec(
    "variable_registered", _read_variable_registered, _write_variable_registered
)


# -- variable_updated ---------------------------------------------------------------------------


def _read_variable_updated(event: pb.Event) -> dict[str, Any]:
    updated = event.variable_updated
    payload: dict[str, Any] = {"variable_id": updated.variable_id, "value": _value(updated.value)}
    if updated.HasField("rollback_to_version"):
        payload["rollback_to_version"] = updated.rollback_to_version
    return payload


def _write_variable_updated(
    payload: Mapping[str, Any], event: pb.Event, values: BodyValues
) -> None:
    body = event.variable_updated
    body.variable_id = _text(payload, "variable_id")
    body.value.CopyFrom(values.value(payload["value"], body.variable_id, None))
    if payload.get("rollback_to_version") is not None:
        body.rollback_to_version = _whole(payload, "rollback_to_version")


VARIABLE_UPDATED_BODY = BodyCodec(
    "variable_updated", _read_variable_updated, _write_variable_updated
)


# -- batch_applied ------------------------------------------------------------------------------


def _read_batch_applied(event: pb.Event) -> dict[str, Any]:
    return {
        "updates": [
            {"variable_id": item.variable_id, "value": _value(item.value)}
            for item in event.batch_applied.updates
        ]
    }


def _write_batch_applied(payload: Mapping[str, Any], event: pb.Event, values: BodyValues) -> None:
    items = payload["updates"]
    if not isinstance(items, list | tuple):
        raise RuleViolation(f"'updates' must be a list, not {items!r}")
    body = event.batch_applied
    body.SetInParent()
    for item in items:
        if not isinstance(item, Mapping) or set(item) != {"variable_id", "value"}:
            raise RuleViolation(f"each update must be {{variable_id, value}}, not {item!r}")
        variable_id = _text(item, "variable_id")
        body.updates.add(
            variable_id=variable_id, value=values.value(item["value"], variable_id, None)
        )


BATCH_APPLIED_BODY = BodyCodec("batch_applied", _read_batch_applied, _write_batch_applied)


# -- variable_deleted ---------------------------------------------------------------------------


def _read_variable_deleted(event: pb.Event) -> dict[str, Any]:
    return {"variable_id": event.variable_deleted.variable_id}


def _write_variable_deleted(payload: Mapping[str, Any], event: pb.Event, _: BodyValues) -> None:
    event.variable_deleted.variable_id = _text(payload, "variable_id")
    event.variable_deleted.SetInParent()


VARIABLE_DELETED_BODY = BodyCodec(
    "variable_deleted", _read_variable_deleted, _write_variable_deleted
)
