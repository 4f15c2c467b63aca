"""Compare-and-set on one variable is linearizable: the checker (tests/linearizability.py)
on small histories known to be good or bad, against a brute-force search on random ones,
then on histories recorded against a real server, also across SIGKILL and restart."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linearizability import (
    CAS_REGISTER,
    Cas,
    CheckTooLong,
    Done,
    Operation,
    Read,
    Refused,
    Register,
    Seen,
    Write,
    check,
)
from servers import ServerProcess, start_server_process, stub_for

from varstore.types import from_proto, to_proto
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Input = Read | Write | Cas
Output = Seen | Done | Refused
Op = Operation[Input, Output]


def op(
    call: int, ret: int | None, input: Input, output: Output | None = None, client: int = 0
) -> Op:
    return Operation(client, call, ret, input, output)


def linearizable(history: Sequence[Op]) -> bool:
    return check(CAS_REGISTER, history).linearizable


def assert_is_a_witness(history: Sequence[Op], order: Sequence[int]) -> None:
    """``order`` holds every completed operation once, keeps real-time order and is
    accepted by the register step by step."""
    assert len(set(order)) == len(order)
    completed = {i for i, o in enumerate(history) if o.ret is not None}
    assert completed <= set(order)
    place = {index: n for n, index in enumerate(order)}
    for a, b in itertools.permutations(order, 2):
        ret_a = history[a].ret
        if ret_a is not None and ret_a < history[b].call:
            assert place[a] < place[b], f"{a} returned before {b} was called"
    state: Register | None = CAS_REGISTER.init
    for index in order:
        assert state is not None
        state = CAS_REGISTER.step(state, history[index].input, history[index].output)
    assert state is not None


# Known histories. Times are small integers; a call and a return at one time overlap.


def test_an_empty_history_is_linearizable() -> None:
    assert check(CAS_REGISTER, []) == check(CAS_REGISTER, [])
    assert linearizable([])


def test_a_sequential_history_the_register_allows_is_linearizable() -> None:
    history = [
        op(0, 1, Read(), Seen("init", 0)),
        op(2, 3, Cas(0, "a"), Done(1)),
        op(4, 5, Cas(0, "b"), Refused()),
        op(6, 7, Write("c"), Done(2)),
        op(8, 9, Read(), Seen("c", 2)),
    ]
    result = check(CAS_REGISTER, history)
    assert result.linearizable
    assert result.order == (0, 1, 2, 3, 4)


def test_overlapping_writes_may_take_effect_in_either_order() -> None:
    history = [
        op(0, 10, Write("a"), Done(2), client=1),
        op(1, 11, Write("b"), Done(1), client=2),
        op(12, 13, Read(), Seen("a", 2)),
    ]
    result = check(CAS_REGISTER, history)
    assert result.linearizable
    assert result.order == (1, 0, 2)


@pytest.mark.parametrize("seen", [Seen("init", 0), Seen("a", 1)], ids=["old-value", "new-value"])
def test_a_read_overlapping_a_write_may_see_the_old_or_the_new_value(seen: Seen) -> None:
    assert linearizable([op(0, 10, Cas(0, "a"), Done(1)), op(5, 6, Read(), seen)])


def test_a_read_after_a_completed_write_must_not_see_the_old_value() -> None:
    assert not linearizable([op(0, 1, Write("a"), Done(1)), op(2, 3, Read(), Seen("init", 0))])


def test_two_compare_and_sets_from_one_version_cannot_both_succeed() -> None:
    history = [
        op(0, 10, Cas(0, "a"), Done(1), client=1),
        op(0, 10, Cas(0, "b"), Done(1), client=2),
    ]
    assert not linearizable(history)


def test_a_compare_and_set_refused_with_nothing_concurrent_is_not_linearizable() -> None:
    assert not linearizable([op(0, 1, Cas(0, "a"), Refused())])


def test_reads_cannot_see_the_new_value_and_then_the_old_one() -> None:
    history = [
        op(0, 100, Write("a"), Done(1), client=1),
        op(10, 20, Read(), Seen("a", 1), client=2),
        op(30, 40, Read(), Seen("init", 0), client=3),
    ]
    assert not linearizable(history)


def test_a_read_of_a_value_never_written_is_not_linearizable() -> None:
    assert not linearizable([op(0, 10, Write("a"), Done(1)), op(5, 6, Read(), Seen("b", 1))])


@pytest.mark.parametrize("seen", [Seen("x", 1), Seen("init", 0)], ids=["it-happened", "it-did-not"])
def test_a_cut_off_compare_and_set_may_or_may_not_have_happened(seen: Seen) -> None:
    history = [op(0, None, Cas(0, "x")), op(5, 6, Read(), seen), op(7, 8, Read(), seen)]
    assert linearizable(history)


def test_a_cut_off_write_cannot_take_effect_twice() -> None:
    history = [
        op(0, None, Write("x")),
        op(5, 6, Read(), Seen("x", 1)),
        op(7, 8, Read(), Seen("x", 2)),
    ]
    assert not linearizable(history)


def test_a_cut_off_write_seen_once_cannot_vanish() -> None:
    history = [
        op(0, None, Write("x")),
        op(5, 6, Read(), Seen("x", 1)),
        op(7, 8, Read(), Seen("init", 0)),
    ]
    assert not linearizable(history)


def test_an_operation_cannot_return_before_it_is_called_nor_miss_its_output() -> None:
    with pytest.raises(ValueError, match="before its call"):
        op(5, 4, Read(), Seen("init", 0))
    with pytest.raises(ValueError, match="exactly when"):
        op(5, 6, Read())


def test_memoisation_refuses_ten_cut_off_writes_and_an_impossible_read_in_few_steps() -> None:
    # Without memoisation the search tries every ordered subset of the ten writes (about
    # 10 million); with it, every (subset, state) pair once (about ten thousand).
    history = [op(0, None, Write(f"w{n}")) for n in range(10)]
    history.append(op(1, 2, Read(), Seen("z", 1)))
    assert not check(CAS_REGISTER, history, max_steps=300_000).linearizable


def test_the_search_stops_with_check_too_long_after_max_steps() -> None:
    history = [op(0, None, Write(f"w{n}")) for n in range(10)]
    history.append(op(1, 2, Read(), Seen("z", 1)))
    with pytest.raises(CheckTooLong, match="no verdict after 50 steps"):
        check(CAS_REGISTER, history, max_steps=50)


# Random small histories: the checker agrees with a brute-force search, and every history a
# real atomic register could produce is accepted with a witness.


def brute_force(history: Sequence[Op]) -> bool:
    """Try every order that keeps real time (cut-off operations may be left out)."""
    completed = frozenset(i for i, o in enumerate(history) if o.ret is not None)

    def search(done: frozenset[int], state: Register) -> bool:
        if completed <= done:
            return True
        for i, candidate in enumerate(history):
            if i in done:
                continue
            must_precede = (
                j
                for j, other in enumerate(history)
                if j not in done and other.ret is not None and other.ret < candidate.call
            )
            if any(True for _ in must_precede):
                continue
            after = CAS_REGISTER.step(state, candidate.input, candidate.output)
            if after is not None and search(done | {i}, after):
                return True
        return False

    return search(frozenset(), CAS_REGISTER.init)


VALUES = st.sampled_from(["a", "b", "c"])
INPUTS: st.SearchStrategy[Input] = st.one_of(
    st.just(Read()), st.builds(Write, VALUES), st.builds(Cas, st.integers(0, 3), VALUES)
)


@st.composite
def random_operation(draw: st.DrawFn) -> Op:
    call = draw(st.integers(0, 20))
    if draw(st.integers(0, 6)) == 0:
        return op(call, None, draw(INPUTS))
    ret = call + draw(st.integers(0, 10))
    chosen = draw(INPUTS)
    output: Output
    if isinstance(chosen, Read):
        output = Seen(draw(st.sampled_from(["init", "a", "b", "c"])), draw(st.integers(0, 4)))
    else:
        output = draw(st.one_of(st.builds(Done, st.integers(1, 4)), st.just(Refused())))
    return op(call, ret, chosen, output)


@settings(max_examples=300, deadline=None)
@given(history=st.lists(random_operation(), max_size=6))
def test_the_checker_agrees_with_a_brute_force_search(history: list[Op]) -> None:
    result = check(CAS_REGISTER, history)
    assert result.linearizable == brute_force(history)
    if result.linearizable:
        assert_is_a_witness(history, result.order)


@st.composite
def atomic_register_history(draw: st.DrawFn) -> list[Op]:
    """Operations that each take effect at one instant inside their interval on one real
    register; some are cut off (their effect kept or lost)."""
    planned: list[tuple[int, int, int, Input, str]] = []  # (effect, call, ret, input, fate)
    for _ in range(draw(st.integers(0, 12))):
        call = draw(st.integers(0, 50))
        ret = call + draw(st.integers(0, 15))
        fate = draw(st.sampled_from(["done", "done", "done", "cut-kept", "cut-lost"]))
        planned.append((draw(st.integers(call, ret)), call, ret, draw(INPUTS), fate))
    state = CAS_REGISTER.init
    history: list[Op] = []
    for _effect, call, ret, chosen, fate in sorted(planned, key=lambda p: p[0]):
        if fate == "cut-lost":
            history.append(op(call, None, chosen))
            continue
        output: Output
        if isinstance(chosen, Read):
            output = Seen(state.value, state.version)
        elif isinstance(chosen, Cas) and chosen.expected_version != state.version:
            output = Refused()
        else:
            state = Register(chosen.value, state.version + 1)
            output = Done(state.version)
        history.append(op(call, ret, chosen, output) if fate == "done" else op(call, None, chosen))
    return draw(st.permutations(history))


@settings(max_examples=200, deadline=None)
@given(history=atomic_register_history())
def test_every_history_of_an_atomic_register_is_linearizable_with_a_witness(
    history: list[Op],
) -> None:
    result = check(CAS_REGISTER, history, max_steps=1_000_000)
    assert result.linearizable
    assert_is_a_witness(history, result.order)


# Histories recorded against a real server.

SESSION = "lin"
REGISTER = "reg"
CLIENTS = 4


@dataclass
class Recording:
    """A history recorded by client threads against a server that may be killed and
    restarted: an operation cut by a kill has no return (it may or may not have happened)."""

    address: str
    history: list[Op] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set while the server is being killed and restarted.
    down: threading.Event = field(default_factory=threading.Event)
    #: Set when the clients should stop.
    stop: threading.Event = field(default_factory=threading.Event)
    #: Bumped after each restart; a call from an earlier generation that fails was cut.
    generation: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def restarted(self, address: str) -> None:
        with self.changed:
            self.address, self.generation = address, self.generation + 1
            self.down.clear()
            self.changed.notify_all()

    def next_server(self, seen_generation: int) -> tuple[str, int]:
        """Wait for a server later than ``seen_generation`` if this one went down."""
        with self.changed:
            self.changed.wait_for(
                lambda: (
                    self.stop.is_set()
                    or (not self.down.is_set() and self.generation > seen_generation)
                ),
                timeout=30,
            )
            return self.address, self.generation


def call_register(stub: pb_grpc.VariableStoreStub, chosen: Input) -> Output:
    """One operation on the register through gRPC; ABORTED on a CAS is Refused."""
    if isinstance(chosen, Read):
        got = stub.GetVariable(
            pb.GetVariableRequest(session_id=SESSION, variable_identifier=REGISTER), timeout=10
        )
        value = from_proto(got.variable.value)
        assert isinstance(value, str)
        return Seen(value, got.variable.version)
    request = pb.SetVariableRequest(
        session_id=SESSION, variable_identifier=REGISTER, value=to_proto(chosen.value)
    )
    if isinstance(chosen, Cas):
        request.expected_version = chosen.expected_version
    try:
        return Done(stub.SetVariable(request, timeout=10).new_version)
    except grpc.RpcError as error:
        if isinstance(chosen, Cas) and error.code() == grpc.StatusCode.ABORTED:
            return Refused()
        raise


def client_thread(recording: Recording, client: int, seed: int) -> None:
    """Reads (40%), compare-and-sets from the last version this client saw (50%) and blind
    writes (10%), each recorded with its invoke and completion times."""
    rng = random.Random(seed)
    known_version = 0
    address, generation = recording.next_server(-1)
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.VariableStoreStub(channel)
    try:
        for n in itertools.count():
            if recording.stop.is_set():
                return
            if recording.down.is_set() or generation != recording.generation:
                channel.close()
                address, generation = recording.next_server(generation)
                channel = grpc.insecure_channel(address)
                stub = pb_grpc.VariableStoreStub(channel)
            roll = rng.random()
            value = f"c{client}.{n}"
            chosen: Input = (
                Read() if roll < 0.4 else Cas(known_version, value) if roll < 0.9 else Write(value)
            )
            call = time.monotonic_ns()
            try:
                output = call_register(stub, chosen)
            except grpc.RpcError as error:
                if recording.down.is_set() or generation != recording.generation:
                    with recording.lock:  # cut by the kill: it may or may not have happened
                        recording.history.append(op(call, None, chosen, client=client))
                    continue
                with recording.lock:
                    recording.failures.append(f"client {client}: {chosen} failed: {error}")
                return
            ret = time.monotonic_ns()
            with recording.lock:
                recording.history.append(op(call, ret, chosen, output, client=client))
            if isinstance(output, Seen | Done):
                known_version = output.version
    finally:
        channel.close()


def record_history(db: Path, *, kills: int, seed: int) -> tuple[list[Op], list[ServerProcess]]:
    """Run the client threads against ``varstore serve`` for a few tenths of a second, then
    ``kills`` times: SIGKILL at a random moment, restart on the same database, run again."""
    rng = random.Random(seed)
    servers = [start_server_process(db)]
    with stub_for(servers[0].address) as stub:
        stub.CreateSession(pb.CreateSessionRequest(session_id=SESSION))
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=SESSION, name=REGISTER, type="string", initial_value=to_proto("init")
            )
        )
    recording = Recording(servers[0].address)
    threads = [
        threading.Thread(target=client_thread, args=(recording, c, rng.random()))
        for c in range(CLIENTS)
    ]
    try:
        for thread in threads:
            thread.start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 0.6))
            recording.down.set()
            servers[-1].kill()
            servers.append(start_server_process(db))
            recording.restarted(servers[-1].address)
        time.sleep(rng.uniform(0.4, 0.8))
    finally:
        with recording.changed:
            recording.stop.set()
            recording.changed.notify_all()
        for thread in threads:
            thread.join(60)
        for server in servers:
            if server.process.poll() is None:
                server.kill()
    assert not recording.failures, recording.failures
    assert not any(thread.is_alive() for thread in threads)
    return recording.history, servers


@pytest.fixture(scope="module")
def server_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Op]]:
    history, _ = record_history(tmp_path_factory.mktemp("lin") / "log.db", kills=0, seed=1)
    yield history


def test_a_compare_and_set_history_against_a_real_server_is_linearizable(
    server_history: list[Op],
) -> None:
    assert len(server_history) > 50
    outputs = [o.output for o in server_history]
    assert any(isinstance(out, Refused) for out in outputs), "no contention: nothing refused"
    assert sum(isinstance(out, Done) for out in outputs) > CLIENTS
    result = check(CAS_REGISTER, server_history, max_steps=2_000_000)
    assert result.linearizable, f"longest linearizable prefix: {result.longest}"
    assert_is_a_witness(server_history, result.order)


def test_the_real_history_with_one_read_made_stale_is_refused(server_history: list[Op]) -> None:
    """Guards the checker on real data: a read that began after version v was acknowledged
    is made to answer version v - 1."""
    value_at = {0: "init"} | {
        o.output.version: o.input.value
        for o in server_history
        if isinstance(o.output, Done) and isinstance(o.input, Write | Cas)
    }
    for index, read in enumerate(server_history):
        if not isinstance(read.input, Read):
            continue
        written_before = [
            o.output.version
            for o in server_history
            if isinstance(o.output, Done) and o.ret is not None and o.ret < read.call
        ]
        if written_before and max(written_before) - 1 in value_at:
            version = max(written_before) - 1
            stale = op(read.call, read.ret, Read(), Seen(value_at[version], version))
            mutated = [*server_history[:index], stale, *server_history[index + 1 :]]
            assert not check(CAS_REGISTER, mutated, max_steps=2_000_000).linearizable
            return
    pytest.fail("no read began after an acknowledged write")  # pragma: no cover


def test_a_compare_and_set_history_across_sigkills_and_restarts_is_linearizable(
    tmp_path: Path,
) -> None:
    history, servers = record_history(tmp_path / "log.db", kills=2, seed=2)
    assert len(servers) == 3
    assert len(history) > 50
    result = check(CAS_REGISTER, history, max_steps=2_000_000)
    assert result.linearizable, f"longest linearizable prefix: {result.longest}"
    assert_is_a_witness(history, result.order)
