"""Commands: decide, from a session's current state, which events a request appends.

Each command is a small immutable object whose :meth:`decide` validates the request
against the state (types, constraints, versions, limits) and either raises a
:class:`~varstore.types.VarstoreError` (nothing is appended, no version moves) or
returns a :class:`Decision`: the events to append, and how to answer once they are
folded in. Deciding does no I/O; the store runs it on its writer thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from varstore.api.limits import Limits
from varstore.eventstore import schema
from varstore.eventstore.events import EventType, NewEvent
from varstore.projections import SessionState, VariableState
from varstore.types import (
    TYPE_NAMES,
    AlreadyExists,
    Constraints,
    LimitExceeded,
    PyValue,
    RuleViolation,
    SessionNotFound,
    ValidationError,
    VariableNotFound,
    VersionConflict,
    coerce,
    describe,
)

__all__ = [
    "BatchResult",
    "Command",
    "CreateSession",
    "Decision",
    "DeleteSession",
    "DeleteVariable",
    "ExpireSession",
    "RegisterVariable",
    "RollbackVariable",
    "SetVariable",
    "SetVariables",
    "WriteContext",
    "check_metadata",
    "check_name",
    "find_variable",
    "live",
]

R_co = TypeVar("R_co", covariant=True)

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*")


@dataclass(frozen=True, slots=True)
class WriteContext:
    """What a decision may depend on besides the state: the time and the limits."""

    now: datetime
    limits: Limits


@dataclass(frozen=True, slots=True)
class Decision(Generic[R_co]):
    """The events a command appends, and how to answer from the state they lead to."""

    events: list[NewEvent]
    respond: Callable[[SessionState | None], R_co]


class Command(Protocol[R_co]):
    """Anything the store can run: a decision from the session's state."""

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[R_co]:
        """The events to append and the answer, or a VarstoreError."""
        ...


# -- shared checks --------------------------------------------------------------------------


def live(state: SessionState | None, session_id: str) -> SessionState:
    """``state`` if the session is live, else SessionNotFound."""
    if state is None or state.deleted:
        raise SessionNotFound(
            f"session {describe(session_id)} not found", info={"session_id": session_id[:200]}
        )
    return state


def check_name(name: str, limits: Limits, what: str = "variable name") -> None:
    """INVALID_ARGUMENT unless ``name`` is a usable name or id."""
    if not name:
        raise ValidationError(f"{what} is empty", violations={"name": f"{what} is empty"})
    if len(name) > limits.max_name_length:
        text = f"{what} is {len(name)} characters long; the limit is {limits.max_name_length}"
        raise ValidationError(text, violations={"name": text})
    if _NAME.fullmatch(name) is None:
        text = (
            f"{what} {name!r} may hold only letters, digits, '_', '-', '.' and ':' "
            "and must not start with '-', '.' or ':'"
        )
        raise ValidationError(text, violations={"name": text})


def check_metadata(metadata: Mapping[str, str], limits: Limits) -> None:
    """RESOURCE_EXHAUSTED when metadata is larger than the limits allow."""
    if len(metadata) > limits.max_metadata_entries:
        raise LimitExceeded(
            f"metadata has {len(metadata)} entries; the limit is {limits.max_metadata_entries}",
            info={"limit": str(limits.max_metadata_entries)},
        )
    for key, value in metadata.items():
        size = len(key.encode()) + len(value.encode())
        if size > limits.max_metadata_entry_bytes:
            raise LimitExceeded(
                f"metadata entry {key[:40]!r} is {size} bytes; "
                f"the limit is {limits.max_metadata_entry_bytes}",
                info={"limit": str(limits.max_metadata_entry_bytes)},
            )


def _accepted_value(
    variable_name: str,
    type_name: str,
    constraints: Constraints,
    value: object | None,
    limits: Limits,
) -> PyValue:
    """``value`` coerced to the type and checked, or ValidationError naming the variable."""
    if value is None:
        raise ValidationError(f"variable {variable_name!r}: a value is required")
    if isinstance(value, str) and len(value.encode()) > limits.max_string_bytes:
        raise LimitExceeded(
            f"variable {variable_name!r}: string of {len(value.encode())} bytes is above "
            f"the limit of {limits.max_string_bytes}",
            info={"limit": str(limits.max_string_bytes), "variable": variable_name},
        )
    try:
        accepted = coerce(type_name, value)
        constraints.check(accepted)
    except RuleViolation as problem:
        raise ValidationError(
            f"variable {variable_name!r}: {problem}", info={"variable": variable_name}
        ) from None
    return accepted


def find_variable(state: SessionState, identifier: str) -> VariableState:
    """The live variable with this id or name, else VariableNotFound."""
    found = state.find(identifier)
    if found is None:
        raise VariableNotFound(
            f"variable {describe(identifier)} not found in session {describe(state.session_id)}",
            info={"session_id": state.session_id, "variable": identifier[:200]},
        )
    return found


def _check_version(variable: VariableState, expected: int | None) -> None:
    if expected is not None and expected != variable.version:
        raise VersionConflict(
            f"variable {variable.name!r} is at version {variable.version}, "
            f"not the expected version {expected}",
            info={
                "variable": variable.name,
                "expected_version": str(expected),
                "current_version": str(variable.version),
            },
        )


def _event(
    kind: EventType,
    payload: schema.Payload,
    ctx: WriteContext,
    source: str,
    metadata: Mapping[str, str],
) -> NewEvent:
    return NewEvent(
        type=kind,
        payload=payload.as_json_data(),
        recorded_at=ctx.now,
        source=source,
        metadata=dict(metadata),
    )


# -- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateSession:
    """Start a session (again, if one of that id was deleted)."""

    session_id: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    ttl_seconds: int = 0
    source: str = ""

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[SessionState]:
        check_name(self.session_id, ctx.limits, "session id")
        check_metadata(self.metadata, ctx.limits)
        if self.ttl_seconds < 0:
            raise ValidationError(f"ttl_seconds must be 0 or more, not {self.ttl_seconds}")
        if state is not None and not state.deleted:
            raise AlreadyExists(
                f"session {self.session_id!r} already exists",
                info={"session_id": self.session_id},
            )
        payload = schema.SessionCreated(metadata=dict(self.metadata), ttl_seconds=self.ttl_seconds)
        event = _event(EventType.SESSION_CREATED, payload, ctx, self.source, {})
        return Decision([event], lambda after: live(after, self.session_id))


@dataclass(frozen=True, slots=True)
class DeleteSession:
    """End a session; its log stays."""

    session_id: str
    source: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[None]:
        live(state, self.session_id)
        check_metadata(self.metadata, ctx.limits)
        payload = schema.SessionDeleted(reason="deleted")
        event = _event(EventType.SESSION_DELETED, payload, ctx, self.source, self.metadata)
        return Decision([event], lambda after: None)


@dataclass(frozen=True, slots=True)
class ExpireSession:
    """End a session whose TTL ran out, if it still has (the sweeper's command)."""

    session_id: str
    is_expired: Callable[[SessionState], bool]

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[bool]:
        if state is None or state.deleted or not self.is_expired(state):
            return Decision([], lambda after: False)
        payload = schema.SessionDeleted(reason="expired")
        event = _event(EventType.SESSION_DELETED, payload, ctx, "varstore", {})
        return Decision([event], lambda after: True)


# -- variables --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterVariable:
    """Create a typed, constrained variable at version 0."""

    session_id: str
    name: str
    type: str
    initial_value: object | None
    constraints: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[VariableState]:
        session = live(state, self.session_id)
        check_name(self.name, ctx.limits)
        check_metadata(self.metadata, ctx.limits)
        if self.type not in TYPE_NAMES:
            text = (
                f"variable {self.name!r}: unknown type {self.type!r}; "
                f"expected one of {', '.join(TYPE_NAMES)}"
            )
            raise ValidationError(text, violations={"type": text})
        try:
            constraints = Constraints.for_type(self.type, self.constraints)
        except RuleViolation as problem:
            text = f"variable {self.name!r}: {problem}"
            raise ValidationError(text, violations={"constraints": text}) from None
        value = _accepted_value(self.name, self.type, constraints, self.initial_value, ctx.limits)
        if self.name in session.names:
            raise AlreadyExists(
                f"variable {self.name!r} already exists in session {self.session_id!r}",
                info={"session_id": self.session_id, "variable": self.name},
            )
        if len(session.variables) >= ctx.limits.max_variables_per_session:
            raise LimitExceeded(
                f"session {self.session_id!r} has {len(session.variables)} variables; "
                f"the limit is {ctx.limits.max_variables_per_session}",
                info={"limit": str(ctx.limits.max_variables_per_session)},
            )
        # The id is derived from the log, so a replay rebuilds the same id.
        variable_id = f"var_{self.name}_{session.position + 1}"
        payload = schema.VariableRegistered(
            variable_id=variable_id,
            name=self.name,
            type=self.type,
            value=value,
            constraints=constraints.to_dict(),
        )
        event = _event(EventType.VARIABLE_REGISTERED, payload, ctx, self.source, self.metadata)
        return Decision([event], lambda after: live(after, self.session_id).variables[variable_id])


@dataclass(frozen=True, slots=True)
class SetVariable:
    """Give one variable a new value, optionally only at an expected version."""

    session_id: str
    identifier: str
    value: object | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    expected_version: int | None = None
    source: str = ""

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[VariableState]:
        session = live(state, self.session_id)
        check_metadata(self.metadata, ctx.limits)
        variable = find_variable(session, self.identifier)
        _check_version(variable, self.expected_version)
        value = _accepted_value(
            variable.name, variable.type, variable.constraints, self.value, ctx.limits
        )
        payload = schema.VariableUpdated(variable_id=variable.id, value=value)
        event = _event(EventType.VARIABLE_UPDATED, payload, ctx, self.source, self.metadata)
        return Decision([event], lambda after: live(after, self.session_id).variables[variable.id])


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What a batch did: new versions of what changed, and why the rest did not."""

    new_versions: dict[str, int]
    errors: dict[str, str]
    #: The changed variables after the batch, by the identifier as given.
    variables: dict[str, VariableState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SetVariables:
    """Change many variables: atomically as one event, or each as its own event."""

    session_id: str
    updates: Mapping[str, object | None]
    metadata: Mapping[str, str] = field(default_factory=dict)
    atomic: bool = True
    expected_position: int | None = None
    source: str = ""

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[BatchResult]:
        session = live(state, self.session_id)
        check_metadata(self.metadata, ctx.limits)
        if len(self.updates) > ctx.limits.max_batch_size:
            raise LimitExceeded(
                f"batch has {len(self.updates)} updates; the limit is {ctx.limits.max_batch_size}",
                info={"limit": str(ctx.limits.max_batch_size)},
            )
        if self.expected_position is not None and self.expected_position != session.position:
            raise VersionConflict(
                f"session {self.session_id!r} is at position {session.position}, "
                f"not the expected position {self.expected_position}",
                info={
                    "session_id": self.session_id,
                    "expected_position": str(self.expected_position),
                    "current_position": str(session.position),
                },
            )
        accepted: dict[str, tuple[VariableState, PyValue]] = {}
        errors: dict[str, str] = {}
        claimed: dict[str, str] = {}  # variable id -> the identifier that named it first
        for identifier, raw in self.updates.items():
            try:
                variable = find_variable(session, identifier)
                if variable.id in claimed:  # by name and by id: which came first is undefined
                    raise ValidationError(
                        f"variable {variable.name!r} is named twice in one batch "
                        f"({claimed[variable.id]!r} and {identifier!r})"
                    )
                claimed.setdefault(variable.id, identifier)
                value = _accepted_value(
                    variable.name, variable.type, variable.constraints, raw, ctx.limits
                )
            except (ValidationError, VariableNotFound) as problem:  # LimitExceeded: whole call
                errors[identifier] = problem.message
            else:
                accepted[identifier] = (variable, value)
        if self.atomic and errors:
            refused = "; ".join(errors.values())
            raise ValidationError(
                f"atomic batch refused, nothing changed: {refused}", violations=errors
            )
        if not accepted:
            return Decision([], lambda after: BatchResult({}, errors))
        if self.atomic:
            batch = schema.BatchApplied(
                updates=[
                    schema.BatchItem(variable_id=variable.id, value=value)
                    for variable, value in accepted.values()
                ]
            )
            events = [_event(EventType.BATCH_APPLIED, batch, ctx, self.source, self.metadata)]
        else:
            events = [
                _event(
                    EventType.VARIABLE_UPDATED,
                    schema.VariableUpdated(variable_id=variable.id, value=value),
                    ctx,
                    self.source,
                    self.metadata,
                )
                for variable, value in accepted.values()
            ]

        def respond(after: SessionState | None) -> BatchResult:
            now_live = live(after, self.session_id)
            changed = {
                identifier: now_live.variables[variable.id]
                for identifier, (variable, _) in accepted.items()
            }
            versions = {identifier: state.version for identifier, state in changed.items()}
            return BatchResult(versions, errors, changed)

        return Decision(events, respond)


@dataclass(frozen=True, slots=True)
class RollbackVariable:
    """Give a variable (by id) the value it had at an earlier version, as a new change.

    ``value`` is that version's value, looked up in the history by the caller: a
    variable id's history never changes, so the lookup cannot go stale.
    """

    session_id: str
    variable_id: str
    to_version: int
    value: PyValue
    metadata: Mapping[str, str] = field(default_factory=dict)
    expected_version: int | None = None
    source: str = ""

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[VariableState]:
        session = live(state, self.session_id)
        check_metadata(self.metadata, ctx.limits)
        variable = find_variable(session, self.variable_id)
        _check_version(variable, self.expected_version)
        if not 0 <= self.to_version < variable.version:
            raise ValidationError(
                f"variable {variable.name!r} can roll back only to an earlier version "
                f"(0 to {variable.version - 1}), not to version {self.to_version}"
            )
        value = _accepted_value(
            variable.name, variable.type, variable.constraints, self.value, ctx.limits
        )
        payload = schema.VariableUpdated(
            variable_id=variable.id, value=value, rollback_to_version=self.to_version
        )
        event = _event(EventType.VARIABLE_UPDATED, payload, ctx, self.source, self.metadata)
        return Decision([event], lambda after: live(after, self.session_id).variables[variable.id])


@dataclass(frozen=True, slots=True)
class DeleteVariable:
    """Remove a variable, optionally only at an expected version."""

    session_id: str
    identifier: str
    expected_version: int | None = None
    source: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[VariableState]:
        session = live(state, self.session_id)
        check_metadata(self.metadata, ctx.limits)
        variable = find_variable(session, self.identifier)
        _check_version(variable, self.expected_version)
        payload = schema.VariableDeleted(variable_id=variable.id)
        event = _event(EventType.VARIABLE_DELETED, payload, ctx, self.source, self.metadata)
        return Decision([event], lambda after: variable)
