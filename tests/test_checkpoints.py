"""Checkpoints are derived data: start-up from a checkpoint plus the tail of the log
serves exactly what a fold of the whole log serves."""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import start_server_process, stub_for

from varstore.api import commands
from varstore.api.store import Store
from varstore.eventstore.sqlite import SQLiteRecorder
from varstore.projections import (
    LogMark,
    SessionState,
    apply_event,
    open_checkpoint,
    replay,
    seal_checkpoint,
)
from varstore.types import to_proto
from varstore.v1 import varstore_pb2 as pb


def write_some(store: Store, values: list[int]) -> None:
    store.execute("s", commands.CreateSession("s"))
    store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
    store.execute("t", commands.CreateSession("t"))
    for value in values:
        store.execute("s", commands.SetVariable("s", "n", value))
        store.execute("t", commands.SetVariables("t", {}, atomic=True))


@settings(max_examples=15, deadline=None)
@given(values=st.lists(st.integers(-5, 5), max_size=25), every=st.integers(1, 6))
def test_a_restart_from_a_checkpoint_serves_what_a_full_fold_serves(
    values: list[int], every: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "log.db"
        store = Store(SQLiteRecorder(db), checkpoint_every=every)
        try:
            write_some(store, values)
            before = {sid: store.published(sid) for sid in ("s", "t")}
        finally:
            store.close()
        from_checkpoint = Store(SQLiteRecorder(db))
        try:
            events = 3 + len(values)  # two creations, one registration, one set per value
            has_checkpoint = from_checkpoint.recorder.load_checkpoint() is not None
            assert has_checkpoint == (events >= every)
            assert {sid: from_checkpoint.published(sid) for sid in ("s", "t")} == before
            from_checkpoint.drop_snapshots()
        finally:
            from_checkpoint.close()
        full_fold = Store(SQLiteRecorder(db))
        try:
            assert full_fold.recorder.load_checkpoint() is None
            assert {sid: full_fold.published(sid) for sid in ("s", "t")} == before
        finally:
            full_fold.close()


@contextmanager
def restarted_with_checkpoint(db: Path, global_position: int, data: bytes) -> Iterator[Store]:
    """A store started on ``db`` after its checkpoint was replaced by ``data``."""
    recorder = SQLiteRecorder(db)
    recorder.save_checkpoint(global_position, data)
    restarted = Store(recorder)
    try:
        yield restarted
    finally:
        restarted.close()


def test_a_checkpoint_of_another_format_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    store = Store(SQLiteRecorder(db))
    write_some(store, [1, 2, 3])
    before = store.published("s")
    store.close()
    with restarted_with_checkpoint(db, 10**6, b'{"format": 999}') as restarted:
        assert restarted.published("s") == before


def test_a_checkpoint_that_does_not_parse_is_ignored_and_the_log_folded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "log.db"
    store = Store(SQLiteRecorder(db))
    write_some(store, [1, 2, 3])
    before = store.published("s")
    store.close()
    cut_short = b'{"format": 1, "sessions": [{"session_id": "s"'
    with caplog.at_level(logging.WARNING), restarted_with_checkpoint(db, 4, cut_short) as restarted:
        assert restarted.published("s") == before
    assert "ignoring the checkpoint: it is not a sealed checkpoint" in caplog.text


def test_a_checkpoint_the_log_does_not_extend_is_ignored_and_the_log_folded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "log.db"
    store = Store(SQLiteRecorder(db))
    write_some(store, [1])
    early = {sid: store.published(sid) for sid in ("s", "t")}
    early_position = store.projector.global_position
    write_some_more = [commands.SetVariable("s", "n", value) for value in (2, 3, 4)]
    for command in write_some_more:
        store.execute("s", command)
    before = store.published("s")
    later = LogMark.of(next(iter(store.recorder.read_all(early_position + 1, 1))))
    store.close()
    # States from an early cut under a later global position: the events after it do not
    # follow the states' positions, so the fold refuses them.
    stale = seal_checkpoint(later, early)  # type: ignore[arg-type]
    with (
        caplog.at_level(logging.WARNING),
        restarted_with_checkpoint(db, early_position + 2, stale) as restarted,
    ):
        assert restarted.published("s") == before
    assert "ignoring the checkpoint" in caplog.text


def test_checkpoints_taken_while_writers_commit_hold_a_consistent_cut(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    store = Store(SQLiteRecorder(db, synchronous="normal"), checkpoint_every=10**9)
    sessions = [f"s{n}" for n in range(4)]
    for sid in sessions:
        store.execute(sid, commands.CreateSession(sid))
        store.execute(sid, commands.RegisterVariable(sid, "n", "integer", 0))
    stop = threading.Event()

    def write(sid: str) -> None:
        value = 0
        while not stop.is_set():
            value += 1
            store.execute(sid, commands.SetVariable(sid, "n", value))

    writers = [threading.Thread(target=write, args=(sid,)) for sid in sessions]
    for thread in writers:
        thread.start()
    try:
        for _ in range(30):  # every one of these must be a fold of the log up to its position
            store.checkpoint()
            saved = store.recorder.load_checkpoint()
            assert saved is not None
            position, data = saved
            states = open_checkpoint(data).sessions
            folded: dict[str, SessionState] = {}
            for event in store.recorder.read_all(0, position):
                folded[event.session_id] = apply_event(folded.get(event.session_id), event)
            for sid, state in states.items():
                # A state may hold events past the position, never miss one below it.
                assert state.position >= folded[sid].position
                assert replay(store.recorder.read_session(sid, 1, state.position)) == state
    finally:
        stop.set()
        for thread in writers:
            thread.join(10)
        store.close()


def test_a_server_killed_while_it_checkpoints_restarts_serving_the_fold_of_its_log(
    tmp_path: Path,
) -> None:
    """SIGKILL a real server at random moments while it checkpoints every few events."""
    db = tmp_path / "log.db"
    sessions = [f"s{n}" for n in range(20)]
    rng = random.Random(7)
    for round_number in range(6):
        server = start_server_process(db, "--checkpoint-every", "3", "--sync", "normal")
        try:
            with stub_for(server.address) as stub:
                if round_number == 0:
                    for sid in sessions:
                        stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
                        stub.RegisterVariable(
                            pb.RegisterVariableRequest(
                                session_id=sid, name="n", type="integer", initial_value=to_proto(0)
                            )
                        )
                check_served_state_is_the_fold(stub, db, sessions)
                deadline = time.monotonic() + rng.uniform(0.2, 0.8)
                value = 0
                while time.monotonic() < deadline:
                    value += 1
                    sid = rng.choice(sessions)
                    stub.SetVariable(
                        pb.SetVariableRequest(
                            session_id=sid, variable_identifier="n", value=to_proto(value)
                        )
                    )
        finally:
            server.kill()
    server = start_server_process(db)
    try:
        with stub_for(server.address) as stub:
            check_served_state_is_the_fold(stub, db, sessions)
    finally:
        server.terminate()


def check_served_state_is_the_fold(stub: Any, db: Path, sessions: list[str]) -> None:
    """Each session's position and values as served equal a fold of the stored log (read
    through a second connection: WAL lets it read beside the server)."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT session_id, MAX(position) FROM events GROUP BY session_id"
        ).fetchall()
    last = dict(rows)
    for sid in sessions:
        got = stub.ListVariables(pb.ListVariablesRequest(session_id=sid))
        assert got.header.position == last[sid]
        with closing(sqlite3.connect(db)) as conn:
            (payload,) = conn.execute(
                "SELECT payload FROM events WHERE session_id = ? AND position = ?",
                (sid, last[sid]),
            ).fetchone()
        assert got.variables[0].value.integer_value == json.loads(payload)["value"]
