"""The projector: the only path from recorded events to what readers see, idempotent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from varstore.api.projector import Projector
from varstore.eventstore import EventType, MemoryRecorder, NewEvent, RecordedEvent
from varstore.projections import SessionState, SnapshotChain, Snapshots, replay

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def created(n: int = 0) -> NewEvent:
    return NewEvent(EventType.SESSION_CREATED, {"metadata": {}, "ttl_seconds": 0}, T0)


def registered(position: int) -> NewEvent:
    payload = {
        "variable_id": f"var_n_{position}",
        "name": "n",
        "type": "integer",
        "value": 0,
        "constraints": {},
    }
    return NewEvent(EventType.VARIABLE_REGISTERED, payload, T0)


def updated(variable_id: str, value: int) -> NewEvent:
    return NewEvent(
        EventType.VARIABLE_UPDATED,
        {"variable_id": variable_id, "value": value},
        T0 + timedelta(seconds=value),
    )


def seeded(recorder: MemoryRecorder, session_id: str = "s") -> list[RecordedEvent]:
    return recorder.append(session_id, 0, [created(), registered(2)])


def fold_of_log(recorder: MemoryRecorder, session_id: str) -> SessionState | None:
    return replay(recorder.read_session(session_id))


def test_applying_the_same_events_twice_folds_and_announces_them_once() -> None:
    recorder = MemoryRecorder()
    projector = Projector(recorder, snapshot_every=10)
    projector.start(None)
    heard: list[Sequence[RecordedEvent]] = []
    projector.subscribe(heard.append)
    events = seeded(recorder)
    projector.apply(events)
    projector.apply(events)
    projector.apply(events[1:])
    assert projector.published("s") == fold_of_log(recorder, "s")
    assert heard == [events]
    assert projector.global_position == 2


def test_catch_up_applies_what_another_writer_recorded() -> None:
    recorder = MemoryRecorder()
    projector = Projector(recorder, snapshot_every=10)
    projector.start(None)
    seeded(recorder, "a")
    seeded(recorder, "b")
    assert projector.published("a") is None
    assert projector.catch_up() == 4
    assert projector.catch_up() == 0
    assert projector.published("b") == fold_of_log(recorder, "b")
    assert projector.global_position == 4


def test_our_events_past_another_writers_close_the_gap_at_once() -> None:
    recorder = MemoryRecorder()
    projector = Projector(recorder, snapshot_every=10)
    projector.start(None)
    seeded(recorder, "theirs")  # global 1, 2: not handed to the projector
    ours = seeded(recorder, "ours")  # global 3, 4
    projector.apply(ours)
    assert projector.global_position == 4
    assert projector.published("theirs") == fold_of_log(recorder, "theirs")


def test_a_committers_fold_is_adopted_only_when_it_is_that_very_fold() -> None:
    recorder = MemoryRecorder()
    projector = Projector(recorder, snapshot_every=10)
    projector.start(None)
    projector.apply(seeded(recorder))
    base = projector.published("s")
    assert base is not None
    change = recorder.append("s", 2, [updated("var_n_2", 5)])
    hint = replay(change, base.copy())
    projector.apply(change, {"s": hint})
    assert projector.published("s") is hint
    # A stale hint (its position is not the events' end) is not adopted: the events are folded.
    more = recorder.append("s", 3, [updated("var_n_2", 6)])
    projector.apply(more, {"s": hint})
    assert projector.published("s") == fold_of_log(recorder, "s")
    assert base == replay(recorder.read_session("s", 1, 2))  # published states never change


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.integers(0, 99), max_size=30), split=st.integers(0, 30))
def test_any_interleaving_of_commits_and_catch_ups_ends_as_the_fold_of_the_log(
    values: list[int], split: int
) -> None:
    recorder = MemoryRecorder()
    projector = Projector(recorder, snapshot_every=4)
    projector.start(None)
    projector.apply(seeded(recorder))
    for index, value in enumerate(values):
        recorded = recorder.append("s", 3 + index - 1, [updated("var_n_2", value)])
        if index % 3 == split % 3:
            projector.catch_up()
        elif index % 3 == (split + 1) % 3:
            projector.apply(recorded)
    projector.catch_up()
    assert projector.published("s") == fold_of_log(recorder, "s")
    history = projector.history("s")
    assert [c.value for c in history.changes("var_n_2")] == [0, *values]
    for position in range(1, 3 + len(values)):
        assert projector.state_at("s", position) == replay(recorder.read_session("s", 1, position))


def test_a_checkpoint_s_snapshots_decode_on_first_use_and_a_chain_that_does_not_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = MemoryRecorder()
    seeded(recorder)
    for value in range(1, 40):
        recorder.append("s", value + 1, [updated("var_n_2", value)])
    state = fold_of_log(recorder, "s")
    assert state is not None
    chain = SnapshotChain(30, [{"not": "a snapshot"}])  # a chain this code never wrote
    projector = Projector(recorder, snapshot_every=10)
    with caplog.at_level(logging.WARNING, logger="varstore.api.projector"):
        projector.start((recorder.last_global_position(), {"s": state}), {"s": chain})
        assert "do not decode" not in caplog.text  # not decoded at start-up
        for position in range(1, 42):
            assert projector.state_at("s", position) == replay(
                recorder.read_session("s", 1, position)
            )
    assert "the checkpoint's snapshots do not decode" in caplog.text


def test_a_reader_waits_for_snapshots_another_thread_is_decoding_instead_of_seeing_none() -> None:
    recorder = MemoryRecorder()
    seeded(recorder)
    for value in range(1, 20):
        recorder.append("s", value + 1, [updated("var_n_2", value)])
    events = recorder.read_session("s")
    snapshot = replay(events[:10])
    assert snapshot is not None
    decoding, release = threading.Event(), threading.Event()

    def slow_decode() -> list[SessionState]:
        decoding.set()
        release.wait(5)
        return [snapshot]

    snapshots = Snapshots(10, pending=slow_decode, last=10)
    settler = threading.Thread(target=snapshots.settle)
    settler.start()
    assert decoding.wait(5)
    found: list[SessionState | None] = []
    reader = threading.Thread(target=lambda: found.append(snapshots.before(15)))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # waiting for the decode, not answering "no snapshot"
    release.set()
    reader.join(5)
    settler.join(5)
    assert found == [snapshot]
