"""varstore's RPCs against an empty gRPC call, measured in the same run.

What it measures
----------------
Four servers run as child processes on loopback, each with its own GIL:

* **echo**: a grpcio sync server (``ThreadPoolExecutor(max_workers=32)``, varstore's pool)
  with ONE generic unary method ``/bench.Echo/Echo`` whose handler returns its request;
  request and response are ``b""`` with identity (de)serializers. It is the floor: a
  Python gRPC server cannot answer anything faster than this call.
* **echo on grpc.aio**: the same method on a ``grpc.aio`` server (a coroutine handler on
  one event loop), the front varstore serves through: the floor of that front.
* **varstore**: ``python -m varstore.api.cli serve --db <tmp>/bench.db --listen
  127.0.0.1:0`` with the default ``--sync full`` (every acknowledged write is fsynced): a
  ``grpc.aio`` server, its sync handlers in a pool of 32 threads, its reads of the current
  state on the event loop.
  One session holds 100 integer variables ``v0..v99`` and one float variable ``f``.
* **etcd** (3.4, Debian's ``etcd-server``; :mod:`etcdlib`): one member on free loopback
  ports with a data directory in the run's temporary directory, its default durability
  (every acknowledged Put is in its fsynced write-ahead log). It is the reference for
  durable writes: ``KV/Put`` of a small value to one key per client, through grpcio and
  the same client processes as varstore's SetVariable, at 1, 8 and 16 client threads.

Operations: echo; GetVariable; SetVariable; GetVariables of 10 and of 100 names;
atomic SetVariables of 10 and of 100 variables; etcd's Put. All go through the generated stubs (no
client cache, so every read is answered by the server: "uncached"); writes cycle through
prebuilt requests so each call writes a new value. Each is measured two ways:

* **sequential**: one client thread on one channel in this process; warm-up calls, then
  timed calls one after the other. p50/p99 are per-call latencies; calls/s is calls over
  the time they took (about 1 / mean latency).
* **16 clients**: closed loop (each client sends its next call as soon as the previous
  one returns) for a fixed window after a warm-up. The 16 clients are spread over 4
  spawned client processes x 4 threads, one channel per thread, so that one client GIL
  does not cap the rate; echo, varstore and etcd are driven exactly the same way. Only
  calls that complete inside the window count. etcd's Put is also measured with 8 clients
  (4 processes x 2 threads), the issue's reference rate.

The full run has 3 rounds; each round measures echo and then every operation (sequential
phases, then 16-client phases, then etcd's 8-client phase), and the figures pool the rounds, so load that comes and
goes on the machine spreads over echo and varstore alike. The drift line shows echo round
by round: if those numbers differ a lot, the machine was busy and the run is noisy.

"server CPU µs/call" is the server process's user+system time (all threads, from
``/proc/PID/stat``, 10 ms ticks) over the timed calls, divided by the calls: it says how
much of a call is the server's own work, as opposed to waiting (fsync) or client time.

How to read it
--------------
Absolute numbers drift between machines and runs; the ratio columns do not (much):
``p50 / echo`` is the operation's sequential p50 over echo's (1.0 = as fast as an empty
call), ``16c / echo`` is its 16-client throughput over echo's (1.0 = the server does the
operation as often as it can answer an empty call). On a small machine the client
processes and the server share the cores, so 16-client figures are what the whole box
does, the same for both sides. The targets printed after the table are checked against
these ratios. A second table puts the durable writes side by side: SetVariable at 1 and
16 clients beside the echo at 1 and 16 and beside etcd's Put at 1, 8 and 16 clients, with
the writes each fsync of the log carried in the windows (varstore: its group commits, the
distinct times of the events in its log, as a group's events share one; etcd: its WAL
fsyncs, from its ``/metrics``).

Usage: ``.venv/bin/python bench/bench_grpc.py [--quick] [--json]`` from the repository
root. ``--quick`` is a smoke run (one round, 200 calls, 0.4 s windows; about 20 s); the
default run takes about 2 minutes. ``--json`` prints the results as JSON instead of
the markdown report; progress goes to stderr. Exit status 1 if any call failed; 2 if
etcd cannot be started (``apt-get install etcd-server``, or ``ETCD=/path/to/etcd``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing.connection
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import etcdlib
import grpc
import grpc.aio
from benchlib import (  # bench/ is sys.path[0] when this file runs
    CALL_TIMEOUT,
    SESSION_ID,
    Call,
    ProcessPool,
    Target,
    arguments,
    child_server,
    json_document,
    machine,
    machine_line,
    make_call,
    markdown_table,
    open_channel,
    p50_p99,
    percentile,
    print_report,
    progress,
    receive_all,
    set_up_session,
    targets_text,
    varstore_server,
)

MAX_WORKERS = 32  # varstore's start_server default

#: (key, label) of every operation, in table order.
OPERATIONS: tuple[tuple[str, str], ...] = (
    ("echo", "echo (empty call)"),
    ("echo_aio", "echo on grpc.aio (empty call)"),
    ("get", "GetVariable"),
    ("set", "SetVariable"),
    ("get10", "GetVariables(10)"),
    ("get100", "GetVariables(100)"),
    ("set10", "SetVariables(10, atomic)"),
    ("set100", "SetVariables(100, atomic)"),
    ("etcd_put", "etcd Put"),
)
#: Client counts of the extra concurrent phases, per operation (every operation also runs
#: with ``Settings.clients``).
EXTRA_CLIENTS: dict[str, tuple[int, ...]] = {"etcd_put": (8,)}
#: The writes whose fsyncs are counted (the durable-writes table).
DURABLE_WRITES = ("set", "etcd_put")


@dataclass(frozen=True)
class Settings:
    """How long and how hard each phase runs; every figure is per operation, split
    evenly over ``rounds`` (each round measures echo and every operation in turn)."""

    rounds: int
    warmup_calls: int  # per round
    calls: int  # in total
    max_sequential_seconds: float  # in total; a slow operation stops before ``calls``
    concurrent_warmup: float  # per round
    concurrent_seconds: float  # in total
    clients: int
    processes: int


FULL = Settings(3, 100, 2000, 9.0, 0.5, 4.5, 16, 4)
QUICK = Settings(1, 20, 200, 1.0, 0.1, 0.4, 16, 4)


# -- echo server (child process) ----------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


def run_echo_server(front: str) -> int:
    """Serve ``/bench.Echo/Echo`` on a free loopback port until SIGTERM, from a grpcio
    sync server or (``front == "aio"``) a grpc.aio one."""
    if front == "aio":
        return asyncio.run(_serve_aio_echo())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="echo-rpc"),
        options=[("grpc.so_reuseport", 0)],
    )
    port = _echo_port(server, lambda request, context: request)
    if port == 0:
        return 2
    server.start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    stopping.wait()
    server.stop(1.0).wait()
    return 0


def _echo_port(server: grpc.Server | grpc.aio.Server, behaviour: Any) -> int:
    """Register ``/bench.Echo/Echo`` with ``behaviour`` on ``server`` and listen on a free
    loopback port; the port, or 0 (said on stderr) when it cannot listen."""
    handler = grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        print("echo: cannot listen", file=sys.stderr)
    return port


async def _serve_aio_echo() -> int:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    port = _echo_port(server, echo)
    if port == 0:
        return 2
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    await stopping.wait()
    await server.stop(1.0)
    return 0


# -- servers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A server the bench calls: where it listens, its process (for its CPU time) and,
    for the durable ones, how many times it has fsynced its log so far."""

    address: str
    pid: int
    fsyncs: Callable[[], int] | None = None


def varstore_commits(db: Path) -> Callable[[], int]:
    """The group commits (one transaction, one fsync each) the varstore log at ``db`` holds:
    every event a group appends carries the group's one time, so they are the distinct
    times (read through a read-only connection; WAL lets it read beside the server)."""

    def count() -> int:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            (found,) = conn.execute("SELECT COUNT(DISTINCT recorded_at_us) FROM events").fetchone()
        return int(found)

    return count


def etcd_wal_fsyncs(address: str) -> Callable[[], int]:
    """The fsyncs of etcd's write-ahead log so far, from its ``/metrics``."""
    metric = "etcd_disk_wal_fsync_duration_seconds_count"

    def count() -> int:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=CALL_TIMEOUT) as page:
            for line in page.read().decode().splitlines():
                if line.startswith(metric):
                    return int(float(line.split()[-1]))
        raise RuntimeError(f"etcd's /metrics has no {metric}")

    return count


@contextmanager
def servers(db_dir: Path) -> Iterator[dict[str, Endpoint]]:
    """The echo, varstore and etcd servers by name, stopped (SIGTERM) on the way out."""
    echo_command = [sys.executable, str(Path(__file__).resolve()), "--echo-server"]
    with (
        child_server("echo", [*echo_command, "sync"]) as echo,
        child_server("echo", [*echo_command, "aio"]) as echo_aio,
        varstore_server(db_dir / "bench.db") as varstore,
        etcdlib.EtcdServer() as etcd,
    ):
        yield {
            "echo": Endpoint(echo.address, echo.process.pid),
            "echo_aio": Endpoint(echo_aio.address, echo_aio.process.pid),
            "varstore": Endpoint(
                varstore.address, varstore.process.pid, varstore_commits(db_dir / "bench.db")
            ),
            "etcd": Endpoint(etcd.address, etcd.pid, etcd_wal_fsyncs(etcd.address)),
        }


def server_of(operation: str) -> str:
    """The name of the server that answers ``operation``."""
    if operation.startswith("echo"):
        return operation
    return "etcd" if operation.startswith("etcd_") else "varstore"


def bench_call(operation: str, channel: grpc.Channel, client: int, session_id: str) -> Call:
    """One call of ``operation``: benchlib's calls, and etcd's Put (``etcd_put``: a ring of
    prebuilt requests to the client's own key, each a new value, like SetVariable's)."""
    if operation != "etcd_put":
        return make_call(
            "echo" if operation == "echo_aio" else operation, channel, client, session_id
        )
    put = etcdlib.put_callable(channel)
    ring = [
        etcdlib.PutRequest(key=f"v{client}".encode(), value=str(client * 1_000_000 + i).encode())
        for i in range(16)
    ]
    counter = iter(range(1 << 62))
    return lambda: put(ring[next(counter) % len(ring)], timeout=CALL_TIMEOUT)


# -- sequential phase ---------------------------------------------------------------------


TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND  # utime, stime


@dataclass
class SequentialRun:
    """Latencies of sequential calls, pooled over rounds, and the server CPU they cost."""

    latencies_ns: list[int] = field(default_factory=list)
    elapsed_ns: int = 0
    server_cpu_s: float = 0.0


@dataclass(frozen=True)
class Sequential:
    """One client thread, one call at a time."""

    calls: int
    p50_us: float
    p99_us: float
    calls_per_s: float
    server_cpu_us_per_call: float

    @classmethod
    def of(cls, run: SequentialRun) -> Sequential:
        """The summary of a pooled run."""
        calls = len(run.latencies_ns)
        p50, p99 = p50_p99(run.latencies_ns)
        return cls(
            calls=calls,
            p50_us=p50 / 1e3,
            p99_us=p99 / 1e3,
            calls_per_s=calls / (run.elapsed_ns / 1e9),
            server_cpu_us_per_call=run.server_cpu_s * 1e6 / calls,
        )


def measure_sequential(
    operation: str,
    address: str,
    server_pid: int,
    settings: Settings,
    round_: int,
    into: SequentialRun,
) -> None:
    """Round ``round_`` (from 0): warm up, then time its share of calls one after the other."""
    calls = settings.calls // settings.rounds + (round_ < settings.calls % settings.rounds)
    budget_ns = int(settings.max_sequential_seconds / settings.rounds * 1e9)
    channel = open_channel(address)
    try:
        call = bench_call(operation, channel, 0, SESSION_ID)
        for _ in range(settings.warmup_calls):
            call()
        latencies = into.latencies_ns
        clock = time.perf_counter_ns
        cpu_before = cpu_seconds(server_pid)
        began = clock()
        deadline = began + budget_ns
        for _ in range(calls):
            start = clock()
            call()
            end = clock()
            latencies.append(end - start)
            if end >= deadline:
                break
        into.elapsed_ns += clock() - began
        into.server_cpu_s += cpu_seconds(server_pid) - cpu_before
    finally:
        channel.close()


# -- concurrent phase (client worker processes) -------------------------------------------


@dataclass(frozen=True)
class Job:
    """What a client process runs: ``threads`` closed-loop clients, one channel each."""

    operation: str
    address: str
    first_client: int
    threads: int
    start_at: float  # time.monotonic() values (CLOCK_MONOTONIC is system-wide on Linux)
    measure_from: float
    measure_until: float
    session_id: str = SESSION_ID


@dataclass(frozen=True)
class Tally:
    """Calls a client process completed inside the window, and its failures."""

    completed: int
    errors: int
    first_error: str


def run_client(job: Job, client: int, tallies: list[Tally]) -> None:
    """One closed-loop client: call until ``measure_until``, count calls in the window."""
    completed = errors = 0
    first_error = ""
    channel = open_channel(job.address)
    try:
        call = bench_call(job.operation, channel, client, job.session_id)
        wait = job.start_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        now = time.monotonic()
        while now < job.measure_until:  # bounded: every call has a deadline
            try:
                call()
                ok = True
            except grpc.RpcError as failure:
                ok = False
                errors += 1
                first_error = first_error or f"{failure.code()}: {failure.details()}"
            now = time.monotonic()
            if ok and job.measure_from <= now < job.measure_until:
                completed += 1
    finally:
        channel.close()
    tallies.append(Tally(completed, errors, first_error))


def client_job(job: Job, connection: multiprocessing.connection.Connection) -> None:
    """In a client process: run ``job``'s clients, one thread each; answer with their tally."""
    tallies: list[Tally] = []
    threads = [
        threading.Thread(target=run_client, args=(job, job.first_client + i, tallies))
        for i in range(job.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    connection.send(
        Tally(
            sum(t.completed for t in tallies),
            sum(t.errors for t in tallies) + job.threads - len(tallies),
            next((t.first_error for t in tallies if t.first_error), ""),
        )
    )


@dataclass
class ConcurrentRun:
    """Calls completed by all clients inside the windows of every round, and their cost."""

    completed: int = 0
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    #: Durable commits (fsyncs of the log) in the windows, when the server's are counted.
    fsyncs: int = 0

    @property
    def calls_per_s(self) -> float:
        """Completed calls per second of window."""
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def server_cpu_us_per_call(self) -> float:
        """Server CPU time per completed call."""
        return self.server_cpu_s * 1e6 / self.completed if self.completed else 0.0

    @property
    def calls_per_fsync(self) -> float:
        """Completed calls per fsync of the log (0 when fsyncs were not counted)."""
        return self.completed / self.fsyncs if self.fsyncs else 0.0


def run_concurrent(
    pool: ProcessPool,
    operation: str,
    address: str,
    server_pid: int,
    settings: Settings,
    into: ConcurrentRun,
    clients: int | None = None,
    fsyncs: Callable[[], int] | None = None,
) -> None:
    """One round: every client (``settings.clients`` unless given) for a warm-up plus this
    round's share of the window; ``fsyncs`` counts the server's fsyncs so far."""
    wanted = clients or settings.clients
    links = pool.links[:wanted]  # fewer clients than processes: one thread in each of some
    per_process = wanted // len(links)
    window = settings.concurrent_seconds / settings.rounds
    start_at = time.monotonic() + 0.3  # time for every client to connect
    measure_from = start_at + settings.concurrent_warmup
    measure_until = measure_from + window
    for index, link in enumerate(links):
        link.send(
            Job(
                operation,
                address,
                index * per_process,
                per_process,
                start_at,
                measure_from,
                measure_until,
            )
        )
    time.sleep(max(0.0, measure_from - time.monotonic()))
    cpu_before = cpu_seconds(server_pid)
    fsyncs_before = fsyncs() if fsyncs is not None else 0
    time.sleep(max(0.0, measure_until - time.monotonic()))
    into.server_cpu_s += cpu_seconds(server_pid) - cpu_before
    if fsyncs is not None:
        into.fsyncs += fsyncs() - fsyncs_before
    into.seconds += window
    limit = measure_until + CALL_TIMEOUT + 15
    tally: Tally
    for tally in receive_all(links, limit, "a client process did not report back"):
        into.completed += tally.completed
        into.errors += tally.errors
        into.first_error = into.first_error or tally.first_error


# -- report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One operation's results and its ratios to echo; ``extra`` holds the calls/s of the
    operation's extra concurrent phases, by client count."""

    operation: str
    label: str
    sequential: Sequential
    concurrent_per_s: float
    concurrent_server_cpu_us_per_call: float
    concurrent_errors: int
    p50_vs_echo: float
    concurrent_vs_echo: float
    extra: dict[int, float] = field(default_factory=dict)
    #: Completed calls per fsync of the log at 16 clients, and in the extra phases.
    calls_per_fsync: float = 0.0
    extra_calls_per_fsync: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EchoRound:
    """Echo as measured in one round (the drift check)."""

    p50_us: float
    concurrent_per_s: float


def method_text(settings: Settings) -> str:
    """How the numbers were taken, in words."""
    per = settings.clients // settings.processes
    rounds = settings.rounds
    return (
        f"{rounds} round{'s' if rounds > 1 else ''}, each measuring echo then every varstore "
        f"operation then etcd's Put, sequential phases first; figures pool all rounds. "
        f"Sequential: one client thread, one channel, {settings.warmup_calls} warm-up calls "
        f"per round, then {settings.calls} timed calls in all (fewer if an operation uses up "
        f"its {settings.max_sequential_seconds:g} s); calls/s = calls / elapsed. 16 clients: "
        f"{settings.processes} client processes x {per} threads, one channel per thread, "
        f"closed loop, {settings.concurrent_warmup:g} s warm-up per round, "
        f"{settings.concurrent_seconds:g} s of window in all; calls/s = calls completed in the "
        f"windows / window; etcd's Put also with 8 clients ({settings.processes} x "
        f"{8 // settings.processes}). Server CPU = user+system time of the server process (all "
        f"threads, /proc/PID/stat) over the timed calls, per call. Servers are separate "
        f"processes on 127.0.0.1 (echo: grpcio sync, ThreadPoolExecutor "
        f"max_workers={MAX_WORKERS}; echo on grpc.aio: a coroutine handler; varstore: grpc.aio, "
        f"its sync handlers in a pool of {MAX_WORKERS} threads; etcd 3.4, one member), sharing the machine's cores with "
        f"the client processes; varstore runs --sync full (fsync per write, shared by group "
        f"commit), etcd its default (fsynced WAL). Reads go through the generated stubs "
        f"(uncached)."
    )


def operations_table(rows: list[Row]) -> str:
    """Every operation: latency, throughput, ratios to echo, server CPU."""
    cells = []
    for row in rows:
        s = row.sequential
        errors = f" ({row.concurrent_errors} errors)" if row.concurrent_errors else ""
        cells.append(
            (
                row.label,
                str(s.calls),
                f"{s.p50_us:,.0f}",
                f"{s.p99_us:,.0f}",
                f"{s.calls_per_s:,.0f}",
                f"{row.concurrent_per_s:,.0f}{errors}",
                f"{row.p50_vs_echo:.2f}x",
                f"{row.concurrent_vs_echo:.2f}x",
                f"{s.server_cpu_us_per_call:,.0f}",
                f"{row.concurrent_server_cpu_us_per_call:,.0f}",
            )
        )
    header = (
        "operation",
        "calls",
        "p50 µs",
        "p99 µs",
        "seq calls/s",
        "16-client calls/s",
        "p50 / echo",
        "16c / echo",
        "server CPU µs/call seq",
        "server CPU µs/call 16c",
    )
    return markdown_table(header, "lrrrrrrrrr", cells)


def writes_table(rows: dict[str, Row]) -> str:
    """Durable writes side by side: SetVariable, the echo, etcd's Put at 1, 8, 16 clients."""
    etcd_8 = rows["etcd_put"].extra.get(8, 0.0)
    cells = []
    for key in ("echo", "set", "etcd_put"):
        row = rows[key]
        eight = row.extra.get(8)
        per_fsync = [row.extra_calls_per_fsync.get(8, 0.0), row.calls_per_fsync]
        cells.append(
            (
                row.label,
                f"{row.sequential.p50_us:,.0f}",
                f"{row.sequential.calls_per_s:,.0f}",
                f"{eight:,.0f}" if eight is not None else "",
                f"{row.concurrent_per_s:,.0f}",
                f"{row.concurrent_vs_echo:.2f}x",
                f"{row.concurrent_per_s / etcd_8:.2f}x" if etcd_8 else "",
                f"{row.sequential.server_cpu_us_per_call:,.0f}",
                f"{row.concurrent_server_cpu_us_per_call:,.0f}",
                " / ".join(f"{n:.1f}" if n else "-" for n in per_fsync) if key != "echo" else "",
            )
        )
    header = (
        "durable write vs references",
        "1c p50 µs",
        "1c calls/s",
        "8c calls/s",
        "16c calls/s",
        "16c / echo 16c",
        "16c / etcd Put 8c",
        "server CPU µs/call 1c",
        "server CPU µs/call 16c",
        "writes per fsync 8c / 16c",
    )
    return markdown_table(header, "lrrrrrrrrr", cells)


def markdown(
    rows: dict[str, Row],
    targets: list[Target],
    info: dict[str, str],
    settings: Settings,
    echo_rounds: list[EchoRound],
) -> str:
    """The report: machine, the two tables, method, targets and drift check."""
    lines = [machine_line(info), "", operations_table(list(rows.values()))]
    lines += ["", writes_table(rows)]
    lines += ["", f"Measured: {method_text(settings)}", "", targets_text(targets)]
    if len(echo_rounds) > 1:
        p50s = ", ".join(f"{r.p50_us:,.0f}" for r in echo_rounds)
        rates = ", ".join(f"{r.concurrent_per_s:,.0f}" for r in echo_rounds)
        lines += [
            "",
            f"Drift check, echo round by round: p50 {p50s} µs; 16 clients {rates} calls/s.",
        ]
    return "\n".join(lines)


def evaluate(rows: dict[str, Row]) -> list[Target]:
    """The targets."""
    get_vs_echo = rows["get"].p50_vs_echo
    set_vs_echo = rows["set"].concurrent_vs_echo
    many_vs_one = rows["get100"].sequential.p50_us / rows["get"].sequential.p50_us
    etcd_8 = rows["etcd_put"].extra.get(8, 0.0)
    set_vs_etcd = rows["set"].concurrent_per_s / etcd_8 if etcd_8 else 0.0
    return [
        Target(
            "uncached GetVariable p50 / echo p50",
            f"{get_vs_echo:.2f}x",
            "<= 1.30x",
            get_vs_echo <= 1.3,
        ),
        Target(
            "SetVariable 16-client throughput / echo 16-client throughput",
            f"{set_vs_echo:.2f}x",
            ">= 0.70x",
            set_vs_echo >= 0.70,
        ),
        Target(
            "SetVariable 16-client throughput / etcd Put 8-client throughput (both fsynced)",
            f"{set_vs_etcd:.2f}x",
            ">= 1.00x",
            set_vs_etcd >= 1.0,
        ),
        Target(
            "GetVariables(100) p50 / GetVariable p50",
            f"{many_vs_one:.2f}x",
            "<= 3.00x",
            many_vs_one <= 3.0,
        ),
    ]


@dataclass
class Runs:
    """Everything measured, pooled over rounds."""

    sequential: dict[str, SequentialRun]
    concurrent: dict[str, ConcurrentRun]
    extra: dict[tuple[str, int], ConcurrentRun]
    echo_rounds: list[EchoRound]


def measure(settings: Settings, pool: ProcessPool, endpoints: dict[str, Endpoint]) -> Runs:
    """Every round of every operation against the running servers."""
    runs = Runs(
        {key: SequentialRun() for key, _ in OPERATIONS},
        {key: ConcurrentRun() for key, _ in OPERATIONS},
        {(key, n): ConcurrentRun() for key, counts in EXTRA_CLIENTS.items() for n in counts},
        [],
    )
    for round_ in range(settings.rounds):
        echo_seq_from = len(runs.sequential["echo"].latencies_ns)
        for key, label in OPERATIONS:
            server = endpoints[server_of(key)]
            measure_sequential(
                key, server.address, server.pid, settings, round_, runs.sequential[key]
            )
            latest = sorted(runs.sequential[key].latencies_ns)
            progress(
                f"round {round_} sequential {label}: p50 so far {percentile(latest, 0.5) / 1e3:,.0f} µs"
            )
        echo_completed = runs.concurrent["echo"].completed
        for key, label in OPERATIONS:
            server = endpoints[server_of(key)]
            into = runs.concurrent[key]
            counted = server.fsyncs if key in DURABLE_WRITES else None
            run_concurrent(pool, key, server.address, server.pid, settings, into, None, counted)
            progress(f"round {round_} 16 clients {label}: {into.calls_per_s:,.0f} calls/s so far")
        for (key, clients), into in runs.extra.items():
            server = endpoints[server_of(key)]
            counted = server.fsyncs if key in DURABLE_WRITES else None
            run_concurrent(pool, key, server.address, server.pid, settings, into, clients, counted)
            progress(
                f"round {round_} {clients} clients {key}: {into.calls_per_s:,.0f} calls/s so far"
            )
        this_round = sorted(runs.sequential["echo"].latencies_ns[echo_seq_from:])
        runs.echo_rounds.append(
            EchoRound(
                percentile(this_round, 0.5) / 1e3,
                (runs.concurrent["echo"].completed - echo_completed)
                / (settings.concurrent_seconds / settings.rounds),
            )
        )
    return runs


def run(settings: Settings, as_json: bool) -> int:
    """Start everything, measure every operation, print the report."""
    info = machine(etcd=etcdlib.version())
    with (
        ProcessPool(client_job, settings.processes, "bench-client") as pool,
        tempfile.TemporaryDirectory(prefix="varstore-bench-") as tmp,
        servers(Path(tmp)) as endpoints,
    ):
        progress(", ".join(f"{name} on {e.address}" for name, e in endpoints.items()))
        set_up_session(endpoints["varstore"].address)
        runs = measure(settings, pool, endpoints)
    sequential = {key: Sequential.of(run) for key, run in runs.sequential.items()}
    concurrent = runs.concurrent
    echo_p50 = sequential["echo"].p50_us
    echo_per_s = concurrent["echo"].calls_per_s
    rows = {
        key: Row(
            key,
            label,
            sequential[key],
            concurrent[key].calls_per_s,
            concurrent[key].server_cpu_us_per_call,
            concurrent[key].errors,
            sequential[key].p50_us / echo_p50,
            concurrent[key].calls_per_s / echo_per_s if echo_per_s else 0.0,
            {n: extra.calls_per_s for (op, n), extra in runs.extra.items() if op == key},
            concurrent[key].calls_per_fsync,
            {n: extra.calls_per_fsync for (op, n), extra in runs.extra.items() if op == key},
        )
        for key, label in OPERATIONS
    }
    targets = evaluate(rows)
    document = json_document(
        info,
        method_text(settings),
        settings,
        rows.values(),
        targets,
        echo_rounds=[asdict(r) for r in runs.echo_rounds],
    )
    print_report(as_json, document, markdown(rows, targets, info, settings, runs.echo_rounds))
    tallies = [*concurrent.items(), *((f"{op} {n}c", r) for (op, n), r in runs.extra.items())]
    for key, tally in tallies:
        if tally.errors:
            progress(f"{key}: {tally.errors} failed calls, first: {tally.first_error}")
    return 1 if any(tally.errors for _, tally in tallies) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = arguments(__doc__, "a smoke run of about 20 s")
    parser.add_argument(
        "--client-processes",
        type=int,
        choices=(1, 2, 4, 8, 16),
        help="processes the 16 clients are spread over (default 4)",
    )
    parser.add_argument("--echo-server", choices=("sync", "aio"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        return run_echo_server(args.echo_server)
    settings = QUICK if args.quick else FULL
    if args.client_processes:
        settings = replace(settings, processes=args.client_processes)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(settings, args.json)
    except etcdlib.EtcdUnavailable as problem:
        progress(f"bench_grpc: {problem}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
