"""What the parts of ``bench_cluster.py`` share: PostgreSQL schemas and DSNs, the CPU of
servers and of PostgreSQL, servers started together, sessions applied by every server.

The scripts run as ``python bench/<script>.py`` from the repository root, so ``bench/`` is
``sys.path[0]`` and they import this module as ``clusterlib``.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from bench_grpc import TICKS_PER_SECOND
from benchlib import CALL_TIMEOUT, Child, open_channel
from psycopg import sql

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

#: The database every schema of the run is made in.
PG_DSN = os.environ.get("VARSTORE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")

# -- PostgreSQL: schemas, DSNs and CPU ----------------------------------------------------


class Database:
    """The bench's own connection: the schemas it makes (dropped on close) and the
    PostgreSQL processes whose CPU it counts. A statement whose connection broke (a
    restarted database) is run once more on a new one."""

    def __init__(self) -> None:
        """Connect to :data:`PG_DSN` (``psycopg.Error`` if it cannot)."""
        self.conn = self._connect()
        self.tag = uuid.uuid4().hex[:8]
        self.schemas: list[str] = []

    @staticmethod
    def _connect() -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)

    def _execute(
        self, query: sql.Composed | str, parameters: tuple[Any, ...] = ()
    ) -> psycopg.Cursor[tuple[Any, ...]]:
        try:
            return self.conn.execute(query, parameters)
        except psycopg.OperationalError:
            if not self.conn.broken:
                raise
            self.conn = self._connect()
            return self.conn.execute(query, parameters)

    def schema(self, name: str) -> str:
        """A new, empty schema, dropped on close. Made here, not by the servers: two
        servers starting at once on a missing schema can both try to create it."""
        schema = f"bench_{self.tag}_{name}"
        self._execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        self.schemas.append(schema)
        return schema

    def version(self) -> str:
        """The server's version, as ``SHOW server_version`` says."""
        row = self._execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"

    def backends(self, application: str) -> list[int]:
        """PIDs of the backends named ``application`` and of the background processes."""
        rows = self._execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = %s OR backend_type <> 'client backend'",
            (application,),
        ).fetchall()
        return [int(row[0]) for row in rows]

    def appended(self, schema: str, after: int) -> tuple[int, int, int]:
        """Events past global position ``after``, their append transactions, the last."""
        row = self._execute(
            sql.SQL(
                "SELECT count(*), count(DISTINCT xmin::text), coalesce(max(global_position), %s) "
                "FROM {} WHERE global_position > %s"
            ).format(sql.Identifier(schema, "events")),
            (after, after),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def close(self) -> None:
        """Drop every schema it named, then disconnect."""
        for schema in self.schemas:
            with suppress(psycopg.Error):
                self._execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
        self.conn.close()


def schema_dsn(schema: str) -> str:
    """The DSN of ``schema``, its backends named after it."""
    joiner = "&" if "?" in PG_DSN else "?"
    return f"{PG_DSN}{joiner}options=-csearch_path%3D{schema}&application_name={schema}"


def all_postgres_cpu() -> float:
    """CPU seconds of every ``postgres`` process, with the children each has reaped (so a
    backend that exits is still counted, in the postmaster)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, _, rest = (entry / "stat").read_text().rpartition(")")
        except OSError:
            continue
        if head.partition("(")[2] == "postgres":
            fields = rest.split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # u, s, cu, cs time
    return total / TICKS_PER_SECOND


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far: each server, the setup's PostgreSQL processes, all postgres."""

    servers: tuple[float, ...]
    backends: dict[int, float]
    postgres_all: float


@dataclass
class CpuSpent:
    """CPU seconds spent between samples, summed over windows."""

    servers: list[float]
    postgres: float = 0.0
    postgres_all: float = 0.0

    def add(self, before: CpuSample, after: CpuSample) -> None:
        """Add what was spent from ``before`` to ``after`` (a backend new since counts
        from zero)."""
        for index, (a, b) in enumerate(zip(after.servers, before.servers, strict=True)):
            self.servers[index] += a - b
        self.postgres += sum(t - before.backends.get(pid, 0.0) for pid, t in after.backends.items())
        self.postgres_all += after.postgres_all - before.postgres_all


# -- servers and sessions -----------------------------------------------------------------


def enter_together(
    stack: ExitStack, managers: Sequence[AbstractContextManager[Child]]
) -> list[Child]:
    """Start every server at once (each waits for its listening line in a thread); on the
    way out every one gets SIGTERM at once, then each is waited for."""
    with ThreadPoolExecutor(len(managers)) as starter:
        futures = [starter.submit(manager.__enter__) for manager in managers]
    children: list[Child] = []
    for manager, future in zip(managers, futures, strict=True):
        if future.exception() is None:
            stack.push(manager)
            children.append(future.result())
    stack.callback(terminate, children)
    for future in futures:
        future.result()  # the first failure, once the started ones will be stopped
    return children


def terminate(children: Sequence[Child]) -> None:
    """SIGTERM to each child still running (without waiting)."""
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)


def wait_for_session(address: str, session_id: str, position: int) -> None:
    """Until the server at ``address`` has applied ``session_id`` up to ``position``."""
    channel = open_channel(address)
    try:
        stub = varstore_pb2_grpc.VariableStoreStub(channel)
        request = pb.GetSessionRequest(session_id=session_id, min_position=position)
        stub.GetSession(request, timeout=CALL_TIMEOUT)
    finally:
        channel.close()


def session_position(address: str, session_id: str) -> int:
    """The position of ``session_id`` on the server at ``address``."""
    channel = open_channel(address)
    try:
        stub = varstore_pb2_grpc.VariableStoreStub(channel)
        request = pb.GetSessionRequest(session_id=session_id)
        return int(stub.GetSession(request, timeout=CALL_TIMEOUT).header.position)
    finally:
        channel.close()
