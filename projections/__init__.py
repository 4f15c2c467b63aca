"""Pure folds from a session's events to its current state."""

from varstore.projections.fold import ProjectionError, apply_event, replay
from varstore.projections.history import Change, SessionHistory
from varstore.projections.index import SessionIndex
from varstore.projections.snapshot import decode_sessions, encode_sessions
from varstore.projections.state import SessionState, VariableState

__all__ = [
    "Change",
    "ProjectionError",
    "SessionHistory",
    "SessionIndex",
    "SessionState",
    "VariableState",
    "apply_event",
    "decode_sessions",
    "encode_sessions",
    "replay",
]
