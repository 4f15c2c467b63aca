"""The server's limits (api/limits.py), each through a real server configured with small
ones: a request beyond a limit is RESOURCE_EXHAUSTED, its message and ErrorInfo name the
limit, and it writes nothing; GetServerInfo tells every limit; ``varstore serve`` takes
them as flags. The rate limit's bucket is also checked on its own, with a fake clock.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st
from servers import in_process_server, start_server_process, stub_for

from varstore.api.limits import Limits
from varstore.api.ratelimit import TokenBucket, caller_identity
from varstore.api.server import RunningServer
from varstore.api.store import Store
from varstore.client import SessionContext, connect
from varstore.eventstore.memory import MemoryRecorder
from varstore.types import LimitExceeded
from varstore.types.status import error_from_rpc_error
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@contextmanager
def serving(**limits: int) -> Iterator[tuple[RunningServer, Stub]]:
    """A real server with these limits (the rest at their defaults) and a stub on it."""
    with (
        in_process_server(Store(MemoryRecorder(), limits=Limits(**limits))) as running,
        stub_for(running.address) as stub,
    ):
        yield running, stub


def refused(call: Callable[[], object], limit: str, running: RunningServer) -> str:
    """Assert ``call`` is RESOURCE_EXHAUSTED naming ``limit`` and writes nothing; its message."""
    before = running.store.recorder.last_global_position()
    with pytest.raises(grpc.RpcError) as raised:
        call()
    failure = raised.value
    assert failure.code() == RESOURCE_EXHAUSTED, failure.details()
    error = error_from_rpc_error(failure)
    assert isinstance(error, LimitExceeded)
    details = failure.details() or ""
    assert f"({limit})" in details, details
    assert error.info["limit_name"] == limit
    assert error.info["limit"] == str(getattr(running.store.limits, limit))
    assert running.store.recorder.last_global_position() == before
    return details


def string(text: str) -> pb.Value:
    return pb.Value(string_value=text)


def session_with(stub: Stub, session_id: str, *names: str) -> None:
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))
    for name in names:
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=session_id, name=name, type="string", initial_value=string("")
            )
        )


# -- what the server tells ------------------------------------------------------------------


def test_get_server_info_tells_every_limit_the_server_runs_with() -> None:
    chosen = Limits(
        max_message_bytes=100_000,
        max_string_bytes=5_000,
        max_batch_size=7,
        max_variables_per_session=9,
        max_sessions=11,
        max_ttl_seconds=13,
        max_page_size=17,
        max_watchers=19,
        max_watchers_per_session=3,
        idle_connection_seconds=23,
        max_requests_per_second=1000,
    )
    with (
        in_process_server(Store(MemoryRecorder(), limits=chosen)) as running,
        stub_for(running.address) as stub,
    ):
        told = stub.GetServerInfo(pb.GetServerInfoRequest()).limits
    fields = {field.name for field in told.DESCRIPTOR.fields}
    assert fields == {field.name for field in dataclasses.fields(Limits)}
    for name in fields:
        assert getattr(told, name) == getattr(chosen, name), name


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_sessions", 0), ("max_page_size", -1), ("max_batch_size", True), ("max_watchers", 1.5)],
)
def test_a_limit_out_of_its_range_is_refused_when_made(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"limit {name} must be a whole number from 1 up"):
        Limits(**{name: value})  # type: ignore[arg-type]


def test_zero_turns_off_the_rate_limit_and_the_idle_timeout() -> None:
    off = Limits(max_requests_per_second=0, idle_connection_seconds=0)
    assert off.max_requests_per_second == 0 and off.idle_connection_seconds == 0


# -- sizes and counts -----------------------------------------------------------------------


def test_a_request_larger_than_max_message_bytes_is_resource_exhausted() -> None:
    with serving(max_message_bytes=10_000) as (running, stub):
        session_with(stub, "s", "text")
        before = running.store.recorder.last_global_position()
        with pytest.raises(grpc.RpcError) as raised:
            stub.SetVariable(
                pb.SetVariableRequest(
                    session_id="s", variable_identifier="text", value=string("x" * 20_000)
                )
            )
        assert raised.value.code() == RESOURCE_EXHAUSTED
        assert "10000" in (raised.value.details() or "")  # gRPC names the number
        assert running.store.recorder.last_global_position() == before
        stub.SetVariable(
            pb.SetVariableRequest(
                session_id="s", variable_identifier="text", value=string("x" * 9000)
            )
        )


def test_a_string_larger_than_max_string_bytes_is_resource_exhausted_naming_it() -> None:
    with serving(max_string_bytes=100) as (running, stub):
        session_with(stub, "s", "text")
        details = refused(
            lambda: stub.SetVariable(
                pb.SetVariableRequest(
                    session_id="s", variable_identifier="text", value=string("é" * 51)
                )
            ),
            "max_string_bytes",
            running,
        )
        assert "a string of 102 bytes" in details and "variable 'text'" in details
        stub.SetVariable(
            pb.SetVariableRequest(
                session_id="s", variable_identifier="text", value=string("é" * 50)
            )
        )


def test_one_variable_past_max_variables_per_session_is_resource_exhausted() -> None:
    with serving(max_variables_per_session=2) as (running, stub):
        session_with(stub, "s", "a", "b")
        register = pb.RegisterVariableRequest(
            session_id="s", name="c", type="string", initial_value=string("")
        )
        refused(lambda: stub.RegisterVariable(register), "max_variables_per_session", running)
        stub.DeleteVariable(pb.DeleteVariableRequest(session_id="s", variable_identifier="a"))
        stub.RegisterVariable(register)  # a deleted variable frees its place


def test_a_batch_past_max_batch_size_is_resource_exhausted_for_writes_reads_and_watches() -> None:
    with serving(max_batch_size=2) as (running, stub):
        session_with(stub, "s", "a", "b", "c")
        updates = {name: string("x") for name in "abc"}
        for atomic in (True, False):
            refused(
                lambda atomic=atomic: stub.SetVariables(  # type: ignore[misc]
                    pb.SetVariablesRequest(session_id="s", updates=updates, atomic=atomic)
                ),
                "max_batch_size",
                running,
            )
        refused(
            lambda: stub.GetVariables(
                pb.GetVariablesRequest(session_id="s", variable_identifiers=list("abc"))
            ),
            "max_batch_size",
            running,
        )
        refused(
            lambda: next(
                iter(
                    stub.WatchSession(pb.WatchSessionRequest(session_id="s", variables=list("abc")))
                )
            ),
            "max_batch_size",
            running,
        )
        stub.SetVariables(
            pb.SetVariablesRequest(session_id="s", updates=dict(list(updates.items())[:2]))
        )


def test_sessions_past_max_sessions_are_refused_by_create_fork_and_import() -> None:
    with serving(max_sessions=2) as (running, stub):
        session_with(stub, "one")
        session_with(stub, "two")
        export = [
            event
            for page in stub.ExportSession(pb.ExportSessionRequest(session_id="one"))
            for event in page.events
        ]
        details = refused(
            lambda: stub.CreateSession(pb.CreateSessionRequest(session_id="three")),
            "max_sessions",
            running,
        )
        assert "the server has 2 live sessions" in details
        refused(
            lambda: stub.ForkSession(pb.ForkSessionRequest(session_id="one", new_session_id="f")),
            "max_sessions",
            running,
        )
        refused(
            lambda: stub.ImportSession(
                iter([pb.ImportSessionRequest(session_id="i", events=export)])
            ),
            "max_sessions",
            running,
        )
        # A deleted session frees its place; the count is the live sessions.
        stub.DeleteSession(pb.DeleteSessionRequest(session_id="two"))
        stub.ForkSession(pb.ForkSessionRequest(session_id="one", new_session_id="f"))
        refused(
            lambda: stub.CreateSession(pb.CreateSessionRequest(session_id="two")),
            "max_sessions",
            running,
        )
        assert running.store.live_sessions.count == 2


def test_max_sessions_counts_the_sessions_in_the_log_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    first = start_server_process(db, "--max-sessions", "2")
    try:
        with stub_for(first.address) as stub:
            for name in ("a", "b"):
                stub.CreateSession(pb.CreateSessionRequest(session_id=name))
            stub.DeleteSession(pb.DeleteSessionRequest(session_id="a"))
    finally:
        assert first.terminate() == 0
    second = start_server_process(db, "--max-sessions", "2")
    try:
        with stub_for(second.address) as stub:
            stub.CreateSession(pb.CreateSessionRequest(session_id="c"))
            with pytest.raises(grpc.RpcError) as raised:
                stub.CreateSession(pb.CreateSessionRequest(session_id="d"))
            assert raised.value.code() == RESOURCE_EXHAUSTED
            assert "(max_sessions)" in (raised.value.details() or "")
    finally:
        second.terminate()


def test_watches_past_max_watchers_per_session_and_max_watchers_are_refused() -> None:
    with serving(max_watchers=3, max_watchers_per_session=2) as (running, stub):
        for name in ("a", "b", "c"):
            session_with(stub, name)
        open_streams = []

        def watch(name: str) -> None:
            stream = stub.WatchSession(pb.WatchSessionRequest(session_id=name, from_position=1))
            open_streams.append(stream)
            assert next(stream).HasField("progress")  # registered and caught up

        try:
            watch("a")
            watch("a")
            per_session = refused(lambda: watch("a"), "max_watchers_per_session", running)
            assert "session 'a'" in per_session
            watch("b")
            refused(lambda: watch("c"), "max_watchers", running)
            open_streams.pop().cancel()  # the refused one
            open_streams.pop().cancel()  # b's: a place is free again
            assert running.hub is not None
            deadline = time.monotonic() + 10
            while running.hub.watcher_count > 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # the server notices the cancel on its own thread
            watch("c")
        finally:
            for stream in open_streams:
                stream.cancel()


@pytest.mark.parametrize("asked", [0, 3, 1_000_000])
def test_no_page_is_longer_than_max_page_size_and_pages_add_up_to_everything(asked: int) -> None:
    with serving(max_page_size=3) as (_, stub):
        names = [f"s{i}" for i in range(7)]
        for name in names:
            stub.CreateSession(pb.CreateSessionRequest(session_id=name))
        seen: list[str] = []
        token = ""
        while True:
            page = stub.ListSessions(pb.ListSessionsRequest(page_size=asked, page_token=token))
            assert 0 < len(page.sessions) <= 3
            seen += [session.id for session in page.sessions]
            token = page.next_page_token
            if not token:
                break
        assert seen == names
        events = stub.ReadEvents(pb.ReadEventsRequest(session_id="s0", page_size=asked))
        assert len(events.events) <= 3


# -- connections and callers ----------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
GOAWAY = 0x7


def _frames_until_closed(raw: socket.socket, timeout: float) -> list[int]:
    """The types of the frames the server sends until it closes the connection."""
    raw.settimeout(timeout)
    kinds: list[int] = []
    buffered = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            return kinds
        buffered += chunk
        while len(buffered) >= 9 and len(buffered) >= 9 + int.from_bytes(buffered[:3], "big"):
            size = int.from_bytes(buffered[:3], "big")
            kinds.append(buffered[3])
            buffered = buffered[9 + size :]


def test_an_idle_connection_is_closed_after_idle_connection_seconds() -> None:
    with serving(idle_connection_seconds=1) as (running, _):
        with socket.create_connection((running.host, running.port), timeout=5) as raw:
            raw.sendall(PREFACE + SETTINGS)
            started = time.monotonic()
            kinds = _frames_until_closed(raw, timeout=10)
            waited = time.monotonic() - started
        assert GOAWAY in kinds
        assert 0.5 < waited < 8


def test_a_connection_with_a_call_in_flight_is_not_idle() -> None:
    with serving(idle_connection_seconds=1) as (_, stub):
        session_with(stub, "s")
        stream = stub.WatchSession(
            pb.WatchSessionRequest(session_id="s", from_position=1, progress_interval_ms=200)
        )
        try:
            started = time.monotonic()
            for message in stream:  # progress keeps coming well past the idle time
                assert message.HasField("progress")
                if time.monotonic() - started > 2.5:
                    break
            assert time.monotonic() - started > 2.5
        finally:
            stream.cancel()


def test_a_client_past_max_requests_per_second_is_refused_then_admitted_again() -> None:
    with serving(max_requests_per_second=1) as (running, stub):
        outcomes: list[grpc.StatusCode] = []
        messages: list[str] = []
        started = time.monotonic()
        for _ in range(12):
            try:
                stub.GetServerInfo(pb.GetServerInfoRequest())
                outcomes.append(grpc.StatusCode.OK)
            except grpc.RpcError as failure:
                outcomes.append(failure.code())
                messages.append(failure.details() or "")
        elapsed = time.monotonic() - started
        assert set(outcomes) == {grpc.StatusCode.OK, RESOURCE_EXHAUSTED}
        # A burst of twice the rate, then the rate (a token comes back every second).
        assert 2 <= outcomes.count(grpc.StatusCode.OK) <= 2 + elapsed
        assert outcomes[:2] == [grpc.StatusCode.OK] * 2
        assert "(max_requests_per_second)" in messages[0] and "retry in" in messages[0]
        # A refused write writes nothing: it is refused before its handler runs.
        refused(
            lambda: stub.CreateSession(pb.CreateSessionRequest(session_id="late")),
            "max_requests_per_second",
            running,
        )
        # Health checks are not counted.
        with grpc.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(5):
                answer = health.Check(health_pb2.HealthCheckRequest())
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(1.1)
        stub.CreateSession(pb.CreateSessionRequest(session_id="late"))


class _Peer:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("peer", "identity"),
    [
        ("ipv4:127.0.0.1:50123", "ipv4:127.0.0.1"),
        ("ipv4:127.0.0.1:50124", "ipv4:127.0.0.1"),
        ("ipv6:[::1]:50123", "ipv6:[::1]"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_a_caller_is_its_address_without_the_port(peer: str, identity: str) -> None:
    assert caller_identity(_Peer(peer)) == identity  # type: ignore[arg-type]


@given(
    rate=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 0.5, allow_nan=False), min_size=1, max_size=200),
)
def test_a_token_bucket_admits_at_most_its_rate_over_time_plus_one_burst(
    rate: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, 2 * rate, now=0.0)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait == 0:
            admitted += 1
        else:  # a refusal says how long until one more would be admitted
            assert bucket.take(now + wait + 1e-9) == 0
            bucket.tokens += 1  # that probe's token back: it was not a call
    assert admitted <= rate * now + 2 * rate + 1e-6


# -- the command line -----------------------------------------------------------------------


def test_serve_takes_the_limits_as_flags(tmp_path: Path) -> None:
    server = start_server_process(
        tmp_path / "log.db",
        "--max-sessions",
        "1",
        "--max-message-bytes",
        "200000",
        "--idle-connection-seconds",
        "7",
        "--max-requests-per-second",
        "1000",
        "--max-watchers-per-session",
        "4",
    )
    try:
        with stub_for(server.address) as stub:
            told = stub.GetServerInfo(pb.GetServerInfoRequest()).limits
            assert (told.max_sessions, told.max_message_bytes) == (1, 200_000)
            assert (told.idle_connection_seconds, told.max_requests_per_second) == (7, 1000)
            assert told.max_watchers_per_session == 4
            stub.CreateSession(pb.CreateSessionRequest(session_id="only"))
            with pytest.raises(grpc.RpcError) as raised:
                stub.CreateSession(pb.CreateSessionRequest(session_id="second"))
            assert raised.value.code() == RESOURCE_EXHAUSTED
    finally:
        server.terminate()


def test_serve_refuses_a_limit_out_of_range_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "varstore.api.cli",
            "serve",
            "--db",
            str(tmp_path / "x.db"),
            "--max-sessions",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("varstore: ")
    assert line.endswith("--max-sessions must be a whole number from 1 up, not 0")


# -- the client reads the server's limits ---------------------------------------------------


class _Recorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Client-side: the methods called and the requests sent, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append((details.method.rsplit("/", 1)[-1], request))
        return continuation(details, request)


def test_the_client_asks_the_limits_once_per_channel_and_uses_them() -> None:
    with serving(max_batch_size=2, max_page_size=3) as (running, _):
        recorder = _Recorder()
        with grpc.insecure_channel(running.address) as plain:
            channel = grpc.intercept_channel(plain, recorder)
            first = SessionContext("one", channel)
            second = SessionContext("two", channel)
            first.register_variable("v", "integer", 0)
            for version in range(1, 8):
                first.set_variable("v", version)
            with pytest.raises(LimitExceeded, match=r"the limit is 2 \(max_batch_size\)") as raised:
                first.update_variables({"a": 1, "b": 2, "c": 3})
            assert raised.value.info["limit_name"] == "max_batch_size"
            assert len(first.history("v")) == 8  # every version, three a page
            second.update_variables({})
            assert len(second.read_events()) == 1
        methods = [method for method, _ in recorder.calls]
        assert methods.count("GetServerInfo") == 1
        batches = [r for m, r in recorder.calls if m == "SetVariables"]
        assert batches and all(not r.updates for r in batches)  # type: ignore[attr-defined]
        pages = [r for m, r in recorder.calls if m in ("GetVariableHistory", "ReadEvents")]
        assert pages and all(r.page_size == 3 for r in pages)  # type: ignore[attr-defined]
        assert methods.count("GetVariableHistory") == 3


def test_an_import_is_sent_in_chunks_the_servers_max_message_bytes_admits(tmp_path: Path) -> None:
    with serving(max_message_bytes=64_000) as (running, _), connect(running.address) as client:
        origin = client.session("big")
        for n in range(12):
            origin.register_variable(f"v{n}", "string", str(n) * 20_000)
        export = tmp_path / "big.jsonl"
        client.export_session("big", export)
        copy = client.import_session(export, session_id="copy")
        assert copy.get_variable("v11") == "1" * 40_000
