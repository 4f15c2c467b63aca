"""Errors are mapped by one server interceptor: every RPC of the service goes through it, a
bug is INTERNAL (never UNAVAILABLE), and a status the handler chose itself passes through."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from servers import aio_serving, in_process_server, stub_for

from varstore.api import commands
from varstore.api.interceptors import ErrorInterceptor
from varstore.api.service import VariableStoreService
from varstore.api.store import Store
from varstore.eventstore.memory import MemoryRecorder
from varstore.types import InternalError, ValidationError
from varstore.types.status import error_from_rpc_error
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub
SERVICE = pb.DESCRIPTOR.services_by_name["VariableStore"]


class BrokenStore(Store):
    """A real store whose reads and writes raise a plain RuntimeError once ``broken``:
    a stand-in for a bug anywhere behind the handlers."""

    broken = False

    def _bug(self) -> None:
        if self.broken:
            raise RuntimeError("injected bug")

    def session(self, session_id: str) -> Any:
        self._bug()
        return super().session(session_id)

    def published(self, session_id: str) -> Any:
        self._bug()
        return super().published(session_id)

    def sessions(self) -> Any:
        self._bug()
        return super().sessions()

    def history(self, session_id: str) -> Any:
        self._bug()
        return super().history(session_id)

    def state_at(self, session_id: str, position: int) -> Any:
        self._bug()
        return super().state_at(session_id, position)

    def execute(self, session_id: str, command: Any, request: Any = None) -> Any:
        self._bug()
        return super().execute(session_id, command, request)

    @property  # type: ignore[override]
    def limits(self) -> Any:
        self._bug()
        return self._limits

    @limits.setter
    def limits(self, value: Any) -> None:
        self._limits = value


def _import_chunks() -> Iterator[pb.ImportSessionRequest]:
    created = pb.Event(position=1, type="SessionCreated", session_created=pb.SessionCreated())
    yield pb.ImportSessionRequest(session_id="imported", events=[created])


#: One call per RPC of the service, each reaching the store (streams are drained).
CALLS: dict[str, Callable[[Stub], object]] = {
    "CreateSession": lambda s: s.CreateSession(pb.CreateSessionRequest(session_id="new")),
    "GetSession": lambda s: s.GetSession(pb.GetSessionRequest(session_id="s")),
    "ListSessions": lambda s: s.ListSessions(pb.ListSessionsRequest()),
    "DeleteSession": lambda s: s.DeleteSession(pb.DeleteSessionRequest(session_id="s")),
    "RegisterVariable": lambda s: s.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id="s", name="m", type="integer", initial_value=pb.Value(integer_value=1)
        )
    ),
    "GetVariable": lambda s: s.GetVariable(
        pb.GetVariableRequest(session_id="s", variable_identifier="n")
    ),
    "SetVariable": lambda s: s.SetVariable(
        pb.SetVariableRequest(
            session_id="s", variable_identifier="n", value=pb.Value(integer_value=2)
        )
    ),
    "GetVariables": lambda s: s.GetVariables(
        pb.GetVariablesRequest(session_id="s", variable_identifiers=["n"])
    ),
    "SetVariables": lambda s: s.SetVariables(
        pb.SetVariablesRequest(session_id="s", updates={"n": pb.Value(integer_value=3)})
    ),
    "ListVariables": lambda s: s.ListVariables(pb.ListVariablesRequest(session_id="s")),
    "DeleteVariable": lambda s: s.DeleteVariable(
        pb.DeleteVariableRequest(session_id="s", variable_identifier="n")
    ),
    "GetVariableHistory": lambda s: s.GetVariableHistory(
        pb.GetVariableHistoryRequest(session_id="s", variable_identifier="n")
    ),
    "ReadEvents": lambda s: s.ReadEvents(pb.ReadEventsRequest(session_id="s")),
    "RollbackVariable": lambda s: s.RollbackVariable(
        pb.RollbackVariableRequest(session_id="s", variable_identifier="n", to_version=0)
    ),
    "WatchSession": lambda s: list(s.WatchSession(pb.WatchSessionRequest(session_id="s"))),
    "ForkSession": lambda s: s.ForkSession(
        pb.ForkSessionRequest(session_id="s", new_session_id="fork")
    ),
    "ExportSession": lambda s: list(s.ExportSession(pb.ExportSessionRequest(session_id="s"))),
    "ImportSession": lambda s: s.ImportSession(_import_chunks()),
    "GetServerInfo": lambda s: s.GetServerInfo(pb.GetServerInfoRequest()),
}


@pytest.fixture(scope="module")
def broken() -> Iterator[tuple[BrokenStore, Stub]]:
    store = BrokenStore(MemoryRecorder())
    store.execute("s", commands.CreateSession("s"))
    store.execute("s", commands.RegisterVariable("s", "n", "integer", 1))
    with in_process_server(store) as running, stub_for(running.address) as stub:
        store.broken = True
        yield store, stub


def test_the_call_table_names_every_rpc_of_the_service() -> None:
    assert set(CALLS) == {method.name for method in SERVICE.methods}


@pytest.mark.parametrize("rpc", sorted(CALLS))
def test_a_bug_behind_any_rpc_is_internal_with_reason_internal_and_logged(
    broken: tuple[BrokenStore, Stub], rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, stub = broken
    with (
        caplog.at_level(logging.ERROR, logger="varstore.api.interceptors"),
        pytest.raises(grpc.RpcError) as failed,
    ):
        CALLS[rpc](stub)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    error = error_from_rpc_error(failed.value)
    assert isinstance(error, InternalError)
    assert error.reason == "INTERNAL"
    assert error.info["method"] == f"/{SERVICE.full_name}/{rpc}"
    assert "injected bug" not in (failed.value.details() or "")  # internals stay in the log
    logged = [r for r in caplog.records if error.info["incident"] in r.getMessage()]
    assert logged, "the bug was not logged with its incident id"
    assert logged[0].exc_info is not None and "injected bug" in str(logged[0].exc_info[1])


def test_the_store_answers_again_once_the_bug_is_gone(broken: tuple[BrokenStore, Stub]) -> None:
    store, stub = broken
    store.broken = False
    try:
        assert stub.GetVariable(
            pb.GetVariableRequest(session_id="s", variable_identifier="n")
        ).variable.value == pb.Value(integer_value=1)
    finally:
        store.broken = True


class _Collector:
    """What add_VariableStoreServicer_to_server registers, kept for inspection."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        pass  # the same handlers also come through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler


def test_every_method_of_the_servicer_goes_through_the_interceptor() -> None:
    store = Store(MemoryRecorder())
    try:
        service = VariableStoreService(store)
        collector = _Collector()
        pb_grpc.add_VariableStoreServicer_to_server(service, collector)  # type: ignore[arg-type]
        servicer_methods = {
            name for name in vars(pb_grpc.VariableStoreServicer) if not name.startswith("_")
        }
        assert servicer_methods == {method.name for method in SERVICE.methods}
        assert set(collector.handlers) == {f"/{SERVICE.full_name}/{m}" for m in servicer_methods}
        interceptor = ErrorInterceptor()
        for method, handler in collector.handlers.items():
            wrapped = interceptor.wrapped(handler, method)
            assert wrapped is not None and wrapped is not handler, method
            original = _behaviour(handler)
            guarded = _behaviour(wrapped)
            assert guarded is not original, method
            assert getattr(guarded, "__wrapped__", None) == original, method
            assert (wrapped.request_streaming, wrapped.response_streaming) == (
                handler.request_streaming,
                handler.response_streaming,
            )
            again = interceptor.wrapped(handler, method)
            assert again is wrapped, f"{method} was wrapped twice"
    finally:
        store.close()


def _behaviour(handler: grpc.RpcMethodHandler[Any, Any]) -> object:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


def test_the_server_installs_the_interceptor(broken: tuple[BrokenStore, Stub]) -> None:
    # A RuntimeError without the interceptor would come back UNKNOWN
    # ("Exception calling application"); INTERNAL with ErrorInfo shows it is installed.
    _, stub = broken
    with pytest.raises(grpc.RpcError) as failed:
        stub.GetSession(pb.GetSessionRequest(session_id="s"))
    assert failed.value.code() == grpc.StatusCode.INTERNAL


# -- the interceptor on a service of its own --------------------------------------------------


def _abort(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "chosen by the handler")


def _refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise ValidationError("page_size must be 0 or more", violations={"page_size": "negative"})


def _stream_then_fail(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"first"
    raise RuntimeError("mid-stream bug")


@pytest.fixture(scope="module")
def probe() -> Iterator[grpc.Channel]:
    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Probe",
                    {
                        "Abort": grpc.unary_unary_rpc_method_handler(_abort),
                        "Refuse": grpc.unary_unary_rpc_method_handler(_refuse),
                        "Stream": grpc.unary_stream_rpc_method_handler(_stream_then_fail),
                    },
                ),
            )
        )

    with aio_serving(register, ErrorInterceptor()) as address:
        channel = grpc.insecure_channel(address)
        try:
            yield channel
        finally:
            channel.close()


def test_a_status_the_handler_chose_itself_passes_through(probe: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        probe.unary_unary("/test.Probe/Abort")(b"")
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert failed.value.details() == "chosen by the handler"


def test_a_varstore_error_becomes_its_status_with_its_details(probe: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        probe.unary_unary("/test.Probe/Refuse")(b"")
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc_error(failed.value)
    assert isinstance(error, ValidationError)
    assert error.violations == {"page_size": "negative"}


def test_a_bug_mid_stream_ends_the_stream_with_internal(probe: grpc.Channel) -> None:
    received: list[bytes] = []
    with pytest.raises(grpc.RpcError) as failed:
        received.extend(probe.unary_stream("/test.Probe/Stream")(b""))
    assert received == [b"first"]
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert error_from_rpc_error(failed.value).reason == "INTERNAL"


def test_an_unknown_method_is_still_unimplemented(probe: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        probe.unary_unary("/test.Probe/Nothing")(b"")
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
