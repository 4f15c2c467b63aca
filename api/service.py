"""The gRPC front: each handler turns a request into a command or a read, and the
answer into a response. Errors are not handled here: :func:`map_errors` turns every
:class:`VarstoreError` into its status in one place."""

from __future__ import annotations

import fnmatch
import functools
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc

from varstore.api import commands
from varstore.api.convert import header, session_to_proto, variable_to_proto
from varstore.api.store import Store
from varstore.projections import SessionState
from varstore.types import (
    LimitExceeded,
    ValidationError,
    VarstoreError,
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


def _source(given: str, context: grpc.ServicerContext) -> str:
    return given or context.peer()


class VariableStoreService(pb_grpc.VariableStoreServicer):
    """``varstore.v1.VariableStore`` over a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store

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

    @map_errors
    def GetVariable(
        self, request: pb.GetVariableRequest, context: grpc.ServicerContext
    ) -> pb.GetVariableResponse:
        state = self._store.session(request.session_id)
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
        state = self._store.session(request.session_id)
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
        )

    @map_errors
    def ListVariables(
        self, request: pb.ListVariablesRequest, context: grpc.ServicerContext
    ) -> pb.ListVariablesResponse:
        state = self._store.session(request.session_id)
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
        return pb.DeleteVariableResponse(header=header(request.session_id, written.position))
