"""Events as database rows, for every SQL backend: one encoding, so a row means the same in
SQLite and PostgreSQL.

An event's columns after its positions are ``type, schema_version, recorded_at_us, source,
metadata, payload, request_id, request_digest``: the time in microseconds since the Unix epoch
(UTC), metadata and payload as compact JSON text, the request columns "" for an event written
without a request id.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_core import from_json

from varstore.eventstore.events import NewEvent, RecordedEvent
from varstore.eventstore.recorder import RecorderError

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "PAGE_ROWS",
    "Fields",
    "by_global_position",
    "by_time_then_global_position",
    "clamp",
    "decode",
    "encode",
    "keyset_pages",
    "micros",
    "moment",
]

#: Rows one query of a keyset page fetches, so a long log never sits in memory at once.
PAGE_ROWS = 1000
#: Fetches the rows after a key (one query), at most the given number: ``fetch(key, size)``.
Fetch = Callable[[tuple[int, ...], int], Sequence[Any]]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

#: An event's columns after its positions: type, schema_version, recorded_at_us, source,
#: metadata, payload, request_id, request_digest.
Fields = tuple[str, int, int, str, str, str, str, str]


def keyset_pages(
    fetch: Fetch,
    after: tuple[int, ...],
    key: Callable[[Any], tuple[int, ...]],
    limit: int | None = None,
) -> Iterator[RecordedEvent]:
    """Events from keyset pages: ``fetch(after, size)`` runs one query for the rows after a
    key in the key's order, ``key(row)`` is a row's key; at most ``limit`` events (all
    without one). Each page is one range scan of an index, and no connection or lock is
    held between pages (the backend's ``fetch`` takes them per call)."""
    left = INT64_MAX if limit is None else max(limit, 0)
    while left > 0:
        size = min(PAGE_ROWS, left)
        rows = fetch(after, size)
        yield from map(decode, rows)
        if len(rows) < size:
            return
        after = key(rows[-1])
        left -= len(rows)


def by_global_position(row: Any) -> tuple[int, ...]:
    """A row's key in global order."""
    return (row[0],)


def by_time_then_global_position(row: Any) -> tuple[int, ...]:
    """A row's key in (recorded_at_us, global_position) order."""
    return (row[5], row[0])


def clamp(value: int) -> int:
    """``value`` within a 64-bit INTEGER's range (a bigger Python int cannot be bound)."""
    return max(INT64_MIN, min(value, INT64_MAX))


def micros(moment_: datetime) -> int:
    """An aware time as microseconds since the epoch (``astimezone`` first: an instant before
    year 1 in UTC could be written but not read back)."""
    return (moment_.astimezone(UTC) - _EPOCH) // _MICROSECOND


def moment(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC time."""
    return _EPOCH + us * _MICROSECOND


def encode(new: NewEvent, session_id: str) -> Fields:
    """``new``'s columns after its positions, or RecorderError if it cannot be stored."""
    if new.recorded_at.utcoffset() is None:
        raise RecorderError(f"{_where(new, session_id)}: recorded_at must be timezone-aware")
    if not INT64_MIN <= new.schema_version <= INT64_MAX:
        raise RecorderError(
            f"{_where(new, session_id)}: schema_version {new.schema_version} is out of range"
        )
    try:
        _check_text(session_id, new.type, new.source, new.request_id, new.request_digest)
        recorded_at_us = micros(new.recorded_at)
        metadata = _json(new.metadata)
        payload = _json(new.payload)
    except (TypeError, ValueError, OverflowError) as e:
        raise RecorderError(f"{_where(new, session_id)} cannot be stored: {e}") from e
    return (
        str(new.type),
        new.schema_version,
        recorded_at_us,
        str(new.source),
        metadata,
        payload,
        str(new.request_id),
        str(new.request_digest),
    )


def _where(new: NewEvent, session_id: str) -> str:
    # Only built for an error: an enum's repr costs more than the rest of encode.
    return f"event {new.type!r} for session {session_id!r}"


def decode(row: Any) -> RecordedEvent:
    """The event a row holds (columns: global_position, session_id, position, then
    :data:`Fields`), or RecorderError if the row is corrupt."""
    (
        global_position,
        session_id,
        position,
        type_,
        schema_version,
        us,
        source,
        metadata,
        payload,
        request_id,
        request_digest,
    ) = row
    try:
        return RecordedEvent(  # positional: this runs once per event on every replay
            session_id,
            position,
            global_position,
            type_,
            from_json(payload),
            _EPOCH + us * _MICROSECOND,
            source,
            _metadata(metadata),
            schema_version,
            request_id,
            request_digest,
        )
    except (TypeError, ValueError, OverflowError) as e:
        raise RecorderError(f"event at global position {global_position} is corrupt: {e}") from e


@functools.lru_cache(maxsize=4096)
def _metadata(text: str) -> Mapping[str, str]:
    """Request metadata repeats (the same reason, the same tags), so each distinct text
    is parsed once; the mapping is shared, and events never change their metadata."""
    parsed: Mapping[str, str] = from_json(text) if text != "{}" else {}
    return parsed


def _check_text(*texts: str) -> None:
    """Text columns hold valid UTF-8 without NUL (PostgreSQL's TEXT refuses NUL, and a lone
    surrogate would fail only when bound, mid-transaction)."""
    for text in texts:
        text.encode()
        if "\x00" in text:
            raise ValueError("text columns cannot hold a NUL character")


def _json(value: object) -> str:
    # JSON escapes NUL and control characters, so any string fits in a TEXT column.
    if not value and isinstance(value, dict):  # most events carry no metadata
        return "{}"
    return _ENCODER.encode(value)


def _json_default(value: object) -> object:
    # json only knows dict; payloads are typed Mapping (a MappingProxyType, say).
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


#: Built once: ``json.dumps`` with options builds an encoder per call (every event's
#: payload and metadata go through here on the write path).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default)
