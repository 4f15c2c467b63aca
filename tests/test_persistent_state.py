"""A session state's maps are persistent: copying a state is O(1) (the copy shares them),
and folding events into a copy, or holding a fold open across many events, never changes
a state published before. Checkpoints written before the maps were persistent still load.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from varstore.api import commands
from varstore.api.store import Store
from varstore.eventstore import RecordedEvent
from varstore.eventstore.memory import MemoryRecorder
from varstore.projections import (
    Fold,
    LogMark,
    SessionState,
    VariableState,
    apply_event,
    open_checkpoint,
    replay,
    seal_checkpoint,
)
from varstore.types import VarstoreError

NAMES = ("a", "b", "c")
values = st.integers(-3, 3)


@st.composite
def a_command(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(NAMES))
    kind = draw(st.sampled_from(["create", "drop", "register", "set", "set", "batch", "delete"]))
    if kind == "create":
        return commands.CreateSession("s")
    if kind == "drop":
        return commands.DeleteSession("s")
    if kind == "register":
        return commands.RegisterVariable("s", name, "integer", draw(values))
    if kind == "set":
        return commands.SetVariable("s", name, draw(values))
    if kind == "batch":
        updates = draw(st.dictionaries(st.sampled_from(NAMES), values, min_size=1, max_size=3))
        return commands.SetVariables("s", updates)
    return commands.DeleteVariable("s", name)


def recorded_log(script: list[Any]) -> list[RecordedEvent]:
    """The log the live store records for ``script`` (refused commands record nothing)."""
    recorder = MemoryRecorder()
    store = Store(recorder)
    try:
        for command in [commands.CreateSession("s"), *script]:
            with contextlib.suppress(VarstoreError):
                store.execute("s", command)
        return list(recorder.read_session("s"))
    finally:
        store.close()


Picture = tuple[int, bool, dict[str, VariableState], dict[str, str]]


def picture(state: SessionState) -> Picture:
    """What a reader of ``state`` sees, in plain dicts (variable states are frozen)."""
    return state.position, state.deleted, dict(state.variables), dict(state.names)


@settings(max_examples=60, deadline=None)
@given(st.lists(a_command(), max_size=30))
def test_folding_into_a_copy_never_changes_the_states_published_before(script: list[Any]) -> None:
    published: list[tuple[SessionState, Picture]] = []
    state: SessionState | None = None
    for event in recorded_log(script):  # as the projector publishes: one copy per apply
        state = apply_event(state.copy() if state is not None else None, event)
        published.append((state, picture(state)))
    for state, seen in published:
        assert picture(state) == seen


@settings(max_examples=60, deadline=None)
@given(st.lists(a_command(), max_size=30), st.integers(1, 5))
def test_a_fold_held_open_gives_what_folding_event_by_event_gives(
    script: list[Any], every: int
) -> None:
    log = recorded_log(script)
    fold = Fold()
    taken: list[tuple[int, SessionState]] = []
    for count, event in enumerate(log, start=1):
        fold.apply(event)
        if count % every == 0:  # closed midway (a snapshot), then folded on
            midway = fold.state()
            assert midway is not None
            taken.append((count, midway.copy()))
    one_by_one: SessionState | None = None
    for event in log:
        one_by_one = apply_event(one_by_one, event)
    assert fold.state() == one_by_one == replay(log)
    for count, state in taken:
        assert state == replay(log[:count])


def test_a_copy_shares_the_maps_and_equals_the_original() -> None:
    state = replay(fixture_log())
    assert state is not None
    copied = state.copy()
    assert copied == state
    assert copied.variables is state.variables and copied.names is state.names
    apply_event(copied, event("VariableUpdated", {"variable_id": "var_n_2", "value": 4}, 8))
    before, after = state.find("n"), copied.find("n")
    assert before is not None and before.value == 3
    assert after is not None and after.value == 4
    assert copied != state


# -- checkpoints --------------------------------------------------------------------------

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def event(kind: str, payload: dict[str, Any], position: int) -> RecordedEvent:
    return RecordedEvent(
        "s",
        position,
        position,
        kind,
        payload,
        START + timedelta(seconds=position),
        "fixture",
        {"why": "test"},
    )


def fixture_log() -> list[RecordedEvent]:
    """The log OLD_CHECKPOINT folds."""
    steps: list[tuple[str, dict[str, Any]]] = [
        ("SessionCreated", {"metadata": {"team": "ml"}, "ttl_seconds": 0}),
        (
            "VariableRegistered",
            {
                "variable_id": "var_n_2",
                "name": "n",
                "type": "integer",
                "value": 1,
                "constraints": {"min": 0, "max": 9},
            },
        ),
        (
            "VariableRegistered",
            {
                "variable_id": "var_label_3",
                "name": "label",
                "type": "string",
                "value": "a",
                "constraints": {},
            },
        ),
        (
            "VariableRegistered",
            {
                "variable_id": "var_gone_4",
                "name": "gone",
                "type": "boolean",
                "value": True,
                "constraints": {},
            },
        ),
        ("VariableUpdated", {"variable_id": "var_n_2", "value": 2}),
        (
            "BatchApplied",
            {
                "updates": [
                    {"variable_id": "var_n_2", "value": 3},
                    {"variable_id": "var_label_3", "value": "b"},
                ]
            },
        ),
        ("VariableDeleted", {"variable_id": "var_gone_4"}),
    ]
    return [event(kind, payload, p) for p, (kind, payload) in enumerate(steps, start=1)]


#: The checkpoint of fixture_log() as the code before persistent maps (commit c443aa4,
#: variables in a dict) sealed it.
OLD_CHECKPOINT = (
    b"varstore-checkpoint sha256=cf7b9dd620e31e02695a60df51ff1e3d1d17d8bf364f4b963f0f9fd747fba6ae\n"
    b'{"format":2,"mark":{"global_position":7,"session_id":"s","position":7,'
    b'"recorded_at":"2026-12-01T12:00:07+00:00"},"sessions":[{"session_id":"s",'
    b'"metadata":{"team":"ml"},"ttl_seconds":0,"created_at":"2026-12-01T12:00:01+00:00",'
    b'"updated_at":"2026-12-01T12:00:07+00:00","position":7,"created_position":1,'
    b'"deleted":false,"variables":[{"id":"var_n_2","name":"n","type":"integer","value":3,'
    b'"constraints":{"min":0,"max":9},"metadata":{"why":"test"},"source":"fixture",'
    b'"version":2,"created_at":"2026-12-01T12:00:02+00:00",'
    b'"updated_at":"2026-12-01T12:00:06+00:00","position":6,"created_position":2},'
    b'{"id":"var_label_3","name":"label","type":"string","value":"b","constraints":{},'
    b'"metadata":{"why":"test"},"source":"fixture","version":1,'
    b'"created_at":"2026-12-01T12:00:03+00:00","updated_at":"2026-12-01T12:00:06+00:00",'
    b'"position":6,"created_position":3}]}]}'
)


def test_a_checkpoint_sealed_before_persistent_maps_loads_as_the_fold_of_its_log() -> None:
    log = fixture_log()
    opened = open_checkpoint(OLD_CHECKPOINT)
    assert opened.mark == LogMark.of(log[-1])
    assert opened.sessions == {"s": replay(log)}
    state = opened.sessions["s"]
    assert [v.name for v in state.by_name()] == ["label", "n"]
    assert state.find("gone") is None and state.find("var_n_2") == state.find("n")


def test_a_checkpoint_round_trips() -> None:
    log = fixture_log()
    state = replay(log)
    assert state is not None
    opened = open_checkpoint(seal_checkpoint(LogMark.of(log[-1]), {"s": state}))
    assert opened.sessions == {"s": state}
