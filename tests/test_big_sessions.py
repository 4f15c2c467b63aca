"""Big sessions: reads of the past after a restart start from the snapshots the
checkpoint saved (never a fold of the session's whole log), and forks and imports are
written in chunks that other writers interleave with, the session appearing whole."""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import in_process_server, stub_for

from varstore.api import commands, transfer
from varstore.api.store import Store
from varstore.eventstore.sqlite import SQLiteRecorder
from varstore.projections import (
    STAGED_EVENTS_KEY,
    LogMark,
    SnapshotEncodings,
    open_checkpoint,
    replay,
    seal_checkpoint,
)
from varstore.projections.state import SessionState
from varstore.types import Unavailable, to_proto
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
    encodings = SnapshotEncodings()  # kept from one checkpoint to the next, as the store does
    sealed = seal_checkpoint(LogMark.of(last), states, chains, encodings)
    assert seal_checkpoint(LogMark.of(last), states, chains, encodings) == sealed
    opened = open_checkpoint(sealed)
    assert opened.global_position == global_position
    assert opened.sessions == states
    decoded = {sid: chain.states() for sid, chain in opened.snapshots.items()}
    assert decoded == chains
    assert {sid: c.last_position for sid, c in opened.snapshots.items()} == {
        sid: chain[-1].position for sid, chain in chains.items()
    }
    for snapshot in decoded.get("s", []):  # names are rebuilt with variables
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


# -- forks and imports in chunks ---------------------------------------------------------------

CHUNK = 7  # events per chunk in these tests (TRANSFER_CHUNK_EVENTS is patched to it)
ORIGIN_EVENTS = 2 + 120  # a creation, a registration and 120 sets


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "TRANSFER_CHUNK_EVENTS", CHUNK)


def make_big_origin(store: Store, session_id: str = "big") -> None:
    store.execute(session_id, commands.CreateSession(session_id))
    store.execute(session_id, commands.RegisterVariable(session_id, "n", "integer", 0))
    for value in range(ORIGIN_EVENTS - 2):
        store.execute(session_id, commands.SetVariable(session_id, "n", value))


class Traffic:
    """While a copy runs: a writer on another session and a reader of the copy's id, each
    on its own thread and stub, recording what they got."""

    def __init__(self, address: str, copy_id: str) -> None:
        self.address, self.copy_id = address, copy_id
        self.done = threading.Event()
        self.writes: list[int] = []
        self.seen: list[tuple[grpc.StatusCode, int, str]] = []
        self._pool = ThreadPoolExecutor(2)

    def __enter__(self) -> Self:
        self._running = [self._pool.submit(self._write), self._pool.submit(self._read)]
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        for running in self._running:
            running.result(timeout=30)  # raises what the thread raised
        self._pool.shutdown()

    def _write(self) -> None:
        with stub_for(self.address) as stub:
            stub.CreateSession(pb.CreateSessionRequest(session_id="other"))
            stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id="other", name="k", type="integer", initial_value=to_proto(0)
                )
            )
            while not self.done.is_set():
                value = len(self.writes)
                answer = stub.SetVariable(
                    pb.SetVariableRequest(
                        session_id="other", variable_identifier="k", value=to_proto(value)
                    )
                )
                self.writes.append(answer.header.position)

    def _read(self) -> None:
        with stub_for(self.address) as stub:
            while not self.done.is_set():
                try:
                    got = stub.ListVariables(pb.ListVariablesRequest(session_id=self.copy_id))
                    self.seen.append((grpc.StatusCode.OK, got.header.position, str(got.variables)))
                except grpc.RpcError as refused:
                    self.seen.append((refused.code(), 0, ""))


def global_positions(store: Store, session_id: str) -> list[int]:
    return [event.global_position for event in store.recorder.read_session(session_id)]


def assert_interleaved_and_whole(store: Store, traffic: Traffic, copy_id: str, end: int) -> None:
    """Other writers' events landed between the copy's chunks, and a reader saw the copy
    either not at all or whole (at its last position, with its final variables)."""
    copied = global_positions(store, copy_id)
    others = global_positions(store, "other")
    assert len(copied) == end
    assert any(copied[0] < position < copied[-1] for position in others), "no write went between"
    whole = {answer for code, position, answer in traffic.seen if code == grpc.StatusCode.OK}
    assert {code for code, _, _ in traffic.seen} <= {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}
    assert {position for code, position, _ in traffic.seen if code == grpc.StatusCode.OK} <= {end}
    assert len(whole) <= 1
    assert traffic.writes == sorted(traffic.writes)


def test_a_long_fork_is_written_in_chunks_between_other_writes_and_appears_whole(
    tmp_path: Path, chunked: None
) -> None:
    store = Store(SQLiteRecorder(tmp_path / "log.db"))
    make_big_origin(store)
    with in_process_server(store) as server, stub_for(server.address) as stub:
        with Traffic(server.address, "copy") as traffic:
            while len(traffic.writes) < 3:
                time.sleep(0.01)
            forked = stub.ForkSession(
                pb.ForkSessionRequest(session_id="big", new_session_id="copy", request_id="f-1")
            )
            while len(traffic.seen) < 3 or traffic.seen[-1][0] != grpc.StatusCode.OK:
                time.sleep(0.01)
        assert forked.header.position == ORIGIN_EVENTS + 1
        assert_interleaved_and_whole(store, traffic, "copy", ORIGIN_EVENTS + 1)
        origin, copy = store.published("big"), store.published("copy")
        assert origin is not None and copy is not None
        assert copy.variables == origin.variables and not copy.hidden
        past, origin_past = store.state_at("copy", 50), store.state_at("big", 50)
        assert past is not None and origin_past is not None
        assert (past.position, past.variables) == (origin_past.position, origin_past.variables)
        again = stub.ForkSession(
            pb.ForkSessionRequest(session_id="big", new_session_id="copy", request_id="f-1")
        )
        assert again == forked  # a retry is answered as the first time
        log = stub.ReadEvents(pb.ReadEventsRequest(session_id="copy", page_size=1000)).events
        assert all(STAGED_EVENTS_KEY not in event.metadata for event in log)


def test_a_long_import_is_written_in_chunks_between_other_writes_and_appears_whole(
    tmp_path: Path, chunked: None
) -> None:
    store = Store(SQLiteRecorder(tmp_path / "log.db"))
    make_big_origin(store)
    with in_process_server(store) as server, stub_for(server.address) as stub:
        exported = [
            event
            for message in stub.ExportSession(pb.ExportSessionRequest(session_id="big"))
            for event in message.events
        ]
        with Traffic(server.address, "imported") as traffic:
            while len(traffic.writes) < 3:
                time.sleep(0.01)
            requests = [
                pb.ImportSessionRequest(events=exported[i : i + 50])
                for i in range(0, len(exported), 50)
            ]
            requests[0].session_id, requests[0].request_id = "imported", "i-1"
            imported = stub.ImportSession(iter(requests))
            while len(traffic.seen) < 3 or traffic.seen[-1][0] != grpc.StatusCode.OK:
                time.sleep(0.01)
        assert imported.header.position == ORIGIN_EVENTS
        assert_interleaved_and_whole(store, traffic, "imported", ORIGIN_EVENTS)
        again = [
            event
            for message in stub.ExportSession(pb.ExportSessionRequest(session_id="imported"))
            for event in message.events
        ]
        assert [strip(event) for event in again] == [strip(event) for event in exported]
        assert stub.ImportSession(iter(requests)) == imported  # a retry: the first answer


def strip(event: pb.Event) -> pb.Event:
    """``event`` without what an import changes: its ids, its request id."""
    copy = pb.Event()
    copy.CopyFrom(event)
    copy.session_id, copy.global_position, copy.request_id = "", 0, ""
    return copy


def test_a_copy_cut_short_stays_hidden_across_a_restart_and_its_retry_finishes_it(
    tmp_path: Path, chunked: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "log.db"
    store = Store(SQLiteRecorder(db), checkpoint_every=1)
    make_big_origin(store)
    request = pb.ForkSessionRequest(session_id="big", new_session_id="cut", request_id="f-cut")
    execute = store.execute
    chunks = 0

    def crash_at_the_third_chunk(session_id: str, command: Any, key: Any = None) -> Any:
        nonlocal chunks
        if isinstance(command, commands.CopyChunk):
            chunks += 1
            if chunks == 3:
                raise Unavailable("the log failed (a test)")
        return execute(session_id, command, key)

    monkeypatch.setattr(store, "execute", crash_at_the_third_chunk)
    with in_process_server(store) as server, stub_for(server.address) as stub:
        with pytest.raises(grpc.RpcError) as cut:
            stub.ForkSession(request)
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(store.recorder.read_session("cut")) == 2 * CHUNK  # two chunks landed
        hidden_everywhere(stub, "cut")
        store.checkpoint()
    restarted = Store(SQLiteRecorder(db))
    with in_process_server(restarted) as server, stub_for(server.address) as stub:
        hidden_everywhere(stub, "cut")
        finished = stub.ForkSession(request)  # the same request again: finished
        assert finished.header.position == ORIGIN_EVENTS + 1
        assert stub.ForkSession(request) == finished
        normal = stub.ForkSession(pb.ForkSessionRequest(session_id="big", new_session_id="ok"))
        cut_log = stub.ReadEvents(pb.ReadEventsRequest(session_id="cut", page_size=1000)).events
        ok_log = stub.ReadEvents(pb.ReadEventsRequest(session_id="ok", page_size=1000)).events
        assert [strip(e) for e in cut_log[:-1]] == [strip(e) for e in ok_log[:-1]]
        assert cut_log[-1].session_forked == ok_log[-1].session_forked
        assert normal.header.position == finished.header.position
        listed = [
            stub.ListVariables(pb.ListVariablesRequest(session_id=sid)).variables
            for sid in ("cut", "ok")
        ]
        assert listed[0] == listed[1]


def hidden_everywhere(stub: Any, session_id: str) -> None:
    """A copy being written: not found by reads, absent from lists, its id taken."""
    for call in (
        lambda: stub.GetSession(pb.GetSessionRequest(session_id=session_id)),
        lambda: stub.ListVariables(pb.ListVariablesRequest(session_id=session_id, at_position=3)),
        lambda: stub.ReadEvents(pb.ReadEventsRequest(session_id=session_id)),
        lambda: list(stub.ExportSession(pb.ExportSessionRequest(session_id=session_id))),
        lambda: stub.SetVariable(
            pb.SetVariableRequest(session_id=session_id, variable_identifier="n", value=to_proto(1))
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, refused.value.details()
    listed = stub.ListSessions(pb.ListSessionsRequest())
    assert session_id not in {session.id for session in listed.sessions}
    with pytest.raises(grpc.RpcError) as taken:
        stub.ForkSession(pb.ForkSessionRequest(session_id="big", new_session_id=session_id))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_the_reserved_metadata_key_never_hides_a_session_written_by_a_live_call(
    tmp_path: Path,
) -> None:
    store = Store(SQLiteRecorder(tmp_path / "log.db"))
    with in_process_server(store) as server, stub_for(server.address) as stub:
        stub.CreateSession(
            pb.CreateSessionRequest(session_id="plain", metadata={STAGED_EVENTS_KEY: "99"})
        )
        assert stub.GetSession(pb.GetSessionRequest(session_id="plain")).session.id == "plain"
        log = stub.ReadEvents(pb.ReadEventsRequest(session_id="plain")).events
        assert all(STAGED_EVENTS_KEY not in event.metadata for event in log)


# -- history indexes across a restart ----------------------------------------------------------


def write_a_history(store: Store, sets: int) -> None:
    """Two variables set in turn, a batch every tenth write, and x deleted halfway."""
    store.execute("s", commands.CreateSession("s"))
    store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
    store.execute("s", commands.RegisterVariable("s", "x", "integer", 0))
    for value in range(sets):
        if value == sets // 2:
            store.execute("s", commands.DeleteVariable("s", "x"))
        elif value % 10 == 0:
            store.execute("s", commands.SetVariables("s", {"n": value}, atomic=True))
        else:
            store.execute("s", commands.SetVariable("s", "n", value))


def history_answers(store: Store) -> list[str]:
    """Pages of GetVariableHistory (both ways, by a token, by versions) and a watch from
    position 0 up to its first progress message, over gRPC."""
    requests = [
        pb.GetVariableHistoryRequest(session_id="s", variable_identifier="n", page_size=7),
        pb.GetVariableHistoryRequest(
            session_id="s", variable_identifier="n", page_size=5, newest_first=True
        ),
        pb.GetVariableHistoryRequest(
            session_id="s", variable_identifier="x", from_version=1, to_version=3
        ),
    ]
    with in_process_server(store) as server, stub_for(server.address) as stub:
        answers = []
        for request in requests:
            page = stub.GetVariableHistory(request)
            answers.append(str(page.changes))
            request.page_token = page.next_page_token
            answers.append(str(stub.GetVariableHistory(request).changes))
        call = stub.WatchSession(pb.WatchSessionRequest(session_id="s"), timeout=30)
        try:
            for message in call:
                if message.HasField("progress"):
                    break
                answers.append(str(message))
        finally:
            call.cancel()
        return answers


def test_history_reads_and_watches_after_a_restart_use_the_checkpoint_s_index(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    store = Store(SQLiteRecorder(db), snapshot_every=50, checkpoint_every=10**9)
    write_a_history(store, 300)
    store.checkpoint()
    for value in range(20):  # after the checkpoint: start-up folds them into its index
        store.execute("s", commands.SetVariable("s", "n", 1000 + value))
    before = history_answers(store)  # stopping the server closes the store
    assert len(before) == 6 + 323 and "position: 323" in before[-1]  # every event watched
    restarted = Store(SQLiteRecorder(db), snapshot_every=50)
    try:
        assert history_answers(restarted) == before
        assert restarted.projector.index_builds == 0  # no read folded the whole log
    finally:
        restarted.close()


def test_a_checkpoint_without_indexes_still_loads_and_builds_them_on_first_use(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    store = Store(SQLiteRecorder(db), snapshot_every=50, checkpoint_every=10**9)
    write_a_history(store, 120)
    store.checkpoint()
    before = history_answers(store)
    recorder = SQLiteRecorder(db)
    saved = recorder.load_checkpoint()
    assert saved is not None
    body = json.loads(saved[1].partition(b"\n")[2])
    assert body.pop("indexes")
    body["format"] = 3
    old = json.dumps(body).encode()
    recorder.save_checkpoint(
        saved[0],
        b"varstore-checkpoint sha256=%s\n%s" % (hashlib.sha256(old).hexdigest().encode(), old),
    )
    restarted = Store(recorder, snapshot_every=50)
    try:
        assert history_answers(restarted) == before
        assert restarted.projector.index_builds == 1  # built from the log, once
    finally:
        restarted.close()
