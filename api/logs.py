"""The server's logs: text or JSON lines, and one line per request.

``--log-format json`` makes every record one JSON object on one line (``time``,
``level``, ``logger``, ``message``, the request fields below, ``exception`` with its
traceback). The request log (logger ``varstore.requests``) writes one record per call when
it ends: ``method``, ``session`` (the request's ``session_id``, if it has one), ``code``,
``latency_ms``, ``identity`` (who the auth interceptor found) and ``peer``. It never holds
a token or any other request metadata. Request lines are INFO with the JSON format and
DEBUG with the text one (``--log-level DEBUG`` shows them).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final, Literal

import grpc

from varstore.api.auth import current_identity
from varstore.api.calls import Finish, WrappingInterceptor

__all__ = ["REQUEST_FIELDS", "JsonFormatter", "RequestLogInterceptor", "configure_logging"]

#: The fields every request line has beside the message.
REQUEST_FIELDS: Final = ("method", "session", "code", "latency_ms", "identity", "peer")

requests_log = logging.getLogger("varstore.requests")


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(log_format: Literal["text", "json"], level: str) -> None:
    """Send the server's logs to stderr in ``log_format`` at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RequestLogInterceptor(WrappingInterceptor):
    """Logs one line per call when it ends, at ``level`` (see the module docstring)."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        super().__init__(self._around)
        self._level = level

    def _around(self, method: str, request: Any, context: grpc.ServicerContext) -> Finish | None:
        if not requests_log.isEnabledFor(self._level):
            return None
        started = time.perf_counter()
        session = getattr(request, "session_id", "")

        def finish(code: grpc.StatusCode) -> None:
            latency_ms = round((time.perf_counter() - started) * 1000, 3)
            identity = current_identity()
            fields = {
                "method": method,
                "session": session if isinstance(session, str) else "",
                "code": code.name,
                "latency_ms": latency_ms,
                "identity": identity.name if identity is not None else "",
                "peer": context.peer(),
            }
            requests_log.log(
                self._level,
                "%s %s %.3f ms",
                method.rsplit("/", 1)[-1],
                code.name,
                latency_ms,
                extra=fields,
            )

        return finish
