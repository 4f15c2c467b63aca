"""The compact history index: its Changes, made from the log on demand, are exactly those
the plain fold (SessionHistory, every Change in memory) makes, for any valid log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from history_model import SessionHistory
from hypothesis import given, settings
from hypothesis import strategies as st

from varstore.api.history import EventCache, History
from varstore.eventstore import EventType, MemoryRecorder, NewEvent, RecordedEvent
from varstore.projections import (
    IndexEncodings,
    SessionIndex,
    open_checkpoint,
    replay,
    seal_checkpoint,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAMES = ("a", "b", "c")

#: One step of a log: each is turned into a valid event (or skipped) by `build_log`.
STEP = st.one_of(
    st.tuples(st.just("register"), st.sampled_from(NAMES)),
    st.tuples(st.just("set"), st.integers(0, 9), st.integers(-3, 3), st.booleans()),
    st.tuples(st.just("batch"), st.lists(st.tuples(st.integers(0, 9), st.integers()), max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, 9)),
    st.tuples(st.just("revive"), st.integers(0, 9)),
    st.tuples(st.just("end"), st.booleans()),
    st.tuples(st.just("fork")),
)


def build_log(steps: list[tuple[Any, ...]]) -> list[NewEvent]:
    """A log the fold accepts: a creation, then the steps that apply to the state so far
    (an id may be registered again after its deletion; a batch may name one id twice)."""
    log = [NewEvent(EventType.SESSION_CREATED, {"metadata": {}, "ttl_seconds": 0}, T0)]
    live: dict[str, str] = {}  # id -> name
    gone: dict[str, str] = {}
    session_live = True

    def add(event_type: str, payload: dict[str, Any]) -> None:
        at = T0 + timedelta(milliseconds=len(log) // 2)  # two events share each time
        log.append(NewEvent(event_type, payload, at, source=f"s{len(log) % 3}"))

    def register(variable_id: str, name: str) -> None:
        payload = {"variable_id": variable_id, "name": name, "type": "integer", "value": 0}
        add(EventType.VARIABLE_REGISTERED, payload)
        live[variable_id] = name
        gone.pop(variable_id, None)

    for step in steps:
        ids = sorted(live)
        if step[0] == "end":
            if session_live:
                add(EventType.SESSION_DELETED, {"reason": "deleted"})
                gone.update(live)
                live.clear()
            else:
                add(EventType.SESSION_CREATED, {"metadata": {}, "ttl_seconds": 0})
            session_live = not session_live
        elif not session_live:
            continue
        elif step[0] == "register" and step[1] not in live.values():
            register(f"var_{step[1]}_{len(log) + 1}", step[1])
        elif step[0] == "revive" and gone:
            variable_id, name = sorted(gone.items())[step[1] % len(gone)]
            if name not in live.values():
                register(variable_id, name)
        elif step[0] == "set" and ids:
            payload: dict[str, Any] = {"variable_id": ids[step[1] % len(ids)], "value": step[2]}
            if step[3]:
                payload["rollback_to_version"] = 0
            add(EventType.VARIABLE_UPDATED, payload)
        elif step[0] == "batch" and ids:
            updates = [{"variable_id": ids[i % len(ids)], "value": v} for i, v in step[1]]
            add(EventType.BATCH_APPLIED, {"updates": updates})
        elif step[0] == "delete" and ids:
            variable_id = ids[step[1] % len(ids)]
            add(EventType.VARIABLE_DELETED, {"variable_id": variable_id})
            gone[variable_id] = live.pop(variable_id)
        elif step[0] == "fork":
            add(EventType.SESSION_FORKED, {"origin_session_id": "o", "origin_position": 1})
    return log


def indexed(steps: list[tuple[Any, ...]]) -> tuple[list[RecordedEvent], SessionHistory, History]:
    recorder = MemoryRecorder()
    events = recorder.append("s", 0, build_log(steps))
    replay(events)  # a log the fold accepts (raises otherwise)
    model, index = SessionHistory(), SessionIndex()
    for event in events:
        model.apply(event)
        index.apply(event)
    assert index.position == len(events)
    return events, model, History(index.history, recorder, "s")


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(STEP, max_size=40))
def test_the_compact_index_gives_the_changes_the_plain_fold_gives(
    steps: list[tuple[Any, ...]],
) -> None:
    events, model, history = indexed(steps)
    ids = {e.payload["variable_id"] for e in events if e.type == EventType.VARIABLE_REGISTERED}
    for identifier in [*NAMES, *sorted(ids), "nope"]:
        assert history.ids_for(identifier) == model.ids_for(identifier)
    for variable_id in sorted(ids):
        changes = model.changes(variable_id)
        assert history.changes(variable_id) == changes
        for version in range(-1, len(changes) + 1):
            expected = model.value_at_version(variable_id, version)
            assert history.value_at_version(variable_id, version) == expected
        for event in events:
            expected_at = model.changes_at(variable_id, event.position)
            assert history.changes_at(variable_id, event.position) == expected_at
            assert history.changes_at(variable_id, event.position, event) == expected_at


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(STEP, max_size=30))
def test_the_index_finds_the_last_position_at_or_before_each_moment(
    steps: list[tuple[Any, ...]],
) -> None:
    recorder = MemoryRecorder()
    events = recorder.append("s", 0, build_log(steps))
    index = SessionIndex()
    for event in events:
        index.apply(event)
    for event in events:
        for moment in (event.recorded_at, event.recorded_at - timedelta(microseconds=1)):
            expected = max((e.position for e in events if e.recorded_at <= moment), default=0)
            assert index.position_at(moment) == expected


def same_index(found: SessionIndex, expected: SessionIndex) -> None:
    assert found.position == expected.position
    assert found.times == expected.times
    got, want = found.history.lifetimes, expected.history.lifetimes
    assert [(x.variable_id, x.name, x.type, x.entries) for x in got] == [
        (x.variable_id, x.name, x.type, x.entries) for x in want
    ]


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(STEP, max_size=40), segment=st.integers(1, 9), split=st.integers(0, 50))
def test_an_index_reads_back_from_a_checkpoint_and_goes_on_from_there(
    steps: list[tuple[Any, ...]], segment: int, split: int
) -> None:
    recorder = MemoryRecorder()
    events = recorder.append("s", 0, build_log(steps))
    split = min(split, len(events))
    index, encodings = SessionIndex(), IndexEncodings(segment)
    for event in events[:split]:
        index.apply(event)
    first = seal_checkpoint(None, {}, indexes={"s": index.cut()}, index_encodings=encodings)
    for event in events[split:]:
        index.apply(event)
    cut = index.cut()
    second = seal_checkpoint(None, {}, indexes={"s": cut}, index_encodings=encodings)
    fresh = seal_checkpoint(None, {}, indexes={"s": cut}, index_encodings=IndexEncodings(segment))
    assert second == fresh  # the segments kept from the first checkpoint are still right
    loaded = open_checkpoint(first).index_encodings  # what a restarted server reuses
    assert seal_checkpoint(None, {}, indexes={"s": cut}, index_encodings=loaded) == fresh
    same_index(open_checkpoint(second).indexes["s"], index)
    restarted = open_checkpoint(first).indexes["s"]
    for event in events:  # start-up: what the index has is skipped, the rest folded in
        restarted.apply(event)
    same_index(restarted, index)
    model = SessionHistory()
    for event in events:
        model.apply(event)
    history = History(restarted.history, recorder, "s")
    for variable_id in {lifetime.variable_id for lifetime in index.history.lifetimes}:
        assert history.changes(variable_id) == model.changes(variable_id)


class CountingLog:
    """A recorder's ``read_positions`` that counts the positions it was asked for."""

    def __init__(self, recorder: MemoryRecorder) -> None:
        self.recorder = recorder
        self.asked: list[list[int]] = []

    def read_positions(self, session_id: str, positions: Sequence[int]) -> list[RecordedEvent]:
        self.asked.append(sorted(positions))
        return self.recorder.read_positions(session_id, positions)


def test_the_event_cache_reads_each_event_once_and_drops_the_least_recently_used() -> None:
    recorder = MemoryRecorder()
    recorder.append("s", 0, build_log([("register", "a"), ("register", "b")]))
    log = CountingLog(recorder)
    cache = EventCache(size=2)
    assert sorted(cache.read(log, "s", [1, 2])) == [1, 2]
    assert cache.read(log, "s", [1, 2]) == {e.position: e for e in recorder.read_session("s", 1, 2)}
    assert log.asked == [[1, 2]]  # the second read came from the cache
    cache.read(log, "s", [3])  # evicts position 1, the least recently used
    cache.read(log, "s", [1, 3])
    assert log.asked == [[1, 2], [3], [1]]
    assert cache.read(log, "other", [1]) == {}  # another session's position 1 is not s's
