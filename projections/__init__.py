"""Pure folds from a session's events to its current state."""

from varstore.projections.fold import ProjectionError, apply_event, replay
from varstore.projections.state import SessionState, VariableState

__all__ = ["ProjectionError", "SessionState", "VariableState", "apply_event", "replay"]
