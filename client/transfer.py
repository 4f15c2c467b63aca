"""Session exports as JSON Lines, and the calls that fork, export and import sessions.

The format (``varstore.v1.event``) is one JSON object per line, one line per event, in
position order, UTF-8, ``\\n``-terminated::

    {"format": "varstore.v1.event", "session_id": "demo", "position": 2,
     "global_position": 17, "type": "VariableRegistered", "schema_version": 1,
     "recorded_at": "2025-01-31T09:30:00.123456Z", "source": "python",
     "metadata": {"reason": "setup"},
     "payload": {"variable_id": "var_temperature_2", "name": "temperature",
                 "type": "float", "value": 0.7, "constraints": {"min": 0.0, "max": 2.0}}}

``payload`` is the body of the event as the server's event log stores it, per ``type``:

- ``SessionCreated``: ``metadata`` (object of strings), ``ttl_seconds``
- ``SessionDeleted``: ``reason`` ("deleted" or "expired")
- ``SessionForked``: ``origin_session_id``, ``origin_position``
- ``VariableRegistered``: ``variable_id``, ``name``, ``type``, ``value``, ``constraints``
  (``min``, ``max``, ``min_length``, ``max_length``, ``pattern``, ``choices``; set ones only)
- ``VariableUpdated``: ``variable_id``, ``value``, and ``rollback_to_version`` for rollbacks
- ``BatchApplied``: ``updates``, a list of ``{"variable_id", "value"}``
- ``VariableDeleted``: ``variable_id``

Values are JSON booleans, numbers and strings; a float variable's values are written with
a decimal point or exponent (``1.0``), an integer variable's without. When reading, a
number is taken as its variable's type (so ``1`` for a float variable is ``1.0``).
``recorded_at`` is RFC 3339 in UTC with microseconds. ``request_id``, the id of the write
that recorded the event, comes after ``metadata`` when there is one. When reading,
``format``, ``session_id``, ``global_position``, ``schema_version`` (1), ``source``,
``metadata`` and ``request_id`` may be left out; unknown keys are refused, and blank lines
are skipped. (An import records its events under its own request id: the file's say
which writes made them where they came from.)

This module imports only ``varstore.v1`` and ``varstore.types``, like the rest of the
client.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from varstore.client._core import SessionInfo
from varstore.types import Constraints, RuleViolation, ValidationError, to_proto
from varstore.types.event_bodies import BodyValues
from varstore.types.events import EVENTS, payload_of, write_body
from varstore.types.status import error_from_rpc_error
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = [
    "FORMAT",
    "ExportResult",
    "ImportResult",
    "Progress",
    "event_from_json",
    "event_to_json",
    "export_session",
    "fork_session",
    "import_session",
    "read_events",
    "write_events",
]

#: The value of every line's ``format`` key.
FORMAT: Final = "varstore.v1.event"

#: Most events, and about the most bytes, sent in one ImportSession message.
IMPORT_CHUNK_EVENTS: Final = 500
IMPORT_CHUNK_BYTES: Final = 1 << 20

#: Called with the number of events exported or sent so far.
Progress = Callable[[int], None]

PathOrFile = str | os.PathLike[str] | IO[str]

_KEYS: Final = (
    "format",
    "session_id",
    "position",
    "global_position",
    "type",
    "schema_version",
    "recorded_at",
    "source",
    "metadata",
    "request_id",
    "payload",
)
_REQUIRED: Final = ("position", "type", "recorded_at", "payload")


# -- events <-> JSON ---------------------------------------------------------------------------


def _time_text(stamp: Timestamp) -> str:
    moment = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _payload(event: pb.Event) -> dict[str, Any]:
    try:
        return payload_of(event)
    except RuleViolation as problem:
        raise ValidationError(
            f"event at position {event.position} ({event.type or 'no type'}) cannot be "
            f"exported: {problem}; upgrade varstore if the type is new"
        ) from None


def event_to_json(event: pb.Event) -> dict[str, Any]:
    """The JSON object of one event (one line of an export), keys in the documented order
    (``request_id`` only when the event has one)."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "session_id": event.session_id,
        "position": event.position,
        "global_position": event.global_position,
        "type": event.type,
        "schema_version": event.schema_version,
        "recorded_at": _time_text(event.recorded_at),
        "source": event.source,
        "metadata": dict(event.metadata),
    }
    if event.request_id:
        data["request_id"] = event.request_id
    data["payload"] = _payload(event)
    return data


def _line(event: pb.Event) -> str:
    return json.dumps(event_to_json(event), ensure_ascii=False, separators=(",", ":")) + "\n"


class _Malformed(ValueError):
    """A line that is not an event of the format (the reader adds where it is)."""


def _integer(data: Mapping[str, Any], key: str, low: int = 0) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _Malformed(f"{key!r} must be a whole number of at least {low}, not {value!r}")
    return value


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise _Malformed(f"{key!r} must be a string, not {value!r}")
    return value


def _strings(data: Mapping[str, Any], key: str) -> dict[str, str]:
    value = data[key]
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _Malformed(f"{key!r} must be an object of strings, not {value!r}")
    return value


def _timestamp(text: str) -> Timestamp:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Malformed(f"'recorded_at' is not an RFC 3339 time: {text!r}") from None
    if moment.tzinfo is None:
        raise _Malformed(f"'recorded_at' has no time zone (end it with Z): {text!r}")
    moment = moment.astimezone(UTC)
    stamp = Timestamp(seconds=int(moment.replace(microsecond=0).timestamp()))
    stamp.nanos = moment.microsecond * 1000
    return stamp


def _typed(value: object, type_name: str | None) -> pb.Value:
    """A JSON value as a ``Value`` of its variable's type (when known and the number fits)."""
    if type_name == "float" and isinstance(value, int) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):
            value = float(value)
    elif (
        type_name == "integer"
        and isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
    ):
        value = int(value)
    try:
        return to_proto(value)
    except RuleViolation as problem:
        raise _Malformed(f"bad value {value!r}: {problem}") from None


class _JsonValues(BodyValues):
    """Values read as their variable's type (remembered from its registration), and
    constraints checked, as a line of an export needs."""

    def __init__(self, types: dict[str, str]) -> None:
        self.types = types

    def value(self, raw: object, variable_id: str, type_name: str | None) -> pb.Value:
        if type_name is not None:
            self.types[variable_id] = type_name
        return _typed(raw, type_name or self.types.get(variable_id))

    def constraints(self, type_name: str, raw: Mapping[str, Any]) -> pb.Constraints:
        try:
            return Constraints.for_type(type_name, raw).to_proto()
        except RuleViolation as problem:
            raise _Malformed(f"bad constraints: {problem}") from None


def _set_body(event: pb.Event, payload: Mapping[str, Any], types: dict[str, str]) -> None:
    try:
        write_body(event, payload, _JsonValues(types))
    except RuleViolation as problem:
        raise _Malformed(str(problem)) from None


def _event_from_json(data: object, types: dict[str, str]) -> pb.Event:
    if not isinstance(data, dict):
        raise _Malformed(f"expected a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise _Malformed(f"unknown key {unknown[0]!r}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise _Malformed(f"{missing[0]!r} is missing")
    if "format" in data and data["format"] != FORMAT:
        raise _Malformed(f"format {data['format']!r} is not {FORMAT!r}")
    kind = _text(data, "type")
    if kind not in EVENTS:
        raise _Malformed(f"unknown event type {kind!r}; expected one of {', '.join(EVENTS)}")
    payload = data["payload"]
    if not isinstance(payload, dict):
        raise _Malformed(f"'payload' must be an object, not {payload!r}")
    allowed, required = EVENTS[kind].payload_keys, EVENTS[kind].required_keys
    extra = sorted(set(payload) - allowed)
    if extra:
        raise _Malformed(f"{kind} payload has an unknown key {extra[0]!r}")
    absent = sorted(required - set(payload))
    if absent:
        raise _Malformed(f"{kind} payload lacks {absent[0]!r}")
    event = pb.Event(
        session_id=_text(data, "session_id") if "session_id" in data else "",
        position=_integer(data, "position", low=1),
        global_position=_integer(data, "global_position") if "global_position" in data else 0,
        type=kind,
        schema_version=_integer(data, "schema_version", 1) if "schema_version" in data else 1,
        recorded_at=_timestamp(_text(data, "recorded_at")),
        source=_text(data, "source") if "source" in data else "",
        metadata=_strings(data, "metadata") if "metadata" in data else {},
        request_id=_text(data, "request_id") if "request_id" in data else "",
    )
    _set_body(event, payload, types)
    return event


def event_from_json(data: object, types: dict[str, str] | None = None) -> pb.Event:
    """The event one line's JSON object describes.

    ``types`` maps variable ids to type names; VariableRegistered events add to it, and
    later values of those variables are read as their type. Pass the same dict for every
    line of a file (or None for a lone event).

    Raises:
        ValidationError: the object is not an event of the format.
    """
    try:
        return _event_from_json(data, {} if types is None else types)
    except _Malformed as problem:
        raise ValidationError(str(problem)) from None


def _no_constant(name: str) -> Any:
    raise _Malformed(f"{name} is not a valid JSON number")


def read_events(file: IO[str], name: str = "<export>") -> Iterator[pb.Event]:
    """The events of a JSON Lines export, read lazily, line by line.

    Raises:
        ValidationError: a line is not an event of the format; the message starts with
            ``name:LINE:``.
    """
    types: dict[str, str] = {}
    for number, line in enumerate(file, start=1):
        if not line.strip():
            continue
        try:
            event = _event_from_json(json.loads(line, parse_constant=_no_constant), types)
        except ValueError as problem:  # _Malformed, or JSONDecodeError
            if isinstance(problem, json.JSONDecodeError):
                text = f"not a JSON object ({problem.msg}, column {problem.colno})"
            else:
                text = str(problem)
            raise ValidationError(f"{name}:{number}: {text}") from None
        yield event


def write_events(file: IO[str], events: Iterable[pb.Event]) -> int:
    """Write ``events`` to ``file`` as JSON Lines; returns how many were written."""
    count = 0
    for event in events:
        file.write(_line(event))
        count += 1
    return count


# -- the calls -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote."""

    session_id: str
    #: Number of events written.
    events: int
    #: Positions of the first and last event written (0 when none was).
    first_position: int
    last_position: int


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The session an import made, and how many events it holds."""

    session: SessionInfo
    events: int


def fork_session(
    stub: pb_grpc.VariableStoreStub,
    session_id: str,
    at_position: int = 0,
    new_session_id: str | None = None,
    *,
    source: str = "python",
    metadata: Mapping[str, str] | None = None,
    timeout: float | None = 30.0,
    request_id: str = "",
    min_position: int = 0,
) -> SessionInfo:
    """Fork ``session_id`` at ``at_position`` (0: its last position) into a new session.
    A call repeated with the same ``request_id`` forks once and answers as the first time.
    ``min_position``: fork on a server that has applied ``session_id`` that far (the
    position of the caller's last write), however many servers share the log.

    Raises:
        SessionNotFound, OutOfRange, AlreadyExists, ValidationError.
    """
    request = pb.ForkSessionRequest(
        session_id=session_id,
        at_position=at_position,
        new_session_id=new_session_id or "",
        source=source,
        metadata=dict(metadata or {}),
        request_id=request_id,
        min_position=min_position,
    )
    try:
        response = stub.ForkSession(request, timeout=timeout)
    except grpc.RpcError as failure:
        raise error_from_rpc_error(failure) from failure
    return SessionInfo.from_proto(response.session, response.session_token)


def export_session(
    stub: pb_grpc.VariableStoreStub,
    session_id: str,
    target: PathOrFile,
    *,
    from_position: int = 0,
    to_position: int | None = None,
    progress: Progress | None = None,
    timeout: float | None = None,
    min_position: int = 0,
) -> ExportResult:
    """Write a session's log (from_position..to_position) to ``target`` as JSON Lines.

    ``target`` is a path (written to a temporary file beside it, renamed when complete,
    so a failed export leaves no file) or an open text file. ``timeout`` bounds the whole
    export (None: no bound). ``min_position``: export from a server that has applied the
    session that far (the position of the caller's last write).

    Raises:
        SessionNotFound, ValidationError, Unavailable; OSError when writing fails.
    """
    request = pb.ExportSessionRequest(
        session_id=session_id, from_position=from_position, min_position=min_position
    )
    if to_position is not None:
        request.to_position = to_position
    if not isinstance(target, str | os.PathLike):
        return _export_to(stub, request, target, progress, timeout)
    path = Path(target)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as file:
            result = _export_to(stub, request, file, progress, timeout)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return result


def _export_to(
    stub: pb_grpc.VariableStoreStub,
    request: pb.ExportSessionRequest,
    file: IO[str],
    progress: Progress | None,
    timeout: float | None,
) -> ExportResult:
    responses = stub.ExportSession(request, timeout=timeout)
    count = first = last = 0
    try:
        for response in responses:
            for event in response.events:
                file.write(_line(event))
                first = first or event.position
                last = event.position
            count += len(response.events)
            if progress is not None:
                progress(count)
    except grpc.RpcError as failure:
        raise error_from_rpc_error(failure) from failure
    except BaseException:
        responses.cancel()
        raise
    file.flush()
    return ExportResult(request.session_id, count, first, last)


class _Requests:
    """The request stream of an import: the events in chunks, the first chunk naming the
    session. A failure to read the file cancels the call (so the server writes nothing)
    and is kept in ``error`` to be raised in place of the cancellation."""

    def __init__(
        self,
        events: Iterator[pb.Event],
        session_id: str,
        to_position: int,
        progress: Progress | None,
        chunk_bytes: int = IMPORT_CHUNK_BYTES,
        request_id: str = "",
    ) -> None:
        self._chunk_bytes = chunk_bytes
        self._request_id = request_id
        self._events = events
        self._session_id = session_id
        self._to_position = to_position
        self._progress = progress
        self.error: BaseException | None = None
        self.call: grpc.Future[pb.ImportSessionResponse] | None = None
        self.started = threading.Event()
        self.sent = 0

    def __iter__(self) -> Iterator[pb.ImportSessionRequest]:
        try:
            yield from self._chunks()
        except Exception as problem:  # noqa: BLE001 - raised by the caller, in its thread
            self.error = problem
            self.started.wait()
            if self.call is not None:
                self.call.cancel()

    def _chunks(self) -> Iterator[pb.ImportSessionRequest]:
        first = True
        chunk: list[pb.Event] = []
        size = 0
        for event in self._events:
            if self._to_position and event.position > self._to_position:
                break
            event_size = event.ByteSize()
            if chunk and (
                len(chunk) >= IMPORT_CHUNK_EVENTS or size + event_size > self._chunk_bytes
            ):
                yield self._request(chunk, first)
                first, chunk, size = False, [], 0
            chunk.append(event)
            size += event_size
            if self._to_position and event.position >= self._to_position:
                break  # do not read (or fail on) what follows
        if chunk or first:
            yield self._request(chunk, first)

    def _request(self, chunk: list[pb.Event], first: bool) -> pb.ImportSessionRequest:
        request = pb.ImportSessionRequest(events=chunk)
        if first:
            request.session_id = self._session_id
            request.to_position = self._to_position
            request.request_id = self._request_id
        self.sent += len(chunk)
        if self._progress is not None:
            self._progress(self.sent)
        return request


def import_session(
    stub: pb_grpc.VariableStoreStub,
    source: PathOrFile | Iterable[pb.Event],
    session_id: str | None = None,
    to_position: int | None = None,
    *,
    progress: Progress | None = None,
    timeout: float | None = None,
    request_id: str = "",
) -> ImportResult:
    """Rebuild a session from an export: a JSON Lines path or open text file, or events.

    ``session_id``: the new session's id (default: the exported session's); it must never
    have been used. ``to_position``: import only the events up to it. The server checks
    every event; nothing is written unless all of them pass. ``timeout`` bounds the whole
    import (None: no bound). An import sent again with the same ``request_id`` and the
    same events imports once and answers as the first time.

    Raises:
        ValidationError: the file or an event is not acceptable (file errors name the
            line, server errors the position).
        AlreadyExists, OutOfRange, LimitExceeded, Unavailable; OSError when reading fails.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        with path.open(encoding="utf-8") as opened:
            events = read_events(opened, str(path))
            return _import_from(
                stub, events, session_id, to_position, progress, timeout, request_id
            )
    if hasattr(source, "read"):
        file = cast(IO[str], source)
        events = read_events(file, str(getattr(file, "name", "<export>")))
    else:
        events = iter(source)
    return _import_from(stub, events, session_id, to_position, progress, timeout, request_id)


def _chunk_bytes(stub: pb_grpc.VariableStoreStub) -> int:
    """Bytes of events per import chunk: at most half the server's largest request."""
    try:
        largest = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).limits.max_message_bytes
    except grpc.RpcError:  # an older server: it tells no limit
        return IMPORT_CHUNK_BYTES
    return min(IMPORT_CHUNK_BYTES, largest // 2) if largest else IMPORT_CHUNK_BYTES


def _import_from(
    stub: pb_grpc.VariableStoreStub,
    events: Iterator[pb.Event],
    session_id: str | None,
    to_position: int | None,
    progress: Progress | None,
    timeout: float | None,
    request_id: str = "",
) -> ImportResult:
    if to_position is not None and to_position < 1:
        raise ValidationError(f"to_position must be 1 or more, not {to_position}")
    requests = _Requests(
        events, session_id or "", to_position or 0, progress, _chunk_bytes(stub), request_id
    )
    try:
        call = stub.ImportSession.future(iter(requests), timeout=timeout)
        requests.call = call
    finally:
        requests.started.set()
    try:
        response: pb.ImportSessionResponse = call.result()
    except grpc.FutureCancelledError:
        if requests.error is not None:
            raise requests.error from None
        raise
    except grpc.RpcError as failure:
        if requests.error is not None:
            raise requests.error from None
        raise error_from_rpc_error(failure) from failure
    except BaseException:
        call.cancel()
        raise
    return ImportResult(
        SessionInfo.from_proto(response.session, response.session_token), response.header.position
    )
