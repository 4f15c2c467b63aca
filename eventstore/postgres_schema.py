"""The PostgreSQL log's schema as ordered migrations, and how its append function is called.

Migration 4 creates ``varstore_append`` (``CREATE OR REPLACE``): the server that migrates the
database owns the function's version, as it owns the tables'.

``varstore_append`` does a whole group commit in one statement: called with autocommit on,
``SELECT ... FROM varstore_append(...)`` is its own transaction, one round trip in all. In
order, it

1. locks the head row of each session the group writes (missing ones inserted first, in the
   order the caller lists the sessions; then ``FOR UPDATE`` in the table's order, so a stale
   expected position is refused before the global lock is taken);
2. plans each append against the running heads: its expected position must equal its
   session's head, and an append after a conflict in its session conflicts too;
3. claims the request ids of the appends about to be recorded (``requests``); an id another
   writer claimed within the request TTL makes its append a conflict: the plan is made again
   with those ids refused, and the ids claimed for appends no longer recorded are given back;
4. moves the single ``log_head`` row by the number of events and numbers them gap-free, in
   order, after it (the row stays locked until COMMIT: global positions become visible in
   order), inserts the events, moves the session heads, and sends one NOTIFY on ``channel``
   with the last global position (delivered at COMMIT).

It returns, per append, whether it was recorded and the head of its session it was decided
against (a recorded append's events follow it), and the global position the group's first
event follows (NULL when the group recorded no event).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from varstore.eventstore.recorder import Append, AppendResult, Conflict, Recorded
from varstore.eventstore.rows import Fields, clamp, decode, micros

__all__ = ["APPEND", "MIGRATIONS", "MIGRATION_LOCK", "append_arguments", "append_results"]

#: The advisory lock key that serialises migrations across servers ("varstore" in ASCII).
MIGRATION_LOCK: Final = 0x7661727374_6F7265

_APPEND_FUNCTION: Final = """
CREATE OR REPLACE FUNCTION varstore_append(
    sessions             TEXT[],    -- the group's sessions, distinct: head rows made in this order
    append_session       INTEGER[], -- per append: its session's index in sessions (from 1)
    append_expected      BIGINT[],  -- the position its session must be at
    append_count         INTEGER[], -- how many events it carries
    append_request       TEXT[],    -- its request id ('' for none)
    append_requested_at  BIGINT[],  -- when its request was recorded (microseconds since the epoch)
    event_append         INTEGER[], -- per event, in append order: its append's index (from 1)
    event_session        TEXT[],
    event_position       BIGINT[],  -- its session position, if its append is recorded
    event_type           TEXT[],
    event_schema_version BIGINT[],
    event_recorded_at    BIGINT[],
    event_source         TEXT[],
    event_metadata       TEXT[],
    event_payload        TEXT[],
    event_request        TEXT[],
    event_digest         TEXT[],
    channel              TEXT,      -- NOTIFY channel
    request_ttl          BIGINT,    -- microseconds a claimed request id stays another writer's
    OUT recorded         BOOLEAN[], -- per append: recorded or not (a conflict)
    OUT heads            BIGINT[],  -- per append: its session's head it was decided against
    OUT after_global     BIGINT     -- the group's first event takes the next global position
) LANGUAGE plpgsql
-- Each statement's plan is made once per connection, not for every call: a plan made for
-- the call's arrays would be no better, and planning would cost more than running it.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    initial  BIGINT[];
    running  BIGINT[];
    poisoned BOOLEAN[];
    taken    TEXT[] := '{}';
    claimed  TEXT[] := '{}';
    claiming BOOLEAN;
    total    BIGINT;
    s        INTEGER;
BEGIN
    INSERT INTO session_heads (session_id, position)
    SELECT unnest(sessions), 0 ON CONFLICT (session_id) DO NOTHING;
    SELECT array_agg(locked.position ORDER BY locked.i) INTO initial FROM (
        SELECT session_heads.position, listed.i
        FROM session_heads JOIN unnest(sessions) WITH ORDINALITY AS listed(session_id, i)
            USING (session_id)
        ORDER BY session_heads.session_id FOR UPDATE OF session_heads
    ) AS locked;

    FOR attempt IN 1 .. 2 LOOP  -- the second pass only when another writer took a request id
        running := initial;
        poisoned := array_fill(false, ARRAY[cardinality(sessions)]);
        claiming := false;
        total := 0;
        FOR i IN 1 .. cardinality(append_session) LOOP
            s := append_session[i];
            heads[i] := running[s];
            recorded[i] := NOT poisoned[s] AND append_expected[i] = running[s]
                AND NOT (append_request[i] = ANY (taken));
            IF recorded[i] THEN
                running[s] := running[s] + append_count[i];
                total := total + append_count[i];
                claiming := claiming OR append_request[i] <> '';
            ELSE
                poisoned[s] := true;
            END IF;
        END LOOP;
        EXIT WHEN attempt = 2 OR NOT claiming;
        WITH wanted AS (
            SELECT DISTINCT ON (asked.id) asked.id, asked.at
            FROM unnest(append_request, append_requested_at, recorded)
                WITH ORDINALITY AS asked(id, at, ok, i)
            WHERE asked.ok AND asked.id <> ''
            ORDER BY asked.id, asked.i DESC
        ), won AS (
            INSERT INTO requests (request_id, recorded_at_us) SELECT id, at FROM wanted
            ON CONFLICT (request_id) DO UPDATE SET recorded_at_us = excluded.recorded_at_us
            WHERE requests.recorded_at_us < excluded.recorded_at_us - request_ttl
            RETURNING request_id
        )
        SELECT coalesce(array_agg(wanted.id) FILTER (WHERE won.request_id IS NULL), '{}'),
               coalesce(array_agg(won.request_id), '{}')
        INTO taken, claimed
        FROM wanted LEFT JOIN won ON won.request_id = wanted.id;
        EXIT WHEN cardinality(taken) = 0;
    END LOOP;

    IF cardinality(taken) > 0 THEN  -- give back what was claimed for appends now refused
        DELETE FROM requests WHERE request_id IN (
            SELECT unnest(claimed)
            EXCEPT SELECT asked.id FROM unnest(append_request, recorded) AS asked(id, ok)
            WHERE asked.ok
        );
    END IF;
    IF total = 0 THEN
        RETURN;
    END IF;

    UPDATE log_head SET global_position = global_position + total
    RETURNING global_position - total INTO after_global;
    INSERT INTO events (global_position, session_id, position, type, schema_version,
                        recorded_at_us, source, metadata, payload, request_id, request_digest)
    SELECT after_global + row_number() OVER (ORDER BY e.i), e.session_id, e.position, e.type,
           e.schema_version, e.recorded_at_us, e.source, e.metadata, e.payload, e.request_id,
           e.request_digest
    FROM unnest(event_append, event_session, event_position, event_type, event_schema_version,
                event_recorded_at, event_source, event_metadata, event_payload, event_request,
                event_digest)
        WITH ORDINALITY AS e(a, session_id, position, type, schema_version, recorded_at_us,
                             source, metadata, payload, request_id, request_digest, i)
    WHERE recorded[e.a];
    UPDATE session_heads SET position = moved.position
    FROM unnest(sessions, running, initial) AS moved(session_id, position, was)
    WHERE session_heads.session_id = moved.session_id AND moved.position <> moved.was;
    PERFORM pg_notify(channel, (after_global + total)::text);
END
$$"""

#: Ordered migrations: the schema version each leaves behind is its index + 1.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE events (
            global_position BIGINT PRIMARY KEY,
            session_id      TEXT    NOT NULL,
            position        BIGINT  NOT NULL,
            type            TEXT    NOT NULL,
            schema_version  BIGINT  NOT NULL,
            recorded_at_us  BIGINT  NOT NULL,
            source          TEXT    NOT NULL,
            metadata        TEXT    NOT NULL,
            payload         TEXT    NOT NULL,
            UNIQUE (session_id, position)
        )""",
        "CREATE TABLE session_heads (session_id TEXT PRIMARY KEY, position BIGINT NOT NULL)",
        """CREATE TABLE log_head (
            id INTEGER PRIMARY KEY CHECK (id = 1), global_position BIGINT NOT NULL
        )""",
        "INSERT INTO log_head (id, global_position) VALUES (1, 0)",
        """CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY CHECK (id = 1), global_position BIGINT NOT NULL,
            data BYTEA NOT NULL
        )""",
        "CREATE TABLE touches (session_id TEXT PRIMARY KEY, touched_at_us BIGINT NOT NULL)",
    ),
    (  # 2: each event names the request that wrote it (idempotent retries)
        "ALTER TABLE events ADD COLUMN request_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE events ADD COLUMN request_digest TEXT NOT NULL DEFAULT ''",
        """CREATE INDEX events_with_request_ids ON events (recorded_at_us, global_position)
        WHERE request_id <> ''""",
    ),
    (  # 3: each request id claimed once across every server on the log
        """CREATE TABLE requests (
            request_id TEXT PRIMARY KEY, recorded_at_us BIGINT NOT NULL
        )""",
        """INSERT INTO requests (request_id, recorded_at_us)
        SELECT request_id, max(recorded_at_us) FROM events WHERE request_id <> ''
        GROUP BY request_id""",
    ),
    (  # 4: a group commit in one statement (one round trip)
        _APPEND_FUNCTION,
    ),
)

#: One group commit: :func:`append_arguments`, then the NOTIFY channel and the request TTL
#: in microseconds.
APPEND: Final = (
    "SELECT recorded, heads, after_global FROM varstore_append("
    "%s::text[], %s::integer[], %s::bigint[], %s::integer[], %s::text[], %s::bigint[], "
    "%s::integer[], %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::bigint[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s, %s)"
)


def append_arguments(appends: Sequence[Append], encoded: Sequence[Sequence[Fields]]) -> list[str]:
    """``varstore_append``'s array arguments for a group (``encoded``: each append's events
    as :func:`~varstore.eventstore.rows.encode` makes them), in its order."""
    sessions = sorted({append.session_id for append in appends})
    index = {session_id: number for number, session_id in enumerate(sessions, 1)}
    per_append: list[tuple[int, int, int, str, int]] = []
    per_event: list[tuple[Any, ...]] = []
    for number, (append, events) in enumerate(zip(appends, encoded, strict=True), 1):
        expected = clamp(append.expected_position)
        first = append.events[0] if append.events else None
        request_id, requested_at = (
            (first.request_id, micros(first.recorded_at)) if first is not None else ("", 0)
        )
        per_append.append(
            (index[append.session_id], expected, len(events), request_id, requested_at)
        )
        per_event.extend(
            (number, append.session_id, clamp(expected + n), *fields)
            for n, fields in enumerate(events, 1)
        )
    return [
        _texts(sessions),
        *_columns(per_append, _APPEND_ARRAYS),
        *_columns(per_event, _EVENT_ARRAYS),
    ]


def append_results(
    appends: Sequence[Append],
    encoded: Sequence[Sequence[Fields]],
    recorded: Sequence[bool],
    heads: Sequence[int],
    after_global: int | None,
) -> list[AppendResult]:
    """Each append's result from what ``varstore_append`` returned: a recorded append's
    events take the positions after its session's head and the group's global positions
    in order after ``after_global``; a refused one is a Conflict with the head it met."""
    results: list[AppendResult] = []
    global_position = after_global or 0
    for append, events, ok, head in zip(appends, encoded, recorded, heads, strict=True):
        if not ok:
            results.append(Conflict(append.session_id, append.expected_position, head))
            continue
        rows = (
            (global_position + n, append.session_id, head + n, *fields)
            for n, fields in enumerate(events, 1)
        )
        results.append(Recorded(tuple(map(decode, rows))))
        global_position += len(events)
    return results


# Array literals: psycopg adapts a list by looking at its elements, which costs more than the
# rest of an append's Python work; the server parses these (cast by APPEND) instead.


def _ints(values: Iterable[int]) -> str:
    """An array literal of integers."""
    return "{" + ",".join(map(str, values)) + "}"


def _texts(values: Iterable[str]) -> str:
    """An array literal of strings, each quoted (so "NULL" or "" stays a string)."""
    return "{" + ",".join(map(_quoted, values)) + "}"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_Array = Callable[[Iterable[Any]], str]
#: Each per-append column's literal: session index, expected position, event count, request
#: id, request time.
_APPEND_ARRAYS: Final[tuple[_Array, ...]] = (_ints, _ints, _ints, _texts, _ints)
_EVENT_ARRAYS: Final[tuple[_Array, ...]] = (
    *(_ints, _texts, _ints),  # append index, session id, position
    *(_texts, _ints, _ints, _texts, _texts, _texts, _texts, _texts),  # rows.Fields
)


def _columns(rows: Sequence[tuple[Any, ...]], arrays: Sequence[_Array]) -> list[str]:
    """``rows`` as one array literal per column."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(arrays)
    return [array(column) for array, column in zip(arrays, columns, strict=True)]
