"""The gRPC health service on the asyncio server, able to end its Watch streams.

``grpc.health.v1.Health``: Check answers a service's status (NOT_FOUND for one never
set); Watch sends the status, then each change. :meth:`Health.set` may be called from any
thread (the store reports the log's health from its own); :meth:`Health.shut_down`, on
the loop, sets every service NOT_SERVING for good and ends the open Watch streams with OK
once they have sent it, so a load balancer's watch does not hold up a graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["Health"]

#: A ServingStatus value (its stub type is not importable).
_Status: TypeAlias = Any


class Health(health_pb2_grpc.HealthServicer):
    """Health checks of one server, served on ``loop`` (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._status: dict[str, _Status] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed = asyncio.Event()
        self._ended = False

    def set(self, service: str, status: _Status) -> None:
        """Set ``service``'s status (from any thread; ignored once shut down)."""
        with contextlib.suppress(RuntimeError):  # a closed loop: the server has stopped
            self._loop.call_soon_threadsafe(self._apply, service, status)

    def shut_down(self) -> None:
        """Every service NOT_SERVING for good; open Watch streams end once told (on the
        loop)."""
        for service in self._status:
            self._status[service] = health_pb2.HealthCheckResponse.NOT_SERVING
        self._ended = True
        self._notify()

    def _apply(self, service: str, status: _Status) -> None:
        if not self._ended and self._status.get(service) != status:
            self._status[service] = status
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        last: _Status | None = None
        while True:
            changed = self._changed
            status = self._status.get(
                request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._ended:
                return
            await changed.wait()
