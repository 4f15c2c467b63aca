"""A stateful model test of the store over gRPC.

Hypothesis drives random sessions, registrations, sets, batches, deletes and bad input
at ONE real in-process server, and checks every answer against a model made of plain
dicts. The model applies the rules written out plainly here (it imports none of
varstore's own checks): ints widen to float, integral floats narrow to int, NaN and
infinities are refused, constraints are checked as the contract describes them.

When a request has several faults at once (say an unknown session and a bad name) the
contract does not rank them, so the model accepts the code of any of them. Every refused
write must change nothing: the invariant, run after every step, compares each session's
position and every variable (id, type, value, version, metadata) with the model.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest
from backends import BACKENDS
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from servers import in_process_server, stub_for

from varstore.api.store import Store
from varstore.projections import SessionState, apply_event
from varstore.types import ValidationError, VarstoreError
from varstore.types.status import error_from_rpc_error
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub
Py = float | int | str | bool
T = TypeVar("T")
Code = grpc.StatusCode

NOT_FOUND = Code.NOT_FOUND
INVALID_ARGUMENT = Code.INVALID_ARGUMENT
ALREADY_EXISTS = Code.ALREADY_EXISTS
ABORTED = Code.ABORTED
RESOURCE_EXHAUSTED = Code.RESOURCE_EXHAUSTED

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
TYPES = ("float", "integer", "string", "boolean")
#: The Value field each type's values travel in.
KIND = {
    "float": "float_value",
    "integer": "integer_value",
    "string": "string_value",
    "boolean": "boolean_value",
}
NAME_CHARACTERS = set(string.ascii_letters + string.digits + "_-.:")
MAX_NAME = 128
MAX_METADATA_ENTRIES = 64
SESSIONS_PER_EXAMPLE = 3

#: Names the machine registers; "var_a_2" and "var_b_3" can collide with real ids.
NAMES = ("a", "b", "c.d", "_g", "e:f-1", "h", "i2", "J", "k-l", "M.n:o", "var_a_2", "var_b_3")
BAD_NAMES = ("", "-x", ".x", ":x", "has space", "a/b", "n" * 129, "n" * 2000)
#: Identifiers that name nothing (unless a pool name made them real: the model checks).
UNKNOWN = ("ghost", "", "var_ghost_2", "A", "n" * 2000)
TOO_MUCH_METADATA = {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}


# -- the model's rules, written out plainly ------------------------------------------------


class Refused(Exception):
    """The model's verdict that a value or constraint is not acceptable."""


def as_type(type_name: str, value: Py | None) -> Py:
    """``value`` as a value of the type, by the contract's rules, or Refused."""
    if value is None:
        raise Refused("no value")
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refused("not a number")
        number = float(value)
        if math.isnan(number) or math.isinf(number):
            raise Refused("not finite")
        return number
    if type_name == "integer":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refused("not a number")
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value) or value != math.floor(value):
                raise Refused("not whole")
            value = int(value)
        if value < INT64_MIN or value > INT64_MAX:
            raise Refused("outside int64")
        return value
    if type_name == "string":
        if not isinstance(value, str):
            raise Refused("not a string")
        return value
    if type_name == "boolean":
        if not isinstance(value, bool):
            raise Refused("not a boolean")
        return value
    raise Refused("unknown type")


@dataclass(frozen=True)
class Rules:
    """Constraints as the machine asks for them (unset: None; a choice with no value: None)."""

    min: float | None = None
    max: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    choices: tuple[Py | None, ...] = ()

    def to_proto(self) -> pb.Constraints:
        message = pb.Constraints(choices=[to_value(c) for c in self.choices])
        if self.min is not None:
            message.min = self.min
        if self.max is not None:
            message.max = self.max
        if self.min_length is not None:
            message.min_length = self.min_length
        if self.max_length is not None:
            message.max_length = self.max_length
        if self.pattern is not None:
            message.pattern = self.pattern
        return message

    def make_sense_for(self, type_name: str) -> bool:
        """False for malformed constraints: a rule for another type, min above max, a
        NaN or infinite bound, a bad regex, a choice that is missing or of another type."""
        bounds = [b for b in (self.min, self.max) if b is not None]
        lengths = [n for n in (self.min_length, self.max_length) if n is not None]
        if bounds and type_name not in ("float", "integer"):
            return False
        if (lengths or self.pattern is not None) and type_name != "string":
            return False
        if any(math.isnan(b) or math.isinf(b) for b in bounds):
            return False
        if self.min is not None and self.max is not None and self.min > self.max:
            return False
        if (
            self.min_length is not None
            and self.max_length is not None
            and self.min_length > self.max_length
        ):
            return False
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error:
                return False
        try:
            for choice in self.choices:
                as_type(type_name, choice)
        except Refused:
            return False
        return True

    def allow(self, type_name: str, value: Py) -> bool:
        """Whether ``value`` (already of the type) passes these constraints."""
        if self.choices and value not in [as_type(type_name, c) for c in self.choices]:
            return False
        if type_name in ("float", "integer"):
            assert isinstance(value, int | float)
            if self.min is not None and value < self.min:
                return False
            if self.max is not None and value > self.max:
                return False
        if type_name == "string":
            assert isinstance(value, str)
            if self.min_length is not None and len(value) < self.min_length:
                return False
            if self.max_length is not None and len(value) > self.max_length:
                return False
            if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
                return False
        return True


def accepted(type_name: str, rules: Rules, value: Py | None) -> Py:
    """The value a variable would store, or Refused."""
    stored = as_type(type_name, value)
    if not rules.allow(type_name, stored):
        raise Refused("constraint")
    return stored


def name_is_valid(name: str) -> bool:
    return (
        0 < len(name) <= MAX_NAME
        and all(c in NAME_CHARACTERS for c in name)
        and name[0] not in "-.:"
    )


def to_value(value: Py | None) -> pb.Value:
    if value is None:
        return pb.Value()
    if isinstance(value, bool):
        return pb.Value(boolean_value=value)
    if isinstance(value, int):
        return pb.Value(integer_value=value)
    if isinstance(value, float):
        return pb.Value(float_value=value)
    return pb.Value(string_value=value)


def same(a: object, b: object) -> bool:
    """Equal and of the same Python type; floats also of the same sign (-0.0 is not 0.0)."""
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, float) and isinstance(b, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    return True


@dataclass
class ModelVariable:
    id: str
    name: str
    type: str
    value: Py
    version: int
    rules: Rules
    metadata: dict[str, str]
    created_position: int
    #: Position of the last change; None after a non-atomic batch changed several at once
    #: (each change is its own event, in an order the contract leaves open).
    position: int | None


@dataclass
class ModelSession:
    #: Position of the session's last event; kept when the session is deleted, because a
    #: session created again under the same id continues its log.
    position: int = 0
    live: bool = False
    #: Live variables by name.
    variables: dict[str, ModelVariable] = field(default_factory=dict)
    #: Every variable id the server ever gave out in this session.
    issued_ids: set[str] = field(default_factory=set)

    def find(self, identifier: str) -> ModelVariable | None:
        """The live variable with this id, else with this name (ids are tried first)."""
        for variable in self.variables.values():
            if variable.id == identifier:
                return variable
        return self.variables.get(identifier)

    def by_name(self) -> list[ModelVariable]:
        return [self.variables[name] for name in sorted(self.variables)]


# -- strategies -------------------------------------------------------------------------

Value = Py | None
S = TypeVar("S")


def weighted(*choices: tuple[int, st.SearchStrategy[S]]) -> st.SearchStrategy[S]:
    """One of the strategies, each about as often as its weight says. The first (the usual
    case) also fills both ends of the pool, where Hypothesis draws more than its share."""
    (usual_weight, usual), *others = choices
    rest = [strategy for weight, strategy in others for _ in range(weight)]
    half = usual_weight // 2 + 1
    pool = [usual] * half + rest + [usual] * (usual_weight - half)
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


#: Values a variable of the type takes without fuss (constraints aside).
PLAIN: dict[str, st.SearchStrategy[Value]] = {
    "float": st.one_of(st.floats(-10, 120, allow_nan=False), st.integers(-5, 120)),
    "integer": st.one_of(st.integers(-5, 120), st.sampled_from([3.0, -0.0])),
    "string": st.one_of(
        st.sampled_from(["", "a", "ab", "abc", "ac", "abcdef", "b"]), st.text("abc", max_size=6)
    ),
    "boolean": st.booleans(),
}
#: Values at or past the edge of the type.
EDGE: dict[str, st.SearchStrategy[Value]] = {
    "float": st.sampled_from(
        [-0.0, 1e300, 2.0**63, -(2.0**63), 2**63 - 1, math.nan, math.inf, -math.inf]
    ),
    "integer": st.sampled_from(
        [INT64_MAX, INT64_MIN, 1.5, -0.5, 2.0**63, -(2.0**63), 1e300, math.nan, math.inf]
    ),
    "string": st.one_of(
        st.sampled_from(["ABC", "hello world", "üñï", "a\nb"]), st.text(max_size=6)
    ),
    "boolean": st.none(),
}
ANY_VALUE: st.SearchStrategy[Value] = st.one_of(st.none(), *PLAIN.values(), *EDGE.values())


def values_for(type_name: str) -> st.SearchStrategy[Value]:
    """Mostly plain values of the type, some at its edges, a few of any type or none."""
    if type_name not in PLAIN:
        return ANY_VALUE
    return weighted((6, PLAIN[type_name]), (2, EDGE[type_name]), (1, ANY_VALUE))


TYPE_NAMES = weighted(
    (12, st.sampled_from(TYPES)), (1, st.sampled_from(["complex", "", "Integer"]))
)
NAME = weighted((10, st.sampled_from(NAMES)), (1, st.sampled_from(BAD_NAMES)))
#: Session 0 is created first and used most; 1 and 2 come and go.
SESSION = weighted((5, st.just(0)), (2, st.integers(0, SESSIONS_PER_EXAMPLE - 1)))
#: How to pick an identifier from the model: (kind, index).
PICK = st.tuples(
    weighted(
        (4, st.just("name")),
        (3, st.just("id")),
        (1, st.sampled_from(["pool", "dead", "unknown"])),
    ),
    st.integers(0, 20),
)
METADATA = weighted(
    (8, st.sampled_from([{}, {"who": "model"}, {"step": "x", "who": "again"}])),
    (1, st.just(TOO_MUCH_METADATA)),
)
#: None sends no expected version; 0 sends the right one; others are off by that much.
#: Whether a value is drawn for the picked variable's type (else: any value at all).
TYPED = weighted((3, st.just(True)), (1, st.just(False)))
VERSION_CHECK = weighted((4, st.none()), (2, st.just(0)), (1, st.sampled_from([-1, 1, 2, 100])))


@st.composite
def fitting_rules(draw: st.DrawFn, type_name: str) -> Rules:
    """Well-formed constraints for the type (a few of its values will break them)."""
    optional = st.none
    if type_name in ("float", "integer"):
        return Rules(
            min=draw(st.one_of(optional(), st.sampled_from([-5.5, 0.0, 1.0, 10.0]))),
            max=draw(st.one_of(optional(), st.sampled_from([10.0, 50.5, 100.0]))),
            choices=tuple(draw(st.lists(PLAIN[type_name], max_size=3)))
            if draw(st.integers(0, 3)) == 0
            else (),
        )
    if type_name == "string":
        return Rules(
            min_length=draw(st.one_of(optional(), st.integers(0, 2))),
            max_length=draw(st.one_of(optional(), st.integers(3, 5))),
            pattern=draw(st.one_of(optional(), st.sampled_from(["[a-z]*", "a.*", "ab?c?"]))),
            choices=tuple(draw(st.lists(PLAIN[type_name], max_size=3)))
            if draw(st.integers(0, 3)) == 0
            else (),
        )
    return Rules(choices=tuple(draw(st.lists(st.booleans(), max_size=2))))


@st.composite
def arbitrary_rules(draw: st.DrawFn, type_name: str) -> Rules:
    """Constraints of any shape: often malformed for the type."""
    numeric = type_name in ("float", "integer") or draw(st.booleans())
    textual = type_name == "string" or draw(st.booleans())
    bound = st.one_of(st.none(), st.sampled_from([-5.5, 0.0, 10.0, math.nan, math.inf]))
    length = st.one_of(st.none(), st.integers(0, 5))
    pattern = st.one_of(st.none(), st.sampled_from(["[a-z]*", "(", "[a-", "a{2,1}"]))
    return Rules(
        min=draw(bound) if numeric else None,
        max=draw(bound) if numeric else None,
        min_length=draw(length) if textual else None,
        max_length=draw(length) if textual else None,
        pattern=draw(pattern) if textual else None,
        choices=tuple(draw(st.lists(ANY_VALUE, max_size=3))),
    )


def rules_for(type_name: str) -> st.SearchStrategy[Rules]:
    """No constraints, fitting ones, or (now and then) malformed ones."""
    return weighted(
        (3, st.just(Rules())), (4, fitting_rules(type_name)), (1, arbitrary_rules(type_name))
    )


@st.composite
def registrations(draw: st.DrawFn) -> tuple[str, str, Value, Rules]:
    """(name, type, initial value, constraints): two in three well-formed (the value may
    still break the constraints), the rest drawn from everything, faults included."""
    if draw(weighted((2, st.just(True)), (1, st.just(False)))):
        type_name = draw(st.sampled_from(TYPES))
        rules = draw(st.one_of(st.just(Rules()), fitting_rules(type_name)))
        value = draw(st.sampled_from(rules.choices) if rules.choices else PLAIN[type_name])
        return draw(st.sampled_from(NAMES)), type_name, value, rules
    type_name = draw(TYPE_NAMES)
    rules = draw(rules_for(type_name))
    return draw(NAME), type_name, draw(values_for(type_name)), rules


# -- the machine ---------------------------------------------------------------------------


@dataclass
class Refusal:
    code: Code
    message: str
    error: VarstoreError


class StoreModel(RuleBasedStateMachine):
    """The store as seen over gRPC, next to a model made of dicts."""

    def __init__(self, stub: Stub) -> None:
        super().__init__()
        self.stub = stub
        prefix = f"model_{uuid.uuid4().hex[:12]}"
        self.session_ids = [f"{prefix}_{i}" for i in range(SESSIONS_PER_EXAMPLE)]
        self.never_created = f"{prefix}_never"
        self.sessions = {sid: ModelSession() for sid in self.session_ids}
        self.refusal: Refusal | None = None

    # -- helpers ------------------------------------------------------------------------

    def outcome(self, call: Callable[[], T], refusals: set[Code]) -> T | None:
        """The answer when the model expects success (no refusals), or None after checking
        the server refused with one of the expected codes and a plain message."""
        expected = sorted(code.name for code in refusals) or ["success"]
        try:
            answer = call()
        except grpc.RpcError as failure:
            code: Code = failure.code()
            message: str = failure.details() or ""
            assert code in refusals, f"expected {expected}, got {code.name}: {message}"
            assert message and "Traceback" not in message and "internal error" not in message
            self.refusal = Refusal(code, message, error_from_rpc_error(failure))
            return None
        assert not refusals, f"expected {expected}, got success: {answer}"
        return answer

    def session(self, index: int) -> tuple[str, ModelSession]:
        sid = self.session_ids[index]
        return sid, self.sessions[sid]

    def identifier(self, session: ModelSession, pick: tuple[str, int]) -> str:
        kind, index = pick
        live = session.by_name()
        if kind in ("name", "id") and live:
            variable = live[index % len(live)]
            return variable.name if kind == "name" else variable.id
        if kind == "dead":
            dead = sorted(session.issued_ids - {v.id for v in live})
            if dead:
                return dead[index % len(dead)]
        if kind == "pool":
            return NAMES[index % len(NAMES)]
        return UNKNOWN[index % len(UNKNOWN)]

    @staticmethod
    def check_variable(got: pb.Variable, want: ModelVariable) -> None:
        assert (got.id, got.name, got.type) == (want.id, want.name, want.type)
        kind = got.value.WhichOneof("kind")
        assert kind == KIND[want.type], f"{want.name}: {kind} for a {want.type}"
        assert same(getattr(got.value, kind), want.value), (got.value, want.value)
        assert got.version == want.version, (want.name, got.version, want.version)
        assert dict(got.metadata) == want.metadata
        assert got.created_position == want.created_position
        if want.position is not None:
            assert got.position == want.position
        # Choices come back as values of the variable's type (an int choice of a float is 1.0).
        kept = Rules(
            want.rules.min,
            want.rules.max,
            want.rules.min_length,
            want.rules.max_length,
            want.rules.pattern,
            tuple(as_type(want.type, c) for c in want.rules.choices),
        )
        assert got.constraints == kept.to_proto()

    def change(
        self, variable: ModelVariable, value: Py, metadata: dict[str, str], at: int | None
    ) -> None:
        variable.value = value
        variable.version += 1
        variable.metadata.update(metadata)
        variable.position = at

    # -- sessions -----------------------------------------------------------------------

    @initialize()
    def start_with_one_live_session_holding_one_variable_of_each_type(self) -> None:
        self.create_session(0)
        # At positions 2 and 3, "a" and "b" get the ids "var_a_2" and "var_b_3", which are
        # also names in NAMES: the variable NAMED "var_a_2" is never found by that name,
        # because an id is tried first ("var_b_3" may be registered later, too).
        seed: list[tuple[str, str, Value, Rules]] = [
            ("a", "integer", 5, Rules(min=0, max=100)),
            ("b", "float", 0.5, Rules()),
            ("c.d", "string", "abc", Rules(max_length=5, pattern="[a-z]*")),
            ("_g", "boolean", True, Rules()),
            ("var_a_2", "string", "shadowed", Rules()),
        ]
        for registration in seed:
            self.register_variable(0, registration, {})

    @rule(index=SESSION)
    def create_session(self, index: int) -> None:
        sid, session = self.session(index)
        answer = self.outcome(
            lambda: self.stub.CreateSession(pb.CreateSessionRequest(session_id=sid)),
            {ALREADY_EXISTS} if session.live else set(),
        )
        if answer is None:
            return
        session.position += 1
        session.live = True
        session.variables.clear()
        assert answer.header.position == answer.session.position == session.position
        assert answer.session.variable_count == 0

    @rule(index=SESSION)
    def delete_session(self, index: int) -> None:
        sid, session = self.session(index)
        answer = self.outcome(
            lambda: self.stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid)),
            set() if session.live else {NOT_FOUND},
        )
        if answer is None:
            return
        session.position += 1
        session.live = False
        session.variables.clear()
        assert answer.header.position == session.position

    @rule()
    def list_sessions(self) -> None:
        # Every page: the shared server keeps the sessions of earlier examples, and the
        # random id prefixes sort this example's anywhere among them.
        listed: dict[str, pb.Session] = {}
        token = ""
        while True:
            page = self.stub.ListSessions(pb.ListSessionsRequest(page_token=token))
            listed.update((s.id, s) for s in page.sessions)
            token = page.next_page_token
            if not token:
                break
        for sid, session in self.sessions.items():
            assert (sid in listed) == session.live
            if session.live:
                assert listed[sid].position == session.position

    # -- variables ----------------------------------------------------------------------

    @rule(index=SESSION, registration=registrations(), metadata=METADATA)
    def register_variable(
        self, index: int, registration: tuple[str, str, Value, Rules], metadata: dict[str, str]
    ) -> None:
        name, type_name, value, rules = registration
        sid, session = self.session(index)
        refusals: set[Code] = set()
        stored: Py | None = None
        if not session.live:
            refusals.add(NOT_FOUND)
        if len(metadata) > MAX_METADATA_ENTRIES:
            refusals.add(RESOURCE_EXHAUSTED)
        if not name_is_valid(name) or type_name not in TYPES or not rules.make_sense_for(type_name):
            refusals.add(INVALID_ARGUMENT)
        else:
            try:
                stored = accepted(type_name, rules, value)
            except Refused:
                refusals.add(INVALID_ARGUMENT)
        if session.live and name in session.variables:
            refusals.add(ALREADY_EXISTS)
        answer = self.outcome(
            lambda: self.stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id=sid,
                    name=name,
                    type=type_name,
                    initial_value=to_value(value),
                    constraints=rules.to_proto(),
                    metadata=metadata,
                )
            ),
            refusals,
        )
        if answer is None:
            return
        assert stored is not None
        session.position += 1
        assert answer.variable_id == answer.variable.id
        assert answer.variable_id.startswith(f"var_{name}_")
        assert answer.variable_id not in session.issued_ids, "a variable id was given out twice"
        session.issued_ids.add(answer.variable_id)
        made = ModelVariable(
            id=answer.variable_id,
            name=name,
            type=type_name,
            value=stored,
            version=0,
            rules=rules,
            metadata=dict(metadata),
            created_position=session.position,
            position=session.position,
        )
        session.variables[name] = made
        assert answer.header.position == session.position
        self.check_variable(answer.variable, made)

    @rule(
        index=SESSION,
        pick=PICK,
        value=ANY_VALUE,
        typed=TYPED,
        data=st.data(),
        version_check=VERSION_CHECK,
        metadata=METADATA,
    )
    def set_variable(
        self,
        index: int,
        pick: tuple[str, int],
        value: Value,
        typed: bool,
        data: st.DataObject,
        version_check: int | None,
        metadata: dict[str, str],
    ) -> None:
        sid, session = self.session(index)
        identifier = self.identifier(session, pick)
        target = session.find(identifier) if session.live else None
        if typed and target is not None:
            value = data.draw(values_for(target.type), label="typed value")
        self.set_one(sid, identifier, value, version_check, metadata)

    @precondition(lambda self: any(s.variables for s in self.sessions.values()))
    @rule(
        data=st.data(),
        by_id=st.booleans(),
        version_check=VERSION_CHECK,
        metadata=METADATA,
    )
    def set_a_live_variable(
        self,
        data: st.DataObject,
        by_id: bool,
        version_check: int | None,
        metadata: dict[str, str],
    ) -> None:
        sid = data.draw(
            st.sampled_from([sid for sid, s in self.sessions.items() if s.variables]),
            label="session",
        )
        target = data.draw(st.sampled_from(self.sessions[sid].by_name()), label="variable")
        value = data.draw(values_for(target.type), label="value")
        self.set_one(sid, target.id if by_id else target.name, value, version_check, metadata)

    def set_one(
        self,
        sid: str,
        identifier: str,
        value: Value,
        version_check: int | None,
        metadata: dict[str, str],
    ) -> None:
        """SetVariable, checked against the model."""
        session = self.sessions[sid]
        target = session.find(identifier) if session.live else None
        # version_check: None sends none; 0 sends the right version; others are off by that.
        expected_version = None
        if version_check is not None:
            expected_version = (target.version if target else 0) + version_check
        refusals: set[Code] = set()
        stored: Py | None = None
        if session.live and len(metadata) > MAX_METADATA_ENTRIES:
            refusals.add(RESOURCE_EXHAUSTED)
        if target is None:
            refusals.add(NOT_FOUND)
        else:
            if version_check:  # a negative version is out of range, not a mismatch
                refusals.add(ABORTED if expected_version >= 0 else INVALID_ARGUMENT)
            try:
                stored = accepted(target.type, target.rules, value)
            except Refused:
                refusals.add(INVALID_ARGUMENT)
        answer = self.outcome(
            lambda: self.stub.SetVariable(
                pb.SetVariableRequest(
                    session_id=sid,
                    variable_identifier=identifier,
                    value=to_value(value),
                    metadata=metadata,
                    expected_version=expected_version,
                )
            ),
            refusals,
        )
        if answer is None:
            self.check_refusal(session, target)
            return
        assert target is not None and stored is not None
        session.position += 1
        self.change(target, stored, metadata, session.position)
        assert answer.header.position == session.position
        assert answer.new_version == target.version
        self.check_variable(answer.variable, target)

    def check_refusal(self, session: ModelSession, target: ModelVariable | None) -> None:
        """An ABORTED answer names the version (or position) actually found."""
        assert self.refusal is not None
        if self.refusal.code != ABORTED:
            return
        info = self.refusal.error.info
        if "current_version" in info:
            assert target is not None
            assert info["current_version"] == str(target.version)
            assert f"version {target.version}" in self.refusal.message
        else:
            assert info["current_position"] == str(session.position)
            assert f"position {session.position}" in self.refusal.message

    @rule(
        index=SESSION,
        picks=st.lists(st.tuples(PICK, ANY_VALUE, TYPED), max_size=4),
        atomic=st.booleans(),
        position_check=st.one_of(st.none(), st.just(0), st.sampled_from([-1, 1])),
        metadata=METADATA,
        data=st.data(),
    )
    def set_variables(
        self,
        index: int,
        picks: list[tuple[tuple[str, int], Value, bool]],
        atomic: bool,
        position_check: int | None,
        metadata: dict[str, str],
        data: st.DataObject,
    ) -> None:
        sid, session = self.session(index)
        updates: dict[str, Value] = {}
        claimed: dict[str, str] = {}  # variable id -> the identifier naming it
        duplicates: set[str] = set()
        for pick, raw, typed in picks:
            identifier = self.identifier(session, pick)
            target = session.find(identifier) if session.live else None
            value = raw
            if typed and target is not None:
                value = data.draw(values_for(target.type), label="typed value")
            if target is not None and claimed.get(target.id, identifier) != identifier:
                if not atomic:
                    # Two identifiers for one variable, applied one after the other in an
                    # order the contract leaves open: not something the model can predict.
                    continue
                duplicates.update({identifier, claimed[target.id]})
            if target is not None:
                claimed.setdefault(target.id, identifier)
            updates[identifier] = value
        expected_position = None
        if position_check is not None:
            expected_position = session.position + position_check
        failing: set[str] = set()
        good: dict[str, tuple[ModelVariable, Py]] = {}
        refusals: set[Code] = set()
        if not session.live:
            refusals.add(NOT_FOUND)
        else:
            if len(metadata) > MAX_METADATA_ENTRIES:
                refusals.add(RESOURCE_EXHAUSTED)
            if position_check:  # a negative position is out of range, not a mismatch
                refusals.add(ABORTED if expected_position >= 0 else INVALID_ARGUMENT)
            for identifier, value in updates.items():
                target = session.find(identifier)
                try:
                    if target is None:
                        raise Refused("not found")
                    good[identifier] = (target, accepted(target.type, target.rules, value))
                except Refused:
                    failing.add(identifier)
            if atomic and (failing or duplicates):
                refusals.add(INVALID_ARGUMENT)
        answer = self.outcome(
            lambda: self.stub.SetVariables(
                pb.SetVariablesRequest(
                    session_id=sid,
                    updates={k: to_value(v) for k, v in updates.items()},
                    metadata=metadata,
                    atomic=atomic,
                    expected_position=expected_position,
                )
            ),
            refusals,
        )
        if answer is None:
            self.check_refusal(session, None)
            if self.refusal is not None and self.refusal.code == INVALID_ARGUMENT:
                assert isinstance(self.refusal.error, ValidationError)
                fields = set(self.refusal.error.violations)
                if duplicates:
                    assert fields, "an atomic batch refused with no violation"
                    assert failing <= fields <= failing | duplicates, (fields, failing)
                else:
                    assert fields == failing, (fields, failing)
            return
        if atomic:
            if good:
                session.position += 1
            for target, stored in good.values():
                self.change(target, stored, metadata, session.position)
            assert dict(answer.errors) == {}
        else:
            first = session.position + 1
            session.position += len(good)
            for target, stored in good.values():
                self.change(target, stored, metadata, None if len(good) > 1 else first)
            assert set(answer.errors) == failing
            self.check_separate_events(sid, good, range(first, session.position + 1))
        assert answer.header.position == session.position
        assert dict(answer.new_versions) == {k: t.version for k, (t, _) in good.items()}

    def check_separate_events(
        self, sid: str, good: dict[str, tuple[ModelVariable, Py]], positions: range
    ) -> None:
        """Each change of a non-atomic batch is its own event: one position each."""
        if len(good) < 2:
            return
        got = self.stub.GetVariables(
            pb.GetVariablesRequest(session_id=sid, variable_identifiers=list(good))
        )
        assert sorted(got.variables[k].position for k in good) == list(positions)

    @rule(index=SESSION, pick=PICK, version_check=VERSION_CHECK, metadata=METADATA)
    def delete_variable(
        self,
        index: int,
        pick: tuple[str, int],
        version_check: int | None,
        metadata: dict[str, str],
    ) -> None:
        sid, session = self.session(index)
        identifier = self.identifier(session, pick)
        target = session.find(identifier) if session.live else None
        expected_version = None
        if version_check is not None:
            expected_version = (target.version if target else 0) + version_check
        refusals: set[Code] = set()
        if session.live and len(metadata) > MAX_METADATA_ENTRIES:
            refusals.add(RESOURCE_EXHAUSTED)
        if target is None:
            refusals.add(NOT_FOUND)
        elif version_check:  # a negative version is out of range, not a mismatch
            refusals.add(ABORTED if expected_version >= 0 else INVALID_ARGUMENT)
        answer = self.outcome(
            lambda: self.stub.DeleteVariable(
                pb.DeleteVariableRequest(
                    session_id=sid,
                    variable_identifier=identifier,
                    expected_version=expected_version,
                    metadata=metadata,
                )
            ),
            refusals,
        )
        if answer is None:
            self.check_refusal(session, target)
            return
        assert target is not None
        session.position += 1
        del session.variables[target.name]
        assert answer.header.position == session.position

    # -- reads and bad input --------------------------------------------------------------

    @rule(index=SESSION, pick=PICK)
    def get_variable(self, index: int, pick: tuple[str, int]) -> None:
        sid, session = self.session(index)
        identifier = self.identifier(session, pick)
        target = session.find(identifier) if session.live else None
        answer = self.outcome(
            lambda: self.stub.GetVariable(
                pb.GetVariableRequest(session_id=sid, variable_identifier=identifier)
            ),
            set() if target is not None else {NOT_FOUND},
        )
        if answer is None:
            return
        assert target is not None
        assert answer.header.position == session.position
        self.check_variable(answer.variable, target)

    @rule(index=SESSION, picks=st.lists(PICK, max_size=5))
    def get_variables(self, index: int, picks: list[tuple[str, int]]) -> None:
        sid, session = self.session(index)
        asked = [self.identifier(session, pick) for pick in picks]
        answer = self.outcome(
            lambda: self.stub.GetVariables(
                pb.GetVariablesRequest(session_id=sid, variable_identifiers=asked)
            ),
            set() if session.live else {NOT_FOUND},
        )
        if answer is None:
            return
        assert answer.header.position == session.position
        assert list(answer.missing_variables) == [i for i in asked if session.find(i) is None]
        found = {i: v for i in asked if (v := session.find(i)) is not None}
        assert set(answer.variables) == set(found)
        for identifier, want in found.items():
            self.check_variable(answer.variables[identifier], want)

    @rule(index=SESSION, pattern=st.sampled_from(["", "*", "a*", "?", "[ab]*", "var_*", "*.*"]))
    def list_variables_matching(self, index: int, pattern: str) -> None:
        sid, session = self.session(index)
        answer = self.outcome(
            lambda: self.stub.ListVariables(
                pb.ListVariablesRequest(session_id=sid, pattern=pattern)
            ),
            set() if session.live else {NOT_FOUND},
        )
        if answer is None:
            return
        want = [v for v in session.by_name() if not pattern or fnmatch.fnmatchcase(v.name, pattern)]
        assert [v.name for v in answer.variables] == [v.name for v in want]

    @rule(
        rpc=st.sampled_from(
            [
                "GetSession",
                "GetVariable",
                "SetVariable",
                "SetVariables",
                "ListVariables",
                "RegisterVariable",
                "DeleteVariable",
            ]
        )
    )
    def call_a_session_that_never_existed(self, rpc: str) -> None:
        sid = self.never_created
        calls: dict[str, Callable[[], object]] = {
            "GetSession": lambda: self.stub.GetSession(pb.GetSessionRequest(session_id=sid)),
            "GetVariable": lambda: self.stub.GetVariable(
                pb.GetVariableRequest(session_id=sid, variable_identifier="a")
            ),
            "SetVariable": lambda: self.stub.SetVariable(
                pb.SetVariableRequest(session_id=sid, variable_identifier="a", value=to_value(1))
            ),
            "SetVariables": lambda: self.stub.SetVariables(
                pb.SetVariablesRequest(session_id=sid, updates={"a": to_value(1)}, atomic=True)
            ),
            "ListVariables": lambda: self.stub.ListVariables(
                pb.ListVariablesRequest(session_id=sid)
            ),
            "RegisterVariable": lambda: self.stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id=sid, name="a", type="integer", initial_value=to_value(1)
                )
            ),
            "DeleteVariable": lambda: self.stub.DeleteVariable(
                pb.DeleteVariableRequest(session_id=sid, variable_identifier="a")
            ),
        }
        self.outcome(calls[rpc], {NOT_FOUND})
        assert self.refusal is not None and sid in self.refusal.message

    # -- the invariant ----------------------------------------------------------------------

    @invariant()
    def every_session_matches_the_model(self) -> None:
        for sid, session in self.sessions.items():
            got = self.outcome(
                functools.partial(self.stub.GetSession, pb.GetSessionRequest(session_id=sid)),
                set() if session.live else {NOT_FOUND},
            )
            if got is None:
                continue
            assert got.header.position == got.session.position == session.position
            assert got.session.variable_count == len(session.variables)
            listed = self.stub.ListVariables(pb.ListVariablesRequest(session_id=sid))
            assert listed.header.position == session.position
            assert [v.name for v in listed.variables] == sorted(session.variables)
            for variable, want in zip(listed.variables, session.by_name(), strict=True):
                self.check_variable(variable, want)


# -- the test ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(BACKENDS))
def model_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stub, Store]]:
    """ONE in-process server on one backend, shared by every example of the machine."""
    recorder = BACKENDS[request.param](tmp_path_factory.mktemp(request.param))
    with in_process_server(Store(recorder)) as running, stub_for(running.address) as stub:
        yield stub, running.store


def test_the_store_over_grpc_behaves_like_a_model_made_of_dicts(
    model_server: tuple[Stub, Store],
) -> None:
    stub, store = model_server

    class StoreModelOnTheSharedServer(StoreModel):
        def __init__(self) -> None:
            super().__init__(stub)

        def teardown(self) -> None:
            # What the server serves is exactly the fold of what its log holds.
            folded: dict[str, SessionState] = {}
            for event in store.recorder.read_all():
                folded[event.session_id] = apply_event(folded.get(event.session_id), event)
            assert {sid: store.published(sid) for sid in folded} == folded

    run_state_machine_as_test(
        StoreModelOnTheSharedServer,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        ),
    )
