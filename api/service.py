"""The gRPC front: each handler converts a request into a command (writes) or a query
(reads, :mod:`varstore.api.queries`), and the answer into a response. Nothing here reads
storage or handles errors: :class:`~varstore.api.interceptors.ErrorInterceptor`, installed
on the server, turns every exception into its status in one place."""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
import typing
import uuid
from collections.abc import Iterator
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from varstore.api import commands, queries, transfer
from varstore.api.auth import recorded_source
from varstore.api.convert import header, session_to_proto, variable_to_proto
from varstore.api.event_codec import change_to_proto, event_to_proto
from varstore.api.idempotency import request_key
from varstore.api.store import Store
from varstore.api.watch import WatchHub
from varstore.types import ValidationError
from varstore.types import from_proto as value_from_proto
from varstore.types.constraints import Constraints
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = ["VERSION", "VariableStoreService"]

#: The varstore version this server runs.
VERSION = importlib.metadata.version("varstore")


#: Seconds an import waits, once its stream ended, for a cancellation to show.
IMPORT_CANCEL_GRACE = 0.03

#: Longest a read waits for this server to apply its ``min_position`` (never past the
#: call's deadline), in seconds.
MAX_TAIL_WAIT = 5.0
#: Seconds of a call's deadline left for answering once the wait for its tail ends.
_ANSWER_MARGIN = 0.05

#: Longest ``source`` label a caller may give, in characters.
MAX_SOURCE_LENGTH = 256


def _source(given: str, context: grpc.ServicerContext) -> str:
    """The authenticated caller, with its own label beside it (see auth.recorded_source).

    Raises:
        ValidationError: the label is longer than MAX_SOURCE_LENGTH or holds a control
            character (every backend must be able to store it as text).
    """
    if len(given) > MAX_SOURCE_LENGTH:
        text = f"source is {len(given)} characters long; the limit is {MAX_SOURCE_LENGTH}"
        raise ValidationError(text, violations={"source": text})
    if any(ord(char) < 32 or ord(char) == 127 for char in given):
        text = "source must not hold control characters"
        raise ValidationError(text, violations={"source": text})
    return recorded_source(given, context)


def _moment(stamp: Timestamp, field: str) -> datetime:
    """An aware datetime for a Timestamp field, or INVALID_ARGUMENT naming the field."""
    return commands.valid_time(stamp.seconds, stamp.nanos, field)


def _at(
    request: pb.GetVariableRequest | pb.GetVariablesRequest | pb.ListVariablesRequest,
) -> queries.At:
    """When a read asks to be served: at_position, else as_of, else now."""
    if request.HasField("at_position"):
        return request.at_position
    if request.HasField("as_of"):
        return _moment(request.as_of, "as_of")
    return None


class _ReadRequest(typing.Protocol):
    @property
    def session_id(self) -> str: ...
    @property
    def min_position(self) -> int: ...


def _caught_up(store: Store, request: _ReadRequest, context: grpc.ServicerContext) -> None:
    """Return once this server has applied the session up to the request's
    ``min_position`` (read-your-writes on any server sharing the log).

    Raises:
        ValidationError: a negative min_position.
        Unavailable: still behind after the bounded wait, saying how far.
    """
    wanted = request.min_position
    if wanted == 0:
        return
    if wanted < 0:
        raise ValidationError(f"min_position must be 0 or more, not {wanted}")
    left = context.time_remaining()
    wait = MAX_TAIL_WAIT if left is None else min(MAX_TAIL_WAIT, left - _ANSWER_MARGIN)
    queries.wait_until_applied(store, request.session_id, wanted, max(0.0, wait))


def _session_message(summary: queries.SessionSummary) -> pb.Session:
    return session_to_proto(summary.state, summary.expires_at)


class VariableStoreService(pb_grpc.VariableStoreServicer):
    """``varstore.v1.VariableStore`` over a :class:`Store`."""

    def __init__(self, store: Store, hub: WatchHub | None = None) -> None:
        self._store = store
        self._hub = hub or WatchHub(store)

    # -- sessions ---------------------------------------------------------------------------

    def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.ServicerContext
    ) -> pb.CreateSessionResponse:
        key = request_key(request)
        known = self._store.known_request(key)  # a retry gets the id generated the first time
        session_id = request.session_id or (
            known.session_id if known is not None else f"session_{uuid.uuid4().hex}"
        )
        command = commands.CreateSession(
            session_id=session_id,
            metadata=dict(request.metadata),
            ttl_seconds=request.ttl_seconds,
            source=_source(request.source, context),
        )
        written = self._store.execute(session_id, command, key)
        return pb.CreateSessionResponse(
            header=header(written.result.session_id, written.position),
            session=_session_message(queries.describe_session(self._store, written.result)),
        )

    def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.ServicerContext
    ) -> pb.GetSessionResponse:
        _caught_up(self._store, request, context)
        summary = queries.get_session(self._store, request.session_id)
        return pb.GetSessionResponse(
            header=header(summary.state.session_id, summary.state.position),
            session=_session_message(summary),
        )

    def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.ServicerContext
    ) -> pb.ListSessionsResponse:
        page = queries.list_sessions(
            self._store, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListSessionsResponse(
            header=header("", page.position),
            sessions=[_session_message(summary) for summary in page.items],
            next_page_token=page.next_token,
        )

    def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteSessionResponse:
        command = commands.DeleteSession(
            session_id=request.session_id,
            source=_source(request.source, context),
            metadata=dict(request.metadata),
        )
        written = self._store.execute(request.session_id, command, request_key(request))
        return pb.DeleteSessionResponse(header=header(request.session_id, written.position))

    # -- variables --------------------------------------------------------------------------

    def RegisterVariable(
        self, request: pb.RegisterVariableRequest, context: grpc.ServicerContext
    ) -> pb.RegisterVariableResponse:
        command = commands.RegisterVariable(
            session_id=request.session_id,
            name=request.name,
            type=request.type,
            initial_value=value_from_proto(request.initial_value),
            constraints=Constraints.data_from_proto(request.constraints),
            metadata=dict(request.metadata),
            source=_source(request.source, context),
        )
        written = self._store.execute(request.session_id, command, request_key(request))
        return pb.RegisterVariableResponse(
            header=header(request.session_id, written.position),
            variable_id=written.result.id,
            variable=variable_to_proto(written.result),
        )

    def GetVariable(
        self, request: pb.GetVariableRequest, context: grpc.ServicerContext
    ) -> pb.GetVariableResponse:
        _caught_up(self._store, request, context)
        read = queries.get_variable(
            self._store, request.session_id, request.variable_identifier, _at(request)
        )
        return pb.GetVariableResponse(
            header=header(read.session_id, read.position), variable=variable_to_proto(read.variable)
        )

    def SetVariable(
        self, request: pb.SetVariableRequest, context: grpc.ServicerContext
    ) -> pb.SetVariableResponse:
        command = commands.SetVariable(
            session_id=request.session_id,
            identifier=request.variable_identifier,
            value=value_from_proto(request.value),
            metadata=dict(request.metadata),
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            source=_source(request.source, context),
        )
        written = self._store.execute(request.session_id, command, request_key(request))
        return pb.SetVariableResponse(
            header=header(request.session_id, written.position),
            new_version=written.result.version,
            variable=variable_to_proto(written.result),
        )

    def GetVariables(
        self, request: pb.GetVariablesRequest, context: grpc.ServicerContext
    ) -> pb.GetVariablesResponse:
        _caught_up(self._store, request, context)
        read = queries.get_variables(
            self._store, request.session_id, request.variable_identifiers, _at(request)
        )
        response = pb.GetVariablesResponse(
            header=header(read.session_id, read.position), missing_variables=read.missing
        )
        for identifier, variable in read.found.items():
            response.variables[identifier].CopyFrom(variable_to_proto(variable))
        return response

    def SetVariables(
        self, request: pb.SetVariablesRequest, context: grpc.ServicerContext
    ) -> pb.SetVariablesResponse:
        command = commands.SetVariables(
            session_id=request.session_id,
            updates={key: value_from_proto(value) for key, value in request.updates.items()},
            metadata=dict(request.metadata),
            atomic=request.atomic,
            expected_position=(
                request.expected_position if request.HasField("expected_position") else None
            ),
            source=_source(request.source, context),
        )
        written = self._store.execute(request.session_id, command, request_key(request))
        return pb.SetVariablesResponse(
            header=header(request.session_id, written.position),
            new_versions=written.result.new_versions,
            errors=written.result.errors,
            changed={
                identifier: pb.VariableRef(
                    id=state.id,
                    name=state.name,
                    type=state.type,
                    version=state.version,
                    position=state.position,
                )
                for identifier, state in written.result.variables.items()
            },
        )

    def ListVariables(
        self, request: pb.ListVariablesRequest, context: grpc.ServicerContext
    ) -> pb.ListVariablesResponse:
        _caught_up(self._store, request, context)
        listed = queries.list_variables(
            self._store, request.session_id, request.pattern, _at(request)
        )
        return pb.ListVariablesResponse(
            header=header(listed.session_id, listed.position),
            variables=[variable_to_proto(v) for v in listed.variables],
        )

    def DeleteVariable(
        self, request: pb.DeleteVariableRequest, context: grpc.ServicerContext
    ) -> pb.DeleteVariableResponse:
        command = commands.DeleteVariable(
            session_id=request.session_id,
            identifier=request.variable_identifier,
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            source=_source(request.source, context),
            metadata=dict(request.metadata),
        )
        written = self._store.execute(request.session_id, command, request_key(request))
        return pb.DeleteVariableResponse(
            header=header(request.session_id, written.position),
            variable=variable_to_proto(written.result),
        )

    # -- the log ----------------------------------------------------------------------------

    def GetVariableHistory(
        self, request: pb.GetVariableHistoryRequest, context: grpc.ServicerContext
    ) -> pb.GetVariableHistoryResponse:
        _caught_up(self._store, request, context)
        page = queries.variable_history(
            self._store,
            request.session_id,
            request.variable_identifier,
            from_version=request.from_version,
            to_version=request.to_version if request.HasField("to_version") else None,
            newest_first=request.newest_first,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.GetVariableHistoryResponse(
            header=header(request.session_id, page.position),
            changes=[change_to_proto(change) for change in page.items],
            next_page_token=page.next_token,
        )

    def ReadEvents(
        self, request: pb.ReadEventsRequest, context: grpc.ServicerContext
    ) -> pb.ReadEventsResponse:
        _caught_up(self._store, request, context)
        page = queries.read_events(
            self._store,
            request.session_id,
            from_position=request.from_position,
            to_position=request.to_position if request.HasField("to_position") else None,
            backwards=request.backwards,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ReadEventsResponse(
            header=header(request.session_id, page.position),
            events=[event_to_proto(event) for event in page.items],
            next_page_token=page.next_token,
        )

    def RollbackVariable(
        self, request: pb.RollbackVariableRequest, context: grpc.ServicerContext
    ) -> pb.RollbackVariableResponse:
        session_id = request.session_id
        key = request_key(request)
        known = self._store.known_request(key)  # a retry resolves the variable as the first did
        target = queries.rollback_target(
            self._store,
            session_id,
            request.variable_identifier,
            request.to_version,
            known.first_position - 1 if known is not None else None,
        )
        command = commands.RollbackVariable(
            session_id=session_id,
            variable_id=target.variable.id,
            to_version=request.to_version,
            value=target.value,
            metadata=dict(request.metadata),
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            source=_source(request.source, context),
        )
        written = self._store.execute(session_id, command, key)
        return pb.RollbackVariableResponse(
            header=header(session_id, written.position),
            new_version=written.result.version,
            variable=variable_to_proto(written.result),
        )

    async def WatchSession(  # type: ignore[override]  # an async handler: it holds no thread
        self, request: pb.WatchSessionRequest, context: typing.Any
    ) -> None:
        if request.min_position:  # its wait blocks: in the thread pool
            await asyncio.get_running_loop().run_in_executor(
                None, _caught_up, self._store, request, context
            )
        await self._hub.watch(request, context)

    # -- copies of logs -----------------------------------------------------------------------

    def ForkSession(
        self, request: pb.ForkSessionRequest, context: grpc.ServicerContext
    ) -> pb.ForkSessionResponse:
        _caught_up(self._store, request, context)
        return transfer.fork_session(self._store, request, _source(request.source, context))

    def ExportSession(
        self, request: pb.ExportSessionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportSessionResponse]:
        _caught_up(self._store, request, context)
        yield from transfer.export_session(self._store, request)

    def ImportSession(
        self, request_iterator: Iterator[pb.ImportSessionRequest], context: grpc.ServicerContext
    ) -> pb.ImportSessionResponse:
        ended = threading.Event()
        context.add_callback(ended.set)

        def still_open() -> bool:
            # gRPC can end a cancelled stream as if it were complete and report the cancel
            # a moment later: give it that moment before an import commits.
            return not ended.wait(IMPORT_CANCEL_GRACE)

        return transfer.import_session(
            self._store, request_iterator, _source("", context), is_active=still_open
        )

    # -- the server -------------------------------------------------------------------------

    def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetServerInfoResponse:
        limits = self._store.limits
        return pb.GetServerInfoResponse(
            version=VERSION,
            limits=pb.ServerLimits(
                max_message_bytes=limits.max_message_bytes,
                max_name_length=limits.max_name_length,
                max_string_bytes=limits.max_string_bytes,
                max_variables_per_session=limits.max_variables_per_session,
                max_batch_size=limits.max_batch_size,
                max_sessions=limits.max_sessions,
                max_watchers_per_session=self._hub.max_watchers_per_session,
                max_watchers=self._hub.max_watchers,
                max_page_size=limits.max_page_size,
                max_metadata_entries=limits.max_metadata_entries,
                max_metadata_entry_bytes=limits.max_metadata_entry_bytes,
                idle_connection_seconds=limits.idle_connection_seconds,
                max_requests_per_second=limits.max_requests_per_second,
                max_ttl_seconds=limits.max_ttl_seconds,
            ),
        )
