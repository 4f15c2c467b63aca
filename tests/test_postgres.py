"""What only the PostgreSQL recorder must show (the shared contract is
tests/test_recorder_contract.py): a global order that tailers can never skip, two writers
racing on one session, schema versions, ``varstore serve --db postgresql://...``, and the
group commit as one call of the ``varstore_append`` function: one round trip, request ids
claimed and given back, nothing half-written."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backends import PG_DSN, ThrowawayPostgresRecorder, postgres_recorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq
from servers import start_server_process, stub_for

from varstore.api import commands
from varstore.api.idempotency import RequestKey
from varstore.api.projector import Projector
from varstore.api.store import Store
from varstore.api.tailer import Tailer
from varstore.eventstore import (
    EventType,
    NewEvent,
    RecorderError,
)
from varstore.eventstore.postgres import PostgresRecorder, describe_dsn, schema_of
from varstore.eventstore.recorder import Append, Conflict, Recorded
from varstore.projections import SessionState, apply_event
from varstore.types import VersionConflict, to_proto
from varstore.v1 import varstore_pb2 as pb


def event(n: int, request_id: str = "") -> NewEvent:
    return NewEvent(
        EventType.VARIABLE_UPDATED,
        {"n": n},
        datetime(2026, 1, 1, tzinfo=UTC),
        request_id=request_id,
        request_digest="digest" if request_id else "",
    )


def query(recorder: PostgresRecorder, statement: str) -> list[Any]:
    """The rows of ``statement`` (none for a statement without) in the recorder's schema,
    on a connection of its own."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {recorder.schema}")
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description is not None else []


@pytest.fixture
def recorder() -> Iterator[PostgresRecorder]:
    made = postgres_recorder()
    yield made
    made.close()


def test_a_tailer_never_passes_an_append_that_commits_later(recorder: PostgresRecorder) -> None:
    recorder.append("a", 0, [event(1)])
    # An append in flight: its transaction holds the log head with global position 2.
    holder = psycopg.connect(PG_DSN)
    holder.execute(f"SET search_path TO {recorder.schema}")
    holder.execute("UPDATE log_head SET global_position = global_position + 1")
    holder.execute(
        "INSERT INTO events VALUES (2, 'held', 1, 'VariableUpdated', 1, 0, '', '{}', '{}')"
    )
    done: list[int] = []

    def append_meanwhile() -> None:
        [recorded] = recorder.append("b", 0, [event(2)])
        done.append(recorded.global_position)

    writer = threading.Thread(target=append_meanwhile)
    writer.start()
    time.sleep(0.5)
    assert done == []  # it waits for the log head, so it cannot take a number past 2 first
    assert [e.global_position for e in recorder.read_all(0)] == [1]  # the tailer sees 1 only
    holder.commit()
    holder.close()
    writer.join(10)
    assert done == [3]
    assert [(e.global_position, e.session_id) for e in recorder.read_all(0)] == [
        (1, "a"),
        (2, "held"),
        (3, "b"),
    ]


def test_two_recorders_racing_on_one_session_cannot_both_win(recorder: PostgresRecorder) -> None:
    other = PostgresRecorder(PG_DSN, schema=recorder.schema)
    try:
        start = threading.Barrier(2)
        results: list[object] = []

        def race(on: PostgresRecorder, n: int) -> None:
            start.wait()
            results.extend(on.append_many([Append("s", 0, [event(n)])]))

        threads = [
            threading.Thread(target=race, args=(r, n)) for n, r in enumerate([recorder, other])
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(type(r).__name__ for r in results) == ["Conflict", "Recorded"]
        assert [e.position for e in recorder.read_session("s")] == [1]
    finally:
        other.close()


def test_two_stores_on_one_log_write_every_acknowledged_change_once(
    recorder: PostgresRecorder,
) -> None:
    stores = [Store(PostgresRecorder(PG_DSN, schema=recorder.schema)) for _ in range(2)]
    try:
        stores[0].execute("s", commands.CreateSession("s"))
        stores[0].execute("s", commands.RegisterVariable("s", "n", "integer", 0))
        acknowledged: list[int] = []
        aborted: list[int] = []
        lock = threading.Lock()

        def write(store: Store, base: int) -> None:
            for i in range(25):
                value = base + i
                try:
                    store.execute("s", commands.SetVariable("s", "n", value))
                except VersionConflict:  # the other store kept winning: ABORTED, not written
                    with lock:
                        aborted.append(value)
                    continue
                with lock:
                    acknowledged.append(value)

        threads = [
            threading.Thread(target=write, args=(store, 1000 * (k + 1)))
            for k, store in enumerate(stores * 2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(acknowledged) + len(aborted) == 100
        log = recorder.read_session("s")
        values = [e.payload["value"] for e in log if e.type == EventType.VARIABLE_UPDATED]
        assert sorted(values) == sorted(acknowledged)  # each exactly once, none lost
        assert [e.position for e in log] == list(range(1, len(log) + 1))
        folded: SessionState | None = None
        for e in log:
            folded = apply_event(folded, e)
        for store in stores:
            store.projector.catch_up()
            assert store.published("s") == folded
            variable = store.session("s").find("n")
            assert variable is not None and variable.version == len(acknowledged)
    finally:
        for store in stores:
            store.close()


def test_a_newer_schema_is_refused_in_one_clear_line(recorder: PostgresRecorder) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {recorder.schema}.schema_version (version) VALUES (99)")
    with pytest.raises(RecorderError, match="schema version 99; this varstore supports up to"):
        PostgresRecorder(PG_DSN, schema=recorder.schema)


def test_the_schema_comes_from_the_dsns_search_path_and_the_password_is_never_shown() -> None:
    dsn = "postgresql://u:secret@db.example:6543/prod?options=-csearch_path%3Dteam_a"
    assert schema_of(dsn) == "team_a"
    assert schema_of("postgresql://u@h/db") == "varstore"
    assert describe_dsn(dsn) == "PostgreSQL u@db.example:6543/prod, schema team_a"
    assert "secret" not in describe_dsn(dsn)


def test_varstore_serve_on_postgresql_keeps_acknowledged_writes_across_a_kill() -> None:
    postgres_recorder().close()  # skips (or fails under CI) when PostgreSQL is not there
    schema = f"t_{uuid.uuid4().hex[:16]}"
    dsn = f"{PG_DSN}?options=-csearch_path%3D{schema}"
    try:
        server = start_server_process(dsn)
        try:
            assert f"schema {schema}" in "\n".join(server.output)
            with stub_for(server.address) as stub:
                stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
                stub.RegisterVariable(
                    pb.RegisterVariableRequest(
                        session_id="s", name="n", type="integer", initial_value=to_proto(1)
                    )
                )
                stub.SetVariable(
                    pb.SetVariableRequest(
                        session_id="s", variable_identifier="n", value=to_proto(2)
                    )
                )
        finally:
            server.kill()
        server = start_server_process(dsn)
        try:
            with stub_for(server.address) as stub:
                got = stub.GetVariable(
                    pb.GetVariableRequest(session_id="s", variable_identifier="n")
                )
            assert (got.variable.value.integer_value, got.variable.version) == (2, 1)
            assert got.header.position == 3
        finally:
            server.terminate()
    finally:
        ThrowawayPostgresRecorder(PG_DSN, schema=schema).close()  # drops the schema


def test_a_store_follows_another_stores_writes_through_notices(
    recorder: PostgresRecorder,
) -> None:
    # A poll interval of an hour: only the NOTIFY of each commit can bring the writes over.
    writer = Store(PostgresRecorder(PG_DSN, schema=recorder.schema), poll_interval=3600)
    follower = Store(PostgresRecorder(PG_DSN, schema=recorder.schema), poll_interval=3600)
    try:
        seen: list[tuple[str, int]] = []
        follower.subscribe(lambda events: seen.extend((e.session_id, e.position) for e in events))
        writer.execute("s", commands.CreateSession("s"))
        writer.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
        for value in range(1, 21):
            writer.execute("s", commands.SetVariable("s", "n", value))
        deadline = time.monotonic() + 10
        while len(seen) < 22 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [("s", position) for position in range(1, 23)]  # in order, once each
        assert follower.published("s") == writer.published("s")
    finally:
        writer.close()
        follower.close()


def test_a_nudge_reads_the_log_at_once_when_no_notice_comes(recorder: PostgresRecorder) -> None:
    reader = PostgresRecorder(PG_DSN, schema=recorder.schema)
    projector = Projector(reader, snapshot_every=1000)
    projector.start(None)
    tailer = Tailer(projector, notices=None, poll_interval=3600)  # neither notices nor polls
    tailer.start()
    writer = Store(PostgresRecorder(PG_DSN, schema=recorder.schema))
    try:
        writer.execute("s", commands.CreateSession("s"))
        assert not projector.wait_for("s", 1, 0.3)  # nothing has read the log
        tailer.nudge()  # what a reader's min_position does
        assert projector.wait_for("s", 1, 5.0)
    finally:
        writer.close()
        tailer.close()
        reader.close()


def test_one_server_holds_the_sweeper_role_until_its_connection_dies(
    recorder: PostgresRecorder,
) -> None:
    first = PostgresRecorder(PG_DSN, schema=recorder.schema)
    second = PostgresRecorder(PG_DSN, schema=recorder.schema)
    try:
        assert first.holds_role("ttl-sweeper")
        assert not second.holds_role("ttl-sweeper")
        assert first.holds_role("ttl-sweeper")  # still held
        assert second.holds_role("other-job")  # roles are independent
        first.close()  # its connection goes, and the role with it, once its backend ends
        deadline = time.monotonic() + 10
        while not second.holds_role("ttl-sweeper") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.holds_role("ttl-sweeper")
    finally:
        first.close()
        second.close()


def test_a_request_retried_through_another_server_that_has_not_seen_it_is_recorded_once(
    recorder: PostgresRecorder,
) -> None:
    # CreateSession without an id: a server that does not know the request id generates a
    # new session id, so nothing in the retry's own session conflicts. Only the claim of
    # the request id in the append's transaction keeps it from creating a second session.
    first = Store(PostgresRecorder(PG_DSN, schema=recorder.schema))
    behind = Store(PostgresRecorder(PG_DSN, schema=recorder.schema))
    try:
        assert behind.tailer is not None
        behind.tailer.close()  # it learns of the first store's writes only by reading the log
        key = RequestKey("create-1", "digest-1")
        answered = first.execute("session_a", commands.CreateSession("session_a"), key)
        assert behind.known_request(key) is None  # its index has not seen the write
        again = behind.execute("session_b", commands.CreateSession("session_b"), key)
        assert again == answered  # the first answer, rebuilt from the log
        assert [e.session_id for e in recorder.read_all()] == ["session_a"]
    finally:
        first.close()
        behind.close()


def test_one_server_of_a_shared_log_saves_its_checkpoints(recorder: PostgresRecorder) -> None:
    stores = [
        Store(
            PostgresRecorder(PG_DSN, schema=recorder.schema),
            checkpoint_every=1,
            maintenance_interval=0.05,
        )
        for _ in range(2)
    ]
    try:
        stores[0].execute("s", commands.CreateSession("s"))
        deadline = time.monotonic() + 10
        while recorder.load_checkpoint() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert recorder.load_checkpoint() is not None
        holders = [store.recorder.holds_role("checkpointer") for store in stores]
        assert sorted(holders) == [False, True]
    finally:
        for store in stores:
            store.close()


def test_a_group_commit_is_one_round_trip(recorder: PostgresRecorder, tmp_path: Path) -> None:
    recorder.append("a", 0, [event(1)])
    conn = recorder._writer_connection()
    trace = tmp_path / "libpq-trace"
    with trace.open("w") as sink:
        conn.pgconn.trace(sink.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            results = recorder.append_many(
                [Append("a", 1, [event(2), event(3)]), Append("b", 0, [event(4, "r")])]
            )
        finally:
            conn.pgconn.untrace()
    sent = [line.split("\t")[2] for line in trace.read_text().splitlines() if line[0] == "F"]
    # Each Sync (extended protocol) or Query (simple) waits for the server's answer.
    assert [kind for kind in sent if kind in ("Sync", "Query")] == ["Sync"]
    assert [type(r) for r in results] == [Recorded, Recorded]
    assert [(e.session_id, e.position, e.global_position) for e in recorder.read_all()] == [
        ("a", 1, 1),
        ("a", 2, 2),
        ("a", 3, 3),
        ("b", 1, 4),
    ]


def test_ids_claimed_for_refused_appends_are_given_back_and_another_writers_are_kept(
    recorder: PostgresRecorder,
) -> None:
    other = PostgresRecorder(PG_DSN, schema=recorder.schema)
    try:
        other.append_many(
            [Append("s", 0, [event(1, "first")]), Append("u", 0, [event(2, "theirs")])]
        )
        results = recorder.append_many(
            [
                Append("s", 0, [event(3, "first")]),  # stale: "s" is at 1
                Append("t", 0, [event(4, "theirs")]),  # the other writer recorded this id
                Append("t", 1, [event(5, "mine")]),  # chained on the refused one: refused too
                Append("v", 0, [event(6, "kept")]),
            ]
        )
        assert results[:3] == [Conflict("s", 0, 1), Conflict("t", 0, 0), Conflict("t", 1, 0)]
        assert isinstance(results[3], Recorded)
        # "mine" was claimed, then given back; "first" is still the other writer's.
        claimed = {row[0] for row in query(recorder, "SELECT request_id FROM requests")}
        assert claimed == {"first", "theirs", "kept"}
        assert isinstance(recorder.append_many([Append("w", 0, [event(7, "mine")])])[0], Recorded)
        assert recorder.append_many([Append("x", 0, [event(8, "first")])]) == [Conflict("x", 0, 0)]
        assert [e.session_id for e in recorder.read_all()] == ["s", "u", "v", "w"]
    finally:
        other.close()


def test_a_failed_group_commit_writes_nothing_and_the_next_starts_on_a_new_connection(
    recorder: PostgresRecorder,
) -> None:
    recorder.append("a", 0, [event(1)])
    # A row at global position 3 behind the log head's back: the group's INSERT fails on it
    # after the heads were locked, the request id claimed and the log head moved.
    rogue = "INSERT INTO events VALUES (3, 'rogue', 1, 'VariableUpdated', 1, 0, '', '{}', '{}')"
    query(recorder, rogue)
    failed = recorder._writer_connection()
    with pytest.raises(RecorderError, match="cannot append to the PostgreSQL log: UniqueViolation"):
        recorder.append_many([Append("a", 1, [event(2, "r")]), Append("b", 0, [event(3)])])
    assert query(
        recorder,
        "SELECT (SELECT global_position FROM log_head), (SELECT count(*) FROM requests), "
        "(SELECT array_agg(session_id || ':' || position) FROM session_heads)",
    ) == [(1, 0, ["a:1"])]
    assert failed.closed
    query(recorder, "DELETE FROM events WHERE session_id = 'rogue'")
    [again] = recorder.append("a", 1, [event(2, "r")])
    assert (again.position, again.global_position) == (2, 2)


def test_a_version_3_log_gets_the_append_function_when_opened(recorder: PostgresRecorder) -> None:
    recorder.append("a", 0, [event(1)])
    query(recorder, "DROP FUNCTION varstore_append")
    query(recorder, "DELETE FROM schema_version WHERE version = 4")
    reopened = PostgresRecorder(PG_DSN, schema=recorder.schema)
    try:
        [recorded] = reopened.append("a", 1, [event(2)])
        assert (recorded.position, recorded.global_position) == (2, 2)
        assert query(recorder, "SELECT max(version) FROM schema_version") == [(4,)]
    finally:
        reopened.close()


#: Text that an array literal must quote or escape to keep it as it is.
AWKWARD = [
    "",
    "NULL",
    " spaced ",
    '"quoted"',
    "back\\slash",
    "\\",
    '\\"',
    "{a,b}",
    "it's",
    "ü✓🎉\t\n",
]


def test_awkward_text_in_every_column_round_trips(recorder: PostgresRecorder) -> None:
    appends = [
        Append(
            f"{text}|{i}",
            0,
            [
                NewEvent(
                    text,
                    {text: [text]},
                    datetime(2026, 1, 1, tzinfo=UTC),
                    source=text,
                    metadata={text: text},
                    request_id=f"{text}#{i}",
                    request_digest=text,
                )
            ],
        )
        for i, text in enumerate(AWKWARD)
    ]
    returned = [
        e for r in recorder.append_many(appends) if isinstance(r, Recorded) for e in r.events
    ]
    assert returned == list(recorder.read_all())
    for append, got in zip(appends, returned, strict=True):
        [sent] = append.events
        assert (got.session_id, got.type, got.source, got.request_id, got.request_digest) == (
            append.session_id,
            sent.type,
            sent.source,
            sent.request_id,
            sent.request_digest,
        )
        assert (got.payload, got.metadata) == (sent.payload, sent.metadata)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00")),
        min_size=1,
        max_size=3,
        unique=True,
    )
)
def test_any_session_and_request_id_round_trips(
    recorder: PostgresRecorder, texts: list[str]
) -> None:
    start = recorder.last_global_position()
    tag = uuid.uuid4().hex  # examples share the recorder: fresh sessions and request ids
    appends = [Append(tag + text, 0, [event(1, text + tag)]) for text in texts]
    results = recorder.append_many(appends)
    assert all(isinstance(r, Recorded) for r in results)
    read = list(recorder.read_all(start))
    assert [(e.session_id, e.request_id) for e in read] == [(tag + t, t + tag) for t in texts]


def test_writers_locking_the_same_sessions_in_any_order_never_deadlock(
    recorder: PostgresRecorder,
) -> None:
    others = [PostgresRecorder(PG_DSN, schema=recorder.schema) for _ in range(4)]
    failures: list[RecorderError] = []
    start = threading.Barrier(len(others))

    def write(on: PostgresRecorder, order: list[str]) -> None:
        start.wait()
        try:
            heads = dict.fromkeys(order, 0)
            for n in range(150):
                results = on.append_many([Append(s, heads[s], [event(n)]) for s in order])
                for s, result in zip(order, results, strict=True):
                    heads[s] = (
                        result.events[-1].position
                        if isinstance(result, Recorded)
                        else result.actual
                    )
        except RecorderError as problem:  # a deadlock, say
            failures.append(problem)

    try:
        orders = [list("abcdefgh"), list("hgfedcba")] * 2
        threads = [
            threading.Thread(target=write, args=(on, order))
            for on, order in zip(others, orders, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        for session in "abcdefgh":
            positions = [e.position for e in recorder.read_session(session)]
            assert positions == list(range(1, len(positions) + 1))
        assert [e.global_position for e in recorder.read_all()] == list(
            range(1, recorder.last_global_position() + 1)
        )
    finally:
        for other in others:
            other.close()


def test_a_server_does_not_read_the_log_again_for_the_notices_of_its_own_commits(
    recorder: PostgresRecorder,
) -> None:
    store = Store(PostgresRecorder(PG_DSN, schema=recorder.schema), poll_interval=3600)
    try:
        tailer = store.tailer
        assert tailer is not None
        deadline = time.monotonic() + 10
        while tailer.reads == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the read every (re)connection of the listener starts with
        first = tailer.reads
        store.execute("s", commands.CreateSession("s"))
        store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
        for value in range(50):
            store.execute("s", commands.SetVariable("s", "n", value))
        time.sleep(0.3)  # let every notice arrive
        assert tailer.reads == first  # its own commits are applied by the committer
    finally:
        store.close()
