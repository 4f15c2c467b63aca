"""A recorder on one SQLite file in WAL mode: the durable single-node backend.

The file holds the log, ``events`` (see ``_CREATE_EVENTS``), and beside it the derived
``checkpoints`` and ``touches`` tables; ``PRAGMA user_version`` records the schema version, and
opening a database of an older version migrates it (version 1 to 2 adds the request
columns). While a recorder is open it holds an exclusive ``flock`` on the side file
``<path>.lock``, which exists only while it is held (closing, or failing to open, removes
it): one varstore process per database. Positions are nevertheless
read from the file inside each write transaction, never from memory, so a second writer
(which the lock keeps out) could only ever cause a reported conflict, not a corrupt log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from varstore.eventstore.events import RecordedEvent
from varstore.eventstore.recorder import (
    Append,
    AppendResult,
    Conflict,
    Recorded,
    Recorder,
    RecorderError,
)
from varstore.eventstore.rows import (
    INT64_MAX,
    Fields,
    by_global_position,
    by_time_then_global_position,
    clamp,
    decode,
    encode,
    keyset_pages,
    micros,
    moment,
)

__all__ = ["SQLiteRecorder"]

_SCHEMA_VERSION = 2
_CREATE_EVENTS = """
CREATE TABLE events (
    global_position INTEGER PRIMARY KEY,
    session_id      TEXT    NOT NULL,
    position        INTEGER NOT NULL,
    type            TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at_us  INTEGER NOT NULL,  -- microseconds since the Unix epoch, UTC
    source          TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,  -- JSON object
    payload         TEXT    NOT NULL,  -- JSON
    request_id      TEXT    NOT NULL DEFAULT '',  -- the writing request's idempotency key
    request_digest  TEXT    NOT NULL DEFAULT '',  -- a digest of that request's body
    UNIQUE (session_id, position)
)
"""
#: Version 1 had no request columns: its events get '' (no request id), as if new.
_MIGRATE_1_TO_2 = (
    "ALTER TABLE events ADD COLUMN request_id TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE events ADD COLUMN request_digest TEXT NOT NULL DEFAULT ''",
)
#: Start-up reads the recent events that carry a request id; only those are indexed.
_CREATE_REQUEST_INDEX = """
CREATE INDEX IF NOT EXISTS events_with_request_ids ON events (recorded_at_us)
WHERE request_id != ''
"""
_COLUMNS = (
    "global_position, session_id, position, type, schema_version, recorded_at_us, source,"
    " metadata, payload, request_id, request_digest"
)
_CREATE_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    global_position INTEGER NOT NULL,
    data BLOB NOT NULL
)
"""

_CREATE_TOUCHES = """
CREATE TABLE IF NOT EXISTS touches (
    session_id     TEXT    PRIMARY KEY,
    touched_at_us  INTEGER NOT NULL  -- microseconds since the Unix epoch, UTC
)
"""

_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SELECT = f"SELECT {_COLUMNS} FROM events"

#: Positions one ``read_positions`` query asks for (SQLite allows 32,766 parameters).
POSITIONS_PER_QUERY = 500
#: A row of ``events``, columns in ``_COLUMNS`` order.
_Row = tuple[int, str, int, str, int, int, str, str, str, str, str]


class SQLiteRecorder(Recorder):
    """A recorder on the SQLite database at ``path`` (created if missing).

    ``synchronous="full"`` (the default) fsyncs every commit: an acknowledged append survives
    power loss. ``"normal"`` fsyncs only at WAL checkpoints: still never corrupt, but a power
    loss may drop the last commits.

    One writer connection, used under a lock, runs each :meth:`append_many` call as one
    transaction (one fsync, so a caller can group-commit concurrent writers' appends); a
    separate read-only connection, under its own lock, serves reads, which WAL lets run
    alongside a write.

    Raises:
        RecorderError: the database cannot be opened, has a newer schema, or is in use by
            another varstore process.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: Literal["full", "normal"] = "full"
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self._path = os.fspath(path)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        _check_openable(self._path)
        # Lock before touching the database, so a second process never even migrates it.
        self._lock_fd = _lock_exclusively(self._path)
        writer = reader = None
        try:
            with _translated(f"cannot open database {self._path}"):
                writer = _connect(self._path, synchronous)
                self._migrate(writer)
                reader = _connect(self._path, synchronous)
                reader.execute("PRAGMA query_only = ON")
        except BaseException:
            for conn in (reader, writer):
                if conn is not None:
                    conn.close()
            _unlock(self._path, self._lock_fd)
            raise
        self._writer = writer
        self._reader = reader

    @property
    def path(self) -> str:
        """The database file's path."""
        return self._path

    def append_many(self, appends: Sequence[Append]) -> list[AppendResult]:
        """Record every append whose expected position holds, in one transaction (see
        :meth:`Recorder.append_many`)."""
        # Encode outside the lock: JSON work for a big batch should not hold up other writers.
        encoded = [[encode(new, append.session_id) for new in append.events] for append in appends]
        with self._write_lock, _translated(f"cannot append to {self._path}"):
            self._check_open()
            if not appends:
                return []
            with _immediate_transaction(self._writer):
                planned = self._positioned(appends, encoded)
                rows = [row for rows in planned if not isinstance(rows, Conflict) for row in rows]
                if rows:
                    self._writer.executemany(_INSERT, rows)
        return [
            rows if isinstance(rows, Conflict) else Recorded(tuple(map(decode, rows)))
            for rows in planned
        ]

    def _positioned(
        self, appends: Sequence[Append], encoded: list[list[Fields]]
    ) -> list[list[_Row] | Conflict]:
        """Each append's rows, or its Conflict; runs inside the write transaction, so the
        positions it reads cannot move before the rows are inserted."""
        planned: list[list[_Row] | Conflict] = []
        # The log's head and the first session's last position in one query (each query
        # hands the GIL to another thread and back, on the commit path).
        global_position, first_last = _heads(self._writer, appends[0].session_id)
        last: dict[str, int] = {appends[0].session_id: first_last}  # chains a session's appends
        conflicted: set[str] = set()  # once an append conflicts, its session's later ones do
        for append, events in zip(appends, encoded, strict=True):
            sid = append.session_id
            actual = last.get(sid)
            if actual is None:
                actual = _last_position(self._writer, sid)
            if append.expected_position != actual or sid in conflicted:
                planned.append(Conflict(sid, append.expected_position, actual))
                conflicted.add(sid)
                continue
            rows: list[_Row] = []
            for fields in events:
                actual += 1
                global_position += 1
                rows.append((global_position, sid, actual, *fields))
            planned.append(rows)
            last[sid] = actual
        return planned

    def read_session(
        self, session_id: str, from_position: int = 1, to_position: int | None = None
    ) -> list[RecordedEvent]:
        """A session's events within the bounds (see :meth:`Recorder.read_session`)."""
        upper = INT64_MAX if to_position is None else clamp(to_position)
        with self._read_lock, _translated(f"cannot read {self._path}"):
            self._check_open()
            rows = self._reader.execute(
                f"{_SELECT} WHERE session_id = ? AND position BETWEEN ? AND ? ORDER BY position",
                (session_id, clamp(from_position), upper),
            ).fetchall()
        return [decode(row) for row in rows]

    def read_positions(self, session_id: str, positions: Sequence[int]) -> list[RecordedEvent]:
        """A session's events at ``positions`` (see :meth:`Recorder.read_positions`), one
        query per :data:`POSITIONS_PER_QUERY` of them."""
        wanted = sorted({clamp(p) for p in positions})
        rows: list[Any] = []
        for start in range(0, len(wanted), POSITIONS_PER_QUERY):
            chunk = wanted[start : start + POSITIONS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            rows += self._fetch(
                f"{_SELECT} WHERE session_id = ? AND position IN ({marks}) ORDER BY position",
                (session_id, *chunk),
            )
        return [decode(row) for row in rows]

    def read_all(
        self, after_global_position: int = 0, limit: int | None = None
    ) -> Iterator[RecordedEvent]:
        """Events after the given global position (see :meth:`Recorder.read_all`).

        Lazy: it queries a page of rows at a time and holds no lock between pages, so appends
        and other reads may happen while the caller consumes. It stops once caught up.
        """
        with self._read_lock:
            self._check_open()  # fail at the call, not at the first next()
        return self._read_all(clamp(after_global_position), limit)

    def _read_all(self, after: int, limit: int | None) -> Iterator[RecordedEvent]:
        def fetch(key: tuple[int, ...], size: int) -> list[Any]:
            return self._fetch(
                f"{_SELECT} WHERE global_position > ? ORDER BY global_position LIMIT ?",
                (*key, size),
            )

        return keyset_pages(fetch, (after,), by_global_position, limit)

    def _fetch(self, query: str, parameters: tuple[Any, ...]) -> list[Any]:
        """The rows of one read query, under the read lock."""
        with self._read_lock, _translated(f"cannot read {self._path}"):
            self._check_open()
            return self._reader.execute(query, parameters).fetchall()

    def last_global_position(self) -> int:
        """The highest global position; 0 while the log is empty."""
        with self._read_lock, _translated(f"cannot read {self._path}"):
            self._check_open()
            return _last_global(self._reader)

    def read_requests(self, recorded_since: datetime) -> Iterator[RecordedEvent]:
        """Recent events that carry a request id (see :meth:`Recorder.read_requests`),
        through the partial index on their time: start-up cost grows with the ids it must
        remember, not with the log."""
        if recorded_since.utcoffset() is None:
            raise RecorderError("recorded_since must be timezone-aware")
        since = clamp(micros(recorded_since))
        with self._read_lock:
            self._check_open()  # fail at the call, not at the first next()
        return self._read_requests(since)

    def _read_requests(self, since_us: int) -> Iterator[RecordedEvent]:
        # Keyset pages in the index's own order (its keys end with the rowid, the global
        # position), so each page is one range scan of the index and no sort.
        def fetch(key: tuple[int, ...], size: int) -> list[Any]:
            return self._fetch(
                f"{_SELECT} WHERE request_id != '' AND (recorded_at_us, global_position) "
                "> (?, ?) ORDER BY recorded_at_us, global_position LIMIT ?",
                (*key, size),
            )

        return keyset_pages(fetch, (since_us, 0), by_time_then_global_position)

    def last_position(self, session_id: str) -> int:
        """The position of a session's last event; 0 if it has none."""
        with self._read_lock, _translated(f"cannot read {self._path}"):
            self._check_open()
            return _last_position(self._reader, session_id)

    def close(self) -> None:
        """Close both connections and release the database's lock file. Idempotent."""
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            try:
                with _translated(f"cannot close {self._path}"):
                    self._reader.close()
                    # The writer goes last: the last connection checkpoints and removes the WAL.
                    self._writer.close()
            finally:
                _unlock(self._path, self._lock_fd)

    def _check_open(self) -> None:
        if self._closed:
            raise RecorderError(f"recorder for {self._path} is closed")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Create the schema in a new database, bring an older one up to date (in the same
        transaction: all or nothing); refuse one from a newer varstore."""
        with _immediate_transaction(conn):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
                raise RecorderError(
                    f"{self._path} is an SQLite database of another program, not varstore's "
                    "(it has tables but no varstore schema version)"
                )
            if version == 0:
                conn.execute(_CREATE_EVENTS)
                conn.execute(_CREATE_REQUEST_INDEX)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif version == 1:
                for statement in _MIGRATE_1_TO_2:
                    conn.execute(statement)
                conn.execute(_CREATE_REQUEST_INDEX)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise RecorderError(
                    f"database {self._path} has schema version {version}; this varstore"
                    f" supports version {_SCHEMA_VERSION}"
                )
            # Derived data beside the log; a database without it simply has none.
            conn.execute(_CREATE_CHECKPOINTS)
            conn.execute(_CREATE_TOUCHES)

    def save_checkpoint(self, global_position: int, data: bytes) -> None:
        """Keep one checkpoint row, replacing the previous one (see Recorder)."""
        with self._write_lock, _translated(f"cannot save a checkpoint in {self._path}"):
            self._check_open()
            with _immediate_transaction(self._writer):
                self._writer.execute(
                    "INSERT OR REPLACE INTO checkpoints (id, global_position, data) "
                    "VALUES (1, ?, ?)",
                    (global_position, data),
                )

    def load_checkpoint(self) -> tuple[int, bytes] | None:
        """The checkpoint row, or None (see Recorder)."""
        with self._read_lock, _translated(f"cannot read the checkpoint of {self._path}"):
            self._check_open()
            row = self._reader.execute(
                "SELECT global_position, data FROM checkpoints WHERE id = 1"
            ).fetchone()
        return (int(row[0]), bytes(row[1])) if row is not None else None

    def drop_checkpoint(self) -> None:
        """Delete the checkpoint row (see Recorder)."""
        with self._write_lock, _translated(f"cannot drop the checkpoint of {self._path}"):
            self._check_open()
            with _immediate_transaction(self._writer):
                self._writer.execute("DELETE FROM checkpoints")

    def save_touches(self, touches: Mapping[str, datetime]) -> None:
        """Upsert each session's latest use, keeping the later time (see Recorder)."""
        rows = []
        for session_id, when in touches.items():
            if when.utcoffset() is None:
                raise RecorderError(f"touch of {session_id!r} must be timezone-aware")
            rows.append((session_id, micros(when)))
        with self._write_lock, _translated(f"cannot record session use in {self._path}"):
            self._check_open()
            with _immediate_transaction(self._writer):
                self._writer.executemany(
                    "INSERT INTO touches (session_id, touched_at_us) VALUES (?, ?) "
                    "ON CONFLICT (session_id) DO UPDATE SET touched_at_us = "
                    "MAX(touched_at_us, excluded.touched_at_us)",
                    rows,
                )

    def load_touches(self) -> dict[str, datetime]:
        """Every session's latest recorded use (see Recorder)."""
        with self._read_lock, _translated(f"cannot read session use in {self._path}"):
            self._check_open()
            rows = self._reader.execute("SELECT session_id, touched_at_us FROM touches").fetchall()
        return {str(sid): moment(int(us)) for sid, us in rows}


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Re-raise sqlite3 errors as RecorderError: the one place that does."""
    try:
        yield
    except sqlite3.Error as e:
        raise RecorderError(f"{action}: {e}") from e


@contextlib.contextmanager
def _immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction (the write lock taken up front), rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT may have rolled back already; the original error is what matters.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise RecorderError(f"database {path} cannot use WAL (journal mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    except BaseException:
        conn.close()
        raise
    return conn


def _lock_exclusively(db_path: str) -> int:
    """An open descriptor of ``<db_path>.lock`` holding an exclusive flock, or RecorderError.

    The lock file exists while a recorder holds it: :func:`_unlock` removes it (still
    holding the flock). So a process that opened the file just before it was removed and
    then won the flock checks that its file is still the one at that path, and if not
    opens the new one (else two processes would each hold a lock on a different file).
    """
    lock_path = f"{db_path}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RecorderError(
                f"cannot create the lock file {lock_path}: {e.strerror or e}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RecorderError(
                f"database {db_path} is in use by another varstore process "
                f"(it holds {lock_path}): stop that server or give another --db"
            ) from None
        except OSError as e:
            os.close(fd)
            raise RecorderError(f"cannot lock {lock_path}: {e.strerror or e}") from None
        try:
            held = os.fstat(fd)
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        if current is not None and (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
            return fd
        os.close(fd)  # removed by the process that held it: lock the new one


def _unlock(db_path: str, fd: int) -> None:
    """Remove ``<db_path>.lock`` and release its flock (see :func:`_lock_exclusively`)."""
    with contextlib.suppress(OSError):
        os.unlink(f"{db_path}.lock")
    os.close(fd)


def _check_openable(db_path: str) -> None:
    """Refuse, in plain words, a path that cannot be a database file this process can read
    (sqlite3 would say only "unable to open database file"). A file it can read but not
    write opens: the server then serves reads and reports itself NOT_SERVING."""
    if os.path.isdir(db_path):
        raise RecorderError(f"{db_path} is a directory, not a database file")
    try:
        fd = os.open(db_path, os.O_RDONLY)
    except FileNotFoundError:
        return  # created on open
    except OSError as e:
        raise RecorderError(f"cannot open database {db_path} to read it: {e.strerror}") from None
    os.close(fd)


def _last_global(conn: sqlite3.Connection) -> int:
    (value,) = conn.execute("SELECT COALESCE(MAX(global_position), 0) FROM events").fetchone()
    return int(value)


def _heads(conn: sqlite3.Connection, session_id: str) -> tuple[int, int]:
    """The highest global position and ``session_id``'s last position (0 when none)."""
    global_position, position = conn.execute(
        "SELECT (SELECT COALESCE(MAX(global_position), 0) FROM events), "
        "(SELECT COALESCE(MAX(position), 0) FROM events WHERE session_id = ?)",
        (session_id,),
    ).fetchone()
    return int(global_position), int(position)


def _last_position(conn: sqlite3.Connection, session_id: str) -> int:
    (value,) = conn.execute(
        "SELECT COALESCE(MAX(position), 0) FROM events WHERE session_id = ?", (session_id,)
    ).fetchone()
    return int(value)
