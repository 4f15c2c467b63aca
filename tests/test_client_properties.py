"""Property tests of the client's cache.

Two parts. First the pure :class:`VariableCache` under a fake clock: random puts (some
older than what is cached), reads by name or id, bypassed reads, re-registrations,
invalidations, TTL and size changes; the cache must never serve an entry at or past its
TTL, nor one it was told to forget, and its statistics must add up. Then a sync
:class:`SessionContext` on a real in-process server, driven by random registrations,
reads, writes, batches, deletes, invalidations, clock ticks and writes by another
client, some of them invalid: every answer is checked against the server's history as a
separate generated stub saw it, and at the end the client, past its cache, must agree
with the server.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from varstore.api.server import RunningServer
from varstore.client import (
    AlreadyExists,
    SessionContext,
    ValidationError,
    VariableNotFound,
    VersionConflict,
)
from varstore.client._cache import VariableCache
from varstore.types import PyValue, from_proto
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- the pure cache --------------------------------------------------------------------------

CACHE_NAMES = ("a", "b", "c")


@dataclass(frozen=True)
class Put:
    """Store the name's current variable; ``stale``: one version older than its newest."""

    name: str
    value: int
    stale: bool


@dataclass(frozen=True)
class Reregister:
    """The name now belongs to a new variable (a new id), as after delete and register."""

    name: str


@dataclass(frozen=True)
class Get:
    """Read by name, or by the id of the name's variable ``older`` registrations ago."""

    name: str
    by_id: bool
    older: int


@dataclass(frozen=True)
class Bypass:
    """A read that skipped the cache."""


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Invalidate:
    """Forget one variable by name or id, or (``name`` None) everything."""

    name: str | None
    by_id: bool


@dataclass(frozen=True)
class Configure:
    ttl: float | None
    max_size: int | None


CacheOp = Put | Reregister | Get | Bypass | Advance | Invalidate | Configure

TTLS = (0.5, 1.0, 2.5)

cache_ops = st.lists(
    st.one_of(
        st.builds(Put, st.sampled_from(CACHE_NAMES), st.integers(-2, 2), st.booleans()),
        st.builds(Reregister, st.sampled_from(CACHE_NAMES)),
        st.builds(Get, st.sampled_from(CACHE_NAMES), st.booleans(), st.integers(0, 1)),
        st.just(Bypass()),
        st.builds(Advance, st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5])),
        st.builds(Invalidate, st.sampled_from((*CACHE_NAMES, None)), st.booleans()),
        st.builds(
            Configure,
            st.none() | st.sampled_from(TTLS),
            st.none() | st.integers(1, 4),
        ),
    ),
    min_size=10,  # hypothesis favours short lists; a cache needs a few steps to get interesting
    max_size=60,
)


@dataclass
class CacheModel:
    """What the cache may answer, and the counts its statistics must match.

    Conservation: every entry that went in is still there, was removed on purpose
    (invalidated, or replaced when its name went to a new id), or was evicted (for room
    or past its TTL); so ``inserted == size + evictions + removed``.
    """

    cache: VariableCache
    clock: FakeClock
    ttl: float
    max_size: int
    generation: dict[str, int] = field(default_factory=dict)
    #: Newest version put per id.
    newest: dict[str, int] = field(default_factory=dict)
    #: Per id: (value, clock reading) of its last accepted put.
    stored: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: Ids put and not removed on purpose since.
    servable: set[str] = field(default_factory=set)
    #: Per name: the id last put under it.
    latest_id: dict[str, str] = field(default_factory=dict)
    reads: int = 0
    hits: int = 0
    sets: int = 0
    inserted: int = 0
    removed: int = 0

    def id_of(self, name: str, older: int = 0) -> str:
        return f"{name}#{max(self.generation.get(name, 0) - older, 0)}"

    def apply(self, op: CacheOp) -> None:
        match op:
            case Put():
                self.put(op)
            case Reregister(name):
                self.generation[name] = self.generation.get(name, 0) + 1
            case Get():
                self.get(op)
            case Bypass():
                self.cache.count_miss()
                self.reads += 1
            case Advance(seconds):
                self.clock.advance(seconds)
            case Invalidate():
                self.invalidate(op)
            case Configure(ttl, max_size):
                self.cache.configure(ttl=ttl, max_size=max_size)
                self.ttl = self.ttl if ttl is None else ttl
                self.max_size = self.max_size if max_size is None else max_size

    def put(self, op: Put) -> None:
        variable_id = self.id_of(op.name)
        newest = self.newest.get(variable_id, -1)
        if op.stale and newest < 1:
            return
        version = newest - 1 if op.stale else newest + 1
        current = self.cache.peek(variable_id)
        accepted = current is None or current.version <= version
        if accepted:
            previous = self.cache.peek(op.name)
            if previous is not None and previous.id != variable_id:
                self.removed += 1  # the name's old variable goes
            if current is None:
                self.inserted += 1
        self.cache.put(
            id=variable_id,
            name=op.name,
            type="integer",
            value=op.value,
            version=version,
            position=version,
        )
        self.newest[variable_id] = max(newest, version)
        if accepted:
            self.sets += 1
            self.stored[variable_id] = (op.value, self.clock.now)
            same_name = {i for i in self.servable if i.partition("#")[0] == op.name}
            self.servable = (self.servable - same_name) | {variable_id}
            self.latest_id[op.name] = variable_id

    def get(self, op: Get) -> None:
        identifier = self.id_of(op.name, op.older) if op.by_id else op.name
        entry = self.cache.get(identifier)
        self.reads += 1
        if entry is None:
            return
        self.hits += 1
        assert entry.id in self.servable, f"{entry.id} was forgotten but is served"
        value, stored_at = self.stored[entry.id]
        assert (entry.value, entry.stored_at) == (value, stored_at)
        age = self.clock.now - stored_at
        assert age < self.ttl, f"served {age}s after it was stored, with a TTL of {self.ttl}s"
        assert entry.id == (identifier if op.by_id else self.latest_id[op.name])

    def invalidate(self, op: Invalidate) -> None:
        if op.name is None:
            self.removed += self.cache.stats()["size"]
            self.servable.clear()
            self.cache.invalidate()
            return
        identifier = self.id_of(op.name) if op.by_id else op.name
        entry = self.cache.peek(identifier)
        if entry is not None:
            self.removed += 1
            self.servable.discard(entry.id)
        self.cache.invalidate(identifier)

    def check(self) -> None:
        stats = self.cache.stats()
        assert stats["hits"] + stats["misses"] == self.reads
        assert stats["hits"] == self.hits
        assert stats["sets"] == self.sets
        assert stats["size"] <= stats["max_size"] == self.max_size
        assert stats["ttl"] == self.ttl
        assert self.inserted == stats["size"] + stats["evictions"] + self.removed, stats


@settings(max_examples=300, deadline=None)
@given(ttl=st.sampled_from(TTLS), max_size=st.integers(1, 4), ops=cache_ops)
def test_the_cache_never_serves_an_expired_or_forgotten_entry_and_its_stats_add_up(
    ttl: float, max_size: int, ops: list[CacheOp]
) -> None:
    clock = FakeClock()
    model = CacheModel(VariableCache(ttl, max_size, clock), clock, ttl, max_size)
    for op in ops:
        model.apply(op)
        model.check()


# -- a session context against a real server ------------------------------------------------

TTL = 1.0
NAMES = ("i", "f", "s", "b")
#: Per name: type, initial value, constraints.
SPECS: dict[str, tuple[str, PyValue, dict[str, Any]]] = {
    "i": ("integer", 0, {"min": 0, "max": 100}),
    "f": ("float", 0.0, {"min": -1, "max": 1}),
    "s": ("string", "", {"max_length": 3}),
    "b": ("boolean", False, {}),
}
#: Per name: values of its type (falsy ones included) and some the server refuses.
VALUES: dict[str, st.SearchStrategy[object]] = {
    "i": st.integers(0, 100) | st.sampled_from([0, 100, -1, 101, 3.0, 2.5, "7"]),
    "f": st.floats(-1, 1) | st.sampled_from([0.0, -0.0, 1, -1.5, 2, "x"]),
    "s": st.text("xy", max_size=3) | st.sampled_from(["", "xyzw", 0]),
    "b": st.booleans() | st.sampled_from([False, "no", 0]),
}

#: A value as compared here: a type name with it, so that True is not 1.
Typed = tuple[str, PyValue]
#: A variable as the server holds it: name, id, version, value; None when there is none.
State = tuple[str, str, int, Typed] | None
_NOTHING = object()
_session_numbers = itertools.count(1)


def typed(value: PyValue) -> Typed:
    return (type(value).__name__, value)


def value_of(state: State) -> Typed | None:
    return None if state is None else state[3]


@dataclass(frozen=True)
class Register:
    name: str
    value: object


@dataclass(frozen=True)
class Read:
    """Read by name, or by the id of the name's variable ``older`` registrations ago."""

    name: str
    by_id: bool
    bypass: bool
    with_default: bool
    older: int


@dataclass(frozen=True)
class Write:
    name: str
    by_id: bool
    value: object
    expected_version: Literal["none", "current", "stale"]


@dataclass(frozen=True)
class Batch:
    updates: tuple[tuple[str, bool, object], ...]
    atomic: bool


@dataclass(frozen=True)
class Delete:
    name: str
    by_id: bool


@dataclass(frozen=True)
class ReadMany:
    names: tuple[str, ...]
    bypass: bool


@dataclass(frozen=True)
class Forget:
    name: str | None


@dataclass(frozen=True)
class Tick:
    seconds: float


@dataclass(frozen=True)
class OtherClientWrites:
    name: str
    value: object


@dataclass(frozen=True)
class OtherClientDeletes:
    name: str


ClientOp = (
    Register
    | Read
    | Write
    | Batch
    | Delete
    | ReadMany
    | Forget
    | Tick
    | OtherClientWrites
    | OtherClientDeletes
)


def _with_value(build: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(NAMES).flatmap(build)


registers = _with_value(lambda n: st.builds(Register, st.just(n), VALUES[n]))
reads = st.builds(
    Read,
    st.sampled_from(NAMES),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 1),
)
writes = _with_value(
    lambda n: st.builds(
        Write,
        st.just(n),
        st.booleans(),
        VALUES[n],
        st.sampled_from(["none", "none", "current", "stale"]),
    )
)
batches = st.builds(
    Batch,
    st.lists(
        _with_value(lambda n: st.tuples(st.just(n), st.booleans(), VALUES[n])),
        min_size=1,
        max_size=3,
    ).map(tuple),
    st.booleans(),
)
read_manys = st.builds(
    ReadMany,
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True).map(tuple),
    st.booleans(),
)
#: Reads and writes come up twice as often as the rest: they are what the checks are about.
client_ops = st.lists(
    st.one_of(
        reads,
        reads,
        read_manys,
        writes,
        writes,
        batches,
        batches,
        registers,
        st.builds(Delete, st.sampled_from(NAMES), st.booleans()),
        st.builds(Forget, st.sampled_from((*NAMES, None))),
        st.builds(Tick, st.sampled_from([0.0, 0.4, 0.6, 1.0])),
        _with_value(lambda n: st.builds(OtherClientWrites, st.just(n), VALUES[n])),
        st.builds(OtherClientDeletes, st.sampled_from(NAMES)),
    ),
    min_size=15,  # hypothesis favours short lists; the checks need a few steps of history
    max_size=40,
)

#: What a call through the stub may fail with here.
OTHER_CLIENT_REFUSALS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
)
#: What a client call may fail with here; anything else fails the test.
EXPECTED_REFUSALS = (ValidationError, VariableNotFound, VersionConflict, AlreadyExists)


@dataclass
class ClientRun:
    """One context on a fresh session, the server's history as a stub saw it, and the
    checks on every answer.

    ``history`` holds, per identifier (each name, each id seen), the states it went
    through, with the fake time each was first seen. A cached answer may be any state
    from the one in effect a TTL ago, but never one before this client's own latest
    write of that identifier (``own``); an answer from the server (a bypassed read, a
    read that was a miss) must be the current state.
    """

    ctx: SessionContext
    stub: pb_grpc.VariableStoreStub
    session_id: str
    clock: FakeClock
    history: dict[str, list[tuple[float, State]]] = field(default_factory=dict)
    own: dict[str, int] = field(default_factory=dict)
    #: Per name: the ids of its variables, oldest first.
    ids: dict[str, list[str]] = field(default_factory=dict)
    reads: int = 0

    def server_states(self) -> dict[str, State]:
        request = pb.ListVariablesRequest(session_id=self.session_id)
        try:
            variables = list(self.stub.ListVariables(request).variables)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND  # not created yet
            variables = []
        states: dict[str, State] = {}
        for variable in variables:
            value = from_proto(variable.value)
            assert value is not None
            state = (variable.name, variable.id, variable.version, typed(value))
            states[variable.name] = states[variable.id] = state
            seen = self.ids.setdefault(variable.name, [])
            if variable.id not in seen:
                seen.append(variable.id)
        return states

    def record(self) -> dict[str, State]:
        """Bring ``history`` up to the server's state; returns that state."""
        states = self.server_states()
        for identifier in {*NAMES, *self.history, *states}:
            changes = self.history.setdefault(identifier, [(-math.inf, None)])
            state = states.get(identifier)
            if changes[-1][1] != state:
                changes.append((self.clock.now, state))
        return states

    def mark_own_write(self, state: State) -> None:
        """This client just wrote the variable of ``state`` (its current or, for a
        delete, its last state): reads must not go back past it."""
        assert state is not None
        name, variable_id = state[0], state[1]
        for identifier in (name, variable_id):
            self.own[identifier] = len(self.history[identifier]) - 1

    def identifier(self, name: str, by_id: bool, older: int = 0) -> str:
        """The name, or the id of its variable ``older`` registrations ago (or the
        oldest seen)."""
        seen = self.ids.get(name, [])
        if not by_id or not seen:
            return name
        return seen[max(len(seen) - 1 - older, 0)]

    def check_answer(self, identifier: str, answer: Typed | None, from_server: bool) -> None:
        changes = self.history.setdefault(identifier, [(-math.inf, None)])
        if from_server:
            assert answer == value_of(changes[-1][1]), (identifier, answer, changes)
            return
        window_start = max(
            (
                index
                for index, (seen_at, _) in enumerate(changes)
                if seen_at <= self.clock.now - TTL
            ),
            default=0,
        )
        start = max(window_start, self.own.get(identifier, 0))
        allowed = [value_of(state) for _, state in changes[start:]]
        assert answer in allowed, (identifier, answer, allowed, self.clock.now, changes)

    def hits(self) -> int:
        hits: int = self.ctx.get_cache_stats()["hits"]
        return hits

    def apply(self, op: ClientOp, before: dict[str, State]) -> list[str]:
        """Make ``op``; returns the identifiers this client tried to write."""
        match op:
            case Register(name, value):
                kind, _, constraints = SPECS[name]
                if self.attempt(lambda: self.ctx.register_variable(name, kind, value, constraints)):
                    self.mark_own_write(self.record()[name])
                return [name]
            case Read(name, by_id, bypass, with_default, older):
                self.read(self.identifier(name, by_id, older), bypass, with_default)
            case Write(name, by_id, value, expected):
                identifier = self.identifier(name, by_id)
                self.write(identifier, value, expected, before)
                return [identifier]
            case Batch(updates, atomic):
                batch = {self.identifier(n, by_id): v for n, by_id, v in updates}
                self.batch(batch, atomic)
                return list(batch)
            case Delete(name, by_id):
                identifier = self.identifier(name, by_id)
                if self.attempt(lambda: self.ctx.delete_variable(identifier)):
                    self.record()
                    self.mark_own_write(before[identifier])
                return [identifier]
            case ReadMany(names, bypass):
                self.read_many(names, bypass)
            case Forget(name):
                self.ctx.invalidate_cache(name)
            case Tick(seconds):
                self.clock.advance(seconds)
            case OtherClientWrites(name, value):
                self.other_client_writes(name, value)
            case OtherClientDeletes(name):
                self.as_other_client(
                    self.stub.DeleteVariable,
                    pb.DeleteVariableRequest(
                        session_id=self.session_id, variable_identifier=name, source="other"
                    ),
                )
        return []

    def attempt(self, call: Any) -> bool:
        """Make a client call that may be refused; True if it was accepted."""
        try:
            call()
        except EXPECTED_REFUSALS:
            return False
        return True

    def read(self, identifier: str, bypass: bool = False, with_default: bool = True) -> None:
        """Read one identifier through the client and check the answer."""
        hits = self.hits()
        self.reads += 1
        if with_default:
            answer = self.ctx.get_variable(identifier, default=_NOTHING, bypass_cache=bypass)
        else:
            try:
                answer = self.ctx.get_variable(identifier, bypass_cache=bypass)
            except VariableNotFound:
                answer = _NOTHING
        hit = self.hits() > hits
        assert not (hit and bypass)
        self.check_answer(identifier, None if answer is _NOTHING else typed(answer), not hit)

    def read_many(self, names: tuple[str, ...], bypass: bool) -> None:
        hits = self.hits()
        self.reads += len(names)
        answers = self.ctx.get_variables(names, bypass_cache=bypass)
        none_cached = self.hits() == hits
        assert set(answers) <= set(names)
        for name in names:
            answer = typed(answers[name]) if name in answers else None
            self.check_answer(name, answer, none_cached)

    def write(
        self,
        identifier: str,
        value: object,
        expected: Literal["none", "current", "stale"],
        before: dict[str, State],
    ) -> None:
        state = before.get(identifier)
        version = None if expected == "none" else (state[2] if state else 0)
        if expected == "stale" and version is not None:
            version += 1
        if self.attempt(lambda: self.ctx.set_variable(identifier, value, None, version)):
            self.mark_own_write(self.record()[identifier])

    def batch(self, updates: dict[str, object], atomic: bool) -> None:
        try:
            results = self.ctx.update_variables(updates, atomic=atomic)
        except EXPECTED_REFUSALS:
            assert atomic, "a non-atomic batch reports refusals per variable"
            return
        after = self.record()
        for identifier, outcome in results.items():
            if outcome is True:
                self.mark_own_write(after[identifier])

    def other_client_writes(self, name: str, value: object) -> None:
        try:
            message = _as_value(SPECS[name][0], value)
        except TypeError:
            return  # not something another client could send either
        self.as_other_client(
            self.stub.SetVariable,
            pb.SetVariableRequest(
                session_id=self.session_id,
                variable_identifier=name,
                value=message,
                source="other",
            ),
        )

    def as_other_client(self, method: Any, request: Any) -> None:
        """A call through the stub, which this client's cache cannot know of; it may be
        refused (the history shows what happened)."""
        try:
            method(request)
        except grpc.RpcError as error:
            assert error.code() in OTHER_CLIENT_REFUSALS, error

    def check_stats(self) -> None:
        stats = self.ctx.get_cache_stats()
        assert stats["hits"] + stats["misses"] == self.reads
        assert stats["size"] <= stats["max_size"]

    def check_client_agrees_with_server(self) -> None:
        """Past its cache, the client answers exactly what the server holds."""
        states = self.server_states()
        for identifier in {*NAMES, *itertools.chain(*self.ids.values())}:
            answer = self.ctx.get_variable(identifier, default=_NOTHING, bypass_cache=True)
            expected = value_of(states.get(identifier))
            assert (None if answer is _NOTHING else typed(answer)) == expected, identifier
        listed = [(v.name, v.id, v.version, typed(v.value)) for v in self.ctx.list_variables()]
        held = sorted(state for key, state in states.items() if state and key == state[0])
        assert listed == held


def _as_value(kind: str, value: object) -> pb.Value:
    """``value`` in the Value field of ``kind`` (as another client might send it)."""
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return pb.Value(integer_value=value)
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return pb.Value(float_value=float(value))
    if kind == "string" and isinstance(value, str):
        return pb.Value(string_value=value)
    if kind == "boolean" and isinstance(value, bool):
        return pb.Value(boolean_value=value)
    raise TypeError(f"{value!r} is not a {kind}")


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    made = grpc.insecure_channel(server.address)
    yield made
    made.close()


@settings(max_examples=30, deadline=None)
@given(ops=client_ops, max_size=st.sampled_from([2, 1000]))
def test_random_client_operations_read_their_writes_and_agree_with_the_server(
    channel: grpc.Channel, stub: pb_grpc.VariableStoreStub, ops: list[ClientOp], max_size: int
) -> None:
    clock = FakeClock()
    session_id = f"prop_{next(_session_numbers)}"
    ctx = SessionContext(session_id, channel, {"cache_ttl": TTL, "max_size": max_size}, clock=clock)
    run = ClientRun(ctx, stub, session_id, clock)
    before = run.record()
    for name, (_, initial, _) in SPECS.items():
        run.apply(Register(name, initial), before)
        before = run.record()
    for op in ops:
        written = run.apply(op, before)
        before = run.record()
        for identifier in written:  # read-your-writes, and refused writes change nothing
            run.read(identifier)
        run.check_stats()
    run.check_client_agrees_with_server()
