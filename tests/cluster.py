"""Several ``varstore serve`` processes on one PostgreSQL log, for tests.

A :class:`Cluster` owns a schema of its own (dropped when it closes) and names its servers'
database connections ``varstore_<schema>`` (the DSN's ``application_name``), so a test can
terminate exactly those backends. Closing kills every process it started, whatever the test
did, before it drops the schema.

A test takes one through its ``cluster`` fixture: ``with Cluster.opened() as made: yield made``.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import psycopg
from _support import skip_or_fail
from backends import PG_DSN
from psycopg import sql
from servers import ServerProcess, start_server_process

from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = [
    "Cluster",
    "require_postgres",
    "restart_postgres",
    "wait_for_postgres",
]


class Cluster:
    """``varstore serve`` processes sharing one throwaway schema of the test database."""

    def __init__(self, database: str = PG_DSN) -> None:
        #: The DSN of the database the schema is made in (the test database by default).
        self.database = database
        self.schema = f"c_{uuid.uuid4().hex[:12]}"
        #: The application_name of every connection its servers open.
        self.application_name = f"varstore_{self.schema}"
        joiner = "&" if "?" in database else "?"
        self.dsn = (
            f"{database}{joiner}options=-csearch_path%3D{self.schema}"
            f"&application_name={self.application_name}"
        )
        #: Every server started, in order (a restarted one is appended again).
        self.servers: list[ServerProcess] = []
        self._channels: list[grpc.Channel] = []

    @classmethod
    @contextmanager
    def opened(cls, database: str = PG_DSN) -> Iterator[Cluster]:
        """A cluster closed (processes killed, schema dropped) however the block ends; what
        its servers printed last is printed then (pytest shows it when the test failed)."""
        require_postgres(database)
        cluster = cls(database)
        try:
            # Made here, not by the servers starting at once: CREATE SCHEMA IF NOT EXISTS run
            # concurrently can fail (test_cluster tests that race on its own).
            with psycopg.connect(database, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(cluster.schema)))
            yield cluster
        finally:
            print(cluster.output())
            cluster.close()

    def start(self, count: int, *flags: str) -> list[ServerProcess]:
        """Start ``count`` servers at once (extra ``varstore serve`` flags for each)."""
        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(start_server_process, self.dsn, *flags) for _ in range(count)]
        started = [f.result() for f in futures if f.exception() is None]
        self.servers.extend(started)
        for future in futures:
            if future.exception() is not None:
                raise RuntimeError(f"a server of {self.schema} did not start") from (
                    future.exception()
                )
        return started

    def restart(self, server: ServerProcess, *flags: str) -> ServerProcess:
        """Start ``server`` (killed or stopped) again on the address it had."""
        again = start_server_process(self.dsn, "--listen", server.address, *flags)
        self.servers.append(again)
        return again

    def stub(self, server: ServerProcess) -> pb_grpc.VariableStoreStub:
        """A stub on a new channel to ``server`` (closed with the cluster)."""
        channel = grpc.insecure_channel(server.address)
        self._channels.append(channel)
        grpc.channel_ready_future(channel).result(timeout=10)
        return pb_grpc.VariableStoreStub(channel)

    def terminate_backends(self) -> int:
        """``pg_terminate_backend`` every database connection of this cluster's servers;
        returns how many were terminated."""
        return self._count(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()"
        )

    def advisory_locks(self) -> int:
        """How many advisory locks this cluster's servers hold: the roles (such as the TTL
        sweeper's) they hold, since each role is one."""
        return self._count(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s"
        )

    def _count(self, query: str) -> int:
        """The number ``query`` answers, its ``%s`` being this cluster's application_name."""
        with psycopg.connect(self.database, autocommit=True) as conn:
            row = conn.execute(query, (self.application_name,)).fetchone()
        return int(row[0]) if row is not None else 0

    def output(self, last: int = 40) -> str:
        """The ``last`` lines each server printed so far, under a heading naming it."""
        return "\n".join(
            f"--- server {server.address} ---\n" + "\n".join(server.output[-last:])
            for server in self.servers
        )

    def close(self) -> None:
        """Kill every server still running, close the channels, drop the schema."""
        for server in self.servers:
            if server.process.poll() is None:
                server.kill()
        for channel in self._channels:
            channel.close()
        wait_for_postgres(60, self.database)
        self.terminate_backends()
        with psycopg.connect(self.database, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )


def require_postgres(database: str = PG_DSN) -> None:
    """Skip the test (fail it under CI=true) when the database does not answer."""
    try:
        psycopg.connect(database, connect_timeout=5).close()
    except psycopg.Error as problem:
        skip_or_fail(f"PostgreSQL at {database} is not reachable: {problem}")


def restart_postgres(command: list[str], database: str = PG_DSN) -> None:
    """Restart PostgreSQL with ``command`` and wait until ``database`` accepts connections
    again."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed: {done.stdout}{done.stderr}"
    wait_for_postgres(60, database)


def wait_for_postgres(timeout: float, database: str = PG_DSN) -> None:
    """Return once ``database`` accepts a connection; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(database, connect_timeout=2).close()
            return
        except psycopg.Error as problem:
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL did not come back: {problem}") from problem
            time.sleep(0.2)
