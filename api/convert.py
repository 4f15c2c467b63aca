"""Projection state to protobuf messages (the server's only outward conversion)."""

from __future__ import annotations

import functools
import threading
from datetime import datetime

from cachetools import LRUCache
from google.protobuf.timestamp_pb2 import Timestamp

from varstore.projections import SessionState, VariableState
from varstore.types import Constraints, to_proto
from varstore.v1 import varstore_pb2 as pb

__all__ = ["header", "session_to_proto", "timestamp", "variable_to_proto"]


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime (microsecond precision, as stored).

    Built from the parts: ``Timestamp.FromDatetime`` costs several times more, and every
    variable in a response carries two of these.
    """
    whole = moment.replace(microsecond=0)
    return Timestamp(seconds=int(whole.timestamp()), nanos=moment.microsecond * 1000)


def _constraints_message(constraints: Constraints) -> pb.Constraints:
    # Choices equal in Python but not on the wire (0 == 0.0 == False) must not share a
    # cached message: the key holds each choice's type beside the constraints.
    return _cached_constraints_message(constraints, tuple(map(type, constraints.choices)))


@functools.lru_cache(maxsize=4096)
def _cached_constraints_message(constraints: Constraints, _: tuple[type, ...]) -> pb.Constraints:
    # Constraints are immutable and shared by every version of a variable; message
    # constructors copy sub-messages, so one cached message can serve every response.
    return constraints.to_proto()


def header(session_id: str, position: int) -> pb.ResponseHeader:
    """The header saying which position a response was served at."""
    return pb.ResponseHeader(session_id=session_id, position=position)


#: Messages already built for variable states, keyed by the state's identity. Each entry
#: holds its state, so the id cannot be reused while the entry lives.
_messages: LRUCache[int, tuple[VariableState, pb.Variable]] = LRUCache(maxsize=20_000)
_messages_lock = threading.Lock()


def variable_to_proto(variable: VariableState) -> pb.Variable:
    """A ``Variable`` message for one variable's state.

    States are immutable and read far more often than they change, so the message is built
    once per state and reused (callers copy it into their response; never mutate it).
    """
    with _messages_lock:
        cached = _messages.get(id(variable))
    if cached is not None and cached[0] is variable:
        return cached[1]
    message = _build_variable(variable)
    with _messages_lock:
        _messages[id(variable)] = (variable, message)
    return message


def _build_variable(variable: VariableState) -> pb.Variable:
    return pb.Variable(
        id=variable.id,
        name=variable.name,
        type=variable.type,
        value=to_proto(variable.value),
        constraints=_constraints_message(variable.constraints),
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
