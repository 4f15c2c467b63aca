"""Commits that cannot diverge from the log.

A fault-injecting recorder wraps a real SQLite recorder and makes an append fail before
writing, or commit and then raise (the outcome a failed COMMIT leaves); a second store on the
same file (the lock file bypassed, as another server would be) appends behind the first
store's back, so its next append meets a position conflict. After each fault the served state
must equal a fold of the log, the answer must say what the log shows, and the next write
must succeed. Unrelated sessions committed in the same group are not failed with it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

import varstore.eventstore.sqlite as sqlite_backend
from varstore.api import commands
from varstore.api.store import MAX_ATTEMPTS, Store
from varstore.eventstore import Append, AppendResult, RecorderError, SQLiteRecorder
from varstore.projections import SessionState, apply_event
from varstore.types import CommitOutcomeUnknown, Unavailable, VarstoreError, VersionConflict

Fault = Literal["before", "after", "unreadable"]


class FaultyRecorder(SQLiteRecorder):
    """A SQLite recorder whose next append can be made to fail, before or after writing."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fault: Fault | None = None
        self.reads_fail = False
        #: Called inside append_many before writing (to let another writer in).
        self.before_append: Any = None

    def append_many(self, appends: Sequence[Append]) -> list[AppendResult]:
        if self.before_append is not None:
            hook, self.before_append = self.before_append, None
            hook()
        fault, self.fault = self.fault, None
        if fault == "before":
            raise RecorderError("disk full (nothing written)")
        results = super().append_many(appends)
        if fault in ("after", "unreadable"):
            self.reads_fail = fault == "unreadable"
            raise RecorderError("COMMIT failed (it may have reached the disk)")
        return results

    def read_all(self, after_global_position: int = 0, limit: int | None = None) -> Any:
        if self.reads_fail:
            raise RecorderError("the disk is gone")
        return super().read_all(after_global_position, limit)

    def read_session(self, *args: Any, **kwargs: Any) -> Any:
        if self.reads_fail:
            raise RecorderError("the disk is gone")
        return super().read_session(*args, **kwargs)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    made = Store(FaultyRecorder(db))
    made.execute("s", commands.CreateSession("s"))
    made.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
    made.execute("other", commands.CreateSession("other"))
    made.execute("other", commands.RegisterVariable("other", "m", "integer", 0))
    yield made
    made.close()


def faulty(store: Store) -> FaultyRecorder:
    recorder = store.recorder
    assert isinstance(recorder, FaultyRecorder)
    return recorder


def folded(store: Store) -> dict[str, SessionState]:
    """Every session as a fold of the whole stored log."""
    states: dict[str, SessionState] = {}
    for event in store.recorder.read_all():
        states[event.session_id] = apply_event(states.get(event.session_id), event)
    return states


def assert_served_state_is_the_fold_of_the_log(store: Store) -> None:
    log = folded(store)
    assert {sid: store.published(sid) for sid in log} == log


def value_of(store: Store, sid: str, name: str) -> Any:
    variable = store.session(sid).find(name)
    assert variable is not None
    return variable.value, variable.version


@pytest.fixture
def second_writer(db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SQLiteRecorder]:
    """Another writer on the same file, as a second server would be (lock bypassed)."""
    monkeypatch.setattr(sqlite_backend, "_lock_exclusively", lambda path: os.open(os.devnull, 0))
    other = SQLiteRecorder(db)
    yield other
    other.close()


def test_an_append_that_fails_before_writing_is_unavailable_and_publishes_nothing(
    store: Store,
) -> None:
    faulty(store).fault = "before"
    with pytest.raises(Unavailable, match="nothing was recorded"):
        store.execute("s", commands.SetVariable("s", "n", 1))
    assert value_of(store, "s", "n") == (0, 0)
    assert_served_state_is_the_fold_of_the_log(store)
    assert store.execute("s", commands.SetVariable("s", "n", 2)).result.version == 1
    assert_served_state_is_the_fold_of_the_log(store)


def test_an_append_that_committed_then_raised_is_answered_from_the_log(store: Store) -> None:
    faulty(store).fault = "after"
    written = store.execute("s", commands.SetVariable("s", "n", 1))  # the log has it: success
    assert (written.result.value, written.result.version, written.position) == (1, 1, 3)
    assert value_of(store, "s", "n") == (1, 1)
    assert_served_state_is_the_fold_of_the_log(store)
    assert store.execute("s", commands.SetVariable("s", "n", 2)).position == 4
    assert_served_state_is_the_fold_of_the_log(store)


def test_an_unknown_outcome_that_cannot_be_read_back_says_so_and_is_not_unavailable(
    store: Store,
) -> None:
    faulty(store).fault = "unreadable"
    with pytest.raises(CommitOutcomeUnknown, match="may or may not have been recorded"):
        store.execute("s", commands.SetVariable("s", "n", 1))
    faulty(store).reads_fail = False  # the disk comes back
    store.projector.catch_up()
    assert_served_state_is_the_fold_of_the_log(store)
    assert store.execute("s", commands.SetVariable("s", "n", 2)).result.version == 2


def test_a_conflict_with_another_writer_catches_up_and_decides_again(
    store: Store, second_writer: SQLiteRecorder
) -> None:
    from varstore.api.commands import WriteContext

    # The other writer sets n to 41 behind the store's back (decided as the store would).
    other_state = folded(store)["s"]
    decision = commands.SetVariable("s", "n", 41, source="other").decide(
        other_state, WriteContext(now=other_state.updated_at, limits=store.limits)
    )
    second_writer.append("s", other_state.position, decision.events)
    # The store's append conflicts; it reads the other writer's event and decides again.
    written = store.execute("s", commands.SetVariable("s", "n", 42))
    assert (written.result.value, written.result.version, written.position) == (42, 2, 4)
    assert [e.source for e in store.recorder.read_session("s", 3)] == ["other", ""]
    assert_served_state_is_the_fold_of_the_log(store)
    # A compare-and-set on a version another writer has since moved is ABORTED by the
    # decider once the store has caught up: version 2 is what this store served.
    second_writer.append("s", 4, decision.events)
    with pytest.raises(VersionConflict, match="not the expected version 2"):
        store.execute("s", commands.SetVariable("s", "n", 7, expected_version=2))
    assert_served_state_is_the_fold_of_the_log(store)


def test_a_session_that_keeps_moving_is_aborted_after_a_bounded_number_of_tries(
    store: Store, second_writer: SQLiteRecorder
) -> None:
    from varstore.api.commands import WriteContext

    recorder = faulty(store)
    tries = 0

    def sneak_in() -> None:
        nonlocal tries
        tries += 1
        state = folded(store)["s"]
        decision = commands.SetVariable("s", "n", 100 + tries).decide(
            state, WriteContext(now=state.updated_at, limits=store.limits)
        )
        second_writer.append("s", state.position, decision.events)
        if tries < MAX_ATTEMPTS:
            recorder.before_append = sneak_in

    recorder.before_append = sneak_in
    with pytest.raises(VersionConflict, match="kept changing"):
        store.execute("s", commands.SetVariable("s", "n", 1))
    assert tries == MAX_ATTEMPTS
    assert_served_state_is_the_fold_of_the_log(store)
    assert store.execute("s", commands.SetVariable("s", "n", 2)).result.value == 2


def test_a_conflict_in_one_session_does_not_fail_another_sessions_commands_in_the_group(
    store: Store, second_writer: SQLiteRecorder
) -> None:
    from varstore.api.commands import WriteContext

    recorder = faulty(store)
    gate = threading.Event()
    state = folded(store)["s"]
    decision = commands.SetVariable("s", "n", 5, source="other").decide(
        state, WriteContext(now=state.updated_at, limits=store.limits)
    )

    def hold_then_sneak_in() -> None:
        gate.wait(10)  # the other commands queue up behind this leader meanwhile
        second_writer.append("s", state.position, decision.events)

    recorder.before_append = hold_then_sneak_in
    results: dict[str, Any] = {}

    def write(sid: str, name: str, value: int) -> None:
        try:
            results[f"{sid}/{value}"] = store.execute(sid, commands.SetVariable(sid, name, value))
        except VarstoreError as error:  # pragma: no cover - reported by the assertion below
            results[f"{sid}/{value}"] = error

    leader = threading.Thread(target=write, args=("other", "m", 1))
    leader.start()
    followers = [
        threading.Thread(target=write, args=("s", "n", 2)),
        threading.Thread(target=write, args=("other", "m", 3)),
    ]
    for thread in followers:
        thread.start()
    gate.set()
    for thread in [leader, *followers]:
        thread.join(10)
    assert all(not isinstance(r, Exception) for r in results.values()), results
    assert value_of(store, "other", "m")[1] == 2
    assert value_of(store, "s", "n") == (2, 2)  # after the other writer's 5 (version 1)
    assert_served_state_is_the_fold_of_the_log(store)


def test_a_restart_after_each_fault_serves_what_the_log_holds(db: Path) -> None:
    store = Store(FaultyRecorder(db))
    try:
        store.execute("s", commands.CreateSession("s"))
        store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
        for fault in ("before", "after"):
            faulty(store).fault = fault  # type: ignore[assignment]
            with contextlib.suppress(Unavailable):
                store.execute("s", commands.SetVariable("s", "n", 1))
        served = store.published("s")
    finally:
        store.close()
    restarted = Store(SQLiteRecorder(db))
    try:
        assert restarted.published("s") == served
    finally:
        restarted.close()
