"""The payload schema of each event type (pydantic models), and their JSON form.

Payloads are stored as JSON objects. Writers build them through these models, so a
payload in the log always has this shape; readers (the projection) take the stored
dicts as they are, because every stored payload was made here.
Schema version 1 for every type; a change of shape adds a version and an upcaster.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from varstore.eventstore.events import EventType

__all__ = [
    "PAYLOAD_MODELS",
    "BatchApplied",
    "BatchItem",
    "Payload",
    "SessionCreated",
    "SessionDeleted",
    "SessionForked",
    "VariableDeleted",
    "VariableRegistered",
    "VariableUpdated",
]

#: A variable value as JSON holds it; the variable's type says how to read it.
JsonValue = StrictBool | StrictInt | StrictFloat | StrictStr


class Payload(BaseModel):
    """Base of every payload: immutable, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def as_json_data(self) -> dict[str, Any]:
        """The payload as stored: a JSON-ready dict."""
        return self.model_dump(mode="python")


class SessionCreated(Payload):
    """A session started (or started again after it was deleted)."""

    metadata: dict[str, str] = Field(default_factory=dict)
    ttl_seconds: int = 0


class SessionDeleted(Payload):
    """A session ended: ``reason`` is "deleted" (asked for) or "expired" (TTL)."""

    reason: str = "deleted"


class VariableRegistered(Payload):
    """A variable was created at version 0; its metadata is the event's metadata."""

    variable_id: str
    name: str
    type: str
    value: JsonValue
    constraints: dict[str, Any] = Field(default_factory=dict)


class VariableUpdated(Payload):
    """One variable took a new value; the event's metadata merges into the variable's.
    ``rollback_to_version`` is set when the change restores an earlier version's value."""

    variable_id: str
    value: JsonValue
    rollback_to_version: int | None = None

    def as_json_data(self) -> dict[str, Any]:
        """The stored form; a plain update carries no rollback field."""
        return self.model_dump(mode="python", exclude_none=True)


class BatchItem(BaseModel):
    """One change inside an atomic batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variable_id: str
    value: JsonValue


class BatchApplied(Payload):
    """Several variables changed together, atomically, at one position."""

    updates: list[BatchItem]


class VariableDeleted(Payload):
    """A variable was removed; its name is free again."""

    variable_id: str


class SessionForked(Payload):
    """The events before this one were copied from ``origin_session_id`` up to
    ``origin_position``."""

    origin_session_id: str
    origin_position: int


#: The payload model of each event type.
PAYLOAD_MODELS: dict[str, type[Payload]] = {
    EventType.SESSION_CREATED: SessionCreated,
    EventType.SESSION_DELETED: SessionDeleted,
    EventType.VARIABLE_REGISTERED: VariableRegistered,
    EventType.VARIABLE_UPDATED: VariableUpdated,
    EventType.BATCH_APPLIED: BatchApplied,
    EventType.VARIABLE_DELETED: VariableDeleted,
    EventType.SESSION_FORKED: SessionForked,
}
