"""Watch delivery lag across servers for ``bench_cluster.py``: a writer through server A,
a WatchSession on server B (and one on A, the same-server reference), all in this process.

Lag = when the watcher receives an event minus when the writer received that write's
answer (``time.monotonic_ns``, one process, one clock); negative when B's stream beats A's
answer. "from call start" measures from when the write was sent instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from benchlib import CALL_TIMEOUT, Child, create_session, markdown_table, open_channel, p50_p99
from clusterlib import session_position, wait_for_session

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

LAG_SESSION = "lag"


@dataclass
class Watcher:
    """A WatchSession stream in a thread: when each position arrived, and what went wrong."""

    address: str
    from_position: int
    arrived: dict[int, int] = field(default_factory=dict)
    error: str = ""
    ready: threading.Event = field(default_factory=threading.Event)
    last: int = 0  # the writer's last position, set before ``done``
    done: threading.Event = field(default_factory=threading.Event)
    stream: Any = None  # the call (an iterator of responses that can be cancelled)

    def run(self) -> None:
        """Watch from ``from_position`` until the writer's last position has arrived."""
        channel = open_channel(self.address)
        try:
            stub = varstore_pb2_grpc.VariableStoreStub(channel)
            request = pb.WatchSessionRequest(
                session_id=LAG_SESSION, from_position=self.from_position, progress_interval_ms=100
            )
            self.stream = stub.WatchSession(request, timeout=120)
            seen = self.from_position
            for message in self.stream:
                now = time.monotonic_ns()
                kind = message.WhichOneof("kind")
                if kind == "event":
                    position = message.event.event.position
                    if position != seen + 1:
                        self.error = self.error or f"position {position} after {seen}"
                    seen = position
                    self.arrived.setdefault(position, now)
                elif kind == "progress":
                    self.ready.set()
                if self.done.is_set() and seen >= self.last:
                    break
            self.stream.cancel()
        except grpc.RpcError as failure:
            if failure.code() != grpc.StatusCode.CANCELLED:
                self.error = self.error or f"{failure.code()}: {failure.details()}"
        finally:
            self.ready.set()
            channel.close()


@dataclass(frozen=True)
class LagRow:
    """One watcher's lags."""

    watcher: str
    writes: int
    writes_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    from_start_p99_ms: float
    delivered: int
    failed_writes: int
    error: str


def measure_watch_lag(a: Child, b: Child, seconds: float) -> list[LagRow]:
    """A writer through A for ``seconds``; watchers on B (across) and on A (reference)."""
    channel = open_channel(a.address)
    try:
        stub = varstore_pb2_grpc.VariableStoreStub(channel)
        create_session(stub, LAG_SESSION, ["x"])
        start = session_position(a.address, LAG_SESSION)
        wait_for_session(b.address, LAG_SESSION, start)
        watchers = {"server B (writes through A)": Watcher(b.address, start)}
        watchers["server A (same server, reference)"] = Watcher(a.address, start)
        threads = [threading.Thread(target=w.run, daemon=True) for w in watchers.values()]
        for thread in threads:
            thread.start()
        for watcher in watchers.values():
            watcher.ready.wait(30)
        sent: dict[int, tuple[int, int]] = {}
        requests = [
            pb.SetVariableRequest(
                session_id=LAG_SESSION, variable_identifier="x", value=pb.Value(integer_value=i)
            )
            for i in range(1, 17)
        ]
        failed = 0
        began = time.monotonic()
        i = 0
        while time.monotonic() < began + seconds:
            call_start = time.monotonic_ns()
            try:
                response = stub.SetVariable(requests[i % 16], timeout=CALL_TIMEOUT)
            except grpc.RpcError:  # e.g. the database restarted: nothing was recorded
                failed += 1
                time.sleep(0.05)
                continue
            finally:
                i += 1
            sent[int(response.header.position)] = (call_start, time.monotonic_ns())
        elapsed = time.monotonic() - began
    finally:
        channel.close()
    if not sent:
        raise RuntimeError(f"no write through {a.address} succeeded in {seconds:g} s")
    last = max(sent)
    for watcher in watchers.values():
        watcher.last = last
        watcher.done.set()
    deadline = time.monotonic() + 20
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    rows = []
    for name, watcher in watchers.items():
        if watcher.stream is not None:
            watcher.stream.cancel()
        lags = [
            watcher.arrived[p] - answer for p, (_, answer) in sent.items() if p in watcher.arrived
        ]
        from_start = [watcher.arrived[p] - s for p, (s, _) in sent.items() if p in watcher.arrived]
        p50, p99 = p50_p99(lags) if lags else (0, 0)
        rows.append(
            LagRow(
                name,
                len(sent),
                len(sent) / elapsed,
                p50 / 1e6,
                p99 / 1e6,
                max(lags, default=0) / 1e6,
                p50_p99(from_start)[1] / 1e6 if from_start else 0.0,
                len(lags),
                failed,
                watcher.error,
            )
        )
    return rows


def lag_table(rows: Sequence[LagRow]) -> str:
    """The watchers as a markdown table."""
    header = (
        "watcher on",
        "writes",
        "writes/s",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
        "from call start p99 ms",
        "delivered",
    )
    cells = [
        (
            r.watcher,
            f"{r.writes:,}" + (f" ({r.failed_writes} failed)" if r.failed_writes else ""),
            f"{r.writes_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.max_ms:.2f}",
            f"{r.from_start_p99_ms:.2f}",
            f"{r.delivered:,}/{r.writes:,}" + (f" **{r.error}**" if r.error else ""),
        )
        for r in rows
    ]
    return markdown_table(header, "lrrrrrrl", cells)
