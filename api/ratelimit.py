"""A per-client request rate: a token bucket per caller, checked by a server interceptor.

Each caller (:func:`caller_identity`) has a bucket that holds up to twice
``max_requests_per_second`` tokens and refills at that rate; every call of the
VariableStore service takes one token (a stream is one call), and a call that finds the
bucket empty is answered RESOURCE_EXHAUSTED naming ``max_requests_per_second``, with the
seconds until a token is back in the ErrorInfo (``retry_after_seconds``), before its
handler runs: a refused call reads and writes nothing. Health checks and reflection are
not counted. Invariant: over any window of T seconds a caller gets at most
``rate * T + 2 * rate`` calls through.

Buckets are kept for the most recent :data:`MAX_CALLERS` callers only; a forgotten
caller comes back to a full bucket, which is what an idle one would have had anyway
once its bucket refilled (2 s), so forgetting only ever gives a burst back early.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import grpc
from cachetools import LRUCache

from varstore.api.calls import HandlerCache, wrap
from varstore.api.limits import exceeded
from varstore.v1 import varstore_pb2 as pb

__all__ = ["MAX_CALLERS", "RateLimitInterceptor", "TokenBucket", "caller_identity"]

#: Callers whose buckets are kept (least recently seen forgotten first).
MAX_CALLERS: Final = 65_536
#: The service whose calls are counted.
_COUNTED = "/" + pb.DESCRIPTOR.services_by_name["VariableStore"].full_name + "/"

# A string: grpc's classes are generic only in its type stubs.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def caller_identity(context: Any) -> str:
    """Who is calling, for the rate limit: the peer's address without its port (a client
    opening one connection per call is still one client). The one place to change when
    calls carry an authenticated identity."""
    peer = context.peer() or "unknown"
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, sep, port = address.rpartition(":")
        if sep and port.isdigit():
            return f"{kind}:{host}"
    return peer


class TokenBucket:
    """Tokens refilled at ``rate`` per second up to ``capacity``; a call takes one."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> float:
        """0 when a token was taken; else the seconds until one is back (none taken)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimitInterceptor(HandlerCache):
    """Refuses a caller's calls beyond ``per_second`` (bursts up to twice that); 0 turns it
    off. Wrapped handlers are kept per method, as the error interceptor keeps them."""

    def __init__(
        self,
        per_second: int,
        *,
        identity: Callable[[Any], str] = caller_identity,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.per_second = per_second
        self._identity = identity
        self._monotonic = monotonic
        # Lock: guards _buckets (an LRU reorders on every read) and the buckets' tokens.
        self._bucket_lock = threading.Lock()
        self._buckets: LRUCache[str, TokenBucket] = LRUCache(MAX_CALLERS)

    def wrap(self, handler: Handler, method: str) -> Handler:
        """``handler`` admitted first (methods of the VariableStore service only)."""
        if not self.per_second or not method.startswith(_COUNTED):
            return handler
        return wrap(handler, method, self._admit)

    def wait_for(self, caller: str) -> float:
        """Take a token for ``caller``: 0 if one was there, else the seconds to wait."""
        now = self._monotonic()
        with self._bucket_lock:
            bucket = self._buckets.get(caller)
            if bucket is None:
                bucket = TokenBucket(self.per_second, 2 * self.per_second, now)
                self._buckets[caller] = bucket
            return bucket.take(now)

    def _admit(self, method: str, request: Any, context: Any) -> None:
        """Return if the caller may make this call; else raise RESOURCE_EXHAUSTED."""
        wait = self.wait_for(self._identity(context))
        if wait:
            raise exceeded(
                "max_requests_per_second",
                self.per_second,
                f"too many requests from this client; retry in {wait:.3f} s",
                retry_after_seconds=f"{wait:.3f}",
            )
