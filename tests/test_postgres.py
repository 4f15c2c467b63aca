"""What only the PostgreSQL recorder must show (the shared contract is
tests/test_recorder_contract.py): a global order that tailers can never skip, two writers
racing on one session, schema versions, and ``varstore serve --db postgresql://...``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from backends import PG_DSN, ThrowawayPostgresRecorder, postgres_recorder
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
from varstore.eventstore.recorder import Append
from varstore.projections import SessionState, apply_event
from varstore.types import VersionConflict, to_proto
from varstore.v1 import varstore_pb2 as pb


def event(n: int) -> NewEvent:
    return NewEvent(EventType.VARIABLE_UPDATED, {"n": n}, datetime(2026, 1, 1, tzinfo=UTC))


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
        first.close()  # its connection goes, and the role with it
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
