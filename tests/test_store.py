"""The store's own promises: group commit, TTL expiry as an event, refusals that change
nothing, and a failed append that publishes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from _support import FakeWallClock

from varstore.api import commands
from varstore.api.store import Store, Written
from varstore.eventstore import Append, AppendResult, RecorderError
from varstore.eventstore.memory import MemoryRecorder
from varstore.projections import VariableState
from varstore.types import SessionNotFound, Unavailable, ValidationError


class CountingRecorder(MemoryRecorder):
    """A memory recorder that counts transactions and can be told to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions = 0
        self.fail_next = False
        self.gate = threading.Event()
        self.gate.set()

    def append_many(self, appends: Sequence[Append]) -> list[AppendResult]:
        self.gate.wait()
        self.transactions += 1
        if self.fail_next:
            self.fail_next = False
            raise RecorderError("disk on fire")
        return super().append_many(appends)


def test_concurrent_writers_share_transactions() -> None:
    recorder = CountingRecorder()
    store = Store(recorder)
    try:
        store.execute("s", commands.CreateSession("s"))
        for n in range(50):
            store.execute("s", commands.RegisterVariable("s", f"v{n}", "integer", 0))
        before = recorder.transactions
        recorder.gate.clear()  # hold the first leader in its commit so the rest queue up
        written: list[Written[VariableState]] = []

        def write(n: int) -> None:
            written.append(store.execute("s", commands.SetVariable("s", f"v{n}", n + 1)))

        threads = [threading.Thread(target=write, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        recorder.gate.set()
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(w.result.value for w in written) == list(range(1, 51))
        assert recorder.transactions - before < 50 / 2
        positions = [w.position for w in written]
        assert sorted(positions) == list(range(52, 102))  # gap-free, one event each
    finally:
        store.close()


def test_a_refused_command_changes_nothing() -> None:
    store = Store(MemoryRecorder())
    try:
        store.execute("s", commands.CreateSession("s"))
        store.execute(
            "s", commands.RegisterVariable("s", "n", "integer", 1, {"min": 0, "max": 100})
        )
        before = store.session("s")
        with pytest.raises(ValidationError, match="value 150 is above maximum 100"):
            store.execute("s", commands.SetVariable("s", "n", 150))
        assert store.session("s") is before  # not even a new state object
    finally:
        store.close()


def test_a_failed_append_publishes_nothing_and_reports_unavailable() -> None:
    recorder = CountingRecorder()
    store = Store(recorder)
    try:
        store.execute("s", commands.CreateSession("s"))
        store.execute("s", commands.RegisterVariable("s", "n", "integer", 1))
        recorder.fail_next = True
        with pytest.raises(Unavailable, match="could not be written"):
            store.execute("s", commands.SetVariable("s", "n", 2))
        variable = store.session("s").find("n")
        assert variable is not None
        assert (variable.value, variable.version) == (1, 0)
        assert store.execute("s", commands.SetVariable("s", "n", 3)).result.version == 1
    finally:
        store.close()


def test_an_idle_session_expires_as_an_event() -> None:
    clock = FakeWallClock()
    recorder = MemoryRecorder()
    store = Store(recorder, clock=clock)
    try:
        store.execute("s", commands.CreateSession("s", ttl_seconds=10))
        store.execute("keep", commands.CreateSession("keep"))
        clock.advance(9)
        store.session("s")  # a read touches the session
        clock.advance(9)
        assert store.expire_idle_sessions() == 0
        clock.advance(2)
        assert store.expire_idle_sessions() == 1
        with pytest.raises(SessionNotFound):
            store.session("s")
        store.session("keep")  # no TTL, never expires
        last = recorder.read_session("s")[-1]
        assert (last.type, last.payload["reason"]) == ("SessionDeleted", "expired")
    finally:
        store.close()


def test_a_closed_store_refuses_writes() -> None:
    store = Store(MemoryRecorder())
    store.close()
    with pytest.raises(Unavailable):
        store.execute("s", commands.CreateSession("s"))
