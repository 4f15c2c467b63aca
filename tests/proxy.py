"""A small real gRPC proxy in front of a varstore server, for tests: it passes every call on
as raw bytes and, as a test plans, fails it with UNAVAILABLE first, answers it too late or
fails it with COMMIT_OUTCOME_UNKNOWN after passing it on; it keeps every request it sees."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
from grpc_status import rpc_status

from varstore.client import CommitOutcomeUnknown
from varstore.types.status import status_for
from varstore.v1 import varstore_pb2 as pb

__all__ = ["FlakyProxy", "proxied"]

_METHODS = pb.DESCRIPTOR.services_by_name["VariableStore"].methods_by_name


class FlakyProxy(grpc.GenericRpcHandler):
    """Passes every VariableStore call on to ``target`` as raw bytes, except as planned:
    per method, a list of what the next calls do: "unavailable" (fail before passing it
    on), "late" (pass it on, then answer after ``late_by`` seconds: the caller has given
    up), "unknown" (pass it on, then fail with COMMIT_OUTCOME_UNKNOWN). Every request is
    kept, per method."""

    def __init__(self, target: str, late_by: float = 1.0) -> None:
        self.channel = grpc.insecure_channel(target)
        self.late_by = late_by
        self.plans: dict[str, list[str]] = defaultdict(list)
        self.requests: dict[str, list[bytes]] = defaultdict(list)
        self._lock = threading.Lock()

    def plan(self, method: str, *outcomes: str) -> None:
        self.plans[method].extend(outcomes)

    def request_ids(self, method: str, message: type[Any]) -> list[str]:
        return [message.FromString(raw).request_id for raw in self.requests[method]]

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        path = str(details.method)
        name = path.rsplit("/", 1)[-1]
        spec = _METHODS.get(name)
        if spec is None:
            return None
        if spec.client_streaming:
            upload: Any = self.channel.stream_unary(path)
            return grpc.stream_unary_rpc_method_handler(
                lambda requests, context: self._unary(name, upload, b"", context, requests)
            )
        if spec.server_streaming:
            stream: Any = self.channel.unary_stream(path)
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: self._stream(name, stream, request, context)
            )
        forward: Any = self.channel.unary_unary(path)
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._unary(name, forward, request, context)
        )

    def _unary(
        self,
        name: str,
        forward: Any,
        request: bytes,
        context: grpc.ServicerContext,
        requests: Iterator[bytes] | None = None,
    ) -> bytes:
        if requests is not None:  # a client stream: read it whole, then pass it on
            chunks = list(requests)
            request = b"".join(chunks[:1])  # the first chunk holds the request id
        outcome = self._next(name, request)
        if outcome == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the proxy is flaky")
        try:
            answer: bytes = forward(iter(chunks) if requests is not None else request)
        except grpc.RpcError as failure:
            status = rpc_status.from_call(failure)
            if status is not None:
                context.abort_with_status(rpc_status.to_status(status))
            context.abort(failure.code(), failure.details() or "")
        if outcome == "late":
            time.sleep(self.late_by)
        if outcome == "unknown":
            context.abort_with_status(status_for(CommitOutcomeUnknown("the disk hiccuped")))
        return answer

    def _next(self, name: str, request: bytes) -> str:
        with self._lock:
            self.requests[name].append(request)
            return self.plans[name].pop(0) if self.plans[name] else "pass"

    def _stream(
        self, name: str, stream: Any, request: bytes, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        if self._next(name, request) == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the proxy is flaky")
        try:
            yield from stream(request)
        except grpc.RpcError as failure:
            context.abort(failure.code(), failure.details() or "")


@contextmanager
def proxied(target: str) -> Iterator[tuple[FlakyProxy, str]]:
    """A :class:`FlakyProxy` to ``target`` serving on a free loopback port: yields it and
    the address to call; stops it however the block ends."""
    handler = FlakyProxy(target)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield handler, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
        handler.channel.close()
