"""Pure folds from a session's events to its current state."""

from varstore.projections.fold import Fold, ProjectionError, apply_event, replay
from varstore.projections.history import Change, HistoryIndex, Lifetime
from varstore.projections.index import IndexCut, SessionIndex, Snapshots
from varstore.projections.index_codec import IndexEncodings
from varstore.projections.snapshot import (
    Checkpoint,
    CheckpointRejected,
    LogMark,
    SnapshotChain,
    SnapshotEncodings,
    open_checkpoint,
    seal_checkpoint,
)
from varstore.projections.state import (
    STAGED_EVENTS_KEY,
    SessionState,
    VariableState,
    without_staging,
)

__all__ = [
    "STAGED_EVENTS_KEY",
    "Change",
    "Checkpoint",
    "CheckpointRejected",
    "Fold",
    "HistoryIndex",
    "IndexCut",
    "IndexEncodings",
    "Lifetime",
    "LogMark",
    "ProjectionError",
    "SessionIndex",
    "SessionState",
    "SnapshotChain",
    "SnapshotEncodings",
    "Snapshots",
    "VariableState",
    "apply_event",
    "open_checkpoint",
    "replay",
    "seal_checkpoint",
    "without_staging",
]
