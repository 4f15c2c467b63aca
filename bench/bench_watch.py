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
2. **watchers**: ``N`` watchers, each a stream on an asyncio channel (up to 16 share one), spread over
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
Each system's 0-watcher row is its reference: ``vs 0`` is the phase's writes/s over it (1.00x =
watchers cost the writer nothing). The machine's cores are shared by the server, the
writer and the watcher processes, so with many watchers part of any slowdown is the
watchers' own client CPU, not the server's.

Usage: ``.venv/bin/python bench/bench_watch.py [--quick] [--json] [--watchers 0,1,10,100]
[--pace R] [--max-events M] [--systems varstore,etcd]`` from the repository root (``bench/`` must be on
``sys.path`` for ``benchlib``, which running the file does). The default run takes about a
minute, ``--quick`` about 12 s. Progress goes to stderr. Exit status 1 if a watcher failed or
missed events, or a write failed.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import multiprocessing.connection
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
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
from etcdlib import WATCH_METHOD as ETCD_WATCH
from etcdlib import EtcdClient, EtcdServer, WatchCreateRequest, WatchRequest, WatchResponse

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

WATCHERS: tuple[int, ...] = (0, 1, 10, 100)
SYSTEMS: tuple[str, ...] = ("varstore", "etcd")
MAX_PROCESSES = 4
WARMUP_WRITES = 50
READY_TIMEOUT = 90.0  # seconds for every watcher to connect and catch up
DRAIN_TIMEOUT = 20.0  # seconds after the window for watchers to see the last write
VARIABLE = "x"
PROGRESS_MS = 1000  # the server's default; the stream is ended once it saw the last write
#: Watchers sharing one channel (one connection, one stream each) in a client process.
CHANNEL_WATCHERS = 16
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
    call: Any = None  # the watch, ended once it has seen the last write


@dataclass(frozen=True)
class ProcessReport:
    """A client process's watchers, summed; lags as raw ``int64`` bytes."""

    received: list[int]
    lags: bytes
    errors: list[str]
    last_ns: int


def watch_job(job: WatchJob, connection: multiprocessing.connection.Connection) -> None:
    """In a client process: start ``job``'s watchers, say "ready" once they have caught up,
    take the last position to wait for, then report."""
    connection.send(asyncio.run(watch_all(job, connection)))


async def watch_all(
    job: WatchJob, connection: multiprocessing.connection.Connection
) -> ProcessReport:
    """``job.threads`` watchers as coroutines on this process's event loop."""
    loop = asyncio.get_running_loop()
    results = [WatcherResult() for _ in range(job.threads)]
    readies = [asyncio.Event() for _ in results]
    last = [0]  # 0 until the writer is done
    done = asyncio.Event()
    channels = [
        grpc.aio.insecure_channel(job.address)
        for _ in range((job.threads + CHANNEL_WATCHERS - 1) // CHANNEL_WATCHERS)
    ]
    follow = watch_etcd if job.system == "etcd" else watch_varstore
    tasks = [
        asyncio.create_task(follow(job, channels[i // CHANNEL_WATCHERS], r, readies[i], done))
        for i, r in enumerate(results)
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(ready.wait() for ready in readies)),
            max(0.1, job.deadline - time.monotonic()),
        )
    connection.send("ready")
    last[0] = await loop.run_in_executor(None, connection.recv)
    done.set()
    while time.monotonic() < job.deadline and not all(task.done() for task in tasks):
        # A watch only wakes for events (and progress): end those that saw the last write.
        for result in results:
            if result.call is not None and result.seen >= last[0]:
                result.call.cancel()
                result.call = None
        await asyncio.sleep(0.05)
    for result, task in zip(results, tasks, strict=True):
        if not task.done():
            result.error = result.error or "did not finish"
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    lags = array.array("q")
    for result in results:
        lags.extend(result.lags_ns)
    return ProcessReport(
        [r.received for r in results],
        lags.tobytes(),
        [r.error for r in results],
        max((r.last_ns for r in results), default=0),
    )


async def watch_varstore(
    job: WatchJob,
    channel: grpc.aio.Channel,
    result: WatcherResult,
    ready: asyncio.Event,
    done: asyncio.Event,
) -> None:
    """One varstore watcher: stream events after ``job.from_position``."""
    request = pb.WatchSessionRequest(
        session_id=job.session_id,
        from_position=job.from_position,
        progress_interval_ms=PROGRESS_MS,
        max_events_per_message=job.max_events,
    )
    stub = varstore_pb2_grpc.VariableStoreStub(channel)
    call = stub.WatchSession(request, timeout=max(1.0, job.deadline - time.monotonic()))
    result.call = call
    clock = time.time_ns
    lags = result.lags_ns
    seen = job.from_position
    try:
        async for message in call:
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
                result.seen = seen
                result.received += len(events)
                result.last_ns = received_ns
            elif kind == "progress":
                ready.set()
    except grpc.aio.AioRpcError as failure:
        if failure.code() != grpc.StatusCode.CANCELLED or not done.is_set():
            result.error = result.error or f"{failure.code()}: {failure.details()}"
    except asyncio.CancelledError:
        pass
    finally:
        ready.set()  # do not hold the start up; an error is reported


async def watch_etcd(
    job: WatchJob,
    channel: grpc.aio.Channel,
    result: WatcherResult,
    ready: asyncio.Event,
    done: asyncio.Event,
) -> None:
    """One etcd watcher of key ``job.session_id`` from revision ``from_position + 1``."""
    ended = asyncio.Event()
    create = WatchRequest(
        create_request=WatchCreateRequest(
            key=job.session_id.encode(), start_revision=job.from_position + 1
        )
    )

    async def requests() -> AsyncIterator[Any]:
        yield create
        await ended.wait()

    call: Any = channel.stream_stream(
        ETCD_WATCH,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=WatchResponse.FromString,
    )(requests(), timeout=max(1.0, job.deadline - time.monotonic()))
    result.call = call
    clock = time.time_ns
    lags = result.lags_ns
    seen = job.from_position
    try:
        async for response in call:
            received_ns = clock()
            if response.created:
                ready.set()
            if response.canceled:
                break
            if not response.events:
                continue
            for event in response.events:
                lags.append(received_ns - int(event.kv.value))
                revision = int(event.kv.mod_revision)
                if revision != seen + 1:
                    result.error = result.error or f"revision {revision} after {seen}"
                seen = revision
            result.seen = seen
            result.received += len(response.events)
            result.last_ns = received_ns
    except grpc.aio.AioRpcError as failure:
        if failure.code() != grpc.StatusCode.CANCELLED or not done.is_set():
            result.error = result.error or f"etcd watch: {failure.code()}"
    except asyncio.CancelledError:
        pass
    finally:
        ended.set()
        ready.set()


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
            f"(grpc.aio WatchSession streams, {CHANNEL_WATCHERS} to a channel, "
            f"over up to {MAX_PROCESSES} "
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
