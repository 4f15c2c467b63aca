"""The seed's seven Elixir integration tests, ported.

The seed's Elixir side (``SessionStore.register_variable`` and friends) is played by the
server's own command API on the live :class:`Store`; its Python side is a real gRPC
channel to the real server, speaking only the generated stubs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import pytest
from servers import in_process_server, stub_for

from varstore.api import commands
from varstore.api.server import RunningServer
from varstore.api.store import Store
from varstore.projections import VariableState
from varstore.types import from_proto, to_proto
from varstore.types.status import error_from_rpc_error
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc


class SessionStore:
    """The seed's Elixir ``SessionStore`` API, over the server's command API."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create_session(self, session_id: str) -> None:
        self.store.execute(session_id, commands.CreateSession(session_id, source="elixir"))

    def register_variable(
        self,
        session_id: str,
        name: str,
        type_name: str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> str:
        metadata = {"description": description} if description else {}
        command = commands.RegisterVariable(
            session_id, name, type_name, initial_value, constraints or {}, metadata, "elixir"
        )
        return self.store.execute(session_id, command).result.id

    def get_variable(self, session_id: str, identifier: str) -> VariableState:
        found = self.store.session(session_id).find(identifier)
        assert found is not None, f"{identifier} not found"
        return found

    def update_variable(self, session_id: str, identifier: str, value: Any) -> None:
        self.store.execute(
            session_id, commands.SetVariable(session_id, identifier, value, source="elixir")
        )


@pytest.fixture
def running() -> Iterator[RunningServer]:
    with in_process_server() as server:
        yield server


@pytest.fixture
def elixir(running: RunningServer) -> SessionStore:
    return SessionStore(running.store)


@pytest.fixture
def channel(running: RunningServer) -> Iterator[pb_grpc.VariableStoreStub]:
    with stub_for(running.address) as stub:
        yield stub


@pytest.fixture
def session_id(elixir: SessionStore) -> str:
    elixir.create_session("test_stage1_1")
    return "test_stage1_1"


def decode_value(value: pb.Value) -> Any:
    return from_proto(value)


def test_elixir_registers_variable_python_reads_it(
    elixir: SessionStore, channel: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    var_id = elixir.register_variable(
        session_id,
        "temperature",
        "float",
        0.7,
        constraints={"min": 0.0, "max": 2.0},
        description="LLM generation temperature",
    )
    assert var_id.startswith("var_temperature_")

    response = channel.GetVariable(
        pb.GetVariableRequest(session_id=session_id, variable_identifier="temperature")
    )
    assert response.variable.name == "temperature"
    assert response.variable.type == "float"
    assert response.variable.id == var_id
    assert decode_value(response.variable.value) == 0.7
    assert response.variable.metadata["description"] == "LLM generation temperature"


def test_python_sets_variable_elixir_reads_it(
    elixir: SessionStore, channel: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    elixir.register_variable(
        session_id, "max_tokens", "integer", 256, constraints={"min": 1, "max": 4096}
    )
    response = channel.SetVariable(
        pb.SetVariableRequest(
            session_id=session_id,
            variable_identifier="max_tokens",
            value=to_proto(512),
            metadata={"reason": "user_preference"},
            source="python",
        )
    )
    assert response.new_version == 1

    variable = elixir.get_variable(session_id, "max_tokens")
    assert variable.value == 512
    assert variable.version == 1
    assert variable.source == "python"
    assert variable.metadata["reason"] == "user_preference"


def test_type_validation_works_across_languages(
    elixir: SessionStore, channel: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    elixir.register_variable(
        session_id, "strict_int", "integer", 10, constraints={"min": 0, "max": 100}
    )
    with pytest.raises(grpc.RpcError) as refused:
        channel.SetVariable(
            pb.SetVariableRequest(
                session_id=session_id, variable_identifier="strict_int", value=to_proto(150)
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "value 150 is above maximum 100" in refused.value.details()

    variable = elixir.get_variable(session_id, "strict_int")
    assert variable.value == 10
    assert variable.version == 0  # no version increment on failure


def test_batch_operations_work_correctly(
    elixir: SessionStore, channel: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    elixir.register_variable(session_id, "var1", "string", "hello")
    elixir.register_variable(session_id, "var2", "integer", 42)
    elixir.register_variable(session_id, "var3", "boolean", True)

    response = channel.GetVariables(
        pb.GetVariablesRequest(
            session_id=session_id, variable_identifiers=["var1", "var2", "var3", "nonexistent"]
        )
    )
    assert len(response.variables) == 3
    assert list(response.missing_variables) == ["nonexistent"]
    assert decode_value(response.variables["var1"].value) == "hello"
    assert decode_value(response.variables["var2"].value) == 42
    assert decode_value(response.variables["var3"].value) is True

    update_response = channel.SetVariables(
        pb.SetVariablesRequest(
            session_id=session_id,
            updates={"var1": to_proto("world"), "var2": to_proto(100)},
            atomic=True,
        )
    )
    assert update_response.new_versions["var1"] == 1
    assert update_response.new_versions["var2"] == 1

    var1 = elixir.get_variable(session_id, "var1")
    assert (var1.value, var1.version) == ("world", 1)
    var2 = elixir.get_variable(session_id, "var2")
    assert (var2.value, var2.version) == (100, 1)
    # The atomic batch is one event at one position.
    assert var1.position == var2.position == update_response.header.position


def test_cache_behavior_works_correctly(
    elixir: SessionStore, channel: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    elixir.register_variable(session_id, "cached_var", "float", 1.0)
    request = pb.GetVariableRequest(session_id=session_id, variable_identifier="cached_var")
    assert decode_value(channel.GetVariable(request).variable.value) == 1.0

    elixir.update_variable(session_id, "cached_var", 2.0)

    # The server keeps no cache: the next read sees the change.
    assert decode_value(channel.GetVariable(request).variable.value) == 2.0


def test_variable_resolution_by_name_and_id(
    elixir: SessionStore, channel: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    var_id = elixir.register_variable(session_id, "my_var", "string", "test")

    by_name = channel.GetVariable(
        pb.GetVariableRequest(session_id=session_id, variable_identifier="my_var")
    )
    assert by_name.variable.id == var_id
    assert decode_value(by_name.variable.value) == "test"

    by_id = channel.GetVariable(
        pb.GetVariableRequest(session_id=session_id, variable_identifier=var_id)
    )
    assert by_id.variable.name == "my_var"
    assert decode_value(by_id.variable.value) == "test"


def test_atomic_batch_update_rollback_on_failure(
    elixir: SessionStore, channel: pb_grpc.VariableStoreStub, session_id: str
) -> None:
    elixir.register_variable(session_id, "a", "integer", 1)
    elixir.register_variable(session_id, "b", "integer", 2, constraints={"max": 10})
    position_before = channel.GetSession(
        pb.GetSessionRequest(session_id=session_id)
    ).session.position

    with pytest.raises(grpc.RpcError) as refused:
        channel.SetVariables(
            pb.SetVariablesRequest(
                session_id=session_id,
                updates={"a": to_proto(5), "b": to_proto(20)},
                atomic=True,
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = error_from_rpc_error(refused.value).violations  # type: ignore[attr-defined]
    assert set(violations) == {"b"}
    assert "above maximum" in violations["b"]

    var_a = elixir.get_variable(session_id, "a")
    assert (var_a.value, var_a.version) == (1, 0)
    var_b = elixir.get_variable(session_id, "b")
    assert (var_b.value, var_b.version) == (2, 0)
    session = channel.GetSession(pb.GetSessionRequest(session_id=session_id)).session
    assert session.position == position_before
