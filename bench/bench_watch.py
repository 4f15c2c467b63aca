"""Watch fan-out: write throughput, delivery lag and deliveries per second with 0, 1, 10,
100 and 1,000 watchers, varstore beside etcd's Watch with the same watcher processes and
writer.

What it measures
----------------
One ``python -m varstore.api.cli serve --db <tmp>/w.db --listen 127.0.0.1:0`` child
process (default ``--sync full``: every acknowledged write is fsynced). Each phase uses a
fresh session ``watch-N`` with one integer variable ``x`` and runs:

1. **warm-up**: the writer (one thread, one channel, in this process) does a few
   ``SetVariable`` calls on ``x``; the log then stands at position ``P``.
2. **watchers**: ``N`` watchers, each its own thread with its own channel, spread over
   up to 4 spawned client processes, each call the generated stub's
   ``VariableStoreStub.WatchSession(session_id, from_position=P,
   max_events_per_message=M)`` (``--max-events``, default 256 as the Python client
   asks; 1 is one event a message, as before the field existed). A watcher is ready
   when its first ``WatchProgress`` arrives (the stream has caught up); the writes start
   only once every watcher is ready.
3. **window**: the writer does sequential ``SetVariable`` calls on ``x`` (a new value
   each time) for a fixed window (3 s; ``--quick``: 0.5 s), as fast as it can or, with
   ``--pace R``, one every 1/R s (a late write goes at once). Write latency is per call
   (``perf_counter_ns``); writes/s = calls / elapsed.
4. **drain**: each watcher reads until it has seen the writer's last position (or a
   deadline passes, then its call is cancelled). Every written value is the writer's
   ``time.time_ns()`` just before the call; for every event (of a ``WatchEvent``, or
   each of a ``WatchEvents`` message) the watcher records its receipt time minus that
   value: the delivery lag, from the write's start (so it includes the write itself,
   fsync and all) to the watcher holding the event. Deliveries/s = events received by
   all watchers / (the last receipt - the first write).

**etcd** (``--systems``, default both): the same phases against a one-member etcd 3.4
(``bench/etcdlib.py``: Debian's etcd-server on free loopback ports, fsync on), in the
same run and with the same watcher processes: the writer Puts the key ``watch-N``, each
watcher holds a native ``Watch`` of that key from the revision after the warm-up (one
stream per channel, as varstore's watchers), and the lag is measured the same way.

"delivered/expected" sums, over all watchers, the events they received against writes x
watchers; a shortfall (or a watcher error, or an out-of-order or repeated position) is
reported. Lag percentiles pool every event of every watcher of the phase (nearest rank).

How to read it
--------------
The 0-watcher row is the reference: ``vs 0`` is the phase's writes/s over it (1.00x =
watchers cost the writer nothing). The machine's cores are shared by the server, the
writer and the watcher processes, so with many watchers part of any slowdown is the
watchers' own client CPU, not the server's.

Usage: ``.venv/bin/python bench/bench_watch.py [--quick] [--json] [--watchers 0,1,10,100]
[--pace R] [--max-events M] [--systems varstore,etcd]`` from the repository root (``bench/`` must be on
``sys.path`` for ``benchlib``, which running the file does). The default run takes about
30 s, ``--quick`` about 6 s. Progress goes to stderr. Exit status 1 if a watcher failed or
missed events, or a write failed.
"""

from __future__ import annotations

import array
import multiprocessing.connection
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from benchlib import (  # bench/ is sys.path[0] when this file runs
    CALL_TIMEOUT,
    ProcessPool,
    arguments,
    create_session,
    machine,
    machine_line,
    markdown_table,
    open_channel,
    p50_p99,
    print_report,
    progress,
    receive_all,
    varstore_server,
)
from etcdlib import EtcdClient, EtcdServer

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

WATCHERS: tuple[int, ...] = (0, 1, 10, 100)
SYSTEMS: tuple[str, ...] = ("varstore", "etcd")
MAX_PROCESSES = 4
WARMUP_WRITES = 50
READY_TIMEOUT = 90.0  # seconds for every watcher to connect and catch up
DRAIN_TIMEOUT = 20.0  # seconds after the window for watchers to see the last write
VARIABLE = "x"
PROGRESS_MS = 100
#: Events a watcher lets the server put in one message (what the Python client asks).
MAX_EVENTS = 256


@dataclass(frozen=True)
class WatchJob:
    """What a client process runs: ``threads`` watchers of one session from a position."""

    address: str
    session_id: str
    from_position: int
    threads: int
    deadline: float  # time.monotonic(): every watch call is cancelled by then
    max_events: int = MAX_EVENTS
    system: str = "varstore"  # or "etcd": session_id is then the key, positions revisions


@dataclass
class WatcherResult:
    """One watcher: events it received, their lags, and what went wrong."""

    received: int = 0
    lags_ns: array.array[int] = field(default_factory=lambda: array.array("q"))
    error: str = ""
    last_ns: int = 0  # time.time_ns() of the last event's receipt
    seen: int = 0  # the last position (revision) received
    call: Any = None  # an etcd watch, ended once it has seen the last write


@dataclass(frozen=True)
class ProcessReport:
    """A client process's watchers, summed; lags as raw ``int64`` bytes."""

    received: list[int]
    lags: bytes
    errors: list[str]
    last_ns: int


def watch(
    job: WatchJob,
    ready: threading.Semaphore,
    last: list[int],
    done: threading.Event,
    result: WatcherResult,
    calls: list[Any],
    lock: threading.Lock,
) -> None:
    """One watcher: stream events after ``job.from_position`` until ``last[0]`` is seen."""
    if job.system == "etcd":
        watch_etcd(job, ready, last, done, result, calls, lock)
        return
    channel = open_channel(job.address)
    announced = False
    try:
        stub = varstore_pb2_grpc.VariableStoreStub(channel)
        request = pb.WatchSessionRequest(
            session_id=job.session_id,
            from_position=job.from_position,
            progress_interval_ms=PROGRESS_MS,  # wakes an idle watcher when the writer stops
            max_events_per_message=job.max_events,
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
            if kind == "event" or kind == "events":
                events = [message.event] if kind == "event" else message.events.events
                for event in events:
                    sent_ns = event.changes[0].value.integer_value if event.changes else 0
                    lags.append(received_ns - sent_ns)
                    position = event.event.position
                    if position != seen + 1:
                        result.error = result.error or f"position {position} after {seen}"
                    seen = position
                result.received += len(events)
                result.last_ns = received_ns
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


def watch_etcd(
    job: WatchJob,
    ready: threading.Semaphore,
    last: list[int],
    done: threading.Event,
    result: WatcherResult,
    calls: list[Any],
    lock: threading.Lock,
) -> None:
    """One etcd watcher of key ``job.session_id`` from revision ``from_position + 1``."""
    client = EtcdClient(job.address)
    announced = False
    try:
        client.wait_ready(10)
        stream = client.watch(job.session_id, job.from_position + 1)  # created on return
        with lock:
            calls.append(stream)
            result.call = stream
        announced = True
        ready.release()
        clock = time.time_ns
        lags = result.lags_ns
        seen = job.from_position
        for batch in stream.batches():
            received_ns = clock()
            for revision, value in batch:
                lags.append(received_ns - int(value))
                if revision != seen + 1:
                    result.error = result.error or f"revision {revision} after {seen}"
                seen = revision
            result.seen = seen
            result.received += len(batch)
            result.last_ns = received_ns
            if done.is_set() and seen >= last[0]:
                break
        stream.cancel()
    except (grpc.RpcError, RuntimeError) as failure:
        if not done.is_set():
            result.error = result.error or f"etcd watch: {failure}"
    finally:
        if not announced:
            ready.release()
        client.close()


def watch_job(job: WatchJob, connection: multiprocessing.connection.Connection) -> None:
    """In a client process: start ``job``'s watchers, say "ready" once they have caught up,
    take the last position to wait for, then report."""
    ready = threading.Semaphore(0)
    last = [0]  # 0 until the writer is done
    done = threading.Event()
    lock = threading.Lock()
    calls: list[Any] = []
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
    while job.system == "etcd" and time.monotonic() < job.deadline:
        # An etcd watch only wakes for events: end the ones that have seen the last write.
        with lock:
            for result in results:
                if result.call is not None and result.seen >= last[0]:
                    result.call.cancel()
                    result.call = None
        if not any(thread.is_alive() for thread in threads):
            break
        time.sleep(0.05)
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
            max((r.last_ns for r in results), default=0),
        )
    )


@dataclass(frozen=True)
class Phase:
    """One row: the writer's figures and what the watchers received."""

    system: str
    watchers: int
    writes: int
    write_errors: int
    writes_per_s: float
    write_p50_ms: float
    write_p99_ms: float
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_max_ms: float | None
    deliveries_per_s: float | None
    delivered: int
    expected: int
    watcher_errors: list[str]


@dataclass(frozen=True)
class Settings:
    """How every phase runs."""

    window: float  # seconds of writes
    pace: float  # writes per second; 0: as fast as the writer can
    max_events: int  # the watchers' max_events_per_message


class Target:
    """What the writer writes to and the watchers watch: varstore, or etcd."""

    system = "varstore"

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = open_channel(address)
        self.stub = varstore_pb2_grpc.VariableStoreStub(self.channel)
        self.name = ""

    def prepare(self, name: str) -> int:
        """A fresh session ``name`` with the warm-up writes; the position after them."""
        self.name = name
        create_session(self.stub, name, [VARIABLE])
        position = 0
        for _ in range(WARMUP_WRITES):
            position = self.write()
        return position

    def write(self) -> int:
        """One write of the writer's clock; its position."""
        request = pb.SetVariableRequest(
            session_id=self.name,
            variable_identifier=VARIABLE,
            value=pb.Value(integer_value=time.time_ns()),
        )
        return int(self.stub.SetVariable(request, timeout=CALL_TIMEOUT).header.position)

    def close(self) -> None:
        self.channel.close()


class EtcdTarget(Target):
    """etcd: one key per phase; positions are revisions."""

    system = "etcd"

    def __init__(self, address: str) -> None:
        self.address = address
        self.client = EtcdClient(address)
        self.client.wait_ready(10)
        self.name = ""

    def prepare(self, name: str) -> int:
        self.name = name
        position = 0
        for _ in range(WARMUP_WRITES):
            position = self.write()
        return position

    def write(self) -> int:
        return self.client.put(self.name, str(time.time_ns()))

    def close(self) -> None:
        self.client.close()


def run_phase(watchers: int, target: Target, pool: ProcessPool, settings: Settings) -> Phase:
    """Warm up, start ``watchers`` watchers, write for the window, collect."""
    session_id = f"watch-{watchers}-{settings.pace:g}"
    position = target.prepare(session_id)
    address = target.address

    links = pool.links[: min(MAX_PROCESSES, watchers)]
    deadline = time.monotonic() + READY_TIMEOUT + settings.window + DRAIN_TIMEOUT
    for index, link in enumerate(links):
        share = watchers // len(links) + (index < watchers % len(links))
        link.send(
            WatchJob(
                address, session_id, position, share, deadline, settings.max_events, target.system
            )
        )
    receive_all(links, time.monotonic() + READY_TIMEOUT + 5, "a watcher process did not get ready")

    latencies: list[int] = []
    errors = 0
    clock = time.perf_counter_ns
    period = int(1e9 / settings.pace) if settings.pace else 0
    began_wall = time.time_ns()
    began = clock()
    until = began + int(settings.window * 1e9)
    end = began
    last = position
    i = 0
    while end < until:  # bounded: every call has a deadline
        start = clock()
        if period and start < began + i * period:
            time.sleep((began + i * period - start) / 1e9)
            start = clock()
        try:
            last = target.write()
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
    last_ns = 0
    for link in links:
        link.send(last)
    report: ProcessReport
    for report in receive_all(links, deadline + 15, "a watcher process did not report back"):
        received += report.received
        lags.frombytes(report.lags)
        problems += [e for e in report.errors if e]
        last_ns = max(last_ns, report.last_ns)
    for count in received:
        if count != writes:
            problems.append(f"a watcher received {count} of {writes} events")
    write_p50, write_p99 = p50_p99(latencies)
    lag_p50, lag_p99 = p50_p99(lags) if lags else (None, None)

    def ms(ns: int | None) -> float | None:
        return ns / 1e6 if ns is not None else None

    return Phase(
        system=target.system,
        watchers=watchers,
        writes=len(latencies) - errors,
        write_errors=errors,
        writes_per_s=(len(latencies) - errors) / (elapsed / 1e9),
        write_p50_ms=write_p50 / 1e6,
        write_p99_ms=write_p99 / 1e6,
        lag_p50_ms=ms(lag_p50),
        lag_p99_ms=ms(lag_p99),
        lag_max_ms=ms(max(lags, default=None)),
        deliveries_per_s=(
            sum(received) / ((last_ns - began_wall) / 1e9) if last_ns > began_wall else None
        ),
        delivered=sum(received),
        expected=writes * watchers,
        watcher_errors=problems,
    )


def markdown(phases: list[Phase], settings: Settings, info: dict[str, str]) -> str:
    """The machine, the table and how it was measured."""
    references = {p.system: p.writes_per_s for p in phases if p.watchers == 0}

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    cells = []
    for p in phases:
        if p.watchers == 0:
            delivered = "- (reference)"
        else:
            short = p.expected - p.delivered
            delivered = f"{p.delivered:,}/{p.expected:,}" + (
                "" if short == 0 and not p.watcher_errors else f" **short {short:,}**"
            )
        errors = f" ({p.write_errors} errors)" if p.write_errors else ""
        reference = references.get(p.system)
        cells.append(
            (
                p.system,
                str(p.watchers),
                f"{p.writes_per_s:,.0f}{errors}",
                f"{p.writes_per_s / reference:.2f}x" if reference else "-",
                f"{p.write_p50_ms:.2f}",
                f"{p.write_p99_ms:.2f}",
                ms(p.lag_p50_ms),
                ms(p.lag_p99_ms),
                ms(p.lag_max_ms),
                "-" if p.deliveries_per_s is None else f"{p.deliveries_per_s:,.0f}",
                delivered,
            )
        )
    header = (
        "system",
        "watchers",
        "writes/s",
        "vs 0",
        "write p50 ms",
        "write p99 ms",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
        "deliveries/s",
        "delivered/expected",
    )
    lines = [machine_line(info), "", markdown_table(header, "lrrrrrrrrrl", cells)]
    lines += [
        "",
        (
            f"Measured: per row a fresh session, {WARMUP_WRITES} warm-up writes, then N watchers "
            f"(WatchSession stubs, one thread and channel each, over up to {MAX_PROCESSES} "
            f"client processes, max_events_per_message {settings.max_events}) caught up before "
            f"one writer thread does sequential SetVariable for {settings.window:g} s, "
            + (f"paced at {settings.pace:g}/s" if settings.pace else "as fast as it can")
            + "; lag = watcher receipt (time.time_ns) - the writer's clock just before the "
            "write (the value written), pooled over all events of all watchers; deliveries/s "
            "= events received / (last receipt - first write). Servers: varstore serve --sync "
            "full and etcd 3.4 (fsync on), each its own process, 127.0.0.1; etcd rows: Put of "
            "one key, one native Watch stream per watcher channel."
        ),
    ]
    for p in phases:
        for problem in p.watcher_errors[:5]:
            lines.append(f"- {p.system}, {p.watchers} watchers: {problem}")
    return "\n".join(lines)


def run(
    settings: Settings, watcher_counts: Sequence[int], systems: Sequence[str], as_json: bool
) -> int:
    """Start the servers and the watcher processes, run every phase, print the report."""
    info = machine()
    phases: list[Phase] = []
    with (
        ProcessPool(watch_job, MAX_PROCESSES, "bench-watch") as pool,
        tempfile.TemporaryDirectory(prefix="varstore-watch-") as tmp,
        varstore_server(Path(tmp) / "w.db") as server,
        EtcdServer() as etcd,
    ):
        progress(f"varstore on {server.address}, etcd on {etcd.address}")
        targets = [
            Target(server.address) if system == "varstore" else EtcdTarget(etcd.address)
            for system in systems
        ]
        try:
            for watchers in watcher_counts:
                for target in targets:
                    phase = run_phase(watchers, target, pool, settings)
                    phases.append(phase)
                    progress(
                        f"{target.system}, {watchers} watchers: "
                        f"{phase.writes_per_s:,.0f} writes/s, "
                        f"lag p99 {phase.lag_p99_ms or 0:.2f} ms, "
                        f"{phase.deliveries_per_s or 0:,.0f} deliveries/s, "
                        f"{phase.delivered}/{phase.expected} delivered"
                    )
        finally:
            for target in targets:
                target.close()
    phases.sort(key=lambda p: (p.system != "varstore", p.watchers))
    document = {
        "machine": info,
        "settings": asdict(settings),
        "phases": [asdict(p) for p in phases],
    }
    print_report(as_json, document, markdown(phases, settings, info))
    failed = any(p.write_errors or p.watcher_errors or p.delivered != p.expected for p in phases)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = arguments(__doc__, "0.5 s write windows")
    parser.add_argument(
        "--watchers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=list(WATCHERS),
        help="comma-separated watcher counts, one row each (default 0,1,10,100)",
    )
    parser.add_argument(
        "--pace", type=float, default=0.0, help="writes per second (default 0: unpaced)"
    )
    parser.add_argument(
        "--max-events",
        type=int,
        default=MAX_EVENTS,
        help=f"the watchers' max_events_per_message (default {MAX_EVENTS}; 1: one a message)",
    )
    parser.add_argument(
        "--systems",
        type=lambda text: text.split(","),
        default=list(SYSTEMS),
        help="comma-separated: varstore, etcd (default both, each row beside the other)",
    )
    args = parser.parse_args(argv)
    settings = Settings(0.5 if args.quick else 3.0, args.pace, args.max_events)
    return run(settings, args.watchers, args.systems, args.json)


if __name__ == "__main__":
    sys.exit(main())
