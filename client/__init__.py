"""The Python client: session contexts (sync and asyncio) with a read cache.

from varstore.client import connect
with connect("127.0.0.1:50051") as client:
    ctx = client.session("demo")
    ctx.register_variable("temperature", "float", 0.7, constraints={"min": 0, "max": 2})
    ctx.get_variable("temperature")          # 0.7

Several servers sharing one log: ``connect("h1:50051,h2:50051")`` (or a list, or one DNS
name with several records). Calls go round robin to the servers that answer, a call
whose server went away is retried on another, watches resume there, and every read is
answered by a server that has applied what this client wrote (read-your-writes).
"""

from varstore.client._async import (
    AsyncClient,
    AsyncSessionContext,
    AsyncSessionView,
    AsyncWatchStream,
    aconnect,
)
from varstore.client._core import MISSING, ChangeInfo, SessionInfo, VariableInfo
from varstore.client._sync import Client, SessionContext, SessionView, WatchStream, connect
from varstore.client._watch import WatchInitial, WatchItem, WatchProgress, WatchUpdate
from varstore.types.errors import (
    AlreadyExists,
    Cancelled,
    CommitOutcomeUnknown,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    LimitExceeded,
    NotFound,
    OutOfRange,
    PermissionDenied,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
    ValidationError,
    VariableNotFound,
    VarstoreError,
    VersionConflict,
)

__all__ = [
    "MISSING",
    "AlreadyExists",
    "AsyncClient",
    "AsyncSessionContext",
    "AsyncSessionView",
    "AsyncWatchStream",
    "Cancelled",
    "ChangeInfo",
    "Client",
    "CommitOutcomeUnknown",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InternalError",
    "LimitExceeded",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "SessionContext",
    "SessionInfo",
    "SessionNotFound",
    "SessionView",
    "Unauthenticated",
    "Unavailable",
    "ValidationError",
    "VariableInfo",
    "VariableNotFound",
    "VarstoreError",
    "VersionConflict",
    "WatchInitial",
    "WatchItem",
    "WatchProgress",
    "WatchStream",
    "WatchUpdate",
    "aconnect",
    "connect",
]
