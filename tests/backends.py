"""Every recorder backend the tests run on, in one place: the recorder contract suite and
the stateful model of the store are parametrised over ``BACKENDS``, so a backend joins
both by adding one entry here.

PostgreSQL tests read ``VARSTORE_TEST_PG`` (default: the local test database) and run each
recorder in a schema of its own, dropped when the recorder closes. They skip with a reason
when no server answers, except under ``CI=true``, where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from _support import skip_or_fail
from psycopg import sql

from varstore.eventstore import MemoryRecorder, Recorder, SQLiteRecorder
from varstore.eventstore.postgres import PostgresRecorder

__all__ = ["BACKENDS", "PG_DSN", "ThrowawayPostgresRecorder", "postgres_recorder"]

#: The PostgreSQL database the tests use.
PG_DSN = os.environ.get("VARSTORE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


class ThrowawayPostgresRecorder(PostgresRecorder):
    """A PostgreSQL recorder in a new schema that is dropped when it closes."""

    def close(self) -> None:
        super().close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )


def postgres_recorder(schema: str | None = None) -> PostgresRecorder:
    """A recorder on the test database in ``schema`` (a new, throwaway one if None)."""
    try:
        psycopg.connect(PG_DSN, connect_timeout=5).close()
    except psycopg.Error as problem:
        skip_or_fail(f"PostgreSQL at {PG_DSN} is not reachable: {problem}")
    if schema is None:
        return ThrowawayPostgresRecorder(PG_DSN, schema=f"t_{uuid.uuid4().hex[:16]}")
    return PostgresRecorder(PG_DSN, schema=schema)


#: A fresh, empty recorder of each backend, made in a directory of its own.
BACKENDS: dict[str, Callable[[Path], Recorder]] = {
    "memory": lambda directory: MemoryRecorder(),
    "sqlite": lambda directory: SQLiteRecorder(directory / "events.db"),
    "postgres": lambda directory: postgres_recorder(),
}
