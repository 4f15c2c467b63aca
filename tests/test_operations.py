"""Operations through real servers: Prometheus metrics, JSON request logs that never hold a
token, and a shutdown that open health watches do not hold up."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import ServerProcess, start_server_process, stub_for

from varstore.api.server import start_server
from varstore.api.store import Store
from varstore.eventstore.memory import MemoryRecorder
from varstore.types import to_proto
from varstore.v1 import varstore_pb2 as pb

ADMIN = "operations-admin-token-0123456789"


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition ``text``."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if metric == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


def metrics_address(server: ServerProcess) -> str:
    [line] = [line for line in server.output if "listening on" in line]
    match = re.search(r"metrics on ([^;)\s]+)", line)
    assert match, line
    return match.group(1)


def test_metrics_count_requests_by_method_and_code_and_report_the_log_and_commits(
    tmp_path: Path,
) -> None:
    server = start_server_process(tmp_path / "log.db", "--metrics", "127.0.0.1:0")
    try:
        with stub_for(server.address) as stub:
            stub.CreateSession(pb.CreateSessionRequest(session_id="m"))
            stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id="m", name="n", type="integer", initial_value=to_proto(0)
                )
            )
            for value in range(1, 4):
                stub.SetVariable(
                    pb.SetVariableRequest(
                        session_id="m", variable_identifier="n", value=to_proto(value)
                    )
                )
            try:
                stub.GetSession(pb.GetSessionRequest(session_id="missing"))
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
        text = scrape(metrics_address(server))
    finally:
        server.terminate()
    service = "/varstore.v1.VariableStore/"
    assert sample(text, "varstore_requests_total", method=service + "SetVariable", code="OK") == 3
    assert (
        sample(text, "varstore_requests_total", method=service + "GetSession", code="NOT_FOUND")
        == 1
    )
    assert (
        sample(text, "varstore_request_duration_seconds_count", method=service + "SetVariable") == 3
    )
    assert sample(text, "varstore_group_commit_size_count") == 5  # one append per write here
    assert sample(text, "varstore_append_duration_seconds_count") == 5
    assert sample(text, "varstore_log_events") == 5
    assert sample(text, "varstore_sessions") == 1
    assert sample(text, "varstore_watchers") == 0
    assert sample(text, "varstore_watchers_dropped_total") == 0
    assert sample(text, "varstore_log_writable") == 1


def test_the_watchers_gauge_counts_open_watches() -> None:
    running = start_server(Store(MemoryRecorder()), metrics="127.0.0.1:0")
    try:
        with stub_for(running.address) as stub:
            stub.CreateSession(pb.CreateSessionRequest(session_id="w"))
            stream = stub.WatchSession(pb.WatchSessionRequest(session_id="w"))
            next(stream)  # caught up: the watch is open
            text = scrape(f"127.0.0.1:{running.metrics_port}")
            assert sample(text, "varstore_watchers") == 1
            stream.cancel()
    finally:
        running.stop(grace=1.0)


def test_json_logs_have_one_line_per_request_and_never_a_token(tmp_path: Path) -> None:
    (tmp_path / "admin").write_text(ADMIN)
    server = start_server_process(
        tmp_path / "log.db", "--log-format", "json", "--admin-token-file", str(tmp_path / "admin")
    )
    admin = [("authorization", f"Bearer {ADMIN}")]
    try:
        with stub_for(server.address) as stub:
            token = stub.CreateSession(
                pb.CreateSessionRequest(session_id="logged"), metadata=admin
            ).session_token
            stub.GetSession(
                pb.GetSessionRequest(session_id="logged"),
                metadata=[("authorization", f"Bearer {token}")],
            )
            try:
                stub.ListSessions(
                    pb.ListSessionsRequest(), metadata=[("authorization", "Bearer x")]
                )
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.terminate()
    records = [json.loads(line) for line in server.output if line.startswith("{")]
    requests = [r for r in records if r["logger"] == "varstore.requests"]
    by_method = {r["method"].rsplit("/", 1)[-1]: r for r in requests}
    created = by_method["CreateSession"]
    assert (created["session"], created["code"], created["identity"]) == ("logged", "OK", "admin")
    assert isinstance(created["latency_ms"], float)
    assert by_method["GetSession"]["identity"] == "session:logged"
    assert by_method["ListSessions"]["code"] == "UNAUTHENTICATED"
    everything = "\n".join(server.output)
    assert ADMIN not in everything
    assert token not in everything
    assert token.rsplit(".", 1)[-1] not in everything


def open_health_watch(address: str) -> tuple[grpc.Channel, object]:
    channel = grpc.insecure_channel(address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    return channel, watch


def test_an_open_health_watch_does_not_delay_shutdown() -> None:
    running = start_server(Store(MemoryRecorder()))
    channel, watch = open_health_watch(running.address)
    seen: list[object] = []
    ended = threading.Event()

    def drain() -> None:
        try:
            for item in watch:  # type: ignore[attr-defined]
                seen.append(item.status)
        finally:
            ended.set()

    threading.Thread(target=drain, daemon=True).start()
    with closing(channel):
        started = time.monotonic()
        running.stop(grace=5.0)
        took = time.monotonic() - started
        assert ended.wait(5)
    assert took < 4.0, f"stop took {took:.1f} s with a health watch open (grace is 5 s)"
    assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING]


def test_sigterm_with_an_open_health_watch_exits_promptly(tmp_path: Path) -> None:
    server = start_server_process(tmp_path / "log.db")
    channel, _watch = open_health_watch(server.address)
    with closing(channel):
        started = time.monotonic()
        assert server.terminate(timeout=15) == 0
        took = time.monotonic() - started
    assert took < 4.0, f"SIGTERM took {took:.1f} s with a health watch open (grace is 5 s)"
