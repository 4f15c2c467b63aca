"""The projection is the fold of the log: for any command sequence, folding the stored
log from scratch gives exactly the state the live server serves."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from varstore.api import commands
from varstore.api.store import Store
from varstore.eventstore.memory import MemoryRecorder
from varstore.eventstore.sqlite import SQLiteRecorder
from varstore.projections import SessionState, replay
from varstore.types import VarstoreError

SESSIONS = ("s1", "s2")
NAMES = ("a", "b", "c")
TYPES = ("float", "integer", "string", "boolean")

values = st.one_of(
    st.integers(-5, 5), st.floats(-5, 5), st.text(max_size=3), st.booleans(), st.none()
)
metadata = st.dictionaries(st.sampled_from(["why", "who"]), st.text(max_size=3), max_size=2)


@st.composite
def a_command(draw: st.DrawFn) -> tuple[str, Any]:
    sid = draw(st.sampled_from(SESSIONS))
    name = draw(st.sampled_from(NAMES))
    kind = draw(st.sampled_from(["create", "delete_session", "register", "set", "batch", "delete"]))
    if kind == "create":
        return sid, commands.CreateSession(sid, draw(metadata))
    if kind == "delete_session":
        return sid, commands.DeleteSession(sid)
    if kind == "register":
        constraints = draw(st.sampled_from([{}, {"min": -2, "max": 2}, {"max_length": 2}]))
        return sid, commands.RegisterVariable(
            sid, name, draw(st.sampled_from(TYPES)), draw(values), constraints, draw(metadata)
        )
    if kind == "set":
        return sid, commands.SetVariable(
            sid,
            name,
            draw(values),
            draw(metadata),
            expected_version=draw(st.none() | st.integers(0, 3)),
            source=draw(st.text(max_size=2)),
        )
    if kind == "batch":
        updates = draw(st.dictionaries(st.sampled_from(NAMES), values, max_size=3))
        return sid, commands.SetVariables(sid, updates, draw(metadata), atomic=draw(st.booleans()))
    return sid, commands.DeleteVariable(sid, name)


def run(store: Store, script: list[tuple[str, Any]]) -> dict[str, SessionState | None]:
    """Run the script (refusals included) and return the published state of each session."""
    for sid, command in script:
        # Refused commands append nothing; the comparisons prove it.
        with contextlib.suppress(VarstoreError):
            store.execute(sid, command)
    return {sid: store.published(sid) for sid in SESSIONS}


@settings(max_examples=60, deadline=None)
@given(st.lists(a_command(), max_size=40))
def test_folding_the_stored_log_gives_the_live_state(script: list[tuple[str, Any]]) -> None:
    recorder = MemoryRecorder()
    store = Store(recorder)
    try:
        live = run(store, script)
        for sid in SESSIONS:
            assert replay(recorder.read_session(sid)) == live[sid]
    finally:
        store.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(a_command(), max_size=40))
def test_a_restarted_store_serves_the_state_it_served_before(
    script: list[tuple[str, Any]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "log.db"
        store = Store(SQLiteRecorder(db))
        try:
            before = run(store, script)
        finally:
            store.close()
        restarted = Store(SQLiteRecorder(db))
        try:
            assert {sid: restarted.published(sid) for sid in SESSIONS} == before
        finally:
            restarted.close()
