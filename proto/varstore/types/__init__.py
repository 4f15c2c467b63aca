"""varstore's type system, shared by the server (to validate) and the client (to convert):
type names, the value codec, constraints, and the error catalogue with its status table."""

from varstore.types.constraints import Constraints
from varstore.types.errors import (
    AlreadyExists,
    LimitExceeded,
    NotFound,
    OutOfRange,
    SessionNotFound,
    Unavailable,
    ValidationError,
    VariableNotFound,
    VarstoreError,
    VersionConflict,
)
from varstore.types.values import (
    TYPE_NAMES,
    PyValue,
    RuleViolation,
    coerce,
    describe,
    from_proto,
    to_proto,
)

__all__ = [
    "TYPE_NAMES",
    "AlreadyExists",
    "Constraints",
    "LimitExceeded",
    "NotFound",
    "OutOfRange",
    "PyValue",
    "RuleViolation",
    "SessionNotFound",
    "Unavailable",
    "ValidationError",
    "VariableNotFound",
    "VarstoreError",
    "VersionConflict",
    "coerce",
    "describe",
    "from_proto",
    "to_proto",
]
