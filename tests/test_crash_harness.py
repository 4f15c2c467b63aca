"""The crash harness: ``varstore serve`` under concurrent writers is killed with SIGKILL at
random moments, ``KILLS`` times, and restarted on the same database each time.

Writers (two per session, three sessions, one channel each) set variables, apply atomic
batches, register and delete variables; every write carries a unique tag in its metadata
and unique values, and is listed before it is sent, then marked acknowledged with the
position the answer gave. A reader meanwhile asserts that no read ever shows half a batch.
After every kill the log, read with the SQLite recorder while no server runs, must hold:

- every acknowledged write exactly once, at the acknowledged position, whole, with the
  values and source it was sent with; a write cut by the kill at most once, and whole;
- an atomic batch as one BatchApplied event holding all its changes (never half);
- gap-free positions, per session and global; nothing nobody wrote;
- every position a reader was served (a read never shows what could still be lost).

After every restart the served state (ListVariables) must equal a fold of the log read
back through ReadEvents (a fold written here, independent of the server's), and ReadEvents
must give exactly what the recorder read. The run is random; the seed is printed with any
failure and ``VARSTORE_CRASH_SEED`` replays one.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest
from servers import ServerProcess, start_server_process, stub_for

from varstore.eventstore import RecordedEvent, SQLiteRecorder
from varstore.types import from_proto, to_proto
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

#: SIGKILLs per run (each followed by a restart).
KILLS = 22
SESSIONS = ("crash-a", "crash-b", "crash-c")
WRITERS = tuple(f"w{n}" for n in range(2 * len(SESSIONS)))
#: Server flags, one set per round in turn: kills must be survived in every mode.
CONFIGS: tuple[tuple[str, ...], ...] = (
    (),
    ("--sync", "normal"),
    ("--checkpoint-every", "150"),
    ("--sync", "normal", "--checkpoint-every", "40"),
)
TIMEOUT = 10  # seconds per call

Kind = Literal["create", "register", "set", "batch", "delete"]


def session_of(writer: str) -> str:
    return SESSIONS[int(writer[1:]) % len(SESSIONS)]


@dataclass
class Write:
    """One write as its writer sent it, and how it was answered."""

    tag: str
    session: str
    source: str
    kind: Kind
    #: set, batch: variable id -> value written.
    changes: dict[str, str] = field(default_factory=dict)
    #: register: the name and value.
    name: str = ""
    value: str = ""
    #: delete: the variable deleted; register: the id the answer gave.
    variable_id: str = ""
    acknowledged: bool = False
    #: The position the answer's header gave.
    position: int = 0


@dataclass
class Run:
    """What the writers and readers of every round shared and recorded."""

    seed: int
    round: int = 0
    writes: list[Write] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: The highest position any read was served at, per session.
    read_positions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SESSIONS, 0))
    reads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set just before the SIGKILL: a call failing after it was cut by the kill.
    killing: threading.Event = field(default_factory=threading.Event)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(f"round {self.round}: {message}")

    def describe(self) -> str:
        return f"seed {self.seed} (VARSTORE_CRASH_SEED={self.seed} replays it)"


# Writers and the reader.


class Writer:
    """One writer thread of one round: owns the variables ``<name>_a``, ``_b`` (changed
    only together, by atomic batches), ``_c`` and the extras ``<name>_x...`` it registers."""

    def __init__(self, run: Run, name: str, address: str, rng: random.Random) -> None:
        self.run, self.name, self.rng = run, name, rng
        self.session = session_of(name)
        self.source = f"harness-{name}"
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.VariableStoreStub(self.channel)
        self.ids: dict[str, str] = {}  # name -> id of this writer's live variables
        self.count = itertools.count()

    def __call__(self) -> None:
        try:
            listed = self.stub.ListVariables(
                pb.ListVariablesRequest(session_id=self.session, pattern=f"{self.name}_*"),
                timeout=TIMEOUT,
            )
            self.ids = {v.name: v.id for v in listed.variables}
            while not self.run.killing.is_set() and self.step():
                pass
        except grpc.RpcError as error:
            if not self.run.killing.is_set():
                self.run.fail(f"{self.name} could not list its variables: {error}")
        finally:
            self.channel.close()

    def step(self) -> bool:
        """One write; False once a call failed (the round is over for this writer)."""
        tag = f"r{self.run.round}.{self.name}.{next(self.count)}"
        extras = sorted(n for n in self.ids if n.startswith(f"{self.name}_x"))
        roll = self.rng.random()
        if roll < 0.45:
            target = self.rng.choice([f"{self.name}_c", *extras[:3]])
            return self.send(Write(tag, self.session, self.source, "set", {self.ids[target]: tag}))
        if roll < 0.65:
            names = [f"{self.name}_a", f"{self.name}_b"]
            names += [f"{self.name}_c"] * (self.rng.random() < 0.5)
            names += [self.rng.choice(extras)] if extras and self.rng.random() < 0.3 else []
            changes = {self.ids[n]: tag for n in names}
            return self.send(Write(tag, self.session, self.source, "batch", changes))
        if roll < 0.85 or not extras:
            name = f"{self.name}_x{self.run.round}_{tag.rsplit('.', 1)[1]}"
            return self.send(
                Write(tag, self.session, self.source, "register", name=name, value=tag)
            )
        victim = self.ids[self.rng.choice(extras)]
        return self.send(Write(tag, self.session, self.source, "delete", variable_id=victim))

    def send(self, write: Write) -> bool:
        """Send ``write``, listed first so a write cut by the kill is known too."""
        with self.run.lock:
            self.run.writes.append(write)
        try:
            write.position = self.call(write)
        except grpc.RpcError as error:
            if not self.run.killing.is_set():
                self.run.fail(f"{write.tag} ({write.kind}) failed before any kill: {error}")
            return False
        write.acknowledged = True
        return True

    def call(self, write: Write) -> int:
        """The gRPC call for ``write``; returns the answer's position."""
        session, source, meta = write.session, write.source, {"op": write.tag}
        if write.kind == "set":
            ((variable_id, value),) = write.changes.items()
            return int(
                self.stub.SetVariable(
                    pb.SetVariableRequest(
                        session_id=session,
                        source=source,
                        variable_identifier=variable_id,
                        value=to_proto(value),
                        metadata=meta,
                    ),
                    timeout=TIMEOUT,
                ).header.position
            )
        if write.kind == "batch":
            updates = {variable_id: to_proto(value) for variable_id, value in write.changes.items()}
            return int(
                self.stub.SetVariables(
                    pb.SetVariablesRequest(
                        session_id=session,
                        source=source,
                        updates=updates,
                        atomic=True,
                        metadata=meta,
                    ),
                    timeout=TIMEOUT,
                ).header.position
            )
        if write.kind == "register":
            registered = self.stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id=session,
                    source=source,
                    name=write.name,
                    type="string",
                    initial_value=to_proto(write.value),
                    metadata=meta,
                ),
                timeout=TIMEOUT,
            )
            write.variable_id = registered.variable_id
            self.ids[write.name] = registered.variable_id
            return int(registered.header.position)
        deleted = self.stub.DeleteVariable(
            pb.DeleteVariableRequest(
                session_id=session,
                source=source,
                variable_identifier=write.variable_id,
                metadata=meta,
            ),
            timeout=TIMEOUT,
        )
        del self.ids[deleted.variable.name]
        return int(deleted.header.position)


def read_pair(stub: pb_grpc.VariableStoreStub, writer: str, by_list: bool) -> tuple[int, list[Any]]:
    """The position served and the variables ``<writer>_a`` and ``_b``, read together."""
    session = session_of(writer)
    if by_list:
        listed = stub.ListVariables(
            pb.ListVariablesRequest(session_id=session, pattern=f"{writer}_[ab]"), timeout=TIMEOUT
        )
        return listed.header.position, list(listed.variables)
    names = [f"{writer}_a", f"{writer}_b"]
    got = stub.GetVariables(
        pb.GetVariablesRequest(session_id=session, variable_identifiers=names), timeout=TIMEOUT
    )
    return got.header.position, [got.variables[n] for n in names if n in got.variables]


def reader(run: Run, address: str, rng: random.Random) -> None:
    """Reads pairs ``_a``/``_b`` (by GetVariables and by ListVariables) until the kill: both
    must always show one batch, never half of one."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.VariableStoreStub(channel)
        while not run.killing.is_set():
            writer = rng.choice(WRITERS)
            try:
                position, pair = read_pair(stub, writer, by_list=rng.random() < 0.5)
            except grpc.RpcError as error:
                if not run.killing.is_set():
                    run.fail(f"a read failed before any kill: {error}")
                return
            # Registered apart, then changed only together: same value and version, and
            # after the first batch the same position.
            seen = [(from_proto(v.value), v.version, v.version and v.position) for v in pair]
            if len(seen) != 2 or seen[0] != seen[1]:
                run.fail(f"a read at position {position} saw half a batch: {seen}")
            with run.lock:
                run.reads += 1
                session = session_of(writer)
                run.read_positions[session] = max(run.read_positions[session], position)


# The checks.


def tag_of(event: RecordedEvent) -> str | None:
    """The writer's tag: in the request metadata, or a new session's own metadata."""
    metadata = event.payload["metadata"] if event.type == "SessionCreated" else event.metadata
    tag = metadata.get("op")
    return tag if isinstance(tag, str) else None


def check_log(run: Run, events: list[RecordedEvent]) -> list[str]:
    """Every problem of the log (read with the recorder) against what was written."""
    problems: list[str] = []
    if [e.global_position for e in events] != list(range(1, len(events) + 1)):
        problems.append("global positions have a gap or a repeat")
    last: dict[str, int] = defaultdict(int)
    by_tag: dict[str, list[RecordedEvent]] = defaultdict(list)
    for event in events:
        if event.position != last[event.session_id] + 1:
            problems.append(
                f"{event.session_id}: position {event.position} follows {last[event.session_id]}"
            )
        last[event.session_id] = event.position
        tag = tag_of(event)
        if tag is None:
            problems.append(f"{event.session_id}@{event.position}: {event.type} without a tag")
        else:
            by_tag[tag].append(event)
    for session, seen in run.read_positions.items():
        if last[session] < seen:
            problems.append(
                f"{session}: a read was served position {seen}, the log ends at {last[session]}"
            )
    for write in run.writes:
        found = by_tag.pop(write.tag, [])
        if len(found) > 1 or (write.acknowledged and not found):
            state = "acknowledged" if write.acknowledged else "cut off"
            problems.append(
                f"{state} write {write.tag} ({write.kind}) is in the log {len(found)} times"
            )
        problems += [f"{write.tag}: {p}" for e in found[:1] for p in mismatches(write, e)]
    problems += [f"events tagged {tag!r} that nobody wrote" for tag in by_tag]
    return problems


def mismatches(write: Write, event: RecordedEvent) -> list[str]:
    """How ``event`` differs from what ``write`` sent (and, if acknowledged, was told)."""
    expected_type = {
        "create": "SessionCreated",
        "register": "VariableRegistered",
        "set": "VariableUpdated",
        "batch": "BatchApplied",
        "delete": "VariableDeleted",
    }[write.kind]
    if (event.type, event.session_id, event.source) != (
        expected_type,
        write.session,
        write.source,
    ):
        return [f"is {event.type} in {event.session_id} by {event.source!r}"]
    payload = event.payload
    got: object
    if write.kind == "register":
        want: object = (write.name, "string", write.value)
        got = (payload["name"], payload["type"], payload["value"])
        if write.acknowledged and payload["variable_id"] != write.variable_id:
            return [f"registered {payload['variable_id']}, answered {write.variable_id}"]
    elif write.kind == "set":
        want, got = write.changes, {payload["variable_id"]: payload["value"]}
    elif write.kind == "batch":
        want = sorted(write.changes.items())
        got = sorted((item["variable_id"], item["value"]) for item in payload["updates"])
    elif write.kind == "delete":
        want, got = write.variable_id, payload["variable_id"]
    else:
        want = got = None
    problems = [] if got == want else [f"the log holds {got!r}, the writer sent {want!r}"]
    if write.acknowledged and event.position != write.position:
        problems.append(f"at position {event.position}, acknowledged at {write.position}")
    return problems


def read_events(stub: pb_grpc.VariableStoreStub, session: str) -> list[pb.Event]:
    """A session's whole log through ReadEvents, page by page."""
    events: list[pb.Event] = []
    token = ""
    while True:
        page = stub.ReadEvents(
            pb.ReadEventsRequest(session_id=session, page_size=1000, page_token=token),
            timeout=TIMEOUT,
        )
        events += page.events
        token = page.next_page_token
        if not token:
            return events


Timestamp = tuple[int, int]


@dataclass
class Folded:
    """A variable as ListVariables shows it, every field a fold of the log can tell."""

    id: str
    name: str
    type: str
    value: object
    version: int
    position: int
    created_position: int
    source: str
    metadata: dict[str, str]
    created_at: Timestamp
    updated_at: Timestamp


def fold(events: list[pb.Event]) -> tuple[dict[str, Folded], int]:
    """A session's live variables by id after ``events`` (its whole log), and its position."""
    variables: dict[str, Folded] = {}
    for event in events:
        at = (event.recorded_at.seconds, event.recorded_at.nanos)
        body = event.WhichOneof("body")
        changes: list[tuple[str, object]] = []
        if body == "session_created":
            variables.clear()
        elif body == "variable_registered":
            r = event.variable_registered
            variables[r.variable_id] = Folded(
                r.variable_id, r.name, r.type, from_proto(r.value), 0, event.position,
                event.position, event.source, dict(event.metadata), at, at,
            )  # fmt: skip
        elif body == "variable_updated":
            changes = [(event.variable_updated.variable_id, event.variable_updated.value)]
        elif body == "batch_applied":
            changes = [(item.variable_id, item.value) for item in event.batch_applied.updates]
        elif body == "variable_deleted":
            del variables[event.variable_deleted.variable_id]
        else:
            raise AssertionError(f"the harness writes no {body} event")
        for variable_id, value in changes:
            v = variables[variable_id]
            v.value, v.version, v.position = from_proto(value), v.version + 1, event.position  # type: ignore[arg-type]
            v.source, v.updated_at = event.source, at
            v.metadata.update(event.metadata)
    return variables, events[-1].position if events else 0


def served(variable: pb.Variable) -> Folded:
    v = variable
    return Folded(
        v.id, v.name, v.type, from_proto(v.value), v.version, v.position, v.created_position,
        v.source, dict(v.metadata), (v.created_at.seconds, v.created_at.nanos),
        (v.updated_at.seconds, v.updated_at.nanos),
    )  # fmt: skip


def check_served_state(stub: pb_grpc.VariableStoreStub, recorded: list[RecordedEvent]) -> None:
    """ReadEvents gives what the recorder read, and ListVariables serves its fold."""
    for session in SESSIONS:
        events = read_events(stub, session)
        assert [
            (e.position, e.global_position, e.type, e.source, dict(e.metadata)) for e in events
        ] == [
            (e.position, e.global_position, e.type, e.source, dict(e.metadata))
            for e in recorded
            if e.session_id == session
        ], f"{session}: ReadEvents differs from the log the recorder read"
        variables, position = fold(events)
        listed = stub.ListVariables(pb.ListVariablesRequest(session_id=session), timeout=TIMEOUT)
        assert listed.header.position == position
        assert {v.id: served(v) for v in listed.variables} == variables


def read_log(db: Path) -> list[RecordedEvent]:
    """The whole log as the SQLite recorder reads it (no server may hold the database)."""
    recorder = SQLiteRecorder(db)
    try:
        return list(recorder.read_all())
    finally:
        recorder.close()


# The run.


def set_up(run: Run, stub: pb_grpc.VariableStoreStub) -> None:
    """Sessions and each writer's _a, _b, _c (all "init"), written before any kill."""
    for session in SESSIONS:
        write = Write(f"setup.{session}", session, "harness", "create")
        stub.CreateSession(
            pb.CreateSessionRequest(
                session_id=session, source="harness", metadata={"op": write.tag}
            ),
            timeout=TIMEOUT,
        )
        write.acknowledged, write.position = True, 1
        run.writes.append(write)
    for writer in WRITERS:
        for suffix in "abc":
            name = f"{writer}_{suffix}"
            write = Write(f"setup.{name}", session_of(writer), "harness", "register")
            write.name, write.value = name, "init"
            answer = stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id=write.session, name=name, type="string", source=write.source,
                    initial_value=to_proto("init"), metadata={"op": write.tag},
                ),
                timeout=TIMEOUT,
            )  # fmt: skip
            write.acknowledged, write.position = True, answer.header.position
            write.variable_id = answer.variable_id
            run.writes.append(write)


def one_round(run: Run, server: ServerProcess, rng: random.Random) -> None:
    """Writers and a reader until a SIGKILL at a random moment."""
    run.killing.clear()
    writers = [Writer(run, name, server.address, random.Random(rng.random())) for name in WRITERS]
    threads = [threading.Thread(target=w) for w in writers]
    threads.append(
        threading.Thread(target=reader, args=(run, server.address, random.Random(rng.random())))
    )
    for thread in threads:
        thread.start()
    try:
        time.sleep(rng.uniform(0.15, 0.6))
    finally:
        run.killing.set()
        server.kill()
        for thread in threads:
            thread.join(2 * TIMEOUT)
    assert not any(t.is_alive() for t in threads), f"a client thread hangs; {run.describe()}"


@pytest.fixture
def run() -> Iterator[Run]:
    seed = int(os.environ.get("VARSTORE_CRASH_SEED") or random.randrange(2**32))
    yield Run(seed)


def test_sigkills_under_concurrent_writers_lose_nothing_acknowledged_and_halve_nothing(
    tmp_path: Path, run: Run
) -> None:
    db = tmp_path / "crash.db"
    rng = random.Random(run.seed)
    recorded: list[RecordedEvent] = []
    for run.round in range(KILLS + 1):
        server = start_server_process(db, *CONFIGS[run.round % len(CONFIGS)])
        try:
            with stub_for(server.address) as stub:
                if run.round == 0:
                    set_up(run, stub)
                else:
                    check_served_state(stub, recorded)
            if run.round == KILLS:
                assert server.terminate() == 0
                break
            one_round(run, server, rng)
        finally:
            if server.process.poll() is None:
                server.kill()
        assert not run.failures, f"{run.describe()}:\n" + "\n".join(run.failures[:20])
        recorded = read_log(db)
        problems = check_log(run, recorded)
        assert not problems, f"after kill {run.round + 1}, {run.describe()}:\n" + "\n".join(
            problems[:20]
        )

    # The kills hit writes of every kind, and some in flight.
    acknowledged = {kind: 0 for kind in ("register", "set", "batch", "delete")}
    for write in run.writes:
        if write.acknowledged and not write.tag.startswith("setup."):
            acknowledged[write.kind] += 1
    assert all(count > 0 for count in acknowledged.values()), acknowledged
    assert any(not w.acknowledged for w in run.writes), "no kill caught a write in flight"
    assert run.reads > 0


# The log check itself, on a small log made by hand and tampered with in every way the
# harness must catch.

AT = datetime(2026, 1, 1, tzinfo=UTC)


def hand_made() -> tuple[Run, list[RecordedEvent]]:
    """A session s: x and y registered, a batch of both, a set of x; one more set of x was
    cut off and is not in the log."""
    run = Run(seed=0, read_positions={"s": 5})

    def write(tag: str, kind: Kind, position: int, **fields: Any) -> Write:
        made = Write(tag, "s", "me", kind, acknowledged=position > 0, position=position)
        for name, value in fields.items():
            setattr(made, name, value)
        run.writes.append(made)
        return made

    write("c", "create", 1)
    write("rx", "register", 2, name="x", value="init", variable_id="var_x_2")
    write("ry", "register", 3, name="y", value="init", variable_id="var_y_3")
    write("b", "batch", 4, changes={"var_x_2": "b", "var_y_3": "b"})
    write("s", "set", 5, changes={"var_x_2": "s"})
    write("cut", "set", 0, changes={"var_x_2": "z"})

    def event(position: int, kind: str, payload: dict[str, Any], tag: str) -> RecordedEvent:
        return RecordedEvent("s", position, position, kind, payload, AT, "me", {"op": tag})

    registered = {"type": "string", "value": "init", "constraints": {}}
    log = [
        event(1, "SessionCreated", {"metadata": {"op": "c"}, "ttl_seconds": 0}, ""),
        event(2, "VariableRegistered", {"variable_id": "var_x_2", "name": "x", **registered}, "rx"),
        event(3, "VariableRegistered", {"variable_id": "var_y_3", "name": "y", **registered}, "ry"),
        event(4, "BatchApplied", {"updates": [
            {"variable_id": "var_x_2", "value": "b"}, {"variable_id": "var_y_3", "value": "b"}
        ]}, "b"),
        event(5, "VariableUpdated", {"variable_id": "var_x_2", "value": "s"}, "s"),
    ]  # fmt: skip
    return run, log


def renumbered(log: list[RecordedEvent]) -> list[RecordedEvent]:
    return [e._replace(position=n, global_position=n) for n, e in enumerate(log, 1)]


def test_the_log_check_finds_nothing_wrong_with_a_log_that_holds_what_was_written() -> None:
    run, log = hand_made()
    assert check_log(run, log) == []
    cut_recorded = log[4]._replace(position=6, global_position=6, payload={
        "variable_id": "var_x_2", "value": "z"}, metadata={"op": "cut"})  # fmt: skip
    assert check_log(run, [*log, cut_recorded]) == []  # a cut write may have happened


def lost(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    run.read_positions["s"] = 4
    return log[:4]


def repeated(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    return renumbered([*log, log[4]])


def half_batch(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    return [*log[:3], log[3]._replace(payload={"updates": log[3].payload["updates"][:1]}), log[4]]


def split_batch(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    halves = [
        log[3]._replace(type="VariableUpdated", payload=item) for item in log[3].payload["updates"]
    ]
    return renumbered([*log[:3], *halves, log[4]])


def other_value(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    return [*log[:4], log[4]._replace(payload={"variable_id": "var_x_2", "value": "t"})]


def position_gap(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    return [*log[:4], log[4]._replace(position=6)]


def global_gap(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    return [*log[:4], log[4]._replace(global_position=7)]


def cut_twice(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    cut = log[4]._replace(payload={"variable_id": "var_x_2", "value": "z"}, metadata={"op": "cut"})
    return renumbered([*log, cut, cut])


def invented(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    return renumbered([*log, log[4]._replace(metadata={"op": "nobody"})])


def untagged(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    return renumbered([*log, log[4]._replace(metadata={})])


def read_beyond(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    run.read_positions["s"] = 6
    return log


def moved(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    log[3], log[4] = log[4]._replace(position=4), log[3]._replace(position=5)
    return log


def other_source(run: Run, log: list[RecordedEvent]) -> list[RecordedEvent]:
    return [*log[:4], log[4]._replace(source="alice")]


@pytest.mark.parametrize(
    ("tamper", "complaint"),
    [
        pytest.param(lost, "acknowledged write s (set) is in the log 0 times", id="lost"),
        pytest.param(repeated, "acknowledged write s (set) is in the log 2 times", id="repeated"),
        pytest.param(half_batch, "b: the log holds", id="half-batch"),
        pytest.param(split_batch, "acknowledged write b (batch) is in the log 2 times", id="split"),
        pytest.param(other_value, "s: the log holds {'var_x_2': 't'}", id="other-value"),
        pytest.param(position_gap, "s: position 6 follows 4", id="position-gap"),
        pytest.param(global_gap, "global positions have a gap", id="global-gap"),
        pytest.param(cut_twice, "cut off write cut (set) is in the log 2 times", id="cut-twice"),
        pytest.param(invented, "events tagged 'nobody' that nobody wrote", id="invented"),
        pytest.param(untagged, "s@6: VariableUpdated without a tag", id="untagged"),
        pytest.param(read_beyond, "a read was served position 6, the log ends at 5", id="read"),
        pytest.param(moved, "at position 4, acknowledged at 5", id="moved"),
        pytest.param(other_source, "is VariableUpdated in s by 'alice'", id="other-source"),
    ],
)
def test_the_log_check_reports_a_tampered_log(
    tamper: Callable[[Run, list[RecordedEvent]], list[RecordedEvent]], complaint: str
) -> None:
    run, log = hand_made()
    problems = check_log(run, tamper(run, log))
    assert any(complaint in problem for problem in problems), problems
