"""Big sessions: reads of the past after a restart start from the snapshots the
checkpoint saved (never a fold of the session's whole log), and forks and imports are
written in chunks that other writers interleave with, the session appearing whole."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from servers import in_process_server, stub_for

from varstore.api import commands
from varstore.api.store import Store
from varstore.eventstore.sqlite import SQLiteRecorder
from varstore.projections import LogMark, open_checkpoint, replay, seal_checkpoint
from varstore.projections.state import SessionState
from varstore.v1 import varstore_pb2 as pb

# One step of a session's life: set n, set m, register x, delete x, delete and recreate.
STEPS = st.lists(st.sampled_from(["n", "m", "+x", "-x", "recreate"]), max_size=40)


def live_a_life(store: Store, steps: list[str]) -> None:
    store.execute("s", commands.CreateSession("s"))
    store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
    store.execute("s", commands.RegisterVariable("s", "m", "string", ""))
    for count, step in enumerate(steps):
        state = store.published("s")
        assert state is not None
        try:
            if step == "recreate":
                store.execute("s", commands.DeleteSession("s"))
                store.execute("s", commands.CreateSession("s"))
                store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
                store.execute("s", commands.RegisterVariable("s", "m", "string", ""))
            elif step == "+x":
                store.execute("s", commands.RegisterVariable("s", "x", "integer", count))
            elif step == "-x":
                store.execute("s", commands.DeleteVariable("s", "x"))
            elif step == "n":
                store.execute("s", commands.SetVariable("s", "n", count))
            else:
                store.execute("s", commands.SetVariable("s", "m", f"v{count}"))
        except commands.VarstoreError:
            pass  # x registered twice or deleted while absent: refused, nothing written


def past(store: Store) -> list[SessionState | None]:
    state = store.published("s")
    assert state is not None
    return [store.state_at("s", position) for position in range(state.position + 1)]


@settings(max_examples=20, deadline=None)
@given(steps=STEPS, every=st.integers(1, 5))
def test_after_a_restart_every_past_state_is_read_from_saved_snapshots_without_a_fold(
    steps: list[str], every: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "log.db"
        store = Store(SQLiteRecorder(db), snapshot_every=every, checkpoint_every=1)
        try:
            live_a_life(store, steps)
            before = past(store)
            log = store.recorder.read_session("s")
            times = [store.position_at_time("s", event.recorded_at) for event in log]
            store.checkpoint()
        finally:
            store.close()
        restarted = Store(SQLiteRecorder(db), snapshot_every=every)
        try:
            assert past(restarted) == before
            assert before == [replay(log[:position]) for position in range(len(log) + 1)]
            assert [restarted.position_at_time("s", e.recorded_at) for e in log] == times
            assert restarted.projector.index_builds == 0  # no read folded the whole log
        finally:
            restarted.close()


@settings(max_examples=20, deadline=None)
@given(steps=STEPS, every=st.integers(1, 4))
def test_snapshots_round_trip_through_a_checkpoint_as_changes_from_the_one_before(
    steps: list[str], every: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(SQLiteRecorder(Path(tmp) / "log.db"), snapshot_every=every)
        try:
            live_a_life(store, steps)
            global_position, states = store.projector.cut()
            chains = store.projector.snapshot_chains(states)
            last = store.recorder.read_session("s")[-1]
        finally:
            store.close()
    opened = open_checkpoint(seal_checkpoint(LogMark.of(last), states, chains))
    assert opened.global_position == global_position
    assert opened.sessions == states
    assert opened.snapshots == chains
    for snapshot in opened.snapshots.get("s", []):  # names are rebuilt with variables
        assert dict(snapshot.names) == {v.name: v.id for v in snapshot.variables.values()}


def test_a_past_read_over_grpc_after_a_restart_answers_as_before_without_folding_the_log(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    at_position = pb.ListVariablesRequest(session_id="s", at_position=377)
    as_of = pb.ListVariablesRequest(session_id="s")

    def answers(store: Store) -> list[str]:
        """Reads of the past over gRPC; stopping the server closes the store."""
        with in_process_server(store) as server, stub_for(server.address) as stub:
            return [str(stub.ListVariables(request).variables) for request in (at_position, as_of)]

    store = Store(SQLiteRecorder(db), snapshot_every=50, checkpoint_every=1)
    store.execute("s", commands.CreateSession("s"))
    store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
    for value in range(500):
        store.execute("s", commands.SetVariable("s", "n", value))
    as_of.as_of.FromDatetime(store.recorder.read_session("s", 300, 300)[0].recorded_at)
    store.checkpoint()
    before = answers(store)
    restarted = Store(SQLiteRecorder(db), snapshot_every=50)
    builds = restarted.projector
    assert answers(restarted) == before
    assert "374" in before[0] and "297" in before[1]  # position k >= 3 set n to k - 3
    assert before[0] != before[1]
    assert builds.index_builds == 0
