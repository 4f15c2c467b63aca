"""A bounded fuzz of every RPC, through a real server (issue 10).

Hypothesis builds arbitrary messages of each request type from its descriptor (every
field, nested messages, maps, oneofs, extreme integers and floats, odd strings), alone
and merged into valid requests so they reach past the first check; random bytes go in as
message bodies, and malformed HTTP/2 onto the port through a raw socket. For every call:

- the answer is never INTERNAL or UNKNOWN (bad input is the caller's fault, never a bug);
- a refused call leaves the log exactly as it was (its last global position, checked
  before and after each call: the log is append-only);
- the server keeps answering (checked after each test).

Bounded in time: a fixed number of examples per RPC, the whole file well under a minute.
The server's clock stands still (no TTL expires behind the fuzz's back) and its limits
are small, so limits are reached as well.
"""

from __future__ import annotations

import base64
import itertools
import socket
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from _support import FakeWallClock
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import in_process_server, stub_for

from varstore.api.limits import Limits
from varstore.api.server import RunningServer
from varstore.api.store import Store
from varstore.eventstore.memory import MemoryRecorder
from varstore.types.events import EventType
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["VariableStore"]
METHODS = [method.name for method in SERVICE.methods]
#: Examples per RPC: about 0.05 s each, so the file stays well under a minute.
EXAMPLES = 60
#: Codes no input may produce.
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}

#: Fields an "aimed" request keeps from its valid base.
AIMED = ("session_id", "variable_identifier", "name", "new_session_id")
SESSIONS = ["fuzz", "fuzz-deleted", "fuzz-other", "nobody", ""]
VARIABLES = ["f", "i", "s", "b", "pat", "var_f_2", "var_s_4", "gone", "var_gone_6", "nothing"]
TYPE_NAMES = ["float", "integer", "string", "boolean", "", "Float", "blob"]
PATTERNS = ["(a+)+$", "[", "(a)\\1", "(?=a)", "*", "?*[!", "[z-a]", "a" * 1500, "x" * 5000]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Page tokens: garbage, hostile JSON (the issue's findings), and nothing.
TOKENS = [
    "",
    "x",
    "%%%",
    _b64(b"1e400"),
    _b64(b"Infinity"),
    _b64(b"[" * 100_000),
    _b64(b'{"v":1,"q":"x","l":1e400,"e":1}'),
    _b64(b'{"v":1,"q":"x","l":-1,"e":99999999999999999999999}'),
    _b64(b'{"v":1,"q":"x","k":' + b'"a"' * 3 + b"}"),
    "A" * 5000,
]

ODD_TEXT = st.one_of(
    st.sampled_from(
        ["", " ", "\x00", "n" * 129, "x" * 4097, "é", "😀" * 3, "-x", ".", "a:b", "\u202e", "%s"]
    ),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=12),
)


def _text_for(field: d.FieldDescriptor) -> st.SearchStrategy[str]:
    """Strings for a field, biased by its name towards what the server knows."""
    name = field.name
    if name in ("session_id", "new_session_id", "origin_session_id"):
        return st.one_of(st.sampled_from(SESSIONS), ODD_TEXT)
    if name in ("variable_identifier", "variable_identifiers", "variables", "name", "variable_id"):
        return st.one_of(st.sampled_from(VARIABLES), ODD_TEXT)
    if name == "type":
        kinds = [kind.value for kind in EventType] if field.containing_type.name == "Event" else []
        return st.one_of(st.sampled_from(TYPE_NAMES + kinds), ODD_TEXT)
    if name == "page_token":
        return st.sampled_from(TOKENS)
    if name == "pattern":
        return st.one_of(st.sampled_from(PATTERNS), ODD_TEXT)
    return ODD_TEXT


def _integers(low: int, high: int, *extra: int) -> st.SearchStrategy[int]:
    edges = [low, high, 0, 1, -1, 2, 1000, 1001, 10**12, 2**31, 2**53 + 1, *extra]
    return st.one_of(
        st.sampled_from([n for n in edges if low <= n <= high]), st.integers(low, high)
    )


_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    d.FieldDescriptor.CPPTYPE_INT32: _integers(-(2**31), 2**31 - 1),
    d.FieldDescriptor.CPPTYPE_INT64: _integers(-(2**63), 2**63 - 1, 315_360_001, 253_402_300_800),
    d.FieldDescriptor.CPPTYPE_UINT32: _integers(0, 2**32 - 1),
    d.FieldDescriptor.CPPTYPE_UINT64: _integers(0, 2**64 - 1),
    d.FieldDescriptor.CPPTYPE_DOUBLE: st.one_of(
        st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 2.0**63, 2.0**64]),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
    d.FieldDescriptor.CPPTYPE_FLOAT: st.floats(width=32),
    d.FieldDescriptor.CPPTYPE_BOOL: st.booleans(),
}


def _value_for(field: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.cpp_type == d.FieldDescriptor.CPPTYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.cpp_type == d.FieldDescriptor.CPPTYPE_STRING:
        return (
            st.binary(max_size=8)
            if field.type == d.FieldDescriptor.TYPE_BYTES
            else _text_for(field)
        )
    if field.cpp_type == d.FieldDescriptor.CPPTYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    return _SCALARS[field.cpp_type]


def _is_map(field: d.FieldDescriptor) -> bool:
    return (
        field.cpp_type == d.FieldDescriptor.CPPTYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


@st.composite
def _message(draw: st.DrawFn, descriptor: d.Descriptor, depth: int) -> Message:
    message: Message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        nested = field.cpp_type == d.FieldDescriptor.CPPTYPE_MESSAGE
        if (nested and depth >= 3) or not draw(st.booleans()):
            continue
        target = getattr(message, field.name) if field.is_repeated else None
        if _is_map(field):
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            keys = draw(st.lists(_text_for(field), max_size=3))
            for key in keys:
                if value_field.cpp_type == d.FieldDescriptor.CPPTYPE_MESSAGE:
                    target[key].CopyFrom(draw(messages(value_field.message_type, depth + 1)))
                else:
                    target[key] = draw(_value_for(value_field, depth))
            del key_field
        elif field.is_repeated:
            items = draw(st.lists(_value_for(field, depth), max_size=3))
            if nested:
                for item in items:
                    target.add().CopyFrom(item)
            else:
                target.extend(items)
        elif nested:
            getattr(message, field.name).CopyFrom(draw(messages(field.message_type, depth + 1)))
        else:
            setattr(message, field.name, draw(_value_for(field, depth)))
    return message


_STRATEGIES: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def messages(descriptor: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Arbitrary messages of ``descriptor``'s type (nested ones up to depth 3)."""
    key = (descriptor.full_name, depth)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = st.deferred(lambda: _message(descriptor, depth))
    return _STRATEGIES[key]


# -- the server ---------------------------------------------------------------------------

LIMITS = Limits(
    max_string_bytes=2048,
    max_batch_size=4,
    max_variables_per_session=8,
    max_sessions=1000,
    max_page_size=5,
    max_watchers=8,
    max_watchers_per_session=2,
    max_metadata_entries=3,
    max_metadata_entry_bytes=64,
)


#: The main session's variables: name -> (type, value, constraints).
SEED = {
    "f": ("float", pb.Value(float_value=0.5), pb.Constraints(min=0, max=1)),
    "i": (
        "integer",
        pb.Value(integer_value=3),
        pb.Constraints(choices=[pb.Value(integer_value=3)]),
    ),
    "s": ("string", pb.Value(string_value="ab"), pb.Constraints(max_length=8, pattern="[a-z]*")),
    "b": ("boolean", pb.Value(boolean_value=True), pb.Constraints()),
    "pat": ("string", pb.Value(string_value="aaa"), pb.Constraints(pattern="(a+)+$")),
}


def _seed(stub: pb_grpc.VariableStoreStub) -> list[pb.Event]:
    """Sessions and variables the fuzz aims at (made again where the fuzz deleted any);
    returns the main session's log."""

    def missing(call: Any, request: Message) -> bool:
        try:
            call(request, timeout=10)
        except grpc.RpcError as failure:
            if failure.code() == grpc.StatusCode.NOT_FOUND:
                return True
            raise
        return False

    gone = missing(stub.GetSession, pb.GetSessionRequest(session_id="fuzz"))
    if gone or any(
        missing(stub.GetVariable, pb.GetVariableRequest(session_id="fuzz", variable_identifier=n))
        for n in SEED
    ):
        if not gone:
            stub.DeleteSession(pb.DeleteSessionRequest(session_id="fuzz"))
        stub.CreateSession(pb.CreateSessionRequest(session_id="fuzz", ttl_seconds=3600))
        for name, (kind, value, rules) in SEED.items():
            stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id="fuzz", name=name, type=kind, initial_value=value, constraints=rules
                )
            )
        stub.SetVariable(
            pb.SetVariableRequest(
                session_id="fuzz", variable_identifier="f", value=pb.Value(float_value=0.7)
            )
        )
        stub.DeleteVariable(pb.DeleteVariableRequest(session_id="fuzz", variable_identifier="b"))
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id="fuzz",
                name="b",
                type="boolean",
                initial_value=pb.Value(boolean_value=True),
            )
        )
    for sid in ("fuzz-deleted", "fuzz-other"):
        if missing(stub.GetSession, pb.GetSessionRequest(session_id=sid)):
            stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
    if not missing(stub.GetSession, pb.GetSessionRequest(session_id="fuzz-deleted")):
        stub.DeleteSession(pb.DeleteSessionRequest(session_id="fuzz-deleted"))
    export = stub.ExportSession(pb.ExportSessionRequest(session_id="fuzz"), timeout=10)
    return [event for page in export for event in page.events]


class Target:
    """The server under fuzz, its channel and what the fuzz aims valid requests at."""

    def __init__(self, running: RunningServer, channel: grpc.Channel) -> None:
        self.running = running
        self.channel = channel
        self.stub = pb_grpc.VariableStoreStub(channel)
        self.log = _seed(self.stub)
        self.counter = itertools.count()

    def global_position(self) -> int:
        return self.running.store.recorder.last_global_position()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    store = Store(MemoryRecorder(), limits=LIMITS, clock=FakeWallClock())
    with in_process_server(store) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    made = grpc.insecure_channel(server.address)
    grpc.channel_ready_future(made).result(timeout=10)
    yield made
    made.close()


@pytest.fixture
def target(server: RunningServer, channel: grpc.Channel) -> Target:
    """The server, seeded again before each test (the fuzz deletes what it finds)."""
    return Target(server, channel)


def _call(target: Target, method: str, request: Any) -> grpc.StatusCode:
    """Make one call (streams: read until caught up, then cancel); its status code."""
    stub = target.stub
    try:
        if method == "WatchSession":
            stream = stub.WatchSession(request, timeout=10)
            try:
                for count, message in enumerate(stream):
                    if message.HasField("progress") or count > 50:
                        break
            finally:
                stream.cancel()
        elif method == "ExportSession":
            for _ in stub.ExportSession(request, timeout=10):
                pass
        elif method == "ImportSession":
            stub.ImportSession(iter(request), timeout=10)
        else:
            getattr(stub, method)(request, timeout=10)
    except grpc.RpcError as failure:
        code = failure.code()
        if code == grpc.StatusCode.CANCELLED and method == "WatchSession":
            return grpc.StatusCode.OK  # our own cancel
        assert code not in FORBIDDEN, f"{method} answered {code.name}: {failure.details()}"
        return code
    return grpc.StatusCode.OK


def _ahead_of_the_log(request: Any) -> bool:
    fields = getattr(request, "DESCRIPTOR", None)
    return (
        fields is not None and "min_position" in fields.fields_by_name and request.min_position > 0
    )


def _check(target: Target, method: str, request: Any) -> None:
    """The call is never INTERNAL, and if refused it wrote nothing."""
    before = target.global_position()
    code = _call(target, method, request)
    if code != grpc.StatusCode.OK:
        after = target.global_position()
        assert after == before, f"{method} was refused ({code.name}) yet the log moved"


# -- requests -----------------------------------------------------------------------------


def _bases(target: Target, method: str) -> list[Message]:
    """Valid requests of ``method`` for fuzzed fields to be merged into."""
    fresh = f"fresh-{next(target.counter)}"
    value = pb.Value(float_value=0.25)
    bases: dict[str, list[Message]] = {
        "CreateSession": [pb.CreateSessionRequest(session_id=fresh)],
        "GetSession": [pb.GetSessionRequest(session_id="fuzz")],
        "ListSessions": [pb.ListSessionsRequest(page_size=2)],
        "DeleteSession": [pb.DeleteSessionRequest(session_id="fuzz-other")],
        "RegisterVariable": [
            pb.RegisterVariableRequest(
                session_id="fuzz",
                name=fresh,
                type="string",
                initial_value=pb.Value(string_value="a"),
            )
        ],
        "GetVariable": [pb.GetVariableRequest(session_id="fuzz", variable_identifier="f")],
        "SetVariable": [
            pb.SetVariableRequest(session_id="fuzz", variable_identifier="f", value=value)
        ],
        "GetVariables": [
            pb.GetVariablesRequest(session_id="fuzz", variable_identifiers=["f", "s"])
        ],
        "SetVariables": [
            pb.SetVariablesRequest(session_id="fuzz", updates={"f": value}, atomic=True)
        ],
        "ListVariables": [pb.ListVariablesRequest(session_id="fuzz")],
        "DeleteVariable": [pb.DeleteVariableRequest(session_id="fuzz", variable_identifier="b")],
        "GetVariableHistory": [
            pb.GetVariableHistoryRequest(session_id="fuzz", variable_identifier="f", page_size=1)
        ],
        "ReadEvents": [pb.ReadEventsRequest(session_id="fuzz", page_size=2)],
        "RollbackVariable": [
            pb.RollbackVariableRequest(session_id="fuzz", variable_identifier="f", to_version=0)
        ],
        "WatchSession": [pb.WatchSessionRequest(session_id="fuzz", include_initial=True)],
        "ForkSession": [pb.ForkSessionRequest(session_id="fuzz", new_session_id=fresh)],
        "ExportSession": [pb.ExportSessionRequest(session_id="fuzz")],
        "GetServerInfo": [pb.GetServerInfoRequest()],
    }
    return bases[method]


def _import_chunks(
    target: Target, fuzzed: list[Message], events: int, mutate: int
) -> list[Message]:
    """A real export (its first ``events`` events) into a fresh id, with fuzzed chunks and
    one event merged with a fuzzed Event."""
    log = [pb.Event() for _ in target.log[:events]]
    for copy, event in zip(log, target.log, strict=False):
        copy.CopyFrom(event)
    chunks: list[Message] = [
        pb.ImportSessionRequest(session_id=f"imported-{next(target.counter)}", events=log)
    ]
    for chunk in fuzzed:
        if chunk.events and log:  # type: ignore[attr-defined]
            log[mutate % len(log)].MergeFrom(chunk.events[0])  # type: ignore[attr-defined]
        chunks.append(chunk)
    return chunks


def _fuzz_settings() -> settings:
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.mark.parametrize("method", [m for m in METHODS if m != "ImportSession"])
def test_no_request_of_any_shape_gets_internal_or_writes_when_refused(
    target: Target, method: str
) -> None:
    request_type = SERVICE.methods_by_name[method].input_type

    @_fuzz_settings()
    @given(fuzzed=messages(request_type), how=st.sampled_from(["aimed", "merged", "alone"]))
    def run(fuzzed: Message, how: str) -> None:
        request = fuzzed
        if how != "alone":
            base = _bases(target, method)[0]
            request = type(base)()
            request.CopyFrom(base)
            request.MergeFrom(fuzzed)
            if how == "aimed":  # at the seeded session and variable, so checks run deep
                for name in AIMED:
                    if name in request.DESCRIPTOR.fields_by_name and getattr(base, name):
                        setattr(request, name, getattr(base, name))
        if _ahead_of_the_log(request):
            # A read waits (up to 5 s) for a min_position the session has not reached: one
            # such wait is tested in test_cluster.py; here it would only make examples slow.
            request.min_position = 0  # type: ignore[attr-defined]
        _check(target, method, request)

    run()
    _assert_alive(target)


def test_no_import_stream_gets_internal_or_writes_when_refused(target: Target) -> None:
    request_type = SERVICE.methods_by_name["ImportSession"].input_type

    @_fuzz_settings()
    @given(
        fuzzed=st.lists(messages(request_type), max_size=3),
        events=st.integers(0, 12),
        mutate=st.integers(0, 11),
        base=st.booleans(),
    )
    def run(fuzzed: list[Message], events: int, mutate: int, base: bool) -> None:
        chunks = _import_chunks(target, fuzzed, events, mutate) if base else fuzzed
        _check(target, "ImportSession", chunks)

    run()
    _assert_alive(target)


@pytest.mark.parametrize("method", METHODS)
def test_random_bytes_as_a_request_body_are_never_internal(target: Target, method: str) -> None:
    path = f"/{SERVICE.full_name}/{method}"
    rpc = SERVICE.methods_by_name[method]
    channel = target.channel

    @_fuzz_settings()
    @given(
        body=st.one_of(
            st.binary(max_size=64),
            st.sampled_from([b"\xff" * 8, b"\x0a\x02\xff\xfe", b"\x12\x80\x80\x80\x80\x10"]),
        )
    )
    def run(body: bytes) -> None:
        before = target.global_position()
        # Bytes that decode to a min_position the session has not reached make the server
        # wait for it, up to the call's deadline: keep that short.
        reads = "min_position" in rpc.input_type.fields_by_name and method != "ForkSession"
        timeout = 0.5 if reads else 10
        try:
            if rpc.client_streaming:
                channel.stream_unary(path)(iter([body]), timeout=10)
            elif rpc.server_streaming:
                stream = channel.unary_stream(path)(body, timeout=timeout)
                try:
                    next(iter(stream), None)
                finally:
                    stream.cancel()
            else:
                channel.unary_unary(path)(body, timeout=timeout)
        except grpc.RpcError as failure:
            code = failure.code()
            if code == grpc.StatusCode.CANCELLED:
                return
            if code == grpc.StatusCode.UNAVAILABLE and rpc.input_type.fields_by_name.get(
                "min_position"
            ):
                # The bytes decoded to a request with a min_position not reached yet.
                assert "behind the position" in (failure.details() or "")
            else:
                assert code not in FORBIDDEN, f"{method} answered {code.name}: {failure.details()}"
            assert target.global_position() == before, f"{method} refused yet wrote"

    run()
    _assert_alive(target)


# -- malformed HTTP/2 ---------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


SETTINGS = _frame(0x4, 0, 0, b"")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http1"),
        pytest.param(b"\x00" * 4096, id="zeros"),
        pytest.param(PREFACE[:10], id="truncated-preface"),
        pytest.param(PREFACE + _frame(0x0, 0, 1, b"", length=0xFFFFFF), id="huge-frame-length"),
        pytest.param(PREFACE + SETTINGS + _frame(0x1, 0x4, 1, b"\xff" * 32), id="bad-hpack"),
        pytest.param(
            PREFACE + SETTINGS + _frame(0x4, 0, 0, b"\x00\x05\xff\xff\xff\xff"), id="bad-setting"
        ),
        pytest.param(PREFACE + SETTINGS + _frame(0x9, 0, 7, b"x" * 16), id="stray-continuation"),
        pytest.param(
            PREFACE + SETTINGS + _frame(0x0, 0, 3, b"\x00" * 64), id="data-on-idle-stream"
        ),
        pytest.param(
            PREFACE + SETTINGS + _frame(0x8, 0, 0, b"\x7f\xff\xff\xff"), id="window-overflow"
        ),
    ],
)
def test_malformed_http2_on_the_port_leaves_the_server_answering(
    target: Target, payload: bytes
) -> None:
    host, port = target.running.host, target.running.port
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(payload)
        raw.settimeout(2)
        try:  # read what the server says (a GOAWAY, or it closes); it must not hang us
            while raw.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    _assert_alive(target)


@given(st.binary(min_size=1, max_size=512))
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_bytes_after_the_preface_leave_the_server_answering(
    target: Target, garbage: bytes
) -> None:
    with socket.create_connection((target.running.host, target.running.port), timeout=5) as raw:
        raw.sendall(PREFACE + SETTINGS + garbage)
    _assert_alive(target)


def _assert_alive(target: Target) -> None:
    """The server answers a plain call on a new channel and on the fuzz's own."""
    with stub_for(target.running.address) as fresh:
        assert fresh.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).version
    assert target.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).version
