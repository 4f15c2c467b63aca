"""Commands: decide, from a session's current state, which events a request appends.

Each command is a small immutable object whose :meth:`decide` validates the request
against the state (types, constraints, versions, limits) and either raises a
:class:`~varstore.types.VarstoreError` (nothing is appended, no version moves) or
returns a :class:`Decision`: the events to append, and how to answer once they are
folded in. Deciding does no I/O; the store runs it on its writer thread.

Every write is one of these, copies of logs included: :class:`ForkSession` and
:class:`ImportSession` append a whole log in one decision, and :class:`ImportCheck`
replays an imported log through the same deciders a live call runs, so the rules a
writer enforces are written once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, NoReturn, Protocol, TypeVar

from varstore.api.limits import Limits, exceeded
from varstore.eventstore import schema
from varstore.eventstore.events import EventType, NewEvent, RecordedEvent
from varstore.projections import ProjectionError, SessionState, VariableState, apply_event
from varstore.types import (
    TYPE_NAMES,
    AlreadyExists,
    Constraints,
    FailedPrecondition,
    LimitExceeded,
    PyValue,
    RuleViolation,
    SessionNotFound,
    ValidationError,
    VariableNotFound,
    VarstoreError,
    VersionConflict,
    coerce,
    describe,
)
from varstore.types.constraints import UncheckablePattern

__all__ = [
    "CLOCK_SKEW",
    "SCHEMA_VERSION",
    "TIMESTAMP_SECONDS",
    "BatchResult",
    "Command",
    "CreateSession",
    "Decision",
    "DeleteSession",
    "DeleteVariable",
    "ExpireSession",
    "ForkSession",
    "ImportCheck",
    "ImportSession",
    "RegisterVariable",
    "RollbackVariable",
    "SetVariable",
    "SetVariables",
    "WriteContext",
    "check_metadata",
    "check_name",
    "check_range",
    "check_unused",
    "find_variable",
    "import_refusal",
    "live",
    "valid_time",
]

R_co = TypeVar("R_co", covariant=True)

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*")


@dataclass(frozen=True, slots=True)
class WriteContext:
    """What a decision may depend on besides the state: the time, the limits and how many
    sessions are live (for ``max_sessions``; writes decided in one group commit see the
    same count)."""

    now: datetime
    limits: Limits
    live_sessions: int = 0


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


def check_range(value: int, field: str, high: int | None = None, *, limit: str = "") -> None:
    """INVALID_ARGUMENT naming ``field`` unless ``0 <= value`` (and ``value <= high``);
    ``limit`` names the limit ``high`` comes from. Every numeric field of a request is
    checked so before anything is looked up or written."""
    if value >= 0 and (high is None or value <= high):
        return
    wanted = "0 or more" if high is None else f"from 0 to {high}"
    text = f"{field} must be {wanted}, not {value}"
    if limit and high is not None and value > high:
        text += f" (the limit {limit})"
    raise ValidationError(text, violations={field: text}, info={"field": field})


#: The range a google.protobuf.Timestamp may hold, in seconds since the epoch:
#: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_SECONDS: Final = (-62_135_596_800, 253_402_300_799)


def valid_time(seconds: int, nanos: int, field: str) -> datetime:
    """The aware datetime a Timestamp's parts stand for, or INVALID_ARGUMENT naming
    ``field`` (nanos outside 0..999999999, seconds outside years 1 to 9999)."""
    low, high = TIMESTAMP_SECONDS
    if not 0 <= nanos <= 999_999_999:
        problem = f"nanos must be 0 to 999999999, not {nanos}"
    elif not low <= seconds <= high:
        problem = f"seconds must be {low} to {high} (years 1 to 9999), not {seconds}"
    else:
        return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)
    raise ValidationError(f"{field} is not a valid time: {problem}", violations={field: problem})


def _check_room(ctx: WriteContext, session_id: str) -> None:
    """RESOURCE_EXHAUSTED when one more live session would pass ``max_sessions``."""
    if ctx.live_sessions >= ctx.limits.max_sessions:
        raise exceeded(
            "max_sessions",
            ctx.limits.max_sessions,
            f"cannot start session {describe(session_id)}: the server has "
            f"{ctx.live_sessions} live sessions",
        )


def check_metadata(metadata: Mapping[str, str], limits: Limits) -> None:
    """RESOURCE_EXHAUSTED when metadata is larger than the limits allow."""
    if len(metadata) > limits.max_metadata_entries:
        raise exceeded(
            "max_metadata_entries",
            limits.max_metadata_entries,
            f"metadata has {len(metadata)} entries",
        )
    for key, value in metadata.items():
        size = len(key.encode()) + len(value.encode())
        if size > limits.max_metadata_entry_bytes:
            raise exceeded(
                "max_metadata_entry_bytes",
                limits.max_metadata_entry_bytes,
                f"metadata entry {key[:40]!r} is {size} bytes",
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
    # surrogatepass: a lone surrogate is measured here and refused by coerce, with its reason.
    size = len(value.encode(errors="surrogatepass")) if isinstance(value, str) else 0
    if size > limits.max_string_bytes:
        raise exceeded(
            "max_string_bytes",
            limits.max_string_bytes,
            f"variable {variable_name!r}: a string of {size} bytes",
            variable=variable_name,
        )
    try:
        accepted = coerce(type_name, value)
        constraints.check(accepted)
    except UncheckablePattern as problem:
        raise FailedPrecondition(
            f"variable {variable_name!r}: {problem}", info={"variable": variable_name}
        ) from None
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
    if expected is not None:
        check_range(expected, "expected_version")
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


#: The Python types of accepted values (``PyValue``): their stored form is the value itself.
_PLAIN_VALUES: Final = frozenset((bool, int, float, str))


def _variable_updated(variable_id: str, value: PyValue) -> dict[str, Any]:
    """The VariableUpdated payload of a plain update, as ``schema.VariableUpdated(...)
    .as_json_data()`` stores it, without the model's validation and dump on every write
    (the value was just coerced and checked; its id comes from the state). Anything else
    goes through the model."""
    if type(variable_id) is str and type(value) in _PLAIN_VALUES:
        return {"variable_id": variable_id, "value": value}
    return schema.VariableUpdated(variable_id=variable_id, value=value).as_json_data()


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
        check_range(
            self.ttl_seconds, "ttl_seconds", ctx.limits.max_ttl_seconds, limit="max_ttl_seconds"
        )
        if state is not None and not state.deleted:
            raise AlreadyExists(
                f"session {self.session_id!r} already exists",
                info={"session_id": self.session_id},
            )
        _check_room(ctx, self.session_id)
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
            raise exceeded(
                "max_variables_per_session",
                ctx.limits.max_variables_per_session,
                f"session {self.session_id!r} has {len(session.variables)} variables",
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
        event = NewEvent(
            type=EventType.VARIABLE_UPDATED,
            payload=_variable_updated(variable.id, value),
            recorded_at=ctx.now,
            source=self.source,
            metadata=dict(self.metadata),
        )
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
            raise exceeded(
                "max_batch_size",
                ctx.limits.max_batch_size,
                f"batch has {len(self.updates)} updates",
            )
        if self.expected_position is not None:
            check_range(self.expected_position, "expected_position")
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
            except (ValidationError, VariableNotFound, FailedPrecondition) as problem:
                # LimitExceeded refuses the whole call
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


# -- copies of logs ---------------------------------------------------------------------------

#: How far in the future (by the store's clock) an imported event may have been recorded.
#: Later times would hold every later write's timestamp back, so they are refused.
CLOCK_SKEW: Final = timedelta(minutes=5)
#: The only payload schema version this server reads.
SCHEMA_VERSION: Final = 1


def check_unused(state: SessionState | None, session_id: str) -> None:
    """ALREADY_EXISTS unless ``session_id`` has never recorded an event."""
    if state is not None:
        status = "a deleted session's log" if state.deleted else "a live session"
        raise AlreadyExists(
            f"session id {session_id!r} is taken ({status}, {state.position} events); "
            "a fork or an import needs an id that was never used",
            info={"session_id": session_id},
        )


@dataclass(frozen=True, slots=True)
class ForkSession:
    """Start ``session_id`` as a copy of ``events`` (the origin's log up to
    ``origin_position``, already read) followed by a SessionForked event."""

    session_id: str
    origin_session_id: str
    origin_position: int
    events: Sequence[NewEvent]
    source: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[SessionState]:
        """All the copies and the fork event, if the new id was never used."""
        check_name(self.session_id, ctx.limits, "session id")
        check_metadata(self.metadata, ctx.limits)
        check_unused(state, self.session_id)
        _check_room(ctx, self.session_id)
        payload = schema.SessionForked(
            origin_session_id=self.origin_session_id, origin_position=self.origin_position
        )
        fork = _event(EventType.SESSION_FORKED, payload, ctx, self.source, self.metadata)
        return Decision([*self.events, fork], lambda after: live(after, self.session_id))


@dataclass(frozen=True, slots=True)
class ImportSession:
    """Start ``session_id`` with ``events`` (checked by :class:`ImportCheck`)."""

    session_id: str
    events: Sequence[NewEvent]

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[SessionState]:
        """Every event, if the id was never used and no event is from the future."""
        check_unused(state, self.session_id)
        if self.events and self.events[-1].type != EventType.SESSION_DELETED:
            _check_room(ctx, self.session_id)  # the import leaves the session live
        latest = max(event.recorded_at for event in self.events)
        if latest > ctx.now + CLOCK_SKEW:
            raise ValidationError(
                f"import refused: events recorded as late as {latest.isoformat()}, which is "
                f"in the future by this server's clock ({ctx.now.isoformat()})"
            )

        def respond(after: SessionState | None) -> SessionState:
            assert after is not None  # there is at least one event
            return after

        return Decision(list(self.events), respond)


def import_refusal(
    position: int,
    event_type: str,
    problem: str,
    kind: type[ValidationError | LimitExceeded] = ValidationError,
    info: Mapping[str, str] | None = None,
) -> ValidationError | LimitExceeded:
    """The error that refuses a whole import because of the event at ``position``."""
    return kind(
        f"import refused: event at position {position} ({event_type or 'no type'}): {problem}",
        info={**(info or {}), "position": str(position)},
    )


class ImportCheck:
    """Replays an imported log, one event at a time, through the deciders of the live
    commands, and keeps the events to append.

    Each event must come at the next position, from the same session as the events
    before it, no earlier than the event before. Then the live command that would have
    written it (CreateSession; RegisterVariable; SetVariable, or RollbackVariable with the
    value the variable had at that version; SetVariables, atomic, for a BatchApplied;
    DeleteVariable; DeleteSession, or the sweeper's ExpireSession for reason "expired";
    ForkSession for the marker, which must name the position before it) decides on the
    state so far, at the event's own time and under the server's limits. Its refusal
    refuses the import with the same reason text a live call gets; else it must decide
    exactly the imported event (type and payload: ids derived from the log must match).
    The decided event, with the imported source and metadata, is folded in and kept.
    """

    def __init__(self, session_id: str, limits: Limits) -> None:
        self.session_id = session_id
        self.limits = limits
        self.state: SessionState | None = None
        self.events: list[NewEvent] = []
        #: Each variable's value at every version, for rollbacks (what the live call reads
        #: from the session's history; ids are never reused, so no entry goes stale).
        self._versions: dict[str, list[PyValue]] = {}
        self._origin_session = ""
        self._last_time: datetime | None = None

    @property
    def position(self) -> int:
        """Position of the last event accepted (0 before the first)."""
        return len(self.events)

    def add(self, event: RecordedEvent) -> None:
        """Check ``event`` (with the session id and position it was exported with) and
        keep it, or raise ValidationError or LimitExceeded naming its position."""
        expected = self.position + 1
        if event.position != expected:
            problem = (
                "positions must start at 1"
                if expected == 1
                else f"the event before is at position {expected - 1}: positions must have no gap"
            )
            raise ValidationError(
                f"import refused: event at position {event.position}: {problem}",
                info={"position": str(event.position)},
            )
        if expected == 1:
            self._origin_session = event.session_id
        elif event.session_id != self._origin_session:
            self._refuse(
                event,
                f"it is from session {event.session_id!r}, the events before it from "
                f"session {self._origin_session!r}",
            )
        if self._last_time is not None and event.recorded_at < self._last_time:
            self._refuse(
                event,
                f"recorded_at {event.recorded_at.isoformat()} is earlier than the event "
                f"before ({self._last_time.isoformat()})",
            )
        command = self._command(event)
        try:
            if isinstance(command, (CreateSession, ExpireSession)):  # they take no metadata
                check_metadata(event.metadata, self.limits)
            # A fork's command ran on the new id before anything was in it: its copies and
            # marker were appended together.
            basis = None if isinstance(command, ForkSession) else self.state
            decision = command.decide(basis, WriteContext(event.recorded_at, self.limits))
        except VarstoreError as refused:
            raise self._refusal(event, refused) from None
        if len(decision.events) != 1:  # ExpireSession decides nothing outside a live session
            self._refuse(event, f"outside a live session: the live command records no {event.type}")
        decided = decision.events[0]
        self._compare(event, decided)
        kept = NewEvent(
            decided.type,
            decided.payload,
            decided.recorded_at,
            event.source,
            event.metadata,
            event.schema_version,
        )
        recorded = RecordedEvent.of(kept, self.session_id, expected, 0)
        try:
            self.state = apply_event(self.state, recorded)
        except ProjectionError as problem:
            self._refuse(event, str(problem))
        self._remember(kept)
        self._last_time = event.recorded_at
        self.events.append(kept)

    def _command(self, event: RecordedEvent) -> Command[object]:
        """The live command that would have recorded ``event`` in this session."""
        session_id, payload = self.session_id, event.payload
        source, metadata = event.source, event.metadata
        if event.type == EventType.SESSION_CREATED:
            return CreateSession(
                session_id, payload.get("metadata", {}), payload.get("ttl_seconds", 0), source
            )
        if event.type == EventType.SESSION_DELETED:
            if payload.get("reason") == "expired":
                return ExpireSession(session_id, lambda state: True)
            return DeleteSession(session_id, source, metadata)
        if event.type == EventType.SESSION_FORKED:
            # The copies are the events before it, each checked already; a fork's copy ends
            # right before its marker.
            return ForkSession(
                session_id, payload["origin_session_id"], event.position - 1, (), source, metadata
            )
        if event.type == EventType.VARIABLE_REGISTERED:
            return RegisterVariable(
                session_id,
                payload["name"],
                payload["type"],
                payload["value"],
                payload.get("constraints", {}),
                metadata,
                source,
            )
        if event.type == EventType.VARIABLE_UPDATED:
            back = payload.get("rollback_to_version")
            if back is None:
                return SetVariable(
                    session_id, payload["variable_id"], payload["value"], metadata, source=source
                )
            # A live rollback takes the value from the history, as this does.
            versions = self._versions.get(payload["variable_id"], [])
            earlier = versions[back] if 0 <= back < len(versions) else None
            return RollbackVariable(
                session_id,
                payload["variable_id"],
                back,
                payload["value"] if earlier is None else earlier,
                metadata,
                source=source,
            )
        if event.type == EventType.BATCH_APPLIED:
            updates: dict[str, object] = {}
            for item in payload["updates"]:
                if item["variable_id"] in updates:
                    self._refuse(
                        event, f"variable {item['variable_id']!r} changes twice in one batch"
                    )
                updates[item["variable_id"]] = item["value"]
            if not updates:
                self._refuse(event, "a batch with no updates")
            return SetVariables(session_id, updates, metadata, atomic=True, source=source)
        if event.type == EventType.VARIABLE_DELETED:
            return DeleteVariable(
                session_id, payload["variable_id"], source=source, metadata=metadata
            )
        self._refuse(event, f"unknown event type {event.type!r}")  # pragma: no cover

    def _remember(self, event: NewEvent) -> None:
        payload = event.payload
        if event.type == EventType.VARIABLE_REGISTERED:
            self._versions[payload["variable_id"]] = [payload["value"]]
        elif event.type == EventType.VARIABLE_UPDATED:
            self._versions[payload["variable_id"]].append(payload["value"])
        elif event.type == EventType.BATCH_APPLIED:
            for item in payload["updates"]:
                self._versions[item["variable_id"]].append(item["value"])

    def _compare(self, event: RecordedEvent, decided: NewEvent) -> None:
        """Refuse ``event`` unless it is what the live command decided."""
        if decided.type != event.type:  # pragma: no cover - every command maps its own type
            self._refuse(event, f"the live command records a {decided.type} here")
        imported, wanted = event.payload, decided.payload
        if imported == wanted:
            return
        for key in sorted(imported.keys() | wanted.keys()):
            got, due = imported.get(key), wanted.get(key)
            if got == due:
                continue
            if event.type == EventType.VARIABLE_REGISTERED and key == "variable_id":
                problem = (
                    f"variable {imported['name']!r} registered at position {event.position} "
                    f"must have the id {due!r}, not {got!r}"
                )
            elif event.type == EventType.SESSION_FORKED and key == "origin_position":
                problem = (
                    f"origin_position is {got}, not the position before the event ({due}): "
                    "a fork's marker sits where its copy of the origin ends"
                )
            else:
                problem = f"{key} is {_shown(got)}, where the live command records {_shown(due)}"
            self._refuse(event, problem)

    def _refusal(
        self, event: RecordedEvent, refused: VarstoreError
    ) -> ValidationError | LimitExceeded:
        """The import's refusal for what the live command refused: the same words; the
        state errors a live caller could fix (NOT_FOUND, ALREADY_EXISTS) name the log's
        fault first, and become INVALID_ARGUMENT, since the log itself is wrong."""
        if isinstance(refused, LimitExceeded):
            return import_refusal(
                event.position, event.type, refused.message, LimitExceeded, refused.info
            )
        problem = refused.message
        if isinstance(refused, SessionNotFound):
            problem = f"outside a live session: {problem}"
        elif isinstance(refused, VariableNotFound):
            problem = f"unknown variable: {problem}"
        elif isinstance(refused, AlreadyExists):
            twice = "created" if event.type == EventType.SESSION_CREATED else "registered"
            problem = f"{twice} twice: {problem}"
        return import_refusal(event.position, event.type, problem, info=refused.info)

    def _refuse(self, event: RecordedEvent, problem: str) -> NoReturn:
        raise import_refusal(event.position, event.type, problem)


def _shown(value: object) -> str:
    """A payload field as a refusal shows it (cut short)."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
