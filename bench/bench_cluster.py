"""varstore on PostgreSQL beside SQLite, in one run: the gRPC operations on one and two
servers, the database's own floor, watch lag across servers, client failover, CPU per write.

What it measures
----------------
Every server is a ``python -m varstore.api.cli serve --db DB --listen 127.0.0.1:0`` child
process (default ``--sync full``); all start together before the first phase:

* **SQLite**: one server on ``<tmp>/bench.db``;
* **PG 1 server**: one server on PostgreSQL (``VARSTORE_BENCH_PG``, default
  ``postgresql://postgres@127.0.0.1:5432/test``), in a fresh schema of its own;
* **PG 2 servers**: two servers on one more fresh schema (one log);
* **PG 2 servers, a session each**: the same two servers, the clients of each on a session
  of their own (``bench`` through A, ``bench-b`` through B), so their writes do not contend
  (16 clients only: its 1-client figures would be PG 2 servers' again).

Each PostgreSQL schema is named by the DSN (``options=-csearch_path%3D<schema>``, with
``application_name=<schema>`` so the bench can tell its backends apart) and dropped at the
end. The operations are ``bench_grpc.py``'s, imported from it (the same requests on the
same session of 100 integer variables, generated stubs, no client cache), in the same two
ways: **1 client** (one thread, one channel, calls one after the other; p50 latency) and
**16 clients** (4 spawned processes x 4 threads, 2 x 8 with ``--quick``; closed loop, calls
completed in a window). With two servers the 16 clients are split 8/8 over both (the first
half of the processes on A, the second on B, all on one session, so the two servers' writes
contend on it) and the 1-client figures use A.
Rounds interleave the setups (round 1: every operation on every setup, then round 2 ...),
so load that comes and goes on the machine spreads over all of them.

**CPU per write**: over each 16-client window, user+system CPU of each server process and
of PostgreSQL (``/proc/PID/stat``): the backends whose ``application_name`` is the setup's
schema plus PostgreSQL's background processes (WAL writer, checkpointer ...); the column
"all postgres" sums every ``postgres`` process instead (with reaped children), which
includes whatever else uses the database meanwhile. "events per commit" counts the rows
the phase added to ``events`` over their distinct ``xmin`` (append transactions).

**The database's own floor** (``cluster_floor.py``; plain psycopg 3, in one more schema):
``INSERT`` of one row per transaction (autocommit), of 100 rows per transaction
(``executemany`` inside BEGIN/COMMIT), and one row plus ``UPDATE`` of a single counter row
per transaction (the pattern of varstore's ``log_head``, which serialises commits), each
with 1 connection and with 16 (spread over the same client processes).

**Watch lag across servers** (``cluster_lag.py``): on the two-server log, one writer
thread does sequential SetVariable calls through A for a window; a WatchSession on B and
one on A (the same-server reference), each in its own thread and channel, started caught
up. Lag = when the watcher receives the event minus when the writer received the write's
answer (``time.monotonic_ns`` in this one process; negative if B's stream beats A's
answer); the "from call start" column measures from when the write was sent instead.

**Client failover** (``cluster_failover.py``), last, on the two-server log, in a session
of its own: the Python client
(``varstore.client.connect("A,B")``, caching off) loops set/get on one variable. If that
client does not take an address list, a raw grpc channel on
``ipv4:127.0.0.1:PA,127.0.0.1:PB`` with the ``round_robin`` policy and a retry loop (1 s
per attempt, 10 ms pause after a failure) stands in; the report says which. Each attempt
finds the server the loop is using (the larger CPU rise over a short window), SIGKILLs it,
and measures from the kill to the end of the first successful call begun after it (at most
one call's latency more than the outage); the killed server is then restarted on its
address (``--listen`` the same port) and the next attempt follows.

How to read it
--------------
Absolute numbers drift between machines and runs; the ratios between setups measured in
the same run mean more. On a small machine the clients, the servers and PostgreSQL share
the cores, so two servers cannot scale linearly; the CPU table says what each write costs
each process, and from it the throughput with one core per server. Other work on the
machine (see the load average in the header) shows up as noise.

Usage: ``.venv/bin/python bench/bench_cluster.py [--quick] [--json]`` from the repository
root. ``--quick`` is a smoke run (GetVariable and SetVariable only, short windows, one
failover; about 15 s); the default run takes about 5 minutes. Progress goes to stderr.
Exit status 1 if a watcher missed or repeated an event or a failover did not recover;
2 if PostgreSQL cannot be reached.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bench_grpc
import grpc
import psycopg
from bench_grpc import (
    ConcurrentRun,
    Job,
    Sequential,
    SequentialRun,
    Settings,
    client_job,
    cpu_seconds,
    measure_sequential,
    run_concurrent,
)
from benchlib import (  # bench/ is sys.path[0] when this file runs
    CALL_TIMEOUT,
    SESSION_ID,
    Child,
    ProcessPool,
    Target,
    arguments,
    child_server,
    machine,
    machine_line,
    markdown_table,
    print_report,
    progress,
    receive_all,
    set_up_session,
    targets_text,
    varstore_server,
)
from cluster_failover import FailoverRow, FailoverSettings, failover_table, measure_failover
from cluster_floor import FloorJob, FloorRow, floor_job, floor_table, measure_floor
from cluster_lag import LagRow, lag_table, measure_watch_lag
from clusterlib import (
    PG_DSN,
    CpuSample,
    CpuSpent,
    Database,
    all_postgres_cpu,
    enter_together,
    schema_dsn,
    session_position,
    wait_for_session,
)

LABELS = dict(bench_grpc.OPERATIONS)
WRITES = ("set", "set10", "set100")
CLIENTS = 16


@dataclass(frozen=True)
class ClusterSettings:
    """How long each part runs."""

    grpc: Settings  # bench_grpc's phases, per operation and setup
    operations: tuple[str, ...]
    floor_seconds: float  # window of each floor row
    watch_seconds: float  # the writer's window
    failover: FailoverSettings


FULL = ClusterSettings(
    Settings(3, 50, 1500, 4.5, 0.5, 4.5, CLIENTS, 4),
    ("get", "set", "get10", "get100", "set10", "set100"),
    floor_seconds=3.0,
    watch_seconds=3.0,
    failover=FailoverSettings(attempts=3, detect_seconds=0.5, settle_seconds=2.0),
)
QUICK = ClusterSettings(
    Settings(1, 20, 100, 0.4, 0.1, 0.2, CLIENTS, 2),
    ("get", "set"),
    floor_seconds=0.2,
    watch_seconds=0.5,
    failover=FailoverSettings(attempts=1, detect_seconds=0.3, settle_seconds=0.3),
)


# -- setups ---------------------------------------------------------------------------------


@dataclass
class Setup:
    """One column group of the table: its servers and, on PostgreSQL, its schema."""

    key: str
    label: str
    servers: list[Child]
    schema: str | None = None
    #: The session each server's clients use (the same one unless given one per server).
    sessions: tuple[str, ...] = ()
    #: The 1-client figures of another setup on the same servers, session and schema.
    sequential_as: str | None = None

    def session_of(self, index: int) -> str:
        """The session the clients of server ``index`` use."""
        return self.sessions[index] if self.sessions else SESSION_ID

    def sample(self, db: Database) -> CpuSample:
        """CPU so far of the servers and, on PostgreSQL, of the database's processes."""
        servers = tuple(cpu_seconds(s.process.pid) for s in self.servers)
        if self.schema is None:
            return CpuSample(servers, {}, 0.0)
        backends: dict[int, float] = {}
        for pid in db.backends(self.schema):
            with suppress(OSError):  # gone since it was listed
                backends[pid] = cpu_seconds(pid)
        return CpuSample(servers, backends, all_postgres_cpu())


def share_sessions(setup: Setup) -> None:
    """Each benchmark session of ``setup``, made through the first server whose clients
    use it (unless made already), then applied by every server."""
    made: set[str] = set()
    for index, server in enumerate(setup.servers):
        session_id = setup.session_of(index)
        if session_id in made:
            continue
        made.add(session_id)
        try:
            set_up_session(server.address, session_id)
        except grpc.RpcError as failure:  # another setup on this log made it first
            if failure.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        position = session_position(server.address, session_id)
        for other in setup.servers:
            wait_for_session(other.address, session_id, position)


# -- the gRPC operations ------------------------------------------------------------------


@dataclass
class Spread:
    """16 clients over a setup's servers, pooled over rounds: calls, CPU, commits."""

    run: ConcurrentRun
    cpu: CpuSpent
    events: int = 0
    commits: int = 0


def handle(job: object, connection: multiprocessing.connection.Connection) -> None:
    """A pool process's job: a floor job, or bench_grpc's client job."""
    if isinstance(job, FloorJob):
        floor_job(job, connection)
    else:
        client_job(job, connection)  # type: ignore[arg-type]


def run_spread(
    pool: ProcessPool,
    operation: str,
    setup: Setup,
    db: Database,
    settings: Settings,
    into: Spread,
) -> None:
    """One round: bench_grpc's closed-loop clients, the processes split over the servers."""
    per_process = settings.clients // len(pool.links)
    window = settings.concurrent_seconds / settings.rounds
    start_at = time.monotonic() + 0.2  # time for every client to connect
    measure_from = start_at + settings.concurrent_warmup
    measure_until = measure_from + window
    servers = setup.servers
    for index, link in enumerate(pool.links):
        server = index * len(servers) // len(pool.links)
        address, session_id = servers[server].address, setup.session_of(server)
        first = index * per_process
        timing = (start_at, measure_from, measure_until)
        link.send(Job(operation, address, first, per_process, *timing, session_id=session_id))
    time.sleep(max(0.0, measure_from - time.monotonic()))
    before = setup.sample(db)
    time.sleep(max(0.0, measure_until - time.monotonic()))
    into.cpu.add(before, setup.sample(db))
    into.run.seconds += window
    limit = measure_until + CALL_TIMEOUT + 15
    for tally in receive_all(pool.links, limit, "a client process did not report back"):
        into.run.completed += tally.completed
        into.run.errors += tally.errors
        into.run.first_error = into.run.first_error or tally.first_error


@dataclass
class GrpcResults:
    """Everything the gRPC phases measured."""

    echo_sequential: SequentialRun = field(default_factory=SequentialRun)
    echo_concurrent: ConcurrentRun = field(default_factory=ConcurrentRun)
    sequential: dict[tuple[str, str], SequentialRun] = field(default_factory=dict)
    spreads: dict[tuple[str, str], Spread] = field(default_factory=dict)


def measure_grpc(
    cluster: ClusterSettings,
    pool: ProcessPool,
    echo: Child,
    setups: Sequence[Setup],
    db: Database,
) -> GrpcResults:
    """Every round: echo, then each operation on each setup (1 client, then 16)."""
    settings = cluster.grpc
    results = GrpcResults()
    last_global: dict[str, int] = {}  # per schema: the last global position counted
    for setup in setups:
        for op in cluster.operations:
            if setup.sequential_as is None:
                results.sequential[setup.key, op] = SequentialRun()
            results.spreads[setup.key, op] = Spread(
                ConcurrentRun(), CpuSpent([0.0] * len(setup.servers))
            )
        if setup.schema is not None:
            last_global[setup.schema] = db.appended(setup.schema, 0)[2]
    pid = echo.process.pid
    for round_ in range(settings.rounds):
        measure_sequential("echo", echo.address, pid, settings, round_, results.echo_sequential)
        for op in cluster.operations:
            for setup in setups:
                if setup.sequential_as is not None:
                    continue
                first = setup.servers[0]
                run = results.sequential[setup.key, op]
                measure_sequential(op, first.address, first.process.pid, settings, round_, run)
                progress(f"round {round_} 1 client {LABELS[op]} on {setup.label}: done")
        run_concurrent(pool, "echo", echo.address, pid, settings, results.echo_concurrent)
        for op in cluster.operations:
            for setup in setups:
                spread = results.spreads[setup.key, op]
                run_spread(pool, op, setup, db, settings, spread)
                if setup.schema is not None and op in WRITES:
                    events, commits, last = db.appended(setup.schema, last_global[setup.schema])
                    last_global[setup.schema] = last
                    spread.events += events
                    spread.commits += commits
                progress(
                    f"round {round_} 16 clients {LABELS[op]} on {setup.label}: "
                    f"{spread.run.calls_per_s:,.0f} calls/s so far"
                )
    return results


# -- the report -----------------------------------------------------------------------------


def grpc_table(
    cluster: ClusterSettings, setups: Sequence[Setup], results: GrpcResults
) -> tuple[str, dict[str, float]]:
    """The operations table, and each setup's 16-client SetVariable calls/s."""
    measured = [s for s in setups if s.sequential_as is None]  # their own 1-client figures
    header = ["operation"]
    header += [f"{s.label} 1c p50 µs" for s in measured]
    header += [f"{s.label} 16c calls/s" for s in setups]
    header += [f"{s.label} / SQLite 16c" for s in setups[1:]]
    cells = []
    for op in cluster.operations:
        sequential = [Sequential.of(results.sequential[s.key, op]) for s in measured]
        runs = [results.spreads[s.key, op].run for s in setups]
        row = [LABELS[op]] + [f"{q.p50_us:,.0f}" for q in sequential]
        for run in runs:
            errors = f" ({run.errors} errors)" if run.errors else ""
            row.append(f"{run.calls_per_s:,.0f}{errors}")
        base = runs[0].calls_per_s
        row += [f"{r.calls_per_s / base:.2f}x" if base else "-" for r in runs[1:]]
        cells.append(row)
    writes = {s.key: results.spreads[s.key, "set"].run.calls_per_s for s in setups}
    text = markdown_table(header, "l" + "r" * (len(header) - 1), cells)
    for s in setups:
        for op in cluster.operations:
            run = results.spreads[s.key, op].run
            if run.errors:
                text += f"\n\n{s.label}, {LABELS[op]}: {run.errors} failed calls; the first: "
                text += run.first_error
    return text, writes


@dataclass(frozen=True)
class CpuRow:
    """CPU per call of one write operation on one setup, and what it implies."""

    setup: str
    operation: str
    calls_per_s: float
    server_us: list[float]
    postgres_us: float | None
    postgres_all_us: float | None
    events_per_commit: float | None
    one_core_per_server: float
    postgres_cores: float | None


def cpu_rows(
    cluster: ClusterSettings, setups: Sequence[Setup], results: GrpcResults
) -> list[CpuRow]:
    """A row per write operation and setup, from its 16-client windows."""
    rows = []
    for setup in setups:
        for op in cluster.operations:
            if op not in WRITES:
                continue
            spread = results.spreads[setup.key, op]
            calls = spread.run.completed
            if not calls:
                continue
            server_us = [seconds * 1e6 / calls for seconds in spread.cpu.servers]
            design = 1e6 / max(server_us) if max(server_us) > 0 else 0.0
            on_pg = setup.schema is not None
            pg_us = spread.cpu.postgres * 1e6 / calls if on_pg else None
            rows.append(
                CpuRow(
                    setup.label,
                    LABELS[op],
                    spread.run.calls_per_s,
                    server_us,
                    pg_us,
                    spread.cpu.postgres_all * 1e6 / calls if on_pg else None,
                    spread.events / spread.commits if spread.commits else None,
                    design,
                    design * pg_us / 1e6 if pg_us is not None else None,
                )
            )
    return rows


def cpu_table(rows: Sequence[CpuRow]) -> str:
    """The CPU rows as a markdown table."""
    header = (
        "setup",
        "operation",
        "16c calls/s",
        "server CPU µs/call (each server)",
        "PostgreSQL CPU µs/call",
        "all postgres µs/call",
        "events per commit",
        "one core per server: calls/s",
        "PostgreSQL cores needed then",
    )
    cells = [
        (
            r.setup,
            r.operation,
            f"{r.calls_per_s:,.0f}",
            " + ".join(f"{us:,.0f}" for us in r.server_us),
            "-" if r.postgres_us is None else f"{r.postgres_us:,.0f}",
            "-" if r.postgres_all_us is None else f"{r.postgres_all_us:,.0f}",
            "-" if r.events_per_commit is None else f"{r.events_per_commit:.1f}",
            f"{r.one_core_per_server:,.0f}",
            "-" if r.postgres_cores is None else f"{r.postgres_cores:.2f}",
        )
        for r in rows
    ]
    return markdown_table(header, "llrrrrrrr", cells)


def evaluate(
    writes: dict[str, float], lags: Sequence[LagRow], failovers: Sequence[FailoverRow]
) -> list[Target]:
    """The three targets of the issue."""
    ratio = writes["pg1"] / writes["sqlite"] if writes["sqlite"] else 0.0
    across = lags[0]
    times = [r.recovery_ms for r in failovers]
    worst = None if any(t is None for t in times) else max(t for t in times if t is not None)
    return [
        Target(
            "PostgreSQL (1 server) SetVariable 16-client throughput / SQLite's",
            f"{ratio:.2f}x",
            ">= 0.80x",
            ratio >= 0.8,
        ),
        Target(
            "watch lag across servers, p99",
            f"{across.p99_ms:.1f} ms",
            "< 100 ms",
            across.p99_ms < 100,
        ),
        Target(
            f"client failover, worst of {len(failovers)}",
            "never" if worst is None else f"{worst:,.0f} ms",
            "< 2,000 ms",
            worst is not None and worst < 2000,
        ),
    ]


def method_text(cluster: ClusterSettings, echo: Sequential, echo_per_s: float) -> str:
    """How the numbers were taken, and the reference, in words."""
    s = cluster.grpc
    return (
        f"Reference: an empty grpcio echo call (bench_grpc's echo server), p50 "
        f"{echo.p50_us:,.0f} µs, {echo_per_s:,.0f} calls/s at 16 clients. gRPC phases: "
        f"{s.rounds} round(s), the setups interleaved; 1 client = {s.warmup_calls} warm-up "
        f"calls then up to {s.calls} timed calls per operation and setup; 16 clients = "
        f"{s.processes} processes x {s.clients // s.processes} threads, {s.concurrent_warmup:g} s "
        f"warm-up per round, {s.concurrent_seconds:g} s of window in all. Floor windows "
        f"{cluster.floor_seconds:g} s; watch window {cluster.watch_seconds:g} s. Every server "
        f"runs --sync full (SQLite fsyncs each group commit; PostgreSQL runs with its "
        f"synchronous_commit)."
    )


CPU_COLUMNS = (
    "Server CPU: each server process. PostgreSQL CPU: the backends of the setup's schema "
    "(by application_name) plus PostgreSQL's background processes (WAL writer, checkpointer "
    "...). All postgres: every postgres process, including whatever else used the database "
    "meanwhile. Events per commit: events the phase appended / append transactions (distinct "
    "xmin); every write here is one event (an atomic SetVariables too), so it is the writes "
    "each group commit carried."
)
FORMULA = (
    "One core per server: calls/s = 1,000,000 / (the largest per-server CPU µs per call), "
    "i.e. N x 1,000,000 / (server CPU µs per call) when N servers share the load evenly (each "
    "server's figure also holds the work of applying the other servers' writes from the log, "
    "so it is for the N measured); PostgreSQL then needs (calls/s x PostgreSQL CPU µs per "
    "call / 1,000,000) cores. The single log_head row caps append transactions at the "
    "floor's counter-row rate whatever the cores; group commit multiplies it by the events "
    "per commit."
)


def markdown(
    info: dict[str, str],
    cluster: ClusterSettings,
    method: str,
    tables: dict[str, str],
    mode: str,
    targets: list[Target],
) -> str:
    """The report: machine, the five tables with their notes, method and targets."""
    return "\n".join(
        [
            machine_line(info),
            "",
            (
                "Numbers on a shared machine are noisy: other processes ran too (see the load "
                "averages above, at the start and at the end)."
            ),
            "",
            (
                "**gRPC operations** (1 client: p50 latency, through server A of two; 16 "
                "clients: throughput, 8 on each of two servers)"
            ),
            "",
            tables["grpc"],
            "",
            "**CPU per write** (16 clients)",
            "",
            tables["cpu"],
            "",
            CPU_COLUMNS,
            "",
            FORMULA,
            "",
            "**The database's own floor** (plain psycopg 3, own schema)",
            "",
            tables["floor"],
            "",
            (
                "**Watch delivery lag across servers** (lag = watcher receipt - writer's receipt "
                "of the write's answer)"
            ),
            "",
            tables["lag"],
            "",
            (
                f"**Client failover** ({mode}; from SIGKILL to the end of the first call begun "
                "after it)"
            ),
            "",
            tables["failover"],
            "",
            f"Measured: {method}",
            "",
            targets_text(targets),
        ]
    )


@contextmanager
def started(
    db: Database, directory: Path, echo_command: list[str]
) -> Iterator[tuple[Child, list[Setup], ExitStack]]:
    """The echo server and every setup's servers, stopped on the way out (with whatever
    else is entered on the stack it yields)."""
    pg1, pg2 = db.schema("pg1"), db.schema("pg2")
    with ExitStack() as stack:
        echo, sqlite, one, two_a, two_b = enter_together(
            stack,
            [
                child_server("echo", echo_command),
                varstore_server(directory / "bench.db"),
                varstore_server(schema_dsn(pg1)),
                varstore_server(schema_dsn(pg2)),
                varstore_server(schema_dsn(pg2)),
            ],
        )
        setups = [
            Setup("sqlite", "SQLite", [sqlite]),
            Setup("pg1", "PG 1 server", [one], pg1),
            Setup("pg2", "PG 2 servers", [two_a, two_b], pg2),
            Setup(
                "pg2s",
                "PG 2 servers, a session each",
                [two_a, two_b],
                pg2,
                (SESSION_ID, f"{SESSION_ID}-b"),
                sequential_as="pg2",
            ),
        ]
        with ThreadPoolExecutor(len(setups)) as sharing:
            for done in [sharing.submit(share_sessions, setup) for setup in setups]:
                done.result()
        yield echo, setups, stack


@dataclass
class Measured:
    """What every part measured."""

    setups: list[Setup]
    grpc: GrpcResults
    lags: list[LagRow]
    floor: list[FloorRow]
    client: str
    failovers: list[FailoverRow]


def measure_all(cluster: ClusterSettings, db: Database) -> Measured:
    """Every part, one after the other, on servers started once."""
    echo_command = [
        sys.executable,
        str(Path(bench_grpc.__file__).resolve()),
        "--echo-server",
        "sync",
    ]
    with (
        ProcessPool(handle, cluster.grpc.processes, "bench-cluster") as pool,
        tempfile.TemporaryDirectory(prefix="varstore-cluster-") as tmp,
        started(db, Path(tmp), echo_command) as (echo, setups, stack),
    ):
        progress(
            "servers: "
            + "; ".join(f"{s.label} {', '.join(c.address for c in s.servers)}" for s in setups)
        )
        results = measure_grpc(cluster, pool, echo, setups, db)
        pair = setups[2]
        lags = measure_watch_lag(pair.servers[0], pair.servers[1], cluster.watch_seconds)
        progress(f"watch lag across servers: p99 {lags[0].p99_ms:.2f} ms")
        floor = measure_floor(pool, db.schema("floor"), cluster.floor_seconds)
        assert pair.schema is not None
        client, failovers = measure_failover(
            pair.servers, schema_dsn(pair.schema), stack, cluster.failover
        )
    return Measured(setups, results, lags, floor, client, failovers)


def run(cluster: ClusterSettings, as_json: bool) -> int:
    """Measure, then print the report."""
    info = machine(postgresql="unknown")
    try:
        db = Database()
    except psycopg.Error as problem:
        progress(f"PostgreSQL at {PG_DSN} cannot be reached: {problem}")
        return 2
    try:
        info["postgresql"] = db.version()
        measured = measure_all(cluster, db)
        info["load average at the end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        db.close()
    setups, results = measured.setups, measured.grpc
    reference = Sequential.of(results.echo_sequential)
    method = method_text(cluster, reference, results.echo_concurrent.calls_per_s)
    grpc_text, writes = grpc_table(cluster, setups, results)
    cpu = cpu_rows(cluster, setups, results)
    targets = evaluate(writes, measured.lags, measured.failovers)
    tables = {
        "grpc": grpc_text,
        "cpu": cpu_table(cpu),
        "floor": floor_table(measured.floor),
        "lag": lag_table(measured.lags),
        "failover": failover_table(measured.failovers),
    }
    document = {
        "machine": info,
        "method": method,
        "formula": FORMULA,
        "settings": asdict(cluster),
        "echo": {
            "sequential": asdict(reference),
            "concurrent_calls_per_s": results.echo_concurrent.calls_per_s,
        },
        "grpc": [
            {
                "setup": s.key,
                "operation": op,
                "sequential": asdict(
                    Sequential.of(results.sequential[s.sequential_as or s.key, op])
                ),
                "concurrent_calls_per_s": results.spreads[s.key, op].run.calls_per_s,
                "concurrent_errors": results.spreads[s.key, op].run.errors,
            }
            for s in setups
            for op in cluster.operations
        ],
        "cpu": [asdict(r) for r in cpu],
        "floor": [asdict(r) for r in measured.floor],
        "watch_lag": [asdict(r) for r in measured.lags],
        "failover": {
            "client": measured.client,
            "attempts": [asdict(r) for r in measured.failovers],
        },
        "targets": [asdict(t) for t in targets],
    }
    text = markdown(info, cluster, method, tables, measured.client, targets)
    print_report(as_json, document, text)
    for (key, op), spread in results.spreads.items():
        if spread.run.errors:
            progress(f"{key} {op}: {spread.run.errors} failed calls: {spread.run.first_error}")
    broken = any(r.error or r.delivered != r.writes for r in measured.lags)
    return 1 if broken or any(r.recovery_ms is None for r in measured.failovers) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. SIGTERM ends the run as an exception would: servers stopped, schemas
    dropped."""
    args = arguments(__doc__, "a smoke run of about 15 s").parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return run(QUICK if args.quick else FULL, args.json)


if __name__ == "__main__":
    sys.exit(main())
