"""The recorder contract: every backend passes every shared test here.

A backend joins by adding one entry to ``BACKENDS``: a function that makes a fresh, empty
recorder (a PostgreSQL one would create a new schema, or skip when no server is configured).
Backend-specific tests follow the shared suite.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varstore.eventstore import (
    Append,
    AppendResult,
    Conflict,
    EventType,
    NewEvent,
    PositionConflict,
    Recorded,
    RecordedEvent,
    Recorder,
    RecorderError,
    SQLiteRecorder,
)

RecorderFactory = Callable[[], Recorder]


T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)

# Hypothesis examples share one test's fixtures; each example makes its own recorder (or
# session), so the function-scoped fixture is safe to reuse.
reusing_fixtures = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(params=list(BACKENDS))
def make_recorder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecorderFactory]:
    """Makes fresh, empty recorders of one backend, and closes them after the test."""
    made: list[Recorder] = []

    def make() -> Recorder:
        directory = tmp_path / f"recorder-{len(made)}"
        directory.mkdir()
        made.append(BACKENDS[request.param](directory))
        return made[-1]

    yield make
    for recorder in made:
        recorder.close()


@pytest.fixture
def recorder(make_recorder: RecorderFactory) -> Recorder:
    return make_recorder()


def new(n: int = 0, **fields: Any) -> NewEvent:
    """A distinguishable event: ``n`` is in its payload and its time."""
    fields.setdefault("payload", {"n": n})
    fields.setdefault("recorded_at", T0 + timedelta(seconds=n))
    return NewEvent(type=EventType.VARIABLE_UPDATED, **fields)


def news(count: int, start: int = 0) -> list[NewEvent]:
    return [new(n) for n in range(start, start + count)]


def positions(events: list[RecordedEvent]) -> list[tuple[str, int, int]]:
    return [(e.session_id, e.position, e.global_position) for e in events]


def flat(results: list[AppendResult]) -> list[RecordedEvent]:
    """The events of every recorded append, in order (conflicts contribute none)."""
    return [event for result in results if isinstance(result, Recorded) for event in result.events]


def exactly(value: object) -> str:
    """``value`` as canonical JSON: unlike ==, this tells 1 from 1.0 and 1 from True."""
    return json.dumps(value, sort_keys=True)


# -- appending -------------------------------------------------------------------------------


def test_appending_nothing_records_nothing(recorder: Recorder) -> None:
    assert recorder.append_many([]) == []
    assert recorder.append("s", 0, []) == []
    assert list(recorder.read_all()) == []
    assert recorder.last_position("s") == 0


def test_reading_an_unknown_session_gives_no_events(recorder: Recorder) -> None:
    recorder.append("known", 0, news(2))
    assert recorder.read_session("unknown") == []
    assert recorder.last_position("unknown") == 0


def test_append_to_new_session_starts_at_position_one(recorder: Recorder) -> None:
    [event] = recorder.append("s", 0, [new()])
    assert (event.session_id, event.position, event.global_position) == ("s", 1, 1)


def test_session_positions_are_gap_free_from_one_across_appends(recorder: Recorder) -> None:
    recorder.append("s", 0, news(2))
    recorder.append("s", 2, news(3, start=2))
    assert [e.position for e in recorder.read_session("s")] == [1, 2, 3, 4, 5]
    assert [e.payload["n"] for e in recorder.read_session("s")] == [0, 1, 2, 3, 4]


def test_global_positions_increase_across_sessions_in_append_order(recorder: Recorder) -> None:
    recorder.append("a", 0, news(2))
    recorder.append("b", 0, news(1))
    recorder.append("a", 2, news(1))
    assert positions(list(recorder.read_all())) == [
        ("a", 1, 1),
        ("a", 2, 2),
        ("b", 1, 3),
        ("a", 3, 4),
    ]


def test_append_returns_the_events_as_they_are_read_back(recorder: Recorder) -> None:
    returned = flat(recorder.append_many([Append("a", 0, news(2)), Append("b", 0, news(1))]))
    assert returned == list(recorder.read_all())
    assert returned[:2] == recorder.read_session("a")


def test_append_many_reports_one_result_per_append_in_order(recorder: Recorder) -> None:
    results = recorder.append_many([Append("a", 0, news(2)), Append("b", 0, news(1))])
    assert [type(r) for r in results] == [Recorded, Recorded]
    assert [len(r.events) for r in results if isinstance(r, Recorded)] == [2, 1]


def test_appends_to_one_session_in_one_call_chain_their_expected_positions(
    recorder: Recorder,
) -> None:
    returned = flat(
        recorder.append_many(
            [Append("s", 0, news(2)), Append("t", 0, news(1)), Append("s", 2, news(1, start=2))]
        )
    )
    assert positions(returned) == [("s", 1, 1), ("s", 2, 2), ("t", 1, 3), ("s", 3, 4)]
    assert recorder.last_position("s") == 3


@pytest.mark.parametrize("expected", [0, 1, 3, 10, -1])
def test_a_wrong_expected_position_raises_position_conflict(
    recorder: Recorder, expected: int
) -> None:
    recorder.append("s", 0, news(2))
    with pytest.raises(PositionConflict) as conflict:
        recorder.append("s", expected, [new()])
    assert (conflict.value.session_id, conflict.value.expected, conflict.value.actual) == (
        "s",
        expected,
        2,
    )
    assert recorder.last_position("s") == 2


def test_a_conflicting_append_writes_nothing_and_does_not_stop_the_others(
    recorder: Recorder,
) -> None:
    recorder.append("a", 0, news(1))
    results = recorder.append_many(
        [
            Append("new", 0, news(3)),
            Append("a", 1, news(1)),
            Append("a", 1, news(1)),  # stale: the append before moved "a" to 2
            Append("b", 0, news(1)),
        ]
    )
    assert results[2] == Conflict("a", 1, 2)
    assert [type(r) for r in results] == [Recorded, Recorded, Conflict, Recorded]
    assert positions(list(recorder.read_all())) == [
        ("a", 1, 1),
        ("new", 1, 2),
        ("new", 2, 3),
        ("new", 3, 4),
        ("a", 2, 5),
        ("b", 1, 6),
    ]
    # The conflict used up no global position either.
    assert positions(recorder.append("new", 3, news(1))) == [("new", 4, 7)]


def test_after_a_conflict_the_sessions_later_appends_in_the_call_conflict_too(
    recorder: Recorder,
) -> None:
    recorder.append("a", 0, news(2))
    # The second append chains onto the first, which conflicts; that it happens to name the
    # session's real position must not let it through (it was decided on the first one).
    results = recorder.append_many([Append("a", 1, news(1)), Append("a", 2, news(1))])
    assert results == [Conflict("a", 1, 2), Conflict("a", 2, 2)]
    assert recorder.last_position("a") == 2


def test_an_append_without_events_still_checks_its_expected_position(recorder: Recorder) -> None:
    recorder.append("s", 0, news(1))
    assert recorder.append("s", 1, []) == []
    results = recorder.append_many([Append("t", 0, news(1)), Append("s", 0, [])])
    assert results[1] == Conflict("s", 0, 1)
    with pytest.raises(PositionConflict):
        recorder.append("s", 0, [])


@pytest.mark.parametrize(
    "payload",
    [{"bad": float("nan")}, {"bad": {1, 2}}, {"bad": object()}],
    ids=["nan", "set", "object"],
)
def test_an_unstorable_payload_raises_recorder_error_and_writes_nothing(
    recorder: Recorder, payload: dict[str, Any]
) -> None:
    with pytest.raises(RecorderError):
        recorder.append_many([Append("a", 0, news(1)), Append("b", 0, [new(payload=payload)])])
    assert list(recorder.read_all()) == []


@pytest.mark.parametrize("field", ["session_id", "source", "type"])
def test_a_nul_in_a_text_column_raises_recorder_error_and_writes_nothing(
    recorder: Recorder, field: str
) -> None:
    # Every backend refuses what one cannot store (PostgreSQL's TEXT holds no NUL); the API
    # refuses such a source before it gets here.
    session = "s\x00" if field == "session_id" else "s"
    event = dataclasses.replace(new(), **({field: "a\x00b"} if field != "session_id" else {}))
    with pytest.raises(RecorderError, match="NUL"):
        recorder.append_many([Append("a", 0, news(1)), Append(session, 0, [event])])
    assert list(recorder.read_all()) == []


def test_a_naive_recorded_at_raises_recorder_error_and_writes_nothing(recorder: Recorder) -> None:
    naive = new(recorded_at=datetime(2024, 1, 1))
    with pytest.raises(RecorderError, match="timezone-aware"):
        recorder.append_many([Append("a", 0, news(1)), Append("a", 1, [naive])])
    assert list(recorder.read_all()) == []


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_position", "to_position", "expected"),
    [
        (1, None, [1, 2, 3, 4, 5]),
        (3, None, [3, 4, 5]),
        (2, 4, [2, 3, 4]),
        (4, 4, [4]),
        (4, 3, []),
        (6, None, []),
        (0, 2, [1, 2]),
        (-5, -1, []),
        (1, 10**30, [1, 2, 3, 4, 5]),
    ],
)
def test_read_session_returns_the_events_within_its_bounds(
    recorder: Recorder, from_position: int, to_position: int | None, expected: list[int]
) -> None:
    recorder.append_many([Append("s", 0, news(5)), Append("other", 0, news(2))])
    events = recorder.read_session("s", from_position, to_position)
    assert [e.position for e in events] == expected
    assert {e.session_id for e in events} <= {"s"}


@given(wanted=st.lists(st.integers(min_value=-3, max_value=1_300), max_size=1_200))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_read_positions_returns_the_events_at_those_positions_in_order_once_each(
    recorder: Recorder, wanted: list[int]
) -> None:
    if not recorder.read_session("s", 1, 1):  # one log for every example of this backend
        recorder.append_many([Append("s", 0, news(1_000)), Append("other", 0, news(3))])
    every = recorder.read_session("s")
    expected = [every[p - 1] for p in sorted(set(wanted)) if 1 <= p <= len(every)]
    assert recorder.read_positions("s", wanted) == expected
    assert recorder.read_positions("nobody", wanted) == []


@pytest.mark.parametrize(
    ("after", "expected"), [(0, [1, 2, 3, 4]), (2, [3, 4]), (4, []), (9, []), (-3, [1, 2, 3, 4])]
)
def test_read_all_returns_the_events_after_a_global_position(
    recorder: Recorder, after: int, expected: list[int]
) -> None:
    recorder.append_many([Append("a", 0, news(2)), Append("b", 0, news(2))])
    assert [e.global_position for e in recorder.read_all(after)] == expected


@pytest.mark.parametrize(
    ("after", "limit", "expected"),
    [(0, 2, [1, 2]), (1, 2, [2, 3]), (3, 5, [4]), (0, 0, []), (4, 1, []), (0, None, [1, 2, 3, 4])],
)
def test_read_all_returns_at_most_limit_events(
    recorder: Recorder, after: int, limit: int | None, expected: list[int]
) -> None:
    recorder.append_many([Append("a", 0, news(2)), Append("b", 0, news(2))])
    assert [e.global_position for e in recorder.read_all(after, limit)] == expected


def test_read_all_with_a_limit_spans_chunks(recorder: Recorder) -> None:
    recorder.append("s", 0, news(2500))
    assert [e.global_position for e in recorder.read_all(10, 1500)] == list(range(11, 1511))


def test_last_global_position_is_the_highest_global_position(recorder: Recorder) -> None:
    assert recorder.last_global_position() == 0
    recorder.append_many([Append("a", 0, news(2)), Append("b", 0, news(3))])
    assert recorder.last_global_position() == 5


def test_read_all_streams_a_log_longer_than_one_chunk(recorder: Recorder) -> None:
    recorder.append_many([Append(f"s{i}", 0, news(5)) for i in range(500)])
    assert [e.global_position for e in recorder.read_all(1)] == list(range(2, 2501))


def test_read_all_keeps_working_while_events_are_appended_midway(recorder: Recorder) -> None:
    recorder.append("s", 0, news(2500))
    before = list(recorder.read_all())
    seen = []
    for i, event in enumerate(recorder.read_all()):
        seen.append(event)
        if i % 700 == 0:  # other calls between two next()s: nothing is held across a yield
            recorder.append(f"t{i}", 0, news(3))
            assert recorder.read_session("s", 1, 1) == before[:1]
    # Whether it sees the midway appends is the backend's choice; order and gaps are not.
    assert seen[: len(before)] == before
    assert [e.global_position for e in seen] == list(range(1, len(seen) + 1))


def test_last_position_is_the_position_of_the_sessions_last_event(recorder: Recorder) -> None:
    recorder.append("s", 0, news(3))
    recorder.append("t", 0, news(1))
    recorder.append("s", 3, news(1))
    assert (recorder.last_position("s"), recorder.last_position("t")) == (4, 1)


# -- derived data: the checkpoint and sessions' last use ---------------------------------------


def test_a_new_recorder_has_no_checkpoint_and_no_touches(recorder: Recorder) -> None:
    assert recorder.load_checkpoint() is None
    assert recorder.load_touches() == {}


def test_a_checkpoint_replaces_the_one_before_and_can_be_dropped(recorder: Recorder) -> None:
    recorder.save_checkpoint(3, b"first")
    recorder.save_checkpoint(7, b"\x00second\xff")
    assert recorder.load_checkpoint() == (7, b"\x00second\xff")
    recorder.drop_checkpoint()
    assert recorder.load_checkpoint() is None
    recorder.drop_checkpoint()  # dropping none is harmless


def test_touches_keep_the_latest_time_per_session_in_utc(recorder: Recorder) -> None:
    plus_two = timezone(timedelta(hours=2))
    recorder.save_touches({"a": T0, "b": T0 + timedelta(seconds=5)})
    recorder.save_touches({"a": T0 + timedelta(seconds=9), "b": T0})  # b's older time is ignored
    recorder.save_touches({"c": (T0 + timedelta(hours=1)).astimezone(plus_two)})
    assert recorder.load_touches() == {
        "a": T0 + timedelta(seconds=9),
        "b": T0 + timedelta(seconds=5),
        "c": T0 + timedelta(hours=1),
    }
    assert all(moment.utcoffset() == timedelta(0) for moment in recorder.load_touches().values())


def test_a_naive_touch_raises_recorder_error(recorder: Recorder) -> None:
    with pytest.raises(RecorderError, match="timezone-aware"):
        recorder.save_touches({"a": datetime(2024, 1, 1)})


def test_derived_data_does_not_touch_the_log(recorder: Recorder) -> None:
    recorder.append("s", 0, news(2))
    recorder.save_checkpoint(2, b"state")
    recorder.save_touches({"s": T0})
    recorder.drop_checkpoint()
    assert positions(list(recorder.read_all())) == [("s", 1, 1), ("s", 2, 2)]


# -- round trip ------------------------------------------------------------------------------

PAYLOAD: dict[str, Any] = {
    "text": "héllo wörld ✓ 日本語 🎉",
    "escapes": 'quote" backslash\\ newline\n tab\t nul\x00',
    "nested": {"list": [1, [2, [3, {"deep": None}]]], "empty": {}, "empty_list": []},
    "int64": [2**63 - 1, -(2**63), 0, -1],
    "floats": [0.1, -2.5, 1e308, 5e-324, -0.0, 1.0, 3.141592653589793],
    "bools": [True, False],
    "null": None,
}


def test_every_field_of_an_event_round_trips_exactly(recorder: Recorder) -> None:
    sent = NewEvent(
        type=EventType.BATCH_APPLIED,
        payload=PAYLOAD,
        recorded_at=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        source="client-ü 127.0.0.1:5000",
        metadata={"reason": "migración ✓", "x-request-id": "42"},
        schema_version=2**31 + 7,
        request_id="req-✓-42",
        request_digest="0f" * 32,
    )
    [returned] = recorder.append("sessión-✓", 0, [sent])
    for event in (returned, *recorder.read_session("sessión-✓"), *recorder.read_all()):
        assert event == RecordedEvent.of(sent, "sessión-✓", 1, 1)
        assert exactly(event.payload) == exactly(PAYLOAD)
        assert exactly(event.metadata) == exactly(sent.metadata)
        assert event.type == "BatchApplied"
        assert event.recorded_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "recorded_at",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 6, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2024, 6, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
    ],
    ids=str,
)
def test_recorded_at_comes_back_as_the_same_instant_in_utc(
    recorder: Recorder, recorded_at: datetime
) -> None:
    recorder.append("s", 0, [new(recorded_at=recorded_at)])
    [event] = recorder.read_session("s")
    assert event.recorded_at == recorded_at
    assert event.recorded_at.tzinfo == UTC


def test_the_log_keeps_no_reference_to_the_callers_payload(recorder: Recorder) -> None:
    payload: dict[str, Any] = {"list": [1, 2]}
    recorder.append("s", 0, [new(payload=payload)])
    payload["list"].append(3)
    payload["added"] = True
    assert recorder.read_session("s")[0].payload == {"list": [1, 2]}


fresh = itertools.count()
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@reusing_fixtures
@given(
    payload=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    metadata=st.dictionaries(st.text(max_size=8), st.text(), max_size=3),
    source=st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00")),
)
def test_any_json_payload_round_trips_exactly(
    recorder: Recorder, payload: dict[str, Any], metadata: dict[str, str], source: str
) -> None:
    session = f"s{next(fresh)}"  # examples share the recorder, not sessions
    sent = new(payload=payload, metadata=metadata, source=source)
    [returned] = recorder.append(session, 0, [sent])
    [read] = recorder.read_session(session)
    assert returned == read
    assert (read.source, exactly(read.metadata)) == (source, exactly(metadata))
    assert exactly(read.payload) == exactly(payload)


# -- the model -------------------------------------------------------------------------------

# One planned append: its session, how far its expected position is off (0: correct), and
# how many events it carries.
appends_plans = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from([0, 0, 0, 0, -1, 1, 3]),
    st.integers(0, 3),
)


@reusing_fixtures
@given(calls=st.lists(st.lists(appends_plans, max_size=4), max_size=10))
def test_the_recorder_behaves_like_a_list_per_session(
    make_recorder: RecorderFactory, calls: list[list[tuple[str, int, int]]]
) -> None:
    with closing(make_recorder()) as recorder:
        log: list[RecordedEvent] = []  # the model: every event in global order
        for number, plans in enumerate(calls):
            appends, recorded, conflicted = [], [], []
            last = {sid: sum(e.session_id == sid for e in log) for sid in "abc"}
            poisoned: set[str] = set()  # a session whose append conflicted in this call
            for sid, offset, count in plans:
                events = [new(number * 10 + i, source=f"call {number}") for i in range(count)]
                appends.append(Append(sid, last[sid] + offset, events))
                conflicted.append(bool(offset) or sid in poisoned)
                if conflicted[-1]:
                    poisoned.add(sid)
                    continue
                for event in events:
                    last[sid] += 1
                    recorded.append(RecordedEvent.of(event, sid, last[sid], len(log) + 1))
                    log.append(recorded[-1])
            results = recorder.append_many(appends)
            assert flat(results) == recorded
            assert [isinstance(r, Conflict) for r in results] == conflicted
        assert list(recorder.read_all()) == log
        assert list(recorder.read_all(len(log) // 2)) == log[len(log) // 2 :]
        for sid in "abc":
            session = [e for e in log if e.session_id == sid]
            assert recorder.read_session(sid) == session
            assert recorder.read_session(sid, 2, 3) == session[1:3]
            assert recorder.last_position(sid) == len(session)


# -- threads and closing ---------------------------------------------------------------------


def test_concurrent_appends_from_eight_threads_all_land_gap_free(recorder: Recorder) -> None:
    threads, appends_each = 8, 25
    start = threading.Barrier(threads)

    def write(session: str) -> None:
        start.wait()
        for i in range(appends_each):
            recorder.append(session, 2 * i, news(2, start=2 * i))

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(write, f"s{t}") for t in range(threads)]:
            future.result()  # re-raises a thread's exception

    log = list(recorder.read_all())
    assert [e.global_position for e in log] == list(range(1, threads * appends_each * 2 + 1))
    for t in range(threads):
        session = recorder.read_session(f"s{t}")
        assert [e.position for e in session] == list(range(1, appends_each * 2 + 1))
        assert [e.payload["n"] for e in session] == list(range(appends_each * 2))


def test_every_method_of_a_closed_recorder_raises_recorder_error(recorder: Recorder) -> None:
    recorder.append("s", 0, news(1))
    recorder.close()
    with pytest.raises(RecorderError):
        recorder.append_many([])
    with pytest.raises(RecorderError):
        recorder.append("s", 1, news(1))
    with pytest.raises(RecorderError):
        recorder.read_session("s")
    with pytest.raises(RecorderError):
        list(recorder.read_all())
    with pytest.raises(RecorderError):
        recorder.last_position("s")
    with pytest.raises(RecorderError):
        recorder.last_global_position()
    with pytest.raises(RecorderError):
        recorder.save_checkpoint(1, b"x")
    with pytest.raises(RecorderError):
        recorder.load_checkpoint()
    with pytest.raises(RecorderError):
        recorder.drop_checkpoint()
    with pytest.raises(RecorderError):
        recorder.save_touches({"s": T0})
    with pytest.raises(RecorderError):
        recorder.load_touches()


def test_closing_twice_is_harmless(recorder: Recorder) -> None:
    recorder.close()
    recorder.close()


def test_read_all_raises_recorder_error_once_the_recorder_closes_midway(
    recorder: Recorder,
) -> None:
    recorder.append("s", 0, news(2500))
    events = recorder.read_all()
    next(events)
    recorder.close()
    with pytest.raises(RecorderError):
        for _ in events:
            pass


# -- request ids -----------------------------------------------------------------------------


def test_an_event_without_a_request_id_comes_back_with_empty_request_fields(
    recorder: Recorder,
) -> None:
    [event] = recorder.append("s", 0, [new(1)])
    assert (event.request_id, event.request_digest) == ("", "")
    assert recorder.read_session("s") == [event]


def test_read_requests_returns_the_recent_events_with_a_request_id_by_time(
    recorder: Recorder,
) -> None:
    def stamped(n: int, request_id: str, at: int | None = None) -> NewEvent:
        moment = T0 + timedelta(seconds=n if at is None else at)
        return new(n, request_id=request_id, request_digest=f"#{request_id}", recorded_at=moment)

    recorder.append_many(
        [
            Append("a", 0, [stamped(1, "old"), new(10)]),  # T0 + 1 s: before the cut
            Append("b", 0, [stamped(20, "two"), stamped(21, "two", at=20)]),
            Append("a", 2, [new(30), stamped(31, "three", at=19)]),  # an imported time
            Append("c", 0, [stamped(40, "four", at=19)]),
        ]
    )
    found = list(recorder.read_requests(T0 + timedelta(seconds=19)))
    assert [(e.session_id, e.position, e.request_id) for e in found] == [
        ("a", 4, "three"),
        ("c", 1, "four"),
        ("b", 1, "two"),
        ("b", 2, "two"),
    ]
    assert all(e.request_digest == f"#{e.request_id}" for e in found)
    assert list(recorder.read_requests(T0 + timedelta(seconds=20, microseconds=1))) == []


def test_read_requests_pages_through_more_events_than_one_chunk(recorder: Recorder) -> None:
    stamped = [new(n % 3, request_id=f"r{n}", request_digest="d") for n in range(2500)]
    recorder.append("s", 0, stamped)
    found = list(recorder.read_requests(T0))
    assert len(found) == 2500
    assert [(e.recorded_at, e.global_position) for e in found] == sorted(
        (e.recorded_at, e.global_position) for e in found
    )


def test_read_requests_refuses_a_naive_time(recorder: Recorder) -> None:
    with pytest.raises(RecorderError, match="timezone-aware"):
        list(recorder.read_requests(datetime(2024, 1, 1)))


# -- SQLite only -----------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


def test_sqlite_events_survive_close_and_reopen(db_path: Path) -> None:
    with closing(SQLiteRecorder(db_path)) as recorder:
        written = flat(
            recorder.append_many([Append("a", 0, news(2)), Append("b", 0, [new(payload=PAYLOAD)])])
        )
    with closing(SQLiteRecorder(db_path)) as recorder:
        assert list(recorder.read_all()) == written
        # Global positions carry on from the file, not from 1.
        assert positions(recorder.append("a", 2, news(1))) == [("a", 3, 4)]


def test_sqlite_keeps_the_checkpoint_and_touches_across_close_and_reopen(db_path: Path) -> None:
    with closing(SQLiteRecorder(db_path)) as recorder:
        recorder.save_checkpoint(5, b"state")
        recorder.save_touches({"s": T0})
    with closing(SQLiteRecorder(db_path)) as recorder:
        assert recorder.load_checkpoint() == (5, b"state")
        assert recorder.load_touches() == {"s": T0}


def test_sqlite_takes_positions_from_the_file_so_a_second_writer_only_conflicts(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import varstore.eventstore.sqlite as sqlite_backend

    # The lock file keeps a second writer out; bypass it to prove the log stays sound anyway.
    monkeypatch.setattr(sqlite_backend, "_lock_exclusively", lambda path: os.open(os.devnull, 0))
    with closing(SQLiteRecorder(db_path)) as first, closing(SQLiteRecorder(db_path)) as second:
        first.append("s", 0, news(1))
        second.append("s", 1, news(1, start=1))
        assert first.append_many([Append("s", 1, news(1)), Append("t", 0, news(1))]) == [
            Conflict("s", 1, 2),
            Recorded(tuple(first.read_session("t"))),
        ]
        assert positions(list(first.read_all())) == [("s", 1, 1), ("s", 2, 2), ("t", 1, 3)]


@pytest.mark.parametrize(("synchronous", "pragma"), [("full", 2), ("normal", 1)])
def test_sqlite_applies_the_synchronous_setting(
    db_path: Path, synchronous: Any, pragma: int
) -> None:
    with closing(SQLiteRecorder(db_path, synchronous=synchronous)) as recorder:
        # synchronous is per connection: only the recorder's own writer can tell.
        assert recorder._writer.execute("PRAGMA synchronous").fetchone() == (pragma,)


def test_sqlite_defaults_to_synchronous_full_in_wal_mode(db_path: Path) -> None:
    with closing(SQLiteRecorder(db_path)) as recorder:
        assert recorder._writer.execute("PRAGMA synchronous").fetchone() == (2,)
        with closing(sqlite3.connect(db_path)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sqlite_rejects_an_unknown_synchronous_setting(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteRecorder(db_path, synchronous="off")  # type: ignore[arg-type]


def test_a_second_sqlite_recorder_on_one_database_fails_until_the_first_closes(
    db_path: Path,
) -> None:
    first = SQLiteRecorder(db_path)
    first.append("s", 0, news(1))
    with pytest.raises(RecorderError, match="in use by another varstore process"):
        SQLiteRecorder(db_path)
    first.close()
    with closing(SQLiteRecorder(db_path)) as second:
        assert second.last_position("s") == 1


def test_a_second_process_cannot_open_a_database_in_use(db_path: Path) -> None:
    with closing(SQLiteRecorder(db_path)):
        opener = "import sys; from varstore.eventstore import SQLiteRecorder as R; R(sys.argv[1])"
        result = subprocess.run(
            [sys.executable, "-c", opener, str(db_path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "in use by another varstore process" in result.stderr


def test_sqlite_refuses_a_database_with_a_newer_schema(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    for _ in range(2):  # the second attempt proves the failed one released the lock file
        with pytest.raises(RecorderError, match="schema version 99"):
            SQLiteRecorder(db_path)


def test_sqlite_stores_microseconds_since_the_epoch_and_compact_json(db_path: Path) -> None:
    recorded_at = datetime(2001, 9, 9, 1, 46, 40, 5, tzinfo=UTC)  # 1e9 seconds after the epoch
    with closing(SQLiteRecorder(db_path)) as recorder:
        recorder.append("s", 0, [new(recorded_at=recorded_at, payload={"a": [1, 2]})])
    with closing(sqlite3.connect(db_path)) as conn:
        row = conn.execute("SELECT recorded_at_us, payload, metadata FROM events").fetchone()
        assert row == (1_000_000_000_000_005, '{"a":[1,2]}', "{}")
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)


def test_sqlite_errors_surface_as_recorder_error_with_their_cause(db_path: Path) -> None:
    with closing(SQLiteRecorder(db_path)) as recorder:
        with closing(sqlite3.connect(db_path)) as saboteur:
            saboteur.execute("DROP TABLE events")
        with pytest.raises(RecorderError) as raised:
            recorder.append("s", 0, news(1))
        assert isinstance(raised.value.__cause__, sqlite3.Error)
        with pytest.raises(RecorderError):
            recorder.read_session("s")


#: The events table as varstore wrote it at schema version 1 (before request ids).
_VERSION_1_EVENTS = """
CREATE TABLE events (
    global_position INTEGER PRIMARY KEY,
    session_id      TEXT    NOT NULL,
    position        INTEGER NOT NULL,
    type            TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at_us  INTEGER NOT NULL,
    source          TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    UNIQUE (session_id, position)
)
"""


def test_sqlite_migrates_a_version_1_database_on_open_keeping_every_event(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(_VERSION_1_EVENTS)
        conn.execute(
            "INSERT INTO events VALUES (1, 's', 1, 'VariableUpdated', 1, 5, 'cli', '{}', "
            "'{\"n\":1}')"
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    with closing(SQLiteRecorder(db_path)) as recorder:
        [old] = recorder.read_session("s")
        assert (old.payload, old.source, old.request_id, old.request_digest) == (
            {"n": 1},
            "cli",
            "",
            "",
        )
        [later] = recorder.append("s", 1, [new(2, request_id="r", request_digest="d")])
        assert (later.position, later.request_id, later.request_digest) == (2, "r", "d")
        assert list(recorder.read_requests(T0)) == [later]
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(events)")}
        assert "events_with_request_ids" in indexes
    with closing(SQLiteRecorder(db_path)) as recorder:  # a migrated database opens as is
        assert [e.position for e in recorder.read_session("s")] == [1, 2]


def test_sqlite_read_requests_scans_only_the_partial_index_on_request_times(
    db_path: Path,
) -> None:
    with closing(SQLiteRecorder(db_path)):
        pass
    with closing(sqlite3.connect(db_path)) as conn:
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM events WHERE request_id != '' "
                "AND (recorded_at_us, global_position) > (0, 0) "
                "ORDER BY recorded_at_us, global_position LIMIT 10"
            )
        )
    assert "USING INDEX events_with_request_ids" in plan
    assert "TEMP B-TREE" not in plan  # no sort: the index's order is the answer's
