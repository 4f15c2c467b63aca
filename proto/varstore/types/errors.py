"""The error catalogue shared by the server and the client.

Each class names the gRPC status code it travels as and a stable ``reason`` (sent as the
``reason`` of a ``google.rpc.ErrorInfo`` detail), so the table that maps errors to statuses
is the classes themselves and can be read in both directions::

    VarstoreError
    ├── ValidationError      INVALID_ARGUMENT  (also a ValueError)
    ├── NotFound             NOT_FOUND         (also a KeyError)
    │   ├── SessionNotFound
    │   └── VariableNotFound
    ├── AlreadyExists        ALREADY_EXISTS
    ├── VersionConflict      ABORTED           (re-read and retry)
    ├── OutOfRange           OUT_OF_RANGE
    ├── LimitExceeded        RESOURCE_EXHAUSTED
    ├── FailedPrecondition   FAILED_PRECONDITION
    ├── Unauthenticated      UNAUTHENTICATED
    ├── PermissionDenied     PERMISSION_DENIED
    ├── Unavailable          UNAVAILABLE       (nothing was written: safe to retry)
    ├── DeadlineExceeded     DEADLINE_EXCEEDED (a write may or may not have happened)
    ├── Cancelled            CANCELLED
    ├── CommitOutcomeUnknown UNKNOWN           (a write may or may not have happened)
    └── InternalError        INTERNAL          (a bug in the server: report it)

Whether a retry is safe is part of the code: UNAVAILABLE means nothing was written, so any
call may be retried; after DEADLINE_EXCEEDED or COMMIT_OUTCOME_UNKNOWN a write may have
landed, so re-read before writing again (or retry with the same request id).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "CommitOutcomeUnknown",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InternalError",
    "LimitExceeded",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "SessionNotFound",
    "Unauthenticated",
    "Unavailable",
    "ValidationError",
    "VariableNotFound",
    "VarstoreError",
    "VersionConflict",
    "error_class_for",
]

_BY_REASON: dict[str, type[VarstoreError]] = {}
_BY_CODE: dict[grpc.StatusCode, type[VarstoreError]] = {}


class VarstoreError(Exception):
    """Root of every error varstore raises on purpose."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    reason: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str, *, info: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Machine-readable facts about the error, sent as ErrorInfo metadata.
        self.info: dict[str, str] = dict(info or {})

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _BY_REASON[cls.reason] = cls
        if cls.grpc_code != grpc.StatusCode.UNKNOWN:  # UNKNOWN alone says nothing: by reason only
            _BY_CODE.setdefault(cls.grpc_code, cls)

    def __str__(self) -> str:
        return self.message


class ValidationError(VarstoreError, ValueError):
    """A value, constraint, name or request is not acceptable (INVALID_ARGUMENT).

    ``violations`` maps a field (for batches: the variable identifier) to what is wrong.
    """

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: Mapping[str, str] | None = None,
        info: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, info=info)
        self.violations: dict[str, str] = dict(violations or {})


class NotFound(VarstoreError, KeyError):
    """Something named in the request does not exist (NOT_FOUND)."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class SessionNotFound(NotFound):
    """The session does not exist (or was deleted, or expired)."""

    reason = "SESSION_NOT_FOUND"


class VariableNotFound(NotFound):
    """No live variable has that id or name in the session."""

    reason = "VARIABLE_NOT_FOUND"


class AlreadyExists(VarstoreError):
    """A session or variable of that name already exists (ALREADY_EXISTS)."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class VersionConflict(VarstoreError):
    """A compare-and-set on a version or position failed (ABORTED): re-read and retry.

    ``info`` holds ``expected_version``/``current_version`` or
    ``expected_position``/``current_position``.
    """

    grpc_code = grpc.StatusCode.ABORTED
    reason = "VERSION_CONFLICT"

    @property
    def expected(self) -> int | None:
        """The version (or position) the caller expected."""
        return _int_or_none(self.info.get("expected_version", self.info.get("expected_position")))

    @property
    def current(self) -> int | None:
        """The version (or position) actually found."""
        return _int_or_none(self.info.get("current_version", self.info.get("current_position")))


class OutOfRange(VarstoreError):
    """A position beyond the end of the log was asked for (OUT_OF_RANGE)."""

    grpc_code = grpc.StatusCode.OUT_OF_RANGE
    reason = "OUT_OF_RANGE"


class LimitExceeded(VarstoreError):
    """A size or count limit was reached (RESOURCE_EXHAUSTED)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "LIMIT_EXCEEDED"


class FailedPrecondition(VarstoreError):
    """The system is not in a state the call needs (FAILED_PRECONDITION); fix that first."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Unauthenticated(VarstoreError):
    """The call carries no valid credentials (UNAUTHENTICATED)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(VarstoreError):
    """The caller's credentials do not grant this call (PERMISSION_DENIED)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unavailable(VarstoreError):
    """The server cannot be reached, cannot write its log or is shutting down
    (UNAVAILABLE). Nothing was written, so the call is safe to retry."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(VarstoreError):
    """The call's deadline passed before its answer came (DEADLINE_EXCEEDED); a write
    may or may not have been recorded."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Cancelled(VarstoreError):
    """The call was cancelled, usually by the caller (CANCELLED)."""

    grpc_code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class CommitOutcomeUnknown(VarstoreError):
    """The log's answer to a write was lost and could not be read back (UNKNOWN, reason
    ``COMMIT_OUTCOME_UNKNOWN``): the write may or may not have been recorded, so re-read
    before writing again. Not UNAVAILABLE, which promises that nothing was written."""

    grpc_code = grpc.StatusCode.UNKNOWN
    reason = "COMMIT_OUTCOME_UNKNOWN"


class InternalError(VarstoreError):
    """A bug in the server (INTERNAL); the server logged it. Never caused by bad input."""

    grpc_code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


def error_class_for(code: grpc.StatusCode, reason: str = "") -> type[VarstoreError]:
    """The error class for a status: by ErrorInfo reason first, then by code."""
    return _BY_REASON.get(reason) or _BY_CODE.get(code, VarstoreError)


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
