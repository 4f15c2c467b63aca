"""Prometheus metrics (``--metrics HOST:PORT``, served at ``/metrics``).

Each server has its own registry, so servers in one process do not mix their numbers.

| metric | kind | labels |
|---|---|---|
| ``varstore_requests_total`` | counter | ``method``, ``code`` |
| ``varstore_request_duration_seconds`` | histogram | ``method`` (a stream: its whole life) |
| ``varstore_group_commit_size`` | histogram | (commands appended by one group commit) |
| ``varstore_append_duration_seconds`` | histogram | (one group commit's append, fsync included) |
| ``varstore_log_events`` | gauge | (events in the log: its last global position) |
| ``varstore_sessions`` | gauge | (live sessions) |
| ``varstore_watchers`` | gauge | (open WatchSession streams) |
| ``varstore_watchers_dropped_total`` | counter | (watchers dropped for falling behind) |
| ``varstore_log_writable`` | gauge | (1 while the log can be written, else 0) |
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from varstore.api.calls import Finish, HandlerCache, WrappingInterceptor
from varstore.api.store import Store
from varstore.api.watch import WatchHub

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The metrics of one server: an interceptor counts calls, the store reports commits,
    and the log, sessions and watchers are read when Prometheus scrapes."""

    def __init__(self, store: Store, hub: WatchHub) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "varstore_requests",
            "Calls answered, by method and status code.",
            ("method", "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "varstore_request_duration_seconds",
            "Time from a call's start to its status, by method.",
            ("method",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.group_size = Histogram(
            "varstore_group_commit_size",
            "Commands appended by one group commit (one transaction, one fsync).",
            buckets=_GROUP_BUCKETS,
            registry=self.registry,
        )
        self.append_latency = Histogram(
            "varstore_append_duration_seconds",
            "Time one group commit's append took, fsync included.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(store, hub))
        store.observe_commits(self._commit)
        self._http: WSGIServer | None = None

    def interceptor(self) -> HandlerCache:
        """The server interceptor that counts and times every call."""
        return WrappingInterceptor(self._around)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` (0: a free port); returns the port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop serving ``/metrics``."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def _commit(self, appends: int, seconds: float) -> None:
        self.group_size.observe(appends)
        self.append_latency.observe(seconds)

    def _around(self, method: str, request: Any, context: grpc.ServicerContext) -> Finish:
        started = time.perf_counter()

        def finish(code: grpc.StatusCode) -> None:
            self.requests.labels(method, code.name).inc()
            self.latency.labels(method).observe(time.perf_counter() - started)

        return finish


class _StateCollector(Collector):
    """Gauges read at scrape time from the store and the watch hub."""

    def __init__(self, store: Store, hub: WatchHub) -> None:
        self._store = store
        self._hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        store = self._store
        yield GaugeMetricFamily(
            "varstore_log_events",
            "Events in the log (its last global position).",
            value=store.projector.global_position,
        )
        yield GaugeMetricFamily(
            "varstore_sessions",
            "Live sessions.",
            value=store.live_sessions.count,
        )
        yield GaugeMetricFamily(
            "varstore_watchers", "Open WatchSession streams.", value=self._hub.watcher_count
        )
        yield CounterMetricFamily(
            "varstore_watchers_dropped",
            "Watchers dropped for falling behind.",
            value=self._hub.dropped_watchers,
        )
        yield GaugeMetricFamily(
            "varstore_log_writable",
            "1 while the event log can be written, else 0.",
            value=1 if store.writable else 0,
        )
