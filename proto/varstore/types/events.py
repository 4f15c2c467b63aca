"""The event registry: what each event type means, declared once.

One :class:`EventSpec` per :class:`EventType` in :data:`EVENTS` says: the member of
``varstore.v1.Event``'s ``body`` oneof that carries it, the pydantic model of its stored
payload, which variables it changes (and to what), its history kind, whether filtered
watches always get it, its one-line summary, and an example payload. The fold, the history,
the codec, the watch, exports and imports and the CLI read it from here;
``tests/test_event_registry.py`` fails when an event type is missing anywhere.

It lives in the contract package because the client (exports, the CLI's summaries) may
import only the contract. Payloads are stored as JSON objects made by the models below
(schema version 1 for every type; a change of shape adds a version and an upcaster).
Readers of the log (the fold, the history) take stored dicts as they are.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic import ValidationError as ModelError

from varstore.types.constraints import Constraints
from varstore.types.event_bodies import (
    BATCH_APPLIED_BODY,
    SESSION_CREATED_BODY,
    SESSION_DELETED_BODY,
    SESSION_FORKED_BODY,
    TRUSTED,
    VARIABLE_DELETED_BODY,
    VARIABLE_REGISTERED_BODY,
    VARIABLE_UPDATED_BODY,
    BodyCodec,
    BodyValues,
)
from varstore.types.values import PyValue, RuleViolation, describe
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "BODY_FIELDS",
    "EVENTS",
    "PAYLOAD_MODELS",
    "SESSION_EVENTS",
    "BatchApplied",
    "BatchItem",
    "ChangeKind",
    "EventSpec",
    "EventType",
    "Payload",
    "SessionCreated",
    "SessionDeleted",
    "SessionForked",
    "VariableDeleted",
    "VariableRegistered",
    "VariableUpdated",
    "checked_payload",
    "is_session_event",
    "payload_of",
    "spec_of",
    "summarize",
    "touched_variable_ids",
    "write_body",
]


class EventType(StrEnum):
    """The kinds of event a session's log holds (the stored ``type``; the body's message
    name in ``varstore.v1``)."""

    SESSION_CREATED = "SessionCreated"
    SESSION_DELETED = "SessionDeleted"
    VARIABLE_REGISTERED = "VariableRegistered"
    VARIABLE_UPDATED = "VariableUpdated"
    BATCH_APPLIED = "BatchApplied"
    VARIABLE_DELETED = "VariableDeleted"
    SESSION_FORKED = "SessionForked"


class ChangeKind(StrEnum):
    """What one event did to one variable, as its history (``VariableChange.kind``) says."""

    REGISTERED = "registered"
    UPDATED = "updated"
    #: An update whose payload has ``rollback_to_version``: it restores an earlier value.
    ROLLED_BACK = "rolled_back"
    DELETED = "deleted"


# -- payload models -------------------------------------------------------------------------------

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
    """A variable was created at version 0; its metadata is the event's metadata.
    ``constraints`` make sense for ``type`` and are kept in :meth:`Constraints.to_dict` form."""

    variable_id: str
    name: str
    type: str
    value: JsonValue
    constraints: dict[str, Any] = Field(default_factory=dict)

    @field_validator("constraints")
    @classmethod
    def _sensible_for_the_type(
        cls, constraints: dict[str, Any], info: ValidationInfo
    ) -> dict[str, Any]:
        type_name = info.data.get("type")
        if type_name is None:  # the type failed its own check, which says so
            return constraints
        return Constraints.for_type(type_name, constraints).to_dict()


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


# -- the entry -----------------------------------------------------------------------------------

#: (variable id, new value) for each variable a payload names, in order; None for a deletion.
Changes = Callable[[Mapping[str, Any]], Sequence[tuple[str, Any]]]
#: A payload in a few words, given variable id -> name and how to show a value.
Summary = Callable[[Mapping[str, Any], Mapping[str, str], Callable[[PyValue], str]], str]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """Everything one event type means. Invariants (checked by the registry's tests): the
    example validates against the model unchanged, and round-trips through the body."""

    type: EventType
    #: The ``Event.body`` member that carries it, and its payload both ways.
    body: BodyCodec
    #: The stored payload's schema (``builtins.type``: the field above shadows the name).
    model: builtins.type[Payload]
    #: The kind of the history entries it makes for each variable it names; None: none.
    #: An UPDATED event whose payload has ``rollback_to_version`` makes ROLLED_BACK ones.
    history: ChangeKind | None
    #: The variables the payload names, with their new values (see :data:`Changes`).
    changes: Changes
    #: Its line in ``varstore log``.
    summary: Summary
    #: A valid payload, as stored (read it, never change it). It folds right after the
    #: SessionCreated and VariableRegistered examples (its variable is theirs, var_t_2).
    example: Mapping[str, Any]
    #: Filtered watches get it even when it names none of the watched variables.
    session_event: bool = False
    #: It changes every variable live just before it (none of them are in the payload).
    every_live_variable: bool = False
    #: Its changes are one atomic batch (history marks them ``in_batch``).
    in_batch: bool = False
    #: The payload's keys, and those it must have (from the model).
    payload_keys: frozenset[str] = field(init=False)
    required_keys: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        fields = self.model.model_fields
        object.__setattr__(self, "payload_keys", frozenset(fields))
        required = frozenset(name for name, info in fields.items() if info.is_required())
        object.__setattr__(self, "required_keys", required)

    def change_kind(self, payload: Mapping[str, Any]) -> ChangeKind | None:
        """The history kind of this event with this payload."""
        if self.history is ChangeKind.UPDATED and payload.get("rollback_to_version") is not None:
            return ChangeKind.ROLLED_BACK
        return self.history


# -- what each type changes, and its summary ------------------------------------------------------


def _nothing(payload: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    return ()


def _one_value(payload: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    return ((payload["variable_id"], payload["value"]),)


def _each_update(payload: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    return [(item["variable_id"], item["value"]) for item in payload["updates"]]


def _one_deletion(payload: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    return ((payload["variable_id"], None),)


def _created_summary(
    payload: Mapping[str, Any], names: Mapping[str, str], show: Callable[[PyValue], str]
) -> str:
    ttl = payload.get("ttl_seconds", 0)
    details = [f"ttl {ttl}s"] if ttl else []
    metadata = payload.get("metadata", {})
    if metadata:
        details.append(",".join(f"{key}={value}" for key, value in sorted(metadata.items())))
    return "session created" + (f" ({', '.join(details)})" if details else "")


def _deleted_summary(
    payload: Mapping[str, Any], names: Mapping[str, str], show: Callable[[PyValue], str]
) -> str:
    reason = payload.get("reason", "")
    return "session deleted" + (f" ({reason})" if reason else "")


def _forked_summary(
    payload: Mapping[str, Any], names: Mapping[str, str], show: Callable[[PyValue], str]
) -> str:
    return f"forked from {payload['origin_session_id']} at position {payload['origin_position']}"


def _registered_summary(
    payload: Mapping[str, Any], names: Mapping[str, str], show: Callable[[PyValue], str]
) -> str:
    return (
        f"{payload['name']}: {payload['type']} = {show(payload['value'])} "
        f"({payload['variable_id']})"
    )


def _updated_summary(
    payload: Mapping[str, Any], names: Mapping[str, str], show: Callable[[PyValue], str]
) -> str:
    variable_id = payload["variable_id"]
    back = payload.get("rollback_to_version")
    extra = f", rollback to v{back}" if back is not None else ""
    return (
        f"{names.get(variable_id, variable_id)} = {show(payload['value'])} ({variable_id}{extra})"
    )


def _batch_summary(
    payload: Mapping[str, Any], names: Mapping[str, str], show: Callable[[PyValue], str]
) -> str:
    items = ", ".join(
        f"{names.get(item['variable_id'], item['variable_id'])}={show(item['value'])}"
        for item in payload["updates"]
    )
    return f"batch: {items}"


def _variable_deleted_summary(
    payload: Mapping[str, Any], names: Mapping[str, str], show: Callable[[PyValue], str]
) -> str:
    variable_id = payload["variable_id"]
    known = names.get(variable_id)
    return f"deleted {known} ({variable_id})" if known else f"deleted {variable_id}"


# -- the registry ----------------------------------------------------------------------------------

_SPECS = (
    EventSpec(
        EventType.SESSION_CREATED,
        body=SESSION_CREATED_BODY,
        model=SessionCreated,
        history=None,
        changes=_nothing,
        summary=_created_summary,
        example={"metadata": {"team": "a"}, "ttl_seconds": 3600},
        session_event=True,
    ),
    EventSpec(
        EventType.SESSION_DELETED,
        body=SESSION_DELETED_BODY,
        model=SessionDeleted,
        history=ChangeKind.DELETED,
        changes=_nothing,
        summary=_deleted_summary,
        example={"reason": "expired"},
        session_event=True,
        every_live_variable=True,
    ),
    EventSpec(
        EventType.SESSION_FORKED,
        body=SESSION_FORKED_BODY,
        model=SessionForked,
        history=None,
        changes=_nothing,
        summary=_forked_summary,
        example={"origin_session_id": "origin", "origin_position": 2},
        session_event=True,
    ),
    EventSpec(
        EventType.VARIABLE_REGISTERED,
        body=VARIABLE_REGISTERED_BODY,
        model=VariableRegistered,
        history=ChangeKind.REGISTERED,
        changes=_one_value,
        summary=_registered_summary,
        example={
            "variable_id": "var_t_2",
            "name": "t",
            "type": "float",
            "value": 0.5,
            "constraints": {"min": 0.0, "max": 2.0},
        },
    ),
    EventSpec(
        EventType.VARIABLE_UPDATED,
        body=VARIABLE_UPDATED_BODY,
        model=VariableUpdated,
        history=ChangeKind.UPDATED,
        changes=_one_value,
        summary=_updated_summary,
        example={"variable_id": "var_t_2", "value": 0.7},
    ),
    EventSpec(
        EventType.BATCH_APPLIED,
        body=BATCH_APPLIED_BODY,
        model=BatchApplied,
        history=ChangeKind.UPDATED,
        changes=_each_update,
        summary=_batch_summary,
        example={"updates": [{"variable_id": "var_t_2", "value": 0.9}]},
        in_batch=True,
    ),
    EventSpec(
        EventType.VARIABLE_DELETED,
        body=VARIABLE_DELETED_BODY,
        model=VariableDeleted,
        history=ChangeKind.DELETED,
        changes=_one_deletion,
        summary=_variable_deleted_summary,
        example={"variable_id": "var_t_2"},
    ),
)

#: Every event type's entry, by type name.
EVENTS: Final[Mapping[str, EventSpec]] = MappingProxyType({spec.type: spec for spec in _SPECS})

#: The payload model of each event type.
PAYLOAD_MODELS: Final[Mapping[str, type[Payload]]] = MappingProxyType(
    {name: spec.model for name, spec in EVENTS.items()}
)

#: The ``Event.body`` member that carries each event type.
BODY_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {name: spec.body.field for name, spec in EVENTS.items()}
)

#: The types filtered watches always get (SessionCreated, SessionDeleted, SessionForked).
SESSION_EVENTS: Final = frozenset(name for name, spec in EVENTS.items() if spec.session_event)


def spec_of(event_type: str) -> EventSpec:
    """The entry of ``event_type``.

    Raises:
        RuleViolation: no such event type.
    """
    try:
        return EVENTS[event_type]
    except KeyError:
        raise RuleViolation(f"unknown event type {event_type!r}") from None


def is_session_event(event_type: str) -> bool:
    """Whether filtered watches get events of this type whatever variables they watch."""
    return event_type in SESSION_EVENTS


def touched_variable_ids(
    event_type: str,
    payload: Mapping[str, Any],
    live: Callable[[], Iterable[str]] | None = None,
) -> list[str]:
    """Ids of the variables an event changed, in the event's order, each once.

    For a type that changes every live variable (SessionDeleted), ``live()`` gives them: the
    session's variables just before the event (none when ``live`` is None). An unknown
    type changes none.
    """
    spec = EVENTS.get(event_type)
    if spec is None:
        return []
    if spec.every_live_variable:
        return list(dict.fromkeys(live())) if live is not None else []
    return list(dict.fromkeys(variable_id for variable_id, _ in spec.changes(payload)))


def summarize(
    event_type: str,
    payload: Mapping[str, Any],
    names: Mapping[str, str] = MappingProxyType({}),
    show_value: Callable[[PyValue], str] = describe,
) -> str:
    """What an event did, in a few words ("t = 0.7 (var_t_2)", "batch: a=1, b=2"); variables
    shown by ``names`` (id -> name) where known. An unknown type is shown by its name."""
    spec = EVENTS.get(event_type)
    if spec is None:
        return event_type or "unknown event"
    return spec.summary(payload, names, show_value)


def payload_of(event: pb.Event) -> dict[str, Any]:
    """The payload an event's body holds (constraints as plain data, unchecked).

    Raises:
        RuleViolation: an unknown type, a body that is not the type's, a missing value.
    """
    spec = spec_of(event.type)
    body = event.WhichOneof("body")
    if body != spec.body.field:
        raise RuleViolation(f"the body is {body or 'missing'}, not {spec.body.field}")
    return spec.body.read(event)


def checked_payload(event_type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` checked against its type's model, in the form the log stores.

    Raises:
        RuleViolation: an unknown type, or a payload the model refuses (the message names
            the first bad field of each key).
    """
    model = spec_of(event_type).model
    try:
        return model.model_validate(payload).as_json_data()
    except ModelError as refused:
        raise RuleViolation(_plain(refused)) from None


def _plain(refused: ModelError) -> str:
    """A model's refusal as one line: "constraints: minimum 3 is above maximum 1"."""
    by_key: dict[object, list[Any]] = {}
    for error in refused.errors(include_url=False):
        by_key.setdefault(error["loc"][0] if error["loc"] else "", []).append(error)
    problems = []
    for key, errors in by_key.items():
        first = errors[0]
        if len(errors) > 1 and len(first["loc"]) > 1:  # a value tried as each JSON type
            problems.append(f"{key}: {first['input']!r} is not a valid value")
            continue
        cause = first.get("ctx", {}).get("error")
        text = str(cause) if first["type"] == "value_error" and cause is not None else first["msg"]
        path = ".".join(str(part) for part in first["loc"])
        problems.append(f"{path}: {text}" if path else text)
    return "; ".join(problems)


def write_body(event: pb.Event, payload: Mapping[str, Any], values: BodyValues = TRUSTED) -> None:
    """Set the body of ``event`` (whose ``type`` is set) from ``payload``.

    Raises:
        RuleViolation: an unknown type, or a payload of the wrong shape.
        KeyError: the payload lacks a required key.
    """
    spec_of(event.type).body.write(payload, event, values)
