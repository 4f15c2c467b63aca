"""Errors to gRPC statuses and back: the one place either side converts them.

The server turns a :class:`VarstoreError` into a status whose details carry a
``google.rpc.ErrorInfo`` (its reason and facts) and, for validation errors with
per-field violations, a ``google.rpc.BadRequest``. The client reads them in reverse.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from varstore.types.errors import ValidationError, VarstoreError, error_class_for

__all__ = ["DOMAIN", "error_from_rpc_error", "status_for"]

#: The ErrorInfo domain of every varstore error.
DOMAIN = "varstore.v1"


def status_for(error: VarstoreError) -> grpc.Status:
    """The gRPC status (code, message and rich details) that carries ``error``."""
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.info))
    ]
    if isinstance(error, ValidationError) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=text)
                for field, text in error.violations.items()
            ]
        )
        details.append(_pack(bad_request))
    status = status_pb2.Status(
        code=error.grpc_code.value[0], message=error.message, details=details
    )
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def error_from_rpc_error(error: grpc.RpcError) -> VarstoreError:
    """The :class:`VarstoreError` a failed call stands for (``VarstoreError`` if unknown)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    reason, info, violations = "", {}, {}
    status: status_pb2.Status | None = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            error_info = error_details_pb2.ErrorInfo()
            detail.Unpack(error_info)
            reason, info = error_info.reason, dict(error_info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations = {v.field: v.description for v in bad_request.field_violations}
    cls = error_class_for(code, reason)
    if issubclass(cls, ValidationError):
        return cls(message, violations=violations, info=info)
    return cls(message, info=info)


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
