"""Several ``varstore serve`` processes on one PostgreSQL log, driven through raw gRPC stubs.

Each test runs two or three servers on a fresh schema (tests/cluster.py) and writes to one
session through all of them: single sets, atomic batches of two variables and
compare-and-set increments of a counter, each write with a request id of its own. Every
write is listed before it is sent and marked with its answer; afterwards the log, read
back through the API, must hold every acknowledged write exactly once (at the position its
answer gave, with the values it sent, under its request id), no refused write, nothing
nobody sent, gap-free positions and a counter whose increments are 1, 2, 3...; every
server must then serve the same events and the same state.

Faults: a server SIGKILLed mid-load, the servers' PostgreSQL connections terminated, and
PostgreSQL itself restarted. A writer that meets UNAVAILABLE, DEADLINE_EXCEEDED or
COMMIT_OUTCOME_UNKNOWN retries with the same request id, so a write that did land is
answered as the first time, never written twice.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeVar

import grpc
import psycopg
import pytest
from backends import PG_DSN
from cluster import Cluster, require_postgres, restart_postgres
from private_postgres import private_postgres

from varstore.eventstore.postgres import PostgresRecorder
from varstore.types import from_proto, to_proto
from varstore.types.status import error_from_rpc_error
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

#: Seconds one call may take.
TIMEOUT = 10.0
#: A generous bound for anything that must happen eventually (liveness, not speed).
LIVENESS = 60.0
SESSION = "shared"
#: String variables: TEXT is set alone, the PAIR only by atomic batches.
TEXT, PAIR = "text", ("pair_a", "pair_b")
#: An integer changed only by compare-and-set increments: its value equals its version.
COUNTER = "counter"
Stub = pb_grpc.VariableStoreStub
T = TypeVar("T")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster.opened() as made:  # prints what the servers printed: shown if the test fails
        yield made


# The writes and what they were answered.


@dataclass
class Write:
    """One write as sent, and its outcome."""

    request_id: str
    kind: Literal["set", "batch", "cas"]
    #: Variable name -> value written.
    values: dict[str, object]
    expected_version: int | None = None
    #: ok: acknowledged; refused: ABORTED (nothing written); unknown: never answered.
    outcome: Literal["pending", "ok", "refused", "unknown"] = "pending"
    #: The position the answer's header gave.
    position: int = 0
    #: The statuses met on the way (retries), for messages.
    statuses: list[str] = field(default_factory=list)


@dataclass
class Ledger:
    """Every write of a test, listed before it is sent, and every failure seen."""

    writes: list[Write] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: Every error status any call met, retried or not.
    met: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, write: Write) -> None:
        with self.lock:
            self.writes.append(write)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)

    def meet(self, error: grpc.RpcError) -> str:
        status = status_of(error)
        with self.lock:
            self.met.append(status)
        return status

    def count(self, outcome: str) -> int:
        with self.lock:
            return sum(1 for w in self.writes if w.outcome == outcome)


def status_of(error: grpc.RpcError) -> str:
    """The status name, or the ErrorInfo reason when it says more (COMMIT_OUTCOME_UNKNOWN)."""
    reason = error_from_rpc_error(error).reason
    return reason if error.code() == grpc.StatusCode.UNKNOWN and reason else error.code().name


def transient(error: grpc.RpcError) -> bool:
    """Whether a write may be sent again with the same request id: nothing was written
    (UNAVAILABLE) or the outcome is not known (DEADLINE_EXCEEDED, COMMIT_OUTCOME_UNKNOWN)."""
    return status_of(error) in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "COMMIT_OUTCOME_UNKNOWN")


def never(error: grpc.RpcError) -> bool:
    return False


def through(stub: Stub) -> Callable[[], Stub]:
    """A writer's route: always ``stub``."""
    return lambda: stub


class Writer(threading.Thread):
    """Writes to SESSION through ``route()`` until ``stop`` or ``limit`` writes: sets of
    TEXT, atomic batches of PAIR, compare-and-set increments of COUNTER (after reading its
    version, read-your-writes through min_position). A failed call is sent again with the
    same request id while ``retry`` says so; ABORTED means nothing was written."""

    def __init__(
        self,
        ledger: Ledger,
        name: str,
        route: Callable[[], Stub],
        *,
        retry: Callable[[grpc.RpcError], bool] = never,
        stop: threading.Event | None = None,
        limit: int = 50,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.ledger, self.route, self.retry, self.limit = ledger, route, retry, limit
        self.stop = stop or threading.Event()
        self.rng = random.Random(name)
        self.seen = 0  # the highest position this writer was answered at

    def run(self) -> None:
        for n in range(self.limit):
            if self.stop.is_set():
                return
            tag = f"{self.name}.{n}"
            roll = self.rng.random()
            if roll < 0.5:
                write = Write(uuid.uuid4().hex, "set", {TEXT: tag})
            elif roll < 0.8:
                write = Write(uuid.uuid4().hex, "batch", dict.fromkeys(PAIR, tag))
            else:
                version = self.counter_version()
                if version is None:
                    return
                write = Write(uuid.uuid4().hex, "cas", {COUNTER: version + 1}, version)
            if not self.send(write):
                return

    def counter_version(self) -> int | None:
        deadline = time.monotonic() + LIVENESS
        while True:
            try:
                got = self.route().GetVariable(
                    pb.GetVariableRequest(
                        session_id=SESSION, variable_identifier=COUNTER, min_position=self.seen
                    ),
                    timeout=TIMEOUT,
                )
                return int(got.variable.version)
            except grpc.RpcError as error:
                self.ledger.meet(error)
                if not self.retry(error) or time.monotonic() > deadline:
                    self.ledger.fail(f"{self.name}: reading {COUNTER} failed: {error}")
                    return None
                time.sleep(self.rng.uniform(0.02, 0.2))

    def send(self, write: Write) -> bool:
        """Send ``write`` until answered; False when the writer must stop (a failure)."""
        self.ledger.add(write)
        deadline = time.monotonic() + LIVENESS
        while True:
            try:
                write.position = self.call(write)
            except grpc.RpcError as error:
                write.statuses.append(self.ledger.meet(error))
                if error.code() == grpc.StatusCode.ABORTED:
                    write.outcome = "refused"
                    return True
                if self.retry(error) and time.monotonic() < deadline:
                    time.sleep(self.rng.uniform(0.02, 0.2))
                    continue
                write.outcome = "unknown"
                self.ledger.fail(f"{self.name}: {write.kind} {write.request_id} failed: {error}")
                return False
            write.outcome = "ok"
            self.seen = max(self.seen, write.position)
            return True

    def call(self, write: Write) -> int:
        """The write's gRPC call through ``route()``; the answer's position."""
        stub = self.route()
        if write.kind == "batch":
            return int(
                stub.SetVariables(
                    pb.SetVariablesRequest(
                        session_id=SESSION,
                        updates={name: to_proto(v) for name, v in write.values.items()},
                        atomic=True,
                        request_id=write.request_id,
                    ),
                    timeout=TIMEOUT,
                ).header.position
            )
        ((name, value),) = write.values.items()
        return int(
            stub.SetVariable(
                pb.SetVariableRequest(
                    session_id=SESSION,
                    variable_identifier=name,
                    value=to_proto(value),
                    expected_version=write.expected_version,
                    request_id=write.request_id,
                ),
                timeout=TIMEOUT,
            ).header.position
        )


# The session, and reading it back.


def set_up(stub: Stub) -> int:
    """Create SESSION and its variables through ``stub``; the position reached."""
    stub.CreateSession(pb.CreateSessionRequest(session_id=SESSION), timeout=TIMEOUT)
    for name, initial in [(TEXT, ""), *((p, "") for p in PAIR), (COUNTER, 0)]:
        answer = stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=SESSION,
                name=name,
                type="integer" if name == COUNTER else "string",
                initial_value=to_proto(initial),
            ),
            timeout=TIMEOUT,
        )
    return int(answer.header.position)


def wait_until_served(stubs: list[Stub], position: int) -> None:
    """Return once every server serves SESSION up to ``position`` (retrying UNAVAILABLE
    while a server reconnects to the database)."""
    for stub in stubs:
        request = pb.GetSessionRequest(session_id=SESSION, min_position=position)
        retried(partial(stub.GetSession, request, timeout=TIMEOUT))


def retried(call: Callable[[], T]) -> T:
    """``call()``, tried again on UNAVAILABLE (a server still reconnecting or catching up)
    for up to LIVENESS seconds."""
    deadline = time.monotonic() + LIVENESS
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def read_log(stub: Stub, position: int) -> list[pb.Event]:
    """SESSION's log through ``stub``, every page, once the server has applied ``position``."""
    events: list[pb.Event] = []
    token = ""
    while True:
        request = pb.ReadEventsRequest(
            session_id=SESSION, page_size=1000, page_token=token, min_position=position
        )
        page = retried(partial(stub.ReadEvents, request, timeout=TIMEOUT))
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


def last_acknowledged(ledger: Ledger) -> int:
    """The position of the last acknowledged write: where the log ends once every write
    was answered (a refused one wrote nothing)."""
    return max(w.position for w in ledger.writes if w.outcome == "ok")


def assert_servers_agree(stubs: list[Stub], position: int) -> list[pb.Event]:
    """Every server serves the same log and state of SESSION at ``position``; the log."""
    logs = [read_log(stub, position) for stub in stubs]
    request = pb.ListVariablesRequest(session_id=SESSION, min_position=position)
    states = [retried(partial(stub.ListVariables, request, timeout=TIMEOUT)) for stub in stubs]
    for n in range(1, len(stubs)):
        assert logs[n] == logs[0], f"server {n} serves another log than server 0"
        assert states[n] == states[0], f"server {n} serves another state than server 0"
    assert states[0].header.position == position
    return logs[0]


def changes_of(event: pb.Event, names: dict[str, str]) -> dict[str, object]:
    """Variable name -> value that ``event`` wrote."""
    body = event.WhichOneof("body")
    if body == "variable_updated":
        update = event.variable_updated
        return {names[update.variable_id]: from_proto(update.value)}
    if body == "batch_applied":
        return {names[i.variable_id]: from_proto(i.value) for i in event.batch_applied.updates}
    return {}


def check_log(ledger: Ledger, log: list[pb.Event], stub: Stub, set_up_position: int) -> None:
    """The log holds each acknowledged write once, as answered, and nothing else after
    the set-up; positions are gap-free; versions count the changes; the counter's
    increments are 1, 2, 3..."""
    assert [e.position for e in log] == list(range(1, len(log) + 1)), "a gap in positions"
    variables = stub.ListVariables(
        pb.ListVariablesRequest(session_id=SESSION, min_position=len(log)), timeout=TIMEOUT
    ).variables
    names = {v.id: v.name for v in variables}
    by_request: dict[str, list[pb.Event]] = defaultdict(list)
    for event in log[set_up_position:]:
        by_request[event.request_id].append(event)
    sent = {w.request_id: w for w in ledger.writes}
    problems = [
        f"event at position {e.position} was written by no write sent (request id {e.request_id!r})"
        for rid, found in by_request.items()
        if rid not in sent
        for e in found
    ]
    for w in ledger.writes:
        found = by_request.get(w.request_id, [])
        what = f"{w.kind} {w.request_id} ({w.outcome}, statuses {w.statuses})"
        if w.outcome == "ok":
            if len(found) != 1:
                problems.append(f"{what} is in the log {len(found)} times")
            elif found[0].position != w.position or changes_of(found[0], names) != w.values:
                problems.append(
                    f"{what} answered position {w.position} with {w.values}; the log has "
                    f"{changes_of(found[0], names)} at {found[0].position}"
                )
        elif w.outcome == "refused" and found:
            problems.append(f"{what} was refused but is in the log")
        elif len(found) > 1:
            problems.append(f"{what} is in the log {len(found)} times")
    assert problems == [], "\n".join(problems[:20])
    counter = [changes_of(e, names)[COUNTER] for e in log if COUNTER in changes_of(e, names)]
    assert counter == list(range(1, len(counter) + 1)), f"counter increments: {counter}"
    for variable in variables:
        changed = sum(1 for e in log if variable.name in changes_of(e, names))
        assert variable.version == changed, f"{variable.name}: version vs changes in the log"
        history = stub.GetVariableHistory(
            pb.GetVariableHistoryRequest(
                session_id=SESSION, variable_identifier=variable.id, page_size=1000
            ),
            timeout=TIMEOUT,
        )
        assert [c.version for c in history.changes] == list(range(variable.version + 1))
    by_name = {v.name: v for v in variables}
    assert by_name[COUNTER].value.integer_value == by_name[COUNTER].version == len(counter)


def run_writers(writers: list[Writer]) -> None:
    """Run the writers until each has made its writes."""
    with running(writers):
        join_writers(writers)


def join_writers(writers: list[Writer]) -> None:
    """Wait until each writer is done (LIVENESS bound)."""
    for writer in writers:
        writer.join(LIVENESS * 2)
        assert not writer.is_alive(), f"writer {writer.name} is stuck"


def summary(ledger: Ledger) -> str:
    """Outcomes by kind of write, and the statuses the writers met (for -s runs)."""
    outcomes: dict[str, int] = defaultdict(int)
    for w in ledger.writes:
        outcomes[f"{w.kind} {w.outcome}"] += 1
    statuses = {status: ledger.met.count(status) for status in sorted(set(ledger.met))}
    return f"outcomes {dict(sorted(outcomes.items()))}; statuses met {statuses}"


# The watch, resumed after an error.


class Watch(threading.Thread):
    """WatchSession on SESSION through ``stub`` from position 0, resumed from the last
    event seen whenever the stream ends with an error, until ``target`` is reached."""

    def __init__(self, stub: Stub, opened_at: int) -> None:
        super().__init__(name="watch", daemon=True)
        self.stub = stub
        self.opened_at = opened_at
        self.events: list[pb.Event] = []
        self.interruptions: list[str] = []
        self.progress = 0
        self.target: int | None = None
        self.opened = threading.Event()
        self.stopped = threading.Event()
        self.call: Any = None

    def finished(self) -> bool:
        last = self.events[-1].position if self.events else 0
        return self.target is not None and max(last, self.progress) >= self.target

    def run(self) -> None:
        deadline = time.monotonic() + LIVENESS * 2
        while not self.finished() and not self.stopped.is_set() and time.monotonic() < deadline:
            after = self.events[-1].position if self.events else 0
            self.call = self.stub.WatchSession(
                pb.WatchSessionRequest(
                    session_id=SESSION,
                    from_position=after,
                    min_position=max(after, self.opened_at),
                    progress_interval_ms=200,
                ),
                timeout=LIVENESS,
            )
            try:
                for message in self.call:
                    if message.HasField("event"):
                        self.events.append(message.event.event)
                    elif message.HasField("progress"):
                        self.progress = message.progress.position
                        self.opened.set()
                    if self.finished():
                        return
            except grpc.RpcError as error:
                if not self.finished() and not self.stopped.is_set():
                    self.interruptions.append(f"{status_of(error)}: {error.details()}")
                    time.sleep(0.1)
            finally:
                self.call.cancel()

    def wait_for(self, target: int) -> None:
        self.target = target
        self.join(LIVENESS * 2)
        assert not self.is_alive(), f"the watch did not reach position {target}"


@contextmanager
def watching(stub: Stub, opened_at: int) -> Iterator[Watch]:
    """A running :class:`Watch`, caught up with the log; stopped on the way out."""
    watch = Watch(stub, opened_at)
    watch.start()
    try:
        assert watch.opened.wait(LIVENESS), "the watch never caught up with the log"
        yield watch
    finally:
        watch.stopped.set()
        if watch.call is not None:
            watch.call.cancel()
        watch.join(TIMEOUT)


@contextmanager
def running(writers: list[Writer]) -> Iterator[None]:
    """The writers started; on the way out, told to stop and joined (so none outlives its
    test, whatever happened)."""
    for writer in writers:
        writer.start()
    try:
        yield
    finally:
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join(LIVENESS)


# Tests.


def test_concurrent_writers_through_three_servers_lose_nothing_and_double_nothing(
    cluster: Cluster,
) -> None:
    servers = cluster.start(3)
    stubs = [cluster.stub(s) for s in servers]
    start = set_up(stubs[0])
    wait_until_served(stubs, start)
    ledger = Ledger()
    writers = [
        Writer(ledger, f"s{k}w{n}", through(stub), limit=40)
        for k, stub in enumerate(stubs)
        for n in range(3)
    ]
    run_writers(writers)
    assert ledger.failures == [], ledger.failures
    assert ledger.count("ok") > 0
    end = last_acknowledged(ledger)
    log = assert_servers_agree(stubs, end)
    check_log(ledger, log, stubs[1], start)
    print(summary(ledger))


def test_a_watch_on_one_server_sees_writes_made_through_another_in_order(
    cluster: Cluster,
) -> None:
    a, b = (cluster.stub(s) for s in cluster.start(2))
    start = set_up(a)
    ledger = Ledger()
    with watching(b, start) as watch:
        run_writers([Writer(ledger, f"a{n}", through(a), limit=60) for n in range(3)])
        assert ledger.failures == [], ledger.failures
        end = last_acknowledged(ledger)
        watch.wait_for(end)
    assert watch.interruptions == []
    assert [e.position for e in watch.events] == list(range(1, end + 1))  # no gap, no repeat
    assert watch.events == read_log(a, end)


class FailOver:
    """A writer's retry rule: once ``killed`` is set, its first failed call (the kill cut
    it) is sent again; any other failure is one."""

    def __init__(self, killed: threading.Event) -> None:
        self.killed = killed
        self.used = False

    def __call__(self, error: grpc.RpcError) -> bool:
        if self.used or not self.killed.is_set():
            return False
        self.used = True
        return True


def wait_for_acknowledged(ledger: Ledger, count: int) -> None:
    eventually(lambda: ledger.count("ok") >= count, f"{count} writes acknowledged")


def test_a_server_killed_mid_load_loses_nothing_and_the_others_keep_serving(
    cluster: Cluster,
) -> None:
    servers = cluster.start(3)
    a, b, c = (cluster.stub(s) for s in servers)
    start = set_up(a)
    wait_until_served([a, b, c], start)
    ledger = Ledger()
    killed = threading.Event()
    survivors = [
        Writer(ledger, f"{k}{n}", through(s), limit=60)
        for k, s in [("a", a), ("b", b)]
        for n in range(2)
    ]

    # The killed server's writers send the write the kill cut (same request id), and the
    # rest, through a.
    def route() -> Stub:
        return a if killed.is_set() else c

    victims = [Writer(ledger, f"c{n}", route, retry=FailOver(killed), limit=60) for n in range(2)]
    with running(survivors + victims):
        wait_for_acknowledged(ledger, 60)
        killed.set()
        servers[2].kill()
        at_kill = ledger.count("ok")
        join_writers(survivors + victims)
    assert ledger.failures == [], ledger.failures
    assert ledger.count("ok") > at_kill  # the others kept serving
    end = last_acknowledged(ledger)
    log = assert_servers_agree([a, b], end)
    check_log(ledger, log, a, start)
    restarted = cluster.stub(cluster.start(1)[0])
    assert assert_servers_agree([a, b, restarted], end) == log  # it caught up
    print(summary(ledger))


def run_with_fault(cluster: Cluster, fault: Callable[[], None]) -> None:
    """Writers through two servers while ``fault`` runs, retrying with the same request id;
    then every acknowledged write is in the log once, both servers serve the same log and
    state, a write through one is read through the other (its tailer caught up), a watch
    opened before the fault saw every event once (resumed where it was cut, if it was),
    and no call stalled."""
    a, b = (cluster.stub(s) for s in cluster.start(2))
    start = set_up(a)
    wait_until_served([a, b], start)
    ledger = Ledger()
    stop = threading.Event()
    writers = [
        Writer(ledger, f"{k}{n}", through(s), retry=transient, stop=stop, limit=10_000)
        for k, s in [("a", a), ("b", b)]
        for n in range(2)
    ]
    with watching(b, start) as watch:
        with running(writers):
            wait_for_acknowledged(ledger, 40)
            fault()
            after_fault = ledger.count("ok")
            wait_for_acknowledged(ledger, after_fault + 40)  # they reconnected by themselves
            stop.set()
            join_writers(writers)
        assert ledger.failures == [], ledger.failures
        # A write through a is read through b: b's tailer follows the log again.
        tail = Writer(ledger, "tail", through(a), retry=transient, limit=1)
        run_writers([tail])
        assert ledger.failures == [], ledger.failures
        request = pb.GetVariableRequest(
            session_id=SESSION, variable_identifier=TEXT, min_position=tail.seen
        )
        read = retried(partial(b.GetVariable, request, timeout=TIMEOUT))
        assert read.header.position >= tail.seen
        end = last_acknowledged(ledger)
        log = assert_servers_agree([a, b], end)
        check_log(ledger, log, a, start)
        watch.wait_for(end)
    assert [e.position for e in watch.events] == list(range(1, end + 1)), watch.interruptions
    assert watch.events == log
    print(summary(ledger), "; watch interruptions:", watch.interruptions)
    # A server that lost its connections answers at once (UNAVAILABLE, retried), never
    # stalls: a call that ran out of its TIMEOUT seconds means one did.
    stalled = ledger.met.count("DEADLINE_EXCEEDED")
    assert stalled == 0, f"{stalled} calls ran out of {TIMEOUT} s: {summary(ledger)}"


def test_terminated_database_connections_lose_nothing_and_the_servers_reconnect(
    cluster: Cluster,
) -> None:
    terminated: list[int] = []

    def terminate_four_times() -> None:
        for _ in range(4):
            terminated.append(cluster.terminate_backends())
            time.sleep(0.4)

    run_with_fault(cluster, terminate_four_times)
    assert all(count > 0 for count in terminated), terminated


def test_a_postgresql_restart_loses_nothing_and_the_servers_reconnect() -> None:
    # A server of its own: a restart of the shared one would cut other tests' connections.
    with private_postgres() as postgres, Cluster.opened(postgres.dsn) as cluster:
        run_with_fault(cluster, lambda: restart_postgres(postgres.restart_command, postgres.dsn))


def expiries(stub: Stub, session_id: str, min_position: int = 0) -> list[str]:
    """The reasons of the SessionDeleted events in a session's log."""
    events = stub.ReadEvents(
        pb.ReadEventsRequest(session_id=session_id, page_size=1000, min_position=min_position),
        timeout=TIMEOUT,
    ).events
    return [e.session_deleted.reason for e in events if e.WhichOneof("body") == "session_deleted"]


def eventually(condition: Callable[[], object], what: str) -> None:
    """Return once ``condition()`` is truthy; fail after LIVENESS seconds."""
    deadline = time.monotonic() + LIVENESS
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def test_ttl_expiry_is_written_once_and_reads_on_any_server_keep_a_session_alive(
    cluster: Cluster,
) -> None:
    first = cluster.start(1)[0]
    # The first server takes the sweeper role at its first sweep; the others find it taken.
    eventually(lambda: cluster.advisory_locks() == 1, "the first server holds the sweeper role")
    a = cluster.stub(first)
    b, c = (cluster.stub(s) for s in cluster.start(2))
    idle = [f"idle{n}" for n in range(3)]
    for session_id in idle:
        a.CreateSession(
            pb.CreateSessionRequest(session_id=session_id, ttl_seconds=1), timeout=TIMEOUT
        )
    a.CreateSession(pb.CreateSessionRequest(session_id="kept", ttl_seconds=2), timeout=TIMEOUT)
    registered = a.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id="kept", name="v", type="integer", initial_value=to_proto(0)
        ),
        timeout=TIMEOUT,
    )
    reading = threading.Event()
    reading.set()
    reads: list[str] = []

    def read_kept_on_b() -> None:  # a use of the session on b, not on the sweeper (a)
        while reading.is_set():
            try:
                b.GetVariable(
                    pb.GetVariableRequest(
                        session_id="kept",
                        variable_identifier="v",
                        min_position=registered.header.position,
                    ),
                    timeout=TIMEOUT,
                )
                reads.append("ok")
            except grpc.RpcError as error:
                reads.append(status_of(error))
            time.sleep(0.3)

    reader = threading.Thread(target=read_kept_on_b, daemon=True)
    reader.start()
    try:
        kept_since = time.monotonic()
        for session_id in idle:  # created at position 1
            eventually(partial(expiries, b, session_id, 1), f"{session_id} expired")
        # Kept more than twice its TTL; meanwhile every server swept the idle ones again.
        time.sleep(max(0.0, kept_since + 4.5 - time.monotonic()))
        for stub in (a, b, c):  # a second expiry would show at least on the server writing it
            for session_id in idle:  # expired at position 2
                assert expiries(stub, session_id, 2) == ["expired"], session_id
            assert expiries(stub, "kept", 2) == []  # v registered at 2
        assert set(reads) == {"ok"}, reads
    finally:
        reading.clear()
        reader.join(TIMEOUT)
    eventually(partial(expiries, b, "kept", 2), "kept expired once no longer read")
    time.sleep(1.5)  # another sweep on every server
    for stub in (a, b, c):  # expired at 3
        assert expiries(stub, "kept", 3) == ["expired"]
    assert cluster.advisory_locks() == 1  # a held the sweeper role throughout


def test_min_position_beyond_the_log_answers_unavailable_saying_how_far_behind(
    cluster: Cluster,
) -> None:
    a, b = (cluster.stub(s) for s in cluster.start(2))
    position = set_up(a)
    got = b.GetVariable(
        pb.GetVariableRequest(session_id=SESSION, variable_identifier=TEXT, min_position=position),
        timeout=TIMEOUT,
    )
    assert got.header.position == position  # read-your-writes on another server
    far = position + 1_000_000
    for call in (
        lambda: b.GetVariable(
            pb.GetVariableRequest(session_id=SESSION, variable_identifier=TEXT, min_position=far),
            timeout=1.5,
        ),
        lambda: list(
            b.WatchSession(
                pb.WatchSessionRequest(session_id=SESSION, min_position=far), timeout=1.5
            )
        ),
    ):
        with pytest.raises(grpc.RpcError) as behind:
            call()
        assert behind.value.code() == grpc.StatusCode.UNAVAILABLE, behind.value.details()
        assert behind.value.details() == (
            f"session 'shared' is served up to position {position}, 1000000 behind the "
            f"position {far} asked for; retry shortly"
        )
        info = error_from_rpc_error(behind.value).info
        assert (info["applied_position"], info["behind"]) == (str(position), "1000000")
    with pytest.raises(grpc.RpcError) as negative:
        b.GetVariable(
            pb.GetVariableRequest(session_id=SESSION, variable_identifier=TEXT, min_position=-1),
            timeout=TIMEOUT,
        )
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "min_position must be 0 or more, not -1" in (negative.value.details() or "")


def open_at_once(schema: str, count: int) -> list[str]:
    """Open ``count`` recorders on ``schema`` from threads released together; close them.
    Returns the errors raised."""
    barrier = threading.Barrier(count)
    opened: list[PostgresRecorder] = []
    errors: list[str] = []

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(PostgresRecorder(PG_DSN, schema=schema))
        except Exception as problem:  # noqa: BLE001 (returned)
            errors.append(f"{type(problem).__name__}: {problem}")

    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LIVENESS)
    for recorder in opened:
        recorder.close()
    return errors


def test_servers_opening_one_fresh_schema_at_once_all_open() -> None:
    """Servers started together on an empty database (a new deployment) must all start.
    Processes collide on the first statement now and then; recorders opened from threads
    released together (what each ``varstore serve`` does first) collide often."""
    require_postgres()
    errors: list[str] = []
    for _ in range(10):
        schema = f"c_{uuid.uuid4().hex[:12]}"
        try:
            errors += open_at_once(schema, 3)
        finally:
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    assert errors == []


ROUNDS = 200


def test_a_write_through_one_server_right_after_one_through_another_is_decided_on_it(
    cluster: Cluster,
) -> None:
    """A refusal (here: variable not found) must come from the log as it is, never from a
    server's state behind it: a server that refuses on a state behind the log reads the
    log and decides again. No min_position here: the client did nothing wrong."""
    a, b = (cluster.stub(s) for s in cluster.start(2))
    a.CreateSession(pb.CreateSessionRequest(session_id=SESSION), timeout=TIMEOUT)
    wait_until_served([b], 1)
    refused: list[str] = []
    for n in range(ROUNDS):
        a.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=SESSION, name=f"v{n}", type="integer", initial_value=to_proto(0)
            ),
            timeout=TIMEOUT,
        )
        try:
            b.SetVariable(
                pb.SetVariableRequest(
                    session_id=SESSION, variable_identifier=f"v{n}", value=to_proto(1)
                ),
                timeout=TIMEOUT,
            )
        except grpc.RpcError as error:
            refused.append(f"v{n}: {status_of(error)} {error.details()}")
    assert refused == [], f"{len(refused)} of {ROUNDS} refused, first: {refused[0]}"
