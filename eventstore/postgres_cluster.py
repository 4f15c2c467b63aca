"""What several servers on one PostgreSQL log need besides the log itself: notices of each
other's commits (LISTEN/NOTIFY) and roles only one of them holds at a time (advisory locks).

Each append transaction sends ``NOTIFY`` on the schema's channel with the last global
position it wrote; PostgreSQL delivers it when (and only if) the transaction commits, so a
notice never announces what a reader cannot see yet. :class:`PostgresNotices` listens on its
own connection; a lost connection is re-opened and reported as "notices may have been
missed" (0), so the tailer reads the log in full after any reconnect.

:class:`PostgresRoles` holds session-level advisory locks on its own connection: a server
holds a role while its connection lives, and loses it (to another server) when the
connection or the process dies.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import psycopg
from psycopg import sql

from varstore.eventstore.recorder import LogNotices, RecorderError

__all__ = ["PostgresNotices", "PostgresRoles", "channel_of"]

log = logging.getLogger(__name__)

#: Longest pause between two attempts to reopen a lost listening connection.
_MAX_BACKOFF: Final = 2.0


def channel_of(schema: str) -> str:
    """The NOTIFY channel of the log in ``schema``."""
    return f"varstore_{schema}"


Connect = Callable[[], psycopg.Connection[Any]]


class PostgresNotices(LogNotices):
    """Notices of commits to the log in one schema, on a dedicated connection. Notices sent
    by the backend ``own_backend()`` names (this server's writer, whose commits the store
    applies itself) are left out."""

    def __init__(
        self, connect: Connect, channel: str, own_backend: Callable[[], int | None] = lambda: None
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._own_backend = own_backend
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._backoff = 0.05
        self._lock = threading.Lock()

    def wait(self, timeout: float) -> int | None:
        """See :meth:`LogNotices.wait`."""
        if self._closed:
            raise RecorderError("notices are closed")
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return self._reopen()
        try:
            latest: int | None = None
            notices = [*conn.notifies(timeout=timeout, stop_after=1)]
            # Whatever else arrived meanwhile is already buffered: take it too.
            notices += conn.notifies(timeout=0)
            own = self._own_backend()  # after: the writer may have connected meanwhile
            for notice in notices:
                if notice.pid != own:
                    latest = max(latest or 0, _position(notice.payload))
            return latest
        except psycopg.Error as lost:
            if self._closed:
                raise RecorderError("notices are closed") from lost
            log.warning("lost the connection that listens for commits: %s", _line(lost))
            self._drop()
            return self._reopen()

    def _reopen(self) -> int:
        """Open and LISTEN again; 0 (read the log), or RecorderError after a pause."""
        try:
            conn = self._connect()
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except psycopg.Error as failed:
            pause, self._backoff = self._backoff, min(_MAX_BACKOFF, self._backoff * 2)
            time.sleep(pause)
            raise RecorderError(f"cannot listen for commits: {_line(failed)}") from failed
        with self._lock:
            if self._closed:
                conn.close()
                raise RecorderError("notices are closed")
            self._conn = conn
        self._backoff = 0.05
        return 0

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """See :meth:`LogNotices.close`."""
        with self._lock:
            self._closed = True
        self._drop()


class PostgresRoles:
    """Roles held through session-level advisory locks on one dedicated connection."""

    def __init__(self, connect: Connect, schema: str) -> None:
        self._connect = connect
        self._schema = schema
        self._conn: psycopg.Connection[Any] | None = None
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def holds(self, role: str) -> bool:
        """Whether this process holds ``role`` (taken now if free); False while the
        database cannot be reached."""
        with self._lock:
            try:
                conn = self._connection()
                if role in self._held:
                    conn.execute("SELECT 1")  # the lock lives as long as the connection
                    return True
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key(role),)).fetchone()
            except psycopg.Error as lost:
                log.warning("cannot hold the %s role: %s", role, _line(lost))
                self._reset()
                return False
            if row is not None and row[0]:
                self._held.add(role)
                return True
            return False

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._reset()
            self._conn = self._connect()
        return self._conn

    def _reset(self) -> None:
        """Forget the connection, and with it every role it held."""
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._held.clear()

    def _key(self, role: str) -> int:
        """A 63-bit advisory lock key for ``role`` in this schema."""
        digest = hashlib.blake2b(f"varstore/{self._schema}/{role}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big") >> 1

    def close(self) -> None:
        """Release every role (by closing the connection). Idempotent."""
        with self._lock:
            self._reset()


def _position(payload: str) -> int:
    try:
        return max(0, int(payload))
    except ValueError:
        return 0


def _line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
