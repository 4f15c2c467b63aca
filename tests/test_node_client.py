"""The cross-language promise, proven with a second language: a Node client (@grpc/grpc-js and
@grpc/proto-loader, installed by ``npm ci`` from tests/node's committed lock) reads and updates a
variable that Python registered on a real ``varstore serve`` process, and Python sees Node's
update with its version, source and metadata."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from _support import NODE_PROJECT, npm_ci, skip_or_fail
from servers import ServerProcess, start_server_process, stub_for

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

CLIENT_SCRIPT = NODE_PROJECT / "varstore_client.js"
INVALID_ARGUMENT = 3


@dataclass(frozen=True)
class NodeReply:
    """What the Node client printed: a response, or a gRPC error's code and details."""

    exit_code: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class NodeClient:
    """Runs tests/node/varstore_client.js against one server address."""

    node: str
    address: str

    def call(self, method: str, request: dict[str, Any]) -> NodeReply:
        command = [self.node, str(CLIENT_SCRIPT), self.address, method, json.dumps(request)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode not in (0, 1):
            pytest.fail(
                f"node {CLIENT_SCRIPT.name} {method} exited with {done.returncode}:\n"
                f"{done.stdout}{done.stderr}",
                pytrace=False,
            )
        try:
            body = json.loads(done.stdout)
        except ValueError:
            pytest.fail(f"node printed no JSON for {method}:\n{done.stdout}{done.stderr}")
        return NodeReply(done.returncode, body)

    def ok(self, method: str, request: dict[str, Any]) -> dict[str, Any]:
        """The response of a call that must succeed."""
        reply = self.call(method, request)
        assert reply.ok, f"{method} failed from Node: {reply.body}"
        return reply.body


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with tests/node's packages installed (``npm ci``)."""
    found = shutil.which("node")
    if found is None:
        skip_or_fail("node is not installed, so the Node client cannot run")
    npm_ci()
    return found


@pytest.fixture(scope="module")
def served(node: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``varstore serve`` in a child process with its own SQLite file."""
    process = start_server_process(tmp_path_factory.mktemp("node") / "varstore.db")
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.terminate()


@pytest.fixture(scope="module")
def python(served: ServerProcess) -> Iterator[varstore_pb2_grpc.VariableStoreStub]:
    """Python's generated stub on the served address."""
    with stub_for(served.address) as stub:
        yield stub


@pytest.fixture(scope="module")
def node_client(node: str, served: ServerProcess) -> NodeClient:
    return NodeClient(node, served.address)


@pytest.fixture
def session_id(python: varstore_pb2_grpc.VariableStoreStub, request: pytest.FixtureRequest) -> str:
    """A new session, created from Python and named after the test."""
    name = str(request.node.name).removeprefix("test_")[:60]
    python.CreateSession(pb.CreateSessionRequest(session_id=name, source="python"))
    return name


def register_max_tokens(python: varstore_pb2_grpc.VariableStoreStub, session_id: str) -> None:
    python.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id,
            name="max_tokens",
            type="integer",
            initial_value=pb.Value(integer_value=256),
            constraints=pb.Constraints(min=1, max=4096),
            metadata={"description": "Most tokens to generate"},
            source="python",
        )
    )


def test_node_reads_a_variable_registered_from_python(
    python: varstore_pb2_grpc.VariableStoreStub, node_client: NodeClient, session_id: str
) -> None:
    register_max_tokens(python, session_id)

    variable = node_client.ok(
        "GetVariable", {"session_id": session_id, "variable_identifier": "max_tokens"}
    )["variable"]

    assert variable["name"] == "max_tokens"
    assert variable["type"] == "integer"
    assert variable["value"] == {"integer_value": "256", "kind": "integer_value"}
    assert variable["version"] == "0"
    assert variable["source"] == "python"
    assert variable["metadata"] == {"description": "Most tokens to generate"}
    assert variable["constraints"]["min"] == 1
    assert variable["constraints"]["max"] == 4096


def test_python_sees_nodes_update_with_its_version_source_and_metadata(
    python: varstore_pb2_grpc.VariableStoreStub, node_client: NodeClient, session_id: str
) -> None:
    register_max_tokens(python, session_id)

    response = node_client.ok(
        "SetVariable",
        {
            "session_id": session_id,
            "variable_identifier": "max_tokens",
            "value": {"integer_value": "512"},
            "metadata": {"reason": "from node"},
            "expected_version": "0",
            "source": "node",
        },
    )
    assert response["new_version"] == "1"
    assert response["variable"]["value"]["integer_value"] == "512"

    variable = python.GetVariable(
        pb.GetVariableRequest(session_id=session_id, variable_identifier="max_tokens")
    ).variable
    assert variable.value.WhichOneof("kind") == "integer_value"
    assert variable.value.integer_value == 512
    assert variable.version == 1
    assert variable.source == "node"
    assert variable.metadata["reason"] == "from node"
    assert variable.metadata["description"] == "Most tokens to generate"


def test_node_gets_invalid_argument_in_the_seeds_wording_for_a_value_above_the_maximum(
    python: varstore_pb2_grpc.VariableStoreStub, node_client: NodeClient, session_id: str
) -> None:
    register_max_tokens(python, session_id)

    refused = node_client.call(
        "SetVariable",
        {
            "session_id": session_id,
            "variable_identifier": "max_tokens",
            "value": {"integer_value": "5000"},
            "source": "node",
        },
    )

    assert refused.exit_code == 1
    assert refused.body["code"] == INVALID_ARGUMENT
    assert "value 5000 is above maximum 4096" in refused.body["details"]
    variable = python.GetVariable(
        pb.GetVariableRequest(session_id=session_id, variable_identifier="max_tokens")
    ).variable
    assert variable.value.integer_value == 256
    assert variable.version == 0


def test_node_reads_and_sets_a_batch_atomically_at_one_position(
    python: varstore_pb2_grpc.VariableStoreStub, node_client: NodeClient, session_id: str
) -> None:
    register_max_tokens(python, session_id)
    python.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id,
            name="model",
            type="string",
            initial_value=pb.Value(string_value="small"),
        )
    )

    read = node_client.ok(
        "GetVariables",
        {"session_id": session_id, "variable_identifiers": ["max_tokens", "model", "nope"]},
    )
    assert sorted(read["variables"]) == ["max_tokens", "model"]
    assert read["missing_variables"] == ["nope"]
    assert read["variables"]["model"]["value"]["string_value"] == "small"

    written = node_client.ok(
        "SetVariables",
        {
            "session_id": session_id,
            "updates": {
                "max_tokens": {"integer_value": "1024"},
                "model": {"string_value": "large"},
            },
            "metadata": {"reason": "batch from node"},
            "atomic": True,
            "expected_position": read["header"]["position"],
            "source": "node",
        },
    )
    assert written["new_versions"] == {"max_tokens": "1", "model": "1"}
    assert written["errors"] == {}

    both = python.GetVariables(
        pb.GetVariablesRequest(session_id=session_id, variable_identifiers=["max_tokens", "model"])
    )
    assert both.variables["max_tokens"].value.integer_value == 1024
    assert both.variables["model"].value.string_value == "large"
    assert {v.source for v in both.variables.values()} == {"node"}
    # One atomic batch is one event: both variables were changed at the same position.
    assert both.variables["max_tokens"].position == both.variables["model"].position
    assert both.header.position == int(written["header"]["position"])


def test_an_atomic_batch_from_node_with_one_bad_value_changes_nothing(
    python: varstore_pb2_grpc.VariableStoreStub, node_client: NodeClient, session_id: str
) -> None:
    register_max_tokens(python, session_id)
    python.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id,
            name="model",
            type="string",
            initial_value=pb.Value(string_value="small"),
        )
    )

    refused = node_client.call(
        "SetVariables",
        {
            "session_id": session_id,
            "updates": {"max_tokens": {"integer_value": "5000"}, "model": {"string_value": "big"}},
            "atomic": True,
            "source": "node",
        },
    )

    assert refused.body["code"] == INVALID_ARGUMENT
    both = python.GetVariables(
        pb.GetVariablesRequest(session_id=session_id, variable_identifiers=["max_tokens", "model"])
    )
    assert both.variables["max_tokens"].version == 0
    assert both.variables["model"].value.string_value == "small"
