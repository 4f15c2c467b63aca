"""ForkSession, ExportSession and ImportSession: the flows that copy session logs.

Each flow reads what it needs, builds one command (:mod:`varstore.api.commands` holds
them all), has the store execute it and answers. A fork is a new session whose log starts
as a copy of another session's log up to a position, followed by a ``SessionForked``
event naming the origin. An export streams a session's log as ``Event`` messages. An
import decodes each event of such a stream (positions, times, bodies that match their
types) and replays it through the deciders of the live commands
(:class:`~varstore.api.commands.ImportCheck`), so it is refused for exactly what a live
call would refuse. A copy goes only into an id that has never been used (no event ever).

A copy of at most TRANSFER_CHUNK_EVENTS events is appended by ONE command. A longer one is
appended in chunks of that many events, one command each
(:class:`~varstore.api.commands.CopyChunk`), so other writers' commits go between them
instead of waiting behind one huge append; its first event records how many events the
copy holds, and readers see no session until the log holds them all (a fork's last event
is its SessionForked). So a session is still seen whole or not at all. A copy cut short (a
crash, the log failing) stays hidden with its id taken; the same request (same request
id) sent again finishes it from where the log stops.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Final

import grpc

from varstore.api.commands import (
    SCHEMA_VERSION,
    CopyChunk,
    ForkSession,
    ImportCheck,
    ImportSession,
    check_metadata,
    check_name,
    check_unused,
    import_refusal,
    valid_time,
)
from varstore.api.convert import header, session_to_proto
from varstore.api.event_codec import event_from_proto, event_to_proto
from varstore.api.idempotency import BodyDigest, RequestKey, check_request_id, request_key
from varstore.api.queries import describe_session
from varstore.api.store import Store, Written
from varstore.eventstore.events import NewEvent, RecordedEvent
from varstore.projections import SessionState, without_staging
from varstore.types import (
    LimitExceeded,
    OutOfRange,
    SessionNotFound,
    Unavailable,
    ValidationError,
    describe,
)
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "EXPORT_CHUNK_BYTES",
    "EXPORT_CHUNK_EVENTS",
    "MAX_TRANSFER_EVENTS",
    "TRANSFER_CHUNK_EVENTS",
    "export_session",
    "fork_session",
    "import_session",
]

log = logging.getLogger(__name__)

#: Most events one fork copies or one import brings in (RESOURCE_EXHAUSTED beyond).
MAX_TRANSFER_EVENTS: Final = 1_000_000
#: Most events a fork or import appends in one command; longer copies go in chunks.
TRANSFER_CHUNK_EVENTS: Final = 100
#: Most events in one ExportSessionResponse.
EXPORT_CHUNK_EVENTS: Final = 500
#: An ExportSessionResponse is closed once its events reach this size (gRPC's default
#: message limit is 4 MiB; one event can be larger only if it holds huge strings).
EXPORT_CHUNK_BYTES: Final = 1 << 20


def _session_message(store: Store, state: SessionState) -> pb.Session:
    return session_to_proto(state, describe_session(store, state).expires_at)


# -- fork --------------------------------------------------------------------------------------


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
    key = request_key(request)
    known = store.known_request(key)
    if known is not None and key is not None and _cut_short(store, known.session_id):
        return _finish_fork(store, request, known.session_id, source, key)
    if known is not None:  # a retry: answered from the log as the first time, nothing read
        again = ForkSession(
            known.session_id, origin, request.at_position, (), source, dict(request.metadata)
        )
        return _forked(store, store.execute(known.session_id, again, key))
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
    check_unused(store.published(new_id), new_id)  # fail before reading the log; decide rechecks
    if position + 1 > MAX_TRANSFER_EVENTS:
        raise LimitExceeded(
            f"a fork at position {position} would hold {position + 1} events; "
            f"the limit is {MAX_TRANSFER_EVENTS}",
            info={"limit": str(MAX_TRANSFER_EVENTS)},
        )
    if position + 1 > TRANSFER_CHUNK_EVENTS:
        return _forked(store, _fork_in_chunks(store, request, new_id, position, 0, source, key))
    # The origin's events up to the position never change, so reading them before the
    # command runs is safe; the command only appends them.
    command = _fork_of(request, new_id, position, _copies(store, origin, 1, position), source)
    return _forked(store, store.execute(new_id, command, key))


def _copies(store: Store, origin: str, first: int, last: int) -> list[NewEvent]:
    """The origin's events ``first`` to ``last`` as a fork copies them."""
    return [
        NewEvent(
            type=event.type,
            payload=event.payload,
            recorded_at=event.recorded_at,
            source=event.source,
            metadata=without_staging(event.metadata),
            schema_version=event.schema_version,
        )
        for event in store.recorder.read_session(origin, first, last)
    ]


def _fork_of(
    request: pb.ForkSessionRequest,
    new_id: str,
    position: int,
    copies: list[NewEvent],
    source: str,
) -> ForkSession:
    return ForkSession(
        session_id=new_id,
        origin_session_id=request.session_id,
        origin_position=position,
        events=copies,
        source=source,
        metadata=dict(request.metadata),
    )


def _fork_in_chunks(
    store: Store,
    request: pb.ForkSessionRequest,
    new_id: str,
    position: int,
    start: int,
    source: str,
    key: RequestKey | None,
) -> Written[SessionState]:
    """Copy the origin's events after ``start`` in chunks (read one chunk at a time),
    the last chunk with the SessionForked event."""
    total = position + 1
    written: Written[SessionState] | None = None
    while start < total:
        last = min(position, start + TRANSFER_CHUNK_EVENTS)
        copies = _copies(store, request.session_id, start + 1, last)
        fork = _fork_of(request, new_id, position, copies, source)
        written = store.execute(new_id, _chunk(new_id, fork, start, total, key))
        start = written.position
    assert written is not None  # total > start: at least one chunk
    return written


def _finish_fork(
    store: Store, request: pb.ForkSessionRequest, new_id: str, source: str, key: RequestKey
) -> pb.ForkSessionResponse:
    """The same fork sent again after it was cut short: copy the rest."""
    state = store.projector.published(new_id)
    assert state is not None
    position = state.staged_until - 1
    return _forked(
        store, _fork_in_chunks(store, request, new_id, position, state.position, source, key)
    )


def _cut_short(store: Store, session_id: str) -> bool:
    """Whether ``session_id`` is a chunked copy whose log stops before its end."""
    state = store.projector.published(session_id)
    return state is not None and state.hidden


def _chunk(
    target: str,
    copy: ForkSession | ImportSession,
    start: int,
    total: int,
    key: RequestKey | None,
) -> CopyChunk:
    """The command that appends ``copy``'s events after the first ``start``, stamped with
    ``key`` here rather than on the leader."""
    if key is None:
        return CopyChunk(target, copy, start, total)
    stamped = _stamped(copy.events, key)
    copy = replace(copy, events=stamped)
    return CopyChunk(target, copy, start, total, key.id, key.digest)


def _stamped(events: Sequence[NewEvent], key: RequestKey) -> list[NewEvent]:
    """``events`` as the write with ``key`` records them."""
    return [
        NewEvent(
            event.type,
            event.payload,
            event.recorded_at,
            event.source,
            event.metadata,
            event.schema_version,
            key.id,
            key.digest,
        )
        for event in events
    ]


def _import_in_chunks(
    store: Store, target: str, events: list[NewEvent], key: RequestKey | None
) -> Written[SessionState]:
    """Append an import's ``events`` in chunks, from where the log of ``target`` stops
    if it is this import cut short."""
    state = store.projector.published(target)
    start = state.position if state is not None and state.hidden else 0
    total = len(events)
    ends_deleted = events[-1].type == "SessionDeleted"
    written: Written[SessionState] | None = None
    while start < total:
        chunk = events[start : start + TRANSFER_CHUNK_EVENTS]
        command = ImportSession(target, chunk, ends_deleted=ends_deleted)
        written = store.execute(target, _chunk(target, command, start, total, key))
        start = written.position
    assert written is not None
    return written


def _forked(store: Store, written: Written[SessionState]) -> pb.ForkSessionResponse:
    # The session the answer names: a retry that raced the first call names the first's.
    return pb.ForkSessionResponse(
        header=header(written.result.session_id, written.position),
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


def _decoded(message: pb.Event) -> RecordedEvent:
    """The event ``message`` carries, at the session id and position it was exported with.

    Raises:
        ValidationError: naming its position: no recorded_at, an unknown schema version,
            an unknown type, or a body that does not match its type.
    """
    if not message.HasField("recorded_at"):
        raise import_refusal(message.position, message.type, "recorded_at is missing")
    stamp = message.recorded_at
    try:
        valid_time(stamp.seconds, stamp.nanos, "recorded_at")
    except ValidationError as problem:
        raise import_refusal(message.position, message.type, problem.message) from None
    if message.schema_version not in (0, SCHEMA_VERSION):
        raise import_refusal(
            message.position, message.type, f"unknown schema version {message.schema_version}"
        )
    try:
        event = event_from_proto(message)
    except ValidationError as problem:
        raise ValidationError(
            f"import refused: {problem}", info={"position": str(message.position)}
        ) from None
    return RecordedEvent.of(event, message.session_id, message.position, 0)


def _confirm_end(chunks: Iterator[pb.ImportSessionRequest]) -> None:
    """Ask an ended request stream for one more chunk: RpcError if it was cancelled.

    gRPC's server ends the request iterator as if the client had finished when a
    cancellation overtakes a pending read (a client whose file went bad half way cancels
    after sending part of it); the call is marked cancelled a moment later, and a further
    read then raises. Without this, that part would be imported as if it were all.
    """
    next(chunks, None)


def import_session(
    store: Store,
    chunks: Iterator[pb.ImportSessionRequest],
    source: str,
    *,
    max_events: int = MAX_TRANSFER_EVENTS,
    is_active: Callable[[], bool] = lambda: True,
) -> pb.ImportSessionResponse:
    """A new session rebuilt from an export; ``is_active`` says whether the call is still
    open (a cancelled call commits nothing, however its stream ended).

    The first chunk names the new session (empty: the exported events' session), how far
    to import (``to_position``; 0 for everything) and the ``request_id``; events after
    ``to_position`` are not read. A retry (the same request id over the same session id,
    ``to_position`` and events) is checked again and answered as the first time.

    Raises:
        ValidationError: no events, a bad id, or an event that does not check (the message
            names its position; nothing is written).
        AlreadyExists: the id was used before.
        OutOfRange: the export ends before ``to_position``.
        LimitExceeded: more than ``max_events`` events, or an event beyond a limit.
    """
    target = ""
    to_position = 0
    request_id = ""
    body = BodyDigest(pb.ImportSessionRequest.DESCRIPTOR.full_name)
    check: ImportCheck | None = None
    try:
        for index, chunk in enumerate(chunks):
            if index == 0:
                target, to_position = chunk.session_id, chunk.to_position
                request_id = chunk.request_id
                if request_id:
                    check_request_id(request_id)
                body.update(pb.ImportSessionRequest(session_id=target, to_position=to_position))
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
                    if store.recorded_request(request_id) is None:  # a retry's id is taken
                        check_unused(store.projector.published(target), target)
                    check = ImportCheck(target, store.limits)
                if to_position and check.position >= to_position:
                    break
                if check.position >= max_events:
                    raise LimitExceeded(
                        f"import refused: more than {max_events} events",
                        info={"limit": str(max_events)},
                    )
                body.update(message)
                check.add(_decoded(message))
            else:
                continue
            break  # to_position reached: the rest is not read
        else:
            _confirm_end(chunks)
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
    if not is_active():  # gRPC may end a cancelled stream as if it were complete
        raise Unavailable("the import was cancelled by the client; nothing was written")
    key = body.key(request_id)
    recorded = store.recorded_request(request_id)
    if recorded is None and len(check.events) > TRANSFER_CHUNK_EVENTS:
        written = _import_in_chunks(store, target, check.events, key)
    elif (
        recorded is not None
        and key is not None
        and (recorded.session_id, recorded.digest) == (target, key.digest)
        and _cut_short(store, target)
    ):  # this very import, sent again after it was cut short: append the rest
        written = _import_in_chunks(store, target, check.events, key)
    else:
        written = store.execute(target, ImportSession(target, check.events), key)
    log.info("imported session %r (%d events) for %s", target, written.position, source)
    return pb.ImportSessionResponse(
        header=header(target, written.position),
        session=_session_message(store, written.result),
    )
