"""Watch fan-out: write throughput and delivery lag with 0, 1, 10 and 100 watchers.

What it measures
----------------
One ``python -m varstore.api.cli serve --db <tmp>/w.db --listen 127.0.0.1:0`` child
process (default ``--sync full``: every acknowledged write is fsynced). Each phase uses a
fresh session ``watch-N`` with one integer variable ``x`` and runs:

1. **warm-up**: the writer (one thread, one channel, in this process) does a few
   ``SetVariable`` calls on ``x``; the log then stands at position ``P``.
2. **watchers**: ``N`` watchers, each its own thread with its own channel, spread over
   up to 4 spawned client processes, each call the generated stub's
   ``VariableStoreStub.WatchSession(session_id, from_position=P)``. A watcher is ready
   when its first ``WatchProgress`` arrives (the stream has caught up); the writes start
   only once every watcher is ready.
3. **window**: the writer does sequential ``SetVariable`` calls on ``x`` (a new value
   each time) for a fixed window (3 s; ``--quick``: 1 s). Write latency is per call
   (``perf_counter_ns``); writes/s = calls / elapsed.
4. **drain**: each watcher reads until it has seen the writer's last position (or a
   deadline passes, then its call is cancelled). For every ``WatchEvent`` it records
   receipt time (``time.time_ns()``) minus the event's ``recorded_at``: the delivery lag.
   Both clocks are this machine's wall clock. ``recorded_at`` is stamped by the server
   when it handles the write, before the commit's fsync, so the lag includes the commit
   (about a write's latency) plus fan-out and the stream.

"delivered/expected" sums, over all watchers, the events they received against writes x
watchers; a shortfall (or a watcher error, or an out-of-order or repeated position) is
reported. Lag percentiles pool every event of every watcher of the phase (nearest rank).

How to read it
--------------
The 0-watcher row is the reference: ``vs 0`` is the phase's writes/s over it (1.00x =
watchers cost the writer nothing). The machine's cores are shared by the server, the
writer and the watcher processes, so with many watchers part of any slowdown is the
watchers' own client CPU, not the server's.

Usage: ``.venv/bin/python bench/bench_watch.py [--quick] [--json]`` from the repository
root (``bench/`` must be on ``sys.path`` for ``bench_grpc``, which running the file does).
The default run takes about 30 s, ``--quick`` about 15 s. Progress goes to stderr. Exit
status 1 if a watcher failed or missed events, or a write failed.
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import multiprocessing.connection
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from bench_grpc import (  # bench/ is sys.path[0] when this file runs
    CALL_TIMEOUT,
    Child,
    machine,
    open_channel,
    percentile,
    progress,
    start_child,
    stop_processes,
)

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

WATCHERS: tuple[int, ...] = (0, 1, 10, 100)
MAX_PROCESSES = 4
WARMUP_WRITES = 50
READY_TIMEOUT = 30.0  # seconds for every watcher to connect and catch up
DRAIN_TIMEOUT = 20.0  # seconds after the window for watchers to see the last write
VARIABLE = "x"
PROGRESS_MS = 100


@dataclass(frozen=True)
class WatchJob:
    """What a client process runs: ``threads`` watchers of one session from a position."""

    address: str
    session_id: str
    from_position: int
    threads: int
    deadline: float  # time.monotonic(): every watch call is cancelled by then


@dataclass
class WatcherResult:
    """One watcher: events it received, their lags, and what went wrong."""

    received: int = 0
    lags_ns: array.array[int] = field(default_factory=lambda: array.array("q"))
    error: str = ""


@dataclass(frozen=True)
class ProcessReport:
    """A client process's watchers, summed; lags as raw ``int64`` bytes."""

    received: list[int]
    lags: bytes
    errors: list[str]


def watch(
    job: WatchJob,
    ready: threading.Semaphore,
    last: list[int],
    done: threading.Event,
    result: WatcherResult,
    calls: list[grpc.RpcContext],
    lock: threading.Lock,
) -> None:
    """One watcher: stream events after ``job.from_position`` until ``last[0]`` is seen."""
    channel = open_channel(job.address)
    announced = False
    try:
        stub = varstore_pb2_grpc.VariableStoreStub(channel)
        request = pb.WatchSessionRequest(
            session_id=job.session_id,
            from_position=job.from_position,
            progress_interval_ms=PROGRESS_MS,  # wakes an idle watcher when the writer stops
        )
        stream = stub.WatchSession(request, timeout=max(1.0, job.deadline - time.monotonic()))
        with lock:
            calls.append(stream)
        clock = time.time_ns
        lags = result.lags_ns
        seen = job.from_position
        for message in stream:
            received_ns = clock()
            kind = message.WhichOneof("kind")
            if kind == "event":
                stamp = message.event.event.recorded_at
                lags.append(received_ns - (stamp.seconds * 1_000_000_000 + stamp.nanos))
                position = message.event.event.position
                if position != seen + 1:
                    result.error = result.error or f"position {position} after {seen}"
                seen = position
                result.received += 1
            elif kind == "progress" and not announced:
                announced = True
                ready.release()
            if done.is_set() and seen >= last[0]:
                break
        stream.cancel()
    except grpc.RpcError as failure:
        if failure.code() != grpc.StatusCode.CANCELLED or not done.is_set():
            result.error = result.error or f"{failure.code()}: {failure.details()}"
    finally:
        if not announced:
            ready.release()  # do not hold the start up; the error is reported
        channel.close()


def watcher_process(connection: multiprocessing.connection.Connection) -> None:
    """A client worker: start a job's watchers, say "ready", take the last position to wait
    for, report; stop on None."""
    while True:
        job: WatchJob | None = connection.recv()
        if job is None:
            return
        ready = threading.Semaphore(0)
        last = [0]  # 0 until the writer is done
        done = threading.Event()
        lock = threading.Lock()
        calls: list[grpc.RpcContext] = []
        results = [WatcherResult() for _ in range(job.threads)]
        threads = [
            threading.Thread(
                target=watch, args=(job, ready, last, done, result, calls, lock), daemon=True
            )
            for result in results
        ]
        for thread in threads:
            thread.start()
        for _ in threads:
            ready.acquire(timeout=max(0.0, job.deadline - time.monotonic()))
        connection.send("ready")
        last[0] = connection.recv()
        done.set()
        for thread in threads:
            thread.join(timeout=max(0.0, job.deadline - time.monotonic()))
        with lock:
            for call in calls:
                call.cancel()  # stragglers past the deadline
        for thread in threads:
            thread.join(timeout=5)
        lags = array.array("q")
        for result in results:
            lags.extend(result.lags_ns)
        connection.send(
            ProcessReport(
                [r.received for r in results],
                lags.tobytes(),
                [
                    r.error or ("did not finish" if t.is_alive() else "")
                    for r, t in zip(results, threads, strict=True)
                ],
            )
        )


class WatcherPool:
    """Spawned client processes, started once, reused by every phase."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.links: list[multiprocessing.connection.Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(processes):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=watcher_process, args=(theirs,), name=f"bench-watch-{index}", daemon=True
            )
            process.start()
            theirs.close()
            self.links.append(ours)
            self._processes.append(process)

    def close(self) -> None:
        """Tell every process to stop, and wait for it."""
        stop_processes(self.links, self._processes)


@dataclass(frozen=True)
class Phase:
    """One row: the writer's figures and what the watchers received."""

    watchers: int
    writes: int
    write_errors: int
    writes_per_s: float
    write_p50_ms: float
    write_p99_ms: float
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_max_ms: float | None
    delivered: int
    expected: int
    watcher_errors: list[str]


def set_up(stub: varstore_pb2_grpc.VariableStoreStub, session_id: str) -> None:
    """A session holding one integer variable ``x``."""
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id), timeout=CALL_TIMEOUT)
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id,
            name=VARIABLE,
            type="integer",
            initial_value=pb.Value(integer_value=0),
        ),
        timeout=CALL_TIMEOUT,
    )


def run_phase(
    watchers: int,
    stub: varstore_pb2_grpc.VariableStoreStub,
    address: str,
    pool: WatcherPool,
    window: float,
) -> Phase:
    """Warm up, start ``watchers`` watchers, write for ``window`` seconds, collect."""
    session_id = f"watch-{watchers}"
    set_up(stub, session_id)
    requests = [
        pb.SetVariableRequest(
            session_id=session_id, variable_identifier=VARIABLE, value=pb.Value(integer_value=i)
        )
        for i in range(1, 17)
    ]
    position = 0
    for i in range(WARMUP_WRITES):
        position = stub.SetVariable(requests[i % 16], timeout=CALL_TIMEOUT).header.position

    links = pool.links[: min(MAX_PROCESSES, watchers)]
    deadline = time.monotonic() + READY_TIMEOUT + window + DRAIN_TIMEOUT
    for index, link in enumerate(links):
        share = watchers // len(links) + (index < watchers % len(links))
        link.send(WatchJob(address, session_id, position, share, deadline))
    for link in links:
        if not link.poll(READY_TIMEOUT + 5):
            raise RuntimeError("a watcher process did not get ready")
        link.recv()

    latencies: list[int] = []
    errors = 0
    clock = time.perf_counter_ns
    began = clock()
    until = began + int(window * 1e9)
    end = began
    last = position
    i = 0
    while end < until:  # bounded: every call has a deadline
        start = clock()
        try:
            last = stub.SetVariable(requests[i % 16], timeout=CALL_TIMEOUT).header.position
        except grpc.RpcError:
            errors += 1
        end = clock()
        latencies.append(end - start)
        i += 1
    elapsed = end - began
    writes = last - position

    received: list[int] = []
    lags = array.array("q")
    problems: list[str] = []
    for link in links:
        link.send(last)
    for link in links:
        if not link.poll(max(0.0, deadline - time.monotonic()) + 15):
            raise RuntimeError("a watcher process did not report back")
        report: ProcessReport = link.recv()
        received += report.received
        lags.frombytes(report.lags)
        problems += [e for e in report.errors if e]
    for count in received:
        if count != writes:
            problems.append(f"a watcher received {count} of {writes} events")
    ordered_writes = sorted(latencies)
    ordered_lags = sorted(lags)

    def lag(q: float) -> float | None:
        return percentile(ordered_lags, q) / 1e6 if ordered_lags else None

    return Phase(
        watchers=watchers,
        writes=len(latencies) - errors,
        write_errors=errors,
        writes_per_s=(len(latencies) - errors) / (elapsed / 1e9),
        write_p50_ms=percentile(ordered_writes, 0.50) / 1e6,
        write_p99_ms=percentile(ordered_writes, 0.99) / 1e6,
        lag_p50_ms=lag(0.50),
        lag_p99_ms=lag(0.99),
        lag_max_ms=ordered_lags[-1] / 1e6 if ordered_lags else None,
        delivered=sum(received),
        expected=writes * watchers,
        watcher_errors=problems,
    )


def markdown(phases: list[Phase], window: float, info: dict[str, str]) -> str:
    """The table, how it was measured, and the machine."""
    reference = phases[0].writes_per_s
    lines = [
        (
            "| watchers | writes/s | vs 0 | write p50 ms | write p99 ms | lag p50 ms "
            "| lag p99 ms | lag max ms | delivered/expected |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for p in phases:
        if p.watchers == 0:
            delivered = "- (reference)"
        else:
            short = p.expected - p.delivered
            delivered = f"{p.delivered:,}/{p.expected:,}" + (
                "" if short == 0 and not p.watcher_errors else f" **short {short:,}**"
            )
        errors = f" ({p.write_errors} errors)" if p.write_errors else ""
        lines.append(
            f"| {p.watchers} | {p.writes_per_s:,.0f}{errors} | "
            f"{p.writes_per_s / reference:.2f}x | {p.write_p50_ms:.2f} | {p.write_p99_ms:.2f} | "
            f"{ms(p.lag_p50_ms)} | {ms(p.lag_p99_ms)} | {ms(p.lag_max_ms)} | {delivered} |"
        )
    lines += [
        "",
        (
            f"Measured: per row a fresh session, {WARMUP_WRITES} warm-up writes, then N watchers "
            f"(WatchSession stubs, one thread and channel each, over up to {MAX_PROCESSES} "
            f"client processes) caught up before one writer thread does sequential SetVariable "
            f"for {window:g} s; lag = watcher receipt (time.time_ns) - event recorded_at, pooled "
            f"over all events of all watchers. Server: varstore serve --sync full, own process, "
            f"127.0.0.1."
        ),
    ]
    for p in phases:
        for problem in p.watcher_errors[:5]:
            lines.append(f"- {p.watchers} watchers: {problem}")
    lines += ["", "Machine: " + "; ".join(f"{key} {value}" for key, value in info.items())]
    return "\n".join(lines)


def run(window: float, as_json: bool) -> int:
    """Start the server and the watcher processes, run every phase, print the report."""
    info = machine()
    pool = WatcherPool(MAX_PROCESSES)
    phases: list[Phase] = []
    try:
        with tempfile.TemporaryDirectory(prefix="varstore-watch-") as tmp:
            server: Child = start_child(
                "varstore",
                [
                    sys.executable,
                    "-m",
                    "varstore.api.cli",
                    "serve",
                    "--db",
                    str(Path(tmp) / "w.db"),
                    "--listen",
                    "127.0.0.1:0",
                ],
            )
            try:
                progress(f"varstore on {server.address}")
                channel = open_channel(server.address)
                try:
                    stub = varstore_pb2_grpc.VariableStoreStub(channel)
                    for watchers in WATCHERS:
                        phase = run_phase(watchers, stub, server.address, pool, window)
                        phases.append(phase)
                        progress(
                            f"{watchers} watchers: {phase.writes_per_s:,.0f} writes/s, "
                            f"lag p99 {phase.lag_p99_ms or 0:.2f} ms, "
                            f"{phase.delivered}/{phase.expected} delivered"
                        )
                finally:
                    channel.close()
            finally:
                server.stop()
    finally:
        pool.close()
    if as_json:
        document = {
            "machine": info,
            "window_s": window,
            "phases": [asdict(p) for p in phases],
        }
        print(json.dumps(document, indent=2))
    else:
        print(markdown(phases, window, info))
    failed = any(p.write_errors or p.watcher_errors or p.delivered != p.expected for p in phases)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="1 s write windows")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    return run(1.0 if args.quick else 3.0, args.json)


if __name__ == "__main__":
    sys.exit(main())
