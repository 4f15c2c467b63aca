"""An in-process recorder: the log lives in lists and is gone when the process ends.

Meant for tests and for trying varstore out. It keeps the SQLite recorder's semantics,
including what it gives back: payloads and metadata are copied through JSON, ``recorded_at``
comes back in UTC, ``type`` as a plain ``str``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from varstore.eventstore.events import NewEvent, RecordedEvent
from varstore.eventstore.recorder import (
    Append,
    AppendResult,
    Conflict,
    Recorded,
    Recorder,
    RecorderError,
)

__all__ = ["MemoryRecorder"]

_INT64 = range(-(2**63), 2**63)
# read_all copies this many events per lock acquisition, so appends are never held up for long.
_CHUNK = 1000


class MemoryRecorder(Recorder):
    """A thread-safe recorder that keeps every event in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The global log: an event's global position is its index + 1.
        self._log: list[RecordedEvent] = []
        self._sessions: dict[str, list[RecordedEvent]] = {}
        self._checkpoint: tuple[int, bytes] | None = None
        self._touches: dict[str, datetime] = {}
        self._closed = False

    def append_many(self, appends: Sequence[Append]) -> list[AppendResult]:
        """Record every append whose expected position holds, as one transaction (see
        :meth:`Recorder.append_many`)."""
        with self._lock:
            self._check_open()
            # Build everything before storing anything: an unstorable event fails the call.
            last: dict[str, int] = {}
            results: list[AppendResult] = []
            recorded: list[RecordedEvent] = []
            conflicted: set[str] = set()  # once an append conflicts, its session's later ones do
            for append in appends:
                sid = append.session_id
                actual = last.get(sid)
                if actual is None:
                    actual = len(self._sessions.get(sid, ()))
                if append.expected_position != actual or sid in conflicted:
                    results.append(Conflict(sid, append.expected_position, actual))
                    conflicted.add(sid)
                    continue
                mine: list[RecordedEvent] = []
                for new in append.events:
                    actual += 1
                    global_position = len(self._log) + len(recorded) + len(mine) + 1
                    mine.append(_recorded(new, sid, actual, global_position))
                recorded.extend(mine)
                results.append(Recorded(tuple(mine)))
                last[sid] = actual
            for event in recorded:
                self._log.append(event)
                self._sessions.setdefault(event.session_id, []).append(event)
            return results

    def read_session(
        self, session_id: str, from_position: int = 1, to_position: int | None = None
    ) -> list[RecordedEvent]:
        """A session's events within the bounds (see :meth:`Recorder.read_session`)."""
        with self._lock:
            self._check_open()
            events = self._sessions.get(session_id, [])
            # Positions are gap-free from 1, so position p sits at index p - 1; clamp so
            # out-of-range bounds never turn into Python's negative indexing.
            start = max(from_position - 1, 0)
            stop = len(events) if to_position is None else max(min(to_position, len(events)), 0)
            return events[start:stop]

    def read_positions(self, session_id: str, positions: Sequence[int]) -> list[RecordedEvent]:
        """A session's events at ``positions`` (see :meth:`Recorder.read_positions`)."""
        with self._lock:
            self._check_open()
            events = self._sessions.get(session_id, [])
            return [events[p - 1] for p in sorted(set(positions)) if 1 <= p <= len(events)]

    def read_all(
        self, after_global_position: int = 0, limit: int | None = None
    ) -> Iterator[RecordedEvent]:
        """Events after the given global position (see :meth:`Recorder.read_all`).

        Lazy and index-based: it copies a chunk at a time under the lock and holds no lock
        while the caller consumes, so appends (and other reads) may happen meanwhile.
        """
        with self._lock:
            self._check_open()  # fail at the call, not at the first next()
        start = max(after_global_position, 0)
        stop = None if limit is None else start + max(limit, 0)
        return self._read_all(start, stop)

    def _read_all(self, index: int, stop: int | None) -> Iterator[RecordedEvent]:
        while stop is None or index < stop:
            end = index + _CHUNK if stop is None else min(index + _CHUNK, stop)
            with self._lock:
                self._check_open()
                chunk = self._log[index:end]
            yield from chunk
            if len(chunk) < end - index:
                return
            index += len(chunk)

    def last_global_position(self) -> int:
        """The highest global position; 0 while the log is empty."""
        with self._lock:
            self._check_open()
            return len(self._log)

    def last_position(self, session_id: str) -> int:
        """The position of a session's last event; 0 if it has none."""
        with self._lock:
            self._check_open()
            return len(self._sessions.get(session_id, ()))

    def save_checkpoint(self, global_position: int, data: bytes) -> None:
        """Keep one checkpoint, in memory like the log itself (see Recorder)."""
        with self._lock:
            self._check_open()
            self._checkpoint = (global_position, bytes(data))

    def load_checkpoint(self) -> tuple[int, bytes] | None:
        """The checkpoint, or None (see Recorder)."""
        with self._lock:
            self._check_open()
            return self._checkpoint

    def drop_checkpoint(self) -> None:
        """Forget the checkpoint (see Recorder)."""
        with self._lock:
            self._check_open()
            self._checkpoint = None

    def save_touches(self, touches: Mapping[str, datetime]) -> None:
        """Keep each session's latest use (see Recorder)."""
        with self._lock:
            self._check_open()
            for session_id, moment in touches.items():
                if moment.utcoffset() is None:
                    raise RecorderError(f"touch of {session_id!r} must be timezone-aware")
                moment = moment.astimezone(UTC)
                known = self._touches.get(session_id)
                if known is None or moment > known:
                    self._touches[session_id] = moment

    def load_touches(self) -> dict[str, datetime]:
        """Every session's latest recorded use (see Recorder)."""
        with self._lock:
            self._check_open()
            return dict(self._touches)

    def close(self) -> None:
        """Drop every event; later calls raise RecorderError. Idempotent."""
        with self._lock:
            self._closed = True
            self._log = []
            self._sessions = {}
            self._checkpoint = None
            self._touches = {}

    def _check_open(self) -> None:
        if self._closed:
            raise RecorderError("recorder is closed")


def _recorded(new: NewEvent, session_id: str, position: int, global_position: int) -> RecordedEvent:
    """``new`` at the given positions, as SQLite would give it back, or RecorderError if SQLite
    could not store it."""
    where = f"event {new.type!r} for session {session_id!r}"
    if new.recorded_at.utcoffset() is None:
        raise RecorderError(f"{where}: recorded_at must be timezone-aware")
    if new.schema_version not in _INT64:
        raise RecorderError(f"{where}: schema_version {new.schema_version} is out of range")
    try:
        for text in (session_id, new.type, new.source, new.request_id, new.request_digest):
            text.encode()  # SQLite's TEXT is UTF-8: a lone surrogate cannot be stored
            if "\x00" in text:  # nor can PostgreSQL's TEXT hold a NUL
                raise ValueError("text columns cannot hold a NUL character")
        recorded_at = new.recorded_at.astimezone(UTC)
        # A JSON round trip both detaches the log from the caller's (mutable) mappings and
        # normalises exactly as SQLite's text columns do (tuples to lists, keys to str...).
        payload = _json_copy(new.payload)
        metadata = _json_copy(new.metadata)
    except (TypeError, ValueError, OverflowError) as e:
        raise RecorderError(f"{where} cannot be stored: {e}") from e
    return RecordedEvent(
        session_id=session_id,
        position=position,
        global_position=global_position,
        type=str(new.type),
        payload=payload,
        recorded_at=recorded_at,
        source=str(new.source),
        metadata=metadata,
        schema_version=new.schema_version,
        request_id=str(new.request_id),
        request_digest=str(new.request_digest),
    )


def _json_copy(value: object) -> Any:
    return json.loads(
        json.dumps(value, separators=(",", ":"), allow_nan=False, default=_json_default)
    )


def _json_default(value: object) -> object:
    # json only knows dict; payloads are typed Mapping (a MappingProxyType, say).
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
