"""Bad input for every RPC, over a real channel to a real in-process server.

Each case checks the exact status code, that the message is plain English naming the
variable, session or limit at fault, and, for writes, that nothing changed: the session's
position and every variable (value, version, position, metadata) are as they were.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from varstore.types import ValidationError, VarstoreError, VersionConflict
from varstore.types.status import error_from_rpc_error
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub
#: Makes one call on the stub for the given session id (and returns its response).
Call = Callable[[Stub, str], object]

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
ABORTED = grpc.StatusCode.ABORTED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

UNKNOWN_SESSION = "no_such_session"
LONG_NAME = "n" * 2000
TOO_MUCH_METADATA = {f"key{i}": "value" for i in range(65)}
ONE_HUGE_METADATA_ENTRY = {"reason": "x" * 4097}


# -- helpers ------------------------------------------------------------------------------


def integer(n: int) -> pb.Value:
    return pb.Value(integer_value=n)


def number(f: float) -> pb.Value:
    return pb.Value(float_value=f)


def text(s: str) -> pb.Value:
    return pb.Value(string_value=s)


def boolean(b: bool) -> pb.Value:
    return pb.Value(boolean_value=b)


#: The variables every seeded session starts with: name -> (type, value, constraints).
SEED: dict[str, tuple[str, pb.Value, pb.Constraints]] = {
    "count": ("integer", integer(5), pb.Constraints(min=0, max=100)),
    "ratio": ("float", number(0.5), pb.Constraints()),
    "label": ("string", text("abc"), pb.Constraints(max_length=8, pattern="[a-z]*")),
    "flag": ("boolean", boolean(True), pb.Constraints()),
    "mode": ("string", text("fast"), pb.Constraints(choices=[text("fast"), text("slow")])),
}


@dataclass(frozen=True)
class Refusal:
    """A call that failed: its status code, message and the error it stands for."""

    code: grpc.StatusCode
    message: str
    error: VarstoreError


def refused(call: Callable[[], object]) -> Refusal:
    """Make ``call``, which must fail with a gRPC status, and describe the failure."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    failure = caught.value
    code: grpc.StatusCode = failure.code()
    message: str = failure.details() or ""
    return Refusal(code, message, error_from_rpc_error(failure))


def assert_plain_english(message: str, *mentions: str) -> None:
    """The message is a readable sentence (no traceback, no class names, no internals)
    and names every one of ``mentions`` (a variable, a session, a limit)."""
    assert message, "the message is empty"
    assert message[0].isalnum() or message[0] == "'", message
    assert " " in message, message
    for jargon in ("Traceback", "Error", "Exception", "internal error", "Violation", "<"):
        assert jargon not in message, f"{jargon!r} in {message!r}"
    for mention in mentions:
        assert mention in message, f"{mention!r} not in {message!r}"


@dataclass(frozen=True)
class Snapshot:
    """Everything a refused write must leave as it was."""

    position: int
    session: pb.Session
    variables: list[pb.Variable]


def snapshot(stub: Stub, session_id: str) -> Snapshot:
    got = stub.GetSession(pb.GetSessionRequest(session_id=session_id))
    listed = stub.ListVariables(pb.ListVariablesRequest(session_id=session_id))
    assert listed.header.position == got.header.position == got.session.position
    return Snapshot(got.header.position, got.session, list(listed.variables))


def variable(stub: Stub, session_id: str, identifier: str) -> pb.Variable:
    got = stub.GetVariable(
        pb.GetVariableRequest(session_id=session_id, variable_identifier=identifier)
    )
    return got.variable


def all_sessions(stub: Stub) -> Iterator[pb.Session]:
    """Every live session, page by page."""
    token = ""
    while True:
        page = stub.ListSessions(pb.ListSessionsRequest(page_size=1000, page_token=token))
        yield from page.sessions
        token = page.next_page_token
        if not token:
            return


def assert_session_is_unknown(stub: Stub, session_id: str) -> None:
    assert refused(lambda: stub.GetSession(pb.GetSessionRequest(session_id=session_id))).code == (
        NOT_FOUND
    )
    assert session_id not in {s.id for s in all_sessions(stub)}


@pytest.fixture
def seeded(stub: Stub, session_id: str) -> str:
    """A new session holding the :data:`SEED` variables, each at version 0."""
    for name, (type_name, value, constraints) in SEED.items():
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=session_id,
                name=name,
                type=type_name,
                initial_value=value,
                constraints=constraints,
            )
        )
    return session_id


# -- the protobuf runtime -----------------------------------------------------------------


def test_the_protobuf_runtime_refuses_an_integer_value_of_two_to_the_63() -> None:
    # So 2**63 can only reach the server as a float_value; see the float cases below.
    with pytest.raises(ValueError):
        pb.Value(integer_value=2**63)
    with pytest.raises(ValueError):
        pb.Value(integer_value=-(2**63) - 1)


# -- unknown session: NOT_FOUND for every session-scoped RPC ---------------------------------


def _register(session_id: str, name: str = "fresh") -> pb.RegisterVariableRequest:
    return pb.RegisterVariableRequest(
        session_id=session_id, name=name, type="integer", initial_value=integer(1)
    )


UNKNOWN_SESSION_CALLS = [
    pytest.param(
        lambda stub, sid: stub.GetSession(pb.GetSessionRequest(session_id=sid)), id="GetSession"
    ),
    pytest.param(
        lambda stub, sid: stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid)),
        id="DeleteSession",
    ),
    pytest.param(lambda stub, sid: stub.RegisterVariable(_register(sid)), id="RegisterVariable"),
    pytest.param(
        lambda stub, sid: stub.GetVariable(
            pb.GetVariableRequest(session_id=sid, variable_identifier="count")
        ),
        id="GetVariable",
    ),
    pytest.param(
        lambda stub, sid: stub.SetVariable(
            pb.SetVariableRequest(session_id=sid, variable_identifier="count", value=integer(1))
        ),
        id="SetVariable",
    ),
    pytest.param(
        lambda stub, sid: stub.GetVariables(
            pb.GetVariablesRequest(session_id=sid, variable_identifiers=["count"])
        ),
        id="GetVariables",
    ),
    pytest.param(
        lambda stub, sid: stub.SetVariables(
            pb.SetVariablesRequest(session_id=sid, updates={"count": integer(1)}, atomic=True)
        ),
        id="SetVariables-atomic",
    ),
    pytest.param(
        lambda stub, sid: stub.SetVariables(
            pb.SetVariablesRequest(session_id=sid, updates={"count": integer(1)}, atomic=False)
        ),
        id="SetVariables-non-atomic",
    ),
    pytest.param(
        lambda stub, sid: stub.ListVariables(pb.ListVariablesRequest(session_id=sid)),
        id="ListVariables",
    ),
    pytest.param(
        lambda stub, sid: stub.DeleteVariable(
            pb.DeleteVariableRequest(session_id=sid, variable_identifier="count")
        ),
        id="DeleteVariable",
    ),
]


@pytest.mark.parametrize("call", UNKNOWN_SESSION_CALLS)
def test_a_session_scoped_rpc_on_an_unknown_session_is_not_found_and_creates_nothing(
    stub: Stub, call: Call
) -> None:
    failure = refused(lambda: call(stub, UNKNOWN_SESSION))
    assert failure.code == NOT_FOUND
    assert_plain_english(failure.message, UNKNOWN_SESSION)
    assert failure.error.info.get("session_id") == UNKNOWN_SESSION
    assert_session_is_unknown(stub, UNKNOWN_SESSION)


@pytest.mark.parametrize("call", UNKNOWN_SESSION_CALLS)
def test_a_session_scoped_rpc_on_a_deleted_session_is_not_found(
    stub: Stub, seeded: str, call: Call
) -> None:
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=seeded))
    failure = refused(lambda: call(stub, seeded))
    assert failure.code == NOT_FOUND
    assert_plain_english(failure.message, seeded)
    assert_session_is_unknown(stub, seeded)


@pytest.mark.parametrize(
    "session_id_given",
    [pytest.param("", id="empty-id"), pytest.param(LONG_NAME, id="2000-character-id")],
)
def test_looking_up_an_empty_or_overlong_session_id_is_not_found(
    stub: Stub, session_id_given: str
) -> None:
    failure = refused(lambda: stub.GetSession(pb.GetSessionRequest(session_id=session_id_given)))
    assert failure.code == NOT_FOUND
    assert_plain_english(failure.message, "session", "not found")


# -- sessions: CreateSession, DeleteSession, ListSessions ----------------------------------


def test_creating_an_existing_session_is_already_exists_and_changes_nothing(
    stub: Stub, seeded: str
) -> None:
    before = snapshot(stub, seeded)
    failure = refused(
        lambda: stub.CreateSession(
            pb.CreateSessionRequest(session_id=seeded, metadata={"again": "yes"})
        )
    )
    assert failure.code == ALREADY_EXISTS
    assert_plain_english(failure.message, seeded, "already exists")
    assert snapshot(stub, seeded) == before


BAD_NEW_SESSIONS = [
    pytest.param(
        pb.CreateSessionRequest(session_id=LONG_NAME),
        INVALID_ARGUMENT,
        ("2000", "128"),
        id="2000-character-id",
    ),
    pytest.param(
        pb.CreateSessionRequest(session_id="has space"),
        INVALID_ARGUMENT,
        ("has space",),
        id="id-with-a-space",
    ),
    pytest.param(
        pb.CreateSessionRequest(session_id="-leading-dash"),
        INVALID_ARGUMENT,
        ("-leading-dash",),
        id="id-starting-with-a-dash",
    ),
    pytest.param(
        pb.CreateSessionRequest(session_id="new_ttl", ttl_seconds=-1),
        INVALID_ARGUMENT,
        ("ttl_seconds", "-1"),
        id="negative-ttl",
    ),
    pytest.param(
        pb.CreateSessionRequest(session_id="new_meta", metadata=TOO_MUCH_METADATA),
        RESOURCE_EXHAUSTED,
        ("65", "64"),
        id="65-metadata-entries",
    ),
    pytest.param(
        pb.CreateSessionRequest(session_id="new_big", metadata=ONE_HUGE_METADATA_ENTRY),
        RESOURCE_EXHAUSTED,
        ("reason", "4096"),
        id="metadata-entry-over-4096-bytes",
    ),
]


@pytest.mark.parametrize(("request_", "code", "mentions"), BAD_NEW_SESSIONS)
def test_a_bad_new_session_is_refused_and_not_created(
    stub: Stub, request_: pb.CreateSessionRequest, code: grpc.StatusCode, mentions: tuple[str, ...]
) -> None:
    failure = refused(lambda: stub.CreateSession(request_))
    assert failure.code == code
    assert_plain_english(failure.message, *mentions)
    assert_session_is_unknown(stub, request_.session_id)


def test_deleting_a_session_twice_is_not_found_the_second_time(stub: Stub, session_id: str) -> None:
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id))
    failure = refused(lambda: stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id)))
    assert failure.code == NOT_FOUND
    assert_plain_english(failure.message, session_id, "not found")


@pytest.mark.parametrize(
    ("metadata", "mentions"),
    [
        pytest.param(TOO_MUCH_METADATA, ("65", "64"), id="65-metadata-entries"),
        pytest.param(ONE_HUGE_METADATA_ENTRY, ("4096",), id="metadata-entry-over-4096-bytes"),
    ],
)
def test_deleting_a_session_with_too_much_metadata_is_resource_exhausted_and_keeps_it(
    stub: Stub, seeded: str, metadata: dict[str, str], mentions: tuple[str, ...]
) -> None:
    before = snapshot(stub, seeded)
    failure = refused(
        lambda: stub.DeleteSession(pb.DeleteSessionRequest(session_id=seeded, metadata=metadata))
    )
    assert failure.code == RESOURCE_EXHAUSTED
    assert_plain_english(failure.message, *mentions)
    assert snapshot(stub, seeded) == before


def test_listing_sessions_with_a_negative_page_size_is_invalid_argument(stub: Stub) -> None:
    failure = refused(lambda: stub.ListSessions(pb.ListSessionsRequest(page_size=-1)))
    assert failure.code == INVALID_ARGUMENT
    assert_plain_english(failure.message, "page_size", "-1")


# -- RegisterVariable ----------------------------------------------------------------------


def _new(
    name: str = "fresh",
    type_name: str = "integer",
    value: pb.Value | None = None,
    constraints: pb.Constraints | None = None,
    metadata: dict[str, str] | None = None,
) -> Callable[[str], pb.RegisterVariableRequest]:
    def make(session_id: str) -> pb.RegisterVariableRequest:
        return pb.RegisterVariableRequest(
            session_id=session_id,
            name=name,
            type=type_name,
            initial_value=integer(1) if value is None else value,
            constraints=constraints or pb.Constraints(),
            metadata=metadata or {},
        )

    return make


BAD_REGISTRATIONS = [
    # names
    pytest.param(_new(name=""), INVALID_ARGUMENT, ("name", "empty"), id="empty-name"),
    pytest.param(_new(name=LONG_NAME), INVALID_ARGUMENT, ("2000", "128"), id="2000-character-name"),
    pytest.param(_new(name="n" * 129), INVALID_ARGUMENT, ("129", "128"), id="129-character-name"),
    pytest.param(_new(name="has space"), INVALID_ARGUMENT, ("has space",), id="name-with-a-space"),
    pytest.param(_new(name="-dash"), INVALID_ARGUMENT, ("-dash",), id="name-starting-with-a-dash"),
    pytest.param(_new(name=".dot"), INVALID_ARGUMENT, (".dot",), id="name-starting-with-a-dot"),
    pytest.param(
        _new(name=":colon"), INVALID_ARGUMENT, (":colon",), id="name-starting-with-a-colon"
    ),
    pytest.param(_new(name="a/b"), INVALID_ARGUMENT, ("a/b",), id="name-with-a-slash"),
    pytest.param(
        _new(name="count"), ALREADY_EXISTS, ("count", "already exists"), id="existing-name"
    ),
    # types
    pytest.param(
        _new(type_name="complex"), INVALID_ARGUMENT, ("fresh", "complex"), id="unknown-type"
    ),
    pytest.param(_new(type_name=""), INVALID_ARGUMENT, ("fresh", "type"), id="empty-type"),
    pytest.param(
        _new(type_name="Integer"), INVALID_ARGUMENT, ("fresh", "Integer"), id="type-in-capitals"
    ),
    # initial values
    pytest.param(
        _new(value=pb.Value()), INVALID_ARGUMENT, ("fresh", "value"), id="missing-initial-value"
    ),
    pytest.param(
        _new(value=text("7")), INVALID_ARGUMENT, ("fresh", "integer"), id="string-into-integer"
    ),
    pytest.param(
        _new(value=number(1.5)), INVALID_ARGUMENT, ("fresh", "1.5"), id="float-1.5-into-integer"
    ),
    pytest.param(
        _new(value=boolean(True)), INVALID_ARGUMENT, ("fresh", "integer"), id="bool-into-integer"
    ),
    pytest.param(
        _new(type_name="float", value=boolean(False)),
        INVALID_ARGUMENT,
        ("fresh", "float"),
        id="bool-into-float",
    ),
    pytest.param(
        _new(type_name="float", value=number(math.nan)),
        INVALID_ARGUMENT,
        ("fresh", "nan"),
        id="nan-into-float",
    ),
    pytest.param(
        _new(type_name="float", value=number(math.inf)),
        INVALID_ARGUMENT,
        ("fresh", "inf"),
        id="infinity-into-float",
    ),
    pytest.param(
        _new(type_name="float", value=number(-math.inf)),
        INVALID_ARGUMENT,
        ("fresh", "-inf"),
        id="minus-infinity-into-float",
    ),
    pytest.param(
        _new(value=number(2.0**63)),
        INVALID_ARGUMENT,
        ("fresh", "64-bit"),
        id="two-to-the-63-as-float-into-integer",
    ),
    pytest.param(
        _new(type_name="boolean", value=integer(1)),
        INVALID_ARGUMENT,
        ("fresh", "boolean"),
        id="integer-into-boolean",
    ),
    pytest.param(
        _new(type_name="string", value=integer(1)),
        INVALID_ARGUMENT,
        ("fresh", "string"),
        id="integer-into-string",
    ),
    # malformed constraints
    pytest.param(
        _new(constraints=pb.Constraints(min=10, max=1)),
        INVALID_ARGUMENT,
        ("fresh", "10", "1"),
        id="min-above-max",
    ),
    pytest.param(
        _new(type_name="string", value=text("a"), constraints=pb.Constraints(pattern="(")),
        INVALID_ARGUMENT,
        ("fresh", "'('"),
        id="bad-regex",
    ),
    pytest.param(
        _new(type_name="string", value=text("a"), constraints=pb.Constraints(pattern="a" * 1001)),
        INVALID_ARGUMENT,
        ("fresh", "1000"),
        id="regex-over-1000-characters",
    ),
    pytest.param(
        _new(constraints=pb.Constraints(min_length=1)),
        INVALID_ARGUMENT,
        ("fresh", "min_length", "integer"),
        id="min-length-on-an-integer",
    ),
    pytest.param(
        _new(type_name="string", value=text("a"), constraints=pb.Constraints(min=0)),
        INVALID_ARGUMENT,
        ("fresh", "min", "string"),
        id="min-on-a-string",
    ),
    pytest.param(
        _new(type_name="boolean", value=boolean(True), constraints=pb.Constraints(pattern="t")),
        INVALID_ARGUMENT,
        ("fresh", "pattern", "boolean"),
        id="pattern-on-a-boolean",
    ),
    pytest.param(
        _new(
            type_name="string",
            value=text("abc"),
            constraints=pb.Constraints(min_length=5, max_length=2),
        ),
        INVALID_ARGUMENT,
        ("fresh", "5", "2"),
        id="min-length-above-max-length",
    ),
    pytest.param(
        _new(constraints=pb.Constraints(choices=[integer(1), text("two")])),
        INVALID_ARGUMENT,
        ("fresh", "two"),
        id="string-choice-for-an-integer",
    ),
    pytest.param(
        _new(constraints=pb.Constraints(choices=[integer(1), number(1.5)])),
        INVALID_ARGUMENT,
        ("fresh", "1.5"),
        id="fractional-choice-for-an-integer",
    ),
    pytest.param(
        _new(
            type_name="boolean",
            value=boolean(True),
            constraints=pb.Constraints(choices=[integer(1)]),
        ),
        INVALID_ARGUMENT,
        ("fresh", "boolean"),
        id="integer-choice-for-a-boolean",
    ),
    pytest.param(
        _new(constraints=pb.Constraints(choices=[integer(1), pb.Value()])),
        INVALID_ARGUMENT,
        ("fresh", "choice"),
        id="choice-with-no-value",
    ),
    pytest.param(
        _new(type_name="float", value=number(1), constraints=pb.Constraints(min=math.nan)),
        INVALID_ARGUMENT,
        ("fresh", "min", "nan"),
        id="nan-min",
    ),
    pytest.param(
        _new(type_name="float", value=number(1), constraints=pb.Constraints(max=math.inf)),
        INVALID_ARGUMENT,
        ("fresh", "max", "inf"),
        id="infinite-max",
    ),
    # initial values that break their constraints
    pytest.param(
        _new(value=integer(150), constraints=pb.Constraints(min=0, max=100)),
        INVALID_ARGUMENT,
        ("fresh", "value 150 is above maximum 100"),
        id="initial-value-above-max",
    ),
    pytest.param(
        _new(value=integer(-1), constraints=pb.Constraints(min=0)),
        INVALID_ARGUMENT,
        ("fresh", "-1", "0"),
        id="initial-value-below-min",
    ),
    pytest.param(
        _new(type_name="string", value=text("ABC"), constraints=pb.Constraints(pattern="[a-z]+")),
        INVALID_ARGUMENT,
        ("fresh", "ABC", "[a-z]+"),
        id="initial-value-not-matching-pattern",
    ),
    pytest.param(
        _new(type_name="string", value=text("toolong"), constraints=pb.Constraints(max_length=3)),
        INVALID_ARGUMENT,
        ("fresh", "7", "3"),
        id="initial-value-too-long",
    ),
    pytest.param(
        _new(value=integer(3), constraints=pb.Constraints(choices=[integer(1), integer(2)])),
        INVALID_ARGUMENT,
        ("fresh", "3", "1, 2"),
        id="initial-value-not-a-choice",
    ),
    # limits
    pytest.param(
        _new(metadata=TOO_MUCH_METADATA),
        RESOURCE_EXHAUSTED,
        ("65", "64"),
        id="65-metadata-entries",
    ),
    pytest.param(
        _new(metadata=ONE_HUGE_METADATA_ENTRY),
        RESOURCE_EXHAUSTED,
        ("4096",),
        id="metadata-entry-over-4096-bytes",
    ),
    pytest.param(
        _new(type_name="string", value=text("x" * (2**20 + 1))),
        RESOURCE_EXHAUSTED,
        ("fresh", "1048576"),
        id="initial-string-over-1-MiB",
    ),
]


@pytest.mark.parametrize(("make", "code", "mentions"), BAD_REGISTRATIONS)
def test_a_bad_registration_is_refused_with_its_status_and_changes_nothing(
    stub: Stub,
    seeded: str,
    make: Callable[[str], pb.RegisterVariableRequest],
    code: grpc.StatusCode,
    mentions: tuple[str, ...],
) -> None:
    request = make(seeded)
    before = snapshot(stub, seeded)
    failure = refused(lambda: stub.RegisterVariable(request))
    assert failure.code == code
    assert_plain_english(failure.message, *mentions)
    assert snapshot(stub, seeded) == before


def test_a_registration_refused_for_a_bad_value_leaves_its_name_free(
    stub: Stub, seeded: str
) -> None:
    refused(lambda: stub.RegisterVariable(_new(value=text("nope"))(seeded)))
    made = stub.RegisterVariable(_new(value=integer(3))(seeded))
    assert made.variable.version == 0
    assert made.variable.value == integer(3)
    assert made.variable_id.startswith("var_fresh_")


# -- bad values: SetVariable, atomic SetVariables, non-atomic SetVariables -----------------

BAD_VALUES = [
    pytest.param("count", text("7"), ("count", "integer"), id="string-into-integer"),
    pytest.param("ratio", boolean(True), ("ratio", "float"), id="bool-into-float"),
    pytest.param("count", number(1.5), ("count", "1.5"), id="float-1.5-into-integer"),
    pytest.param("count", pb.Value(), ("count", "value"), id="missing-value"),
    pytest.param("ratio", number(math.nan), ("ratio", "nan"), id="nan-into-float"),
    pytest.param("ratio", number(math.inf), ("ratio", "inf"), id="infinity-into-float"),
    pytest.param("ratio", number(-math.inf), ("ratio", "-inf"), id="minus-infinity-into-float"),
    pytest.param(
        "count", number(2.0**63), ("count", "64-bit"), id="two-to-the-63-as-float-into-integer"
    ),
    pytest.param(
        "count", number(-(2.0**64)), ("count", "64-bit"), id="minus-two-to-the-64-into-integer"
    ),
    pytest.param(
        "count", integer(150), ("count", "value 150 is above maximum 100"), id="above-max"
    ),
    pytest.param("count", integer(-1), ("count", "-1", "minimum 0"), id="below-min"),
    pytest.param("count", number(100.5), ("count", "100.5"), id="fractional-float-above-max"),
    pytest.param("label", text("abcdefghij"), ("label", "10", "8"), id="string-too-long"),
    pytest.param("label", text("ABC"), ("label", "ABC", "[a-z]*"), id="string-not-matching"),
    pytest.param("mode", text("medium"), ("mode", "medium", "fast"), id="not-one-of-the-choices"),
    pytest.param("flag", integer(1), ("flag", "boolean"), id="integer-into-boolean"),
    pytest.param("label", integer(3), ("label", "string"), id="integer-into-string"),
    pytest.param("ratio", text("0.5"), ("ratio", "float"), id="string-into-float"),
]


def _partner(name: str) -> tuple[str, pb.Value]:
    """A good update for a variable other than ``name``, to go with a bad one in a batch."""
    return ("ratio", number(0.25)) if name != "ratio" else ("flag", boolean(False))


@pytest.mark.parametrize(("name", "value", "mentions"), BAD_VALUES)
def test_setting_a_bad_value_is_invalid_argument_and_changes_nothing(
    stub: Stub, seeded: str, name: str, value: pb.Value, mentions: tuple[str, ...]
) -> None:
    before = snapshot(stub, seeded)
    failure = refused(
        lambda: stub.SetVariable(
            pb.SetVariableRequest(session_id=seeded, variable_identifier=name, value=value)
        )
    )
    assert failure.code == INVALID_ARGUMENT
    assert isinstance(failure.error, ValidationError)
    assert_plain_english(failure.message, *mentions)
    assert snapshot(stub, seeded) == before


@pytest.mark.parametrize(("name", "value", "mentions"), BAD_VALUES)
def test_setting_a_bad_value_by_id_is_invalid_argument_and_changes_nothing(
    stub: Stub, seeded: str, name: str, value: pb.Value, mentions: tuple[str, ...]
) -> None:
    variable_id = variable(stub, seeded, name).id
    before = snapshot(stub, seeded)
    failure = refused(
        lambda: stub.SetVariable(
            pb.SetVariableRequest(session_id=seeded, variable_identifier=variable_id, value=value)
        )
    )
    assert failure.code == INVALID_ARGUMENT
    assert_plain_english(failure.message, *mentions)
    assert snapshot(stub, seeded) == before


@pytest.mark.parametrize(("name", "value", "mentions"), BAD_VALUES)
def test_an_atomic_batch_with_a_bad_value_is_refused_whole_with_one_violation(
    stub: Stub, seeded: str, name: str, value: pb.Value, mentions: tuple[str, ...]
) -> None:
    other, good = _partner(name)
    before = snapshot(stub, seeded)
    failure = refused(
        lambda: stub.SetVariables(
            pb.SetVariablesRequest(
                session_id=seeded, updates={name: value, other: good}, atomic=True
            )
        )
    )
    assert failure.code == INVALID_ARGUMENT
    assert isinstance(failure.error, ValidationError)
    assert set(failure.error.violations) == {name}
    assert_plain_english(failure.error.violations[name], *mentions)
    assert_plain_english(failure.message, *mentions)
    assert snapshot(stub, seeded) == before


@pytest.mark.parametrize(("name", "value", "mentions"), BAD_VALUES)
def test_a_non_atomic_batch_with_a_bad_value_applies_the_rest_and_reports_the_error(
    stub: Stub, seeded: str, name: str, value: pb.Value, mentions: tuple[str, ...]
) -> None:
    other, good = _partner(name)
    before = snapshot(stub, seeded)
    unchanged = variable(stub, seeded, name)
    answer = stub.SetVariables(
        pb.SetVariablesRequest(session_id=seeded, updates={name: value, other: good}, atomic=False)
    )
    assert dict(answer.errors).keys() == {name}
    assert_plain_english(answer.errors[name], *mentions)
    assert dict(answer.new_versions) == {other: 1}
    assert answer.header.position == before.position + 1
    assert variable(stub, seeded, name) == unchanged
    changed = variable(stub, seeded, other)
    assert (changed.value, changed.version, changed.position) == (good, 1, before.position + 1)


def test_setting_a_value_of_more_than_1_mib_is_resource_exhausted_and_changes_nothing(
    stub: Stub, seeded: str
) -> None:
    before = snapshot(stub, seeded)
    huge = text("x" * (2**20 + 1))
    failure = refused(
        lambda: stub.SetVariable(
            pb.SetVariableRequest(session_id=seeded, variable_identifier="label", value=huge)
        )
    )
    assert failure.code == RESOURCE_EXHAUSTED
    assert_plain_english(failure.message, "label", "1048576")
    assert snapshot(stub, seeded) == before


# -- unknown variables -----------------------------------------------------------------------

UNKNOWN_IDENTIFIERS = [
    pytest.param("ghost", id="unknown-name"),
    pytest.param("var_ghost_2", id="unknown-id"),
    pytest.param("", id="empty-identifier"),
    pytest.param(LONG_NAME, id="2000-character-identifier"),
    pytest.param("COUNT", id="name-in-other-case"),
]

UNKNOWN_VARIABLE_CALLS = [
    pytest.param(
        lambda stub, sid, ident: stub.GetVariable(
            pb.GetVariableRequest(session_id=sid, variable_identifier=ident)
        ),
        id="GetVariable",
    ),
    pytest.param(
        lambda stub, sid, ident: stub.SetVariable(
            pb.SetVariableRequest(session_id=sid, variable_identifier=ident, value=integer(1))
        ),
        id="SetVariable",
    ),
    pytest.param(
        lambda stub, sid, ident: stub.DeleteVariable(
            pb.DeleteVariableRequest(session_id=sid, variable_identifier=ident)
        ),
        id="DeleteVariable",
    ),
]


@pytest.mark.parametrize("identifier", UNKNOWN_IDENTIFIERS)
@pytest.mark.parametrize("call", UNKNOWN_VARIABLE_CALLS)
def test_naming_an_unknown_variable_is_not_found_and_changes_nothing(
    stub: Stub, seeded: str, call: Callable[[Stub, str, str], object], identifier: str
) -> None:
    before = snapshot(stub, seeded)
    failure = refused(lambda: call(stub, seeded, identifier))
    assert failure.code == NOT_FOUND
    assert_plain_english(failure.message, identifier[:50], seeded, "not found")
    assert identifier.startswith(failure.error.info.get("variable", "\0"))  # cut at 200
    assert snapshot(stub, seeded) == before


@pytest.mark.parametrize("by", ["name", "id"])
@pytest.mark.parametrize("call", UNKNOWN_VARIABLE_CALLS)
def test_naming_a_deleted_variable_is_not_found(
    stub: Stub, seeded: str, call: Callable[[Stub, str, str], object], by: str
) -> None:
    gone = variable(stub, seeded, "count")
    stub.DeleteVariable(pb.DeleteVariableRequest(session_id=seeded, variable_identifier="count"))
    identifier = gone.name if by == "name" else gone.id
    before = snapshot(stub, seeded)
    failure = refused(lambda: call(stub, seeded, identifier))
    assert failure.code == NOT_FOUND
    assert_plain_english(failure.message, identifier, "not found")
    assert snapshot(stub, seeded) == before


def test_get_variables_lists_unknown_identifiers_as_missing_in_the_order_asked(
    stub: Stub, seeded: str
) -> None:
    asked = ["ghost", "count", "", LONG_NAME, "var_ghost_9", "ratio"]
    answer = stub.GetVariables(
        pb.GetVariablesRequest(session_id=seeded, variable_identifiers=asked)
    )
    assert list(answer.missing_variables) == ["ghost", "", LONG_NAME, "var_ghost_9"]
    assert set(answer.variables) == {"count", "ratio"}
    assert answer.header.position == snapshot(stub, seeded).position


def test_an_atomic_batch_naming_an_unknown_variable_is_refused_with_its_violation(
    stub: Stub, seeded: str
) -> None:
    before = snapshot(stub, seeded)
    failure = refused(
        lambda: stub.SetVariables(
            pb.SetVariablesRequest(
                session_id=seeded, updates={"ghost": integer(1), "count": integer(2)}, atomic=True
            )
        )
    )
    assert failure.code == INVALID_ARGUMENT
    assert isinstance(failure.error, ValidationError)
    assert set(failure.error.violations) == {"ghost"}
    assert_plain_english(failure.error.violations["ghost"], "ghost", "not found")
    assert snapshot(stub, seeded) == before


# -- compare-and-set: expected_version and expected_position -------------------------------


def _bump(stub: Stub, session_id: str, name: str, times: int) -> None:
    for i in range(times):
        stub.SetVariable(
            pb.SetVariableRequest(session_id=session_id, variable_identifier=name, value=integer(i))
        )


EXPECTED_VERSION_CALLS = [
    pytest.param(
        lambda stub, sid, expected: stub.SetVariable(
            pb.SetVariableRequest(
                session_id=sid,
                variable_identifier="count",
                value=integer(50),
                expected_version=expected,
            )
        ),
        id="SetVariable",
    ),
    pytest.param(
        lambda stub, sid, expected: stub.SetVariable(
            pb.SetVariableRequest(
                session_id=sid,
                variable_identifier="count",
                value=text("and a bad value too"),
                expected_version=expected,
            )
        ),
        id="SetVariable-with-a-bad-value",
    ),
    pytest.param(
        lambda stub, sid, expected: stub.DeleteVariable(
            pb.DeleteVariableRequest(
                session_id=sid, variable_identifier="count", expected_version=expected
            )
        ),
        id="DeleteVariable",
    ),
]


@pytest.mark.parametrize("expected", [pytest.param(1, id="behind"), pytest.param(7, id="ahead")])
@pytest.mark.parametrize("call", EXPECTED_VERSION_CALLS)
def test_a_wrong_expected_version_is_aborted_with_the_current_version_and_changes_nothing(
    stub: Stub, seeded: str, call: Callable[[Stub, str, int], object], expected: int
) -> None:
    _bump(stub, seeded, "count", 2)
    before = snapshot(stub, seeded)
    failure = refused(lambda: call(stub, seeded, expected))
    assert failure.code == ABORTED
    assert_plain_english(failure.message, "count", "version 2", str(expected))
    assert isinstance(failure.error, VersionConflict)
    assert failure.error.info["current_version"] == "2"
    assert failure.error.info["expected_version"] == str(expected)
    assert (failure.error.current, failure.error.expected) == (2, expected)
    assert snapshot(stub, seeded) == before


@pytest.mark.parametrize(
    "atomic", [pytest.param(True, id="atomic"), pytest.param(False, id="non-atomic")]
)
@pytest.mark.parametrize("offset", [pytest.param(-1, id="behind"), pytest.param(1, id="ahead")])
def test_a_wrong_expected_position_is_aborted_with_the_current_position_and_changes_nothing(
    stub: Stub, seeded: str, atomic: bool, offset: int
) -> None:
    before = snapshot(stub, seeded)
    expected = before.position + offset
    failure = refused(
        lambda: stub.SetVariables(
            pb.SetVariablesRequest(
                session_id=seeded,
                updates={"count": integer(9), "ratio": number(0.75)},
                atomic=atomic,
                expected_position=expected,
            )
        )
    )
    assert failure.code == ABORTED
    assert_plain_english(failure.message, seeded, f"position {before.position}", str(expected))
    assert isinstance(failure.error, VersionConflict)
    assert failure.error.info["current_position"] == str(before.position)
    assert failure.error.info["expected_position"] == str(expected)
    assert snapshot(stub, seeded) == before


# -- batches -------------------------------------------------------------------------------


def test_an_atomic_batch_with_two_of_three_failing_names_exactly_those_two(
    stub: Stub, seeded: str
) -> None:
    before = snapshot(stub, seeded)
    updates = {"count": integer(150), "ghost": integer(1), "ratio": number(0.25)}
    failure = refused(
        lambda: stub.SetVariables(
            pb.SetVariablesRequest(session_id=seeded, updates=updates, atomic=True)
        )
    )
    assert failure.code == INVALID_ARGUMENT
    assert isinstance(failure.error, ValidationError)
    assert set(failure.error.violations) == {"count", "ghost"}
    assert_plain_english(failure.error.violations["count"], "count", "150", "100")
    assert_plain_english(failure.error.violations["ghost"], "ghost", "not found")
    assert_plain_english(failure.message, "count", "ghost")
    assert snapshot(stub, seeded) == before


def test_an_atomic_batch_naming_one_variable_by_name_and_by_id_is_refused(
    stub: Stub, seeded: str
) -> None:
    count_id = variable(stub, seeded, "count").id
    before = snapshot(stub, seeded)
    failure = refused(
        lambda: stub.SetVariables(
            pb.SetVariablesRequest(
                session_id=seeded,
                updates={"count": integer(1), count_id: integer(2)},
                atomic=True,
            )
        )
    )
    assert failure.code == INVALID_ARGUMENT
    assert isinstance(failure.error, ValidationError)
    assert len(failure.error.violations) == 1
    assert set(failure.error.violations) <= {"count", count_id}
    assert_plain_english(failure.message, "count", "twice")
    assert snapshot(stub, seeded) == before


def test_a_non_atomic_batch_applies_what_it_can_as_one_event_each(stub: Stub, seeded: str) -> None:
    before = snapshot(stub, seeded)
    flag_id = variable(stub, seeded, "flag").id
    answer = stub.SetVariables(
        pb.SetVariablesRequest(
            session_id=seeded,
            updates={
                "count": integer(7),
                flag_id: boolean(False),
                "ratio": text("x"),
                "ghost": integer(1),
                "mode": pb.Value(),
            },
            atomic=False,
        )
    )
    assert dict(answer.new_versions) == {"count": 1, flag_id: 1}
    assert set(answer.errors) == {"ratio", "ghost", "mode"}
    assert_plain_english(answer.errors["ratio"], "ratio", "float")
    assert_plain_english(answer.errors["ghost"], "ghost", "not found")
    assert_plain_english(answer.errors["mode"], "mode", "value")
    # Two accepted updates, two events.
    assert answer.header.position == before.position + 2
    after = snapshot(stub, seeded)
    assert after.position == before.position + 2
    old = {v.name: v for v in before.variables}
    new = {v.name: v for v in after.variables}
    assert (new["count"].value, new["count"].version) == (integer(7), 1)
    assert (new["flag"].value, new["flag"].version) == (boolean(False), 1)
    for name in ("ratio", "mode", "label"):
        assert new[name] == old[name]


def test_a_non_atomic_batch_where_everything_fails_appends_nothing(stub: Stub, seeded: str) -> None:
    before = snapshot(stub, seeded)
    answer = stub.SetVariables(
        pb.SetVariablesRequest(
            session_id=seeded,
            updates={"count": integer(-5), "ghost": integer(1)},
            atomic=False,
        )
    )
    assert dict(answer.new_versions) == {}
    assert set(answer.errors) == {"count", "ghost"}
    assert answer.header.position == before.position
    assert snapshot(stub, seeded) == before


# -- limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "atomic", [pytest.param(True, id="atomic"), pytest.param(False, id="non-atomic")]
)
def test_a_batch_of_1001_updates_is_resource_exhausted_and_changes_nothing(
    stub: Stub, seeded: str, atomic: bool
) -> None:
    updates = {f"v{i}": integer(i) for i in range(997)}
    updates.update({"count": integer(1), "ratio": number(1), "flag": boolean(False)})
    updates["label"] = text("ok")
    assert len(updates) == 1001
    before = snapshot(stub, seeded)
    failure = refused(
        lambda: stub.SetVariables(
            pb.SetVariablesRequest(session_id=seeded, updates=updates, atomic=atomic)
        )
    )
    assert failure.code == RESOURCE_EXHAUSTED
    assert_plain_english(failure.message, "1001", "1000")
    assert snapshot(stub, seeded) == before


def test_a_batch_of_exactly_1000_updates_is_within_the_limit(stub: Stub, seeded: str) -> None:
    updates = {f"v{i}": integer(i) for i in range(999)}
    updates["count"] = integer(42)
    answer = stub.SetVariables(
        pb.SetVariablesRequest(session_id=seeded, updates=updates, atomic=False)
    )
    assert dict(answer.new_versions) == {"count": 1}
    assert len(answer.errors) == 999


def test_reading_1001_variables_at_once_is_resource_exhausted(stub: Stub, seeded: str) -> None:
    asked = [f"v{i}" for i in range(1001)]
    failure = refused(
        lambda: stub.GetVariables(
            pb.GetVariablesRequest(session_id=seeded, variable_identifiers=asked)
        )
    )
    assert failure.code == RESOURCE_EXHAUSTED
    assert_plain_english(failure.message, "1001", "1000")


def _write_with_metadata(rpc: str) -> Callable[[Stub, str, dict[str, str]], object]:
    def call(stub: Stub, sid: str, metadata: dict[str, str]) -> object:
        if rpc == "SetVariable":
            return stub.SetVariable(
                pb.SetVariableRequest(
                    session_id=sid, variable_identifier="count", value=integer(9), metadata=metadata
                )
            )
        if rpc in ("SetVariables-atomic", "SetVariables-non-atomic"):
            return stub.SetVariables(
                pb.SetVariablesRequest(
                    session_id=sid,
                    updates={"count": integer(9)},
                    metadata=metadata,
                    atomic=rpc == "SetVariables-atomic",
                )
            )
        if rpc == "DeleteVariable":
            return stub.DeleteVariable(
                pb.DeleteVariableRequest(
                    session_id=sid, variable_identifier="count", metadata=metadata
                )
            )
        assert rpc == "DeleteSession"
        return stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid, metadata=metadata))

    return call


@pytest.mark.parametrize(
    ("metadata", "mentions"),
    [
        pytest.param(TOO_MUCH_METADATA, ("65", "64"), id="65-metadata-entries"),
        pytest.param(ONE_HUGE_METADATA_ENTRY, ("4096",), id="metadata-entry-over-4096-bytes"),
    ],
)
@pytest.mark.parametrize(
    "rpc",
    [
        "SetVariable",
        "SetVariables-atomic",
        "SetVariables-non-atomic",
        "DeleteVariable",
        "DeleteSession",
    ],
)
def test_a_write_with_too_much_metadata_is_resource_exhausted_and_changes_nothing(
    stub: Stub, seeded: str, rpc: str, metadata: dict[str, str], mentions: tuple[str, ...]
) -> None:
    before = snapshot(stub, seeded)
    failure = refused(lambda: _write_with_metadata(rpc)(stub, seeded, metadata))
    assert failure.code == RESOURCE_EXHAUSTED
    assert_plain_english(failure.message, *mentions)
    assert failure.error.info.get("limit") in ("64", "4096")
    assert snapshot(stub, seeded) == before


def test_64_metadata_entries_are_within_the_limit(stub: Stub, seeded: str) -> None:
    metadata = {f"key{i}": "value" for i in range(64)}
    answer = stub.SetVariable(
        pb.SetVariableRequest(
            session_id=seeded, variable_identifier="count", value=integer(9), metadata=metadata
        )
    )
    assert dict(answer.variable.metadata) == metadata


# -- reads of the past: at_position and as_of ------------------------------------------------


def _read_at(rpc: str, **at: object) -> Callable[[Stub, str], object]:
    def call(stub: Stub, sid: str) -> object:
        if rpc == "GetVariable":
            return stub.GetVariable(
                pb.GetVariableRequest(session_id=sid, variable_identifier="count", **at)  # type: ignore[arg-type]
            )
        if rpc == "GetVariables":
            return stub.GetVariables(
                pb.GetVariablesRequest(session_id=sid, variable_identifiers=["count"], **at)  # type: ignore[arg-type]
            )
        return stub.ListVariables(pb.ListVariablesRequest(session_id=sid, **at))  # type: ignore[arg-type]

    return call


PAST_READS = ["GetVariable", "GetVariables", "ListVariables"]

BAD_AS_OF = [
    pytest.param(Timestamp(seconds=1, nanos=-1), ("nanos", "-1"), id="negative-nanos"),
    pytest.param(
        Timestamp(seconds=1, nanos=1_000_000_000), ("nanos", "1000000000"), id="nanos-of-a-second"
    ),
    pytest.param(Timestamp(seconds=253_402_300_800), ("seconds",), id="after-year-9999"),
    pytest.param(Timestamp(seconds=-62_135_596_801), ("seconds",), id="before-year-1"),
    pytest.param(Timestamp(seconds=-(2**63)), ("seconds",), id="int64-min-seconds"),
]


@pytest.mark.parametrize(("as_of", "mentions"), BAD_AS_OF)
@pytest.mark.parametrize("rpc", PAST_READS)
def test_a_read_as_of_an_impossible_time_is_invalid_argument_naming_as_of(
    stub: Stub, seeded: str, rpc: str, as_of: Timestamp, mentions: tuple[str, ...]
) -> None:
    failure = refused(lambda: _read_at(rpc, as_of=as_of)(stub, seeded))
    assert failure.code == INVALID_ARGUMENT
    assert_plain_english(failure.message, "as_of", *mentions)
    assert isinstance(failure.error, ValidationError)
    assert set(failure.error.violations) == {"as_of"}


@pytest.mark.parametrize("rpc", PAST_READS)
def test_the_extremes_of_a_timestamp_are_valid_times(stub: Stub, seeded: str, rpc: str) -> None:
    latest = Timestamp(seconds=253_402_300_799, nanos=999_999_999)
    _read_at(rpc, as_of=latest)(stub, seeded)  # the session as it stands now
    earliest = Timestamp(seconds=-62_135_596_800)
    failure = refused(lambda: _read_at(rpc, as_of=earliest)(stub, seeded))
    assert failure.code == NOT_FOUND  # the session did not exist in year 1
    assert_plain_english(failure.message, seeded, "did not exist")


@pytest.mark.parametrize("rpc", PAST_READS)
def test_a_read_at_a_negative_position_is_invalid_argument_naming_at_position(
    stub: Stub, seeded: str, rpc: str
) -> None:
    failure = refused(lambda: _read_at(rpc, at_position=-1)(stub, seeded))
    assert failure.code == INVALID_ARGUMENT
    assert_plain_english(failure.message, "at_position", "-1")


# -- page tokens ------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


BAD_TOKENS = [
    pytest.param("garbage!", id="not-base64"),
    pytest.param("%00%ff", id="url-escapes"),
    pytest.param("é", id="non-ascii"),
    pytest.param("A" * 5000, id="5000-characters"),
    pytest.param(_b64(b"\xff\xfe\xfd"), id="not-utf8"),
    pytest.param(_b64(b"1e400"), id="float-overflowing-to-infinity"),
    pytest.param(_b64(b"Infinity"), id="infinity"),
    pytest.param(_b64(b"NaN"), id="nan"),
    pytest.param(_b64(b'{"v":1,"q":"x","l":1e400,"e":1}'), id="float-field"),
    pytest.param(_b64(b"[" * 600 + b"]" * 600), id="deep-nesting"),
    pytest.param(_b64(b'{"a":' * 300 + b"1" + b"}" * 300), id="deep-objects"),
    pytest.param(_b64(b"9" * 5000), id="5000-digit-number"),
    pytest.param(_b64(b"null"), id="json-null"),
    pytest.param(_b64(b"{}"), id="empty-object"),
    pytest.param(_b64(b'{"v":2,"q":"x","l":1,"e":1}'), id="unknown-format-version"),
    pytest.param(_b64(b'{"o":3,"q":"0123456789abcdef"}'), id="old-offset-token"),
]

PAGED_CALLS = [
    pytest.param(
        lambda stub, sid, token: stub.ReadEvents(
            pb.ReadEventsRequest(session_id=sid, page_token=token)
        ),
        id="ReadEvents",
    ),
    pytest.param(
        lambda stub, sid, token: stub.GetVariableHistory(
            pb.GetVariableHistoryRequest(
                session_id=sid, variable_identifier="count", page_token=token
            )
        ),
        id="GetVariableHistory",
    ),
    pytest.param(
        lambda stub, sid, token: stub.ListSessions(pb.ListSessionsRequest(page_token=token)),
        id="ListSessions",
    ),
]


@pytest.mark.parametrize("token", BAD_TOKENS)
@pytest.mark.parametrize("call", PAGED_CALLS)
def test_a_page_token_the_server_did_not_make_is_invalid_argument(
    stub: Stub, seeded: str, call: Callable[[Stub, str, str], object], token: str
) -> None:
    failure = refused(lambda: call(stub, seeded, token))
    assert failure.code == INVALID_ARGUMENT
    assert_plain_english(failure.message, "page_token")
    assert isinstance(failure.error, ValidationError)
    assert set(failure.error.violations) == {"page_token"}


def test_a_page_token_from_another_rpc_is_invalid_argument(stub: Stub, seeded: str) -> None:
    events = stub.ReadEvents(pb.ReadEventsRequest(session_id=seeded, page_size=1))
    failure = refused(
        lambda: stub.GetVariableHistory(
            pb.GetVariableHistoryRequest(
                session_id=seeded, variable_identifier="count", page_token=events.next_page_token
            )
        )
    )
    assert failure.code == INVALID_ARGUMENT
    assert_plain_english(failure.message, "page_token", "different request")


def test_a_page_token_from_another_session_is_invalid_argument(stub: Stub, seeded: str) -> None:
    other = stub.CreateSession(pb.CreateSessionRequest()).session.id
    events = stub.ReadEvents(pb.ReadEventsRequest(session_id=seeded, page_size=1))
    failure = refused(
        lambda: stub.ReadEvents(
            pb.ReadEventsRequest(session_id=other, page_token=events.next_page_token)
        )
    )
    assert failure.code == INVALID_ARGUMENT
    assert_plain_english(failure.message, "page_token", "different request")


# -- after all of it ---------------------------------------------------------------------------


def test_the_server_still_answers_every_rpc_after_all_the_bad_input(stub: Stub) -> None:
    # Runs last in this module, on the same server every test above has been abusing.
    created = stub.CreateSession(pb.CreateSessionRequest(session_id="still_alive"))
    sid = created.session.id
    assert created.header.position == 1
    made = stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=sid,
            name="n",
            type="integer",
            initial_value=integer(1),
            constraints=pb.Constraints(min=0, max=10),
        )
    )
    assert made.header.position == 2
    assert made.variable_id.startswith("var_n_")
    set_one = stub.SetVariable(
        pb.SetVariableRequest(
            session_id=sid,
            variable_identifier=made.variable_id,
            value=integer(2),
            expected_version=0,
        )
    )
    assert (set_one.new_version, set_one.header.position) == (1, 3)
    batch = stub.SetVariables(
        pb.SetVariablesRequest(
            session_id=sid, updates={"n": integer(3)}, atomic=True, expected_position=3
        )
    )
    assert (dict(batch.new_versions), batch.header.position) == ({"n": 2}, 4)
    assert stub.GetVariable(
        pb.GetVariableRequest(session_id=sid, variable_identifier="n")
    ).variable.value == integer(3)
    got = stub.GetVariables(pb.GetVariablesRequest(session_id=sid, variable_identifiers=["n"]))
    assert got.variables["n"].version == 2
    listed = stub.ListVariables(pb.ListVariablesRequest(session_id=sid))
    assert [v.name for v in listed.variables] == ["n"]
    assert sid in {s.id for s in all_sessions(stub)}
    stub.DeleteVariable(pb.DeleteVariableRequest(session_id=sid, variable_identifier="n"))
    assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).session.position == 5
    deleted = stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid))
    assert deleted.header.position == 6
    assert_session_is_unknown(stub, sid)
