"""Session TTL counts from the log: idle time is measured from the session's last event
or its last recorded use (a durable touch), so a restart does not reset it, and an expiry
is written exactly once however many stores sweep."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import FakeWallClock
from servers import start_server_process, stub_for

import varstore.eventstore.sqlite as sqlite_backend
from varstore.api import commands
from varstore.api.store import Store
from varstore.eventstore import SQLiteRecorder
from varstore.types import SessionNotFound
from varstore.v1 import varstore_pb2 as pb


@pytest.fixture
def clock() -> FakeWallClock:
    return FakeWallClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


def open_store(db: Path, clock: FakeWallClock) -> Store:
    return Store(SQLiteRecorder(db), clock=clock)


def expiries(store: Store, session_id: str) -> int:
    return sum(
        1
        for event in store.recorder.read_session(session_id)
        if event.type == "SessionDeleted" and event.payload["reason"] == "expired"
    )


def test_a_restart_does_not_reset_a_sessions_idle_time(db: Path, clock: FakeWallClock) -> None:
    store = open_store(db, clock)
    store.execute("s", commands.CreateSession("s", ttl_seconds=10))
    clock.advance(6)
    store.close()
    restarted = open_store(db, clock)
    try:
        clock.advance(3)
        assert restarted.expire_idle_sessions() == 0
        clock.advance(2)  # 11 s since the last use, 5 s since the restart
        assert restarted.expire_idle_sessions() == 1
        with pytest.raises(SessionNotFound):
            restarted.session("s")
    finally:
        restarted.close()


def test_a_read_before_a_restart_still_counts_after_it(db: Path, clock: FakeWallClock) -> None:
    store = open_store(db, clock)
    store.execute("s", commands.CreateSession("s", ttl_seconds=10))
    clock.advance(8)
    store.session("s")  # a use: recorded beside the log by the maintenance thread (or close)
    store.close()
    restarted = open_store(db, clock)
    try:
        clock.advance(5)  # 13 s after the creation, 5 s after the read
        assert restarted.expire_idle_sessions() == 0
        assert restarted.expires_in(restarted.session("s")) == pytest.approx(10.0)
        clock.advance(10.5)
        assert restarted.expire_idle_sessions() == 1
    finally:
        restarted.close()


def test_a_write_is_a_use_of_its_session(db: Path, clock: FakeWallClock) -> None:
    store = open_store(db, clock)
    try:
        store.execute("s", commands.CreateSession("s", ttl_seconds=10))
        store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
        clock.advance(9)
        store.execute("s", commands.SetVariable("s", "n", 1))
        clock.advance(9)
        assert store.expire_idle_sessions() == 0
        clock.advance(2)
        assert store.expire_idle_sessions() == 1
    finally:
        store.close()


def test_an_expiry_is_written_once_however_often_it_is_swept(
    db: Path, clock: FakeWallClock
) -> None:
    store = open_store(db, clock)
    try:
        store.execute("s", commands.CreateSession("s", ttl_seconds=1))
        clock.advance(2)
        assert store.expire_idle_sessions() == 1
        assert store.expire_idle_sessions() == 0
        assert expiries(store, "s") == 1
    finally:
        store.close()


@pytest.fixture
def two_stores(
    db: Path, clock: FakeWallClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Store, Store]]:
    """Two stores on one log, as two servers would be (the lock file bypassed)."""
    monkeypatch.setattr(sqlite_backend, "_lock_exclusively", lambda path: os.open(os.devnull, 0))
    first = open_store(db, clock)
    first.execute("s", commands.CreateSession("s", ttl_seconds=5))
    second = open_store(db, clock)
    yield first, second
    second.close()
    first.close()


def test_two_stores_sweeping_one_log_write_one_expiry(
    two_stores: tuple[Store, Store], clock: FakeWallClock
) -> None:
    first, second = two_stores
    clock.advance(6)
    expired = first.expire_idle_sessions() + second.expire_idle_sessions()
    assert expired == 1  # the second store's expiry conflicts, catches up and finds it done
    assert expiries(first, "s") == 1
    assert second.published("s") == first.published("s")


def test_a_killed_server_restarted_expires_the_session_on_its_original_schedule(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    server = start_server_process(db)
    try:
        with stub_for(server.address) as stub:
            stub.CreateSession(pb.CreateSessionRequest(session_id="s", ttl_seconds=6))
            created = time.monotonic()
            time.sleep(4)
    finally:
        server.kill()
    server = start_server_process(db)
    try:
        restarted = time.monotonic()
        with stub_for(server.address) as stub:
            # Listing sessions is not a use of them (a GetSession would extend the TTL).
            while "s" in [s.id for s in stub.ListSessions(pb.ListSessionsRequest()).sessions]:
                # A TTL counted from the restart would keep it listed 6 s after it.
                assert time.monotonic() - restarted < 5, "the restart reset the idle time"
                time.sleep(0.2)
        assert time.monotonic() - created >= 6
    finally:
        server.terminate()
