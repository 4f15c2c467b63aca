"""A recorder on PostgreSQL: one log shared by several varstore servers.

Tables live in one schema (``varstore`` by default): ``events`` (the log; one row per event,
``UNIQUE (session_id, position)``), ``session_heads`` (each session's last position),
``log_head`` (one row: the last global position), ``requests``, ``checkpoints``, ``touches``
and ``schema_version``, with the ``varstore_append`` function. The server creates and migrates
them at start-up (ordered migrations, under an advisory lock so two servers starting at once
do not race) and refuses a schema newer than it knows.

**A global order tailers can never skip.** A sequence taken at insert time would let a reader
pass a row that commits later with a smaller number (the trap the eventsourcing library's
table lock exists for). Here an append transaction first locks the head rows of the sessions
it writes (``SELECT ... FOR UPDATE``, in id order, so a stale expected position is refused
before the global lock is taken), then moves the single ``log_head`` row by the number of
events it inserts and takes its global positions from it. The head row stays locked until
COMMIT, so the next transaction gets higher numbers only after this one is visible:
global positions are gap-free and become visible in order. The unique key on
``(session_id, position)`` is the last line of defence: two servers racing on one session
cannot both win. A request id is claimed once across all servers (the ``requests`` table,
in the same transaction): an append carrying an id another server recorded within the
request TTL is refused as a conflict, so the store reads the log and answers it as a retry.

**One round trip per group commit.** The whole transaction is one call of the
``varstore_append`` function (:mod:`varstore.eventstore.postgres_schema`, which the
migrations create), sent with autocommit on: the statement is its own transaction, and any
failure rolls all of it back.

One writer connection per recorder runs each :meth:`append_many` as one transaction (the
store's group commit); reads take connections from a small pool. A broken connection is
replaced on the next call (a restarted database, ``pg_terminate_backend``). Each append
transaction also sends one NOTIFY (delivered at its commit) for the other servers' tailers;
:meth:`PostgresRecorder.notices` and :meth:`PostgresRecorder.holds_role` are in
:mod:`varstore.eventstore.postgres_cluster`.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import psycopg
import psycopg.conninfo
from psycopg import sql
from psycopg_pool import ConnectionPool

from varstore.eventstore.events import RecordedEvent
from varstore.eventstore.postgres_cluster import PostgresNotices, PostgresRoles, channel_of
from varstore.eventstore.postgres_schema import (
    APPEND,
    MIGRATION_LOCK,
    MIGRATIONS,
    append_arguments,
    append_results,
)
from varstore.eventstore.recorder import (
    Append,
    AppendResult,
    LogNotices,
    Recorder,
    RecorderError,
)
from varstore.eventstore.rows import (
    by_global_position,
    by_time_then_global_position,
    clamp,
    decode,
    encode,
    keyset_pages,
    micros,
    moment,
)

__all__ = ["DEFAULT_SCHEMA", "PostgresRecorder", "describe_dsn", "is_postgres_dsn", "schema_of"]

DEFAULT_SCHEMA: Final = "varstore"
_COLUMNS: Final = (
    "global_position, session_id, position, type, schema_version, recorded_at_us, source,"
    " metadata, payload, request_id, request_digest"
)
T = TypeVar("T")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_postgres_dsn(db: str) -> bool:
    """Whether a ``--db`` value names a PostgreSQL database (by its URL scheme)."""
    return db.startswith(("postgresql://", "postgres://"))


_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*([A-Za-z0-9_]+)")


def schema_of(dsn: str) -> str:
    """The schema a DSN asks for: the first entry of the ``search_path`` its ``options``
    set (``...?options=-csearch_path%3Dmine``), else :data:`DEFAULT_SCHEMA`."""
    try:
        options = psycopg.conninfo.conninfo_to_dict(dsn).get("options") or ""
    except psycopg.Error:
        return DEFAULT_SCHEMA
    found = _SEARCH_PATH.search(str(options))
    return found.group(1).lower() if found else DEFAULT_SCHEMA


def describe_dsn(dsn: str) -> str:
    """A DSN as it may be shown: user, host, port and database, never a password."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "PostgreSQL (unreadable DSN)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    where = f"{user}{parts.get('host', 'localhost')}{port}/{parts.get('dbname', '')}"
    return f"PostgreSQL {where}, schema {schema_of(dsn)}"


def _server_of(dsn: str) -> str:
    """The server and database a DSN names (``PostgreSQL at HOST:PORT, database D``),
    never its password."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "PostgreSQL (unreadable DSN)"
    host = str(parts.get("host") or "localhost")
    database = f", database {parts['dbname']}" if parts.get("dbname") else ""
    return f"PostgreSQL at {host}:{parts.get('port') or 5432}{database}"


def _reason(error: psycopg.Error) -> str:
    """libpq's reason a connection failed, without its preamble (which repeats the host)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    reason = first.rpartition(" failed: ")[2] or first
    return reason.removeprefix("FATAL:").strip()


class PostgresRecorder(Recorder):
    """A recorder on the PostgreSQL database at ``dsn``, in ``schema`` (created if missing;
    by default the one the DSN's ``search_path`` option names, else ``varstore``).

    Raises:
        RecorderError: the database cannot be reached, or holds a newer schema.
        ValueError: ``schema`` is not a plain lower-case identifier.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        pool_size: int = 4,
        request_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        schema = schema_of(dsn) if schema is None else schema
        if _SCHEMA_NAME.fullmatch(schema) is None:
            raise ValueError(f"schema must be a lower-case SQL identifier, not {schema!r}")
        self._dsn = dsn
        self.schema = schema
        self._closed = False
        self._write_lock = threading.Lock()
        self._writer: psycopg.Connection[Any] | None = None
        self._channel = channel_of(schema)
        self._request_ttl_us = int(request_ttl / timedelta(microseconds=1))
        self._roles = PostgresRoles(self._connect, schema)
        try:
            first = self._connect()
        except psycopg.OperationalError as e:
            raise RecorderError(f"cannot connect to {_server_of(dsn)}: {_reason(e)}") from None
        with _translated("cannot open the PostgreSQL log"):
            with first as conn:
                self._migrate(conn)
            self._pool = ConnectionPool(
                dsn,
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True},
                configure=self._configure,
                open=True,
                name=f"varstore-{schema}",
            )

    # -- connections ----------------------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    def _connect(self) -> psycopg.Connection[Any]:
        """A new connection whose search_path is the log's schema (which need not exist
        yet: only the migration, under its lock, creates it)."""
        conn = psycopg.connect(self._dsn, autocommit=True)
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _writer_connection(self) -> psycopg.Connection[Any]:
        """The writer connection, reconnected if the last one broke."""
        if self._writer is None or self._writer.closed or self._writer.broken:
            if self._writer is not None:
                self._writer.close()
            self._writer = self._connect()
        return self._writer

    def _using(self, action: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """What ``work`` returns, done on a pooled connection. A connection found dead (a
        restarted database, a terminated backend) is dropped and the work done again at
        once on another: every use of the pool is a read or an idempotent upsert. (The
        pool's own check would sleep 1, 2, 4, 8 s between dead connections.)"""
        self._check_open()
        attempts = 0
        with _translated(action):
            while True:
                attempts += 1
                with self._pool.connection() as conn:
                    try:
                        return work(conn)
                    except psycopg.OperationalError:
                        if not conn.broken or attempts > self._pool.max_size:
                            raise

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Apply the migrations this database lacks; refuse one from a newer varstore."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            # Under the lock: two servers creating one schema at once would collide.
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = int(row[0]) if row is not None and row[0] is not None else 0
            if version > len(MIGRATIONS):
                raise RecorderError(
                    f"the PostgreSQL log (schema {self.schema!r}) has schema version {version}; "
                    f"this varstore supports up to version {len(MIGRATIONS)}"
                )
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)  # constant SQL
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    # -- appending ------------------------------------------------------------------------

    def append_many(self, appends: Sequence[Append]) -> list[AppendResult]:
        """Record every append whose expected position holds, in one transaction (see
        :meth:`Recorder.append_many` and the module docstring for the order it keeps)."""
        encoded = [[encode(new, append.session_id) for new in append.events] for append in appends]
        arguments = [*append_arguments(appends, encoded), self._channel, self._request_ttl_us]
        with self._write_lock, _translated("cannot append to the PostgreSQL log"):
            self._check_open()
            if not appends:
                return []
            conn = self._writer_connection()
            try:
                row = conn.execute(APPEND, arguments).fetchone()  # autocommit: one transaction
            except BaseException:
                # Whatever state a failure left the connection in (a backend terminated in
                # the middle of a statement can leave it open yet unusable), the next
                # append starts on a new one.
                self._writer = None
                conn.close()
                raise
        assert row is not None  # the function returns one row
        return append_results(appends, encoded, *row)

    # -- reading --------------------------------------------------------------------------

    def read_session(
        self, session_id: str, from_position: int = 1, to_position: int | None = None
    ) -> list[RecordedEvent]:
        """A session's events within the bounds (see :meth:`Recorder.read_session`)."""
        upper = clamp(to_position) if to_position is not None else clamp(2**63)
        rows = self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE session_id = %s "
            "AND position BETWEEN %s AND %s ORDER BY position",
            (session_id, clamp(from_position), upper),
        )
        return [decode(row) for row in rows]

    def read_positions(self, session_id: str, positions: Sequence[int]) -> list[RecordedEvent]:
        """A session's events at ``positions`` (see :meth:`Recorder.read_positions`), in
        one query."""
        wanted = sorted({clamp(p) for p in positions})
        if not wanted:
            return []
        rows = self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE session_id = %s "
            "AND position = ANY(%s::bigint[]) ORDER BY position",
            (session_id, wanted),
        )
        return [decode(row) for row in rows]

    def read_all(
        self, after_global_position: int = 0, limit: int | None = None
    ) -> Iterator[RecordedEvent]:
        """Events after the given global position (see :meth:`Recorder.read_all`); lazy,
        a query per chunk, no connection held between chunks."""
        self._check_open()
        return self._read_all(clamp(after_global_position), limit)

    def _read_all(self, after: int, limit: int | None) -> Iterator[RecordedEvent]:
        def fetch(key: tuple[int, ...], size: int) -> list[Any]:
            return self._fetch(
                f"SELECT {_COLUMNS} FROM events WHERE global_position > %s "
                "ORDER BY global_position LIMIT %s",
                (*key, size),
            )

        return keyset_pages(fetch, (after,), by_global_position, limit)

    def _fetch(self, query: str, parameters: tuple[Any, ...]) -> list[Any]:
        """The rows of one read query, on a pooled connection."""
        return self._using(
            "cannot read the PostgreSQL log",
            lambda conn: conn.execute(query, parameters).fetchall(),
        )

    def read_requests(self, recorded_since: datetime) -> Iterator[RecordedEvent]:
        """Recent events that carry a request id (see :meth:`Recorder.read_requests`),
        through the partial index on their time; lazy, a query per chunk."""
        if recorded_since.utcoffset() is None:
            raise RecorderError("recorded_since must be timezone-aware")
        self._check_open()
        return self._read_requests(clamp(micros(recorded_since)))

    def _read_requests(self, since_us: int) -> Iterator[RecordedEvent]:
        # Keyset pages in the index's order: each page is one range scan, no sort.
        def fetch(key: tuple[int, ...], size: int) -> list[Any]:
            return self._fetch(
                f"SELECT {_COLUMNS} FROM events WHERE request_id <> '' "
                "AND (recorded_at_us, global_position) > (%s, %s) "
                "ORDER BY recorded_at_us, global_position LIMIT %s",
                (*key, size),
            )

        return keyset_pages(fetch, (since_us, 0), by_time_then_global_position)

    def last_position(self, session_id: str) -> int:
        """The position of a session's last event; 0 if it has none."""
        [row] = self._fetch(
            "SELECT COALESCE(MAX(position), 0) FROM events WHERE session_id = %s", (session_id,)
        )
        return int(row[0])

    def last_global_position(self) -> int:
        """The highest global position; 0 while the log is empty."""
        [row] = self._fetch("SELECT COALESCE(MAX(global_position), 0) FROM events", ())
        return int(row[0])

    # -- derived data ---------------------------------------------------------------------

    def save_checkpoint(self, global_position: int, data: bytes) -> None:
        """Keep one checkpoint row, replacing the previous one (see Recorder)."""
        self._using(
            "cannot save a checkpoint in the PostgreSQL log",
            lambda conn: conn.execute(
                "INSERT INTO checkpoints (id, global_position, data) VALUES (1, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET global_position = excluded.global_position, "
                "data = excluded.data",
                (global_position, bytes(data)),
            ),
        )

    def load_checkpoint(self) -> tuple[int, bytes] | None:
        """The checkpoint row, or None (see Recorder)."""
        found = self._using(
            "cannot read the checkpoint of the PostgreSQL log",
            lambda conn: conn.execute(
                "SELECT global_position, data FROM checkpoints WHERE id = 1"
            ).fetchone(),
        )
        return (int(found[0]), bytes(found[1])) if found is not None else None

    def drop_checkpoint(self) -> None:
        """Delete the checkpoint row (see Recorder)."""
        self._using(
            "cannot drop the checkpoint of the PostgreSQL log",
            lambda conn: conn.execute("DELETE FROM checkpoints"),
        )

    def save_touches(self, touches: Mapping[str, datetime]) -> None:
        """Upsert each session's latest use, keeping the later time (see Recorder)."""
        for session_id, when in touches.items():
            if when.utcoffset() is None:
                raise RecorderError(f"touch of {session_id!r} must be timezone-aware")
        if not touches:
            return
        ids = list(touches)
        times = [micros(touches[sid]) for sid in ids]
        self._using(
            "cannot record session use in the PostgreSQL log",
            lambda conn: conn.execute(
                "INSERT INTO touches (session_id, touched_at_us) "
                "SELECT * FROM unnest(%s::text[], %s::bigint[]) "
                "ON CONFLICT (session_id) DO UPDATE SET touched_at_us = "
                "GREATEST(touches.touched_at_us, excluded.touched_at_us)",
                (ids, times),
            ),
        )

    def load_touches(self) -> dict[str, datetime]:
        """Every session's latest recorded use (see Recorder)."""
        rows = self._using(
            "cannot read session use in the PostgreSQL log",
            lambda conn: conn.execute("SELECT session_id, touched_at_us FROM touches").fetchall(),
        )
        return {str(sid): moment(int(us)) for sid, us in rows}

    # -- several servers ------------------------------------------------------------------

    def notices(self) -> LogNotices:
        """A listener to every writer's commits (one NOTIFY per append transaction), on
        its own connection; the caller closes it."""
        self._check_open()
        return PostgresNotices(self._connect, self._channel, self._writer_backend)

    def _writer_backend(self) -> int | None:
        """The process id of the writer connection's backend (its NOTIFYs are ours)."""
        writer = self._writer
        return writer.info.backend_pid if writer is not None and not writer.closed else None

    def holds_role(self, role: str) -> bool:
        """Whether this recorder holds ``role`` among every server on this log (an
        advisory lock, taken now if free, held while its connection lives)."""
        return not self._closed and self._roles.holds(role)

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the writer connection, the pool and the roles' connection. Idempotent."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            if self._writer is not None:
                self._writer.close()
            self._pool.close()
            self._roles.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RecorderError(f"recorder for the PostgreSQL log {self.schema!r} is closed")


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Re-raise psycopg errors as RecorderError: the one place that does. The message names
    no host or password (the DSN never reaches a client)."""
    try:
        yield
    except psycopg.Error as e:
        raise RecorderError(f"{action}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
