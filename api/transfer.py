"""ForkSession, ExportSession and ImportSession: copying session logs.

A fork is a new session whose log starts as a copy of another session's log up to a
position, followed by a ``SessionForked`` event naming the origin. An export streams a
session's log as ``Event`` messages; an import rebuilds a new session from such a stream
after checking it the way the writers would have: positions from 1 with no gap, bodies
that match their types, values of their variables' types within their constraints, ids
derived from the log, and a log that folds cleanly. Forks and imports append all their
events in ONE command, so a session is copied whole or not at all, and only into an id
that has never been used (no event ever).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn

import grpc

from varstore.api.commands import Decision, WriteContext, check_metadata, check_name, live
from varstore.api.convert import header, session_to_proto
from varstore.api.event_codec import event_from_proto, event_to_proto
from varstore.api.limits import Limits
from varstore.api.store import Store
from varstore.eventstore import schema
from varstore.eventstore.events import EventType, NewEvent, RecordedEvent
from varstore.projections import ProjectionError, SessionState, VariableState, apply_event
from varstore.types import (
    TYPE_NAMES,
    AlreadyExists,
    Constraints,
    LimitExceeded,
    OutOfRange,
    PyValue,
    RuleViolation,
    SessionNotFound,
    Unavailable,
    ValidationError,
    coerce,
    describe,
)
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "EXPORT_CHUNK_BYTES",
    "EXPORT_CHUNK_EVENTS",
    "MAX_TRANSFER_EVENTS",
    "ForkSession",
    "ImportCheck",
    "ImportSession",
    "export_session",
    "fork_session",
    "import_session",
]

log = logging.getLogger(__name__)

#: Most events one fork copies or one import brings in (RESOURCE_EXHAUSTED beyond).
MAX_TRANSFER_EVENTS: Final = 1_000_000
#: Most events in one ExportSessionResponse.
EXPORT_CHUNK_EVENTS: Final = 500
#: An ExportSessionResponse is closed once its events reach this size (gRPC's default
#: message limit is 4 MiB; one event can be larger only if it holds huge strings).
EXPORT_CHUNK_BYTES: Final = 1 << 20
#: How far in the future (by the store's clock) an imported event may have been recorded.
#: Later times would hold every later write's timestamp back, so they are refused.
CLOCK_SKEW: Final = timedelta(minutes=5)
#: The only payload schema version this server reads.
SCHEMA_VERSION: Final = 1


def _unused(state: SessionState | None, session_id: str) -> None:
    """ALREADY_EXISTS unless ``session_id`` has never recorded an event."""
    if state is not None:
        status = "a deleted session's log" if state.deleted else "a live session"
        raise AlreadyExists(
            f"session id {session_id!r} is taken ({status}, {state.position} events); "
            "a fork or an import needs an id that was never used",
            info={"session_id": session_id},
        )


def _session_message(store: Store, state: SessionState) -> pb.Session:
    left = store.expires_in(state)
    expires_at = None if left is None else datetime.now(UTC) + timedelta(seconds=left)
    return session_to_proto(state, expires_at)


# -- fork --------------------------------------------------------------------------------------


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
        _unused(state, self.session_id)
        payload = schema.SessionForked(
            origin_session_id=self.origin_session_id, origin_position=self.origin_position
        )
        fork = NewEvent(
            type=EventType.SESSION_FORKED,
            payload=payload.as_json_data(),
            recorded_at=ctx.now,
            source=self.source,
            metadata=dict(self.metadata),
        )
        return Decision([*self.events, fork], lambda after: live(after, self.session_id))


def fork_session(
    store: Store, request: pb.ForkSessionRequest, source: str
) -> pb.ForkSessionResponse:
    """A new session whose log is a copy of another's up to a position.

    Raises:
        SessionNotFound: the origin never existed, or was not live at that position.
        OutOfRange: the position is beyond the origin's log.
        AlreadyExists: the new id was used before (even by a deleted session).
        ValidationError: a negative position or a bad new id.
        LimitExceeded: the copy would hold more than MAX_TRANSFER_EVENTS events.
    """
    origin = request.session_id
    published = store.published(origin)
    if published is None:
        raise SessionNotFound(
            f"session {describe(origin)} not found", info={"session_id": origin[:200]}
        )
    if request.at_position < 0:
        raise ValidationError(f"at_position must be 0 or more, not {request.at_position}")
    position = request.at_position or published.position
    at = store.state_at(origin, position)  # OutOfRange beyond the log
    if at is None or at.deleted:
        raise SessionNotFound(
            f"session {origin!r} was not live at position {position}; "
            "fork it at a position where it was",
            info={"session_id": origin, "position": str(position)},
        )
    new_id = request.new_session_id or f"session_{uuid.uuid4().hex}"
    check_name(new_id, store.limits, "session id")
    check_metadata(request.metadata, store.limits)
    _unused(store.published(new_id), new_id)  # fail before reading the log; decide rechecks
    if position + 1 > MAX_TRANSFER_EVENTS:
        raise LimitExceeded(
            f"a fork at position {position} would hold {position + 1} events; "
            f"the limit is {MAX_TRANSFER_EVENTS}",
            info={"limit": str(MAX_TRANSFER_EVENTS)},
        )
    # The origin's events up to the position never change, so reading them before the
    # command runs is safe; the command only appends them.
    copies = [
        NewEvent(
            type=event.type,
            payload=event.payload,
            recorded_at=event.recorded_at,
            source=event.source,
            metadata=event.metadata,
            schema_version=event.schema_version,
        )
        for event in store.recorder.read_session(origin, 1, position)
    ]
    command = ForkSession(
        session_id=new_id,
        origin_session_id=origin,
        origin_position=position,
        events=copies,
        source=source,
        metadata=dict(request.metadata),
    )
    written = store.execute(new_id, command)
    return pb.ForkSessionResponse(
        header=header(new_id, written.position),
        session=_session_message(store, written.result),
    )


# -- export ------------------------------------------------------------------------------------


def export_session(
    store: Store, request: pb.ExportSessionRequest
) -> Iterator[pb.ExportSessionResponse]:
    """A session's log (deleted sessions' too), in position order, in chunks of at most
    EXPORT_CHUNK_EVENTS events and about EXPORT_CHUNK_BYTES bytes.

    The export stops at the position the log had when it started.

    Raises:
        SessionNotFound: the session never existed.
        ValidationError: a negative bound.
    """
    session_id = request.session_id
    published = store.published(session_id)
    if published is None:
        raise SessionNotFound(
            f"session {describe(session_id)} not found", info={"session_id": session_id[:200]}
        )
    if request.from_position < 0:
        raise ValidationError(f"from_position must be 0 or more, not {request.from_position}")
    low = max(1, request.from_position)
    high = published.position
    if request.HasField("to_position"):
        if request.to_position < 0:
            raise ValidationError(f"to_position must be 0 or more, not {request.to_position}")
        high = min(high, request.to_position)
    first = low
    while first <= high:
        last = min(high, first + EXPORT_CHUNK_EVENTS - 1)
        events = store.recorder.read_session(session_id, first, last)
        if not events:  # pragma: no cover - a log never shrinks
            return
        chunk: list[pb.Event] = []
        size = 0
        for event in events:
            message = event_to_proto(event)
            message_size = message.ByteSize()
            if chunk and size + message_size > EXPORT_CHUNK_BYTES:
                yield pb.ExportSessionResponse(events=chunk)
                chunk, size = [], 0
            chunk.append(message)
            size += message_size
        yield pb.ExportSessionResponse(events=chunk)
        first = events[-1].position + 1


# -- import ------------------------------------------------------------------------------------


class ImportCheck:
    """Checks an import one event at a time, as the writers would have, and keeps the
    events to append.

    Each event must come at the next position, carry a body that matches its type (with
    the payload schema), values of its variable's type within its constraints, the ids
    the log derives, metadata within the limits, a time no earlier than the event
    before, and fold cleanly onto the state before it.
    """

    def __init__(self, session_id: str, limits: Limits) -> None:
        self.session_id = session_id
        self.limits = limits
        self.state: SessionState | None = None
        self.events: list[NewEvent] = []
        self._origin_session = ""
        self._last_time: datetime | None = None

    @property
    def position(self) -> int:
        """Position of the last event accepted (0 before the first)."""
        return len(self.events)

    def add(self, message: pb.Event) -> None:
        """Check ``message`` and keep its event, or raise ValidationError (or
        LimitExceeded) naming its position."""
        expected = self.position + 1
        if message.position != expected:
            problem = (
                "positions must start at 1"
                if expected == 1
                else f"the event before is at position {expected - 1}: positions must have no gap"
            )
            raise ValidationError(
                f"import refused: event at position {message.position}: {problem}",
                info={"position": str(message.position)},
            )
        if expected == 1:
            self._origin_session = message.session_id
        elif message.session_id != self._origin_session:
            self._refuse(
                message,
                f"it is from session {message.session_id!r}, the events before it from "
                f"session {self._origin_session!r}",
            )
        if not message.HasField("recorded_at"):
            self._refuse(message, "recorded_at is missing")
        if message.schema_version not in (0, SCHEMA_VERSION):
            self._refuse(message, f"unknown schema version {message.schema_version}")
        try:
            event = event_from_proto(message)
        except ValidationError as problem:
            raise ValidationError(
                f"import refused: {problem}", info={"position": str(expected)}
            ) from None
        if self._last_time is not None and event.recorded_at < self._last_time:
            self._refuse(
                message,
                f"recorded_at {event.recorded_at.isoformat()} is earlier than the event "
                f"before ({self._last_time.isoformat()})",
            )
        try:
            check_metadata(event.metadata, self.limits)
            event = self._checked(event, expected)
        except (ValidationError, LimitExceeded) as problem:
            self._refuse(message, problem.message, type(problem))
        try:
            self.state = apply_event(
                self.state, RecordedEvent.of(event, self.session_id, expected, 0)
            )
        except ProjectionError as problem:
            self._refuse(message, str(problem))
        self._last_time = event.recorded_at
        self.events.append(event)

    def _refuse(
        self,
        message: pb.Event,
        problem: str,
        kind: type[ValidationError | LimitExceeded] = ValidationError,
    ) -> NoReturn:
        raise kind(
            f"import refused: event at position {message.position} "
            f"({message.type or 'no type'}): {problem}",
            info={"position": str(message.position)},
        )

    def _checked(self, event: NewEvent, position: int) -> NewEvent:
        """``event`` with its values coerced to their variables' types, after the checks
        its writer made."""
        payload: dict[str, Any] = dict(event.payload)
        if event.type == EventType.SESSION_CREATED:
            check_metadata(payload.get("metadata", {}), self.limits)
            ttl = payload.get("ttl_seconds", 0)
            if ttl < 0:
                raise ValidationError(f"ttl_seconds must be 0 or more, not {ttl}")
        elif event.type == EventType.SESSION_FORKED:
            if payload["origin_position"] != position - 1:
                raise ValidationError(
                    f"origin_position is {payload['origin_position']}, "
                    f"not the position before the event ({position - 1})"
                )
        elif event.type == EventType.VARIABLE_REGISTERED:
            payload = self._registered(payload, position)
        elif event.type == EventType.VARIABLE_UPDATED:
            variable = self._variable(payload["variable_id"])
            if variable is not None:
                payload["value"] = self._value(variable, payload["value"])
                back = payload.get("rollback_to_version")
                if back is not None and not 0 <= back < variable.version:
                    raise ValidationError(
                        f"variable {variable.name!r} at version {variable.version} cannot "
                        f"roll back to version {back}"
                    )
        elif event.type == EventType.BATCH_APPLIED:
            payload = self._batch(payload)
        return dataclasses.replace(event, payload=payload)

    def _registered(self, payload: dict[str, Any], position: int) -> dict[str, Any]:
        name, type_name = payload["name"], payload["type"]
        check_name(name, self.limits)
        if type_name not in TYPE_NAMES:
            raise ValidationError(
                f"variable {name!r}: unknown type {type_name!r}; "
                f"expected one of {', '.join(TYPE_NAMES)}"
            )
        if payload["variable_id"] != f"var_{name}_{position}":
            raise ValidationError(
                f"variable {name!r} registered at position {position} must have the id "
                f"'var_{name}_{position}', not {payload['variable_id']!r}"
            )
        try:
            constraints = Constraints.for_type(type_name, payload.get("constraints", {}))
        except RuleViolation as problem:
            raise ValidationError(f"variable {name!r}: {problem}") from None
        if self.state is not None and not self.state.deleted:
            count = len(self.state.variables)
            if count >= self.limits.max_variables_per_session and name not in self.state.names:
                raise LimitExceeded(
                    f"the session would have more than {self.limits.max_variables_per_session} "
                    "variables",
                    info={"limit": str(self.limits.max_variables_per_session)},
                )
        value = _accepted(name, type_name, constraints, payload["value"], self.limits)
        return {**payload, "value": value, "constraints": constraints.to_dict()}

    def _batch(self, payload: dict[str, Any]) -> dict[str, Any]:
        if not payload["updates"]:
            raise ValidationError("a batch with no updates")
        seen: set[str] = set()
        updates = []
        for item in payload["updates"]:
            variable_id = item["variable_id"]
            if variable_id in seen:
                raise ValidationError(f"variable {variable_id!r} changes twice in one batch")
            seen.add(variable_id)
            variable = self._variable(variable_id)
            value = item["value"] if variable is None else self._value(variable, item["value"])
            updates.append({"variable_id": variable_id, "value": value})
        return {"updates": updates}

    def _variable(self, variable_id: str) -> VariableState | None:
        """The live variable (None lets the fold say it is unknown)."""
        if self.state is None or self.state.deleted:
            return None
        return self.state.variables.get(variable_id)

    def _value(self, variable: VariableState, value: object) -> PyValue:
        return _accepted(variable.name, variable.type, variable.constraints, value, self.limits)


def _accepted(
    name: str, type_name: str, constraints: Constraints, value: object, limits: Limits
) -> PyValue:
    """``value`` coerced to the type and checked against the constraints and limits."""
    if isinstance(value, str) and len(value.encode()) > limits.max_string_bytes:
        raise LimitExceeded(
            f"variable {name!r}: string of {len(value.encode())} bytes is above the limit "
            f"of {limits.max_string_bytes}",
            info={"limit": str(limits.max_string_bytes)},
        )
    try:
        accepted = coerce(type_name, value)
        constraints.check(accepted)
    except RuleViolation as problem:
        raise ValidationError(f"variable {name!r}: {problem}") from None
    return accepted


@dataclass(frozen=True, slots=True)
class ImportSession:
    """Start ``session_id`` with ``events`` (checked by :class:`ImportCheck`)."""

    session_id: str
    events: Sequence[NewEvent]

    def decide(self, state: SessionState | None, ctx: WriteContext) -> Decision[SessionState]:
        """Every event, if the id was never used and no event is from the future."""
        _unused(state, self.session_id)
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


def import_session(
    store: Store,
    chunks: Iterator[pb.ImportSessionRequest],
    source: str,
    *,
    max_events: int = MAX_TRANSFER_EVENTS,
) -> pb.ImportSessionResponse:
    """A new session rebuilt from an export.

    The first chunk names the new session (empty: the exported events' session) and how
    far to import (``to_position``; 0 for everything); events after it are not read.

    Raises:
        ValidationError: no events, a bad id, or an event that does not check (the message
            names its position; nothing is written).
        AlreadyExists: the id was used before.
        OutOfRange: the export ends before ``to_position``.
        LimitExceeded: more than ``max_events`` events, or an event beyond a limit.
    """
    target = ""
    to_position = 0
    check: ImportCheck | None = None
    try:
        for index, chunk in enumerate(chunks):
            if index == 0:
                target, to_position = chunk.session_id, chunk.to_position
                if to_position < 0:
                    raise ValidationError(f"to_position must be 0 or more, not {to_position}")
            for message in chunk.events:
                if check is None:
                    target = target or message.session_id
                    if not target:
                        raise ValidationError(
                            "import refused: no session id given and the events carry none"
                        )
                    check_name(target, store.limits, "session id")
                    _unused(store.published(target), target)
                    check = ImportCheck(target, store.limits)
                if to_position and check.position >= to_position:
                    break
                if check.position >= max_events:
                    raise LimitExceeded(
                        f"import refused: more than {max_events} events",
                        info={"limit": str(max_events)},
                    )
                check.add(message)
            else:
                continue
            break  # to_position reached: the rest is not read
    except grpc.RpcError:  # the client cancelled the stream (or went away)
        raise Unavailable("the import was cancelled by the client; nothing was written") from None
    if check is None or not check.events:
        raise ValidationError("import refused: the import holds no events")
    if to_position and check.position < to_position:
        raise OutOfRange(
            f"import refused: the export ends at position {check.position}, "
            f"before to_position {to_position}",
            info={"position": str(to_position), "last_position": str(check.position)},
        )
    written = store.execute(target, ImportSession(target, check.events))
    log.info("imported session %r (%d events) for %s", target, written.position, source)
    return pb.ImportSessionResponse(
        header=header(target, written.position),
        session=_session_message(store, written.result),
    )
