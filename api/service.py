"""The gRPC front: each handler turns a request into a command or a read, and the
answer into a response. Errors are not handled here: :func:`map_errors` turns every
:class:`VarstoreError` into its status in one place."""

from __future__ import annotations

import fnmatch
import functools
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc

from varstore.api import commands, paging, transfer
from varstore.api.convert import header, session_to_proto, variable_to_proto
from varstore.api.event_codec import change_to_proto, event_to_proto
from varstore.api.store import Store
from varstore.api.watch import WatchHub
from varstore.projections import SessionState
from varstore.types import (
    LimitExceeded,
    SessionNotFound,
    ValidationError,
    VariableNotFound,
    VarstoreError,
    describe,
)
from varstore.types import from_proto as value_from_proto
from varstore.types.constraints import Constraints
from varstore.types.status import status_for
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = ["VariableStoreService", "map_errors"]

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.ServicerContext], Response]


def map_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Abort the call with the status of any VarstoreError; INTERNAL for anything else."""

    @functools.wraps(handler)
    def mapped(self: Any, request: Request, context: grpc.ServicerContext) -> Response:
        try:
            return handler(self, request, context)
        except VarstoreError as error:
            context.abort_with_status(status_for(error))
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return mapped


def map_stream_errors(
    handler: Callable[[Any, Request, grpc.ServicerContext], Iterator[Response]],
) -> Callable[[Any, Request, grpc.ServicerContext], Iterator[Response]]:
    """:func:`map_errors` for handlers that stream their responses."""

    @functools.wraps(handler)
    def mapped(self: Any, request: Request, context: grpc.ServicerContext) -> Iterator[Response]:
        try:
            yield from handler(self, request, context)
        except VarstoreError as error:
            context.abort_with_status(status_for(error))
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

    return mapped


def _source(given: str, context: grpc.ServicerContext) -> str:
    return given or context.peer()


class VariableStoreService(pb_grpc.VariableStoreServicer):
    """``varstore.v1.VariableStore`` over a :class:`Store`."""

    def __init__(self, store: Store, hub: WatchHub | None = None) -> None:
        self._store = store
        self._hub = hub or WatchHub(store)

    # -- sessions ---------------------------------------------------------------------------

    def _session_message(self, state: SessionState) -> pb.Session:
        left = self._store.expires_in(state)
        expires_at = None if left is None else datetime.now(UTC) + timedelta(seconds=left)
        return session_to_proto(state, expires_at)

    @map_errors
    def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.ServicerContext
    ) -> pb.CreateSessionResponse:
        session_id = request.session_id or f"session_{uuid.uuid4().hex}"
        command = commands.CreateSession(
            session_id=session_id,
            metadata=dict(request.metadata),
            ttl_seconds=request.ttl_seconds,
            source=_source(request.source, context),
        )
        written = self._store.execute(session_id, command)
        return pb.CreateSessionResponse(
            header=header(session_id, written.position),
            session=self._session_message(written.result),
        )

    @map_errors
    def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.ServicerContext
    ) -> pb.GetSessionResponse:
        state = self._store.session(request.session_id)
        return pb.GetSessionResponse(
            header=header(state.session_id, state.position), session=self._session_message(state)
        )

    @map_errors
    def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.ServicerContext
    ) -> pb.ListSessionsResponse:
        if request.page_size < 0:
            raise ValidationError(f"page_size must be 0 or more, not {request.page_size}")
        states = [s for s in self._store.sessions() if s.session_id > request.page_token]
        next_token = ""
        if request.page_size and len(states) > request.page_size:
            states = states[: request.page_size]
            next_token = states[-1].session_id
        return pb.ListSessionsResponse(
            header=header("", 0),
            sessions=[self._session_message(s) for s in states],
            next_page_token=next_token,
        )

    @map_errors
    def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteSessionResponse:
        command = commands.DeleteSession(
            session_id=request.session_id,
            source=_source(request.source, context),
            metadata=dict(request.metadata),
        )
        written = self._store.execute(request.session_id, command)
        return pb.DeleteSessionResponse(header=header(request.session_id, written.position))

    # -- variables --------------------------------------------------------------------------

    @map_errors
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
        written = self._store.execute(request.session_id, command)
        return pb.RegisterVariableResponse(
            header=header(request.session_id, written.position),
            variable_id=written.result.id,
            variable=variable_to_proto(written.result),
        )

    def _state_for_read(
        self,
        request: pb.GetVariableRequest | pb.GetVariablesRequest | pb.ListVariablesRequest,
    ) -> SessionState:
        """The session now, or at the request's ``at_position`` / ``as_of``."""
        session_id = request.session_id
        if request.HasField("at_position"):
            position = request.at_position
            if position < 0:
                raise ValidationError(f"at_position must be 0 or more, not {position}")
            when = f"at position {position}"
        elif request.HasField("as_of"):
            moment = request.as_of.ToDatetime(tzinfo=UTC)
            position = self._store.position_at_time(session_id, moment)
            when = f"at {moment.isoformat()}"
        else:
            return self._store.session(session_id)
        state = self._store.state_at(session_id, position)
        if state is None or state.deleted:
            raise SessionNotFound(
                f"session {describe(session_id)} did not exist {when}",
                info={"session_id": session_id[:200], "position": str(position)},
            )
        return state

    @map_errors
    def GetVariable(
        self, request: pb.GetVariableRequest, context: grpc.ServicerContext
    ) -> pb.GetVariableResponse:
        state = self._state_for_read(request)
        variable = commands.find_variable(state, request.variable_identifier)
        return pb.GetVariableResponse(
            header=header(state.session_id, state.position), variable=variable_to_proto(variable)
        )

    @map_errors
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
        written = self._store.execute(request.session_id, command)
        return pb.SetVariableResponse(
            header=header(request.session_id, written.position),
            new_version=written.result.version,
            variable=variable_to_proto(written.result),
        )

    @map_errors
    def GetVariables(
        self, request: pb.GetVariablesRequest, context: grpc.ServicerContext
    ) -> pb.GetVariablesResponse:
        limit = self._store.limits.max_batch_size
        if len(request.variable_identifiers) > limit:
            raise LimitExceeded(
                f"{len(request.variable_identifiers)} identifiers asked for; the limit is {limit}",
                info={"limit": str(limit)},
            )
        state = self._state_for_read(request)
        response = pb.GetVariablesResponse(header=header(state.session_id, state.position))
        for identifier in request.variable_identifiers:
            variable = state.find(identifier)
            if variable is None:
                response.missing_variables.append(identifier)
            else:
                response.variables[identifier].CopyFrom(variable_to_proto(variable))
        return response

    @map_errors
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
        written = self._store.execute(request.session_id, command)
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

    @map_errors
    def ListVariables(
        self, request: pb.ListVariablesRequest, context: grpc.ServicerContext
    ) -> pb.ListVariablesResponse:
        state = self._state_for_read(request)
        pattern = request.pattern
        variables = [
            variable_to_proto(v)
            for v in state.by_name()
            if not pattern or fnmatch.fnmatchcase(v.name, pattern)
        ]
        return pb.ListVariablesResponse(
            header=header(state.session_id, state.position), variables=variables
        )

    @map_errors
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
        written = self._store.execute(request.session_id, command)
        return pb.DeleteVariableResponse(
            header=header(request.session_id, written.position),
            variable=variable_to_proto(written.result),
        )

    # -- the log ----------------------------------------------------------------------------

    @map_errors
    def GetVariableHistory(
        self, request: pb.GetVariableHistoryRequest, context: grpc.ServicerContext
    ) -> pb.GetVariableHistoryResponse:
        session_id, identifier = request.session_id, request.variable_identifier
        history = self._store.history(session_id)
        ids = history.ids_for(identifier)
        if not ids:
            raise VariableNotFound(
                f"variable {describe(identifier)} never existed in session {describe(session_id)}",
                info={"session_id": session_id[:200], "variable": identifier[:200]},
            )
        top = request.to_version if request.HasField("to_version") else None
        changes = [
            change
            for variable_id in ids
            for change in history.changes(variable_id)
            if change.version >= request.from_version and (top is None or change.version <= top)
        ]
        if request.newest_first:
            changes.reverse()
        query = (
            f"history|{session_id}|{identifier}|{request.from_version}|{top}|{request.newest_first}"
        )
        size = paging.page_size(request.page_size)
        offset = paging.decode_token(query, request.page_token)
        page = changes[offset : offset + size]
        more = offset + size < len(changes)
        published = self._store.published(session_id)
        return pb.GetVariableHistoryResponse(
            header=header(session_id, published.position if published else 0),
            changes=[change_to_proto(change) for change in page],
            next_page_token=paging.encode_token(query, offset + size) if more else "",
        )

    @map_errors
    def ReadEvents(
        self, request: pb.ReadEventsRequest, context: grpc.ServicerContext
    ) -> pb.ReadEventsResponse:
        session_id = request.session_id
        published = self._store.published(session_id)
        if published is None:
            raise SessionNotFound(f"session {describe(session_id)} not found")
        if request.from_position < 0:
            raise ValidationError(f"from_position must be 0 or more, not {request.from_position}")
        low = max(1, request.from_position)
        high = published.position
        if request.HasField("to_position"):
            high = min(high, request.to_position)
        query = f"events|{session_id}|{low}|{high}|{request.backwards}"
        size = paging.page_size(request.page_size)
        offset = paging.decode_token(query, request.page_token)
        if request.backwards:
            last = high - offset
            first = max(low, last - size + 1)
        else:
            first = low + offset
            last = min(high, first + size - 1)
        events = self._store.recorder.read_session(session_id, first, last) if first <= last else []
        if request.backwards:
            events.reverse()
        more = (first > low) if request.backwards else (last < high)
        return pb.ReadEventsResponse(
            header=header(session_id, published.position),
            events=[event_to_proto(event) for event in events],
            next_page_token=paging.encode_token(query, offset + size) if more and events else "",
        )

    @map_errors
    def RollbackVariable(
        self, request: pb.RollbackVariableRequest, context: grpc.ServicerContext
    ) -> pb.RollbackVariableResponse:
        session_id = request.session_id
        variable = commands.find_variable(
            self._store.session(session_id), request.variable_identifier
        )
        value = self._store.history(session_id).value_at_version(variable.id, request.to_version)
        if value is None:
            raise ValidationError(
                f"variable {variable.name!r} has no version {request.to_version} "
                f"(its versions are 0 to {variable.version})"
            )
        command = commands.RollbackVariable(
            session_id=session_id,
            variable_id=variable.id,
            to_version=request.to_version,
            value=value,
            metadata=dict(request.metadata),
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            source=_source(request.source, context),
        )
        written = self._store.execute(session_id, command)
        return pb.RollbackVariableResponse(
            header=header(session_id, written.position),
            new_version=written.result.version,
            variable=variable_to_proto(written.result),
        )

    @map_stream_errors
    def WatchSession(
        self, request: pb.WatchSessionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchSessionResponse]:
        yield from self._hub.watch(request, context)

    # -- copies of logs -----------------------------------------------------------------------

    @map_errors
    def ForkSession(
        self, request: pb.ForkSessionRequest, context: grpc.ServicerContext
    ) -> pb.ForkSessionResponse:
        return transfer.fork_session(self._store, request, _source(request.source, context))

    @map_stream_errors
    def ExportSession(
        self, request: pb.ExportSessionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportSessionResponse]:
        yield from transfer.export_session(self._store, request)

    @map_errors
    def ImportSession(
        self, request_iterator: Iterator[pb.ImportSessionRequest], context: grpc.ServicerContext
    ) -> pb.ImportSessionResponse:
        return transfer.import_session(self._store, request_iterator, _source("", context))
