"""Projection state to protobuf messages (the server's only outward conversion)."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from varstore.projections import SessionState, VariableState
from varstore.types import to_proto
from varstore.v1 import varstore_pb2 as pb

__all__ = ["header", "session_to_proto", "timestamp", "variable_to_proto"]


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def header(session_id: str, position: int) -> pb.ResponseHeader:
    """The header saying which position a response was served at."""
    return pb.ResponseHeader(session_id=session_id, position=position)


def variable_to_proto(variable: VariableState) -> pb.Variable:
    """A ``Variable`` message for one variable's state."""
    return pb.Variable(
        id=variable.id,
        name=variable.name,
        type=variable.type,
        value=to_proto(variable.value),
        constraints=variable.constraints.to_proto(),
        metadata=variable.metadata,
        source=variable.source,
        version=variable.version,
        created_at=timestamp(variable.created_at),
        updated_at=timestamp(variable.updated_at),
        position=variable.position,
        created_position=variable.created_position,
    )


def session_to_proto(state: SessionState, expires_at: datetime | None) -> pb.Session:
    """A ``Session`` message for one session's state."""
    message = pb.Session(
        id=state.session_id,
        metadata=state.metadata,
        ttl_seconds=state.ttl_seconds,
        created_at=timestamp(state.created_at),
        updated_at=timestamp(state.updated_at),
        position=state.position,
        variable_count=len(state.variables),
    )
    if expires_at is not None:
        message.expires_at.CopyFrom(timestamp(expires_at))
    return message
