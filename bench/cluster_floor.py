"""The database's own floor for ``bench_cluster.py``: plain psycopg 3 transactions on the
same PostgreSQL, in a schema of their own, run by the bench's client processes.

Three kinds, each with 1 connection and with 16 (over the bench's client processes, closed
loop): ``INSERT`` of one row per transaction (autocommit), of 100 rows per transaction
(``executemany`` inside BEGIN/COMMIT), and ``UPDATE`` of one counter row plus an ``INSERT``
per transaction, the pattern of varstore's ``log_head`` row, which serialises commits.
"""

from __future__ import annotations

import array
import multiprocessing.connection
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from benchlib import ProcessPool, markdown_table, p50_p99, progress, receive_all
from clusterlib import schema_dsn
from psycopg import sql

#: Connections each kind runs with: one, and as many as the gRPC phases' clients.
CONNECTIONS = (1, 16)
#: (kind, rows per transaction, label) of every row pair of the table.
FLOOR_KINDS: tuple[tuple[str, int, str], ...] = (
    ("plain", 1, "INSERT 1 row per transaction (autocommit)"),
    ("plain", 100, "INSERT 100 rows per transaction (executemany)"),
    ("counter", 1, "UPDATE one counter row + INSERT 1 row per transaction"),
)
PAYLOAD = bytes(100)


@dataclass(frozen=True)
class FloorJob:
    """What a client process runs: ``threads`` psycopg connections in a closed loop."""

    dsn: str
    kind: str  # "plain" or "counter"
    rows: int
    phase: int
    first_client: int
    threads: int


@dataclass(frozen=True)
class Window:
    """When the connections start, and the window whose transactions count
    (``time.monotonic()`` values; CLOCK_MONOTONIC is system-wide on Linux)."""

    start_at: float
    measure_from: float
    measure_until: float


@dataclass(frozen=True)
class FloorTally:
    """Transactions a process completed in the window, their latencies, its failures."""

    latencies: bytes
    errors: int
    first_error: str


def floor_transaction(conn: psycopg.Connection[Any], job: FloorJob, client: int, n: int) -> None:
    """One transaction of ``job``'s kind."""
    if job.kind == "counter":
        with conn.transaction():
            row = conn.execute(
                "UPDATE floor_head SET n = n + %s RETURNING n", (job.rows,)
            ).fetchone()
            assert row is not None
            conn.execute(
                "INSERT INTO floor_counted (id, session_id, payload) VALUES (%s, %s, %s)",
                (int(row[0]), "floor", PAYLOAD),
            )
        return
    base = (job.phase << 40) + (client << 32) + n * job.rows
    if job.rows == 1:
        conn.execute(
            "INSERT INTO floor_rows (id, session_id, payload) VALUES (%s, %s, %s)",
            (base, "floor", PAYLOAD),
        )
        return
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO floor_rows (id, session_id, payload) VALUES (%s, %s, %s)",
            [(base + i, "floor", PAYLOAD) for i in range(job.rows)],
        )


@dataclass
class FloorClient:
    """One connection: opened, then (once ``go`` is set) a closed loop in ``window``."""

    job: FloorJob
    client: int
    connected: threading.Semaphore
    go: threading.Event
    window: Window | None = None  # set before ``go``
    latencies: array.array[int] = field(default_factory=lambda: array.array("q"))
    errors: int = 0
    first_error: str = ""

    def run(self) -> None:
        """Connect, say so, wait for the window, loop until its end."""
        try:
            conn = psycopg.connect(self.job.dsn, autocommit=True)
        except psycopg.Error as failure:
            self.errors, self.first_error = 1, str(failure)
            self.connected.release()
            return
        with conn:
            self.connected.release()
            self.go.wait()
            window = self.window
            assert window is not None
            time.sleep(max(0.0, window.start_at - time.monotonic()))
            n = 0
            now = time.monotonic()
            while now < window.measure_until:
                began = time.perf_counter_ns()
                try:
                    floor_transaction(conn, self.job, self.client, n)
                    ok = True
                except psycopg.Error as failure:
                    ok = False
                    self.errors += 1
                    self.first_error = self.first_error or str(failure)
                took = time.perf_counter_ns() - began
                n += 1
                now = time.monotonic()
                if ok and window.measure_from <= now < window.measure_until:
                    self.latencies.append(took)


def floor_job(job: FloorJob, connection: multiprocessing.connection.Connection) -> None:
    """In a client process: open ``job``'s connections (one thread each), answer "ready",
    receive the :class:`Window`, run it, answer a :class:`FloorTally`."""
    connected = threading.Semaphore(0)
    go = threading.Event()
    clients = [FloorClient(job, job.first_client + i, connected, go) for i in range(job.threads)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    for _ in threads:
        connected.acquire(timeout=60)
    connection.send("ready")
    window: Window = connection.recv()
    for client in clients:
        client.window = window
    go.set()
    for thread in threads:
        thread.join()
    latencies = array.array("q")
    for client in clients:
        latencies.extend(client.latencies)
    connection.send(
        FloorTally(
            latencies.tobytes(),
            sum(c.errors for c in clients),
            next((c.first_error for c in clients if c.first_error), ""),
        )
    )


@dataclass(frozen=True)
class FloorRow:
    """One row of the floor table."""

    what: str
    connections: int
    transactions_per_s: float
    rows_per_s: float
    p50_ms: float
    errors: int


def create_floor_tables(schema: str) -> None:
    """The floor's tables in ``schema``: two for rows, one for the counter row."""
    with psycopg.connect(schema_dsn(schema), autocommit=True) as conn:
        for table in ("floor_rows", "floor_counted"):
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id BIGINT PRIMARY KEY, session_id TEXT NOT NULL, "
                    "payload BYTEA NOT NULL)"
                ).format(sql.Identifier(schema, table))
            )
        conn.execute(
            sql.SQL("CREATE TABLE {} (n BIGINT NOT NULL)").format(
                sql.Identifier(schema, "floor_head")
            )
        )
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES (0)").format(sql.Identifier(schema, "floor_head"))
        )


def measure_floor(pool: ProcessPool, schema: str, seconds: float) -> list[FloorRow]:
    """Every kind of transaction with 1 connection and with 16."""
    create_floor_tables(schema)
    rows: list[FloorRow] = []
    phase = 0
    for kind, size, what in FLOOR_KINDS:
        for connections in CONNECTIONS:
            phase += 1
            links = pool.links[: min(len(pool.links), connections)]
            per = connections // len(links)
            for index, link in enumerate(links):
                link.send(FloorJob(schema_dsn(schema), kind, size, phase, index * per, per))
            receive_all(links, time.monotonic() + 90, "a floor process did not connect")
            start_at = time.monotonic() + 0.05
            measure_from = start_at + min(0.5, seconds / 2)  # warm-up
            until = measure_from + seconds
            for link in links:
                link.send(Window(start_at, measure_from, until))
            tallies: list[FloorTally] = receive_all(
                links, until + 30, "a floor process did not report back"
            )
            latencies = array.array("q")
            for tally in tallies:
                latencies.frombytes(tally.latencies)
            completed = len(latencies)
            p50 = p50_p99(latencies)[0] / 1e6 if latencies else 0.0
            errors = sum(t.errors for t in tallies)
            rows.append(
                FloorRow(
                    what, connections, completed / seconds, completed * size / seconds, p50, errors
                )
            )
            progress(f"floor: {what}, {connections} connections: {completed / seconds:,.0f}/s")
            if errors:
                progress(f"floor errors: {next(t.first_error for t in tallies if t.first_error)}")
    return rows


def floor_table(rows: Sequence[FloorRow]) -> str:
    """The floor as a markdown table."""
    header = ("what", "connections", "transactions/s", "rows/s", "p50 ms per transaction")
    cells = [
        (
            r.what,
            str(r.connections),
            f"{r.transactions_per_s:,.0f}" + (f" ({r.errors} errors)" if r.errors else ""),
            f"{r.rows_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
        )
        for r in rows
    ]
    return markdown_table(header, "lrrrr", cells)
